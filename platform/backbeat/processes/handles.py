"""A job of a fork server, as the parent sees it: its :class:`Handle` (pid, exit, signals,
timeouts), and the multiprocessing fallback's :class:`MPHandle` (see
:mod:`backbeat.processes.workerpool`).

A handle knows the job's pid as the zygote reports it (``pid``) and as this process sees it
(``host_pid``): they differ when the zygote runs in its own PID namespace (the sandbox), where
the fork server translates it (:func:`backbeat.processes.reaper.host_pid`); ``host_pid`` is None
while unknown (the control channel then checks the job's token only).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from backbeat.core.errors import ExecutionError
from backbeat.processes import mpreaper
from backbeat.processes.exits import EXIT_BOOT, Exit, Limits, from_code, signame
from backbeat.processes.logs import compact
from backbeat.processes.zygote import child_run, child_setup, flush_and_exit

if TYPE_CHECKING:
    from backbeat.processes.workerpool import ForkServer


class Handle:
    """One spawned job, as seen by the parent."""

    def __init__(self, server: ForkServer, job_id: int) -> None:
        self._server = server
        self.id = job_id
        self._pid: int | None = None
        self.host_pid: int | None = None  # the pid as this process sees it (None: unknown)
        self._exit: Exit | None = None
        self.tag = ""  # what its owner calls it (a ProcessGroup: the job)
        self.spawned_at = time.monotonic()

    @property
    def exit(self) -> Exit | None:
        """How the child ended (None while it runs, as far as its fork server has said)."""
        return self._exit

    @exit.setter
    def exit(self, value: Exit | None) -> None:
        if value is not None and self._exit is None:  # (listed once: its owner takes the ended handles)
            self._server.ended.append(self)
        self._exit = value

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


# --------------------------------------------------------------------------- multiprocessing fallback

def _mp_child(target: str, payload_json: str, limits: dict, log_path: str | None, said: Any) -> None:
    code = EXIT_BOOT
    try:
        mpreaper.release()  # (else the fork server, and this process, outlive a killed command)
        guard = mpreaper.guard(said)  # (returns in the block: the guard kills its leftovers as it ends)
        child_setup(limits, log_path, guard, close_fds=False)  # multiprocessing needs its fds
        code = child_run(target, json.loads(payload_json))
    finally:
        flush_and_exit(code)


class MPHandle(Handle):
    """Fallback handle over ``multiprocessing.Process``; timeouts are enforced when polled."""

    def __init__(self, server: ForkServer, job_id: int, target: str, payload: dict, limits: Limits,
                 log_path: str | None) -> None:
        super().__init__(server, job_id)
        self._limits = limits
        self._log = log_path
        if log_path is not None:  # written directly by the child (appending), bounded once it ends
            with contextlib.suppress(OSError):
                os.unlink(log_path)
            with contextlib.suppress(OSError):
                os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        self._reason: str | None = None
        self._timed_from = 0.0  # when its limit started counting (set_timeout), after its spawn
        said, tell = server._mp.Pipe(duplex=False)  # (the guard tells its block's pid on it)
        self._proc = server._mp.Process(target=_mp_child, daemon=True,
                                        args=(target, json.dumps(payload), limits.to_json(), log_path, tell))
        self._block: int | None = None
        self._said: Any = said
        try:
            self._proc.start()
        finally:
            tell.close()
        self._block_pid()

    def _block_pid(self) -> int | None:
        """The block process's pid (a child of the guard multiprocessing forked, as the guard
        told it: see :mod:`~backbeat.processes.mpreaper`), None if there is none (not forked)."""
        if self._block is None and self._said is not None:
            self._block = mpreaper.block_of(self._said, lambda: self._proc.exitcode is None)
            if self._block is not None or self._proc.exitcode is not None:
                self._said.close()
                self._said = None
            self._pid = self._block  # (late messages, once it has ended, are still checked against it)
        return self._block

    @property  # type: ignore[override]
    def pid(self) -> int:
        """The block process's pid (its guard's if it has none)."""
        return self._block_pid() or self._proc.pid

    @property  # type: ignore[override]
    def host_pid(self) -> int | None:  # (the block's, which sends the control messages)
        return self._block_pid()

    @host_pid.setter
    def host_pid(self, value: int | None) -> None:
        pass  # (found: the guard's child)

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
            self.exit = Exit("timeout", signal="SIGKILL", wall_s=wall, timed_from_s=self._timed_from)
        elif code < 0:
            self.exit = Exit("signal", signal=signame(-code), wall_s=wall)
        else:
            self.exit = from_code(code, wall, {})
        self._proc.join(0)  # (its leftovers: killed by its guard, whose group holds none of them)
        if self._log is not None:
            compact(self._log)
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
        self._timed_from = elapsed

    def _signal(self, sig: int, reason: str | None = None) -> None:
        if self.exit is None and self._proc.pid is not None:
            block = self._block_pid()
            pid = self._proc.pid if block is None else block  # (the guard: only if it forked no block)
            for target in (-pid, pid):
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
