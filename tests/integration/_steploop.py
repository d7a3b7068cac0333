"""What the step-loop tests share (test_chunkloop.py, test_fastpaths.py): one input of a ``float64``
format, an algorithm recording what BEAT's API shows at each step, a sink keeping what it is given,
and a run of that algorithm through the driver — so that two sources, or two loops, are compared
through the very same probe."""

from __future__ import annotations

import numpy as np

from backbeat.data.values import value_type
from backbeat.runtime.driver import build_inputs, build_outputs, run_algorithm

FMT = "user/f/1"
EXP = {"value": "float64"}
F = value_type(FMT, EXP)


class Recorder:
    """What BEAT's API shows at each step (``seen``); keeps every value it was given and a copy of
    it (``kept``: what it was given must change only by its own doing), then changes it; stops
    after ``stop_after`` steps if given."""

    def __init__(self, stop_after: int | None = None):
        self.seen: list[tuple] = []
        self.kept: list[tuple] = []
        self.stop_after = stop_after

    def process(self, inputs, data_loaders, outputs):
        x, g = inputs["in"], inputs.main_group
        self.kept.append((x.data, float(x.data.value)))
        self.seen.append((float(x.data.value), x.data_index, x.data_index_end, x.next_data_index,
                          x.nb_data_blocks_read, x.hasDataChanged(), x.isDataUnitDone(), x.hasMoreData(),
                          inputs.hasMoreData(), g.hasMoreData(), g.data_index, g.data_index_end,
                          g.first_data_index, g.last_data_index))
        x.data.value = np.float64(-1.0)  # (its own copy: what it was given may be changed by it)
        outputs["out"].write({"value": self.kept[-1][1] * 2})
        return self.stop_after is None or len(self.seen) < self.stop_after


class ListSink:
    """An output's writer keeping ``(value, start, end)`` of every write."""

    def __init__(self):
        self.written: list[tuple[float, int, int]] = []

    def write(self, value, start, end):
        self.written.append((float(value.value), start, end))


def run_steps(source, algorithm, kind: str = "sequential") -> tuple[list, int | str]:
    """Run ``algorithm`` on ``source`` (input ``in``, output ``out``): what it wrote, and its number
    of steps or the error that stopped it (compared between two runs as well)."""
    inputs, loaders = build_inputs(kind, "ch", {"in": ("ch", source, FMT)})
    sink = ListSink()
    try:
        outcome: int | str = run_algorithm(algorithm, kind, inputs=inputs, data_loaders=loaders,
                                           outputs=build_outputs({"out": (sink, F)}, inputs)).steps
    except Exception as exc:  # noqa: BLE001 - compared between the two runs
        outcome = str(exc)
    return sink.written, outcome
