"""Data sources over columnar batches, for inputs and data loaders (see :mod:`backbeat.inputs`).

A :class:`BatchSource` knows every unit's ``(start, end)`` up front and fetches the values
themselves in windows of consecutive units through a ``fetch(i, j) -> Batch`` callable (an
HDF5 cache reader or the database-provider client), converting one window at a time to
BEAT-style value objects.  Memory stays bounded by the window, whatever the output size.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import numpy as np

from .batch import Batch


class BatchSource:
    """Random access to the units of one output, fetched window by window."""

    def __init__(self, starts: Any, ends: Any, fetch: Callable[[int, int], Batch], window: int = 4096):
        self._starts = np.asarray(starts, dtype=np.int64)
        self._ends = np.asarray(ends, dtype=np.int64)
        self._fetch = fetch
        self._window = max(1, int(window))
        self._lo = self._hi = 0
        self._items: list = []
        self._indices = list(zip(self._starts.tolist(), self._ends.tolist(), strict=True))
        self._end_list = self._ends.tolist()
        self.bytes_read = 0

    def __len__(self) -> int:
        return len(self._indices)

    def data_indices(self) -> list[tuple[int, int]]:
        return list(self._indices)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        lo = self._lo
        if lo <= index < self._hi:
            return self._items[index - lo]
        if index < 0 or index >= len(self._indices):
            raise IndexError(f"data unit {index} out of range (0..{len(self._indices) - 1})")
        hi = min(len(self._indices), index + self._window)
        batch = self._fetch(index, hi)
        self.bytes_read += batch.nbytes
        self._items = [(v, s, e) for v, (s, e) in zip(batch.to_values(), self._indices[index:hi], strict=True)]
        self._lo, self._hi = index, hi
        return self._items[0]

    def getAtDataIndex(self, data_index: int) -> tuple[Any, int | None, int | None]:  # noqa: N802 (BEAT)
        pos = bisect.bisect_left(self._end_list, data_index)
        if pos >= len(self._end_list) or self._indices[pos][0] > data_index:
            return (None, None, None)
        return self[pos]

    def reset(self) -> None:
        """Forget the cached window."""
        self._lo = self._hi = 0
        self._items = []


class SubSource:
    """Units ``lo .. hi-1`` of another source (a split block's share of its channel)."""

    def __init__(self, source, lo: int, hi: int):
        self._src, self._lo, self._n = source, lo, max(0, hi - lo)
        self._indices = source.data_indices()[lo:hi]
        self._end_list = [e for _s, e in self._indices]

    def __len__(self) -> int:
        return self._n

    def data_indices(self) -> list[tuple[int, int]]:
        return list(self._indices)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        if index < 0 or index >= self._n:
            raise IndexError(f"data unit {index} out of range (0..{self._n - 1})")
        return self._src[self._lo + index]

    def getAtDataIndex(self, data_index: int) -> tuple[Any, int | None, int | None]:  # noqa: N802 (BEAT)
        pos = bisect.bisect_left(self._end_list, data_index)
        if pos >= self._n or self._indices[pos][0] > data_index:
            return (None, None, None)
        return self[pos]

    @property
    def bytes_read(self) -> int:
        return getattr(self._src, "bytes_read", 0)


def restrict(source, start: int, end: int):
    """The units of ``source`` lying within ``[start, end]``."""
    units = source.data_indices()
    lo = next((i for i, (s, _e) in enumerate(units) if s >= start), len(units))
    hi = next((i for i, (_s, e) in enumerate(units) if e > end), len(units))
    return SubSource(source, lo, max(lo, hi))
