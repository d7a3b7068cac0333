"""Pre-warmed block processes: a fork server ("zygote") that runs each job in a fresh child.

Starting a Python interpreter that imports numpy, h5py and zmq costs ~0.45 s; forking an
already-warm process costs a few milliseconds.  :class:`ForkServer` therefore forks, once,
a *zygote* from the calling process (so it inherits every module the caller already
imported, and imports the ``preload`` modules itself, in parallel with the caller).  The
zygote then serves spawn requests over a socketpair, forking one child per job.

State and protocol:

* parent ⇄ zygote: newline-delimited JSON over a ``socketpair`` (never pickle).  Requests:
  ``spawn`` (id, target ``"module:function"``, JSON payload, limits, log path), ``kill``
  (id, signal), ``close``.  Events: ``ready``, ``spawned`` (id, pid), ``exit`` (id, raw wait
  status, reason, wall time, rusage).  Only the zygote can ``waitpid`` its children, so it
  reaps them (SIGCHLD wakes its ``select`` loop) and reports every exit; it enforces
  ``timeout_s`` itself, so timeouts hold even when nobody is waiting.
* child: new session (its own process group, no terminal Ctrl-C), default signal
  handlers, ``PR_SET_PDEATHSIG`` (dies with the zygote, which dies with the parent),
  ``RLIMIT_AS`` for the memory limit, inherited fds closed, optional stdout/stderr log
  file, then ``target(payload)``; it always leaves through ``os._exit``.
* lifetime: ``close()`` (also on ``with`` exit and at interpreter exit) kills every live
  child's process group and the zygote; if the parent dies, the zygote gets SIGKILL
  (pdeathsig) or sees EOF on its pipe, and the children get SIGKILL (pdeathsig).

The zygote must be forked before the caller creates any zmq Context or thread.  ``start()``
checks for Python threads and zmq I/O threads (``/proc/self/task/*/comm``); with
``mode="auto"`` it then falls back to multiprocessing's ``forkserver`` context (same API,
timeouts enforced while polling/waiting; fresh interpreter, so slower to start), with
``mode="fork"`` it raises :class:`~backbeat.errors.UsageError`.  The zygote's parent-death
signal is tied to the *thread* that called ``start()``: call it from the main thread.

Exit classification and limits: :mod:`backbeat.processes.exits`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import weakref
from typing import Any

from backbeat.core import pids
from backbeat.core.errors import ExecutionError, UsageError
from backbeat.processes import handles, mpreaper, reaper, template
from backbeat.processes.exits import EXIT_BOOT, Exit, Limits, classify_status, signame
from backbeat.processes.handles import Handle, MPHandle
from backbeat.processes.zygote import Zygote, split_target

__all__ = ["ForkServer", "Handle"]

# --------------------------------------------------------------------------- parent side

def _zmq_threads_running() -> bool:
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith("ZMQbg"):
                    return True
        except OSError:
            continue
    return False


class ForkServer:
    """Fork server running jobs ``target(payload)`` in fresh, isolated child processes.

    Call :meth:`start` (or use ``with``) before creating any zmq Context or thread in this
    process.  ``mode`` is ``"auto"`` (fork zygote, else multiprocessing), ``"fork"`` or
    ``"multiprocessing"``.

    With ``python`` (another interpreter) or ``wrapper`` (a command the interpreter runs under,
    e.g. the sandbox's ``bwrap …``), the zygote is instead a new process, ``[*wrapper, python, -m,
    backbeat.processes.zygote, FD, PRELOAD]`` with environment ``env``, serving the same protocol
    over the socket it inherits (no fork of this process: it may start at any time).

    With ``template`` (and neither), the zygote is first asked of this context's warm template
    (:mod:`~backbeat.processes.template`, ``kind == "template"``): forked from it, not from this
    process, and ended by closing its socket; without an answer, it is forked as above.
    """

    def __init__(self, preload: tuple[str, ...] = ("numpy", "h5py", "zmq", "backbeat.processes.control"),
                 mode: str = "auto", python: str | None = None, wrapper: list[str] | None = None,
                 env: dict[str, str] | None = None, template: bool = False) -> None:
        if mode not in ("auto", "fork", "multiprocessing"):
            raise UsageError(f"unknown fork server mode `{mode}'")
        self.preload = tuple(preload)
        self.mode = mode
        self.python = python
        self.wrapper = list(wrapper or [])
        self.env = env
        self.template = template
        self._proc: subprocess.Popen | None = None
        self._zygote_host: int | None = None  # a zygote started under a wrapper: its pid here
        self.zygote_pid: int | None = None
        self._sock: socket.socket | None = None
        self._buf = b""
        self._out = bytearray()  # requests not yet taken by the zygote (written as it reads them)
        self._lock = threading.RLock()  # held while reading events
        self._send_lock = threading.Lock()  # held while writing requests
        self._handles: dict[int, Handle] = {}
        self.ended: list[Handle] = []  # handles whose exit was seen, until taken (ProcessGroup.take_ended)
        self._next = 0
        self._ready: dict | None = None
        self._mp: Any = None
        self._closed = False
        self._broken = False  # a request could not be written: the zygote's end of the socket is closed
        #: ``"zygote"`` or ``"multiprocessing"`` once started
        self.kind: str | None = None

    # -- lifetime
    def start(self) -> ForkServer:
        if self._sock is not None or self._mp is not None:
            return self
        if self.python is not None or self.wrapper:
            self._start_exec()
            atexit.register(_close_ref, weakref.ref(self))
            return self
        if self.template and self.mode != "multiprocessing":
            got = template.open_zygote(self.preload)  # a zygote forked from this context's warm template
            if got is not None:
                self._sock, self.zygote_pid = got
                self.kind = "template"
                atexit.register(_close_ref, weakref.ref(self))
                return self
        can_fork = hasattr(os, "fork") and threading.active_count() == 1 and not _zmq_threads_running()
        if self.mode == "fork" and not can_fork:
            raise UsageError("ForkServer.start() must run before any thread or zmq Context is created "
                             "(or use mode='auto' to fall back to multiprocessing)")
        if self.mode == "multiprocessing" or not can_fork:
            if self.mode == "auto":
                warnings.warn("ForkServer started after threads or a zmq Context exist: using the slower "
                              "multiprocessing forkserver", RuntimeWarning, stacklevel=2)
            self._start_mp()
        else:
            self._start_fork()
        atexit.register(_close_ref, weakref.ref(self))
        return self

    def _start_fork(self) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                parent_sock.close()
                os.setpgid(0, 0)  # keeps terminal job control signals for the parent only
                Zygote(child_sock, self.preload, parent, template.interpreter()).main()
            finally:
                os._exit(1)
        child_sock.close()
        self.kind = "zygote"
        self.zygote_pid = pid
        self._sock = parent_sock

    def _start_exec(self) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = child_sock.fileno()
        argv = [*self.wrapper, self.python or sys.executable, "-m", "backbeat.processes.zygote", str(fd),
                ",".join(self.preload)]
        try:
            self._proc = subprocess.Popen(argv, pass_fds=(fd,), env=self.env, stdin=subprocess.DEVNULL)
        except OSError as e:
            parent_sock.close()
            raise ExecutionError(f"cannot start a fork server with `{argv[len(self.wrapper)]}': "
                                 f"{e.strerror or e}") from None
        finally:
            child_sock.close()
        self.kind = "exec"
        self.zygote_pid = self._proc.pid
        self._sock = parent_sock

    @property
    def interpreter(self) -> dict:
        """The zygote's interpreter (:func:`backbeat.processes.interpreter.describe`), once ready."""
        if self._ready is None and self._sock is not None:
            self.wait_ready()
        info = (self._ready or {}).get("interpreter")
        if info is None:
            from backbeat.processes.interpreter import describe

            info = describe()  # multiprocessing fallback: children of this interpreter
        return info

    def _start_mp(self) -> None:
        import multiprocessing as mp

        methods = mp.get_all_start_methods()
        ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:  # (handles: the guard's and block's code, warm; mpreaper: pymp-* clean-up)
            ctx.set_forkserver_preload(list(self.preload) + [handles.__name__, mpreaper.__name__])
        self._mp = ctx
        self.kind = "multiprocessing"
        self._ready = {"ev": "ready", "error": None}

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the zygote has imported the preload modules."""
        self._pump_until(lambda: self._ready is not None, timeout)
        if self._ready is None:
            raise ExecutionError("the fork server did not become ready")
        if self._ready.get("error"):
            raise ExecutionError(f"fork server: {self._ready['error']}")

    def close(self, timeout: float = 5.0) -> None:
        """Kill every running child (process group) and the zygote; reap them all."""
        if self._closed:
            return
        self._closed = True
        if self._mp is not None:
            for h in list(self._handles.values()):
                if isinstance(h, MPHandle):
                    h._close()
            reaper.kill_adopted()  # what blocks left if multiprocessing's fork server was killed
            return
        if self._sock is None:
            return
        if self.kind == "template" and not any(h.exit is None for h in self._handles.values()):
            pass  # nothing runs: closing its socket ends it (not our child: its template reaps it)
        elif not self._handles and self.zygote_pid is not None:
            # never used (e.g. a fully cached run): no child to reap, don't wait for its preload
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.zygote_pid, signal.SIGKILL)
        else:
            for h in list(self._handles.values()):
                if h.exit is None:
                    h._signal(signal.SIGKILL, "closed")
            try:
                self._request({"op": "close"})
                self._pump_until(lambda: False, timeout)  # collects the exits, returns at EOF
            except ExecutionError:
                pass
        deadline = time.monotonic() + timeout
        pid = None if self.kind == "template" else self.zygote_pid  # (its template reaps it)
        if self._proc is not None:  # a zygote started as a new process (its Popen reaps it)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            pid = None
        try:
            while pid is not None:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.002)
        except ChildProcessError:
            pass  # already reaped (e.g. SIGCHLD ignored by the application)
        if self._sock.fileno() >= 0:
            self._sock.close()
        reaper.kill_adopted()

    def __enter__(self) -> ForkServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs
    def spawn(self, target: str, payload: dict | None = None, limits: Limits | None = None,
              log_path: str | None = None) -> Handle:
        """Run ``target(payload)`` (``"module:function"``) in a new child; return at once."""
        split_target(target)
        payload = {} if payload is None else payload
        limits = limits or Limits()
        if limits.timeout_s is not None and not limits.timeout_s > 0:
            raise UsageError(f"job timeout must be a positive number of seconds, not {limits.timeout_s!r}")
        if limits.memory_bytes is not None and not (isinstance(limits.memory_bytes, int) and limits.memory_bytes > 0):
            raise UsageError(f"job memory limit must be a positive number of bytes, not {limits.memory_bytes!r}")
        if self._closed:
            raise UsageError("the fork server is closed")
        if self._sock is None and self._mp is None:
            self.start()
        with self._send_lock:
            self._next += 1
            job_id = self._next
        try:  # (encoded once: the request the zygote reads)
            line = json.dumps({"op": "spawn", "id": job_id, "target": target, "payload": payload,
                               "limits": limits.to_json(), "log": log_path})
        except (TypeError, ValueError) as e:
            raise UsageError(f"job payload must be JSON-serialisable: {e}") from None
        if self._mp is not None:
            handle: Handle = MPHandle(self, job_id, target, payload, limits, log_path)
            self._handles[job_id] = handle
            return handle
        handle = Handle(self, job_id)
        self._handles[job_id] = handle
        self._send(line)
        return handle

    def running(self) -> list[Handle]:
        return [h for h in self._handles.values() if h.exit is None]

    def fileno(self) -> int:
        """Readable when the zygote has events; then call :meth:`pump` (for poll loops)."""
        if self._sock is None:
            raise UsageError("no zygote socket (not started, or multiprocessing mode)")
        return self._sock.fileno()

    def event_fd(self) -> int | None:
        """Like :meth:`fileno`, or None when there is no zygote socket to poll."""
        return self._sock.fileno() if self._sock is not None and self._sock.fileno() >= 0 else None

    def pump(self, timeout: float = 0.0) -> None:
        """Process pending zygote events (pids, exits) for at most ``timeout`` seconds."""
        self._pump_until(lambda: False, timeout)

    # -- internals
    def _request(self, req: dict) -> None:
        """Queue a request and write what the zygote's socket takes now, without waiting: the
        rest is written while events are pumped (a zygote busy forking never blocks the caller)."""
        self._send(json.dumps(req))

    def _send(self, line: str) -> None:
        assert self._sock is not None
        with self._send_lock:
            self._out += (line + "\n").encode()
            self._flush()

    def _flush(self, strict: bool = True) -> None:
        """Write queued requests until the socket is full (call with ``_send_lock`` held).
        A zygote that is gone raises, or with ``strict=False`` drops them (its end is read next)."""
        assert self._sock is not None
        while self._out:
            try:
                n = self._sock.send(self._out, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._out.clear()
                self._broken = True  # (its end is closed: it is dying, even if not yet a zombie)
                if strict:
                    raise ExecutionError(f"the fork server is gone: {e}") from None
                return
            del self._out[:n]

    def _pump_until(self, cond: Any, timeout: float | None) -> None:
        if self._mp is not None:
            for h in list(self._handles.values()):
                if isinstance(h, MPHandle):
                    h._check()
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not cond():
                if self._sock is None or self._sock.fileno() < 0:
                    return  # not started, closed, or died (its jobs then ended `lost')
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready, writable, _ = select.select([self._sock], [self._sock] if self._out else [], [], remaining)
                if writable:
                    with self._send_lock:
                        self._flush(strict=False)
                if not ready:
                    if writable and (deadline is None or time.monotonic() < deadline):
                        continue
                    return
                try:
                    chunk = self._sock.recv(1 << 16)
                except ConnectionResetError:  # it died with requests of ours unread (AF_UNIX: a reset)
                    chunk = b""
                if not chunk:
                    self._zygote_gone()
                    return
                self._buf += chunk
                while b"\n" in self._buf:
                    line, self._buf = self._buf.split(b"\n", 1)
                    self._event(json.loads(line))
                if deadline is not None and time.monotonic() >= deadline:
                    return

    def _event(self, ev: dict) -> None:
        kind = ev.get("ev")
        if kind == "ready":
            self._ready = ev
            return
        h = self._handles.get(ev.get("id", -1))
        if h is None:
            return
        if kind == "spawned":
            h._pid = ev["pid"]
            h.host_pid = self._host_pid(ev["pid"])
        elif kind == "exit":
            if ev.get("status") is None:
                h.exit = Exit("exit", code=EXIT_BOOT)
            else:
                h.exit = classify_status(ev["status"], ev.get("reason"), ev.get("wall_s", 0.0), ev.get("rusage"),
                                         ev.get("oom"), ev.get("timed_from_s", 0.0))
            self._handles.pop(h.id, None)

    def _host_pid(self, pid: int) -> int | None:
        """A child's pid as this process sees it (the zygote reports it as its PID namespace
        does: in the sandbox, translated through ``/proc``; None if it cannot be)."""
        if not self.wrapper:
            return pid
        if self._zygote_host is None and self._proc is not None and self._ready is not None:
            self._zygote_host = reaper.host_pid(self._ready.get("pid"), self._proc.pid, depth=3)
        return reaper.host_pid(pid, self._zygote_host) if self._zygote_host is not None else None

    @property
    def lost(self) -> bool:
        """Whether its zygote died (its socket closed under it): it can start no job any more."""
        if self._closed or self._sock is None:
            return False
        return (self._broken or self._sock.fileno() == -1
                or (self.zygote_pid is not None and not pids.alive(self.zygote_pid)))

    def _zygote_gone(self) -> None:
        """The zygote's socket closed: unless we closed it, it died, and its children with it."""
        how = "SIGKILL"
        if not self._closed and self.zygote_pid is not None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.zygote_pid, os.WNOHANG)
                if pid and os.WIFSIGNALED(status):
                    how = signame(os.WTERMSIG(status))
                elif pid:
                    how = f"exit code {os.WEXITSTATUS(status)}"
                if pid:
                    self.zygote_pid = None
        for h in self._handles.values():
            if h.exit is None:
                h.exit = Exit("signal", signal="SIGKILL") if self._closed else Exit("lost", signal=how)
        self._handles.clear()
        if self._sock is not None:
            self._sock.close()
        reaper.kill_adopted()  # what the dead blocks left behind, if it came up to us


def _close_ref(ref: weakref.ref) -> None:
    server = ref()
    if server is not None:
        server.close()
