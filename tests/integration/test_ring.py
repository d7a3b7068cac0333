"""The write-sealed ring of a stream's large batches (backbeat.data.ring, runtime.streams): real
processes on both sides, real memfds, sockets and seals.

The side under test runs here; the other is a fresh Python process (``PEER``) that streams or reads
batches of 64 units of 1,000 float64 (512 KiB: over ``ring.MIN_BYTES``), unit ``i`` all ``i``.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from backbeat.core.errors import WireError
from backbeat.data import ring
from backbeat.data.batch import Batch
from backbeat.runtime import streams
from backbeat.runtime.spec import StreamTarget

pytestmark = pytest.mark.skipif(not ring.usable(), reason="no write-sealed memfds here (Linux >= 5.1)")

FMT = {"value": [1000, "float64"]}
UNITS = 64  # per batch
BYTES = UNITS * 8000

PEER = '''
import json, os, signal, sys
import numpy as np
from backbeat.data.batch import Batch
from backbeat.runtime import streams
from backbeat.runtime.spec import StreamTarget

role, address, mode, batches = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fmt = {"value": [1000, "float64"]}
if role == "consume":
    src = streams.StreamSource(address, "t/1", fmt, %(bytes)d, 64)
    seen = []
    for value, start, end in src.iter_units():
        seen.append(float(value.value.mean()))
        if mode == "die" and len(seen) == 64:
            os._exit(3)
    print(json.dumps({"units": len(seen), "ok": seen == [float(i) for i in range(len(seen))],
                      "ring": src._ring is not None}), flush=True)
    src.close()
else:
    snd = streams.StreamSender([StreamTarget(address, address[6:] + ".cancel")], %(bytes)d, 64)
    for b in range(batches):
        i = np.arange(b * 64, b * 64 + 64)
        snd.send(Batch.from_columns("t/1", fmt, {"value": np.repeat(i[:, None], 1000, 1).astype("f8")}, i, i))
        if mode == "die" and b == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "tamper" and b == 0:  # once the consumer has taken the slot back: change it anyway
            (sock, cancel), = snd._live
            out = snd._rings[sock]
            while len(out.writer.free) < out.writer.slots:
                snd._reclaim(sock, cancel, out, wait=True)
            out.writer._slots[:] = 0xFF
    snd.finish(batches * 64 - 1)
'''


def _batch(b: int) -> Batch:
    i = np.arange(b * UNITS, (b + 1) * UNITS)
    return Batch.from_columns("t/1", FMT, {"value": np.repeat(i[:, None], 1000, 1).astype("f8")}, i, i)


def _peer(tmp_path, role: str, mode: str, batches: int = 0) -> tuple[subprocess.Popen, str]:
    script = tmp_path / "peer.py"
    script.write_text(PEER % {"bytes": BYTES})
    address = f"ipc://{tmp_path}/s"
    proc = subprocess.Popen([sys.executable, str(script), role, address, mode, str(batches)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, address


def _read_all(address: str) -> tuple[list[float], streams.StreamSource]:
    src = streams.StreamSource(address, "t/1", FMT, BYTES, UNITS)
    values = [v.value for v, _s, _e in src.iter_units()]
    return values, src


@pytest.fixture
def deadline():
    """Fail instead of hanging: a side that waits for a dead peer is the defect tested here."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("a side waited for a dead peer"))
    signal.alarm(60)
    yield
    signal.alarm(0)


def test_a_stream_of_large_batches_goes_through_the_ring_and_arrives_whole(tmp_path, deadline):
    proc, address = _peer(tmp_path, "consume", "read")
    snd = streams.StreamSender([StreamTarget(address, str(tmp_path / "cancel"))], BYTES, UNITS)
    for b in range(12):  # (3 times round the ring)
        snd.send(_batch(b))
    snd.send(_batch(12).slice(0, 3))  # a small batch takes the socket, in its place
    snd.finish(12 * UNITS + 2)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"units": 12 * UNITS + 3, "ok": True, "ring": True}
    assert sorted(os.listdir(tmp_path)) == ["peer.py", "s"]  # (the listener's socket is gone)


def test_a_producer_dying_mid_ring_ends_its_consumer_with_an_error(tmp_path, deadline, monkeypatch):
    """(In a run the executor kills the consumer first: it is reported skipped; here there is none.)"""
    monkeypatch.setattr(streams, "PRODUCER_GONE_S", 0.5)
    proc, address = _peer(tmp_path, "produce", "die", 10)
    t0 = time.monotonic()
    with pytest.raises(WireError, match="producer ended before the end of the stream"):
        _read_all(address)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert time.monotonic() - t0 < 30


def test_a_consumer_dying_mid_ring_does_not_hold_its_producer(tmp_path, deadline):
    """No cancel file here (the executor's signal): the ring's connection is enough."""
    proc, address = _peer(tmp_path, "consume", "die")
    snd = streams.StreamSender([StreamTarget(address, str(tmp_path / "no-cancel"))], BYTES, UNITS)
    for b in range(20):  # the ring fills: the producer waits for slots the dead consumer never frees
        snd.send(_batch(b))
    snd.finish(20 * UNITS - 1)
    assert proc.wait(timeout=30) == 3
    assert snd._live == []


def test_a_slot_changed_after_its_hand_over_does_not_change_what_the_consumer_took(tmp_path, deadline):
    proc, address = _peer(tmp_path, "produce", "tamper", 3)
    values, src = _read_all(address)
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    assert src._ring is not None  # (it went through the ring)
    assert [float(v.mean()) for v in values] == [float(i) for i in range(3 * UNITS)]  # the copies, not the slots
    assert values[0].flags.writeable  # (private, as BEAT's values)
    with pytest.raises(TypeError):  # the consumer's own mapping is read-only
        src._ring._map[0] = 1
    src.close()


def test_nobody_but_the_producer_can_write_a_ring_and_a_reader_refuses_anything_else(tmp_path):
    writer = ring.RingWriter(2, 1 << 16)
    try:
        fd = writer.fd
        with pytest.raises(PermissionError):
            mmap.mmap(fd, 2 << 16, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
        again = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)  # (re-opened read-write: still refused)
        try:
            with pytest.raises(PermissionError):
                os.pwrite(again, b"x", 0)
            with pytest.raises(PermissionError):
                mmap.mmap(again, 2 << 16, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(again)
        with pytest.raises(PermissionError):  # (nor shrink it under a reader's mapping)
            os.ftruncate(fd, 0)
        k, lengths = writer.put([b"abc", np.arange(3.0)])
        reader = ring.RingReader(os.dup(fd), 2, writer.slot_bytes)
        assert [bytes(v) for v in reader.take(k, lengths)] == [b"abc", np.arange(3.0).tobytes()]
        for bad in [(2, [1]), (-1, [1]), (0, [writer.slot_bytes + 1]), (0, [-1]), (0, "1"), ("0", [1])]:
            with pytest.raises(WireError):
                reader.take(*bad)
        with pytest.raises(WireError, match="has 131072 bytes"):
            ring.RingReader(os.dup(fd), 1, writer.slot_bytes)
        reader.close()
    finally:
        writer.close()
    loose = os.memfd_create("loose", os.MFD_ALLOW_SEALING)
    os.ftruncate(loose, 4096)
    fcntl.fcntl(loose, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    with pytest.raises(WireError, match="not sealed"):
        ring.RingReader(loose, 1, 4096)
