"""ZeroMQ control channel between the executor and its block processes.

The executor owns one :class:`ControlServer` (through :class:`~backbeat.processes.group.ProcessGroup`):
a ROUTER socket bound to ``ipc://<private 0700 dir>/control``.  Each block process (a child
of the :class:`~backbeat.processes.workerpool.ForkServer`) runs :func:`job_main`, which opens a
:class:`ControlClient` (DEALER, on the child's own zmq context, :mod:`~backbeat.processes.zmqcontext`),
sends ``start``, calls the job target, and reports ``done`` (statistics) or ``error``.

Messages are single JSON frames (never pickle), always ``{"type", "job", "token", ...}``:

* ``start``    — ``pid``
* ``progress`` — ``done``, ``total`` (rate limited on the sender, order preserved; none from a job that
  ends within the interval: its ``done`` says it all)
* ``done``     — ``statistics`` (dict)
* ``error``    — an :class:`~backbeat.processes.outcome.Outcome` as JSON: ``kind`` (``"user"``,
  ``"system"``, ``"exit"`` with ``code``, ``"memory"``), ``message``, ``traceback`` (str; paths
  relative to the payload's ``root``)

Messages are authenticated per job: :meth:`ControlServer.register` gives each job a secret
token (it travels in the job's payload, so only that job's process knows it), and on Linux
the kernel tells who connected (``SO_PEERCRED``, which ZeroMQ exposes as the frame's
``Peer-Address``): a message is accepted only if its token is its job's and, when the job's
pid is known (``pid_of``), it comes from that process.  Anything else — a block naming another
job, a process that is no job — is refused and kept in :attr:`ControlServer.refused`.

The server answers ``done`` and ``error`` with an ``ack`` frame from inside :meth:`poll`,
and the block process waits for it (≤ 5 s) before exiting: when the executor sees a
process exit, that job's final message has already been returned by ``poll``.  So the
executor must keep calling ``poll`` while jobs run (it does, to see progress).

:func:`backbeat.processes.outcome.classify` combines the messages of one job with its
process exit into an outcome.
"""

from __future__ import annotations

import contextlib
import hmac
import importlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import zmq

from backbeat.core.errors import (
    BackbeatError,
    UsageError,
    UserCodeError,
    describe_environmental,
)
from backbeat.processes import reaper, zmqcontext
from backbeat.processes.controlfolders import socket_parent
from backbeat.processes.exits import EXIT_BOOT, EXIT_MEMORY
from backbeat.processes.outcome import REPORTED_KINDS, Outcome, environmental_failure, format_user_traceback
from backbeat.processes.zygote import MemoryLimitTooLow, apply_memory_limit, split_target

TYPES = ("start", "progress", "done", "error")
ACK = b'{"type": "ack"}'
#: refused messages kept (the others are only counted)
REFUSED_KEPT = 100

#: the client of the current block process (set by :func:`job_main`), see :func:`client`
_CURRENT: ControlClient | None = None


@dataclass(frozen=True)
class Message:
    """One control message; ``data`` holds every field besides ``type`` and ``job``."""

    type: str
    job: str
    data: dict = field(default_factory=dict)
    received: float = 0.0


def _decode(frame: bytes) -> tuple[Message, str] | None:
    """The message in a frame and the token it carries (None if it is no message)."""
    try:
        obj = json.loads(frame)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or obj.get("type") not in TYPES or not isinstance(obj.get("job"), (str, int)):
        return None
    token = obj.get("token")
    data = {k: v for k, v in obj.items() if k not in ("type", "job", "token")}
    return Message(obj["type"], str(obj["job"]), data, time.monotonic()), token if isinstance(token, str) else ""


def _peer_pid(frame: zmq.Frame) -> int | None:
    """The pid of the process that sent ``frame`` over ``ipc://`` (``SO_PEERCRED``), if known."""
    try:
        address = frame.get("Peer-Address")
    except (zmq.ZMQError, AttributeError, TypeError):
        return None
    tail = str(address or "").rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() and int(tail) > 0 else None


class ControlServer:
    """Executor side: ROUTER on ``ipc://<private dir>/control`` (0700 directory, made in ``dirpath``,
    default :func:`socket_parent`).

    Create it *after* :meth:`ForkServer.start` (the zygote must not inherit a Context).  Its
    folder is named after this process (``bb-ctl-<pid>-…``; those of dead processes are removed
    when a :class:`~backbeat.processes.group.ProcessGroup` is made: :func:`sweep_folders`).
    ``pid_of(job)``: the pid of a job's process once known (messages from any other process are refused).
    """

    def __init__(self, dirpath: str | None = None, pid_of: Callable[[str], int | None] | None = None) -> None:
        self._dir = tempfile.mkdtemp(prefix=f"bb-ctl-{os.getpid()}-", dir=dirpath or socket_parent())
        os.chmod(self._dir, 0o700)
        path = os.path.join(self._dir, "control")
        if len(path.encode()) > 100:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise UsageError(f"control socket path too long for ipc:// ({path})")
        self._sock = zmqcontext.acquire().socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(f"ipc://{path}")
        self._address = f"ipc://{path}"
        self.rejected = 0  # malformed frames dropped
        #: messages refused (first :data:`REFUSED_KEPT`): ``{"job", "type", "pid", "reason"}``
        self.refused: list[dict] = []
        self.refused_count = 0
        self.pid_of = pid_of
        self._tokens: dict[str, str] = {}
        self._poller: zmq.Poller | None = None
        self._poller_fd: tuple[int, ...] | None = None

    def register(self, job: str) -> str:
        """A new secret token for ``job``; only messages carrying it are accepted as ``job``'s."""
        token = secrets.token_hex(16)
        self._tokens[str(job)] = token
        return token

    def _refuse(self, msg: Message, pid: int | None, reason: str) -> None:
        self.refused_count += 1
        if len(self.refused) < REFUSED_KEPT:
            self.refused.append({"job": msg.job, "type": msg.type, "pid": pid, "reason": reason})

    def _check(self, msg: Message, token: str, frame: zmq.Frame) -> bool:
        expected = self._tokens.get(msg.job)
        pid = _peer_pid(frame)
        if expected is None:
            self._refuse(msg, pid, "no such job")
            return False
        if not hmac.compare_digest(expected, token):
            self._refuse(msg, pid, "not the job's token")
            return False
        if pid is not None and self.pid_of is not None:
            owner = self.pid_of(msg.job)
            if owner is not None and owner != pid:
                self._refuse(msg, pid, "not sent by the job's process")
                return False
        return True

    @property
    def address(self) -> str:
        return self._address

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def socket(self) -> zmq.Socket:
        """The ROUTER socket, for callers that multiplex with ``zmq.Poller``."""
        return self._sock

    def poll(self, timeout_ms: int = 0, wake: int | Sequence[int] | None = None) -> list[Message]:
        """Messages available within ``timeout_ms`` (all queued ones, in arrival order).

        ``wake``: file descriptor(s) that also end the wait when readable (the fork
        servers', which report process exits), so that callers react at once.
        """
        out: list[Message] = []
        fds = () if wake is None else (wake,) if isinstance(wake, int) else tuple(wake)
        if not fds:
            if not self._sock.poll(timeout_ms, zmq.POLLIN):
                return out
        else:
            if self._poller is None or self._poller_fd != fds:
                self._poller, self._poller_fd = zmq.Poller(), fds
                self._poller.register(self._sock, zmq.POLLIN)
                for fd in fds:
                    self._poller.register(fd, zmq.POLLIN)
            if self._sock not in dict(self._poller.poll(timeout_ms)):
                return out
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return out
            decoded = _decode(frames[-1].bytes) if len(frames) == 2 else None
            if decoded is None:
                self.rejected += 1
                continue
            msg, token = decoded
            if not self._check(msg, token, frames[-1]):
                continue
            out.append(msg)
            if msg.type in ("done", "error"):
                try:  # the block process waits for this before exiting (see ControlClient.close)
                    self._sock.send_multipart([frames[0].bytes, ACK], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close(0)
            zmqcontext.release()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ControlClient:
    """Block side: DEALER connected to the executor's :class:`ControlServer`."""

    def __init__(self, address: str, job_id: str | int, token: str = "", min_interval_s: float = 0.1) -> None:
        self.job = str(job_id)
        self._token = token
        self._sock = zmqcontext.acquire().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.SNDTIMEO, 5000)
        self._sock.connect(address)
        self._interval = min_interval_s
        self._last = self._started = time.monotonic()  # a block ending within an interval reports no progress
        self._pending: tuple[int, int | None] | None = None
        self.finished = False
        self.acknowledged = False

    def _send(self, obj: dict, block: bool = True) -> None:
        obj = {"type": obj.pop("type"), "job": self.job, "token": self._token, **obj}
        try:
            self._sock.send(json.dumps(obj).encode(), 0 if block else zmq.NOBLOCK)
        except zmq.Again:
            pass

    def start(self) -> None:
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
        self._pending = None  # (what it would say, ``done`` says)
        self._send({"type": "done", "statistics": statistics or {}})
        self.finished = True

    def error(self, failure: Outcome) -> None:
        """Report the job's failure (kinds a process reports about itself: ``REPORTED_KINDS``)."""
        if failure.kind not in REPORTED_KINDS:
            raise UsageError(f"unknown error kind `{failure.kind}'")
        self._flush_progress()
        self._send({"type": "error", **failure.to_json()})
        self.finished = True

    def wait_ack(self, timeout_ms: int = 5000) -> bool:
        """Wait until the server has *received* our ``done``/``error`` (it acknowledges both).

        So once the process exit is seen by the executor, the final message is already in
        its hands: no race between the zygote's exit report and the control socket.
        """
        if not self.finished or self.acknowledged or self._sock.closed:
            return self.acknowledged
        deadline = time.monotonic() + timeout_ms / 1000
        while (left := deadline - time.monotonic()) > 0:
            if not self._sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                break
            if self._sock.recv() == ACK:
                self.acknowledged = True
                break
        return self.acknowledged

    def close(self, linger_ms: int = 2000, ack_timeout_ms: int = 5000) -> None:
        """Close after the final message was acknowledged (or ``ack_timeout_ms``), lingering
        up to ``linger_ms`` for queued messages."""
        if not self._sock.closed:
            self.wait_ack(ack_timeout_ms)
            self._sock.close(linger_ms)
            zmqcontext.release()


def client() -> ControlClient | None:
    """The control client of the current block process (``None`` outside :func:`job_main`)."""
    return _CURRENT


# --------------------------------------------------------------------------- child side

def run_job(target: str, payload: dict) -> int:
    """Run ``target(payload)`` reporting over the control channel; return the exit code.

    ``payload["control"]`` is the server address, ``payload["job"]`` the job id and
    ``payload["token"]`` its secret; ``payload["root"]`` (optional) is the root of user code
    for tracebacks.  The process's memory limit is applied once the channel is open
    (:func:`~backbeat.processes.zygote.apply_memory_limit`), so running out of memory is
    reported.  An exception escaping the target is a ``"user"`` error unless it has
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
        cc.start()
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


job_main.applies_memory_limit = True  # type: ignore[attr-defined]  # after opening its channel
