"""In-process stand-ins for the ZeroMQ sockets of a block process, for the zygote's rehearsal.

The zygote rehearses a streamed block (:func:`backbeat.runtime.rehearsal.rehearse_streamed`): its
control channel, the stream it reads from its producer, the stream it writes to its consumer.  A
zygote must hold no ZeroMQ context (a context does not survive ``fork``) and opens no socket, so the
sockets the block's code asks :mod:`~backbeat.processes.zmqcontext` for (the streams, whose sockets are
no ZeroMQ ones since wave 14, through its ``substituted()``) are these: a :class:`Hub`
(the context) makes :class:`LoopSocket`\\ s, paired by address, whose messages go from one in-memory
queue to the other as :class:`zmq.Frame`\\ s (what ``recv_multipart(copy=False)`` returns; a frame
needs no context).  A *responder* stands for the other process at an address: it is given each
message sent there and may answer (the executor acknowledging ``done``, a consumer acknowledging
a commit).  Nothing ever blocks: receiving from an empty queue raises :class:`LoopbackError`
(the rehearsal then fails, which is ignored) instead of waiting for a peer that is not there.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

#: answers a message sent to its address: ``responder(frames, reply)``, ``reply(frames)`` queues a
#: message back to the sender
Responder = Callable[[list[bytes], Callable[[list[Any]], None]], None]


class LoopbackError(RuntimeError):
    """A loopback socket was asked for what no peer sent (a real one would wait for ever)."""


class LoopSocket:
    """The part of :class:`zmq.Socket`'s interface a block process uses, between two queues."""

    def __init__(self, hub: Hub, kind: int) -> None:
        self.hub, self.kind = hub, kind
        self.inbox: collections.deque[list[zmq.Frame]] = collections.deque()
        self.peer: LoopSocket | None = None
        self.responder: Responder | None = None
        self.waiting: list[list[zmq.Frame]] = []  # sent before a peer was there
        self.closed = False
        self.linger = self.sndhwm = self.rcvhwm = self.reconnect_ivl = 0

    def setsockopt(self, option: int, value: Any) -> None:
        pass

    def bind(self, address: str) -> None:
        self.hub.attach(self, address)

    def connect(self, address: str) -> None:
        self.hub.attach(self, address)

    def deliver(self, frames: list[zmq.Frame]) -> None:
        if self.responder is not None:
            peer = self.peer
            self.responder([f.bytes for f in frames], lambda answer: peer.deliver(_frames(answer)) if peer else None)
        else:
            self.inbox.append(frames)

    def send_multipart(self, frames: list[Any], flags: int = 0, copy: bool = True, **_: Any) -> None:
        message = _frames(frames)
        if self.peer is None:
            self.waiting.append(message)
        else:
            self.peer.deliver(message)

    def send(self, data: Any, flags: int = 0, **_: Any) -> None:
        self.send_multipart([data], flags)

    def poll(self, timeout: int | None = None, flags: int = zmq.POLLIN) -> int:
        if flags & zmq.POLLOUT:
            return zmq.POLLOUT
        if not self.inbox and timeout:
            time.sleep(min(timeout, 50) / 1000)  # (a watcher thread polling for what never comes)
        return zmq.POLLIN if self.inbox else 0

    def recv_multipart(self, flags: int = 0, copy: bool = True, **_: Any) -> list[Any]:
        if not self.inbox:
            raise LoopbackError("nothing to receive on a loopback socket")
        frames = self.inbox.popleft()
        return frames if not copy else [f.bytes for f in frames]

    def recv(self, flags: int = 0, copy: bool = True, **_: Any) -> Any:
        frames = self.recv_multipart(flags, copy)
        return frames[0]

    def close(self, linger: int | None = None) -> None:
        self.closed = True


def _frames(frames: list[Any]) -> list[zmq.Frame]:
    """Each frame copied, as it would cross to another process (``copy=True``: a frame of 64 KiB or
    more made zero-copy would start pyzmq's garbage-collector thread and a context — in a zygote)."""
    return [zmq.Frame(bytes(f.bytes if isinstance(f, zmq.Frame) else f), copy=True) for f in frames]


class Hub:
    """The context of loopback sockets: pairs them by address (the first two to bind or connect),
    or gives one to the responder of its address."""

    def __init__(self, responders: dict[str, Responder] | None = None) -> None:
        self.responders = dict(responders or {})
        self.ends: dict[str, LoopSocket] = {}
        self.lock = threading.Lock()

    def socket(self, kind: int) -> LoopSocket:
        return LoopSocket(self, kind)

    def attach(self, sock: LoopSocket, address: str) -> None:
        with self.lock:
            responder = self.responders.get(address)
            if responder is not None:
                peer = LoopSocket(self, zmq.PAIR)
                peer.responder, peer.peer = responder, sock
            elif address not in self.ends:
                self.ends[address] = sock
                return
            else:
                peer = self.ends.pop(address)
                peer.peer = sock
                for message in peer.waiting:
                    sock.deliver(message)
                peer.waiting = []
            sock.peer = peer
            for message in sock.waiting:
                peer.deliver(message)
            sock.waiting = []

    def term(self) -> None:
        self.ends.clear()
