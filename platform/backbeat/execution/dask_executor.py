"""The Dask executor: every block a task on a Dask distributed cluster (``pip install 'backbeat[dask]'``).

Nothing imports this module unless ``--executor dask`` is chosen (the executor table,
:mod:`backbeat.execution.executors`, names it by string), so Dask stays optional.  The run
is prepared, decided, reported and recorded on the submitting machine exactly as a local
run (:class:`~backbeat.execution.base.Executor`); :meth:`DaskExecutor.execute` turns every
pending job into one Dask task:

* the task's *data* is plain JSON (a :class:`~backbeat.execution.remote.RemoteJob`: the
  block's spec, the specs of the datasets it reads, the cache location) — never a pickled
  closure; its *key* is ``backbeat-<job key>``, so the scheduler de-duplicates identical
  blocks, also across experiments;
* the task function runs ``python -m backbeat.remote`` on the worker, a fresh interpreter
  that runs the block with the same runtime as local runs and takes the same cache lock;
  so the results and cache entries are identical to a local run's, and the cache must be
  on storage all workers share;
* a task returns its result (``ran``, ``cached``, ``failed``…) instead of raising for user
  errors, so Dask does not retry a block that failed by itself; downstream tasks then
  report ``skipped``.  A worker lost mid-block makes Dask re-run the task elsewhere; the
  atomic commit of cache files makes that safe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from backbeat.core.errors import ExecutionError, UsageError
from backbeat.execution import environments
from backbeat.execution.base import Executor
from backbeat.execution.remote import RemoteJob, TaskResult
from backbeat.execution.specs import SpecBuilder
from backbeat.execution.state import BROKEN, JobState, Run


def _die_with_parent() -> None:
    """In the runner's child: SIGKILL when the worker dies (Linux), so a lost worker holds no lock."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def block_task(job: dict, *upstream: dict) -> dict:
    """Dask task: run one block job through ``python -m backbeat.remote`` on this worker."""
    if any(u.get("status") in ("failed", "skipped") for u in upstream):
        return TaskResult("skipped").to_json()
    proc = subprocess.run([sys.executable, "-m", "backbeat.remote"], input=json.dumps(job),
                          capture_output=True, text=True, env=dict(os.environ), check=False,
                          preexec_fn=_die_with_parent)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return TaskResult.failure("system", f"the block runner exited with code {proc.returncode}: "
                                            f"{proc.stderr.strip()[-2000:]}").to_json()
    return json.loads(lines[-1])


class DaskExecutor(Executor):
    name = "dask"

    def __init__(self, scheduler: str | None = None, workers: int | None = None) -> None:
        """``scheduler``: a running cluster's address (default: a LocalCluster of ``workers`` processes)."""
        self.scheduler = scheduler
        self.workers = workers

    def check(self) -> None:
        try:  # say it before planning and indexing
            import distributed  # noqa: F401
        except ImportError:
            raise UsageError("the Dask executor needs Dask: pip install 'backbeat[dask]'") from None

    def _client(self, workers: int) -> tuple[Any, Any]:
        from distributed import Client, LocalCluster

        if self.scheduler:
            try:
                return Client(self.scheduler, timeout="30s"), None
            except (OSError, TimeoutError) as exc:
                raise ExecutionError(f"cannot reach the Dask scheduler at `{self.scheduler}': {exc}") from None
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
        return Client(cluster), cluster

    def execute(self, run: Run) -> None:
        from distributed import as_completed

        if run.options.sandbox:
            raise UsageError("the sandbox is available with the local executor only (Dask workers would need "
                             "bubblewrap and the staging folder on every machine): run without --sandbox")
        status = run.state.status
        specs = SpecBuilder(run.plan, run.workspace, run.options.window)
        client, cluster = self._client(self.workers or run.options.jobs or os.cpu_count() or 1)
        futures: dict[str, Any] = {}
        started: dict[str, float] = {}
        try:
            for job in run.plan.jobs:
                if status[job.name] != JobState.PENDING:
                    continue
                if any(status[d] in BROKEN for d in job.depends):
                    run.set(job.name, JobState.SKIPPED)
                    continue
                needed = {i.node for i in job.inputs.values() if i.source == "dataset"}
                task = RemoteJob(job.key, specs.block(job), specs.datasets(needed), run.store.location,
                                 run.workspace.user_root, run.decisions[job.name].forced, run.options.timeout_s,
                                 run.options.memory_bytes, environments.of(run.interpreters, job.name).key)
                deps = [futures[d] for d in job.depends if d in futures]
                futures[job.name] = client.submit(block_task, task.to_json(), *deps, key=f"backbeat-{job.key}",
                                                  pure=False)
                started[job.name] = time.perf_counter()
                run.emit(job.name, "running", done=0, total=None)
            names: dict[str, list[str]] = {}  # identical blocks share one task (same key)
            for n, f in futures.items():
                names.setdefault(f.key, []).append(n)
            unique = {f.key: f for f in futures.values()}
            for future in as_completed(list(unique.values())):
                try:
                    result = TaskResult.from_json(future.result())
                except Exception as exc:  # noqa: BLE001 - a task lost too often, or a scheduler error
                    result = TaskResult.failure("system", f"Dask task failed: {exc}")
                for job_name in names[future.key]:
                    if run.decisions[job_name].twin is not None:  # as locally: reuses its twin's outputs
                        run.set(job_name, JobState.CACHED if result.status != "failed" else JobState.SKIPPED)
                    else:
                        _record(run, job_name, result, time.perf_counter() - started[job_name])
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
        if any(s == JobState.PENDING for s in status.values()):
            raise ExecutionError("the Dask run ended with blocks never scheduled")


def _record(run: Run, job: str, result: TaskResult, wall_s: float) -> None:
    """Record the result of one block's task."""
    if result.status == "failed":
        failure = result.outcome or TaskResult.failure("system", "the block failed").outcome
        assert failure is not None
        run.state.fail(job, failure.error_json())
        run.emit(job, "failed", message=failure.message)
    elif result.status == "ran":
        run.state.status[job] = JobState.RAN
        stats = dict(result.statistics)
        info = stats.pop("interpreter", None)
        run.state.stats[job] = stats
        if isinstance(info, dict):  # where the worker ran it (the same path names the same interpreter)
            node = run.jobs[job]
            run.state.runtime[job] = environments.runtime(node.environment,
                                                          environments.of(run.interpreters, job), info, False)
        run.emit(job, "done", wall_s=wall_s)
    else:
        run.set(job, JobState(result.status))
