"""Data manifests: which data files a dataset's view read, and their content.

When a view index is built, the indexing job records every file the view opens and every
folder it lists under the database's folders (:mod:`backbeat.runtime.dependencies`) — in
``index()``, then in ``setup()`` and ``get()`` over every data unit — and the parent turns
that into a **data manifest** (format :data:`FORMAT`), a JSON document stored once in the
cache, named by its sha256 (:mod:`backbeat.cache.blobs`)::

    {"format": "backbeat-data-manifest-1",
     "files":   {"root/images/001.png": {"sha256": "…", "size": 1234, "read_by": "get"}, …},
     "folders": {"root/images": {"listing": "…", "entries": 100, "read_by": "index"}, …}}

Paths are ``root/…`` (under the database's root folder) or ``code/…`` (under its folder in
the prefix, for data shipped with the view); ``sha256`` is null for a file the view tried to
open that did not exist; a folder's ``listing`` is the sha256 of its sorted entry names.
``read_by`` says whether ``index()`` read it (a change re-builds the index) or only
``setup()``/``get()`` (a change only changes the keys).

The digest of the manifest of the data *as it is now* (:func:`current`) enters the keys of
the dataset's outputs (``docs/hashing.md``), so a changed file re-runs exactly the blocks
downstream of the datasets that read it, and files the view never opened cost nothing.
Current content comes from the stat memo (:mod:`backbeat.core.statmemo`): a cached run
``stat``s each file the view read, hashing only those that changed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from backbeat.cache.store import CacheStore
from backbeat.core import hashing, jsonio
from backbeat.core.errors import DataError, IntegrityError
from backbeat.core.statmemo import StatMemo, signature
from backbeat.declarations.catalog import Catalog
from backbeat.planning.model import Dataset

FORMAT = "backbeat-data-manifest-1"


class DataChanged(DataError):
    """A data file changed while a view was reading it."""


# -- where a database's data lives ------------------------------------------------------------
def folders(catalog: Catalog, database: str, root_folder: str) -> dict[str, str]:
    """The folders whose files a view's reads are recorded under: ``root`` and ``code``."""
    out = {"code": os.path.abspath(catalog.prefix.locate("database", database).json.parent)}
    if root_folder:
        out = {"root": os.path.abspath(os.path.expanduser(root_folder)), **out}
    return out


def label_path(where: dict[str, str], label: str) -> Path:
    """The file or folder a manifest label (``root/…``, ``code/…``) names under ``where`` (:func:`folders`)."""
    name, _, rel = label.partition("/")
    if name not in where:
        raise DataError(f"data manifest entry `{label}' names no known folder")
    return Path(where[name], rel) if rel else Path(where[name])


# -- content of one entry -----------------------------------------------------------------------
def _file(path: Path, memo: StatMemo, st: os.stat_result | None = None) -> dict:
    try:
        st = st or path.stat()
        if not path.is_file():
            return {"sha256": None, "size": None}
        return {"sha256": memo.digest(path, st), "size": st.st_size}
    except OSError:
        return {"sha256": None, "size": None}


def _folder(path: Path, memo: StatMemo, st: os.stat_result | None = None) -> dict:
    try:
        st = st or path.stat()
        listing = memo.digest(path, st, hashing.listing_digest, tag="listing")
        return {"listing": listing, "entries": len(os.listdir(path))}
    except OSError:
        return {"listing": None, "entries": None}


def build(seen: dict[str, dict], where: dict[str, str], memo: StatMemo) -> dict:
    """The manifest of what an indexing job saw (``{label: {kind, phase, stat}}``).

    Each entry is hashed now; if its ``stat`` differs from when the view opened it, the file
    changed while the view read it (:class:`DataChanged`): the index cannot be trusted.
    """
    files: dict[str, dict] = {}
    dirs: dict[str, dict] = {}
    for label, what in seen.items():
        path = label_path(where, label)
        try:
            st: os.stat_result | None = path.stat()
        except OSError:
            st = None
        now = list(signature(st)) if st is not None else None
        if now != what.get("stat"):
            raise DataChanged(f"data file `{path}' changed while the view read it: run again")
        if what.get("kind") == "folder":
            dirs[label] = dict(_folder(path, memo, st), read_by=what.get("phase", "get"))
        else:
            files[label] = dict(_file(path, memo, st), read_by=what.get("phase", "get"))
    return {"format": FORMAT, "files": files, "folders": dirs}


def current(stored: dict, where: dict[str, str], memo: StatMemo) -> dict:
    """``stored`` with the content of each entry as it is now (same entries)."""
    memo.preload("sha256", [str(label_path(where, label)) for label in stored["files"]])
    files = {label: dict(_file(label_path(where, label), memo), read_by=e.get("read_by", "get"))
             for label, e in stored["files"].items()}
    dirs = {label: dict(_folder(label_path(where, label), memo), read_by=e.get("read_by", "get"))
            for label, e in stored["folders"].items()}
    return {"format": FORMAT, "files": files, "folders": dirs}


def merge(stored: dict, extra: dict) -> dict:
    """``stored`` with the entries of ``extra`` it lacks (dependencies learnt later)."""
    return {"format": FORMAT, "files": {**extra["files"], **stored["files"]},
            "folders": {**extra["folders"], **stored["folders"]}}


def index_changed(old: dict, new: dict) -> list[str]:
    """Entries read by ``index()`` whose content differs: the index must be re-built."""
    out = []
    for table in ("files", "folders"):
        for label, e in old[table].items():
            if e.get("read_by") == "index" and new[table].get(label) != e:
                out.append(label)
    return out


# -- storing ------------------------------------------------------------------------------------
def store_manifest(store: CacheStore, manifest: dict) -> str:
    """Store a manifest (once); its digest."""
    return store.manifests.put(hashing.canonical(manifest))


def load(store: CacheStore, digest: str) -> dict:
    """A stored manifest, checked (IntegrityError when absent, modified or not a manifest)."""
    raw = store.manifests.get(digest)
    try:
        data = jsonio.parse(raw)
    except jsonio.JSONProblem as exc:
        raise IntegrityError(f"data manifest {digest[:12]} is not valid JSON: {exc}") from None
    if (not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict)
            or not isinstance(data.get("folders"), dict)):
        raise IntegrityError(f"data manifest {digest[:12]} is not a {FORMAT} document")
    return data


def load_or_none(store: CacheStore, digest: str | None) -> dict | None:
    if not digest:
        return None
    try:
        return load(store, digest)
    except IntegrityError:
        return None


# -- a dataset's data, now ------------------------------------------------------------------------
def digest_of(manifest: dict) -> str:
    """The digest a manifest is stored under (sha256 of its canonical bytes)."""
    return hashing.sha(hashing.canonical(manifest))


def resolve(store: CacheStore, catalog: Catalog, ds: Dataset, memo: StatMemo | None = None,
            save: bool = True) -> tuple[str | None, dict | None]:
    """Set ``ds.index_digest`` and ``ds.data_digest`` from the cache and the data as it is now,
    without running the view: ``(None, manifest now)``, or ``(why the view index must be
    (re-)built first, the manifest now if there is one)``.

    ``memo``: the stat memo to trust (default the store's; an empty one re-hashes everything);
    ``save``: store the manifest of the data now when it is a new one (a run does; ``status``
    and ``audit`` write nothing).
    """
    ds.index_digest = ds.data_digest = None
    rec = store.index_record(ds.index_key)
    if rec is None:
        if store.index_path(ds.index_key).is_file():
            return "its view index was built without a record of the files the view read (or was damaged)", None
        return "it was never indexed", None
    try:
        stored = load(store, rec["manifest"])
    except IntegrityError as exc:
        return f"its data manifest is damaged ({exc})", None
    memo = store.memo if memo is None else memo
    try:
        now = current(stored, folders(catalog, ds.database, ds.root_folder), memo)
    except DataError as exc:
        return str(exc), None
    changed = index_changed(stored, now)
    if changed:
        return f"database {ds.database}: {describe_label(changed[0])}, read by the view's index(), changed", now
    ds.index_digest = rec["index_digest"]
    if now == stored:
        ds.data_digest = rec["manifest"]
    else:
        ds.data_digest = store_manifest(store, now) if save else digest_of(now)
    return None, now


def describe_label(label: str) -> str:
    """``root/a/b.csv`` → ``a/b.csv``; ``code/data/x`` → ``data/x (next to the view code)``."""
    name, _, rel = label.partition("/")
    return (rel or ".") + (" (next to the view code)" if name == "code" else "")


def diff(database: str, old: dict | None, new: dict | None) -> list[dict]:
    """Entries added, removed or changed between two manifests of one dataset's data."""
    if old is None or new is None:
        return [{"database": database, "file": None, "change": "changed",
                 "message": f"database {database}: data files changed (the recorded data manifest is not in "
                            f"this cache)"}]
    out = []
    for table, what in (("files", "file"), ("folders", "folder")):
        o, n = old.get(table, {}), new.get(table, {})
        for label in sorted(set(o) | set(n)):
            a, b = _content(o.get(label)), _content(n.get(label))
            shown = describe_label(label)
            if a == b:
                continue
            if a is None or b is None:
                out.append({"database": database, "file": label, "change": "read" if a is None else "unread",
                            "message": f"database {database}: {what} {shown} "
                                       f"{'is now read by the view' if a is None else 'is no longer read'}"})
            elif table == "folders":
                out.append({"database": database, "file": label, "change": "changed",
                            "message": f"database {database}: folder {shown} listing changed "
                                       f"({a.get('entries')} -> {b.get('entries')} entries)"})
            elif a.get("sha256") is None or b.get("sha256") is None:
                out.append({"database": database, "file": label, "change": "added" if a.get("sha256") is None
                            else "removed", "message": f"database {database}: file {shown} "
                            f"{'added' if a.get('sha256') is None else 'removed'}"})
            else:
                size = "same size" if a.get("size") == b.get("size") else f"size {a.get('size')} -> {b.get('size')}"
                out.append({"database": database, "file": label, "change": "changed",
                            "message": f"database {database}: file {shown} changed ({size}, sha256 "
                                       f"{str(a.get('sha256'))[:12]} -> {str(b.get('sha256'))[:12]})"})
    return out


def _content(entry: dict | None) -> dict | None:
    return None if entry is None else {k: v for k, v in entry.items() if k != "read_by"}


def relative(path: Path | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def summary(manifest: dict) -> dict[str, Any]:
    """What a record or a listing shows of a manifest: counts and bytes."""
    files = manifest.get("files", {})
    return {"files": len(files), "folders": len(manifest.get("folders", {})),
            "bytes": sum(f.get("size") or 0 for f in files.values())}
