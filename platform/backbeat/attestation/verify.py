"""``backbeat attest verify FILE [--data DIR] [--rerun] [--expect NAME]``: does an attestation hold?

The archive is read safely into a temporary folder (:func:`backbeat.attestation.archive.extract`)
and checked in order; every mismatch is collected as ``{kind, subject, message}`` naming the
member, asset, file or block at fault:

1. **integrity** (``member``, ``name``) — every member against the manifest (size, sha256), the
   manifest against its name (``manifest.sha256``) and, with ``--expect``, the name against
   the one the verifier was given;
2. **record** — ``provenance.json`` is a provenance record; ``attestation.json`` is exactly what
   the record says (:func:`~backbeat.attestation.description.describe`: hashes, keys,
   environments, digests — ``asset``/``key``/``environment``/``result``/``attestation``);
3. **data manifests** (``data-manifest``) — each is named by its sha256, is a data manifest, and
   its paths are relative paths under ``root/`` or ``code/``;
4. **assets** (``asset``) — every declaration and code file of ``prefix/`` is hashed again (BEAT
   hash, declaration hash, code sha256) and compared with the record;
5. **keys** (``key``, ``plan``) — the experiment is planned from the archive's prefix with the
   recorded root folders, view index digests and data manifest digests, and every dataformat,
   dataset and block key and every BEAT block hash is derived again and compared (a differing
   key is explained, as ``audit`` does);
6. **results** (``result``) — each analyzer's result file is verified (its stored key, its
   content digest recomputed from the data) against the record, and its JSON records against it;
7. **data** (``data-file``) — the raw data files (from ``--data DIR``, else from the archive
   when exported ``--with-data``) are hashed and compared with the data manifests;
8. with ``--rerun``, :func:`backbeat.attestation.rerun.rerun` (``rerun``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbeat.attestation import rerun as rerunning
from backbeat.attestation.archive import Extracted, extract
from backbeat.attestation.description import (
    analyzers,
    asset_members,
    database_data,
    describe,
    manifest_member,
    result_members,
    safe_label,
)
from backbeat.audit.changes import Current, explain_block, json_diff
from backbeat.cache import results
from backbeat.cache.store import CacheStore
from backbeat.core.errors import BackbeatError, DataError, IntegrityError
from backbeat.core.names import KINDS, is_reference
from backbeat.core.statmemo import StatMemo
from backbeat.declarations.catalog import Catalog
from backbeat.planning.model import Plan, assign_keys
from backbeat.planning.planner import plan
from backbeat.provenance import builder, manifests, records

#: ``attestation.json`` section -> the kind of a mismatch in it
_SECTION_KIND = {"assets": "asset", "dataformats": "key", "datasets": "key", "blocks": "key", "data": "data-file",
                 "results": "result", "databases": "asset"}


@dataclass
class Verification:
    """What has been checked so far; :meth:`report` is the JSON answer."""

    archive: Path
    extracted: Extracted
    store: CacheStore  # a scratch cache in the working folder: data manifests, results
    mismatches: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    record: dict | None = None
    manifests: dict[str, dict] = field(default_factory=dict)
    plotting: dict[str, dict] = field(default_factory=dict)  # attested plotters (no run used them)
    rerun: dict | None = None

    def bad(self, kind: str, subject: str, message: str) -> None:
        self.mismatches.append({"kind": kind, "subject": subject, "message": message})

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n

    def report(self) -> dict:
        rec = self.record or {}
        return {"attestation": self.extracted.name, "file": str(self.archive), "experiment": rec.get("experiment"),
                "record": {"created": rec.get("created"), "status": rec.get("status")},
                "with_data": bool(self.extracted.manifest.get("with_data")), "ok": not self.mismatches,
                "intact": self.extracted.intact, "mismatches": self.mismatches, "checked": self.checked,
                "notes": self.notes, "rerun": self.rerun}


# -- 2. the documents -------------------------------------------------------------------------
def _documents(v: Verification) -> dict | None:
    ex = v.extracted
    try:
        record = records.read_record(ex.path("provenance.json"))
        claimed = ex.json("attestation.json")
    except DataError as exc:
        v.bad("record", "provenance.json", str(exc))
        return None
    if record["experiment"] != ex.manifest.get("experiment"):
        v.bad("record", "provenance.json", f"provenance.json is a record of `{record['experiment']}', the manifest "
                                           f"attests `{ex.manifest.get('experiment')}'")
    if record.get("status") != "ok":
        v.bad("record", "provenance.json", f"the attested run did not succeed ({record.get('status')})")
    v.record = record
    _manifests(v, record)
    documented = {label for label, a in record["assets"].items()
                  if asset_members(a)["documentation"] in ex.manifest["members"]}
    plotting = claimed.get("plotting") if isinstance(claimed, dict) else None
    v.plotting = {label: a for label, a in (plotting if isinstance(plotting, dict) else {}).items()
                  if isinstance(a, dict) and a.get("kind") in KINDS and is_reference(a["kind"], a.get("name"))}
    try:
        expected = describe(record, v.manifests, bool(ex.manifest.get("with_data")), documented, v.plotting)
    except DataError as exc:
        v.bad("record", "provenance.json", str(exc))
        return None
    for line in json_diff(expected, claimed)[:50]:
        section = line.split("/")[1].split(":")[0] if line.startswith("/") else ""
        kind = "environment" if "/environment/" in line else _SECTION_KIND.get(section, "attestation")
        v.bad(kind, "attestation.json", f"attestation.json disagrees with provenance.json at {line}")
    return record


def _manifests(v: Verification, record: dict) -> None:
    """3. data manifests: named by their content, well-formed, with safe paths (into ``v.store``)."""
    for ds_name, ds in record["datasets"].items():
        digest = ds.get("data")
        if not digest or digest in v.manifests:
            continue
        member = manifest_member(digest)
        if not v.extracted.has(member):
            v.bad("data-manifest", member, f"dataset `{ds_name}': its data manifest {member} is not in the archive")
            continue
        try:
            stored = v.store.manifests.put(v.extracted.path(member).read_bytes())
            manifest = manifests.load(v.store, stored)
        except (IntegrityError, OSError) as exc:
            v.bad("data-manifest", member, f"{member}: {exc}")
            continue
        if stored != digest:
            v.bad("data-manifest", member, f"{member}: its content has sha256 {stored[:12]}, not its name (modified)")
            continue
        unsafe = [label for t in ("files", "folders") for label in manifest[t] if not safe_label(label)]
        if unsafe:
            v.bad("data-manifest", member, f"{member}: path `{unsafe[0]}' is not a relative path under root/ or code/")
            continue
        v.manifests[digest] = manifest
        v.count("data_manifests")


# -- 4. assets ----------------------------------------------------------------------------------
def _assets(v: Verification, catalog: Catalog, record: dict) -> None:
    for label, old in [*record["assets"].items(), *v.plotting.items()]:
        members = asset_members(old)
        now = builder.asset_entry(catalog, old["kind"], old["name"])
        v.count("assets")
        if not now["found"]:
            v.bad("asset", label, f"{label}: its declaration {members['declaration']} is not in the archive")
            continue
        if now["declaration_hash"] != old["declaration_hash"]:
            diff = json_diff(old.get("declaration"), now.get("declaration"))[:10] if "declaration" in old else []
            v.bad("asset", label, f"{label}: declaration {members['declaration']} differs from the attested one "
                  f"(declaration hash {str(now['declaration_hash'])[:12]}, attested {str(old['declaration_hash'])[:12]})"
                  + "".join(f"\n    {d}" for d in diff))
        if now["code_hash"] != old["code_hash"]:
            v.bad("asset", label, f"{label}: code {members['code'] or now['code_file']} has sha256 "
                  f"{str(now['code_hash'])[:12]}, attested {str(old['code_hash'])[:12]}")
        if now["hash"] != old["hash"] and now["declaration_hash"] == old["declaration_hash"] \
                and now["code_hash"] == old["code_hash"]:
            v.bad("asset", label, f"{label}: BEAT hash {str(now['hash'])[:12]} differs from the attested "
                  f"{str(old['hash'])[:12]}")


# -- 5. keys ------------------------------------------------------------------------------------
def _keys(v: Verification, catalog: Catalog, record: dict, roots: dict[str, str]) -> Plan | None:
    name = record["experiment"]
    try:
        p = plan(catalog, name, roots)
    except BackbeatError as exc:
        v.bad("plan", name, f"experiment `{name}' cannot be planned from the archive's declarations: {exc}")
        return None
    labels = {f"{KINDS[k].folder}/{n}" for k, n in builder.used_assets(catalog, p)}
    for label in sorted(labels - set(record["assets"])):
        v.bad("asset", label, f"{label}: used by the experiment but not attested")
    for ds_name, ds in p.datasets.items():
        old = record["datasets"].get(ds_name)
        if old is None:
            v.bad("key", ds_name, f"dataset `{ds_name}' is not in the attested record")
            continue
        ds.index_digest, ds.data_digest = old.get("index_digest"), old.get("data")
    assign_keys(p)
    for df, key in (record.get("dataformats") or {}).items():
        v.count("keys")
        if p.dataformats.get(df) != key:
            v.bad("key", f"dataformats/{df}", f"dataformat {df}: key {str(p.dataformats.get(df))[:12]} derived from "
                                              f"the archive, attested {str(key)[:12]}")
    for ds_name, ds in p.datasets.items():
        old = record["datasets"].get(ds_name) or {}
        derived = {"index": ds.index_key, **{o: ds.output_key(o, p.dataformats) for o in ds.outputs}}
        attested = {"index": old.get("index_key"), **{o: e.get("key") for o, e in old.get("outputs", {}).items()}}
        for what, key in attested.items():
            v.count("keys")
            if derived.get(what) != key:
                v.bad("key", ds_name, f"dataset `{ds_name}': {what} key {str(derived.get(what))[:12]} derived from "
                                      f"the archive, attested {str(key)[:12]}")
    now = Current(catalog, v.store, p, {}, {}, {})
    changes = {m["subject"]: m for m in v.mismatches if m["kind"] == "asset"}
    if [j.name for j in p.jobs] != record["order"]:
        v.bad("key", name, f"the blocks planned from the archive ({', '.join(j.name for j in p.jobs)}) are not the "
                           f"attested ones ({', '.join(record['order'])})")
    for job in p.jobs:
        old = record["blocks"].get(job.name)
        if old is None:
            continue
        v.count("keys", 1 + len(job.outputs))
        wrong = [f"key {job.key[:12]} (attested {str(old.get('key'))[:12]})"] if job.key != old.get("key") else []
        wrong += [f"output {o} key {out.key[:12]} (attested {str(old['outputs'].get(o, {}).get('key'))[:12]})"
                  for o, out in job.outputs.items() if out.key != old.get("outputs", {}).get(o, {}).get("key")]
        if job.beat_hash != old.get("beat_hash"):
            wrong.append("BEAT hash differs")
        if wrong:
            why = explain_block(job, old, now, changes, {}) or ["(no attested component differs)"]
            v.bad("key", job.name, f"block `{job.name}': {', '.join(wrong)} derived from the archive: "
                  + "; ".join(why))
    return p


# -- 6. results ---------------------------------------------------------------------------------
def _results(v: Verification, record: dict) -> None:
    ex = v.extracted
    for name in analyzers(record):
        out = record["blocks"][name].get("outputs", {}).get("result") or {}
        h5, as_json = result_members(name)
        v.count("results")
        if not out.get("key") or not ex.has(h5):
            v.bad("result", h5, f"analyzer `{name}': its result {h5} is not in the archive")
            continue
        target = v.store.output_path(out["key"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ex.path(h5), target)
        try:
            rows, digest, _st = results.derive(v.store, out["key"])
        except (IntegrityError, OSError) as exc:
            v.bad("result", h5, f"analyzer `{name}': result file {h5} does not verify: {exc}")
            continue
        if digest != out.get("digest"):
            v.bad("result", h5, f"analyzer `{name}': result file {h5} holds content {digest[:12]}, attested "
                                f"{str(out.get('digest'))[:12]}")
        try:
            claimed = ex.json(as_json)
        except DataError as exc:
            v.bad("result", as_json, str(exc))
            continue
        if not isinstance(claimed, dict) or claimed.get("records") != rows or claimed.get("digest") != digest:
            v.bad("result", as_json, f"analyzer `{name}': {as_json} does not hold the records of {h5}")


# -- 7. data ------------------------------------------------------------------------------------
def data_source(v: Verification, data: str | os.PathLike | None) -> tuple[Path | None, str]:
    """Where the raw data is read from: ``(folder laid out as data/<database>/…, what it is)``."""
    if data is not None:
        return Path(data), f"data folder {data}"
    if v.extracted.manifest.get("with_data"):
        return v.extracted.path("data"), "the archive"
    return None, "nowhere"


def _data(v: Verification, record: dict, source: Path | None, origin: str) -> None:
    needed = database_data(record, v.manifests)
    if source is None:
        if any(f.get("sha256") for d in needed.values() for f in d["files"].values()):
            v.notes.append("the raw data is not checked: the archive holds none (exported without --with-data) and "
                           "no --data DIR was given")
        return
    for db, seen in needed.items():
        where = {"root": str(source / db / "root"), "code": str(source / db / "code")}
        stored = {"format": manifests.FORMAT, "files": seen["files"], "folders": seen["folders"]}
        now = manifests.current(stored, where, StatMemo(None))
        v.count("data_files", len(seen["files"]))
        changes = manifests.diff(db, stored, now)
        for c in changes:
            path = manifests.label_path(where, c["file"]) if c["file"] else source / db
            v.bad("data-file", f"{db}:{c['file']}", f"{c['message']} ({path}, from {origin})")
        gone = [c for c in changes if c["change"] == "removed"]
        if gone and len(gone) == sum(1 for f in seen["files"].values() if f.get("sha256")):
            v.notes.append(f"no data file of database {db} was found in {origin}: it must be laid out as "
                           f"<folder>/{db}/root/<path under the root folder> and <folder>/{db}/code/<path next to "
                           f"the view code>")


# -- the whole verification ----------------------------------------------------------------------
def _checks(v: Verification, data: str | os.PathLike | None, rerun: bool, work: Path, sandbox: bool | None,
            progress: Any) -> None:
    record = _documents(v)
    if record is None:
        return
    roots = {db: d.get("root_folder") or "" for db, d in record["databases"].items()}
    prefix = v.extracted.path("prefix")
    prefix.mkdir(exist_ok=True)
    catalog = Catalog(str(prefix), roots=roots)
    _assets(v, catalog, record)
    p = _keys(v, catalog, record, roots)
    _results(v, record)
    source, origin = data_source(v, data)
    _data(v, record, source, origin)
    if rerun and p is None:
        v.notes.append("not re-run: the experiment cannot be planned from the archive (see above)")
    elif rerun:  # (also when something above failed: the re-run shows which block it changes)
        v.rerun = rerunning.rerun(v.extracted, record, v.manifests, source, work, v.bad, sandbox, progress)


def verify(archive: str | os.PathLike, data: str | os.PathLike | None = None, rerun: bool = False,
           expect: str | None = None, sandbox: bool | None = None, progress: Any = None) -> dict:
    """Verify an attestation archive (see the module docstring); ``ok`` is False on any mismatch.

    ``sandbox``: re-run in the sandbox (None: as ``.backbeatrc`` says for the experiment)."""
    archive = Path(archive)
    if not archive.is_file():
        raise DataError(f"attestation `{archive}' does not exist or is not a file")
    if data is not None and not Path(data).is_dir():
        raise DataError(f"data folder `{data}' does not exist")
    work = Path(tempfile.mkdtemp(prefix="backbeat-attest-"))
    try:
        ex = extract(archive, work / "archive")
        v = Verification(archive, ex, CacheStore(work / "cache"))
        v.mismatches += ex.problems
        v.count("members", len(ex.manifest["members"]))
        if expect is not None and expect.strip().lower() != ex.name:
            v.bad("name", archive.name, f"this archive is attestation {ex.name}, not the expected {expect.strip()}")
        try:
            _checks(v, data, rerun, work, sandbox, progress)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # a forged record of the right format
            v.bad("record", "provenance.json", f"provenance.json is not a well-formed record ({type(exc).__name__}: "
                                               f"{exc})")
        return v.report()
    finally:
        shutil.rmtree(work, ignore_errors=True)
