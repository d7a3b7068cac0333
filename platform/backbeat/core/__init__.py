"""Core: what every other layer needs and that needs nothing of backbeat.

Lives here: the exception hierarchy and ``Problem`` (``errors``), strict JSON reading and
canonical writing (``jsonio``), asset kinds and name grammars (``names``), BEAT-compatible
hashes and backbeat's typed cache keys (``hashing``), files written atomically and made durable
(``durable``), and the ``.backbeatrc`` configuration (``config``).
May import: the standard library, simplejson; nothing else of backbeat.
"""
