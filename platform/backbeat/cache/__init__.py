"""Cache: where outputs, view indexes and run records live, and their housekeeping.

Lives here: cache paths and reading analyzer results (``results``), cache inspection,
verification and garbage collection (``tools``).
May import: ``core``, ``declarations``, ``data``.
"""
