"""A write-sealed shared-memory ring for a stream's large batches (``docs/dataplane.md``, "Ring").

A producer that streams batches of at least :data:`MIN_BYTES` to a consumer hands them over through
one memfd of a few *slots* instead of through the ZeroMQ socket's kernel buffers: it copies a
batch's frames into a free slot and tells the consumer (over the stream's socket) which slot holds
them; the consumer copies the slot into memory of its own, frees the slot, and only then decodes and
checks what it copied.  A ring costs two user-space copies per batch where the socket costs two
kernel copies plus its per-buffer work (``benchmarks/transport.py``; ``docs/performance.md``, wave 10).

Trust, what each side may rely on:

* The producer seals the memfd against any *new* writable mapping or write and against resizing
  (``F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``; Linux >= 5.1) before it
  hands the descriptor over; its own mapping, made before, stays writable.  :class:`RingReader`
  refuses a descriptor without every one of those seals or of another size than announced, and
  maps it read-only: neither the consumer nor any process that finds the descriptor (through
  ``/proc``) can change a slot, and the producer cannot make the mapping shorter under a reader.
* The producer can still change a slot after handing it over — as it can send other bytes than it
  writes to its cache file today: a consumer trusts its producer's process for the stream, no more
  and no less than with the socket.  What the consumer decodes is its own copy, taken before the slot
  is freed; every check (:func:`backbeat.data.wire.decode`) runs on that copy, so nothing it checked
  can change afterwards.  A slot number or frame lengths outside the ring are a :class:`WireError`.
* The descriptor travels over a Unix socket in the run's private folder of sockets (beside the
  stream's ``ipc://`` address) to a peer that first proves it is the stream's consumer: it sends back
  a random token that only the stream's socket carried.  The connection stays open while the stream
  lives: each side sees the other's death as its end (:meth:`Handover.gone`), so neither waits for
  a process that has ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import secrets
import select
import socket
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np

from backbeat.core.errors import WireError

F_SEAL_FUTURE_WRITE = 0x10  # linux/fcntl.h (Python's fcntl has it from 3.12 only, and not on every build)
SEALS = F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
MIN_BYTES = 256 << 10  # batches smaller than this keep the socket (its copies cost less than a slot's bookkeeping)
SLOTS = 4  # batches in flight per consumer: what the sockets' high-water marks allow on both sides
ALIGN = 64  # each frame starts at a multiple of this in its slot (and in the consumer's copy)
TOKEN_BYTES = 16
MAX_PATH = 100  # a Unix socket's path must fit sun_path (108 bytes, with room to spare)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def span(lengths: Sequence[int]) -> int:
    """Bytes of a slot that frames of ``lengths`` take (each aligned)."""
    return sum(_aligned(n) for n in lengths)


_usable: bool | None = None


def usable() -> bool:
    """Whether this system can make a ring (Linux >= 5.1: memfd, future-write seals, fd passing)."""
    global _usable
    if _usable is None:
        _usable = False
        if sys.platform.startswith("linux") and hasattr(os, "memfd_create") and hasattr(socket, "send_fds"):
            try:
                fd = os.memfd_create("backbeat-probe", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
                try:
                    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
                    _usable = fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS == SEALS
                finally:
                    os.close(fd)
            except OSError:
                pass
    return _usable


class RingWriter:
    """The producer's side: ``slots`` slots of ``slot_bytes``, its mapping writable, the memfd sealed."""

    def __init__(self, slots: int, slot_bytes: int) -> None:
        self.slots, self.slot_bytes = slots, -(-slot_bytes // mmap.PAGESIZE) * mmap.PAGESIZE
        self.fd = os.memfd_create("backbeat-stream", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self.fd, self.slots * self.slot_bytes)
            self._map = mmap.mmap(self.fd, self.slots * self.slot_bytes, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, SEALS)  # (the mapping above keeps writing)
        except OSError:
            os.close(self.fd)
            raise
        self._slots = np.frombuffer(self._map, dtype=np.uint8).reshape(self.slots, self.slot_bytes)
        self.free: deque[int] = deque(range(self.slots))
        self.busy: set[int] = set()

    def fits(self, lengths: Sequence[int]) -> bool:
        return span(lengths) <= self.slot_bytes

    def put(self, frames: Sequence[Any]) -> tuple[int, list[int]]:
        """Copy ``frames`` (byte buffers) into a free slot; its number and the frames' lengths."""
        k = self.free.popleft()
        self.busy.add(k)
        slot, at, lengths = self._slots[k], 0, []
        for frame in frames:
            src = np.frombuffer(frame, dtype=np.uint8) if len(memoryview(frame)) else np.empty(0, np.uint8)
            slot[at:at + src.size] = src
            lengths.append(int(src.size))
            at += _aligned(src.size)
        return k, lengths

    def release(self, k: int) -> None:
        """The consumer has copied slot ``k`` out; WireError for a slot it did not hold."""
        if k not in self.busy:
            raise WireError(f"the consumer freed ring slot {k!r}, which it did not hold")
        self.busy.discard(k)
        self.free.append(k)

    def close(self) -> None:
        del self._slots
        self._map.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class RingReader:
    """The consumer's side: the ring mapped read-only, once its seals and size are checked."""

    def __init__(self, fd: int, slots: int, slot_bytes: int) -> None:
        try:
            if not (isinstance(slots, int) and isinstance(slot_bytes, int) and 0 < slots <= 64 and slot_bytes > 0):
                raise WireError(f"invalid ring geometry {slots!r} x {slot_bytes!r}")
            if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS != SEALS:
                raise WireError("the stream's ring is not sealed against writes and resizing: refused")
            if os.fstat(fd).st_size != slots * slot_bytes:
                raise WireError(f"the stream's ring has {os.fstat(fd).st_size} bytes, announced {slots} x {slot_bytes}")
            self._map = mmap.mmap(fd, slots * slot_bytes, mmap.MAP_SHARED, mmap.PROT_READ)
        except OSError as exc:
            raise WireError(f"the stream's ring cannot be mapped: {exc}") from None
        finally:
            os.close(fd)
        self.slots, self.slot_bytes = slots, slot_bytes
        self._slots = np.frombuffer(self._map, dtype=np.uint8).reshape(slots, slot_bytes)

    def take(self, k: Any, lengths: Any) -> list[memoryview]:
        """A private copy of the frames in slot ``k`` (after this the slot may be freed)."""
        if not (isinstance(k, int) and 0 <= k < self.slots and isinstance(lengths, list)
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in lengths)
                and span(lengths) <= self.slot_bytes):
            raise WireError(f"invalid ring slot message (slot {k!r}, lengths {str(lengths)[:80]})")
        total = span(lengths)
        mine = np.empty(total, dtype=np.uint8)
        mine[:] = self._slots[k, :total]  # the one read of the slot: everything after works on `mine`
        out, at = [], 0
        view = memoryview(cast(Any, mine))
        for n in lengths:
            out.append(view[at:at + n])
            at += _aligned(n)
        return out

    def close(self) -> None:
        if hasattr(self, "_slots"):
            del self._slots
            self._map.close()


class Handover:
    """The Unix socket that carries the ring's descriptor, then tells each side of the other's end."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    @classmethod
    def listen(cls, path: str) -> tuple[socket.socket, str]:
        """The producer's listener at ``path`` and the token its consumer must send back."""
        if len(os.fsencode(path)) > MAX_PATH:
            raise WireError(f"ring socket path too long: {path}")
        with contextlib.suppress(OSError):
            os.unlink(path)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        srv.bind(path)
        srv.listen(4)
        return srv, secrets.token_hex(TOKEN_BYTES)

    @classmethod
    def offer(cls, srv: socket.socket, token: str, fd: int, given_up: Callable[[], bool],
              poll_s: float) -> Handover | None:
        """Accept the consumer (the peer that sends ``token``) and pass it ``fd``; None if
        ``given_up()`` turns true first (the consumer ended)."""
        want = token.encode()
        while not given_up():
            if not select.select([srv], [], [], poll_s)[0]:
                continue
            try:
                conn, _ = srv.accept()
            except OSError:  # (a peer gone already; out of descriptors: the consumer is not served)
                continue
            conn.settimeout(poll_s * 20)  # (a peer that sends nothing is dropped, the next one accepted)
            try:
                got = b""
                while len(got) < len(want):
                    part = conn.recv(len(want) - len(got))
                    if not part:
                        break
                    got += part
                if secrets.compare_digest(got, want):
                    socket.send_fds(conn, [b"r"], [fd])
                    conn.setblocking(True)
                    return cls(conn)
            except OSError:
                pass
            conn.close()
        return None

    @classmethod
    def accept(cls, path: str, token: Any) -> tuple[Handover, int]:
        """The consumer's side: prove the token, receive the descriptor."""
        if not isinstance(path, str) or not isinstance(token, str) or len(token) != 2 * TOKEN_BYTES:
            raise WireError("invalid ring offer")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            conn.connect(path)
            conn.sendall(token.encode())
            msg, fds, _flags, _addr = socket.recv_fds(conn, 1, 1)
        except OSError as exc:
            conn.close()
            raise WireError(f"the stream's ring could not be received: {exc}") from None
        if msg != b"r" or len(fds) != 1:
            conn.close()
            for fd in fds:
                os.close(fd)
            raise WireError("the stream's producer ended before handing its ring over")
        return cls(conn), fds[0]

    def fileno(self) -> int:
        return self.conn.fileno()

    def gone(self) -> bool:
        """Whether the other side has closed its end (it ended), without waiting."""
        try:
            if not select.select([self.conn], [], [], 0)[0]:
                return False
            return self.conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.conn.close()

