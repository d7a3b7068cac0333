"""What changed since a recorded run: the present state of an experiment and its explanations.

Both ``status`` and ``audit`` (:mod:`backbeat.audit.audit`) start from a provenance record
(:mod:`backbeat.provenance`) and the prefix and data as they are now (:func:`current`): the
experiment is planned again and keys are computed without running any user code — a view
index and the data manifest of the files its view read are taken from the cache when
present (the files are ``stat``ed, or all re-hashed by ``audit``), else from the record when
the index key did not change; a dataset whose index must be rebuilt (its view code changed,
or a file its ``index()`` read) cannot be keyed without running its view, so its blocks have
no key (``""``) and are reported as stale with the reason.

Changes are explained from the pre-images: each component of a block key that differs from
the recorded one (algorithm, library, parameter, input, dataformat, encoding) is traced back
to the asset whose declaration or code changed (with a JSON diff of the declaration), or to
the data files read by a dataset's view that changed (the recorded data manifest against
the files now).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from backbeat.cache.store import CacheStore
from backbeat.core import jsonio
from backbeat.core.names import KINDS
from backbeat.core.statmemo import StatMemo
from backbeat.declarations.catalog import Catalog
from backbeat.execution.workspace import Workspace
from backbeat.planning.model import DATA_ENCODING, Job, Plan, assign_keys
from backbeat.provenance import builder, manifests

MAX_DIFF = 20


@dataclass
class Current:
    """The experiment as the prefix and cache describe it now."""

    catalog: Catalog
    store: CacheStore
    plan: Plan
    assets: dict[str, dict]
    data: dict[str, dict | None]  # dataset -> the manifest of the files its view read, as they are now
    index_source: dict[str, str]  # dataset -> "cache" | "record" | "none"
    reasons: dict[str, str] = field(default_factory=dict)  # dataset -> why its index must be rebuilt
    jobs: dict[str, Any] = field(default_factory=dict)


def _fmt(v: Any) -> str:
    return jsonio.simplejson.dumps(v, sort_keys=True, ensure_ascii=False)


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
def current(prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike, name: str, record: dict | None,
            thorough: bool = False) -> Current:
    """Plan ``name`` again and compute every key that can be computed without running a view.

    ``thorough``: re-hash every data file (audit) instead of trusting the stat memo (status).
    Nothing is written to the cache.
    """
    workspace = Workspace.open(prefix, cache)
    catalog, store = workspace.catalog, workspace.store
    p = workspace.plan(name)
    rec_ds = (record or {}).get("datasets", {})
    memo = StatMemo(None) if thorough else store.memo
    source: dict[str, str] = {}
    data: dict[str, dict | None] = {}
    reasons: dict[str, str] = {}
    for ds_name, ds in p.datasets.items():
        why, data[ds_name] = manifests.resolve(store, catalog, ds, memo, save=False)
        source[ds_name] = "cache"
        if why is None:
            continue
        old = rec_ds.get(ds_name, {})
        if (not store.index_path(ds.index_key).is_file() and old.get("index_key") == ds.index_key
                and old.get("index_digest") and old.get("data")):  # a record from elsewhere: its index
            recorded = manifests.load_or_none(store, old["data"])
            if recorded is None:  # ... and its data, unverifiable here
                ds.index_digest, ds.data_digest, data[ds_name] = old["index_digest"], old["data"], None
                source[ds_name] = "record"
                continue
            now = manifests.current(recorded, manifests.folders(catalog, ds.database, ds.root_folder), memo)
            if not manifests.index_changed(recorded, now):
                ds.index_digest, ds.data_digest, data[ds_name] = old["index_digest"], manifests.digest_of(now), now
                source[ds_name] = "record"
                continue
        source[ds_name], reasons[ds_name] = "none", why
    store.flush()
    assign_keys(p)  # jobs downstream of a view never indexed get the empty key
    assets = {f"{KINDS[k].folder}/{n}": builder.asset_entry(catalog, k, n)
              for k, n in builder.used_assets(catalog, p)}
    return Current(catalog, store, p, assets, data, source, reasons, {j.name: j for j in p.jobs})


def asset_changes(record: dict, now: Current) -> dict[str, dict]:
    """``{label: change}`` for every recorded asset that differs on disk now (and new ones)."""
    out = {}
    for label, old in record["assets"].items():
        new = now.assets.get(label)
        if new is None:  # no longer used by the experiment: look at it anyway
            kind, name = old["kind"], old["name"]
            new = builder.asset_entry(now.catalog, kind, name)
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


def data_changes(record: dict, now: Current) -> dict[str, list[dict]]:
    """``{dataset: [change]}``: data files its view read that changed since the recorded run
    (recorded manifest against the files now), or why its data cannot be compared."""
    out: dict[str, list[dict]] = {}
    for name, ds in now.plan.datasets.items():
        old = record["datasets"].get(name) or {}
        if not old.get("data") or now.data.get(name) is None or old["data"] == ds.data_digest:
            continue
        recorded = manifests.load_or_none(now.store, old["data"])
        changes = manifests.diff(ds.database, recorded, now.data[name])
        if changes:
            out[name] = changes
    return out


def _asset_reason(label: str, assets: dict[str, dict], fallback: str) -> list[str]:
    ch = assets.get(label)
    return [ch["message"]] if ch else [fallback]


def dataset_changes(record: dict, now: Current, assets: dict[str, dict],
                    data: dict[str, list[dict]] | None = None) -> dict[str, list[str]]:
    """Why each dataset's keys or index differ from the recorded run (``data``: its
    :func:`data_changes`)."""
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
        changed = [c["message"] for c in (data or {}).get(name, [])]
        reasons += changed
        if now.index_source[name] == "none":
            if not reasons or (not changed and now.reasons.get(name, "").startswith("database ")):
                reasons.append(now.reasons.get(name, "its view index is not in the cache"))
            reasons.append(f"the view index of dataset `{name}' must be rebuilt")
        for o, oo in old.get("outputs", {}).items():
            if o in ds.outputs and oo.get("dataformat") in now.plan.dataformats and oo.get("pre_image") and \
                    oo["pre_image"].get("dataformat") != now.plan.dataformats[oo["dataformat"]]:
                reasons += _asset_reason(f"dataformats/{oo['dataformat']}", assets,
                                         f"dataformat {oo['dataformat']} changed")
        if reasons:
            out[name] = list(dict.fromkeys(reasons))
    return out


def explain_block(job: Job, old: dict, now: Current, assets: dict, datasets: dict) -> list[str]:
    """The components of ``job``'s key that differ from the recorded pre-image, explained."""
    pre_old = old.get("pre_image") or {}
    reasons: list[str] = []
    if old.get("algorithm") != job.algorithm:
        reasons.append(f"algorithm: {old.get('algorithm')} -> {job.algorithm}")
    elif pre_old.get("algorithm") != job.algorithm_hash:
        reasons += _asset_reason(f"algorithms/{job.algorithm}", assets, f"algorithm {job.algorithm}: hash changed")
    old_libs: dict[str, str] = {n: h for n, h in pre_old.get("libraries", [])}
    new_libs: dict[str, str] = {n: h for n, h in job.libraries}
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


def upstream_datasets(p: Plan) -> dict[str, set[str]]:
    """``{job: datasets it depends on, directly or not}``."""
    out: dict[str, set[str]] = {}
    for job in p.jobs:  # execution order: upstream first
        s = {i.node for i in job.inputs.values() if i.source == "dataset"}
        for d in job.depends:
            s |= out[d]
        out[job.name] = s
    return out


def last_block(record: dict | None, name: str) -> dict | None:
    """The newest entry of block ``name`` that ran or was cached: in the latest record, or the
    one it carries from an earlier run (``previous``)."""
    b = (record or {}).get("blocks", {}).get(name)
    if not b:
        return None
    return b if b.get("status") in ("ran", "cached") else b.get("previous")


