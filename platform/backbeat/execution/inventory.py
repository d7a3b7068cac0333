"""What the cache holds for experiments: ``experiments caches``, cache states, ``cache gc``.

These verbs need the keys of experiments, computed *without running user code*: an
experiment's keys are known only when every dataset it reads has its view index in the
cache (:meth:`backbeat.execution.workspace.Workspace.keyed_plan`).  ``gc`` keeps the outputs
of every valid experiment of the prefix whose keys are known, the view index of every set of
every valid database, and the code snapshots and data manifests that a kept index or any
stored provenance record references; deleting goes through :mod:`backbeat.cache.tools`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from backbeat.cache.backends import open_store
from backbeat.cache.store import INDEX, CacheStore
from backbeat.cache.tools import remove_blobs, remove_unneeded
from backbeat.core import jsonio
from backbeat.core.errors import BackbeatError, ExecutionError
from backbeat.core.names import parse_name
from backbeat.data import indexfiles
from backbeat.execution.logs import job_logs, provider_key
from backbeat.execution.workspace import Workspace
from backbeat.planning.model import Plan
from backbeat.planning.planner import dataset
from backbeat.provenance import records

Cache = CacheStore | str | os.PathLike


def experiment_caches(prefix: str | os.PathLike, cache: Cache, name: str) -> list[dict]:
    """One record per block output / analyzer result: block, output, key, path, exists, bytes."""
    _k, name = parse_name("experiment", name)
    workspace = Workspace.open(prefix, cache)
    p, missing = workspace.keyed_plan(name)
    if missing:
        raise ExecutionError(f"the cache keys of experiment `{name}' are not known: dataset(s) "
                             f"{', '.join(sorted(missing))} were never indexed (run the experiment, or "
                             f"`backbeat databases index' its databases)")
    store = workspace.store
    out = []
    for job in p.jobs:
        for o in job.outputs.values():
            path = store.output_path(o.key)
            out.append({"block": job.name, "kind": job.kind, "output": o.name, "key": o.key, "path": str(path),
                        "exists": path.is_file(), "bytes": store.size(path)})
    return out


def last_record(cache: Cache, experiment: str) -> dict | None:
    """The latest stored provenance record of an experiment (None if none or unreadable)."""
    try:
        return next(records.records(cache, experiment, older=True), None)
    except (BackbeatError, OSError):
        return None


def states(prefix: str | os.PathLike, cache: Cache, name: str,
           report: dict | None = None) -> tuple[Plan, dict[str, str]]:
    """``(plan, {node: cached|run|failed|unknown})`` without running anything.

    ``report`` is a run report (``experiments run --json``) or provenance record; by default the
    latest provenance record of the experiment is used.  Its failed blocks whose key is the
    current one (or that carry no key) are ``failed``.
    """
    workspace = Workspace.open(prefix, cache)
    p, missing = workspace.keyed_plan(name)
    if report is None:
        report = last_record(cache, p.experiment)
    out: dict[str, str] = {}
    for ds in p.datasets.values():
        out[ds.name] = "run" if ds.name in missing else "cached"
    for job in p.jobs:
        if missing:
            out[job.name] = "unknown"
        else:
            out[job.name] = "cached" if workspace.store.committed(job.output_keys) else "run"
    keys = {j.name: j.key for j in p.jobs}
    blocks = report.get("blocks") if isinstance(report, dict) else None
    if isinstance(blocks, dict):
        for block, entry in blocks.items():
            if block not in keys or not isinstance(entry, dict) or entry.get("status") != "failed":
                continue
            if out[block] != "cached" and (not entry.get("key") or not keys[block] or entry["key"] == keys[block]):
                out[block] = "failed"
    return p, out


def needed(prefix: str | os.PathLike, cache: Cache) -> tuple[set[Path], list[dict]]:
    """Files the prefix needs: ``(paths, skipped experiments with the reason)``."""
    from backbeat.declarations.database import sets as database_sets

    if not Path(prefix).is_dir():
        raise BackbeatError(f"prefix folder `{prefix}' does not exist")
    workspace = Workspace.open(prefix, cache)
    catalog, store = workspace.catalog, workspace.store
    ctx = workspace.context()
    keep: set[Path] = set()
    for db in catalog.prefix.list("database"):
        asset = catalog.get("database", db)
        if not asset.valid:
            continue
        try:
            for protocol, protocol_sets in database_sets(catalog, asset).items():
                for set_name in protocol_sets:
                    ds = dataset(ctx, f"{protocol}/{set_name}", db, protocol, set_name)
                    keep |= {store.index_path(ds.index_key), store.log_path(ds.index_key)}
        except BackbeatError:
            continue
    skipped = []
    for name in catalog.prefix.list("experiment"):
        try:
            p, missing = workspace.keyed_plan(name)
        except BackbeatError as exc:
            skipped.append({"experiment": name, "reason": str(exc).splitlines()[0]})
            continue
        keep |= {store.index_path(ds.index_key) for ds in p.datasets.values()}
        if missing:
            skipped.append({"experiment": name,
                            "reason": f"dataset(s) {', '.join(sorted(missing))} never indexed: no output kept"})
            continue
        outputs = {store.output_path(o.key) for j in p.jobs for o in j.outputs.values()}
        keep |= outputs | {Path(f"{path}.json") for path in outputs}  # + results' JSON summaries
        keep |= {log for j in p.jobs for log in job_logs(store, j).values()}  # + their output logs
        keep |= {store.log_path(ds.index_key) for ds in p.datasets.values()}
        keep.add(store.log_path(provider_key([ds.index_key for ds in p.datasets.values()])))
    for path in [p for p in keep if p.suffix == INDEX]:  # + index digests, tables, identity records, journals
        keep |= {*indexfiles.files(path), Path(f"{path}.journal")}
    return keep, skipped


def gc(prefix: str | os.PathLike, cache: Cache, dry_run: bool = False) -> dict:
    """Delete cache entries no experiment of the prefix needs, the lock files no run holds and the
    stat memos of files that no longer exist; report what is (or would be) freed."""
    skipped: list[dict] = []

    def keep() -> set[Path]:
        paths, skipped[:] = needed(prefix, cache)
        return paths

    out: dict[str, Any] = remove_unneeded(cache, keep, dry_run)
    code, data = referenced_blobs(cache)
    blobs = remove_blobs(cache, code, data, dry_run)
    out["removed"] += blobs["removed"]
    out["bytes_freed"] += blobs["bytes_freed"]
    unrecognised = out.pop("unrecognised_files")
    store = open_store(cache)
    forgotten = store.memo.prune(dry_run)
    return dict(out, locks_removed=store.prune_locks(dry_run), stat_memos_removed=forgotten,
                skipped_experiments=skipped, unrecognised_files=unrecognised)


def referenced_blobs(cache: Cache) -> tuple[set[str], set[str]]:
    """``(code snapshots, data manifests)`` referenced by the view indexes in the cache and by
    every stored provenance record (of any experiment, history included)."""
    store = open_store(cache)
    code: set[str] = set()
    data: set[str] = set()
    for deps in store.root.glob("??/??/??/*.db.deps"):
        try:
            data.add(str(jsonio.parse(deps.read_bytes()).get("manifest")))
        except (OSError, jsonio.JSONProblem, AttributeError):
            continue
    for path in store.records_folder.rglob("*.json") if store.records_folder.is_dir() else []:
        try:
            rec = jsonio.parse(path.read_bytes())
        except (OSError, jsonio.JSONProblem):
            continue
        if not isinstance(rec, dict):
            continue
        code |= {str(a.get("code_hash")) for a in (rec.get("assets") or {}).values() if isinstance(a, dict)}
        data |= {str(d.get("data")) for d in (rec.get("datasets") or {}).values() if isinstance(d, dict)}
    return code, data
