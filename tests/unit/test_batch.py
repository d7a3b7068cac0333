"""Columnar batches: exact value <-> batch round trips (hypothesis), slicing, concat, validation.

The hypothesis strategies here (``formats``, ``format_and_values``) are also loaded by the
integration tests of cache files and the wire format.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backbeat.core.errors import DataError
from backbeat.data.batch import Batch, concat, layout, row_bytes, unit_bytes
from backbeat.data.values import BASETYPES, value_type

FIELD = st.text(alphabet="abcdxyz_", min_size=1, max_size=4).filter(lambda s: s[0] != "_")


def formats(depth: int = 2) -> st.SearchStrategy[dict]:
    """Random expanded dataformats: basetypes, nested objects, arrays of rank 1-5 (fixed and 0 dims)."""
    base = st.sampled_from(BASETYPES)

    def array(elem: st.SearchStrategy) -> st.SearchStrategy:
        return st.tuples(st.lists(st.integers(0, 2), min_size=1, max_size=5), elem).map(
            lambda t: [*t[0], t[1]])

    leaf = st.one_of(base, array(base))
    if depth <= 0:
        return st.dictionaries(FIELD, leaf, min_size=1, max_size=4)
    sub = formats(depth - 1)
    field = st.one_of(base, base, array(base), sub, array(sub))
    return st.dictionaries(FIELD, field, min_size=0, max_size=4)


def _scalar(t: str) -> st.SearchStrategy:
    if t == "string":
        return st.text(max_size=5)
    if t == "bool":
        return st.booleans().map(np.bool_)
    dt = np.dtype(t)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return st.integers(int(info.min), int(info.max)).map(dt.type)
    if dt.kind == "f":
        return st.floats(width=dt.itemsize * 8).map(dt.type)
    return st.complex_numbers(width=dt.itemsize * 8).map(dt.type)


def _value(spec, draw):
    if isinstance(spec, dict):
        return {k: _value(v, draw) for k, v in spec.items()}
    if isinstance(spec, list):
        dims, elem = spec[:-1], spec[-1]
        shape = tuple(d if d else draw(st.integers(0, 3)) for d in dims)
        n = int(np.prod(shape))
        items = [_value(elem, draw) for _ in range(n)]
        if isinstance(elem, str) and elem != "string":
            return np.array(items, dtype=elem).reshape(shape)
        arr = np.empty(n, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    return draw(_scalar(spec))


@st.composite
def format_and_values(draw, max_values: int = 4):
    fmt = draw(formats())
    T = value_type("user/hypo/1", fmt)
    n = draw(st.integers(0, max_values))
    values = [T(**_value(fmt, draw)) for _ in range(n)]
    return fmt, values


def _ranges(draw_lengths: list[int], first: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ends = first + np.cumsum(draw_lengths) - 1
    starts = ends - np.array(draw_lengths) + 1
    return starts, ends


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(format_and_values(), st.data())
def test_values_batch_roundtrip(fv, data):
    fmt, values = fv
    lengths = data.draw(st.lists(st.integers(1, 3), min_size=len(values), max_size=len(values)))
    starts, ends = _ranges(lengths, 5)
    b = Batch.from_values("user/hypo/1", fmt, values, starts, ends)
    assert len(b) == len(values)
    assert {c.name for c in layout(fmt)} == set(b.columns)
    back = b.to_values()
    assert back == values
    assert [type(v)().unpack(v.pack()) for v in values] == values
    for v, w in zip(values, back, strict=True):
        assert v.as_dict().keys() == w.as_dict().keys()
    # dicts convert with safe casting (as_dict loses the shape of empty arrays, as in BEAT)
    # (and, as in BEAT, the dimensions after a 0-length one, which can make from_dict refuse it)
    try:
        expected = [type(v)().from_dict(v.as_dict()) for v in values]
    except DataError:
        expected = None
    if expected is not None:
        dicts = [v.as_dict() for v in values]
        assert Batch.from_values("user/hypo/1", fmt, dicts).to_values() == expected
    if len(values) >= 2:
        k = data.draw(st.integers(0, len(values)))
        joined = concat([b.slice(0, k), b.slice(k, len(values))])
        assert joined.equals(b)
        assert b[k - 1] == values[k - 1]
        assert b.slice(1, len(values)).to_values() == values[1:]


SINK = {
    **{f"t_{t}": t for t in BASETYPES},
    "r1": [0, "float64"], "r2": [2, 0, "int16"], "r3": [0, 2, 1, "uint8"], "r4": [1, 0, 2, 0, "complex64"],
    "r5": [1, 1, 0, 1, 2, "bool"], "fixed": [2, 3, "float32"], "strs": [0, 2, "string"],
    "obj": {"inner": {"s": "string", "v": [0, "int64"]}, "n": "uint64"},
    "objs": [0, {"name": "string", "m": [0, 0, "float64"]}],
}


def sink_values():
    """Deterministic values of SINK: every basetype and rank, variable dims, empty arrays, non-ASCII."""
    T = value_type("user/sink/1", SINK)
    values = []
    for i in range(4):
        kw = {f"t_{t}": (f"ünïcødé ✓ {i} 日本" if t == "string" else (i % 2 == 0 if t == "bool" else i + 1))
              for t in BASETYPES}
        kw.update(
            r1=np.arange(i, dtype=float) / 3, r2=np.zeros((2, i), np.int16) - i, r3=np.full((i, 2, 1), i, np.uint8),
            r4=np.ones((1, i, 2, 3 - i), np.complex64) * (1 + 2j), r5=np.ones((1, 1, i, 1, 2), bool),
            fixed=np.full((2, 3), i, np.float32), strs=np.array([["α", ""], ["", "β" * i]] * (i % 3), dtype=object),
            obj={"inner": {"s": "é" * i, "v": list(range(i))}, "n": 2**64 - 1 - i},
            objs=[{"name": f"n{j}", "m": np.full((j, i), 0.5)} for j in range(i)],
        )
        values.append(T(**kw))
    return values


def test_every_type_and_rank_roundtrip():
    values = sink_values()
    assert values[0].r1.shape == (0,) and values[0].objs.shape == (0,) and values[3].r4.shape == (1, 3, 2, 0)
    b = Batch.from_values("user/sink/1", SINK, values)
    assert b.to_values() == values
    assert b.to_values()[1].t_string == "ünïcødé ✓ 1 日本" and b[2].obj.n == 2**64 - 3


def test_empty_batch_and_empty_format():
    b = Batch.empty("user/e/1", {})
    assert len(b) == 0 and b.to_values() == []
    T = value_type("user/e/1", {})
    b = Batch.from_values("user/e/1", {}, [T(), T()])
    assert len(b) == 2 and b.to_values() == [T(), T()]


def test_from_columns_fast_path():
    fmt = {"x": "float64", "v": [4, "int32"], "s": "string"}
    n = 1000
    b = Batch.from_columns("user/c/1", fmt, {"x": np.arange(n), "v": np.ones((n, 4)),
                                             "s": [str(i) for i in range(n)]},
                           np.arange(n), np.arange(n))
    assert b.columns["x"].dtype == np.float64 and b.columns["v"].dtype == np.int32
    v = b[999]
    assert v.x == 999.0 and v.s == "999" and v.v.tolist() == [1, 1, 1, 1]


def test_validation_errors():
    fmt = {"s": "string", "a": [0, "int8"]}
    good = Batch.from_values("user/v/1", fmt, [value_type("user/v/1", fmt)(s="ab", a=[1, 2])])
    cols = dict(good.columns)
    cols["s#offsets"] = np.array([0, 5], dtype=np.int64)
    with pytest.raises(DataError, match="offsets"):
        Batch("user/v/1", fmt, [0], [0], cols)
    cols = dict(good.columns)
    cols["a#shape"] = np.array([[3]], dtype=np.int64)
    with pytest.raises(DataError, match="inconsistent"):
        Batch("user/v/1", fmt, [0], [0], cols)
    with pytest.raises(DataError, match="missing"):
        Batch("user/v/1", fmt, [0], [0], {})
    with pytest.raises(DataError, match="contiguous"):
        Batch.from_values("user/v/1", fmt, [good[0], good[0]], [0, 5], [0, 5])
    with pytest.raises(DataError, match="start > end"):
        Batch.from_values("user/v/1", fmt, [good[0]], [3], [2])
    with pytest.raises(DataError, match="cannot concatenate"):
        concat([good, Batch.empty("user/other/1", fmt)])


def test_dicts_of_numbers_convert_as_each_dict_would():
    """The numeric-dicts fast path gives the per-unit path's columns, and leaves to it every dict
    it cannot convert exactly (so BEAT's errors stay the same)."""
    fmt = {"a": "int32", "b": "float64"}
    good = [{"a": np.int32(k), "b": k * 0.5} for k in range(5)]
    batch = Batch.from_values("user/f/1", fmt, good)
    assert batch.columns["a"].dtype == np.int32 and batch.columns["b"].tolist() == [k * 0.5 for k in range(5)]
    cls = value_type("user/f/1", fmt)
    assert batch.equals(Batch.from_values("user/f/1", fmt, [cls(**d) for d in good]))
    for bad, message in (
            ({"a": np.int32(1)}, "missing attributes"),
            ({"a": np.int32(1), "c": 1.0}, "missing attributes"),
            ({"a": np.int32(1), "b": 1.0, "c": 1.0}, "unexpected attribute"),
            ({"a": 1, "b": 1.0}, "cannot safely cast"),  # a Python int is int64
    ):
        with pytest.raises(DataError, match=message):
            Batch.from_values("user/f/1", fmt, [*good, bad])


def test_bytes_per_row_and_per_unit():
    """One measure of a row (cache reads and writes, batches, the wire): at least a byte."""
    assert row_bytes(np.dtype("<f8"), (3, 2)) == 48 and row_bytes(np.dtype("<i4"), ()) == 4
    assert row_bytes(np.dtype("<f8"), (0,)) == 1
    expanded = {"a": [3, "float64"], "b": "int32"}
    assert unit_bytes(expanded, "x") == 16 + 24 + 4
