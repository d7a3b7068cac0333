"""The processes of one run: spawn jobs, collect their reports and exits, in one loop.

A :class:`ProcessGroup` is a fork server (:mod:`~backbeat.processes.workerpool`) and a
control channel (:mod:`~backbeat.processes.control`) with the jobs spawned on them.  Every
part of backbeat that runs code in child processes goes through it — the local executor
(blocks, dataset indexing, the database provider), the remote block runner and plotting —
so spawning, limits, message collection and outcome classification live in one place.

* :meth:`spawn` starts ``target(payload)`` (``"module:function"``) in a fresh child; the
  payload is the *envelope* ``{"target", "control", "job", "root", "spec"}``: ``spec`` is the
  job's own JSON description (e.g. a :class:`~backbeat.runtime.spec.BlockSpec`), ``root`` the
  folder of user code (tracebacks are made relative to it).
* :meth:`poll` waits up to ``timeout_ms`` for control messages (it wakes at once when a
  process exits), keeps them per job and hands each to ``on_message`` (progress display);
  :meth:`exit` tells whether a job's process has ended; :meth:`outcome` classifies it from its
  exit and its messages; :meth:`wait` does all this until the given jobs have ended.
* Nothing is started until needed (a fully cached run starts no process); :meth:`warm`
  starts the fork server early, so that its zygote imports numpy, h5py and zmq on another
  core while the caller plans.  :meth:`close` kills whatever still runs.

The fork server is started before the control channel's zmq context exists (a process with
zmq threads cannot fork safely); zmq itself is imported only then, so a fully cached run,
which starts nothing, never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (imported when something is started: a run that starts nothing does not)
    from backbeat.processes.control import ControlServer, Message
    from backbeat.processes.exits import Exit, Limits
    from backbeat.processes.outcome import Outcome
    from backbeat.processes.workerpool import ForkServer, Handle

JOB_MAIN = "backbeat.processes.control:job_main"


class ProcessGroup:
    def __init__(self, root: str | None = None, preload: tuple[str, ...] | None = None,
                 on_message: Callable[[Message], None] | None = None) -> None:
        self.root = root
        self.on_message = on_message
        self._preload = preload
        self._server: ForkServer | None = None
        self._control: ControlServer | None = None
        self._handles: dict[str, Handle] = {}
        self._messages: dict[str, list[Message]] = {}

    # -- lifetime
    def warm(self) -> ProcessGroup:
        """Start the fork server now (its zygote warms up while the caller works)."""
        if self._server is None:
            from backbeat.processes.workerpool import ForkServer

            self._server = (ForkServer(preload=self._preload) if self._preload is not None else ForkServer()).start()
        return self

    def _started(self) -> tuple[ForkServer, ControlServer]:
        self.warm()
        if self._control is None:
            from backbeat.processes.control import ControlServer

            self._control = ControlServer()
        assert self._server is not None
        return self._server, self._control

    @property
    def started(self) -> bool:
        """Whether any process was (or is being) started."""
        return self._server is not None

    @property
    def directory(self) -> str:
        """The group's private (0700) directory, for the ``ipc://`` sockets of its jobs."""
        return self._started()[1].directory

    def address(self, name: str) -> str:
        """An ``ipc://`` address in the private directory."""
        return f"ipc://{self.directory}/{name}"

    def close(self) -> None:
        """Kill every process still running and release the sockets."""
        if self._server is not None:
            self._server.close()
        if self._control is not None:
            self._control.close()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- jobs
    def spawn(self, job: str, target: str, spec: Any = None, limits: Limits | None = None,
              log_path: str | None = None) -> Handle:
        """Start ``target`` on ``spec`` as job ``job`` (ids are unique in a group)."""
        server, control = self._started()
        payload = {"target": target, "control": control.address, "job": job, "root": self.root, "spec": spec}
        if limits is None:
            from backbeat.processes.exits import Limits

            limits = Limits()
        handle = server.spawn(JOB_MAIN, payload, limits, log_path)
        self._handles[job] = handle
        self._messages[job] = []
        return handle

    def poll(self, timeout_ms: int = 0) -> list[Message]:
        """Control messages received within ``timeout_ms`` (less when a process exits)."""
        if self._control is None or self._server is None:
            return []
        msgs = self._control.poll(timeout_ms, self._server.event_fd())
        for msg in msgs:
            self._messages.setdefault(msg.job, []).append(msg)
            if self.on_message is not None:
                self.on_message(msg)
        self._server.pump(0)
        return msgs

    def exit(self, job: str) -> Exit | None:
        """How the job's process ended, or None while it runs."""
        return self._handles[job].poll()

    def ended(self, job: str) -> Exit | None:
        """:meth:`exit` as of the last :meth:`poll` (which reads every exit reported): no system
        call, for a loop checking many jobs after each poll."""
        return self._handles[job].exit

    def outcome(self, job: str) -> Outcome:
        """What happened to an ended job (its last messages are collected first)."""
        exit_ = self._handles[job].poll()
        if exit_ is None:
            raise RuntimeError(f"job `{job}' is still running")
        self.poll(0)
        from backbeat.processes.outcome import classify

        return classify(exit_, self._messages.get(job, []))

    def wait(self, jobs: list[str]) -> dict[str, Outcome]:
        """Wait until every given job has ended; their outcomes."""
        results: dict[str, Outcome] = {}
        while len(results) < len(jobs):
            self.poll(20)
            for j in jobs:
                if j not in results and self.exit(j) is not None:
                    results[j] = self.outcome(j)
        return results

    def kill(self, job: str) -> None:
        self._handles[job].kill()

    def set_timeout(self, job: str, seconds: float) -> None:
        """From now on, the job may run at most ``seconds`` more."""
        self._handles[job].set_timeout(seconds)

    def __contains__(self, job: str) -> bool:
        return job in self._handles
