"""The content digest of a cache file's units as they are appended: :class:`ContentDigest`.

A :class:`~backbeat.data.cachewriter.CacheWriter` stores it in the file it writes; the consumer
of a streamed output computes it from the batches it received, to check that the file its
producer committed holds what it consumed (:mod:`backbeat.runtime.streams`).  Both hash the
arrays as they are stored (:meth:`ContentDigest.arrays`: declared dtypes, C order, variable-length
offsets made global), so the digest does not depend on how the units were batched.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from backbeat.data import cachefile
from backbeat.data.batch import I64, Batch
from backbeat.data.values import canonical


class ContentDigest:
    """Hashes, row counts and offsets of the arrays of one output, batch after batch."""

    def __init__(self, fmt_name: str, expanded: dict, canon: str | None = None) -> None:
        self.name = fmt_name
        self.canon = canonical(expanded) if canon is None else canon
        self.specs = {name: (dtype, shape) for name, dtype, shape in cachefile.arrays(fmt_name, expanded)}
        self.names = list(self.specs)  # digest order
        self.rows = dict.fromkeys(self.names, 0)  # rows appended so far (offsets: plus their leading 0)
        self._last = dict.fromkeys(self.names, 0)  # offsets columns: the last offset appended
        self.hashes = {name: hashlib.sha256() for name in self.names}
        for name in self.names:
            if name.endswith("#offsets"):  # global offsets start with a 0
                self.rows[name] = 1
                self.hashes[name].update(np.zeros(1, dtype=I64).tobytes())

    def arrays(self, batch: Batch) -> list[np.ndarray]:
        """The arrays of ``batch`` as stored, in digest order."""
        arrays = [self.rebased("index/start", batch.starts), self.rebased("index/end", batch.ends)]
        arrays += [self.rebased(name, batch.columns[name[len("columns/"):]]) for name in self.names[2:]]
        return arrays

    def rebased(self, name: str, arr: np.ndarray) -> np.ndarray:
        """``arr`` as stored: the declared dtype, C order; offsets made global (without their 0)."""
        if name.endswith("#offsets"):
            base = self._last[name]
            arr = arr[1:] + base if base else arr[1:]
            if arr.shape[0]:
                self._last[name] = int(arr[-1])
        return np.ascontiguousarray(arr, dtype=self.specs[name][0])

    def update(self, arrays: list[np.ndarray], hasher: cachefile.Hasher | None = None) -> list[Any]:
        """Hash ``arrays`` (from :meth:`arrays`); the hashing jobs (``.result()``) when ``hasher``
        hashes large ones in its thread, else none (hashed inline)."""
        jobs = []
        for name, arr in zip(self.names, arrays, strict=True):
            if arr.shape[0]:
                if hasher is None:
                    self.hashes[name].update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
                else:
                    jobs.append(hasher.update(self.hashes[name], arr))
                self.rows[name] += arr.shape[0]
        return jobs

    def add(self, batch: Batch) -> None:
        """Hash the arrays of ``batch`` (inline)."""
        self.update(self.arrays(batch))

    def digest(self, start: int, end: int) -> str:
        """The digest of what was hashed, for a file of data indices ``[start, end]``."""
        parts = [(name, dtype, (self.rows[name], *shape), self.hashes[name].hexdigest())
                 for name, (dtype, shape) in self.specs.items()]
        return cachefile.final_digest(self.name, self.canon, start, end, parts)
