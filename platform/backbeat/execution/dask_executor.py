"""Running a plan on a Dask distributed cluster (optional: ``pip install 'backbeat[dask]'``).

Nothing else in backbeat imports this module or Dask.  The plan is made and the datasets
are indexed on the submitting machine, exactly as for a local run; then every block that
must run becomes one Dask task:

* the task's *data* is plain JSON (the block payload of :meth:`executor.Run.block_payload`,
  the dataset specs, paths) — never a pickled closure; its *key* is ``backbeat-<job key>``,
  so the scheduler de-duplicates identical blocks, also across experiments;
* the task function runs ``python -m backbeat.remote`` on the worker, a fresh interpreter
  that runs the block with the same runtime as local runs (fork server, control socket,
  database provider, HDF5 writers) and takes the same cache lock; so the results and
  cache entries are identical to a local run's, and the cache must be on storage all
  workers share;
* a task returns its outcome (``ran``, ``cached``, ``failed``…) instead of raising for user
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
from pathlib import Path
from typing import Any

from backbeat.core.errors import ExecutionError, UsageError
from backbeat.execution.local import Options, Progress, prepare, report


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
        return {"status": "skipped"}
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "backbeat.execution.remote"], input=json.dumps(job),
                          capture_output=True, text=True, env=env, check=False, preexec_fn=_die_with_parent)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"status": "failed", "kind": "system",
                "message": f"the block runner exited with code {proc.returncode}: {proc.stderr.strip()[-2000:]}",
                "traceback": None}
    return json.loads(lines[-1])


def _client(scheduler: str | None, workers: int):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("the Dask executor needs Dask: pip install 'backbeat[dask]'") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError) as exc:
            raise ExecutionError(f"cannot reach the Dask scheduler at `{scheduler}': {exc}") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=40)
    return Client(cluster), cluster


def run_experiment(prefix: str | os.PathLike, cache: str | os.PathLike, name: str,
                   options: Options | None = None, progress: Progress | None = None,
                   scheduler: str | None = None, workers: int | None = None) -> dict:
    """Run an experiment on a Dask cluster (a LocalCluster when no scheduler address is given)."""
    options = options or Options()
    try:  # say it before planning and indexing
        import distributed  # noqa: F401
    except ImportError:
        raise UsageError("the Dask executor needs Dask: pip install 'backbeat[dask]'") from None
    prefix, cache = Path(prefix).resolve(), Path(cache).resolve()
    run = prepare(prefix, cache, name, options, progress)
    try:
        decisions = run.decide()
    finally:
        run.close()
    emit = progress or (lambda event: None)
    client, cluster = _client(scheduler, workers or options.jobs or os.cpu_count() or 1)
    futures: dict[str, Any] = {}
    try:
        for job in run.plan.jobs:
            action = decisions[job.name][0]
            run.status[job.name] = {"run": "pending", "cached": "cached", "excluded": "skipped",
                                    "blocked": "skipped"}[action]
            failed_ds = [i.node for i in job.inputs.values() if i.node in run.dataset_errors]
            if failed_ds:
                run.status[job.name] = "failed"
                run.errors[job.name] = dict(run.dataset_errors[failed_ds[0]])
            if action != "run" or failed_ds:
                emit({"block": job.name, "state": run.status[job.name]})
                continue
            if any(run.status[d] in ("failed", "skipped") for d in job.depends):
                run.status[job.name] = "skipped"
                emit({"block": job.name, "state": "skipped"})
                continue
            block = run.block_payload(job)
            needed = {i.node for i in job.inputs.values() if i.source == "dataset"}
            task = {"key": job.key, "block": block, "cache": str(cache), "root": str(prefix),
                    "datasets": {n: run.dataset_spec(n) for n in needed}, "force": options.force,
                    "timeout_s": options.timeout_s, "memory_bytes": options.memory_bytes}
            deps = [futures[d] for d in job.depends if d in futures]
            futures[job.name] = client.submit(block_task, task, *deps, key=f"backbeat-{job.key}", pure=False)
            run.started[job.name] = time.perf_counter()
            emit({"block": job.name, "state": "running", "done": 0, "total": None})
        from distributed import as_completed

        names: dict[str, list[str]] = {}  # identical blocks share one task (same key)
        for n, f in futures.items():
            names.setdefault(f.key, []).append(n)
        unique = {f.key: f for f in futures.values()}
        for future in as_completed(list(unique.values())):
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - a task lost too often, or a scheduler error
                result = {"status": "failed", "kind": "system", "message": f"Dask task failed: {exc}",
                          "traceback": None}
            for job_name in names[future.key]:
                _record(run, emit, job_name, result)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if any(s == "pending" for s in run.status.values()):
        raise ExecutionError("the Dask run ended with blocks never scheduled")
    return report(run)


def _record(run: Any, emit: Any, job_name: str, result: dict) -> None:
    """Record the outcome of one block's task."""
    status = result.get("status", "failed")
    run.status[job_name] = status
    if status == "failed":
        run.errors[job_name] = {k: result.get(k) for k in ("kind", "message", "traceback")}
        emit({"block": job_name, "state": "failed", "message": result.get("message")})
    elif status == "ran":
        run.stats[job_name] = result.get("statistics", {})
        emit({"block": job_name, "state": "done", "wall_s": time.perf_counter() - run.started[job_name]})
    else:
        emit({"block": job_name, "state": status})
