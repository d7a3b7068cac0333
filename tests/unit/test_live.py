"""The live progress file (reporting/live.py): a snapshot then a journal of events, on real files."""

from __future__ import annotations

import json
import os

from backbeat.reporting import live


def test_the_journal_replays_to_the_recorders_state_and_compacts(tmp_path) -> None:
    seen = []
    rec = live.Recorder(tmp_path, "x/y/z/1/e", seen.append)
    assert live.read(tmp_path, "x/y/z/1/e")["blocks"] == {}
    rec({"block": "a", "state": "running", "done": 0, "total": None})
    rec({"block": "a", "state": "running", "done": 10, "total": 40, "rate": 5.0, "eta_s": 6.0})
    state = live.read(tmp_path, "x/y/z/1/e")
    assert state["pid"] == os.getpid() and state["blocks"]["a"] == {"state": "running", "done": 10, "total": 40,
                                                                     "rate": 5.0, "eta_s": 6.0}
    rec({"block": "a", "state": "done", "wall_s": 1.0})
    assert live.read(tmp_path, "x/y/z/1/e")["blocks"]["a"] == {"state": "done", "done": 10, "total": 40}
    assert len(seen) == 3  # every event goes on to the display
    # many events: the file is compacted into a new snapshot, never grows with their number
    for i in range(3 * live.COMPACT_LINES):
        rec({"block": f"b{i % 7}", "state": "running", "done": i, "total": None})
    data = rec.file.read_bytes()
    assert data.count(b"\n") <= live.COMPACT_LINES + 1
    assert live.read(tmp_path, "x/y/z/1/e")["blocks"] == rec.state["blocks"]
    rec.close()
    assert not rec.file.exists() and live.read(tmp_path, "x/y/z/1/e") is None


def test_a_line_being_written_is_left_for_the_next_read(tmp_path) -> None:
    rec = live.Recorder(tmp_path, "e")
    rec({"block": "a", "state": "running"})
    with open(rec.file, "ab") as f:
        f.write(b'{"block": "a", "state": "do')  # a writer caught mid-line
    assert live.read(tmp_path, "e")["blocks"]["a"]["state"] == "running"
    rec.close()


def test_the_file_of_a_dead_run_is_ignored_and_removed(tmp_path) -> None:
    rec = live.Recorder(tmp_path, "e")
    rec.close()
    rec.file.parent.mkdir(parents=True, exist_ok=True)
    rec.file.write_text('{"experiment": "e", "pid": 999999999, "blocks": {}}\n')
    assert live.read(tmp_path, "e") is None and not rec.file.exists()


def test_the_files_of_earlier_versions_are_swept_as_their_runs_end(tmp_path) -> None:
    """An earlier version kept the whole state as one indented JSON document, ``<sha256>.json``:
    the one of a dead run goes when a run starts, the one of a live run stays."""
    folder = tmp_path / live.FOLDER
    folder.mkdir()
    dead, alive = folder / f"{'a' * 64}.json", folder / f"{'b' * 64}.json"
    for p, pid in ((dead, 999999999), (alive, os.getpid())):
        p.write_text(json.dumps({"experiment": "e", "pid": pid, "started": 0, "updated": 0,
                                 "blocks": {"x": {"state": "running"}}}, indent=2))
    live.Recorder(tmp_path, "e").close()
    assert not dead.exists() and alive.exists()
