"""A block process's diet: what the fork server's zygote carries into every fork, and a block's exit.

``docs/performance.md``, "Wave 11 (perf-v)": every library loaded in the zygote is mapped into each
block process (its written segments copied at each fork, torn down at each exit), and a block
process that started nothing ends without reading ``/proc``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from backbeat.processes import reaper

#: what the zygote has when the command line forks it: the command's modules and the preload
_ZYGOTE_MODULES = """
import importlib, json, sys
import backbeat.cli.command
from backbeat.execution.state import PRELOAD
for name in PRELOAD:
    importlib.import_module(name)
loaded = "sqlite3" in sys.modules
from backbeat.core.statmemo import StatMemo
memo = StatMemo(sys.argv[1])
first = memo.digest(sys.argv[2])
memo.close()
again = StatMemo(sys.argv[1])._row("sha256", sys.argv[2])[4]  # (read back from the database)
print(json.dumps({"loaded": loaded, "first": first, "again": again, "after": "sqlite3" in sys.modules}))
"""


def test_the_zygote_never_loads_sqlite_and_the_stat_memo_still_opens_its_database(tmp_path):
    data = tmp_path / "a"
    data.write_bytes(b"x" * 100)
    memo = tmp_path / "memo" / "stat.sqlite3"
    out = subprocess.run([sys.executable, "-c", _ZYGOTE_MODULES, str(memo), str(data)], capture_output=True,
                         text=True, timeout=60, check=True)
    got = json.loads(out.stdout)
    assert got["loaded"] is False  # (libsqlite3 and _sqlite3: ten mappings in every block process)
    assert got["first"] == got["again"] and len(got["first"]) == 64
    assert got["after"] is True and memo.is_file()  # (imported when a memo opens its database)


def _in_a_subreaper(body) -> dict:
    """Run ``body()`` in a forked child that is a subreaper (as a block process is); what it returned."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(rfd)
            reaper.become_subreaper()
            os.write(wfd, json.dumps(body()).encode())
        except BaseException as e:  # noqa: BLE001 - reported to the test
            os.write(wfd, json.dumps({"error": repr(e)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        got = json.loads(f.read() or "{}")
    os.waitpid(pid, 0)
    return got


def test_a_block_process_without_children_ends_without_reading_proc():
    def body() -> dict:
        def no_proc(*_a, **_k):
            raise AssertionError("read /proc")

        reaper.children = no_proc  # (this child only)
        return {"killed": reaper.kill_descendants()}

    assert _in_a_subreaper(body) == {"killed": 0}


def test_a_block_process_still_kills_the_orphan_it_adopted_and_a_child_it_started():
    def body() -> dict:
        rfd, wfd = os.pipe()
        middle = os.fork()
        if middle == 0:  # a child that starts a grandchild in its own session, then ends: an orphan
            if os.fork() == 0:
                os.setsid()
                os.write(wfd, f"{os.getpid()}\n".encode())
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
                time.sleep(600)
            os._exit(0)
        orphan = int(os.read(rfd, 64))
        os.waitpid(middle, 0)
        deadline = time.monotonic() + 10
        while orphan not in reaper.children() and time.monotonic() < deadline:
            time.sleep(0.01)  # (re-parented to this subreaper)
        adopted = orphan in reaper.children()
        sleeper = os.fork()
        if sleeper == 0:
            time.sleep(600)
            os._exit(0)
        killed = reaper.kill_descendants()
        return {"adopted": adopted, "killed": killed, "left": reaper.children(),
                "orphan_alive": os.path.exists(f"/proc/{orphan}")}

    got = _in_a_subreaper(body)
    assert got == {"adopted": True, "killed": 2, "left": [], "orphan_alive": False}, got


def sleeper(payload: dict) -> None:
    """Job target: sleeps (until killed)."""
    time.sleep(60)


def greeter(payload: dict) -> None:
    """Job target: prints and ends."""
    print(f"hello from {payload['n']}")


def test_a_batch_of_requests_read_at_once_is_settled_before_a_kill_and_at_its_end(tmp_path):
    """The zygote forks the spawns it reads together before their bookkeeping (``Zygote.settle``):
    a kill read in the same batch still finds the child it names, and every child forked in the
    batch is reported, logged and reaped."""
    from backbeat.processes.zygote import Zygote

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    requests = [{"op": "spawn", "id": 0, "target": f"{__name__}:sleeper", "payload": {},
                 "log": str(tmp_path / "0.log")},
                *({"op": "spawn", "id": n, "target": f"{__name__}:greeter", "payload": {"n": n},
                   "log": str(tmp_path / f"{n}.log")} for n in (1, 2, 3)),
                {"op": "kill", "id": 0, "reason": "asked"},
                {"op": "spawn", "id": 4, "target": f"{__name__}:greeter", "payload": {"n": 4},
                 "log": str(tmp_path / "4.log")}]
    ours.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in requests))  # (all read at once)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            Zygote(theirs, (), parent).main()
        finally:
            os._exit(1)
    theirs.close()
    events: list[dict] = []
    buf = b""
    ours.settimeout(30)
    try:
        while sum(e["ev"] == "exit" for e in events) < 5:
            chunk = ours.recv(1 << 16)
            assert chunk, events
            buf += chunk
            *lines, buf = buf.split(b"\n")
            events += [json.loads(line) for line in lines]
    finally:
        ours.close()
        os.waitpid(pid, 0)
    spawned = {e["id"]: e["pid"] for e in events if e["ev"] == "spawned"}
    exits = {e["id"]: e for e in events if e["ev"] == "exit"}
    assert sorted(spawned) == [0, 1, 2, 3, 4] and len(set(spawned.values())) == 5
    assert exits[0]["reason"] == "asked" and os.WTERMSIG(exits[0]["status"]) == signal.SIGKILL
    assert exits[0]["wall_s"] < 30  # (killed at once, not after its minute of sleep)
    for n in (1, 2, 3, 4):
        assert exits[n]["status"] == 0 and exits[n]["pid"] == spawned[n], exits[n]
        assert (tmp_path / f"{n}.log").read_text() == f"hello from {n}\n"


def blas_report(payload: dict) -> None:
    """Job target: what the zygote's import of numpy saw and what OpenBLAS does in a block process."""
    import ctypes

    import numpy

    a = numpy.ones((600, 600))
    a @ a  # (a BLAS call: the pool is made again, with its usual number of threads)
    lib = ctypes.CDLL(next(line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line),
                      mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    get = next(getattr(lib, n) for n in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                                         "openblas_get_num_threads") if hasattr(lib, n))
    spy = next(f for f in sys.meta_path if hasattr(f, "seen"))
    print(json.dumps({"seen": spy.seen, "tasks": len(os.listdir("/proc/self/task")), "blas": get(),
                      "env": [os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                                                          "OMP_NUM_THREADS")]}))


#: a fresh zygote preloading numpy, its import of numpy watched; it forks one `blas_report` job
_BLAS_ZYGOTE = """
import json, os, socket, sys
sys.path.insert(0, sys.argv[2])
class Spy:
    seen = []
    def find_spec(self, name, path=None, target=None):
        if name == "numpy._core._multiarray_umath":  # (loads OpenBLAS, which reads its variables then)
            self.seen.append(os.environ.get("OPENBLAS_NUM_THREADS"))
sys.meta_path.insert(0, Spy())
from backbeat.processes.zygote import Zygote
ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
ours.sendall(json.dumps({"op": "spawn", "id": 1, "target": "test_processdiet:blas_report", "payload": {},
                         "log": sys.argv[1]}).encode() + b"\\n")
pid = os.fork()
if pid == 0:
    try:
        ours.close()
        Zygote(theirs, ("numpy",), os.getppid()).main()
    finally:
        os._exit(1)
theirs.close()
buf = b""
while b'"exit"' not in buf:
    chunk = ours.recv(1 << 16)
    assert chunk, buf
    buf += chunk
ours.close()
os.waitpid(pid, 0)
"""

#: the same job's figures in a process that imported numpy plainly
_BLAS_PLAIN = """
import json, os, numpy
a = numpy.ones((600, 600))
a @ a
print(json.dumps({"tasks": len(os.listdir("/proc/self/task"))}))
"""


def test_the_zygote_imports_numpy_with_one_blas_thread_and_its_blocks_get_the_usual_pool(tmp_path):
    """OpenBLAS's pool would spin through the rest of numpy's import in the zygote (~0.1 s of the
    other core, each run): the zygote loads it at one thread, then sets its usual number back, so a
    block's BLAS calls run on as many threads as in any process, and the variable is gone."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                                                            "OMP_NUM_THREADS")}
    log = tmp_path / "job.log"
    subprocess.run([sys.executable, "-c", _BLAS_ZYGOTE, str(log), os.path.dirname(os.path.abspath(__file__))],
                   env=env, timeout=120, check=True)
    got = json.loads(log.read_text())
    plain = json.loads(subprocess.run([sys.executable, "-c", _BLAS_PLAIN], env=env, capture_output=True,
                                      timeout=60, check=True, text=True).stdout)
    assert got["seen"] == ["1"]  # (OpenBLAS loaded with one thread: no pool spinning)
    assert got["env"] == [None, None, None]  # (nothing of it left to the blocks)
    procs = len(os.sched_getaffinity(0))
    assert 1 <= got["blas"] <= max(procs, os.cpu_count() or 1)
    assert got["tasks"] == plain["tasks"]  # (a block's pool: as in a process that imported numpy plainly)
    if procs > 1:
        assert got["blas"] > 1 and got["tasks"] > 1


def test_a_blas_variable_the_user_set_even_empty_is_left_as_it_was():
    """``OPENBLAS_NUM_THREADS=""`` is the user's (OpenBLAS then chooses its pool itself): the zygote's
    preload of numpy neither sets it to one nor removes it from what its blocks inherit."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                                                            "OMP_NUM_THREADS")}
    code = ("import json, os\nfrom backbeat.processes import warmup\nwarmup.preload('numpy')\n"
            "print(json.dumps(os.environ.get('OPENBLAS_NUM_THREADS')))")
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OPENBLAS_NUM_THREADS": ""},
                         capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == ""
