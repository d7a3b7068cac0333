"""Manifests of the data files a run read: ``{relative path: {size, mtime_ns, sha256}}``.

For each database, the files under its **root folder** are manifested (or, when that folder
does not exist, the data shipped next to the view code: the database's folder in the prefix,
without its asset files).  These files do not enter cache keys (BEAT's view index may not
change when they do), so ``status`` and ``audit`` compare manifests instead.

State: :class:`StatCache` (``stat-cache.json`` in the store's records folder) remembers the
sha256 of each manifested file by (size, mtime_ns, inode), so unchanged files are not
re-hashed; an entry whose mtime is within :data:`RACY_NS` of the moment it was hashed is not
trusted (a same-size rewrite in the same clock tick would otherwise go unseen).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from backbeat.cache.store import CacheStore
from backbeat.core import hashing, jsonio
from backbeat.declarations.catalog import Catalog

RACY_NS = 2_000_000_000
_VERSION_FILE = re.compile(r"^\d+\.(json|py|rst)$")


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

    def digest(self, path: Path, st: os.stat_result, compute: Callable[[Path], str] | None = None,
               tag: str = "") -> str:
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

    def settled(self, path: Path, st: os.stat_result, digest: str, tag: str = "") -> str:
        """Remember ``digest`` for a file whose content was final when it appeared at ``path``
        (a cache entry, renamed into place by the writer that computed it, never written in
        place): no later write can share its modification time, so the entry is not racy."""
        self.entries[tag + str(path)] = [st.st_size, st.st_mtime_ns, st.st_ino, digest,
                                         max(time.time_ns(), st.st_mtime_ns + RACY_NS + 1)]
        self.dirty = True
        return digest

    @classmethod
    def of(cls, store: CacheStore) -> StatCache:
        """The stat cache kept in a cache store."""
        return cls(store.records_folder / "stat-cache.json")

    def save(self) -> None:
        if self.path is not None and self.dirty:
            with contextlib.suppress(OSError):
                from backbeat.provenance.records import atomic_write

                atomic_write(self.path, jsonio.dumps(self.entries))
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


def database_folder(catalog: Catalog, database: str, root_folder: str) -> tuple[Path, str]:
    """The folder whose files are manifested for a database, and which one it is."""
    root = Path(os.path.expanduser(root_folder)) if root_folder else None
    if root is not None and root.is_dir():
        return root, "root_folder"
    return catalog.prefix.locate("database", database).json.parent, "code_folder"


def database_manifest(catalog: Catalog, database: str, root_folder: str,
                      stat_cache: StatCache | None = None) -> dict:
    where, source = database_folder(catalog, database, root_folder)
    shown = relative(where, catalog.prefix.root) if source == "code_folder" else str(where)
    return {"root_folder": root_folder, "folder": shown, "source": source,
            "files": manifest(where, stat_cache, code_folder=source == "code_folder")}



def relative(path: Path | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


