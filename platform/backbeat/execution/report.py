"""Run reports and analyzer results (``experiments run --json``, ``experiments results``).

A report gives each block's status, keys, error, statistics and output logs
(:mod:`backbeat.execution.logs`), and the analyzers' results
as read from the cache (``{analyzer: [{"start", "end", "data"}, …]}``, see
:meth:`backbeat.cache.store.CacheStore.read_result`; ``data`` in the results' declaration
order), and the results declared ``"display": false`` (``hidden_results``: the command line
does not print them).
"""

from __future__ import annotations

import os
from typing import Any

from backbeat.cache.store import CacheStore
from backbeat.core.errors import ExecutionError
from backbeat.declarations.algorithm import Algorithm
from backbeat.declarations.catalog import Catalog
from backbeat.execution.logs import report_logs
from backbeat.execution.state import Run
from backbeat.execution.workspace import Workspace
from backbeat.planning.model import Plan


def _declared_order(records: list[dict], names: list[str]) -> list[dict]:
    """Records whose ``data`` lists the results in declaration order (any other key after)."""
    out = []
    for rec in records:
        data = rec["data"]
        ordered = {n: data[n] for n in names if n in data}
        ordered.update((k, v) for k, v in data.items() if k not in ordered)
        out.append(dict(rec, data=ordered))
    return out


def read_results(plan: Plan, store: CacheStore) -> dict[str, list]:
    """Analyzer results present in the cache: ``{analyzer: [{"start", "end", "data"}, …]}``, each
    record's ``data`` in the order the analyzer's algorithm declares its results (as BEAT prints them)."""
    results = {}
    for job in plan.jobs:
        if job.kind != "analyzer":
            continue
        out = job.outputs["result"]
        if out.key and store.output_path(out.key).is_file():
            results[job.name] = _declared_order(store.read_result(out.key), list(plan.expanded[out.dataformat]))
    return results


def hidden_results(plan: Plan, catalog: Catalog) -> dict[str, list[str]]:
    """``{analyzer: [result, …]}``: the results its algorithm declares ``"display": false``
    (kept in JSON, not printed by the command line)."""
    out = {}
    for job in plan.jobs:
        if job.kind == "analyzer":
            hidden = Algorithm(catalog.get("algorithm", job.algorithm)).hidden_results
            if hidden:
                out[job.name] = hidden
    return out


def report(run: Run) -> dict:
    """The JSON-able report of a run: each block's status, keys, error and statistics, and the
    analyzers' cached results."""
    state = run.state
    blocks = {}
    for job in run.plan.jobs:
        status = state.status.get(job.name)
        entry: dict[str, Any] = {"status": status.value if status is not None else "pending", "key": job.key,
                                 "beat_hash": job.beat_hash,
                                 "outputs": {n: o.key for n, o in job.outputs.items()}}
        if job.name in state.errors:
            entry["error"] = state.errors[job.name]
        if job.name in state.stats:
            entry["statistics"] = state.stats[job.name]
        logs = report_logs(run.store, job)
        if logs:
            entry["logs"] = logs
        if job.name in state.runtime:  # where it ran: interpreter, Python and package versions, sandbox
            entry["runtime"] = state.runtime[job.name]
        blocks[job.name] = entry
    failed = any(b["status"] == "failed" for b in blocks.values())
    out: dict[str, Any] = {
        "experiment": run.plan.experiment,
        "status": "failed" if failed else "ok",
        "blocks": blocks,
        "results": read_results(run.plan, run.store),
        "hidden_results": hidden_results(run.plan, run.catalog),
    }
    if state.incidents:  # cache entries quarantined (or summaries rebuilt) by this run
        out["incidents"] = list(state.incidents)
    return out


def cached_report(prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike, name: str) -> dict:
    """``{"results", "hidden_results"}`` of an experiment already in the cache (nothing is run)."""
    workspace = Workspace.open(prefix, cache)
    p, missing = workspace.keyed_plan(name)
    if missing:
        raise ExecutionError(f"experiment `{p.experiment}' has no cached results (dataset `{missing[0]}' "
                             f"was never indexed); run it first")
    results = read_results(p, workspace.store)
    absent = [j.name for j in p.jobs if j.kind == "analyzer" and j.name not in results]
    if absent:
        raise ExecutionError(f"experiment `{p.experiment}' has no cached results for {', '.join(absent)}; "
                             f"run it first")
    return {"results": results, "hidden_results": hidden_results(p, workspace.catalog)}


def cached_results(prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike, name: str) -> dict[str, list]:
    """Results of an experiment already in the cache, without running anything."""
    return cached_report(prefix, cache, name)["results"]
