"""The output logs of a run's processes, kept in the cache beside the entries they made.

Every process a run starts writes its stdout and stderr to a bounded log file
(:mod:`backbeat.processes.logs`: first 256 KiB and last 768 KiB), never to backbeat's own
streams.  Logs are named by the key of what the process computes
(:meth:`backbeat.cache.store.CacheStore.log_path`):

* a block or analyzer: ``<job key>.log``; one slot of a split block: ``<job key>.slot<k>.log``;
  one side of a loop: ``<job key>.evaluator.log`` and ``<job key>.processor.log``;
* the indexing job of a view: ``<index key>.log``;
* the database provider (the views' ``get``): ``<provider key>.log``, keyed by the indexes it serves.

A log is the output of the last process that computed its key: the run that produced a
cached output left it.  Run reports and provenance records list each block's logs
(``logs``); a failed block's error carries the tail of its log (``output``);
``backbeat experiments logs NAME [BLOCK]`` shows them (:func:`experiment_logs`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from backbeat.cache.store import CacheStore
from backbeat.core import hashing
from backbeat.core.errors import ExecutionError, UsageError
from backbeat.planning.model import Job, Plan
from backbeat.processes.logs import tail

#: the parts of a loop job: its processes ``<loop>#0`` and ``<loop>#1``
LOOP_SIDES = ("evaluator", "processor")


def process_log(store: CacheStore, job: Job, process: str) -> Path:
    """The log of one process of ``job`` (``job``, ``job#k``: a slot, or a side of a loop)."""
    _name, _, part = process.partition("#")
    if not part:
        return store.log_path(job.key)
    k = int(part)
    return store.log_path(job.key, LOOP_SIDES[k] if job.kind == "loop" else f"slot{k}")


def provider_key(index_keys: list[str]) -> str:
    """The key naming the log of a database provider serving these view indexes."""
    return hashing.key("database-provider-log", sorted(index_keys))


def _parts(job: Job) -> list[str | None]:
    if job.kind == "loop":
        return list(LOOP_SIDES)
    return [None] + [f"slot{k}" for k in range(job.nb_slots if job.nb_slots > 1 else 0)]


def job_logs(store: CacheStore, job: Job) -> dict[str, Path]:
    """The logs of ``job`` in the cache: ``{part ("" for the block's own process): path}``."""
    if not job.key:
        return {}
    found = {}
    for part in _parts(job):
        path = store.log_path(job.key, part)
        if path.is_file():
            found[part or ""] = path
    return found


def _entry(store: CacheStore, path: Path) -> dict:
    return {"path": os.path.relpath(path, store.root), "bytes": store.size(path)}


def report_logs(store: CacheStore, job: Job) -> dict[str, dict]:
    """``{part: {"path" (relative to the cache), "bytes"}}`` of a job's logs, for reports and records."""
    return {part: _entry(store, path) for part, path in job_logs(store, job).items()}


def failure_output(path: Path) -> str | None:
    """The last lines a failed process wrote (None if it wrote nothing)."""
    return tail(path)


def experiment_logs(plan: Plan, store: CacheStore, block: str | None = None) -> dict[str, Any]:
    """The logs of an experiment's blocks (keys assigned), its views' indexing and its database provider.

    ``{"experiment", "blocks": {block: {part: {"path", "bytes"}}}, "datasets": {…}, "provider": {…} | None}``;
    with ``block``, only that block, each log with its ``text`` too.
    """
    jobs = {j.name: j for j in plan.jobs}
    if block is not None and block not in jobs:
        raise UsageError(f"experiment `{plan.experiment}' has no block `{block}' (its blocks: {', '.join(jobs)})")
    out: dict[str, Any] = {"experiment": plan.experiment, "blocks": {}, "datasets": {}, "provider": None}
    for name, job in jobs.items():
        if block is not None and name != block:
            continue
        logs = {}
        for part, path in job_logs(store, job).items():
            entry = _entry(store, path)
            if block is not None:
                entry["text"] = path.read_bytes().decode("utf-8", "replace")
            logs[part] = entry
        out["blocks"][name] = logs
    if block is None:
        for name, ds in plan.datasets.items():
            path = store.log_path(ds.index_key)
            if path.is_file():
                out["datasets"][name] = _entry(store, path)
        if plan.datasets:
            path = store.log_path(provider_key([ds.index_key for ds in plan.datasets.values()]))
            if path.is_file():
                out["provider"] = _entry(store, path)
    return out


def logs(prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike, name: str,
         block: str | None = None) -> dict[str, Any]:
    """:func:`experiment_logs` of experiment ``name`` (``backbeat experiments logs``)."""
    from backbeat.execution.workspace import Workspace

    workspace = Workspace.open(prefix, cache)
    plan, missing = workspace.keyed_plan(name)
    if missing:
        raise ExecutionError(f"experiment `{plan.experiment}' has no logs: dataset `{missing[0]}' was never "
                             "indexed (run it first)")
    return experiment_logs(plan, workspace.store, block)

