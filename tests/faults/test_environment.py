"""Fault injection, the environment (issue 17, items 5, 6 and 8): a full disk, a read-only cache,
memory limits and the kernel's OOM killer, a corrupt provenance record.

* item 5: environmental failures are ``system`` errors saying what and where ("disk full
  writing …", "cache … is read-only"), never a user error nor a traceback; a fully cached run
  on a full or read-only cache still prints its results (the record skipped, with a warning);
  nothing partial is left.  The cache is put on a small tmpfs (root only: skipped elsewhere);
* item 6: ``--memory`` failures and OOM kills are ``memory`` errors naming the limit;
* item 8: a corrupt provenance record is said to be corrupt, not missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from harness import SEED, fill, hostile, references_fixture, remount, scene_fixture, tmpfs  # noqa: F401 - fixtures

RESULT_LINES = "Results of analyzer `analysis':\n  data units [0, 5]:\n    sum: 81\n"  # (`count' not displayed)


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and "internal error" not in text, text


# ----------------------------------------------------------------------------- item 5: disk full

def test_a_full_disk_is_a_system_error_and_a_cached_run_still_gives_results(scene, references, tmp_path):
    name = scene.experiment("base")
    reference = references.get(scene, name)
    with tmpfs(tmp_path / "disk", "4m") as disk:
        scene.cache = disk / "cache"
        assert scene.run("databases", "index", "counter/1/default").returncode == 0
        filler = fill(disk)
        done = scene.run("experiments", "run", name, "--json")
        assert done.returncode == 1
        _no_traceback(done.stderr)
        rep = json.loads(done.stdout)
        errors = {b: v["error"] for b, v in rep["blocks"].items() if "error" in v}
        assert errors and all(e["kind"] == "system" and e["message"].startswith("disk full writing `")
                              and e["traceback"] is None for e in errors.values()), errors
        assert rep["provenance"] is None
        assert any(w.startswith("the provenance record of this run was not written: disk full writing `")
                   for w in rep["warnings"]), rep
        assert "warning: " in done.stderr
        assert scene.leftovers() == [], scene.leftovers()  # no *.tmp-PID file
        filler.unlink()
        assert scene.run("experiments", "run", name, "-q").returncode == 0
        filler = fill(disk)
        cached = scene.run("experiments", "run", name)  # fully cached: results, a warning, exit 0
        assert cached.returncode == 0 and cached.stdout.startswith(RESULT_LINES), cached.stderr
        assert "the provenance record of this run was not written: disk full" in cached.stderr
        _no_traceback(cached.stderr)
        filler.unlink()
        scene.check_recovered(name, reference)


# ----------------------------------------------------------------------------- item 5: read-only cache

def test_a_read_only_cache_gives_cached_results_and_refuses_to_run_clearly(scene, references, tmp_path):
    name = scene.experiment("base")
    reference = references.get(scene, name)
    with tmpfs(tmp_path / "ro", "16m") as disk:
        scene.cache = disk / "cache"
        assert scene.run("experiments", "run", name, "-q").returncode == 0
        remount(disk, "ro")
        try:
            cached = scene.run("experiments", "run", name)
            assert cached.returncode == 0 and cached.stdout.startswith(RESULT_LINES), cached.stderr
            assert f"cache `{scene.cache}' is read-only" in cached.stderr, cached.stderr
            _no_traceback(cached.stderr)
            other = scene.experiment("offset", first={"offset": 11})
            refused = scene.run("experiments", "run", other, "--json")
            assert refused.returncode == 1
            _no_traceback(refused.stderr)
            rep = json.loads(refused.stdout)
            error = rep["blocks"]["first"]["error"]
            assert error["kind"] == "system" and f"cache `{scene.cache}' is read-only" in error["message"], error
        finally:
            remount(disk, "rw")
        scene.check_recovered(name, reference)


def test_a_read_only_cache_is_the_same_dataset_error_on_dask_as_locally(scene, tmp_path):
    """A view to index into a cache that cannot be written: with the Dask executor too, the
    blocks reading it fail with the dataset's system error (not an internal error)."""
    pytest.importorskip("distributed")
    name = scene.experiment("base")
    with tmpfs(tmp_path / "ro", "16m") as disk:
        scene.cache = disk / "cache"
        scene.cache.mkdir()
        remount(disk, "ro")
        try:
            reports = []
            for executor in (["--executor", "local"], ["--executor", "dask", "--workers", "1"]):
                done = scene.run("experiments", "run", name, "--json", *executor)
                _no_traceback(done.stderr)
                assert done.returncode == 1, done.stderr
                reports.append({b: (v["status"], v.get("error")) for b, v in json.loads(done.stdout)["blocks"].items()})
        finally:
            remount(disk, "rw")
    assert reports[0] == reports[1], reports
    kind, message = reports[1]["first"][1]["kind"], reports[1]["first"][1]["message"]
    assert kind == "system" and message.startswith(f"cannot index set `items': cache `{scene.cache}' is read-only")


# ----------------------------------------------------------------------------- item 6: memory

def test_a_memory_limit_below_what_a_block_needs_says_so(scene):
    name = scene.experiment("base")
    done = scene.run("experiments", "run", name, "--memory", "100", "--json")
    assert done.returncode == 1
    _no_traceback(done.stderr)
    errors = [v["error"] for v in json.loads(done.stdout)["blocks"].values() if "error" in v]
    assert errors and all(e["kind"] == "memory" and "memory limit of 100 MB" in e["message"] for e in errors), errors
    assert "Resource temporarily unavailable" not in done.stderr and "SIGABRT" not in done.stderr


def test_a_block_over_its_memory_limit_is_a_memory_error_naming_it(scene):
    name = scene.experiment("greedy", second=hostile(mode="allocate", amount=2000))
    done = scene.run("experiments", "run", name, "--memory", "600", "--json")
    assert done.returncode == 1
    error = json.loads(done.stdout)["blocks"]["second"]["error"]
    assert error["kind"] == "memory" and error["message"].startswith("the block process ran out of memory"), error
    assert error["message"].endswith("(over its memory limit of 600 MB)"), error


def _memory_cgroup(tmp_path: Path) -> Path:
    """A fresh memory cgroup under this process's (v1 or v2), limited to 400 MB; skip if impossible."""
    if os.geteuid() != 0:
        pytest.skip("creating a memory cgroup needs root")
    with open("/proc/self/cgroup") as f:
        groups = [line.rstrip("\n").split(":", 2) for line in f]
    for _id, controllers, path in groups:
        if "memory" in controllers.split(","):
            base, limit = Path("/sys/fs/cgroup/memory" + path), "memory.limit_in_bytes"
        elif controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").is_file():
            base, limit = Path("/sys/fs/cgroup" + path), "memory.max"
        else:
            continue
        group = base / f"bbt-{os.getpid()}-{tmp_path.name[-12:]}"
        try:
            group.mkdir()
            (group / limit).write_text(str(400 * 2**20))
            swap = group / ("memory.memsw.limit_in_bytes" if limit == "memory.limit_in_bytes" else "memory.swap.max")
            if swap.exists():
                try:
                    swap.write_text(str(400 * 2**20) if swap.name.startswith("memory.memsw") else "0")
                except OSError:
                    pass
            return group
        except OSError as exc:
            if group.is_dir():
                group.rmdir()
            pytest.skip(f"cannot create a memory cgroup here: {exc}")
    pytest.skip("no memory cgroup controller here")


def test_the_kernels_oom_killer_is_reported_as_memory_naming_the_limit(scene, tmp_path):
    group = _memory_cgroup(tmp_path)
    try:
        name = scene.experiment("greedy", second=hostile(mode="allocate", amount=2000))
        cli = scene.start("experiments", "run", name, "--json", cgroup=group)  # (its processes inherit it)
        out, err = cli.communicate(timeout=120)
        assert cli.returncode == 1, err
        error = json.loads(out)["blocks"]["second"]["error"]
        assert error["kind"] == "memory", error
        assert error["message"].startswith("the block process was killed by the kernel's out-of-memory killer: "
                                           "the memory of its cgroup (400 MB) ran out"), error
    finally:
        subprocess.run(["sh", "-c", f"cat {group}/cgroup.procs | xargs -r kill -9"], capture_output=True)
        for _ in range(100):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.05)


# ----------------------------------------------------------------------------- item 8: corrupt records

def test_a_corrupt_record_is_reported_as_corrupt_not_missing(scene):
    name = scene.experiment("base")
    done = scene.run("experiments", "run", name, "--json")
    record = Path(json.loads(done.stdout)["provenance"])
    record.write_text(record.read_text()[:1000])  # cut short
    shown = scene.run("experiments", "provenance", name)
    assert shown.returncode == 1 and "is corrupt" in shown.stderr and "run it first" not in shown.stderr, \
        shown.stderr
    assert "is not valid JSON" in shown.stderr
    _no_traceback(shown.stderr)
    history = scene.run("experiments", "history", name)
    assert history.returncode == 0 and "is not valid JSON" in history.stderr, history.stderr
    status = scene.run("experiments", "status", name, "--json")
    assert "is corrupt" in json.loads(status.stdout)["note"], status.stdout
    again = scene.run("experiments", "run", name, "-q")  # a new run writes a good record
    assert again.returncode == 0, again.stderr
    assert scene.run("experiments", "provenance", name).returncode == 0
    assert SEED is not None
