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
* a message is its frames' number (4 bytes, little-endian; 1 to :data:`MAX_FRAMES`), then each frame
  after its length (8 bytes, little-endian; less than :data:`MAX_FRAME`, a producer sending more raises
  :class:`~backbeat.core.errors.WireError`): received whole — :meth:`poll` says ``POLLIN`` only once a
  whole message is here, as ZeroMQ did; anything else is refused (``EPROTO``), and a large frame's
  memory is only touched as its bytes arrive;
* a send never blocks with ``NOBLOCK``: what the socket's buffer does not take is kept (one message
  at most, copied) and written by the next send or poll, and a send finding it still unwritten raises
  :class:`zmq.Again` — the streams' back-pressure (``SNDHWM``) is the kernel buffer's bound, set from
  the high-water mark (:attr:`sndhwm` messages of about :attr:`message_bytes`);
* a consumer reads ahead at most :attr:`rcvhwm` whole messages (``RCVHWM``; 0: :data:`RCVHWM`): the
  rest waits in the kernel's buffers, and a producer faster than its consumer is held back.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import math
import os
import select
import socket
import struct
import time
from collections import deque
from typing import Any

import numpy as np
import zmq

from backbeat.core.errors import WireError

RETRY_S = 0.01  # a consumer's next try to connect (ZeroMQ's reconnect_ivl: 10 ms)
_COUNT = struct.Struct("<I")  # a message's number of frames
_LEN = struct.Struct("<Q")  # a frame's length
MAX_FRAMES = 1 << 16  # more frames than this in a message: malformed
MAX_FRAME = 1 << 40  # a frame this large (1 TiB): malformed
_CHUNK = 1 << 16  # read at once when no large frame is pending
_IOV = 1000  # buffers given to one sendmsg (Linux's IOV_MAX is 1024: two a frame, more is EMSGSIZE)
QUEUED_BYTES = 4 << 20  # the send buffer asked for when the messages' size is not told
RCVHWM = 1000  # whole messages a consumer reads ahead when its rcvhwm is 0 (ZeroMQ's default)


class StreamSocket:
    """One end of a stream: :meth:`bind` (producer) or :meth:`connect` (consumer)."""

    def __init__(self) -> None:
        self.closed = False
        self.linger = self.rcvhwm = self.reconnect_ivl = 0
        self.sndhwm = 4
        self.message_bytes = 0  # about how large a message is (sets the kernel's send buffer)
        self._path: str | None = None
        self._binds = False  # the producer's end
        self._bound: tuple[int, int] | None = None  # the socket file it made (st_dev, st_ino)
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._next_try = 0.0
        self._pending: deque[memoryview] = deque()  # what the kernel has not taken of the last message sent
        self._buf = bytearray()  # received, not parsed yet
        self._frames: list[Any] = []  # the message being received
        self._count = -1  # its number of frames (-1: not read yet)
        self._big: memoryview | None = None  # a large frame received straight into its own buffer
        self._big_at = 0
        self._ready: deque[list[Any]] = deque()  # whole messages received

    # -- connection --------------------------------------------------------------------------------

    def bind(self, address: str) -> None:
        path = _path(address)
        self._binds = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # (a stale socket file of nobody: as ZeroMQ's bind)
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        made = False
        try:
            lst.bind(path)
            made = True
            st = os.stat(path)
            lst.listen(1)
            lst.setblocking(False)
        except BaseException:
            lst.close()
            if made:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        self._listener, self._path, self._bound = lst, path, (st.st_dev, st.st_ino)

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
        self._pending, self._buf, self._frames, self._count, self._big = deque(), bytearray(), [], -1, None
        self._next_try = time.monotonic() + RETRY_S

    def _connected(self) -> bool:
        return self._try_accept() if self._binds else self._try_connect()

    # -- sending -----------------------------------------------------------------------------------

    def _flush(self) -> bool:
        """Write what is pending; True once nothing is."""
        conn, pending = self._conn, self._pending
        while pending and conn is not None:
            try:  # (at most _IOV buffers at once: the rest as after a partial write)
                n = conn.sendmsg(list(itertools.islice(pending, _IOV)), [], socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                self._lost()  # (any other error too: a half-sent message is dropped with its connection,
                if exc.errno in (errno.EPIPE, errno.ECONNRESET):  # never its tail sent after a retry)
                    return False
                raise
            while n and pending:
                head = pending[0]
                if n >= len(head):
                    n -= len(head)
                    pending.popleft()
                else:
                    pending[0] = head[n:]
                    n = 0
        return not pending

    def send_multipart(self, frames: list[Any], flags: int = 0, copy: bool = True, **_: Any) -> None:
        views = [memoryview(getattr(f, "buffer", f)).cast("B") for f in frames]
        if not 0 < len(views) <= MAX_FRAMES:
            raise WireError(f"a stream message of {len(views)} frames: 1 to {MAX_FRAMES} can be sent")
        message: list[memoryview] = [memoryview(_COUNT.pack(len(views)))]
        for v in views:
            if len(v) >= MAX_FRAME:
                raise WireError(f"a stream frame of {len(v)} bytes: a stream carries frames of less than "
                                f"{MAX_FRAME} bytes (backbeat.runtime.streamsocket.MAX_FRAME)")
            message += [memoryview(_LEN.pack(len(v))), v]
        while True:
            if self._connected() and self._flush():
                self._pending = deque(m for m in message if len(m))
                try:
                    self._flush()
                finally:  # (what is kept is copied: the caller may reuse its buffers once this returns)
                    if self._pending:
                        self._pending = deque(memoryview(bytes(m)) for m in self._pending)
                return
            if flags & zmq.NOBLOCK:
                raise zmq.Again()
            self.poll(50, zmq.POLLOUT)

    def send(self, data: Any, flags: int = 0, **_: Any) -> None:
        self.send_multipart([data], flags)

    # -- receiving ---------------------------------------------------------------------------------

    def _hwm(self) -> int:
        return self.rcvhwm if self.rcvhwm > 0 else RCVHWM

    def _parse(self) -> None:
        """Make whole messages of what was read, until :attr:`rcvhwm` are held."""
        buf, at, hwm = self._buf, 0, self._hwm()
        try:  # (what was parsed is consumed even when a malformed header raises: never parsed twice)
            while self._big is None and len(self._ready) < hwm:
                if self._count < 0:
                    if len(buf) - at < _COUNT.size:
                        break
                    (count,) = _COUNT.unpack_from(buf, at)
                    if not 0 < count <= MAX_FRAMES:
                        raise zmq.ZMQError(errno.EPROTO, f"a stream message of {count} frames")
                    self._count = count
                    at += _COUNT.size
                if len(self._frames) == self._count:
                    self._ready.append(self._frames)
                    self._frames, self._count = [], -1
                    continue
                if len(buf) - at < _LEN.size:
                    break
                (size,) = _LEN.unpack_from(buf, at)
                if size >= MAX_FRAME:
                    raise zmq.ZMQError(errno.EPROTO, f"a stream frame of {size} bytes")
                body = at + _LEN.size  # (at moves past the header only with its frame: an error leaves it whole)
                if len(buf) - body >= size:
                    self._frames.append(memoryview(bytearray(buf[body:body + size])))
                    at = body + size
                else:  # (a large frame: the rest read straight into its own buffer, its pages touched as they fill)
                    try:
                        big = np.empty(size, np.uint8).data
                    except MemoryError:
                        raise zmq.ZMQError(errno.ENOMEM, f"a stream frame of {size} bytes: more than "
                                                         "this process can hold") from None
                    have = len(buf) - body
                    big[:have] = buf[body:]
                    self._big, self._big_at = big, have
                    at = len(buf)
        finally:
            del buf[:at]

    def _receive(self) -> None:
        """Read what is there (never blocks), until :attr:`rcvhwm` whole messages are held: the rest
        stays in the kernel's buffers (the producer's back-pressure)."""
        self._parse()  # (what was read before the bound was reached)
        conn = self._conn
        while conn is not None and len(self._ready) < self._hwm():
            try:
                if self._big is not None:
                    n = conn.recv_into(self._big[self._big_at:])
                    if n:
                        self._big_at += n
                        if self._big_at == len(self._big):
                            self._frames.append(self._big)
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
            if not self._connected():
                if flags & zmq.POLLIN and self._ready:  # (read ahead: there even once the peer is gone)
                    return zmq.POLLIN
            else:
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
        """Until something may have changed (data, room, a peer), at most ``left`` s (``poll``, not
        ``select``: a block may have more than 1,024 files open)."""
        if self._conn is not None:
            fd, events = self._conn, select.POLLIN | (select.POLLOUT if self._pending else 0)
        elif self._listener is not None:
            fd, events = self._listener, select.POLLIN
        else:  # (a consumer not connected: its next try; a producer whose consumer is gone: nothing)
            wait = RETRY_S if self._binds else self._next_try - time.monotonic()
            time.sleep(max(0.0, min(left if left is not None else wait, wait)))
            return
        poller = select.poll()
        poller.register(fd, events)
        poller.poll(None if left is None else max(0, math.ceil(left * 1000)))

    def recv_multipart(self, flags: int = 0, copy: bool = True, **_: Any) -> list[Any]:
        if not self._ready and not self.poll(0 if flags & zmq.NOBLOCK else -1, zmq.POLLIN):
            raise zmq.Again()
        frames = self._ready.popleft()
        return [bytes(f) for f in frames] if copy else frames

    def recv(self, flags: int = 0, copy: bool = True, **_: Any) -> Any:
        return self.recv_multipart(flags, copy)[0]

    def close(self, linger: int | None = None) -> None:
        """Close; a producer's socket file goes too (as ZeroMQ's ``ipc://`` listener's did), unless
        another socket was bound there since."""
        for s in (self._conn, self._listener):
            if s is not None:
                s.close()
        self._conn = self._listener = None
        if self._bound is not None and self._path is not None:
            with contextlib.suppress(OSError):
                st = os.stat(self._path)
                if (st.st_dev, st.st_ino) == self._bound:
                    os.unlink(self._path)
            self._bound = None
        self.closed = True


def _path(address: str) -> str:
    return address[len("ipc://"):] if address.startswith("ipc://") else address
