"""Semantic checks of toolchains and experiments (spec §2.6, §2.7, §3.6, §3.7, §10.4).

Each case copies the small valid prefix ``tests/fixtures/graph/prefix`` (BEAT 1.13 accepts
both of its experiments), breaks one thing and asserts the exact set of JSON pointers
reported.  ``BEAT_VERDICTS`` records what BEAT 1.13 says about every case (obtained by running
it; re-checked by ``test_beat_agrees`` when BEAT is installed at /tmp/beatenv).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backbeat.core.errors import ExecutionError
from backbeat.declarations import experiment, toolchain
from backbeat.declarations.catalog import Asset, Catalog
from backbeat.declarations.prefix import AssetFiles

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "graph" / "prefix"
BEAT_PYTHON = Path("/tmp/beatenv/bin/python")
SIMPLE_TC = "toolchains/user/simple/1.json"
LOOP_TC = "toolchains/user/loop/1.json"
SIMPLE = "experiments/user/user/simple/1/ok.json"
LOOP = "experiments/user/user/loop/1/ok.json"


def edit(root: Path, rel: str, fn: Callable[[dict], object]) -> None:
    path = root / rel
    data = json.loads(path.read_text())
    result = fn(data)
    path.write_text(json.dumps(data if result is None else result, indent=2))


@dataclass
class Case:
    id: str
    kind: str  # "toolchain" or "experiment"
    name: str
    edits: list[tuple[str, Callable[[dict], object]]]
    pointers: set[str]
    words: list[str] = field(default_factory=list)  # substrings expected in the messages
    beat: str = "invalid"  # BEAT 1.13's verdict: valid / invalid / crash


def _conn(src: str, dst: str, channel: str = "data") -> dict:
    return {"from": src, "to": dst, "channel": channel}


def _block(name: str, inputs: list[str], outputs: list[str], channel: str = "data") -> dict:
    return {"name": name, "synchronized_channel": channel, "inputs": inputs, "outputs": outputs}


def _cyclic(tc: dict) -> None:
    tc["blocks"] = [_block("b1", ["in"], ["out"]), _block("b2", ["in"], ["out"])]
    tc["connections"] = [_conn("b2.out", "b1.in"), _conn("b1.out", "b2.in"), _conn("b1.out", "analysis.in")]
    tc["representation"]["connections"] = {}
    tc["representation"]["blocks"] = {}


def _reconnect(index: int, end: str, endpoint: str):
    """Change one end of connection ``index``, keeping the representation in step."""

    def fn(tc):
        conn = tc["connections"][index]
        old = f"{conn['from']}/{conn['to']}"
        conn[end] = endpoint
        tc["representation"]["connections"][f"{conn['from']}/{conn['to']}"] = (
            tc["representation"]["connections"].pop(old))
    return fn


def _set(*path_value):
    *path, value = path_value

    def fn(d):
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value
    return fn


def _drop(*path):
    def fn(d):
        for key in path[:-1]:
            d = d[key]
        del d[path[-1]]
    return fn


SIMPLE_NAME = "user/user/simple/1/ok"
LOOP_NAME = "user/user/loop/1/ok"

CASES = [
    # -- toolchains (§3.6) -----------------------------------------------------------------------
    Case("tc-duplicate-name", "toolchain", "user/simple/1",
         [(SIMPLE_TC, lambda t: t["blocks"].append(_block("data", ["x"], ["y"])))],
         {"/blocks/1/name", "/blocks/1/inputs/0"}, ["duplicated name `data'", "/datasets/0"]),
    Case("tc-sync-channel", "toolchain", "user/simple/1",
         [(SIMPLE_TC, _set("blocks", 0, "synchronized_channel", "echo"))],
         {"/blocks/0/synchronized_channel"}, ["invalid synchronization channel `echo'"]),
    Case("tc-two-into-one", "toolchain", "user/simple/1",
         [(SIMPLE_TC, lambda t: t["connections"].append(_conn("data.f", "echo.in")))],
         {"/connections/2/to"}, ["same input as /connections/0"]),
    Case("tc-unknown-from", "toolchain", "user/simple/1",
         [(SIMPLE_TC, _set("connections", 0, "from", "data.nope"))],
         {"/connections/0/from", "/representation/connections/data.value~1echo.in"}, ["`data' has no such output"]),
    Case("tc-unknown-node", "toolchain", "user/simple/1",
         [(SIMPLE_TC, _set("connections", 0, "from", "ghost.value"))],
         {"/connections/0/from", "/representation/connections/data.value~1echo.in"}, ["no node named `ghost'"]),
    Case("tc-unknown-to", "toolchain", "user/simple/1",
         [(SIMPLE_TC, _set("connections", 0, "to", "echo.nope"))],
         {"/connections/0/to", "/blocks/0/inputs/0", "/representation/connections/data.value~1echo.in"},
         ["`echo' has no such input", "`echo.in' is not connected"]),
    Case("tc-from-an-input", "toolchain", "user/simple/1",
         [(SIMPLE_TC, _set("connections", 1, "from", "echo.in"))],
         {"/connections/1/from", "/representation/connections/echo.out~1analysis.in"}, ["it is an input of `echo'"]),
    Case("tc-to-an-output", "toolchain", "user/simple/1",
         [(SIMPLE_TC, lambda t: t["connections"].append(_conn("data.f", "echo.out")))],
         {"/connections/2/to"}, ["it is an output of `echo'"]),
    Case("tc-to-a-dataset", "toolchain", "user/simple/1",
         [(SIMPLE_TC, lambda t: t["connections"].append(_conn("echo.out", "data.f")))],
         {"/connections/2/to"}, ["datasets cannot receive connections"]),
    Case("tc-connection-channel", "toolchain", "user/simple/1",
         [(SIMPLE_TC, _set("connections", 0, "channel", "echo"))],
         {"/connections/0/channel"}, ["invalid synchronization channel `echo'"]),
    Case("tc-unconnected-input", "toolchain", "user/simple/1",
         [(SIMPLE_TC, lambda t: t["blocks"][0]["inputs"].append("extra"))],
         {"/blocks/0/inputs/1"}, ["`echo.extra' is not connected"]),
    Case("tc-representation", "toolchain", "user/simple/1",
         [(SIMPLE_TC, lambda t: t["representation"]["connections"].update({"a.b/c.d": []})),
          (SIMPLE_TC, lambda t: t["representation"]["blocks"].update({"ghost": {"col": 0, "row": 0,
                                                                                 "width": 1, "height": 1}})),
          (SIMPLE_TC, lambda t: t["representation"]["channel_colors"].update({"echo": "#ffffff"}))],
         {"/representation/connections/a.b~1c.d", "/representation/blocks/ghost",
          "/representation/channel_colors/echo"}),
    Case("tc-cycle", "toolchain", "user/simple/1", [(SIMPLE_TC, _cyclic)],
         {"/connections/1"}, ["cycle: b1 -> b2 -> b1"], beat="valid"),
    Case("tc-self-loop", "toolchain", "user/simple/1",
         [(SIMPLE_TC, lambda t: t["blocks"][0]["inputs"].append("back")),
          (SIMPLE_TC, lambda t: t["connections"].append(_conn("echo.out", "echo.back")))],
         {"/connections/2"}, ["cycle: echo -> echo"], beat="valid"),
    # -- experiments, stage 1: the experiment on its own -----------------------------------------
    Case("exp-database-missing", "experiment", SIMPLE_NAME,
         [(SIMPLE, _set("datasets", "data", "database", "nodb/1"))],
         {"/datasets/data/database"}, ["database `nodb/1' is invalid", "not found"]),
    Case("exp-protocol-missing", "experiment", SIMPLE_NAME,
         [(SIMPLE, _set("datasets", "data", "protocol", "q"))],
         {"/datasets/data/protocol"}, ["cannot find protocol `q'", "valid protocols are p"]),
    Case("exp-set-missing", "experiment", SIMPLE_NAME,
         [(SIMPLE, _set("datasets", "data", "set", "test"))],
         {"/datasets/data/set"}, ["cannot find set `test'", "valid set names are train"]),
    Case("exp-algorithm-missing", "experiment", SIMPLE_NAME,
         [(SIMPLE, _set("blocks", "echo", "algorithm", "user/nothere/1"))],
         {"/blocks/echo/algorithm", "/globals/user~1echo~11"}, ["algorithm `user/nothere/1' is invalid"]),
    Case("exp-endpoint-names", "experiment", SIMPLE_NAME,
         [(SIMPLE, _set("blocks", "echo", "inputs", {"nope": "in"})),
          (SIMPLE, _set("blocks", "echo", "outputs", {"zip": "out"})),
          (SIMPLE, _set("analyzers", "analysis", "inputs", {"inn": "in"}))],
         {"/blocks/echo/inputs/nope", "/blocks/echo/outputs/zip", "/analyzers/analysis/inputs/inn"},
         ["does not have an input named `nope' - valid algorithm inputs are in"]),
    Case("exp-nb-slots", "experiment", SIMPLE_NAME,
         [(SIMPLE, _set("analyzers", "analysis", "nb_slots", 2))],
         {"/analyzers/analysis/nb_slots"}, ["not splittable"]),
    Case("exp-parameters", "experiment", SIMPLE_NAME,
         [(SIMPLE, _set("blocks", "echo", "parameters", {"gain": "abc", "mode": "z", "foo": 1})),
          (SIMPLE, _set("globals", "user/echo/1", {"gain": 11}))],
         {"/blocks/echo/parameters/gain", "/blocks/echo/parameters/mode", "/blocks/echo/parameters/foo",
          "/globals/user~1echo~11/gain"}, ["cannot convert value `abc'"]),
    Case("exp-globals-unused", "experiment", SIMPLE_NAME,
         [(SIMPLE, _set("globals", "user/add/1", {"x": 1}))],
         {"/globals/user~1add~11"}, ["not used anywhere"]),
    Case("exp-globals-queue-environment", "experiment", SIMPLE_NAME,
         [(SIMPLE, _set("globals", "queue", "q")),
          (SIMPLE, _set("globals", "environment", {"name": "env", "version": "1"}))],
         set(), beat="valid"),
    Case("exp-toolchain-invalid", "experiment", SIMPLE_NAME,
         [(SIMPLE_TC, _set("connections", 0, "channel", "echo"))],
         {""}, ["toolchain `user/simple/1' is not valid", "/connections/0/channel"]),
    Case("exp-toolchain-cyclic", "experiment", SIMPLE_NAME, [(SIMPLE_TC, _cyclic)],
         {""}, ["is not valid", "cycle"], beat="crash"),
    # -- stage 2: cross-checks against the toolchain ----------------------------------------------
    Case("exp-dataset-names", "experiment", SIMPLE_NAME,
         [(SIMPLE, lambda e: e["datasets"].update({"data2": e["datasets"].pop("data")}))],
         {"/datasets/data2", "/datasets"}, ["dataset `data2' is not in toolchain", "missing from the experiment: data"],
         beat="crash"),
    Case("exp-block-not-in-toolchain", "experiment", SIMPLE_NAME,
         [(SIMPLE, lambda e: e["blocks"].update({"extra": dict(e["blocks"]["echo"])}))],
         {"/blocks/extra"}, ["block `extra' is not in toolchain"], beat="crash"),
    Case("exp-block-missing", "experiment", SIMPLE_NAME,
         [(SIMPLE, lambda e: e["blocks"].update({"renamed": e["blocks"].pop("echo")}))],
         {"/blocks/renamed", "/blocks"}, ["toolchain blocks missing from the experiment: echo"], beat="crash"),
    Case("exp-dataset-outputs-subset", "experiment", SIMPLE_NAME,
         [(SIMPLE_TC, lambda t: t["datasets"][0]["outputs"].append("zzz"))],
         {"/datasets/data"}, ["must be a subset", "missing: zzz"]),
    Case("exp-input-count", "experiment", SIMPLE_NAME,
         [(SIMPLE_TC, lambda t: t["analyzers"][0]["inputs"].append("in2")),
          (SIMPLE_TC, lambda t: t["connections"].append(_conn("data.value", "analysis.in2")))],
         {"/analyzers/analysis/inputs"}, ["toolchain analyzers has 2 inputs while the experiment has 1"]),
    Case("exp-mapping-value", "experiment", SIMPLE_NAME,
         [(SIMPLE, _set("blocks", "echo", "inputs", {"in": "wrong"}))],
         {"/blocks/echo/inputs/in"}, ["toolchain block `echo' has no input named `wrong'"], beat="crash"),
    Case("exp-output-unconnected", "experiment", SIMPLE_NAME,
         [(SIMPLE_TC, lambda t: t["blocks"][0]["outputs"].append("spare")),
          (SIMPLE, _set("blocks", "echo", "outputs", {"out": "spare"}))],
         {"/blocks/echo/outputs/out", "/blocks/echo/outputs"},
         ["`echo.spare' has no connection", "not produced by any algorithm output: out"], beat="crash"),
    # -- stage 3: dataformats and synchronisation -------------------------------------------------
    Case("exp-dataformat-mismatch", "experiment", SIMPLE_NAME,
         [(SIMPLE_TC, _reconnect(0, "from", "data.f"))],
         {"/blocks/echo/inputs/in"},
         ["mismatch in data type at connection (dataset) data.f -> (block) echo.in", "user/float/1"]),
    Case("exp-dataformat-child-parent", "experiment", SIMPLE_NAME,
         [(SIMPLE, _set("blocks", "echo", "algorithm", "user/ext_echo/1")), (SIMPLE, _drop("globals", "user/echo/1")),
          (SIMPLE, _drop("blocks", "echo", "parameters"))],
         {"/blocks/echo/inputs/in"}, ["start point uses `user/int/1' while end point uses `user/int_ext/1'"]),
    Case("exp-sync-grouping", "experiment", SIMPLE_NAME,
         [(SIMPLE, lambda e: e["blocks"].update({"echo": {"algorithm": "user/two_groups/1", "inputs": {"a": "in"},
                                                          "outputs": {"x": "out"}}})),
          (SIMPLE, _drop("globals", "user/echo/1"))],
         {"/blocks/echo"}, ["synchronization mismatch", "user/two_groups/1"]),
    Case("exp-analyzer-role", "experiment", SIMPLE_NAME,
         [(SIMPLE, _set("analyzers", "analysis", "algorithm", "user/echo/1"))],
         {"/analyzers/analysis/algorithm"}, ["is not an analyzer"], beat="valid"),
    # -- loops ------------------------------------------------------------------------------------
    Case("loop-parameters", "experiment", LOOP_NAME,
         [(LOOP, _set("loops", "lp", "processor_parameters", {"step": "x"})),
          (LOOP, _set("loops", "lp", "evaluator_parameters", {"zz": 1, "threshold": 0.1}))],
         {"/loops/lp/processor_parameters/step", "/loops/lp/evaluator_parameters/zz"}, beat="valid"),
    Case("loop-channel-types", "experiment", LOOP_NAME,
         [(LOOP, _set("loops", "lp", "evaluator_algorithm", "user/eval_int/1"))],
         {"/loops/lp/evaluator_algorithm"}, ["answer loop channel type incompatible"]),
    Case("loop-role", "experiment", LOOP_NAME,
         [(LOOP, _set("loops", "lp", "processor_algorithm", "user/echo/1")),
          (LOOP, _drop("loops", "lp", "processor_parameters"))],
         {"/loops/lp/processor_algorithm"}, ["is not a loop processor"], beat="crash"),
    Case("loop-nb-slots", "experiment", LOOP_NAME,
         [(LOOP, _set("loops", "lp", "nb_slots", 3))],
         {"/loops/lp/nb_slots"}, ["`user/eval/1' to 3, but it is not splittable"]),
    Case("loop-endpoint-names", "experiment", LOOP_NAME,
         [(LOOP, _set("loops", "lp", "evaluator_inputs", {"nope": "ein"}))],
         {"/loops/lp/evaluator_inputs/nope"}, ["does not have an input named `nope'"]),
    Case("loop-names", "experiment", LOOP_NAME,
         [(LOOP, lambda e: e["loops"].update({"lp2": e["loops"].pop("lp")}))],
         {"/loops/lp2", "/loops"}, ["loop `lp2' is not in toolchain"], beat="crash"),
    Case("loop-input-count", "experiment", LOOP_NAME,
         [(LOOP_TC, lambda t: t["loops"][0]["evaluator_inputs"].append("ein2")),
          (LOOP_TC, lambda t: t["connections"].append(_conn("data.value", "lp.ein2")))],
         {"/loops/lp/evaluator_inputs"}, ["toolchain loops has 2 evaluator_inputs while the experiment has 1"]),
    Case("loop-dataformat", "experiment", LOOP_NAME,
         [(LOOP, _set("analyzers", "a2", "algorithm", "user/float_analyzer/1"))],
         {"/analyzers/a2/inputs/in"}, ["(loop) lp.eout -> (analyzer) a2.in"]),
]


def _build(root: Path, case: Case) -> Path:
    prefix = root / case.id
    shutil.copytree(FIXTURE, prefix)
    for rel, fn in case.edits:
        edit(prefix, rel, fn)
    return prefix


@pytest.mark.parametrize("name", [SIMPLE_NAME, LOOP_NAME])
def test_fixture_experiments_are_valid(name):
    asset = Catalog(FIXTURE).get("experiment", name)
    assert asset.problems == []


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(tmp_path, case):
    prefix = _build(tmp_path, case)
    start = time.perf_counter()
    asset = Catalog(prefix).get(case.kind, case.name)
    assert time.perf_counter() - start < 1.0
    assert {p.pointer for p in asset.problems} == case.pointers, [str(p) for p in asset.problems]
    text = "\n".join(p.message for p in asset.problems)
    for word in case.words:
        assert word in text
    label = f"{case.kind}s/{case.name}"
    assert all(p.asset == label and p.file and p.file.endswith(".json") for p in asset.problems)


@pytest.mark.skipif(not BEAT_PYTHON.exists(), reason="BEAT 1.13 not installed in /tmp/beatenv")
def test_beat_agrees(tmp_path):
    """BEAT's verdict on every case is the one recorded in ``Case.beat`` (one BEAT process)."""
    jobs = [(str(_build(tmp_path, c)), c.kind, c.name) for c in CASES]
    script = r"""
import json, sys
from beat.core.experiment import Experiment
from beat.core.toolchain import Toolchain
out = []
for prefix, kind, name in json.load(sys.stdin):
    try:
        obj = (Experiment if kind == "experiment" else Toolchain)(prefix, name)
        out.append("valid" if obj.valid else "invalid")
    except Exception:
        out.append("crash")
print(json.dumps(out))
"""
    run = subprocess.run([str(BEAT_PYTHON), "-c", script], input=json.dumps(jobs), capture_output=True,
                         text=True, timeout=120)
    verdicts = json.loads(run.stdout.strip().splitlines()[-1])
    assert {c.id: v for c, v in zip(CASES, verdicts, strict=True)} == {c.id: c.beat for c in CASES}


# -- execution order and dependencies -------------------------------------------------------------


def _graph(blocks, loops, analyzers, connections) -> dict:
    return {"datasets": [{"name": "d", "outputs": ["o"]}],
            "blocks": [_block(n, ["i"], ["o"], "d") for n in blocks],
            "loops": [{"name": n, "synchronized_channel": "d", "processor_inputs": ["i"], "processor_outputs": ["o"],
                       "evaluator_inputs": ["j"], "evaluator_outputs": ["p"]} for n in loops],
            "analyzers": [{"name": n, "synchronized_channel": "d", "inputs": ["i"]} for n in analyzers],
            "connections": [_conn(a, b, "d") for a, b in connections]}


def test_execution_order_reproduces_beat_passes():
    # b3 needs b2 (declared after it); l needs b3; an needs b1: BEAT's passes give b1, b2, an | b3, l
    decl = _graph(["b3", "b1", "b2"], ["l"], ["an"],
                  [("d.o", "b1.i"), ("b2.o", "b3.i"), ("b1.o", "b2.i"), ("b3.o", "l.i"), ("d.o", "l.j"),
                   ("b1.o", "an.i")])
    assert toolchain.execution_order(decl) == ["b1", "b2", "an", "b3", "l"]
    assert toolchain.dependencies(decl) == {"b3": {"b2"}, "b1": set(), "b2": {"b1"}, "l": {"b3"}, "an": {"b1"}}


def test_execution_order_of_fixture_loop_toolchain():
    decl = json.loads((FIXTURE / LOOP_TC).read_text())
    assert toolchain.execution_order(decl) == ["lp", "a1", "a2"]


def test_execution_order_raises_on_cycle_quickly():
    decl = _graph(["a", "b", "c"], [], ["z"], [("c.o", "a.i"), ("a.o", "b.i"), ("b.o", "c.i"), ("a.o", "z.i")])
    start = time.perf_counter()
    with pytest.raises(ExecutionError, match="cycle: a -> b -> c -> a"):
        toolchain.execution_order(decl)
    assert time.perf_counter() - start < 1.0


def test_execution_order_raises_on_unknown_source():
    decl = _graph(["a"], [], [], [("ghost.o", "a.i")])
    with pytest.raises(ExecutionError, match="unknown node.*ghost"):
        toolchain.execution_order(decl)


def test_large_chain_is_fast():
    names = [f"b{i}" for i in range(400)]
    conns = [("d.o", "b0.i")] + [(f"b{i}.o", f"b{i + 1}.i") for i in range(399)]
    decl = _graph(list(reversed(names)), [], [], conns)
    start = time.perf_counter()
    assert toolchain.find_cycle(toolchain.dependencies(decl)) is None
    assert toolchain.execution_order(decl) == names
    assert time.perf_counter() - start < 5.0


def test_toolchain_name():
    asset = Catalog(FIXTURE).get("experiment", "user/simple/1/ok")
    assert experiment.toolchain_name(asset) == "user/simple/1"


# -- defensiveness: odd shapes never raise ---------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.sampled_from(
        ["data", "echo", "echo.in", "data.value", "user/echo/1", "graphdb/1", "p", "train", "in", "out"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["datasets", "blocks", "loops", "analyzers", "connections", "globals", "name", "inputs",
                         "outputs", "from", "to", "channel", "algorithm", "database", "protocol", "set",
                         "synchronized_channel", "representation", "parameters", "nb_slots", "echo", "data",
                         "processor_algorithm", "evaluator_inputs", "user/echo/1"]), inner, max_size=5),
    max_leaves=25)


def _fake(kind: str, name: str, decl: object) -> Asset:
    base = FIXTURE / ("toolchains/user/simple/1" if kind == "toolchain" else "experiments/user/user/simple/1/ok")
    return Asset(kind, name, AssetFiles(kind, name, base), declaration=decl)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json)
@example({"blocks": {"datasets": {"algorithm": []}}})  # (an algorithm named by a list: was a TypeError)
@example({"loops": {"l": {"processor_algorithm": {}}}})
def test_odd_shapes_never_raise(decl):
    catalog = Catalog(FIXTURE)
    toolchain.check(_fake("toolchain", "user/simple/1", decl), catalog)
    experiment.check(_fake("experiment", SIMPLE_NAME, decl), catalog)
    if isinstance(decl, dict):
        toolchain.dependencies(decl)
        toolchain.nodes(decl)


@pytest.mark.parametrize("mutate, reported", [
    (lambda e: e.update(blocks=[1, 2]), True),
    (lambda e: e.update(datasets={"data": "graphdb/1"}), True),
    (lambda e: e.update(globals=5), False),
    (lambda e: e["blocks"]["echo"].update(inputs=["in"], parameters=[1]), True),
    (lambda e: e["blocks"]["echo"].update(algorithm=7, nb_slots="many"), True),
    (lambda e: e["datasets"]["data"].update(database=None, protocol=[1]), True),
    (lambda e: e["blocks"].update(echo="user/echo/1"), True),
])
def test_odd_experiment_shapes_report_or_pass(mutate, reported):
    """Shapes the JSON schema rejects never make the semantic check raise (it runs without schema here)."""
    decl = json.loads((FIXTURE / SIMPLE).read_text())
    mutate(decl)
    problems = experiment.check(_fake("experiment", SIMPLE_NAME, decl), Catalog(FIXTURE))
    assert bool(problems) == reported
    assert all(isinstance(p.pointer, str) for p in problems)
