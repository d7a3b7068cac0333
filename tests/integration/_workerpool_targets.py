"""Job targets for tests/integration/test_workerpool.py (run inside forked block processes)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

from backbeat.processes import control


def ok(payload: dict) -> dict:
    out = payload.get("out")
    if out:
        with open(out, "w") as f:
            f.write(f"{os.getpid()} {os.getsid(0)}\n")
    return {"answer": 42, "echo": payload.get("value")}


def raise_value_error(payload: dict) -> None:
    helper_that_fails(payload.get("value"))


def helper_that_fails(value: object) -> None:
    raise ValueError(f"bad value {value!r}")


def sys_exit(payload: dict) -> None:
    sys.exit(3)


def os_exit(payload: dict) -> None:
    os._exit(4)


def segfault(payload: dict) -> None:
    ctypes.string_at(0)


def kill_self(payload: dict) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_forever(payload: dict) -> None:
    pid_file = payload.get("pid_file")
    if pid_file:
        with open(pid_file, "w") as f:
            f.write(str(os.getpid()))
    while True:
        time.sleep(10)


def allocate_2gb(payload: dict) -> None:
    import numpy as np

    block = np.ones(2 * 1024**3 // 8)
    print(block.sum())


def progress(payload: dict) -> dict:
    cc = control.client()
    assert cc is not None
    total = int(payload["total"])
    for i in range(1, total + 1):
        cc.progress(i, total)
        time.sleep(float(payload.get("delay", 0.0)))
    return {"units": total}


def fds(payload: dict) -> None:
    names = sorted(os.listdir("/proc/self/fd"))
    with open(payload["out"], "w") as f:
        f.write(f"{os.getpid()} {os.getsid(0)} {' '.join(names)}")
    print("to the log", flush=True)


def leave_orphan(payload: dict) -> None:
    import subprocess

    proc = subprocess.Popen(["sleep", "60"])
    with open(payload["pid_file"], "w") as f:
        f.write(str(proc.pid))


def detach_and_hang(payload: dict) -> None:
    """Start a process in a session of its own (out of reach of a signal to this process's
    group), say its pid, then hang until killed."""
    import subprocess

    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    with open(payload["pid_file"], "w") as f:
        f.write(str(proc.pid))
    while True:
        time.sleep(10)


def not_a_block(pid_file: str) -> None:
    """A process the embedding program forks through multiprocessing itself (no backbeat job):
    it starts a process and leaves it behind, saying its pid and its own parent's."""
    import subprocess

    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    with open(pid_file + ".tmp", "w") as f:
        f.write(f"{proc.pid} {os.getppid()}")
    os.rename(pid_file + ".tmp", pid_file)
    os._exit(0)


class InfrastructureBug(RuntimeError):
    error_kind = "system"


def raise_system_error(payload: dict) -> None:
    raise InfrastructureBug("wiring failed")


def bad_statistics(payload: dict) -> dict:
    return {"when": object()}


def loaded(payload: dict) -> None:
    """Write which of ``payload["modules"]`` this process had imported when it started."""
    with open(payload["out"], "w") as f:
        f.write(" ".join(m for m in payload["modules"] if m in sys.modules))


def report_rehearsal(payload: dict) -> None:
    """What a block process inherits of the fork server's rehearsal (runtime.rehearsal)."""
    import json

    from backbeat.data import values
    from backbeat.runtime import rehearsal

    hits = values._make_type.cache_info().hits
    values.value_type(rehearsal.FORMAT, rehearsal.EXPANDED)
    inherited = values._make_type.cache_info().hits == hits + 1  # made by the rehearsal, before the fork
    from backbeat.processes import control, zmqcontext
    from backbeat.runtime import blockrun, streams

    # code a chain block runs once (never in the zygote but for its rehearsals): quickened by CPython
    # 3.11 (its adaptive bytecode no longer the plain one) once called 8 times, before the fork
    hot = [control.ControlClient.__init__, control.ControlClient._send, control.ControlClient._connect, control.run_job,
           streams.StreamSource.__init__, streams.StreamSource.settle, streams.StreamSender.acks,
           blockrun._commit, blockrun.run]
    cold = [f.__qualname__ for f in hot if f.__code__._co_code_adaptive == f.__code__.co_code]  # type: ignore[attr-defined]
    with open(payload["out"], "w") as f:
        json.dump({"rehearsed": "backbeat.runtime.rehearsal" in sys.modules and inherited,
                   "algorithm_module_left": rehearsal.NAME.replace("/", "_") in sys.modules,
                   "not_quickened": cold if sys.version_info[:2] == (3, 11) else [],
                   "zmq_context": zmqcontext._context is not None}, f)


def draw(payload: dict) -> None:
    """Draw from numpy's and Python's global generators, unseeded (what the child inherited)."""
    import random

    import numpy as np

    with open(payload["out"], "w") as f:
        f.write(f"{np.random.random()!r} {random.random()!r} {sys.stdout.line_buffering} {sys.stdin.read()!r}\n")


def report_learnt(payload: dict) -> None:
    """Whether the value class of the dataformat a job forked before this one declared was
    inherited from the zygote (made there by runtime.rehearsal.learn)."""
    from backbeat.data import values

    hits = values._make_type.cache_info().hits
    values.value_type(payload["name"], payload["expanded"])
    with open(payload["out"], "w") as f:
        f.write(str(values._make_type.cache_info().hits == hits + 1))


def load_user_code(payload: dict) -> None:
    """Load ``payload["spec"]["code"]`` as a block does (runtime.codeloader), write what its module's
    ``value()`` returns and how many times this process's module global was bumped, or the refusal."""
    import json

    from backbeat.core.errors import IntegrityError
    from backbeat.runtime.codeloader import load_code
    from backbeat.runtime.spec import CodeSpec

    try:
        module = load_code("test/learnt/1", CodeSpec.from_json(payload["spec"]["code"]))
        result = {"value": module.value(), "file": module.__file__}
    except IntegrityError as e:
        result = {"refused": str(e)}
    with open(payload["out"], "w") as f:
        json.dump(result, f)


def report_signals(payload: dict) -> None:
    """The signal dispositions and blocked signals this process started with."""
    import signal

    names = ("SIGTERM", "SIGCHLD", "SIGHUP", "SIGUSR1", "SIGALRM", "SIGINT", "SIGPIPE")
    handlers = {n: signal.getsignal(getattr(signal, n)) for n in names}
    described = {n: "default" if h == signal.SIG_DFL else "ignored" if h == signal.SIG_IGN
                 else "KeyboardInterrupt" if h is signal.default_int_handler else repr(h) for n, h in handlers.items()}
    with open(payload["out"], "w") as f:
        f.write(repr((described, sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])), signal.set_wakeup_fd(-1))))


def leave_and_vanish(payload: dict) -> None:
    """Start a process in a session of its own, say this process's pid and its, and end at once without
    backbeat's cleanup (os._exit): the leftover comes up to whoever reaps for this process."""
    import subprocess

    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    with open(payload["pid_file"] + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {proc.pid}")
    os.rename(payload["pid_file"] + ".tmp", payload["pid_file"])
    os._exit(0)
