"""Data units taken as they are when written: :class:`UnitBuffer` and :func:`frozen` (spec §5.3).

BEAT serialises a unit at ``write()``: an algorithm may change what it wrote right after (a running
total kept in one array, one output object reused, its input's object passed through), and a database
view's ``get`` may refill and return the same object each time.  Whatever buffers units before they
become a batch must therefore keep each unit's *values*, not the objects holding them.

:class:`UnitBuffer` does so at the cost the batch conversion had anyway: each unit's leaves are read
once, when it is added (one C-level ``attrgetter`` over every scalar, string and array of the
dataformat, nested ones included); fixed-shape numeric arrays are copied into one preallocated block
per column (the only copy, which used to be made when the batch was built); scalars (numpy scalars)
and strings are immutable and kept as they are; variable-length arrays are copied (numeric) or
converted to their columns (strings, objects) at once.  :meth:`UnitBuffer.take` makes the batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from backbeat.core.errors import DataError
from backbeat.data import compiled
from backbeat.data.batch import I64, Batch, Node, _encode_strings, _gather, tree
from backbeat.data.compiled import float64s
from backbeat.data.values import as_value, value_type


def _leaves(node: Node, out: list[Node]) -> None:
    """The nodes read from a unit: a struct's fields, recursively, down to numbers, strings and lists."""
    if node.kind == "struct":
        for _k, sub in node.fields:
            _leaves(sub, out)
    else:
        out.append(node)


class UnitBuffer:
    """Snapshots of data units of one dataformat, made into a :class:`Batch` by :meth:`take`.

    ``add(value)`` (an instance of the format's value class, or anything :func:`as_value` converts)
    reads the unit's values at once: nothing the caller does to ``value`` afterwards changes it.
    ``capacity``: the units expected before each :meth:`take` (the preallocated rows; more grow them).
    """

    def __init__(self, name: str, expanded: dict, capacity: int = 256) -> None:
        self.name, self.expanded = name, expanded
        self.type = value_type(name, expanded)
        self.capacity = max(1, int(capacity))
        leaves: list[Node] = []
        _leaves(tree(name, expanded), leaves)
        self._leaves = leaves
        #: a unit's leaves: the value itself when there is one (a tuple of them when there are several)
        self._single = len(leaves) == 1
        self._get: Callable[[Any], Any] = attrgetter(*(n.path for n in leaves)) if leaves else _nothing
        self._rows: list = []  # (one list for the buffer's life: ``plain`` holds its append)
        self._arrays = [(j, n) for j, n in enumerate(leaves) if n.kind == "num" and n.dims]
        self._blocks: list[np.ndarray | None] = [None] * len(self._arrays)
        self._lists = [(j, n) for j, n in enumerate(leaves) if n.kind == "list"]
        self._listed: list[list] = [[] for _ in self._lists]
        self.add: Callable[[Any], None] = (
            self._add_plain if not self._arrays and not self._lists
            else self._array_adder() if len(self._arrays) == 1 and not self._lists else self._add)
        #: ``(append, get)`` when every leaf is a scalar or a string (immutable, nothing to copy): a
        #: producer that checked the value's type may add it as ``append(get(value))``, C-level calls
        self.plain = None if self._arrays or self._lists else (self._rows.append, self._get)

    def __len__(self) -> int:
        return len(self._rows)

    def _add_plain(self, value: Any) -> None:
        """Scalars and strings only: immutable, kept as they are."""
        if type(value) is not self.type:
            value = as_value(self.type, value)
        self._rows.append(self._get(value))

    def _array_adder(self) -> Callable[[Any], None]:
        """``add`` for one fixed-shape numeric array (a vector format) and any scalars and strings:
        a closure over what it reads, no loop (its cost is per unit: a vector output's hot path)."""
        vtype, get, rows, blocks, single, grow = self.type, self._get, self._rows, self._blocks, self._single, self._grow
        (j, node), = self._arrays
        dt, dims, ndarray, append = node.dtype, node.dims, np.ndarray, self._rows.append

        def add(value: Any) -> None:
            if type(value) is not vtype:
                value = as_value(vtype, value)
            leaves = get(value)
            x = leaves if single else leaves[j]
            i = len(rows)
            block = blocks[0]
            if block is None or i >= len(block):
                block = blocks[0] = grow(block, node, i)
            if type(x) is ndarray and x.dtype == dt and x.shape == dims:
                block[i] = x
            else:
                block[i] = _row(x, node)
            append(leaves)

        return add

    def _add(self, value: Any) -> None:
        if type(value) is not self.type:
            value = as_value(self.type, value)
        leaves = self._get(value)
        i = len(self._rows)
        blocks, single = self._blocks, self._single
        for k, (j, node) in enumerate(self._arrays):
            block = blocks[k]
            if block is None or i >= len(block):
                block = blocks[k] = self._grow(block, node, i)
            x = leaves if single else leaves[j]
            if type(x) is np.ndarray and x.dtype == node.dtype and x.shape == node.dims:
                block[i] = x
            else:
                block[i] = _row(x, node)
        if self._lists:
            snaps = [_list_snapshot(leaves if single else leaves[j], node) for j, node in self._lists]
            for listed, snap in zip(self._listed, snaps, strict=True):
                listed.append(snap)
        self._rows.append(leaves)

    def _grow(self, block: np.ndarray | None, node: Node, used: int) -> np.ndarray:
        rows = self.capacity if block is None else max(self.capacity, 2 * len(block))
        new = np.empty((max(rows, used + 1), *node.dims), dtype=node.dt)
        if block is not None and used:
            new[:used] = block[:used]
        return new

    def take(self, starts: Any, ends: Any) -> Batch:
        """The units added since the last take, as a batch over ``starts``/``ends``; the buffer is emptied."""
        rows, n = self._rows, len(self._rows)
        cols: dict[str, np.ndarray] = {}
        blocks = dict(zip((j for j, _n in self._arrays), self._blocks, strict=True))
        listed = dict(zip((j for j, _n in self._lists), self._listed, strict=True))
        for j, node in enumerate(self._leaves):
            column = rows if self._single else list(map(itemgetter(j), rows))
            if node.kind == "num" and node.dims:
                block = blocks[j]
                cols[node.path] = _kept(block, n) if block is not None else np.empty((0, *node.dims), dtype=node.dt)
            elif node.kind == "num":
                cols[node.path] = (float64s(column, np.float64) if node.dt == F64
                                   else np.fromiter(column, dtype=node.dt, count=n))
            elif node.kind == "str":
                _encode_strings(column, node.path, cols)
            else:
                _merge_lists(node, listed[j], cols)
        rows.clear()
        self._blocks[:] = [None] * len(self._arrays)  # (the batch owns the old ones; the list is kept)
        self._listed = [[] for _ in self._lists]
        return Batch(self.name, self.expanded, starts, ends, cols, validate=False)._checked_ranges()


F64 = np.dtype("<f8")

#: unused rows of a column block up to this size stay with the batch (see :func:`_kept`)
SLACK_BYTES = 64 << 10


def _kept(block: np.ndarray, n: int) -> np.ndarray:
    """A column block's first ``n`` rows, as the batch's column: a view when the rest is small, else
    a copy (the block is then freed): a batch kept for long (a small output's, until its writer
    closes) holds what it needs, not the rows preallocated for a full buffer (up to 2 MB)."""
    if block.nbytes - n * block.strides[0] <= SLACK_BYTES:
        return block[:n]
    return block[:n].copy()


def _nothing(value: Any) -> tuple:
    return ()


def _row(x: Any, node: Node) -> np.ndarray:
    """A fixed-shape numeric array given as something else (other dtype, a list): cast as
    ``numpy.stack`` did when the batch was built; its shape must be the declared one."""
    try:
        arr = np.asarray(np.stack([x]), dtype=node.dt)[0]
    except (ValueError, TypeError) as exc:
        raise DataError(f"field `{node.path}': {exc}") from None
    if arr.shape != node.dims:
        raise DataError(f"field `{node.path}': expected shape {node.dims}, got {arr.shape}")
    return arr


def _list_snapshot(x: Any, node: Node) -> Any:
    """A variable-length field's value now: a copy of a numeric array, else its columns (one row)."""
    if node.item.kind == "num":
        return np.array(x)
    out: dict = {}
    _gather(node, [x], out)
    return out


def _merge_lists(node: Node, snaps: Sequence[Any], cols: dict) -> None:
    if node.item.kind == "num":
        _gather(node, snaps, cols)
        return
    if not snaps:
        _gather(node, [], cols)
        return
    for name in snaps[0]:
        parts = [s[name] for s in snaps]
        if name.endswith("#offsets"):
            rebased, base = [np.zeros(1, dtype=I64)], 0
            for part in parts:
                rebased.append(part[1:] + base)
                base += int(part[-1])
            cols[name] = np.concatenate(rebased)
        else:
            cols[name] = np.concatenate(parts)


_IMMUTABLE = frozenset({int, float, bool, str, bytes, complex, type(None), *(
    t for t in np.sctypeDict.values() if issubclass(t, (np.number, np.bool_, np.str_, np.bytes_)))})


class Uncopyable(DataError):
    """:func:`frozen` met a value whose deep copy failed: ``part`` (that value) and ``cause``."""

    def __init__(self, part: Any, cause: BaseException):
        super().__init__(f"copying a {type(part).__name__}: {type(cause).__name__}: {cause}")
        self.part, self.cause = part, cause


def frozen(value: Any) -> Any:
    """``value`` (what a database view's ``get`` returned) with nothing shared with the caller:
    dicts, lists and arrays copied, immutable leaves kept, anything else deep-copied
    (:class:`Uncopyable` if that fails: a generator, a lock, a ``__deepcopy__`` raising)."""
    t = type(value)
    if t is dict:
        out = value.copy()
        for v in out.values():  # (a dict of scalars, what views return most: its copy)
            if type(v) not in _IMMUTABLE:
                for k, w in out.items():
                    out[k] = frozen(w)
                break
        return out
    if t in _IMMUTABLE:
        return value
    if t is list:
        return [frozen(v) for v in value]
    if t is tuple:
        return tuple(frozen(v) for v in value)
    if t is np.ndarray and value.dtype != object:
        return value.copy()
    try:
        return copy.deepcopy(value)
    except Exception as exc:  # noqa: BLE001 - whatever the value's own copy raises
        raise Uncopyable(value, exc) from None


class ViewValues:
    """The values a database view's ``get`` returned for one window of ``n`` units, each as it was when
    returned (the view may refill and return the same dict and arrays on its next call); :meth:`batch`.

    For a format of numeric fields only, a plain ``dict`` of exactly its fields whose arrays are plain
    ``ndarray`` of the declared dtype and shape and whose scalars are immutable — what views return
    most — is taken by copying its arrays straight into the window's column blocks, which become the
    batch's columns: the one copy of each array (:func:`frozen` then ``Batch.from_values`` made two).
    Any other value is taken by :func:`frozen` and the window made by ``Batch.from_values``, the units
    taken until then given back as dicts viewing the blocks (the same values: the same batch).
    """

    def __init__(self, name: str, expanded: dict, n: int) -> None:
        self.name, self.expanded = name, expanded
        root = tree(name, expanded)
        numeric = root.kind == "struct" and bool(root.fields) and all(sub.kind == "num" for _k, sub in root.fields)
        fields = root.fields if numeric else ()
        self._width = len(fields) if numeric else -1  # (-1: no dict has that many keys)
        #: (key, node, block) of each array field; (key, node, values) of each scalar field
        self._arrays = [(key, sub, np.empty((n, *sub.dims), dtype=sub.dt)) for key, sub in fields if sub.dims]
        self._scalars: list[tuple[str, Node, list]] = [(key, sub, []) for key, sub in fields if not sub.dims]
        self._n = 0  # units taken into the blocks
        self._values: list | None = None  # every unit's value, once one was not taken into the blocks
        #: a vector format's one array: ``(key, dtype, dims, block)``, its units taken by :meth:`add` itself
        self._vector = (next((key, node.dtype, node.dims, block) for key, node, block in self._arrays)
                        if len(self._arrays) == 1 and not self._scalars else None)
        if not self._arrays:  # (nothing to copy once: see :meth:`copies_arrays`)
            self._values = []

    @staticmethod
    def copies_arrays(name: str, expanded: dict) -> bool:
        """Whether a window of this format is worth taking here: it has numeric arrays to copy once.
        (Without, ``[frozen(get(…)) …]`` and ``Batch.from_values`` are as fast: 1.8 µs a scalar unit.)"""
        root = tree(name, expanded)
        return root.kind == "struct" and any(sub.kind == "num" and sub.dims for _k, sub in root.fields) and all(
            sub.kind == "num" for _k, sub in root.fields)

    def add(self, value: Any) -> None:
        """Take ``value`` as it is now (:class:`Uncopyable` if :func:`frozen` cannot copy it).
        (No closure of its own: one would hold the window, and its block, in a reference cycle.)"""
        vector = self._vector
        if vector is not None and type(value) is dict and len(value) == 1 and self._values is None:
            x = value.get(vector[0])
            if type(x) is np.ndarray and x.dtype == vector[1] and x.shape == vector[2]:
                vector[3][self._n] = x
                self._n += 1
                return
        self._add(value)

    def _add(self, value: Any) -> None:
        if self._values is None and type(value) is dict and len(value) == self._width:
            i, ndarray = self._n, np.ndarray
            try:
                for key, node, block in self._arrays:
                    x = value[key]
                    if type(x) is not ndarray or x.dtype != node.dtype or x.shape != node.dims:
                        break
                    block[i] = x
                else:
                    scalars = [value[key] for key, _node, _v in self._scalars]
                    if all(type(s) in _IMMUTABLE for s in scalars):
                        for (_key, _node, taken), s in zip(self._scalars, scalars, strict=True):
                            taken.append(s)
                        self._n = i + 1
                        return
            except KeyError:
                pass
        snap = frozen(value)  # (before anything changes: a value that cannot be copied leaves all as it was)
        if self._values is None:
            self._values = self.units()
        self._values.append(snap)

    def units(self) -> list:
        """The values taken, as values ``Batch.from_values`` takes (the blocks' units as dicts viewing them)."""
        if self._values is not None:
            return list(self._values)
        return [{**{key: block[k] for key, _node, block in self._arrays},
                 **{key: taken[k] for key, _node, taken in self._scalars}} for k in range(self._n)]

    def batch(self, starts: Any, ends: Any) -> Batch:
        """The window's batch: ``Batch.from_values`` of :meth:`units` (its errors too), built from the blocks."""
        n = self._n
        if self._values is not None or not n:
            return Batch.from_values(self.name, self.expanded, self.units(), starts, ends)
        cols = {node.path: block[:n] for _key, node, block in self._arrays}
        for _key, node, taken in self._scalars:
            col = _column(taken, node, n)
            if col is None:
                return Batch.from_values(self.name, self.expanded, self.units(), starts, ends)
            cols[node.path] = col
        return Batch(self.name, self.expanded, starts, ends, cols, validate=False)._checked_ranges()


class ViewScalars:
    """The values a database view's ``get`` returned for one window, for a format of numeric scalar
    fields only (``{"value": "float64"}``, the common case), each as it was when returned.

    :meth:`take` calls ``get`` for each entry itself, in one loop: a plain ``dict`` of exactly the
    format's fields whose values are immutable (numpy scalars, numbers) is taken as the tuple of its
    values (``itemgetter``: nothing of it can change afterwards, so no copy is needed); any other value
    is taken by :func:`frozen`, and the window made by ``Batch.from_values`` from the values as dicts —
    the same batch and errors as ``[frozen(get(…)) …]`` then ``Batch.from_values``, which cost a Python
    call, a dict copy and a loop per unit (~0.65 µs loaded, as much as the view's ``get``), then two
    passes per unit again in ``Batch.from_values``.  With the compiled module built the loop of :meth:`take`
    over a list of entries runs in C (``compiled.take``: the same calls, checks, rows and copies).
    """

    def __init__(self, name: str, expanded: dict) -> None:
        self.name, self.expanded = name, expanded
        root = tree(name, expanded)
        self._nodes = [sub for _k, sub in root.fields]
        self._keys = [key for key, _sub in root.fields]
        self._rows: list = []  # one per unit: the value (one field), the values (several), or _ODD
        self._odd: dict[int, Any] = {}  # units taken by frozen, by position

    @staticmethod
    def fits(name: str, expanded: dict) -> bool:
        """Whether the format is a struct of numeric scalar fields only."""
        root = tree(name, expanded)
        return root.kind == "struct" and bool(root.fields) and all(
            sub.kind == "num" and not sub.dims for _k, sub in root.fields)

    def take(self, get: Callable[[str, int], Any], output: str, entries: Sequence[int]) -> None:
        """``get(output, entry)`` for each entry, in order, each value taken as soon as it is returned
        (:class:`Uncopyable` if :func:`frozen` cannot copy one)."""
        keys, rows, odd = self._keys, self._rows, self._odd
        if compiled.take is not None and type(entries) is list:  # (the same loop in C: the same calls, rows, odd)
            compiled.take(get, output, entries, tuple(keys), _IMMUTABLE, rows, odd, frozen, _ODD)
            return
        single, width, pick, immutable = len(keys) == 1, len(keys), itemgetter(*keys), _IMMUTABLE
        append, issuperset = rows.append, immutable.issuperset
        for s in entries:
            value = get(output, s)
            if type(value) is dict and len(value) == width:
                try:
                    row = pick(value)
                except KeyError:
                    pass
                else:
                    if type(row) in immutable if single else issuperset(map(type, row)):
                        append(row)
                        continue
            odd[len(rows)] = frozen(value)
            append(_ODD)

    def units(self) -> list:
        """The values taken, as dicts (what ``Batch.from_values`` takes)."""
        keys, odd = self._keys, self._odd
        if len(keys) == 1:
            key = keys[0]
            return [odd[k] if row is _ODD else {key: row} for k, row in enumerate(self._rows)]
        return [odd[k] if row is _ODD else dict(zip(keys, row, strict=True)) for k, row in enumerate(self._rows)]

    def batch(self, starts: Any, ends: Any) -> Batch:
        """The window's batch: ``Batch.from_values`` of :meth:`units` (its errors too), built from the rows."""
        rows, n = self._rows, len(self._rows)
        if self._odd or not n:
            return Batch.from_values(self.name, self.expanded, self.units(), starts, ends)
        cols = {}
        for j, node in enumerate(self._nodes):
            col = _column(rows if len(self._nodes) == 1 else list(map(itemgetter(j), rows)), node, n)
            if col is None:
                return Batch.from_values(self.name, self.expanded, self.units(), starts, ends)
            cols[node.path] = col
        return Batch(self.name, self.expanded, starts, ends, cols, validate=False)._checked_ranges()


_ODD = object()  # (a unit taken by frozen)
_F8 = np.dtype(np.float64)


def _column(values: Any, node: Any, n: int) -> np.ndarray | None:
    """``values`` as the column of ``node``'s ``n`` rows, cast safely as ``Batch.from_values`` casts a
    column; None if it cannot be (``Batch.from_values`` then makes the batch, or the error).  A native
    ``float64`` column of exact floats and ``numpy.float64`` values is packed by the compiled module (the
    bytes ``asarray`` makes); anything else goes through ``asarray`` and the safe-cast check."""
    if compiled.native is not None and node.dt == _F8 and type(values) is list:  # (exact floats and
        raw = compiled.native.pack(values, "d", np.float64)  # numpy.float64s: the bytes asarray makes, at once)
        if raw is not None and len(raw) == 8 * n:
            return np.frombuffer(raw, dtype=_F8)
    arr = np.asarray(values)
    if arr.dtype == object or arr.shape != (n,) or not np.can_cast(arr.dtype, node.dt, "safe"):
        return None
    return np.ascontiguousarray(arr, dtype=node.dt)
