"""Fault injection, hostile blocks (issue 17, items 2, 3 and 4): floods of output, detached
grandchildren, forged control messages.

* item 2: a block's stdout and stderr go to its bounded log in the cache, never to backbeat's
  own stdout (``--json`` always parses); the log is listed in the report and the record,
  shown by ``experiments logs``, and its tail is shown when the block fails;
* item 3: a process a block starts and detaches (fork, setsid, fork) dies with the block —
  also when the command or its fork server is killed — and holds no pipe of backbeat open;
* item 4: a control message naming another job is refused and reported; the other job is
  not affected.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest
from harness import (  # noqa: F401 - fixtures
    SEED,
    children_of,
    hostile,
    kill_if_running,
    references_fixture,
    scene_fixture,
    wait_until,
)

from backbeat.processes.logs import HEAD, TAIL


def _dead(pid: int, born: float | None = None) -> bool:
    """Whether process ``pid`` (started at ``born``, if given: not another process that got its
    pid meanwhile — pid_max may be 32768 on a machine forking thousands) has ended."""
    try:
        proc = psutil.Process(pid)
        return proc.status() == psutil.STATUS_ZOMBIE or (born is not None and proc.create_time() != born)
    except psutil.NoSuchProcess:
        return True


def _cmdline(proc: psutil.Process) -> list[str]:
    """Its command line; none once it has ended (a process found a moment ago may be gone)."""
    try:
        return proc.cmdline()
    except psutil.NoSuchProcess:
        return []


# ----------------------------------------------------------------------------- item 2: output

def test_a_flood_of_prints_stays_in_the_bounded_log_and_json_parses(scene, references):
    name = scene.experiment("prints", second=hostile(mode="print", amount=100_000_000))
    done = scene.run("experiments", "run", name, "--json")
    assert done.returncode == 0, done.stderr
    rep = json.loads(done.stdout)  # nothing but the report on stdout
    assert rep["status"] == "ok" and rep["results"] == references.get(scene, name)["results"]
    assert "xxxx" not in done.stderr  # nor on stderr
    log = rep["blocks"]["second"]["logs"][""]
    assert HEAD + TAIL < log["bytes"] < HEAD + TAIL + 200, log  # 100 MB printed, ~1 MiB kept
    text = (scene.cache / log["path"]).read_text()
    assert "bytes of output omitted here]" in text and text.endswith("the last line of the block's output\n")
    record = json.loads(Path(rep["provenance"]).read_text())
    assert record["blocks"]["second"]["logs"] == rep["blocks"]["second"]["logs"]
    shown = scene.run("experiments", "logs", name, "second")
    assert shown.returncode == 0 and shown.stdout == text, shown.stderr
    listed = scene.run("experiments", "logs", name)
    assert f"second: {log['path']} ({log['bytes']} bytes)" in listed.stdout, listed.stdout
    assert "first: no log" in listed.stdout  # a block that printed nothing has none


def test_the_end_of_a_failed_blocks_output_is_shown(scene):
    name = scene.experiment("fails", second=hostile(mode="fail"))
    done = scene.run("experiments", "run", name)
    assert done.returncode == 1
    assert "block `second' failed (user): RuntimeError: hostile: failed on purpose" in done.stderr
    assert "its last output (whole log: " in done.stderr and "    the block is about to fail" in done.stderr
    as_json = json.loads(scene.run("experiments", "run", name, "--json").stdout)
    error = as_json["blocks"]["second"]["error"]
    assert error["output"] == "the block is about to fail" and Path(error["log"]).is_file()


# ----------------------------------------------------------------------------- item 3: process trees

@pytest.mark.parametrize("kill", [None, "command", "fork server", "command, multiprocessing",
                                  "fork server, multiprocessing"])
def test_a_detached_grandchild_dies_with_the_run(scene, references, tmp_path, kill):
    pid_file = tmp_path / "grandchild.pid"
    second = hostile(mode="grandchild", delay=0.2)  # (time to kill the command)
    name = scene.experiment("grandchild", second=second)
    t0 = time.monotonic()
    fallback = kill is not None and kill.endswith("multiprocessing")  # (the command has a thread)
    proc = scene.start("experiments", "run", name, "--json", env={"HOSTILE_PID_FILE": str(pid_file)},
                       threaded=fallback)
    assert wait_until(lambda: pid_file.exists() or proc.poll() is not None), proc.communicate()
    grandchild = int(pid_file.read_text())
    born = psutil.Process(grandchild).create_time()
    blocks = {b.pid for z in children_of(proc.pid) for b in children_of(z.pid)}
    assert not _dead(grandchild, born) and os.getsid(grandchild) not in blocks  # detached: another session
    servers = [" ".join(_cmdline(z)) for z in children_of(proc.pid)]
    assert any("multiprocessing.forkserver" in s for s in servers) == fallback, servers
    if kill is not None and kill.startswith("command"):
        proc.kill()
    elif kill is not None and kill.startswith("fork server"):
        for zygote in children_of(proc.pid):
            kill_if_running(zygote)
    out, err = proc.communicate(timeout=30)  # returns once every holder of the pipes is gone
    # (its fork server kills it as it stops: within seconds, more under load; it would sleep ten minutes)
    assert wait_until(lambda: _dead(grandchild, born), 20), "the detached grandchild outlived the run"
    if kill is None:
        assert proc.returncode == 0 and json.loads(out)["status"] == "ok", err
        assert time.monotonic() - t0 < 300  # (not held by the grandchild, which sleeps ten minutes)
    elif kill == "fork server":
        assert proc.returncode == 1 and "fork server" in err and "Traceback" not in err, err
    scene.check_recovered(name, references.get(scene, name))


# ----------------------------------------------------------------------------- item 4: forged messages

def test_control_messages_naming_another_job_are_refused_and_reported(scene, references):
    # `second' (streaming to `analysis', which runs at the same time) claims analysis failed
    name = scene.experiment("forge", second=hostile(mode="forge", victim="analysis", delay=0.05))
    done = scene.run("experiments", "run", name, "--json")
    assert done.returncode == 0, done.stderr
    rep = json.loads(done.stdout)
    assert rep["status"] == "ok" and rep["blocks"]["analysis"]["status"] == "ran", rep
    assert rep["results"] == references.get(scene, name)["results"]
    refused = [w for w in rep["warnings"] if "naming `analysis'" in w]
    assert len(refused) == 4, rep["warnings"]  # an error on its own channel, three `done' on another
    assert all("from block process `second'" in w and "refused" in w for w in refused), refused
    assert "warning: " in done.stderr and "was refused (not the job's token)" in done.stderr
    record = json.loads(Path(rep["provenance"]).read_text())
    assert record["status"] == "ok"

