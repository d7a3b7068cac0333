"""Inside the fork server: the zygote's loop and the set-up of each block process.

The zygote (forked once by :class:`backbeat.processes.workerpool.ForkServer`) reads spawn/kill/close
requests as JSON lines on its socketpair, forks one child per job, reaps children (SIGCHLD
wakes its ``select``), enforces timeouts, and reports ``spawned``/``exit`` events.  A child
gets its own session, default signal handlers, ``PR_SET_PDEATHSIG``, ``RLIMIT_AS``, closed
inherited fds and fresh standard streams, then runs ``target(payload)`` and always leaves
through ``os._exit`` (see :mod:`backbeat.processes.workerpool` for the whole protocol).
"""

from __future__ import annotations

import collections
import gc
import importlib
import json
import os
import resource
import select
import signal
import socket
import sys
import time
import traceback
from typing import Any

from backbeat.core.errors import UsageError
from backbeat.processes.exits import EXIT_BOOT, EXIT_MEMORY

_PR_SET_PDEATHSIG = 1


def split_target(target: str) -> tuple[str, str]:
    module, sep, func = target.partition(":")
    if not sep or not module or not func or not all(p.isidentifier() for p in module.split(".") + [func]):
        raise UsageError(f"job target `{target}' is not of the form `package.module:function'")
    return module, func


# --------------------------------------------------------------------------- child side

_LIBC: Any = None  # loaded once in the zygote, inherited by every child


def _prctl_pdeathsig(sig: int) -> None:
    global _LIBC
    if not sys.platform.startswith("linux"):
        return
    try:
        if _LIBC is None:
            import ctypes

            _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _reset_signals() -> None:
    """Give the child the signal dispositions of a fresh Python process."""
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python itself sets it
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_SETMASK, set())


def child_setup(limits: dict, log_path: str | None, parent: int | None = None, close_fds: bool = True) -> None:
    """Isolate the freshly forked child: session, signals, pdeathsig, rlimits, fds, logs."""
    try:
        os.setsid()
    except OSError:
        pass
    _reset_signals()
    _prctl_pdeathsig(signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(EXIT_BOOT)  # the zygote died before pdeathsig was armed
    _fresh_random_state()
    mem = limits.get("memory_bytes")
    if mem:
        resource.setrlimit(resource.RLIMIT_AS, (int(mem), int(mem)))
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    if close_fds:
        os.closerange(3, 65536)
        _fresh_std_streams()


def _fresh_random_state() -> None:
    """Give the child fresh entropy, as a new interpreter would have.

    A forked child inherits the zygote's random number generators: without this, every
    block using numpy's (or Python's) global generator unseeded would draw the same
    numbers, and an unseeded — non-deterministic — algorithm would look deterministic.
    """
    import random

    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()


def _fresh_std_streams() -> None:
    """stdin from /dev/null; ``sys.stdout``/``sys.stderr`` rebuilt over fds 1 and 2.

    The caller may have replaced them (e.g. pytest's capture) with objects over fds that
    the child has just closed.
    """
    null = os.open(os.devnull, os.O_RDONLY)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115


def child_run(target: str, payload: Any) -> int:
    """Import and call ``target(payload)``; map the outcome to an exit code."""
    try:
        module, func = split_target(target)
        fn = getattr(importlib.import_module(module), func)
    except BaseException:  # noqa: BLE001 - the child must never escape into the caller
        traceback.print_exc()
        return EXIT_BOOT
    try:
        fn(payload)
        return 0
    except SystemExit as e:
        return _system_exit_code(e)
    except MemoryError:
        return EXIT_MEMORY
    except BaseException:  # noqa: BLE001
        try:
            traceback.print_exc()
        except MemoryError:
            return EXIT_MEMORY
        except Exception:  # noqa: BLE001 - e.g. stderr closed
            pass
        return 1


def _system_exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    print(e.code, file=sys.stderr)
    return 1


def flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)


# --------------------------------------------------------------------------- zygote

def _loaded(req: dict) -> bool:
    """Whether the modules a request runs are imported: its target's, and for a job run through
    :func:`backbeat.processes.control.job_main`, the target named in its payload."""
    if req.get("op") != "spawn":
        return True
    targets = [req.get("target"), (req.get("payload") or {}).get("target")]
    return all(t.partition(":")[0] in sys.modules for t in targets if isinstance(t, str))


def _quiet_blas() -> None:
    """Stop the threads numpy's OpenBLAS starts on import: they spin for ~0.1 s, burning the
    other core while the zygote imports the rest and the executor plans.  OpenBLAS shuts its
    thread pool down before any fork (its fork handler), so one empty fork is enough; the pool
    is made again on the first BLAS call of a child, with its usual number of threads."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)



class Zygote:
    """The loop running in the zygote process (never returns: ends in ``os._exit``)."""

    def __init__(self, sock: socket.socket, preload: tuple[str, ...], parent: int) -> None:
        self.sock = sock
        self.parent = parent
        self.preload = preload
        self.children: dict[int, dict] = {}  # pid -> {id, start, deadline, reason}
        self.inbuf = b""
        self.queue: collections.deque[dict] = collections.deque()  # requests read, not yet handled
        self.outbuf = b""
        self.closing = False

    def send(self, event: dict) -> None:
        """Queue an event; written without blocking so a busy parent cannot deadlock us."""
        self.outbuf += (json.dumps(event) + "\n").encode()
        self.flush()

    def flush(self) -> None:
        while self.outbuf:
            try:
                n = self.sock.send(self.outbuf)
            except BlockingIOError:
                return
            except OSError:  # the parent is gone
                self.outbuf = b""
                if not self.closing:
                    self.shutdown(1)
                return
            self.outbuf = self.outbuf[n:]

    def main(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; Ctrl-C reaches it
        signal.signal(signal.SIGTERM, lambda *_: self.shutdown(0))
        _prctl_pdeathsig(signal.SIGKILL)
        if os.getppid() != self.parent:
            os._exit(0)
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        self.wake = rfd
        self.sock.setblocking(False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wfd)
        error = None
        for name in self.preload:
            try:
                importlib.import_module(name)
            except BaseException as e:  # noqa: BLE001
                error = f"cannot preload `{name}': {e}"
            if name == "numpy":
                _quiet_blas()
                _fresh_random_state()  # its first call initialises numpy's entropy source (~20 ms): once, here
            if not error:
                self.read_requests(preloading=True)
                self.reap()  # (a child forked meanwhile may have ended: its exit is told now)
        _fresh_random_state()
        gc.freeze()  # what is preloaded is never collected in a child: its pages stay shared
        self.send({"ev": "ready", "pid": os.getpid(), "error": error})
        self.read_requests()  # those left waiting by the preload
        while True:
            now = time.monotonic()
            deadlines = [c["deadline"] for c in self.children.values() if c["deadline"] and not c["reason"]]
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            try:
                readable: list[Any] = [self.sock, rfd]
                ready, writable, _ = select.select(readable, [self.sock] if self.outbuf else [], [], timeout)
            except InterruptedError:
                ready, writable = [], []
            if writable:
                self.flush()
            if rfd in ready:
                try:
                    while os.read(rfd, 512):
                        pass
                except BlockingIOError:
                    pass
            if self.sock in ready:
                self.read_requests()
            self.enforce_deadlines()
            self.reap()

    def read_requests(self, preloading: bool = False) -> None:
        """Read what the parent wrote and handle the requests, in order.  ``preloading``: between
        two preloaded modules, a job is forked as soon as the modules it runs are loaded (e.g.
        a view's indexing job, before h5py and the block runtime): the requests from the first
        one whose modules are not yet loaded wait for the end of the preload."""
        try:
            chunk = self.sock.recv(1 << 16)
        except BlockingIOError:
            chunk = None
        if chunk == b"":
            self.shutdown(0)
        self.inbuf += chunk or b""
        while b"\n" in self.inbuf:
            line, self.inbuf = self.inbuf.split(b"\n", 1)
            self.queue.append(json.loads(line))
        while self.queue and not (preloading and not _loaded(self.queue[0])):
            if preloading:
                gc.freeze()  # (a child shares what is loaded so far)
            self.handle(self.queue.popleft())

    def handle(self, req: dict) -> None:
        op = req.get("op")
        if op == "spawn":
            self.spawn(req)
        elif op == "kill":
            for pid, c in self.children.items():
                if c["id"] == req["id"]:
                    c["reason"] = c["reason"] or req.get("reason")
                    self.kill(pid, req.get("sig", signal.SIGKILL))
        elif op == "timeout":  # a new deadline, counted from now
            for c in self.children.values():
                if c["id"] == req["id"] and not c["reason"]:
                    c["deadline"] = time.monotonic() + float(req["timeout_s"])
        elif op == "close":
            self.shutdown(0)

    def spawn(self, req: dict) -> None:
        limits = req.get("limits") or {}
        start = time.monotonic()
        zygote = os.getpid()
        try:
            pid = os.fork()
        except OSError as e:
            self.send({"ev": "exit", "id": req["id"], "pid": None, "status": None, "error": str(e)})
            return
        if pid == 0:
            code = EXIT_BOOT
            try:
                self.sock.detach()
                os.close(self.wake)
                child_setup(limits, req.get("log"), parent=zygote)
                code = child_run(req["target"], req["payload"])
            finally:
                flush_and_exit(code)
        timeout = limits.get("timeout_s")
        self.children[pid] = {"id": req["id"], "start": start, "reason": None,
                              "deadline": start + timeout if timeout else None}
        self.send({"ev": "spawned", "id": req["id"], "pid": pid})

    def kill(self, pid: int, sig: int) -> None:
        for target in (-pid, pid):  # the child's process group first (it called setsid)
            try:
                os.kill(target, sig)
            except (ProcessLookupError, PermissionError):
                continue
            break

    def enforce_deadlines(self) -> None:
        now = time.monotonic()
        for pid, c in self.children.items():
            if c["deadline"] and not c["reason"] and now >= c["deadline"]:
                c["reason"] = "timeout"
                self.kill(pid, signal.SIGKILL)

    def reap(self) -> None:
        while self.children:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            c = self.children.pop(pid, None)
            if c is None:
                continue
            try:
                os.kill(-pid, signal.SIGKILL)  # leftovers of its process group (pgid stays reserved)
            except OSError:
                pass
            self.send({"ev": "exit", "id": c["id"], "pid": pid, "status": status, "reason": c["reason"],
                       "wall_s": time.monotonic() - c["start"],
                       "rusage": {"utime": ru.ru_utime, "stime": ru.ru_stime, "maxrss_kb": ru.ru_maxrss,
                                  "nvcsw": ru.ru_nvcsw, "nivcsw": ru.ru_nivcsw}})

    def shutdown(self, code: int) -> None:
        """Kill and reap every child, report their exits (best effort), exit."""
        self.closing = True
        for pid, c in self.children.items():
            c["reason"] = c["reason"] or "closed"
            self.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.001)
        try:
            self.sock.settimeout(1.0)
            self.sock.sendall(self.outbuf)
        except OSError:
            pass
        os._exit(code)
