"""Provenance records: where they are kept, reading them back, and their W3C PROV-JSON form.

Every run of an experiment writes one JSON record (format :data:`FORMAT`, built by
:mod:`backbeat.provenance.builder`) into its cache store's records folder
(:attr:`backbeat.cache.store.CacheStore.records_folder`): ``<folder>/<sha256(experiment)>.json``;
the record it replaces moves to ``<folder>/<sha256(experiment)>/<time>-<pid>.json`` (the last
:data:`HISTORY` are kept, for ``experiments history``).  A run, ``status`` and ``audit`` read
only what they need — the latest record (:func:`latest`), or the latest successful one
(:func:`load`), newest first and lazily — never the whole history.  A record read back is
checked to be one (:func:`read_record`); a record that is not is *corrupt*, and said to be:
:func:`load`, :func:`last` and ``latest(strict=True)`` raise on a corrupt latest record (it is
not taken for a missing one); :func:`history` leaves corrupt ones out and lists them apart.

Records of an older format (``backbeat-provenance-1``: keys of scheme ``backbeat-key-1``,
whole-folder data manifests) are still listed by ``experiments history`` and shown, but
never compared with: ``status`` and ``audit`` say that the experiment must run again to be
recorded in the current format (:func:`older_format`).

:func:`to_prov` exports a record as W3C PROV-JSON.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Iterator
from pathlib import Path

from backbeat.cache.backends import open_store
from backbeat.cache.store import CacheStore
from backbeat.core import durable, hashing, jsonio
from backbeat.core.errors import DataError

FORMAT = "backbeat-provenance-2"
#: formats still read for display (``experiments history``, ``provenance --run N``), never compared with
OLDER_FORMATS = ("backbeat-provenance-1",)
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
    durable.write_atomic(path, text, mkdir=True)


def read_record(path: str | os.PathLike, older: bool = False) -> dict:
    """A record from a file, checked to be one of the current format (DataError otherwise);
    ``older``: records of an older format are returned too (for display only)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"provenance record `{path}' cannot be read: {exc.strerror or exc}") from None
    try:
        rec = jsonio.parse(raw)
    except jsonio.JSONProblem as exc:
        raise DataError(f"provenance record `{path}' is not valid JSON: {exc}") from None
    if isinstance(rec, dict) and rec.get("format") in OLDER_FORMATS and not older:
        raise DataError(f"`{path}' is a provenance record of an older format ({rec['format']}: its keys and data "
                        f"manifests are not comparable with this version's): run the experiment again to record "
                        f"it in format {FORMAT}")
    if not isinstance(rec, dict) or rec.get("format") not in (FORMAT, *OLDER_FORMATS):
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


def _paths(cache: Cache, experiment: str) -> Iterator[Path]:
    current = record_path(cache, experiment)
    if current.is_file():
        yield current
    hist = history_folder(cache, experiment)
    if hist.is_dir():
        yield from sorted(hist.glob("*.json"), reverse=True)


def records(cache: Cache, experiment: str, older: bool = False, corrupt: list[dict] | None = None,
            strict: bool = False) -> Iterator[dict]:
    """The stored records of ``experiment``, newest first, read one at a time as asked for
    (``older``: records of an older format too).  Corrupt ones are skipped and, given a
    ``corrupt`` list, added to it (``{"path", "message"}``, newest first); ``strict``: a corrupt
    latest record raises :class:`~backbeat.core.errors.DataError` saying so (it is not missing)."""
    current = record_path(cache, experiment)
    for p in _paths(cache, experiment):
        try:
            rec = read_record(p, older=True)
        except DataError as exc:
            if strict and p == current:
                raise DataError(f"the last provenance record of experiment `{experiment}' is corrupt: {exc}") from None
            if corrupt is not None:
                corrupt.append({"path": str(p), "message": str(exc)})
            continue
        if older or rec.get("format") == FORMAT:
            yield rec


def history(cache: Cache, experiment: str, corrupt: list[dict] | None = None) -> list[dict]:
    """Every stored record of ``experiment``, newest first, older formats included (display); the
    corrupt ones are left out and, given a ``corrupt`` list, added to it."""
    return list(records(cache, experiment, older=True, corrupt=corrupt))


def latest(cache: Cache, experiment: str, strict: bool = False) -> dict | None:
    """The newest record of the current format (one file read), or None; ``strict``: a corrupt
    latest record raises :class:`~backbeat.core.errors.DataError`."""
    return next(records(cache, experiment, strict=strict), None)


def last(cache: Cache, experiment: str) -> dict | None:
    """The record of the last run of ``experiment``, whatever its status and format, or None if it
    has none.  A corrupt one raises :class:`~backbeat.core.errors.DataError` saying so."""
    return next(records(cache, experiment, older=True, strict=True), None)


def load(cache: Cache, experiment: str) -> dict | None:
    """The latest successful record of ``experiment`` (else the latest one), or None if it has none.

    A corrupt latest record raises :class:`~backbeat.core.errors.DataError` saying so.
    """
    first = None
    for rec in records(cache, experiment, strict=True):
        if rec.get("status") == "ok":
            return rec
        first = first or rec
    return first


def older_format(cache: Cache, experiment: str) -> str | None:
    """When the experiment's newest record is of an older format: a note saying what to do."""
    rec = next(records(cache, experiment, older=True), None)
    if rec is not None and rec.get("format") != FORMAT:
        return (f"the recorded run of this experiment is of an older record format ({rec.get('format')}), whose "
                f"keys cannot be compared with this version's: run the experiment again to record it anew")
    return None


def store(cache: Cache, rec: dict) -> Path:
    """Store a record as its experiment's latest (the one it replaces goes to the history)."""
    path = record_path(cache, rec["experiment"])
    (path.parent / "stat-cache.json").unlink(missing_ok=True)  # (an older version's stat cache: obsolete)
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
def data_manifests(cache: Cache, rec: dict) -> dict[str, dict]:
    """``{digest: manifest}`` of the data manifests a record references that the cache holds."""
    from backbeat.provenance.manifests import load_or_none

    store = open_store(cache)
    out = {}
    for ds in rec.get("datasets", {}).values():
        digest = ds.get("data")
        if isinstance(digest, str) and digest not in out:
            manifest = load_or_none(store, digest)
            if manifest is not None:
                out[digest] = manifest
    return out


def to_prov(rec: dict, data: dict[str, dict] | None = None) -> dict:
    """The record as a W3C PROV-JSON document (entities, activities, one software agent).

    ``data``: the data manifests the record references (:func:`data_manifests`), whose files
    become entities used by the view indexing activities.
    """
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
    for name, ds in rec["datasets"].items():
        idx = f"bb:index/{ds['index_key']}"
        entity[idx] = {"prov:type": "bb:view-index", "prov:label": f"{ds['database']}/{ds['protocol']}/{ds['set']}",
                       "bb:digest": ds.get("index_digest")}
        act = f"bb:indexing/{rec['experiment']}/{name}"
        activity[act] = {"prov:type": "bb:view-indexing", "prov:label": f"index dataset {name}"}
        rel(used, **{"prov:activity": act, "prov:entity": f"bb:asset/databases/{ds['database']}"})
        if ds.get("data"):
            mid = f"bb:manifest/{ds['data']}"
            entity[mid] = {"prov:type": "bb:data-manifest", "prov:label": f"data read by dataset {name}",
                           "bb:digest": ds["data"]}
            rel(used, **{"prov:activity": act, "prov:entity": mid})
        for path, f in ((data or {}).get(ds.get("data") or "") or {}).get("files", {}).items():
            fid = f"bb:file/{ds['database']}/{path}"
            entity[fid] = {"prov:type": "bb:datafile", "prov:label": path, "bb:sha256": f.get("sha256"),
                           "bb:size": f.get("size")}
            rel(used, **{"prov:activity": act, "prov:entity": fid})
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
