"""Durable before trusted (issue 13): a run killed between committing its outputs and making them
durable, then the machine's unsynced data lost, never has them served as cached unverified.

A block commits its output by renaming it into place *marked unsynced* (the sticky bit), and the
command makes it durable in the background (``cache/durability.py``).  ``BACKBEAT_SYNC_DELAY_S``
holds the command's syncer back: the run is killed with ``kill -9`` while every output is
committed and none is synced.  A power loss is simulated where it can be: the data of one output
is zeroed in place (its attributes — key and stored digest — and its size kept, as a file system
that keeps a file's metadata without its data would leave it), and the dead run's journal is
made to come from another boot of the machine (or is lost).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import h5py
import numpy as np
from harness import SEED, Scene, output_digests, references_fixture, scene_fixture, wait_until  # noqa: F401 - fixtures

from backbeat.cache.backends import open_store
from backbeat.cache.tools import verify_cache
from backbeat.core import durable


def _outputs(scene: Scene, reference: dict) -> dict[str, Path]:
    store = open_store(scene.cache)
    return {f"{b}.{n}": store.output_path(k) for b, v in reference["blocks"].items() for n, k in v["outputs"].items()}


def _killed_before_sync(scene: Scene, name: str, reference: dict) -> dict[str, Path]:
    """Run ``name`` with its syncer held back; kill it once every output is committed (unsynced)."""
    outputs = _outputs(scene, reference)
    proc = scene.start("experiments", "run", name, env={"BACKBEAT_SYNC_DELAY_S": "60"})
    assert wait_until(lambda: all(p.is_file() for p in outputs.values()) or proc.poll() is not None), \
        "the run never committed its outputs"
    assert proc.poll() is None, f"the run ended before it was killed: {proc.communicate()}"
    proc.kill()
    proc.communicate(timeout=30)
    scene.no_process_left()
    marked = {o: durable.is_unsynced(p.stat()) for o, p in outputs.items()}
    assert all(marked.values()), f"committed outputs not marked unsynced: {marked}"
    assert list((scene.cache / ".runs").iterdir()), "the dead run left no journal"
    return outputs


def _zero_data(path: Path) -> None:
    """What a power loss may leave of an unsynced file: its metadata, its data gone (zeros)."""
    mode = path.stat().st_mode
    with h5py.File(path, "r+") as f:
        def zero(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and name.startswith("columns") and obj.size:
                obj[...] = np.zeros(obj.shape, dtype=obj.dtype)
        f.visititems(zero)
    os.chmod(path, stat.S_IMODE(mode))  # (still marked, as the dead run left it)
    assert durable.is_unsynced(path.stat())


def _journal_from_another_boot(scene: Scene) -> None:
    for journal in (scene.cache / ".runs").iterdir():
        rec = json.loads(journal.read_text())
        rec["boot"] = "a-boot-before-a-power-loss"
        journal.write_text(json.dumps(rec))


def _rerun(scene: Scene, name: str) -> dict:
    done = scene.run("experiments", "run", name, "--json")
    assert done.returncode == 0, f"seed {SEED}: {done.stderr}"
    return json.loads(done.stdout)


def _recovered(scene: Scene, name: str, reference: dict, outputs: dict[str, Path], ran: set[str]) -> dict:
    """Re-run ``name``: exactly the blocks ``ran`` are computed again, the rest is cached, and the
    cache ends as a clean run leaves it — every output durable (unmarked), nothing left over."""
    report = _rerun(scene, name)
    assert {b for b, v in report["blocks"].items() if v["status"] == "ran"} == ran, report["blocks"]
    assert report["status"] == "ok" and report["results"] == reference["results"], report
    assert output_digests(scene.cache, report) == reference["digests"]
    assert not [o for o, p in outputs.items() if durable.is_unsynced(p.stat())]
    assert not (scene.cache / ".runs").is_dir(), "the dead run's journal stayed"
    assert [r for r in verify_cache(scene.cache) if r["status"] != "ok"] == []
    return report


def test_kill_9_before_sync_then_the_next_run_syncs_what_the_page_cache_holds(scene, references):
    name = scene.experiment("durable")
    reference = references.get(scene, name)
    outputs = _killed_before_sync(scene, name, reference)
    report = _recovered(scene, name, reference, outputs, ran=set())  # (the sweep: same boot, synced as they are)
    assert not report.get("incidents"), report


def test_power_loss_before_sync_the_lost_output_is_verified_and_recomputed(scene, references):
    name = scene.experiment("durable")
    reference = references.get(scene, name)
    outputs = _killed_before_sync(scene, name, reference)
    _zero_data(outputs["second.out"])
    _journal_from_another_boot(scene)
    _recovered(scene, name, reference, outputs, ran={"second"})
    assert list((scene.cache / ".quarantine").glob("*.h5")), "the zeroed output was not quarantined"
    assert scene.leftovers() == []


def test_power_loss_before_sync_without_the_journal_the_mark_still_forces_a_digest_check(scene, references):
    """The dead run's journal is gone (it ran on another host sharing the cache, or the journal was
    lost): the mark on the file alone makes the next run verify it rather than trust its identity."""
    name = scene.experiment("durable")
    reference = references.get(scene, name)
    outputs = _killed_before_sync(scene, name, reference)
    _zero_data(outputs["second.out"])
    for journal in (scene.cache / ".runs").iterdir():
        journal.unlink()
    report = _recovered(scene, name, reference, outputs, ran={"second"})
    assert [i["block"] for i in report.get("incidents", [])] == ["second"], report.get("incidents")
    assert scene.leftovers() == []
