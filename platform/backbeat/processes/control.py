"""The control channel between the executor and its block processes.

The executor owns one :class:`ControlServer` (through :class:`~backbeat.processes.group.ProcessGroup`):
a Unix stream socket listening at ``<private 0700 dir>/control`` (its address is written
``ipc://<path>``).  Each block process (a child of the
:class:`~backbeat.processes.workerpool.ForkServer`) runs :func:`job_main`, which connects a
:class:`ControlClient`, calls the job target, and reports ``done`` (statistics) or ``error``.
Neither end uses ZeroMQ: one connection a block, no I/O thread, no handshake, no acknowledgement.

Messages are length-prefixed JSON frames (4 bytes, big-endian, then the JSON text; never pickle),
always ``{"type", "job", "token", ...}``:

* ``progress`` — ``done``, ``total`` (rate limited on the sender, order preserved; none from a job that
  ends within the interval: its ``done`` says it all)
* ``done``     — ``statistics`` (dict)
* ``error``    — an :class:`~backbeat.processes.outcome.Outcome` as JSON: ``kind`` (``"user"``,
  ``"system"``, ``"exit"`` with ``code``, ``"memory"``), ``message``, ``traceback`` (str; paths
  relative to the payload's ``root``)
* ``start``    — ``pid``: accepted, but a block no longer sends it (until wave 12 each block did:
  it carried nothing the executor used — the sender's pid is the kernel's, below)

Messages are authenticated per job: :meth:`ControlServer.register` gives each job a secret
token (it travels in the job's payload, so only that job's process knows it), and the kernel
tells who connected (``SO_PEERCRED`` of the connection, read once as it is accepted): a
message is accepted only if its token is its job's and, when the job's pid is known
(``pid_of``), it comes from that process.  Anything else — a block naming another job, a
process that is no job — is refused and kept in :attr:`ControlServer.refused`.  What a
hostile block can do to the executor's end (malformed or huge frames, many connections) is
bounded: :mod:`~backbeat.processes.controlserver`.

Ordering without an acknowledgement: a Unix stream socket queues what a process sends on its
peer's end as the send returns, so once a block's ``done``/``error`` was sent (the block then
exits), the executor finds it there whenever it looks — even on a connection it has not
accepted yet.  When the executor sees a process exit, :meth:`ProcessGroup.outcome
<backbeat.processes.group.ProcessGroup.outcome>` reads what that process left before it
classifies (:meth:`ControlServer.settle`: its connections, read on until nothing more is
queued).  A sender blocks (≤ 5 s a message) while the executor's end of its connection is
full; a ``progress`` message is dropped rather than wait when its connection is open and full
(the last one, flushed before an ``error``, waits).  A frame holds at most :data:`MAX_FRAME` bytes: an error's
message and traceback are cut to :data:`ERROR_TEXT` characters each, and statistics larger than
that are reported as a ``system`` error.

:func:`backbeat.processes.outcome.classify` combines the messages of one job with its
process exit into an outcome.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import socket
import struct
import sys
import time
import traceback

from backbeat.core.errors import (
    BackbeatError,
    UsageError,
    UserCodeError,
    describe_environmental,
)
from backbeat.processes import reaper
from backbeat.processes.controlserver import (  # noqa: F401 - the executor's end, named here too
    FINAL,
    MAX_FRAME,
    REFUSED_KEPT,
    TYPES,
    ControlServer,
    Message,
    frame,
    path_of,
)
from backbeat.processes.exits import EXIT_BOOT, EXIT_MEMORY
from backbeat.processes.outcome import REPORTED_KINDS, Outcome, environmental_failure, format_user_traceback
from backbeat.processes.zygote import MemoryLimitTooLow, apply_memory_limit, split_target

#: seconds a block waits to connect or to hand over one message (the executor reads while jobs run)
SEND_TIMEOUT_S = 5.0
#: characters of an error's message and of its traceback sent at most (the middle is cut)
ERROR_TEXT = 256 << 10
_TIMEVAL = struct.Struct("ll")  # struct timeval: seconds, microseconds

#: the client of the current block process (set by :func:`job_main`), see :func:`client`
_CURRENT: ControlClient | None = None


def _cut(text: str | None, limit: int = ERROR_TEXT) -> str | None:
    """``text`` with its middle cut if it is longer than ``limit`` characters."""
    if text is None or len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[… {len(text) - 2 * half} characters cut …]\n{text[-half:]}"


class ControlClient:
    """Block side: one connection to the executor's :class:`ControlServer`."""

    def __init__(self, address: str, job_id: str | int, token: str = "", min_interval_s: float = 0.1) -> None:
        self.job = str(job_id)
        self.address = address
        self._token = token
        # every message starts alike: its job and token, encoded once
        self._head = json.dumps({"job": self.job, "token": token})[:-1].encode() + b", "
        self._sock: socket.socket | None = None  # connected at the first message (the executor then
        # finds the connection and the message together: one wake-up, not one for each)
        self._closed = False
        self._interval = min_interval_s
        self._last = self._started = time.monotonic()  # a block ending within an interval reports no progress
        self._pending: tuple[int, int | None] | None = None
        self.finished = False

    def _send(self, obj: dict, block: bool = True) -> bool:
        """Send one message (``{"type", ...}``); ``block=False``: dropped if the executor's end is
        full.  False (nothing sent) if its text is longer than :data:`MAX_FRAME`."""
        if self._closed:
            return True
        text = self._head + json.dumps(obj).encode()[1:]
        if len(text) > MAX_FRAME:
            return False
        try:
            if self._sock is None:
                self._sock = self._connect()
            elif not block and not _writable(self._sock):
                return True
            self._sock.sendall(frame(text), socket.MSG_NOSIGNAL)
        except OSError:  # the executor is gone, or read nothing for SEND_TIMEOUT_S: nothing more is sent
            self.close()
        return True

    def _connect(self) -> socket.socket:
        """A blocking socket whose sends (and connect, while the executor's backlog is full) give
        up after :data:`SEND_TIMEOUT_S` — the kernel's timeout (``SO_SNDTIMEO``): no ``poll`` before
        each system call, as a Python socket timeout would make."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL.pack(int(SEND_TIMEOUT_S), 0))
            sock.connect(path_of(self.address))
        except OSError:
            sock.close()
            raise
        return sock

    def start(self) -> None:
        """(Not sent by :func:`run_job` any more: see the module docstring.)"""
        self._send({"type": "start", "pid": os.getpid()})

    def progress(self, done: int, total: int | None) -> None:
        """Report ``done`` of ``total`` units (None: not known yet); sent at most every
        ``min_interval_s`` (last one kept), the first one ``min_interval_s`` after the start: a
        job ending sooner sends none (its ``done`` says it all: in a chain of small blocks, a
        message less for each block to send and for the executor to read, check and display)."""
        now = time.monotonic()
        total = None if total is None else int(total)
        if now - self._last >= self._interval or (total is not None and done >= total
                                                   and now - self._started >= self._interval):
            self._pending = None
            self._last = now
            self._send({"type": "progress", "done": int(done), "total": total}, block=False)
        else:
            self._pending = (int(done), total)

    def _flush_progress(self) -> None:
        if self._pending is not None:
            done, total = self._pending
            self._pending = None
            self._send({"type": "progress", "done": done, "total": total})

    def done(self, statistics: dict | None = None) -> None:
        """Report the job's statistics: more than the channel carries (:data:`MAX_FRAME` as
        JSON) are reported as a ``system`` error instead, saying so."""
        self._pending = None  # (what it would say, ``done`` says)
        if not self._send({"type": "done", "statistics": statistics or {}}):
            size = len(json.dumps(statistics))
            self._send({"type": "error", **Outcome(
                "system", f"the job's statistics are {size} bytes of JSON, more than the control channel "
                f"carries ({MAX_FRAME} bytes)").to_json()})
        self.finished = True

    def error(self, failure: Outcome) -> None:
        """Report the job's failure (kinds a process reports about itself: ``REPORTED_KINDS``)."""
        if failure.kind not in REPORTED_KINDS:
            raise UsageError(f"unknown error kind `{failure.kind}'")
        self._flush_progress()
        limit = ERROR_TEXT
        while True:  # (cut by characters; a character may take up to 12 bytes in JSON: cut more till it fits)
            cut = Outcome(failure.kind, _cut(failure.message, limit) or "", _cut(failure.traceback, limit),
                          failure.statistics, code=failure.code)
            if self._send({"type": "error", **cut.to_json()}) or limit < 64:
                break
            limit //= 4
            if limit < 64:  # (its statistics alone are too big: the error without them)
                failure = Outcome(failure.kind, failure.message, failure.traceback, code=failure.code)
        self.finished = True

    def close(self) -> None:
        """Close the connection: what was sent is already queued on the executor's end."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()


def _writable(sock: socket.socket) -> bool:
    """Whether ``sock`` can be written to without waiting (``poll``: any descriptor number)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    return bool(poller.poll(0))


def client() -> ControlClient | None:
    """The control client of the current block process (``None`` outside :func:`job_main`)."""
    return _CURRENT


# --------------------------------------------------------------------------- child side

def run_job(target: str, payload: dict) -> int:
    """Run ``target(payload)`` reporting over the control channel; return the exit code.

    ``payload["control"]`` is the server address, ``payload["job"]`` the job id and
    ``payload["token"]`` its secret; ``payload["root"]`` (optional) is the root of user code
    for tracebacks.  The process's memory limit is applied before the target runs
    (:func:`~backbeat.processes.zygote.apply_memory_limit`; the channel connects lazily, at the
    first message), and running out of memory is reported (the connection needs little memory).  An exception escaping the target is a ``"user"`` error unless it has
    ``error_kind = "system"`` or the environment failed (a full disk, a read-only file
    system: :func:`~backbeat.processes.outcome.environmental_failure`).  The target may call :func:`client`
    to send progress; if it returns a dict and has not reported ``done`` itself, the dict is
    sent as the statistics.
    """
    global _CURRENT
    cc = ControlClient(payload["control"], payload.get("job", "?"), payload.get("token", ""))
    _CURRENT = cc
    code = 0
    try:
        try:
            module, func = split_target(target)
            fn = getattr(importlib.import_module(module), func)
        except BaseException as e:  # noqa: BLE001
            message, text, _ = format_user_traceback(e, None)
            cc.error(Outcome("system", f"cannot load job target `{target}': {message}", text))
            return EXIT_BOOT
        try:
            apply_memory_limit()
            result = fn(payload)
        except SystemExit as e:
            code = 0 if e.code is None else (e.code & 0xFF if isinstance(e.code, int) else 1)
            if code == 0:
                result = None
            else:
                cc.error(Outcome("exit", f"the block called sys.exit({e.code!r})", "", code=code))
                return code
        except MemoryError as e:
            try:
                what = "" if isinstance(e, MemoryLimitTooLow) else "the block process ran out of memory"
                try:
                    detail = str(e)  # (numpy's says how much it could not allocate)
                except Exception:  # noqa: BLE001
                    detail = ""
                cc.error(Outcome("memory", f"{what}: {detail}" if what and detail else what or detail))
            finally:
                code = EXIT_MEMORY
            return code
        except UserCodeError as e:  # user code failed in another process: report its traceback
            cc.error(Outcome("user", e.message, e.traceback))
            return 1
        except BaseException as e:  # noqa: BLE001 - every failure must be reported
            failure = environmental_failure(e)
            if failure is not None:  # the machine failed, not the user's code
                cc.error(Outcome("system", describe_environmental(failure)))
                return 1
            message, text, in_user = format_user_traceback(e, payload.get("root"))
            if isinstance(e, BackbeatError) and not in_user:
                message, text = str(e), ""  # backbeat's verdict on the user's code ("returned False")
            kind = getattr(e, "error_kind", "user")  # infrastructure code may raise "system" errors
            cc.error(Outcome(kind if kind in ("user", "system") else "user", message, text))
            return 1
        if not cc.finished:
            try:
                cc.done(result if isinstance(result, dict) else {})
            except (TypeError, ValueError) as e:
                cc.error(Outcome("user", f"the job returned statistics that are not JSON-serialisable: {e}"))
                return 1
        return 0
    finally:
        _CURRENT = None
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
        cc.close()


def job_main(payload: dict) -> None:
    """ForkServer entry point ``backbeat.control:job_main``: ``run_job(payload["target"], payload)``.

    Always leaves through ``os._exit`` once the last control message has been delivered,
    killing whatever the job started (it is a child subreaper: :mod:`~backbeat.processes.reaper`).
    """
    code = EXIT_BOOT
    try:
        code = run_job(payload["target"], payload)
    except MemoryError:
        code = EXIT_MEMORY
    except BaseException:  # noqa: BLE001 - e.g. no "control" address in the payload
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            reaper.kill_descendants()
        os._exit(code)


job_main.applies_memory_limit = True  # type: ignore[attr-defined]  # (in run_job, before the target runs)
