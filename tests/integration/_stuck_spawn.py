"""``_no_spawn.py``'s failing spawn, and: the fork server is stopped (SIGSTOP) as the spawn fails, so
that a process of the job already started is killed but never reported ended; it goes on (SIGCONT)
once the scheduler has given up on the job (or, as a last resort, after 60 s: ``$RECORD.FALLBACK`` is
then written) — with ``$LINGER`` set, only once that process has written its slot file into the
cache after all (or 60 s later: ``$RECORD.NOSLOT``); ``$RECORD`` is then told which staging folders
of the job's processes are left (a sandboxed run).  test_parallel.py runs it as a script: ``python _stuck_spawn.py ARGS…``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import _no_spawn

from backbeat.execution import scheduler
from backbeat.processes.group import ProcessGroup

scheduler.KILLED_WAIT_S = 1.0
moved_on = threading.Event()


def resume(pids: list[int]) -> None:
    if not moved_on.wait(60):
        open(os.environ["RECORD"] + ".FALLBACK", "w").close()
    if os.environ.get("LINGER"):  # the killed slot goes on to the end: it writes after the clean-up
        cache = Path(sys.argv[sys.argv.index("-c") + 1])
        deadline = time.monotonic() + 60
        while not any(".tmp-" not in p.name for p in cache.rglob("*.slot*")):
            if time.monotonic() > deadline:
                open(os.environ["RECORD"] + ".NOSLOT", "w").close()
                break
            time.sleep(0.05)
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def main() -> None:
    failing = _no_spawn.patch()
    cannot_start = scheduler.Scheduler._cannot_start

    def stopping(self, job, *args, **kwargs):
        if job == os.environ["NO_SPAWN"] and os.environ.get("STOP"):
            for other, handle in self._handles.items():  # (the job's earlier processes are forked: they run)
                if other.partition("#")[0] == job.partition("#")[0]:
                    handle.pid  # noqa: B018 - waits for the fork server to report it
            pids = [s.zygote_pid for s in self._servers.values()]
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            threading.Thread(target=resume, args=(pids,), daemon=True).start()
        return failing(self, job, *args, **kwargs)

    def gave_up(self, job, exc):
        if exc is not None:
            staging = self.run.staging
            folders = staging._folders.items() if staging else ()
            left = sorted(p for p, f in folders if f.exists() and p.startswith(job.name))
            with open(os.environ["RECORD"], "w") as f:
                json.dump({"job": job.name, "staged": left}, f)
            moved_on.set()
        return cannot_start(self, job, exc)

    scheduler.Scheduler._cannot_start = gave_up  # type: ignore[method-assign]
    ProcessGroup.spawn = stopping  # type: ignore[method-assign]
    _no_spawn.enter()


if __name__ == "__main__":
    main()
