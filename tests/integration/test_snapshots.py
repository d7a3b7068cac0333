"""A unit is what it was when written (BEAT serialises at ``write()``, spec §5.3): real block processes.

An algorithm keeping a running total in one array and writing it each unit, an algorithm reusing one
output value object (scalar, array, nested, string and variable-length fields mutated in place between
writes), an algorithm passing its input's data object through and mutating it afterwards, and a database
view whose ``get`` returns the same mutated dict each time: the cache files and what the streamed
consumers received must hold each unit's value at its ``write`` (or ``get``), never a later one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from backbeat.cache.backends import open_store
from backbeat.data.cachereader import CacheReader
from backbeat.execution import executors as executor

N = 700  # units: several batches of a streamed output (its first ones are small)

FORMAT = {"value": [3, "float64"], "count": "int64", "label": "string",
          "inner": {"x": "float64", "v": [0, "int32"]}, "names": [0, "string"]}

#: a view class ``(name, docstring)`` over ``parameters["n"]`` entries; its get() goes on from ``k``
VIEW_HEAD = '''import collections

import numpy
from beat.backend.python.database import View

Entry = collections.namedtuple("Entry", ["value"])


class %s(View):
    """%s"""

    def index(self, root_folder, parameters):
        return [Entry(k) for k in range(1, int(parameters["n"]) + 1)]

    def get(self, output, index):
        k = self.objs[index].value
'''

VIEW = VIEW_HEAD % ("Reused", "get() refills and returns one dict (and its arrays) each time.") + '''        if not hasattr(self, "buf"):
            self.v = numpy.zeros(4, dtype=numpy.int32)
            self.names = numpy.array(["", ""], dtype=object)
            self.buf = {"value": numpy.zeros(3), "inner": {"x": 0.0, "v": None}}
        self.buf["value"][:] = (k, k + 0.5, -k)
        self.buf["count"] = k
        self.buf["label"] = "db%d" % k
        self.buf["inner"]["x"] = k / 2
        self.v[:] = k
        self.buf["inner"]["v"] = self.v[:k % 3]
        self.names[0], self.names[1] = "a%d" % k, "b%d" % k
        self.buf["names"] = self.names[:k % 2 + 1]
        return self.buf
'''

FIRST = '''import numpy


class Algorithm:
    def setup(self, parameters):
        self.mode = parameters["mode"]
        self.total = numpy.zeros(3)
        self.count = 0
        self.v = numpy.zeros(2, dtype=numpy.int32)
        self.names = numpy.array(["", ""], dtype=object)
        self.obj = None
        return True

    def process(self, inputs, data_loaders, outputs):
        data = inputs["value"].data
        self.count += 1
        if self.mode == "pass":  # the input's own object, mutated once written
            outputs["out"].write(data)
            data.value[:] = -1
            data.count = -1
            data.inner.v[:] = -1
            return True
        self.total += data.value  # in place: the running total is one array
        self.v[:] = (self.count, -self.count)
        self.names[0], self.names[1] = "t%d" % self.count, "u%d" % data.count
        if self.mode == "total":
            outputs["out"].write({"value": self.total, "count": self.count, "label": "c%d" % self.count,
                                  "inner": {"x": float(self.total[0]), "v": self.v}, "names": self.names})
            return True
        if self.obj is None:  # "reuse": one output object, its fields set in place
            self.obj = outputs["out"]._createData()
            self.obj.value = self.total
            self.obj.inner.v = self.v
            self.obj.names = self.names
        self.obj.names[0], self.obj.names[1] = self.names  # (its setter copied a string array: set in place)
        self.obj.count = self.count
        self.obj.label = "c%d" % self.count
        self.obj.inner.x = float(self.total[0])
        outputs["out"].write(self.obj)
        return True
'''

SECOND = '''class Algorithm:
    def setup(self, parameters):
        return True

    def process(self, inputs, data_loaders, outputs):
        data = inputs["value"].data
        outputs["out"].write(data)  # passed through, then changed: the written unit must not change
        data.value[:] = 0
        data.count = 0
        data.label = "changed"
        data.inner.x = 0.0
        return True
'''

CHECK = '''import hashlib

import numpy


def summary(d):
    return "%s|%d|%s|%r|%s|%s" % (",".join(repr(float(x)) for x in d.value), int(d.count), d.label,
                                  float(d.inner.x), ",".join(str(int(x)) for x in d.inner.v),
                                  ",".join(str(s) for s in d.names))


class Algorithm:
    def setup(self, parameters):
        self.hash = hashlib.sha256()
        self.count = 0
        return True

    def process(self, inputs, data_loaders, output):
        self.hash.update(summary(inputs["values"].data).encode() + b"\\n")
        self.count += 1
        if not inputs.hasMoreData():
            output.write({"digest": self.hash.hexdigest(), "count": numpy.int32(self.count)})
        return True
'''


def summary(d) -> str:
    return "%s|%d|%s|%r|%s|%s" % (",".join(repr(float(x)) for x in d.value), int(d.count), d.label,
                                  float(d.inner.x), ",".join(str(int(x)) for x in d.inner.v),
                                  ",".join(str(s) for s in d.names))


class _Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def db_unit(k: int) -> _Obj:
    return _Obj(value=np.array([k, k + 0.5, -k]), count=k, label=f"db{k}",
                inner=_Obj(x=k / 2, v=np.full(k % 3, k, dtype=np.int32)), names=[f"a{k}", f"b{k}"][:k % 2 + 1])


def expected(mode: str) -> list[str]:
    out, total = [], np.zeros(3)
    for k in range(1, N + 1):
        d = db_unit(k)
        if mode == "pass":
            out.append(summary(d))
            continue
        total = total + d.value
        out.append(summary(_Obj(value=total, count=k, label=f"c{k}", inner=_Obj(x=float(total[0]), v=[k, -k]),
                                names=[f"t{k}", f"u{k}"])))
    return out


def _algorithm(root: Path, name: str, code: str, groups: list, **extra) -> None:
    decl = {"schema_version": 2, "api_version": 2, "type": "sequential", "language": "python",
            "groups": groups, **extra}
    if "results" not in extra:
        decl["splittable"] = False
    (root / "algorithms/snap" / name).mkdir(parents=True)
    (root / f"algorithms/snap/{name}/1.json").write_text(json.dumps(decl, indent=4))
    (root / f"algorithms/snap/{name}/1.py").write_text(code)


@pytest.fixture
def prefix(copy_prefix) -> Path:
    root = copy_prefix()
    (root / "dataformats/snap/unit").mkdir(parents=True)
    (root / "dataformats/snap/unit/1.json").write_text(json.dumps(FORMAT, indent=4))
    (root / "protocoltemplates/snap_sets").mkdir(parents=True)
    (root / "protocoltemplates/snap_sets/1.json").write_text(json.dumps(
        {"schema_version": 1, "sets": [{"name": "items", "outputs": {"value": "snap/unit/1"}}]}))
    (root / "databases/snapdb").mkdir(parents=True)
    (root / "databases/snapdb/1.json").write_text(json.dumps(
        {"schema_version": 2, "root_folder": "/backbeat/tests/snap", "protocols": [
            {"name": "default", "template": "snap_sets/1",
             "views": {"items": {"view": "Reused", "parameters": {"n": N}}}}]}, indent=4))
    (root / "databases/snapdb/1.py").write_text(VIEW)
    io = [{"name": "main", "inputs": {"value": {"type": "snap/unit/1"}}, "outputs": {"out": {"type": "snap/unit/1"}}}]
    _algorithm(root, "first", FIRST, io, parameters={"mode": {"type": "string", "default": "total"}})
    _algorithm(root, "second", SECOND, io)
    _algorithm(root, "check", CHECK, [{"name": "main", "inputs": {"values": {"type": "snap/unit/1"}}}],
               results={"digest": {"type": "string", "display": True}, "count": {"type": "int32", "display": True}})
    return root


def experiment(root: Path, mode: str) -> str:
    exp = Path("experiments/run/run/pipeline/1")
    decl = json.loads((root / exp / "base.json").read_text())
    decl["datasets"]["items"] = {"database": "snapdb/1", "protocol": "default", "set": "items"}
    decl["blocks"]["first"].update(algorithm="snap/first/1", parameters={"mode": mode})
    decl["blocks"]["second"].update(algorithm="snap/second/1", parameters={})
    decl["analyzers"]["analysis"].update(algorithm="snap/check/1")
    (root / exp / f"snap_{mode}.json").write_text(json.dumps(decl, indent=4))
    return f"run/run/pipeline/1/snap_{mode}"


def cached_units(cache: Path, key: str) -> list[str]:
    with CacheReader(open_store(cache).output_path(key)) as reader:
        return [summary(value) for value, _s, _e in reader]


@pytest.mark.parametrize("mode", ["total", "reuse", "pass"])
@pytest.mark.parametrize("stream", [True, False])
def test_each_unit_is_what_was_written_at_its_write(prefix, tmp_path, mode, stream):
    name = experiment(prefix, mode)
    cache = tmp_path / "cache"
    rep = executor.run_experiment(prefix, cache, name, executor.Options(jobs=2, stream=stream))
    assert {b: v["status"] for b, v in rep["blocks"].items()} == {"first": "ran", "second": "ran", "analysis": "ran"}, rep["blocks"]["analysis"].get("error")
    if stream:
        assert rep["blocks"]["second"]["statistics"]["streamed_from"] == "first"
        assert rep["blocks"]["analysis"]["statistics"]["streamed_from"] == "second"
    want = expected(mode)
    for block in ("first", "second"):  # the cached files, unit by unit
        got = cached_units(cache, rep["blocks"][block]["outputs"]["out"])
        bad = next((i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w), None)
        assert bad is None, (block, bad, got[bad], want[bad])
    # what the (streamed) analyzer received
    digest = hashlib.sha256("".join(s + "\n" for s in want).encode()).hexdigest()
    assert rep["results"]["analysis"][0]["data"] == {"digest": digest, "count": N}
    again = executor.run_experiment(prefix, cache, name, executor.Options(jobs=2))
    assert set(v["status"] for v in again["blocks"].values()) == {"cached"}
    assert again["results"] == rep["results"]


# -- the database provider's one copy: vectors a view refills, taken straight into the window's columns

VEC_VIEW = VIEW_HEAD % ("Refilled", "get() refills and returns one dict and one array each time (``mode``: which array).") + '''        mode = self.parameters["mode"]
        if not hasattr(self, "buf"):
            self.f64, self.f32, self.wide, self.buf = numpy.zeros(4), numpy.zeros(4, numpy.float32), numpy.zeros((4, 2)), {}
        if mode == "same" or (mode == "mixed" and k % 3):  # the declared dtype and shape: the one copy
            self.buf["value"] = self.f64
        elif mode == "strided":  # a column of a wider array: not contiguous
            self.buf["value"] = self.wide[:, 1]
        else:  # another dtype (cast as before; every third unit of `mixed', after units taken the fast way)
            self.buf["value"] = self.f32
        self.buf["value"][:] = (k, k + 0.25, -k, 2 * k)
        return self.buf
'''

VEC_PASS = SECOND.split("        data.value[:] = 0")[0] + """        data.value[:] = -1
        return True
"""

VEC_CHECK = CHECK.replace(CHECK[CHECK.index("def summary"):CHECK.index("class Algorithm")], """def summary(d):
    return repr([float(x) for x in d.value])


""")

VEC_MODES = ["same", "strided", "float32", "mixed"]


@pytest.fixture
def vec_prefix(copy_prefix) -> Path:
    root = copy_prefix()
    (root / "dataformats/snap/vec").mkdir(parents=True)
    (root / "dataformats/snap/vec/1.json").write_text(json.dumps({"value": [4, "float64"]}))
    (root / "protocoltemplates/snap_vsets").mkdir(parents=True)
    (root / "protocoltemplates/snap_vsets/1.json").write_text(json.dumps(
        {"schema_version": 1, "sets": [{"name": "items", "outputs": {"value": "snap/vec/1"}}]}))
    (root / "databases/snapvec").mkdir(parents=True)
    (root / "databases/snapvec/1.json").write_text(json.dumps(
        {"schema_version": 2, "root_folder": "/backbeat/tests/snapvec", "protocols": [
            {"name": mode, "template": "snap_vsets/1",
             "views": {"items": {"view": "Refilled", "parameters": {"n": N, "mode": mode}}}} for mode in VEC_MODES]}))
    (root / "databases/snapvec/1.py").write_text(VEC_VIEW)
    io = [{"name": "main", "inputs": {"value": {"type": "snap/vec/1"}}, "outputs": {"out": {"type": "snap/vec/1"}}}]
    _algorithm(root, "vpass", VEC_PASS, io)
    _algorithm(root, "vcheck", VEC_CHECK, [{"name": "main", "inputs": {"values": {"type": "snap/vec/1"}}}],
               results={"digest": {"type": "string", "display": True}, "count": {"type": "int32", "display": True}})
    exp = Path("experiments/run/run/pipeline/1")
    decl = json.loads((root / exp / "base.json").read_text())
    for mode in VEC_MODES:
        decl["datasets"]["items"] = {"database": "snapvec/1", "protocol": mode, "set": "items"}
        decl["blocks"]["first"].update(algorithm="snap/vpass/1", parameters={})
        decl["blocks"]["second"].update(algorithm="snap/vpass/1", parameters={})
        decl["analyzers"]["analysis"].update(algorithm="snap/vcheck/1")
        (root / exp / f"vec_{mode}.json").write_text(json.dumps(decl, indent=4))
    return root


@pytest.mark.parametrize("mode", VEC_MODES)
def test_each_vector_is_what_the_view_returned_at_its_get(vec_prefix, tmp_path, mode):
    """The provider copies each vector into the window's columns at get (the view refills it next)."""
    cache = tmp_path / "cache"
    rep = executor.run_experiment(vec_prefix, cache, f"run/run/pipeline/1/vec_{mode}", executor.Options(jobs=2))
    assert {b: v["status"] for b, v in rep["blocks"].items()} == {"first": "ran", "second": "ran", "analysis": "ran"}, rep["blocks"]["analysis"].get("error")
    want = [[float(k), k + 0.25, float(-k), 2.0 * k] for k in range(1, N + 1)]
    for block in ("first", "second"):
        with CacheReader(open_store(cache).output_path(rep["blocks"][block]["outputs"]["out"])) as reader:
            got = [[float(x) for x in value.value] for value, _s, _e in reader]
        bad = next((i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w), None)
        assert bad is None, (block, bad, got[bad], want[bad])
    digest = hashlib.sha256("".join(repr(w) + "\n" for w in want).encode()).hexdigest()
    assert rep["results"]["analysis"][0]["data"] == {"digest": digest, "count": N}
