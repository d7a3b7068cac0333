"""A view index's entries, as the view's ``setup`` receives them (``objs``): made a window at a time.

:class:`Entries` is a read-only sequence of BEAT's ``Entry`` namedtuples over an index table
(:class:`backbeat.data.indextable.IndexTable`, or anything with its ``n``, ``entries(a, b)``,
``values``, ``units`` and ``path``): entry ``i`` is made with the ``WINDOW`` entries around it
when first asked for, and the window kept, so that a view's ``get`` reading its units in order
makes each entry once and keeps at most ``WINDOW`` of them (a million entries as a list: ~100 MB).

Indexing by an int within the current window is every ``get``'s first step: with the compiled
module built (:mod:`backbeat.data.compiled`) the class's base (``Windowed``) answers it in C, the
window in C members (``_window``, ``_at``, ``_wn``); anything else (another window, a slice, a
negative or non-int index) goes to :meth:`Entries._item`, the Python code, which is the reference:
without the module it is ``__getitem__`` itself.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from backbeat.data import dbindex
from backbeat.data.compiled import Windowed

WINDOW = 1024  # entries made at once


class Entries(Windowed, Sequence):
    """Entries ``lo .. hi-1`` of a table as a read-only sequence of ``Entry`` namedtuples, made a
    window at a time (slices are lazy too)."""

    def __init__(self, table: Any, lo: int = 0, hi: int | None = None):
        self.table = table
        self.lo, self.hi = lo, table.n if hi is None else hi
        self._at = self._wn = 0
        self._window: list = []

    def __len__(self) -> int:
        return self.hi - self.lo

    def _item(self, i: Any) -> Any:
        """``self[i]`` (the reference: the compiled base answers an int within the window itself)."""
        if type(i) is int:  # the common case (a view's get): within the current window
            k = i - self._at
            if 0 <= k < self._wn:
                return self._window[k]
        elif isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step == 1:
                return Entries(self.table, self.lo + a, self.lo + max(a, b))
            return [self[k] for k in range(a, b, step)]
        return self._load(operator.index(i))

    if not hasattr(Windowed, "__getitem__"):  # (not built: the Python code answers every index)
        __getitem__ = _item

    def _load(self, i: int) -> Any:
        n = self.hi - self.lo
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("view index entry out of range")
        at = i - i % WINDOW
        window = self.table.entries(self.lo + at, self.lo + min(n, at + WINDOW))  # (a failure: the window kept)
        self._wn = 0  # (no mixed window between the stores, for another thread)
        self._at, self._window, self._wn = at, window, len(window)
        return window[i - at]

    def __iter__(self) -> Iterator:
        for a in range(self.lo, self.hi, WINDOW):
            yield from self.table.entries(a, min(self.hi, a + WINDOW))

    def __reduce__(self) -> tuple:  # (copy.copy: the same entries of the same table, whichever base)
        return type(self), (self.table, self.lo, self.hi)

    def __repr__(self) -> str:
        return f"<view index entries {self.lo}..{self.hi} of `{self.table.path}'>"

    def units(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        """Data units of an output over these entries (grouped from the column, no entry made)."""
        if self.lo == 0 and self.hi == self.table.n:
            return self.table.units(field)
        return dbindex.group_units(self.table.values(field, self.lo, self.hi))
