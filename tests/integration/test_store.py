"""The cache store on real files and processes: layout, locks, temporaries, commits, results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from backbeat.cache import results
from backbeat.cache.backends import BACKENDS, open_store
from backbeat.cache.store import CacheStore
from backbeat.core import hashing, statmemo
from backbeat.core.errors import BackbeatError, IntegrityError, UsageError
from backbeat.data.cachewriter import CacheWriter

KEY = "0123456789abcdef" * 4
OTHER = "fedcba9876543210" * 4
FMT = {"count": "int64"}


def commit(store: CacheStore, key: str, n: int = 3) -> Path:
    path = store.output_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with CacheWriter(path, "analysis:x", FMT, key=key, start=0, end=n - 1) as w:
        for i in range(n):
            w.write({"count": i}, i)
    return path


def test_layout_is_beats(tmp_path):
    store = CacheStore(tmp_path)
    assert store.output_path(KEY) == tmp_path / hashing.to_path(KEY, ".h5")
    assert store.index_path(KEY) == tmp_path / hashing.to_path(KEY, ".db")
    assert store.slot_path(KEY, 2) == Path(f"{store.output_path(KEY)}.slot2")
    assert store.records_folder == tmp_path / "provenance"
    assert store.is_entry(store.output_path(KEY)) and not store.is_entry(tmp_path / "notes.txt")
    commit(store, KEY)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".locks").mkdir()
    (tmp_path / ".locks" / KEY).write_text("")
    entries, other = store.scan()
    assert entries == [store.output_path(KEY)] and other == [tmp_path / "notes.txt"]
    assert store.resolve(KEY) == store.output_path(KEY)
    with pytest.raises(BackbeatError, match="neither a file nor the key"):
        store.resolve(OTHER)


def test_open_store_by_location(tmp_path):
    assert BACKENDS == {"file": "backbeat.cache.store:CacheStore"}
    store = open_store(tmp_path)
    assert isinstance(store, CacheStore) and store.root == tmp_path
    assert open_store(f"file://{tmp_path}") == store and open_store(store) is store
    assert open_store(store.location) == store
    with pytest.raises(UsageError, match="unknown cache backend `s3'"):
        open_store("s3://bucket/cache")


_HOLD = """
import sys, time
from backbeat.cache.store import CacheStore
lock = CacheStore(sys.argv[1]).lock(sys.argv[2])
print("locked", flush=True)
sys.stdin.readline()
lock.release()
"""


def test_lock_is_exclusive_across_processes(tmp_path):
    store = CacheStore(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path), KEY], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert store.lock(KEY, wait=False) is None  # held elsewhere: not taken
        other = store.lock(OTHER, wait=False)  # another key is free
        assert other is not None
        other.release()
        holder.stdin.write("\n")
        holder.stdin.flush()
        t0 = time.monotonic()
        with store.lock(KEY) as lock:  # waits for the holder to release it
            assert lock is not None and time.monotonic() - t0 < 30
    finally:
        holder.kill()
        holder.wait()


def test_temporaries_of_live_writers_are_kept(tmp_path):
    store = CacheStore(tmp_path)
    final = store.output_path(KEY)
    final.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    live = Path(f"{final}.tmp-{os.getpid()}-aaaa")
    gone = Path(f"{final}.tmp-{dead.stdout.strip()}-bbbb")
    unrelated = final.parent / f"{final.name}x.tmp-1-cccc"
    for p in (live, gone, unrelated):
        p.write_bytes(b"x")
    assert store.is_temporary(live) and store.live_temporary(live) and not store.live_temporary(gone)
    assert store.drop_temporaries(final) == [gone] and live.exists() and unrelated.exists()
    assert store.drop_temporaries(final, locked=True) == [live]  # under the lock no writer is alive
    assert unrelated.exists()


def test_commits_and_partial_outputs(tmp_path):
    store = CacheStore(tmp_path)
    assert not store.committed([KEY]) and not store.committed([""])
    commit(store, KEY)
    assert store.committed([KEY]) and not store.committed([KEY, OTHER])
    slot = store.slot_path(OTHER, 0)
    slot.parent.mkdir(parents=True)
    slot.write_bytes(b"part")
    Path(f"{slot}.tmp-999999999-dddd").write_bytes(b"x")
    store.drop_partial([KEY, OTHER], slots=1)
    assert store.committed([KEY]) and not slot.exists() and not list(slot.parent.glob("*.tmp-*"))
    store.drop_partial([KEY], committed=True)
    assert not store.committed([KEY])


def test_results_are_verified_once_then_summarised(tmp_path, monkeypatch):
    monkeypatch.setattr(statmemo, "RACY_NS", -1)  # (files written just now are trusted in this test)
    store = CacheStore(tmp_path)
    path = commit(store, KEY)
    assert store.verify_output(KEY) == store.stored_digest(KEY)
    assert results.bound_records(store, KEY) is None
    records = store.read_result(KEY)
    assert records == [{"start": i, "end": i, "data": {"count": i}} for i in range(3)]
    assert results.bound_records(store, KEY) == records  # kept beside the entry, bound to it
    summary = results.summary_path(store, KEY)
    assert json.loads(summary.read_text())["digest"] == store.stored_digest(KEY)
    # a summary edited by hand is not used (and is reported, then rebuilt from the result file)
    summary.write_text(summary.read_text().replace('"count": 2', '"count": 7'))
    assert results.bound_records(store, KEY) is None and results.summary_problem(store, KEY)
    assert "did not match its verified result file" in results.check_result(store, KEY)
    assert results.bound_records(store, KEY) == records and results.summary_problem(store, KEY) is None
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert results.bound_records(store, KEY) is None  # the entry changed since: not trusted


def test_entries_hold_the_key_they_are_found_under(tmp_path):
    store = CacheStore(tmp_path)
    commit(store, KEY)
    other = store.output_path(OTHER)
    other.parent.mkdir(parents=True)
    shutil.copy(store.output_path(KEY), other)  # a valid file under the wrong key
    assert store.check_identity(KEY) == store.verify_output(KEY)
    for check in (store.check_identity, store.verify_output):
        with pytest.raises(IntegrityError, match="holds the output of key 0123456789ab"):
            check(OTHER)
    assert store.verify_file(other)["status"] == "corrupt"
    assert "quarantine" in store.reject(OTHER, "wrong key") and not other.exists()
    (moved,) = (tmp_path / ".quarantine").glob("*.h5")
    assert Path(f"{moved}.why").read_text() == "wrong key\n"
    assert store.scan()[0] == [store.output_path(KEY)]  # the quarantine is bookkeeping, never an entry


def test_delete_touches_entries_only(tmp_path):
    store = CacheStore(tmp_path)
    path = commit(store, KEY)
    size = path.stat().st_size
    with pytest.raises(BackbeatError, match="not an entry"):
        store.delete([tmp_path / "elsewhere.h5"])
    assert store.delete([path]) == size
    assert not path.exists() and not (tmp_path / KEY[:2]).exists()  # empty hex folders pruned


def test_scratch_store(tmp_path):
    store = CacheStore.scratch()
    try:
        assert store.root.is_dir() and not any(store.root.iterdir())
    finally:
        store.destroy()
    assert not store.root.exists()


def test_locks_nobody_holds_are_pruned_and_a_waiter_takes_the_new_file(tmp_path):
    store = CacheStore(tmp_path / "cache")
    keys = [f"{k:064x}" for k in range(4)]
    for key in keys[:3]:
        store.lock(key).release()
    held = store.lock(keys[3])
    folder = tmp_path / "cache" / ".locks"
    assert store.prune_locks(dry_run=True) == 3 and len(list(folder.iterdir())) == 4
    assert store.prune_locks() == 3 and [p.name for p in folder.iterdir()] == [keys[3]]  # a held one stays
    # a run waiting for a lock that is pruned meanwhile takes the file now at its path
    got = []
    waiter = threading.Thread(target=lambda: got.append(store.lock(keys[3])))
    waiter.start()
    time.sleep(0.2)
    (folder / keys[3]).unlink()  # what prune_locks does, holding the lock
    held.release()
    waiter.join(10)
    assert got and (folder / keys[3]).is_file()
    assert store.lock(keys[3], wait=False) is None  # the waiter holds the file at the path
    got[0].release()
    assert store.lock(keys[3], wait=False) is not None


def test_a_lock_folder_removed_after_a_lock_was_taken_is_made_again(tmp_path):
    """The lock folder is made once per process (not for every lock a run takes): one removed since
    (a cache emptied by hand) is made again, not an error."""
    store = CacheStore(tmp_path / "cache")
    store.lock(f"{1:064x}").release()
    shutil.rmtree(tmp_path / "cache" / ".locks")
    lock = store.lock(f"{2:064x}", wait=False)
    assert lock is not None and (tmp_path / "cache" / ".locks" / f"{2:064x}").is_file()
    lock.release()


def test_the_sweep_removes_what_a_dead_run_was_writing_in_the_content_addressed_areas(tmp_path: Path) -> None:
    from backbeat.cache import journal

    store = open_store(tmp_path / "cache")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)  # (a process that has ended)
    (store.root / journal.FOLDER).mkdir(parents=True)
    (store.root / journal.FOLDER / f"{journal._host()}-{pid}-0badcafe.json").write_text('{"paths": [], "jobs": []}')
    left = [store.manifests.folder / "ab" / f"{'c' * 62}.json.tmp-{pid}-12345678",
            store.code.folder / "cd" / f"{'e' * 62}.tmp-{pid}-9abcdef0"]
    alive = store.code.folder / "cd" / f"{'f' * 62}.tmp-{os.getpid()}-11111111"  # a live writer's
    for p in [*left, alive]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    assert journal.sweep(store)
    assert not any(p.exists() for p in left) and alive.exists()


def test_a_dead_runs_journal_naming_no_cache_key_is_swept_without_hanging(tmp_path: Path) -> None:
    """A key read back from a dead run's journal is not trusted: one that is no cache key ("x/y", whose lock
    path cannot be opened in an existing folder) is skipped, and taking its lock directly is refused — the
    lock folder made again on a missing path looped forever on it, hanging every later run's sweep."""
    from backbeat.cache import journal

    store = open_store(tmp_path / "cache")
    store.lock(KEY).release()  # (the lock folder exists)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    (store.root / journal.FOLDER).mkdir(parents=True)
    (store.root / journal.FOLDER / f"{journal._host()}-{int(dead.stdout)}-0badcafe.json").write_text(
        '{"paths": [], "jobs": [{"key": "x/y", "outputs": []}, {"key": "../../escape", "outputs": []}]}')
    done: list[object] = []
    sweeper = threading.Thread(target=lambda: done.append(journal.sweep(store)), daemon=True)
    sweeper.start()
    sweeper.join(20)
    assert done and done[0], "the sweep hung on a journal's bad key"
    assert not (tmp_path / "escape").exists()
    for bad in ("x/y", "../../escape", KEY.upper()):
        with pytest.raises(ValueError, match="not a cache key"):
            store.lock(bad, wait=False)
