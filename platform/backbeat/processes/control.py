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
process that is no job — is refused and kept in :attr:`ControlServer.refused`.

Ordering without an acknowledgement: a Unix stream socket queues what a process sends on its
peer's end as the send returns, so once a block's ``done``/``error`` was sent (the block then
exits), the executor finds it there whenever it looks — even on a connection it has not
accepted yet.  When the executor sees a process exit, the next :meth:`ControlServer.poll` (every
connection pending or readable is read, to its end) returns that job's final message:
:meth:`ProcessGroup.outcome <backbeat.processes.group.ProcessGroup.outcome>` polls before it
classifies.  A sender blocks (≤ 5 s a message) while the executor's end of its connection is
full; a ``progress`` message is dropped rather than wait.

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
import select
import shutil
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from backbeat.core.errors import (
    BackbeatError,
    UsageError,
    UserCodeError,
    describe_environmental,
)
from backbeat.processes import reaper
from backbeat.processes.controlfolders import socket_parent
from backbeat.processes.exits import EXIT_BOOT, EXIT_MEMORY
from backbeat.processes.outcome import REPORTED_KINDS, Outcome, environmental_failure, format_user_traceback
from backbeat.processes.zygote import MemoryLimitTooLow, apply_memory_limit, split_target

TYPES = ("start", "progress", "done", "error")
FINAL = ("done", "error")  # a job's last message: its connection is closed once one is read
#: refused messages kept (the others are only counted)
REFUSED_KEPT = 100
#: a frame announcing more than this is malformed: its connection is dropped
MAX_FRAME = 1 << 30
#: seconds a block waits to connect or to hand over one message (the executor reads while jobs run)
SEND_TIMEOUT_S = 5.0
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_TIMEVAL = struct.Struct("ll")  # struct timeval: seconds, microseconds
_HUP = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)

#: the client of the current block process (set by :func:`job_main`), see :func:`client`
_CURRENT: ControlClient | None = None


@dataclass(frozen=True)
class Message:
    """One control message; ``data`` holds every field besides ``type`` and ``job``."""

    type: str
    job: str
    data: dict = field(default_factory=dict)
    received: float = 0.0


def frame(text: bytes) -> bytes:
    """``text`` as one frame of the channel (its length, then itself)."""
    return len(text).to_bytes(4, "big") + text


def path_of(address: str) -> str:
    """The socket path of a control address (``ipc://<path>``)."""
    return address[6:] if address.startswith("ipc://") else address


def _decode(frame: bytes, received: float) -> tuple[Message, str] | None:
    """The message in a frame and the token it carries (None if it is no message)."""
    try:
        obj = json.loads(frame)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or obj.get("type") not in TYPES or not isinstance(obj.get("job"), (str, int)):
        return None
    token = obj.pop("token", None)
    kind, job = obj.pop("type"), obj.pop("job")
    return Message(kind, str(job), obj, received), token if isinstance(token, str) else ""


class _Connection:
    """One block's connection: its socket, what was read of an unfinished frame, the sender's pid."""

    __slots__ = ("buf", "pid", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        try:
            pid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))[0]
        except OSError:
            pid = 0
        self.pid: int | None = pid if pid > 0 else None  # (0: not known in this PID namespace)


class ControlServer:
    """Executor side: a Unix stream socket listening at ``<private dir>/control`` (0700 directory,
    made in ``dirpath``, default :func:`socket_parent`).

    Its folder is named after this process (``bb-ctl-<pid>-…``; those of dead processes are removed
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
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(socket.SOMAXCONN)
        self._sock.setblocking(False)
        self._address = f"ipc://{path}"
        self.rejected = 0  # malformed frames dropped
        #: messages refused (first :data:`REFUSED_KEPT`): ``{"job", "type", "pid", "reason"}``
        self.refused: list[dict] = []
        self.refused_count = 0
        self.pid_of = pid_of
        self._tokens: dict[str, str] = {}
        self._conns: dict[int, _Connection] = {}  # fd -> the connection
        self._poller = select.poll()
        self._poller.register(self._sock.fileno(), select.POLLIN)
        self._wake: tuple[int, ...] = ()

    def register(self, job: str) -> str:
        """A new secret token for ``job``; only messages carrying it are accepted as ``job``'s."""
        token = secrets.token_hex(16)
        self._tokens[str(job)] = token
        return token

    def _refuse(self, msg: Message, pid: int | None, reason: str) -> None:
        self.refused_count += 1
        if len(self.refused) < REFUSED_KEPT:
            self.refused.append({"job": msg.job, "type": msg.type, "pid": pid, "reason": reason})

    def _check(self, msg: Message, token: str, pid: int | None) -> bool:
        expected = self._tokens.get(msg.job)
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

    def poll(self, timeout_ms: int = 0, wake: int | Sequence[int] | None = None) -> list[Message]:
        """Messages available within ``timeout_ms`` (all queued ones, in arrival order on each
        connection).

        ``wake``: file descriptor(s) that also end the wait when readable (the fork
        servers', which report process exits), so that callers react at once.
        """
        fds = () if wake is None else (wake,) if isinstance(wake, int) else tuple(wake)
        if fds != self._wake:
            for fd in self._wake:
                if fd not in self._conns and fd != self._sock.fileno():
                    with contextlib.suppress(KeyError):
                        self._poller.unregister(fd)
            for fd in fds:
                self._poller.register(fd, select.POLLIN)
            self._wake = fds
        out: list[Message] = []
        events = self._poller.poll(timeout_ms)
        if not events:
            return out
        listener = self._sock.fileno()
        now = time.monotonic()
        for fd, ev in events:
            if fd == listener:
                self._accept(out, now)
            elif fd in self._conns:
                self._read(self._conns[fd], out, now, bool(ev & _HUP))
        return out

    def _accept(self, out: list[Message], now: float) -> None:
        """Accept every pending connection and read what it already holds (a block may have sent
        its last message and exited before its connection was accepted)."""
        while True:
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # (e.g. out of file descriptors: taken at the next poll)
                return
            conn = _Connection(sock)
            self._conns[sock.fileno()] = conn
            self._poller.register(sock.fileno(), select.POLLIN)
            self._read(conn, out, now, False)

    def _read(self, conn: _Connection, out: list[Message], now: float, hup: bool) -> None:
        """Read what ``conn`` holds (to its end if its sender has closed it), its whole frames to ``out``."""
        while True:
            try:
                chunk = conn.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._frames(conn, out, now)
                if conn.buf:
                    self.rejected += 1  # (an unfinished frame)
                self._drop(conn)
                return
            conn.buf += chunk
            if len(chunk) < 1 << 16 and not hup:
                break  # (drained: more comes with the next poll)
        if not self._frames(conn, out, now):
            self.rejected += 1
            self._drop(conn)

    def _frames(self, conn: _Connection, out: list[Message], now: float) -> bool:
        """Decode and check the whole frames of ``conn``'s buffer; False if it is malformed."""
        buf, at = conn.buf, 0
        while len(buf) - at >= 4:
            n = int.from_bytes(buf[at:at + 4], "big")
            if n > MAX_FRAME:
                conn.buf.clear()
                return False
            if len(buf) - at - 4 < n:
                break
            decoded = _decode(bytes(buf[at + 4:at + 4 + n]), now)
            at += 4 + n
            if decoded is None:
                self.rejected += 1
                continue
            msg, token = decoded
            if self._check(msg, token, conn.pid):
                out.append(msg)
                if msg.type in FINAL:  # its sender sends no more: no wake-up for its end
                    del buf[:]
                    self._drop(conn)
                    return True
        del buf[:at]
        return True

    def _drop(self, conn: _Connection) -> None:
        fd = conn.sock.fileno()
        if fd < 0:  # (already dropped)
            return
        self._conns.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._poller.unregister(fd)
        conn.sock.close()

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
        if self._sock.fileno() >= 0:
            self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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

    def _send(self, obj: dict, block: bool = True) -> None:
        """Send one message (``{"type", ...}``); ``block=False``: dropped if the executor's end is full."""
        if self._closed:
            return
        text = self._head + json.dumps(obj).encode()[1:]
        try:
            if self._sock is None:
                self._sock = self._connect()
            elif not block and not select.select((), (self._sock,), (), 0)[1]:
                return
            self._sock.sendall(frame(text), socket.MSG_NOSIGNAL)
        except OSError:  # the executor is gone, or read nothing for SEND_TIMEOUT_S: nothing more is sent
            self.close()

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

    def close(self) -> None:
        """Close the connection: what was sent is already queued on the executor's end."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()


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
