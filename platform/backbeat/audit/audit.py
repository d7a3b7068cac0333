"""``status``: what changed since a recorded run; ``audit``: whether a recorded run still holds.

Both start from the present state of the experiment and explain differences from the
pre-images (:mod:`backbeat.audit.changes`).

:func:`audit` goes further: every asset and every data file the views read is re-hashed (no
stat memo), every key recomputed, every cache file verified against its content digest, its
name (the key it holds) and the record, every analyzer result summary against its result, the
environment each block ran in (interpreter, Python and package versions: its ``runtime``)
against what its environment maps to now; with
``rerun`` the experiment runs again into a scratch cache and output digests are compared in
execution order — the first diverging block is named with the input responsible, or as
non-deterministic when all its inputs matched.
"""

from __future__ import annotations

import os
from typing import Any

from backbeat.audit.changes import (
    Current,
    asset_changes,
    current,
    data_changes,
    dataset_changes,
    explain_block,
    json_diff,
    last_block,
    upstream_datasets,
)
from backbeat.cache.backends import open_store
from backbeat.cache.results import bound_records, summary_problem
from backbeat.cache.store import CacheStore
from backbeat.core.errors import DataError, ExecutionError, IntegrityError
from backbeat.execution.environments import Present
from backbeat.execution.local import LocalExecutor
from backbeat.planning.model import Job
from backbeat.planning.selection import Options
from backbeat.provenance import builder, records

__all__ = ["audit", "json_diff", "status"]

Cache = CacheStore | str | os.PathLike


# -- status ----------------------------------------------------------------------------------
def status(prefix: str | os.PathLike, cache: Cache, name: str) -> dict:
    """Every block as ``cached`` / ``will run`` / ``stale``, with what changed since the recorded run.

    Reads the latest record (and, if that run failed, the latest successful one) — never the
    whole history: a block that did not run in the latest record carries its last entry.
    """
    from backbeat.core.names import parse_name

    _k, name = parse_name("experiment", name)
    store = open_store(cache)
    corrupt = None
    try:  # a corrupt latest record is said as such, not taken for a missing one
        latest = records.latest(store, name, strict=True)
        record = latest if latest is None or latest.get("status") == "ok" else records.load(store, name)
    except DataError as exc:
        latest = record = None
        corrupt = str(exc)
    now = current(prefix, store, name, record)
    out: dict[str, Any] = {"experiment": name, "record": None, "assets": [], "data_files": [],
                           "datasets": {}, "blocks": {}}
    if corrupt is not None:
        out["corrupt"] = corrupt
    if record is None or latest is None:
        for job in now.plan.jobs:
            cached = _committed(store, job)
            out["blocks"][job.name] = {"state": "cached" if cached else "will run", "key": job.key or None,
                                       "reason": "output in the cache" if cached else "output not in the cache",
                                       "changes": _entry_problems(store, job) if cached else []}
            if out["blocks"][job.name]["changes"]:
                out["blocks"][job.name].update(state="stale", reason="its cache file is not what its key says")
        out["note"] = (f"{corrupt}: nothing to compare with" if corrupt is not None else records.older_format(store, name)
                       or "no recorded run of this experiment in the cache: nothing to compare with")
        return out
    out["record"] = {"created": record.get("created"), "status": record.get("status")}
    assets = asset_changes(record, now)
    data = data_changes(record, now)
    datasets = dataset_changes(record, now, assets, data)
    out["assets"] = [{k: v for k, v in a.items() if k != "message"} for a in assets.values()]
    out["data_files"] = list({c["message"]: dict(c, dataset=ds) for ds, cs in data.items() for c in cs}.values())
    out["datasets"] = datasets
    upstream = upstream_datasets(now.plan)
    for job in now.plan.jobs:
        old = last_block(latest, job.name)
        cached = _committed(store, job)
        same = old is not None and job.key == old.get("key")
        entry: dict[str, Any] = {"key": job.key or None, "recorded_key": old.get("key") if old else None,
                                 "changes": []}
        wrong = _entry_problems(store, job) if cached else []
        if old is None:
            last = latest["blocks"].get(job.name, {}).get("status")
            entry.update(state="cached" if cached else "will run",
                         reason=(f"{last} in the recorded run" if last else "not in any recorded run")
                         + ("; output in the cache" if cached else ""))
        else:
            changes = explain_block(job, old, now, assets, datasets) if job.key != old.get("key") else []
            if not job.key and not changes:
                changes = [f"input dataset(s) {', '.join(sorted(upstream[job.name]))} must be re-indexed"]
            replaced = _replaced_outputs(store, job, old) if cached and same and not wrong else []
            entry["changes"] = changes + replaced
            if changes and not cached:
                entry.update(state="stale", reason="changed since the recorded run")
            elif replaced:
                entry.update(state="stale", reason="cached, but its cache file differs from the recorded one")
            elif changes:
                entry.update(state="cached", reason="changed since the recorded run, but the outputs for the current "
                                                    "inputs are in the cache")
            elif cached:
                entry.update(state="cached", reason="output in the cache, unchanged since the recorded run")
            else:
                entry.update(state="will run", reason="unchanged, but its output is no longer in the cache")
        if wrong:
            entry["changes"] += wrong
            entry.update(state="stale", reason="its cache file is not what its key says (the next run quarantines "
                                               "it and runs the block again)")
        out["blocks"][job.name] = entry
    return out


def _committed(store: CacheStore, job: Job) -> bool:
    return bool(job.key) and store.committed(job.output_keys)


def _entry_problems(store: CacheStore, job: Job) -> list[str]:
    """What is wrong with a cached job's entries that ``status`` can see cheaply: an entry
    holding another key's output; an analyzer result summary that is not its result's."""
    out = []
    for name, o in job.outputs.items():
        try:
            store.check_identity(o.key)
        except (IntegrityError, OSError) as exc:
            out.append(f"output {name}: {exc}")
            continue
        if job.kind == "analyzer" and bound_records(store, o.key) is None:
            try:
                problem = summary_problem(store, o.key)
            except (IntegrityError, OSError) as exc:
                problem = str(exc)
            if problem:
                out.append(f"output {name}: {problem}")
    return out


def _replaced_outputs(store: CacheStore, job: Job, old: dict) -> list[str]:
    """Outputs whose stored digest differs from the recorded one (cheap: attributes only)."""
    out = []
    for name, o in job.outputs.items():
        rec = old.get("outputs", {}).get(name, {}).get("digest")
        now = builder.output_digest(store, o.key)
        if rec and now != rec:
            out.append(f"cache file of output {name} ({store.name(o.key, '.h5')}): digest "
                       f"{(now or 'unreadable')[:12]} differs from the recorded {rec[:12]}")
    return out


# -- audit -----------------------------------------------------------------------------------
def audit(prefix: str | os.PathLike, cache: Cache, name: str | None = None,
          record: dict | None = None, rerun: bool = False) -> dict:
    """Check a recorded run against the files on disk; ``ok`` is False on any mismatch.

    ``record``: a record received from elsewhere (``backbeat audit RECORD.json``); by default the
    latest record of ``name`` in ``cache``.  ``rerun``: execute the experiment again into a
    scratch cache and compare output digests block by block.
    """
    from backbeat.core.names import parse_name

    store = open_store(cache)
    if record is None:
        if name is None:
            raise ExecutionError("audit: name an experiment or give a provenance record")
        _k, name = parse_name("experiment", name)
        record = records.load(store, name)
        if record is None:
            raise ExecutionError(records.older_format(store, name) or
                                 f"no provenance record of experiment `{name}' in cache `{store.location}': "
                                 f"run it first")
    name = record["experiment"]
    now = current(prefix, store, name, record, thorough=True)
    mismatches: list[dict] = []
    notes: list[str] = []

    def bad(kind: str, subject: str, message: str) -> None:
        mismatches.append({"kind": kind, "subject": subject, "message": message})

    assets = asset_changes(record, now)
    for a in assets.values():
        bad("asset", a["asset"], a["message"])
    data = data_changes(record, now)
    for c in {c["message"]: c for cs in data.values() for c in cs}.values():
        bad("data-file", f"{c['database']}:{c['file'] or ''}", c["message"])
    datasets = dataset_changes(record, now, assets, data)
    if record.get("status") != "ok":
        failed = [n for n, b in record["blocks"].items() if b.get("status") == "failed"]
        notes.append(f"the recorded run {record.get('status')}" + (f" (block(s) {', '.join(failed)})" if failed else ""))
    ds_report = _audit_datasets(record, now, datasets, bad, notes)
    blocks = _audit_blocks(record, now, datasets, assets, bad, notes)
    present = Present(prefix)
    for job in now.plan.jobs:  # the interpreter, Python and packages the block ran with, and now
        old = record["blocks"].get(job.name) or {}
        changed = present.changes(job.environment, old.get("runtime"))
        if changed and job.name in blocks:
            blocks[job.name]["environment"] = changed
            bad("environment", job.name, f"block `{job.name}' ran in an environment that changed since: "
                + "; ".join(changed))
    result: dict[str, Any] = {"experiment": name, "record": {"created": record.get("created"),
                                                             "status": record.get("status")},
                              "datasets": ds_report, "blocks": blocks, "notes": notes}
    if rerun:
        result["rerun"] = _rerun(prefix, name, record, bad)
    result["mismatches"] = mismatches
    result["ok"] = not mismatches
    return result


def _audit_datasets(record: dict, now: Current, datasets: dict, bad: Any, notes: list) -> dict:
    out = {}
    for ds_name, old in record["datasets"].items():
        ds = now.plan.datasets.get(ds_name)
        entry: dict[str, Any] = {"index_key": "match", "index_file": "not in the cache"}
        if ds is None:
            bad("dataset", ds_name, f"dataset `{ds_name}' is no longer part of the experiment")
            continue
        if ds.index_key != old["index_key"]:
            entry["index_key"] = "mismatch"
            bad("dataset", ds_name, f"dataset `{ds_name}': view index key differs from the record: "
                + "; ".join(datasets.get(ds_name, ["(no component explains it)"])))
        digest = now.store.index_digest(old["index_key"])
        if digest is not None:
            entry["index_file"] = "ok" if digest == old.get("index_digest") else "mismatch"
            if entry["index_file"] == "mismatch":
                bad("cache-file", f"index:{ds_name}", f"dataset `{ds_name}': view index file "
                    f"{now.store.name(old['index_key'], '.db')} has content sha256 {digest[:12]}, the record says "
                    f"{(old.get('index_digest') or 'none')[:12]}")
        else:
            notes.append(f"dataset `{ds_name}': view index not in this cache (not verified)")
        if old.get("data") and now.data.get(ds_name) is None and now.index_source.get(ds_name) == "record":
            notes.append(f"dataset `{ds_name}': the data manifest of the record ({old['data'][:12]}) is not in this "
                         f"cache: the data files its view read are not verified")
        out[ds_name] = entry
    return out


def _audit_blocks(record: dict, now: Current, datasets: dict, assets: dict, bad: Any, notes: list) -> dict:
    out = {}
    for job in now.plan.jobs:
        old = record["blocks"].get(job.name)
        if old is None:
            bad("block", job.name, f"block `{job.name}' is not in the record")
            continue
        entry: dict[str, Any] = {"key": "match", "recorded_key": old.get("key"), "key_now": job.key or None,
                                 "outputs": {}}
        if job.key != old.get("key"):
            entry["key"] = "mismatch" if job.key else "unknown"
            why = explain_block(job, old, now, assets, datasets) or ["(no recorded component differs)"]
            entry["changes"] = why
            bad("key", job.name, f"block `{job.name}': key {'cannot be recomputed' if not job.key else 'differs'} "
                f"(recorded {(old.get('key') or 'none')[:12]}, now {(job.key or 'unknown')[:12]}): " + "; ".join(why))
        for o_name, o in old.get("outputs", {}).items():
            if not o.get("key"):
                entry["outputs"][o_name] = "not recorded"
                continue
            if not now.store.output_path(o["key"]).is_file():
                entry["outputs"][o_name] = "not in the cache"
                notes.append(f"block `{job.name}': output {o_name} not in this cache (not verified)")
                continue
            try:
                digest = now.store.verify_output(o["key"])
                problem = summary_problem(now.store, o["key"]) if old.get("kind") == "analyzer" else None
            except (IntegrityError, OSError) as exc:
                entry["outputs"][o_name] = "corrupted"
                bad("cache-file", f"{job.name}.{o_name}", f"block `{job.name}': cache file of output {o_name} "
                    f"({now.store.name(o['key'], '.h5')}) is corrupted: {exc}")
                continue
            if problem:
                entry["outputs"][o_name] = "summary mismatch"
                bad("cache-file", f"{job.name}.{o_name}", f"block `{job.name}': {problem}")
                continue
            if o.get("digest") and digest != o["digest"]:
                entry["outputs"][o_name] = "mismatch"
                bad("cache-file", f"{job.name}.{o_name}", f"block `{job.name}': cache file of output {o_name} "
                    f"holds content {digest[:12]}, the record says {o['digest'][:12]}")
            else:
                entry["outputs"][o_name] = "ok"
        out[job.name] = entry
    return out


def _rerun(prefix: str | os.PathLike, name: str, record: dict, bad: Any) -> dict:
    """Run again into a scratch cache; compare digests in execution order."""
    scratch = CacheStore.scratch()
    try:
        rep = LocalExecutor().run(prefix, scratch, name, Options(force=True))
        new = records.load(scratch, name) or {}
    finally:
        scratch.destroy()
    out: dict[str, Any] = {"status": rep["status"], "datasets": {}, "blocks": {}, "first_divergence": None}
    for ds_name, old in record["datasets"].items():
        nd = new.get("datasets", {}).get(ds_name, {}).get("index_digest")
        same = nd == old.get("index_digest")
        out["datasets"][ds_name] = "same" if same else "different"
        if not same:
            bad("rerun", f"index:{ds_name}", f"dataset `{ds_name}': the re-built view index differs from the "
                f"recorded one ({(old.get('index_digest') or 'none')[:12]} -> {(nd or 'none')[:12]})")
    for b_name in record["order"]:
        ob, nb = record["blocks"][b_name], new.get("blocks", {}).get(b_name)
        if nb is None or nb.get("status") != "ran":
            err = (nb or {}).get("error", {}).get("message", "it did not run")
            out["blocks"][b_name] = "failed"
            bad("rerun", b_name, f"block `{b_name}' failed on re-run: {err}")
            if out["first_divergence"] is None:
                out["first_divergence"] = {"block": b_name, "outputs": [], "inputs": [], "non_deterministic": False,
                                           "message": f"block `{b_name}' failed on re-run: {err}"}
            continue
        diverged = [o for o, oo in ob.get("outputs", {}).items()
                    if oo.get("digest") and nb["outputs"].get(o, {}).get("digest") != oo["digest"]]
        out["blocks"][b_name] = "different" if diverged else "same"
        if not diverged:
            continue
        inputs = [i for i, oi in ob.get("inputs", {}).items()
                  if oi.get("digest") != nb["inputs"].get(i, {}).get("digest")]
        if inputs:
            why = ", ".join(f"{i} (from {'dataset' if ob['inputs'][i]['source'] == 'dataset' else 'block'} "
                            f"`{ob['inputs'][i]['node']}')" for i in inputs)
            message = f"block `{b_name}': output(s) {', '.join(diverged)} differ because input(s) {why} differ"
        else:
            message = (f"block `{b_name}' is non-deterministic: same inputs, different output(s) "
                       f"{', '.join(diverged)}")
        bad("rerun", b_name, message)
        if out["first_divergence"] is None:
            out["first_divergence"] = {"block": b_name, "outputs": diverged, "inputs": inputs,
                                       "non_deterministic": not inputs, "message": message}
    return out
