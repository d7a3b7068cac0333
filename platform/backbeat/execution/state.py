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

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backbeat.cache.journal import Journal
from backbeat.cache.store import CacheStore
from backbeat.declarations.catalog import Catalog
from backbeat.execution.workspace import Workspace
from backbeat.planning.model import Job, Plan
from backbeat.planning.selection import Decision, Options
from backbeat.processes.group import ProcessGroup

if TYPE_CHECKING:
    from backbeat.execution.sandboxing import Staging
    from backbeat.processes.control import Message
    from backbeat.processes.environments import Interpreter

#: a progress display: called with ``{"block", "state", ...}`` events
Progress = Callable[[dict], None]


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
    incidents: list[dict] = field(default_factory=list)  # cache entries found wrong: {"block", "message"}
    warnings: list[str] = field(default_factory=list)  # what went wrong besides the jobs (the report says it)
    runtime: dict[str, dict] = field(default_factory=dict)  # job -> where it ran (execution.environments.runtime)

    def fail(self, job: str, error: dict) -> None:
        self.status[job] = JobState.FAILED
        self.errors[job] = error


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
    journal: Journal | None = None  # what a kill -9 of this run would leave (cache/journal.py)
    interpreters: dict[str, Interpreter] = field(default_factory=dict)  # process -> its environment's interpreter
    staging: Staging | None = None  # a sandboxed run's staging folder (execution.sandboxing)

    @property
    def store(self) -> CacheStore:
        return self.workspace.store

    @property
    def catalog(self) -> Catalog:
        return self.workspace.catalog

    @property
    def jobs(self) -> dict[str, Job]:
        return {j.name: j for j in self.plan.jobs}

    def emit(self, job: str, state: str, **extra: Any) -> None:
        """Tell the progress display (if any) about a job."""
        if self.progress is not None:
            self.progress({"block": job, "state": state, **extra})

    def set(self, job: str, state: JobState, **extra: Any) -> None:
        """Move a job to ``state`` and say so."""
        self.state.status[job] = state
        self.emit(job, state.value, **extra)

    def incident(self, job: str, message: str) -> None:
        """A cache entry (or summary) of ``job`` was found not to be what its name says."""
        self.state.incidents.append({"block": job, "message": message})
        self.emit(job, "corrupt", message=message)

    def on_message(self, msg: Message) -> None:
        """Progress messages of block processes (``job`` or ``job#slot``) to the display."""
        block, _, slot = msg.job.partition("#")
        if msg.type == "progress" and block in self.state.status:
            extra = {"slot": int(slot)} if slot else {}
            self.emit(block, "running", done=msg.data.get("done"), total=msg.data.get("total"), **extra)

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
        """Stop every local process; drop what an interrupted indexing job left."""
        started = self.group.started
        self.group.close()
        if self.staging is not None:
            self.staging.close()
        if started:
            for ds in self.plan.datasets.values():
                if ds.index_digest is None:
                    self.store.drop_temporaries(self.store.index_path(ds.index_key))
