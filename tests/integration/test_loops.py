"""Loops end to end: processor and evaluator processes talking over a real ZeroMQ loop channel.

The experiments are ``tests/fixtures/loops/prefix`` (``build_prefix.py`` writes it); what the
reference BEAT 1.13 produced for them is in ``tests/fixtures/loops/expected.json``
(``regenerate.sh``).  Toolchain ``lx/loop/1``: ``items -> prep (+2) -> loop (processor: value,
evaluator: target) -> panalysis (processor output) / eanalysis (evaluator output)``; ``lx/two_db/1``:
the evaluator reads a second, shorter database; ``lx/two_loops/1``: that loop, then blocks, then a
second (sequential) loop whose evaluator reads a block output (``tests/fixtures/loops/README.md``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from backbeat.cache.backends import open_store
from backbeat.core.errors import ExecutionError
from backbeat.declarations.catalog import Catalog
from backbeat.execution import executors as executor
from backbeat.planning import loops
from backbeat.planning import planner as planning
from backbeat.runtime import loopchannel
from conftest import FIXTURES, cli_json

PREFIX = FIXTURES / "loops" / "prefix"
EXPECTED = json.loads((FIXTURES / "loops" / "expected.json").read_text())["experiments"]
SEQ = "lx/lx/loop/1/sequential"
AUTO = "lx/lx/loop/1/autonomous"
FAIL = "lx/lx/loop/1/fail_eval"
TWO_DB = "lx/lx/two_db/1/default"
TWO_LOOPS = "lx/lx/two_loops/1/default"
SEQ_SHORT = "lx/lx/two_db/1/seq_short"


def run(cache: Path, name: str, prefix: Path = PREFIX, **options) -> dict:
    return executor.run_experiment(prefix, cache, name, executor.Options(jobs=2, **options))


def statuses(report: dict) -> dict[str, str]:
    return {name: block["status"] for name, block in report["blocks"].items()}


def loop_records(cache: Path, report: dict, node: str = "loop") -> dict:
    """A loop node's outputs as BEAT's recorder lists them: ``{side: {output: records}}``."""
    out: dict = {"processor": {}, "evaluator": {}}
    for name, key in report["blocks"][node]["outputs"].items():
        side, algo_out = name.split(".", 1)
        out[side][algo_out] = open_store(cache).read_result(key)
    return out


def beat_loop_records(name: str, node: str = "loop") -> dict:
    return {side: {o: rec["records"] for o, rec in outs.items()}
            for side, outs in EXPECTED[name]["loops"][node].items()}


def beat_loop_hashes(name: str, node: str) -> dict:
    return {side: {o: rec["hash"] for o, rec in outs.items()} for side, outs in EXPECTED[name]["loops"][node].items()}


def temporaries(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if ".tmp-" in p.name]


# -- planning ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [SEQ, AUTO, FAIL, TWO_DB, TWO_LOOPS, SEQ_SHORT])
def test_loop_plan_has_beats_hashes(name: str):
    plan = planning.plan(Catalog(PREFIX), name)
    assert [j.name for j in plan.jobs] == EXPECTED[name]["order"]
    assert EXPECTED[name]["loops"]
    for node in EXPECTED[name]["loops"]:
        assert plan.job(node).kind == "loop"
        assert plan.job(node).beat_hash == beat_loop_hashes(name, node)
    for block, rec in EXPECTED[name]["blocks"].items():
        assert plan.job(block).beat_hash == {o: out["hash"] for o, out in rec["outputs"].items()}
    for analyzer, rec in EXPECTED[name]["analyzers"].items():
        assert plan.job(analyzer).beat_hash == rec["hash"]
    if name == TWO_LOOPS:
        assert plan.job("second").depends == ["eround", "pround"]


def test_loop_hashes_of_beat_fixture():
    """The loop experiment of the BEAT-compatibility fixtures (same names on both sides)."""
    rec = next(r for r in json.loads((FIXTURES / "beat" / "expected.json").read_text())
               if r["name"] == "bb/bb/tc_loop/1/loop")
    plan = planning.plan(Catalog(FIXTURES / "beat" / "prefix"), rec["name"])
    got = {"blocks": {}, "loops": {}, "analyzers": {}}
    for job in plan.jobs:
        got[{"loop": "loops", "analyzer": "analyzers"}.get(job.kind, "blocks")][job.name] = job.beat_hash
    assert got == rec["setup"]


def test_loop_key_covers_both_sides(tmp_path: Path, copy_prefix):
    """Changing only the evaluator's parameters changes the processor's output keys too."""
    prefix = copy_prefix(PREFIX)
    exp = prefix / "experiments/lx/lx/loop/1"
    decl = json.loads((exp / "sequential.json").read_text())
    decl["loops"]["loop"]["evaluator_parameters"]["threshold"] = 1.0
    (exp / "other.json").write_text(json.dumps(decl))
    keys = {}
    for name in ("sequential", "other"):
        r = executor.dry_run(prefix, tmp_path / "cache", f"lx/lx/loop/1/{name}")
        keys[name] = r["blocks"]["loop"]["key"]
        run_ = executor.prepare(prefix, tmp_path / "cache", f"lx/lx/loop/1/{name}")
        run_.close()
        keys[name + "-outputs"] = {n: o.key for n, o in run_.plan.job("loop").outputs.items()}
    assert keys["sequential"] != keys["other"]
    for out in ("processor.out", "evaluator.out"):
        assert keys["sequential-outputs"][out] != keys["other-outputs"][out]
    assert len(set(keys["sequential-outputs"].values())) == 2  # both sides' `out` have their own key


def test_side_job_strips_names():
    loop = planning.plan(Catalog(PREFIX), SEQ).job("loop")
    ev = loops.side_job(loop, "evaluator")
    assert ev.algorithm == "lx/seq_eval/1" and list(ev.inputs) == ["target"] and list(ev.outputs) == ["out"]
    assert ev.inputs["target"].name == "target" and ev.values == {"threshold": 3.0, "fail_at": -1}
    proc = loops.side_job(loop, "processor")
    assert proc.algorithm == "lx/seq_proc/1" and list(proc.inputs) == ["value"]
    with pytest.raises(ExecutionError):
        loops.side_job(loop, "other")


def test_pack_round_trip_and_refuses_non_dicts():
    fmt = ("lx/answer/1", {"score": "float64", "note": "string"})
    value = loopchannel.unpack(loopchannel.pack({"score": 1.5, "note": "héllo"}, fmt), fmt)
    assert value.as_dict() == {"score": 1.5, "note": "héllo"}
    assert loopchannel.unpack(loopchannel.pack(value, fmt), fmt).as_dict() == value.as_dict()
    with pytest.raises(TypeError, match="give a dict"):
        loopchannel.pack([1.5, "x"], fmt)


# -- running ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [SEQ, AUTO, TWO_DB, TWO_LOOPS])
def test_loop_results_equal_beats(tmp_path: Path, name: str):
    """Every loop shape BEAT runs: same results, same records on both sides of every loop (also
    an autonomous evaluator writing one unit per processor write while its own database set is
    shorter: BEAT names its file after its own set's range but writes the processor's units)."""
    cache = tmp_path / "cache"
    report = run(cache, name)
    assert report["status"] == "ok", report
    assert set(statuses(report).values()) == {"ran"}
    assert report["results"] == EXPECTED[name]["results"]
    for node in EXPECTED[name]["loops"]:
        assert loop_records(cache, report, node) == beat_loop_records(name, node)
        assert report["blocks"][node]["beat_hash"] == beat_loop_hashes(name, node)
    for block, rec in EXPECTED[name]["blocks"].items():
        for out, key in report["blocks"][block]["outputs"].items():
            assert open_store(cache).read_result(key) == rec["outputs"][out]["records"]
    # a second run reuses everything
    again = run(cache, name)
    assert set(statuses(again).values()) == {"cached"} and again["results"] == report["results"]
    if name not in (SEQ, AUTO):
        return
    # a loop is cached only whole: without the evaluator's output both sides run again
    open_store(cache).output_path(report["blocks"]["loop"]["outputs"]["evaluator.out"]).unlink()
    third = run(cache, name)
    assert statuses(third) == {"prep": "cached", "loop": "ran", "panalysis": "cached", "eanalysis": "cached"}
    assert third["results"] == EXPECTED[name]["results"]
    assert loop_records(cache, third) == beat_loop_records(name)


def test_failing_evaluator_fails_the_loop_cleanly(tmp_path: Path):
    cache = tmp_path / "cache"
    t0 = time.monotonic()
    report = run(cache, FAIL)
    assert time.monotonic() - t0 < 15
    assert EXPECTED[FAIL]["status"] == "failed"  # BEAT fails too
    assert report["status"] == "failed"
    assert statuses(report) == {"prep": "ran", "loop": "failed", "panalysis": "skipped", "eanalysis": "skipped"}
    error = report["blocks"]["loop"]["error"]
    assert error["kind"] == "user"
    assert "the evaluator refuses hypothesis 2" in error["message"]
    assert 'File "algorithms/lx/seq_eval/1.py", line 20, in validate' in error["traceback"]
    for key in report["blocks"]["loop"]["outputs"].values():  # neither side left anything
        assert not open_store(cache).output_path(key).exists()
    assert temporaries(cache) == []
    assert report["results"] == {}


def test_sequential_evaluator_past_the_end_of_its_set_fails_as_in_beat(tmp_path: Path):
    """BEAT steps a sequential evaluator with the processor: its shorter set runs out at the 5th
    step.  BEAT fails with this message (and leaves the evaluator's 4 units in its cache)."""
    cache = tmp_path / "cache"
    report = run(cache, SEQ_SHORT)
    assert EXPECTED[SEQ_SHORT]["status"] == "failed" and report["status"] == "failed"
    beat = next(m for m in EXPECTED[SEQ_SHORT]["failure"]["messages"] if m.startswith("RuntimeError: "))
    error = report["blocks"]["loop"]["error"]
    assert error["kind"] == "user" and beat in error["message"], error
    for key in report["blocks"]["loop"]["outputs"].values():
        assert not open_store(cache).output_path(key).exists()
    assert temporaries(cache) == []


CRASH = '''import os


class Algorithm:
    def process(self, inputs, data_loaders, outputs, loop_channel):
        ok, answer = loop_channel.validate({"value": 1.0, "index": inputs["value"].data.value})
        os._exit(3)
'''


RAISE = '''class Algorithm:
    def process(self, inputs, data_loaders, outputs, loop_channel):
        raise RuntimeError("processor gives up")
'''


def loop_variant(prefix: Path, side: str, name: str, code: str) -> Path:
    """``prefix`` with algorithm ``lx/NAME/1`` (``code``, declared as the sequential loop's
    ``side``) and experiment ``lx/lx/loop/1/NAME``: the sequential loop with that side replaced."""
    base = {"processor": "seq_proc", "evaluator": "seq_eval"}[side]
    algo = json.loads((prefix / f"algorithms/lx/{base}/1.json").read_text())
    algo["parameters"] = {}
    (prefix / f"algorithms/lx/{name}").mkdir(parents=True)
    (prefix / f"algorithms/lx/{name}/1.json").write_text(json.dumps(algo))
    (prefix / f"algorithms/lx/{name}/1.py").write_text(code)
    exp = prefix / "experiments/lx/lx/loop/1"
    decl = json.loads((exp / "sequential.json").read_text())
    decl["loops"]["loop"].update({f"{side}_algorithm": f"lx/{name}/1", f"{side}_parameters": {}})
    (exp / f"{name}.json").write_text(json.dumps(decl))
    return prefix


@pytest.mark.parametrize("code,kind,message", [(CRASH, "exit", "exited with code 3"),
                                               (RAISE, "user", "RuntimeError: processor gives up")])
def test_failing_processor_stops_the_evaluator(tmp_path: Path, copy_prefix, code, kind, message):
    prefix = loop_variant(copy_prefix(PREFIX), "processor", "crash", code)
    t0 = time.monotonic()
    report = run(tmp_path / "cache", "lx/lx/loop/1/crash", prefix)
    assert time.monotonic() - t0 < 15
    assert statuses(report)["loop"] == "failed"
    error = report["blocks"]["loop"]["error"]  # the processor's, not that of the evaluator killed because of it
    assert error["kind"] == kind and message in error["message"], error
    assert temporaries(tmp_path / "cache") == []


def test_cli_runs_a_loop_experiment(tmp_path: Path):
    code, doc, err = cli_json("-p", PREFIX, "-c", tmp_path / "cache", "experiments", "run", SEQ, "--json")
    assert code == 0, err
    assert doc["status"] == "ok" and doc["results"] == EXPECTED[SEQ]["results"]
    code, doc, err = cli_json("-p", PREFIX, "-c", tmp_path / "cache", "experiments", "results", SEQ, "--json")
    assert code == 0, err
    assert doc == EXPECTED[SEQ]["results"]


EVALUATORS = {
    "crash": ("exit", "exited with code 4", '''import os


class Algorithm:
    def validate(self, hypothesis):
        os._exit(4)
'''),
    "not_a_tuple": ("user", "Improper implementation: validate must return a tuple", '''class Algorithm:
    def validate(self, hypothesis):
        return True
'''),
    "setup_false": ("user", "Could not setup algorithm (returned False)", '''class Algorithm:
    def setup(self, parameters):
        return False

    def validate(self, hypothesis):
        return (True, hypothesis)
'''),
    "bad_answer": ("user", "cannot safely cast attribute `score'", '''class Algorithm:
    def validate(self, hypothesis):
        return (True, {"score": "not a number", "note": "x"})
'''),
}


@pytest.mark.parametrize("variant", sorted(EVALUATORS))
def test_broken_evaluators_fail_the_loop(tmp_path: Path, copy_prefix, variant: str):
    kind, message, code = EVALUATORS[variant]
    prefix = loop_variant(copy_prefix(PREFIX), "evaluator", "broken", code)
    t0 = time.monotonic()
    report = run(tmp_path / "cache", "lx/lx/loop/1/broken", prefix)
    assert time.monotonic() - t0 < 15
    assert statuses(report)["loop"] == "failed"
    error = report["blocks"]["loop"]["error"]
    assert error["kind"] == kind and message in error["message"], error
    for key in report["blocks"]["loop"]["outputs"].values():
        assert not open_store(tmp_path / "cache").output_path(key).exists()
    assert temporaries(tmp_path / "cache") == []
