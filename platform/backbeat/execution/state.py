"""The state of one run: each job's :class:`JobState`, errors and statistics, and the :class:`Run`.

A job goes ``pending`` → (``waiting`` for another run's lock) → ``running`` → ``ran`` |
``failed``; or is ``cached`` (outputs already committed), ``excluded`` (not selected by
``--only``/``--until``, reported ``skipped``) or ``skipped`` (an upstream job failed, or it
never started).  These strings are the statuses of run reports and provenance records.

:class:`RunState` is plain data, kept apart from whoever schedules the jobs; :class:`Run`
ties it to the plan, the workspace, the options and the local process group (which the
datasets are indexed with, and the local executor runs its blocks in).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backbeat.cache.journal import Journal
from backbeat.cache.store import CacheStore
from backbeat.declarations.catalog import Catalog
from backbeat.execution.progress import Meter
from backbeat.execution.workspace import Workspace
from backbeat.planning.model import Job, Plan
from backbeat.planning.selection import Decision, Options

if TYPE_CHECKING:  # (processes are imported when a run starts one: a cached run does not)
    from backbeat.execution.sandboxing import Staging
    from backbeat.processes.control import Message
    from backbeat.processes.environments import Interpreter
    from backbeat.processes.group import ProcessGroup

#: a progress display: called with ``{"block", "state", ...}`` events
Progress = Callable[[dict], None]

#: what the zygote of a run's fork server imports before forking: the block runtime too, so
#: that no block process imports it again (:mod:`backbeat.runtime.preload`).  In this order: a
#: job asked for meanwhile is forked as soon as the modules it runs are loaded, so the first one
#: (indexing a view: :mod:`~backbeat.runtime.dbprovider`, without h5py) waits for numpy, zmq and
#: the provider only
PRELOAD = ("numpy", "zmq", "backbeat.processes.control", "backbeat.runtime.dbprovider", "h5py",
           "backbeat.runtime.preload")


def local_group(root: str | None) -> ProcessGroup:
    """The process group of a run on this machine (its fork server preloads :data:`PRELOAD`)."""
    from backbeat.processes.group import ProcessGroup

    return ProcessGroup(root=root, preload=PRELOAD)


class JobState(str, Enum):
    PENDING = "pending"
    WAITING = "waiting"
    RUNNING = "running"
    RAN = "ran"
    FAILED = "failed"
    CACHED = "cached"
    EXCLUDED = "excluded"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


#: a decision's action (:class:`backbeat.planning.selection.Decision`) -> the job's first state
INITIAL = {"run": JobState.PENDING, "cached": JobState.CACHED, "excluded": JobState.EXCLUDED,
           "blocked": JobState.SKIPPED, "failed": JobState.FAILED}
#: states a job may still start from
STARTABLE = (JobState.PENDING, JobState.WAITING)
#: states of a job whose outputs are available to downstream jobs
AVAILABLE = (JobState.RAN, JobState.CACHED)
#: states of a job that makes its downstream jobs skipped
BROKEN = (JobState.FAILED, JobState.SKIPPED)


@dataclass
class RunState:
    status: dict[str, JobState] = field(default_factory=dict)
    errors: dict[str, dict] = field(default_factory=dict)  # job -> {"kind", "message", "traceback"}
    stats: dict[str, dict] = field(default_factory=dict)  # job -> statistics of its process(es)
    dataset_errors: dict[str, dict] = field(default_factory=dict)  # datasets whose view index failed
    digests: dict[str, str] = field(default_factory=dict)  # output key -> digest its writer computed
    records: dict[str, list] = field(default_factory=dict)  # result key -> records its analyzer read back
    incidents: list[dict] = field(default_factory=list)  # cache entries found wrong: {"block", "message"}
    warnings: list[str] = field(default_factory=list)  # what went wrong besides the jobs (the report says it)
    runtime: dict[str, dict] = field(default_factory=dict)  # job -> where it ran (execution.environments.runtime)

    def fail(self, job: str, error: dict) -> None:
        self.status[job] = JobState.FAILED
        self.errors[job] = error

    def learn(self, statistics: dict, own: Collection[str] = ()) -> dict:
        """``statistics`` of a block process without what it says of the files it committed:
        ``committed`` (key → the content digest its writer computed) and ``records`` (an
        analyzer's result read back), kept here for the job's ``own`` output keys only (none
        for the slots of a split block: their files are not the cache entries)."""
        digests, records = statistics.pop("committed", None), statistics.pop("records", None)
        if isinstance(digests, dict):
            self.digests.update((k, v) for k, v in digests.items() if k in own and isinstance(v, str))
        if isinstance(records, dict):
            self.records.update((k, v) for k, v in records.items() if k in own and isinstance(v, list))
        return statistics


@dataclass
class Run:
    """One run of an experiment (or of dataset jobs): what is run, where, how, and how it goes."""

    plan: Plan
    workspace: Workspace
    options: Options
    group: ProcessGroup
    progress: Progress | None = None
    state: RunState = field(default_factory=RunState)
    decisions: dict[str, Decision] = field(default_factory=dict)  # job -> what the run does with it
    deferred: list[str] = field(default_factory=list)  # datasets the executor indexes (execution/base.py)
    meter: Meter = field(default_factory=Meter)  # rates of the running blocks
    journal: Journal | None = None  # what a kill -9 of this run would leave (cache/journal.py)
    interpreters: dict[str, Interpreter] = field(default_factory=dict)  # process -> its environment's interpreter
    staging: Staging | None = None  # a sandboxed run's staging folder (execution.sandboxing)
    indexing: dict[str, Path] = field(default_factory=dict)  # dataset -> its indexing job's deps file (views)

    @property
    def store(self) -> CacheStore:
        return self.workspace.store

    @property
    def catalog(self) -> Catalog:
        return self.workspace.catalog

    @cached_property
    def jobs(self) -> dict[str, Job]:
        """``{name: job}`` of the plan (built once)."""
        return {j.name: j for j in self.plan.jobs}

    def settle(self, job: Job) -> None:
        """``job`` has committed its outputs: they are made durable in the background, then the
        stat memo remembers the identity (key, content digest) of those whose writer reported
        its digest, as reading the entry would have found it, so that no later run opens them
        to identify them (after the memo's racy window: :mod:`backbeat.core.statmemo`)."""
        for key in job.output_keys:
            if key:
                self.store.entrust(key, self.state.digests.get(key))

    def emit(self, job: str, state: str, **extra: Any) -> None:
        """Tell the progress display (if any) about a job."""
        if self.progress is not None:
            self.progress({"block": job, "state": state, **extra})

    def warn(self, problems: list) -> None:
        """Tell the progress display about the experiment's warnings (:class:`~backbeat.core.errors.Problem`),
        found by the validation that planned the run: ``{"state": "warning", "file", "pointer",
        "message"}`` events, no ``block``."""
        if self.progress is not None:
            for p in problems:
                self.progress({"state": "warning", **p.to_json()})

    def set(self, job: str, state: JobState, **extra: Any) -> None:
        """Move a job to ``state`` and say so."""
        self.state.status[job] = state
        if state != JobState.RUNNING:
            self.meter.forget(job)
        elif extra.get("done") == 0:  # started: the rate counts from now
            self.meter.update(job, None, 0, None)
        self.emit(job, state.value, **extra)

    def incident(self, job: str, message: str) -> None:
        """A cache entry (or summary) of ``job`` was found not to be what its name says."""
        self.state.incidents.append({"block": job, "message": message})
        self.emit(job, "corrupt", message=message)

    def on_message(self, msg: Message) -> None:
        """Progress messages of block processes (``job`` or ``job#slot``) to the display, with the
        rate and the time left (:class:`~backbeat.execution.progress.Meter`)."""
        block, _, slot = msg.job.partition("#")
        if msg.type == "progress" and block in self.state.status and self.progress is not None:
            done, total = msg.data.get("done"), msg.data.get("total")
            extra: dict[str, Any] = {"slot": int(slot)} if slot else {}
            if isinstance(done, int) and (total is None or isinstance(total, int)):
                extra.update(self.meter.update(block, extra.get("slot"), done, total, msg.received or None))
            self.emit(block, "running", done=done, total=total, **extra)

    def intend(self, jobs: list[Job] = (), paths: list[Path] = (),  # type: ignore[assignment]
               folders: list[Path] = ()) -> None:  # type: ignore[assignment]
        """Note in the run's journal the jobs it may run, the entries it may write and the
        folders it may leave (if this process is killed, the next run removes what they left)."""
        if self.journal is None:
            self.journal = Journal(self.store)
        self.journal.add([(j.key, j.output_keys, j.nb_slots) for j in jobs], paths, folders)

    def end(self) -> None:
        """The run is over (cleaned up, recorded): its journal goes."""
        if self.journal is not None:
            self.journal.close()

    def close(self) -> None:
        """Stop every local process; drop what the indexing jobs this run began (locally or as
        tasks) left of the indexes they did not give: their temporaries, the file naming what
        their view read (named after this process, so never taken for a dead writer's)."""
        self.group.close()
        if self.staging is not None:
            self.staging.close()
        for name, deps in self.indexing.items():
            ds = self.plan.datasets[name]
            with contextlib.suppress(OSError):  # (a read-only cache: nothing was left there)
                deps.unlink(missing_ok=True)
                if ds.index_digest is None:
                    self.store.drop_temporaries(self.store.index_path(ds.index_key))
