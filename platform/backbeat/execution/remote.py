"""Running one block job outside the executor's process (a Dask worker, a batch system).

``python -m backbeat.remote`` reads a :class:`RemoteJob` (JSON) on standard input, runs the
block exactly as the local executor does — in a process group (fork server, control
channel), with a database provider if the block reads datasets — and prints one JSON line,
its :class:`TaskResult`: ``{"status": "ran", "statistics"}``, ``{"status": "cached"}`` or
``{"status": "failed", "kind", "message", "traceback"}``.  ``python -m backbeat.remote --serve``
runs jobs one per line, one after the other, with one warm fork server (:func:`serve`).  A
job may also be a dataset's indexing job (:class:`RemoteIndex`): the view runs there, its
result's statistics are those of a local indexing job.

It runs in a fresh interpreter so that forking never happens from a multi-threaded process
(Dask workers have threads).  The job takes the same lock in the cache store as local runs
(:meth:`backbeat.cache.store.CacheStore.lock`), so a block is never computed twice at once,
and finds it ``cached`` if another worker or run committed it meanwhile.  The cache must be
on storage every worker shares.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from backbeat.cache.backends import open_store
from backbeat.core.errors import WireError
from backbeat.execution.views import INDEX_TARGET, PROVIDER_JOB, start_provider
from backbeat.processes.exits import Limits
from backbeat.processes.group import ProcessGroup
from backbeat.processes.interpreter import runtime
from backbeat.processes.outcome import Outcome
from backbeat.runtime.spec import BlockSpec, DatasetSpec

BLOCK_TARGET = "backbeat.runtime.blockrun:run"
STATUSES = ("ran", "cached", "failed", "skipped")


@dataclass(frozen=True)
class RemoteJob:
    """One block job for another machine: its spec, the datasets it reads, where the cache is."""

    key: str  # the job key (its lock)
    block: BlockSpec
    datasets: dict[str, DatasetSpec]  # those the block reads (the provider serves them)
    cache: str  # the cache store's location (open_store)
    root: str | None = None  # folder of user code (tracebacks)
    force: bool = False
    timeout_s: float | None = None
    memory_bytes: int | None = None
    python: str | None = None  # the interpreter of the block's environment (None: the worker's own)

    def to_json(self) -> dict:
        return {"key": self.key, "block": self.block.to_json(),
                "datasets": {n: d.to_json() for n, d in self.datasets.items()}, "cache": self.cache,
                "root": self.root, "force": self.force, "timeout_s": self.timeout_s,
                "memory_bytes": self.memory_bytes, "python": self.python}

    @classmethod
    def from_json(cls, obj: Any) -> RemoteJob:
        if not isinstance(obj, dict) or not isinstance(obj.get("key"), str) or not isinstance(obj.get("cache"), str):
            raise WireError("malformed remote job: `key' and `cache' are required")
        return cls(obj["key"], BlockSpec.from_json(obj.get("block")),
                   {n: DatasetSpec.from_json(d) for n, d in (obj.get("datasets") or {}).items()},
                   obj["cache"], obj.get("root"), bool(obj.get("force")), obj.get("timeout_s"),
                   obj.get("memory_bytes"), obj.get("python") if isinstance(obj.get("python"), str) else None)


@dataclass(frozen=True)
class RemoteIndex:
    """One dataset's indexing job for another machine: its spec (with where it writes what its
    view opened: on storage the submitting machine reads too), the cache location."""

    dataset: DatasetSpec
    cache: str
    root: str | None = None  # folder of user code (tracebacks)
    log: str | None = None  # where the indexing job's output goes (its log in the cache)

    def to_json(self) -> dict:
        return {"index": self.dataset.to_json(), "cache": self.cache, "root": self.root, "log": self.log}

    @classmethod
    def from_json(cls, obj: Any) -> RemoteIndex:
        if not isinstance(obj, dict) or not isinstance(obj.get("cache"), str):
            raise WireError("malformed remote indexing job: `cache' is required")
        log = obj.get("log")
        return cls(DatasetSpec.from_json(obj.get("index")), obj["cache"], obj.get("root"),
                   log if isinstance(log, str) else None)


def from_json(obj: Any) -> RemoteJob | RemoteIndex:
    """A remote job or indexing job, from its JSON."""
    return RemoteIndex.from_json(obj) if isinstance(obj, dict) and "index" in obj else RemoteJob.from_json(obj)


@dataclass(frozen=True)
class TaskResult:
    """What became of a remote job: ``status`` and, when it ran or failed, its outcome."""

    status: str
    outcome: Outcome | None = None
    statistics: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        if self.status == "failed":
            failure = self.outcome or Outcome("system", "the block failed")
            return {"status": "failed", **failure.error_json()}
        if self.status == "ran":
            return {"status": "ran", "statistics": self.statistics}
        return {"status": self.status}

    @classmethod
    def from_json(cls, obj: Any) -> TaskResult:
        status = obj.get("status") if isinstance(obj, dict) else None
        if status not in STATUSES:
            return cls("failed", Outcome("system", f"malformed result of a remote block: {str(obj)[:200]}"))
        if status == "failed":
            return cls("failed", Outcome.from_json({**obj, "kind": obj.get("kind") or "system"}))
        stats = obj.get("statistics")
        return cls(status, statistics=stats if isinstance(stats, dict) else {})

    @classmethod
    def failure(cls, kind: str, message: str) -> TaskResult:
        return cls("failed", Outcome(kind, message))


def run(job: RemoteJob | RemoteIndex, group: ProcessGroup | None = None, tag: str = "") -> TaskResult:
    """Run one block job (see the module docstring), or one indexing job.

    ``group``: a process group kept between jobs (:func:`serve`: its fork server is warm); by
    default one is made for the job and closed after it.  ``tag`` makes its job ids unique in it.
    """
    if isinstance(job, RemoteIndex):
        return _index(job, group, tag)
    store = open_store(job.cache)
    keys = [o.key for o in job.block.outputs.values()]
    lock = store.lock(job.key)
    assert lock is not None
    with lock:
        if store.committed(keys) and not job.force:
            return TaskResult("cached")
        # under the lock no writer of this job is alive, on any host sharing the cache: whatever
        # temporary files its outputs have were left by a writer that died (a lost worker)
        store.drop_partial(keys, locked=True)
        t0 = time.perf_counter()
        own = group is None
        if group is None:
            group = ProcessGroup(root=job.root)
        group.root = job.root
        block, provider = f"block{tag}", (f"database{tag}" if tag else PROVIDER_JOB)
        try:
            spec = job.block
            if spec.reads_datasets:
                spec = dataclasses.replace(spec, database=start_provider(group, job.datasets, job=provider))
            group.spawn(block, BLOCK_TARGET, spec.to_json(), Limits(job.timeout_s, job.memory_bytes),
                        log=str(store.log_path(job.key)), python=job.python)
            out = group.wait([block])[block]
            interpreter = group.interpreter(job.python) if out.ok else {}
        finally:
            if own:
                group.close()
            elif provider in group:  # a kept group: the provider of this job only goes
                group.kill(provider)
                group.wait([provider])
        if out.ok and store.committed(keys):
            store.make_durable(keys)  # (before the lock goes: a failure leaves them marked, verified when read)
            stats = {k: v for k, v in out.statistics.items() if k != "digests"}
            return TaskResult("ran", statistics=dict(stats, wall_s=time.perf_counter() - t0,
                                                     interpreter=runtime(interpreter)))
        store.drop_partial(keys, locked=True)
        return TaskResult("failed", out if not out.ok else
                          Outcome("system", "the block completed but did not commit its outputs"))


def _index(job: RemoteIndex, group: ProcessGroup | None, tag: str) -> TaskResult:
    own = group is None
    if group is None:
        group = ProcessGroup(root=job.root)
    group.root = job.root
    name = f"index{tag}"
    try:
        group.spawn(name, INDEX_TARGET, job.dataset.to_json(), log=job.log)
        out = group.wait([name])[name]
    finally:
        if own:
            group.close()
    return TaskResult("ran", statistics=out.statistics) if out.ok else TaskResult("failed", out)


def _watch_parent(parent: int) -> None:
    """Leave when the process that started this one is gone (its fork server and blocks follow)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="backbeat-parent-watch", daemon=True).start()


def serve(jobs: IO[str], results: IO[str], parent: int | None = None) -> None:
    """Run the remote jobs read from ``jobs`` (one JSON line each) one after the other, writing each
    one's :class:`TaskResult` as one JSON line to ``results``, until ``jobs`` ends.

    One process group serves them all: its fork server is started at once, so its zygote has
    imported numpy, h5py and zmq before the first job comes, and each job costs what a block
    costs in a local run (a Dask worker keeps one such runner: :mod:`backbeat.execution.dask_worker`).
    ``parent``: leave when that process is gone.
    """
    group = ProcessGroup().warm()  # (before any thread: the zygote is forked from this process)
    if parent is not None:
        _watch_parent(parent)
    try:
        for n, line in enumerate(jobs):
            try:
                result = run(from_json(json.loads(line)), group, str(n))
            except Exception as exc:  # noqa: BLE001 - the caller gets a structured failure
                result = TaskResult.failure("system", f"{type(exc).__name__}: {exc}")
            results.write(json.dumps(result.to_json()) + "\n")
            results.flush()
            group.forget_ended()
            if group.lost:  # its zygote died (killed, out of memory): leave, the worker starts a new runner
                break
    finally:
        group.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m backbeat.remote``: one job on standard input, its result as the last line of
    standard output; ``--serve [--parent PID]``: jobs and results line by line (:func:`serve`)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--serve"]:
        results = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # (not inherited by the blocks)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # what user code prints goes to stderr
        parent = int(args[2]) if args[1:2] == ["--parent"] else None
        serve(sys.stdin, results, parent)
        return
    try:
        result = run(from_json(json.loads(sys.stdin.read())))
    except Exception as exc:  # noqa: BLE001 - the caller gets a structured failure, never a traceback
        result = TaskResult.failure("system", f"{type(exc).__name__}: {exc}")
    sys.stdout.write(json.dumps(result.to_json()) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
