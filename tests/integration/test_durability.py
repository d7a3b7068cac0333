"""Verified before trusted (issue 13): cache files are committed without waiting for the disk, and
nothing trusts one before it is durable or verified by its digest — real HDF5 files, real runs, real CLI processes.

The kill -9 and power-loss cases are in ``tests/faults/test_unsynced_kills.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from backbeat.cache import results
from backbeat.cache.backends import open_store
from backbeat.cache.store import CacheStore
from backbeat.core import durable, statmemo
from backbeat.core.errors import IntegrityError
from backbeat.data.cachewriter import CacheWriter
from backbeat.execution import executors as executor
from backbeat.provenance import records
from conftest import RUN_PREFIX, cli_command, page_cache, wait_until, writes_back

KEY = "0123456789abcdef" * 4
FMT = {"count": "int64"}
NAME = "run/run/pipeline/1/base"


@pytest.fixture(autouse=True)
def _trusted_at_once(monkeypatch):
    monkeypatch.setattr(statmemo, "RACY_NS", -1)  # (files written just now are remembered in these tests)


def _commit(store: CacheStore, key: str = KEY, n: int = 50) -> Path:
    path = store.output_path(key)
    with CacheWriter(path, "analysis:x", FMT, key=key, start=0, end=n - 1) as w:
        for i in range(n):
            w.write({"count": i}, i)
    return path


def _zero_data(path: Path) -> None:
    """A power loss after an unsynced commit: the file's metadata kept, its data lost (zeros)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    deadline = time.monotonic() + 30
    while True:  # (a reader of the run may hold the file's shared lock a moment: the loaded CI saw one)
        try:
            f = h5py.File(path, "r+")
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    with f:
        f.visititems(lambda name, obj: obj.__setitem__(Ellipsis, np.zeros(obj.shape, obj.dtype))
                     if isinstance(obj, h5py.Dataset) and name.startswith("columns") else None)
    os.chmod(path, mode)


def _rows(store: CacheStore) -> int:
    store.flush()
    return len(statmemo.StatMemo(store.root / ".memo" / "stat.sqlite3")._conn().execute(  # noqa: SLF001
        "SELECT 1 FROM memo WHERE tag = 'h5-identity'").fetchall())


def test_a_commit_is_marked_unsynced_and_the_memo_never_remembers_it_until_durable(tmp_path):
    store = CacheStore(tmp_path)
    path = _commit(store)
    assert durable.is_unsynced(path.stat())  # committed (complete, at its name) but not yet durable
    store.memo.remember("h5-identity", path, path.stat(), f"{KEY} x")  # refused: marked
    assert store.memo.lookup("h5-identity", path) is None and _rows(store) == 0
    store.entrust(KEY, "digest-as-reported")
    assert store.durability.wait() == {}
    assert not durable.is_unsynced(path.stat())  # fsync'ed (file, folder), then the mark cleared
    assert store.memo.lookup("h5-identity", path) == f"{KEY} digest-as-reported" and _rows(store) == 1


def test_a_marked_entry_is_verified_by_its_digest_not_trusted_by_its_identity(tmp_path):
    store = CacheStore(tmp_path)
    path = _commit(store)
    digest = store.stored_digest(KEY)  # (read while marked: verified, then made durable)
    assert not durable.is_unsynced(path.stat()) and _rows(store) == 1
    # a power loss before the sync: the attributes (key, digest) survived, the data did not
    other = _commit(store, "fedcba9876543210" * 4)
    _zero_data(other)
    assert durable.is_unsynced(other.stat())
    with pytest.raises(IntegrityError, match="digest"):
        store.check_identity("fedcba9876543210" * 4)
    assert durable.is_unsynced(other.stat()) and _rows(store) == 1  # never made durable nor remembered
    # the same file without the mark (as a writer that fsync'ed before its rename leaves it) is
    # identified by its attributes alone: the mark is what makes the difference
    os.chmod(other, stat.S_IMODE(other.stat().st_mode) & ~durable.UNSYNCED)
    store.check_identity("fedcba9876543210" * 4)
    assert store.check_identity(KEY) == digest


def test_a_summary_is_written_only_for_a_durable_result(tmp_path):
    store = CacheStore(tmp_path)
    path = _commit(store)
    assert store.read_result(KEY)[:2] == [{"start": 0, "end": 0, "data": {"count": 0}},
                                         {"start": 1, "end": 1, "data": {"count": 1}}]
    assert not durable.is_unsynced(path.stat()) and results.summary_path(store, KEY).is_file()
    assert results.bound_records(store, KEY) is not None


def test_the_record_and_summaries_are_written_after_the_outputs_are_durable(tmp_path, monkeypatch):
    shutil.copytree(RUN_PREFIX, tmp_path / "prefix", ignore=shutil.ignore_patterns("cache", "__pycache__"))
    monkeypatch.setenv("BACKBEAT_SYNC_DELAY_S", "0.3")  # (the syncer lags behind the blocks)
    seen: list[list[str]] = []
    store_record = records.store

    def checked(cache, rec):
        store = open_store(cache)
        keys = [o["key"] for b in rec["blocks"].values() for o in (b.get("outputs") or {}).values()]
        seen.append([k for k in keys if durable.is_unsynced(store.output_path(k).stat())])
        return store_record(cache, rec)

    monkeypatch.setattr(records, "store", checked)
    rep = executor.run_experiment(tmp_path / "prefix", tmp_path / "cache", NAME, executor.Options(jobs=2))
    assert rep["status"] == "ok" and rep["provenance"]
    assert seen == [[]], f"the record was written while outputs were unsynced: {seen}"
    store = open_store(tmp_path / "cache")
    for b in rep["blocks"].values():
        for key in b["outputs"].values():
            assert not durable.is_unsynced(store.output_path(key).stat())
            if results.summary_path(store, key).is_file():
                assert results.bound_records(store, key) is not None


def test_concurrent_runs_of_one_experiment_while_the_first_has_not_synced(tmp_path):
    """Run B starts while run A's outputs are committed but unsynced (A's syncer is held back): B
    waits for A's locks, finds the outputs committed, verifies them by digest rather than by the
    memo, and both end with the same results; every output ends durable."""
    shutil.copytree(RUN_PREFIX, tmp_path / "prefix", ignore=shutil.ignore_patterns("cache", "__pycache__"))
    cache = tmp_path / "cache"
    args = ("-p", tmp_path / "prefix", "-c", cache, "experiments", "run", NAME, "--json")
    a = subprocess.Popen(cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, BACKBEAT_SYNC_DELAY_S="1.5"))
    store = open_store(cache)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not list(cache.glob("??/??/??/*.h5")):  # A committed one
        time.sleep(0.02)
    b = subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=120)
    out_a, err_a = a.communicate(timeout=120)
    assert a.returncode == 0 and b.returncode == 0, (err_a, b.stderr)
    rep_a, rep_b = json.loads(out_a), json.loads(b.stdout)
    assert rep_a["results"] == rep_b["results"] and not rep_b.get("incidents")
    assert {n: v["outputs"] for n, v in rep_a["blocks"].items()} == {n: v["outputs"] for n, v in rep_b["blocks"].items()}
    entries = [p for p in store.scan()[0] if p.suffix == ".h5"]
    assert entries and not [p for p in entries if durable.is_unsynced(p.stat())]


def test_a_concurrent_run_verifies_an_unsynced_entry_by_its_digest_not_its_identity(tmp_path):
    """While run A waits for its outputs to be durable, one of them loses its data (zeros, its
    attributes kept: what a crash could leave of it).  Run B, finding it committed and marked,
    checks its content digest, quarantines it and computes it again — the memo and the file's
    identity alone would have served it."""
    shutil.copytree(RUN_PREFIX, tmp_path / "prefix", ignore=shutil.ignore_patterns("cache", "__pycache__"))
    cache = tmp_path / "cache"
    args = ("-p", tmp_path / "prefix", "-c", cache, "experiments", "run", NAME, "--json")
    a = subprocess.Popen(cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, BACKBEAT_SYNC_DELAY_S="5"))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list(cache.glob("??/??/??/*.h5"))) < 3:
            time.sleep(0.02)
        entries = sorted(cache.glob("??/??/??/*.h5"))
        assert len(entries) == 3 and all(durable.is_unsynced(p.stat()) for p in entries) and a.poll() is None
        store = open_store(cache)
        victim = min(entries, key=lambda p: p.stat().st_mtime_ns)  # (a block's output: committed first)
        with h5py.File(victim, "r", locking=False) as f:
            victim_key = f.attrs["key"]
        _zero_data(victim)
        b = subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=120)
        assert b.returncode == 0, b.stderr
        rep_b = json.loads(b.stdout)
        redone = [n for n, v in rep_b["blocks"].items() if v["status"] == "ran"]
        # (whichever committed first: `first' and `second' read the database; the analysis may commit
        # before a block that made a small file's template first)
        (name,) = [n for n, v in rep_b["blocks"].items() if victim_key in json.dumps(v.get("outputs"))]
        assert name in ("first", "second", "analysis"), rep_b
        assert redone == [name] and [i["block"] for i in rep_b.get("incidents", [])] == [name], rep_b
        assert list((cache / ".quarantine").glob("*.h5"))
    finally:
        out_a, err_a = a.communicate(timeout=120)
    assert a.returncode == 0, err_a
    assert json.loads(out_a)["results"] == rep_b["results"]
    assert not [p for p in store.scan()[0] if p.suffix == ".h5" and durable.is_unsynced(p.stat())]


def test_a_reader_waits_for_the_peers_that_make_files_durable(tmp_path):
    """``durable.await_peers``: the pipes of a warm template's commands still syncing after their
    answer (``processes/templateserver.py``) end with them; a reader finding a marked file waits
    for that (bounded, once per process) instead of verifying it."""
    r, w = os.pipe()
    peer = subprocess.Popen(["sleep", "0.3"], pass_fds=(w,))  # (holds the write end until it ends)
    os.close(w)
    durable.expect_peers([r])
    started = time.monotonic()
    assert durable.await_peers(timeout=30) and time.monotonic() - started > 0.2  # (waited for its end)
    peer.wait(timeout=30)
    assert not durable.await_peers()  # (once: nothing left to wait for)
    r, w = os.pipe()
    durable.expect_peers([r])
    started = time.monotonic()
    assert durable.await_peers(timeout=0.2)  # (a peer that never ends: the reader goes on, and verifies)
    assert time.monotonic() - started < 5
    os.close(w)
    with pytest.raises(OSError):
        os.fstat(r)  # (closed)


def test_a_mark_is_cleared_only_on_the_file_that_was_synced(tmp_path, monkeypatch):
    """A writer renames a new, marked file over an entry while a syncer is making the old one
    durable (between its fsync and clearing its mark): the new file keeps its mark (nothing
    synced it), and the syncer reports the file it did sync."""
    path = tmp_path / "entry.h5"
    path.write_bytes(b"old")
    assert durable.mark_unsynced(str(path))
    old = path.stat()
    real = durable.fsync_path

    def folder_synced_meanwhile_replaced(p):
        real(p)
        if os.path.isdir(p) and not (tmp_path / "done").exists():
            (tmp_path / "done").touch()
            new = tmp_path / "new.tmp"
            new.write_bytes(b"new, not synced")
            assert durable.mark_unsynced(str(new))
            os.rename(new, path)

    monkeypatch.setattr(durable, "fsync_path", folder_synced_meanwhile_replaced)
    synced: dict = {}
    assert durable.make_durable([path], synced) == {}
    assert path.read_bytes() == b"new, not synced" and durable.is_unsynced(path.stat())
    assert synced == {str(path): (old.st_dev, old.st_ino)} != {str(path): (path.stat().st_dev, path.stat().st_ino)}


# -- wave 15 (perf-io): nothing queued on the disk before a served command's answer
def test_a_large_output_without_early_writeback_is_left_dirty_for_its_syncer(tmp_path):
    """``CacheWriter(writeback=False)`` (a block of a served command) starts no writeback of its
    output, nor does its file system on its behalf (ext4's ``auto_da_alloc`` writes a truncated file
    back when it is closed: its temporary is created anew, never truncated); a default writer
    starts it as it writes (``WRITEBACK_BYTES``)."""
    if not writes_back(tmp_path):
        pytest.skip(f"{tmp_path}: no cachestat, or dirty pages stay dirty after sync (tmpfs): nothing to see")
    fmt = {"v": [1000, "float64"]}
    pages = {}
    for writeback in (False, True):
        path = tmp_path / f"out-{writeback}.h5"
        with CacheWriter(path, "analysis:v", fmt, key=KEY, start=0, end=2999, writeback=writeback) as w:
            for i in range(3000):  # (24 MB: three times WRITEBACK_BYTES)
                w.write({"v": np.full(1000, i, dtype=np.float64)}, i)
        assert durable.is_unsynced(path.stat())
        pages[writeback] = page_cache(path)
    cached, dirty = pages[False]
    assert cached > 5000 and dirty > 0.9 * cached, f"written back before its syncer asked: {pages}"
    cached, dirty = pages[True]
    assert dirty < 0.2 * cached, f"no early writeback: {pages}"


def test_a_command_that_answers_first_holds_its_large_outputs_syncing_until_it_waits(tmp_path, monkeypatch):
    """A command served by a warm template (``exiting.answers_later``) syncs none of its large
    outputs (``HOLD_BYTES`` or more) while its run goes on — their megabytes would be queued on the
    disk in front of the run's own small synced writes before its answer —: they stay marked until
    the run waits for them (after its answer).  Its small outputs are synced at once, as a command
    not served syncs them all (review mend: a cached re-run right after a served K=500 chain found
    its 500 small files all marked, and waited for them)."""
    from backbeat.cache import durability
    from backbeat.core import exiting

    store = CacheStore(tmp_path)
    large_key = "fedcba9876543210" * 4
    large = store.output_path(large_key)
    with CacheWriter(large, "analysis:v", {"v": [1000, "float64"]}, key=large_key, start=0, end=599) as w:
        for i in range(600):  # (4.8 MB)
            w.write({"v": np.full(1000, i, dtype=np.float64)}, i)
    assert large.stat().st_size >= durability.HOLD_BYTES
    small = _commit(store)
    monkeypatch.setattr(exiting, "_after", [])  # (as templateserver's answer_later())
    assert exiting.answers_later()
    store.entrust(large_key, "digest-as-reported")
    store.entrust(KEY, "digest-as-reported")
    assert wait_until(lambda: not durable.is_unsynced(small.stat())), "a small output is synced at once"
    time.sleep(0.3)
    assert durable.is_unsynced(large.stat()) and store.durability.pending
    assert store.durability.wait() == {}
    assert not durable.is_unsynced(large.stat()) and not store.durability.pending
    monkeypatch.setattr(exiting, "_after", None)
    other_key = "00112233445566778899aabbccddeeff" * 2
    other = _commit(store, other_key)
    store.entrust(other_key, "digest-as-reported")
    assert wait_until(lambda: not durable.is_unsynced(other.stat())), "a command not served syncs at once"
    assert store.durability.wait() == {}


def _served_outputs(rep: dict, cache: Path) -> list[Path]:
    store = open_store(cache)
    return [store.output_path(k) for b in rep["blocks"].values() for k in (b.get("outputs") or {}).values()]


def test_a_served_run_that_fails_still_makes_its_held_outputs_durable_after_its_answer(tmp_path, monkeypatch):
    """An exception escaping a served run's execution (not an interruption) does not leave the
    outputs it committed and held unsynced for good: their syncing is still left for after the
    answer (review mend: it was skipped, the files stayed marked)."""
    from backbeat.cache import durability
    from backbeat.core import exiting

    shutil.copytree(RUN_PREFIX, tmp_path / "prefix", ignore=shutil.ignore_patterns("cache", "__pycache__"))
    monkeypatch.setattr(durability, "HOLD_BYTES", 0)  # (every output held, as a large one is)
    monkeypatch.setattr(exiting, "_after", [])
    local = executor.executor("local")
    committed: list[Path] = []

    def execute_then_fail(run):
        type(local).execute(local, run)
        committed.extend(run.store.output_path(o.key) for j in run.plan.jobs for o in j.outputs.values())
        raise RuntimeError("a defect after the blocks ran")

    monkeypatch.setattr(local, "execute", execute_then_fail)
    with pytest.raises(RuntimeError, match="a defect"):
        local.run(tmp_path / "prefix", tmp_path / "cache", NAME, executor.Options(jobs=2))
    assert committed and all(durable.is_unsynced(p.stat()) for p in committed)
    assert exiting.pending(), "no syncing left for after the answer"
    exiting.run_after_answer()
    assert not [p for p in committed if durable.is_unsynced(p.stat())]


def test_a_served_commands_split_block_is_assembled_without_early_writeback(tmp_path, monkeypatch):
    """The assembly of a split block's slot files (in the command itself) starts no early writeback
    in a served command, as its blocks do not (review mend: it still did); elsewhere it does."""
    if not writes_back(tmp_path):
        pytest.skip(f"{tmp_path}: no cachestat, or dirty pages stay dirty after sync (tmpfs): nothing to see")
    from backbeat.core import exiting
    from backbeat.execution.splitting import assemble

    fmt = {"v": [1000, "float64"]}
    pages = {}
    for served in (True, False):
        monkeypatch.setattr(exiting, "_after", [] if served else None)
        parts = []
        for k, (start, end) in enumerate([(0, 1499), (1500, 2999)]):  # (24 MB in all: three times WRITEBACK_BYTES)
            part = tmp_path / f"part-{served}-{k}.h5"
            with CacheWriter(part, "analysis:v", fmt, key=KEY, start=start, end=end) as w:
                for i in range(start, end + 1):
                    w.write({"v": np.full(1000, i, dtype=np.float64)}, i)
            parts.append(str(part))
        os.sync()
        final = tmp_path / f"out-{served}.h5"
        assemble(parts, final, "analysis:v", fmt, KEY, 0, 2999)
        pages[served] = page_cache(final)
    cached, dirty = pages[True]
    assert cached > 5000 and dirty > 0.9 * cached, f"written back before its syncer asked: {pages}"
    cached, dirty = pages[False]
    assert dirty < 0.2 * cached, f"no early writeback: {pages}"
