"""The compiled per-unit path (``backbeat.data.compiled``, C): in use wherever it is built, and
indistinguishable from the Python path — the same cache files to the byte, the same steps as BEAT's
API shows them, the same errors and messages — through a real ZeroMQ stream and cache files; the
data path's own tests pass on the Python path too (``BACKBEAT_COMPILED=off``); nothing leaks."""

from __future__ import annotations

import copy
import gc
import json
import os
import pickle
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from _steploop import EXP, FMT, F

from backbeat.data import compiled
from backbeat.data.cachewriter import CacheWriter
from backbeat.runtime.driver import build_inputs, build_outputs, run_algorithm
from backbeat.runtime.inputs import Input, InputGroup
from backbeat.runtime.outputs import Output, SynchronizationListener
from backbeat.runtime.sources import BatchSource

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
#: the tests of the data path the compiled code replaces a part of (run again on the Python path)
DATA_PATH_TESTS = ["tests/integration/test_recycling.py", "tests/integration/test_snapshots.py",
                   "tests/integration/test_fastpaths.py", "tests/integration/test_chunkloop.py",
                   "tests/unit/test_driver.py", "tests/unit/test_inputs.py", "tests/unit/test_batch.py",
                   "tests/integration/test_compiled_provider.py", "tests/integration/test_indextable.py"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "BACKBEAT_COMPILED"}
    env.update(extra)
    return env


def _wired(tmp_path: Path, n: int, window: int) -> tuple:
    """A sequential block's inputs (``n`` units of ``value`` i + 0.5, read ``window`` at a time), loaders,
    and outputs writing to a real cache writer (its file in ``tmp_path``), as the block runner wires them."""
    idx = np.arange(0, n, dtype=np.int64)
    from backbeat.data.batch import Batch
    batch = Batch(FMT, EXP, idx, idx.copy(), {"value": idx + 0.5})
    source = BatchSource(batch.starts, batch.ends, lambda a, b: batch.slice(a, b), window=window)
    inputs, loaders = build_inputs("sequential", "ch", {"in": ("ch", source, FMT)})
    writer = CacheWriter(tmp_path / "out.h5", FMT, EXP)
    sink = type("Sink", (), {})()
    sink.write, sink.writer = writer.put, writer  # type: ignore[attr-defined]
    return inputs, loaders, build_outputs({"out": (sink, F)}, inputs), writer


def test_the_compiled_path_is_in_use_where_it_is_built(tmp_path, monkeypatch):
    if compiled.SWITCHED_OFF:
        assert compiled.native is None and Input.__bases__ == (object,)
        return
    # (the install builds it wherever a C compiler is, as in CI: a build that silently failed fails here)
    assert compiled.native is not None, "backbeat.data._unitpath is not built: `pip install -e .` builds it"
    for cls in (Input, InputGroup, SynchronizationListener, Output):
        assert cls.__bases__ == (compiled.Slots,) and issubclass(cls, compiled.native.Slots)
    calls = []
    drive = compiled.native.drive
    monkeypatch.setattr(compiled.native, "drive", lambda *a: calls.append(1) or drive(*a))
    inputs, loaders, outputs, writer = _wired(tmp_path, 100, 30)
    assert type(outputs["out"].write) is compiled.native.PlainWrite

    class Identity:
        def process(self, inputs, data_loaders, outputs):
            outputs["out"].write(inputs["in"].data)
            return True

    run_algorithm(Identity(), "sequential", inputs=inputs, data_loaders=loaders, outputs=outputs)
    writer.close()
    assert calls == [1] and outputs["out"].nb_data_blocks_written == 100


def _probe(folder: Path, **env: str) -> dict:
    folder.mkdir()
    out = subprocess.run([sys.executable, str(HERE / "_compiled_probe.py"), str(folder)], env=_env(**env),
                         cwd=HERE, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_both_paths_write_the_same_bytes_show_the_same_steps_and_raise_the_same_errors(tmp_path):
    native, python = _probe(tmp_path / "native"), _probe(tmp_path / "python", BACKBEAT_COMPILED="off")
    assert native.pop("native") is (compiled.native is not None or compiled.SWITCHED_OFF)
    assert python.pop("native") is False
    kinds = {name: (native[name].pop("write"), python[name].pop("write"))
             for name in native if isinstance(native[name], dict)}
    assert kinds["file"] == ("PlainWrite", "function") and kinds["stream"] == ("PlainWrite", "function")
    assert native == python
    # (and the probe saw what it was meant to: files written, errors raised, a stream read whole)
    assert native["stream"]["steps"] == 20_000 and "file" in native["stream"]
    assert native["beyond"]["error"].startswith("KeyError: \"Algorithm logic error on write()")
    assert native["no args"]["error"].startswith("TypeError: Output.write() missing 1 required")
    assert native["uneven (5, 4, 5)"]["error"] == "ValueError: zip() argument 2 is shorter than argument 1"


@pytest.mark.skipif(compiled.SWITCHED_OFF, reason="this session runs the Python path already")
def test_the_data_path_tests_pass_on_the_python_path():
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *DATA_PATH_TESTS],
                         env=_env(BACKBEAT_COMPILED="off"), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout


def test_many_windows_leave_no_memory_behind(tmp_path):
    n = 60_000
    idx = np.arange(n, dtype=np.int64)
    from backbeat.data.batch import Batch
    batch = Batch(FMT, EXP, idx, idx.copy(), {"value": idx * 0.5})

    class Identity:
        def process(self, inputs, data_loaders, outputs):
            outputs["out"].write(inputs["in"].data)
            return True

    def once(k: int) -> None:
        source = BatchSource(batch.starts, batch.ends, lambda a, b: batch.slice(a, b), window=512)
        inputs, loaders = build_inputs("sequential", "ch", {"in": ("ch", source, FMT)})
        writer = CacheWriter(tmp_path / f"out{k}.h5", FMT, EXP)
        sink = type("Sink", (), {})()
        sink.write, sink.writer = writer.put, writer  # type: ignore[attr-defined]
        run_algorithm(Identity(), "sequential", inputs=inputs, data_loaders=loaders,
                      outputs=build_outputs({"out": (sink, F)}, inputs))
        writer.close()
        os.remove(writer.path)

    once(0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(1, 4):
            once(k)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # (one int or value object kept per unit would be 180,000 objects, several MB)
    assert after - before < 256 << 10, f"{after - before} bytes left after 3 runs of {n} units"


def test_the_per_step_attributes_behave_as_attributes():
    x = Input("in", None, [])
    assert x.data is None and x.data_index == -1
    x.data = "mine"
    del x.data
    with pytest.raises(AttributeError, match="'Input' object has no attribute 'data'"):
        _ = x.data
    x.anything = 1  # (other attributes: the instance's dictionary, as before)
    x.data = F(value=np.float64(2.5))
    twin = copy.copy(x)  # (copied and pickled as a plain object's attributes are)
    assert (twin.data, twin.data_index, twin.anything, twin.name) == (x.data, -1, 1, "in")
    with pytest.raises(AttributeError):
        _ = Input("in", None, []).__class__.__new__(Input).data
    again = pickle.loads(pickle.dumps(SynchronizationListener()))
    assert (again.data_index_start, again.data_index_end) == (-1, -1)
    listener = SynchronizationListener()
    listener.onIntervalChanged(3, 4)
    assert (listener.data_index_start, listener.data_index_end) == (3, 4)


# -- the review's cases (wave 14): what user code can do between two C-level steps ---------------------

needs_native = pytest.mark.skipif(compiled.native is None, reason="the compiled module is not built here")


def _step_objects() -> tuple[Input, InputGroup, SynchronizationListener]:
    x = Input("in", None, [])
    g = InputGroup("c")
    g.add(x)
    return x, g, SynchronizationListener()


def _zip_message(*lists: list) -> str | None:
    try:
        for _ in zip(*lists, strict=True):
            pass
    except ValueError as exc:
        return str(exc)
    return None


@needs_native
def test_uneven_chunks_raise_zips_own_errors():
    import itertools

    for n1, n2, n3 in itertools.product((1, 2, 3), repeat=3):
        if n1 == n2 == n3:
            continue
        lists = [list(range(n1)), list(range(n2)), list(range(n3))]
        x, g, listener = _step_objects()
        with pytest.raises(ValueError) as caught:
            compiled.native.drive(x, g, listener, [tuple(lists)], lambda: True, (), 0, 0, False, None, None)
        assert str(caught.value) == _zip_message(*lists), (n1, n2, n3)


@needs_native
def test_lists_emptied_by_process_end_the_chunk_as_zip_does():
    values, starts = [object() for _ in range(500)], [10**20 + k for k in range(500)]
    ends = list(starts)

    def clearing() -> bool:  # (without the lengths read again each step: items read past the end)
        values.clear(), starts.clear(), ends.clear()
        [bytearray(64) for _ in range(5000)]
        return True

    x, g, listener = _step_objects()
    assert compiled.native.drive(x, g, listener, [(values, starts, ends)], clearing, (), 0, 0, False, None,
                                 None) == (1, True)
    assert x.data_index == 10**20
    values, starts = [1, 2, 3], [0, 1, 2]
    ends = [0, 1, 2]

    def shortening() -> bool:
        del ends[1:]
        return True

    x, g, listener = _step_objects()
    with pytest.raises(ValueError, match="argument 3 is shorter than arguments 1-2"):
        compiled.native.drive(x, g, listener, [(values, starts, ends)], shortening, (), 0, 0, False, None, None)


@needs_native
def test_a_write_keeps_the_end_it_read_while_a_collection_replaces_it():
    from operator import attrgetter

    class V:
        __slots__ = ("a", "b")

    class Sink:
        def write(self, *a: object) -> None:
            raise AssertionError("the common case only")

    listener = SynchronizationListener()
    out = Output("o", Sink())
    out.last_written_data_index, out.nb_data_blocks_written = -1, 0
    rows: list = []
    ends: list = []
    write = compiled.native.PlainWrite(listener, V, out, Output.write, rows.append, attrgetter("a", "b"), ends,
                                       10**9, lambda: 10**9, 2**62)
    v = V()
    v.a, v.b = 1, 2
    armed = []

    def replace_end(phase: str, info: dict) -> None:
        if phase == "start" and armed:
            armed.clear()
            listener.data_index_end = 5  # (frees the int the write read, unless it holds it)
            [float(k) + 0.5 for k in range(1000)]

    gc.disable()
    gc.callbacks.append(replace_end)
    threshold = gc.get_threshold()
    try:
        listener.data_index_end = int("1000000000000007")
        keep = [(k, k) for k in range(5000)]  # noqa: F841 (the tuples' free list full: get allocates)
        armed.append(1)
        gc.set_threshold(1)
        gc.enable()
        write(v)
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(replace_end)
        gc.enable()
    assert ends == [10**15 + 7] and out.last_written_data_index == 10**15 + 7
    assert out.nb_data_blocks_written == 1 and rows == [(1, 2)]


def test_a_wrong_call_of_write_reads_the_same_on_both_paths(tmp_path):
    script = (
        "import os, sys\n"
        "from backbeat.data.cachewriter import CacheWriter\n"
        "from backbeat.runtime.blockrun import _Sink\n"
        "from backbeat.runtime.outputs import Output, SynchronizationListener\n"
        f"w = CacheWriter(os.path.join({str(tmp_path)!r}, os.environ['TAG'] + '.data'), 'user/f/1', "
        "{'value': 'float64'})\n"
        "listener = SynchronizationListener()\n"
        "o = Output('o', _Sink(w), listener, 0, value_type=w.type)\n"
        "v = w.type(); v.value = 1.0\n"
        "listener.data_index_start = listener.data_index_end = 0\n"
        "o.write(v)\n"
        "for args in [(v, 1, 2), ()]:\n"
        "    try:\n"
        "        o.write(*args)\n"
        "    except TypeError as exc:\n"
        "        print(exc)\n"
    )
    said = {}
    for tag, env in (("c", {}), ("py", {"BACKBEAT_COMPILED": "off"})):
        done = subprocess.run([sys.executable, "-c", script], env=_env(TAG=tag, **env), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        said[tag] = done.stdout
    assert said["c"] == said["py"] and "positional argument" in said["c"]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_an_input_pickles_with_every_protocol(protocol):
    x, _g, _l = _step_objects()
    x.data_index, x.data_index_end = 3, 4
    back = pickle.loads(pickle.dumps(x, protocol))
    assert (back.name, back.data_index, back.data_index_end) == ("in", 3, 4)


@needs_native
def test_a_build_of_other_source_is_not_used():
    assert not compiled._stale(compiled.native)

    class Old:
        SOURCE = "0" * 64

    assert compiled._stale(Old)


# -- wave 15: recycling's checks and new value objects, compiled ---------------------------------------

def _window(n: int = 6) -> list:
    from backbeat.data.batch import Batch

    idx = np.arange(n, dtype=np.int64)
    return Batch(FMT, EXP, idx, idx.copy(), {"value": idx * 0.5}).to_values()


def _pools() -> dict:
    """Windows some code can or cannot still reach, each made afresh: (pool, what keeps it alive)."""
    import weakref

    from backbeat.data.values import value_type

    other = value_type("user/g/1", {"value": "float64"})
    cases: dict = {}

    def case(name, change=None):
        pool = _window()
        kept = change(pool) if change else None
        cases[name] = (pool, kept)

    case("free")
    case("one held", lambda p: p[3])
    case("the last held", lambda p: p[-1])
    case("one twice", lambda p: p.__setitem__(2, p[1]))
    case("a weak reference", lambda p: weakref.ref(p[4]))
    case("a dead weak reference", lambda p: weakref.ref(p[4]) and None)
    case("vars kept", lambda p: vars(p[0]))
    case("vars read, not kept", lambda p: [vars(v) for v in p] and None)
    case("a memo", lambda p: object.__setattr__(p[5], "memo", 1))
    case("a field deleted", lambda p: object.__delattr__(p[1], "value"))
    case("deleted and a memo", lambda p: (object.__delattr__(p[1], "value"), object.__setattr__(p[1], "m", 1)))
    case("another class", lambda p: p.__setitem__(2, other(value=np.float64(1))))
    case("a subclass", lambda p: p.__setitem__(2, type("Sub", (F,), {})(value=np.float64(1))))
    case("not a value", lambda p: p.__setitem__(0, 1.5))
    case("a cycle", lambda p: object.__setattr__(p[2], "value", p[2]))
    cases["empty"] = ([], None)
    return cases


@needs_native
def test_the_compiled_reachability_checks_agree_with_pythons():
    from backbeat.data import recycling

    if sys.version_info[:2] <= (3, 11):  # (where it reads weak-reference lists: the C checks, not Python's)
        assert all(compiled.native.unreachable(pool, F, F._fields) is not None for pool, _ in _pools().values())
    compiled_says = {name: recycling.unreachable(pool, F) for name, (pool, _kept) in _pools().items()}
    python_says = {name: bool(pool) and recycling._unreachable(pool, F) for name, (pool, _kept) in _pools().items()}
    assert compiled_says == python_says
    # (a field deleted and a memo set: as many entries as fields, but not the fields — the memo would
    # travel to a later unit: not reused)
    assert [name for name, alone in compiled_says.items() if alone] == ["free", "a dead weak reference",
                                                                        "vars read, not kept"]
    with pytest.raises(TypeError):
        compiled.native.unreachable((), F, 1)


class _Grabs:
    """A cycle whose finaliser takes the first object of a window (run by a collection)."""

    def __init__(self, pool, kept):
        self.pool, self.kept, self.me = pool, kept, self

    def __del__(self):
        if self.pool:  # (emptied once given up)
            self.kept.append(self.pool[0])


@pytest.mark.parametrize("checks", ["compiled", "python"])
def test_a_finaliser_run_while_a_window_is_checked_cannot_take_an_object_already_checked(checks):
    """Making an object's dictionary may start a collection whose finalisers run user code: one
    taking an object already checked must not see it reused — the collector is off for the checks."""
    from backbeat.data import recycling

    if checks == "compiled" and compiled.native is None:
        pytest.skip("the compiled module is not built here")
    pool, kept = _window(), []
    gc.collect()
    _Grabs(pool, kept)  # (garbage now: a cycle, collected at the next collection)
    threshold = gc.get_threshold()
    gc.set_threshold(1)
    try:
        alone = (recycling.unreachable if checks == "compiled" else recycling._unreachable)(pool, F)
        taken = len(kept)  # (what a finaliser took while the window was checked; len: no allocation)
    finally:
        gc.set_threshold(*threshold)
    gc.collect()
    assert not (alone and taken), "an object a finaliser took while checking was said unreachable"


class _Made:
    """A class whose ``__new__`` is Python code (counted), as a format's class could become."""

    made = 0

    def __new__(cls):
        _Made.made += 1
        return super().__new__(cls)


@needs_native
def test_new_value_objects_are_made_as_cls_new_makes_them():
    from backbeat.data import recycling

    made = recycling._new(F, 3)
    assert [type(v) for v in made] == [F] * 3 and all(vars(v) == {} for v in made)
    objs = compiled.native.make(F, 4, ("value",), ([np.float64(k) for k in range(4)],))
    assert [v.value for v in objs] == [0.0, 1.0, 2.0, 3.0] and all(type(v.value) is np.float64 for v in objs)
    _Made.made = 0
    assert [type(v) for v in compiled.native.make(_Made, 5, (), ())] == [_Made] * 5 and _Made.made == 5
    assert compiled.native.make(F, 0, (), ()) == []
    with pytest.raises(ValueError, match="shorter"):
        compiled.native.make(F, 3, ("value",), ([1.0, 2.0],))
    with pytest.raises(TypeError):
        compiled.native.make(F, 3, ("value",), ([1.0, 2.0, 3.0], [1.0]))
    with pytest.raises(TypeError):
        compiled.native.make(len, 3, (), ())

    class Refused:
        def __new__(cls):
            raise RuntimeError("no")

    with pytest.raises(RuntimeError, match="no"):
        compiled.native.make(Refused, 2, (), ())
    with pytest.raises(TypeError):  # (a negative count)
        compiled.native.make(F, -1, (), ())

    class Odd:  # (a constructor handing back a type: its attributes are never set, as object.__setattr__ refuses)
        def __new__(cls):
            return int

    with pytest.raises(TypeError):
        compiled.native.make(Odd, 1, ("zz",), ([1],))
    assert not hasattr(int, "zz")
    with pytest.raises(TypeError):
        compiled.native.fill([int], "zz", [1])
    assert not hasattr(int, "zz")


@needs_native
def test_floats_of_a_class_of_python_code_are_converted_by_numpy_not_packed():
    """A float subclass of Python code may give another ``__float__`` (numpy calls it): not packed."""

    class Odd(float):
        def __float__(self):
            return 99.0

    assert compiled.native.pack([Odd(1.0)], "d", Odd) is None
    assert compiled.native.pack([np.float64(1.0)], "d", np.float64) is not None


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes() and a.flags.writeable


@pytest.mark.parametrize("items", [
    [], [0, 1, -1, 2**63 - 1, -2**63], list(range(10**12, 10**12 + 5000)), [1, True, 2], [1, np.int64(2)],
    [1, 2.5], [1, "3"]])
def test_a_writers_ends_pack_as_numpy_converts_them(items):
    from backbeat.data.compiled import int64s

    assert _same(int64s(list(items)), np.array(items, dtype="<i8"))
    if compiled.native is not None:
        assert (compiled.native.pack(list(items), "q", None) is None) is (not all(type(x) is int for x in items))


def test_a_writers_ends_beyond_int64_raise_numpys_error():
    from backbeat.data.compiled import int64s

    with pytest.raises(OverflowError):
        int64s([1, 2**63])


class _Float(float):
    pass


@pytest.mark.parametrize("items", [
    [], [0.5, -0.0, float("inf"), float("-inf"), float("nan")], list(np.arange(5000) * 0.25),
    [np.frombuffer(b"\x01\x00\x00\x00\x00\x00\xf8\x7f", dtype="<f8")[0], 1.0],  # (a NaN's payload kept)
    [1.0, np.float32(0.1)], [1.0, 2], [1.0, _Float(3.5)], [1.0, True], [np.float64(2.0), np.longdouble(1.5)]])
def test_a_column_of_floats_packs_as_fromiter_converts_it(items):
    from backbeat.data.compiled import float64s

    expected = np.fromiter(list(items), dtype="<f8", count=len(items))
    assert _same(float64s(list(items), np.float64), expected)
    if compiled.native is not None:
        exact = all(type(x) in (float, np.float64) for x in items)
        assert (compiled.native.pack(list(items), "d", np.float64) is None) is (not exact)
        with pytest.raises(TypeError):
            compiled.native.pack(list(items), "d", int)


def test_a_finaliser_run_while_a_window_is_taken_back_cannot_keep_an_object_reused():
    """The same, through :func:`recycling.objects`: the collector stays off until the spare list
    has let its objects go (a collection between the check and that could run a finaliser taking one)."""
    from backbeat.data import recycling

    pool, kept = _window(), []
    gc.collect()
    _Grabs(pool, kept)
    threshold = gc.get_threshold()
    gc.set_threshold(1)
    try:
        out = recycling.objects(F, 6, pool)
        taken = list(kept)
    finally:
        gc.set_threshold(*threshold)
    gc.collect()
    assert not any(o is t for o in out for t in taken), "an object a finaliser took was handed out again"


# -- wave 16: `inputs["in"]` and `outputs["out"]` through dict's own C subscript -------------------------


def test_inputs_and_outputs_subscript_as_before_through_dicts_own_slot(tmp_path):
    from backbeat.runtime.inputs import InputList
    from backbeat.runtime.outputs import OutputList

    if compiled.native is not None:  # (where built, the generic slot that calls `__getitem__` is replaced)
        assert compiled.native.has_dict_subscript(InputList) and compiled.native.has_dict_subscript(OutputList)
    inputs, _loaders, outputs, writer = _wired(tmp_path, 10, 4)
    x, out = inputs["in"], outputs["out"]
    assert type(inputs) is InputList and type(outputs) is OutputList
    # names, positions (`__missing__`), and what BEAT gives for anything else: None
    assert x is inputs[0] and x.name == "in" and out is outputs[0] and out is outputs["out"]
    for missing in ("nope", 1, -1, True, False, 2.0, None):
        assert inputs[missing] is None and outputs[missing] is None
    with pytest.raises(TypeError, match="unhashable"):
        _ = inputs[[0]]
    writer.abort()


@needs_native
def test_dicts_own_subscript_only_for_a_dict_subclass_that_does_not_override_getitem():
    class Plain(dict):
        def __missing__(self, key):
            return ("missing", key)

    class Own(dict):
        def __getitem__(self, key):
            return "own"

    class Child(Plain):
        pass

    assert not compiled.native.has_dict_subscript(Plain)  # (CPython's generic slot)
    assert compiled.native.dict_subscript(Plain) is True and compiled.native.has_dict_subscript(Plain)
    assert Plain(a=1)["a"] == 1 and Plain()["b"] == ("missing", "b")  # (dict's C function calls __missing__)
    assert compiled.native.dict_subscript(Own) is False and Own(a=1)["a"] == "own"
    for other in (dict, list, int, type("NotADict", (), {})):
        assert compiled.native.dict_subscript(other) is False
    with pytest.raises(TypeError):
        compiled.native.dict_subscript(Plain())
    assert Child()["c"] == ("missing", "c")
    Plain.__getitem__ = lambda self, key: "assigned later"  # (CPython sets the slot again, as always)
    assert not compiled.native.has_dict_subscript(Plain)
    assert Plain(a=1)["a"] == "assigned later" and Child(a=1)["a"] == "assigned later"


def _one_unit_writer(tmp_path, fmt, exp, name):
    """An Output over a real CacheWriter, its listener at unit 0 (as the driver leaves it)."""
    from backbeat.data.values import value_type

    vtype = value_type(fmt, exp)
    x = Input("in", None, [])
    g = InputGroup("c")
    g.add(x)
    writer = CacheWriter(tmp_path / name, fmt, exp, end=0)
    sink = type("Sink", (), {})()
    sink.write, sink.writer = writer.put, writer  # type: ignore[attr-defined]
    listener = SynchronizationListener()
    listener.onIntervalChanged(0, 0)
    return Output("out", sink, listener, value_type=vtype), writer, vtype


@needs_native
def test_a_one_field_write_reads_and_appends_its_field_in_c_what_the_buffers_calls_do(tmp_path):
    one, writer1, vtype1 = _one_unit_writer(tmp_path, FMT, EXP, "one.h5")
    two, writer2, _ = _one_unit_writer(tmp_path, "user/g/1", {"a": "float64", "b": "int32"}, "two.h5")
    assert type(one.write) is compiled.native.PlainWrite and one.write.field == "value"
    assert type(two.write) is compiled.native.PlainWrite and two.write.field is None  # (a tuple of fields)
    # a value whose field was deleted: the same AttributeError as attrgetter's, nothing written
    broken = vtype1(value=np.float64(1.5))
    del broken.__dict__["value"]
    with pytest.raises(AttributeError, match="value"):
        one.write(broken)
    assert one.last_written_data_index == -1 and one.nb_data_blocks_written == 0
    one.write(vtype1(value=np.float64(2.5)))
    assert one.last_written_data_index == 0 and one.nb_data_blocks_written == 1
    writer1.close()
    writer2.abort()
    from backbeat.data.cachereader import CacheReader

    with CacheReader(tmp_path / "one.h5") as reader:
        assert [float(v.value) for v, _s, _e in reader] == [2.5]
    with pytest.raises(TypeError, match="together"):
        compiled.native.PlainWrite(one.write, vtype1, one, len, len, len, [], 1, len, 0, "value", None)
