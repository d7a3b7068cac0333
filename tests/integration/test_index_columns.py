"""A view index's columns made by the compiled module (wave 16): the indexing job's work before its probe
can start — the entries' class checked, each field's values taken and packed in C passes — and what the
Python code makes of the same entries, compared column by column and byte for byte with BEAT's file."""

from __future__ import annotations

import collections
import gc
import hashlib
import json
import sys
import typing

import numpy as np
import pytest

from backbeat.data import compiled, dbindex, indextable

needs_native = pytest.mark.skipif(compiled.native is None, reason="the compiled module is not built here")

E = collections.namedtuple("E", ["a", "b"])
Ix = collections.namedtuple("Ix", ["index"])
Other = collections.namedtuple("Other", ["a", "b"])
Other1 = collections.namedtuple("Other1", ["index"])
No = collections.namedtuple("No", [])


class IntLike(int):
    pass


class Sub(E):
    """A namedtuple subclass that changes nothing simplejson prints through: its columns are taken."""


class TimesTen(E):
    """Reading an item is not what simplejson prints (it goes through ``_asdict``, the tuple's iteration)."""

    def __getitem__(self, k):
        return tuple.__getitem__(self, k) * 10


class OwnDict(E):
    def _asdict(self):
        return {"b": self.b, "a": self.a}


class Backwards(E):
    def __iter__(self):
        return reversed(tuple(tuple.__iter__(self)))


class MoreFields(E):
    _fields = ("a", "b", "c")


class Slotted(E):
    """No instance dictionary, nothing of the printing changed: its columns are taken."""

    __slots__ = ()


class Typed(typing.NamedTuple):
    a: int
    b: int


class TypedIter(typing.NamedTuple):
    a: int
    b: int

    def __iter__(self):  # (copied into namedtuple()'s own class by typing)
        return reversed(tuple(tuple.__iter__(self)))


class RevMix(tuple):
    __slots__ = ()

    def __iter__(self):
        return reversed(tuple(tuple.__iter__(self)))


class Below(E, RevMix):  # (the mixin's iteration after namedtuple()'s class in the MRO)
    __slots__ = ()


class Looked(E):
    __slots__ = ()

    def __getattribute__(self, name):
        if name == "_asdict":
            return lambda: {"b": tuple.__getitem__(self, 1)}
        return super().__getattribute__(name)


class FloatLike(float):
    pass


CASES = {
    "ints": [Ix(i) for i in range(3000)] + [Ix(v) for v in (0, -1, 2**63 - 1, -(2**63))],
    "an int beyond int64": [Ix(1), Ix(2**63)],
    "a bool among ints": [Ix(1), Ix(True)],
    "a numpy int among ints": [Ix(1), Ix(np.int64(2))],
    "an int subclass": [Ix(1), Ix(IntLike(2))],
    "floats": [Ix(i * 0.25) for i in range(3000)] + [Ix(-0.0), Ix(1e308), Ix(5e-324)],
    "a nan": [Ix(1.0), Ix(float("nan"))],
    "an infinity": [Ix(1.0), Ix(float("-inf"))],
    "a numpy float among floats": [Ix(1.0), Ix(np.float64(2.5))],
    "a float subclass": [Ix(1.0), Ix(FloatLike(2.5))],
    "an int among floats": [Ix(1.0), Ix(2)],
    "a float among ints": [Ix(1), Ix(2.0)],
    "two fields": [E(i, "s%d" % i) for i in range(100)],
    "ints and floats": [E(i, i / 3) for i in range(100)],
    "two classes": [E(1, 2), Other(3, 4)],
    "a namedtuple of another size": [E(1, 2), tuple.__new__(E, (3,))],
    "a namedtuple of more items": [E(1, 2), tuple.__new__(E, (3, 4, 5))],
    "no fields": [No(), No()],
    "dicts": [{"a": 1, "b": 2.5}, {"a": 2, "b": 3.5}],
    "a tuple of entries": tuple(Ix(i) for i in range(10)),
    "a namedtuple subclass": [Sub(i, i + 1) for i in range(10)],
    "a subclass reading items otherwise": [TimesTen(i, i + 1) for i in range(10)],
    "a subclass with its own _asdict": [OwnDict(i, i + 1) for i in range(10)],
    "a subclass iterating otherwise": [Backwards(i, i + 1) for i in range(10)],
    "a subclass with more _fields than items": [MoreFields(i, i + 1) for i in range(10)],
    "a subclass without a dict": [Slotted(i, i + 1) for i in range(10)],
    "a typing.NamedTuple": [Typed(i, i + 1) for i in range(10)],
    "a typing.NamedTuple iterating otherwise": [TypedIter(i, i + 1) for i in range(10)],
    "a tuple mixin iterating otherwise": [Below(i, i + 1) for i in range(10)],
    "a subclass looking _asdict up otherwise": [Looked(i, i + 1) for i in range(10)],
}


def _columns(entries):
    try:
        return indextable.index_columns(entries, compiled.types_of(entries))
    except Exception as exc:  # noqa: BLE001 - a failure must be the same on both paths
        return type(exc)


def _same_columns(a, b) -> bool:
    if a is None or b is None or isinstance(a, type) or isinstance(b, type):
        return a == b
    if a[0] != b[0] or sorted(a[1]) != sorted(b[1]):
        return False
    for name, x in a[1].items():
        y = b[1][name]
        if (x.kind, x.native) != (y.kind, y.native) or type(x.values) is not type(y.values):
            return False
        if isinstance(x.values, np.ndarray):
            if x.values.dtype != y.values.dtype or x.values.tobytes() != y.values.tobytes():
                return False
        elif x.values != y.values:
            return False
    return True


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_compiled_columns_are_what_the_python_code_makes_and_write_beats_bytes(tmp_path, name, monkeypatch):
    """Whatever the entries, the columns (kinds, values, whether reading the table gives them back
    unchanged) and the entries' types are those of the Python code, and BEAT's file is simplejson's."""
    entries = CASES[name]
    native = _columns(entries)
    native_types = compiled.types_of(entries)
    written = _write(tmp_path / "native.db", entries)
    with monkeypatch.context() as m:
        m.setattr(compiled, "native", None)
        python = _columns(entries)
        assert compiled.types_of(entries) == native_types == set(map(type, entries))
        assert _write(tmp_path / "python.db", entries) == written
    assert _same_columns(native, python), (native, python)
    if isinstance(written[0], bytes):
        assert written[0] == dbindex.dumps_index(entries)
    if name in ("ints", "two fields", "a subclass without a dict", "a typing.NamedTuple"):  # (taken as columns)
        assert native is not None and not isinstance(native, type)


def _write(path, entries) -> tuple:
    """The index file's bytes and the writer's answer, or the failure (the same on both paths)."""
    try:
        info = indextable.write_index(path, entries)
    except Exception as exc:  # noqa: BLE001
        return type(exc), str(exc).replace(str(path), "PATH")
    return path.read_bytes(), info


@needs_native
def test_fields_and_pack_of_the_compiled_module_take_only_exact_classes():
    entries = [E(1, 2.5), E(3, 4.5)]
    assert compiled.native.fields(entries, E, 2) == [[1, 3], [2.5, 4.5]]
    assert compiled.native.fields(entries, E, 0) == []  # (the class checked only)
    assert compiled.native.fields(entries, Other, 2) is None
    assert compiled.native.fields(entries, tuple, 2) is None  # (exactly the class: not a base)
    assert compiled.native.fields(entries + [(1, 2)], E, 2) is None
    assert compiled.native.fields(entries, E, 1) is None  # (every entry of exactly m items)
    assert compiled.native.fields(entries, int, 0) is None  # (no tuple class)
    assert compiled.native.fields([], E, 2) == [[], []]
    with pytest.raises(TypeError):
        compiled.native.fields(tuple(entries), E, 2)
    with pytest.raises(ValueError):
        compiled.native.fields(entries, E, -1)
    assert compiled.exact_numbers([1, 2**63 - 1])[0] == "int"
    assert compiled.exact_numbers([1.0, 2.0])[0] == "float"
    assert compiled.exact_numbers([1, True]) is None and compiled.exact_numbers([1.0, np.float64(2)]) is None
    assert compiled.exact_numbers([]) is None and compiled.exact_numbers([2**63]) is None


class _Changes:
    """Garbage (a cycle) whose finaliser empties, then refills with entries of another class, a list
    of entries: run by a collection the compiled module's allocation of a column may start."""

    def __init__(self, entries: list, other: type):
        self.entries, self.other, self.me = entries, other, self

    ran = False

    def __del__(self):
        _Changes.ran = True
        n = len(self.entries)
        self.entries.clear()
        self.entries.extend(self.other(*[k] * len(self.other._fields)) for k in range(n))


@needs_native
@pytest.mark.skipif(sys.version_info >= (3, 12), reason="since 3.12 a collection an allocation starts runs at the "
                    "next eval-breaker check, after the call returns: no finaliser can run inside fields()")
@pytest.mark.parametrize("m", [1, 2])
def test_a_finaliser_changing_the_entries_while_their_columns_are_made_is_never_missed(m):
    """Making a column's list may start a collection whose finalisers run user code: one changing the
    entries must give None (the Python code then makes the columns) or columns of the entries as they
    are at the end — never a list with empty places, nor a value of an entry gone.  (A list taken from
    CPython's free list starts no collection: another thread of the process — pytest-xdist's — may have
    refilled it after the full collection emptied it; the attempt is then made again.)"""
    kind, other = (Ix, Other1) if m == 1 else (E, Other)
    enabled, threshold = gc.isenabled(), gc.get_threshold()
    try:
        for _attempt in range(20):
            entries = [kind(*range(k, k + m)) for k in range(5000)]
            gc.collect()  # (the free lists emptied too)
            gc.disable()  # (no collection while the garbage is made: one then would move it out of gen 0)
            _Changes.ran = False
            _Changes(entries, other)  # (garbage now: collected at the next collection)
            gc.set_threshold(1)
            gc.enable()
            got = compiled.native.fields(entries, kind, m)
            ran = _Changes.ran
            gc.set_threshold(*threshold)
            if ran:
                assert all(type(e) is other for e in entries)
                assert got is None
                return
            assert got == [[e[j] for e in entries] for j in range(m)]  # (nothing changed: the columns)
            gc.collect()  # (the garbage of this attempt)
        pytest.skip("no collection started inside fields() in 20 attempts (lists from the free list)")
    finally:
        gc.set_threshold(*threshold)
        if not enabled:
            gc.disable()


VIEW = b'''from collections import namedtuple
from beat.backend.python.database import View

Entry = namedtuple("Entry", ["value", "name"])


class V(View):
    def index(self, root_folder, parameters):
        return [Entry(i, "n%d" % (i // 2)) for i in range(parameters["n"])]

    def get(self, output, index):
        return {"value": self.objs[index].value}
'''


@needs_native
def test_an_indexing_job_makes_its_columns_with_the_compiled_module_and_writes_beats_index(tmp_path, monkeypatch):
    """A real indexing job (``build_index``: the view loaded, indexed, probed, its files written) takes its
    entries' class and fields in C, and its index is byte for byte what simplejson writes of them."""
    from backbeat.cache.blobs import Blobs
    from backbeat.runtime import dbprovider
    from backbeat.runtime.spec import CodeFile, DatasetSpec

    calls: list = []
    fields = compiled.native.fields
    monkeypatch.setattr(compiled.native, "fields", lambda *a: calls.append(a[1:]) or fields(*a))
    blobs = Blobs(tmp_path / "code")
    snapshot = CodeFile(str(blobs.path(blobs.put(VIEW))), hashlib.sha256(VIEW).hexdigest(), str(tmp_path / "1.py"))
    spec = DatasetSpec("t/1", snapshot, "V", str(tmp_path), {"n": 20}, str(tmp_path / "i.db"),
                       {"value": ("t/int/1", {"value": "int32"})}, deps=str(tmp_path / "deps.json"))
    stats = dbprovider.build_index({"spec": spec.to_json()})
    assert stats["probe"] == "complete" and stats["entries"] == 20
    assert [(kind.__name__, m) for kind, m in calls] == [("Entry", 0), ("Entry", 2)]  # (class, then columns)
    made = collections.namedtuple("Entry", ["value", "name"])
    assert (tmp_path / "i.db").read_bytes() == dbindex.dumps_index([made(i, "n%d" % (i // 2)) for i in range(20)])
    entries = dbindex.read_index(tmp_path / "i.db")
    assert stats["digest"] == hashlib.sha256((tmp_path / "i.db").read_bytes()).hexdigest()
    table = indextable.load_entries(tmp_path / "i.db", stats["digest"])
    assert list(table) == entries and json.loads((tmp_path / "deps.json").read_text())["probe"] == "complete"
