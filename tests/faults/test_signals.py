"""Fault injection, signals (issue 17, item 1): SIGTERM, SIGHUP and SIGINT stop a run alike.

``timeout 1 backbeat …``, a closed terminal, a batch scheduler's kill: every running block is
stopped, every temporary removed, the interrupted run recorded, a message said, and the
command exits with 128 + the signal.  ``--json`` still prints the report of what was done.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from harness import (  # noqa: F401 - fixtures
    RNG,
    SEED,
    processes,
    references_fixture,
    scene_fixture,
    wait_until,
    written,
)

SLOW = {"delay": 0.1}  # `first' sleeps 0.1 s per unit: 0.6 s while it writes its output (as in test_kills)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["TERM", "HUP", "INT"])
def test_a_signal_stops_the_run_records_it_and_leaves_nothing(scene, references, sig):
    name = scene.experiment("slow", first=SLOW)
    reference = references.get(scene, name)
    proc = scene.start("experiments", "run", name, "--json")
    assert wait_until(lambda: written(scene.cache)), "the run never wrote"
    time.sleep(RNG.uniform(0.0, 0.3))  # somewhere while `first' writes
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, f"seed {SEED}: {err}"
    assert f"backbeat: interrupted by {signal.Signals(sig).name}" in err, err
    assert "Traceback" not in err and "internal error" not in err, err
    rep = json.loads(out)  # stdout is still the JSON report: of the interrupted run
    assert rep["status"] == "interrupted"
    stopped = {b: v["error"]["kind"] for b, v in rep["blocks"].items() if "error" in v}
    assert stopped and set(stopped.values()) == {"interrupted"}, rep["blocks"]
    record = json.loads(Path(rep["provenance"]).read_text())
    assert record["status"] == "interrupted" and rep["provenance"] in err
    assert record["blocks"]["first"]["status"] in ("failed", "ran")
    scene.no_process_left()
    assert scene.leftovers() == [], "the interrupted run left files behind"
    assert not any(scene.cache.rglob("*.h5")) or rep["blocks"]["first"]["status"] == "ran"
    scene.check_recovered(name, reference)


def test_a_signal_while_planning_or_indexing_exits_cleanly(scene):
    """Before any block runs (the view indexes for 3 s): no record to write, the same exit."""
    decl = scene.experiment("slow_index")
    path = scene.prefix / "experiments" / (decl + ".json")
    text = json.loads(path.read_text())
    text["datasets"]["items"]["protocol"] = "slow_index"
    path.write_text(json.dumps(text))
    proc = scene.start("experiments", "run", decl)
    assert wait_until(lambda: len(processes(str(scene.prefix))) >= 3), "the indexing job never started"
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "interrupted by SIGTERM" in err and "Traceback" not in err, err
    scene.no_process_left()
    assert scene.leftovers() == [] and not any(scene.cache.rglob("*.db")), scene.leftovers()

