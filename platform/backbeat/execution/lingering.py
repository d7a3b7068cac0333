"""What a job that could not start leaves behind (kept by :class:`~backbeat.execution.scheduler.Scheduler`).

When a later process of a split block or a loop cannot be spawned, those already spawned are
killed, waited for a bounded time, and what they wrote is removed (:meth:`Lingering.drop`: their
staging folders, the job's temporaries and slot files).  A process that was killed but not
reported ended within that time (its fork server stopped or stuck) may go on writing into the
cache after that: :class:`Lingering` keeps such jobs — and their cache locks, so that no other
run starts writing the same entries meanwhile — and removes what they wrote again once all
their processes are reported ended (:meth:`Lingering.settle`, after each poll), or at the run's
end, after its process group closed (:meth:`Lingering.close`); the locks are then released.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backbeat.cache.store import CacheStore, EntryLock
    from backbeat.execution.sandboxing import Staging
    from backbeat.planning.model import Job
    from backbeat.processes.group import ProcessGroup


@dataclasses.dataclass
class _Left:
    job: Job
    ids: list[str]
    lock: EntryLock | None


class Lingering:
    """The jobs that could not start a process of which has not been reported ended."""

    def __init__(self, store: CacheStore, staging: Staging | None) -> None:
        self.store, self.staging = store, staging
        self.left: list[_Left] = []

    def drop(self, job: Job, ids: list[str]) -> None:
        """Remove what ``job``'s processes ``ids`` (``job#0``…: its first slots, or a loop's
        sides, whose committed entries it wrote go too) wrote: staging folders, temporaries,
        slot files."""
        if self.staging is not None:
            for pid in ids:
                self.staging.discard(pid)
        loop = job.kind == "loop"
        self.store.drop_partial(job.output_keys, 0 if loop else len(ids), committed=loop)

    def add(self, job: Job, ids: list[str], lock: EntryLock | None) -> None:
        """``job``'s processes ``ids`` were killed and some were not reported ended: what they
        write is removed again once they are; ``lock``: the job's cache lock, held until then."""
        self.left.append(_Left(job, ids, lock))

    def settle(self, group: ProcessGroup) -> None:
        """Clean up after (and unlock) the jobs whose processes have all been reported ended."""
        if self.left:
            done = [left for left in self.left if all(group.ended(pid) is not None for pid in left.ids)]
            for left in done:
                self.left.remove(left)
                self._release(left)

    def close(self) -> None:
        """At the run's end, once its process group closed (every process killed): clean up
        after (and unlock) every job still kept."""
        while self.left:
            self._release(self.left.pop())

    def _release(self, left: _Left) -> None:
        try:
            with contextlib.suppress(OSError):  # (a cache that cannot be written: its next run removes them)
                self.drop(left.job, left.ids)
        finally:
            if left.lock is not None:
                left.lock.release()

    def __bool__(self) -> bool:
        return bool(self.left)
