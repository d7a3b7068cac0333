"""Core: what every other layer needs and that needs nothing of backbeat.

Lives here: the exception hierarchy and ``Problem`` (``errors``), strict JSON reading and
canonical writing (``jsonio``), asset kinds and name grammars (``names``), BEAT-compatible
hashes and backbeat's typed cache keys (``hashing``), files written atomically and made durable
(``durable``), the ``.backbeatrc`` configuration (``config``), which warm template may
serve this process (``templatekey``), and the exit handlers run by hand before ``os._exit``
(``exiting``).
May import: the standard library, simplejson; nothing else of backbeat.
"""
