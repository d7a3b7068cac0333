"""The history of an experiment: its past runs, from the provenance records in the cache.

Records are numbered from the newest: run 1 is the last run, run 2 the one before, and so on
(the cache keeps the last 20, see :mod:`backbeat.provenance.records`).  Each entry tells when
the run was, its status, its block counts, what changed since the run before it (asset
hashes, block parameters, database files, the environment) and a digest of its results (the
analyzers' output digests), with the scalar results themselves while they are still in the
cache.
"""

from __future__ import annotations

import os
from typing import Any

from backbeat.core import hashing
from backbeat.core.errors import DataError, ExecutionError, InvalidNameError, UsageError
from backbeat.core.names import parse_name
from backbeat.reporting import engine
from backbeat.reporting.comparison import scalar_results


def _name(name: str) -> str:
    try:
        return parse_name("experiment", name)[1]
    except InvalidNameError as exc:
        raise UsageError(str(exc)) from None


def results_digest(rec: dict) -> str | None:
    """A short digest of a run's results: sha256 of the analyzers' output digests (None if none).

    >>> results_digest({"blocks": {"a": {"kind": "analyzer", "outputs": {"result": {"digest": "d"}}}}})
    'c71200722530df2d'
    """
    parts = []
    for name, b in sorted(rec.get("blocks", {}).items()):
        if b.get("kind") == "analyzer":
            for out, o in sorted((b.get("outputs") or {}).items()):
                if o.get("digest"):
                    parts.append(f"{name}.{out}:{o['digest']}")
    return hashing.sha("\n".join(parts))[:16] if parts else None


def changes(old: dict, new: dict) -> list[str]:
    """What changed from the ``old`` record to the ``new`` one, one readable line each."""
    out: list[str] = []
    oa, na = old.get("assets", {}), new.get("assets", {})
    for label in sorted(set(oa) | set(na)):
        if label not in oa:
            out.append(f"{label}: now used")
        elif label not in na:
            out.append(f"{label}: no longer used")
        elif oa[label].get("hash") != na[label].get("hash"):
            what = engine.json_diff(oa[label].get("declaration"), na[label].get("declaration"))
            code = oa[label].get("code_hash") != na[label].get("code_hash")
            detail = "; ".join(what[:3]) if what else ("code changed" if code else "hash changed")
            out.append(f"{label}: {detail}")
    ob, nb = old.get("blocks", {}), new.get("blocks", {})
    for block in new.get("order", []):
        if block in ob and ob[block].get("parameters") != nb[block].get("parameters"):
            for line in engine.json_diff(ob[block].get("parameters"), nb[block].get("parameters")):
                out.append(f"block {block}: parameter {line}")
    od, nd = old.get("datasets", {}), new.get("datasets", {})
    for ds in sorted(set(od) & set(nd)):  # the data its view read (a data manifest digest)
        if od[ds].get("data") and nd[ds].get("data") and od[ds]["data"] != nd[ds]["data"]:
            out.append(f"dataset {ds} ({nd[ds].get('database')}): data files changed")
    oe, ne = old.get("environment", {}), new.get("environment", {})
    for key in ("backbeat", "python", "platform"):
        if oe.get(key) != ne.get(key):
            out.append(f"environment: {key} {oe.get(key)} -> {ne.get(key)}")
    op, np_ = oe.get("packages") or {}, ne.get("packages") or {}
    for pkg in sorted(set(op) | set(np_)):
        if op.get(pkg) != np_.get(pkg):
            out.append(f"environment: {pkg} {op.get(pkg)} -> {np_.get(pkg)}")
    return out


def _results(cache: str | os.PathLike, rec: dict) -> dict[str, Any] | None:
    results = {}
    for name, b in rec.get("blocks", {}).items():
        if b.get("kind") != "analyzer":
            continue
        key = ((b.get("outputs") or {}).get("result") or {}).get("key")
        records = engine.read_result(cache, key) if key else None
        if records is None:
            return None
        results[name] = records
    return scalar_results(results) if results else None


def entry(n: int, rec: dict, previous: dict | None, cache: str | os.PathLike) -> dict:
    counts: dict[str, int] = {}
    for b in rec.get("blocks", {}).values():
        counts[b.get("status", "?")] = counts.get(b.get("status", "?"), 0) + 1
    wall = sum((b.get("statistics") or {}).get("wall_s", 0.0) for b in rec.get("blocks", {}).values()
               if b.get("status") == "ran")
    opts = {k: v for k, v in (rec.get("options") or {}).items() if v}
    return {"run": n, "created": rec.get("created"), "status": rec.get("status"), "blocks": counts,
            "wall_s": round(wall, 3), "options": opts,
            "changes": changes(previous, rec) if previous is not None else None,
            "results_digest": results_digest(rec), "results": _results(cache, rec)}


def history(cache: str | os.PathLike, name: str) -> dict:
    """``{"experiment", "runs": [entry, newest first], "corrupt": [{"path", "message"}]}``
    (``changes`` is None for the oldest run; corrupt records are left out and listed apart)."""
    name = _name(name)
    corrupt: list[dict] = []
    records = engine.history(cache, name, corrupt)
    runs = [entry(i + 1, rec, records[i + 1] if i + 1 < len(records) else None, cache)
            for i, rec in enumerate(records)]
    return {"experiment": name, "runs": runs, "corrupt": corrupt}


def record(cache: str | os.PathLike, name: str, run: int = 1) -> dict:
    """The provenance record of run ``run`` (1 = the last run) of the experiment."""
    name = _name(name)
    corrupt: list[dict] = []
    records = engine.history(cache, name, corrupt)
    if not records and corrupt:
        raise DataError(f"the provenance record of experiment `{name}' is corrupt: {corrupt[0]['message']}")
    if not records:
        raise ExecutionError(f"no provenance record of experiment `{name}' in cache `{cache}': run it first")
    if not 1 <= run <= len(records):
        raise UsageError(f"experiment `{name}' has {len(records)} recorded run(s): --run must be 1 (the last) "
                         f"to {len(records)}")
    return records[run - 1]
