"""Reading an HDF5 cache file (:mod:`backbeat.data.cachefile`): :class:`CacheReader`.

The reader checks the file's identity (the key it was looked up by) and, unless told not to,
its content digest on open, then reads by unit range, data-index range, chunk or data index,
never holding more than one block of columns in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np

from backbeat.core import jsonio
from backbeat.core.errors import IntegrityError
from backbeat.data import cachefile
from backbeat.data.batch import Batch, row_bytes, take, tree, units_within
from backbeat.data.values import BaseValue, value_type


class CacheReader:
    """Read a committed cache file; ``verify=False`` skips the digest check (:attr:`verified` says so).

    ``key``: the key the file was looked up by; a file holding another key's output (copied or
    moved there) is refused (:class:`~backbeat.core.errors.IntegrityError`), verified or not.
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True, key: str | None = None) -> None:
        self.path = os.fspath(path)
        self.expected_key = key
        try:
            self._h5 = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise IntegrityError(f"cache file `{self.path}' does not exist") from None
        except OSError as exc:
            raise IntegrityError(f"cache file `{self.path}' cannot be opened (corrupted?): {exc}") from None
        try:
            self._open(verify)
        except BaseException:
            self._h5.close()
            raise

    def _open(self, verify: bool) -> None:
        try:
            a = self._h5.attrs
            if a.get("backbeat") != cachefile.FORMAT_TAG:
                raise IntegrityError(f"`{self.path}' is not a backbeat cache file ({cachefile.FORMAT_TAG})")
            if "digest" not in a:
                raise IntegrityError(f"cache file `{self.path}' is incomplete (no digest)")
            self.dataformat = str(a["dataformat"])
            self._canon = str(a["declaration"])
            self.expanded = json.loads(self._canon)
            self.key = str(a["key"])
            self.start, self.end = int(a["start"]), int(a["end"])
            self.digest = str(a["digest"])
            self.units = int(a["units"])
            self._ds = {}
            for name, dtype, shape in cachefile.arrays(self.dataformat, self.expanded):
                ds = self._h5.get(name)
                if not isinstance(ds, h5py.Dataset) or ds.dtype != dtype or ds.shape[1:] != shape:
                    raise IntegrityError(f"cache file `{self.path}': dataset `{name}' missing or malformed")
                self._ds[name] = ds
            self.starts = self._ds["index/start"][:]
            self.ends = self._ds["index/end"][:]
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise IntegrityError(f"cache file `{self.path}' is corrupted: {exc}") from None
        if self.expected_key is not None and self.key != self.expected_key:
            raise IntegrityError(cachefile.identity_message(self.path, self.key, self.expected_key))
        if self.starts.shape != (self.units,) or self.ends.shape != (self.units,):
            raise IntegrityError(f"cache file `{self.path}': index does not hold {self.units} units")
        self.type = value_type(self.dataformat, self.expanded)
        self._tree = tree(self.dataformat, self.expanded)
        self.verified = False
        if verify:
            actual = self.compute_digest()
            if actual != self.digest:
                raise IntegrityError(
                    f"cache file `{self.path}' has a content digest ({actual}) that differs from the "
                    f"recorded one ({self.digest})"
                )
            self.verified = True

    def compute_digest(self) -> str:
        """Recompute the content digest from the data (reads every dataset in bounded blocks)."""
        parts = []
        hasher = cachefile.Hasher()
        try:
            for name, dtype, shape in cachefile.arrays(self.dataformat, self.expanded):
                ds = self._ds[name]
                h = hashlib.sha256()
                rows = max(1, cachefile.READ_BYTES // row_bytes(dtype, shape))
                n = ds.shape[0]
                bufs = [np.empty((min(rows, n), *shape), dtype=dtype) for _ in range(2 if n > rows else 1)]
                pending = None
                for k, a in enumerate(range(0, n, rows)):  # read block k while block k-1 is hashed
                    b = min(n, a + rows)
                    out = bufs[k % len(bufs)][: b - a]
                    ds.read_direct(out, np.s_[a:b], np.s_[0:b - a])
                    if pending is not None:
                        pending.result()
                    pending = hasher.update(h, out)
                if pending is not None:
                    pending.result()
                parts.append((name, dtype, ds.shape, h.hexdigest()))
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"cache file `{self.path}' cannot be read (corrupted?): {exc}") from None
        finally:
            hasher.close()
        return cachefile.final_digest(self.dataformat, self._canon, self.start, self.end, parts)

    # reading ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.units

    def read_units(self, i: int, j: int) -> Batch:
        """Units ``i .. j-1`` as a batch (structure validated)."""
        i, j = max(0, min(i, self.units)), max(0, min(j, self.units))
        j = max(i, j)
        cols: dict = {}
        try:
            take(self._tree, lambda name: self._ds["columns/" + name], i, j, cols)
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"cache file `{self.path}' cannot be read (corrupted?): {exc}") from None
        batch = Batch(self.dataformat, self.expanded, self.starts[i:j], self.ends[i:j], cols)
        batch.private = True  # (arrays read afresh from the file: its values view them, no copy)
        return batch

    def read(self, i: int) -> BaseValue:
        """The value of unit ``i``."""
        if not -self.units <= i < self.units:
            raise IndexError(f"unit {i} out of range ({self.units} units in `{self.path}')")
        i %= self.units
        return self.read_units(i, i + 1).to_values()[0]

    def __getitem__(self, i: int) -> tuple[BaseValue, int, int]:
        """BEAT's ``ds[i]``: ``(value, start, end)``."""
        value = self.read(i)
        i %= self.units
        return value, int(self.starts[i]), int(self.ends[i])

    def read_range(self, start_index: int, end_index: int) -> Batch:
        """The units lying entirely within the inclusive data-index range ``[start_index, end_index]``."""
        i = int(np.searchsorted(self.starts, start_index, side="left"))
        j = int(np.searchsorted(self.ends, end_index, side="right"))
        return self.read_units(i, max(i, j))

    def unit_at(self, k: int) -> int:
        """Index of the unit covering data index ``k`` (binary search); IndexError if none."""
        i = int(np.searchsorted(self.starts, k, side="right")) - 1
        if i < 0 or k > self.ends[i]:
            raise IndexError(f"data index {k} is not covered by `{self.path}'")
        return i

    def at_data_index(self, k: int) -> tuple[BaseValue, int, int]:
        """BEAT's ``getAtDataIndex``: ``(value, start, end)`` of the unit covering ``k``."""
        return self[self.unit_at(k)]

    def chunk_units(self) -> int:
        """A unit count whose unit-level columns take about 8 MiB."""
        return units_within(self.expanded, self.dataformat, 1 << 20, cachefile.READ_BYTES)

    def iter_batches(self, chunk_units: int | None = None, start: int = 0,
                     stop: int | None = None) -> Iterator[Batch]:
        """Batches of at most ``chunk_units`` units over units ``[start, stop)``."""
        step = chunk_units or self.chunk_units()
        stop = self.units if stop is None else min(stop, self.units)
        for a in range(start, stop, step):
            yield self.read_units(a, min(stop, a + step))

    def __iter__(self) -> Iterator[tuple[BaseValue, int, int]]:
        """Every unit as ``(value, start, end)``, reading chunk by chunk."""
        for batch in self.iter_batches():
            yield from zip(batch.to_values(), batch.starts.tolist(), batch.ends.tolist(), strict=False)

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def verify(path: str | os.PathLike, key: str | None = None) -> str:
    """Open with verification (and the identity check when ``key`` is given); the digest, or IntegrityError."""
    with CacheReader(path, verify=True, key=key) as r:
        return r.digest


def digest_of(path: str | os.PathLike) -> str:
    """The content digest recomputed from the data of ``path`` (not the recorded attribute)."""
    with CacheReader(path, verify=False) as r:
        return r.compute_digest()


def stored_digest(path: str | os.PathLike) -> str:
    """The digest recorded in the file (no verification; only its attributes are read)."""
    return stored_identity(path)[1]


def stored_identity(path: str | os.PathLike) -> tuple[str, str]:
    """``(key, digest)`` recorded in the file's attributes (not verified against the data)."""
    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            if a.get("backbeat") != cachefile.FORMAT_TAG or "digest" not in a:
                raise IntegrityError(f"`{path}' is not a complete backbeat cache file ({cachefile.FORMAT_TAG})")
            return str(a.get("key", "")), str(a["digest"])
    except FileNotFoundError:
        raise IntegrityError(f"cache file `{path}' does not exist") from None
    except OSError as exc:
        raise IntegrityError(f"cache file `{path}' cannot be opened (corrupted?): {exc}") from None


def records(reader: CacheReader) -> list[dict]:
    """Every unit of an open cache file as JSON-able records ``[{"start", "end", "data"}, …]``
    (how analyzer results are reported and kept in their summaries)."""
    batch = reader.read_units(0, len(reader))
    return [{"start": int(s), "end": int(e), "data": jsonio.plain(v.as_dict())}
            for v, s, e in zip(batch.to_values(), batch.starts, batch.ends, strict=True)]
