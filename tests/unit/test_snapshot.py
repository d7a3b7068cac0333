"""data.snapshot: a unit is taken as it is when added (BEAT serialises at ``write()``, spec §5.3)."""

from __future__ import annotations

import copy
import gc
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from test_batch import SETTINGS, format_and_values

from backbeat.core.errors import DataError
from backbeat.data.batch import Batch
from backbeat.data.cachereader import CacheReader
from backbeat.data.cachewriter import CacheWriter
from backbeat.data.snapshot import Uncopyable, UnitBuffer, ViewScalars, ViewValues, frozen
from backbeat.data.values import value_type

FMT = {"value": [3, "float64"], "n": "int64", "label": "string",
       "inner": {"x": "float64", "v": [0, "int32"], "grid": [2, 2, "uint8"]},
       "names": [0, "string"], "parts": [0, {"a": "int32", "w": [2, "float32"]}]}


@SETTINGS
@given(format_and_values(max_values=6))
def test_take_gives_the_batch_from_values_gives(fv):
    """Any format (nested objects, strings, arrays of any rank, fixed or variable, of objects)."""
    fmt, values = fv
    buf = UnitBuffer("user/hypo/1", fmt, capacity=2)  # (grown past its capacity)
    for v in values:
        buf.add(v)
    starts = np.arange(len(values))
    got = buf.take(starts, starts)
    assert got.equals(Batch.from_values("user/hypo/1", fmt, values, starts, starts))
    assert len(buf) == 0 and buf.take(starts[:0], starts[:0]).equals(Batch.empty("user/hypo/1", fmt))


def _fill(obj, k: int) -> None:
    """Set every field of ``obj`` in place (its arrays kept) to unit ``k``'s values."""
    obj.value[:] = (k, k + 0.5, -k)
    obj.n = k
    obj.label = f"l{k}"
    obj.inner.x = k / 4
    obj.inner.v[:] = k
    obj.inner.grid[:] = k % 256
    obj.names[0] = f"n{k}"
    obj.parts[0].a = np.int32(k)
    obj.parts[0].w[:] = -k


def _unit(T, k: int):
    obj = T(value=np.zeros(3), n=0, label="", inner={"x": 0.0, "v": np.zeros(2, np.int32),
                                                       "grid": np.zeros((2, 2), np.uint8)},
            names=["", "z"], parts=[{"a": 0, "w": [0, 0]}])
    _fill(obj, k)
    return obj


def test_a_value_changed_in_place_after_add_stays_as_it_was():
    T = value_type("user/snap/1", FMT)
    buf = UnitBuffer("user/snap/1", FMT, capacity=3)
    obj = _unit(T, 0)
    for k in range(10):  # one object, reused
        _fill(obj, k)
        buf.add(obj)
    total, v = np.zeros(3), np.zeros(1, np.int32)
    for k in range(10, 15):  # dicts of arrays the caller keeps changing
        total += 1
        v[:] = k
        buf.add({"value": total, "n": k, "label": f"l{k}", "inner": {"x": k / 4, "v": v, "grid": np.full((2, 2), k, np.uint8)},
                 "names": np.array([f"n{k}", "z"], dtype=object), "parts": [{"a": np.int32(k), "w": np.float32([-k, -k])}]})
    _fill(obj, 99)
    total[:] = -1
    v[:] = -1
    got = buf.take(np.arange(15), np.arange(15)).to_values()
    for k in range(10):
        assert got[k] == _unit(T, k), k
    for k in range(10, 15):
        assert list(got[k].value) == [k - 9] * 3 and list(got[k].inner.v) == [k] and got[k].n == k


def test_a_bad_array_fails_at_add_and_leaves_the_buffer_as_it_was():
    fmt = {"value": [3, "float64"], "n": "int32"}
    T = value_type("user/bad/1", fmt)
    buf = UnitBuffer("user/bad/1", fmt)
    buf.add(T(value=[1, 2, 3], n=1))
    bad = T(value=[1, 2, 3], n=2)
    object.__setattr__(bad, "value", np.zeros(4))  # (past its checked setter)
    with pytest.raises(DataError, match="value"):
        buf.add(bad)
    assert len(buf) == 1 and buf.take([0], [0]).to_values() == [T(value=[1, 2, 3], n=1)]


@pytest.mark.parametrize("fmt", [{"value": [4, "float64"], "n": "int64"}, {"value": [4, "float64"]},
                                 {"value": [4, "float64"], "n": "int64", "w": [2, 2, "int8"]}])
def test_cache_writer_keeps_what_was_put_not_what_it_became(tmp_path, fmt):
    """The writer's put and the buffer() protocol BEAT's outputs use (units flushed in batches)."""
    T = value_type("user/w/1", fmt)
    extra = {"w": np.zeros((2, 2), np.int8)} if "w" in fmt else {}
    obj, total = T(value=np.zeros(4), **({"n": 0} if "n" in fmt else {}), **extra), np.zeros(4)
    with CacheWriter(tmp_path / "a.h5", "user/w/1", fmt, buffer_units=8) as writer:
        add, ends, _threshold, flush = writer.buffer()
        for k in range(1, 51):
            total += k
            if k % 2:
                writer.put({"value": total, "n": k, **extra} if "n" in fmt else {"value": total}, k - 1, k - 1)
            else:
                obj.value[:] = total
                if "n" in fmt:
                    obj.n = k
                add(obj)
                ends.append(k - 1)
                if len(ends) >= 8:
                    flush()
        total[:] = obj.value[:] = -1
    with CacheReader(tmp_path / "a.h5") as reader:
        got = [(list(v.value), int(getattr(v, "n", k))) for k, (v, _s, _e) in enumerate(reader, 1)]
    assert got == [([k * (k + 1) / 2] * 4, k) for k in range(1, 51)]


def test_frozen_shares_nothing_with_what_a_view_returned():
    arr = np.arange(3)
    names = np.array(["a", "b"], dtype=object)
    T = value_type("user/f/1", {"x": [2, "int32"]})
    d = {"a": arr, "b": [arr, {"c": arr}], "t": (1, arr), "s": "x", "i": 3, "g": np.int32(2), "o": names,
         "v": T(x=[1, 2])}
    f = frozen(d)
    expected = copy.deepcopy(d)
    arr[:] = -1
    names[0] = "z"
    d["v"].x[:] = 0
    d["b"].append(0)
    assert f["a"].tolist() == [0, 1, 2] and f["b"][0].tolist() == [0, 1, 2] and f["b"][1]["c"].tolist() == [0, 1, 2]
    assert f["t"][1].tolist() == [0, 1, 2] and type(f["t"]) is tuple and len(f["b"]) == 2
    assert list(f["o"]) == ["a", "b"] and f["v"] == expected["v"] and f["v"] is not d["v"]
    assert f["g"] is d["g"] and f["s"] is d["s"]


def test_a_small_output_holds_what_it_needs_not_a_full_buffer(tmp_path):
    """A writer's buffer preallocates a full batch of rows (~1 MB here); a small output's batch
    waits in memory until close (written with its exact shapes): it must not keep that block alive."""
    fmt = {"value": [4, "float64"], "n": "int64"}
    tracemalloc.start()
    try:
        with CacheWriter(tmp_path / "a.h5", "user/w/1", fmt) as writer:
            assert writer.buffer_units * 32 >= 1 << 20  # (the block a full buffer takes)
            before = tracemalloc.get_traced_memory()[0]
            writer.write({"value": np.arange(4.0), "n": 1})
            writer.flush()
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        assert held < 128 << 10, held
    finally:
        tracemalloc.stop()
    with CacheReader(tmp_path / "a.h5") as reader:
        assert [(list(v.value), int(v.n)) for v, _s, _e in reader] == [([0.0, 1.0, 2.0, 3.0], 1)]


def test_frozen_names_what_cannot_be_copied():
    class Stuck:
        def __deepcopy__(self, memo):
            raise RuntimeError("no")

    for value, part in (({"a": [1, Stuck()]}, "Stuck"), ((v for v in ()), "generator")):
        with pytest.raises(Uncopyable, match=f"copying a {part}: (RuntimeError: no|TypeError: cannot pickle)"):
            frozen(value)

class _Refilled:
    """A view's get() that refills and returns one dict (and its arrays) each time: ``values`` in turn."""

    def __init__(self, values):
        self.values, self.buf = values, {}

    def __call__(self, k):
        if not isinstance(self.values[k], dict):
            return self.values[k]
        self.buf.clear()
        for key, v in self.values[k].items():
            if type(v) is np.ndarray:
                arr = self.arrays.get(key)
                if arr is None or arr.dtype != v.dtype or arr.shape != v.shape:
                    arr = self.arrays[key] = v.copy()
                arr[...] = v
                v = arr
            self.buf[key] = v
        return self.buf

    arrays: dict = {}


def _window(fmt, values):
    """``(ViewValues' batch or its error, Batch.from_values' of copies or its error)``: the same, fed by a get
    refilling one dict and its arrays (strided ones included) as a view may."""
    get = _Refilled(values)
    get.arrays = {}
    buf = ViewValues("user/view/1", fmt, len(values))
    n = len(values)
    for k in range(n):
        buf.add(get(k))
    get.buf.clear()
    for arr in get.arrays.values():
        arr[...] = -7  # (what the view does next: refill)
    return _both_ways(buf, fmt, values, n)


def _both_ways(buf, fmt, values, n):
    """The batch ``buf`` makes and the one ``Batch.from_values`` makes of frozen copies of ``values``
    (or the error each raises: the same both ways)."""
    outcomes = []
    for make in (lambda: buf.batch(np.arange(n), np.arange(n)),
                 lambda: Batch.from_values("user/view/1", fmt, [frozen(v) for v in values], np.arange(n), np.arange(n))):
        try:
            outcomes.append(make())
        except Exception as exc:  # noqa: BLE001 - the same error both ways
            outcomes.append((type(exc), str(exc)))
    return outcomes


VEC = {"value": [4, "float64"]}
MIXED = {"value": [2, 2, "float64"], "n": "int32", "x": "float32"}


@pytest.mark.parametrize("fmt, values", [
    (VEC, [{"value": np.arange(4.0) + k} for k in range(5)]),  # the one copy, the same array refilled
    (VEC, [{"value": np.arange(8.0).reshape(4, 2)[:, 1] + k} for k in range(3)]),  # strided
    (VEC, [{"value": np.arange(4.0, dtype=np.float32) + k} for k in range(3)]),  # safely cast
    (VEC, [{"value": np.arange(4.0) + k} for k in range(3)] + [{"value": np.arange(4, dtype=np.int16)}]),  # then cast
    (VEC, [{"value": np.arange(4.0)}, {"value": [1, 2, 3, 4]}, {"value": np.arange(4.0)}]),  # a list among them
    (VEC, [{"value": np.arange(4.0)}, {"value": np.arange(3.0)}]),  # the wrong shape: the same error
    (VEC, [{"value": np.arange(4.0)}, {"value": np.array(list("abcd"))}]),  # not castable
    (VEC, [{"value": np.arange(4.0)}, {"value": np.arange(4.0), "extra": 1}]),  # another key
    (VEC, [{"value": np.arange(4.0)}, {"other": np.arange(4.0)}]),  # a missing key
    (VEC, [{"value": np.arange(4.0)}, "not a dict"]),
    (MIXED, [{"value": np.full((2, 2), k, float), "n": np.int32(k), "x": np.float32(k / 2)} for k in range(4)]),
    (MIXED, [{"value": np.full((2, 2), k, float), "n": k, "x": 0.5} for k in range(3)]),  # Python scalars
    (MIXED, [{"value": np.full((2, 2), k, float), "n": np.array(k, np.int32), "x": 0.5} for k in range(3)]),  # 0-d array
    (MIXED, [{"value": np.ones((2, 2)), "n": "one", "x": 0.5}]),  # a string for a number: the same error
    (MIXED, [{"value": np.ones((2, 2)), "n": 2**40, "x": 0.5}]),  # not safely castable to int32
    ({"n": "int32", "x": "float64"}, [{"n": np.int32(k), "x": np.array(k / 2)} for k in range(3)]),  # scalars only
    ({"n": "int32", "x": "float64"}, [{"n": np.int32(1), "x": 0.5}, {"n": "one", "x": 0.5}]),
])
def test_view_values_give_the_batch_of_copies_of_what_get_returned(fmt, values):
    got, want = _window(fmt, values)
    if isinstance(want, Batch):
        assert isinstance(got, Batch) and got.equals(want)
        assert all(c.flags.writeable for c in got.columns.values())
    else:
        assert got == want


def test_view_values_copy_what_get_returned_before_it_is_refilled():
    """The same dict and vector refilled each time (a view's common way): each unit is what get returned."""
    buf, arr = ViewValues("user/view/1", VEC, 3), np.zeros(4)
    d = {"value": arr}
    for k in range(3):
        arr[:] = k
        buf.add(d)
    arr[:] = -1
    assert buf.batch([0, 1, 2], [0, 1, 2]).columns["value"].tolist() == [[k] * 4 for k in range(3)]
    assert [u["value"].tolist() for u in buf.units()] == [[k] * 4 for k in range(3)]


def test_view_values_a_value_that_cannot_be_copied_raises_and_leaves_the_window_as_it_was():
    class Stubborn:
        def __deepcopy__(self, memo):
            raise TypeError("cannot copy me")

    buf = ViewValues("user/view/1", VEC, 2)
    buf.add({"value": np.arange(4.0)})
    with pytest.raises(Uncopyable, match="TypeError: cannot copy me"):
        buf.add(Stubborn())
    with pytest.raises(Uncopyable, match="TypeError: cannot copy me"):
        buf.add({"value": Stubborn()})
    assert [u["value"].tolist() for u in buf.units()] == [[0.0, 1.0, 2.0, 3.0]]


def _scalar_window(fmt, values):
    """``(ViewScalars' batch or its error, and units; Batch.from_values' of copies or its error)``, fed by a get
    refilling one dict (and its arrays) as a view may."""
    refilled = _Refilled(values)
    refilled.arrays = {}
    buf = ViewScalars("user/view/1", fmt)
    buf.take(lambda output, k: refilled(k), "out", range(len(values)))
    refilled.buf.clear()
    for arr in refilled.arrays.values():
        arr[...] = -7  # (what the view does next: refill)
    return _both_ways(buf, fmt, values, len(values)), buf.units()


SCALARS = {"n": "int32", "x": "float64"}


@pytest.mark.parametrize("fmt, values", [
    ({"value": "float64"}, [{"value": np.float64(k / 3)} for k in range(5)]),  # the common case
    ({"value": "float64"}, [{"value": k} for k in range(3)] + [{"value": True}, {"value": 0.5}]),  # Python numbers
    ({"value": "float64"}, [{"value": np.float64(1)}, {"value": np.array(2.0)}, {"value": np.float64(3)}]),  # 0-d array
    ({"value": "float64"}, [{"value": np.float64(1)}, {"value": [2.0]}]),  # a list
    ({"value": "float64"}, [{"value": np.float64(1)}, {"value": "one"}]),  # a string: the same error
    ({"value": "float64"}, [{"value": np.float64(1)}, {"value": None}]),
    ({"value": "float64"}, [{"value": np.float64(1)}, {"value": 1.0, "extra": 1}]),  # another key
    ({"value": "float64"}, [{"value": np.float64(1)}, {"other": 1.0}]),  # a missing key
    ({"value": "float64"}, [{"value": np.float64(1)}, "not a dict"]),
    ({"value": "int8"}, [{"value": np.int8(1)}, {"value": 300}]),  # not safely castable
    ({"value": "int32"}, [{"value": np.int64(1)}]),  # nor a wider type
    (SCALARS, [{"n": np.int32(k), "x": np.float64(k / 2)} for k in range(4)]),
    (SCALARS, [{"x": 0.5, "n": 3}, {"n": np.int16(2), "x": np.float32(1)}]),  # Python scalars, narrower types
    (SCALARS, [{"n": np.int32(1), "x": np.array(0.5)}, {"n": np.int32(2), "x": 0.25}]),  # a 0-d array: copied
    (SCALARS, [{"n": np.int32(1), "x": 0.5}, {"n": "one", "x": 0.5}]),
    (SCALARS, [{"n": 2**40, "x": 0.5}]),
    ({"b": "bool", "u": "uint16"}, [{"b": np.bool_(k % 2), "u": np.uint16(k)} for k in range(3)]),
])
def test_view_scalars_give_the_batch_of_copies_of_what_get_returned(fmt, values):
    (got, want), units = _scalar_window(fmt, values)
    if isinstance(want, Batch):
        assert isinstance(got, Batch) and got.equals(want)
    else:
        assert got == want
    assert units == [frozen(v) if isinstance(v, dict) else v for v in values] or not isinstance(want, Batch)
    assert ViewScalars.fits("user/view/1", fmt)


def test_view_scalars_take_each_value_before_get_is_called_again():
    """The same dict refilled each time, and a 0-d array refilled in place: each unit is what get returned."""
    d, zero = {"value": np.float64(0)}, np.array(0.0)

    def get(output, k):
        if k % 2:
            zero[...] = k
            d["value"] = zero
        else:
            d["value"] = np.float64(k)
        return d

    buf = ViewScalars("user/view/1", {"value": "float64"})
    buf.take(get, "out", range(6))
    zero[...] = -1
    d["value"] = np.float64(-1)
    assert buf.batch(np.arange(6), np.arange(6)).columns["value"].tolist() == [0, 1, 2, 3, 4, 5]
    assert not ViewScalars.fits("user/view/1", VEC) and not ViewScalars.fits("user/view/1", {"s": "string"})


def test_view_scalars_a_value_that_cannot_be_copied_raises():
    class Stubborn:
        def __deepcopy__(self, memo):
            raise TypeError("cannot copy me")

    buf = ViewScalars("user/view/1", {"value": "float64"})
    with pytest.raises(Uncopyable, match="TypeError: cannot copy me"):
        buf.take(lambda output, k: {"value": Stubborn()} if k else {"value": 1.0}, "out", range(2))
