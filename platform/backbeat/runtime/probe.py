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
the probe overlap instead of following each other: on two slots, one copy probes while the job
does its work and then probes too (never more busy processes than its slots); on three or more,
two copies probe both halves while the job does its work.

On two slots the split is not fixed (wave 13): the units are cut in chunks of
:data:`CHUNK_UNITS`; the job takes chunks from the first on, in order, the copy from the last
one back, each claiming its next chunk under a lock (a record lock on a shared memory file,
released by the kernel if the copy dies) until they meet — so the copy probes all the units the
job could not reach while it did its work, and neither waits for the other (a fixed half left
the copy idle while the job wrote its files).  The job's units are a prefix probed in order,
so its files and its failure are those of one process; the copy's count only if it completed
its units: if it stopped, the job probes the units from the chunk the copy stopped in to the
end itself, in order, after its own, and what it finds is the result (the units after that
chunk, which the copy probed first, count only as one process probing in order would count
them).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import signal
import struct
from collections.abc import Callable, Sequence
from typing import Any

#: probes with fewer calls than this run in one process (a fork costs more than it saves)
PARALLEL_UNITS = 50_000
#: units of a chunk claimed at once by the job or its copy, on two slots (at most; a 64th of the units
#: for probes under 64 chunks, so that both processes get a share)
CHUNK_UNITS = 4096

#: (output, the first entry of each of its units: a sequence of ints, or a numpy array of them, made into
#: ints a range at a time — a process probing a range never touches, so never copies, ints made for others)
Calls = Sequence[tuple[str, Any]]


def _stopped(exc: BaseException) -> str:
    return f"stopped: {type(exc).__name__}: {exc}"


def _run(get: Callable[[str, int], Any], calls: Calls, lo: int, hi: int) -> None:
    """``get(output, start)`` for calls ``lo .. hi-1`` of the flattened ``calls``."""
    at = 0
    for output, starts in calls:
        if at >= hi:  # (a negative end would slice from the end: the units of outputs after hi probed)
            break
        a, b = max(lo - at, 0), min(hi - at, len(starts))
        part = starts[a:b]
        for s in part.tolist() if hasattr(part, "tolist") else part:
            get(output, s)
        at += len(starts)


def probe(get: Callable[[str, int], Any], calls: Calls, recorder: Any, parallel: bool | None = None,
          cores: int = 0, meanwhile: Callable[[], Any] | None = None,
          in_copy: Callable[[], Any] | None = None) -> str:
    """Call ``get`` for every unit of ``calls`` while ``recorder`` watches (phase ``get``):
    ``"complete"``, or ``"stopped: <exception>"`` at the first call that raised.  ``cores``:
    how many cores the job may use (its ``-j`` slots; 0: those it may run on).  ``in_copy``: called
    in each forked copy before it probes (errors: the copy's result).  ``meanwhile``:
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
    if meanwhile is None or slots < 3:  # (the job's work, if any, then its chunks: two busy processes)
        return _shared(get, calls, recorder, total, meanwhile, in_copy)
    mid = total // 2
    halves: list[tuple[int, Any, str]] = []
    try:
        halves.append((*_fork(get, calls, recorder, 0, mid, in_copy=in_copy), "first"))
        halves.append((*_fork(get, calls, recorder, mid, total, in_copy=in_copy), "second"))
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


class _Claims:
    """Chunks ``0 .. n-1`` shared by the job (from the first on) and its copy (from the last one
    back): the next chunk of each, in a shared memory file, changed under a record lock (per
    process: the kernel releases a dead process's lock)."""

    def __init__(self, n: int):
        self.fd = os.memfd_create("backbeat-probe", os.MFD_CLOEXEC)
        os.pwrite(self.fd, struct.pack("<qq", 0, n), 0)

    def _take(self, front: bool) -> int | None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            first, last = struct.unpack("<qq", os.pread(self.fd, 16, 0))  # the chunks not claimed yet
            if first >= last:
                return None
            os.pwrite(self.fd, struct.pack("<qq", first + 1, last) if front else struct.pack("<qq", first, last - 1), 0)
            return first if front else last - 1
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def first(self) -> int | None:
        """The next chunk of the job (None: all claimed)."""
        return self._take(True)

    def last(self) -> int | None:
        """The next chunk of the copy (None: all claimed)."""
        return self._take(False)

    def close(self) -> None:
        os.close(self.fd)


def _shared(get: Callable[[str, int], Any], calls: Calls, recorder: Any, total: int,
            meanwhile: Callable[[], Any] | None, in_copy: Callable[[], Any] | None = None) -> str:
    """The probe on two slots: a copy takes chunks from the last one back at once, the job from the
    first on after its work (see the module docstring)."""
    size = max(1, min(CHUNK_UNITS, total // 64))
    n = -(-total // size)
    claims = _Claims(n)
    copy: tuple[int, Any] | None = None
    try:
        copy = _fork(get, calls, recorder, 0, total, claims, size, in_copy)
        if meanwhile is not None:
            meanwhile()
        try:
            with recorder.watch("get"):
                while (k := claims.first()) is not None:
                    _run(get, calls, k * size, min(total, (k + 1) * size))
        except Exception as exc:  # noqa: BLE001 - the probe stops here, as it would in one process
            return _stopped(exc)
        pid, reader = copy
        copy = None
        part = _collect(pid, reader, "second", recorder, add=False)
        if isinstance(part, str):  # (the copy ended without answering)
            return part
        if part["probe"] == "complete":
            for label, what in part["seen"].items():
                recorder.seen.setdefault(label, what)
            return "complete"
        try:  # the copy stopped: the units from its chunk on, in order, here (its files do not count)
            with recorder.watch("get"):
                _run(get, calls, int(part["from"]), total)
        except Exception as exc:  # noqa: BLE001
            return _stopped(exc)
        return "complete"  # (a view that failed in the copy only: what one process in order gives)
    finally:  # interrupted (a signal), failed or stopped early: the copy is stopped, not waited for
        if copy is not None:
            pid, reader = copy
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            reader.close()
            os.waitpid(pid, 0)
        claims.close()


def _fork(get: Callable[[str, int], Any], calls: Calls, recorder: Any, lo: int, hi: int,
          claims: _Claims | None = None, size: int = 0, in_copy: Callable[[], Any] | None = None) -> tuple[int, Any]:
    """A copy of this process probing calls ``lo .. hi-1`` (or, given ``claims``, the chunks of
    ``size`` calls it claims from the last one back; ``in_copy`` called in it first): its pid and
    the pipe it answers on."""
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
            result, at = "complete", lo
            try:
                if in_copy is not None:
                    try:
                        in_copy()
                    except Exception:  # noqa: BLE001, S110 - only a saving: the view's own entries kept
                        pass
                with recorder.watch("get"):
                    if claims is None:
                        _run(get, calls, lo, hi)
                    else:
                        while (k := claims.last()) is not None:
                            at = k * size
                            _run(get, calls, at, min(hi, at + size))
            except Exception as exc:  # noqa: BLE001
                result = _stopped(exc)
            with os.fdopen(write, "w", encoding="utf-8") as f:
                json.dump({"seen": recorder.seen, "probe": result, "from": at}, f)
            code = 0
        finally:
            os._exit(code)
    gc.unfreeze()
    os.close(write)
    return pid, os.fdopen(read, "r", encoding="utf-8")


def _collect(pid: int, reader: Any, which: str, recorder: Any, add: bool = True) -> Any:
    """What the copy ``pid`` probed (the ``which`` half): its files added to ``recorder``, its result
    (``add`` False: what it answered, its files not added; a str if it ended without answering)."""
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
    if not add:
        return part
    for label, what in part["seen"].items():
        recorder.seen.setdefault(label, what)
    return str(part["probe"])


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
