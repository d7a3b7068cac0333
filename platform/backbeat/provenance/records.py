"""Provenance records: what a run used and produced, stored beside its results.

Every run of an experiment writes one JSON record (format ``backbeat-provenance-1``) into
the cache: ``<cache>/provenance/<sha256(experiment)>.json``; the record it replaces moves to
``<cache>/provenance/<sha256(experiment)>/<time>-<pid>.json`` (the last :data:`HISTORY`
are kept), so that ``experiments status`` can diff against the last run of each block.

A record holds:

* ``assets`` — every asset the run used (experiment, toolchain, algorithms, libraries,
  databases, protocol templates, dataformats — nested ones too), by label: BEAT-compatible
  ``hash``, ``declaration_hash``, ``code_hash`` and the declaration itself (for diffs);
* ``databases`` — per database, a manifest of the files under its root folder (or, when
  the root folder does not exist, of the data shipped next to the view code):
  ``{relative path: {size, mtime_ns, sha256}}``.  These files do not enter cache keys
  (BEAT's index may not change), so they are compared by ``status``/``audit`` instead;
* ``datasets`` — per dataset, the view index key and its pre-image, the index digest;
* ``blocks`` — per block in execution order: key and pre-image (``planning.key_components``),
  input and output content digests, status, timings and I/O statistics;
* ``environment`` — backbeat, Python and package versions, platform.

State: :class:`StatCache` (``<cache>/provenance/stat-cache.json``) remembers the sha256 of
each manifested file by (size, mtime_ns, inode), so unchanged files are not re-hashed; an
entry whose mtime is within :data:`RACY_NS` of the moment it was hashed is not trusted
(a same-size rewrite in the same clock tick would otherwise go unseen).

:func:`to_prov` exports a record as W3C PROV-JSON.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from backbeat import __version__
from backbeat.core import hashing, jsonio
from backbeat.core.errors import DataError
from backbeat.core.names import KINDS, is_reference
from backbeat.declarations.catalog import Catalog

FORMAT = "backbeat-provenance-1"
HISTORY = 20
RACY_NS = 2_000_000_000
PACKAGES = ("numpy", "h5py", "pyzmq", "simplejson", "jsonschema", "referencing", "psutil")
_VERSION_FILE = re.compile(r"^\d+\.(json|py|rst)$")
_KEY = re.compile(r"^[0-9a-f]{64}$")


# -- storage ---------------------------------------------------------------------------------
def folder(cache: str | os.PathLike) -> Path:
    return Path(cache) / "provenance"


def record_path(cache: str | os.PathLike, experiment: str) -> Path:
    return folder(cache) / f"{hashing.sha(experiment)}.json"


def history_folder(cache: str | os.PathLike, experiment: str) -> Path:
    return folder(cache) / hashing.sha(experiment)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fd:
        fd.write(text)
        fd.flush()
        os.fsync(fd.fileno())
    os.replace(tmp, path)


def read_record(path: str | os.PathLike) -> dict:
    """A record from a file, checked to be one (DataError otherwise)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"provenance record `{path}' cannot be read: {exc.strerror or exc}") from None
    try:
        rec = jsonio.parse(raw)
    except jsonio.JSONProblem as exc:
        raise DataError(f"provenance record `{path}' is not valid JSON: {exc}") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise DataError(f"`{path}' is not a backbeat provenance record (format {FORMAT})")
    for key, kind in (("experiment", str), ("assets", dict), ("databases", dict), ("datasets", dict),
                      ("blocks", dict), ("order", list)):
        if not isinstance(rec.get(key), kind):
            raise DataError(f"provenance record `{path}' has no `{key}' {kind.__name__}")
    # keys name files in the cache: a received record must not point anywhere else
    keys = [(f"datasets/{n}/index_key", d.get("index_key")) for n, d in rec["datasets"].items()]
    for n, b in rec["blocks"].items():
        keys.append((f"blocks/{n}/key", b.get("key")))
        keys += [(f"blocks/{n}/outputs/{o}/key", v.get("key")) for o, v in (b.get("outputs") or {}).items()]
    for where, k in keys:
        if k and not (isinstance(k, str) and _KEY.match(k)):
            raise DataError(f"provenance record `{path}': {where} is not a 64-digit hex key")
    if set(rec["order"]) != set(rec["blocks"]):
        raise DataError(f"provenance record `{path}': `order' does not list the blocks")
    return rec


def history(cache: str | os.PathLike, experiment: str) -> list[dict]:
    """Every stored record of ``experiment``, newest first."""
    out = []
    current = record_path(cache, experiment)
    if current.is_file():
        with contextlib.suppress(DataError):
            out.append(read_record(current))
    hist = history_folder(cache, experiment)
    if hist.is_dir():
        for p in sorted(hist.glob("*.json"), reverse=True):
            with contextlib.suppress(DataError):
                out.append(read_record(p))
    return out


def load(cache: str | os.PathLike, experiment: str) -> dict | None:
    """The latest successful record of ``experiment`` (else the latest one), or None."""
    records = history(cache, experiment)
    for rec in records:
        if rec.get("status") == "ok":
            return rec
    return records[0] if records else None


def write(run: Any, report: dict) -> Path:
    """Build the record of a finished run, store it (older one to the history); return its path."""
    previous = history(run.cache, run.plan.experiment)
    rec = record(run, report, previous)
    path = record_path(run.cache, rec["experiment"])
    if path.is_file():
        hist = history_folder(run.cache, rec["experiment"])
        hist.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        with contextlib.suppress(FileNotFoundError):  # a concurrent run moved it first
            os.replace(path, hist / f"{stamp}-{os.getpid()}.json")
        for old in sorted(hist.glob("*.json"))[:-HISTORY]:
            old.unlink(missing_ok=True)
    _atomic_write(path, jsonio.dumps(rec))
    return path


# -- file manifests --------------------------------------------------------------------------
class StatCache:
    """sha256 of files by (size, mtime_ns, inode), persisted in the cache."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        if path is not None and path.is_file():
            with contextlib.suppress(Exception):
                data = jsonio.parse(path.read_bytes())
                if isinstance(data, dict):
                    self.entries = data
        self.hashed = 0  # files actually read (for tests and statistics)

    def digest(self, path: Path, st: os.stat_result, compute=None, tag: str = "") -> str:
        """``compute(path)`` (default: sha256 of the bytes), memoised while the file is unchanged."""
        key = tag + str(path)
        e = self.entries.get(key)
        if (e is not None and e[0] == st.st_size and e[1] == st.st_mtime_ns and e[2] == st.st_ino
                and e[4] - st.st_mtime_ns > RACY_NS):
            return e[3]
        digest = (compute or hashing.hash_file_contents)(path)
        self.hashed += 1
        self.entries[key] = [st.st_size, st.st_mtime_ns, st.st_ino, digest, time.time_ns()]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.path is not None and self.dirty:
            with contextlib.suppress(OSError):
                _atomic_write(self.path, jsonio.dumps(self.entries))
            self.dirty = False


def manifest(root: Path, stat_cache: StatCache | None = None, code_folder: bool = False) -> dict[str, dict]:
    """``{relative path: {size, mtime_ns, sha256}}`` of every file under ``root``.

    ``code_folder``: ``root`` is a database's folder in the prefix; its asset files
    (``<version>.json|py|rst``) are left out (they are hashed as assets).
    """
    cache = stat_cache or StatCache(None)
    out: dict[str, dict] = {}
    if not root.is_dir():
        return out
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        here = Path(dirpath)
        for f in sorted(files):
            if f.endswith(".pyc") or (code_folder and here == root and _VERSION_FILE.match(f)):
                continue
            p = here / f
            try:
                st = p.stat()
                if not p.is_file():
                    continue
                digest = cache.digest(p, st)
            except OSError:
                continue
            out[p.relative_to(root).as_posix()] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                  "sha256": digest}
    return out


def manifest_digest(files: dict[str, dict]) -> str:
    """Digest of a manifest's content (paths, sizes, sha256; not times)."""
    return hashing.key("manifest", {p: [f["size"], f["sha256"]] for p, f in files.items()})


def upstream_databases(plan: Any) -> dict[str, list[str]]:
    """``{job: databases it reads, directly or through upstream blocks}`` (sorted)."""
    out: dict[str, set[str]] = {}
    for job in plan.jobs:  # execution order: upstream first
        dbs = {plan.datasets[i.node].database for i in job.inputs.values() if i.source == "dataset"}
        for d in job.depends:
            dbs |= out[d]
        out[job.name] = dbs
    return {k: sorted(v) for k, v in out.items()}


def database_folder(catalog: Catalog, database: str, root_folder: str) -> tuple[Path, str]:
    """The folder whose files are manifested for a database, and which one it is."""
    root = Path(os.path.expanduser(root_folder)) if root_folder else None
    if root is not None and root.is_dir():
        return root, "root_folder"
    return catalog.prefix.locate("database", database).json.parent, "code_folder"


def database_manifest(catalog: Catalog, database: str, root_folder: str,
                      stat_cache: StatCache | None = None) -> dict:
    where, source = database_folder(catalog, database, root_folder)
    shown = _rel(where, catalog.prefix.root) if source == "code_folder" else str(where)
    return {"root_folder": root_folder, "folder": shown, "source": source,
            "files": manifest(where, stat_cache, code_folder=source == "code_folder")}


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


def used_assets(catalog: Catalog, plan: Any) -> list[tuple[str, str]]:
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
    """Hashes (BEAT's, declaration's, code's) and declaration of one asset as on disk now."""
    asset = catalog.load(kind, name)
    root = catalog.prefix.root
    entry: dict[str, Any] = {"kind": kind, "name": name, "file": _rel(asset.files.json, root),
                             "found": asset.found, "hash": asset.hash, "declaration_hash": None,
                             "code_hash": None, "code_file": None, "declaration": asset.declaration}
    if asset.found and asset.declaration is not None:
        entry["declaration_hash"] = hashing.hash_json(asset.declaration, KINDS[kind].description_key)
        code = asset.code_path if KINDS[kind].has_code else None
        if code is not None:
            entry["code_file"] = _rel(code, root)
            if code.is_file():
                entry["code_hash"] = hashing.hash_file_contents(code)
    return entry


def _rel(path: Path | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def environment() -> dict:
    from importlib import metadata

    packages = {}
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
def _stored_digest(path: Path) -> str:
    from backbeat.data import cachefile

    return cachefile.stored_digest(str(path))


def _digest(path: Path, stat_cache: StatCache | None = None) -> str | None:
    """The content digest stored in a cache file (memoised by the stat cache: no h5py when unchanged)."""
    try:
        st = path.stat()
    except OSError:
        return None
    try:
        if stat_cache is None:
            return _stored_digest(path)
        return stat_cache.digest(path, st, _stored_digest, tag="h5-digest:")
    except Exception:  # an unreadable file has no digest; the audit says why
        return None


def datasets_entry(plan: Any) -> dict:
    out = {}
    for name, ds in plan.datasets.items():
        entry: dict[str, Any] = {
            "database": ds.database, "protocol": ds.protocol, "set": ds.set, "view": ds.view,
            "parameters": ds.view_parameters, "root_folder": ds.root_folder, "beat_hash": ds.beat_hash,
            "index_key": ds.index_key, "index_pre_image": ds.index_components(),
            "index_digest": ds.index_digest, "outputs": {},
        }
        for out_name, df in ds.outputs.items():
            o: dict[str, Any] = {"dataformat": df, "key": None, "pre_image": None}
            if ds.index_digest is not None:
                o["pre_image"] = ds.output_components(out_name, plan.dataformats)
                o["key"] = hashing.key("dataset-output", o["pre_image"])
            entry["outputs"][out_name] = o
        out[name] = entry
    return out


def block_entry(plan: Any, job: Any, cache: Path, status: str, stat_cache: StatCache | None = None) -> dict:
    from backbeat.planning.planner import key_components

    inputs = {}
    for n, i in job.inputs.items():
        if i.source == "dataset":
            digest = plan.datasets[i.node].index_digest
        else:
            digest = _digest(cache / hashing.to_path(i.key, ".h5"), stat_cache) if i.key else None
        inputs[n] = {"source": i.source, "node": i.node, "output": i.output, "dataformat": i.dataformat,
                     "key": i.key, "digest": digest}
    outputs = {n: {"dataformat": o.dataformat, "key": o.key, "path": hashing.to_path(o.key, ".h5") if o.key else None,
                   "digest": _digest(cache / hashing.to_path(o.key, ".h5"), stat_cache) if o.key else None}
               for n, o in job.outputs.items()}
    return {"kind": job.kind, "algorithm": job.algorithm, "status": status, "key": job.key,
            "pre_image": key_components(plan, job) if job.key else None, "beat_hash": job.beat_hash,
            "parameters": job.values, "environment": job.environment, "depends": list(job.depends),
            "inputs": inputs, "outputs": outputs}


def record(run: Any, report: dict, previous: list[dict] | None = None) -> dict:
    """The JSON-able provenance record of a finished run (see the module docstring)."""
    plan, cache = run.plan, Path(run.cache)
    catalog = Catalog(run.prefix)
    stat_cache = StatCache(folder(cache) / "stat-cache.json")
    assets = {}
    for kind, name in used_assets(catalog, plan):
        entry = asset_entry(catalog, kind, name)
        assets[f"{KINDS[kind].folder}/{name}"] = entry
    databases = {}
    for ds in plan.datasets.values():
        if ds.database not in databases:
            databases[ds.database] = dict(database_manifest(catalog, ds.database, ds.root_folder, stat_cache),
                                          hash=ds.database_hash)
    manifests = {manifest_digest(m["files"]): m["files"] for m in databases.values()}
    blocks = {}
    upstream = upstream_databases(plan)
    for job in plan.jobs:
        rep = report["blocks"].get(job.name, {})
        entry = block_entry(plan, job, cache, rep.get("status", "pending"), stat_cache)
        # the data its outputs were computed from: now if it ran, else that of the run that computed it
        entry["data"] = {db: manifest_digest(databases[db]["files"]) for db in upstream[job.name]}
        if entry["status"] == "cached":
            for old in previous or []:
                ob = old.get("blocks", {}).get(job.name)
                if ob and ob.get("key") == job.key and ob.get("status") in ("ran", "cached") and "data" in ob:
                    for db, digest in ob["data"].items():
                        if db in entry["data"] and digest in old.get("manifests", {}):
                            entry["data"][db] = digest
                            manifests.setdefault(digest, old["manifests"][digest])
                    break
        if "statistics" in rep:
            entry["statistics"] = rep["statistics"]
        elif entry["status"] == "cached":  # timings of the run that computed it, if recorded
            for old in previous or []:
                ob = old.get("blocks", {}).get(job.name)
                if ob and ob.get("key") == job.key and ob.get("statistics"):
                    entry["statistics"] = ob["statistics"]
                    entry["statistics_from"] = old.get("created")
                    break
        if "error" in rep:
            entry["error"] = rep["error"]
        blocks[job.name] = entry
    stat_cache.save()
    return {
        "format": FORMAT,
        "experiment": plan.experiment,
        "toolchain": plan.toolchain,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
        "status": report.get("status"),
        "prefix": str(Path(run.prefix).resolve()),
        "cache": str(cache.resolve()),
        "options": {"force": run.options.force, "only": run.options.only, "from": run.options.from_,
                    "until": run.options.until},
        "environment": environment(),
        "assets": assets,
        "databases": databases,
        "manifests": {d: manifests[d] for d in sorted({d for b in blocks.values() for d in b["data"].values()})},
        "dataformats": {n: k for n, k in plan.dataformats.items()},
        "datasets": datasets_entry(plan),
        "order": [j.name for j in plan.jobs],
        "blocks": blocks,
    }


# -- W3C PROV-JSON ---------------------------------------------------------------------------
def to_prov(rec: dict) -> dict:
    """The record as a W3C PROV-JSON document (entities, activities, one software agent)."""
    entity: dict[str, dict] = {}
    activity: dict[str, dict] = {}
    used: dict[str, dict] = {}
    generated: dict[str, dict] = {}
    derived: dict[str, dict] = {}
    associated: dict[str, dict] = {}
    agent_id = f"bb:backbeat-{rec.get('environment', {}).get('backbeat', 'unknown')}"
    agent = {agent_id: {"prov:type": "prov:SoftwareAgent", "prov:label": "backbeat",
                        "bb:python": rec.get("environment", {}).get("python"),
                        "bb:platform": rec.get("environment", {}).get("platform")}}
    n = 0

    def rel(table: dict, **attrs: str) -> None:
        nonlocal n
        n += 1
        table[f"_:r{n}"] = attrs

    for label, a in rec["assets"].items():
        entity[f"bb:asset/{label}"] = {"prov:type": f"bb:{a['kind']}", "prov:label": label,
                                       "bb:hash": a.get("hash"), "bb:code_hash": a.get("code_hash")}
    for db, m in rec["databases"].items():
        for path, f in m["files"].items():
            fid = f"bb:file/{db}/{path}"
            entity[fid] = {"prov:type": "bb:datafile", "prov:label": path, "bb:sha256": f["sha256"],
                           "bb:size": f["size"]}
    for name, ds in rec["datasets"].items():
        idx = f"bb:index/{ds['index_key']}"
        entity[idx] = {"prov:type": "bb:view-index", "prov:label": f"{ds['database']}/{ds['protocol']}/{ds['set']}",
                       "bb:digest": ds.get("index_digest")}
        act = f"bb:indexing/{rec['experiment']}/{name}"
        activity[act] = {"prov:type": "bb:view-indexing", "prov:label": f"index dataset {name}"}
        rel(used, **{"prov:activity": act, "prov:entity": f"bb:asset/databases/{ds['database']}"})
        for path in rec["databases"].get(ds["database"], {}).get("files", {}):
            rel(used, **{"prov:activity": act, "prov:entity": f"bb:file/{ds['database']}/{path}"})
        rel(generated, **{"prov:entity": idx, "prov:activity": act})
        rel(associated, **{"prov:activity": act, "prov:agent": agent_id})
    for name in rec["order"]:
        b = rec["blocks"][name]
        act = f"bb:block/{rec['experiment']}/{name}"
        stats = b.get("statistics") or {}
        activity[act] = {"prov:type": f"bb:{b['kind']}", "prov:label": name, "bb:key": b["key"],
                         "bb:status": b["status"], "bb:wall_s": stats.get("wall_s")}
        rel(associated, **{"prov:activity": act, "prov:agent": agent_id})
        rel(used, **{"prov:activity": act, "prov:entity": f"bb:asset/algorithms/{b['algorithm']}"})
        for lib in (b.get("pre_image") or {}).get("libraries", []):
            rel(used, **{"prov:activity": act, "prov:entity": f"bb:asset/libraries/{lib[0]}"})
        sources = []
        for i in b["inputs"].values():
            if i["source"] == "dataset":
                src = f"bb:index/{rec['datasets'][i['node']]['index_key']}"
            else:
                src = f"bb:output/{i['key']}"
            sources.append(src)
            rel(used, **{"prov:activity": act, "prov:entity": src})
        for o_name, o in b["outputs"].items():
            oid = f"bb:output/{o['key']}"
            entity[oid] = {"prov:type": "bb:cache-file", "prov:label": f"{name}.{o_name}",
                           "bb:dataformat": o["dataformat"], "bb:digest": o.get("digest"), "bb:path": o.get("path")}
            rel(generated, **{"prov:entity": oid, "prov:activity": act})
            for src in sources:
                rel(derived, **{"prov:generatedEntity": oid, "prov:usedEntity": src, "prov:activity": act})
    def clean(table: dict) -> dict:  # PROV-JSON attribute values may not be null
        return {k: {a: v for a, v in attrs.items() if v is not None} for k, attrs in table.items()}

    entity, activity, agent = clean(entity), clean(activity), clean(agent)
    return {
        "prefix": {"bb": "urn:backbeat:", "prov": "http://www.w3.org/ns/prov#"},
        "entity": entity, "activity": activity, "agent": agent, "used": used,
        "wasGeneratedBy": generated, "wasDerivedFrom": derived, "wasAssociatedWith": associated,
    }
