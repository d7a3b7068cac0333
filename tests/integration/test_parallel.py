"""Parallel execution on this machine: overlapping blocks, split blocks, limits, Ctrl-C.

Real block processes (fork server), real ZeroMQ sockets, real HDF5 files, over a private copy
of ``tests/fixtures/parallel/prefix``: ``items (20 data units) -> left, right (par/busy/1:
value * value + 1, ``ms`` of CPU per unit, splittable) -> analysis (sum, count)``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from _gated import ONE_RESULT, gate_experiment, write_gated
from _no_spawn import GONE, run_failing_spawn

from backbeat.cache.backends import open_store
from backbeat.data import cachereader
from backbeat.execution import executors as executor
from conftest import FIXTURES, cli_command, cli_json

PARALLEL_PREFIX = FIXTURES / "parallel" / "prefix"
BASE = "par/par/two/1/base"
EXP_DIR = Path("experiments/par/par/two/1")
RESULT = {"analysis": [{"start": 0, "end": 39, "data": {"count": 20, "sum": 5780}}]}


def write_experiment(prefix: Path, name: str, left: dict | None = None, right: dict | None = None,
                     slots: int | None = None) -> str:
    """A variant of ``base``: block parameters updated, ``nb_slots`` of ``left`` set."""
    decl = json.loads((prefix / EXP_DIR / "base.json").read_text())
    decl["blocks"]["left"]["parameters"].update(left or {})
    decl["blocks"]["right"]["parameters"].update(right or {})
    if slots is not None:
        decl["blocks"]["left"]["nb_slots"] = slots
    (prefix / EXP_DIR / f"{name}.json").write_text(json.dumps(decl, indent=4))
    return f"par/par/two/1/{name}"


def cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file() and ".locks" not in p.parts)


def output_file(cache: Path, rep: dict, block: str, output: str = "out") -> Path:
    return open_store(cache).output_path(rep["blocks"][block]["outputs"][output])


def times(path: Path) -> list[float]:
    with cachereader.CacheReader(str(path)) as reader:
        return [v.as_dict()["time"] for v in reader.read_units(0, len(reader)).to_values()]


@pytest.fixture
def prefix(copy_prefix) -> Path:
    return copy_prefix(PARALLEL_PREFIX)


# ----------------------------------------------------------------------------- concurrency

def test_two_cpu_bound_blocks_overlap_in_time(prefix, tmp_path):
    name = write_experiment(prefix, "stamped", {"ms": 40.0, "stamp": True}, {"ms": 41.0, "stamp": True})
    spans = {}
    for jobs in (2, 1):
        cache = tmp_path / f"cache{jobs}"
        rep = executor.run_experiment(prefix, cache, name, executor.Options(jobs=jobs))
        assert rep["status"] == "ok" and rep["results"] == RESULT, rep
        spans[jobs] = {b: times(output_file(cache, rep, b)) for b in ("left", "right")}
        spans[jobs] = {b: (t[0], t[-1]) for b, t in spans[jobs].items()}

    def overlap(s: dict) -> float:
        return min(s["left"][1], s["right"][1]) - max(s["left"][0], s["right"][0])

    shortest = min(e - s for s, e in spans[2].values())
    assert shortest > 0.5, f"the blocks are too short to judge: {spans[2]}"
    assert overlap(spans[2]) > 0.6 * shortest, f"with -j 2 the two blocks did not run at the same time: {spans[2]}"
    assert overlap(spans[1]) < 0, f"with -j 1 the two blocks ran at the same time: {spans[1]}"


# ----------------------------------------------------------------------------- split blocks

def test_the_datasets_of_a_run_are_indexed_at_the_same_time(prefix, tmp_path):
    """Each of the two views announces that it is indexing, then waits for the other's
    announcement: indexed one after the other, the first would wait for ever (60 s, then fail)."""
    log = tmp_path / "views.log"
    write_gated(prefix, {"one": {"announce": "view=1", "after": "view=2", "fail": False, "log": str(log)},
                         "two": {"announce": "view=2", "after": "view=1", "fail": False, "log": str(log)}})
    name = gate_experiment(prefix, "both", ("gated/1", "one"), ("gated/1", "two"), ms=(1.0, 2.0))
    rep = executor.run_experiment(prefix, tmp_path / "cache", name, executor.Options(jobs=2))
    assert rep["status"] == "ok" and rep["results"] == {"al": ONE_RESULT, "ar": ONE_RESULT}, rep
    assert sorted(log.read_text().split()) == ["view=1", "view=2"]


def test_no_more_datasets_are_indexed_at_once_than_jobs(prefix, tmp_path):
    """-j 1: each view waits (5 s at most) for the other to start indexing; one at a time, it
    never sees it, and each finishes before the other starts."""
    log = tmp_path / "views.log"
    view = {"fail": False, "wait_s": 5, "lenient": True, "log": str(log)}
    write_gated(prefix, {"one": {**view, "announce": "start=1", "after": "start=2", "finish": "end=1"},
                         "two": {**view, "announce": "start=2", "after": "start=1", "finish": "end=2"}})
    name = gate_experiment(prefix, "serial", ("gated/1", "one"), ("gated/1", "two"), ms=(1.0, 2.0))
    rep = executor.run_experiment(prefix, tmp_path / "cache", name, executor.Options(jobs=1))
    assert rep["status"] == "ok" and rep["results"] == {"al": ONE_RESULT, "ar": ONE_RESULT}, rep
    order = log.read_text().split()
    assert order in (["start=1", "end=1", "start=2", "end=2"], ["start=2", "end=2", "start=1", "end=1"]), order


def test_split_block_gives_the_same_cache_entry_and_reports_progress_per_slot(prefix, tmp_path):
    one = write_experiment(prefix, "one_slot", slots=1)
    two = write_experiment(prefix, "two_slots", slots=2)
    reps, events = {}, []
    for name in (one, two):
        cache = tmp_path / name.rsplit("/", 1)[1]
        reps[name] = executor.run_experiment(prefix, cache, name, executor.Options(jobs=2), events.append)
        assert reps[name]["status"] == "ok" and reps[name]["results"] == RESULT, reps[name]
    a, b = reps[one]["blocks"]["left"], reps[two]["blocks"]["left"]
    assert a["outputs"] == b["outputs"], "nb_slots changed the output key"
    fa = output_file(tmp_path / "one_slot", reps[one], "left")
    fb = output_file(tmp_path / "two_slots", reps[two], "left")
    assert cachereader.stored_digest(str(fa)) == cachereader.stored_digest(str(fb))
    with cachereader.CacheReader(str(fb)) as reader:  # the assembled entry verifies as a whole
        assert len(reader) == 20 and reader.compute_digest() == cachereader.stored_digest(str(fb))
    assert len(b["statistics"]["slots"]) == 2, b["statistics"]
    assert sum(s["written"]["out"] for s in b["statistics"]["slots"]) == 20
    slots = {e["slot"] for e in events if e["block"] == "left" and "slot" in e}
    assert slots == {0, 1}, f"no progress per slot: {[e for e in events if e['block'] == 'left']}"
    assert not any(".slot" in p.name or ".tmp-" in p.name for p in cache_files(tmp_path / "two_slots"))


# ----------------------------------------------------------------------------- limits (CLI)

def run_cli_json(prefix: Path, cache: Path, name: str, *flags: str, cwd: Path | None = None):
    return cli_json("-p", prefix, "-c", cache, "experiments", "run", name, "--json", "-q", *flags,
                    cwd=cwd or prefix.parent)


def assert_stopped(code: int, rep: dict, cache: Path, kind: str) -> None:
    assert code == 1, rep
    assert rep["blocks"]["left"]["status"] == "failed", rep["blocks"]["left"]
    assert rep["blocks"]["left"]["error"]["kind"] == kind, rep["blocks"]["left"]["error"]
    assert rep["blocks"]["analysis"]["status"] == "skipped"
    assert not output_file(cache, rep, "left").exists()
    assert not any(".tmp-" in p.name or ".slot" in p.name for p in cache_files(cache))


def test_timeout_stops_the_block_and_is_reported(prefix, tmp_path):
    name = write_experiment(prefix, "slow", {"ms": 500.0})  # 10 s of CPU
    code, rep, err = run_cli_json(prefix, tmp_path / "cache", name, "--timeout", "1")
    assert_stopped(code, rep, tmp_path / "cache", "timeout")
    message = rep["blocks"]["left"]["error"]["message"]  # (names the limit it exceeded, and how long it ran)
    ran = re.fullmatch(r"the block was killed after exceeding its time limit of 1 s \(it ran (\d+\.\d) s\)", message)
    assert ran, message
    # stopped at its limit, not after its 10 s: the block's own time, not the command's (whose start,
    # planning and indexing take seconds more on a loaded machine: a bound on it failed at load 27)
    assert float(ran[1]) < 8, message


def test_memory_limit_stops_the_block_and_is_reported(prefix, tmp_path):
    name = write_experiment(prefix, "greedy", {"alloc_mb": 700})
    code, rep, err = run_cli_json(prefix, tmp_path / "cache", name, "--memory", "450")
    assert_stopped(code, rep, tmp_path / "cache", "memory")
    assert rep["blocks"]["right"]["status"] in ("ran", "skipped")


def test_limits_per_experiment_from_the_configuration(prefix, tmp_path):
    slow = write_experiment(prefix, "slow", {"ms": 500.0})
    greedy = write_experiment(prefix, "greedy", {"alloc_mb": 700})
    (tmp_path / ".backbeatrc").write_text(json.dumps({"limits": {
        "*": {"memory": 450},
        "par/par/two/1/gree*": {"timeout": 30},
        slow: {"timeout": 1},
    }}))
    code, rep, err = run_cli_json(prefix, tmp_path / "c1", slow, cwd=tmp_path)
    assert_stopped(code, rep, tmp_path / "c1", "timeout")
    label = greedy.replace("par/par/", "par/", 1)  # a 4-part label matches the canonical name's pattern
    code, rep, err = run_cli_json(prefix, tmp_path / "c2", label, cwd=tmp_path)
    assert_stopped(code, rep, tmp_path / "c2", "memory")
    # command-line flags override the configuration
    code, rep, err = run_cli_json(prefix, tmp_path / "c3", greedy, "--memory", "3000", cwd=tmp_path)
    assert code == 0 and rep["results"] == RESULT, rep
    # a malformed setting is an error naming the file
    (tmp_path / ".backbeatrc").write_text(json.dumps({"limits": {"*": {"timeout": "soon"}}}))
    proc = subprocess.run(cli_command("-p", prefix, "experiments", "run", slow), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and ".backbeatrc" in proc.stderr and "timeout" in proc.stderr, proc.stderr


def test_a_split_block_whose_second_slot_cannot_start_stops_its_first_at_once(prefix, tmp_path):
    """``right`` is split in two slots; ``right#1`` cannot be spawned: ``right`` fails saying why and
    ``right#0``, already started, is killed at once and its files removed — before, it ran on
    unwatched (~0.2 s) while ``left`` (3 s) finished, and left its committed slot file in the cache."""
    decl = json.loads((prefix / EXP_DIR / "base.json").read_text())
    decl["blocks"]["left"]["parameters"]["ms"] = 150.0
    decl["blocks"]["right"]["nb_slots"] = 2
    (prefix / EXP_DIR / "split.json").write_text(json.dumps(decl, indent=4))
    cache = tmp_path / "cache"
    done = run_failing_spawn("right#1", "-p", prefix, "-c", cache, "experiments", "run", "par/par/two/1/split",
                             "--json", "-j", "3")
    assert done.returncode == 1, done.stderr[-3000:]
    rep = json.loads(done.stdout)
    assert {b: v["status"] for b, v in rep["blocks"].items()} == {"left": "ran", "right": "failed",
                                                                     "analysis": "skipped"}
    assert rep["blocks"]["right"]["error"]["message"] == f"cannot start: {GONE}"
    left = [p for p in cache_files(cache) if ".slot" in p.name or ".tmp-" in p.name]
    assert left == [], f"the first slot ran on: {left}"




@pytest.mark.parametrize("sandbox", [False, True])
def test_a_split_block_that_cannot_start_waits_for_its_killed_slots_a_bounded_time(prefix, tmp_path, sandbox):
    """``right#1`` cannot be spawned and ``right#0``, killed, is not reported ended (its fork server
    stopped): the scheduler gives up waiting for it (``KILLED_WAIT_S``) instead of hanging.  Sandboxed
    (the pid stopped is then bwrap's: the zygote goes on), the staging folder of ``right#1``, which
    never started, is removed at once, not at the run's end.  Not sandboxed, ``right#0`` (3 s) goes on
    to write its slot file after its files were removed: removed again once it is reported ended."""
    decl = json.loads((prefix / EXP_DIR / "base.json").read_text())
    decl["blocks"]["right"]["nb_slots"] = 2
    decl["blocks"]["right"]["parameters"]["ms"] = 300.0  # (10 units per slot: beyond KILLED_WAIT_S)
    (prefix / EXP_DIR / "split.json").write_text(json.dumps(decl, indent=4))
    record = tmp_path / "record.json"
    env = dict(os.environ, NO_SPAWN="right#1", STOP="1", RECORD=str(record), BACKBEAT_TEMPLATE="off",
               **({} if sandbox else {"LINGER": "1"}))
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("_stuck_spawn.py")), "-p", str(prefix), "-c", str(tmp_path / "cache"),
                           "experiments", "run", "par/par/two/1/split", "--json", "-j", "3",
                           *(["--sandbox"] if sandbox else [])], capture_output=True, text=True, timeout=150, env=env)
    assert done.returncode == 1, done.stderr[-3000:]
    rep = json.loads(done.stdout)
    assert {b: v["status"] for b, v in rep["blocks"].items()} == {"left": "ran", "right": "failed",
                                                                     "analysis": "skipped"}
    assert not Path(f"{record}.FALLBACK").exists(), "the scheduler waited for the killed slot until it ended"
    assert not Path(f"{record}.NOSLOT").exists(), "the killed slot never wrote its slot file"
    assert json.loads(record.read_text()) == {"job": "right", "staged": []}
    left = [p for p in cache_files(tmp_path / "cache") if ".slot" in p.name or ".tmp-" in p.name]
    assert left == [], f"the killed slot wrote on after its files were removed: {left}"


# ----------------------------------------------------------------------------- Ctrl-C

def test_interrupt_stops_every_block_process_and_leaves_the_cache_consistent(prefix, tmp_path):
    name = write_experiment(prefix, "long", {"ms": 400.0}, {"ms": 401.0}, slots=2)  # 8 s per block
    log, cache = tmp_path / "setups.log", tmp_path / "cache"
    env = dict(os.environ, PARALLEL_FIXTURE_LOG=str(log))
    proc = subprocess.Popen(cli_command("-p", prefix, "-c", cache, "experiments", "run", name, "-j", "3"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:  # two slots of left, and right
            if log.exists() and len(log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert log.exists() and len(log.read_text().splitlines()) >= 3, proc.communicate(timeout=30)
        blocks = [int(line.split()[0]) for line in log.read_text().splitlines()]
        family = psutil.Process(proc.pid).children(recursive=True)
        assert set(blocks) <= {p.pid for p in family}
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    gone, alive = psutil.wait_procs(family, timeout=5)
    assert alive == [], f"processes outlived the interrupted run: {alive}"
    left = [p for p in cache_files(cache) if p.suffix == ".h5" or ".tmp-" in p.name or ".slot" in p.name]
    assert left == [], f"partial outputs or temporaries left in the cache: {left}"
    rep = executor.run_experiment(prefix, cache, write_experiment(prefix, "quick", slots=2),
                                  executor.Options(jobs=2))
    assert rep["status"] == "ok" and rep["results"] == RESULT, "the cache is unusable after Ctrl-C"
