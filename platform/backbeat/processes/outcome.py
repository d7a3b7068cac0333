"""What happened to a job (:class:`Outcome`), and the one way errors travel between processes.

An :class:`Outcome` is ``completed`` (with the job's statistics) or a failure kind:
``user`` (an exception in user code, with its traceback), ``system`` (backbeat or the
environment failed), ``exit`` (``sys.exit(n)`` / ``os._exit(n)``), ``signal`` (e.g. SIGSEGV,
SIGKILL), ``timeout`` or ``memory``.

Every error crossing a process boundary is :meth:`Outcome.to_json` /
:meth:`Outcome.from_json`: ``{"kind", "message", "traceback"}`` (plus ``code`` and
``statistics`` when set).  That is the body of the control channel's ``error`` message
(:mod:`backbeat.processes.control`), of the database provider's ``error`` reply
(:mod:`backbeat.runtime.dbprovider`), of the loop evaluator's ``err`` reply
(:mod:`backbeat.runtime.loopchannel`) and of a remote block's failed result
(:mod:`backbeat.execution.remote`).  Tracebacks of user code keep only the user's frames,
with paths relative to the prefix (:func:`format_user_traceback`).

:func:`classify` combines the control messages of one job with its process :class:`Exit`
(and the :class:`~backbeat.processes.exits.Limits` it ran under: memory failures name the limit).
"""

from __future__ import annotations

import errno
import linecache
import os
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backbeat.core.errors import BlockError, environmental
from backbeat.processes.exits import Exit, Limits

if TYPE_CHECKING:
    from backbeat.processes.control import Message

#: failure kinds a process reports about itself (the others are seen from outside)
REPORTED_KINDS = ("user", "system", "exit", "memory")
KINDS = ("completed", "user", "system", "exit", "signal", "timeout", "memory", "interrupted")


@dataclass(frozen=True)
class Outcome:
    """What happened to one job: ``kind`` is ``completed`` or a failure kind."""

    kind: str
    message: str
    traceback: str | None = None
    statistics: dict = field(default_factory=dict)
    exit: Exit | None = None
    code: int | None = None
    signal: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "completed"

    def error(self, block: str) -> BlockError:
        return BlockError(block, self.kind, self.message, self.traceback)

    def error_json(self) -> dict:
        """The failure as a run report shows it: ``{"kind", "message", "traceback"}``."""
        return {"kind": self.kind, "message": self.message, "traceback": self.traceback}

    def to_json(self) -> dict:
        out: dict[str, Any] = self.error_json()
        if self.code is not None:
            out["code"] = self.code
        if self.statistics:
            out["statistics"] = self.statistics
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Outcome:
        """The outcome another process sent; anything malformed is a ``system`` failure."""
        if not isinstance(obj, dict) or obj.get("kind") not in KINDS:
            return cls("system", f"malformed outcome from another process: {str(obj)[:200]}")
        tb, stats, code = obj.get("traceback"), obj.get("statistics"), obj.get("code")
        return cls(obj["kind"], str(obj.get("message", "")), tb if isinstance(tb, str) and tb else None,
                   stats if isinstance(stats, dict) else {}, code=code if isinstance(code, int) else None)


def format_user_traceback(exc: BaseException, root: str | None) -> tuple[str, str, bool]:
    """``(message, traceback, in_user_code)`` for ``exc``.

    With a ``root``, keep the frames from the first one under ``root`` onwards, with paths
    relative to ``root``; without one (or when no frame is under it) keep every frame.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    in_user = root is None
    if root:
        base = os.path.realpath(root) + os.sep
        mine = [i for i, f in enumerate(frames) if os.path.realpath(f.filename).startswith(base)]
        if mine:
            in_user = True
            # from the first frame of user code to its last one: what backbeat did below the
            # user's call (e.g. checking a written value) is said by the message itself
            frames = traceback.StackSummary.from_list(frames[mine[0]:mine[-1] + 1])
            for f in frames:
                real = os.path.realpath(f.filename)
                if real.startswith(base):
                    f.filename = os.path.relpath(real, base)
    text = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames)) + message + "\n"
    return message, text, in_user


def pointing_at(message: str, filename: str, lineno: int, function: str, root: str | None) -> Outcome:
    """A ``user`` failure blamed on one line of user code that raised nothing (e.g. the line
    returning a wrong value): its traceback is that one frame, relative to ``root`` as above."""
    real = os.path.realpath(filename)
    base = os.path.realpath(root) + os.sep if root else None
    shown = os.path.relpath(real, base) if base and real.startswith(base) else filename
    frame = traceback.FrameSummary(shown, lineno, function, line=linecache.getline(filename, lineno).strip())
    text = "Traceback (most recent call last):\n" + "".join(traceback.format_list([frame])) + message + "\n"
    return Outcome("user", message, text)


def user_error(exc: BaseException, root: str | None) -> Outcome:
    """The outcome of an exception raised while serving user code (user's, unless backbeat's own)."""
    from backbeat.core.errors import BackbeatError

    message, text, _ = format_user_traceback(exc, root)
    return Outcome("system" if isinstance(exc, BackbeatError) else "user", message, text)


_SIGNALS = {"SIGSEGV": "crashed (segmentation fault, SIGSEGV)", "SIGKILL": "was killed (SIGKILL)",
            "SIGABRT": "aborted (SIGABRT)", "SIGTERM": "was terminated (SIGTERM)"}


def _megabytes(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 10 * 2**30 else f"{n / 2**20:.0f} MB"


def _memory(exit: Exit, err: Outcome | None, limits: Limits | None) -> Outcome:
    """A memory failure, saying which limit was hit."""
    peak = exit.rusage.get("maxrss_kb") if exit.rusage else None
    if exit.oom is not None:
        limit, scope = exit.oom.get("limit"), exit.oom.get("scope")
        what = ("the machine's memory" if scope == "machine" else "the memory of its cgroup") + (
            f" ({_megabytes(limit)})" if limit else "")
        message = f"the block process was killed by the kernel's out-of-memory killer: {what} ran out"
        if peak:
            message += f" (its peak resident memory: {_megabytes(peak * 1024)})"
        return Outcome("memory", message, exit=exit, signal=exit.signal)
    message = err.message if err is not None and err.kind == "memory" and err.message else \
        "the block process ran out of memory"
    if limits is not None and limits.memory_bytes and "memory limit of" not in message:
        message += f" (over its memory limit of {_megabytes(limits.memory_bytes)})"
    return Outcome("memory", message, exit=exit)


def classify(exit: Exit, messages: list[Message], limits: Limits | None = None) -> Outcome:
    """Classify one job from its process exit and the control messages it sent (and its limits)."""
    done = next((m for m in messages if m.type == "done"), None)
    err_message = next((m for m in messages if m.type == "error"), None)
    err = Outcome.from_json(err_message.data) if err_message is not None else None
    if exit.kind == "timeout":
        return Outcome("timeout", f"the block was {exit.describe(limits.timeout_s if limits else None)}", exit=exit,
                       signal=exit.signal)
    if exit.kind == "lost":
        return Outcome("system", f"the block process was lost: its fork server died ({exit.signal})", exit=exit,
                       signal=exit.signal)
    if exit.kind == "memory" or (err is not None and err.kind == "memory"):
        return _memory(exit, err, limits)
    if err is not None and err.kind in ("user", "system"):
        return Outcome(err.kind, err.message, err.traceback, exit=exit, code=exit.code)
    if exit.kind == "signal":
        what = _SIGNALS.get(exit.signal or "", f"was killed by signal {exit.signal}")
        if limits is not None and limits.memory_bytes and exit.signal in ("SIGABRT", "SIGSEGV", "SIGBUS"):
            # a library that cannot allocate under RLIMIT_AS often aborts rather than raise
            return Outcome("memory", f"the block process {what} under its memory limit of "
                           f"{_megabytes(limits.memory_bytes)}: most likely it could not allocate memory",
                           exit=exit, signal=exit.signal)
        return Outcome("signal", f"the block process {what}", exit=exit, signal=exit.signal)
    if exit.kind == "exit":
        how = "called sys.exit" if err is not None and err.kind == "exit" else "exited"
        return Outcome("exit", f"the block process {how} with code {exit.code}", exit=exit, code=exit.code)
    if done is not None:
        stats = done.data.get("statistics")
        return Outcome("completed", "completed", statistics=stats if isinstance(stats, dict) else {}, exit=exit,
                       code=0)
    return Outcome("system", "the block process exited without reporting completion", exit=exit, code=exit.code)


#: set (to ``1``) in the environment of sandboxed processes (:func:`backbeat.processes.sandbox.environment`)
SANDBOXED = "BACKBEAT_SANDBOXED"


def environmental_failure(exc: BaseException) -> OSError | None:
    """The environmental failure behind an exception a job raised (a full disk, a read-only
    file system: :func:`~backbeat.core.errors.environmental`) — a ``system`` error, not the
    user's.  In the sandbox, a read-only file system is not one: the sandbox makes the prefix
    and the cache read-only, so the block tried to write where it may not (its own error)."""
    failure = environmental(exc)
    if failure is not None and failure.errno == errno.EROFS and os.environ.get(SANDBOXED) == "1":
        return None
    return failure
