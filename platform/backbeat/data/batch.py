"""Columnar batches: N data units of one dataformat as one numpy array per leaf field.

A dataformat is flattened into a tree of nodes (:func:`tree`) and a flat list of columns
(:func:`layout`).  Node kinds and their columns (``p`` is the node's path; fields are joined
with ``.``, field names never contain ``.#[]``):

* ``num`` (numeric scalar, or numeric array whose dims are all fixed): column ``p`` of shape
  ``(rows, *dims)`` and the field's dtype;
* ``str`` (a string): ``p#bytes`` (uint8, all UTF-8 bytes concatenated) and ``p#offsets``
  (int64, ``rows + 1`` entries, first 0, last = number of bytes);
* ``list`` (an array with a variable dimension, or of strings, or of objects): ``p#shape`` (int64,
  ``(rows, ndim)``: each value's actual shape), ``p#offsets`` (int64, ``rows + 1``: cumulative element
  counts) and the child node ``p[]`` holding all elements (row-major) of all rows;
* ``struct`` (an object): its fields' nodes, over the same rows.

The rows of the top node are the data units; a ``list`` node's child has one row per element.
``starts``/``ends`` (int64) give each unit's inclusive data-index range; units are contiguous
(``starts[i+1] == ends[i] + 1``).  Conversion values ↔ batch is exact (dtype, shape, strings).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from backbeat.core.errors import DataError
from backbeat.data.casting import stack_rows
from backbeat.data.compiled import fill as _fill
from backbeat.data.recycling import objects
from backbeat.data.values import (
    NUMERIC,
    BaseValue,
    as_value,
    canonical,
    nested_type,
    object_array,
    value_type,
)

I64 = np.dtype("<i8")
U8 = np.dtype("u1")


@dataclass(frozen=True)
class Node:
    """One node of a dataformat's column tree (see module docstring)."""

    kind: str  # "num" | "str" | "list" | "struct"
    path: str
    dtype: np.dtype | None = None  # num
    dims: tuple[int, ...] = ()  # num: fixed trailing dims; list: declared dims (0 = variable)
    child: Node | None = None  # list
    fields: tuple[tuple[str, Node], ...] = ()  # struct
    cls: Any = None  # struct: value class; list: element (dtype, str or value class)

    @property
    def item(self) -> Node:
        """A list node's element node."""
        if self.child is None:
            raise DataError(f"field `{self.path}' is not a list")
        return self.child

    @property
    def dt(self) -> np.dtype:
        """A numeric node's dtype."""
        if self.dtype is None:
            raise DataError(f"field `{self.path}' is not numeric")
        return self.dtype


@dataclass(frozen=True)
class Column:
    """One array of a batch: ``rows`` is the path of the list node counting its rows (``""`` = units)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # trailing shape per row
    role: str  # "data" | "bytes" | "offsets" | "shape"
    rows: str
    ragged: bool


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _build(name: str, path: str, spec: Any) -> Node:
    if isinstance(spec, dict):
        cls = value_type(name, spec) if not path else nested_type(name, spec)
        fields = tuple((k, _build(f"{name}.{k}", _join(path, k), spec[k])) for k in cls._fields)
        return Node("struct", path, fields=fields, cls=cls)
    if isinstance(spec, list):
        dims, elem = tuple(spec[:-1]), spec[-1]
        if isinstance(elem, str) and elem in NUMERIC and all(dims):
            return Node("num", path, dtype=np.dtype(elem).newbyteorder("<"), dims=dims)
        child = _build(name, path + "[]", elem)
        ecls = child.cls if child.kind == "struct" else (str if child.kind == "str" else child.dt)
        return Node("list", path, dims=dims, child=child, cls=ecls)
    if spec == "string":
        return Node("str", path)
    if spec in NUMERIC:
        return Node("num", path, dtype=np.dtype(spec).newbyteorder("<"))
    raise DataError(f"dataformat `{name}': unknown type `{spec}'")


@lru_cache(maxsize=1024)
def _tree(name: str, canon: str) -> Node:
    import json

    return _build(name, "", json.loads(canon))


def tree(name: str, expanded: dict) -> Node:
    """The column tree of a dataformat (memoised)."""
    return _tree(name, canonical(expanded))


def _columns(node: Node, rows: str, out: list[Column]) -> None:
    p = node.path
    if node.kind == "num":
        out.append(Column(p, node.dt, node.dims, "data", rows, False))
    elif node.kind == "str":
        out.append(Column(p + "#bytes", U8, (), "bytes", p, True))
        out.append(Column(p + "#offsets", I64, (), "offsets", rows, False))
    elif node.kind == "list":
        out.append(Column(p + "#shape", I64, (len(node.dims),), "shape", rows, False))
        out.append(Column(p + "#offsets", I64, (), "offsets", rows, False))
        _columns(node.item, p, out)
    else:
        for _, sub in node.fields:
            _columns(sub, rows, out)


@lru_cache(maxsize=1024)
def _layout(name: str, canon: str) -> tuple[Column, ...]:
    out: list[Column] = []
    _columns(_tree(name, canon), "", out)
    return tuple(sorted(out, key=lambda c: c.name))


def layout(expanded: dict, name: str = "?") -> tuple[Column, ...]:
    """The columns of a dataformat, sorted by name (the order used by files, digests and the wire)."""
    return _layout(name, canonical(expanded))


def row_bytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    """Bytes of one row of an array of ``dtype`` whose rows have ``shape`` (at least 1)."""
    return max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)


def unit_bytes(expanded: dict, name: str = "?") -> int:
    """Bytes of one unit in a batch: its unit-level columns and its range (16), not counting what
    variable-length fields hold beyond their offsets and shapes."""
    return _unit_bytes(name, canonical(expanded))


@lru_cache(maxsize=1024)
def _unit_bytes(name: str, canon: str) -> int:  # (asked for several times by every block process)
    return 16 + sum(row_bytes(c.dtype, c.shape) for c in _layout(name, canon) if c.rows == "")


def units_within(expanded: dict, name: str, limit: int, budget: int) -> int:
    """At most ``limit`` units, and no more than ``budget`` bytes of them (at least one)."""
    return int(max(1, min(limit, budget // unit_bytes(expanded, name))))


# -- values -> columns ---------------------------------------------------------------------------

def _encode_strings(items: Sequence[Any], path: str, out: dict) -> None:
    try:
        enc = [s.encode("utf-8") for s in items]
    except UnicodeEncodeError as exc:
        raise DataError(f"field `{path}': string is not encodable as UTF-8: {exc}") from None
    offsets = np.zeros(len(enc) + 1, dtype=I64)
    if enc:
        np.cumsum(np.fromiter(map(len, enc), dtype=I64, count=len(enc)), out=offsets[1:])
    out[path + "#offsets"] = offsets
    out[path + "#bytes"] = np.frombuffer(b"".join(enc), dtype=U8)


def _gather(node: Node, items: Sequence[Any], out: dict) -> None:
    p, n = node.path, len(items)
    if node.kind == "num":
        if not node.dims:
            out[p] = np.fromiter(items, dtype=node.dt, count=n)
        elif n:
            out[p] = stack_rows(items, node.dt, node.dims)
        else:
            out[p] = np.empty((0, *node.dims), dtype=node.dt)
    elif node.kind == "str":
        _encode_strings(items, p, out)
    elif node.kind == "list":
        nd = len(node.dims)
        shapes = np.array([a.shape for a in items], dtype=I64).reshape(n, nd)
        offsets = np.zeros(n + 1, dtype=I64)
        np.cumsum(np.prod(shapes, axis=1), out=offsets[1:])
        out[p + "#shape"] = shapes
        out[p + "#offsets"] = offsets
        child = node.item
        if child.kind == "num":
            flat = [np.asarray(a).reshape(-1) for a in items]
            out[child.path] = (np.concatenate(flat).astype(child.dt, copy=False) if flat
                               else np.empty(0, dtype=child.dt))
        else:
            _gather(child, list(chain.from_iterable(a.reshape(-1).tolist() for a in items)), out)
    else:
        for key, sub in node.fields:
            _gather(sub, list(map(attrgetter(key), items)), out)


def _from_numeric_dicts(root: Node, values: Sequence[Any], types: set) -> dict | None:
    """Fast path: dicts for a format of numeric fields only, converted field by field.

    Gives the same columns as converting each dict (safe casting, exact field set), or
    ``None`` when any value needs the per-unit path (objects, other keys, a cast that is
    not safe for the whole column — the per-unit path then applies BEAT's rules exactly).
    """
    if root.kind != "struct" or not values or not all(sub.kind == "num" for _k, sub in root.fields):
        return None
    # exactly the declared keys: dicts all of that many keys, each of which has every declared one
    # (checked by C-level loops: the database provider converts every unit a view returns)
    if types != {dict} or set(map(len, values)) != {len(root.fields)}:
        return None
    cols = {}
    for key, sub in root.fields:
        try:
            arr = np.asarray(list(map(itemgetter(key), values)))
        except (ValueError, TypeError, KeyError):
            return None
        if (arr.dtype == object or arr.shape != (len(values), *sub.dims)
                or not np.can_cast(arr.dtype, sub.dt, "safe")):
            return None
        cols[sub.path] = np.ascontiguousarray(arr, dtype=sub.dt)
    return cols


# -- columns -> values ---------------------------------------------------------------------------

def _scatter(node: Node, cols: dict, n: int, private: bool = False, spare: list | None = None) -> list:
    """The values of ``n`` rows of ``node``; numeric arrays view ``cols`` if ``private``, else copies."""
    p = node.path
    if node.kind == "num":
        col = cols[p]
        return list(col) if not node.dims or private else list(np.array(col))
    if node.kind == "str":
        raw = cols[p + "#bytes"].tobytes()
        off = cols[p + "#offsets"].tolist()
        try:
            return [raw[off[i]:off[i + 1]].decode("utf-8") for i in range(n)]
        except UnicodeDecodeError as exc:
            raise DataError(f"field `{p}': invalid UTF-8 data: {exc}") from None
    if node.kind == "list":
        shapes = [tuple(s) for s in cols[p + "#shape"].tolist()]
        off = cols[p + "#offsets"].tolist()
        child = node.item
        total = off[-1] if off else 0
        if child.kind == "num":
            flat = cols[child.path] if private else np.array(cols[child.path])
            return [flat[off[i]:off[i + 1]].reshape(shapes[i]) for i in range(n)]
        elems = _scatter(child, cols, total, private)
        if child.kind == "str":
            res = []
            for i in range(n):
                arr = np.empty(off[i + 1] - off[i], dtype=object)
                arr[:] = elems[off[i]:off[i + 1]]
                res.append(arr.reshape(shapes[i]))
            return res
        return [object_array(child.cls, shapes[i], elems[off[i]:off[i + 1]]) for i in range(n)]
    out = objects(node.cls, n, spare)
    for key, sub in node.fields:  # every field of each object (reused ones too), without the checked __setattr__
        _fill(out, key, _scatter(sub, cols, n, private))
    return out


# -- slicing and checks ----------------------------------------------------------------------------

def take(node: Node, get: Callable[[str], Any], a: int, b: int, out: dict) -> None:
    """Copy rows ``[a, b)`` of ``node`` from array-likes ``get(name)`` (numpy or h5py) into ``out``.

    Offsets read from the source may have any base; the copies start at 0.
    """
    p = node.path
    if node.kind == "num":
        out[p] = np.asarray(get(p)[a:b])
    elif node.kind == "str":
        off = np.asarray(get(p + "#offsets")[a:b + 1], dtype=I64)
        out[p + "#offsets"] = off - off[0]
        out[p + "#bytes"] = np.asarray(get(p + "#bytes")[int(off[0]):int(off[-1])])
    elif node.kind == "list":
        out[p + "#shape"] = np.asarray(get(p + "#shape")[a:b])
        off = np.asarray(get(p + "#offsets")[a:b + 1], dtype=I64)
        out[p + "#offsets"] = off - off[0]
        take(node.item, get, int(off[0]), int(off[-1]), out)
    else:
        for _, sub in node.fields:
            take(sub, get, a, b, out)


def _check_offsets(off: np.ndarray, n: int, total: int, name: str) -> None:
    if off.shape != (n + 1,):
        raise DataError(f"column `{name}': expected {n + 1} offsets, got shape {off.shape}")
    if off[0] != 0 or off[-1] != total or (n and np.any(off[1:] < off[:-1])):
        raise DataError(f"column `{name}': offsets are not a valid partition of {total} entries")


def check(node: Node, cols: dict, n: int) -> None:
    """Verify that ``cols`` hold ``n`` rows of ``node`` (dtypes, shapes, offsets); raise DataError."""
    p = node.path
    if node.kind == "num":
        col = _col(cols, p, node.dt)
        if col.shape != (n, *node.dims):
            raise DataError(f"column `{p}': expected shape {(n, *node.dims)}, got {col.shape}")
        if col.dtype == np.bool_ and col.size and col.view(U8).max() > 1:
            raise DataError(f"column `{p}': boolean bytes other than 0 and 1")
    elif node.kind == "str":
        data = _col(cols, p + "#bytes", U8)
        if data.ndim != 1:
            raise DataError(f"column `{p}#bytes': must be one-dimensional")
        _check_offsets(_col(cols, p + "#offsets", I64), n, data.shape[0], p + "#offsets")
    elif node.kind == "list":
        nd = len(node.dims)
        shapes = _col(cols, p + "#shape", I64)
        if shapes.shape != (n, nd):
            raise DataError(f"column `{p}#shape': expected shape {(n, nd)}, got {shapes.shape}")
        if n and np.any(shapes < 0):
            raise DataError(f"column `{p}#shape': negative dimension")
        for i, d in enumerate(node.dims):
            if d and n and np.any(shapes[:, i] != d):
                raise DataError(f"column `{p}#shape': dimension {i} must be {d}")
        off = _col(cols, p + "#offsets", I64)
        expect = np.zeros(n + 1, dtype=I64)
        if n:
            np.cumsum(np.prod(shapes, axis=1), out=expect[1:])
        if off.shape != (n + 1,) or not np.array_equal(off, expect):
            raise DataError(f"column `{p}#offsets': inconsistent with `{p}#shape'")
        check(node.item, cols, int(expect[-1]))
    else:
        for _, sub in node.fields:
            check(sub, cols, n)


def _col(cols: dict, name: str, dtype: np.dtype) -> np.ndarray:
    col = cols.get(name)
    if col is None:
        raise DataError(f"column `{name}' is missing")
    if not isinstance(col, np.ndarray) or col.dtype != dtype:
        raise DataError(f"column `{name}': expected dtype {dtype.str}, got {getattr(col, 'dtype', type(col))}")
    return col


def check_ranges(starts: np.ndarray, ends: np.ndarray) -> None:
    """Units must satisfy ``start <= end`` and be contiguous."""
    if starts.shape != ends.shape or starts.ndim != 1:
        raise DataError("starts/ends must be one-dimensional arrays of equal length")
    if np.any(starts > ends):
        raise DataError("a data unit has start > end")
    if starts.size > 1 and np.any(starts[1:] != ends[:-1] + 1):
        raise DataError("data units are not contiguous (start of a unit != end of the previous + 1)")


class Batch:
    """N data units of dataformat ``name``: ``starts``, ``ends`` and ``columns`` (see module docstring)."""

    __slots__ = ("name", "expanded", "starts", "ends", "columns", "tree", "private")

    def __init__(self, name: str, expanded: dict, starts: Any, ends: Any, columns: dict,
                 validate: bool = True) -> None:
        self.name = name
        self.expanded = expanded
        self.tree = tree(name, expanded)
        self.starts = np.ascontiguousarray(starts, dtype=I64).reshape(-1)
        self.ends = np.ascontiguousarray(ends, dtype=I64).reshape(-1)
        self.columns = columns
        #: writable columns nothing else reads (a received message, arrays read afresh from a file)
        self.private = False
        if validate:
            check_ranges(self.starts, self.ends)
            check(self.tree, columns, len(self.starts))
            extra = set(columns) - {c.name for c in layout(expanded, name)}
            if extra:
                raise DataError(f"unexpected columns for dataformat `{name}': {', '.join(sorted(extra))}")

    # construction ------------------------------------------------------------------------------
    @classmethod
    def from_values(cls, name: str, expanded: dict, values: Sequence[Any], starts: Any = None,
                    ends: Any = None) -> Batch:
        """Batch of ``values`` (instances, or dicts converted with safe casting and no defaults).

        Without ``starts``/``ends`` the units are ``0..n-1`` (one data index each).
        """
        root = tree(name, expanded)
        types = set(map(type, values))  # (the values' types, once: a C-level pass over them)
        cols = _from_numeric_dicts(root, values, types)
        if cols is None:
            vcls = value_type(name, expanded)
            items = values if types == {vcls} else [
                v if isinstance(v, vcls) else as_value(vcls, v) for v in values]
            cols = {}
            _gather(root, items, cols)
        n = len(values)
        if starts is None:
            starts = np.arange(n, dtype=I64)
        if ends is None:
            ends = starts
        return cls(name, expanded, starts, ends, cols, validate=False)._checked_ranges()

    @classmethod
    def from_columns(cls, name: str, expanded: dict, columns: dict, starts: Any, ends: Any) -> Batch:
        """Fast path from numpy columns named as in :func:`layout`.

        Numeric columns are converted to the declared dtype; a string leaf may also be given as one
        sequence of ``str`` under its plain path.  Everything is validated.
        """
        cols: dict = {}
        for col in layout(expanded, name):
            base = col.name.split("#")[0]
            if col.role == "bytes" and col.name not in columns and base in columns:
                _encode_strings([str(s) for s in columns[base]], base, cols)
            elif col.name in columns and col.name not in cols:
                cols[col.name] = np.ascontiguousarray(columns[col.name], dtype=col.dtype)
        return cls(name, expanded, starts, ends, cols)

    @classmethod
    def empty(cls, name: str, expanded: dict) -> Batch:
        return cls.from_values(name, expanded, [])

    def _checked_ranges(self) -> Batch:
        check_ranges(self.starts, self.ends)
        return self

    # access --------------------------------------------------------------------------------------
    @property
    def type(self) -> type:
        return value_type(self.name, self.expanded)

    def __len__(self) -> int:
        return len(self.starts)

    def to_values(self, spare: list | None = None) -> list[BaseValue]:
        """The units' values (viewing a :attr:`private` batch's columns the first time only); ``spare``: see recycling."""
        private, self.private = self.private, False
        return _scatter(self.tree, self.columns, len(self.starts), private, spare)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step != 1:
                raise DataError("batch slices must have step 1")
            return self.slice(a, b)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"unit {i} out of range (batch of {n})")
        return self.slice(i, i + 1).to_values()[0]

    def slice(self, i: int, j: int) -> Batch:
        """Units ``i .. j-1`` as a new batch (copies only what is needed)."""
        n = len(self)
        i, j = max(0, min(i, n)), max(0, min(j, n))
        j = max(i, j)
        out: dict = {}
        take(self.tree, self.columns.__getitem__, i, j, out)
        return Batch(self.name, self.expanded, self.starts[i:j], self.ends[i:j], out, validate=False)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.columns.values()) + self.starts.nbytes + self.ends.nbytes

    def equals(self, other: Batch) -> bool:
        """Exact equality (name, ranges and every column's bytes)."""
        if self.name != other.name or canonical(self.expanded) != canonical(other.expanded):
            return False
        if not (np.array_equal(self.starts, other.starts) and np.array_equal(self.ends, other.ends)):
            return False
        return self.columns.keys() == other.columns.keys() and all(
            self.columns[k].shape == other.columns[k].shape
            and self.columns[k].tobytes() == other.columns[k].tobytes() for k in self.columns
        )

    def __repr__(self) -> str:
        rng = f"{self.starts[0]}..{self.ends[-1]}" if len(self) else "empty"
        return f"<Batch {self.name} units={len(self)} range={rng}>"


def concat(batches: Iterable[Batch]) -> Batch:
    """Concatenate batches of one dataformat (their ranges must follow each other)."""
    batches = list(batches)
    if not batches:
        raise DataError("concat() needs at least one batch")
    first = batches[0]
    canon = canonical(first.expanded)
    for b in batches[1:]:
        if b.name != first.name or canonical(b.expanded) != canon:
            raise DataError(f"cannot concatenate batches of `{first.name}' and `{b.name}'")
    if len(batches) == 1:
        return first
    cols: dict = {}
    for col in layout(first.expanded, first.name):
        parts = [b.columns[col.name] for b in batches]
        if col.role == "offsets":
            rebased, base = [parts[0]], int(parts[0][-1])
            for part in parts[1:]:
                rebased.append(part[1:] + base)
                base += int(part[-1])
            cols[col.name] = np.concatenate(rebased)
        else:
            cols[col.name] = np.concatenate(parts)
    starts = np.concatenate([b.starts for b in batches])
    ends = np.concatenate([b.ends for b in batches])
    return Batch(first.name, first.expanded, starts, ends, cols, validate=False)._checked_ranges()
