"""HDF5 cache files: one file per block output / analyzer result, with a content digest.

Layout (``docs/dataplane.md`` has the full specification):

* root attributes: ``backbeat`` (``"cache/1"``), ``dataformat``, ``declaration`` (canonical JSON of the
  expanded dataformat), ``key`` (producing block's cache key), ``start``/``end`` (declared data-index
  range, ``end = -1`` when open-ended), ``units``, ``digest``, ``digest_algorithm``;
* ``index/start``, ``index/end``: int64, the inclusive data-index range of every unit;
* ``columns/<name>``: one chunked dataset per column of :func:`backbeat.batch.layout`; offsets columns
  are global (first 0, ``units + 1`` / ``elements + 1`` entries).

The digest is computed over the data, not the file bytes: sha256 per array (raw little-endian C-order
bytes), combined with names, dtypes and shapes in a fixed order (see :func:`_final_digest`).

:class:`CacheWriter` writes to ``<path>.tmp-<pid>-<random>``, buffers per-unit writes into batches,
and on :meth:`~CacheWriter.close` checks that every data unit up to ``end`` is present, stores the
digest, fsyncs, renames into place and fsyncs the directory: a file at ``path`` is always complete
(the temporaries of a killed writer are removed by the cache store, :mod:`backbeat.cache.store`).
:class:`CacheReader` verifies the digest on open (unless ``verify=False``) and reads by unit range,
data-index range, chunk or data index, never holding more than one chunk of columns in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import h5py
import numpy as np

from backbeat.core import jsonio
from backbeat.core.errors import DataError, IntegrityError
from backbeat.data.batch import I64, Batch, layout, take, tree
from backbeat.data.values import BaseValue, as_value, canonical, value_type

FORMAT_TAG = "cache/1"
DIGEST_ALGORITHM = "sha256-columns/1"
DEFAULT_COMPRESSION: str | None = None  # "lzf" and "gzip" are available; random floats do not compress
CHUNK_BYTES = 1 << 20
SMALL_CHUNK_BYTES = 16 << 10
CHUNK_CACHE = 4 << 20  # per dataset: a partly written chunk stays cached until the next batch fills it
READ_BYTES = 8 << 20


def _row_bytes(col: Any) -> int:
    """Bytes per row of a layout column."""
    return max(1, int(np.prod(col.shape, dtype=np.int64)) * col.dtype.itemsize)


def _arrays(fmt_name: str, expanded: dict) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """Every array of a file in digest order: index arrays then columns sorted by name."""
    out: list[tuple[str, np.dtype, tuple[int, ...]]] = [("index/start", I64, ()), ("index/end", I64, ())]
    out += [("columns/" + c.name, c.dtype, c.shape) for c in layout(expanded, fmt_name)]
    return out


def _final_digest(fmt_name: str, canon: str, start: int, end: int,
                  parts: list[tuple[str, np.dtype, tuple[int, ...], str]]) -> str:
    """sha256 of the header lines + one line per array ``name dtype shape sha256(bytes)``."""
    lines = [f"backbeat-digest/1\ndataformat {fmt_name}\ndeclaration {canon}\nrange {start} {end}\n"]
    for name, dtype, shape, h in parts:
        lines.append(f"{name} {dtype.str} {'x'.join(map(str, shape))} {h}\n")
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


class _Done:
    """A finished job (small buffers are hashed inline: a thread hop costs more than it saves)."""

    def result(self) -> None:
        return None


_DONE = _Done()


class _Hasher:
    """Hash large buffers in one helper thread (hashlib releases the GIL) while HDF5 reads or writes.

    The thread exists only while a writer/verification is running (:meth:`close` ends it): a lingering
    thread would, e.g., stop the worker pool from forking its zygote safely.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def update(self, h: Any, arr: np.ndarray) -> Any:
        """``h.update(bytes of arr)``, in the thread for large buffers; returns a job (``.result()``)."""
        mv = memoryview(cast(Any, np.ascontiguousarray(arr).reshape(-1).view(np.uint8)))
        if mv.nbytes < (256 << 10):
            h.update(mv)
            return _DONE
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backbeat-hash")
        return self._pool.submit(h.update, mv)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CacheWriter:
    """Write one cache file (see module docstring); use as a context manager or call close()/abort()."""

    def __init__(self, path: str | os.PathLike, fmt_name: str, expanded: dict, *, key: str = "",
                 start: int = 0, end: int | None = None, compression: str | None = DEFAULT_COMPRESSION,
                 buffer_units: int | None = None) -> None:
        self.path = os.fspath(path)
        self.name, self.expanded, self.key = fmt_name, expanded, key
        self.start, self.end = int(start), (None if end is None else int(end))
        if self.start < 0 or (self.end is not None and self.end < self.start):
            raise DataError(f"invalid data-index range [{start}, {end}] for `{self.path}'")
        self.type = value_type(fmt_name, expanded)
        self._tree = tree(fmt_name, expanded)
        self._canon = canonical(expanded)
        self._next = self.start  # the first index after the units flushed to the file
        self._limit = self.end if self.end is not None else 2**63 - 1
        self._units = 0
        self._values: list[BaseValue] = []
        self._ends: list[int] = []
        self._closed = False
        self.on_batch: Callable[[Batch], None] | None = None  # told of each batch once it is in the file
        cols = layout(expanded, fmt_name)
        fixed = sum(_row_bytes(c) for c in cols if c.rows == "") + 16
        units = int(min(65536, max(256, (4 << 20) // fixed)))
        self.buffer_units = buffer_units or 1 << (units.bit_length() - 1)
        self.tmp = f"{self.path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._h5 = h5py.File(self.tmp, "w", libver="latest", rdcc_nbytes=CHUNK_CACHE, rdcc_w0=1.0)
        except OSError as exc:
            self._closed = True
            raise DataError(f"cannot create cache file `{self.path}': {exc}") from None
        self._ds: dict[str, Any] = {}
        self._hash: dict[str, Any] = {}
        self._hasher = _Hasher()
        self._kw: dict[str, Any] = {"compression": compression, "shuffle": True} if compression else {}
        self._specs = {name: (dtype, shape) for name, dtype, shape in _arrays(fmt_name, expanded)}
        a = self._h5.attrs
        a["backbeat"] = FORMAT_TAG
        a["dataformat"] = fmt_name
        a["declaration"] = self._canon
        a["key"] = key
        a["start"] = self.start
        a["end"] = -1 if self.end is None else self.end

    # writing ---------------------------------------------------------------------------------------
    @property
    def next_index(self) -> int:
        """The first data index not yet written."""
        return self._ends[-1] + 1 if self._ends else self._next

    @property
    def limit(self) -> int:
        """The last data index a unit may end at."""
        return self._limit

    def buffer(self) -> tuple[list, list, int, Callable[[], None]]:
        """``(values, ends, threshold, flush)``: the units waiting to be written, for a fast producer.

        A producer that guarantees what :meth:`put` checks — each unit starts right after
        the previous one (at :attr:`next_index` for the first) and ends within the output's
        range, values of :attr:`type` — may append to ``values`` and ``ends`` itself and
        call ``flush()`` once ``threshold`` units wait.  BEAT's ``Output`` does so, saving
        a call per unit.  Nothing may be appended once the writer is closed or aborted.
        """
        return self._values, self._ends, self.buffer_units, self.flush

    def write(self, data: Any, end_data_index: int | None = None) -> None:
        """Append one data unit covering ``[next_index, end_data_index]`` (default: one index)."""
        nxt = self.next_index
        self.put(data, nxt, nxt if end_data_index is None else int(end_data_index))

    def put(self, data: Any, start: int, end: int) -> None:
        """Append one data unit ``[start, end]``; ``start`` must be :attr:`next_index`.

        This is also the sink protocol of BEAT outputs (``write(value, start, end)``).
        """
        nxt = self._ends[-1] + 1 if self._ends else self._next
        if start != nxt or end < start or end > self._limit or self._closed:
            if self._closed:
                raise DataError(f"cache writer for `{self.path}' is closed")
            if start != nxt:
                raise DataError(f"cannot write a data unit starting at {start} to `{self.path}': "
                                f"the next one must start at {nxt}")
            raise DataError(
                f"cannot write data unit ending at {end} to `{self.path}': it must be within "
                f"[{nxt}, {self.end if self.end is not None else 'inf'}]"
            )
        if type(data) is not self.type:
            data = as_value(self.type, data)
        values = self._values
        values.append(data)
        self._ends.append(end)
        if len(values) >= self.buffer_units:
            self.flush()

    def write_batch(self, batch: Batch) -> None:
        """Append a whole batch; its first unit must start at :attr:`next_index`."""
        if self._closed:
            raise DataError(f"cache writer for `{self.path}' is closed")
        if batch.name != self.name or canonical(batch.expanded) != self._canon:
            raise DataError(f"batch of `{batch.name}' written to a cache file of `{self.name}'")
        self.flush()
        if not len(batch):
            return
        if int(batch.starts[0]) != self._next:
            raise DataError(f"batch starts at data index {batch.starts[0]}, expected {self._next}")
        last = int(batch.ends[-1])
        if self.end is not None and last > self.end:
            raise DataError(f"batch ends at data index {last}, beyond the output's end {self.end}")
        self._append(batch)
        self._next = last + 1

    def flush(self) -> None:
        """Write buffered per-unit values to the file as one batch."""
        if not self._values:
            return
        ends = np.array(self._ends, dtype=I64)
        starts = np.empty_like(ends)
        starts[0] = self._next
        starts[1:] = ends[:-1] + 1
        batch = Batch.from_values(self.name, self.expanded, self._values, starts, ends)
        self._values.clear()  # in place: a producer may hold these lists (see buffer())
        self._ends.clear()
        self._append(batch)
        self._next = int(ends[-1]) + 1

    def _append(self, batch: Batch) -> None:
        """Append every array of ``batch``; large arrays are hashed in a thread while HDF5 writes."""
        items = [("index/start", batch.starts), ("index/end", batch.ends)]
        items += [("columns/" + name, arr) for name, arr in batch.columns.items()]
        jobs = []
        try:
            prepared = [(self._dataset(name, arr.shape[0]), name, self._rebased(name, arr)) for name, arr in items]
            for _, name, arr in prepared:
                if arr.shape[0]:
                    jobs.append(self._hasher.update(self._hash[name], arr))
            for ds, _, arr in prepared:
                n = arr.shape[0]
                if n:
                    old = ds.shape[0]
                    ds.resize(old + n, axis=0)
                    ds[old:old + n] = arr
        except (OSError, ValueError) as exc:
            for job in jobs:
                job.result()
            self.abort()
            raise DataError(f"cannot write cache file `{self.path}': {exc}") from None
        for job in jobs:
            job.result()
        self._units += len(batch)
        if self.on_batch is not None:
            self.on_batch(batch)

    def _rebased(self, name: str, arr: np.ndarray) -> np.ndarray:
        if name.endswith("#offsets"):
            ds = self._ds[name]
            base = int(ds[ds.shape[0] - 1])
            arr = arr[1:] + base if base else arr[1:]
        return np.ascontiguousarray(arr, dtype=self._specs[name][0])

    def _dataset(self, name: str, rows_hint: int) -> Any:
        """Create ``name`` on first use; chunks of ``rows_hint`` rows within [16 KiB, 1 MiB]."""
        ds = self._ds.get(name)
        if ds is not None:
            return ds
        dtype, shape = self._specs[name]
        row = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        rows = max(1, min(CHUNK_BYTES // row, max(rows_hint, SMALL_CHUNK_BYTES // row)))
        rows = 1 << (rows.bit_length() - 1)  # a power of two, so power-of-two batches fill whole chunks
        initial = 1 if name.endswith("#offsets") else 0
        ds = self._h5.create_dataset(name, shape=(initial, *shape), maxshape=(None, *shape),
                                     dtype=dtype, chunks=(rows, *shape), **self._kw)
        self._ds[name] = ds
        self._hash[name] = hashlib.sha256()
        if initial:
            ds[0] = 0
            self._hash[name].update(np.zeros(1, dtype=I64).tobytes())
        return ds

    # finishing -------------------------------------------------------------------------------------
    def close(self) -> str:
        """Commit the file; return its digest.  Missing data units → IntegrityError, nothing left."""
        if self._closed:
            raise DataError(f"cache writer for `{self.path}' is already closed")
        self.flush()
        last = self._next - 1
        if self._units == 0 or (self.end is not None and last < self.end):
            self.abort()
            raise IntegrityError(
                f"not enough data written to `{self.path}': last data index written is {last}, "
                f"expected {self.end if self.end is not None else 'at least one unit'}"
            )
        self._hasher.close()
        parts = [(name, dtype, (self._dataset(name, 1).shape[0], *shape), self._hash[name].hexdigest())
                 for name, dtype, shape in _arrays(self.name, self.expanded)]
        end = self.end if self.end is not None else last
        digest = _final_digest(self.name, self._canon, self.start, end, parts)
        a = self._h5.attrs
        a["end"] = end
        a["units"] = self._units
        a["digest_algorithm"] = DIGEST_ALGORITHM
        a["digest"] = digest
        self._h5.close()
        self._closed = True
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path)
        return digest

    def abort(self) -> None:
        """Drop everything written; the final path is never touched."""
        self._closed = True
        self._hasher.close()
        with contextlib.suppress(Exception):
            self._h5.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._closed:
            return
        if exc_type is not None:
            self.abort()
        else:
            self.close()


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
            if a.get("backbeat") != FORMAT_TAG:
                raise IntegrityError(f"`{self.path}' is not a backbeat cache file ({FORMAT_TAG})")
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
            for name, dtype, shape in _arrays(self.dataformat, self.expanded):
                ds = self._h5.get(name)
                if not isinstance(ds, h5py.Dataset) or ds.dtype != dtype or ds.shape[1:] != shape:
                    raise IntegrityError(f"cache file `{self.path}': dataset `{name}' missing or malformed")
                self._ds[name] = ds
            self.starts = self._ds["index/start"][:]
            self.ends = self._ds["index/end"][:]
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise IntegrityError(f"cache file `{self.path}' is corrupted: {exc}") from None
        if self.expected_key is not None and self.key != self.expected_key:
            raise IntegrityError(identity_message(self.path, self.key, self.expected_key))
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
        hasher = _Hasher()
        try:
            for name, dtype, shape in _arrays(self.dataformat, self.expanded):
                ds = self._ds[name]
                h = hashlib.sha256()
                rows = max(1, READ_BYTES // max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize))
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
        return _final_digest(self.dataformat, self._canon, self.start, self.end, parts)

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
        return Batch(self.dataformat, self.expanded, self.starts[i:j], self.ends[i:j], cols)

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
        fixed = 16 + sum(_row_bytes(c) for c in layout(self.expanded, self.dataformat) if c.rows == "")
        return int(max(1, min(1 << 20, READ_BYTES // fixed)))

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


def identity_message(path: str, stored: str, expected: str) -> str:
    return (f"cache file `{path}' holds the output of key {stored[:12] or '(none)'}…, not of key {expected[:12]}… "
            f"it was looked up by (copied or moved from another entry)")


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
            if a.get("backbeat") != FORMAT_TAG or "digest" not in a:
                raise IntegrityError(f"`{path}' is not a complete backbeat cache file ({FORMAT_TAG})")
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
