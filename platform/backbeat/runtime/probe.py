"""Reading every data unit of a view once while it is indexed (the *probe*), on two cores.

An indexing job calls the view's ``get`` for every unit of every output, values discarded,
to learn which files ``get`` opens (:class:`~backbeat.runtime.dependencies.OpenRecorder`):
they enter the dataset's data manifest, hence its keys.  For a large index this is the
longest part of indexing and it is on the critical path of a cold run (no block can start
before the keys are known), so with :data:`PARALLEL_UNITS` units or more and two usable
cores — and two of the run's ``-j`` slots for this job (``cores``) — the calls are split in
two contiguous halves: a forked copy of the job probes the second half while the job probes
the first, and sends back what its view opened.  Interrupted (a signal), the job kills its
copy and reaps it: it never waits for the second half.

The result is what one process probing in order gives: the files opened are the union of
both halves' (the recorder's entries are keyed by file; their order does not enter the
manifest, which is canonical JSON), and if ``get`` raises, the probe stops at the first
failing call in order — the second half's files count only when the first half completed.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any

#: probes with fewer calls than this run in one process (a fork costs more than it saves)
PARALLEL_UNITS = 50_000

Calls = Sequence[tuple[str, Sequence[int]]]  # (output, the first entry of each of its units)


def _stopped(exc: BaseException) -> str:
    return f"stopped: {type(exc).__name__}: {exc}"


def _run(get: Callable[[str, int], Any], calls: Calls, lo: int, hi: int) -> None:
    """``get(output, start)`` for calls ``lo .. hi-1`` of the flattened ``calls``."""
    at = 0
    for output, starts in calls:
        a, b = max(lo - at, 0), min(hi - at, len(starts))
        for s in starts[a:b]:
            get(output, s)
        at += len(starts)


def probe(get: Callable[[str, int], Any], calls: Calls, recorder: Any, parallel: bool | None = None,
          cores: int = 0) -> str:
    """Call ``get`` for every unit of ``calls`` while ``recorder`` watches (phase ``get``):
    ``"complete"``, or ``"stopped: <exception>"`` at the first call that raised.  ``cores``:
    how many cores the job may use (its ``-j`` slots; 0: those it may run on)."""
    total = sum(len(starts) for _, starts in calls)
    if parallel is None:
        usable = len(os.sched_getaffinity(0))
        parallel = total >= PARALLEL_UNITS and min(usable, cores or usable) >= 2
    if not parallel:
        try:
            with recorder.watch("get"):
                _run(get, calls, 0, total)
        except Exception as exc:  # noqa: BLE001 - the files opened until then are recorded
            return _stopped(exc)
        return "complete"
    mid = total // 2
    read, write = os.pipe()
    gc.freeze()  # the copy's collector never walks (and so never copies) the objects it inherits
    try:
        pid = os.fork()
    except BaseException:
        gc.unfreeze()
        raise
    if pid:
        gc.unfreeze()
    if pid == 0:  # the second half, in a copy of this process: only os._exit leaves it
        code = 1
        try:
            os.close(read)
            result = "complete"
            try:
                with recorder.watch("get"):
                    _run(get, calls, mid, total)
            except Exception as exc:  # noqa: BLE001
                result = _stopped(exc)
            with os.fdopen(write, "w", encoding="utf-8") as f:
                json.dump({"seen": recorder.seen, "probe": result}, f)
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    reader = os.fdopen(read, "r", encoding="utf-8")
    try:
        try:
            with recorder.watch("get"):
                _run(get, calls, 0, mid)
        except Exception as exc:  # noqa: BLE001 - the probe stops here, as it would in one process
            os.kill(pid, signal.SIGKILL)
            return _stopped(exc)
        raw = reader.read()
    except BaseException:  # interrupted (a signal): the second half is stopped, not waited for
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise
    finally:
        reader.close()
        _pid, status = os.waitpid(pid, 0)
    if not raw:
        return f"stopped: the process probing the second half of the units ended ({_ended(status)})"
    second = json.loads(raw)
    for label, what in second["seen"].items():
        recorder.seen.setdefault(label, what)
    return str(second["probe"])


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
