"""Where outputs live in the cache, and reading analyzer results.

Paths: an output is ``<cache>/to_path(output key, ".h5")``, a view index
``<cache>/to_path(dataset-index key, ".db")``.  Results: once a result file has been
verified and read, its records are kept in a JSON summary beside it (``<file>.json``),
trusted while the file's size and modification time are unchanged, so a cached re-run
needs neither h5py nor a read (``backbeat cache verify`` and ``audit`` check digests).
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from backbeat.core import hashing, jsonio
from backbeat.core.errors import ExecutionError
from backbeat.declarations.catalog import Catalog
from backbeat.planning.planner import Plan, assign_keys, plan


class _LazyModule:
    """A module imported on first use: a fully cached run never needs h5py."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


cachefile = _LazyModule("backbeat.data.cachefile")


def output_path(cache: Path, key: str) -> Path:
    return cache / hashing.to_path(key, ".h5")


def index_path(cache: Path, key: str) -> Path:
    return cache / hashing.to_path(key, ".db")


def _summary_path(path: Path) -> Path:
    return Path(f"{path}.json")


def summary(path: Path) -> list | None:
    """The JSON summary of a verified result file, if the file is unchanged since (size, mtime)."""
    try:
        st = path.stat()
        data = jsonio.parse(_summary_path(path).read_bytes())
    except (OSError, jsonio.JSONProblem):
        return None
    if isinstance(data, dict) and data.get("size") == st.st_size and data.get("mtime_ns") == st.st_mtime_ns:
        return data.get("records")
    return None


def read_result(path: Path) -> list[dict]:
    """Records of one analyzer result file: ``[{"start", "end", "data"}, …]``.

    The file is verified against its content digest the first time; its records are then
    kept in a small JSON summary beside it (``<file>.json``), trusted while the file's size
    and modification time are unchanged, so a cached re-run needs neither h5py nor a read.
    ``backbeat cache verify`` and ``experiments audit`` always check the digests.
    """
    records = summary(path)
    if records is not None:
        return records
    with cachefile.CacheReader(str(path), verify=True) as reader:
        batch = reader.read_units(0, len(reader))
        st = path.stat()
    records = [{"start": int(s), "end": int(e), "data": jsonio.plain(v.as_dict())}
               for v, s, e in zip(batch.to_values(), batch.starts, batch.ends, strict=True)]
    kept = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "records": records}
    tmp = Path(f"{_summary_path(path)}.tmp-{os.getpid()}")
    try:
        tmp.write_text(jsonio.dumps(kept))
        os.replace(tmp, _summary_path(path))
    except OSError:  # a read-only cache still gives results
        tmp.unlink(missing_ok=True)
    return records


def read_results(plan: Plan, cache: Path) -> dict[str, list]:
    """Analyzer results present in the cache: ``{analyzer: [{"start", "end", "data"}, …]}``."""
    results = {}
    for job in plan.jobs:
        if job.kind != "analyzer":
            continue
        path = output_path(cache, job.outputs["result"].key)
        if path.is_file():
            results[job.name] = read_result(path)
    return results


def cached_results(prefix: str | os.PathLike, cache: str | os.PathLike, name: str) -> dict[str, list]:
    """Results of an experiment already in the cache, without running anything."""
    from backbeat.data.dbindex import index_digest

    catalog = Catalog(prefix)
    p = plan(catalog, name)
    for ds in p.datasets.values():
        path = index_path(Path(cache), ds.index_key)
        if not path.is_file():
            raise ExecutionError(f"experiment `{p.experiment}' has no cached results (dataset `{ds.name}' "
                                 f"was never indexed); run it first")
        ds.index_digest = index_digest(str(path))
    assign_keys(p)
    results = read_results(p, Path(cache))
    missing = [j.name for j in p.jobs if j.kind == "analyzer" and j.name not in results]
    if missing:
        raise ExecutionError(f"experiment `{p.experiment}' has no cached results for {', '.join(missing)}; "
                             f"run it first")
    return results


def scratch_cache() -> str:
    """A fresh temporary cache folder (for audits re-running an experiment, and tests)."""
    return tempfile.mkdtemp(prefix="backbeat-cache-")


def remove_cache(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def report(run: Any) -> dict:
    """The JSON-able report of a run (``backbeat experiments run --json``): each block's
    status, keys, error and statistics, and the analyzers' cached results."""
    blocks = {}
    for job in run.plan.jobs:
        entry: dict[str, Any] = {"status": run.status.get(job.name, "pending"), "key": job.key,
                                 "beat_hash": job.beat_hash,
                                 "outputs": {n: o.key for n, o in job.outputs.items()}}
        if job.name in run.errors:
            entry["error"] = run.errors[job.name]
        if job.name in run.stats:
            entry["statistics"] = run.stats[job.name]
        blocks[job.name] = entry
    failed = any(b["status"] == "failed" for b in blocks.values())
    return {
        "experiment": run.plan.experiment,
        "status": "failed" if failed else "ok",
        "blocks": blocks,
        "results": read_results(run.plan, run.cache),
    }


def drop_partial(cache: Path, job: Any, slots: int, committed: bool = False) -> None:
    """Remove what an unfinished job left of its outputs: writers' temporary files, the
    files of its first ``slots`` slots, and with ``committed`` the committed outputs too."""
    for o in job.outputs.values():
        final = output_path(cache, o.key)
        cachefile.remove_stale_temporaries(final)
        if committed:
            final.unlink(missing_ok=True)
        for k in range(slots):
            part = Path(f"{final}.slot{k}")
            cachefile.remove_stale_temporaries(part)
            part.unlink(missing_ok=True)
