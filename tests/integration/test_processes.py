"""The process group (one spawn-and-collect loop) and the one ZeroMQ context of a process."""

from __future__ import annotations

import os

from backbeat.processes import zmqcontext
from backbeat.processes.exits import Limits, oom_kills
from backbeat.processes.group import ProcessGroup

TARGETS = __name__


def echo(payload: dict) -> dict:
    """Job target: what the child received (the envelope of ProcessGroup.spawn)."""
    return {"spec": payload["spec"], "job": payload["job"], "root": payload["root"], "pid": os.getpid()}


def fail(payload: dict) -> None:
    raise ValueError(f"cannot do {payload['spec']['what']}")


def sleep(payload: dict) -> None:
    import time

    time.sleep(60)


def test_a_group_spawns_collects_and_classifies(tmp_path):
    seen = []
    group = ProcessGroup(root=str(tmp_path), on_message=seen.append)
    assert not group.started  # nothing runs until a job is spawned
    try:
        group.spawn("a", f"{TARGETS}:echo", {"x": [1, 2]})
        group.spawn("b", f"{TARGETS}:fail", {"what": "that"})
        group.spawn("c", f"{TARGETS}:sleep", None, Limits(timeout_s=0.5))
        out = group.wait(["a", "b", "c"])
    finally:
        group.close()
    assert out["a"].ok and out["a"].statistics["spec"] == {"x": [1, 2]}
    assert out["a"].statistics["job"] == "a" and out["a"].statistics["root"] == str(tmp_path)
    assert out["a"].statistics["pid"] != os.getpid()
    assert out["b"].kind == "user" and "cannot do that" in out["b"].message
    assert out["c"].kind == "timeout"
    assert {(m.job, m.type) for m in seen} >= {("a", "done"), ("b", "error")}


def test_a_limit_set_later_is_reported_with_when_it_started(tmp_path):
    """A streamed consumer's limit starts at its producer's end (``set_timeout``), not at its spawn:
    its message says so, with figures that add up — the time it ran before the limit started,
    plus the limit, is about how long it ran (not a limit of 0.5 s next to a run of 1.5 s)."""
    import re
    import time

    group = ProcessGroup(root=str(tmp_path))
    try:
        group.spawn("late", f"{TARGETS}:sleep", None)
        time.sleep(1.0)
        group.set_timeout("late", 0.5)
        out = group.wait(["late"])
    finally:
        group.close()
    assert out["late"].kind == "timeout"
    found = re.fullmatch(r"the block was killed after exceeding its time limit of 0\.5 s, counted from "
                         r"(\d+\.\d) s after it started \(it ran (\d+\.\d) s\)", out["late"].message)
    assert found, out["late"].message
    before, ran = float(found[1]), float(found[2])
    assert 0 < before and before + 0.5 - 0.1 <= ran, out["late"].message  # (0.1: rounding; before < 1 s:
    # the clock of both figures starts at the fork, after the fork server has started: 0.2 s under load)


def test_one_context_per_process_ended_with_its_last_user():
    assert zmqcontext.users() == 0
    first = zmqcontext.acquire()
    assert zmqcontext.acquire() is first and zmqcontext.users() == 2
    zmqcontext.release()
    assert not first.closed
    zmqcontext.release()
    assert first.closed and zmqcontext.users() == 0
    assert zmqcontext.acquire() is not first  # a new one when needed again
    zmqcontext.release()


def test_control_messages_are_accepted_only_with_the_jobs_token_from_its_process():
    """The kernel-backed half of the check (the token half is in tests/faults/test_hostile.py):
    a message carrying the right token, but sent by another process than the job's, is refused."""
    import time

    from backbeat.processes.control import ControlClient, ControlServer

    owner = {"mine": os.getpid(), "other": os.getpid() + 1}  # `other' is said to run in another process
    with ControlServer(pid_of=owner.get) as server:
        mine, other = server.register("mine"), server.register("other")
        clients = [ControlClient(server.address, "mine", mine), ControlClient(server.address, "other", other),
                   ControlClient(server.address, "mine", "not-the-token"),
                   ControlClient(server.address, "ghost", mine)]
        for c in clients:
            c.progress(1, 2)  # (the first one goes: the interval is counted from the start)
            c._last = 0.0
            c.progress(1, 2)
        deadline, seen = time.monotonic() + 10, []
        while len(seen) + len(server.refused) < 4 and time.monotonic() < deadline:
            seen += server.poll(50)
        for c in clients:
            c.close()
    assert [(m.job, m.type) for m in seen] == [("mine", "progress")]
    assert sorted(r["reason"] for r in server.refused) == ["no such job", "not sent by the job's process",
                                                          "not the job's token"]
    assert all(r["pid"] == os.getpid() for r in server.refused)  # who sent it, as the kernel says


def test_a_jobs_output_goes_to_its_bounded_log_never_to_stdout(tmp_path, capfd):
    log = tmp_path / "job.log"
    group = ProcessGroup()
    try:
        group.spawn("loud", f"{TARGETS}:loud", {"bytes": 3 << 20}, log=str(log))
        group.spawn("quiet", f"{TARGETS}:echo", {}, log=str(tmp_path / "quiet.log"))
        out = group.wait(["loud", "quiet"])
    finally:
        group.close()
    assert out["loud"].ok and out["quiet"].ok
    text = log.read_text()
    assert text.startswith("y" * 100) and text.endswith("the end\n") and "bytes of output omitted here]" in text
    assert len(text) < (1 << 20) + 100
    assert not (tmp_path / "quiet.log").exists()  # nothing written: no log
    assert "yyyy" not in capfd.readouterr().out


def loud(payload: dict) -> None:
    import sys

    line = "y" * 1023 + "\n"
    for _ in range(payload["spec"]["bytes"] // 2048):
        sys.stdout.write(line)
        sys.stderr.write(line)
    print("the end", flush=True)


def test_a_log_written_in_reach_of_a_sandbox_is_moved_as_a_bounded_log_never_through_a_link(tmp_path):
    from backbeat.processes.logs import HEAD, TAIL, move_log

    final = tmp_path / "cache" / "k.log"
    final.parent.mkdir()
    staged = tmp_path / "staged.log"
    staged.write_bytes(b"x" * (HEAD + TAIL + 1000) + b"end\n")
    move_log(str(staged), str(final))
    text = final.read_text()
    assert not staged.exists() and text.endswith("end\n") and "1004 bytes of output omitted" in text
    secret = tmp_path / "secret"
    secret.write_text("not a log")
    os.symlink(secret, staged)  # a sandboxed block replaced its log with a link: nothing is read
    move_log(str(staged), str(final))
    assert not final.exists() and secret.read_text() == "not a log"
    os.mkfifo(staged.with_suffix(".fifo"))  # nor a pipe (it would block)
    move_log(str(staged.with_suffix(".fifo")), str(final))
    assert not final.exists()


def test_the_oom_kill_count_is_the_kernels():
    # (read once per fork by the zygote: the whole file searched, not its lines looped over)
    try:
        with open("/proc/vmstat") as f:
            expected = next((int(line.split()[1]) for line in f if line.startswith("oom_kill ")), None)
    except OSError:
        expected = None
    assert oom_kills() == expected


def big(payload: dict) -> dict:
    """Job target: statistics far larger than a socket's buffer (read back over many reads)."""
    return {"blob": "x" * payload["spec"]["bytes"]}


def test_the_control_channel_needs_no_zeromq_and_hands_over_every_final_message_without_an_ack(tmp_path):
    """(wave 12) No ZeroMQ context in the executor for the control channel, no acknowledgement:
    each job's final message is on the channel before its process exits, so the first poll after
    its exit is seen returns it — however large it is; the group says which jobs it saw end, once each."""
    import time

    group = ProcessGroup(root=str(tmp_path))
    try:
        jobs = [f"j{k}" for k in range(12)]
        for k, job in enumerate(jobs):
            group.spawn(job, f"{TARGETS}:big" if k % 4 == 0 else f"{TARGETS}:echo", {"bytes": 3 << 20, "k": k})
        group.spawn("bad", f"{TARGETS}:fail", {"what": "that"})
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while len(seen) < 13:
            assert time.monotonic() < deadline, seen
            group.poll(20)
            for job in group.take_ended():
                seen.append(job)
                assert group._messages[job] == [] or group._messages[job][-1].type in ("done", "error")
                outcome = group.outcome(job)  # (one poll(0) first, nothing else)
                if job == "bad":
                    assert outcome.kind == "user" and "cannot do that" in outcome.message, outcome
                else:
                    assert outcome.ok, (job, outcome)
                    k = int(job[1:])
                    assert len(outcome.statistics["blob"]) == 3 << 20 if k % 4 == 0 else \
                        outcome.statistics["spec"]["k"] == k
        assert sorted(seen) == sorted([*jobs, "bad"]) and group.take_ended() == []
        assert zmqcontext.users() == 0  # (the executor opened no ZeroMQ socket)
        assert group._control is not None and group._control.rejected == 0 and not group.refused
    finally:
        group.close()


def test_malformed_frames_are_dropped_without_disturbing_other_connections(tmp_path):
    import socket
    import time

    from backbeat.processes.control import ControlClient, ControlServer, frame, path_of

    with ControlServer(pid_of=lambda _job: os.getpid()) as server:
        token = server.register("mine")
        raw = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
        for s in raw:
            s.connect(path_of(server.address))
        raw[0].sendall(frame(b"not json"))
        raw[1].sendall((2**31).to_bytes(4, "big") + b"{}")  # announces more than MAX_FRAME
        raw[2].sendall(frame(b'{"type": "done", "job": "mine"'))  # unfinished, then closed
        raw[2].sendall(b"\x00\x00")
        raw[2].close()
        client = ControlClient(server.address, "mine", token)
        client.done({"n": 1})
        client.close()
        deadline, seen = time.monotonic() + 10, []
        while (not seen or server.rejected < 4) and time.monotonic() < deadline:
            seen += server.poll(50)
        for s in raw[:2]:
            s.close()
    assert [(m.job, m.type, m.data) for m in seen] == [("mine", "done", {"statistics": {"n": 1}})]
    assert server.rejected == 4 and not server.refused  # (a bad text, a huge length, a bad text and a cut frame)


def test_the_senders_known_are_learnt_once_and_a_job_whose_pid_is_unknown_keeps_the_door_open(tmp_path):
    """The control server asks the group for the pids of its jobs' processes at each poll that
    accepts a connection: the group looks only at the jobs whose pid it did not know at its last
    answer (a chain of K blocks made that O(K) a block), and its answer is what a full scan says —
    every job's pid once told (ended jobs too: a last message may still be queued), ``unsure``
    while a running job's pid is not told yet, a forgotten job's pid gone."""
    group = ProcessGroup(root=str(tmp_path))
    try:
        for k in range(6):
            group.spawn(f"e{k}", f"{TARGETS}:echo", {"k": k})
        out = group.wait([f"e{k}" for k in range(6)])
        assert all(o.ok for o in out.values())
        pids, unsure = group._senders()
        pids = set(pids)
        assert pids == {group._handles[f"e{k}"].host_pid for k in range(6)} and not unsure

        class Spy:  # a job whose pid was told, looked at again by a later answer, fails the test
            def __init__(self, handle):
                self.handle = handle

            def __getattr__(self, name):
                raise AssertionError(f"a job whose pid was told was looked at again ({name})")

        for k in range(6):
            group._handles[f"e{k}"] = Spy(group._handles[f"e{k}"])
        group.spawn("s", f"{TARGETS}:sleep", None)
        handle = group._handles["s"]
        handle.pid  # noqa: B018 - (waits for its fork server to tell it)
        told, handle.host_pid = handle.host_pid, None  # (as before it is told)
        assert told is not None and group._senders() == (pids, True)  # (its process may connect first)
        handle.host_pid = told
        assert group._senders() == (pids | {told}, False)
        for k in range(6):
            group._handles[f"e{k}"] = group._handles[f"e{k}"].handle
        group.kill("s")
        group.wait(["s"])
        group.forget_ended()
        assert group._senders() == (set(), False)
    finally:
        group.close()
