"""Provenance records: where they are kept, reading them back, and their W3C PROV-JSON form.

Every run of an experiment writes one JSON record (format ``backbeat-provenance-1``, built by
:mod:`backbeat.provenance.builder`) into its cache store's records folder
(:attr:`backbeat.cache.store.CacheStore.records_folder`): ``<folder>/<sha256(experiment)>.json``;
the record it replaces moves to ``<folder>/<sha256(experiment)>/<time>-<pid>.json`` (the last
:data:`HISTORY` are kept), so that ``experiments status`` can diff against the last run of
each block.  A record read back is checked to be one (:func:`read_record`); a record that is
not is *corrupt*, and said to be: :func:`load` raises on a corrupt latest record (it is not
taken for a missing one), and so does :func:`last`; :func:`history` leaves corrupt ones out
and lists them apart.

:func:`to_prov` exports a record as W3C PROV-JSON.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from pathlib import Path

from backbeat.cache.backends import open_store
from backbeat.cache.store import CacheStore
from backbeat.core import hashing, jsonio
from backbeat.core.errors import DataError

FORMAT = "backbeat-provenance-1"
HISTORY = 20
_KEY = re.compile(r"^[0-9a-f]{64}$")

Cache = CacheStore | str | os.PathLike


# -- storage ---------------------------------------------------------------------------------
def record_path(cache: Cache, experiment: str) -> Path:
    return open_store(cache).records_folder / f"{hashing.sha(experiment)}.json"


def history_folder(cache: Cache, experiment: str) -> Path:
    return open_store(cache).records_folder / hashing.sha(experiment)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename); nothing is left
    behind if it fails (a full disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-0")
    try:
        with open(tmp, "w", encoding="utf-8") as fd:
            fd.write(text)
            fd.flush()
            os.fsync(fd.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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


def history(cache: Cache, experiment: str, corrupt: list[dict] | None = None) -> list[dict]:
    """Every stored record of ``experiment``, newest first; the corrupt ones are left out and,
    given a ``corrupt`` list, added to it (``{"path", "message"}``, newest first)."""
    out = []
    paths = []
    current = record_path(cache, experiment)
    if current.is_file():
        paths.append(current)
    hist = history_folder(cache, experiment)
    if hist.is_dir():
        paths += sorted(hist.glob("*.json"), reverse=True)
    for p in paths:
        try:
            out.append(read_record(p))
        except DataError as exc:
            if corrupt is not None:
                corrupt.append({"path": str(p), "message": str(exc)})
    return out


def last(cache: Cache, experiment: str) -> dict | None:
    """The record of the last run of ``experiment``, whatever its status, or None if it has none.

    A corrupt one raises :class:`~backbeat.core.errors.DataError` saying so (it is not missing).
    """
    corrupt: list[dict] = []
    records = history(cache, experiment, corrupt)
    _refuse_corrupt_latest(cache, experiment, corrupt)
    return records[0] if records else None


def _refuse_corrupt_latest(cache: Cache, experiment: str, corrupt: list[dict]) -> None:
    if corrupt and corrupt[0]["path"] == str(record_path(cache, experiment)):
        raise DataError(f"the last provenance record of experiment `{experiment}' is corrupt: {corrupt[0]['message']}")


def load(cache: Cache, experiment: str) -> dict | None:
    """The latest successful record of ``experiment`` (else the latest one), or None if it has none.

    A corrupt latest record raises :class:`~backbeat.core.errors.DataError` saying so.
    """
    corrupt: list[dict] = []
    records = history(cache, experiment, corrupt)
    _refuse_corrupt_latest(cache, experiment, corrupt)
    for rec in records:
        if rec.get("status") == "ok":
            return rec
    return records[0] if records else None


def store(cache: Cache, rec: dict) -> Path:
    """Store a record as its experiment's latest (the one it replaces goes to the history)."""
    path = record_path(cache, rec["experiment"])
    if path.is_file():
        hist = history_folder(cache, rec["experiment"])
        hist.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        with contextlib.suppress(FileNotFoundError):  # a concurrent run moved it first
            os.replace(path, hist / f"{stamp}-{os.getpid()}.json")
        for old in sorted(hist.glob("*.json"))[:-HISTORY]:
            old.unlink(missing_ok=True)
    atomic_write(path, jsonio.dumps(rec))
    return path


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
