"""Provenance: the record of what each run used and produced.

Lives here: building a run's record (``builder``), storing and reading records and their
PROV-JSON form (``records``), manifests of data files and the stat cache (``manifests``).
May import: ``core``, ``declarations``, ``data``, ``cache``, ``planning``.
"""
