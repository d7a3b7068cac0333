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
* the task function runs the block on one of the worker's *block runners*
  (``python -m backbeat.remote --serve``, started once per worker thread by the worker
  plugin :class:`~backbeat.execution.dask_worker.BlockRunners`, each with a warm fork
  server), with the same runtime as local runs and the same cache lock; so the results and
  cache entries are identical to a local run's, and the cache must be on storage all
  workers share;
* a task returns its result (``ran``, ``cached``, ``failed``…) instead of raising for user
  errors, so Dask does not retry a block that failed by itself; downstream tasks then
  report ``skipped``.  A worker lost mid-block makes Dask re-run the task elsewhere; the
  atomic commit of cache files makes that safe.

Datasets whose view must run are indexed by tasks too (:class:`~backbeat.execution.remote.RemoteIndex`,
the view runs on a worker), submitted first: the blocks that do not read them (their keys
are known) run meanwhile, and the jobs that read them are keyed, decided and submitted as
soon as their last dataset is indexed (the index and data digests are recorded here, as
in a local run).
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
from backbeat.execution.base import Executor, decide
from backbeat.execution.remote import RemoteIndex, RemoteJob, TaskResult
from backbeat.execution.specs import SpecBuilder
from backbeat.execution.state import BROKEN, JobState, Run
from backbeat.execution.views import begin_index, record_index
from backbeat.planning.model import assign_keys
from backbeat.processes.outcome import Outcome


def _die_with_parent() -> None:
    """In the runner's child: SIGKILL when the worker dies (Linux), so a lost worker holds no lock."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def block_task(job: dict, *upstream: dict) -> dict:
    """Dask task: run one block job on this worker, on one of its warm block runners
    (:mod:`backbeat.execution.dask_worker`), else through a fresh ``python -m backbeat.remote``."""
    if any(u.get("status") in ("failed", "skipped") for u in upstream):
        return TaskResult("skipped").to_json()
    return _on_runner(job)


def index_task(job: dict) -> dict:
    """Dask task: index one dataset (a :class:`~backbeat.execution.remote.RemoteIndex`) on this worker."""
    return _on_runner(job)


def _on_runner(job: dict) -> dict:
    from backbeat.execution.dask_worker import runners

    pool = runners()
    if pool is not None:
        return pool.run(job)
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
    indexes = True

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
        futures: dict[str, Any] = {}  # job -> its task (identical blocks share one: same key)
        names: dict[str, list[str]] = {}  # task key -> its jobs
        results: dict[str, TaskResult] = {}  # task key -> result, once known
        started: dict[str, float] = {}
        indexing: dict[str, tuple[str, Any]] = {}  # task key -> (dataset, where its view's reads go)
        done = as_completed(loop=client.loop)

        def submit(job_name: str) -> None:
            job = run.jobs[job_name]
            if any(status[d] in BROKEN for d in job.depends):
                run.set(job.name, JobState.SKIPPED)
                return
            needed = {i.node for i in job.inputs.values() if i.source == "dataset"}
            task = RemoteJob(job.key, specs.block(job), specs.datasets(needed), run.store.location,
                             run.workspace.user_root, run.decisions[job.name].forced, run.options.timeout_s,
                             run.options.memory_bytes, environments.of(run.interpreters, job.name).key)
            deps = [futures[d] for d in job.depends if d in futures]
            future = client.submit(block_task, task.to_json(), *deps, key=f"backbeat-{job.key}", pure=False)
            futures[job.name] = future
            started[job.name] = time.perf_counter()
            run.emit(job.name, "running", done=0, total=None)
            if future.key in results:  # a twin of a job already done
                self._settle(run, job.name, results[future.key], 0.0)
            elif future.key not in names:
                done.add(future)
            names.setdefault(future.key, []).append(job.name)

        try:
            from backbeat.execution.dask_worker import BlockRunners

            client.register_plugin(BlockRunners())  # warm runners on every worker (kept between runs)
            unwritable = False
            for ds_name in run.deferred:  # first: the views to index, then what can run meanwhile
                begun = begin_index(run, ds_name, specs, cores=1)  # (a task: one worker thread)
                if begun is None:  # (the cache cannot be written: a dataset error, as locally)
                    unwritable = True
                    continue
                spec, reads = begun
                task = RemoteIndex(spec, run.store.location, run.workspace.user_root,
                                   str(run.store.log_path(run.plan.datasets[ds_name].index_key)))
                future = client.submit(index_task, task.to_json(), key=f"backbeat-index-{os.urandom(8).hex()}",
                                       pure=False)
                indexing[future.key] = (ds_name, reads)
                done.add(future)
            if unwritable:  # the jobs reading it fail with its error (and never wait for it)
                self._decided(run)
            for job in run.plan.jobs:
                if status[job.name] == JobState.PENDING:
                    submit(job.name)
            for future in done:
                try:
                    result = TaskResult.from_json(future.result())
                except Exception as exc:  # noqa: BLE001 - a task lost too often, or a scheduler error
                    result = TaskResult.failure("system", f"Dask task failed: {exc}")
                if future.key in indexing:
                    for job_name in self._indexed(run, *indexing.pop(future.key), result):
                        submit(job_name)
                    continue
                results[future.key] = result
                for job_name in names[future.key]:
                    self._settle(run, job_name, result, time.perf_counter() - started[job_name])
        finally:
            if indexing:  # interrupted: index tasks still run on workers, and will write what nobody
                run.journal = None  # records: this run's journal stays, for the next run to clean
            client.close()
            if cluster is not None:
                cluster.close()
        if any(s == JobState.PENDING for s in status.values()):
            raise ExecutionError("the Dask run ended with blocks never scheduled")

    @staticmethod
    def _indexed(run: Run, ds_name: str, reads: Any, result: TaskResult) -> list[str]:
        """Record one dataset's index; decide the jobs no longer waiting; those to submit."""
        outcome = (Outcome("completed", "", statistics=result.statistics) if result.status == "ran"
                   else result.outcome or Outcome("system", "the indexing task failed"))
        record_index(run, ds_name, outcome, reads)
        ready = DaskExecutor._decided(run)
        run.intend([run.jobs[n] for n in ready])  # (as the jobs pending from the start: base.Executor)
        return ready

    @staticmethod
    def _decided(run: Run) -> list[str]:
        """Decide the jobs no longer waiting for an index (indexed, or that could not be); those to submit."""
        before = {n for n, s in run.state.status.items() if s == JobState.WAITING}
        cached = {n for n, s in run.state.status.items() if s == JobState.CACHED}
        assign_keys(run.plan)  # (the keys known already do not change)
        decide(run, before)  # (a cached producer of a file they read, corrupted now, is re-run)
        return [j.name for j in run.plan.jobs  # (in dependency order: producers first)
                if j.name in before | cached and run.state.status[j.name] == JobState.PENDING]

    @staticmethod
    def _settle(run: Run, job_name: str, result: TaskResult, wall_s: float) -> None:
        if run.decisions[job_name].twin is not None:  # as locally: reuses its twin's outputs
            run.set(job_name, JobState.CACHED if result.status != "failed" else JobState.SKIPPED)
        else:
            _record(run, job_name, result, wall_s)


def _record(run: Run, job: str, result: TaskResult, wall_s: float) -> None:
    """Record the result of one block's task."""
    if result.status == "failed":
        failure = result.outcome or TaskResult.failure("system", "the block failed").outcome
        assert failure is not None
        run.state.fail(job, failure.error_json())
        run.emit(job, "failed", message=failure.message)
    elif result.status == "ran":
        run.state.status[job] = JobState.RAN
        stats = run.state.learn(dict(result.statistics), run.jobs[job].output_keys)
        info = stats.pop("interpreter", None)
        run.state.stats[job] = stats
        run.settle(run.jobs[job])
        if isinstance(info, dict):  # where the worker ran it (the same path names the same interpreter)
            node = run.jobs[job]
            run.state.runtime[job] = environments.runtime(node.environment,
                                                          environments.of(run.interpreters, job), info, False)
        run.emit(job, "done", wall_s=wall_s)
    else:
        run.set(job, JobState(result.status))
