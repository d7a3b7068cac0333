"""``kill -9`` of a command whose zygote was forked from a warm template (``processes/template.py``).

Its zygote and block processes are not the command's descendants but the template's: they must
still die with the command (the zygote reads EOF on its socket and kills them), the template
must live on, and the next run must give exactly what a clean run gives.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from harness import SEED, references_fixture, scene_fixture, wait_until  # noqa: F401 - fixtures

BACKBEAT = [str(Path(sys.executable).parent / "backbeat")]  # (installed with backbeat: a template serves only it)
SLOW = {"delay": 0.1}


@pytest.fixture
def templates():
    folder = Path(tempfile.mkdtemp(prefix="bbt-"))
    yield folder
    for lock in folder.glob("*.lock"):
        text = lock.read_text().strip()
        if text.isdigit():
            try:
                os.kill(int(text), signal.SIGKILL)
            except ProcessLookupError:
                pass
    shutil.rmtree(folder, ignore_errors=True)


def test_kill_9_of_a_command_served_by_a_template(scene, references, templates):
    name = scene.experiment("slow", first=SLOW)
    reference = references.get(scene, name)
    env = dict(scene.env(), BACKBEAT_TEMPLATE="on", BACKBEAT_TEMPLATE_DIR=str(templates / "t"))

    def start(cache: Path) -> subprocess.Popen:
        return subprocess.Popen([*BACKBEAT, "-p", str(scene.prefix), "-c", str(cache), "experiments", "run",
                                 name], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    warm = start(scene.root / "warm-cache")  # starts the template
    warm.communicate(timeout=120)
    assert warm.returncode == 0
    assert wait_until(lambda: any((templates / "t").glob("*.sock")), timeout=60), "no template came up"
    (lock,) = (templates / "t").glob("*.lock")
    template = psutil.Process(int(lock.read_text()))

    proc = start(scene.cache)

    def blocks() -> list[psutil.Process]:
        return [p for z in template.children() for p in z.children()]

    assert wait_until(lambda: blocks() or proc.poll() is not None), "no block started"
    running = template.children(recursive=True)
    assert running and proc.poll() is None, f"seed {SEED}"
    proc.kill()
    proc.communicate(timeout=30)
    assert wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in running),
                      timeout=10), f"its zygote and blocks outlived the command (seed {SEED})"
    assert template.is_running()
    scene.check_recovered(name, reference)
