"""``backbeat experiments export NAME -o FILE [--with-data]``: an experiment's attestation archive.

What goes in is what the experiment's latest successful run used and produced, as its
provenance record says (:mod:`backbeat.provenance`), never what the prefix holds now when
that differs:

* declarations — the prefix's file when its content still has the recorded declaration hash,
  else the declaration the record holds (same content, so the same hash);
* code — the code snapshot of the run (``<cache>/code/<sha256>``: the bytes that ran), else
  the prefix's file when it still has the recorded sha256; documentation (``.rst``) as is;
* data manifests — from the cache, by digest; raw data files (``--with-data``) from the
  database's root folder and the database's folder in the prefix, each checked against its
  manifest's sha256 (a data file changed since the run is refused, naming it);
* results — each analyzer's result file, verified (identity and content digest) and equal
  to the recorded digest, and its records as JSON;
* the record itself and ``attestation.json`` (:func:`backbeat.attestation.description.describe`).

Anything that does not match the record is an error naming it: an attestation never pairs
results with code or data that did not produce them.
"""

from __future__ import annotations

import os
from pathlib import Path

from backbeat.attestation.archive import Writer
from backbeat.attestation.description import (
    analyzers,
    asset_members,
    asset_summary,
    data_member,
    database_data,
    describe,
    manifest_member,
    result_members,
)
from backbeat.cache.backends import open_store
from backbeat.cache.store import CacheStore
from backbeat.core import hashing, jsonio
from backbeat.core.errors import DataError, ExecutionError, IntegrityError
from backbeat.core.names import KINDS, parse_name
from backbeat.declarations.catalog import Catalog
from backbeat.provenance import builder, manifests, records


def recorded_run(store: CacheStore, name: str) -> dict:
    """The latest successful record of ``name``, every block of it ran or cached (else ExecutionError)."""
    record = records.load(store, name)
    if record is None:
        raise ExecutionError(records.older_format(store, name) or
                             f"no provenance record of experiment `{name}' in cache `{store.location}': run it first")
    if record.get("status") != "ok":
        raise ExecutionError(f"the recorded run of experiment `{name}' ({record.get('created')}) did not succeed "
                             f"({record.get('status')}): run it successfully before exporting it")
    missing = [b for b in record["order"] if record["blocks"][b].get("status") not in ("ran", "cached")]
    if missing:
        raise ExecutionError(f"block(s) {', '.join(missing)} of experiment `{name}' did not run in its recorded run "
                             f"of {record.get('created')}: run the whole experiment before exporting it")
    return record


def _declaration(catalog: Catalog, label: str, entry: dict, notes: list[str]) -> bytes:
    key = KINDS[entry["kind"]].description_key
    path = catalog.prefix.locate(entry["kind"], entry["name"]).json
    try:
        raw = path.read_bytes()
        if hashing.hash_json(jsonio.parse(raw), key) == entry["declaration_hash"]:
            return raw
    except (OSError, jsonio.JSONProblem):
        pass
    decl = entry.get("declaration")
    raw = jsonio.dumps(decl).encode("utf-8") + b"\n"
    if decl is None or hashing.hash_json(jsonio.parse(raw), key) != entry["declaration_hash"]:
        raise DataError(f"{label}: the declaration of the recorded run is neither in the prefix ({path}) nor in "
                        f"its provenance record: run the experiment again before exporting it")
    notes.append(f"{label}: the prefix's declaration changed since the recorded run; the recorded one is exported")
    return raw


def _code(catalog: Catalog, store: CacheStore, label: str, entry: dict) -> bytes:
    digest = entry["code_hash"]
    try:
        return store.code.get(digest)  # the bytes that ran
    except IntegrityError:
        pass
    path = Path(catalog.prefix.root, entry["code_file"])
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{label}: code file `{path}' cannot be read ({exc.strerror or exc}) and its snapshot "
                        f"{digest[:12]} is not in the cache") from None
    if hashing.sha(raw) != digest:
        raise DataError(f"{label}: code file `{path}' changed since the recorded run and its snapshot {digest[:12]} "
                        f"is not in the cache: run the experiment again before exporting it")
    return raw


def _assets(writer: Writer, catalog: Catalog, store: CacheStore, record: dict, notes: list[str]) -> set[str]:
    documented = set()
    for label, entry in record["assets"].items():
        if not entry.get("found") or not entry.get("file") or os.path.isabs(entry["file"]):
            raise DataError(f"{label}: its declaration file was not found in the prefix of the recorded run")
        members = asset_members(entry)
        writer.add_bytes(str(members["declaration"]), _declaration(catalog, label, entry, notes))
        if members["code"]:
            writer.add_bytes(members["code"], _code(catalog, store, label, entry))
        rst = catalog.prefix.locate(entry["kind"], entry["name"]).rst
        if members["documentation"] and rst.is_file():
            writer.add_file(members["documentation"], rst)
            documented.add(label)
    return documented


def plotting_assets(catalog: Catalog, record: dict) -> list[tuple[str, str]]:
    """``[(kind, name)]``: the prefix's plotters of the plot results of the experiment's analyzers,
    their plotterparameters and the libraries they use (transitively) — none of them ran."""
    from backbeat.declarations.library import load_order

    types = {r.get("type") for a in record["assets"].values() if a["kind"] == "algorithm"
             for r in ((a.get("declaration") or {}).get("results") or {}).values()
             if isinstance(r, dict) and str(r.get("type")).startswith("plot/")}
    plotters = [n for n in catalog.prefix.list("plotter")
                if (catalog.load("plotter", n).declaration or {}).get("dataformat") in types]
    out = [("plotter", n) for n in plotters]
    out += [("plotterparameter", n) for n in catalog.prefix.list("plotterparameter")
            if (catalog.load("plotterparameter", n).declaration or {}).get("plotter") in plotters]
    for n in plotters:
        uses = (catalog.load("plotter", n).declaration or {}).get("uses") or {}
        for alias in sorted(uses):
            out += [("library", lib) for lib in load_order(catalog, uses[alias])]
    labels = set(record["assets"])
    return [x for i, x in enumerate(out) if x not in out[:i] and f"{KINDS[x[0]].folder}/{x[1]}" not in labels]


def _plotting(writer: Writer, catalog: Catalog, record: dict) -> dict[str, dict]:
    out = {}
    for kind, name in plotting_assets(catalog, record):
        entry = builder.asset_entry(catalog, kind, name)
        label = f"{KINDS[kind].folder}/{name}"
        if not entry["found"] or entry["declaration"] is None:
            raise DataError(f"{label}: its declaration cannot be read")
        members = asset_members(entry)
        writer.add_file(str(members["declaration"]), catalog.prefix.root / entry["file"])
        if members["code"]:
            writer.add_file(members["code"], catalog.prefix.root / entry["code_file"], entry["code_hash"])
        rst = catalog.prefix.locate(kind, name).rst
        if members["documentation"] and rst.is_file():
            writer.add_file(members["documentation"], rst)
        out[label] = asset_summary(entry, rst.is_file())
    return out


def _data(writer: Writer, catalog: Catalog, store: CacheStore, record: dict, with_data: bool) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for ds_name, ds in record["datasets"].items():
        digest = ds.get("data")
        if not digest:
            raise DataError(f"dataset `{ds_name}' of the recorded run has no data manifest: run the experiment again")
        if digest in found:
            continue
        try:
            raw = store.manifests.get(digest)
            found[digest] = manifests.load(store, digest)
        except IntegrityError as exc:
            raise DataError(f"dataset `{ds_name}': its data manifest is not usable: {exc}") from None
        writer.add_bytes(manifest_member(digest), raw)
    if with_data:
        for db, seen in database_data(record, found).items():
            where = manifests.folders(catalog, db, record["databases"][db].get("root_folder") or "")
            for label, f in sorted(seen["files"].items()):
                if f.get("sha256"):
                    writer.add_file(data_member(db, label), manifests.label_path(where, label), f["sha256"],
                                    what=f"data file of database {db}")
    return found


def _results(writer: Writer, store: CacheStore, record: dict) -> None:
    for name in analyzers(record):
        out = record["blocks"][name]["outputs"]["result"]
        try:
            digest = store.verify_output(out["key"])
            rows = store.read_result(out["key"])
        except (IntegrityError, OSError) as exc:
            raise DataError(f"the result of analyzer `{name}' in the cache cannot be exported: {exc}") from None
        if digest != out.get("digest"):
            raise DataError(f"the result of analyzer `{name}' in the cache holds content {digest[:12]}, the recorded "
                            f"run produced {str(out.get('digest'))[:12]}: run the experiment again")
        h5, as_json = result_members(name)
        writer.add_file(h5, store.output_path(out["key"]), what=f"result file of analyzer `{name}'")
        writer.add_json(as_json, {"key": out["key"], "digest": digest, "records": rows})


def export(prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike, name: str,
           output: str | os.PathLike, with_data: bool = False) -> dict:
    """Write the attestation of ``name``'s latest successful run to ``output``.

    ``{"attestation": its name, "file", "experiment", "members", "bytes", "with_data", "notes"}``.
    """
    _k, name = parse_name("experiment", name)
    store = open_store(cache)
    record = recorded_run(store, name)
    catalog = Catalog(str(prefix))
    writer = Writer()
    notes: list[str] = []
    documented = _assets(writer, catalog, store, record, notes)
    plotting = _plotting(writer, catalog, record)
    found = _data(writer, catalog, store, record, with_data)
    _results(writer, store, record)
    writer.add_json("provenance.json", record)
    writer.add_json("attestation.json", describe(record, found, with_data, documented, plotting))
    head = {"experiment": name, "created": record.get("created"), "with_data": with_data}
    digest, size = writer.write(Path(output), head)
    if not with_data and any(f.get("sha256") for m in found.values() for f in m["files"].values()):
        notes.append("the raw data is not included (no --with-data): a verifier re-running it needs the data "
                     "(--data DIR, laid out as data/<database>/<version>/root|code/…)")
    return {"attestation": digest, "file": str(output), "experiment": name, "members": len(writer.members) + 2,
            "bytes": size, "with_data": with_data, "notes": notes}
