"""The executor's end of the control channel (:mod:`~backbeat.processes.control`): frames, messages
and the :class:`ControlServer` that reads them — bounded against a hostile block.

Block code is untrusted, and a block process can reach the socket: it may send anything, open
connections, or never read.  What it can do to the executor is bounded here:

* a frame is checked as soon as its 4-byte length is in: one announcing more than
  :data:`MAX_FRAME` drops its connection (counted in ``rejected``) before anything more is read;
* a frame that is no message (not JSON, nested beyond the parser's depth, not an object, a
  field of the wrong type, a token that is not an ASCII string) is dropped and counted in
  ``rejected``; the connection goes on;
* at most :data:`READ_BUDGET` bytes are read from a connection per :meth:`ControlServer.poll`
  (the others are served in between) and at most :data:`ACCEPTS_PER_POLL` connections accepted;
* a job's process keeps at most :data:`PER_SENDER` connections, other processes none once the
  pid of every job is known; connections whose sender is not known yet (a block may connect
  before the fork server reports its pid) wait in a pending set of at most :data:`MAX_PENDING`
  (more stay in the listener's backlog until those are settled); at most :data:`MAX_CONNECTIONS`
  are open; when the process runs out of file descriptors the listener is left alone for
  :data:`PAUSE_S` instead of polled in a loop.

Refused connections and messages are counted in ``refused_count`` (the first
:data:`REFUSED_KEPT` kept in ``refused``).
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import json
import os
import secrets
import select
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from backbeat.core.errors import UsageError
from backbeat.processes.controlfolders import socket_parent

TYPES = ("start", "progress", "done", "error")
FINAL = ("done", "error")  # a job's last message: its connection is closed once one is read
#: refused messages kept (the others are only counted)
REFUSED_KEPT = 100
#: a frame announcing more than this is malformed: its connection is dropped (a block's client
#: sends no larger one: it cuts an error's text, and reports statistics too large as an error)
MAX_FRAME = 4 << 20
#: bytes read from one connection per poll (then the other connections are served)
READ_BUDGET = 1 << 20
_CHUNK = 1 << 16
#: connections accepted per poll at most (the backlog's size: refused ones are closed at once)
ACCEPTS_PER_POLL = socket.SOMAXCONN
#: connections a job's process may keep open
PER_SENDER = 2
#: connections whose sender is not known (yet) to be a job's process
MAX_PENDING = 32
#: connections open at once
MAX_CONNECTIONS = 512
#: seconds the listener is left alone when no file descriptor is left to accept with
PAUSE_S = 0.05
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_HUP = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


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


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _well_formed(kind: str, obj: dict) -> bool:
    if kind == "progress":
        return _int(obj.get("done")) and (obj.get("total") is None or _int(obj.get("total")))
    if kind == "done":
        return isinstance(obj.get("statistics", {}), dict)
    if kind == "error":
        return isinstance(obj.get("kind"), str) and isinstance(obj.get("message", ""), str) \
            and isinstance(obj.get("traceback") or "", str)
    return True


def _decode(frame: bytes, received: float) -> tuple[Message, str] | None:
    """The message in a frame and the token it carries (None if it is no message: anything the
    parser raises — e.g. RecursionError for a deeply nested text — or a malformed field)."""
    try:
        obj = json.loads(frame)
    except Exception:  # noqa: BLE001 - a hostile frame may make the parser raise anything
        return None
    if not isinstance(obj, dict) or obj.get("type") not in TYPES or not isinstance(obj.get("job"), (str, int)) \
            or not _well_formed(obj["type"], obj):
        return None
    token = obj.pop("token", None)
    kind, job = obj.pop("type"), obj.pop("job")
    return Message(kind, str(job), obj, received), token if isinstance(token, str) and token.isascii() else ""


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
    ``senders()``: the pids of the jobs' processes known so far, and whether a job's pid may still be
    unknown (without it, every sender is pending: at most :data:`MAX_PENDING` connections).
    """

    def __init__(self, dirpath: str | None = None, pid_of: Callable[[str], int | None] | None = None,
                 senders: Callable[[], tuple[Collection[int], bool]] | None = None) -> None:
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
        #: messages and connections refused (first :data:`REFUSED_KEPT`): ``{"job", "type", "pid", "reason"}``
        self.refused: list[dict] = []
        self.refused_count = 0
        self.pid_of = pid_of
        self.senders = senders
        self._tokens: dict[str, str] = {}
        self._conns: dict[int, _Connection] = {}  # fd -> the connection
        self._pending: dict[int, _Connection] = {}  # fd -> a connection whose sender is not known yet
        self._per_pid: dict[int | None, int] = {}
        self._poller = select.poll()
        self._poller.register(self._sock.fileno(), select.POLLIN)
        self._listening = True
        self._paused_until = 0.0
        self._wake: tuple[int, ...] = ()

    def register(self, job: str) -> str:
        """A new secret token for ``job``; only messages carrying it are accepted as ``job``'s."""
        token = secrets.token_hex(16)
        self._tokens[str(job)] = token
        return token

    def _refuse(self, msg: Message | None, pid: int | None, reason: str) -> None:
        self.refused_count += 1
        if len(self.refused) < REFUSED_KEPT:
            self.refused.append({"job": msg.job if msg else None, "type": msg.type if msg else "connection",
                                 "pid": pid, "reason": reason})

    def _check(self, msg: Message, token: str, pid: int | None) -> bool:
        expected = self._tokens.get(msg.job)
        if expected is None:
            self._refuse(msg, pid, "no such job")
            return False
        if not hmac.compare_digest(expected.encode(), token.encode()):  # (both ASCII)
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
        """Messages available within ``timeout_ms`` (in arrival order on each connection; at most
        :data:`READ_BUDGET` bytes of each connection: a connection holding more is read on at the next poll).

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
        self._admit(out)
        if not self._listening and self._paused_until:
            timeout_ms = max(0, min(timeout_ms, int((self._paused_until - time.monotonic()) * 1000) + 1))
        events = self._poller.poll(timeout_ms)
        listener = self._sock.fileno()
        now = time.monotonic()
        for fd, ev in events:
            if fd == listener:
                self._accept(out, now)
            elif fd in self._conns:
                self._read(self._conns[fd], out, now, bool(ev & _HUP))
        return out

    def settle(self, pid: int) -> list[Message]:
        """The messages process ``pid`` (ended) left on the channel: its connections, accepted
        ones and those still in the backlog, are read on until nothing more is queued (it sends
        no more; bounded all the same by :data:`MAX_FRAME` plus :data:`READ_BUDGET` a connection)."""
        out: list[Message] = []
        now = time.monotonic()
        self._admit(out)
        if self._listening:
            self._accept(out, now)
        for conn in [c for c in self._conns.values() if c.pid == pid]:
            self._read(conn, out, now, False, MAX_FRAME + 4 + READ_BUDGET)
        return out

    # -- connections
    def _admit(self, out: list[Message]) -> None:
        """Settle the pending connections whose sender is now known (a job's: kept within
        :data:`PER_SENDER`; another process, once every job's pid is known: what it holds is read,
        then it is closed); listen again when there is room (and the pause after running out of
        descriptors is over)."""
        if self._pending and self.senders is not None:
            jobs, unsure = self.senders()
            for fd, conn in list(self._pending.items()):
                if conn.pid in jobs:
                    del self._pending[fd]
                    if self._per_pid.get(conn.pid, 0) > PER_SENDER:
                        self._close_refused(conn, "too many connections from one process")
                elif not unsure:
                    self._read(conn, out, time.monotonic(), False)  # (a job whose pid was never known)
                    if conn.sock.fileno() >= 0:
                        self._close_refused(conn, "not a job's process")
        room = len(self._pending) < MAX_PENDING and len(self._conns) < MAX_CONNECTIONS
        if room and not self._listening and time.monotonic() >= self._paused_until:
            self._poller.register(self._sock.fileno(), select.POLLIN)
            self._listening, self._paused_until = True, 0.0
        elif not room and self._listening:
            self._stop_listening(0.0)

    def _stop_listening(self, pause_s: float) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._poller.unregister(self._sock.fileno())
        self._listening = False
        self._paused_until = time.monotonic() + pause_s if pause_s else 0.0

    def _accept(self, out: list[Message], now: float) -> None:
        """Accept pending connections (within the bounds above) and read what each already holds
        (a block may have sent its last message and exited before its connection was accepted)."""
        jobs, unsure = self.senders() if self.senders is not None else ((), True)
        for _ in range(ACCEPTS_PER_POLL):  # (the backlog's size: a flood of refused connections must not
            # leave a job's one connection behind it for a later poll — its outcome reads only this one)
            if len(self._pending) >= MAX_PENDING or len(self._conns) >= MAX_CONNECTIONS:
                self._stop_listening(0.0)  # (the rest waits in the backlog: listened to again by _admit)
                return
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._stop_listening(PAUSE_S)  # (no spinning on a listener that stays readable)
                return
            conn = _Connection(sock)
            if conn.pid not in jobs and not unsure:  # (what it holds is read first, as _admit does: a job
                # whose pid was never known — reaped before it was translated — may have sent its last)
                self._read(conn, out, now, False, MAX_FRAME + 4 + READ_BUDGET)
                if conn.sock.fileno() >= 0:
                    self._close_refused(conn, "not a job's process")
                continue
            if self._per_pid.get(conn.pid, 0) >= PER_SENDER and (conn.pid in jobs or conn.pid is None):
                self._close_refused(conn, "too many connections from one process")
                continue
            self._conns[sock.fileno()] = conn
            self._per_pid[conn.pid] = self._per_pid.get(conn.pid, 0) + 1
            if conn.pid not in jobs:
                self._pending[sock.fileno()] = conn
            self._poller.register(sock.fileno(), select.POLLIN)
            self._read(conn, out, now, False)

    def _close_refused(self, conn: _Connection, reason: str) -> None:
        self._refuse(None, conn.pid, reason)
        if conn.sock.fileno() in self._conns:
            self._drop(conn)
        else:
            conn.sock.close()

    def _read(self, conn: _Connection, out: list[Message], now: float, hup: bool, budget: int = READ_BUDGET) -> None:
        """Read what ``conn`` holds (at most ``budget`` bytes; to its end if its sender has closed
        it), its whole frames to ``out``, each length checked as soon as it is in."""
        while budget > 0:
            want = min(_CHUNK, budget)
            try:
                chunk = conn.sock.recv(want, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                chunk = b""
            if not chunk:
                if self._frames(conn, out, now) and conn.buf:
                    self.rejected += 1  # (an unfinished frame)
                self._drop(conn)
                return
            budget -= len(chunk)
            conn.buf += chunk
            if not self._frames(conn, out, now):
                self.rejected += 1
                self._drop(conn)
                return
            if conn.sock.fileno() < 0 or (len(chunk) < want and not hup):
                return  # (its final message read, or drained: more comes with the next poll)

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
        if self._conns.pop(fd, None) is not None:
            self._pending.pop(fd, None)
            left = self._per_pid.get(conn.pid, 1) - 1
            if left > 0:
                self._per_pid[conn.pid] = left
            else:
                self._per_pid.pop(conn.pid, None)
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
