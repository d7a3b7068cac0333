"""``kill -9`` of a command whose zygote was forked from a warm template (``processes/template.py``).

Its zygote and block processes are not the command's descendants but the template's: they must
still die with the command (the zygote reads EOF on its socket and kills them), the template
must live on, and the next run must give exactly what a clean run gives.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil
from harness import (  # noqa: F401 - fixtures
    SEED,
    children_of,
    ended,
    references_fixture,
    scene_fixture,
    served,
    templates_fixture,
    wait_until,
    written,
)

SLOW = {"delay": 0.1}


def _blocks(template: psutil.Process) -> list[psutil.Process]:
    """The block processes of the command the template serves (its child's zygote's children); a
    process ended between two looks has none (the warm-up command may still be ending)."""
    return [b for c in children_of(template.pid) for z in children_of(c.pid) for b in children_of(z.pid)]


def test_kill_9_of_a_command_served_by_a_template(scene, references, templates):
    """The command is the template's child, its zygote the command's: ``kill -9`` of the client
    kills them all (the template sees the client's connection end), the template lives on."""
    name = scene.experiment("slow", first=SLOW)
    reference = references.get(scene, name)
    _env, template, start = served(scene, templates)
    proc = start(scene.cache, "experiments", "run", name)
    assert wait_until(lambda: _blocks(template) or proc.poll() is not None), "no block started"
    (command,) = template.children()
    assert command.children() and proc.poll() is None, f"seed {SEED}"  # (its zygote: forked from it)
    running = template.children(recursive=True)
    proc.kill()
    proc.communicate(timeout=30)
    assert wait_until(lambda: all(ended(p) for p in running),
                      timeout=10), f"the command, its zygote or blocks outlived the client (seed {SEED})"
    assert template.is_running() and wait_until(lambda: not template.children(), timeout=10)  # (reaped)
    scene.check_recovered(name, reference)


def test_ctrl_c_of_a_served_command_interrupts_its_run(scene, references, templates):
    """SIGINT to the client (a terminal's Ctrl-C) reaches the command: the run stops as a direct
    one does (exit 130, the interruption recorded, nothing left); the command had the client's
    working folder, umask and standard streams."""
    name = scene.experiment("slow", first=SLOW)
    reference = references.get(scene, name)
    _env, template, start = served(scene, templates)
    proc = start(scene.cache, "experiments", "run", name, "--json", umask=0o027)
    assert wait_until(lambda: written(scene.cache) or proc.poll() is not None), "the run never wrote"
    (command,) = template.children()
    assert command.cwd() == os.getcwd()
    with open(f"/proc/{command.pid}/status") as f:
        assert "Umask:\t0027" in f.read()
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{command.pid}/fd/{fd}") == os.readlink(f"/proc/{proc.pid}/fd/{fd}")
    running = template.children(recursive=True)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "backbeat: interrupted by SIGINT" in err, f"seed {SEED}: {err}"
    assert "Traceback" not in err, err
    rep = json.loads(out)
    assert rep["status"] == "interrupted" and json.loads(Path(rep["provenance"]).read_text())["status"] == "interrupted"
    assert wait_until(lambda: all(ended(p) for p in running))
    assert scene.leftovers() == [], scene.leftovers()
    scene.check_recovered(name, reference)
