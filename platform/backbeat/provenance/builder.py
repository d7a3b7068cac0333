"""Building a run's provenance record: what it used (assets, data files, software) and produced.

A record (format :data:`backbeat.provenance.records.FORMAT`) holds:

* ``assets`` — every asset the run used (experiment, toolchain, algorithms, libraries,
  databases, protocol templates, dataformats — nested ones too), by label: BEAT-compatible
  ``hash``, ``declaration_hash``, ``code_hash`` and the declaration itself (for diffs);
* ``databases`` — per database, its hash, root folder and the folders its views read from;
* ``datasets`` — per dataset, the view index key and its pre-image, the index digest, and the
  digest of the data manifest of the files its view read (stored once in the cache, by
  digest: :mod:`backbeat.provenance.manifests`), which is part of its outputs' keys;
* ``blocks`` — per block in execution order: key and pre-image
  (:func:`backbeat.planning.model.key_components`), input and output content digests, status,
  timings and I/O statistics, its output logs in the cache (``logs``), and ``runtime``: the
  interpreter, Python and package versions it ran with (a cached block: those of the run that
  computed it) and whether it ran in the sandbox;
* ``environment`` — backbeat, Python and package versions, platform.

Every executor's run ends with :func:`build` then :func:`backbeat.provenance.records.store`
(:class:`backbeat.execution.base.Executor`), so local and Dask runs write the same record.
A record's size does not depend on how many files a root folder holds (manifests are
referenced, not copied) nor on the history: building one reads only the previous record.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Any

from backbeat import __version__
from backbeat.cache.store import CacheStore
from backbeat.core import hashing
from backbeat.core.names import KINDS, is_reference
from backbeat.declarations.catalog import Catalog
from backbeat.planning.model import Job, Plan, key_components
from backbeat.provenance import manifests
from backbeat.provenance.manifests import relative
from backbeat.provenance.records import FORMAT

PACKAGES = ("numpy", "h5py", "pyzmq", "simplejson", "jsonschema", "referencing", "psutil")


def upstream_databases(plan: Plan) -> dict[str, list[str]]:
    """``{job: databases it reads, directly or through upstream blocks}`` (sorted)."""
    out: dict[str, set[str]] = {}
    for job in plan.jobs:  # execution order: upstream first
        dbs = {plan.datasets[i.node].database for i in job.inputs.values() if i.source == "dataset"}
        for d in job.depends:
            dbs |= out[d]
        out[job.name] = dbs
    return {k: sorted(v) for k, v in out.items()}


# -- assets ----------------------------------------------------------------------------------
def _dataformat_refs(decl: Any, out: set[str]) -> None:
    if isinstance(decl, dict):
        for k, v in decl.items():
            if k == "#extends" and isinstance(v, str):
                out.add(v)
            elif not k.startswith("#"):
                _dataformat_refs(v, out)
    elif isinstance(decl, list) and decl:
        _dataformat_refs(decl[-1], out)
    elif isinstance(decl, str) and is_reference("dataformat", decl):
        out.add(decl)


def used_assets(catalog: Catalog, plan: Plan) -> list[tuple[str, str]]:
    """Every (kind, name) an experiment's plan depends on, dataformats transitively."""
    used: list[tuple[str, str]] = [("experiment", plan.experiment), ("toolchain", plan.toolchain)]
    for job in plan.jobs:
        used.append(("algorithm", job.algorithm))
        used.extend(("library", n) for n, _h in job.libraries)
        if job.evaluator:  # a loop: its evaluator side is used too
            used.append(("algorithm", job.evaluator["algorithm"]))
            used.extend(("library", n) for n, _h in job.evaluator.get("libraries", []))
    for ds in plan.datasets.values():
        used.append(("database", ds.database))
        decl = catalog.load("database", ds.database).declaration
        for proto in (decl or {}).get("protocols", []):
            if (isinstance(proto, dict) and proto.get("name") == ds.protocol  # v1: template is a bare name
                    and is_reference("protocoltemplate", proto.get("template"))):
                used.append(("protocoltemplate", proto["template"]))
    todo = [n for n in plan.dataformats if not n.startswith("analysis:")]
    for job in plan.jobs:  # analyzer result types
        if job.kind == "analyzer":
            decl = catalog.load("algorithm", job.algorithm).declaration or {}
            for r in (decl.get("results") or {}).values():
                t = r.get("type") if isinstance(r, dict) else None
                if isinstance(t, str) and is_reference("dataformat", t):
                    todo.append(t)
    seen: set[str] = set()
    while todo:
        df = todo.pop()
        if df in seen:
            continue
        seen.add(df)
        refs: set[str] = set()
        _dataformat_refs(catalog.load("dataformat", df).declaration, refs)
        todo.extend(refs - seen)
    used.extend(("dataformat", d) for d in sorted(seen))
    out: list[tuple[str, str]] = []
    for item in used:
        if item not in out:
            out.append(item)
    return out


def asset_entry(catalog: Catalog, kind: str, name: str) -> dict:
    """Hashes (BEAT's, declaration's, code's) and declaration of one asset: as the catalog read
    it for the run when it did (what the keys were computed from), else as on disk now."""
    asset = catalog.loaded(kind, name)
    root = catalog.prefix.root
    entry: dict[str, Any] = {"kind": kind, "name": name, "file": relative(asset.files.json, root),
                             "found": asset.found, "hash": asset.hash, "declaration_hash": None,
                             "code_hash": None, "code_file": None, "declaration": asset.declaration}
    if asset.found and asset.declaration is not None:
        entry["declaration_hash"] = hashing.hash_json(asset.declaration, KINDS[kind].description_key)
        code = asset.code_path if KINDS[kind].has_code else None
        if code is not None:
            entry["code_file"] = relative(code, root)
            if asset.code is not None:
                entry["code_hash"] = hashing.sha(asset.code)
    return entry


def environment() -> dict:
    from importlib import metadata

    packages: dict[str, str | None] = {}
    for p in PACKAGES:
        try:
            packages[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            packages[p] = None
    return {"backbeat": __version__, "python": platform.python_version(),
            "python_implementation": platform.python_implementation(), "executable": sys.executable,
            "packages": packages, "platform": platform.platform(), "machine": platform.machine(),
            "cpus": os.cpu_count()}


# -- the record ------------------------------------------------------------------------------
def output_digest(store: CacheStore, key: str) -> str | None:
    """The content digest stored in an output entry holding ``key`` (memoised by ``stat``: no
    h5py when unchanged); None when it is missing, unreadable or holds another key."""
    try:
        return store.check_identity(key)
    except Exception:  # noqa: BLE001 - an unreadable or misplaced file has no digest here (the audit says why)
        return None


def databases_entry(catalog: Catalog, plan: Plan) -> dict:
    out: dict[str, dict] = {}
    for ds in plan.datasets.values():
        if ds.database not in out:
            where = manifests.folders(catalog, ds.database, ds.root_folder)
            where["code"] = relative(Path(where["code"]), catalog.prefix.root) or where["code"]
            out[ds.database] = {"hash": ds.database_hash, "root_folder": ds.root_folder, "folders": where}
    return out


def datasets_entry(plan: Plan, store: CacheStore | None = None) -> dict:
    out = {}
    for name, ds in plan.datasets.items():
        entry: dict[str, Any] = {
            "database": ds.database, "protocol": ds.protocol, "set": ds.set, "view": ds.view,
            "parameters": ds.view_parameters, "root_folder": ds.root_folder, "beat_hash": ds.beat_hash,
            "index_key": ds.index_key, "index_pre_image": ds.index_components(),
            "index_digest": ds.index_digest, "data": ds.data_digest, "outputs": {},
        }
        manifest = manifests.load_or_none(store, ds.data_digest) if store is not None else None
        if manifest is not None:
            entry["data_summary"] = manifests.summary(manifest)
        for out_name, df in ds.outputs.items():
            o: dict[str, Any] = {"dataformat": df, "key": None, "pre_image": None}
            if ds.index_digest is not None and ds.data_digest is not None:
                o["pre_image"] = ds.output_components(out_name, plan.dataformats)
                o["key"] = hashing.key("dataset-output", o["pre_image"])
            entry["outputs"][out_name] = o
        out[name] = entry
    return out


def block_entry(plan: Plan, job: Job, store: CacheStore, status: str) -> dict:
    inputs = {}
    for n, i in job.inputs.items():
        if i.source == "dataset":  # what it serves: index content, data read, dataformat (its output key)
            digest = i.key or None
        else:
            digest = output_digest(store, i.key) if i.key else None
        inputs[n] = {"source": i.source, "node": i.node, "output": i.output, "dataformat": i.dataformat,
                     "key": i.key, "digest": digest}
    outputs = {n: {"dataformat": o.dataformat, "key": o.key, "path": store.name(o.key, ".h5") if o.key else None,
                   "digest": output_digest(store, o.key) if o.key else None}
               for n, o in job.outputs.items()}
    return {"kind": job.kind, "algorithm": job.algorithm, "status": status, "key": job.key,
            "pre_image": key_components(plan, job) if job.key else None, "beat_hash": job.beat_hash,
            "parameters": job.values, "environment": job.environment, "depends": list(job.depends),
            "inputs": inputs, "outputs": outputs}


def _carried(entry: dict, old: dict | None) -> None:
    """What a block's entry keeps from the previous record's: the statistics and runtime of the
    run that computed a cached output; for a block that did not run or was not cached now, its last
    entry that did (``previous``), so that ``status`` needs only the latest record."""
    if old is None:
        return
    ob = old.get("blocks", {}).get(entry["name"])
    if not ob:
        return
    if entry["status"] == "cached" and "statistics" not in entry and ob.get("key") == entry["key"] \
            and ob.get("statistics"):
        entry["statistics"] = ob["statistics"]
        entry["statistics_from"] = ob.get("statistics_from") or old.get("created")
    if entry["status"] == "cached" and "runtime" not in entry and ob.get("key") == entry["key"] \
            and ob.get("runtime"):  # where the run that computed it ran it
        entry["runtime"] = ob["runtime"]
    if entry["status"] not in ("ran", "cached"):
        last = ob if ob.get("status") in ("ran", "cached") else ob.get("previous")
        if last:
            entry["previous"] = {k: v for k, v in last.items() if k != "previous"}
            entry["previous"].setdefault("record", old.get("created"))


def build(plan: Plan, prefix: str | os.PathLike, store: CacheStore, options: dict, report: dict,
          previous: dict | None = None, catalog: Catalog | None = None) -> dict:
    """The JSON-able provenance record of a finished run (see the module docstring).

    ``options``: the run's selection (``force``, ``only``, ``from``, ``until``); ``report``: its
    run report (statuses, statistics, errors); ``previous``: the experiment's previous record
    (a cached block keeps the statistics of the run that computed it).  ``catalog``: the one
    the run was planned with (assets as hashed into the keys); by default the prefix now.
    """
    catalog = catalog or Catalog(str(prefix))
    assets = {}
    for kind, name in used_assets(catalog, plan):
        entry = asset_entry(catalog, kind, name)
        assets[f"{KINDS[kind].folder}/{name}"] = entry
    blocks = {}
    for job in plan.jobs:
        rep = report["blocks"].get(job.name, {})
        entry = block_entry(plan, job, store, rep.get("status", "pending"))
        if "statistics" in rep:
            entry["statistics"] = rep["statistics"]
        if "runtime" in rep:
            entry["runtime"] = rep["runtime"]
        if "error" in rep:
            entry["error"] = rep["error"]
        if "logs" in rep:  # the output of the processes that computed it, in the cache
            entry["logs"] = rep["logs"]
        entry["name"] = job.name
        _carried(entry, previous)
        del entry["name"]
        blocks[job.name] = entry
    store.flush()
    return {
        "format": FORMAT,
        "experiment": plan.experiment,
        "toolchain": plan.toolchain,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
        "status": report.get("status"),
        "prefix": str(Path(prefix).resolve()),
        "cache": store.canonical_location,
        "options": {k: options.get(k) for k in ("force", "only", "from", "until")},
        "environment": environment(),
        "assets": assets,
        "databases": databases_entry(catalog, plan),
        "dataformats": {n: k for n, k in plan.dataformats.items()},
        "datasets": datasets_entry(plan, store),
        "order": [j.name for j in plan.jobs],
        "blocks": blocks,
    }
