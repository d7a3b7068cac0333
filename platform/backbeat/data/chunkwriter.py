"""Appending rows to a chunked HDF5 dataset one whole chunk at a time: :class:`ChunkAppender`.

A large cache-file column (:mod:`backbeat.data.cachewriter`) grows batch by batch.  Written
through h5py's ``ds[a:b] = arr``, each batch was copied into HDF5's chunk cache and out of it into
the file, and the dataset was resized for every batch.  Without filters a chunk's bytes are its
rows themselves, so :class:`ChunkAppender` writes every complete chunk straight from the caller's
array (``H5Dwrite_chunk``: one ``pwrite`` from that memory), copies into a one-chunk stage only the
rows a batch leaves in an incomplete chunk, grows the extent by doubling, and at :meth:`finish`
writes the last, partial chunk (zero beyond its rows: HDF5's default fill value) and sets the
exact extent.  Chunks are written in order and only once complete, so the file's bytes depend on
the rows only, not on how they were batched.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ChunkAppender:
    """Rows appended to an unfiltered chunked dataset (one unlimited first dimension, created empty)
    whose chunks are ``rows`` rows of ``shape``: :meth:`append` batches, then :meth:`finish`."""

    def __init__(self, dsid: Any, dtype: np.dtype, shape: tuple[int, ...], rows: int) -> None:
        self._id, self._shape, self.rows = dsid, tuple(shape), int(rows)
        self._zeros = (0,) * len(self._shape)
        self._stage = np.zeros((self.rows, *self._shape), dtype=dtype)
        self._staged = 0  # rows waiting in the stage (an incomplete chunk)
        self._written = 0  # rows in the file: whole chunks
        self._extent = 0

    def __len__(self) -> int:
        return self._written + self._staged

    def append(self, arr: np.ndarray) -> int:
        """Append the rows of the C-contiguous ``arr`` (this dataset's dtype and row shape); the bytes
        written to the file (whole chunks) by this call."""
        n, rows, i, out = arr.shape[0], self.rows, 0, 0
        if self._staged:
            take = min(rows - self._staged, n)
            self._stage[self._staged:self._staged + take] = arr[:take]
            self._staged += take
            i = take
            if self._staged == rows:
                out += self._put(self._stage)
                self._staged = 0
        while n - i >= rows:
            out += self._put(arr[i:i + rows])
            i += rows
        if i < n:
            self._stage[:n - i] = arr[i:]
            self._staged = n - i
        return out

    def _put(self, chunk: np.ndarray) -> int:
        need = self._written + self.rows
        if need > self._extent:
            self._extent = max(need, 2 * self._extent)
            self._id.set_extent((self._extent, *self._shape))
        self._id.write_direct_chunk((self._written, *self._zeros), chunk)
        self._written = need
        return chunk.nbytes

    def finish(self) -> None:
        """Write the last, incomplete chunk and set the dataset's extent to the rows appended."""
        total = len(self)
        if self._staged:
            self._stage[self._staged:] = 0
            self._put(self._stage)
            self._staged = 0
        self._written = total
        if self._extent != total:
            self._id.set_extent((total, *self._shape))
            self._extent = total
