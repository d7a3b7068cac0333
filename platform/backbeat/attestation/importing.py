"""``backbeat attest import FILE``: add an attestation's assets to a prefix, to fork and extend them.

The archive must be intact (every member as its manifest says) and its assets must hash as
its provenance record attests; otherwise nothing is imported (``attest verify`` says why).

Each attested asset is then compared with the prefix's asset of the same name: absent, it
is added (declaration, code, documentation, placed where the prefix's layout puts them);
present with the same content (BEAT hash, declaration and code hashes — formatting aside)
it is left alone; present with other content it is a **conflict**.  Data files shipped next
to a database's view code (``code/`` paths, in archives exported ``--with-data``) are
treated the same way, by sha256.  Any conflict refuses the whole import, naming every
conflicting asset and file, before anything is written: a prefix never ends up half
imported.  Raw data under a database's root folder is not copied: a note says where it is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from backbeat.attestation.archive import Extracted, extract, file_digest
from backbeat.attestation.description import (
    asset_members,
    data_member,
    database_data,
    manifest_member,
    safe_label,
)
from backbeat.core import jsonio
from backbeat.core.errors import DataError
from backbeat.core.names import KINDS, is_reference
from backbeat.declarations.catalog import Catalog
from backbeat.provenance import builder, manifests, records


def _attested(ex: Extracted) -> tuple[dict, Catalog]:
    if not ex.intact:
        raise DataError(f"refusing to import attestation `{ex.archive}': it is not intact: "
                        + "; ".join(p["message"] for p in ex.problems[:5])
                        + " (`backbeat attest verify' tells more)")
    record = records.read_record(ex.path("provenance.json"))
    claimed = ex.json("attestation.json")
    plotting = claimed.get("plotting") if isinstance(claimed, dict) else None
    record["assets"].update({label: a for label, a in (plotting if isinstance(plotting, dict) else {}).items()
                             if isinstance(a, dict) and a.get("kind") in KINDS and is_reference(a["kind"], a.get("name"))
                             and label not in record["assets"]})  # plotters of the results (attested, never run)
    archived = Catalog(str(ex.path("prefix")))
    wrong = []
    for label, entry in record["assets"].items():
        now = builder.asset_entry(archived, entry["kind"], entry["name"])
        if any(now[k] != entry[k] for k in ("hash", "declaration_hash", "code_hash")):
            wrong.append(label)
    if wrong:
        raise DataError(f"refusing to import attestation `{ex.archive}': asset(s) {', '.join(wrong)} do not hash as "
                        f"its provenance record attests (`backbeat attest verify' tells more)")
    return record, archived


def _differs(entry: dict, mine: dict) -> str | None:
    what = [w for k, w in (("declaration_hash", "declaration"), ("code_hash", "code")) if mine[k] != entry[k]]
    if not what and mine["hash"] != entry["hash"]:
        what = ["hash"]
    return " and ".join(what) + " differ" if what else None


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as f, open(dst, "xb") as g:  # never overwrite (a file appeared meanwhile: refused)
        shutil.copyfileobj(f, g)


def import_archive(archive: str | os.PathLike, prefix: str | os.PathLike) -> dict:
    """Import the assets of ``archive`` into ``prefix`` (created if missing).

    ``{"attestation", "experiment", "prefix", "added", "identical", "data_files", "notes"}``;
    DataError (nothing written) on conflicts or an archive that does not hold.
    """
    archive, prefix = Path(archive), Path(prefix)
    if not archive.is_file():
        raise DataError(f"attestation `{archive}' does not exist or is not a file")
    work = Path(tempfile.mkdtemp(prefix="backbeat-attest-"))
    try:
        ex = extract(archive, work / "archive")
        record, archived = _attested(ex)
        prefix.mkdir(parents=True, exist_ok=True)
        local = Catalog(str(prefix))
        writes: list[tuple[Path, Path]] = []
        added, identical, conflicts, data_files = [], [], [], []
        for label, entry in record["assets"].items():
            members = asset_members(entry)
            files = local.prefix.locate(entry["kind"], entry["name"])
            if files.json.is_file():
                why = _differs(entry, builder.asset_entry(local, entry["kind"], entry["name"]))
                (conflicts.append(f"{label} ({why})") if why else identical.append(label))
                continue
            added.append(label)
            source = archived.loaded(entry["kind"], entry["name"])  # (located by its name, never by a recorded path)
            writes.append((source.files.json, files.json))
            if members["code"] and source.code_path is not None:
                writes.append((source.code_path, files.base.with_name(files.base.name + source.code_path.suffix)))
            if source.files.rst.is_file() and not files.rst.exists():
                writes.append((source.files.rst, files.rst))
        notes = []
        found = {ds["data"]: jsonio.parse(ex.path(manifest_member(ds["data"])).read_bytes())
                 for ds in record["datasets"].values() if ds.get("data") and ex.has(manifest_member(ds["data"]))}
        for db, seen in database_data(record, found).items():
            code = {"code": manifests.folders(local, db, "")["code"]}
            for label, f in sorted(seen["files"].items()):
                member = data_member(db, label)
                if not safe_label(label):
                    raise DataError(f"refusing to import attestation `{archive}': its data manifest names `{label}', "
                                    f"not a relative path under root/ or code/")
                if not f.get("sha256"):
                    continue
                if not ex.has(member):
                    if label.startswith("root/"):
                        notes.append(f"database {db} reads {label[5:]} under its root folder: not in this archive")
                    else:
                        notes.append(f"database {db}: data file {label[5:]} next to its view code is not in this "
                                     f"archive (exported without --with-data)")
                    continue
                if label.startswith("root/"):
                    continue
                dst = manifests.label_path(code, label)
                if dst.is_file():
                    if file_digest(dst)[0] != f["sha256"]:
                        conflicts.append(f"{dst} (data file of database {db}: content differs)")
                    continue
                writes.append((ex.path(member), dst))
                data_files.append(str(dst))
            if any(label.startswith("root/") and ex.has(data_member(db, label)) for label in seen["files"]):
                notes.append(f"database {db} reads data under its root folder; the archive holds it under data/{db}/root/ "
                             f"(extract it with tar and set database/{db} in .backbeatrc)")
        if conflicts:
            raise DataError(f"refusing to import attestation {ex.name[:12]} into `{prefix}': "
                            f"{len(conflicts)} asset(s) or file(s) of the prefix have the same name and other "
                            f"content: {'; '.join(conflicts)}. Nothing was imported: fork or version the prefix's "
                            f"assets first, or import into another prefix")
        for src, dst in writes:
            _copy(src, dst)
        return {"attestation": ex.name, "experiment": record["experiment"], "prefix": str(prefix), "added": added,
                "identical": identical, "data_files": data_files, "notes": notes}
    finally:
        shutil.rmtree(work, ignore_errors=True)
