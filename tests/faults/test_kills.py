"""Fault injection, ``kill -9`` (issue 17, item 1 and the suite): of the command, of its fork
server and of single block processes, at random moments.

A process killed with SIGKILL runs no cleanup.  What it leaves must never be trusted nor stay:
its block processes die with it (the fork server stops them when its parent dies), and the next
run removes its temporaries, its journal and its control folder (``bb-ctl-<pid>-…``), then
gives exactly what a clean run gives.  A run whose fork server or block process is killed
fails with a clear message (no traceback) and leaves nothing behind.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from harness import (  # noqa: F401 - fixtures
    RNG,
    SEED,
    children_of,
    kill_if_running,
    references_fixture,
    scene_fixture,
    wait_until,
    written,
)

from backbeat.data import indexfiles

SLOW = {"delay": 0.1}  # `first' takes ~0.6 s


def test_kill_9_while_a_block_writes_leaves_what_the_next_run_removes(scene, references):
    name = scene.experiment("slow", first=SLOW)
    reference = references.get(scene, name)
    proc = scene.start("experiments", "run", name)
    assert wait_until(lambda: written(scene.cache)), "the run never wrote"
    proc.kill()
    proc.communicate(timeout=30)
    scene.no_process_left()  # its block processes died with it
    left = scene.leftovers()
    assert any("bb-ctl-" in p for p in left) and any(".h5.tmp-" in p for p in left), left
    assert any("/.runs/" in p for p in left), left  # its journal: what the next run cleans
    scene.check_recovered(name, reference)


def test_a_command_killed_after_its_last_block_leaves_nothing_a_cached_run_keeps(scene, references):
    """Killed once every block was committed, the command leaves its control folder; the next run,
    all cached, starts no process (so no control server sweeps): it must still remove it."""
    name = scene.experiment("slow", first=SLOW)
    reference = references.get(scene, name)
    assert scene.run("experiments", "run", name).returncode == 0
    dead = scene.tmp / "bb-ctl-4194305-k1ll3d"  # (a pid above any pid_max: never alive)
    dead.mkdir(mode=0o700)
    (dead / "control").touch()
    scene.check_recovered(name, reference)


@pytest.mark.parametrize("attempt", range(3))
def test_kill_9_of_the_command_at_a_random_moment(scene, references, attempt):
    name = scene.experiment("slow", first=SLOW)
    reference = references.get(scene, name)
    moment = RNG.uniform(0.05, reference["wall"])
    proc = scene.start("experiments", "run", name, "--json")
    time.sleep(moment)
    proc.kill()
    proc.communicate(timeout=30)
    scene.check_recovered(name, reference)


@pytest.mark.parametrize("attempt", range(2))
def test_kill_9_of_the_fork_server_at_a_random_moment(scene, references, attempt):
    name = scene.experiment("slow", first=SLOW)
    reference = references.get(scene, name)
    wall = reference["wall"]
    proc = scene.start("experiments", "run", name)
    assert wait_until(lambda: children_of(proc.pid) or proc.poll() is not None), "no fork server started"
    time.sleep(RNG.uniform(0.0, wall * 0.8))
    for zygote in children_of(proc.pid):  # (it may have ended meanwhile: the run's last block done)
        kill_if_running(zygote)
    _out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "internal error" not in err, f"seed {SEED}: {err}"
    if proc.returncode != 0:  # (killed after the blocks had all run: nothing lost)
        assert proc.returncode == 1 and "fork server" in err, f"seed {SEED}: {err}"
    scene.check_recovered(name, reference)


@pytest.mark.parametrize("attempt", range(2))
def test_kill_9_of_a_block_process_at_a_random_moment(scene, references, attempt):
    """A block, the indexing job or the database provider: whichever runs at that moment."""
    name = scene.experiment("slow", first=SLOW)
    reference = references.get(scene, name)
    proc = scene.start("experiments", "run", name)

    def running():
        return [p for z in children_of(proc.pid) for p in children_of(z.pid)]

    assert wait_until(lambda: running() or proc.poll() is not None), "no process started"
    time.sleep(RNG.uniform(0.0, 0.6))
    victims = running()
    if victims:  # (the one chosen may have ended by itself meanwhile: a block lives ~0.6 s)
        kill_if_running(RNG.choice(victims))
    _out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "internal error" not in err, f"seed {SEED}: {err}"
    if proc.returncode != 0:
        assert proc.returncode == 1 and ("SIGKILL" in err or "could not be indexed" in err), f"seed {SEED}: {err}"
    scene.check_recovered(name, reference)


def test_the_temporaries_of_a_killed_indexing_job_are_removed_by_the_next_indexing(scene, references):
    """An indexing job killed while its files were under their temporary names (its table's, committed in
    a thread) leaves them: the run reports the dataset as not indexed — a killed job is a system failure,
    which discards no index — and the next run indexing that view removes them (a writer found dead),
    as it does any entry's (the CI's random kill of a block process once met the table's)."""
    name = scene.experiment("slow", first=SLOW)
    reference = references.get(scene, name)
    assert scene.run("experiments", "run", name).returncode == 0
    index = next(scene.cache.rglob("*.db"))
    for path in indexfiles.files(index):  # (indexed again by the next run)
        path.unlink(missing_ok=True)
    left = [Path(f"{index}.table.tmp-4194305-k1ll3d00"), Path(f"{index}.tmp-4194305-k1ll3d01")]  # (a pid above
    for path in left:                                                                             # any pid_max)
        path.write_bytes(b"half written")
    scene.check_recovered(name, reference)
    assert not any(path.exists() for path in left)
