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


def test_an_indexing_job_whose_files_cannot_all_be_written_leaves_no_temporary(tmp_path, monkeypatch):
    """The index files are written under temporary names while the job probes (their commit waits):
    if writing one fails (a full disk: here the third file), those written so far are removed; the
    probe stops and the job writes its files again after it, at once, as it did."""
    import hashlib

    from backbeat.cache.blobs import Blobs
    from backbeat.runtime import dbprovider
    from backbeat.runtime.probe import PARALLEL_UNITS
    from backbeat.runtime.spec import CodeFile, DatasetSpec

    code = b'''import collections
from beat.backend.python.database import View

Entry = collections.namedtuple("Entry", ["value"])


class V(View):
    def index(self, root_folder, parameters):
        return [Entry(i) for i in range(parameters["n"])]

    def get(self, output, index):
        return {"value": self.objs[index].value}
'''
    blobs = Blobs(tmp_path / "code")
    snapshot = CodeFile(str(blobs.path(blobs.put(code))), hashlib.sha256(code).hexdigest(), str(tmp_path / "1.py"))
    index = tmp_path / "index"
    index.mkdir()
    spec = DatasetSpec("t/1", snapshot, "V", str(tmp_path), {"n": PARALLEL_UNITS}, str(index / "i.db"),
                       {"value": ("t/int/1", {"value": "int32"})}, cores=2)
    real, calls = durable.Later.write, []

    def write(self, *args):
        calls.append(args[1])
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, *args)

    monkeypatch.setattr(durable.Later, "write", write)
    result = dbprovider.build_index({"spec": spec.to_json()})
    assert result["probe"].startswith("stopped: OSError: [Errno 28]")  # (as main: the writing stops the probe)
    assert len(calls) == 3  # (then written again, at once, after the probe)
    assert sorted(p.name for p in index.iterdir()) == ["i.db", "i.db.sha256", "i.db.table"]  # (no temporary)
