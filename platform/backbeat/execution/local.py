"""The local executor: every job in a block process of this machine, as many at once as allowed.

The jobs are scheduled by :class:`backbeat.execution.scheduler.Scheduler` in the run's process
group; a run with nothing to execute (fully cached) starts no process and does not even load
the scheduler.
"""

from __future__ import annotations

from backbeat.execution.base import Executor
from backbeat.execution.state import STARTABLE, Run


class LocalExecutor(Executor):
    name = "local"
    local = True

    def execute(self, run: Run) -> None:
        if not any(s in STARTABLE for s in run.state.status.values()):
            return
        from backbeat.execution.scheduler import Scheduler

        Scheduler(run).execute()
