"""Tests of backbeat.schema: BEAT's schema verdicts for every kind and version.

Every verdict below was confirmed by running BEAT 1.13's ``beat.core.schema.validate``
on the same declaration (``test_verdicts_match_beat`` re-checks them when a BEAT
installation is available at /tmp/beatenv).  "Invalid" includes the cases where BEAT
crashes (unknown schema version, non-object declaration, loops in a v1 toolchain).
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from backbeat.core.errors import Problem, UsageError
from backbeat.declarations import schema

REF = "user/integer/1"

# -- valid base declarations ---------------------------------------------------------
DATAFORMAT = {
    "#description": "a record",
    "value": "int32",
    "name": "string",
    "matrix": [0, 3, "float64"],
    "cube": [1, 2, 3, 4, 5, "uint8"],
    "nested": {"x": "float32", "list": [0, {"y": "bool"}]},
    "other": REF,
    "others": [0, REF],
}
DATAFORMAT_EXT = {"#extends": REF, "#schema_version": 1, "extra": "complex128"}

_IO = {"inputs": {"in": {"type": REF}}, "outputs": {"out": {"type": REF, "description": "x"}}}
ALGO_V1_BLOCK = {
    "language": "python",
    "splittable": True,
    "groups": [dict(_IO, name="main"), {"inputs": {"in2": {"type": REF}}}],
    "parameters": {
        "p": {"type": "int32", "default": 1, "range": [0, 5]},
        "q": {"type": "string", "default": "a", "choice": ["a", "b", "c"], "description": "x"},
    },
    "uses": {"lib": "user/lib/1"},
    "description": "a block",
}
ALGO_V1_ANALYZER = {
    "language": "python",
    "groups": [{"inputs": {"in": {"type": REF}}}],
    "parameters": {"p": {"type": "float64"}},
    "results": {"score": {"type": "float32", "display": True}, "plot": {"type": "plot/isoroc/1"},
                "sys": {"type": "system/text/1"}},
}
ALGO_V2_BLOCK = {"schema_version": 2, "api_version": 2, "type": "sequential", "language": "python",
                 "splittable": False, "groups": [_IO]}
ALGO_V2_ANALYZER = {"schema_version": 2, "api_version": 2, "type": "autonomous", "language": "python",
                    "groups": [{"inputs": {"in": {"type": REF}}}], "results": {"r": {"type": "int32"}}}
_LOOP = {"request": {"type": REF}, "answer": {"type": REF}}
ALGO_V3_PROCESSOR = {"schema_version": 3, "api_version": 2, "type": "sequential_loop_processor",
                     "language": "python", "splittable": False,
                     "groups": [dict(_IO, loop=_LOOP), {"inputs": {"x": {"type": REF}}}]}
ALGO_V3_EVALUATOR = {"schema_version": 3, "api_version": 2, "type": "autonomous_loop_evaluator",
                     "language": "python", "groups": [dict(_IO, loop=_LOOP)], "parameters": {}}
ALGO_V3_BLOCK = dict(ALGO_V2_BLOCK, schema_version=3, type="legacy")
LIBRARY = {"language": "python", "description": "helpers", "uses": {"other": "user/other/1"}}
DATABASE_V1 = {
    "root_folder": "/data/db",
    "description": "a database",
    "environment": {"name": "env", "version": "1"},
    "direct_rawdata_access": True,
    "protocols": [{"name": "proto.1", "template": "tpl", "sets": [
        {"name": "train", "template": "train", "view": "Train", "parameters": {"a": 1, "b": "x"},
         "outputs": {"value": REF}}]}],
}
DATABASE_V2 = {
    "schema_version": 2,
    "root_folder": "nfs://host:/data/db",
    "protocols": [{"name": "p", "template": "tpl/1",
                   "views": {"train": {"view": "Train", "parameters": {"x": True}}, "test": {}}}],
}
PROTOCOLTEMPLATE = {"schema_version": 1, "description": "t",
                    "sets": [{"name": "train", "outputs": {"value": REF, "id": "user/id/1"}}]}
_REPR = {"connections": {"a.out/b.in": [{"col": 1, "row": 2}]},
         "blocks": {"b": {"col": 1, "row": 2, "width": 3, "height": 4}},
         "channel_colors": {"a": "#00ff00"}}
TOOLCHAIN_V1 = {
    "description": "tc",
    "datasets": [{"name": "a", "outputs": ["out"]}],
    "blocks": [{"name": "b", "synchronized_channel": "a", "inputs": ["in"], "outputs": ["out"]}],
    "analyzers": [{"name": "an", "synchronized_channel": "a", "inputs": ["in"]}],
    "connections": [{"from": "a.out", "to": "b.in", "channel": "a"},
                    {"from": "b.out", "to": "an.in", "channel": "a"}],
    "representation": _REPR,
}
TOOLCHAIN_V2 = dict(TOOLCHAIN_V1, schema_version=2, loops=[{
    "name": "loop", "synchronized_channel": "a", "processor_inputs": ["pi"], "processor_outputs": ["po"],
    "evaluator_inputs": ["ei"], "evaluator_outputs": ["eo"]}])
EXPERIMENT_V1 = {
    "description": "xp",
    "datasets": {"a": {"database": "mydb/1", "protocol": "p.1", "set": "train"}},
    "blocks": {"b": {"algorithm": "user/algo/1", "inputs": {"in": "in"}, "outputs": {"out": "out"},
                     "parameters": {"p": 1}, "queue": "q", "environment": {"name": "e", "version": "1"},
                     "nb_slots": 2}},
    "analyzers": {"an": {"algorithm": "user/an/1", "inputs": {"in": "in"}}},
    "globals": {"queue": "q", "environment": {"name": "e", "version": "1"}, "user/algo/1": {"p": 2.5}},
}
EXPERIMENT_V2 = dict(EXPERIMENT_V1, schema_version=2, loops={"loop": {
    "processor_algorithm": "user/proc/1", "processor_inputs": {"i": "pi"}, "processor_outputs": {"o": "po"},
    "processor_parameters": {"x": "y"}, "evaluator_algorithm": "user/eval/1",
    "evaluator_inputs": {"i": "ei"}, "evaluator_outputs": {"o": "eo"}, "nb_slots": 1}})
PLOTTER = {"language": "python", "dataformat": "plot/isoroc/1", "parameters": {"title": {"type": "string"}},
           "uses": {}}
PLOTTERPARAMETER = {"plotter": "user/plot/1", "data": {"title": "x", "dpi": 72}, "description": "d"}

VALID: list[tuple[str, dict]] = [
    ("dataformat", DATAFORMAT), ("dataformat", DATAFORMAT_EXT), ("dataformat", {}),
    ("dataformat", {"#schema_version": 1.0, "a": "int8"}),
    ("algorithm", ALGO_V1_BLOCK), ("algorithm", ALGO_V1_ANALYZER), ("algorithm", ALGO_V2_BLOCK),
    ("algorithm", ALGO_V2_ANALYZER), ("algorithm", ALGO_V3_PROCESSOR), ("algorithm", ALGO_V3_EVALUATOR),
    ("algorithm", ALGO_V3_BLOCK), ("algorithm", dict(ALGO_V2_BLOCK, schema_version=2.0)),
    ("library", LIBRARY), ("library", {}),
    ("database", DATABASE_V1), ("database", DATABASE_V2),
    ("protocoltemplate", PROTOCOLTEMPLATE),
    ("toolchain", TOOLCHAIN_V1), ("toolchain", TOOLCHAIN_V2),
    ("experiment", EXPERIMENT_V1), ("experiment", EXPERIMENT_V2),
    ("plotter", PLOTTER), ("plotterparameter", PLOTTERPARAMETER),
    # BEAT quirks kept on purpose (see docs/schemas.md)
    ("algorithm", dict(ALGO_V1_BLOCK, parameters={"p": {"type": "int8", "foo": 1, "range": "any"}})),
    ("library", {"language": "python", "foo": 1}),
    ("library", {"uses": {"1bad alias": 5}}),
    ("toolchain", dict(TOOLCHAIN_V1, loops=[])),
    ("toolchain", dict(TOOLCHAIN_V1, connections=[{"from": "a-out", "to": "b+in", "channel": "a"}])),
    ("database", dict(DATABASE_V2, protocols=[dict(DATABASE_V2["protocols"][0],
                                                   views={"train": {}, "not a name": 5})])),
    ("experiment", dict(EXPERIMENT_V1, blocks={})),
    ("algorithm", dict(ALGO_V2_BLOCK, api_version=7)),
]


def _drop(decl: dict, key: str) -> dict:
    out = copy.deepcopy(decl)
    del out[key]
    return out


def _set(decl: dict, path: str, value) -> dict:
    """Copy of ``decl`` with the value at slash-separated ``path`` replaced."""
    out = copy.deepcopy(decl)
    *parents, last = path.split("/")
    node = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


LONG = "x" * 101

# (kind, declaration, pointer of one expected problem)
INVALID: list[tuple[str, object, str]] = [
    # dataformat
    ("dataformat", {"a": "int33"}, "/a"),
    ("dataformat", {"a": [2, [3, "int32"]]}, "/a/1"),  # arrays of arrays
    ("dataformat", {"a": [2.0, "int32"]}, "/a/0"),  # draft-4 integer
    ("dataformat", {"a": [1, 2, 3, 4, 5, 6, "int32"]}, "/a"),  # six dimensions
    ("dataformat", {"a": ["int32"]}, "/a"),
    ("dataformat", {"a": 5}, "/a"),
    ("dataformat", {"1a": "int32"}, "/1a"),
    ("dataformat", {"#foo": "int32"}, "/#foo"),
    ("dataformat", {"#description": LONG}, "/#description"),
    ("dataformat", {"#extends": "bad"}, "/#extends"),
    ("dataformat", {"n": {"x": {"y": "uint99"}}}, "/n/x/y"),
    ("dataformat", {"#schema_version": 2, "a": "int32"}, "/#schema_version"),
    ("dataformat", {"#schema_version": 1.5}, "/#schema_version"),
    ("dataformat", {"#schema_version": True}, "/#schema_version"),
    ("dataformat", {"#schema_version": "1"}, "/#schema_version"),
    ("dataformat", ["int32"], ""),
    # algorithm v1
    ("algorithm", _drop(ALGO_V1_BLOCK, "splittable"), ""),
    ("algorithm", _drop(ALGO_V1_BLOCK, "language"), ""),
    ("algorithm", _set(ALGO_V1_BLOCK, "language", "java"), "/language"),
    ("algorithm", _set(ALGO_V1_BLOCK, "description", LONG), "/description"),
    ("algorithm", _set(ALGO_V1_BLOCK, "splittable", "yes"), "/splittable"),
    ("algorithm", _set(ALGO_V1_BLOCK, "groups", []), "/groups"),
    ("algorithm", _set(ALGO_V1_BLOCK, "groups/0/inputs/in/type", "integer"), "/groups/0/inputs/in/type"),
    ("algorithm", _set(ALGO_V1_BLOCK, "groups/0/inputs", {}), "/groups/0/inputs"),
    ("algorithm", _set(ALGO_V1_BLOCK, "groups/1/outputs", {"o": {"type": REF}}), "/groups/1/outputs"),
    ("algorithm", _set(ALGO_V1_BLOCK, "parameters/p/type", "int"), "/parameters/p/type"),
    ("algorithm", _set(ALGO_V1_BLOCK, "parameters/p/default", [1]), "/parameters/p/default"),
    ("algorithm", _set(ALGO_V1_BLOCK, "parameters/p", {"default": 1}), "/parameters/p"),
    ("algorithm", _set(ALGO_V1_BLOCK, "parameters/bad name", {"type": "int8"}), "/parameters/bad name"),
    ("algorithm", _set(ALGO_V1_BLOCK, "foo", 1), "/foo"),
    ("algorithm", _set(ALGO_V1_BLOCK, "uses/lib", "nolib"), "/uses/lib"),
    ("algorithm", _set(ALGO_V1_BLOCK, "uses/x_additionalProperties", REF), "/uses/x_additionalProperties"),
    ("algorithm", dict(ALGO_V1_ANALYZER, splittable=True), "/splittable"),
    ("algorithm", _set(ALGO_V1_ANALYZER, "results/score/type", "float64"), "/results/score/type"),
    ("algorithm", _set(ALGO_V1_ANALYZER, "results", {}), "/results"),
    ("algorithm", _set(ALGO_V1_ANALYZER, "groups/0/outputs", {"o": {"type": REF}}), "/groups/0/outputs"),
    # algorithm v2
    ("algorithm", _drop(ALGO_V2_BLOCK, "type"), ""),
    ("algorithm", _drop(ALGO_V2_BLOCK, "api_version"), ""),
    ("algorithm", _set(ALGO_V2_BLOCK, "type", "sequential_loop_processor"), "/type"),
    ("algorithm", _set(ALGO_V2_BLOCK, "api_version", 0), "/api_version"),
    ("algorithm", dict(ALGO_V2_ANALYZER, parameters={}), "/parameters"),  # v2 analyzers: no parameters
    ("algorithm", dict(ALGO_V1_BLOCK, schema_version=2), ""),
    # algorithm v3
    ("algorithm", _set(ALGO_V3_PROCESSOR, "groups/0/loop", {"request": {"type": REF}}), "/groups/0/loop"),
    ("algorithm", _drop(ALGO_V3_PROCESSOR, "splittable"), ""),
    ("algorithm", dict(ALGO_V3_EVALUATOR, splittable=True), "/splittable"),
    ("algorithm", _set(ALGO_V3_EVALUATOR, "type", "loop"), "/type"),
    ("algorithm", dict(ALGO_V1_BLOCK, schema_version=4), "/schema_version"),
    ("algorithm", dict(ALGO_V1_BLOCK, schema_version=0), "/schema_version"),
    ("algorithm", dict(ALGO_V1_BLOCK, schema_version=None), "/schema_version"),
    # library
    ("library", {"language": "c"}, "/language"),
    ("library", {"description": LONG}, "/description"),
    ("library", {"uses": {"a": "not/a/ref/x"}}, "/uses/a"),
    ("library", {"uses": []}, "/uses"),
    ("library", {"schema_version": 1.5}, "/schema_version"),
    ("library", "python", ""),
    # database v1
    ("database", _drop(DATABASE_V1, "root_folder"), ""),
    ("database", _set(DATABASE_V1, "root_folder", "relative/path"), "/root_folder"),
    ("database", _set(DATABASE_V1, "protocols", []), "/protocols"),
    ("database", _set(DATABASE_V1, "protocols/0/sets/0/view", "a.b"), "/protocols/0/sets/0/view"),
    ("database", _set(DATABASE_V1, "protocols/0/sets/0/outputs", {}), "/protocols/0/sets/0/outputs"),
    ("database", _set(DATABASE_V1, "protocols/0/sets/0/parameters/a", [1]), "/protocols/0/sets/0/parameters/a"),
    ("database", _set(DATABASE_V1, "protocols/0/name", ".p"), "/protocols/0/name"),
    ("database", _set(DATABASE_V1, "environment", {"name": "e"}), "/environment"),
    ("database", _set(DATABASE_V1, "direct_rawdata_access", 1), "/direct_rawdata_access"),
    ("database", _set(DATABASE_V1, "protocols", DATABASE_V1["protocols"] * 2), "/protocols"),
    # database v2
    ("database", _set(DATABASE_V2, "protocols/0/template", "tpl"), "/protocols/0/template"),
    ("database", _set(DATABASE_V2, "protocols/0/views", {}), "/protocols/0/views"),
    ("database", _set(DATABASE_V2, "protocols/0/views/train/view", "1x"), "/protocols/0/views/train/view"),
    ("database", _set(DATABASE_V2, "protocols/0/views/train/outputs", {}), "/protocols/0/views/train/outputs"),
    ("database", dict(DATABASE_V1, schema_version=2), "/protocols/0/sets"),
    ("database", dict(DATABASE_V2, schema_version=3), "/schema_version"),
    # protocoltemplate
    ("protocoltemplate", _drop(PROTOCOLTEMPLATE, "schema_version"), ""),
    ("protocoltemplate", _drop(PROTOCOLTEMPLATE, "sets"), ""),
    ("protocoltemplate", _set(PROTOCOLTEMPLATE, "sets", []), "/sets"),
    ("protocoltemplate", _set(PROTOCOLTEMPLATE, "sets/0/outputs/value", "int32"), "/sets/0/outputs/value"),
    ("protocoltemplate", _set(PROTOCOLTEMPLATE, "sets/0/view", "V"), "/sets/0/view"),
    ("protocoltemplate", _set(PROTOCOLTEMPLATE, "schema_version", 2), "/schema_version"),
    # toolchain
    ("toolchain", _drop(TOOLCHAIN_V1, "representation"), ""),
    ("toolchain", _set(TOOLCHAIN_V1, "blocks/0/inputs", []), "/blocks/0/inputs"),
    ("toolchain", _set(TOOLCHAIN_V1, "blocks/0/inputs", ["in", "in"]), "/blocks/0/inputs"),
    ("toolchain", _set(TOOLCHAIN_V1, "blocks/0/name", "b.c"), "/blocks/0/name"),
    ("toolchain", _set(TOOLCHAIN_V1, "blocks/0", _drop(TOOLCHAIN_V1["blocks"][0], "synchronized_channel")),
     "/blocks/0"),
    ("toolchain", _set(TOOLCHAIN_V1, "connections/0/from", "a"), "/connections/0/from"),
    ("toolchain", _set(TOOLCHAIN_V1, "representation/channel_colors/a", "green"),
     "/representation/channel_colors/a"),
    ("toolchain", _set(TOOLCHAIN_V1, "representation/blocks/b/col", 1.0), "/representation/blocks/b/col"),
    ("toolchain", TOOLCHAIN_V2 | {"schema_version": 1}, "/loops"),  # v1 has no loop definition
    ("toolchain", _drop(TOOLCHAIN_V2, "loops"), ""),
    ("toolchain", _set(TOOLCHAIN_V2, "loops/0/evaluator_outputs", []), "/loops/0/evaluator_outputs"),
    ("toolchain", _set(TOOLCHAIN_V1, "description", LONG), "/description"),
    # experiment
    ("experiment", _drop(EXPERIMENT_V1, "globals"), ""),
    ("experiment", _set(EXPERIMENT_V1, "datasets", {}), "/datasets"),
    ("experiment", _set(EXPERIMENT_V1, "analyzers", {}), "/analyzers"),
    ("experiment", _set(EXPERIMENT_V1, "datasets/a/database", "db"), "/datasets/a/database"),
    ("experiment", _set(EXPERIMENT_V1, "blocks/b/inputs", {"in-x": "in"}), "/blocks/b/inputs/in-x"),
    ("experiment", _set(EXPERIMENT_V1, "blocks/b/nb_slots", 0), "/blocks/b/nb_slots"),
    ("experiment", _set(EXPERIMENT_V1, "blocks/b/nb_slots", 2.0), "/blocks/b/nb_slots"),
    ("experiment", _set(EXPERIMENT_V1, "blocks/b/algorithm", "algo"), "/blocks/b/algorithm"),
    ("experiment", dict(EXPERIMENT_V1, globals={"user/algo": {}}), "/globals/user~1algo"),
    ("experiment", _set(EXPERIMENT_V1, "globals/queue", 1), "/globals/queue"),
    ("experiment", EXPERIMENT_V2 | {"schema_version": 1}, "/loops"),
    ("experiment", _set(EXPERIMENT_V2, "loops/loop/evaluator_inputs", {}), "/loops/loop/evaluator_inputs"),
    ("experiment", _set(EXPERIMENT_V1, "description", LONG), "/description"),
    # plotter, plotterparameter
    ("plotter", _drop(PLOTTER, "parameters"), ""),
    ("plotter", _set(PLOTTER, "dataformat", "user/isoroc/1"), "/dataformat"),
    ("plotter", _set(PLOTTER, "parameters/title", {"type": "str"}), "/parameters/title/type"),
    ("plotterparameter", _drop(PLOTTERPARAMETER, "plotter"), ""),
    ("plotterparameter", _set(PLOTTERPARAMETER, "data/title", {"a": 1}), "/data/title"),
    ("plotterparameter", _set(PLOTTERPARAMETER, "extra", 1), "/extra"),
]


def _case_id(case) -> str:
    return f"{case[0]}:{json.dumps(case[1])[:60]}"


@pytest.mark.parametrize("kind, decl", VALID, ids=map(_case_id, VALID))
def test_valid(kind, decl):
    assert schema.validate(kind, decl) == []


@pytest.mark.parametrize("kind, decl, where", INVALID, ids=map(_case_id, INVALID))
def test_invalid(kind, decl, where):
    problems = schema.validate(kind, decl)
    assert problems, "expected the declaration to be refused"
    assert all(isinstance(p, Problem) and p.message and p.file is None and p.asset is None for p in problems)
    assert where in [p.pointer for p in problems], [str(p) for p in problems]
    # problems are sorted by location
    pointers = [p.pointer for p in problems]
    assert pointers == sorted(pointers, key=lambda s: [int(x) if x.isdigit() else x for x in s.split("/")]) \
        or len(set(pointers)) == len(pointers)


def test_every_kind_and_version_is_covered():
    covered_valid = {(k, schema.select_version(k, d)) for k, d in VALID}
    covered_invalid = {(k, schema.select_version(k, d)) for k, d, _ in INVALID if isinstance(d, dict)}
    for kind, versions in schema.VERSIONS.items():
        for version in versions:
            assert (kind, version) in covered_valid
            assert (kind, version) in covered_invalid


def test_collects_every_error_sorted():
    decl = {"language": "python", "splittable": 1, "groups": [{"inputs": {}, "outputs": {"o": {"type": "x"}}}],
            "bogus": True, "description": LONG}
    problems = schema.validate("algorithm", decl)
    pointers = [p.pointer for p in problems]
    assert pointers == ["/bogus", "/description", "/groups/0/inputs", "/groups/0/outputs/o/type", "/splittable"]


def test_messages_are_readable():
    (p,) = schema.validate("dataformat", {"a": [2, [3, "int32"]]})
    assert p.pointer == "/a/1" and "basetype" in p.message and len(p.message) < 200
    (p,) = schema.validate("algorithm", dict(ALGO_V1_BLOCK, foo=1))
    assert p.pointer == "/foo" and "unexpected" in p.message
    (p,) = schema.validate("toolchain", dict(TOOLCHAIN_V1, description=LONG))
    assert "at most 100" in p.message
    (p,) = schema.validate("protocoltemplate", dict(PROTOCOLTEMPLATE, schema_version=2))
    assert "unsupported" in p.message and "supported: 1" in p.message
    (p,) = schema.validate("algorithm", dict(ALGO_V1_BLOCK, schema_version="2"))
    assert "must be an integer" in p.message
    (p,) = schema.validate("experiment", [1])
    assert p.pointer == "" and "JSON object" in p.message


def test_unknown_kind_or_version_is_a_usage_error():
    with pytest.raises(UsageError):
        schema.validate("widget", {})
    with pytest.raises(UsageError):
        schema.schema_path("toolchain", 3)


def test_schema_files_ids_and_package_data():
    import importlib.resources

    root = schema.schema_dir()
    assert root == Path(str(importlib.resources.files("backbeat") / "schemas"))
    assert root.is_dir() and (root / "common" / "1.json").is_file()
    repo = Path(__file__).resolve().parents[2] / "schemas"  # editable install: the same folder;
    shipped = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.glob("*/*.json")}  # installed: a copy
    assert shipped == {p.relative_to(repo).as_posix(): p.read_bytes() for p in repo.glob("*/*.json")}
    assert {p.parent.name for p in root.glob("*/*.json")} == set(schema.VERSIONS) | {"common"}
    for kind, versions in schema.VERSIONS.items():
        for version in versions:
            path = schema.schema_path(kind, version)
            assert path.is_file() and path.parent.parent == root
            doc = schema.schema_for(kind, version)
            assert doc["$id"] == f"https://backbeat.dev/schemas/{kind}/{version}.json"
            assert doc["$schema"] == "http://json-schema.org/draft-07/schema#"
            assert json.loads(path.read_text()) == doc


def test_every_ref_resolves():
    registry = schema.registry()
    refs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted(schema.schema_dir().glob("*/*.json")):
        doc = json.loads(path.read_text())
        refs.clear()
        walk(doc)
        resolver = registry.resolver(base_uri=doc["$id"])
        for ref in refs:
            assert ref.startswith(("#", "https://backbeat.dev/schemas/")), ref
            assert resolver.lookup(ref).contents is not None, (path, ref)


def test_schemas_are_valid_draft7():
    import jsonschema

    for path in sorted(schema.schema_dir().glob("*/*.json")):
        jsonschema.Draft7Validator.check_schema(json.loads(path.read_text()))


def test_schema_for_returns_a_copy():
    doc = schema.schema_for("library", 1)
    doc["properties"].clear()
    assert schema.schema_for("library", 1)["properties"]


def test_fast_enough():
    cases = [(k, d) for k, d in VALID] * 20
    schema.validate("algorithm", ALGO_V1_BLOCK)  # warm the caches
    start = time.perf_counter()
    for kind, decl in cases:
        schema.validate(kind, decl)
    per_decl = (time.perf_counter() - start) / len(cases)
    assert per_decl < 0.5e-3, f"{per_decl * 1e3:.3f} ms per declaration"


# -- differential tests on mutated declarations -----------------------------------------
_VALUES = [0, 1, 2, -1, 2.0, 1.5, True, False, None, "", "int32", "string", "uint99", REF, "plot/isoroc/1",
           "system/text/1", "a/b/c/1", "user/x", "x", "1x", "a.b", "a-b", "a.out", "#00ff00", "/data/x", "tpl/1",
           LONG, "python", "cxx", "sequential", "autonomous_loop_evaluator", [], {}, [0, "int32"],
           [2, [3, "int8"]], [1, 2], ["a", "a"], ["a"], {"type": "int32"}, {"type": REF}, {"a": "int32"},
           {"in": "in"}, {"name": "e", "version": "1"}, {"x": 1}, [{"col": 1, "row": 1}], 1.0,
           "x_additionalProperties"]
_KEYS = ["foo", "type", "name", "default", "range", "description", "#description", "#extends", "schema_version",
         "#schema_version", "api_version", "splittable", "results", "parameters", "uses", "loops", "1bad", "a-b",
         "x_additionalProperties", "view", "outputs", "inputs", "loop", "nb_slots", "environment", "template",
         "sets", "views", "display", "user/algo/1", "a.b/c.d"]


def _mutants(seed: int, count: int) -> list[tuple[str, dict]]:
    """Declarations derived from VALID by 1-3 random edits (delete, replace, add)."""
    rng = random.Random(seed)

    def spots(node, path=()):
        if isinstance(node, (dict, list)):
            yield node
            for child in (node.values() if isinstance(node, dict) else node):
                yield from spots(child)

    out = []
    for _ in range(count):
        kind, decl = rng.choice(VALID)
        decl = copy.deepcopy(decl)
        for _ in range(rng.randint(1, 3)):
            node = rng.choice(list(spots(decl)))
            op = rng.random()
            if isinstance(node, dict):
                if node and op < 0.3:
                    del node[rng.choice(list(node))]
                else:
                    key = rng.choice(list(node)) if node and op < 0.7 else rng.choice(_KEYS)
                    node[key] = copy.deepcopy(rng.choice(_VALUES))
            elif node and op < 0.3:
                node.pop(rng.randrange(len(node)))
            elif node and op < 0.6:
                node[rng.randrange(len(node))] = copy.deepcopy(rng.choice(_VALUES))
            else:
                node.append(copy.deepcopy(rng.choice(node or _VALUES)))
        out.append((kind, decl))
    return out


def test_fast_verdicts_equal_jsonschema_verdicts():
    for kind, decl in _mutants(seed=11, count=600):
        version = schema.select_version(kind, decl)
        if isinstance(version, Problem):
            continue
        slow = not any(True for _ in schema.validator(kind, version).iter_errors(decl))
        assert schema.fast_check(kind, version)(decl) == slow, (kind, decl)
        problems = schema.validate(kind, decl)
        assert (not problems) == slow, (kind, decl, problems)
        assert all(p.message for p in problems)


def _is_deviation(kind: str, decl: dict) -> bool:
    value = decl.get(schema.version_key(kind), 1)
    return kind in ("protocoltemplate", "database") and (
        isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()))


BEAT_PYTHON = Path("/tmp/beatenv/bin/python")
ORACLE = """
import json, sys
from beat.core import schema
out = []
for kind, decl in json.load(sys.stdin):
    try:
        out.append(not schema.validate(kind, decl)[1])
    except Exception:
        out.append(False)
json.dump(out, sys.stdout)
"""


def _cases() -> list:
    return [(k, d, True) for k, d in VALID] + [(k, d, False) for k, d, _ in INVALID]


# deliberate deviations (docs/schemas.md): BEAT accepts these, we refuse them
DEVIATIONS = [("protocoltemplate", dict(PROTOCOLTEMPLATE, schema_version=1.5)),
              ("protocoltemplate", dict(PROTOCOLTEMPLATE, schema_version=True)),
              ("database", dict(DATABASE_V2, schema_version=2.5))]


def _mutant_cases() -> list:
    return [(k, d) for k, d in _mutants(seed=5, count=400) if not _is_deviation(k, d)]


@pytest.fixture(scope="module")
def beat_verdicts() -> tuple[list, list]:
    """BEAT's verdicts on the cases of the two tests below, asked of one BEAT interpreter (its
    start, importing beat.core, is most of the cost): (cases and deviations, mutants)."""
    if not BEAT_PYTHON.exists():
        pytest.skip("BEAT reference installation not available")
    first = [[k, d] for k, d, _ in _cases()] + [list(c) for c in DEVIATIONS]
    second = [list(c) for c in _mutant_cases()]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run([str(BEAT_PYTHON), "-c", ORACLE], input=json.dumps(first + second), capture_output=True,
                            text=True, env=env, timeout=300, check=True)
    beat = json.loads(result.stdout)
    assert len(beat) == len(first) + len(second)
    return beat[:len(first)], beat[len(first):]


def test_verdicts_match_beat(beat_verdicts):
    cases = _cases()
    beat = beat_verdicts[0]
    ours = [not schema.validate(k, d) for k, d, _ in cases]
    expected = [v for _, _, v in cases]
    mismatches = [(k, d) for (k, d, _), b, o in zip(cases, beat, ours, strict=False) if b != o]
    assert not mismatches
    assert beat[: len(cases)] == expected
    assert beat[len(cases):] == [True] * len(DEVIATIONS)
    assert not any(not schema.validate(k, d) for k, d in DEVIATIONS)


def test_mutant_verdicts_match_beat(beat_verdicts):
    cases = _mutant_cases()
    beat = beat_verdicts[1]
    assert 30 < sum(beat) < len(cases)  # both verdicts are exercised
    mismatches = [(k, d) for (k, d), b in zip(cases, beat, strict=True) if b != (not schema.validate(k, d))]
    assert not mismatches
