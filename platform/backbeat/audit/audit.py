"""What changed since a recorded run (``status``) and whether a run still holds (``audit``).

Both start from a provenance record (:mod:`backbeat.provenance`) and the prefix as it is on
disk now (:func:`current`): the experiment is planned again and keys are computed without
running any user code — a view index is taken from the cache when present, else from the
record when the index key did not change (re-indexing the same data gives the same digest);
a dataset whose index key changed cannot be keyed without running its view, so its blocks
have no key (``None``) and are reported as stale with the reason.

Changes are explained from the pre-images: each component of a block key that differs from
the recorded one (algorithm, library, parameter, input, dataformat, encoding) is traced back
to the asset whose declaration or code changed (with a JSON diff of the declaration), and
the files under each database's root folder are compared with the recorded manifest (they
do not enter the keys, so a changed data file makes every block downstream of the dataset
stale although its outputs are still cached).

:func:`audit` goes further: every asset and data file is re-hashed (no stat cache), every
key recomputed, every cache file verified against its content digest and the record; with
``rerun`` the experiment runs again into a scratch cache and output digests are compared in
execution order — the first diverging block is named with the input responsible, or as
non-deterministic when all its inputs matched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbeat.core import hashing
from backbeat.core.errors import ExecutionError, IntegrityError
from backbeat.core.names import KINDS
from backbeat.declarations.catalog import Catalog
from backbeat.planning.planner import DATA_ENCODING, Plan, assign_keys, plan
from backbeat.provenance import records as provenance

MAX_DIFF = 20


@dataclass
class Current:
    """The experiment as the prefix and cache describe it now."""

    catalog: Catalog
    plan: Plan
    assets: dict[str, dict]
    databases: dict[str, dict]
    index_source: dict[str, str]  # dataset -> "cache" | "record" | "none"
    jobs: dict[str, Any] = field(default_factory=dict)


def _fmt(v: Any) -> str:
    return provenance.jsonio.simplejson.dumps(v, sort_keys=True, ensure_ascii=False)


def json_diff(old: Any, new: Any, path: str = "") -> list[str]:
    """Readable differences between two JSON values, one line per changed leaf.

    >>> json_diff({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 4})
    ['/b/c: 2 -> 3', '/d: added 4']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            p = f"{path}/{k}"
            if k not in new:
                out.append(f"{p}: removed (was {_fmt(old[k])})")
            elif k not in old:
                out.append(f"{p}: added {_fmt(new[k])}")
            else:
                out.extend(json_diff(old[k], new[k], p))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [line for i, (a, b) in enumerate(zip(old, new, strict=True)) for line in json_diff(a, b, f"{path}/{i}")]
    if old != new or type(old) is not type(new):
        return [f"{path or '/'}: {_fmt(old)} -> {_fmt(new)}"]
    return []


# -- the present state -----------------------------------------------------------------------
def current(prefix: str | os.PathLike, cache: str | os.PathLike, name: str, record: dict | None,
            thorough: bool = False) -> Current:
    """Plan ``name`` again and compute every key that can be computed without running a view.

    ``thorough``: re-hash every data file (audit) instead of trusting the stat cache (status).
    """
    from backbeat.data.dbindex import index_digest
    from backbeat.execution.local import index_path

    catalog = Catalog(prefix)
    p = plan(catalog, name)
    rec_ds = (record or {}).get("datasets", {})
    source = {}
    for ds_name, ds in p.datasets.items():
        path = index_path(Path(cache), ds.index_key)
        old = rec_ds.get(ds_name, {})
        if path.is_file():
            ds.index_digest, source[ds_name] = index_digest(str(path)), "cache"
        elif old.get("index_key") == ds.index_key and old.get("index_digest"):
            ds.index_digest, source[ds_name] = old["index_digest"], "record"
        else:
            source[ds_name] = "none"
    assign_keys(p)  # jobs downstream of a view never indexed get the empty key
    assets = {f"{KINDS[k].folder}/{n}": provenance.asset_entry(catalog, k, n)
              for k, n in provenance.used_assets(catalog, p)}
    stat_cache = None if thorough else provenance.StatCache(provenance.folder(cache) / "stat-cache.json")
    databases = {}
    for ds in p.datasets.values():
        if ds.database not in databases:
            databases[ds.database] = provenance.database_manifest(catalog, ds.database, ds.root_folder, stat_cache)
    if stat_cache is not None:
        stat_cache.save()
    return Current(catalog, p, assets, databases, source, {j.name: j for j in p.jobs})


# -- explaining differences ------------------------------------------------------------------
def asset_changes(record: dict, now: Current) -> dict[str, dict]:
    """``{label: change}`` for every recorded asset that differs on disk now (and new ones)."""
    out = {}
    for label, old in record["assets"].items():
        new = now.assets.get(label)
        if new is None:  # no longer used by the experiment: look at it anyway
            kind, name = old["kind"], old["name"]
            new = provenance.asset_entry(now.catalog, kind, name)
        parts, diff = [], []
        if not new["found"]:
            parts.append("declaration file missing")
        else:
            if new["declaration_hash"] != old["declaration_hash"]:
                parts.append("declaration changed")
                diff = json_diff(old.get("declaration"), new.get("declaration"))[:MAX_DIFF]
            if new["code_hash"] != old["code_hash"]:
                parts.append("code changed" if new["code_hash"] and old["code_hash"] else
                             "code file added" if new["code_hash"] else "code file missing")
        if parts:
            out[label] = {"asset": label, "what": ", ".join(parts), "diff": diff,
                          "old_hash": old["hash"], "new_hash": new["hash"],
                          "message": f"{label}: {', '.join(parts)}"
                                     + "".join(f"\n    {d}" for d in diff)}
    for label in now.assets:
        if label not in record["assets"]:
            out[label] = {"asset": label, "what": "newly used", "diff": [], "old_hash": None,
                          "new_hash": now.assets[label]["hash"], "message": f"{label}: newly used"}
    return out


def file_changes(record: dict, now: Current) -> dict[str, list[dict]]:
    """``{database: [change]}``: files added, removed or changed under its root folder."""
    out: dict[str, list[dict]] = {}
    for db, old in record["databases"].items():
        new = now.databases.get(db)
        if new is None:
            continue
        changes = []
        if new["source"] != old["source"] or (new["source"] == "root_folder" and new["folder"] != old["folder"]):
            changes.append({"database": db, "file": None, "change": "folder",
                            "message": f"database {db}: data read from {new['folder']} ({new['source']}), "
                                       f"recorded run read {old['folder']} ({old['source']})"})
        changes += diff_files(db, old["files"], new["files"])
        if changes:
            out[db] = changes
    return out


def diff_files(db: str, of: dict[str, dict], nf: dict[str, dict]) -> list[dict]:
    """Files added, removed or changed between two manifests of database ``db``."""
    changes = []
    for path in sorted(set(of) | set(nf)):
        if path not in nf:
            changes.append({"database": db, "file": path, "change": "removed",
                            "message": f"database {db}: file {path} removed"})
        elif path not in of:
            changes.append({"database": db, "file": path, "change": "added",
                            "message": f"database {db}: file {path} added"})
        elif of[path]["sha256"] != nf[path]["sha256"]:
            size = (f"size {of[path]['size']} -> {nf[path]['size']}" if of[path]["size"] != nf[path]["size"]
                    else "same size")
            changes.append({"database": db, "file": path, "change": "changed",
                            "message": f"database {db}: file {path} changed ({size}, sha256 "
                                       f"{of[path]['sha256'][:12]} -> {nf[path]['sha256'][:12]})"})
    return changes


def block_data_changes(rec: dict, block: dict, now: Current) -> list[str]:
    """Data files changed since ``block``'s outputs were computed (they do not enter its key)."""
    out = []
    for db, digest in (block.get("data") or {}).items():
        cur = now.databases.get(db)
        if cur is None or provenance.manifest_digest(cur["files"]) == digest:
            continue
        old_files = rec.get("manifests", {}).get(digest)
        if old_files is None:
            out.append(f"database {db}: files changed since its outputs were computed")
        else:
            out.extend(c["message"] for c in diff_files(db, old_files, cur["files"]))
    return out


def _asset_reason(label: str, assets: dict[str, dict], fallback: str) -> list[str]:
    ch = assets.get(label)
    return [ch["message"]] if ch else [fallback]


def dataset_changes(record: dict, now: Current, assets: dict[str, dict]) -> dict[str, list[str]]:
    """Why each dataset's keys or index differ from the recorded run."""
    out: dict[str, list[str]] = {}
    for name, ds in now.plan.datasets.items():
        old = record["datasets"].get(name)
        if old is None:
            out[name] = [f"dataset `{name}' is not in the recorded run"]
            continue
        reasons = []
        pre_old, pre_new = old.get("index_pre_image") or {}, ds.index_components()
        for k in sorted(set(pre_old) | set(pre_new)):
            if pre_old.get(k) == pre_new.get(k):
                continue
            if k == "database_hash":
                reasons += _asset_reason(f"databases/{ds.database}", assets,
                                         f"database {ds.database}: hash changed")
            elif k == "parameters":
                reasons += [f"view parameters{d}" for d in json_diff(pre_old.get(k), pre_new.get(k))]
            else:
                reasons.append(f"{k}: {_fmt(pre_old.get(k))} -> {_fmt(pre_new.get(k))}")
        if not reasons and ds.index_digest and old.get("index_digest") and ds.index_digest != old["index_digest"]:
            reasons.append(f"the view index content changed (sha256 {old['index_digest'][:12]} -> "
                           f"{ds.index_digest[:12]})")
        if reasons and now.index_source[name] == "none":
            reasons.append(f"the view index of dataset `{name}' must be rebuilt")
        for o, oo in old.get("outputs", {}).items():
            if o in ds.outputs and oo.get("dataformat") in now.plan.dataformats and oo.get("pre_image") and \
                    oo["pre_image"].get("dataformat") != now.plan.dataformats[oo["dataformat"]]:
                reasons += _asset_reason(f"dataformats/{oo['dataformat']}", assets,
                                         f"dataformat {oo['dataformat']} changed")
        if reasons:
            out[name] = list(dict.fromkeys(reasons))
    return out


def explain_block(job: Any, old: dict, now: Current, assets: dict, datasets: dict) -> list[str]:
    """The components of ``job``'s key that differ from the recorded pre-image, explained."""
    pre_old = old.get("pre_image") or {}
    reasons: list[str] = []
    if old.get("algorithm") != job.algorithm:
        reasons.append(f"algorithm: {old.get('algorithm')} -> {job.algorithm}")
    elif pre_old.get("algorithm") != job.algorithm_hash:
        reasons += _asset_reason(f"algorithms/{job.algorithm}", assets, f"algorithm {job.algorithm}: hash changed")
    old_libs, new_libs = dict(map(tuple, pre_old.get("libraries", []))), dict(map(tuple, job.libraries))
    for lib in sorted(set(old_libs) | set(new_libs)):
        if lib not in new_libs:
            reasons.append(f"library {lib}: no longer used")
        elif lib not in old_libs:
            reasons.append(f"library {lib}: newly used")
        elif old_libs[lib] != new_libs[lib]:
            reasons += _asset_reason(f"libraries/{lib}", assets, f"library {lib}: hash changed")
    old_p, new_p = pre_old.get("parameters", {}), job.parameters
    for p in sorted(set(old_p) | set(new_p)):
        if old_p.get(p) != new_p.get(p):
            o = old_p[p][1] if p in old_p else "(absent)"
            n = new_p[p][1] if p in new_p else "(absent)"
            reasons.append(f"parameter {p}: {o} -> {n}")
    old_in = pre_old.get("inputs", {})
    for name, inp in job.inputs.items():
        o = old_in.get(name)
        df_key = now.plan.dataformats[inp.dataformat]
        if o is None:
            reasons.append(f"input {name}: not in the recorded run")
            continue
        if o.get("dataformat") != df_key:
            reasons += _asset_reason(f"dataformats/{inp.dataformat}", assets,
                                     f"input {name}: dataformat {inp.dataformat} changed")
        if o.get("key") != inp.key:
            keys = f"key {(o.get('key') or 'none')[:12]} -> {(inp.key or 'unknown')[:12]}"
            if inp.source == "dataset":
                why = "; ".join(datasets.get(inp.node, [])) or "its key changed"
                reasons.append(f"input {name} (dataset `{inp.node}', {keys}): {why}")
            else:
                reasons.append(f"input {name} ({keys}): upstream block `{inp.node}' (output {inp.output}) changed")
    old_out = pre_old.get("outputs", {})
    for name, out in job.outputs.items():
        if old_out.get(name) != now.plan.dataformats[out.dataformat]:
            reasons += _asset_reason(f"dataformats/{out.dataformat}", assets,
                                     f"output {name}: dataformat {out.dataformat} changed")
    if pre_old.get("encoding") != DATA_ENCODING:
        reasons.append(f"cache data encoding: {pre_old.get('encoding')} -> {DATA_ENCODING}")
    return list(dict.fromkeys(reasons))


def _upstream_datasets(p: Plan) -> dict[str, set[str]]:
    """``{job: datasets it depends on, directly or not}``."""
    out: dict[str, set[str]] = {}
    for job in p.jobs:  # execution order: upstream first
        s = {i.node for i in job.inputs.values() if i.source == "dataset"}
        for d in job.depends:
            s |= out[d]
        out[job.name] = s
    return out


def _committed(cache: Path, job: Any) -> bool:
    return bool(job.key) and all((cache / hashing.to_path(o.key, ".h5")).is_file() for o in job.outputs.values())


def _last_block_records(records: list[dict], name: str) -> tuple[dict | None, dict]:
    """The newest record entry of block ``name`` that ran or was cached, and its record."""
    for rec in records:
        b = rec.get("blocks", {}).get(name)
        if b and b.get("status") in ("ran", "cached"):
            return b, rec
    return None, {}


# -- status ----------------------------------------------------------------------------------
def status(prefix: str | os.PathLike, cache: str | os.PathLike, name: str) -> dict:
    """Every block as ``cached`` / ``will run`` / ``stale``, with what changed since the recorded run."""
    from backbeat.core.names import parse_name

    _k, name = parse_name("experiment", name)
    cache = Path(cache)
    records = provenance.history(cache, name)
    record = provenance.load(cache, name)
    now = current(prefix, cache, name, record)
    out: dict[str, Any] = {"experiment": name, "record": None, "assets": [], "data_files": [],
                           "datasets": {}, "blocks": {}}
    if record is None:
        for job in now.plan.jobs:
            cached = _committed(cache, job)
            out["blocks"][job.name] = {"state": "cached" if cached else "will run", "key": job.key or None,
                                       "reason": "output in the cache" if cached else "output not in the cache",
                                       "changes": []}
        out["note"] = "no recorded run of this experiment in the cache: nothing to compare with"
        return out
    out["record"] = {"created": record.get("created"), "status": record.get("status")}
    assets = asset_changes(record, now)
    files = file_changes(record, now)
    datasets = dataset_changes(record, now, assets)
    for ds_name, ds in now.plan.datasets.items():
        for c in files.get(ds.database, []):
            datasets.setdefault(ds_name, []).append(c["message"])
    out["assets"] = [{k: v for k, v in a.items() if k != "message"} for a in assets.values()]
    out["data_files"] = [c for cs in files.values() for c in cs]
    out["datasets"] = datasets
    upstream = _upstream_datasets(now.plan)
    for job in now.plan.jobs:
        old, old_rec = _last_block_records(records, job.name)
        cached = _committed(cache, job)
        same = old is not None and job.key == old.get("key")
        data = block_data_changes(old_rec, old, now) if cached and same else []
        entry: dict[str, Any] = {"key": job.key or None, "recorded_key": old.get("key") if old else None,
                                 "changes": []}
        if old is None:
            last = records[0]["blocks"].get(job.name, {}).get("status") if records else None
            entry.update(state="cached" if cached else "will run",
                         reason=(f"{last} in the recorded run" if last else "not in any recorded run")
                         + ("; output in the cache" if cached else ""))
        else:
            changes = explain_block(job, old, now, assets, datasets) if job.key != old.get("key") else []
            if not job.key and not changes:
                changes = [f"input dataset(s) {', '.join(sorted(upstream[job.name]))} must be re-indexed"]
            replaced = _replaced_outputs(cache, job, old) if cached and same else []
            entry["changes"] = changes + data + replaced
            if changes and not cached:
                entry.update(state="stale", reason="changed since the recorded run")
            elif data or replaced:
                entry.update(state="stale", reason="cached, but " + ("data files under a database root folder changed "
                             "since its outputs were computed (they do not enter cache keys: re-run it with --from or "
                             "--force)" if data else "its cache file differs from the recorded one"))
            elif changes:
                entry.update(state="cached", reason="changed since the recorded run, but the outputs for the current "
                                                    "inputs are in the cache")
            elif cached:
                entry.update(state="cached", reason="output in the cache, unchanged since the recorded run")
            else:
                entry.update(state="will run", reason="unchanged, but its output is no longer in the cache")
        out["blocks"][job.name] = entry
    return out


def _replaced_outputs(cache: Path, job: Any, old: dict) -> list[str]:
    """Outputs whose stored digest differs from the recorded one (cheap: attributes only)."""
    out = []
    for name, o in job.outputs.items():
        rec = old.get("outputs", {}).get(name, {}).get("digest")
        now = provenance._digest(cache / hashing.to_path(o.key, ".h5"))
        if rec and now != rec:
            out.append(f"cache file of output {name} ({hashing.to_path(o.key, '.h5')}): digest "
                       f"{(now or 'unreadable')[:12]} differs from the recorded {rec[:12]}")
    return out


# -- audit -----------------------------------------------------------------------------------
def audit(prefix: str | os.PathLike, cache: str | os.PathLike, name: str | None = None,
          record: dict | None = None, rerun: bool = False) -> dict:
    """Check a recorded run against the files on disk; ``ok`` is False on any mismatch.

    ``record``: a record received from elsewhere (``backbeat audit RECORD.json``); by default the
    latest record of ``name`` in ``cache``.  ``rerun``: execute the experiment again into a
    scratch cache and compare output digests block by block.
    """
    from backbeat.core.names import parse_name

    cache = Path(cache)
    if record is None:
        if name is None:
            raise ExecutionError("audit: name an experiment or give a provenance record")
        _k, name = parse_name("experiment", name)
        record = provenance.load(cache, name)
        if record is None:
            raise ExecutionError(f"no provenance record of experiment `{name}' in cache `{cache}': run it first")
    name = record["experiment"]
    now = current(prefix, cache, name, record, thorough=True)
    mismatches: list[dict] = []
    notes: list[str] = []

    def bad(kind: str, subject: str, message: str) -> None:
        mismatches.append({"kind": kind, "subject": subject, "message": message})

    assets = asset_changes(record, now)
    for a in assets.values():
        bad("asset", a["asset"], a["message"])
    reported = set()
    for changes in file_changes(record, now).values():
        for c in changes:
            bad("data-file", f"{c['database']}:{c['file'] or ''}", c["message"])
            reported.add(c["message"])
    datasets = dataset_changes(record, now, assets)
    if record.get("status") != "ok":
        failed = [n for n, b in record["blocks"].items() if b.get("status") == "failed"]
        notes.append(f"the recorded run {record.get('status')}" + (f" (block(s) {', '.join(failed)})" if failed else ""))
    ds_report = _audit_datasets(record, now, cache, datasets, bad, notes)
    blocks = _audit_blocks(record, now, cache, datasets, assets, bad, notes, reported)
    result: dict[str, Any] = {"experiment": name, "record": {"created": record.get("created"),
                                                             "status": record.get("status")},
                              "datasets": ds_report, "blocks": blocks, "notes": notes}
    if rerun:
        result["rerun"] = _rerun(prefix, name, record, bad)
    result["mismatches"] = mismatches
    result["ok"] = not mismatches
    return result


def _audit_datasets(record: dict, now: Current, cache: Path, datasets: dict, bad: Any, notes: list) -> dict:
    from backbeat.data.dbindex import index_digest
    from backbeat.execution.local import index_path

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
        path = index_path(cache, old["index_key"])
        if path.is_file():
            digest = index_digest(str(path))
            entry["index_file"] = "ok" if digest == old.get("index_digest") else "mismatch"
            if entry["index_file"] == "mismatch":
                bad("cache-file", f"index:{ds_name}", f"dataset `{ds_name}': view index file "
                    f"{hashing.to_path(old['index_key'], '.db')} has content sha256 {digest[:12]}, the record says "
                    f"{(old.get('index_digest') or 'none')[:12]}")
        else:
            notes.append(f"dataset `{ds_name}': view index not in this cache (not verified)")
        out[ds_name] = entry
    return out


def _audit_blocks(record: dict, now: Current, cache: Path, datasets: dict, assets: dict, bad: Any,
                  notes: list, reported: set[str]) -> dict:
    from backbeat.data import cachefile

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
        else:
            data = [m for m in block_data_changes(record, old, now) if m not in reported]
            if data:
                entry["data"] = data
                bad("data-file", job.name, f"block `{job.name}': computed from data files that changed since: "
                    + "; ".join(data))
        for o_name, o in old.get("outputs", {}).items():
            if not o.get("key"):
                entry["outputs"][o_name] = "not recorded"
                continue
            path = cache / hashing.to_path(o["key"], ".h5")
            if not path.is_file():
                entry["outputs"][o_name] = "not in the cache"
                notes.append(f"block `{job.name}': output {o_name} not in this cache (not verified)")
                continue
            try:
                digest = cachefile.verify(str(path))
            except (IntegrityError, OSError) as exc:
                entry["outputs"][o_name] = "corrupted"
                bad("cache-file", f"{job.name}.{o_name}", f"block `{job.name}': cache file of output {o_name} "
                    f"({hashing.to_path(o['key'], '.h5')}) is corrupted: {exc}")
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
    from backbeat.execution import local as executor

    scratch = executor.scratch_cache()
    try:
        rep = executor.run_experiment(prefix, scratch, name, executor.Options(force=True))
        new = provenance.load(scratch, name) or {}
    finally:
        executor.remove_cache(scratch)
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
