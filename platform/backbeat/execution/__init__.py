"""Execution: running a plan — the executor lifecycle and its implementations.

Lives here: the ``Executor`` interface and its one lifecycle (``base``: prepare → decide →
execute → report → provenance record), the executor table (``executors``), the state of a run
(``state``: ``JobState``, ``RunState``, ``Run``), where a run happens (``workspace``: prefix,
cache store, database roots from ``.backbeatrc``), building the specs block processes read
(``specs``), cache decisions (``decisions``), view indexing and the database provider
(``views``), which interpreter runs each job and ``environments list|check`` (``environments``),
the staging of sandboxed runs' outputs (``sandboxing``), the local executor (``local``, its scheduling loop in ``scheduler``) and the Dask one (``dask_executor``, imported only
when chosen), one block job in a fresh interpreter (``remote``), split blocks (``splitting``),
run reports and results (``report``), ``databases index|view`` (``datasets``) and the verbs
that need experiments' cache keys (``inventory``).
May import: every layer below (``core`` … ``runtime``).
"""
