"""What an attestation says (``attestation.json``), derived from a provenance record alone.

:func:`describe` is a pure function of the record, the data manifests it names, whether the
raw data is included and which documentation files are: export writes its result and
verification computes it again from the archive's ``provenance.json`` and compares, so the
summary a reader sees can never disagree with the record it summarises.  The member names
of each thing (:func:`asset_members`, :func:`data_member`, …) are defined here once.
"""

from __future__ import annotations

import re
from typing import Any

from backbeat.attestation.archive import FORMAT
from backbeat.attestation.environments import block_environments
from backbeat.core.errors import DataError
from backbeat.core.names import KINDS


def asset_members(entry: dict) -> dict[str, str | None]:
    """``{"declaration", "code", "documentation"}``: where an asset's files are in the archive
    (``entry``: a record's asset entry, or the summary :func:`asset_summary` made of one)."""
    if isinstance(entry.get("members"), dict):
        return {k: entry["members"].get(k) for k in ("declaration", "code", "documentation")}
    decl = f"prefix/{entry['file']}"
    code = f"prefix/{entry['code_file']}" if entry.get("code_file") and entry.get("code_hash") else None
    doc = decl[: -len(".json")] + ".rst" if decl.endswith(".json") else None
    return {"declaration": decl, "code": code, "documentation": doc}


_SAFE_PART = re.compile(r"^[^/\\\x00-\x1f]+$")


def safe_label(label: str) -> bool:
    """Whether a data manifest's path is a relative path under ``root/`` or ``code/`` (received
    manifests are untrusted: their paths are joined to folders).

    >>> safe_label("root/a/b.csv"), safe_label("code/../../etc/passwd"), safe_label("/etc")
    (True, False, False)
    """
    head, _, rest = label.partition("/")
    return head in ("root", "code") and (not rest or all(_SAFE_PART.match(p) and p not in (".", "..")
                                                         for p in rest.split("/")))


def manifest_member(digest: str) -> str:
    return f"data-manifests/{digest}.json"


def data_member(database: str, label: str) -> str:
    """``data/<database>/<version>/root/<path>`` or ``…/code/<path>`` (a data manifest's label)."""
    return f"data/{database}/{label}"


def result_members(block: str) -> tuple[str, str]:
    """The HDF5 cache file of an analyzer's result, and its records as JSON."""
    return f"results/{block}.h5", f"results/{block}.json"


def analyzers(record: dict) -> list[str]:
    return [b for b in record["order"] if record["blocks"][b].get("kind") == "analyzer"]


def database_data(record: dict, manifests: dict[str, dict]) -> dict[str, dict]:
    """``{database: {"files": {label: entry}, "folders": {label: entry}}}``: what the views of each
    database read, over all its datasets (their data manifests merged)."""
    out: dict[str, dict] = {}
    for _name, ds in sorted(record["datasets"].items()):
        if not isinstance(ds.get("database"), str) or not KINDS["database"].pattern.match(ds["database"]):
            raise DataError(f"dataset `{_name}' of the provenance record names no database (`{ds.get('database')}')")
        manifest = manifests.get(ds.get("data") or "") or {"files": {}, "folders": {}}
        db = out.setdefault(ds["database"], {"files": {}, "folders": {}})
        db["files"].update(manifest["files"])
        db["folders"].update(manifest["folders"])
    return out


def asset_summary(entry: dict, documented: bool) -> dict:
    """What ``attestation.json`` says of one asset (an entry of a record's ``assets``)."""
    members = asset_members(entry)
    if not documented:
        members["documentation"] = None
    return {"kind": entry["kind"], "name": entry["name"], "hash": entry["hash"],
            "declaration_hash": entry["declaration_hash"], "code_hash": entry["code_hash"], "members": members}


def describe(record: dict, manifests: dict[str, dict], with_data: bool, documentation: set[str],
             plotting: dict[str, dict] | None = None) -> dict:
    """The content of ``attestation.json`` (``docs/attestations.md``).

    ``manifests``: ``{digest: data manifest}`` of the record's datasets; ``documentation``: the
    labels of the assets whose ``.rst`` file the archive holds; ``plotting``: the summaries of the
    plotters (and their plotterparameters and libraries) of the results, which no run used.
    """
    assets = {label: asset_summary(a, label in documentation) for label, a in record["assets"].items()}
    datasets = {}
    for name, ds in record["datasets"].items():
        datasets[name] = {k: ds.get(k) for k in ("database", "protocol", "set", "view", "parameters", "root_folder",
                                                 "beat_hash", "index_key", "index_digest")}
        datasets[name]["data_manifest"] = ds.get("data")
        datasets[name]["member"] = manifest_member(ds["data"]) if ds.get("data") else None
        datasets[name]["outputs"] = {o: v.get("key") for o, v in ds.get("outputs", {}).items()}
    data: dict[str, Any] = {}
    for db, seen in database_data(record, manifests).items():
        files = {label: {"sha256": f.get("sha256"), "size": f.get("size"), "read_by": f.get("read_by"),
                         "member": data_member(db, label) if with_data and f.get("sha256") else None}
                 for label, f in sorted(seen["files"].items())}
        data[db] = {"root_folder": record["databases"].get(db, {}).get("root_folder"), "files": files,
                    "folders": dict(sorted(seen["folders"].items())),
                    "bytes": sum(f["size"] or 0 for f in files.values())}
    envs = block_environments(record)
    blocks = {}
    for name in record["order"]:
        b = record["blocks"][name]
        blocks[name] = {"kind": b.get("kind"), "algorithm": b.get("algorithm"), "status": b.get("status"),
                        "key": b.get("key"), "beat_hash": b.get("beat_hash"),
                        "outputs": {o: {"key": v.get("key"), "digest": v.get("digest")}
                                    for o, v in (b.get("outputs") or {}).items()},
                        "environment": envs[name]}
    results = {}
    for name in analyzers(record):
        out = (record["blocks"][name].get("outputs") or {}).get("result") or {}
        h5, records = result_members(name)
        results[name] = {"key": out.get("key"), "digest": out.get("digest"), "member": h5, "records": records}
    return {"format": FORMAT, "experiment": record["experiment"], "toolchain": record.get("toolchain"),
            "record": {"format": record.get("format"), "created": record.get("created"),
                       "status": record.get("status")},
            "with_data": with_data, "assets": assets, "plotting": dict(plotting or {}),
            "dataformats": dict(record.get("dataformats") or {}),
            "databases": {db: {"hash": d.get("hash"), "root_folder": d.get("root_folder")}
                          for db, d in record["databases"].items()},
            "datasets": datasets, "data": data, "order": list(record["order"]), "blocks": blocks,
            "results": results}
