"""Database view index files (spec §2.5) and grouping of equal consecutive values into data units (§5.5).

BEAT stores a view's index (the list returned by ``View.index``) as a JSON array of objects in
``<cache>/<hash>.db`` (simplejson, numpy values as lists/numbers, UTF-8), and reloads each entry as a
namedtuple ``Entry`` whose fields are the *sorted* keys of the first entry.  We keep exactly that
format so BEAT caches stay readable, and write it atomically (temporary name, fsync, rename).

A database output's data units group consecutive entries whose mapped attribute is equal
(:func:`group_units`): e.g. labels ``a a b b b`` give units ``[0, 1]`` and ``[2, 4]``.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
from collections import namedtuple
from collections.abc import Sequence
from functools import partial
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import simplejson

from backbeat.core import durable
from backbeat.core.errors import DataError
from backbeat.core.hashing import hash_file_contents


class Encoder(simplejson.JSONEncoder):
    """simplejson's encoder as BEAT configures it: numpy arrays and scalars become lists and numbers."""

    def default(self, obj: Any) -> Any:
        if isinstance(obj, (np.ndarray, np.generic)):
            return obj.tolist()
        if isinstance(obj, np.dtype):
            return "string" if obj.name == "str" else obj.name
        return super().default(obj)


def dumps_index(entries: Sequence[Any]) -> bytes:
    """BEAT's serialisation of a view index (namedtuples become objects)."""
    return simplejson.dumps(list(entries), cls=Encoder).encode("utf-8")


def write_index(path: str | os.PathLike, entries: Sequence[Any] | bytes, later: durable.Later | None = None) -> str:
    """Write ``entries`` (dicts or namedtuples) as a JSON array, atomically.

    BEAT's format (a JSON array of objects), plus ``<path>.sha256``: the digest of the
    content, written first, so that a damaged index is recognised (:func:`verified_digest`).
    ``entries`` may also be the file's bytes, already serialised (:mod:`backbeat.data.indextable`).
    Returns that digest.  ``later``: both files only written under their temporary names, their
    fsync and rename (in that order) left to it (:class:`backbeat.core.durable.Later`).
    """
    if isinstance(entries, bytes):
        data = entries
    elif not isinstance(entries, (list, tuple)):
        raise DataError(f"a view index must be a list, not {type(entries).__name__}")
    else:
        try:
            data = dumps_index(entries)
        except (TypeError, ValueError) as exc:
            raise DataError(f"view index cannot be written as JSON: {exc}") from None
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = durable.temporary_name(path)
    digest = hashlib.sha256(data).hexdigest()
    # the digest first: an index never lacks it (its temporary is named after the index's, so that
    # what a killed writer leaves of either is found as the index's temporaries)
    durable.write_atomic(f"{path}.sha256", digest.encode(), tmp=f"{tmp}.sha256", later=later)
    durable.write_atomic(path, data, tmp=tmp, sync_folder=True, later=later)
    return digest


def read_index(path: str | os.PathLike) -> list[Any]:
    """Reload a view index as BEAT does: namedtuples ``Entry`` with the sorted keys of the first entry."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read view index `{path}': {exc.strerror}") from None
    objs = parse_index(raw, path)
    if not objs:
        return []
    keys = sorted(objs[0])
    entry = namedtuple("Entry", keys)  # type: ignore[misc]  # (names checked by parse_index)
    if not keys:
        return [entry() for _ in objs]
    fields = map(itemgetter(*keys), objs)
    return list(map(entry._make, fields if len(keys) > 1 else zip(fields)))


def parse_index(raw: bytes, path: str) -> list[dict]:
    """The entries of an index file's content as dicts, checked: every entry an object with the
    same keys, valid as attribute names (BEAT's ``Entry`` namedtuple)."""
    try:  # the C parser: an index is data (no duplicate-key check), as BEAT's simplejson.load
        objs = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise DataError(f"view index `{path}': invalid JSON: {exc}") from None
    if not isinstance(objs, list) or not all(type(o) is dict for o in objs):
        raise DataError(f"view index `{path}' must be a JSON array of objects")
    if not objs:
        return objs
    keys = sorted(objs[0])
    try:
        namedtuple("Entry", keys)  # type: ignore[misc]
    except ValueError as exc:
        raise DataError(f"view index `{path}': entry keys are not valid attribute names: {exc}") from None
    keyset = objs[0].keys()
    for i, o in enumerate(objs):
        if o.keys() != keyset:
            raise DataError(f"view index `{path}': entry {i} has keys {sorted(o)}, expected {keys}")
    return objs


def _differ(a: Any, b: Any) -> bool:
    """``a != b`` as BEAT decides where units end, for values whose ``!=`` is no truth value
    (numpy arrays, lists of them): then by content, as simplejson writes them."""
    try:
        return bool(a != b)
    except (ValueError, TypeError):
        key = partial(simplejson.dumps, cls=Encoder, sort_keys=True)
        return bool(key(a) != key(b))


def group_units(values: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group consecutive equal values; return int64 ``(starts, ends)`` (inclusive) of each unit.

    Neighbours are compared with Python's ``!=``, as BEAT does (``1 == 1.0 == True``, ``[1] == [1.0]``);
    values whose ``!=`` is no truth value (numpy arrays) by content.
    """
    n = len(values)
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return units_of(changes(values), n)


def changes(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """``n - 1`` booleans: whether each value differs from the one before it (see :func:`group_units`)."""
    n = len(values)
    if n < 2:
        return np.zeros(0, dtype=bool)
    if isinstance(values, np.ndarray) and values.ndim > 1:
        flat = values.reshape(n, -1)
        return np.any(flat[1:] != flat[:-1], axis=1)
    if isinstance(values, np.ndarray) and values.dtype != object:
        return np.asarray(values[1:] != values[:-1], dtype=bool)
    # Python's != between neighbours, as BEAT (1 == 1.0 == True, [1] == [1.0]): each pair on its
    # own, so the answer never depends on the other values (nor on how they are chunked)
    seq = values if isinstance(values, (list, tuple)) else list(values)
    try:
        return np.fromiter(map(operator.ne, islice(seq, 1, None), seq), dtype=bool, count=n - 1)
    except (ValueError, TypeError):  # a != that is no truth value (an array): pair by pair
        return np.fromiter(map(_differ, islice(seq, 1, None), seq), dtype=bool, count=n - 1)


def units_of(change: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive ``(starts, ends)`` of the units of ``n`` values whose changes are ``change``."""
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    at = np.flatnonzero(change)  # (into arrays made once: 1M units ~2x faster than concatenated and cast)
    starts = np.empty(len(at) + 1, dtype=np.int64)
    starts[0] = 0
    np.add(at, 1, out=starts[1:])
    ends = np.empty_like(starts)
    np.subtract(starts[1:], 1, out=ends[:-1])
    ends[-1] = n - 1
    return starts, ends


def output_units(entries: Sequence[Any], attribute: str) -> tuple[np.ndarray, np.ndarray]:
    """Data units of a database output whose value is ``getattr(entry, attribute)``."""
    try:
        values = [getattr(e, attribute) if not isinstance(e, dict) else e[attribute] for e in entries]
    except (AttributeError, KeyError):
        raise DataError(f"view index entries have no attribute `{attribute}'") from None
    return group_units(values)


def index_digest(path: str | os.PathLike) -> str:
    """sha256 of an index file's bytes: the index content digest that enters cache keys."""
    return hash_file_contents(Path(path))


def verified_digest(path: str | os.PathLike) -> str | None:
    """The index's content digest if it matches the one recorded when it was written, else None."""
    try:
        recorded = Path(f"{os.fspath(path)}.sha256").read_text().strip()
    except OSError:
        return None
    digest = index_digest(path)
    return digest if digest == recorded else None
