"""Cache: where outputs, view indexes and run records live, and their housekeeping.

Lives here: :class:`~backbeat.cache.store.CacheStore` (``store``: the one owner of the cache
layout, per-key locks, writers' temporaries, commits, verification and analyzer-result
summaries), making committed entries durable off the critical path (``durability``: the syncer
thread), the table of backends and ``open_store`` (``backends``), and housekeeping that
needs no plan (``tools``: info, view, verify, clear).  Nothing here plans an experiment:
verbs that need keys of experiments live in :mod:`backbeat.execution.inventory`.
May import: ``core``, ``declarations``, ``data``.
"""
