"""Typed values: BEAT's baseformat semantics (construction, from_dict, casting, errors, isclose, copy)."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from backbeat.core.errors import DataError
from backbeat.data.values import analysis_format, value_type

COORD = {"x": "int32", "y": "int32"}
FMT = {
    "value": "int32",
    "big": "uint64",
    "score": "float32",
    "name": "string",
    "flag": "bool",
    "c": "complex128",
    "pos": COORD,
    "vec": [0, "float64"],
    "mat": [2, 3, "int16"],
    "tags": [0, "string"],
    "pts": [0, COORD],
}


def make():
    return value_type("user/full/1", FMT)


def test_defaults_and_types():
    T = make()
    t = T()
    assert t.value == 0 and isinstance(t.value, np.int32)
    assert isinstance(t.big, np.uint64) and isinstance(t.score, np.float32)
    assert t.name == "" and t.flag == np.False_
    assert t.pos.x == 0 and type(t.pos) is type(t.pts[:0]._elem())
    assert t.vec.shape == (0,) and t.vec.dtype == np.float64
    assert t.mat.shape == (2, 3) and t.mat.dtype == np.int16 and not t.mat.any()
    assert t.tags.shape == (0,) and t.pts.shape == (0,)
    assert type(T).__name__ == "type" and T.__name__ == "user_full_1"


def test_value_type_is_cached():
    assert value_type("user/full/1", FMT) is value_type("user/full/1", dict(FMT))


def test_constructor_is_unsafe_and_fills_defaults():
    T = make()
    t = T(value=7, score=1.5, vec=[1, 2], pts=[{"x": 1, "y": 2}])
    assert t.value == 7 and t.score == np.float32(1.5)
    assert t.vec.tolist() == [1.0, 2.0]
    assert t.pts[0].y == 2 and isinstance(t.pts[0], type(t.pos))


def test_from_dict_requires_exact_attributes():
    T = make()
    with pytest.raises(DataError, match=r"missing attributes \(.*\) for dataformat `user/full/1' which require"):
        T().from_dict({"value": np.int32(1)})
    with pytest.raises(AttributeError):
        T().from_dict({"value": np.int32(1)})
    with pytest.raises(DataError, match=r"unexpected attribute \(nope\) for dataformat `user/full/1'"):
        T().from_dict({"nope": 1}, add_defaults=True)
    full = T().as_dict()
    full["extra"] = 1
    with pytest.raises(DataError, match="unexpected attribute"):
        T().from_dict(full)


def test_safe_casting_rules():
    T = value_type("user/one/1", {"value": "int32", "u": "uint64", "f": "float32"})
    with pytest.raises(DataError, match=r"cannot safely cast attribute `value' on dataformat `user/one/1' "
                                        r"with type `int64' to `int32' without precision loss"):
        T().from_dict({"value": 5, "u": np.uint64(1), "f": np.float32(1)})
    with pytest.raises(TypeError):
        T().from_dict({"value": 5, "u": np.uint64(1), "f": np.float32(1)})
    # falsy values skip the check (BEAT quirk): Python 0 → uint64 / int32 is fine
    t = T().from_dict({"value": 0, "u": 0, "f": 0.0})
    assert t.u == 0 and isinstance(t.u, np.uint64)
    t = T().from_dict({"value": np.int32(3), "u": np.uint64(2**63), "f": np.float32(2.5)})
    assert t.u == 2**63
    # unsafe casting converts
    assert T().from_dict({"value": 5, "u": 1, "f": 2.5}, casting="unsafe").value == 5


def test_setattr_validates_with_safe_casting():
    T = value_type("user/one/1", {"value": "int32"})
    t = T()
    with pytest.raises(DataError, match="cannot safely cast"):
        t.value = 12
    t.value = np.int32(12)
    t.value = np.int8(3)
    assert t.value == 3 and isinstance(t.value, np.int32)
    with pytest.raises(DataError, match="has no attribute"):
        t.other = 1


def test_array_shape_errors():
    T = make()
    with pytest.raises(DataError, match=r"has 2 dimensions and does not respect .* \(1 dimension\(s\)\)"):
        T(vec=[[1.0]])
    with pytest.raises(DataError, match=r"does not respect dimension restrictions for dimension `1'"):
        T(mat=[[1, 2], [3, 4]])


def test_object_array_assignment_converts_dicts():
    T = make()
    t = T(pts=[{"x": 1, "y": 2}, {"x": 3, "y": 4}])
    t.pts[1] = {"x": np.int32(9), "y": np.int32(8)}
    assert t.pts[1].x == 9 and isinstance(t.pts[1], type(t.pos))


def test_as_dict_copy_eq_isclose():
    T = make()
    t = T(value=1, name="héllo wörld ✓", vec=[0.1, 0.2], tags=["a", "ß"], pts=[{"x": 1, "y": 2}],
          c=1 + 2j, mat=np.arange(6).reshape(2, 3))
    d = t.as_dict()
    assert d["vec"] == [0.1, 0.2] and d["tags"] == ["a", "ß"] and d["pts"] == [{"x": 1, "y": 2}]
    assert d["mat"] == [[0, 1, 2], [3, 4, 5]] and isinstance(d["value"], np.int32)
    u = t.copy()
    assert u == t and u is not t and u.isclose(t)
    u.vec[0] = 0.1 + 1e-12
    assert u != t and u.isclose(t)
    u.tags[0] = "b"
    assert not u.isclose(t)
    assert T(**d) == t
    assert not t.isclose(value_type("user/one/1", {"value": "int32"})())
    assert str(t).startswith("{")


def test_nan_equality():
    T = value_type("user/f/1", {"f": "float64", "a": [0, "float32"]})
    t = T(f=float("nan"), a=[float("nan")])
    assert t == t.copy()


def test_bad_declarations_and_values():
    with pytest.raises(DataError, match="unknown type"):
        value_type("user/bad/1", {"x": "int33"})
    with pytest.raises(DataError, match="invalid array"):
        value_type("user/bad/1", {"x": [-1, "int32"]})
    T = make()
    with pytest.raises(DataError, match="needs a dict"):
        T().from_dict(5)
    with pytest.raises(DataError):
        T(mat=[[1, 2, 3], [4, 5]])


def test_analysis_format():
    name, expanded = analysis_format("user/analyzer/1", {"nb": {"type": "int32", "display": True},
                                                         "sub": {"type": COORD}})
    assert name == "analysis:user/analyzer/1"
    T = value_type(name, expanded)
    t = T(nb=3, sub={"x": 1, "y": 2})
    assert t.as_dict() == {"nb": 3, "sub": {"x": 1, "y": 2}} and T.__name__ == "analysis_user_analyzer_1"


BEAT_PYTHON = "/tmp/beatenv/bin/python"
PACK_FMT = {"a": "int32", "s": "string", "v": [0, 2, "float32"], "o": {"x": "uint8", "t": [0, "string"]},
            "b": "bool", "c": "complex64"}


def _pack_sample():
    T = value_type("user/pack/1", PACK_FMT)
    return T(a=42, s="hé", v=[[1, 2]], o={"x": 3, "t": ["a", "bc"]}, b=True, c=1 + 2j)


def test_pack_unpack_roundtrip_and_truncation():
    t = _pack_sample()
    assert value_type("user/pack/1", {"value": "int32"})(value=42).pack() == bytes.fromhex("2a000000")
    assert type(t)().unpack(t.pack()) == t
    with pytest.raises(DataError, match="truncated"):
        type(t)().unpack(t.pack()[:-1])


@pytest.mark.skipif(not os.path.exists(BEAT_PYTHON), reason="BEAT not installed")
def test_pack_is_byte_identical_to_beat():
    code = (
        "import json, sys\n"
        "from beat.backend.python.dataformat import DataFormat\n"
        "df = DataFormat('/tmp', json.loads(sys.argv[1]))\n"
        "t = df.type(a=42, s='h\\u00e9', v=[[1, 2]], o={'x': 3, 't': ['a', 'bc']}, b=True, c=1 + 2j)\n"
        "sys.stdout.write(t.pack().hex())\n"
    )
    beat = subprocess.run([BEAT_PYTHON, "-c", code, json.dumps(PACK_FMT)], capture_output=True, text=True,
                          check=True).stdout
    assert _pack_sample().pack().hex() == beat
