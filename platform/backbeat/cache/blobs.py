"""Content-addressed areas of the cache: files named by the sha256 of their bytes.

Two areas of a :class:`~backbeat.cache.store.CacheStore` are content-addressed:

* ``<cache>/code/xx/<rest of the sha256>`` — **code snapshots**: the exact bytes of every
  algorithm, library, database view and plotter whose hash entered a run's keys, written
  once at planning; block processes, database providers and remote workers load these
  bytes, never the prefix file again (:mod:`backbeat.runtime.codeloader`);
* ``<cache>/manifests/xx/<rest>.json`` — **data manifests**: which data files a database
  view opened and their sha256 (:mod:`backbeat.provenance.manifests`), referenced from
  view indexes and run records by digest.

A blob is written atomically (temporary file, rename) and only once; every read checks
the bytes against the name (:class:`~backbeat.core.errors.IntegrityError` otherwise).  Both
formats are plain files, readable without backbeat: the digest is ``sha256sum`` of the file.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from backbeat.core import durable
from backbeat.core.errors import IntegrityError

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class Blobs:
    """One content-addressed folder (``suffix``: the file extension of its blobs)."""

    def __init__(self, folder: Path, suffix: str = "") -> None:
        self.folder = folder
        self.suffix = suffix

    def path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise IntegrityError(f"`{digest}' is not a sha256 digest")
        return self.folder / digest[:2] / (digest[2:] + self.suffix)

    def put(self, data: bytes) -> str:
        """Store ``data`` (if not there already, intact); return its digest."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.path(digest)
        try:
            if path.stat().st_size == len(data) and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
                return digest
        except OSError:
            pass
        durable.write_atomic(path, data, mkdir=True)
        return digest

    def get(self, digest: str) -> bytes:
        """The bytes named ``digest``; IntegrityError if absent or not matching their name."""
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise IntegrityError(f"`{path}' cannot be read: {exc.strerror or exc}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"`{path}' does not hold the bytes it is named after (sha256 {digest[:12]}…): "
                                 f"it was modified; remove it and run again")
        return data

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def digests(self) -> list[str]:
        """Every digest stored (for collection of unreferenced blobs)."""
        if not self.folder.is_dir():
            return []
        out = []
        for sub in sorted(self.folder.iterdir()):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for f in sorted(sub.iterdir()):
                name = f.name[: len(f.name) - len(self.suffix)] if self.suffix else f.name
                if (not self.suffix or f.name.endswith(self.suffix)) and _DIGEST.match(sub.name + name):
                    out.append(sub.name + name)
        return out
