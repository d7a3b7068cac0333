"""The processes of one run: spawn jobs, collect their reports and exits, in one loop.

A :class:`ProcessGroup` is a fork server (:mod:`~backbeat.processes.workerpool`) and a
control channel (:mod:`~backbeat.processes.control`) with the jobs spawned on them.  Every
part of backbeat that runs code in child processes goes through it — the local executor
(blocks, dataset indexing, the database provider), the remote block runner and plotting —
so spawning, limits, message collection and outcome classification live in one place.

* :meth:`spawn` starts ``target(payload)`` (``"module:function"``) in a fresh child; the
  payload is the *envelope* ``{"target", "control", "job", "token", "root", "spec"}``: ``spec``
  is the job's own JSON description (e.g. a :class:`~backbeat.runtime.spec.BlockSpec`),
  ``root`` the folder of user code (tracebacks are made relative to it), ``token`` the job's
  secret for the control channel (a message naming a job is accepted only with its token,
  from its process: :attr:`refused` lists the others).  ``log``: the file the job's
  stdout and stderr go to (bounded, :mod:`~backbeat.processes.logs`; without one, the
  parent's stderr — never its stdout).
* :meth:`poll` waits up to ``timeout_ms`` for control messages (it wakes at once when a
  process exits), keeps them per job (of a job's ``progress`` messages, the last one only) and
  hands each to ``on_message`` (progress display);
  :meth:`take_ended` says which jobs' exits were seen since it was last called (a loop watching
  many jobs looks at those only);
  :meth:`exit` tells whether a job's process has ended; :meth:`outcome` classifies it from its
  exit and its messages; :meth:`wait` does all this until the given jobs have ended.
* Making a group removes the control folders of dead processes (``kill -9``: nothing of theirs
  removed them; :func:`~backbeat.processes.controlfolders.sweep_folders`), once, also for a run
  that then starts nothing (every run makes its group as it starts).
* Nothing is started until needed (a fully cached run starts no process); :meth:`warm`
  starts the fork server early, so that its zygote imports numpy, h5py and zmq on another
  core while the caller plans.  :meth:`close` kills whatever still runs.

The fork server is started before the control channel exists (a process with threads cannot
fork safely: the channel, a plain Unix socket, starts none and imports no ZeroMQ, but the
command's other sockets may); it is imported only then, so a fully cached run,
which starts nothing, never imports it.

Interpreters and the sandbox: a job may name the ``python`` it runs in (its execution
environment's, :mod:`~backbeat.processes.environments`); the group keeps one fork server per
interpreter, each started in that interpreter.  A group made with a
:class:`~backbeat.processes.sandbox.Sandbox` starts every fork server inside ``bwrap``
(the running interpreter's too), with the group's private folder writable in it, and says
in a failed job's outcome what the sandbox denied.  There, the jobs' logs are written in the
private folder and moved to their place in the cache (read-only in the sandbox) as each job
ends; and the pids the zygote reports (those of its PID namespace) are translated to this
process's, against which the control channel checks who sent a message.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from backbeat.processes.controlfolders import sweep_folders

if TYPE_CHECKING:  # (imported when something is started: a run that starts nothing does not)
    from backbeat.processes.control import ControlServer, Message
    from backbeat.processes.exits import Exit, Limits
    from backbeat.processes.outcome import Outcome
    from backbeat.processes.sandbox import Sandbox
    from backbeat.processes.workerpool import ForkServer, Handle

JOB_MAIN = "backbeat.processes.control:job_main"
FINAL = ("done", "error")  # (control.FINAL: a job's last message)


class ProcessGroup:
    def __init__(self, root: str | None = None, preload: tuple[str, ...] | None = None,
                 on_message: Callable[[Message], None] | None = None, sandbox: Sandbox | None = None) -> None:
        self.root = root
        self.on_message = on_message
        self.sandbox = sandbox
        self._preload = preload
        self._servers: dict[str | None, ForkServer] = {}  # interpreter (None: the running one) -> its server
        self._control: ControlServer | None = None
        self._handles: dict[str, Handle] = {}
        self._messages: dict[str, list[Message]] = {}
        self._limits: dict[str, Limits] = {}
        self._pythons: dict[str, str | None] = {}  # job -> its interpreter
        self._folder: str | None = None  # sandboxed: the private folder holding the control folder
        self._logs: dict[str, tuple[str, str]] = {}  # sandboxed job -> (its log in the folder, in the cache)
        # the pids of the jobs' processes, as their fork servers tell them (_senders): those known, and
        # the jobs whose pid is not known yet (a run's handles are never dropped: not scanned at each poll)
        self._known: set[int] = set()
        self._unknown: dict[str, Handle] = {}
        sweep_folders()

    # -- lifetime
    def warm(self, python: str | None = None) -> ProcessGroup:
        """Start the fork server of ``python`` (None: the running interpreter) now: its zygote
        warms up while the caller works."""
        if python not in self._servers:
            self._servers[python] = self._new_server(python).start()
        return self

    def _new_server(self, python: str | None) -> ForkServer:
        from backbeat.processes.interpreter import RUNTIME_MODULES
        from backbeat.processes.workerpool import ForkServer

        # the zygote imports the block runtime once, rather than each block (~35 ms per block)
        kw: dict[str, Any] = {"preload": RUNTIME_MODULES if self._preload is None else self._preload}
        if self.sandbox is None and python is None:
            from backbeat.core import config
            from backbeat.processes import template

            active = config.active()
            # (a command served by a template has everything loaded: it forks its zygote itself)
            return ForkServer(template=template.enabled(active.template if active else None)
                              and not template.served(), **kw)
        from backbeat.processes import environments

        exe = python or environments.RUNNING.python
        if self.sandbox is None:
            return ForkServer(python=exe, env=environments.runtime_env(), **kw)
        from backbeat.processes import sandbox as sandboxing

        if self._folder is None:  # created before the control folder, to be writable in every sandbox
            # (named like a control folder: removed by the next run if this process is killed)
            self._folder = tempfile.mkdtemp(prefix=f"bb-ctl-{os.getpid()}-run-")
        box = dataclasses.replace(self.sandbox, writable=(*self.sandbox.writable, self._folder))
        path = environments.runtime_path()
        wrapper = box.command(exe, environments.interpreter_info(exe), path)
        return ForkServer(python=exe, wrapper=wrapper, env=sandboxing.environment(pythonpath=path), **kw)

    def _started(self, python: str | None = None) -> tuple[ForkServer, ControlServer]:
        self.warm(python)
        if self._control is None:
            from backbeat.processes.control import ControlServer

            self._control = ControlServer(self._folder, pid_of=self._pid_of, senders=self._senders)
        return self._servers[python], self._control

    @property
    def lost(self) -> bool:
        """Whether a fork server of this group died: a long-lived group is then replaced."""
        return any(server.lost for server in self._servers.values())

    def forget_ended(self) -> None:
        """Drop what the group keeps of the jobs that ended (a long-lived group serves many:
        their handles and messages would grow with every job)."""
        self.take_ended()
        for job in [j for j, h in self._handles.items() if h.exit is not None]:
            for kept in (self._handles, self._messages, self._limits, self._pythons, self._logs, self._unknown):
                kept.pop(job, None)
        self._known = {h.host_pid for h in self._handles.values() if h.host_pid is not None}

    @property
    def started(self) -> bool:
        """Whether any process was (or is being) started."""
        return bool(self._servers)

    def failure(self, python: str | None = None) -> str | None:
        """Why the fork server of ``python`` cannot run jobs (it did not start, or cannot import
        what it preloads), waiting until it is ready; None when it can."""
        from backbeat.core.errors import ExecutionError

        try:
            self.warm(python)
            self._servers[python].wait_ready()
        except ExecutionError as exc:
            return str(exc)
        return None

    def interpreter(self, python: str | None = None) -> dict:
        """The interpreter jobs of ``python`` run in, as its fork server describes it (started if needed)."""
        self.warm(python)
        return self._servers[python].interpreter

    @property
    def directory(self) -> str:
        """The group's private (0700) directory, for the ``ipc://`` sockets of its jobs."""
        return self._started()[1].directory

    def address(self, name: str) -> str:
        """An ``ipc://`` address in the private directory."""
        return f"ipc://{self.directory}/{name}"

    def close(self) -> None:
        """Kill every process still running and release the sockets."""
        for server in self._servers.values():
            server.close()
        for job in list(self._logs):  # (the fork servers completed them as they closed)
            self._publish_log(job)
        if self._control is not None:
            self._control.close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pid_of(self, job: str) -> int | None:
        """The pid of ``job``'s process as this process sees it (in a sandbox, the zygote reports
        the pid in its own PID namespace: translated), None if unknown (no pid to check against)."""
        handle = self._handles.get(job)
        if handle is None or handle.exit is not None and handle._pid is None:
            return None
        try:
            handle.pid  # noqa: B018 - waits for the fork server to report it
        except Exception:  # noqa: BLE001 - e.g. the fork server is gone: no pid to check against
            return None
        return handle.host_pid

    def _senders(self) -> tuple[set[int], bool]:
        """The pids of the jobs' processes known so far (as this process sees them), and whether
        a running job's pid is still unknown (its process may connect before its fork server says it).
        Called for each poll that accepts a connection: it looks only at the jobs whose pid was not
        known at the last call (a pid, once told, stays), not at every job the group ever ran (at
        K=500 a chain's command spent ~5 % of its CPU here: docs/performance.md, "Wave 13 (perf-cmd)")."""
        unsure, told = False, []
        for job, handle in self._unknown.items():
            pid = handle.host_pid
            if pid is not None:
                self._known.add(pid)
                told.append(job)
            elif handle.exit is None:
                unsure = True
        for job in told:
            del self._unknown[job]
        return self._known, unsure

    def _staged_log(self, job: str, log: str | None) -> str | None:
        """Where the fork server writes ``job``'s log: ``log``, or — the cache being read-only in
        the sandbox — a file of the group's private folder, moved to ``log`` once the job ends."""
        if log is None or self.sandbox is None or self._folder is None:
            return log
        staged = os.path.join(self._folder, "logs", f"{len(self._handles)}.log")
        os.makedirs(os.path.dirname(staged), exist_ok=True)
        self._logs[job] = (staged, log)
        return staged

    def _publish_log(self, job: str) -> None:
        if job in self._logs:
            from backbeat.processes.logs import move_log

            staged, log = self._logs.pop(job)
            move_log(staged, log)

    # -- jobs
    def spawn(self, job: str, target: str, spec: Any = None, limits: Limits | None = None,
              log: str | None = None, python: str | None = None) -> Handle:
        """Start ``target`` on ``spec`` as job ``job`` (ids are unique in a group), in the fork
        server of interpreter ``python`` (None: the running interpreter); its output goes to the
        file ``log``."""
        server, control = self._started(python)
        payload = {"target": target, "control": control.address, "job": job, "token": control.register(job),
                   "root": self.root, "spec": spec}
        if limits is None:
            from backbeat.processes.exits import Limits

            limits = Limits()
        handle = server.spawn(JOB_MAIN, payload, limits, self._staged_log(job, log))
        handle.tag = job
        self._handles[job] = handle
        self._unknown[job] = handle
        self._messages[job] = []
        self._limits[job] = limits
        self._pythons[job] = python
        return handle

    def poll(self, timeout_ms: int = 0) -> list[Message]:
        """Control messages received within ``timeout_ms`` (less when a process exits)."""
        if self._control is None or not self._servers:
            return []
        fds = [fd for fd in (s.event_fd() for s in self._servers.values()) if fd is not None]
        msgs = self._take(self._control.poll(timeout_ms, fds))
        for server in self._servers.values():
            server.pump(0)
        return msgs

    def _take(self, msgs: list[Message]) -> list[Message]:
        """Keep each job's messages (of its ``progress`` messages, the last one only: a block
        sending them nonstop grows nothing here) and hand them to ``on_message``."""
        for msg in msgs:
            kept = self._messages.setdefault(msg.job, [])
            if msg.type == "progress" and kept and kept[-1].type == "progress":
                kept[-1] = msg
            else:
                kept.append(msg)
            if self.on_message is not None:
                self.on_message(msg)
        return msgs

    def exit(self, job: str) -> Exit | None:
        """How the job's process ended, or None while it runs."""
        return self._handles[job].poll()

    def ended(self, job: str) -> Exit | None:
        """:meth:`exit` as of the last :meth:`poll` (which reads every exit reported): no system
        call, for a loop checking many jobs after each poll."""
        return self._handles[job].exit

    def take_ended(self) -> list[str]:
        """The jobs whose exit was seen since the last call (each once, in the order seen): a loop
        watching many jobs looks at those only, not at every job after each poll."""
        out = []
        for server in self._servers.values():
            if server.ended:
                out += [h.tag for h in server.ended]
                server.ended.clear()
        return out

    def outcome(self, job: str) -> Outcome:
        """What happened to an ended job (its last messages are collected first)."""
        exit_ = self._handles[job].poll()
        if exit_ is None:
            raise RuntimeError(f"job `{job}' is still running")
        kept = self._messages.get(job)
        if not kept or kept[-1].type not in FINAL:  # (its final message, if any, is queued: it sends none after)
            self.poll(0)
            kept = self._messages.get(job)
            pid = self._handles[job].host_pid
            if (not kept or kept[-1].type not in FINAL) and pid is not None and self._control is not None:
                self._take(self._control.settle(pid))
        from backbeat.processes.outcome import classify

        outcome = classify(exit_, self._messages.get(job, []), self._limits.get(job))
        self._publish_log(job)
        if self.sandbox is not None:
            from backbeat.processes.sandbox import explain

            outcome = explain(outcome)
        return outcome

    def wait(self, jobs: list[str], timeout: float | None = None) -> dict[str, Outcome]:
        """Wait until every given job has ended, or for ``timeout`` seconds at most; the outcomes
        of those that have ended."""
        results: dict[str, Outcome] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(results) < len(jobs) and (deadline is None or time.monotonic() < deadline):
            self.poll(20)
            for j in jobs:
                if j not in results and self.exit(j) is not None:
                    results[j] = self.outcome(j)
        return results

    @property
    def refused(self) -> list[dict]:
        """Control messages refused so far: ``{"job" (named), "type", "pid", "reason", "sender"}``
        (``sender``: the job whose process sent it, if it is one)."""
        if self._control is None:
            return []
        by_pid = {h.host_pid: j for j, h in self._handles.items() if h.host_pid is not None}
        return [dict(r, sender=by_pid.get(r["pid"])) for r in self._control.refused]

    def kill(self, job: str) -> None:
        self._handles[job].kill()

    def set_timeout(self, job: str, seconds: float) -> None:
        """From now on, the job may run at most ``seconds`` more (the limit its timeout names)."""
        self._handles[job].set_timeout(seconds)
        self._limits[job] = dataclasses.replace(self._limits[job], timeout_s=seconds)

    def __contains__(self, job: str) -> bool:
        return job in self._handles
