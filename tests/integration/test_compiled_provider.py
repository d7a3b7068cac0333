"""The database provider's compiled per-unit work (wave 16: ``tuples``, ``Windowed``, ``take`` of
``backbeat.data.compiled``) is indistinguishable from its Python code, the reference: the same entries
(class, values, the same objects for the same index), the same calls of the view's ``get`` in the same
order, the same rows, copies and errors, the same columns to the byte — and a provider serving a real
view over real index files sends the same bytes with the module and without it (``BACKBEAT_COMPILED=off``,
a fresh interpreter)."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import subprocess
import sys
from collections import namedtuple
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from backbeat.data import compiled, indextable
from backbeat.data.entries import WINDOW, Entries
from backbeat.data.snapshot import Uncopyable, ViewScalars, frozen

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
needs_native = pytest.mark.skipif(compiled.native is None, reason="the compiled module is not built here")
Entry = namedtuple("Entry", ["a", "b"])


def test_the_providers_compiled_work_is_in_use_where_it_is_built():
    if compiled.native is None:
        assert compiled.take is None and compiled.tuples is None and "__getitem__" in vars(Entries)
    else:
        assert compiled.take is compiled.native.take and compiled.tuples is compiled.native.tuples
        assert Entries.__bases__[0] is compiled.native.Windowed and "__getitem__" not in vars(Entries)


@needs_native
@pytest.mark.parametrize("columns", [
    ([1, 2, 3], ["x", "y", "z"]), ([], []), ([0.5, None, True], [[1], {"k": 2}, 2**70]),
])
def test_entries_are_made_as_tuple_new_makes_them(columns):
    got = compiled.native.tuples(Entry, tuple(list(c) for c in columns))
    want = list(map(partial(tuple.__new__, Entry), zip(*columns, strict=True)))
    assert got == want and all(type(g) is Entry for g in got)
    assert all(x is y for g, w in zip(got, want, strict=True) for x, y in zip(g, w, strict=True))
    assert [g.a for g in got] == list(columns[0]) and [g._asdict() for g in got] == [w._asdict() for w in want]
    hashable = [w for w in want if all(isinstance(v, (int, float, str, type(None))) for v in w)]
    assert [hash(g) for g in got if g in hashable] == [hash(w) for w in hashable]  # (a hash cached right)
    assert all({tuple(w): 1}[g] == 1 for g, w in zip(got, want, strict=True) if w in hashable)


@needs_native
def test_entries_of_anything_else_are_left_to_the_python_code():
    tuples = compiled.native.tuples
    assert tuples(tuple, ([1],)) is None and tuples(dict, ([1],)) is None and tuples(Entry, ()) is None
    assert tuples(Entry, ([1, 2], [3])) is None and tuples(Entry, ((1, 2), (3, 4))) is None
    with pytest.raises(TypeError):
        tuples(Entry, [[1], [2]])


@needs_native
@pytest.mark.skipif(sys.version_info >= (3, 12), reason="since 3.12 a collection an allocation starts runs at the "
                    "next eval-breaker check, after the call returns: no finaliser can run inside tuples()")
def test_columns_changed_by_a_finaliser_while_entries_are_made_leave_them_to_the_python_code():
    """Making an entry may collect, and a finaliser run then may change the columns: the C code reads
    nothing beyond them, hands out no list with empty places, and leaves the rest to the Python code."""
    col = list(range(1000))

    class Clears:
        def __del__(self):
            col.clear()

    def garbage() -> None:
        a = Clears()
        a.me = a  # (a cycle: freed by the collector only)

    one, columns, threshold = namedtuple("One", ["a"]), (col,), gc.get_threshold()
    gc.collect()
    garbage()
    gc.set_threshold(1)
    try:
        got = compiled.native.tuples(one, columns)
    finally:
        gc.set_threshold(*threshold)
    assert got is None and col == []


def _entries(tmp_path: Path, n: int) -> Entries:
    """Entries through a real index table (its JSON file and table written, then loaded)."""
    entries = [Entry(k, f"n{k}") for k in range(n)]
    indextable.write_index(tmp_path / "i.db", entries)
    return indextable.load_entries(tmp_path / "i.db")


def test_entries_answer_every_index_as_the_python_code_does(tmp_path):
    n = 3 * WINDOW + 17
    objs, want = _entries(tmp_path, n), [Entry(k, f"n{k}") for k in range(n)]
    kind = type(objs[0])
    assert kind is not Entry and kind._fields == Entry._fields
    for i in [0, 1, WINDOW - 1, WINDOW, 5, n - 1, -1, -n, 2 * WINDOW + 3, True, np.int64(7), np.int32(-2), 2 * WINDOW + 4]:
        got = objs[i]
        assert got == want[i] and type(got) is kind
        if type(i) is int and i >= 0:  # (the window's own object; any other index makes its window again)
            assert got is objs[i] and objs._item(i) is got
    for bad in [n, -n - 1, 2**70, -2**70]:
        with pytest.raises(IndexError, match="out of range"):
            objs[bad]
    with pytest.raises(TypeError):
        objs[1.0]
    assert list(objs[5:9]) == want[5:9] and isinstance(objs[5:9], Entries) and objs[5:9][-1] == want[8]
    assert objs[::WINDOW] == want[::WINDOW] and list(objs) == want and len(objs) == n
    objs._window, objs._at, objs._wn = [], 0, 5  # (a window said longer than its list: the Python code answers)
    with pytest.raises(IndexError):
        objs[3]
    copied = __import__("copy").copy(objs)
    assert type(copied) is Entries and copied[n - 2] == want[n - 2] and copied.table is objs.table


class _Key(str):
    """A key equal to "value" whose comparison raises (a dict lookup runs it)."""

    def __hash__(self):
        return hash("value")

    def __eq__(self, other):
        raise RuntimeError("compared")


class _KeyErrorKey(_Key):
    """A key whose comparison raises KeyError: a missing key to itemgetter (the value odd), not an error."""

    def __eq__(self, other):
        raise KeyError("compared")

    __hash__ = _Key.__hash__


def test_entries_whose_window_could_not_be_made_keep_the_window_they_had(tmp_path):
    """A table failing to make a window (an OS error, memory) leaves the entries' window as it was: the
    next index within it is that window's entry, never another window's entry at the same place."""
    objs = _entries(tmp_path, 3 * WINDOW)
    assert objs[3] == (3, "n3")
    table, calls = objs.table, []

    class Failing:
        n, path = table.n, table.path

        def entries(self, a, b):
            calls.append((a, b))
            if len(calls) == 1:
                raise OSError("cannot read the table")
            return table.entries(a, b)

    objs.table = Failing()
    with pytest.raises(OSError):
        objs[2 * WINDOW]
    assert objs[WINDOW * 2 + 2] == (2 * WINDOW + 2, f"n{2 * WINDOW + 2}") and objs[3] == (3, "n3")


class _Stubborn:
    def __deepcopy__(self, memo):
        raise TypeError("cannot copy me")


ONE = {"value": "float64"}
TWO = {"n": "int32", "x": "float64"}
WINDOWS = [  # (format, what get returns for entries 0, 1, ...)
    (ONE, [{"value": np.float64(k / 3)} for k in range(7)]),
    (ONE, [{"value": 1}, {"value": 0.5}, {"value": True}, {"value": np.float32(2)}, {"value": np.array(3.0)}]),
    (ONE, [{"value": 1.0}, {"value": [2.0]}, {"value": "one"}, {"value": None}, "not a dict", None]),
    (ONE, [{"value": 1.0, "extra": 1}, {"other": 1.0}, {}, {"value": np.float64("nan")}, {"value": -0.0}]),
    (ONE, [{_Key("x"): 1.0}]),  # (the lookup's error raised, as itemgetter raises it)
    (ONE, [{"value": 1.0}, {_KeyErrorKey("x"): 1.0}, {"value": 2.0}]),  # (a KeyError in the lookup: missing)
    (ONE, [{"value": 1.0}, {"value": _Stubborn()}]),
    (TWO, [{"n": np.int32(k), "x": np.float64(k / 2)} for k in range(4)]),
    (TWO, [{"x": 0.5, "n": 3}, {"n": np.int32(1), "x": np.array(0.5)}, {"n": 1}, {"n": 1, "x": 2, "y": 3}]),
    (TWO, [{"n": np.int32(1), "x": _Stubborn()}]),
]


def _taken(fmt: dict, values: list, native: bool) -> tuple:
    """What ``ViewScalars.take`` keeps of ``values`` (a list of entries), on one path: the calls, the rows and
    copies, the error; then the window's units and its batch's bytes (or error)."""
    calls: list = []

    def get(output, k):
        calls.append((output, k))
        value = values[k]
        if isinstance(value, BaseException):
            raise value
        return value

    buf = ViewScalars("user/view/1", fmt)
    saved = compiled.take
    compiled.take = saved if native else None
    try:
        buf.take(get, "out", list(range(len(values))))
        error = None
    except Exception as exc:  # noqa: BLE001 - compared between the paths
        error = (type(exc), str(exc))
    finally:
        compiled.take = saved
    starts = np.arange(len(buf._rows))
    try:
        batch = buf.batch(starts, starts)
        made = {k: (c.dtype.str, c.tobytes()) for k, c in batch.columns.items()}
    except Exception as exc:  # noqa: BLE001
        made = (type(exc), str(exc))
    rows = [("odd", buf._odd[k]) if r is not None and r is not ViewScalars.__init__ and type(r) is object else r
            for k, r in enumerate(buf._rows)]
    return calls, rows, error, buf.units(), made


@needs_native
@pytest.mark.parametrize("fmt, values", WINDOWS)
def test_a_window_is_taken_as_the_python_code_takes_it(fmt, values):
    native, python = _taken(fmt, values, True), _taken(fmt, values, False)
    assert repr(native) == repr(python)
    assert native[0] == [("out", k) for k in range(len(native[0]))]


@needs_native
def test_the_rows_are_what_get_returned_and_copies_are_made_before_get_is_called_again():
    d, zero, seen = {"value": np.float64(0)}, np.array(0.0), []

    def get(output, k):
        if k % 2:
            zero[...] = k
            d["value"] = zero
        else:
            d["value"] = np.float64(k)
            seen.append(d["value"])
        return d

    buf = ViewScalars("user/view/1", ONE)
    buf.take(get, "out", list(range(6)))
    zero[...] = -1
    assert [buf._rows[k] for k in (0, 2, 4)] == seen and all(buf._rows[k] is seen[k // 2] for k in (0, 2, 4))
    assert buf.batch(np.arange(6), np.arange(6)).columns["value"].tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(Uncopyable, match="cannot copy me"):
        ViewScalars("user/view/1", ONE).take(lambda o, k: {"value": _Stubborn()}, "out", [0])
    with pytest.raises(ZeroDivisionError):
        ViewScalars("user/view/1", ONE).take(lambda o, k: 1 / 0, "out", [0])
    assert frozen({"value": 1.0}) == {"value": 1.0}


@needs_native
def test_a_column_of_float64s_is_packed_to_the_bytes_numpy_makes():
    payload = np.frombuffer(b"\x01\x00\x00\x00\x00\x00\xf8\x7f", dtype="<f8")[0]  # (a NaN's payload kept)
    values = [np.float64(k * 0.001) for k in range(5000)] + [payload, -0.0, float("inf"), 1e-310]
    buf = ViewScalars("user/view/1", ONE)
    buf.take(lambda o, k: {"value": values[k]}, "out", list(range(len(values))))
    col = buf.batch(np.arange(len(values)), np.arange(len(values))).columns["value"]
    want = np.ascontiguousarray(np.asarray(values), dtype="<f8")
    assert col.dtype == want.dtype and col.tobytes() == want.tobytes() and col.flags.writeable


VIEW = '''
import collections
import numpy
from beat.backend.python.database import View

Entry = collections.namedtuple("Entry", ["index", "name"])


class V(View):
    def __init__(self):
        super().__init__()
        self.output_member_map = {"value": "index", "pair": "index"}  # (a unit: 3 entries)

    def index(self, root_folder, parameters):
        return [Entry(k // 3, "n%d" % k) for k in range(parameters["n"])]

    def get(self, output, index):
        back = self.objs[max(0, index - 1500)] if index % 500 == 7 else None  # (another window, now and then)
        entry = self.objs[index]
        if output == "pair":
            back = back or entry
            return {"n": numpy.int32(back.index), "x": numpy.float64(entry.index * 0.001)}
        if index % 997 == 5:
            return {"value": entry.index}  # (a Python int: the window taken another way)
        return {"value": numpy.float64(entry.index * 0.001 + len(entry.name))}
'''
SERVE = '''
import dataclasses, hashlib, json, sys
from backbeat.data import compiled, dbindex, wire
from backbeat.runtime import dbprovider
from backbeat.runtime.spec import DatasetSpec

spec = DatasetSpec.from_json(json.loads(open(sys.argv[1]).read()))
spec = dataclasses.replace(spec, deps=None, index_digest=dbindex.index_digest(spec.index_path))
ds = dbprovider._Dataset(spec)
out = {"native": compiled.native is not None}
for output in ("value", "pair"):
    n = len(ds.output_units(output)[0])
    h = hashlib.sha256()
    for i in range(0, n, 1000):
        for frame in wire.encode(ds.window(output, i, min(n, i + 1000))):
            h.update(bytes(frame))
    out[output] = [n, h.hexdigest()]
print(json.dumps(out))
'''


def test_a_provider_serves_the_same_bytes_with_the_module_and_without(tmp_path):
    """A real view over real index files (indexed by the job), served window by window in fresh interpreters."""
    from backbeat.cache.blobs import Blobs
    from backbeat.runtime import dbprovider
    from backbeat.runtime.spec import CodeFile, DatasetSpec

    code = VIEW.encode()
    blobs = Blobs(tmp_path / "code")
    snapshot = CodeFile(str(blobs.path(blobs.put(code))), hashlib.sha256(code).hexdigest(), str(tmp_path / "1.py"))
    spec = DatasetSpec("t/1", snapshot, "V", str(tmp_path / "root"), {"n": 3 * 4096 + 11}, str(tmp_path / "i.db"),
                       {"value": ("t/f/1", {"value": "float64"}), "pair": ("t/p/1", TWO)},
                       folders={"root": str(tmp_path / "root")}, deps=str(tmp_path / "deps.json"))
    assert dbprovider.build_index({"spec": spec.to_json()})["probe"] == "complete"
    (tmp_path / "spec.json").write_text(json.dumps(spec.to_json()))
    served = []
    for env in ({}, {"BACKBEAT_COMPILED": "off"}):
        out = subprocess.run([sys.executable, "-c", SERVE, str(tmp_path / "spec.json")], capture_output=True, text=True,
                             env={**{k: v for k, v in __import__("os").environ.items() if k != "BACKBEAT_COMPILED"}, **env},
                             cwd=ROOT, timeout=300)
        assert out.returncode == 0, out.stderr
        served.append(json.loads(out.stdout))
    assert served[1]["native"] is False and (served[0]["native"] or compiled.native is None)
    assert served[0]["value"] == served[1]["value"] and served[0]["pair"] == served[1]["pair"]
    assert served[0]["value"][0] == 4096 + 4 and served[0]["pair"][0] == 4096 + 4
    ds = dbprovider._Dataset(dataclasses.replace(spec, deps=None, index_digest=None))
    assert ds.window("value", 0, 3).columns["value"].tolist() == [2.0, 2.001, 2.002]
