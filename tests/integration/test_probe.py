"""The probe of an indexing job on two cores gives what one process probing in order gives.

Real processes (the probe forks), real files opened by a view's ``get`` and seen through the
audit hook of :class:`~backbeat.runtime.dependencies.OpenRecorder`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backbeat.runtime.dependencies import OpenRecorder
from backbeat.runtime.probe import probe


def _view(root: Path, fail_at: int | None = None):
    """A get reading one file per unit (the unit's entry), raising at entry ``fail_at``;
    and the calls of two outputs, 6 units each (entries 0, 2, .. 10 and 20, 22, .. 30)."""
    for k in list(range(0, 12, 2)) + list(range(20, 32, 2)):
        (root / f"{k}.txt").write_text(str(k))

    def get(output, start):
        if start == fail_at:
            raise ValueError(f"no unit {start}")
        with open(root / f"{start}.txt") as f:
            return {output: int(f.read())}

    return get, [("a", list(range(0, 12, 2))), ("b", list(range(20, 32, 2)))]


@pytest.mark.parametrize("fail_at", [None, 4, 24], ids=["complete", "first half fails", "second half fails"])
def test_two_processes_record_what_one_process_records(tmp_path, fail_at):
    results = {}
    for parallel in (False, True):
        root = tmp_path / str(parallel)
        root.mkdir()
        get, calls = _view(root, fail_at)
        recorder = OpenRecorder({"root": str(root)})
        outcome = probe(get, calls, recorder, parallel=parallel)
        results[parallel] = outcome, sorted(recorder.seen), {v["phase"] for v in recorder.seen.values()}
    assert results[True] == results[False]
    outcome, seen, phases = results[True]
    if fail_at is None:
        assert outcome == "complete" and len(seen) == 12 and phases == {"get"}
    else:
        assert outcome == f"stopped: ValueError: no unit {fail_at}"
        assert seen == sorted(f"root/{k}.txt" for k in (*range(0, 12, 2), *range(20, 32, 2)) if k < fail_at)


def test_a_second_half_that_dies_stops_the_probe(tmp_path):
    get, calls = _view(tmp_path)
    parent = os.getpid()

    def dying(output, start):
        if os.getpid() != parent:
            os._exit(3)  # (user code killing its process)
        return get(output, start)

    outcome = probe(dying, calls, OpenRecorder({"root": str(tmp_path)}), parallel=True)
    assert outcome == "stopped: the process probing the second half of the units ended (exit code 3)"
