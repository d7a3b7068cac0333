"""The process group (one spawn-and-collect loop) and the one ZeroMQ context of a process."""

from __future__ import annotations

import os

from backbeat.processes import zmqcontext
from backbeat.processes.exits import Limits
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
    assert {(m.job, m.type) for m in seen} >= {("a", "start"), ("a", "done"), ("b", "error")}


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
