"""Faults in the sandbox (issues 14 and 17 together): a sandboxed block keeps every guarantee of
an unsandboxed one.

* its output goes to its bounded log in the cache — written in the run's private folder, the
  cache being read-only in the sandbox, and moved to the cache as the block ends;
* its control messages are authenticated: its token, and its pid — the zygote reports the pids
  of the sandbox's PID namespace, translated to the command's — so a forged message is refused
  and attributed to the block that sent it, and a genuine one is never refused;
* a signal stops the run: every process in the sandbox dies (a detached grandchild too), the
  interrupted run is recorded, nothing is left (staging and private folders included).
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import psutil
import pytest
from harness import SEED, hostile, output_digests, references_fixture, scene_fixture, wait_until  # noqa: F401 - fixtures

if shutil.which("bwrap") is None:
    pytest.skip("bubblewrap (bwrap) is not installed", allow_module_level=True)


def test_a_sandboxed_blocks_output_goes_to_its_log_and_its_messages_are_accepted(scene, references):
    name = scene.experiment("prints", second=hostile(mode="print", amount=300_000))
    done = scene.run("experiments", "run", name, "--sandbox", "--json")
    assert done.returncode == 0, done.stderr
    rep = json.loads(done.stdout)
    assert rep["status"] == "ok" and rep["results"] == references.get(scene, name)["results"], rep
    assert not rep.get("warnings"), rep["warnings"]  # no genuine message refused (pids translated)
    assert rep["blocks"]["second"]["runtime"]["sandbox"] is True
    log = rep["blocks"]["second"]["logs"][""]
    text = (scene.cache / log["path"]).read_text()
    assert text.count("x" * 99) > 1000 and text.endswith("the last line of the block's output\n")
    record = json.loads(Path(rep["provenance"]).read_text())
    assert record["blocks"]["second"]["logs"] == rep["blocks"]["second"]["logs"]
    assert record["blocks"]["second"]["runtime"]["sandbox"] is True  # both features in the record
    assert record["assets"]["algorithms/faults/hostile/1"]["code_hash"]  # (its code snapshot's name)
    shown = scene.run("experiments", "logs", name, "second")
    assert shown.returncode == 0 and shown.stdout == text, shown.stderr
    assert not any((scene.cache / ".staging").glob("*")), "the staging folder was left behind"
    assert scene.leftovers() == [], scene.leftovers()


def test_forged_messages_from_a_sandboxed_block_are_refused_and_attributed(scene, references):
    name = scene.experiment("forge", second=hostile(mode="forge", victim="analysis", delay=0.05))
    done = scene.run("experiments", "run", name, "--sandbox", "--json")
    assert done.returncode == 0, done.stderr
    rep = json.loads(done.stdout)
    assert rep["status"] == "ok" and rep["blocks"]["analysis"]["status"] == "ran", rep
    assert rep["results"] == references.get(scene, name)["results"]
    refused = [w for w in rep["warnings"] if "naming `analysis'" in w]
    assert len(refused) == 4, rep["warnings"]
    # the sender is known by its pid outside the sandbox: translated from the sandbox's namespace
    assert all("from block process `second'" in w and "refused" in w for w in refused), refused


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _grandchildren(pid: int) -> list[psutil.Process]:
    """Processes of the run below a block process (a block is a child of a zygote)."""
    tree = _tree(pid)
    zygotes = {p.pid for p in tree if "backbeat.processes.zygote" in _cmdline(p)[1:3]}  # (not bwrap)
    blocks = {p.pid for p in tree if _ppid(p) in zygotes}
    return [p for p in tree if _ppid(p) in blocks]


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _ppid(p: psutil.Process) -> int | None:
    try:
        return p.ppid()
    except psutil.Error:
        return None


def test_digests_a_sandboxed_block_forges_for_its_outputs_are_not_learnt(scene):
    """A sandboxed block reporting forged content digests (and records) for the outputs it
    committed: the run's report and record, and the stat memo that later runs trust, hold the
    digest read from the checked file, never the forged one."""
    from backbeat.cache.backends import open_store

    name = scene.experiment("lie", second=hostile(mode="lie"))
    done = scene.run("experiments", "run", name, "--sandbox", "--json")
    assert done.returncode == 0, done.stderr
    rep = json.loads(done.stdout)
    assert rep["status"] == "ok" and rep["blocks"]["second"]["status"] == "ran", rep
    real = output_digests(scene.cache, rep)["second.out"]
    record = json.loads(Path(rep["provenance"]).read_text())
    assert record["blocks"]["second"]["outputs"]["out"]["digest"] == real != "0" * 64
    assert "0" * 64 not in done.stdout + Path(rep["provenance"]).read_text() and '"forged"' not in done.stdout
    key = rep["blocks"]["second"]["outputs"]["out"]
    assert open_store(scene.cache).identity(key) == (key, real)  # (the stat memo's, as the next run sees it)


def test_a_signal_stops_a_sandboxed_run_and_every_process_in_the_sandbox(scene):
    second = hostile(mode="grandchild", path="/tmp/grandchild.pid", delay=0.3)  # (the sandbox's own /tmp)
    name = scene.experiment("sandboxed_grandchild", second=second)
    proc = scene.start("experiments", "run", name, "--sandbox", "--json")
    assert wait_until(lambda: _grandchildren(proc.pid) or proc.poll() is not None), proc.communicate()
    everything = _tree(proc.pid)  # bwrap, the zygote, the blocks, the provider, the grandchild
    assert len(everything) >= 4, everything
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "interrupted by SIGTERM" in err and "Traceback" not in err, err
    rep = json.loads(out)
    assert rep["status"] == "interrupted"
    assert rep["blocks"]["second"]["error"]["kind"] == "interrupted", rep["blocks"]["second"]
    assert json.loads(Path(rep["provenance"]).read_text())["status"] == "interrupted"
    alive = psutil.wait_procs(everything, timeout=10)[1]
    assert not alive, f"processes outlived the sandboxed run (seed {SEED}): {alive}"
    scene.no_process_left()
    assert scene.leftovers() == [], scene.leftovers()
    assert not any((scene.cache / ".staging").glob("*")), "the staging folder was left behind"
