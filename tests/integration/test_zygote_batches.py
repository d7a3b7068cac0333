"""The zygote's batches of forks (requests read together, bookkeeping once: ``Zygote.settle``):
a job whose bookkeeping fails or whose fork fails leaves the others of its batch alone."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(__file__))
import _workerpool_targets  # noqa: E402

from backbeat.processes.workerpool import ForkServer  # noqa: E402

T = _workerpool_targets.__name__


def _wait_for(path: str) -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_a_log_that_cannot_be_made_loses_the_log_not_the_fork_server(tmp_path):
    """A log path the zygote cannot use (here a NUL byte: ``os.unlink`` raises ValueError) used to
    raise out of its bookkeeping: the zygote died, and every job running on it ended `lost'."""
    with ForkServer(preload=()) as fs:
        pid_file = str(tmp_path / "a.pid")
        a = fs.spawn(f"{T}:sleep_forever", {"pid_file": pid_file})
        _wait_for(pid_file)
        b = fs.spawn(f"{T}:ok", {"out": str(tmp_path / "b.out")}, log_path=str(tmp_path / "b\0.log"))
        assert b.wait(30).kind == "ok"  # (its output is dropped: a log is a courtesy)
        assert (tmp_path / "b.out").exists() and a.poll() is None and not fs.lost
        a.kill()
        assert a.wait(30).kind == "signal"


def _fd_limit_for_one_pipe(pid: int) -> int:
    """An RLIMIT_NOFILE under which ``pid`` can open exactly two more descriptors (one pipe)."""
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    free, limit = 0, 0
    while free < 2:
        free += limit not in used
        limit += 1
    return limit


def test_a_failed_fork_is_told_after_the_jobs_forked_before_it(tmp_path):
    """Two requests read together; the second one's pipe cannot be made (RLIMIT_NOFILE): the parent
    hears of the first job's pid before the second job's failure, in the order it asked."""
    with ForkServer(preload=()) as fs:
        assert fs.spawn(f"{T}:ok", {}).wait(30).kind == "ok"  # (the zygote is set up: its fds are all open)
        events: list[tuple[str, int]] = []
        record = fs._event
        fs._event = lambda ev: (events.append((ev.get("ev"), ev.get("id"))), record(ev))  # type: ignore[method-assign]
        # (psutil.Process(None) is this process: stopping it would hang the run if the server fell back)
        assert fs.zygote_pid is not None, "the fork server fell back to multiprocessing: no zygote to stop"
        zygote = psutil.Process(fs.zygote_pid)
        os.kill(zygote.pid, signal.SIGSTOP)  # (both requests are then read at once)
        try:
            zygote.rlimit(psutil.RLIMIT_NOFILE, (_fd_limit_for_one_pipe(zygote.pid),) * 2)
            pid_file = str(tmp_path / "a.pid")
            a = fs.spawn(f"{T}:sleep_forever", {"pid_file": pid_file}, log_path=str(tmp_path / "a.log"))
            b = fs.spawn(f"{T}:ok", {}, log_path=str(tmp_path / "b.log"))
        finally:
            os.kill(zygote.pid, signal.SIGCONT)
        assert b.wait(30).kind == "exit" and b._pid is None
        assert a.pid > 0 and a.poll() is None
        assert [e for e in events if e[0] in ("spawned", "exit")][:2] == [("spawned", a.id), ("exit", b.id)]
        a.kill()
        assert a.wait(30).kind == "signal"
