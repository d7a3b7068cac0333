"""On each Dask worker: block runners kept warm between tasks (a Dask worker plugin).

Starting ``python -m backbeat.remote`` for every block costs a fresh interpreter importing
numpy, h5py, zmq and backbeat, then a fork server whose zygote imports them again (~0.3-0.5 s
per block).  :class:`BlockRunners`, registered by the Dask executor on every worker
(``Client.register_plugin``), starts ``python -m backbeat.remote --serve`` once per worker
thread when the worker starts: each runner keeps one warm fork server and runs the jobs it
is sent one after the other (:func:`backbeat.execution.remote.serve`), so a block task costs
about what a block costs in a local run.  A task takes an idle runner, writes its job as one
JSON line and reads its result line.  A runner that died (killed, out of memory) fails the
task it was running with its last words and is replaced.

The runners are the worker's children: each leaves when the worker is gone (it watches its
parent), and its fork server and blocks follow it.  What user code prints goes to the
runner's standard error, kept in a temporary file (its tail is shown when a runner dies).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from typing import IO, Any

from distributed.diagnostics.plugin import WorkerPlugin

NAME = "backbeat-block-runners"


class Runner:
    """One ``python -m backbeat.remote --serve`` process and its pipes."""

    def __init__(self) -> None:
        self.errors: IO[bytes] = tempfile.TemporaryFile(prefix="backbeat-runner-")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "backbeat.remote", "--serve", "--parent", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors, text=True,
            env=dict(os.environ), start_new_session=True)
        self.jobs = 0

    def run(self, job: dict) -> dict | None:
        """The result of ``job``, or None when the runner died meanwhile."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(job) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except (OSError, ValueError):
            return None
        self.jobs += 1
        if not line:
            return None
        try:
            answer = json.loads(line)
        except ValueError:  # (not what a runner writes: treated as a dead runner, replaced)
            return None
        return answer if isinstance(answer, dict) else None

    def last_words(self) -> str:
        self.errors.seek(0, os.SEEK_END)
        size = self.errors.tell()
        self.errors.seek(max(0, size - 2000))
        return self.errors.read().decode("utf-8", "replace").strip()

    def close(self) -> None:
        if self.process.poll() is None:
            if self.process.stdin is not None:
                self.process.stdin.close()  # the runner leaves at the end of its jobs
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.errors.close()


class BlockRunners(WorkerPlugin):
    """A pool of warm block runners per Dask worker, one per worker thread (see module docstring)."""

    idempotent = True  # registered by every run: the runners of the first registration stay
    name = NAME
    most = 64  # runners at most (a task beyond waits for one to be free)

    def __init__(self) -> None:
        self._idle: list[Runner] = []
        self._all: list[Runner] = []
        self._starting = 0  # runners being started, each for the task that asked for it
        self._lock = threading.Condition()
        self.started = 0  # runners started (each one fork server: tests count them)

    def __getstate__(self) -> dict:  # only the class travels to the workers
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()  # type: ignore[misc]

    def setup(self, worker: Any) -> None:
        for _ in range(max(1, int(getattr(getattr(worker, "state", None), "nthreads", 1) or 1))):
            self._release(self._start())

    def teardown(self, worker: Any) -> None:
        with self._lock:
            runners, self._all, self._idle = self._all, [], []
        for runner in runners:
            runner.close()

    def _take(self) -> Runner | None:
        """An idle runner, taken; or None: a new one is to be started for the caller (counted in
        ``_starting`` until :meth:`_start` adds it), so that concurrent tasks never start more
        than one each nor more than :attr:`most` in all."""
        with self._lock:
            while not self._idle and len(self._all) + self._starting >= self.most:
                self._lock.wait()
            if self._idle:
                return self._idle.pop()
            self._starting += 1
            return None

    def _start(self) -> Runner:
        """A new runner, busy (its caller's: :meth:`_release` makes it idle)."""
        try:
            runner = Runner()
        except BaseException:
            with self._lock:
                self._starting -= 1
                self._lock.notify()
            raise
        with self._lock:
            self._starting -= 1
            self._all.append(runner)
            self.started += 1
        return runner

    def _release(self, runner: Runner) -> None:
        with self._lock:
            self._idle.append(runner)
            self._lock.notify()

    def run(self, job: dict) -> dict:
        """Run one remote job on an idle runner; its :class:`~backbeat.execution.remote.TaskResult` JSON."""
        from backbeat.execution.remote import TaskResult

        runner = self._take()
        if runner is None:  # more tasks than runners: one more, for this task
            runner = self._start()
        result = runner.run(job)
        if result is None:  # the runner died: replace it
            words = runner.last_words()
            with self._lock:
                self._all.remove(runner)
                self._starting += 1
            runner.close()
            self._release(self._start())
            return TaskResult.failure("system", f"the block runner exited with code {runner.process.returncode}"
                                                f": {words[-2000:]}").to_json()
        self._release(runner)
        return result


def _children(pid: int) -> list[int]:
    """The pids of the live children of ``pid`` (Linux ``/proc``)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rfind(b")") + 2:].split()[1]) == pid:
                out.append(int(entry))
    return out


def state(dask_worker: Any = None) -> dict:
    """This worker's block runners: ``{"started", "runners": [{"pid", "jobs", "alive", "children"}]}``
    (``children``: the runner's fork server, the one process it ever forks).  For ``Client.run``,
    which passes the worker as ``dask_worker``."""
    pool = runners(dask_worker)
    if pool is None:
        return {"started": 0, "runners": []}
    with pool._lock:
        found = list(pool._all)
    return {"started": pool.started,
            "runners": [{"pid": r.process.pid, "jobs": r.jobs, "alive": r.process.poll() is None,
                         "children": _children(r.process.pid)} for r in found]}


def runners(worker: Any = None) -> BlockRunners | None:
    """The block runners of ``worker`` (default: the one running the current task; None: not
    registered there)."""
    from distributed import get_worker

    try:
        plugin = (worker or get_worker()).plugins.get(NAME)
    except ValueError:  # not in a worker
        return None
    return plugin if isinstance(plugin, BlockRunners) else None
