"""Small outputs handed over to a trusted, warm writer: :class:`HandoffWriter`.

Creating and committing an HDF5 file costs a freshly forked block process ~5.6 ms of CPU and
~600 copied pages (HDF5's metadata cache, h5py's first calls, CPython's reference counts in
pages shared with the fork server), a warm process ~1.5–2.5 ms (``docs/performance.md``).  So a
block whose output stays small does not open HDF5 at all: :class:`HandoffWriter` keeps the
batches it is given (they are also streamed to consumers as usual) and, at
:meth:`~HandoffWriter.close`, hands them to ``handoff(batches, end)`` — the block process sends
them to the run's *committer* (:mod:`backbeat.runtime.committer`), which writes and commits the
cache file with an ordinary :class:`~backbeat.data.cachewriter.CacheWriter` and answers the
content digest it computed of exactly the bytes it wrote.  The file is the one the block would
have written: the same writer code, the same batches (a cache file's layout does not depend on
how its units were batched).

Nothing is hashed nor written here while the output is handed over.  An output that grows past
:data:`HANDOFF_BYTES` is written by the block itself after all: the file is created then, what
waited is written to it, and the writer goes on as a :class:`CacheWriter`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from backbeat.data.batch import Batch
from backbeat.data.cachewriter import CacheWriter

#: an output handed over is at most this many bytes of arrays (the committer refuses more than
#: :data:`MAX_FRAME_BYTES` of frames)
HANDOFF_BYTES = 64 << 10
MAX_FRAME_BYTES = 2 * HANDOFF_BYTES + (64 << 10)

#: ``handoff(batches, end) -> digest``: commits the output elsewhere (raises if it could not)
Handoff = Callable[[list[Batch], int], str]


class HandoffWriter(CacheWriter):
    """A :class:`CacheWriter` whose output, while it stays small, is committed by ``handoff``."""

    def __init__(self, path: str | os.PathLike, fmt_name: str, expanded: dict, *, handoff: Handoff,
                 **kwargs: Any) -> None:
        self._handoff: Handoff | None = handoff
        self._handed: list[Batch] = []
        self._handed_bytes = 0
        super().__init__(path, fmt_name, expanded, **kwargs)

    @property
    def handed_off(self) -> bool:
        """Whether the output is (still) to be committed by the handoff, not by this writer."""
        return self._handoff is not None

    def _create(self) -> None:
        if self._handoff is None:  # (grown too large: this process writes the file)
            super()._create()

    def _append(self, batch: Batch) -> None:
        if self._handoff is None:
            super()._append(batch)
            return
        self._handed.append(batch)
        self._handed_bytes += batch.nbytes
        if self._handed_bytes > HANDOFF_BYTES:  # written here after all (what waited is in memory)
            waited, self._handoff, self._handed = self._handed, None, []
            self._units -= sum(len(b) for b in waited[:-1])  # (counted again as they are written)
            self._create()
            told, self.on_batch = self.on_batch, None  # (the consumers had the earlier batches)
            try:
                for b in waited:
                    super()._append(b)
            finally:
                self.on_batch = told
            if told is not None:
                told(batch)
            return
        self._units += len(batch)
        if self.on_batch is not None:
            self.on_batch(batch)

    def abort(self) -> None:
        if self._handoff is None:
            super().abort()
        else:  # (nothing on disk)
            self._closed, self._handed = True, []
            self._hasher.close()

    def close(self) -> str:
        if self._handoff is None or self._closed:
            return super().close()
        self.flush()  # (what waits may make the output too large to hand over)
        if self._handoff is None:
            return super().close()
        last = self._complete()
        self._closed = True
        self._hasher.close()
        batches, self._handed = self._handed, []
        return self._handoff(batches, self.end if self.end is not None else last)
