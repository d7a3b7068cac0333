"""Data sources over columnar batches, for inputs and data loaders (see :mod:`backbeat.inputs`).

A :class:`BatchSource` knows every unit's ``(start, end)`` up front and fetches the values
themselves in windows of consecutive units through a ``fetch(i, j) -> Batch`` callable (an
HDF5 cache reader or the database-provider client), converting one window at a time to
BEAT-style value objects.  Memory stays bounded by the window, whatever the output size.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from backbeat.data.batch import Batch


def index_lists(starts: np.ndarray, ends: np.ndarray) -> tuple[list, list]:
    """``starts`` and ``ends`` as lists of ints: one list for both when every unit is of one index
    (a chain's case: one ``tolist()`` instead of two)."""
    first = starts.tolist()
    return first, first if np.array_equal(starts, ends) else ends.tolist()


class BatchSource:
    """Random access to the units of one output, fetched window by window.

    ``prefetch(i, j)``, when given, is told which window will be fetched next, so that a
    remote producer (the database provider) computes it while this one is consumed.
    """

    def __init__(self, starts: Any, ends: Any, fetch: Callable[[int, int], Batch], window: int = 4096,
                 prefetch: Callable[[int, int], None] | None = None):
        self._starts = np.asarray(starts, dtype=np.int64)
        self._ends = np.asarray(ends, dtype=np.int64)
        self._fetch = fetch
        self._prefetch = prefetch
        self._window = max(1, int(window))
        self._n = len(self._starts)
        self._lo = self._hi = 0
        self._items: tuple[list, list, list] = ([], [], [])  # the cached window: values, starts, ends
        self._index_list: list[tuple[int, int]] | None = None  # built on first use (O(n) Python objects)
        self._ends_list: list[int] | None = None
        self.bytes_read = 0

    def __len__(self) -> int:
        return self._n

    @property
    def _indices(self) -> list[tuple[int, int]]:
        if self._index_list is None:
            self._index_list = list(zip(self._starts.tolist(), self._ends.tolist(), strict=True))
        return self._index_list

    @property
    def _end_list(self) -> list[int]:
        if self._ends_list is None:
            self._ends_list = self._ends.tolist()
        return self._ends_list

    def data_indices(self) -> list[tuple[int, int]]:
        return list(self._indices)

    def last_end(self) -> int:
        """The end index of the last unit (-1 when there is none)."""
        return int(self._ends[-1]) if self._n else -1

    def _window_items(self, i: int, spare: list | None = None) -> tuple[int, tuple[list, list, list]]:
        """Fetch units ``i ..`` (one window); announce the following window to the producer.
        ``spare``: values given up, made again if nothing else refers to them (data.recycling)."""
        hi = min(self._n, i + self._window)
        batch = self._fetch(i, hi)
        if self._prefetch is not None and hi < self._n:
            self._prefetch(hi, min(self._n, hi + self._window))
        self.bytes_read += batch.nbytes
        return hi, (batch.to_values(spare), *index_lists(self._starts[i:hi], self._ends[i:hi]))

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        k = index - self._lo
        if 0 <= k < self._hi - self._lo:
            values, starts, ends = self._items
            return values[k], starts[k], ends[k]
        if index < 0 or index >= self._n:
            raise IndexError(f"data unit {index} out of range (0..{self._n - 1})")
        self._hi, self._items = self._window_items(index)
        self._lo = index
        values, starts, ends = self._items
        return values[0], starts[0], ends[0]

    def iter_chunks(self, i: int = 0) -> Iterator[tuple[list, list, list]]:
        """``(values, starts, ends)`` lists of units ``i, i+1, ..`` in order, a window at a time (the
        driver's fast path loops over each with ``zip``: no generator step per unit)."""
        spare: list | None = None  # the values of the window before the last one: done with
        previous: list | None = None  # (the caller holds the last one while the next is made)
        while i < self._n:
            if self._lo <= i < self._hi:
                k = i - self._lo
                values, starts, ends = (part[k:] for part in self._items)
                hi, self._lo, self._hi, self._items = self._hi, 0, 0, ([], [], [])
            else:
                hi, (values, starts, ends) = self._window_items(i, spare)
            spare, previous = previous, values
            yield values, starts, ends
            i = hi

    def iter_units(self, i: int = 0) -> Iterator[tuple[Any, int, int]]:
        """``(value, start, end)`` of units ``i, i+1, ..`` in order."""
        for values, starts, ends in self.iter_chunks(i):
            yield from zip(values, starts, ends, strict=True)

    def getAtDataIndex(self, data_index: int) -> tuple[Any, int | None, int | None]:  # noqa: N802 (BEAT)
        pos = bisect.bisect_left(self._end_list, data_index)
        if pos >= self._n or self._indices[pos][0] > data_index:
            return (None, None, None)
        return self[pos]

    def reset(self) -> None:
        """Forget the cached window."""
        self._lo = self._hi = 0
        self._items = ([], [], [])


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

    def iter_chunks(self, i: int = 0) -> Iterator[tuple[list, list, list]]:
        """``(values, starts, ends)`` lists of units ``i, i+1, ..`` of this share, in order."""
        n = self._n - i
        if n <= 0:
            return
        if hasattr(self._src, "iter_chunks"):
            for values, starts, ends in self._src.iter_chunks(self._lo + i):
                if len(values) >= n:  # (the share's last units: nothing further is asked for)
                    yield values[:n], starts[:n], ends[:n]
                    return
                n -= len(values)
                yield values, starts, ends
        else:
            for k in range(i, self._n):
                value, start, end = self[k]
                yield [value], [start], [end]

    def iter_units(self, i: int = 0) -> Iterator[tuple[Any, int, int]]:
        """``(value, start, end)`` of units ``i, i+1, ..`` of this share, in order."""
        for values, starts, ends in self.iter_chunks(i):
            yield from zip(values, starts, ends, strict=True)

    @property
    def bytes_read(self) -> int:
        return getattr(self._src, "bytes_read", 0)


def restrict(source, start: int, end: int):
    """The units of ``source`` lying within ``[start, end]``."""
    units = source.data_indices()
    lo = next((i for i, (s, _e) in enumerate(units) if s >= start), len(units))
    hi = next((i for i, (_s, e) in enumerate(units) if e > end), len(units))
    return SubSource(source, lo, max(lo, hi))
