"""Execution: running a plan — locally (``local``) or on Dask (``dask_executor``).

Lives here: the executors, split blocks (``splitting``), database verbs that run views
(``datasets``) and the runner of one block job in a fresh interpreter (``remote``).
May import: every layer below (``core`` … ``runtime``).
"""
