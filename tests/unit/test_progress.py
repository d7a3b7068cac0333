"""Progress of running blocks: the step loop's pacer (runtime/driver.py) and the rates and time left
of the run's events (execution/progress.py)."""

from __future__ import annotations

import time

import pytest

from backbeat.execution.progress import Meter
from backbeat.runtime.driver import Pacer


def test_meter_rate_and_time_left() -> None:
    m = Meter()
    assert m.update("b", None, 0, 100, now=10.0) == {}  # one point: no rate yet
    assert m.update("b", None, 10, 100, now=11.0) == {"rate": 10.0, "eta_s": 9.0}
    later = m.update("b", None, 30, 100, now=12.0)  # 20/s measured, smoothed over 3 s
    assert later["rate"] == pytest.approx(10 + (20 - 10) / 3, abs=1e-3)
    assert later["eta_s"] == pytest.approx(70 / later["rate"], abs=0.1)
    assert "eta_s" not in m.update("s", 1, 5, None, now=10.0) | m.update("s", 1, 9, None, now=12.0)  # no total
    assert 0 < m.update("s", 1, 9, None, now=12.5)["rate"] < 2.0  # stalled: the rate decays
    m.forget("b")
    assert m.update("b", None, 40, 100, now=13.0) == {}  # a new start


def test_pacer_reports_slow_steps_each_and_reads_the_clock_rarely_for_fast_ones() -> None:
    reports: list[int] = []
    slow = Pacer(reports.append, interval=0.02)
    for steps in range(1, 8):
        time.sleep(0.025)
        if steps >= slow.due:
            slow.tick(steps)
        assert slow.due == steps + 1  # a step takes longer than the interval: checked at every step
    assert reports == list(range(1, 8))

    ticks = 0
    fast = Pacer(reports.append, interval=0.2)
    for steps in range(1, 200_001):
        if steps >= fast.due:
            fast.tick(steps)
            ticks += 1
    assert ticks < 2_000  # a stride of up to 1,024 steps between two looks at the clock


def test_a_block_process_is_believed_about_its_own_outputs_only() -> None:
    """What a block process reports of the files it committed (digests, an analyzer's records)
    is kept for the job's own output keys: it cannot vouch for another entry."""
    from backbeat.execution.state import RunState

    state = RunState()
    stats = state.learn({"steps": 3, "committed": {"mine": "d1", "theirs": "d2", "odd": 5},
                         "records": {"mine": [{"start": 0}], "theirs": []}}, own=["mine", "odd"])
    assert stats == {"steps": 3}  # the rest is the run's, not the block's statistics
    assert state.digests == {"mine": "d1"} and state.records == {"mine": [{"start": 0}]}
    state.learn({"committed": {"slot": "d3"}})  # a slot of a split block: its files are not entries
    assert state.digests == {"mine": "d1"}
