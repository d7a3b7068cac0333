"""The execution engine end to end: cache reuse, edits, sharing, concurrent runs, failures, corruption.

Every test runs real block processes (fork server), real ZeroMQ sockets and real HDF5 cache
files over a private copy of ``tests/fixtures/run/prefix``: the pipeline
``items (counter view, values 1..6) -> first (echo: + offset) -> second (faulty: copy, or fail
as parameter ``mode`` says) -> analysis (sum, count)``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from backbeat.cache.backends import open_store
from backbeat.data import cachefile
from backbeat.execution import executors as executor
from backbeat.execution.report import cached_results
from conftest import cli_command, live_processes, private_tmpdir

BASE = "run/run/pipeline/1/base"
EXP_DIR = Path("experiments/run/run/pipeline/1")
RESULT = [{"start": 0, "end": 5, "data": {"count": 6, "sum": 81}}]  # (1..6) + 10


def write_experiment(prefix: Path, name: str, edit=None) -> str:
    """Copy ``base`` as experiment NAME after ``edit(declaration)``; return the full name."""
    decl = json.loads((prefix / EXP_DIR / "base.json").read_text())
    if edit is not None:
        edit(decl)
    (prefix / EXP_DIR / f"{name}.json").write_text(json.dumps(decl, indent=4))
    return f"run/run/pipeline/1/{name}"


def with_mode(mode: str):
    def edit(decl):
        decl["blocks"]["second"]["parameters"] = {"mode": mode}
    return edit


def run(prefix: Path, cache: Path, name: str = BASE, force: bool = False) -> dict:
    return executor.run_experiment(prefix, cache, name, executor.Options(force=force, jobs=2))


def statuses(report: dict) -> dict[str, str]:
    return {name: block["status"] for name, block in report["blocks"].items()}


def cache_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file() and ".locks" not in p.parts)


def temporaries(cache: Path) -> list[Path]:
    return [p for p in cache_files(cache) if ".tmp-" in p.name]


def output_file(cache: Path, report: dict, block: str, output: str) -> Path:
    return open_store(cache).output_path(report["blocks"][block]["outputs"][output])


@pytest.fixture
def prefix(copy_prefix) -> Path:
    return copy_prefix()


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- cache reuse

def test_second_run_is_fully_cached_with_same_results(prefix, cache):
    first = run(prefix, cache)
    assert first["status"] == "ok", first
    assert statuses(first) == {"first": "ran", "second": "ran", "analysis": "ran"}
    assert first["results"] == {"analysis": RESULT}
    again = run(prefix, cache)
    assert statuses(again) == {"first": "cached", "second": "cached", "analysis": "cached"}
    assert again["results"] == first["results"]
    assert {n: b["key"] for n, b in again["blocks"].items()} == {n: b["key"] for n, b in first["blocks"].items()}
    assert temporaries(cache) == []


def test_force_reruns_everything(prefix, cache):
    run(prefix, cache)
    forced = run(prefix, cache, force=True)
    assert statuses(forced) == {"first": "ran", "second": "ran", "analysis": "ran"}
    assert forced["results"] == {"analysis": RESULT}


def test_editing_a_parameter_reruns_exactly_the_affected_blocks(prefix, cache):
    before = run(prefix, cache)
    write_experiment(prefix, "base", with_mode("copy"))  # second: a new parameter value, same behaviour
    after = run(prefix, cache)
    assert statuses(after) == {"first": "cached", "second": "ran", "analysis": "ran"}
    assert after["blocks"]["first"]["key"] == before["blocks"]["first"]["key"]
    assert after["blocks"]["second"]["key"] != before["blocks"]["second"]["key"]
    assert after["results"] == {"analysis": RESULT}

    def offset(decl):
        decl["blocks"]["first"]["parameters"]["offset"] = 20
        decl["blocks"]["second"]["parameters"] = {"mode": "copy"}

    write_experiment(prefix, "base", offset)
    changed = run(prefix, cache)
    assert statuses(changed) == {"first": "ran", "second": "ran", "analysis": "ran"}
    assert changed["results"] == {"analysis": [{"start": 0, "end": 5, "data": {"count": 6, "sum": 141}}]}


def test_editing_library_code_reruns_the_blocks_using_it(prefix, cache):
    before = run(prefix, cache)
    lib = prefix / "libraries/run/util/1.py"
    lib.write_text(lib.read_text() + "\n# an edit\n")
    after = run(prefix, cache)
    assert statuses(after)["first"] == "ran"  # `first' uses the library
    assert after["blocks"]["first"]["key"] != before["blocks"]["first"]["key"]
    assert after["results"] == {"analysis": RESULT}


def test_parameter_default_written_explicitly_changes_nothing(prefix, cache):
    run(prefix, cache)

    def explicit(decl):  # "delay" defaults to 0.0, "mode" to "none"
        decl["blocks"]["first"]["parameters"]["delay"] = 0.0
        decl["blocks"]["second"]["parameters"] = {"mode": "none"}

    name = write_experiment(prefix, "explicit", explicit)
    assert statuses(run(prefix, cache, name)) == {"first": "cached", "second": "cached", "analysis": "cached"}


def test_editing_the_description_reruns_nothing(prefix, cache):
    run(prefix, cache)

    def describe(decl):
        decl["description"] = "a different description"

    write_experiment(prefix, "base", describe)
    again = run(prefix, cache)
    assert statuses(again) == {"first": "cached", "second": "cached", "analysis": "cached"}
    assert again["results"] == {"analysis": RESULT}


def test_blocks_shared_between_experiments_are_reused(prefix, cache):
    run(prefix, cache)
    variant = write_experiment(prefix, "variant", with_mode("copy"))
    rep = run(prefix, cache, variant)
    assert statuses(rep) == {"first": "cached", "second": "ran", "analysis": "ran"}
    twin = write_experiment(prefix, "twin")
    rep = run(prefix, cache, twin)
    assert statuses(rep) == {"first": "cached", "second": "cached", "analysis": "cached"}
    assert rep["results"] == {"analysis": RESULT}


def test_blocks_are_shared_across_toolchains_and_block_names(prefix, cache):
    pipeline = run(prefix, cache)
    short = run(prefix, cache, "run/run/short/1/base")  # `prep' = `first' of the pipeline
    assert statuses(short) == {"prep": "cached", "analysis": "ran"}
    assert short["blocks"]["prep"]["key"] == pipeline["blocks"]["first"]["key"]
    assert short["results"] == {"analysis": RESULT}


def test_cached_results_without_running(prefix, cache):
    with pytest.raises(Exception, match="run it first"):
        cached_results(prefix, cache, BASE)
    run(prefix, cache)
    assert cached_results(prefix, cache, BASE) == {"analysis": RESULT}


# ----------------------------------------------------------------------------- concurrency

def test_two_concurrent_runs_sharing_blocks_compute_each_block_once(prefix, cache):
    def slow(decl):
        decl["blocks"]["first"]["parameters"]["delay"] = 0.4  # 2.4 s: both runs overlap on it

    def slow_twin(decl):
        slow(decl)
        decl["description"] = "the same blocks, another experiment"

    a = write_experiment(prefix, "slow_a", slow)
    b = write_experiment(prefix, "slow_b", slow_twin)
    procs = [subprocess.Popen(cli_command("-p", prefix, "-c", cache, "experiments", "run", name, "--json"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in (a, b)]
    outs, errs = [], []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
        errs.append(err)
    assert any(": waiting" in err for err in errs), errs  # one run waited for the other's lock
    reports = {o["experiment"]: o for o in outs}
    assert reports[a]["results"] == reports[b]["results"] == {
        "analysis": [{"start": 0, "end": 5, "data": {"count": 6, "sum": 81}}]}
    for block in ("first", "second", "analysis"):
        seen = sorted(r["blocks"][block]["status"] for r in outs)
        assert seen == ["cached", "ran"], (block, seen)
        assert outs[0]["blocks"][block]["key"] == outs[1]["blocks"][block]["key"]
    assert temporaries(cache) == []


def stop_run(prefix: Path, cache: Path, name: str, sig: int, ready) -> None:
    """Start ``experiments run NAME`` in a subprocess, send SIG once ``ready()`` is true.

    The run's temporary folder is a private one: a run killed with SIGKILL cannot remove its
    ``bb-ctl-*`` control folder, which must not stay in the system's temporary folder; an
    interrupted run must leave nothing there.
    """
    with private_tmpdir() as tmp:
        _stop_run(prefix, cache, name, sig, ready, tmp)
        if sig != signal.SIGKILL:
            assert not list(tmp.iterdir()), "an interrupted run left its temporary files"


def _stop_run(prefix: Path, cache: Path, name: str, sig: int, ready, tmp: Path) -> None:
    proc = subprocess.Popen(cli_command("-p", prefix, "-c", cache, "experiments", "run", name),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp)},
                            # pytest may run with SIGINT ignored (background job): the CLI must not inherit it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while not ready() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ready(), f"the run never reached the point where it must be stopped: {proc.communicate()}"
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    deadline = time.monotonic() + 5
    while live_processes(str(prefix)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_processes(str(prefix)) == [], "block processes outlived the run"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["interrupt", "kill"])
def test_stopping_a_run_leaves_no_process_and_no_partial_file(prefix, cache, sig):
    def slow(decl):
        decl["blocks"]["first"]["parameters"]["delay"] = 0.25

    name = write_experiment(prefix, "slow", slow)
    stop_run(prefix, cache, name, sig, lambda: any(cache.rglob("*.h5.tmp-*")))  # while `first' writes
    if sig == signal.SIGINT:
        assert temporaries(cache) == []
    assert not any(cache.rglob("*.h5"))
    rep = run(prefix, cache, name)  # the re-run is not blocked by stale locks or files
    assert rep["status"] == "ok" and rep["results"] == {"analysis": RESULT}
    assert temporaries(cache) == [], "stale temporaries of a dead writer are never removed"


def test_interrupting_the_indexing_leaves_no_partial_index(prefix, cache):
    name = write_experiment(prefix, "slow_index", use_protocol("slow_index"))
    # the CLI, its fork server and the indexing job (index() sleeps 3 s) all carry the prefix path
    stop_run(prefix, cache, name, signal.SIGINT, lambda: len(live_processes(str(prefix))) >= 3)
    assert temporaries(cache) == [] and not any(cache.rglob("*.db"))


def test_time_limit(prefix, cache):
    def slow(decl):
        decl["blocks"]["first"]["parameters"]["delay"] = 0.4

    name = write_experiment(prefix, "slow", slow)
    rep = executor.run_experiment(prefix, cache, name, executor.Options(timeout_s=0.8))
    assert statuses(rep) == {"first": "failed", "second": "skipped", "analysis": "skipped"}
    assert rep["blocks"]["first"]["error"]["kind"] == "timeout", rep["blocks"]["first"]["error"]
    assert_nothing_partial(cache, rep, ["first"])


# ----------------------------------------------------------------------------- failures

FAILURES = {
    # mode: (kind, words expected in the message)
    "setup": ("user", ["RuntimeError", "setup failed on purpose"]),
    "prepare": ("user", ["RuntimeError", "prepare failed on purpose"]),
    "process": ("user", ["ValueError", "process failed on purpose at item 3"]),
    "setup_false": ("user", ["setup", "False"]),
    "process_false": ("user", ["process", "False"]),
    "exit": ("exit", ["sys.exit", "2"]),
    "os_exit": ("exit", ["3"]),
    "segfault": ("signal", ["SIGSEGV"]),
    "kill": ("signal", ["SIGKILL"]),
}


def assert_nothing_partial(cache: Path, report: dict, failed: list[str]) -> None:
    for block in failed:
        for key in report["blocks"][block]["outputs"].values():
            assert not open_store(cache).output_path(key).exists()
    assert temporaries(cache) == [], "temporary files left in the cache"


@pytest.mark.parametrize("mode", sorted(FAILURES))
def test_block_failure(prefix, cache, mode):
    kind, words = FAILURES[mode]
    name = write_experiment(prefix, f"fail_{mode}", with_mode(mode))
    rep = run(prefix, cache, name)
    assert rep["status"] == "failed"
    assert statuses(rep) == {"first": "ran", "second": "failed", "analysis": "skipped"}
    assert rep["results"] == {}
    error = rep["blocks"]["second"]["error"]
    assert error["kind"] == kind, error
    for word in words:
        assert word in error["message"], error
    if mode.endswith("_false"):  # no exception: the message says it all, no backbeat internals shown
        assert 'File "/' not in (error["traceback"] or ""), error
        assert "backbeat.core.errors" not in error["message"], error
    elif kind == "user":
        tb = error["traceback"]
        assert 'File "algorithms/run/faulty/1.py"' in tb, tb
        assert str(prefix) not in tb and str(prefix.resolve()) not in tb, tb
        assert "backbeat" not in tb.replace("backbeat-", ""), f"platform frames in the user traceback:\n{tb}"
    assert_nothing_partial(cache, rep, ["second", "analysis"])
    # the fix: the same pipeline with a working second block reuses `first'
    fixed = run(prefix, cache)
    assert statuses(fixed) == {"first": "cached", "second": "ran", "analysis": "ran"}
    assert fixed["results"] == {"analysis": RESULT}


def test_fixing_the_code_resumes_from_cached_blocks(prefix, cache):
    name = write_experiment(prefix, "fail_process", with_mode("process"))
    assert statuses(run(prefix, cache, name))["second"] == "failed"
    code = prefix / "algorithms/run/faulty/1.py"
    code.write_text(code.read_text().replace(
        'raise ValueError("faulty: process failed on purpose at item 3")', "pass"))
    fixed = run(prefix, cache, name)
    assert statuses(fixed) == {"first": "cached", "second": "ran", "analysis": "ran"}
    assert fixed["results"] == {"analysis": RESULT}


def test_failure_inside_a_library_shows_both_files(prefix, cache):
    def unlucky(decl):
        decl["blocks"]["first"]["parameters"]["offset"] = 666

    rep = run(prefix, cache, write_experiment(prefix, "unlucky", unlucky))
    assert statuses(rep) == {"first": "failed", "second": "skipped", "analysis": "skipped"}
    error = rep["blocks"]["first"]["error"]
    assert error["kind"] == "user" and "ArithmeticError: util: unlucky offset" in error["message"], error
    tb = error["traceback"]
    assert tb.index('File "algorithms/run/echo/1.py"') < tb.index('File "libraries/run/util/1.py"'), tb
    assert str(prefix) not in tb


def use_protocol(protocol: str):
    def edit(decl):
        decl["datasets"]["items"]["protocol"] = protocol
    return edit


def test_database_view_get_failure(prefix, cache):
    name = write_experiment(prefix, "fail_get", use_protocol("get_fails"))
    rep = run(prefix, cache, name)
    assert rep["status"] == "failed"
    assert statuses(rep) == {"first": "failed", "second": "skipped", "analysis": "skipped"}
    error = rep["blocks"]["first"]["error"]
    assert "get failed on purpose at value 3" in error["message"], error
    assert str(prefix) not in json.dumps(error), error
    assert 'File "databases/counter/1.py"' in (error["traceback"] or ""), error
    assert error["kind"] == "user", error  # user code failed, not backbeat
    assert_nothing_partial(cache, rep, ["first", "second", "analysis"])


def test_database_view_index_failure(prefix, cache):
    name = write_experiment(prefix, "fail_index", use_protocol("index_fails"))
    try:
        rep = run(prefix, cache, name)
    except Exception as exc:  # noqa: BLE001
        message = str(exc)
        assert "index failed on purpose" in message
        assert 'File "databases/counter/1.py"' in message
        assert str(prefix) not in message
        pytest.fail(f"a failing view index must fail the blocks reading it, not abort the run: {message}")
    assert rep["status"] == "failed"
    assert statuses(rep) == {"first": "failed", "second": "skipped", "analysis": "skipped"}
    error = rep["blocks"]["first"]["error"]
    assert "index failed on purpose" in error["message"]
    assert error["kind"] == "user"
    assert 'File "databases/counter/1.py"' in error["traceback"]
    assert str(prefix) not in json.dumps(error)
    assert list(cache.rglob("*.db")) == [] and temporaries(cache) == []


# ----------------------------------------------------------------------------- corruption

def flip_data(path: Path, values: np.ndarray) -> None:
    """Flip one byte inside the stored column holding ``values`` (found by content)."""
    raw = bytearray(path.read_bytes())
    at = raw.find(values.tobytes())
    assert at >= 0, f"cannot find the stored values in {path}"
    raw[at + 1] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_corrupted_input_file_is_detected_and_its_producer_rerun(prefix, cache):
    rep = run(prefix, cache)
    path = output_file(cache, rep, "first", "out")
    flip_data(path, np.arange(11, 17, dtype="<i4"))
    variant = write_experiment(prefix, "variant", with_mode("copy"))  # `second' must read first's output
    again = run(prefix, cache, variant)
    assert statuses(again) == {"first": "ran", "second": "ran", "analysis": "ran"}
    assert again["results"] == {"analysis": RESULT}
    cachefile.verify(str(path))


def test_corrupted_result_file_is_detected_and_the_analyzer_rerun(prefix, cache):
    rep = run(prefix, cache)
    path = output_file(cache, rep, "analysis", "result")
    flip_data(path, np.array([81], dtype="<i4"))
    again = run(prefix, cache)
    assert again["blocks"]["analysis"]["status"] == "ran"
    assert again["results"] == {"analysis": RESULT}


def test_garbage_in_place_of_a_cache_file_is_detected(prefix, cache):
    rep = run(prefix, cache)
    path = output_file(cache, rep, "first", "out")
    path.write_bytes(b"not an HDF5 file")
    again = run(prefix, cache, write_experiment(prefix, "variant", with_mode("copy")))
    assert statuses(again) == {"first": "ran", "second": "ran", "analysis": "ran"}
    assert again["results"] == {"analysis": RESULT}


def test_corrupted_view_index_is_detected_and_rebuilt(prefix, cache):
    run(prefix, cache)
    (index,) = cache.rglob("*.db")
    text = index.read_text()
    assert '{"value": 3}' in text
    index.write_text(text.replace('{"value": 3}', '{"value": 9}'))  # an edit, still valid JSON
    again = run(prefix, cache)
    assert again["results"] == {"analysis": RESULT}, "a corrupted view index silently changed the results"
