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
import sys
import threading
import time
import warnings
import weakref
from typing import Any

from backbeat.core.errors import ExecutionError, UsageError
from backbeat.processes.exits import EXIT_BOOT, Exit, Limits, classify_status, from_code, signame
from backbeat.processes.zygote import Zygote, child_run, child_setup, flush_and_exit, split_target

# --------------------------------------------------------------------------- parent side

class Handle:
    """One spawned job, as seen by the parent."""

    def __init__(self, server: ForkServer, job_id: int) -> None:
        self._server = server
        self.id = job_id
        self._pid: int | None = None
        self.exit: Exit | None = None
        self.spawned_at = time.monotonic()

    @property
    def pid(self) -> int:
        """The child's pid (waits briefly for the zygote to report it)."""
        if self._pid is None:
            self._server._pump_until(lambda: self._pid is not None or self.exit is not None, 10.0)
        if self._pid is None:
            raise ExecutionError(f"job {self.id}: the fork server did not report a pid")
        return self._pid

    def poll(self) -> Exit | None:
        """Non-blocking: the :class:`Exit` if the child has ended, else ``None``."""
        if self.exit is None:
            self._server._pump_until(lambda: self.exit is not None, 0.0)
        return self.exit

    def wait(self, timeout: float | None = None) -> Exit:
        """Wait for the child to end; raise :class:`TimeoutError` after ``timeout`` seconds."""
        if self.exit is None:
            self._server._pump_until(lambda: self.exit is not None, timeout)
        if self.exit is None:
            raise TimeoutError(f"job {self.id} still running after {timeout} s")
        return self.exit

    def kill(self) -> None:
        """SIGKILL the child's process group (no effect once it has ended)."""
        self._signal(signal.SIGKILL)

    def set_timeout(self, seconds: float) -> None:
        """From now on, the child may run at most ``seconds`` more (then it is killed: ``timeout``)."""
        if self.exit is None:
            try:
                self._server._request({"op": "timeout", "id": self.id, "timeout_s": float(seconds)})
            except ExecutionError:
                pass

    def terminate(self) -> None:
        """SIGTERM the child's process group."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int, reason: str | None = None) -> None:
        if self.exit is None:
            try:
                self._server._request({"op": "kill", "id": self.id, "sig": int(sig), "reason": reason})
            except ExecutionError:
                pass  # the fork server is gone, and its children with it

    def __repr__(self) -> str:
        return f"<Handle job={self.id} pid={self._pid} exit={self.exit}>"


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
    """

    def __init__(self, preload: tuple[str, ...] = ("numpy", "h5py", "zmq", "backbeat.processes.control"),
                 mode: str = "auto") -> None:
        if mode not in ("auto", "fork", "multiprocessing"):
            raise UsageError(f"unknown fork server mode `{mode}'")
        self.preload = tuple(preload)
        self.mode = mode
        self.zygote_pid: int | None = None
        self._sock: socket.socket | None = None
        self._buf = b""
        self._out = bytearray()  # requests not yet taken by the zygote (written as it reads them)
        self._lock = threading.RLock()  # held while reading events
        self._send_lock = threading.Lock()  # held while writing requests
        self._handles: dict[int, Handle] = {}
        self._next = 0
        self._ready: dict | None = None
        self._mp: Any = None
        self._closed = False
        #: ``"zygote"`` or ``"multiprocessing"`` once started
        self.kind: str | None = None

    # -- lifetime
    def start(self) -> ForkServer:
        if self._sock is not None or self._mp is not None:
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
                Zygote(child_sock, self.preload, parent).main()
            finally:
                os._exit(1)
        child_sock.close()
        self.kind = "zygote"
        self.zygote_pid = pid
        self._sock = parent_sock

    def _start_mp(self) -> None:
        import multiprocessing as mp

        methods = mp.get_all_start_methods()
        ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            ctx.set_forkserver_preload(list(self.preload) + [__name__])
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
                if isinstance(h, _MPHandle):
                    h._close()
            return
        if self._sock is None:
            return
        if not self._handles and self.zygote_pid is not None:
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
        pid = self.zygote_pid
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
            handle: Handle = _MPHandle(self, job_id, target, payload, limits, log_path)
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
                if strict:
                    raise ExecutionError(f"the fork server is gone: {e}") from None
                return
            del self._out[:n]

    def _pump_until(self, cond: Any, timeout: float | None) -> None:
        if self._mp is not None:
            for h in list(self._handles.values()):
                if isinstance(h, _MPHandle):
                    h._check()
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not cond():
                if self._sock is None or self._sock.fileno() < 0:
                    raise ExecutionError("the fork server is not running")
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready, writable, _ = select.select([self._sock], [self._sock] if self._out else [], [], remaining)
                if writable:
                    with self._send_lock:
                        self._flush(strict=False)
                if not ready:
                    if writable and (deadline is None or time.monotonic() < deadline):
                        continue
                    return
                chunk = self._sock.recv(1 << 16)
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
        elif kind == "exit":
            if ev.get("status") is None:
                h.exit = Exit("exit", code=EXIT_BOOT)
            else:
                h.exit = classify_status(ev["status"], ev.get("reason"), ev.get("wall_s", 0.0), ev.get("rusage"))
            self._handles.pop(h.id, None)

    def _zygote_gone(self) -> None:
        lost = [h for h in self._handles.values() if h.exit is None]
        for h in lost:
            h.exit = Exit("signal", signal="SIGKILL")
        self._handles.clear()
        if self._sock is not None:
            self._sock.close()
        if not self._closed:
            raise ExecutionError("the fork server died unexpectedly")


def _close_ref(ref: weakref.ref) -> None:
    server = ref()
    if server is not None:
        server.close()


# --------------------------------------------------------------------------- multiprocessing fallback

def _mp_child(target: str, payload_json: str, limits: dict, log_path: str | None) -> None:
    code = EXIT_BOOT
    try:
        child_setup(limits, log_path, close_fds=False)  # multiprocessing needs its fds
        code = child_run(target, json.loads(payload_json))
    finally:
        flush_and_exit(code)


class _MPHandle(Handle):
    """Fallback handle over ``multiprocessing.Process``; timeouts are enforced when polled."""

    def __init__(self, server: ForkServer, job_id: int, target: str, payload: dict, limits: Limits,
                 log_path: str | None) -> None:
        super().__init__(server, job_id)
        self._limits = limits
        self._reason: str | None = None
        self._proc = server._mp.Process(target=_mp_child, daemon=True,
                                        args=(target, json.dumps(payload), limits.to_json(), log_path))
        self._proc.start()
        self._pid = self._proc.pid

    def _check(self) -> None:
        if self.exit is not None:
            return
        code = self._proc.exitcode
        wall = time.monotonic() - self.spawned_at
        if code is None:
            t = self._limits.timeout_s
            if t is not None and wall >= t and self._reason is None:
                self._reason = "timeout"
                self._signal(signal.SIGKILL)
            return
        if self._reason == "timeout":
            self.exit = Exit("timeout", signal="SIGKILL", wall_s=wall)
        elif code < 0:
            self.exit = Exit("signal", signal=signame(-code), wall_s=wall)
        else:
            self.exit = from_code(code, wall, {})
        self._proc.join(0)
        try:
            os.kill(-self._proc.pid, signal.SIGKILL)  # leftovers of its process group
        except OSError:
            pass
        self._server._handles.pop(self.id, None)

    def wait(self, timeout: float | None = None) -> Exit:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.exit is None:
            self._check()
            if self.exit is not None:
                break
            step = 0.05
            if self._limits.timeout_s is not None:
                step = min(step, max(0.0, self.spawned_at + self._limits.timeout_s - time.monotonic()))
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {self.id} still running after {timeout} s")
                step = min(step, left)
            self._proc.join(step)
        return self.exit

    def poll(self) -> Exit | None:
        self._check()
        return self.exit

    def set_timeout(self, seconds: float) -> None:
        elapsed = time.monotonic() - self.spawned_at
        self._limits = Limits(elapsed + float(seconds), self._limits.memory_bytes)

    def _signal(self, sig: int, reason: str | None = None) -> None:
        if self.exit is None and self._proc.pid is not None:
            for target in (-self._proc.pid, self._proc.pid):
                try:
                    os.kill(target, sig)
                    break
                except (ProcessLookupError, PermissionError):
                    continue

    def _close(self) -> None:
        if self.exit is None:
            self._signal(signal.SIGKILL)
            self._proc.join(5.0)
            self._check()
