"""The socket of one stream (:mod:`backbeat.runtime.streams`): a plain Unix stream socket, no ZeroMQ.

Until wave 14 each end of a stream was a ZeroMQ ``PAIR`` socket over ``ipc://``: every block process
of a chain then started a ZeroMQ context — an I/O thread and a reaper thread, their eventfds and
epoll sets, every message handed from the block's thread to the I/O thread and back —, ~3 ms of CPU
a block of which the kernel most (docs/performance.md, "Wave 14 (perf-ch)").  :class:`StreamSocket`
is the part of :class:`zmq.Socket`'s interface the streams use, over the same path (the address's
``ipc://`` part dropped, in the run's private 0700 folder), so that :mod:`~backbeat.runtime.streams`
keeps its protocol, and the zygote's rehearsal its in-process stand-in (:mod:`~backbeat.runtime.loopback`):

* the producer :meth:`bind`\\ s and listens; it accepts its one consumer when it first needs it (a
  send, a poll) and then closes the listener: one peer, as ``PAIR``;
* the consumer :meth:`connect`\\ s; while nobody listens there (its producer not started yet, or ended)
  it tries again every :data:`RETRY_S`, as ZeroMQ's reconnection did; a connection its producer
  closes (a producer that failed) is tried again the same way: the consumer waits until the executor
  kills it, as before;
* a message is its frames, each preceded by its length (4 bytes, little-endian), after their number:
  received whole — :meth:`poll` says ``POLLIN`` only once a whole message is here, as ZeroMQ did;
* a send never blocks with ``NOBLOCK``: what the socket's buffer does not take is kept (one message
  at most) and written by the next send or poll, and a send finding it still unwritten raises
  :class:`zmq.Again` — the streams' back-pressure (``SNDHWM``) is the kernel buffer's bound, set from
  the high-water mark (:attr:`sndhwm` messages of about :attr:`message_bytes`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import time
from typing import Any

import zmq

RETRY_S = 0.01  # a consumer's next try to connect (ZeroMQ's reconnect_ivl: 10 ms)
_LEN = struct.Struct("<I")
MAX_FRAMES = 1 << 16  # more frames than this in a message: malformed
MAX_FRAME = 1 << 31  # a frame this large: malformed
_CHUNK = 1 << 16  # read at once when no large frame is pending
QUEUED_BYTES = 4 << 20  # the send buffer asked for when the messages' size is not told


class StreamSocket:
    """One end of a stream: :meth:`bind` (producer) or :meth:`connect` (consumer)."""

    def __init__(self) -> None:
        self.closed = False
        self.linger = self.rcvhwm = self.reconnect_ivl = 0
        self.sndhwm = 4
        self.message_bytes = 0  # about how large a message is (sets the kernel's send buffer)
        self._path: str | None = None
        self._binds = False  # the producer's end
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._next_try = 0.0
        self._pending: list[memoryview] = []  # what the kernel has not taken of the last message sent
        self._buf = bytearray()  # received, not parsed yet
        self._frames: list[Any] = []  # the message being received
        self._count = -1  # its number of frames (-1: not read yet)
        self._big: bytearray | None = None  # a large frame received straight into its own buffer
        self._big_at = 0
        self._ready: list[list[Any]] = []  # whole messages received

    # -- connection --------------------------------------------------------------------------------

    def bind(self, address: str) -> None:
        path = _path(address)
        self._binds = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # (a stale socket file of nobody: as ZeroMQ's bind)
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(path)
        lst.listen(1)
        lst.setblocking(False)
        self._listener, self._path = lst, path

    def connect(self, address: str) -> None:
        self._path = _path(address)
        self._try_connect()

    def _try_connect(self) -> bool:
        if self._conn is not None or self._binds or self.closed or self._path is None:
            return self._conn is not None
        now = time.monotonic()
        if now < self._next_try:
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self._path)
        except OSError:  # (nobody listens there yet, or any more)
            s.close()
            self._next_try = now + RETRY_S
            return False
        self._adopt(s)
        return True

    def _try_accept(self) -> bool:
        if self._conn is None and self._listener is not None:
            try:
                s, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return False
            self._listener.close()  # (one peer)
            self._listener = None
            self._adopt(s)
        return self._conn is not None

    def _adopt(self, s: socket.socket) -> None:
        s.setblocking(False)
        if self._binds:  # (as ZeroMQ's queues held: SNDHWM + RCVHWM messages, beside the kernel's buffers)
            with contextlib.suppress(OSError):  # (the kernel doubles it, up to twice wmem_max)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(
                    s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2,
                    self.sndhwm * self.message_bytes if self.message_bytes > 0 else QUEUED_BYTES))
        self._conn = s

    def _lost(self) -> None:
        """The peer closed: a consumer tries again (as ZeroMQ reconnected); a producer has no peer."""
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._pending, self._buf, self._frames, self._count, self._big = [], bytearray(), [], -1, None
        self._next_try = time.monotonic() + RETRY_S

    def _connected(self) -> bool:
        return self._try_accept() if self._binds else self._try_connect()

    # -- sending -----------------------------------------------------------------------------------

    def _flush(self) -> bool:
        """Write what is pending; True once nothing is."""
        conn = self._conn
        while self._pending and conn is not None:
            try:
                n = conn.sendmsg(self._pending, [], socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                    self._lost()
                    return False
                raise
            while n and self._pending:
                head = self._pending[0]
                if n >= len(head):
                    n -= len(head)
                    self._pending.pop(0)
                else:
                    self._pending[0] = head[n:]
                    n = 0
        return not self._pending

    def send_multipart(self, frames: list[Any], flags: int = 0, copy: bool = True, **_: Any) -> None:
        views = [memoryview(getattr(f, "buffer", f)).cast("B") for f in frames]
        message: list[memoryview] = [memoryview(_LEN.pack(len(views)))]
        for v in views:
            message += [memoryview(_LEN.pack(len(v))), v]
        while True:
            if self._connected() and self._flush():
                self._pending = [m for m in message if len(m)]
                if not self._flush():  # (kept: its buffers may be reused once this returns)
                    self._pending = [memoryview(bytes(m)) for m in self._pending]
                return
            if flags & zmq.NOBLOCK:
                raise zmq.Again()
            self.poll(50, zmq.POLLOUT)

    def send(self, data: Any, flags: int = 0, **_: Any) -> None:
        self.send_multipart([data], flags)

    # -- receiving ---------------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        at = 0
        while True:
            if self._big is not None:
                break
            if self._count < 0:
                if len(buf) - at < 4:
                    break
                (self._count,) = _LEN.unpack_from(buf, at)
                at += 4
                if self._count > MAX_FRAMES:
                    raise zmq.ZMQError(errno.EPROTO, f"a stream message of {self._count} frames")
            if len(self._frames) == self._count:
                self._ready.append(self._frames)
                self._frames, self._count = [], -1
                continue
            if len(buf) - at < 4:
                break
            (size,) = _LEN.unpack_from(buf, at)
            if size >= MAX_FRAME:
                raise zmq.ZMQError(errno.EPROTO, f"a stream frame of {size} bytes")
            if len(buf) - at - 4 >= size:
                self._frames.append(memoryview(bytearray(buf[at + 4:at + 4 + size])))
                at += 4 + size
            else:  # (a large frame: the rest read straight into its own buffer)
                self._big = bytearray(size)
                have = len(buf) - at - 4
                self._big[:have] = buf[at + 4:]
                self._big_at = have
                at = len(buf)
        del buf[:at]

    def _receive(self) -> None:
        """Read what is there (never blocks)."""
        conn = self._conn
        while conn is not None:
            try:
                if self._big is not None:
                    n = conn.recv_into(memoryview(self._big)[self._big_at:])
                    if n:
                        self._big_at += n
                        if self._big_at == len(self._big):
                            self._frames.append(memoryview(self._big))
                            self._big = None
                            self._parse()
                else:
                    chunk = conn.recv(_CHUNK)
                    n = len(chunk)
                    if n:
                        self._buf += chunk
                        self._parse()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionResetError:
                n = 0
            if not n:
                self._lost()
                return

    def poll(self, timeout: int | None = None, flags: int = zmq.POLLIN) -> int:
        """``flags`` if, within ``timeout`` ms (None or negative: for ever), a whole message can be
        received (``POLLIN``) or a message can be sent (``POLLOUT``); else 0.  Writes what is pending."""
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout / 1000
        while True:
            if self._connected():
                self._flush()
                if flags & zmq.POLLIN:
                    self._receive()
                    if self._ready:
                        return zmq.POLLIN
                elif self._conn is not None and not self._pending:
                    return zmq.POLLOUT
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return 0
            self._wait(left)

    def _wait(self, left: float | None) -> None:
        """Until something may have changed (data, room, a peer), at most ``left`` s."""
        if self._conn is not None:
            r, w = [self._conn], [self._conn] if self._pending else []
        elif self._listener is not None:
            r, w = [self._listener], []
        else:  # (a consumer not connected: its next try; a producer whose consumer is gone: nothing)
            wait = RETRY_S if self._binds else self._next_try - time.monotonic()
            time.sleep(max(0.0, min(left if left is not None else wait, wait)))
            return
        select.select(r, w, [], left)

    def recv_multipart(self, flags: int = 0, copy: bool = True, **_: Any) -> list[Any]:
        if not self._ready and not self.poll(0 if flags & zmq.NOBLOCK else -1, zmq.POLLIN):
            raise zmq.Again()
        frames = self._ready.pop(0)
        return [bytes(f) for f in frames] if copy else frames

    def recv(self, flags: int = 0, copy: bool = True, **_: Any) -> Any:
        return self.recv_multipart(flags, copy)[0]

    def close(self, linger: int | None = None) -> None:
        for s in (self._conn, self._listener):
            if s is not None:
                s.close()
        self._conn = self._listener = None
        self.closed = True


def _path(address: str) -> str:
    return address[len("ipc://"):] if address.startswith("ipc://") else address

