"""The executor interface: one run lifecycle, whatever runs the blocks.

:meth:`Executor.run` is the same for every executor::

    prepare   plan the experiment, index its datasets (in local block processes, or deferred:
              the executor indexes them as tasks), assign keys
    decide    which jobs run: cache state, verification, --force/--only/--from/--until
    execute   run the jobs whose state is ``pending``        <- the one method an executor supplies
    report    each job's status, error, statistics, logs; the analyzers' results
    record    the provenance record, stored in the cache (the same for every executor)

A run stopped by a signal (:class:`~backbeat.core.errors.Interrupted`, a ``KeyboardInterrupt``)
is still reported and recorded — status ``interrupted``, its running jobs failed
``interrupted``, their partial files removed — before the exception goes on up (carrying the
report).  A record that cannot be written (a read-only or full cache) is skipped with a
warning in the report: the results are still given.  Each run keeps a journal of what it may
leave in the cache (:mod:`backbeat.cache.journal`), and first cleans after dead runs.

:meth:`Executor.execute` moves jobs from ``pending`` to ``ran``/``failed``/``skipped``/
``cached`` in ``run.state`` (:class:`~backbeat.execution.state.RunState`) and emits progress
events; everything else is done here.  Executors are listed in
:data:`backbeat.execution.executors.EXECUTORS`; adding one is a module with an
``Executor`` subclass and one entry in that table (``docs/architecture.md``).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import ClassVar

from backbeat.cache import journal
from backbeat.cache.store import CacheStore
from backbeat.core import exiting
from backbeat.core.errors import (
    BackbeatError,
    ExecutionError,
    Interrupted,
    describe_environmental,
    environmental,
)
from backbeat.core.names import parse_name
from backbeat.execution import decisions, environments
from backbeat.execution.report import report
from backbeat.execution.sandboxing import Staging, sandbox_for
from backbeat.execution.state import INITIAL, STARTABLE, JobState, Progress, Run, local_group
from backbeat.execution.views import index_datasets
from backbeat.execution.workspace import Workspace
from backbeat.planning.model import assign_keys
from backbeat.planning.selection import Options, ancestors
from backbeat.provenance import builder, records


def prepare(prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike, name: str,
            options: Options | None = None, progress: Progress | None = None, warm: bool = False,
            dry: bool = False, defer: bool = False) -> Run:
    """Plan an experiment and index its datasets (keys assigned), ready to decide and execute.

    With ``warm``, the fork server is started as soon as something is known to run, so that
    its zygote imports numpy, h5py, zmq and the block runtime on the other core while this
    process goes on: first thing when the experiment was never recorded in this cache (its
    first run: planning then overlaps the zygote's start-up), else once a dataset must be
    indexed or an output is missing (:func:`will_run`).  A run of an experiment recorded before
    with nothing to run (fully cached) starts no process at all.
    A served command running several experiments first finishes what an earlier run left for
    after its answer (its outputs' syncing): its syncer thread ends, so this run's fork server
    can fork, and this run finds those outputs durable instead of verifying them.
    ``--force`` indexes every dataset again, unless ``dry`` or with ``--from``/``--only`` (what
    is upstream of the selection is never re-run); a missing index is always built.  Every
    job gets the interpreter of its environment here (an unmapped environment stops the run
    before anything runs); a sandboxed run (``options.sandbox``) gets its staging folder, and
    its fork servers start once the plan says which database folders they may read.
    With ``defer``, the datasets whose view must run are not indexed here but listed in
    ``run.deferred``: the executor indexes them, and the jobs reading them (no key yet) wait.
    """
    exiting.run_after_answer()
    options = options or Options()
    if options.sandbox:  # (its processes do not start in this folder: every path they get is absolute)
        from backbeat.processes import sandbox  # (a run that starts nothing imports no processes module)
        from backbeat.processes.exits import Limits

        sandbox.require()
        limits = sandbox.limits(Limits(options.timeout_s, options.memory_bytes))  # blocks' default limits
        options = dataclasses.replace(options, timeout_s=limits.timeout_s, memory_bytes=limits.memory_bytes)
        prefix = os.path.abspath(prefix)
        cache = cache if isinstance(cache, CacheStore) else os.path.abspath(cache)
    workspace = Workspace.open(prefix, cache)
    journal.sweep(workspace.store)  # what runs killed with kill -9 left
    group = local_group(workspace.user_root)  # (removes dead processes' control folders: also if nothing runs)
    first = warm and _first_run(workspace.store, name)  # start the fork server at once (see above)
    if first and not options.sandbox:
        group.warm()
    staging = None
    try:
        plan = workspace.plan(name)
        interpreters = environments.assign(plan, workspace.environments)
        if options.sandbox:
            try:
                staging = Staging(workspace.store)
            except OSError as exc:  # (a read-only or full cache)
                raise ExecutionError("the sandbox needs a staging folder in the cache: "
                                     + describe_environmental(exc, cache=workspace.store.location)) from None
            group.sandbox = sandbox_for(workspace.prefix, workspace.store, plan, staging)
            if first:
                group.warm()
    except BaseException:
        group.close()
        if staging is not None:
            staging.close()
        raise
    run = Run(plan, workspace, options, group, progress, interpreters=interpreters, staging=staging)
    if staging is not None:  # (removed by the next run if this one is killed with kill -9)
        run.intend(folders=[staging.root])
    group.on_message = run.on_message
    opts = run.options
    try:
        run.deferred = index_datasets(run, rebuild=opts.force and not (dry or opts.from_ or opts.only),
                                      defer=defer)  # (may start the fork server)
        assign_keys(plan)
        if warm and will_run(run):
            run.group.warm()
    except BaseException:
        run.close()
        run.end()
        raise
    return run


def _first_run(store: CacheStore, name: str) -> bool:
    """Whether experiment ``name`` has no record in ``store`` (one ``stat``, before planning)."""
    try:
        experiment = parse_name("experiment", name)[1]
    except BackbeatError:
        return False
    return not records.record_path(store, experiment).is_file()


def will_run(run: Run) -> bool:
    """Whether some job will surely run (cheap: before :func:`decide` and its verifications)."""
    options = run.options
    if options.force or options.from_ or options.only or run.deferred:  # (deferred: a view to index)
        return True
    names = {options.until} | ancestors(run.plan, options.until) if options.until else None
    return any(not run.store.committed(j.output_keys) for j in run.plan.jobs if names is None or j.name in names)


def waiting(run: Run) -> set[str]:
    """The jobs that read, directly or through upstream jobs, a dataset the executor has yet
    to index (``run.deferred`` without an index digest): their keys are not known yet."""
    pending = {n for n in run.deferred if run.plan.datasets[n].index_digest is None
               and n not in run.state.dataset_errors}
    out: set[str] = set()
    for job in run.plan.jobs:  # (in dependency order)
        if any(i.node in pending for i in job.inputs.values() if i.source == "dataset") or set(job.depends) & out:
            out.add(job.name)
    return out


def decide(run: Run, jobs: Collection[str] | None = None) -> None:
    """Decide every job's action (:func:`backbeat.execution.decisions.decide`, the decision
    ``--dry-run`` prints) and set its first state (:data:`~backbeat.execution.state.INITIAL`).

    A job reading a dataset whose view could not be indexed fails with the view's error.  Jobs
    waiting for a deferred dataset's index are ``waiting``; once it is indexed (keys assigned
    again), ``decide(run, those jobs)`` decides them.
    """
    chosen = decisions.decide(run, jobs)
    later = waiting(run)
    if jobs is None:
        run.decisions = chosen
        names = {j.name for j in run.plan.jobs}
    else:
        names = set(jobs) - later
        # (and the cached producers of files those jobs read that are corrupted now: re-run)
        names |= {n for n, d in chosen.items() if d.action == "run" and n in run.decisions
                  and run.decisions[n].action == "cached"}
        run.decisions.update({n: chosen[n] for n in names})
    for job in run.plan.jobs:
        if job.name in later:
            if run.state.status.get(job.name) != JobState.WAITING:  # (said once)
                run.set(job.name, JobState.WAITING)
            continue
        if job.name not in names:
            continue
        decision = run.decisions[job.name]
        run.state.status[job.name] = INITIAL[decision.action] if decision.twin is None else JobState.PENDING
        if decision.action == "cached" and decision.twin is None:  # (a twin: once its twin has run)
            run.emit(job.name, "cached")
        elif decision.action == "failed":
            dataset = next(i.node for i in job.inputs.values()
                           if i.source == "dataset" and i.node in run.state.dataset_errors)
            error = run.state.dataset_errors[dataset]
            if "reported_by" in error:  # said once, with its traceback, by the first block reading it
                run.state.fail(job.name, {"kind": error["kind"], "message": f"its dataset `{dataset}' could not "
                                          f"be indexed (see block `{error['reported_by']}')", "traceback": None})
            else:
                run.state.fail(job.name, {k: v for k, v in error.items() if k != "reported_by"})
                error["reported_by"] = job.name
            run.emit(job.name, "failed", message=run.state.errors[job.name]["message"])


def verified_before_trusted(run: Run) -> None:
    """The outputs the run committed are made durable in the background (``docs/execution.md``
    §3b); until they are, they stay marked unsynced, and nothing trusts a marked entry without
    verifying its digest.  A command served by a warm template leaves the wait for after its
    answer (:func:`backbeat.core.exiting.after_answer`): its record and report go out now (the
    record only names the outputs' digests; the result summaries are derived later from the
    verified entries).  Anywhere else the run waits here, as its process is the last to hold the
    syncing.  An output that could not be made durable is a warning (it stays marked)."""
    store = run.store
    later = store.durability.pending and exiting.after_answer(lambda: _durable_after_answer(store))
    for path, exc in sorted(store.durability.wait(block=not later).items()):
        run.state.warnings.append(f"{describe_environmental(exc, path, doing='syncing', cache=run.store.location)}: "
                                  f"the cache file was not made durable (it is verified by its digest before "
                                  f"it is trusted)")


def _durable_after_answer(store: CacheStore) -> None:
    """After a served command's answer: wait until the outputs it committed are durable (their
    marks cleared).  Nothing is written to the cache meanwhile — its folder may be removed as
    soon as the command has answered —: the stat memo is not (what the syncer would make it
    remember is within its racy window, never trusted by a lookup: :mod:`backbeat.core.statmemo`).
    An output that could not be made durable is said on the standard error — the template's log
    by then —; it stays marked (``cache verify``: "not yet durable"), verified whenever it is read."""
    for path, exc in sorted(store.durability.wait(remember=False).items()):
        print(f"backbeat {time.strftime('%Y-%m-%dT%H:%M:%S')} (pid {os.getpid()}, after its answer to "
              f"`{' '.join(sys.argv[1:])}'): warning: "
              f"{describe_environmental(exc, path, doing='syncing', cache=store.location)}: the cache file was not "
              f"made durable (it stays marked unsynced, and is verified by its digest before it is trusted)",
              file=sys.stderr, flush=True)


def finish(run: Run) -> None:
    """Jobs that never started (not selected, or after a failure) end ``skipped``."""
    for job in run.plan.jobs:
        if run.state.status[job.name] in (*STARTABLE, JobState.EXCLUDED):
            run.set(job.name, JobState.SKIPPED)


def record(run: Run, rep: dict) -> str | None:
    """Build and store the run's provenance record; its path (None, with a warning in the report,
    if the cache cannot take it: read-only, full)."""
    try:
        return _record(run, rep)
    except OSError as exc:
        failure = environmental(exc) or exc
        where = None if failure.filename else records.record_path(run.store, run.plan.experiment)
        rep.setdefault("warnings", []).append(
            "the provenance record of this run was not written: "
            + describe_environmental(failure, where, cache=run.store.location))
        return None


def _record(run: Run, rep: dict) -> str:
    store = run.store
    previous = records.latest(store, run.plan.experiment)  # one record, whatever the history's length
    options = {"force": run.options.force, "only": run.options.only, "from": run.options.from_,
               "until": run.options.until}
    rec = builder.build(run.plan, run.workspace.prefix, store, options, rep, previous, run.catalog, run.state.digests)
    return str(records.store(store, rec))


def dry_run(prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike, name: str,
            options: Options | None = None) -> dict:
    """The plan of a run without running any block: each job's decision, as the run takes it.

    ``{"experiment", "blocks": {job: {"action", "status", "reason", "key", "algorithm",
    "depends"}}}``: ``status`` is what the run will report for the job unless a job fails.
    Dataset views whose index is missing are indexed first (their content enters the keys);
    stored indexes are not rebuilt, even with ``--force`` (the run rebuilds them: a view whose
    index changed gives other keys, its blocks run anyway).
    """
    run = prepare(prefix, cache, name, options, dry=True)
    try:
        chosen = decisions.decide(run)
    finally:
        run.close()
        run.end()
    return {
        "experiment": run.plan.experiment,
        "blocks": {
            j.name: {"action": chosen[j.name].action, "status": chosen[j.name].status,
                     "reason": chosen[j.name].reason, "key": j.key, "algorithm": j.algorithm,
                     "depends": j.depends}
            for j in run.plan.jobs
        },
    }


class Executor(ABC):
    """Runs the jobs of a prepared run somewhere (this machine, a cluster…).

    The constructor's keyword arguments are the executor's own settings (``--scheduler``…).
    """

    #: its name in :data:`backbeat.execution.executors.EXECUTORS` (``--executor NAME``)
    name: ClassVar[str]
    #: whether blocks run in this run's local process group (start its fork server early)
    local: ClassVar[bool] = False
    #: whether :meth:`execute` indexes the datasets whose view must run (``run.deferred``,
    #: :func:`prepare`), overlapping with the jobs that do not read them
    indexes: ClassVar[bool] = False

    def check(self) -> None:  # noqa: B027 - most executors need no check
        """Fail early (before planning) if the executor cannot work here."""

    @abstractmethod
    def execute(self, run: Run) -> None:
        """Run the ``pending`` jobs of ``run``, recording their outcomes in ``run.state``."""

    def run(self, prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike, name: str,
            options: Options | None = None, progress: Progress | None = None) -> dict:
        """Run an experiment; return the JSON-able report of ``backbeat experiments run --json``.

        Interrupted (a signal, Ctrl-C), the run is reported and recorded, then
        :class:`~backbeat.core.errors.Interrupted` is raised with the report.
        """
        self.check()
        run = prepare(prefix, cache, name, options, progress, warm=self.local, defer=self.indexes)
        try:
            return self._run(run)
        finally:
            run.end()

    def _run(self, run: Run) -> dict:
        stopped: KeyboardInterrupt | None = None
        try:
            run.warn(run.catalog.get("experiment", run.plan.experiment).warnings)  # validated once, by the plan
            decide(run)
            pending = [j for j in run.plan.jobs if run.state.status[j.name] == JobState.PENDING]
            results = [run.store.output_path(j.outputs["result"].key) for j in run.plan.jobs
                       if j.kind == "analyzer" and j.key]
            run.intend(pending, [p.with_name(p.name + ".json") for p in results]
                       + [records.record_path(run.store, run.plan.experiment)])
            if self.local and any(s in STARTABLE for s in run.state.status.values()):
                run.group.warm()
            if not self.local:  # blocks run elsewhere: no local process is kept meanwhile
                run.group.close()
            self.execute(run)
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: stop, then say what was done
            stopped = exc
        finally:
            try:
                run.close()
            finally:  # (whatever escaped: what was committed is made durable, held files included)
                verified_before_trusted(run)
        finish(run)
        rep = report(run)
        if stopped is not None:
            rep["status"] = "interrupted"
        if run.state.warnings:
            rep.setdefault("warnings", []).extend(run.state.warnings)
        rep["provenance"] = record(run, rep)
        if stopped is not None:
            interrupted = stopped if isinstance(stopped, Interrupted) else Interrupted(signal.SIGINT)
            interrupted.report = rep
            if interrupted is stopped:
                raise interrupted
            raise interrupted from None
        return rep
