"""Inside the fork server: the zygote's loop and the set-up of each block process.

The zygote (forked once by :class:`backbeat.processes.workerpool.ForkServer`) reads spawn/kill/close
requests as JSON lines on its socketpair, forks one child per job, reaps children (SIGCHLD
wakes its ``select``), enforces timeouts, copies each child's output into its bounded log
(:mod:`~backbeat.processes.logs`), and reports ``spawned``/``exit`` events.  It is a child
subreaper: whatever a block process leaves behind is killed when it ends
(:mod:`~backbeat.processes.reaper`).  A child gets its own session, default signal handlers,
``PR_SET_PDEATHSIG``, the subreaper attribute, closed inherited fds and fresh standard
streams (fds 1 and 2 on its log pipe), then runs ``target(payload)`` — under ``RLIMIT_AS``
once the target is ready to report running out of memory (:func:`apply_memory_limit`) — and
always leaves through ``os._exit`` (see :mod:`backbeat.processes.workerpool` for the whole protocol).

A zygote started in another interpreter or in the sandbox runs ``python -m
backbeat.processes.zygote FD PRELOAD`` (:func:`exec_main`); as the init (PID 1) of a
sandbox it ignores ``SIGTERM`` and ``SIGHUP`` (its blocks could send them), dies with its
parent by ``SIGKILL`` (which kills everything left in its PID namespace) and reaps the
orphans it inherits.  Its ``ready`` event describes its interpreter
(:func:`backbeat.processes.interpreter.describe`).
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
from backbeat.processes import freshstate, reaper, warmup
from backbeat.processes.exits import EXIT_BOOT, EXIT_MEMORY, memory_ceiling, oom_kills
from backbeat.processes.logs import BoundedLog

#: at most this much of a finished child's output is still read from its pipe (what its
#: leftovers, killed at that moment, may still be writing is not waited for)
_DRAIN = 16 << 20


def split_target(target: str) -> tuple[str, str]:
    module, sep, func = target.partition(":")
    if not sep or not module or not func or not all(p.isidentifier() for p in module.split(".") + [func]):
        raise UsageError(f"job target `{target}' is not of the form `package.module:function'")
    return module, func


# --------------------------------------------------------------------------- child side

#: the memory limit of this child, applied by :func:`apply_memory_limit`
_MEMORY: int | None = None


class MemoryLimitTooLow(MemoryError):
    """The memory limit is below what the process has already mapped: nothing could run under it."""


def child_setup(limits: dict, log: str | int | None, parent: int | None = None, close_fds: bool = True,
                seeded: bool = False) -> None:
    """Isolate the freshly forked child: session, signals, pdeathsig, subreaper, limits, fds, output.

    ``log``: where fds 1 and 2 go — a pipe's fd (the zygote copies it into a bounded log), a
    file path (the multiprocessing fallback), or None (both on the parent's stderr: a child's
    output never mixes with the parent's stdout).  ``seeded``: the parent gave numpy's global
    generator fresh entropy just before forking this child with :func:`os.fork`
    (:func:`~backbeat.processes.freshstate.seed_numpy`), whose at-fork handler reseeded Python's
    ``random`` in the child (CPython's ``random`` module registers it: ``os.register_at_fork``).
    """
    global _MEMORY
    try:
        os.setsid()
    except OSError:
        pass
    freshstate.reset_signals()
    reaper.set_parent_death_signal(signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(EXIT_BOOT)  # the zygote died before pdeathsig was armed
    reaper.become_subreaper()  # what it starts stays in its tree (killed when it ends)
    if not seeded:
        _fresh_random_state()
    mem = limits.get("memory_bytes")
    _MEMORY = int(mem) if mem else None
    sys.stdout.flush()
    sys.stderr.flush()
    if isinstance(log, str):
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:  # (a cache that cannot be written) the output goes to the parent's stderr
            log = None
        else:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
    if isinstance(log, int):
        os.dup2(log, 1)
        os.dup2(log, 2)
        if log > 2:
            os.close(log)
    elif log is None:
        os.dup2(2, 1)
    if close_fds:
        os.closerange(3, 65536)
        freshstate.child_std_streams()


def _mapped_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return None


def apply_memory_limit() -> None:
    """Apply the child's memory limit (``RLIMIT_AS``), once.

    Called just before the target runs, or by a target that first needs what the limit would
    prevent (:func:`backbeat.processes.control.run_job` applies it once its job target is loaded; its
    control channel, a plain Unix socket connected at the first message, needs no thread, so running
    out of memory is still reported).  A limit below what the
    process has already mapped raises :class:`MemoryLimitTooLow` at once, saying so.
    """
    global _MEMORY
    mem, _MEMORY = _MEMORY, None
    if not mem:
        return
    mapped = _mapped_bytes()
    if mapped is not None and mem <= mapped:
        raise MemoryLimitTooLow(f"the memory limit of {mem / 2**20:.0f} MB is below the {mapped / 2**20:.0f} MB "
                                "of address space a block process has before it runs anything (Python with "
                                "numpy, h5py and zmq loaded): nothing can run under it")
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))


# what a child starts with: processes.freshstate (a module attribute here: benchmarks/tracing.py times it)
_fresh_random_state = freshstate.fresh_random_state


def child_run(target: str, payload: Any) -> int:
    """Import and call ``target(payload)``; map the outcome to an exit code."""
    try:
        module, func = split_target(target)
        fn = getattr(importlib.import_module(module), func)
    except BaseException:  # noqa: BLE001 - the child must never escape into the caller
        traceback.print_exc()
        return EXIT_BOOT
    try:
        if not getattr(fn, "applies_memory_limit", False):
            apply_memory_limit()
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
    """Flush the standard streams, kill whatever the process started, exit with ``code``."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    try:
        reaper.kill_descendants()
    finally:
        os._exit(code)


# --------------------------------------------------------------------------- zygote

class Zygote:
    """The loop running in the zygote process (never returns: ends in ``os._exit``)."""

    def __init__(self, sock: socket.socket, preload: tuple[str, ...], parent: int | None,
                 interpreter: dict | None = None) -> None:
        self.sock = sock
        self.interpreter = interpreter  # (what describe() says, when known: a template's)
        self.parent = parent
        self.preload = preload
        self.children: dict[int, dict] = {}  # pid -> {id, start, deadline, reason, log, pipe, oom[, timed_from]}
        self.pipes: dict[int, int] = {}  # read end of a child's output pipe -> its pid
        self.inbuf = b""
        self.queue: collections.deque[dict] = collections.deque()  # requests read, not yet handled
        self.outbuf = b""
        self.closing = False
        #: the kernel's count of OOM kills, read once for the spawn requests read at once (None:
        #: not read yet): /proc/vmstat costs ~0.25 ms a read, and a chain's blocks come in batches
        self.oom: int | None = None
        self.forked: list[tuple] = []  # (pid, request, pipe, start, oom) forked, not yet settled

    def send(self, event: dict) -> None:
        """Queue an event: those of a round of the loop are written together (:meth:`flush`, before
        it waits again), without blocking so a busy parent cannot deadlock us."""
        self.outbuf += (json.dumps(event) + "\n").encode()

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
        if os.getpid() == 1:  # init of a sandbox: its blocks may signal it, and must not stop it
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            # if the parent dies: SIGKILL, and the kernel kills every process of the sandbox with it
            reaper.set_parent_death_signal(signal.SIGKILL)
        else:
            for sig in (signal.SIGTERM, signal.SIGHUP):  # (not the handlers of the parent it was forked from)
                signal.signal(sig, lambda *_: self.shutdown(0))
            # if the parent dies, SIGTERM: stop every child and what it left (a SIGKILL would leave them)
            reaper.set_parent_death_signal(signal.SIGTERM)
        if self.parent is not None and os.getppid() != self.parent:
            os._exit(0)
        reaper.become_subreaper()
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        self.wake = rfd
        self.sock.setblocking(False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wfd)
        error = None
        warm = set(sys.modules)  # (forked from a warm template: nothing to import nor quiet)
        for name in (m for m in self.preload if m not in warm):
            try:
                warmup.preload(name)  # (numpy: its OpenBLAS threads quiet)
            except BaseException as e:  # noqa: BLE001
                error = error or f"cannot preload `{name}': {e}"
            if name == "numpy":
                _fresh_random_state()  # its first call initialises numpy's entropy source (~20 ms): once, here
            if not error:
                self.read_requests(preloading=True)
                self.reap()  # (a child forked meanwhile may have ended: its exit is told now)
                self.flush()
        _fresh_random_state()
        gc.freeze()  # what is preloaded is never collected in a child: its pages stay shared
        self.read_requests()  # those left waiting by the preload, before describing itself (~30 ms)
        if self.interpreter is None:
            self.interpreter = importlib.import_module("backbeat.processes.interpreter").describe()
        self.send({"ev": "ready", "pid": os.getpid(), "error": error, "interpreter": self.interpreter})
        while True:
            self.flush()  # (a batch's `spawned` events, the exits reaped together: one write)
            now = time.monotonic()
            deadlines = [c["deadline"] for c in self.children.values() if c["deadline"] and not c["reason"]]
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            try:
                readable: list[Any] = [self.sock, rfd, *self.pipes]
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
            for fd in ready:
                if fd in self.pipes:
                    self.drain(fd, 1 << 20)
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
        self.oom = None
        while self.queue and not (preloading and not warmup.can_fork(self.queue[0])):
            if preloading:
                gc.freeze()  # (a child shares what is loaded so far)
            if self.queue[0].get("op") != "spawn":
                self.settle()
            self.handle(self.queue.popleft())
        self.settle()

    def handle(self, req: dict) -> None:
        op = req.get("op")
        if op == "spawn":
            self.spawn(req)
        elif op == "kill":
            for pid, c in self.children.items():
                if c["id"] == req["id"]:  # (a SIGKILL we sent is never taken for the OOM killer's)
                    c["reason"] = c["reason"] or req.get("reason") or "killed"
                    self.kill(pid, req.get("sig", signal.SIGKILL))
        elif op == "timeout":  # a new deadline, counted from now (and said so when exceeded)
            for c in self.children.values():
                if c["id"] == req["id"] and not c["reason"]:
                    now = time.monotonic()
                    c["deadline"], c["timed_from"] = now + float(req["timeout_s"]), now - c["start"]
        elif op == "close":
            self.shutdown(0)

    def spawn(self, req: dict) -> None:
        """Fork the child of a spawn request; the parent's bookkeeping waits for :meth:`settle`."""
        limits = req.get("limits") or {}
        start = time.monotonic()
        zygote = os.getpid()
        rfd = wfd = None
        oom = self.oom_count()  # (before the fork: an OOM kill during the child's life is counted)
        freshstate.prepare_std_streams()  # (once) ...
        freshstate.seed_numpy()  # ... and for each child: cheaper here than in it
        try:
            if req.get("log"):
                rfd, wfd = os.pipe()
            pid = os.fork()
        except OSError as e:
            for fd in (rfd, wfd):
                if fd is not None:
                    os.close(fd)
            self.settle()  # (the jobs forked before it are told first: events in the order asked)
            self.send({"ev": "exit", "id": req["id"], "pid": None, "status": None, "error": str(e)})
            return
        if pid == 0:
            code = EXIT_BOOT
            try:
                self.sock.detach()
                os.close(self.wake)
                if rfd is not None:
                    os.close(rfd)
                child_setup(limits, wfd, parent=zygote, seeded=True)
                code = child_run(req["target"], req["payload"])
            finally:
                flush_and_exit(code)
        if wfd is not None:
            os.close(wfd)
        self.forked.append((pid, req, rfd, start, oom))

    def settle(self) -> None:
        """The parent's side of the children just forked, once the requests read together are:
        every page it writes after a fork is copied (shared with that child until then), so the
        bookkeeping of a batch of forks copies them once instead of once a fork."""
        forked, self.forked = self.forked, []
        for pid, req, rfd, start, oom in forked:
            log = None
            if rfd is not None:
                os.set_blocking(rfd, False)
                self.pipes[rfd] = pid
                log = BoundedLog(req["log"])
            timeout = (req.get("limits") or {}).get("timeout_s")
            self.children[pid] = {"id": req["id"], "start": start, "reason": None,
                                  "deadline": start + timeout if timeout else None,
                                  "log": log, "pipe": rfd, "oom": oom}
            self.send({"ev": "spawned", "id": req["id"], "pid": pid})
        self.flush()  # (pids sent before this turn reaps: a sandboxed child is found while it lives)
        for _, req, *_ in forked:
            warmup.learn(req)  # (what it makes is inherited by the next children)

    def oom_count(self) -> int | None:
        """The kernel's OOM kill count when a child starts: a SIGKILL we did not send to a child
        during whose life the count went up is taken for the OOM killer's (:meth:`finish`)."""
        if self.oom is None:
            self.oom = oom_kills()
        return self.oom

    def drain(self, fd: int, budget: int, c: dict | None = None) -> None:
        """Copy what a child (``c``, default: the running child of pipe ``fd``) wrote to its pipe
        into its log, up to ``budget`` bytes now; at EOF, close the pipe."""
        if c is None:
            c = self.children.get(self.pipes[fd])
        while budget > 0:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.pipes.pop(fd, None)
                os.close(fd)
                if c is not None:
                    c["pipe"] = None
                return
            budget -= len(data)
            if c is not None and c["log"] is not None:
                c["log"].write(data)

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
        """Reap ended children: report the exits of jobs, kill what they left behind (orphans
        too: the zygote is a subreaper, and the init of a sandbox, where they end up)."""
        scan = False  # a process that was no job has ended since the last look for strays
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            c = self.children.pop(pid, None)
            if c is not None:
                self.finish(pid, c, status, ru)  # (it kills the strays there are now)
                scan = False
            else:
                scan = True
        if scan:  # leftovers of ended leftovers (re-parented to us) die; theirs come up next time
            reaper.kill_strays(self.children)

    def finish(self, pid: int, c: dict, status: int, ru: Any) -> None:
        """A job's process has ended: kill its leftovers, complete its log, report its exit."""
        try:
            os.kill(-pid, signal.SIGKILL)  # leftovers of its process group (pgid stays reserved)
        except OSError:
            pass
        reaper.kill_strays(self.children)  # those that left its group
        if c["pipe"] is not None:
            self.drain(c["pipe"], _DRAIN, c)
            if c["pipe"] is not None:  # still held by a leftover being killed: what it writes now is lost
                self.pipes.pop(c["pipe"], None)
                os.close(c["pipe"])
        if c["log"] is not None:
            c["log"].close()
        reason, oom = c["reason"], None
        if (reason is None and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
                and c["oom"] is not None and (oom_kills() or 0) > c["oom"]):
            reason, oom = "oom", memory_ceiling()
        self.send({"ev": "exit", "id": c["id"], "pid": pid, "status": status, "reason": reason, "oom": oom,
                   "wall_s": time.monotonic() - c["start"], "timed_from_s": c.get("timed_from", 0.0),
                   "rusage": {"utime": ru.ru_utime, "stime": ru.ru_stime, "maxrss_kb": ru.ru_maxrss,
                              "nvcsw": ru.ru_nvcsw, "nivcsw": ru.ru_nivcsw}})

    def shutdown(self, code: int) -> None:
        """Kill and reap every child and what they left, report their exits (best effort), exit."""
        if self.closing:
            return
        self.closing = True
        for pid, c in self.children.items():
            c["reason"] = c["reason"] or "closed"
            self.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while (self.children or reaper.children()) and time.monotonic() < deadline:
            self.reap()
            reaper.kill_strays(self.children)
            time.sleep(0.001)
        try:
            self.sock.settimeout(1.0)
            self.sock.sendall(self.outbuf)
        except OSError:
            pass
        os._exit(code)


def exec_main(argv: list[str]) -> None:
    """``python -m backbeat.processes.zygote FD PRELOAD``: a zygote started in another interpreter
    (or in a sandbox), serving its parent over the socket it inherited as ``FD``; ``PRELOAD`` is
    the comma-separated modules to import first."""
    try:
        sock = socket.socket(fileno=int(argv[0]))
        preload = tuple(m for m in (argv[1] if len(argv) > 1 else "").split(",") if m)
        Zygote(sock, preload, None).main()
    finally:
        os._exit(1)


if __name__ == "__main__":
    exec_main(sys.argv[1:])
