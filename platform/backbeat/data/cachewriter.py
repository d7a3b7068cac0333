"""Writing an HDF5 cache file (:mod:`backbeat.data.cachefile`): :class:`CacheWriter`.

The writer fills ``<path>.tmp-<pid>-<random>``, buffers per-unit writes into batches of about
:data:`BUFFER_BYTES`, and on :meth:`~CacheWriter.close` checks that every data unit up to
``end`` is present, stores the digest, marks the file unsynced and renames it into place: a
file at ``path`` is always complete (the temporaries of a killed writer are removed by the
cache store, :mod:`backbeat.cache.store`), and durable once its mark is cleared
(:mod:`backbeat.core.durable`: "verified before trusted").  Files are sized to their data: an output up to
:data:`SMALL_BYTES` waits in memory and is written with its exact shapes (compact up to
:data:`COMPACT_BYTES` per array, else contiguous); larger ones are chunked, with chunk rows
from the dataformat, and written a whole chunk at a time from the batches' own memory
(:mod:`backbeat.data.chunkwriter`) unless compressed; compression (``gzip``, ``gzip:N``, ``lzf``) is optional.

A block process writes one small file and ends: the HDF5 file is created only once an output stops
being small, and a small one is written at :meth:`~CacheWriter.close` either from the cache's
template of its structure (:mod:`backbeat.data.h5image`: the same bytes, no call into HDF5, one
``os.write``) or through h5py's low-level API (``h5f``, ``h5a``, ``h5d``:
:func:`backbeat.data.h5objects.write_small`), which costs a fresh forked process about half the CPU
of ``h5py.File``/``attrs``/``require_group``; the high-level :class:`h5py.File` is made only for
chunked outputs.  The attributes are written once, at :meth:`~CacheWriter.close`, and kept in the
root group's object header (compact storage).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any

import h5py
import numpy as np

from backbeat.core import durable
from backbeat.core.errors import DataError, IntegrityError
from backbeat.data import cachefile, h5image, h5objects
from backbeat.data.batch import Batch, layout, row_bytes, tree, units_within
from backbeat.data.chunkwriter import ChunkAppender
from backbeat.data.compiled import int64s
from backbeat.data.contentdigest import ContentDigest
from backbeat.data.snapshot import UnitBuffer
from backbeat.data.values import canonical, value_type

DEFAULT_COMPRESSION: str | None = None  # "lzf" and "gzip" are available; random floats do not compress
CHUNK_BYTES = 1 << 20
SMALL_CHUNK_BYTES = 16 << 10
SMALL_BYTES = 2 << 20  # an output up to this size waits in memory and is written with its exact shapes
COMPACT_BYTES = h5objects.COMPACT_BYTES
COMPRESSIONS = ("gzip", "lzf")  # h5py's own filters (every h5py reads them); "gzip:N" sets the level
BUFFER_BYTES = 2 << 20  # units buffered by a writer before they are written as one batch
#: a chunked output's batches are written to HDF5 in runs of about this many bytes: a streamed
#: output's batches are small (runtime.streams: consumers stay in step), and every write costs a
#: resize and a selection per dataset (~0.2 ms: with batches of 4,096 scalars, 0.1 µs a unit)
COALESCE_BYTES = 1 << 20
#: a large output starts its writeback every this many bytes written (core.durable.start_writeback),
#: unless its writer is told not to (``writeback=False``: a block of a command that answers before
#: its outputs are synced, ``docs/execution.md`` §3b — writes queued on the disk would be in the way
#: of the few small synced writes before its answer)
WRITEBACK_BYTES = 8 << 20
def compression_options(compression: str | None) -> dict[str, Any]:
    """h5py's dataset options for ``compression`` (None or "none": none; "gzip", "gzip:1".."gzip:9",
    "lzf"), with the shuffle filter; DataError for anything else."""
    if not compression or compression == "none":
        return {}
    name, _, level = compression.partition(":")
    if name not in COMPRESSIONS or (level and (name != "gzip" or level not in "0123456789" or len(level) != 1)):
        raise DataError(f"unknown cache compression `{compression}' (known: none, gzip, gzip:0 .. gzip:9, lzf)")
    return {"compression": name, "shuffle": True, **({"compression_opts": int(level)} if level else {})}


class CacheWriter:
    """Write one cache file (see module docstring); use as a context manager or call close()/abort()."""

    def __init__(self, path: str | os.PathLike, fmt_name: str, expanded: dict, *, key: str = "",
                 start: int = 0, end: int | None = None, compression: str | None = DEFAULT_COMPRESSION,
                 buffer_units: int | None = None, images: str | None = None, writeback: bool = True) -> None:
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
        self._ends: list[int] = []
        self._closed = False
        self.on_batch: Callable[[Batch], None] | None = None  # told of each batch once it is appended
        units = units_within(expanded, fmt_name, 65536, BUFFER_BYTES)
        self.buffer_units = buffer_units or 1 << (units.bit_length() - 1)
        #: the buffer doubles after each flush up to this many units (see :meth:`grow`)
        self.grow_to = self.buffer_units
        #: the units written since the last batch, as they were when written (data.snapshot)
        self._units_buffer = UnitBuffer(fmt_name, expanded, self.buffer_units)
        self.tmp = durable.temporary_name(self.path)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            # (the temporary exists, empty, while the output is written: what the store sweeps and a
            # watcher sees; HDF5 or the template replaces it at close, or once the output stops being
            # small — created anew, never truncated: see _fresh_tmp)
            os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
        except OSError as exc:
            self._closed = True
            raise DataError(f"cannot create cache file `{self.path}': {exc}") from None
        #: the HDF5 file, made once the output stops being small (a small one is written at close())
        self._fid: Any = None
        #: the cache's folder of small files' templates (data.h5image), if any
        self.images = images
        self._file: h5py.File | None = None  # the high-level file, once needed (chunked outputs)
        self._ds: dict[str, Any] | None = None  # the datasets, once created (chunked, extendable)
        self._direct: dict[str, ChunkAppender] = {}  # their appenders, when unfiltered (chunkwriter)
        self._fd: int | None = None  # a descriptor of the temporary, to start its writeback
        self._unsynced = 0  # bytes written since the writeback was last started
        self._writeback_bytes = WRITEBACK_BYTES if writeback else 1 << 62  # (never: left to the syncer)
        self._pending: list[list[np.ndarray]] = []  # arrays appended before (small outputs: until close)
        self._pending_bytes = 0
        self._queued: list[list[np.ndarray]] = []  # chunked outputs: arrays not written yet (COALESCE_BYTES)
        self._queued_bytes = 0
        self._hasher = cachefile.Hasher()
        self._kw: dict[str, Any] = compression_options(compression)
        self._content = ContentDigest(fmt_name, expanded, self._canon)
        self._specs = self._content.specs
        self._names = self._content.names  # digest order
        self._rebased = self._content.rebased
        self._digest: str | None = None  # once sealed (see seal())
        self._sealed = False  # nothing may be appended once sealed (put, write_batch, flush refuse it)

    # writing ---------------------------------------------------------------------------------------
    @property
    def next_index(self) -> int:
        """The first data index not yet written."""
        return self._ends[-1] + 1 if self._ends else self._next

    @property
    def limit(self) -> int:
        """The last data index a unit may end at."""
        return self._limit

    def grow(self, first: int, most: int) -> None:
        """Flush after ``first`` units, then after twice as many each time, up to ``most`` and
        while a batch stays under half of :data:`BUFFER_BYTES`: a streamed output sends its first
        units early (the consumers start), then in large batches (a batch costs a message, three
        HDF5 writes and digest updates)."""
        self.buffer_units = max(1, min(first, most))
        self.grow_to = max(self.buffer_units, most)
        self._units_buffer.capacity = self.buffer_units

    def buffer(self) -> tuple[Callable[[Any], None], list, int, Callable[[], int]]:
        """``(add, ends, threshold, flush)``: the units waiting to be written, for a fast producer.

        A producer that guarantees what :meth:`put` checks — each unit starts right after
        the previous one (at :attr:`next_index` for the first) and ends within the output's
        range — may call ``add(value)`` (which takes the unit's values as they are now,
        :class:`~backbeat.data.snapshot.UnitBuffer`) and append to ``ends`` itself, and
        call ``flush()`` once ``threshold`` units wait (``len(ends)``); ``flush()`` returns the next threshold.
        BEAT's ``Output`` does so, saving a call per unit.  Nothing may be appended once the
        writer is closed or aborted.
        """
        return self._units_buffer.add, self._ends, self.buffer_units, self.flush

    @property
    def plain(self) -> tuple[Callable[[Any], None], Callable[[Any], Any]] | None:
        """For a dataformat of scalars and strings only, ``(append, get)``: a producer of values of
        :attr:`type` may add one as ``append(get(value))`` instead of ``add(value)`` (see :meth:`buffer`)."""
        return self._units_buffer.plain

    def write(self, data: Any, end_data_index: int | None = None) -> None:
        """Append one data unit covering ``[next_index, end_data_index]`` (default: one index)."""
        nxt = self.next_index
        self.put(data, nxt, nxt if end_data_index is None else int(end_data_index))

    def put(self, data: Any, start: int, end: int) -> None:
        """Append one data unit ``[start, end]``; ``start`` must be :attr:`next_index`.

        This is also the sink protocol of BEAT outputs (``write(value, start, end)``).
        """
        nxt = self._ends[-1] + 1 if self._ends else self._next
        if start != nxt or end < start or end > self._limit or self._closed or self._sealed:
            if self._closed or self._sealed:
                raise DataError(f"cache writer for `{self.path}' is {'closed' if self._closed else 'sealed'}")
            if start != nxt:
                raise DataError(f"cannot write a data unit starting at {start} to `{self.path}': "
                                f"the next one must start at {nxt}")
            raise DataError(
                f"cannot write data unit ending at {end} to `{self.path}': it must be within "
                f"[{nxt}, {self.end if self.end is not None else 'inf'}]"
            )
        self._units_buffer.add(data)  # (its values now: the caller may change ``data`` once written)
        ends = self._ends
        ends.append(end)
        if len(ends) >= self.buffer_units:
            self.flush()

    def write_batch(self, batch: Batch) -> None:
        """Append a whole batch; its first unit must start at :attr:`next_index`."""
        if self._closed or self._sealed:
            raise DataError(f"cache writer for `{self.path}' is {'closed' if self._closed else 'sealed'}")
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

    def flush(self) -> int:
        """Write buffered per-unit values to the file as one batch; the units to buffer next."""
        if not self._ends:
            return self.buffer_units
        if self._sealed:  # (a producer appending to buffer()'s lists after seal())
            raise DataError(f"units written to `{self.path}' after its digest was taken")
        ends = int64s(self._ends)  # (np.array(self._ends, dtype=I64), packed by the compiled module)
        starts = np.empty_like(ends)
        starts[0] = self._next
        starts[1:] = ends[:-1] + 1
        batch = self._units_buffer.take(starts, ends)
        self._ends.clear()  # in place: a producer may hold this list (see buffer())
        self._append(batch)
        self._next = int(ends[-1]) + 1
        # grows while batches stay small in bytes (variable-length values are not in grow_to's count)
        if self.buffer_units < self.grow_to and 2 * batch.nbytes <= BUFFER_BYTES:
            self.buffer_units = min(self.grow_to, 2 * self.buffer_units)
        self._units_buffer.capacity = self.buffer_units
        return self.buffer_units

    def _append(self, batch: Batch) -> None:
        """Append every array of ``batch``; large arrays are hashed in a thread while HDF5 writes.

        Until the output holds more than :data:`SMALL_BYTES` the arrays wait in memory: an output
        that stays small is written at :meth:`close` with its exact shapes (no chunk to fill);
        beyond that the datasets are created chunked, with chunks sized from what waited.
        """
        jobs = []
        try:
            arrays = self._content.arrays(batch)
            jobs = self._content.update(arrays, self._hasher)
            if self._ds is None:
                self._pending.append(arrays)
                self._pending_bytes += sum(a.nbytes for a in arrays)
                if self._pending_bytes > SMALL_BYTES:
                    self._create_chunked()
            elif self._direct:  # (whole chunks: the appenders stage the rows themselves)
                self._write(arrays)
            else:
                self._queued.append(arrays)
                self._queued_bytes += sum(a.nbytes for a in arrays)
                if self._queued_bytes >= COALESCE_BYTES:
                    self._drain()
        except (OSError, ValueError, KeyError) as exc:
            for job in jobs:
                job.result()
            self.abort()
            raise DataError(f"cannot write cache file `{self.path}': {exc}") from None
        for job in jobs:
            job.result()
        self._units += len(batch)
        if self.on_batch is not None:
            self.on_batch(batch)

    def _waiting(self) -> list[np.ndarray]:
        """The arrays waiting in memory, one per name (concatenated; offsets with their leading 0)."""
        out = []
        for k, name in enumerate(self._names):
            dtype, shape = self._specs[name]
            parts = [a[k] for a in self._pending]
            if name.endswith("#offsets"):
                parts.insert(0, np.zeros(1, dtype=dtype))
            out.append(np.concatenate(parts) if len(parts) > 1 else
                       (parts[0] if parts else np.empty((0, *shape), dtype=dtype)))
        self._pending, self._pending_bytes = [], 0
        return out

    def _create_chunked(self) -> None:
        """Create extendable, chunked datasets and write what waited.  Chunks: the rows of the units of
        about :data:`SMALL_BYTES`, within [16 KiB, 1 MiB], a power of two — from the dataformat only,
        so the file does not depend on how its units were batched."""
        waiting = self._waiting()
        self._ds = {}
        self._fid = h5objects.create(self._fresh_tmp())
        self._file = h5py.File(self._fid)
        hint = units_within(self.expanded, self.name, 1 << 40, SMALL_BYTES)
        # unfiltered, and one row per unit in every array (no variable-length field): whole chunks are
        # written from the batches' own memory, in an order that does not depend on the batching
        direct = not self._kw and all(c.role == "data" and c.rows == "" for c in layout(self.expanded, self.name))
        for group in dict.fromkeys(name.split("/")[0] for name in self._names):
            h5objects.group(self._fid, group)
        for name, arr in zip(self._names, waiting, strict=True):
            dtype, shape = self._specs[name]
            row = row_bytes(dtype, shape)
            rows = max(1, min(CHUNK_BYTES // row, max(hint, SMALL_CHUNK_BYTES // row)))
            rows = 1 << (rows.bit_length() - 1)  # a power of two, so power-of-two batches fill whole chunks
            if direct:
                ds = self._file.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                             chunks=(rows, *shape))
                self._direct[name] = ChunkAppender(ds.id, dtype, shape, rows)
            else:
                ds = self._file.create_dataset(name, shape=arr.shape, maxshape=(None, *shape), dtype=dtype,
                                             chunks=(rows, *shape), **self._kw)
                if arr.shape[0]:
                    ds.write_direct(arr)
            self._ds[name] = ds
        self._filled = {name: arr.shape[0] for name, arr in zip(self._names, waiting, strict=True)}
        if direct:
            self._step = min(a.rows for a in self._direct.values())
            self._append_direct(waiting)

    def _append_direct(self, arrays: list[np.ndarray]) -> None:
        """Append a batch's arrays (one row per unit each) to the chunk appenders, cut at every
        :attr:`_step` units: chunk rows are powers of two, so each piece completes at most one chunk
        of each array, at its end, and the chunks reach the file in the order of the units that
        complete them (then of the arrays), whatever the batches were."""
        appenders = [self._direct[name] for name in self._names]
        n, step, pos = arrays[0].shape[0], self._step, len(appenders[0])
        a = 0
        while a < n:
            b = min(n, a + step - (pos + a) % step)
            for appender, arr in zip(appenders, arrays, strict=True):
                self._unsynced += appender.append(arr[a:b])
            a = b

    def _drain(self) -> None:
        """Write the queued arrays of a chunked output, as one run per dataset."""
        if self._queued:
            runs, self._queued, self._queued_bytes = self._queued, [], 0
            self._write([np.concatenate(parts) if len(parts) > 1 else parts[0] for parts in zip(*runs, strict=True)])

    def _write(self, arrays: list[np.ndarray]) -> None:
        assert self._ds is not None
        if self._direct:
            self._append_direct(arrays)
        else:
            for name, arr in zip(self._names, arrays, strict=True):
                n = arr.shape[0]
                if n:
                    ds, old = self._ds[name], self._filled[name]
                    ds.resize(old + n, axis=0)
                    ds[old:old + n] = arr
                    self._filled[name] = old + n
                    self._unsynced += arr.nbytes
        if self._unsynced >= self._writeback_bytes:  # (a large output: on disk by the time it is made durable)
            self._writeback()

    def _fresh_tmp(self) -> str:
        """The temporary's name, the empty file there removed, to be created anew by whatever writes it.
        (Opened with O_TRUNC, an existing file is truncated, and ext4 — ``auto_da_alloc`` — then starts
        writing all of it to disk as soon as it is closed: megabytes queued on the disk in the way of the
        few small synced writes after it, before its syncer or its writer's early writeback asked.)"""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
        return self.tmp

    def _writeback(self) -> None:
        """Start writing what is in the file so far to disk, without waiting (see :data:`WRITEBACK_BYTES`)."""
        self._unsynced = 0
        with contextlib.suppress(OSError):
            if self._fd is None:
                self._fd = os.open(self.tmp, os.O_RDONLY)
            durable.start_writeback(self._fd)

    def _write_small(self, arrays: list[np.ndarray], attrs: list[tuple[str, str | int]]) -> None:
        """Write a small output's file: from its template (:mod:`backbeat.data.h5image`, one ``os.write``)
        when the cache has one for its signature, else with h5py — and then make the template."""
        images = h5image.Images(self.images) if self.images and not self._kw and h5image.enabled() else None
        sig = h5image.signature(self._names, arrays, attrs) if images is not None else None
        template = images.find(sig) if images is not None and sig is not None else None
        image = None
        if template is not None:
            with contextlib.suppress(ValueError):  # (values that do not fit it: h5py writes the file)
                image = template.render(arrays, attrs)
        if image is not None:
            fd = os.open(self._fresh_tmp(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                if os.write(fd, image) != len(image):
                    raise OSError("short write")
            finally:
                os.close(fd)
            return
        h5objects.write_small(self._fresh_tmp(), arrays, attrs, self._kw, names=self._names)
        if images is not None and sig is not None:
            try:  # (the file is written: failing to read it back only forgoes the template)
                with open(self.tmp, "rb") as f:
                    real = f.read()
            except OSError:
                return
            images.learn(sig, functools.partial(h5objects.write_small, names=self._names), arrays, attrs, real)

    # finishing -------------------------------------------------------------------------------------
    @property
    def small(self) -> bool:
        """Whether every unit so far waits in memory (an output that stays small: written at :meth:`close`)."""
        return self._ds is None

    def seal(self) -> str:
        """Write the buffered units as a last batch (told to :attr:`on_batch`) and return the file's
        digest, before any of it is written to HDF5: nothing may be appended after.  Missing data
        units → IntegrityError, nothing left.  :meth:`close` then writes and commits the file."""
        if self._digest is not None:
            return self._digest
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
        self._sealed = True
        self._digest = self._content.digest(self.start, self.last)
        return self._digest

    @property
    def last(self) -> int:
        """The file's last data index (its declared end, else the last unit's)."""
        return self.end if self.end is not None else self._next - 1

    def close(self, gate: Callable[[], None] | None = None) -> str:
        """Commit the file; return its digest.  Missing data units → IntegrityError, nothing left.
        ``gate`` is called once the file is complete, just before it is renamed into place: if it
        raises, nothing is committed (a streamed consumer waits there for its producers' commits)."""
        digest = self.seal()
        if self._ends:  # (appended to buffer()'s lists after seal(), not flushed: not in the digest;
            # nothing else can add units once sealed: put, write_batch and flush — _append's only
            # callers — refuse to)
            self.abort()
            raise DataError(f"units written to `{self.path}' after its digest was taken")
        attrs: list[tuple[str, str | int]] = [("backbeat", cachefile.FORMAT_TAG), ("dataformat", self.name), ("declaration", self._canon),
                 ("key", self.key), ("start", self.start), ("end", self.last), ("units", self._units),
                 ("digest_algorithm", cachefile.DIGEST_ALGORITHM), ("digest", digest)]
        try:
            if self._ds is None:
                self._write_small(self._waiting(), attrs)
            else:
                self._drain()
                for appender in self._direct.values():
                    appender.finish()
                h5objects.attributes(self._fid, attrs)
                self._close_file()
        except (OSError, ValueError) as exc:
            self.abort()
            raise DataError(f"cannot write cache file `{self.path}': {exc}") from None
        if gate is not None:
            try:
                gate()
            except BaseException:
                self.abort()
                raise
        self._closed = True
        self._commit()
        return digest

    def _close_file(self) -> None:
        self._ds = None if self._ds is None else {}
        self._direct = {}
        if self._file is not None:
            self._file.close()
        if self._fid is not None and self._fid.valid:
            self._fid.close()  # (CLOSE_STRONG: with every object still open in it)

    def _commit(self) -> None:
        """Rename the complete file into place.  Not durable yet: it is marked unsynced first
        (:mod:`backbeat.core.durable`) and whoever runs the block makes it durable off the critical
        path (:meth:`backbeat.cache.store.CacheStore.entrust`); nothing trusts it unverified until then.
        On a file system refusing the mark: fsync'ed before the rename, and its folder after."""
        if self._fd is not None:  # (a large output: the rest of it goes to disk now)
            self._writeback()
            os.close(self._fd)
            self._fd = None
        if not durable.mark_unsynced(self.tmp):
            durable.fsync_path(self.tmp)
            os.replace(self.tmp, self.path)
            durable.fsync_folder(self.path)
            return
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop everything written; the final path is never touched."""
        self._closed = True
        self._hasher.close()
        with contextlib.suppress(Exception):
            self._close_file()
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
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
