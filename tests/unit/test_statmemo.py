"""The stat memo: what a dropped memo learnt is kept, and its database's descriptors are freed then."""

from __future__ import annotations

import gc
import os

from backbeat.core import statmemo
from backbeat.core.statmemo import StatMemo


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_dropped_memo_keeps_what_it_learnt_and_frees_its_descriptors(tmp_path, monkeypatch):
    monkeypatch.setattr(statmemo, "RACY_NS", -1)  # (a file hashed right after it was written is racy)
    data = tmp_path / "a.bin"
    data.write_bytes(b"backbeat" * 1000)
    before = _open_fds()
    for i in range(40):  # a long-lived caller opening many caches' memos and never closing them
        memo = StatMemo(tmp_path / f"cache{i}" / "stat.sqlite3")
        assert memo.lookup("sha256", data) is None
        memo.digest(data)
        del memo
    gc.collect()
    assert _open_fds() - before < 6  # (each open memo holds its database, WAL and shared-memory files)
    again = StatMemo(tmp_path / "cache7" / "stat.sqlite3")
    assert again.lookup("sha256", data) is not None  # flushed when dropped
    again.close()
