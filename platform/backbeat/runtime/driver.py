"""Wiring a block's inputs/outputs and driving a user algorithm (spec §5.8, §6.4).

:func:`build_inputs` turns ``{input name: (channel, data source)}`` into what the
algorithm type expects (table of §5.8):

============== ===================================== ===================================
type           inputs on the block's channel          inputs on other channels
============== ===================================== ===================================
legacy         ``Input`` in the restricted main group ``Input`` in an unrestricted group
sequential*    ``Input`` in the restricted main group one ``DataLoader`` per channel
autonomous*    ``DataLoader`` (the main loader)       one ``DataLoader`` per channel
============== ===================================== ===================================

(* including the loop processor / evaluator variants).  Fix over BEAT: for autonomous
types the main loader is always the block's own channel, whereas BEAT takes the first
loader created (input declaration order), so ``prepare`` could receive the wrong
"secondaries".  :func:`build_outputs` makes the outputs, synchronised on the main group.

:func:`run_algorithm` is BEAT's ``AlgorithmExecutor``: optional ``setup(parameters)``,
``prepare(data_loaders)`` (API v2 only; autonomous types get ``secondaries()``), then
one ``process`` call (autonomous) or one call per step of the main group
(legacy/sequential) until the inputs are exhausted or ``process`` returns a falsy value;
outputs are closed; a falsy return or an output with missing data fails the block.
User exceptions propagate unchanged (the caller classifies them).  Loop channels are
only passed through (``loop_channel``, ``before_process`` hook for the ``rdi`` message).
"""

from __future__ import annotations

import gc
import inspect
import time
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from backbeat.core.errors import ExecutionError, UsageError
from backbeat.data.compiled import native
from backbeat.declarations.algorithm import AUTONOMOUS_TYPES, LEGACY
from backbeat.declarations.algorithm import TYPES as ALGORITHM_TYPES
from backbeat.runtime.dataloaders import DataLoader, DataLoaderList, mix_data_indices
from backbeat.runtime.inputs import Input, InputGroup, InputList
from backbeat.runtime.outputs import Output, OutputList, SynchronizationListener


def _check_type(algorithm_type: str) -> str:
    if algorithm_type not in ALGORITHM_TYPES:
        raise UsageError(
            f"unknown algorithm type `{algorithm_type}' (expected one of {sorted(ALGORITHM_TYPES)})"
        )
    return algorithm_type


def _unpack(name: str, spec: Any) -> tuple[str, Any, Any]:
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise UsageError(f"input `{name}': expected (channel, data_source[, data_format]), got {spec!r}")
    channel, source = spec[0], spec[1]
    data_format = (
        spec[2] if len(spec) == 3 else getattr(source, "data_format", getattr(source, "dataformat", None))
    )
    return str(channel), source, data_format


def build_inputs(
    algorithm_type: str,
    block_channel: str,
    inputs: Mapping[str, tuple],
) -> tuple[InputList | None, DataLoaderList]:
    """Make the ``InputList`` (``None`` for autonomous types) and ``DataLoaderList``.

    ``inputs`` maps input names (declaration order) to ``(channel, data_source)`` or
    ``(channel, data_source, data_format)``.  Every group gets a
    :class:`SynchronizationListener`; the block channel's group is restricted.
    """
    _check_type(algorithm_type)
    autonomous = algorithm_type in AUTONOMOUS_TYPES
    input_list = None if autonomous else InputList()
    loaders = DataLoaderList()
    if autonomous:
        # create the block channel's loader first so it is the main loader
        own = [n for n, spec in inputs.items() if _unpack(n, spec)[0] == str(block_channel)]
        if not own:
            raise UsageError(f"no input is synchronised on the block channel `{block_channel}'")
    for name, spec in inputs.items():
        channel, source, data_format = _unpack(name, spec)
        on_block_channel = channel == str(block_channel)
        if input_list is not None and (algorithm_type == LEGACY or on_block_channel):
            group = input_list.group(channel)
            if group is None:
                group = InputGroup(channel, SynchronizationListener(), restricted_access=on_block_channel)
                input_list.add(group)
            group.add(Input(name, data_format, source))
            continue
        loader = loaders[channel]
        if loader is None:
            loader = DataLoader(channel)
            loaders.add(loader, main=on_block_channel if autonomous else None)
        loader.add(name, source)
    if input_list is not None and input_list.main_group is None:
        raise UsageError(f"no input is synchronised on the block channel `{block_channel}'")
    return input_list, loaders


def build_outputs(
    outputs: Mapping[str, tuple[Any, Any]],
    input_list: InputList | None,
    start_index: int = 0,
    on_write: Callable[[str, int], None] | None = None,
) -> OutputList:
    """Make the ``OutputList`` from ``{name: (sink, value_type)}`` (declaration order).

    Outputs follow the listener of the main (restricted) group when there is one;
    ``start_index`` is the first index of the block's range (``0`` unless split);
    ``on_write(name, end)`` is called after each write (loop ``wrt`` hook).
    """
    listener = None
    if input_list is not None and input_list.main_group is not None:
        listener = input_list.main_group.synchronization_listener
    result = OutputList()
    for name, (sink, value_type) in outputs.items():
        result.add(
            Output(
                name, sink, listener, force_start_index=start_index, value_type=value_type, on_write=on_write
            )
        )
    return result


def count_steps(input_list: InputList | None, data_loaders: DataLoaderList | None = None) -> int | None:
    """How many steps :func:`run_algorithm` will report (for progress totals).

    Legacy/sequential: how many times the main group advances; autonomous (no input
    list): the number of units of the main loader.
    """
    if input_list is None:
        main = data_loaders.main_loader if data_loaders is not None else None
        return main.count() if main is not None else 0
    group = input_list.main_group
    if group is None or len(group) == 0:
        return 0
    if len(group) == 1:  # the units of one input are the steps (unknown while they arrive)
        first = group[0]
        assert first is not None
        source = first.data_source
        return None if getattr(source, "live", False) else len(source)
    return len(mix_data_indices([i.data_source.data_indices() for i in group]))


#: seconds between two progress reports of a running block, at most (whatever the speed of its steps)
PROGRESS_INTERVAL = 0.2


class Pacer:
    """Calls ``report(steps)`` about every :data:`PROGRESS_INTERVAL` seconds, however fast or slow
    the steps are, and reads the clock only every ``stride`` steps: the step loop compares
    ``steps >= pacer.due`` (an integer comparison) and calls :meth:`tick` when it holds.  The
    stride adapts to the measured speed: one step when a step takes long (a slow sequential
    block reports each unit), up to 1,024 when steps take microseconds."""

    __slots__ = ("report", "interval", "due", "_last", "_seen", "_at")

    def __init__(self, report: Callable[[int], None], interval: float = PROGRESS_INTERVAL) -> None:
        self.report, self.interval = report, interval
        self.due = 1
        self._last = self._at = time.monotonic()  # last report; last tick
        self._seen = 0  # steps at the last tick

    def tick(self, steps: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self.report(steps)
            self._last = now
        elapsed, done = now - self._at, steps - self._seen
        # the next tick about a quarter of an interval later, at the speed just measured
        stride = int(done * self.interval / (4 * elapsed)) if elapsed > 0 else 1024
        self.due = steps + max(1, min(1024, stride))
        self._at, self._seen = now, steps


#: while an algorithm runs, the collector's youngest generation is examined after that many net
#: allocations of tracked objects (CPython's default is 700).  The units of the windows being
#: consumed (a value object and a tuple each, up to 4,096 units per window) and those waiting in
#: a writer's buffer are alive: with the default they are examined again and again and promoted
#: to older generations, which are then examined too — ~20 % of an identity block's time per
#: unit.  Cyclic garbage still goes, after at most that many allocations (a few MB of small objects).
YOUNG_THRESHOLD = 25_000


@contextmanager
def collecting_less(threshold: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """Raise the collector's first threshold to at least ``threshold`` meanwhile (restored after,
    unless the code run set its own)."""
    before = gc.get_threshold()
    ours = (max(before[0], threshold), *before[1:])
    gc.set_threshold(*ours)
    try:
        yield
    finally:
        if gc.get_threshold() == ours:
            gc.set_threshold(*before)


@dataclass
class RunSummary:
    """What :func:`run_algorithm` did: steps run and blocks written per output."""

    steps: int = 0
    written: dict[str, int] = field(default_factory=dict)


def _has_argument(method: Any, name: str) -> bool:
    """Whether ``method``'s signature has a parameter ``name`` (as :func:`inspect.signature` says;
    read from the code object for a plain method: the inspect machinery costs a fresh block process
    ~0.5 ms)."""
    func = method.__func__ if isinstance(method, types.MethodType) else method
    if (type(func) is types.FunctionType and not hasattr(func, "__wrapped__")
            and not hasattr(func, "__signature__")):
        code = func.__code__
        count = (code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & inspect.CO_VARARGS)
                 + bool(code.co_flags & inspect.CO_VARKEYWORDS))
        names = code.co_varnames[:count]
        if func is not method and code.co_argcount:  # bound: its first positional parameter is taken
            names = names[1:]
        return name in names
    try:
        return name in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _call(obj: Any, name: str, *args: Any) -> Any:
    method = getattr(obj, name, None)
    if method is None or not callable(method):
        raise ExecutionError(f"algorithm object has no `{name}' method")
    return method(*args)


def _single_source(group: InputGroup) -> Any:
    """The data source of a one-input group when it hands out its units in chunks (else None)."""
    if len(group) != 1 or type(group) is not InputGroup:
        return None
    first = group[0]
    source = first.data_source if first is not None else None
    return source if hasattr(source, "iter_chunks") else None


def _drive_single(group: InputGroup, process: Callable, args: tuple,
                  pacer: Pacer | None) -> tuple[int, Any]:
    """The step loop for a main group of one input (the common case), without per-step calls.

    Sets exactly what :meth:`InputGroup.platform_next` sets (the input's unit and
    counters, the group's indices, the listener's interval), then calls ``process``.
    Returns ``(steps, last result)``; stops early on a falsy result.  (Every operation of
    the loop's body is paid per data unit: the state is kept in locals, the counters are
    derived from the unit's position, ``process`` is called with its arguments spelled out,
    and the units come in chunks (a window, a received batch) looped over with ``zip``.  A
    source whose units still arrive (``live``) says with ``more``, as it hands out a chunk,
    whether a unit follows it: the input's count of units, which ``hasMoreData`` reads, is set
    once per chunk — one past the chunk while more follow, so it is true exactly as before.)
    """
    x = group[0]
    assert x is not None
    listener = group.synchronization_listener
    if type(listener) is not SynchronizationListener and listener is not None:
        return _drive_single_notified(group, process, args, pacer)
    i = first = x.next_data_index
    source = x.data_source
    live = getattr(source, "live", False)  # units still arriving: the count grows as they do
    read = x.nb_data_blocks_read - first  # + position = blocks read
    if native is not None and type(x) is Input and type(group) is InputGroup:  # (this loop, compiled:
        # data.compiled; exactly our classes: a subclass could make an attribute a property)
        return native.drive(x, group, listener, source.iter_chunks(i), process, args, first, read, live, source,
                            pacer)
    due = pacer.due if pacer is not None else -1
    a, b, c = (*args, None)[:3] if len(args) <= 3 else (None, None, None)
    arity = len(args)
    result = True
    for values, starts, ends in source.iter_chunks(i):
        if live:
            x._n = i + len(values) + 1 if source.more else i + len(values)
        for value, start, end in zip(values, starts, ends, strict=True):
            i += 1
            x.data, x.data_index, x.data_index_end = value, start, end
            x.next_data_index = i
            x.data_same_as_previous = False
            x.nb_data_blocks_read = read + i
            group.data_index = group.first_data_index = start
            group.data_index_end = group.last_data_index = end
            if listener is not None:
                listener.data_index_start, listener.data_index_end = start, end
            if arity == 3:
                result = process(a, b, c)
            elif arity == 2:
                result = process(a, b)
            else:
                result = process(*args)
            if not result:
                break
            if i - first >= due > 0:
                assert pacer is not None
                pacer.tick(i - first)
                due = pacer.due
        else:
            continue
        break
    return i - first, result


def _drive_single_notified(group: InputGroup, process: Callable, args: tuple,
                           pacer: Pacer | None) -> tuple[int, Any]:
    """:func:`_drive_single` for a listener of another class (its ``onIntervalChanged`` is called)."""
    x = group[0]
    assert x is not None
    listener = group.synchronization_listener
    i = x.next_data_index
    source = x.data_source
    live = getattr(source, "live", False)
    steps, result = 0, True
    for value, start, end in source.iter_units(i):
        i += 1
        x.data, x.data_index, x.data_index_end, x.next_data_index = value, start, end, i
        if live:
            x._n = i + 1 if source.more else i
        x.data_same_as_previous = False
        x.nb_data_blocks_read += 1
        group.data_index = group.first_data_index = start
        group.data_index_end = group.last_data_index = end
        listener.onIntervalChanged(start, end)
        result = process(*args)
        steps += 1
        if pacer is not None and steps >= pacer.due:
            pacer.tick(steps)
        if not result:
            break
    return steps, result


def run_algorithm(
    algorithm: Any,
    kind: str,
    *,
    inputs: InputList | None = None,
    data_loaders: DataLoaderList | None = None,
    outputs: OutputList | None = None,
    parameters: Mapping[str, Any] | None = None,
    analyzer: bool = False,
    name: str = "algorithm",
    progress: Callable[[int], None] | None = None,
    loop_channel: Any = None,
    before_process: Callable[[], None] | None = None,
) -> RunSummary:
    """Drive ``algorithm`` (an instance of the user's ``Algorithm`` class) over its data.

    ``kind`` is the algorithm type (``legacy``, ``sequential``, ``autonomous`` or a loop
    variant).  Analyzers get ``outputs[0]`` as ``output``.  ``progress(steps_done)`` is
    called about every :data:`PROGRESS_INTERVAL` seconds while steps run (:class:`Pacer`) and
    at the end.  Raises :class:`ExecutionError` with BEAT's texts
    (``Could not setup algorithm (returned False)`` …, ``Missing data on the following
    output(s): …``); exceptions raised by user code propagate unchanged.
    """
    with collecting_less():
        return _run(algorithm, kind, inputs, data_loaders, outputs, parameters, analyzer, name, progress,
                    loop_channel, before_process)


def _run(algorithm: Any, kind: str, inputs: InputList | None, data_loaders: DataLoaderList | None,
         outputs: OutputList | None, parameters: Mapping[str, Any] | None, analyzer: bool, name: str,
         progress: Callable[[int], None] | None, loop_channel: Any,
         before_process: Callable[[], None] | None) -> RunSummary:
    _check_type(kind)
    outputs = outputs if outputs is not None else OutputList()
    loaders = data_loaders if data_loaders is not None else DataLoaderList()
    autonomous = kind in AUTONOMOUS_TYPES
    if not autonomous and (inputs is None or inputs.main_group is None):
        raise UsageError(f"{kind} algorithm `{name}' needs an InputList with a main (restricted) group")
    if analyzer and len(outputs) != 1:
        raise UsageError(f"analyzer `{name}' needs exactly one output (`result'), got {len(outputs)}")
    to_write: Any = outputs[0] if analyzer else outputs

    if hasattr(algorithm, "setup"):
        if not _call(algorithm, "setup", dict(parameters or {})):
            raise ExecutionError("Could not setup algorithm (returned False)")
    if kind != LEGACY and hasattr(algorithm, "prepare"):
        if not _call(algorithm, "prepare", loaders.secondaries() if autonomous else loaders):
            raise ExecutionError("Could not prepare algorithm (returned False)")

    pass_loop = False
    if kind != LEGACY:
        has_loop_arg = _has_argument(getattr(algorithm, "process", None), "loop_channel")
        if loop_channel is not None and not has_loop_arg:
            raise ExecutionError(f"Algorithm '{name}' is not a valid loop enabled algorithm")
        if loop_channel is None and has_loop_arg:
            raise ExecutionError(f"Algorithm '{name}' is a loop enabled algorithm but no loop_channel given")
        pass_loop = loop_channel is not None and not analyzer

    summary = RunSummary()
    result: Any = True
    if autonomous:
        main = loaders.main_loader
        if progress is not None and main is not None:  # units done: the furthest the main loader was read
            reading, high = Pacer(progress), [0]

            def read(index: int) -> None:
                if index >= high[0]:
                    high[0] = index + 1
                    if high[0] >= reading.due:
                        reading.tick(high[0])

            main.on_read = read
        result = _call(algorithm, "process", loaders, to_write, *([loop_channel] if pass_loop else []))
        if main is not None:
            main.on_read = None
        summary.steps = main.count() if main is not None else 0
        if progress is not None:
            progress(summary.steps)
    else:
        assert inputs is not None and inputs.main_group is not None
        main_group = inputs.main_group
        # BEAT loops on ``inputs.hasMoreData()`` (all groups), which crashes with "asked for
        # more data" when a legacy algorithm leaves a secondary group unread; the main group
        # is what drives the block.
        process = getattr(algorithm, "process", None)
        if process is None or not callable(process):
            raise ExecutionError("algorithm object has no `process' method")
        args: tuple
        if kind == LEGACY:
            args = (inputs, to_write)
        else:
            args = (inputs, loaders, to_write) + ((loop_channel,) if pass_loop else ())
        steps = 0
        pacer = Pacer(progress) if progress is not None else None
        if before_process is None and _single_source(main_group) is not None:
            steps, result = _drive_single(main_group, process, args, pacer)
        advance, more = main_group.platform_next, main_group.hasMoreData
        while result and more():
            advance()
            if before_process is not None:
                before_process()
            result = process(*args)
            steps += 1
            if pacer is not None and steps >= pacer.due:  # progress is cheap but not free
                pacer.tick(steps)
            if not result:
                break
        summary.steps = steps
        if progress is not None:
            progress(steps)

    for output in outputs:
        output.close()
    summary.written = {o.name: o.nb_data_blocks_written for o in outputs}
    if not result:
        raise ExecutionError("Could not run algorithm (process returned False)")
    missing = [o.name for o in outputs if o.isDataMissing()]
    if missing:
        raise ExecutionError("Missing data on the following output(s): " + ", ".join(missing))
    return summary
