"""Wire format: round trips through a real ZeroMQ PAIR socket to another process; strict decoding."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings

from backbeat.core.errors import WireError
from backbeat.data.batch import Batch
from backbeat.data.values import value_type
from backbeat.data.wire import BatchSender, decode, encode, recv_batch, send_batch


def _strategies():
    path = Path(__file__).parents[1] / "unit" / "test_batch.py"
    spec = importlib.util.spec_from_file_location("_backbeat_batch_strategies", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


S = _strategies()

# The peer receives a dataformat, then batches: it decodes each one to values, rebuilds a batch from
# those values and sends it back, so a round trip covers value -> batch -> wire -> batch -> value twice.
ECHO = textwrap.dedent("""
    import json, sys, zmq
    from backbeat.data.batch import Batch
    from backbeat.data.wire import recv_batch, send_batch
    sock = zmq.Context().socket(zmq.PAIR)
    sock.connect(sys.argv[1])
    fmt = None
    while True:
        frames = sock.recv_multipart(copy=False)
        kind = frames[0].bytes
        if kind == b"stop":
            break
        if kind == b"fmt":
            fmt = json.loads(frames[1].bytes)
            sock.send(b"ok")
            continue
        from backbeat.data.wire import decode
        batch = decode(frames, fmt["name"], fmt["expanded"])
        back = Batch.from_values(fmt["name"], fmt["expanded"], batch.to_values(), batch.starts, batch.ends)
        send_batch(sock, back)
""")


@pytest.fixture(scope="module", autouse=True)
def _no_threads_left(no_threads_left):  # (first set up: checked after every other fixture ended)
    yield


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    addr = f"ipc://{tmp_path_factory.mktemp('zmq')}/echo"
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.bind(addr)
    sock.setsockopt(zmq.RCVTIMEO, 20000)
    proc = subprocess.Popen([sys.executable, "-c", ECHO, addr])
    yield sock
    sock.send(b"stop")
    proc.wait(timeout=10)
    sock.close(linger=0)
    ctx.term()
    # frames sent without a copy (send_batch: copy=False, over pyzmq's copy threshold) start pyzmq's
    # garbage collector — a thread and a context of its own, which free their buffers once ZeroMQ is
    # done with them — for the rest of the process (a block's: fine); stopped here, nothing is in flight
    zmq.utils.garbage.gc.stop()


def _echo(sock, name, fmt, batch):
    sock.send_multipart([b"fmt", json.dumps({"name": name, "expanded": fmt}).encode()])
    assert sock.recv() == b"ok"
    send_batch(sock, batch)
    return recv_batch(sock, name, fmt)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(S.format_and_values(max_values=5))
def test_roundtrip_between_processes(peer, fv):
    fmt, values = fv
    batch = Batch.from_values("user/hypo/1", fmt, values, np.arange(len(values)) * 2, np.arange(len(values)) * 2 + 1)
    back = _echo(peer, "user/hypo/1", fmt, batch)
    assert back.to_values() == values
    assert back.starts.tolist() == batch.starts.tolist()
    assert back.equals(batch)


def test_every_type_and_rank_between_processes(peer):
    values = S.sink_values()
    back = _echo(peer, "user/sink/1", S.SINK, Batch.from_values("user/sink/1", S.SINK, values))
    assert back.to_values() == values


def test_large_batch_is_zero_copy(peer):
    fmt = {"a": [1000, "float64"], "s": "string"}
    n = 300
    batch = Batch.from_columns("user/big/1", fmt, {"a": np.random.rand(n, 1000), "s": ["é" * (i % 7) for i in range(n)]},
                               np.arange(n), np.arange(n))
    back = _echo(peer, "user/big/1", fmt, batch)
    assert back.equals(batch)
    assert not back.columns["a"].flags.owndata  # a view on the received frame


def test_values_of_a_private_batch_view_its_frames(peer):
    """Values of a batch received from another process view the message (no copy); still writable,
    and copies whenever the frames may be someone else's (not private, or read-only memory)."""
    fmt = {"a": [1000, "float64"], "v": [0, "float32"]}
    n = 64
    batch = Batch.from_columns("user/big/1", fmt, {"a": np.random.rand(n, 1000), "v#shape": np.ones((n, 1), np.int64),
                                                   "v#offsets": np.arange(n + 1), "v[]": np.arange(n, dtype=np.float32)},
                               np.arange(n), np.arange(n))
    peer.send_multipart([b"fmt", json.dumps({"name": "user/big/1", "expanded": fmt}).encode()])
    assert peer.recv() == b"ok"
    send_batch(peer, batch)  # (the peer echoes it)
    frames = peer.recv_multipart(copy=False)
    private, shared = decode(frames, "user/big/1", fmt, private=True), decode(frames, "user/big/1", fmt)
    assert private.private and not shared.private
    values = private.to_values()
    assert all(np.shares_memory(v.a, private.columns["a"]) for v in values)
    assert np.shares_memory(values[3].v, private.columns["v[]"])
    values[0].a[0] = -1.0  # writable, as BEAT's values
    assert not np.shares_memory(private.to_values()[0].a, private.columns["a"])  # made again: copies
    assert not any(np.shares_memory(v.a, shared.columns["a"]) for v in shared.to_values())
    readonly = decode([bytes(f.buffer) for f in frames], "user/big/1", fmt, private=True)
    assert not readonly.private and readonly.to_values()[1].a.flags.writeable


FMT = {"x": "int32", "s": "string", "v": [0, "float32"]}


def _frames():
    T = value_type("user/w/1", FMT)
    b = Batch.from_values("user/w/1", FMT, [T(x=1, s="ab", v=[1, 2]), T(x=2, s="c", v=[])])
    return [bytes(f) for f in encode(b)]


def test_decode_local_roundtrip():
    assert decode(_frames(), "user/w/1", FMT).to_values()[0].s == "ab"


def _header(frames):
    return json.loads(frames[0])


@pytest.mark.parametrize("mutate, message", [
    (lambda f: f[:2], "expected at least 3"),
    (lambda f: f[:-1], "truncated"),
    (lambda f: [b"\xff\xfe"] + f[1:], "not valid UTF-8 JSON"),
    (lambda f: [b"[1, 2]"] + f[1:], "not a backbeat batch"),
    (lambda f: [json.dumps({**_header(f), "dataformat": "user/other/1"}).encode()] + f[1:], "carries dataformat"),
    (lambda f: [json.dumps({**_header(f), "declaration": "0" * 64}).encode()] + f[1:], "declaration"),
    (lambda f: [json.dumps({**_header(f), "units": -1}).encode()] + f[1:], "unit count"),
    (lambda f: [json.dumps({**_header(f), "units": 3}).encode()] + f[1:], "bytes, expected"),
    (lambda f: f[:3] + [f[3][:-1]] + f[4:], "bytes, expected"),
    (lambda f: [json.dumps({**_header(f), "columns": _header(f)["columns"][:-1]}).encode()] + f[1:], "columns"),
    (lambda f: [json.dumps({**_header(f), "columns": [[c[0], "<f8", c[2]] for c in _header(f)["columns"]]}).encode()]
     + f[1:], "does not match"),
])
def test_malformed_messages_are_refused(mutate, message):
    with pytest.raises(WireError, match=message):
        decode(mutate(_frames()), "user/w/1", FMT)


def test_bad_booleans_are_refused():
    fmt = {"b": "bool"}
    frames = [bytes(f) for f in encode(Batch.from_values("user/b/1", fmt, [value_type("user/b/1", fmt)(b=True)]))]
    frames[3] = b"\x07"
    with pytest.raises(WireError, match="boolean"):
        decode(frames, "user/b/1", fmt)


def test_inconsistent_offsets_are_refused():
    frames = _frames()
    names = [c[0] for c in _header(frames)["columns"]]
    i = 3 + names.index("s#offsets")
    frames[i] = np.array([0, 5, 3], dtype="<i8").tobytes()
    with pytest.raises(WireError, match="malformed batch"):
        decode(frames, "user/w/1", FMT)
    frames = _frames()
    frames[2] = np.array([7, 7], dtype="<i8").tobytes()  # ends before starts / not contiguous
    with pytest.raises(WireError, match="malformed batch"):
        decode(frames, "user/w/1", FMT)


def test_batch_sender_groups_small_units():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://sender")
    b.connect("inproc://sender")
    fmt = {"x": "int32", "s": "string"}
    T = value_type("user/small/1", fmt)
    sender = BatchSender(a, "user/small/1", fmt, max_units=400)
    for i in range(1000):
        sender.add(T(x=i, s=str(i)) if i % 2 else {"x": np.int32(i), "s": str(i)}, 2 * i, 2 * i + 1)
    sender.flush()
    assert sender.sent_messages == 3
    got = [recv_batch(b, "user/small/1", fmt) for _ in range(3)]
    assert [len(g) for g in got] == [400, 400, 200]
    values = [v for g in got for v in g.to_values()]
    assert [int(v.x) for v in values] == list(range(1000)) and values[999].s == "999"
    assert got[2].ends[-1] == 1999
    a.close()
    b.close()
    ctx.term()


def test_batch_sender_sends_each_unit_as_it_was_added():
    """One object reused and a running total changed in place after ``add``: each unit travels
    with its values at ``add``, not at ``flush`` (BEAT serialises at ``write()``)."""
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://snapshots")
    b.connect("inproc://snapshots")
    fmt = {"value": [2, "float64"], "s": "string", "v": [0, "int32"]}
    T = value_type("user/snap/1", fmt)
    sender = BatchSender(a, "user/snap/1", fmt, max_units=64)
    obj, total, v = T(value=[0, 0], s="", v=np.zeros(3, np.int32)), np.zeros(2), np.zeros(3, np.int32)
    for i in range(100):
        total += 1
        obj.value[:] = -total
        obj.s = str(i)
        obj.v[:] = i
        v[:] = i
        sender.add(obj if i % 2 else {"value": total, "s": str(i), "v": v}, i, i)
    obj.value[:] = total[:] = v[:] = 0
    sender.flush()
    values = [u for g in (recv_batch(b, "user/snap/1", fmt) for _ in range(2)) for u in g.to_values()]
    assert [list(u.value) for u in values] == [[(-1) ** (i % 2) * (i + 1)] * 2 for i in range(100)]
    assert [u.s for u in values] == [str(i) for i in range(100)] and [list(u.v) for u in values] == [[i] * 3 for i in range(100)]
    a.close()
    b.close()
    ctx.term()
