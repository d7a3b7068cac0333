"""(wave 12, review) What a hostile block can do to the executor's end of the control channel is
bounded: frames that make the parser raise, huge frames, many connections, floods of progress, and
the block's own end works with any descriptor number.  Real processes, real Unix sockets."""

from __future__ import annotations

import errno
import os
import resource
import socket
import threading
import time

from backbeat.processes import controlserver
from backbeat.processes.control import ControlClient, ControlServer, frame, path_of
from backbeat.processes.group import ProcessGroup

TARGETS = __name__


def _raw(server: ControlServer) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path_of(server.address))
    return sock


def _until(server: ControlServer, condition, seen: list, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        seen += server.poll(20)


def test_frames_that_make_the_parser_raise_are_rejected_not_a_crash():
    """A deeply nested text (RecursionError in json) and a non-ASCII token (TypeError in
    hmac.compare_digest) are counted, and the real job's message still comes through."""
    with ControlServer(pid_of=lambda _job: os.getpid()) as server:
        token = server.register("mine")
        hostile = _raw(server)
        hostile.sendall(frame(b"[" * 20_000 + b"]" * 20_000))  # (fits the socket buffer)
        hostile.sendall(frame(('{"type": "done", "job": "mine", "statistics": {}, "token": "%s"}'
                               % ("\u00e9" * 32)).encode()))
        hostile.sendall(frame(b'{"type": "progress", "job": "mine", "done": "many", "token": "%s"}'
                              % token.encode()))
        client = ControlClient(server.address, "mine", token)
        client.done({"n": 1})
        client.close()
        seen: list = []
        _until(server, lambda: seen, seen)
        hostile.close()
    assert [(m.type, m.data) for m in seen] == [("done", {"statistics": {"n": 1}})]
    assert server.rejected == 2  # (the nested text, the malformed progress)
    assert [r["reason"] for r in server.refused] == ["not the job's token"]


def test_a_frame_announcing_more_than_the_cap_drops_its_connection_as_soon_as_its_length_is_in():
    """A sender announcing a frame larger than MAX_FRAME (but far below the old 1 GiB cap) and
    writing on is cut off at once: the executor buffers nothing of it, and the sender's writes fail."""
    with ControlServer(pid_of=lambda _job: os.getpid()) as server:
        token = server.register("mine")
        hostile = _raw(server)
        failed: list[BaseException] = []

        def flood() -> None:
            try:
                hostile.sendall((64 << 20).to_bytes(4, "big"))
                for _ in range(128):  # 8 MiB, then the connection is kept open
                    hostile.sendall(b"[" * (1 << 16))
            except OSError as exc:
                failed.append(exc)

        writer = threading.Thread(target=flood)
        writer.start()
        seen: list = []
        _until(server, lambda: not writer.is_alive(), seen)
        writer.join(5)
        assert server.rejected == 1 and not server._conns, (server.rejected, server._conns)
        assert failed and isinstance(failed[0], (BrokenPipeError, ConnectionResetError)), failed
        client = ControlClient(server.address, "mine", token)
        client.done({"n": 2})
        client.close()
        _until(server, lambda: seen, seen)
        hostile.close()
    assert [m.type for m in seen] == ["done"]


def too_much(payload: dict) -> dict:
    """Job target: statistics larger than the channel carries."""
    return {"blob": "x" * (controlserver.MAX_FRAME + 1)}


def huge_error(payload: dict) -> None:
    raise ValueError("y" * (controlserver.MAX_FRAME + 1))


def emoji_error(payload: dict) -> None:
    """An error whose characters take 12 bytes each in JSON: cut by characters, still over a frame."""
    raise ValueError("\U0001F600" * 300_000)


def progress_flood(payload: dict) -> dict:
    from backbeat.processes import control

    client = control.client()
    assert client is not None
    client._interval = 0.0
    for k in range(2000):
        client.progress(k, 2000)
    return {"sent": 2000}


def test_statistics_or_errors_larger_than_a_frame_are_reported_clearly_and_progress_is_kept_once(tmp_path):
    group = ProcessGroup(root=str(tmp_path))
    try:
        group.spawn("stats", f"{TARGETS}:too_much")
        group.spawn("error", f"{TARGETS}:huge_error")
        group.spawn("emoji", f"{TARGETS}:emoji_error")
        group.spawn("flood", f"{TARGETS}:progress_flood")
        outcomes = group.wait(["stats", "error", "emoji", "flood"], timeout=120)
        kept = group._messages["flood"]
    finally:
        group.close()
    assert outcomes["stats"].kind == "system" and "more than the control channel carries" in \
        outcomes["stats"].message, outcomes["stats"]
    assert outcomes["error"].kind == "user" and "characters cut" in outcomes["error"].message
    assert len(outcomes["error"].message) < controlserver.MAX_FRAME // 4
    assert outcomes["emoji"].kind == "user" and "characters cut" in outcomes["emoji"].message, outcomes["emoji"]
    assert outcomes["flood"].ok and outcomes["flood"].statistics == {"sent": 2000}, outcomes["flood"]
    assert [m.type for m in kept] in (["progress", "done"], ["done"]), [m.type for m in kept]


def hog(payload: dict) -> dict:
    """Job target: opens many connections to the channel and keeps them, then reports."""
    socks = []
    for _ in range(100):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path_of(payload["control"]))
        except OSError:
            break
        socks.append(s)
    time.sleep(1.0)
    return {"opened": len(socks)}


def fine(payload: dict) -> dict:
    return {"k": payload["spec"]["k"]}


def test_a_block_opening_many_connections_keeps_few_and_other_processes_none(tmp_path):
    group = ProcessGroup(root=str(tmp_path))
    try:
        group.spawn("hog", f"{TARGETS}:hog")
        group.spawn("fine", f"{TARGETS}:fine", {"k": 1})
        outcomes = group.wait(["hog", "fine"], timeout=120)
        assert group._control is not None
        refused, before = [r["reason"] for r in group._control.refused], group._control.refused_count
        # another process (not a job) connecting once every job's pid is known: closed at once
        pid = os.fork()
        if pid == 0:
            try:
                others = []
                for _ in range(50):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(path_of(group._control.address))
                    others.append(s)
                time.sleep(2)
            finally:
                os._exit(0)
        seen: list = []
        _until(group._control, lambda: group._control.refused_count >= before + 50, seen)
        still_open = len(group._control._conns)
        os.waitpid(pid, 0)
        late = group._control.refused_count - before
    finally:
        group.close()
    assert outcomes["fine"].ok and outcomes["fine"].statistics == {"k": 1}, outcomes  # (hog may lose its own)
    assert refused.count("too many connections from one process") >= 100 - controlserver.PER_SENDER, refused
    assert still_open == 0 and late == 50, (still_open, late)


def test_a_progress_message_is_sent_from_a_descriptor_above_1024():
    with ControlServer(pid_of=lambda _job: os.getpid()) as server:
        token = server.register("mine")
        client = ControlClient(server.address, "mine", token)
        client._last = 0.0
        client.progress(1, 3)  # (connects)
        assert client._sock is not None
        high = os.dup2(client._sock.fileno(), 1500)
        client._sock.close()
        client._sock = socket.socket(fileno=high)
        client._last = 0.0
        client.progress(2, 3)
        client.done({})
        client.close()
        seen: list = []
        _until(server, lambda: seen and seen[-1].type == "done", seen)
    assert [(m.type, m.data.get("done")) for m in seen] == [("progress", 1), ("progress", 2), ("done", None)]


def test_out_of_descriptors_the_listener_pauses_instead_of_spinning_then_accepts():
    """accept() failing with EMFILE leaves the listener readable: without the pause, every poll would
    return at once (a busy loop for as long as the process has no descriptor to spare)."""
    with ControlServer(pid_of=lambda _job: os.getpid()) as server:
        token = server.register("mine")
        client = ControlClient(server.address, "mine", token)
        client._last = 0.0
        client.progress(1, 3)  # (connected: in the listener's backlog, its frame queued)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fillers: list[int] = []
        polls, seen = 0, []
        try:
            highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 16, hard))
            while True:  # (every descriptor below the limit taken: accept() cannot get one)
                try:
                    fillers.append(os.dup(0))
                except OSError as e:
                    assert e.errno == errno.EMFILE
                    break
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                seen += server.poll(200)
                polls += 1
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert not seen
        assert polls < 100, polls  # (paused 50 ms at a time: ~20 polls in 0.5 s; spinning: thousands)
        _until(server, lambda: seen, seen)  # descriptors free again: accepted, its message read
        client.close()
    assert [(m.type, m.data.get("done")) for m in seen] == [("progress", 1)]
