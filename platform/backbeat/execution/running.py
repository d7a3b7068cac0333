"""The running jobs of a run on this machine (kept by :class:`~backbeat.execution.scheduler.Scheduler`).

A job is *running* from when its process(es) are spawned until the scheduler settles it: one
process, one per slot of a split block (``name#k``), or a loop's two sides (``name#0``,
``name#1``).  :class:`RunningJobs` keeps their process ids, how many processes are alive (the
window of :func:`~backbeat.execution.scheduler.alive_limit`) and how many count against ``-j``
(a streamed job's do not: it keeps pace with its producer), and says which jobs have ended —
every process reaped, as the process group last saw (:meth:`ProcessGroup.ended
<backbeat.processes.group.ProcessGroup.ended>`, no system call).  Only the jobs a process of which
the group saw end since (:meth:`ProcessGroup.take_ended
<backbeat.processes.group.ProcessGroup.take_ended>`) are looked at after a poll, not the whole
window.  When one side of a loop has failed, the other is killed (:attr:`RunningJobs.killed`): a
loop is all or nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from backbeat.planning.model import Job

if TYPE_CHECKING:
    from backbeat.processes.group import ProcessGroup


class RunningJobs:
    """The running jobs of one run and their processes (see the module docstring)."""

    def __init__(self, group: ProcessGroup, jobs: dict[str, Job]) -> None:
        self.group = group
        self.jobs = jobs
        self.procs: dict[str, list[str]] = {}  # running job -> its process ids (one per slot or loop side)
        self.uncounted: set[str] = set()  # running jobs whose processes do not count against -j
        self.counted = 0  # processes counted against -j (streamed ones are not)
        self.alive = 0  # block processes started and not yet seen ended
        self.killed: set[str] = set()  # processes killed because their loop partner failed
        self.owner: dict[str, str] = {}  # process id -> its running job
        self.seq: dict[str, int] = {}  # running job -> when it was added (jobs are settled in that order)
        self.due: set[str] = set()  # running jobs a process of which has ended (seen, not yet removed)
        self._added = 0

    def add(self, name: str, ids: list[str], counted: bool = True) -> None:
        """``name``'s processes ``ids`` were spawned; ``counted``: they count against ``-j``."""
        self.procs[name] = ids
        self.seq[name] = self._added = self._added + 1
        for pid in ids:
            self.owner[pid] = name
            if self.group.ended(pid) is not None:  # (seen before it was added)
                self.due.add(name)
        self.alive += len(ids)
        if counted:
            self.counted += len(ids)
        else:
            self.uncounted.add(name)

    def remove(self, name: str) -> list[str]:
        """``name`` has ended and is being settled: its process ids."""
        ids = self.procs.pop(name)
        self.due.discard(name)
        self.seq.pop(name, None)
        for pid in ids:
            self.owner.pop(pid, None)
        self.alive -= len(ids)
        if name in self.uncounted:
            self.uncounted.discard(name)
        else:
            self.counted -= len(ids)
        return ids

    def ended(self, name: str) -> bool:
        """Whether every process of a job has ended (a loop's other side is killed if one failed)."""
        procs = self.procs[name]
        if len(procs) == 1:  # (checked after every poll for every running job: no partner to stop)
            return self.group.ended(procs[0]) is not None
        exits = [self.group.ended(p) for p in procs]
        if self.jobs[name].kind == "loop" and any(e is not None and not e.ok for e in exits):
            for p, e in zip(procs, exits, strict=True):  # one side failed: stop the other
                if e is None:
                    self.killed.add(p)
                    self.group.kill(p)
        return all(e is not None for e in exits)

    def ended_jobs(self) -> list[str]:
        """The running jobs whose processes have all ended, in the order they were added (checked
        after every poll: only those a process of which the group saw end)."""
        for pid in self.group.take_ended():
            name = self.owner.get(pid)
            if name is not None:
                self.due.add(name)
        if not self.due:
            return []
        return sorted((n for n in self.due if self.ended(n)), key=self.seq.__getitem__)

    def __contains__(self, name: object) -> bool:
        return name in self.procs

    def __getitem__(self, name: str) -> list[str]:
        return self.procs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.procs)

    def __len__(self) -> int:
        return len(self.procs)

    def items(self) -> Iterator[tuple[str, list[str]]]:
        return iter(self.procs.items())
