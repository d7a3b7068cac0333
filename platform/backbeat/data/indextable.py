"""The columnar form of a view index, beside BEAT's JSON file: entries read window by window.

BEAT's index (``<entry>.db``, :mod:`backbeat.data.dbindex`) is one JSON array; reloading it
makes one Python object per entry (a million entries: ~370 MB in the database provider, and
1.4 s of parsing before the first unit is served).  The *index table* ``<entry>.db.table``
holds the same entries by field, so the provider maps the file and makes entry objects
only for the windows a view reads (:class:`Entries`, a lazy sequence a view's ``setup``
receives as ``objs``), and groups an output's data units from a column without making
any (:meth:`IndexTable.units`).

File (``backbeat-index-table/1``)::

    b"backbeat-index-table/1\\n", header length (uint64, little-endian), header (UTF-8 JSON),
    payload: the arrays, each starting at a multiple of 8 bytes

The header: ``source`` (sha256 of the ``.db`` bytes the table was made from: the index
digest that enters cache keys), ``entries``, ``fields`` (sorted, as BEAT's ``Entry``), each
``{"name", "kind", "arrays": {role: [offset, dtype, count]}}``, and ``digest``: the sha256
of the header without it (canonical JSON), a newline, and the payload.  A table is trusted
only when its digest holds and its ``source`` is the digest of the index the run keyed
(:func:`load_entries`); otherwise it is rebuilt from the JSON file.  Kinds: ``int``
(int64), ``float`` (float64), ``bool`` — values read back with ``tolist()`` are exactly what
``json.loads`` gives; ``str`` (``bytes`` UTF-8, ``offsets``); ``json`` (the JSON text of
each value: mixed types, lists, objects, null, integers beyond int64).

:func:`write_index` writes both files from a view's entries.  When every entry has the same
fields in the same order it serialises BEAT's bytes from the columns (byte-identical to
``simplejson``'s output, ~4x faster); otherwise it falls back to ``simplejson``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import os
import shutil
import tempfile
from collections import namedtuple
from collections.abc import Callable, Sequence
from functools import partial
from operator import itemgetter
from typing import Any

import numpy as np
import simplejson
from simplejson.encoder import encode_basestring_ascii

from backbeat.core import durable
from backbeat.core.errors import DataError, IntegrityError
from backbeat.data import compiled, dbindex, decimals
from backbeat.data.entries import Entries
from backbeat.data.indexfiles import TABLE as SUFFIX

MAGIC = b"backbeat-index-table/1\n"
CHUNK = 65536  # values compared at once when grouping non-numeric columns
NUMERIC = {"int": np.dtype("<i8"), "float": np.dtype("<f8"), "bool": np.dtype("?")}
_NULL = type(None)


def table_path(index_path: str | os.PathLike) -> str:
    """Where the table of the index at ``index_path`` lives."""
    return os.fspath(index_path) + SUFFIX


# -- columns from a view's entries ---------------------------------------------------------------

class Column:
    """One field: ``kind`` and its values (numpy array for numeric kinds, list of str otherwise;
    for ``json`` the JSON text of each value).  ``native``: made from values that reading the
    table gives back unchanged, of the same types (``int``, ``float``, ``bool``, ``str`` exactly,
    finite floats; not their subclasses, numpy scalars among them)."""

    __slots__ = ("kind", "values", "native")

    def __init__(self, kind: str, values: Any, native: bool = False):
        self.kind, self.values, self.native = kind, values, native

    def texts(self, a: int = 0, b: int | None = None) -> list[str]:
        """The JSON text of values ``a .. b-1``, as BEAT's file has it."""
        values = self.values[a:b]
        if self.kind in ("int", "float"):  # (a list's repr is its items' reprs, made in C: what simplejson writes)
            return repr(values.tolist())[1:-1].split(", ") if len(values) else []
        if self.kind == "bool":
            return list(map(("false", "true").__getitem__, values.tolist()))
        if self.kind == "str":
            return list(map(encode_basestring_ascii, values))
        return list(values)


def _text(v: Any) -> str | None:
    """JSON text of one value as simplejson writes it (None: a float it refuses, NaN or infinite)."""
    t = type(v)
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    if isinstance(v, float):  # float subclasses (numpy.float64) are written as floats
        return float.__repr__(v) if math.isfinite(v) else None
    if isinstance(v, str):
        return encode_basestring_ascii(v)
    if v is None:
        return "null"
    return simplejson.dumps(v, cls=dbindex.Encoder)


def _column(values: list) -> Column | None:
    """The column of one field's values (None: a value simplejson would refuse)."""
    packed = compiled.exact_numbers(values)  # (all exactly ints or floats: one pass, not two, with the module)
    if packed is not None and (packed[0] == "int" or np.isfinite(packed[1]).all()):
        return Column(*packed, True)
    types = given = set(map(type, values))
    if types and all(issubclass(t, np.generic) or t in (int, float, bool, str, _NULL) for t in types) and any(
            issubclass(t, np.generic) and t is not np.float64 for t in types):
        values = [v.tolist() if isinstance(v, np.generic) else v for v in values]  # simplejson's default()
        types = set(map(type, values))
    if types and types <= {int}:
        try:
            return Column("int", np.array(values, dtype=np.int64), given == {int})
        except OverflowError:
            pass
    elif types and types <= {float, np.float64}:
        arr = np.array(values, dtype=np.float64)
        return Column("float", arr, given == {float}) if np.isfinite(arr).all() else None
    elif types and types <= {bool}:
        return Column("bool", np.array(values, dtype=bool), given == {bool})
    elif types and types <= {str}:  # (a str subclass may print otherwise: simplejson writes its content)
        return Column("str", values, given == {str})
    texts = list(map(_text, values))
    return None if any(t is None for t in texts) else Column("json", texts)


def columns(entries: Sequence[Any], types: set[type] | None = None) -> tuple[list[str], dict[str, Column]] | None:
    """``(fields in the entries' order, {field: column})`` when every entry has the same fields in
    the same order (namedtuples of one type, or dicts with the same keys in the same order).
    ``types``: the entries' types, if the caller has them (a pass over 1M entries saved)."""
    if not entries:
        return None
    first = entries[0]
    kind = type(first)
    types = set(map(type, entries)) if types is None else types
    if kind is dict:
        fields = list(first)
        if not all(type(k) is str for k in fields) or types != {dict} or not all(
                map(fields.__eq__, map(list, entries))):
            return None
        cols = [list(map(itemgetter(k), entries)) for k in fields]
    elif isinstance(first, tuple) and hasattr(first, "_fields"):
        fields = list(first._fields)
        if types != {kind} or not _plain_namedtuple(kind):
            return None
        cols = compiled.fields(entries, kind, len(fields)) or [list(map(itemgetter(k), entries)) for k in range(len(fields))]
    else:
        return None
    out = {}
    for name, values in zip(fields, cols, strict=True):
        col = _column(values)
        if col is None:
            return None
        out[name] = col
    return fields, out


#: what simplejson's writing of a namedtuple goes through (``getattr(o, "_asdict")()``, which zips ``_fields``
#: with the tuple's iteration): a class that defines one of these may print otherwise than its columns
_PRINTING = frozenset({"_asdict", "_fields", "__iter__", "__getitem__", "__len__", "__getattribute__"})
_ASDICT = vars(namedtuple("_N", "a"))["_asdict"].__code__  # (namedtuple()'s own)


def _plain_namedtuple(kind: type) -> bool:
    """Whether entries of class ``kind`` print as simplejson prints namedtuple()'s own classes, so that
    their columns give its bytes: no instance dictionary (an entry's own ``_asdict`` would print), the
    class namedtuple() made found with its own ``_asdict`` and nothing between it and ``tuple`` (a
    mixin's iteration), and no class below it defining what the printing goes through (a subclass
    overriding ``__getitem__`` made the columns differ from BEAT's bytes; a ``typing.NamedTuple``'s
    methods are namedtuple()'s class's own).  False only costs speed: simplejson writes the file."""
    if kind.__dictoffset__:
        return False
    for i, cls in enumerate(kind.__mro__):
        own = vars(cls)
        if "_make" in own and "_fields" in own:  # (namedtuple()'s class)
            return (kind.__mro__[i + 1:] == (tuple, object)
                    and getattr(own.get("_asdict"), "__code__", None) is _ASDICT
                    and not (_PRINTING - {"_asdict", "_fields"}) & own.keys())
        if _PRINTING & own.keys():
            return False
    return False


def to_json(fields: list[str], cols: dict[str, Column], n: int) -> bytes:
    """BEAT's bytes of the index of ``n`` entries (``simplejson.dumps`` of the list of entries)."""
    if not fields or not n:
        return ("[" + ", ".join(["{}"] * n) + "]").encode("utf-8")
    keys = [encode_basestring_ascii(f) for f in fields]
    seps = [f", {k}: " for k in keys[1:]] + ["}, {" + keys[0] + ": "]  # what follows each field's value
    step = 2 * len(fields)
    out = [("[{" + keys[0] + ": ").encode()]
    only = cols[fields[0]] if len(fields) == 1 else None
    for a in range(0, n, CHUNK):  # by chunks: the pieces of one chunk at a time are objects
        m = min(CHUNK, n - a)
        if only is not None and only.kind == "int":  # one int a entry: the digits made in numpy
            out.append(decimals.texts(only.values[a:a + m], seps[-1].encode()))
            continue
        if only is not None and only.kind == "float":  # one float a entry: its list's repr, ", " replaced
            out.append((repr(only.values[a:a + m].tolist())[1:-1].replace(", ", seps[-1]) + seps[-1]).encode())
            continue
        parts: list = [None] * (step * m)  # each field's text then what follows it, entry by entry (slices: C code)
        for j, (f, sep) in enumerate(zip(fields, seps, strict=True)):
            parts[2 * j::step] = cols[f].texts(a, a + m)
            parts[2 * j + 1::step] = [sep] * m
        out.append("".join(parts).encode())
    out[-1] = out[-1][:-len(seps[-1])] + b"}]"
    return b"".join(out)


def _from_json(raw: bytes, where: str) -> tuple[int, dict[str, Column]]:
    """Columns of an index file's content (parsed as :func:`backbeat.data.dbindex.read_index` does)."""
    objs = dbindex.parse_index(raw, where)
    if not objs:
        return 0, {}
    out = {}
    for name in sorted(objs[0]):
        values = [o[name] for o in objs]
        col = _column(values)
        if col is None or (col.kind == "json"):  # stdlib texts of parsed values (exact round trip)
            col = Column("json", [json.dumps(v) for v in values])
        out[name] = col
    return len(objs), out


# -- the table file ------------------------------------------------------------------------------

def _payload(cols: dict[str, Column]) -> tuple[list[dict], list[bytes]]:
    fields, parts, offset = [], [], 0

    def add(arr: np.ndarray) -> list:
        nonlocal offset
        raw = arr.tobytes()
        pad = -len(raw) % 8
        parts.append(raw + b"\0" * pad)
        entry = [offset, arr.dtype.str, int(arr.size)]
        offset += len(raw) + pad
        return entry

    for name in sorted(cols):
        col = cols[name]
        if col.kind in NUMERIC:
            arrays = {"data": add(np.ascontiguousarray(col.values, dtype=NUMERIC[col.kind]))}
        else:
            enc = [s.encode("utf-8", "surrogatepass") for s in col.values]
            off = np.zeros(len(enc) + 1, dtype="<i8")
            np.cumsum(np.fromiter(map(len, enc), dtype=np.int64, count=len(enc)), out=off[1:])
            arrays = {"offsets": add(off), "bytes": add(np.frombuffer(b"".join(enc), dtype=np.uint8))}
        fields.append({"name": name, "kind": col.kind, "arrays": arrays})
    return fields, parts


def _digest(header: dict, payload: Any) -> str:
    h = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    h.update(payload)
    return h.hexdigest()


def _table_bytes(source: str, n: int, cols: dict[str, Column]) -> tuple[bytes, bytes]:
    """The table file's content: (magic, header length and header; payload)."""
    fields, parts = _payload(cols)
    payload = b"".join(parts)
    header: dict[str, Any] = {"source": source, "entries": n, "fields": fields}
    header["digest"] = _digest(header, payload)
    head = json.dumps(header).encode()
    return MAGIC + len(head).to_bytes(8, "little") + head, payload


def write_table(index_path: str | os.PathLike, source: str, n: int, cols: dict[str, Column],
                path: str | None = None, later: durable.Later | None = None) -> str:
    """Write the table of an index (atomically: temporary name, fsync, rename; ``later``: the last
    two left to it) beside it, or at ``path``; its path."""
    path = path or table_path(index_path)
    durable.write_atomic(path, _table_bytes(source, n, cols), later=later)
    return path


def memory_table(index_path: str | os.PathLike, n: int, cols: dict[str, Column]) -> IndexTable:
    """The table of entries not written yet, in memory (no ``source``): what reading the table
    :func:`write_columns` will write gives, for an indexing job to probe its view while it
    writes the files (:func:`backbeat.runtime.probe.probe`).  DataError if the fields are not
    valid attribute names (the provider will refuse the index)."""
    _check_names(sorted(cols), os.fspath(index_path))
    return IndexTable(index_path, b"".join(_table_bytes("", n, cols)))


def write_columns(index_path: str | os.PathLike, fields: list[str], cols: dict[str, Column], n: int,
                  later: durable.Later | None = None) -> dict:
    """Write the index of ``n`` entries given by their columns (:func:`columns`): BEAT's JSON file
    and its table; ``{"digest": index digest, "entries": n}``.  ``later``: the files only written
    under their temporary names, their fsync and rename left to it (an earlier table removed now)."""
    return _with_table(index_path, dbindex.write_index(index_path, to_json(fields, cols, n), later), n,
                       lambda: cols, later)


def _with_table(index_path: str | os.PathLike, digest: str, n: int, cols: Callable[[], dict[str, Column]],
                later: durable.Later | None = None) -> dict:
    """The table of the index just written (``digest``, ``n`` entries, columns ``cols()``) written
    beside it, an earlier one removed; ``{"digest": digest, "entries": n}``."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(table_path(index_path))  # (of an earlier index)
    try:
        found = cols()
        _check_names(sorted(found), os.fspath(index_path))
    except DataError:  # an index BEAT cannot reload either: reading it says why (in the provider)
        return {"digest": digest, "entries": n}
    write_table(index_path, digest, n, found, later=later)
    return {"digest": digest, "entries": n}


def index_columns(entries: Sequence[Any], types: set[type] | None = None) -> tuple[list[str], dict[str, Column]] | None:
    """:func:`columns` of a view's entries, None when simplejson must write them (several shapes,
    or a value JSON cannot hold: simplejson says which, as a DataError); DataError if the index
    is no list."""
    if not isinstance(entries, (list, tuple)):
        raise DataError(f"a view index must be a list, not {type(entries).__name__}")
    try:
        return columns(entries, types)
    except (TypeError, ValueError, IndexError):  # (IndexError: entries shorter than their _fields)
        return None


def write_index(index_path: str | os.PathLike, entries: Sequence[Any]) -> dict:
    """Write a view's entries: BEAT's JSON index (:func:`backbeat.data.dbindex.write_index`) and
    its table; ``{"digest": index digest, "entries": n}``."""
    found = index_columns(entries)
    if found is not None:
        return write_columns(index_path, *found, len(entries))
    # entries of several shapes: simplejson writes them, the table comes from the file

    def read_back() -> dict[str, Column]:
        with open(index_path, "rb") as f:
            return _from_json(f.read(), os.fspath(index_path))[1]

    return _with_table(index_path, dbindex.write_index(index_path, entries), len(entries), read_back)


def _check_names(names: list[str], where: str) -> type:
    try:
        return namedtuple("Entry", names)  # type: ignore[misc]
    except ValueError as exc:
        raise DataError(f"view index `{where}': entry keys are not valid attribute names: {exc}") from None


class IndexTable:
    """An opened, verified table (the file stays mapped while it is open; ``data``: the table's
    bytes, held in memory, instead of the file at ``path``)."""

    def __init__(self, path: str | os.PathLike, data: bytes | None = None):
        self.path = os.fspath(path)
        self._map: Any = None
        if data is None:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self._data = data
        try:
            self._open()
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            self.close()
            raise DataError(f"index table `{self.path}' is malformed: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        buf = self._data if self._data is not None else self._map if self._map is not None else b""
        if buf[:len(MAGIC)] != MAGIC:
            raise DataError(f"`{self.path}' is not an index table")
        at = len(MAGIC) + 8
        length = int.from_bytes(buf[len(MAGIC):at], "little")
        header = json.loads(bytes(buf[at:at + length]))
        payload = memoryview(buf)[at + length:]  # type: ignore[arg-type]
        digest = header.pop("digest")
        if _digest(header, payload) != digest:
            raise DataError(f"index table `{self.path}' does not match its digest")
        self.source: str = header["source"]
        self.n = int(header["entries"])
        self.kinds: dict[str, str] = {}
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        for field in header["fields"]:
            arrays = {}
            for role, (offset, dtype, count) in field["arrays"].items():
                dt = np.dtype(dtype)
                if offset < 0 or offset + count * dt.itemsize > len(payload):
                    raise DataError(f"index table `{self.path}': array out of bounds")
                arrays[role] = np.frombuffer(payload, dtype=dt, count=count, offset=offset)
            kind = field["kind"]
            if kind in NUMERIC:
                ok = arrays["data"].dtype == NUMERIC[kind] and arrays["data"].shape == (self.n,)
            else:
                off = arrays["offsets"]
                ok = (kind in ("str", "json") and off.shape == (self.n + 1,) and off[0] == 0
                      and off[-1] == arrays["bytes"].size and bool(np.all(off[1:] >= off[:-1])))
            if not ok:
                raise DataError(f"index table `{self.path}': field `{field['name']}' is malformed")
            self.kinds[field["name"]] = kind
            self._arrays[field["name"]] = arrays
        self.fields = sorted(self.kinds)
        self.entry = _check_names(self.fields, self.path)
        self._make = partial(tuple.__new__, self.entry)  # Entry._make without its (Python) length check

    def values(self, field: str, a: int, b: int) -> list:
        """The values of ``field`` for entries ``a .. b-1`` (what ``json.loads`` of the index gives)."""
        kind, arrays = self.kinds[field], self._arrays[field]
        if kind in NUMERIC:
            return arrays["data"][a:b].tolist()
        off = arrays["offsets"][a:b + 1].tolist()
        raw = arrays["bytes"][off[0]:off[-1]].tobytes() if off else b""
        base = off[0] if off else 0
        texts = [raw[off[i] - base:off[i + 1] - base].decode("utf-8", "surrogatepass") for i in range(len(off) - 1)]
        return texts if kind == "str" else [json.loads(t) for t in texts]

    def entries(self, a: int, b: int) -> list:
        """Entries ``a .. b-1`` as BEAT's ``Entry`` namedtuples."""
        if not self.fields:
            return [self.entry() for _ in range(a, b)]
        cols = [self.values(f, a, b) for f in self.fields]
        made = compiled.tuples(self.entry, tuple(cols)) if compiled.tuples is not None else None  # (the same tuples)
        return made if made is not None else list(map(self._make, zip(*cols, strict=True)))

    def units(self, field: str) -> tuple[np.ndarray, np.ndarray]:
        """The data units of an output whose values are ``field`` (:func:`dbindex.group_units`)."""
        if field not in self.kinds:
            raise DataError(f"view index entries have no attribute `{field}'")
        if self.kinds[field] in NUMERIC:
            return dbindex.group_units(self._arrays[field]["data"])
        change = np.empty(max(0, self.n - 1), dtype=bool)
        previous: list = []
        for a in range(0, self.n, CHUNK):
            chunk = previous + self.values(field, a, min(self.n, a + CHUNK))
            flags = dbindex.changes(chunk)
            change[a - len(previous):a - len(previous) + len(flags)] = flags
            previous = chunk[-1:]
        return dbindex.units_of(change, self.n)

    def close(self) -> None:
        self._arrays = {}
        self._data = None
        if self._map is not None:
            with contextlib.suppress(BufferError):  # arrays still viewing the map keep it alive
                self._map.close()
            self._map = None


def load_entries(index_path: str | os.PathLike, digest: str | None = None) -> Entries:
    """The entries of a view index through its table, made (again) from the JSON file when it is
    missing, damaged or of another index.  ``digest``: the index digest the run keyed (else the
    one recorded beside the index).  A table that cannot be written beside the index (a
    read-only cache) is made in a private temporary file, mapped, and removed at once.  Raises
    IntegrityError when the index itself does not match it (changed after the keys were
    computed), DataError when it cannot be read."""
    index_path = os.fspath(index_path)
    if not digest:
        try:
            with open(f"{index_path}.sha256", encoding="ascii") as f:
                digest = f.read().strip()
        except (OSError, UnicodeDecodeError):
            digest = None
    try:
        table = IndexTable(table_path(index_path))
        if digest and table.source == digest:
            return Entries(table)
        table.close()
    except (OSError, DataError):
        pass
    try:
        with open(index_path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read view index `{index_path}': {exc.strerror}") from None
    actual = hashlib.sha256(raw).hexdigest()
    if digest and actual != digest:
        raise IntegrityError(f"view index `{index_path}' changed after this run computed its cache keys: "
                             f"its data is not served; run the experiment again")
    n, cols = _from_json(raw, index_path)
    del raw
    try:
        return Entries(IndexTable(write_table(index_path, actual, n, cols)))
    except OSError:  # a cache this process may not write (a sandboxed provider, read-only storage)
        pass
    folder = tempfile.mkdtemp(prefix="backbeat-index-")  # a private table, mapped, then unlinked
    try:
        return Entries(IndexTable(write_table(index_path, actual, n, cols, os.path.join(folder, "index.table"))))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
