"""A stream between two real processes over :class:`backbeat.runtime.streamsocket.StreamSocket`:
no ZeroMQ context nor thread in either, a consumer started before its producer, large and small
messages, back-pressure, a producer that dies (docs/performance.md, "Wave 14 (perf-ch)")."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import socket
import struct
import time
from typing import Any

import numpy as np
import pytest
import zmq

from backbeat.core.errors import WireError
from backbeat.data.batch import Batch
from backbeat.runtime import streams, streamsocket
from backbeat.runtime.spec import StreamTarget
from backbeat.runtime.streamsocket import StreamSocket

FMT = "t/1"
EXP = {"value": [1000, "float64"]}  # (8 KB a unit: a batch of 300 is a 2.4 MB frame)


def _in_child(body) -> tuple[int, int]:
    """Fork a child running ``body(wfd)``; its pid and the read end of its pipe."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(rfd)
            body(wfd)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            os.write(wfd, json.dumps({"error": repr(e)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    return pid, rfd


def _read_all(fd: int) -> dict:
    out = b""
    while chunk := os.read(fd, 1 << 16):
        out += chunk
    os.close(fd)
    return json.loads(out)


def _threads() -> list[str]:
    names = []
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{t}/comm") as f:
            names.append(f.read().strip())
    return names


def _batch(first: int, n: int) -> Batch:
    values = (np.arange(first, first + n, dtype=np.float64)[:, None] + np.zeros(1000)).copy()
    idx = np.arange(first, first + n, dtype=np.int64)
    return Batch(FMT, EXP, idx, idx.copy(), {"value": values})


def test_a_stream_between_two_processes_runs_without_zeromq_and_a_late_producer_is_waited_for(tmp_path):
    """The consumer starts first and connects once its producer binds (200 ms later); 1,210 units
    (a 2.4 MB frame among them) arrive whole and in order; neither process has a ZeroMQ context or
    thread, and once the stream is settled the consumer's only thread is its own."""
    address = f"ipc://{tmp_path}/s"
    sizes = [10, 300, 900]

    def consumer(wfd: int) -> None:
        source = streams.StreamSource(address, FMT, EXP)
        got, during = [], []
        for values, starts, _ends in source.iter_chunks():
            got += [float(np.asarray(v.value)[0]) for v in values] if hasattr(values[0], "value") else \
                [float(np.asarray(v["value"])[0]) for v in values]
            during.append(_threads())
            assert list(starts) == [int(x) for x in got[-len(starts):]]
        source.settle()
        source.close()
        os.write(wfd, json.dumps({"got": got, "during": during, "after": _threads()}).encode())

    def producer(wfd: int) -> None:
        time.sleep(0.2)
        sender = streams.StreamSender([StreamTarget(address, str(tmp_path / "cancel"))], 300 * 8000, 300)
        first = 0
        for n in sizes:
            sender.send(_batch(first, n))
            first += n
        sender.finish(first - 1)
        sender.acks()
        os.write(wfd, json.dumps({"threads": _threads(), "sent": sender.units}).encode())

    cpid, crfd = _in_child(consumer)
    ppid, prfd = _in_child(producer)
    prod, cons = _read_all(prfd), _read_all(crfd)
    assert os.waitpid(ppid, 0)[1] == 0 and os.waitpid(cpid, 0)[1] == 0, (prod, cons)
    assert cons["got"] == [float(i) for i in range(sum(sizes))] and prod["sent"] == sum(sizes)
    assert not any(name.startswith("ZMQbg") for names in [prod["threads"], *cons["during"]] for name in names)
    assert prod["threads"] == ["python"] or len(prod["threads"]) == 1
    assert len(cons["after"]) == 1


def test_a_full_socket_raises_again_without_blocking_and_drains_once_read(tmp_path):
    """Back-pressure: a consumer that reads nothing makes a NOBLOCK send raise ``zmq.Again`` once the
    kernel's buffer and one unwritten message are held — never a blocked producer — and everything
    arrives, in order, once it reads."""
    path = str(tmp_path / "p")
    tx, rx = StreamSocket(), StreamSocket()
    tx.sndhwm, tx.message_bytes = 1, 1
    tx.bind(path)
    rx.connect(path)
    frame = bytes(range(256)) * 256  # 64 KiB
    sent = 0
    try:
        with pytest.raises(zmq.Again):
            for _ in range(10_000):
                t = time.monotonic()
                tx.send_multipart([b"m", frame, sent.to_bytes(4, "little")], flags=zmq.NOBLOCK)
                assert time.monotonic() - t < 5
                sent += 1
        assert sent < 10_000 and tx.poll(0, zmq.POLLOUT) == 0
        got = 0
        while got < sent:
            assert rx.poll(5000, zmq.POLLIN) == zmq.POLLIN
            kind, body, n = rx.recv_multipart(copy=False)
            assert (bytes(kind), bytes(body), int.from_bytes(n, "little")) == (b"m", frame, got)
            got += 1
            tx.poll(0, zmq.POLLOUT)  # (the producer's loop: what was held is written as room appears)
        assert rx.poll(0, zmq.POLLIN) == 0 and tx.poll(1000, zmq.POLLOUT) == zmq.POLLOUT
    finally:
        tx.close()
        rx.close()


def test_a_consumer_whose_producer_dies_keeps_waiting_as_it_did_with_zeromq(tmp_path):
    """A producer killed after half a message: the consumer neither fails nor returns the half — it
    waits (the executor kills it), and a message is never made of two connections' bytes."""
    path = str(tmp_path / "p")

    def half(wfd: int) -> None:
        tx = StreamSocket()
        tx.bind(path)
        os.write(wfd, b"{}")
        os.close(wfd)
        while not tx.poll(50, zmq.POLLOUT):
            pass
        tx._conn.sendall((2).to_bytes(4, "little") + (1).to_bytes(4, "little") + b"x")  # (frame 2 never sent)
        time.sleep(60)

    pid, rfd = _in_child(half)
    os.read(rfd, 2)
    rx = StreamSocket()
    try:
        rx.connect(path)
        assert rx.poll(300, zmq.POLLIN) == 0  # (half a message: not a message)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert rx.poll(300, zmq.POLLIN) == 0 and not rx.closed  # (waiting, as a ZeroMQ PAIR did)
        with pytest.raises(zmq.Again):
            rx.recv_multipart(flags=zmq.NOBLOCK)
    finally:
        rx.close()
        os.close(rfd)


def test_a_malformed_message_is_refused(tmp_path):
    """A frame count or a frame length past the bounds is an error, not an allocation."""
    path = str(tmp_path / "p")
    rx_listen = StreamSocket()
    rx_listen.bind(path)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(path)
    try:
        raw.sendall((1 << 20).to_bytes(4, "little"))
        with pytest.raises(zmq.ZMQError):
            rx_listen.poll(2000, zmq.POLLIN)
    finally:
        raw.close()
        rx_listen.close()


def _pair(tmp_path, rcvhwm: int = 0) -> tuple[StreamSocket, StreamSocket]:
    path = str(tmp_path / "p")
    tx, rx = StreamSocket(), StreamSocket()
    tx.sndhwm, tx.message_bytes, rx.rcvhwm = 1, 1, rcvhwm
    tx.bind(path)
    rx.connect(path)
    return tx, rx


def _raw_producer(tmp_path) -> tuple[socket.socket, StreamSocket]:
    """A consumer connected to a raw socket that plays its producer (what goes on the wire is the test's)."""
    path = str(tmp_path / "raw")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    rx = StreamSocket()
    rx.connect(path)
    raw, _ = listener.accept()
    listener.close()
    return raw, rx


def test_a_consumer_reads_ahead_only_its_high_water_mark_and_holds_a_fast_producer_back(tmp_path):
    """A consumer that polls but does not receive holds ``rcvhwm`` messages, no more: the rest stays
    in the kernel's buffers and its producer's NOBLOCK sends soon raise ``zmq.Again`` (before: every
    message read as it came, the consumer's memory without bound and its producer never held back)."""
    tx, rx = _pair(tmp_path, rcvhwm=3)
    sent = 0
    try:
        with pytest.raises(zmq.Again):
            for _ in range(200_000):
                tx.send_multipart([b"m", sent.to_bytes(4, "little")], flags=zmq.NOBLOCK)
                sent += 1
                assert rx.poll(0, zmq.POLLIN) in (0, zmq.POLLIN)
        assert sent < 200_000 and len(rx._ready) == 3
        for got in range(sent):  # (and everything arrives, in order, once read)
            kind, n = rx.recv_multipart()
            assert (kind, int.from_bytes(n, "little")) == (b"m", got)
            assert len(rx._ready) <= 3
            tx.poll(0, zmq.POLLOUT)
    finally:
        tx.close()
        rx.close()


def test_a_message_of_thousands_of_frames_is_sent_whole(tmp_path):
    """A dataformat of many columns is a message of many frames: more than one ``sendmsg`` can take
    (Linux's IOV_MAX), sent in several, received whole."""
    tx, rx = _pair(tmp_path)
    frames = [b"batch"] + [i.to_bytes(8, "little") for i in range(3000)]
    try:
        tx.send_multipart(frames, flags=zmq.NOBLOCK)
        assert rx.poll(5000, zmq.POLLIN) == zmq.POLLIN
        assert rx.recv_multipart() == frames
    finally:
        tx.close()
        rx.close()


def test_a_large_frame_announced_takes_no_memory_before_its_bytes_arrive(tmp_path):
    """A header announcing a 3 GiB frame (more than 4-byte lengths could say; beyond the old 2 GiB
    bound) is not refused, nor does it take 3 GiB at once: memory grows as the bytes arrive."""

    def consumer(wfd: int) -> None:
        raw, rx = _raw_producer(tmp_path)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        raw.sendall(struct.pack("<IQ", 1, 3 << 30) + b"x" * 60_000)  # (less than the socket buffers: no wait)
        polled = [rx.poll(200, zmq.POLLIN) for _ in range(3)]
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
        os.write(wfd, json.dumps({"polled": polled, "grown_mb": grown_mb}).encode())

    pid, rfd = _in_child(consumer)
    got = _read_all(rfd)
    assert os.waitpid(pid, 0)[1] == 0, got
    assert got["polled"] == [0, 0, 0] and got["grown_mb"] < 256, got


def test_a_frame_past_the_bound_is_refused_by_its_producer_with_a_clear_error(tmp_path, monkeypatch):
    """The producer names the bound (not a ``struct.error``, nor a consumer's protocol error)."""
    monkeypatch.setattr(streamsocket, "MAX_FRAME", 1000)
    tx, rx = _pair(tmp_path)
    try:
        tx.send_multipart([b"m", b"x" * 999], flags=zmq.NOBLOCK)
        with pytest.raises(WireError, match="less than 1000 bytes"):
            tx.send_multipart([b"m", b"x" * 1000], flags=zmq.NOBLOCK)
        with pytest.raises(WireError, match="0 frames"):
            tx.send_multipart([], flags=zmq.NOBLOCK)
        assert rx.recv_multipart() == [b"m", b"x" * 999]
    finally:
        tx.close()
        rx.close()


@pytest.mark.parametrize("header", [struct.pack("<I", 0), struct.pack("<IQ", 1, 1 << 62)],
                         ids=["no frame", "a frame past the bound"])
def test_a_message_of_no_frame_or_of_too_large_a_frame_is_refused(tmp_path, header):
    raw, rx = _raw_producer(tmp_path)
    try:
        raw.sendall(header)
        with pytest.raises(zmq.ZMQError):
            rx.poll(2000, zmq.POLLIN)
    finally:
        raw.close()
        rx.close()


def test_a_stream_works_with_more_than_a_thousand_files_open(tmp_path):
    """Its sockets' descriptors past 1,024 (a block with many files open): ``select`` could not wait on them."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        tx, rx = _pair(tmp_path)
        try:
            assert rx.poll(100, zmq.POLLIN) == 0
            tx.send_multipart([b"m", b"1"])
            assert rx.poll(5000, zmq.POLLIN) == zmq.POLLIN and rx.recv_multipart() == [b"m", b"1"]
        finally:
            tx.close()
            rx.close()
    finally:
        for fd in held:
            os.close(fd)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_closed_producer_leaves_no_socket_file_and_a_failed_bind_leaves_nothing_open(tmp_path):
    """As ZeroMQ's ``ipc://`` listener: the socket file goes with the socket (another bound there since
    is left alone); a bind that fails closes its socket, and a sender one of whose targets cannot be
    bound closes (and removes) the ones bound before it."""
    tx = StreamSocket()
    tx.bind(str(tmp_path / "a"))
    assert (tmp_path / "a").exists()
    tx.close()
    assert not (tmp_path / "a").exists()

    old, new = StreamSocket(), StreamSocket()
    old.bind(str(tmp_path / "b"))
    new.bind(str(tmp_path / "b"))  # (the old one's file replaced: a stale file of nobody)
    old.close()
    assert (tmp_path / "b").exists()
    new.close()
    assert not (tmp_path / "b").exists()

    before = _fds()
    with pytest.raises(OSError):
        StreamSocket().bind(str(tmp_path / "missing" / "c"))
    assert _fds() == before
    targets = [StreamTarget(f"ipc://{tmp_path}/d", str(tmp_path / "cancel")),
               StreamTarget(f"ipc://{tmp_path}/missing/e", str(tmp_path / "cancel"))]
    with pytest.raises(OSError):
        streams.StreamSender(targets)
    assert _fds() == before and not (tmp_path / "d").exists()


@pytest.mark.parametrize("wire", [struct.pack("<IQ", 1, 2) + b"M1" + struct.pack("<I", 0),
                                  struct.pack("<IQ", 2, 1) + b"x" + struct.pack("<Q", 1 << 41)],
                         ids=["a bad header after a whole message", "a bad frame length inside a message"])
def test_a_malformed_stream_stays_refused_and_nothing_is_parsed_twice(tmp_path, wire):
    """What was parsed before a malformed header is consumed: asking again raises again, never hands
    a message twice nor reads a header's bytes as another field."""
    raw, rx = _raw_producer(tmp_path)
    try:
        raw.sendall(wire)
        for _ in range(3):
            with pytest.raises(zmq.ZMQError):
                rx.poll(500, zmq.POLLIN)
        assert len(rx._ready) <= 1 and rx._big is None
    finally:
        raw.close()
        rx.close()


def test_messages_read_ahead_are_handed_out_after_their_producer_closed(tmp_path):
    tx, rx = _pair(tmp_path, rcvhwm=8)
    try:
        for k in range(3):
            tx.send_multipart([b"m%d" % k])
        assert rx.poll(2000, zmq.POLLIN) and len(rx._ready) == 3  # (all three read ahead)
        tx.close(0)
        got = []
        for _ in range(3):
            assert rx.poll(500, zmq.POLLIN) == zmq.POLLIN
            got.append(bytes(rx.recv_multipart()[0]))
        assert got == [b"m0", b"m1", b"m2"]
    finally:
        tx.close(0)
        rx.close()


class _FailingSecondSend:
    """A connection whose second ``sendmsg`` fails as the kernel may (ENOBUFS), after the first wrote."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn, self.calls = conn, 0

    def sendmsg(self, *args: Any) -> int:
        self.calls += 1
        if self.calls == 2:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return self._conn.sendmsg(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_send_failing_mid_message_drops_it_with_its_connection_never_sends_its_tail_later(tmp_path):
    tx, rx = _pair(tmp_path)
    try:
        tx.send_multipart([b"first"])
        assert rx.poll(2000, zmq.POLLIN) and bytes(rx.recv_multipart()[0]) == b"first"
        tx._conn = _FailingSecondSend(tx._conn)
        with pytest.raises(OSError):
            tx.send_multipart([b"x"] * 1500)  # (more buffers than one sendmsg takes: two rounds)
        assert not tx._pending and tx._conn is None  # (nothing of it kept to be written by a later send)
    finally:
        tx.close(0)
        rx.close()
