"""Provenance: the record of what each run used and produced (``records``).

May import: ``core``, ``declarations``, ``data``, ``cache``, ``planning``.
"""
