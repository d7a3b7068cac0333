"""Verified before trusted (issue 13): a run killed between committing its outputs and making them
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
import pytest
from harness import (  # noqa: F401 - fixtures
    SEED,
    Scene,
    ended,
    output_digests,
    references_fixture,
    remount,
    scene_fixture,
    served,
    templates_fixture,
    tmpfs,
    wait_until,
)

from backbeat.cache.backends import open_store
from backbeat.cache.tools import verify_cache
from backbeat.core import durable
from backbeat.core.templatekey import LOG_MAX
from conftest import page_cache, writes_back


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


# -- verified before trusted: a command served by a warm template answers first, syncs after
def test_a_served_run_answers_before_durability_and_a_loss_after_its_answer_reruns_the_blocks(scene, references,
                                                                                                templates):
    """A command served by a warm template writes its record and answers without waiting for its
    outputs to be durable; its child makes them durable after the answer.  Its template killed
    meanwhile, then the unsynced data lost (one output zeroed, one truncated, both still marked):
    ``cache verify`` and ``audit`` say so, and the next run computes those blocks again — never
    ``cached`` — with a message, no traceback, and leaves the cache as a clean run does."""
    name = scene.experiment("durable")
    reference = references.get(scene, name)
    outputs = _outputs(scene, reference)
    _env, template, start = served(scene, templates, BACKBEAT_SYNC_DELAY_S="60")
    proc = start(scene.cache, "experiments", "run", name, "--json")
    out, err = proc.communicate(timeout=50)  # (its syncer is held back 60 s: the answer does not wait for it)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["status"] == "ok" and report["results"] == reference["results"], report
    assert json.loads(Path(report["provenance"]).read_text())["status"] == "ok"
    assert all(durable.is_unsynced(p.stat()) for p in outputs.values()), "synced before the answer"
    assert not (scene.cache / ".runs").is_dir()  # (the run is over: its journal went with its answer)
    said = {Path(r["path"]).name: r["message"] for r in verify_cache(scene.cache) if r["status"] == "ok"}
    assert {said[p.name] for p in outputs.values()} == {"intact, not yet durable (marked unsynced)"}, said
    (command,) = template.children()  # (still making them durable, after its answer)
    template.kill()
    assert wait_until(lambda: ended(command))
    _zero_data(outputs["second.out"])
    with open(outputs["first.out"], "r+b") as f:  # (a file system that kept its size but not all of it)
        f.truncate(outputs["first.out"].stat().st_size // 2)
    assert durable.is_unsynced(outputs["first.out"].stat())
    bad = {Path(r["path"]).name for r in verify_cache(scene.cache) if r["status"] != "ok"}
    assert bad == {outputs["first.out"].name, outputs["second.out"].name}, bad
    audit = scene.run("experiments", "audit", name)
    assert audit.returncode == 1 and "Traceback" not in audit.stderr + audit.stdout, audit
    said = [line for line in audit.stdout.splitlines() if line.lstrip().startswith("[cache-file]")]
    assert len(said) == 2 and all("is corrupted" in line for line in said), audit.stdout
    report = _recovered(scene, name, reference, outputs, ran={"first", "second"})
    assert {i["block"] for i in report.get("incidents", [])} == {"first", "second"}, report.get("incidents")
    assert scene.leftovers() == []


def test_a_served_run_queues_nothing_on_the_disk_before_its_answer(scene, references, templates):
    """A served command's blocks start no writeback of their outputs, nor does the file system on
    their behalf (a truncated file written back as it is closed: ext4's ``auto_da_alloc``), and its
    syncer holds them until after the answer: at the answer every output is marked and all of its
    pages still dirty — no write of theirs queued in front of the run's own small synced writes
    before its answer (``docs/performance.md``, wave 15 perf-io)."""
    if not writes_back(scene.cache.parent):
        pytest.skip("no cachestat, or dirty pages stay dirty after sync (tmpfs): nothing to see")
    name = scene.experiment("queued")
    reference = references.get(scene, name)
    outputs = _outputs(scene, reference)
    _env, template, start = served(scene, templates, BACKBEAT_SYNC_DELAY_S="60")
    os.sync()
    proc = start(scene.cache, "experiments", "run", name, "--json")
    out, err = proc.communicate(timeout=50)
    assert proc.returncode == 0, err
    assert json.loads(out)["results"] == reference["results"]
    pages = {o: page_cache(p) for o, p in outputs.items()}
    assert all(durable.is_unsynced(p.stat()) for p in outputs.values()), "synced before the answer"
    assert all(cached and dirty == cached for cached, dirty in pages.values()), f"written back before: {pages}"
    (command,) = template.children()  # (its syncer, held back, makes them durable after its answer)
    template.kill()
    assert wait_until(lambda: ended(command))


def test_the_next_served_command_finds_what_the_previous_one_synced_after_its_answer(scene, references,
                                                                                      templates):
    """The command served right after one still syncing (its outputs marked) waits for it rather
    than verify them, and finds them durable: every block cached, nothing quarantined."""
    name = scene.experiment("durable")
    reference = references.get(scene, name)
    outputs = _outputs(scene, reference)
    _env, template, start = served(scene, templates, BACKBEAT_SYNC_DELAY_S="1")
    first = start(scene.cache, "experiments", "run", name)
    assert first.communicate(timeout=50) and first.returncode == 0
    assert any(durable.is_unsynced(p.stat()) for p in outputs.values()) and template.children()
    again = start(scene.cache, "experiments", "run", name, "--json")
    out, err = again.communicate(timeout=50)
    assert again.returncode == 0, err
    report = json.loads(out)
    assert {v["status"] for v in report["blocks"].values()} == {"cached"} and not report.get("incidents"), report
    assert not [o for o, p in outputs.items() if durable.is_unsynced(p.stat())]
    assert not (scene.cache / ".quarantine").is_dir() or not list((scene.cache / ".quarantine").iterdir())
    assert wait_until(lambda: not template.children(), timeout=10)


def test_a_served_command_running_two_experiments_syncs_the_first_before_the_second_starts(scene, templates):
    """``experiments run a b`` served: the first run's syncing, left for after the answer, is
    finished before the second run starts, so its syncer thread is gone when the second run's
    fork server forks (else: the slower fallback and a warning) and the second finds the first's
    outputs durable."""
    one, two = scene.experiment("one"), scene.experiment("two", first={"offset": 11})
    _env, _template, start = served(scene, templates, BACKBEAT_SYNC_DELAY_S="0.5")
    proc = start(scene.cache, "experiments", "run", one, two, "--json")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "ForkServer started after threads" not in err, err


def test_a_sync_that_fails_after_the_answer_is_said_in_the_templates_log(scene, templates):
    """A served command whose outputs cannot be made durable after its answer (its cache made
    read-only meanwhile: their marks cannot be cleared) says so in its template's log, naming each
    file; they stay marked, and ``cache verify`` says they are not yet durable.  A log grown past
    its bound is started afresh (a template serving command after command is never restarted)."""
    name = scene.experiment("unsyncable")
    with tmpfs(scene.root / "ram", "32m") as cache:
        _env, template, start = served(scene, templates, BACKBEAT_SYNC_DELAY_S="6")
        (grown,) = (templates / "t").glob("*.log")
        with grown.open("ab") as f:
            f.write(b"old line\n" * (LOG_MAX // 9 + 1))
        proc = start(cache, "experiments", "run", name, "--json")
        out, err = proc.communicate(timeout=50)
        assert proc.returncode == 0, err
        report = json.loads(out)
        assert report["status"] == "ok" and not [w for w in report.get("warnings", []) if "durable" in w], report
        remount(cache, "ro")  # (its syncer is held back 6 s: the answer did not wait for it)
        try:
            assert wait_until(lambda: not template.children(), timeout=30), "the command never ended"
        finally:
            remount(cache, "rw")
        store = open_store(cache)
        outputs = [store.output_path(k) for b in report["blocks"].values() for k in b["outputs"].values()]
        (log,) = (templates / "t").glob("*.log")
        assert "old line" not in log.read_text() and log.stat().st_size < LOG_MAX
        said = [line for line in log.read_text().splitlines() if "was not made durable" in line]
        assert all(any(f"`{p}'" in line and "after its answer" in line and "read-only" in line for line in said)
                   for p in outputs), (outputs, log.read_text())
        assert all(durable.is_unsynced(p.stat()) for p in outputs)
        verified = {r["path"]: r["message"] for r in verify_cache(cache) if r["status"] == "ok"}
        assert {verified[str(p)] for p in outputs} == {"intact, not yet durable (marked unsynced)"}, verified
