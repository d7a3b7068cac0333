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

A job with work of its own that the probe does not need (``meanwhile``: writing the index
files, which the keys need as well) does that work while a copy probes, so that the work and
the probe overlap instead of following each other: on two slots, one copy probes the second
half while the job does its work and then probes the first half (never more busy processes
than its slots); on three or more, two copies probe both halves while the job does its work.
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
          cores: int = 0, meanwhile: Callable[[], Any] | None = None) -> str:
    """Call ``get`` for every unit of ``calls`` while ``recorder`` watches (phase ``get``):
    ``"complete"``, or ``"stopped: <exception>"`` at the first call that raised.  ``cores``:
    how many cores the job may use (its ``-j`` slots; 0: those it may run on).  ``meanwhile``:
    called once, before the probe in one process, or while the copies probe (what it raises is
    raised, the copies killed and reaped)."""
    total = sum(len(starts) for _, starts in calls)
    usable = len(os.sched_getaffinity(0))
    slots = min(usable, cores or usable)
    if parallel is None:
        parallel = total >= PARALLEL_UNITS and slots >= 2
    if not parallel:
        if meanwhile is not None:
            meanwhile()
        try:
            with recorder.watch("get"):
                _run(get, calls, 0, total)
        except Exception as exc:  # noqa: BLE001 - the files opened until then are recorded
            return _stopped(exc)
        return "complete"
    mid = total // 2
    halves: list[tuple[int, Any, str]] = []
    try:
        if meanwhile is None or slots < 3:  # (the job's work, if any, then the first half: two busy processes)
            halves.append((*_fork(get, calls, recorder, mid, total), "second"))
            if meanwhile is not None:
                meanwhile()
            try:
                with recorder.watch("get"):
                    _run(get, calls, 0, mid)
            except Exception as exc:  # noqa: BLE001 - the probe stops here, as it would in one process
                return _stopped(exc)
        else:
            halves.append((*_fork(get, calls, recorder, 0, mid), "first"))
            halves.append((*_fork(get, calls, recorder, mid, total), "second"))
            meanwhile()
        result = "complete"
        while halves and result == "complete":  # in order: a half's files count if those before completed
            result = _collect(*halves.pop(0), recorder)
        return result
    finally:  # interrupted (a signal), failed or stopped early: the halves left are stopped, not waited for
        for pid, reader, _which in halves:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            reader.close()
            os.waitpid(pid, 0)


def _fork(get: Callable[[str, int], Any], calls: Calls, recorder: Any, lo: int, hi: int) -> tuple[int, Any]:
    """A copy of this process probing calls ``lo .. hi-1``: its pid and the pipe it answers on."""
    read, write = os.pipe()
    gc.freeze()  # the copy's collector never walks (and so never copies) the objects it inherits
    try:
        pid = os.fork()
    except BaseException:
        gc.unfreeze()
        os.close(read)
        os.close(write)
        raise
    if pid == 0:  # in the copy: only os._exit leaves it
        code = 1
        try:
            os.close(read)
            result = "complete"
            try:
                with recorder.watch("get"):
                    _run(get, calls, lo, hi)
            except Exception as exc:  # noqa: BLE001
                result = _stopped(exc)
            with os.fdopen(write, "w", encoding="utf-8") as f:
                json.dump({"seen": recorder.seen, "probe": result}, f)
            code = 0
        finally:
            os._exit(code)
    gc.unfreeze()
    os.close(write)
    return pid, os.fdopen(read, "r", encoding="utf-8")


def _collect(pid: int, reader: Any, which: str, recorder: Any) -> str:
    """What the copy ``pid`` probed (the ``which`` half): its files added to ``recorder``, its result."""
    try:
        raw = reader.read()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise
    finally:
        reader.close()
        _pid, status = os.waitpid(pid, 0)
    if not raw:
        return f"stopped: the process probing the {which} half of the units ended ({_ended(status)})"
    part = json.loads(raw)
    for label, what in part["seen"].items():
        recorder.seen.setdefault(label, what)
    return str(part["probe"])


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
