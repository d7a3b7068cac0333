"""Live progress of running blocks: units done, rate and time left.

Block processes report how many units they have done (``progress`` control messages, about
every 0.2 s while they run: :class:`backbeat.runtime.driver.Pacer`).  A :class:`Meter` turns
those reports into what a display shows: the rate (units per second, smoothed over the last
seconds so that it follows a block that speeds up or slows down) and, when the total is
known, the estimated time left.  The run's progress events carry both (``rate``, ``eta_s``):
the terminal display, ``experiments run --progress-json`` and the live progress file of
``backbeat serve`` all show the same figures.
"""

from __future__ import annotations

import time

#: seconds over which the rate is smoothed (exponentially)
SMOOTHING_S = 3.0


class Meter:
    """Rates of the units done by running blocks (one line per block, or per slot)."""

    def __init__(self) -> None:
        self._lines: dict[tuple[str, int | None], tuple[float, int, float | None]] = {}  # -> (time, done, rate)

    def update(self, block: str, slot: int | None, done: int, total: int | None,
               now: float | None = None) -> dict[str, float]:
        """Record ``done`` units of ``block`` (``slot``) at ``now``; ``{"rate", "eta_s"}`` as far as known."""
        now = time.monotonic() if now is None else now
        line = (block, slot)
        last = self._lines.get(line)
        rate = None
        if last is not None:
            then, before, previous = last
            elapsed = now - then
            if elapsed <= 0 or done < before:
                self._lines[line] = (then, before, previous) if done >= before else (now, done, None)
                return self._figures(previous, done, total)
            measured = (done - before) / elapsed
            weight = min(1.0, elapsed / SMOOTHING_S)
            rate = measured if previous is None else previous + weight * (measured - previous)
        self._lines[line] = (now, done, rate)
        return self._figures(rate, done, total)

    @staticmethod
    def _figures(rate: float | None, done: int, total: int | None) -> dict[str, float]:
        out: dict[str, float] = {}
        if rate is not None:
            out["rate"] = round(rate, 3)
            if total is not None and rate > 0:
                out["eta_s"] = round(max(0, total - done) / rate, 1)
        return out

    def forget(self, block: str) -> None:
        """The block has ended (its lines are dropped)."""
        for line in [k for k in self._lines if k[0] == block]:
            del self._lines[line]
