"""Driving user algorithms (legacy, sequential, autonomous, analyzers) over real inputs/outputs."""

from __future__ import annotations

import numpy as np
import pytest

from backbeat.core.errors import ExecutionError, UsageError
from backbeat.data.values import value_type
from backbeat.runtime.dataloaders import DataLoaderList
from backbeat.runtime.driver import build_inputs, build_outputs, count_steps, run_algorithm
from backbeat.runtime.inputs import InputList, ListDataSource

INT = value_type("user/single_integer/1", {"value": "int32"})


def ints(values, units):
    return ListDataSource([INT(value=np.int32(v)) for v in values], units)


class Sink:
    def __init__(self):
        self.written = []
        self.closed = False

    def write(self, value, start, end):
        self.written.append((value.value.item() if hasattr(value, "value") else value, start, end))

    def close(self):
        self.closed = True


def block(kind, declared_inputs, out_names=("out",), channel="ch"):
    inputs, loaders = build_inputs(kind, channel, declared_inputs)
    sinks = {name: Sink() for name in out_names}
    outputs = build_outputs({n: (s, INT) for n, s in sinks.items()}, inputs)
    return inputs, loaders, outputs, sinks


def multi():
    """Block channel `ch`: a = 1,2 over (0-4, 5-9), b = 0..9 singles; channel `oth`: c."""
    return {
        "c": ("oth", ints([100, 200], [(0, 2), (3, 5)])),
        "a": ("ch", ints([1, 2], [(0, 4), (5, 9)])),
        "b": ("ch", ints(range(10), [(i, i) for i in range(10)])),
    }


# ---------------------------------------------------------------- build_inputs


def test_build_inputs_legacy():
    inputs, loaders = build_inputs("legacy", "ch", multi())
    assert isinstance(inputs, InputList) and len(loaders) == 0
    assert inputs.main_group.channel == "ch" and inputs.main_group.restricted_access
    other = inputs.group("oth")
    assert not other.restricted_access and other.synchronization_listener is not None
    assert [i.name for i in inputs.main_group] == ["a", "b"]
    assert count_steps(inputs) == 10


def test_build_inputs_sequential():
    inputs, loaders = build_inputs("sequential", "ch", multi())
    assert [i.name for i in inputs] == ["a", "b"] and inputs.nbGroups() == 1
    assert [ld.channel for ld in loaders] == ["oth"] and loaders.loaderOf("c").count() == 2


def test_build_inputs_autonomous_main_loader_is_block_channel():
    inputs, loaders = build_inputs("autonomous_loop_processor", "ch", multi())
    assert inputs is None
    assert [ld.channel for ld in loaders] == ["oth", "ch"]
    assert loaders.main_loader.channel == "ch"  # BEAT would pick `oth' (first created)
    assert [ld.channel for ld in loaders.secondaries()] == ["oth"]
    assert loaders.main_loader.count() == 10 and loaders["ch"].count("a") == 2
    assert count_steps(None, loaders) == 10 and count_steps(None) == 0


def test_build_inputs_errors():
    with pytest.raises(UsageError, match="unknown algorithm type"):
        build_inputs("weird", "ch", multi())
    with pytest.raises(UsageError, match="block channel `zz'"):
        build_inputs("sequential", "zz", multi())
    with pytest.raises(UsageError, match="block channel `zz'"):
        build_inputs("autonomous", "zz", multi())
    with pytest.raises(UsageError, match="expected \\(channel, data_source"):
        build_inputs("autonomous", "ch", {"a": "nope"})


# ---------------------------------------------------------------- legacy


class LegacySum:
    """Sums b over each unit of a; adds the secondary-channel total once."""

    def __init__(self):
        self.total = 0
        self.extra = None
        self.calls = 0
        self.seen = []

    def setup(self, parameters):
        self.offset = parameters["offset"]
        return True

    def prepare(self, data_loaders):  # never called for legacy
        raise AssertionError("prepare called on a legacy algorithm")

    def process(self, inputs, outputs):
        self.calls += 1
        if self.extra is None:
            group = inputs.groupOf("c")
            self.extra = 0
            while group.hasMoreData():
                group.next()
                self.extra += int(group["c"].data.value)
        self.seen.append((inputs["a"].hasDataChanged(), inputs["b"].data_index))
        self.total += int(inputs["b"].data.value)
        if inputs["a"].isDataUnitDone():
            outputs["out"].write({"value": np.int32(self.total + self.offset + self.extra)})
            self.total = 0
        return True


def test_legacy_algorithm():
    inputs, loaders, outputs, sinks = block("legacy", multi())
    algo = LegacySum()
    steps = []
    summary = run_algorithm(
        algo,
        "legacy",
        inputs=inputs,
        data_loaders=loaders,
        outputs=outputs,
        parameters={"offset": 1000},
        progress=steps.append,
    )
    assert algo.calls == 10 and steps == [10]  # progress: every 1024 steps and at the end
    assert sinks["out"].written == [(0 + 1 + 2 + 3 + 4 + 1300, 0, 4), (5 + 6 + 7 + 8 + 9 + 1300, 5, 9)]
    assert sinks["out"].closed and summary.steps == 10 and summary.written == {"out": 2}
    assert algo.seen[0] == (True, 0) and algo.seen[1] == (False, 1) and algo.seen[5] == (True, 5)


class UserAdvancesMain:
    def process(self, inputs, outputs):
        inputs.main_group.next()


def test_user_cannot_advance_main_group():
    inputs, loaders, outputs, _ = block("legacy", multi())
    with pytest.raises(RuntimeError, match="^Not authorized$"):
        run_algorithm(UserAdvancesMain(), "legacy", inputs=inputs, outputs=outputs)


class ReadsPastEnd:
    def process(self, inputs, outputs):
        inputs["c"].next()
        inputs["c"].next()
        inputs["c"].next()
        return True


def test_reading_past_the_end_propagates():
    inputs, _, outputs, _ = block("legacy", multi())
    with pytest.raises(RuntimeError) as info:
        run_algorithm(ReadsPastEnd(), "legacy", inputs=inputs, outputs=outputs)
    assert str(info.value) == (
        "User algorithm asked for more data for channel `oth' on input `c', but it is over (no more data). "
        "This normally indicates a programming error on the user side."
    )


# ---------------------------------------------------------------- sequential


class SequentialCopy:
    def __init__(self):
        self.prepared_with = None

    def prepare(self, data_loaders):
        self.prepared_with = [ld.channel for ld in data_loaders]
        loader = data_loaders.loaderOf("c")
        self.extra = sum(int(loader[i][0]["c"].value) for i in range(loader.count()))
        return True

    def process(self, inputs, data_loaders, outputs):
        assert isinstance(data_loaders, DataLoaderList)
        outputs["out"].write({"value": np.int32(int(inputs["b"].data.value) + self.extra)})
        if inputs["a"].isDataUnitDone():
            outputs["per_a"].write({"value": inputs["a"].data.value})
        return True


def test_sequential_algorithm():
    inputs, loaders, outputs, sinks = block("sequential", multi(), out_names=("out", "per_a"))
    algo = SequentialCopy()
    run_algorithm(algo, "sequential", inputs=inputs, data_loaders=loaders, outputs=outputs)
    assert algo.prepared_with == ["oth"]
    assert sinks["out"].written == [(i + 300, i, i) for i in range(10)]
    assert sinks["per_a"].written == [(1, 0, 4), (2, 5, 9)]


class Lazy:
    """Writes only on every other unit: data goes missing."""

    def process(self, inputs, data_loaders, outputs):
        if inputs["b"].data_index % 2 == 0:
            outputs["out"].write({"value": np.int32(0)})
        return True


def test_missing_data_error():
    inputs, loaders, outputs, sinks = block("sequential", multi(), out_names=("out", "other"))
    with pytest.raises(ExecutionError) as info:
        run_algorithm(Lazy(), "sequential", inputs=inputs, data_loaders=loaders, outputs=outputs)
    assert str(info.value) == "Missing data on the following output(s): out, other"
    assert sinks["out"].closed


class Returns:
    def __init__(self, setup=True, prepare=True, process=True, stop_after=None):
        self.results = {"setup": setup, "prepare": prepare, "process": process}
        self.stop_after = stop_after
        self.calls = 0

    def setup(self, parameters):
        return self.results["setup"]

    def prepare(self, data_loaders):
        return self.results["prepare"]

    def process(self, inputs, data_loaders, outputs):
        self.calls += 1
        outputs[0].write({"value": np.int32(1)})
        if self.stop_after is not None:
            return self.calls < self.stop_after
        return self.results["process"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"setup": False}, "Could not setup algorithm (returned False)"),
        ({"setup": None}, "Could not setup algorithm (returned False)"),
        ({"prepare": 0}, "Could not prepare algorithm (returned False)"),
        ({"process": False}, "Could not run algorithm (process returned False)"),
        ({"stop_after": 3}, "Could not run algorithm (process returned False)"),
    ],
)
def test_falsy_returns(flags, message):
    inputs, loaders, outputs, sinks = block("sequential", multi())
    algo = Returns(**flags)
    with pytest.raises(ExecutionError) as info:
        run_algorithm(algo, "sequential", inputs=inputs, data_loaders=loaders, outputs=outputs)
    assert str(info.value) == message
    if "stop_after" in flags:
        assert algo.calls == 3 and len(sinks["out"].written) == 3 and sinks["out"].closed


# ---------------------------------------------------------------- autonomous


class AutonomousMean:
    def prepare(self, data_loaders):
        self.secondary = [ld.channel for ld in data_loaders]
        self.main_in_prepare = data_loaders.main_loader
        return True

    def process(self, data_loaders, outputs):
        loader = data_loaders.main_loader
        for i in range(loader.count("a")):
            view = loader.view("a", i)
            total = sum(int(view[k][0]["b"].value) for k in range(view.count()))
            outputs["out"].write({"value": np.int32(total)}, view.data_index_end)
        return True


def test_autonomous_algorithm():
    inputs, loaders, outputs, sinks = block("autonomous", multi())
    assert inputs is None
    algo = AutonomousMean()
    steps = []
    summary = run_algorithm(algo, "autonomous", data_loaders=loaders, outputs=outputs, progress=steps.append)
    assert algo.secondary == ["oth"] and algo.main_in_prepare is None
    assert sinks["out"].written == [(10, 0, 4), (35, 5, 9)]
    assert steps == [10] and summary.steps == 10


class AutonomousAnalyzer:
    def process(self, data_loaders, output):
        loader = data_loaders.main_loader
        total = sum(int(loader[i][0]["b"].value) for i in range(loader.count()))
        output.write({"value": np.int32(total)})
        return True


class SequentialAnalyzer:
    def __init__(self):
        self.total = 0

    def process(self, inputs, data_loaders, output):
        self.total += int(inputs["b"].data.value)
        if not inputs.hasMoreData():
            output.write({"value": np.int32(self.total)})
        return True


def test_analyzers():
    _, loaders, outputs, sinks = block("autonomous", multi(), out_names=("result",))
    run_algorithm(AutonomousAnalyzer(), "autonomous", data_loaders=loaders, outputs=outputs, analyzer=True)
    assert sinks["result"].written == [(45, 0, 0)]

    inputs, loaders, outputs, sinks = block("sequential", multi(), out_names=("result",))
    run_algorithm(
        SequentialAnalyzer(),
        "sequential",
        inputs=inputs,
        data_loaders=loaders,
        outputs=outputs,
        analyzer=True,
    )
    assert sinks["result"].written == [(45, 0, 9)]

    with pytest.raises(UsageError, match="exactly one output"):
        run_algorithm(
            AutonomousAnalyzer(),
            "autonomous",
            data_loaders=loaders,
            outputs=block("autonomous", multi(), out_names=("x", "y"))[2],
            analyzer=True,
        )


# ---------------------------------------------------------------- loop hooks and misuse


class LoopProcessor:
    def __init__(self):
        self.channels = []

    def process(self, inputs, data_loaders, outputs, loop_channel):
        self.channels.append(loop_channel)
        outputs[0].write({"value": np.int32(0)})
        return True


def test_loop_channel_checks_and_hooks():
    inputs, loaders, outputs, _ = block("sequential_loop_processor", multi())
    with pytest.raises(
        ExecutionError, match="^Algorithm 'p' is a loop enabled algorithm but no loop_channel given$"
    ):
        run_algorithm(
            LoopProcessor(),
            "sequential_loop_processor",
            inputs=inputs,
            data_loaders=loaders,
            outputs=outputs,
            name="p",
        )
    with pytest.raises(ExecutionError, match="^Algorithm 'q' is not a valid loop enabled algorithm$"):
        run_algorithm(
            SequentialCopy(),
            "sequential",
            inputs=inputs,
            data_loaders=loaders,
            outputs=outputs,
            name="q",
            loop_channel=object(),
        )
    algo, channel, rdi = LoopProcessor(), object(), []
    run_algorithm(
        algo,
        "sequential_loop_processor",
        inputs=inputs,
        data_loaders=loaders,
        outputs=outputs,
        loop_channel=channel,
        before_process=lambda: rdi.append(1),
    )
    assert algo.channels == [channel] * 10 and len(rdi) == 10


def test_misuse():
    with pytest.raises(UsageError, match="needs an InputList"):
        run_algorithm(SequentialCopy(), "sequential", outputs=None)
    with pytest.raises(UsageError, match="unknown algorithm type"):
        run_algorithm(SequentialCopy(), "nope")


def test_outputs_without_listener_for_autonomous():
    outputs = build_outputs({"o": (Sink(), INT)}, None, start_index=5)
    outputs["o"].write({"value": np.int32(1)})
    assert outputs["o"].last_written_data_index == 5 and not outputs["o"].isDataMissing()
