"""Atomic writes whose fsync and rename wait (:class:`backbeat.core.durable.Later`): real files, a real
thread committing them, and the audit hook of :class:`~backbeat.runtime.dependencies.OpenRecorder`
watching what the committing thread opens (an indexing job commits its index files while its view's
``get`` is watched)."""

from __future__ import annotations

import os

import pytest

from backbeat.core import durable
from backbeat.runtime.dependencies import OpenRecorder


def test_files_get_their_names_only_when_committed_in_order_and_the_commit_opens_nothing(tmp_path):
    later = durable.Later()
    durable.write_atomic(tmp_path / "a.sha256", b"digest", later=later)
    durable.write_atomic(tmp_path / "a", [b"con", b"tent"], sync_folder=True, later=later)
    durable.write_atomic(tmp_path / "a.table", "table", later=later)
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" not in p.name) == []  # (nothing named yet)
    assert len(list(tmp_path.iterdir())) == 3
    recorder = OpenRecorder({"root": str(tmp_path)})
    renamed: list[str] = []
    real_replace = os.replace

    def replace(src, dst):  # (the order of the renames)
        renamed.append(os.path.basename(dst))
        real_replace(src, dst)

    os.replace = replace
    try:
        with recorder.watch("get"):  # (what the committing thread opens would be recorded as read by a view)
            later.commit_meanwhile()()  # (a thread commits; waited for)
    finally:
        os.replace = real_replace
    assert recorder.seen == {}
    assert renamed == ["a.sha256", "a", "a.table"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {
        "a.sha256": b"digest", "a": b"content", "a.table": b"table"}
    assert later.files == []


def test_a_commit_that_fails_names_the_file_and_leaves_no_temporary(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    later = durable.Later()
    durable.write_atomic(folder / "a", b"1", later=later)
    durable.write_atomic(folder / "b", b"2", later=later)
    os.unlink(next(p for p in folder.iterdir() if p.name.startswith("b.tmp-")))  # (b's temporary gone)
    with pytest.raises(OSError) as info:
        later.commit()
    assert "b.tmp-" in str(info.value.filename)
    assert [p.name for p in folder.iterdir()] == ["a"]  # (a committed before; nothing else left)


def test_a_commit_failing_in_its_thread_is_raised_by_the_wait(tmp_path):
    later = durable.Later()
    durable.write_atomic(tmp_path / "a", b"1", later=later)
    os.unlink(later.files[0][1])
    wait = later.commit_meanwhile()
    with pytest.raises(FileNotFoundError):
        wait()


def test_discarded_writes_leave_nothing(tmp_path):
    later = durable.Later()
    durable.write_atomic(tmp_path / "a", b"1", sync_folder=True, later=later)
    later.discard()
    assert list(tmp_path.iterdir()) == [] and later.files == []


def test_a_commit_whose_file_cannot_be_closed_closes_its_folder(tmp_path, monkeypatch):
    """Closing a renamed file fails (an I/O error reported by close): the folder's descriptor, kept
    to sync the rename, is closed all the same (no descriptor leaks) and the error raised."""
    later = durable.Later()
    durable.write_atomic(tmp_path / "a", b"1", sync_folder=True, later=later)
    fd, folder = later.files[0][0], later.files[0][4]
    real_close = os.close

    def close(each):
        real_close(each)
        if each == fd:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "close", close)
    with pytest.raises(OSError, match="Input/output error"):
        later.commit()
    monkeypatch.undo()
    with pytest.raises(OSError):  # (EBADF: closed)
        os.fstat(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_a_commit_with_no_thread_to_run_in_is_done_at_once(tmp_path, monkeypatch):
    """No thread can be started (``can't start new thread``, e.g. under a job's address space limit):
    the files are committed before ``commit_meanwhile`` returns, never left under temporary names."""
    import threading

    later = durable.Later()
    durable.write_atomic(tmp_path / "a", b"1", later=later)
    monkeypatch.setattr(threading.Thread, "start", _no_commit_thread(threading.Thread.start))
    wait = later.commit_meanwhile()
    assert [p.name for p in tmp_path.iterdir()] == ["a"] and later.files == []
    wait()


def _no_commit_thread(real):
    def start(self):
        if self.name == "backbeat-commit":
            raise RuntimeError("can't start new thread")
        return real(self)
    return start


VIEW = b'''import collections, os
from beat.backend.python.database import View

Entry = collections.namedtuple("Entry", ["value"])


class V(View):
    def index(self, root_folder, parameters):
        return [Entry(i) for i in range(parameters["n"])]

    def get(self, output, index):
        if self.parameters.get("exit"):
            raise SystemExit(3)
        return {"value": self.objs[index].value}
'''


def _index_spec(tmp_path, n, **parameters):
    import hashlib

    from backbeat.cache.blobs import Blobs
    from backbeat.runtime.spec import CodeFile, DatasetSpec

    blobs = Blobs(tmp_path / "code")
    snapshot = CodeFile(str(blobs.path(blobs.put(VIEW))), hashlib.sha256(VIEW).hexdigest(), str(tmp_path / "1.py"))
    index = tmp_path / "index"
    index.mkdir()
    return DatasetSpec("t/1", snapshot, "V", str(tmp_path), {"n": n, **parameters}, str(index / "i.db"),
                       {"value": ("t/int/1", {"value": "int32"})}, cores=2), index


@pytest.mark.parametrize("units", ["one process", "two"])
def test_an_indexing_job_whose_files_cannot_all_be_written_fails_and_leaves_no_temporary(tmp_path, monkeypatch, units):
    """The index files are written under temporary names while the job probes (their commit waits):
    if writing one fails (a full disk: here the third file), those written so far are removed and
    the job fails — never a manifest from a probe that did not run to its end (on one process,
    the files are written before any unit is probed)."""
    from backbeat.runtime import dbprovider
    from backbeat.runtime.probe import PARALLEL_UNITS

    spec, index = _index_spec(tmp_path, PARALLEL_UNITS if units == "two" else 5)
    real, calls = durable.Later.write, []

    def write(self, *args):
        calls.append(args[1])
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, *args)

    monkeypatch.setattr(durable.Later, "write", write)
    with pytest.raises(OSError, match="No space left on device"):
        dbprovider.build_index({"spec": spec.to_json()})
    assert len(calls) == 3  # (not written again after the probe)
    assert list(index.iterdir()) == []  # (no temporary, no file)


def test_an_indexing_job_with_no_thread_to_commit_in_reports_files_in_place(tmp_path, monkeypatch):
    """No thread can be started to commit the index files (``can't start new thread``, under the
    job's address space limit): they are committed at once, and the digest the job reports is that
    of the index in place — never a digest of files left under temporary names."""
    import threading

    from backbeat.data import dbindex
    from backbeat.runtime import dbprovider

    spec, index = _index_spec(tmp_path, 5)
    monkeypatch.setattr(threading.Thread, "start", _no_commit_thread(threading.Thread.start))
    result = dbprovider.build_index({"spec": spec.to_json()})
    assert result["probe"] == "complete"
    assert sorted(p.name for p in index.iterdir()) == ["i.db", "i.db.sha256", "i.db.table"]
    assert dbindex.index_digest(spec.index_path) == result["digest"] == (index / "i.db.sha256").read_text().strip()


def test_an_indexing_job_left_through_a_system_exit_names_its_files_first(tmp_path, monkeypatch):
    """A view's ``get`` raising SystemExit (no Exception: it escapes the probe) while the index files
    are committed in a thread: the job waits for the thread before it leaves — the files are named
    (durable), no temporary is left behind by a process exiting mid-commit."""
    import time

    from backbeat.runtime import dbprovider

    spec, index = _index_spec(tmp_path, 5, exit=True)
    real = durable.Later.commit

    def slow(self):  # (the commit still running when get raises)
        time.sleep(0.5)
        real(self)

    monkeypatch.setattr(durable.Later, "commit", slow)
    with pytest.raises(SystemExit):
        dbprovider.build_index({"spec": spec.to_json()})
    assert sorted(p.name for p in index.iterdir()) == ["i.db", "i.db.sha256", "i.db.table"]
