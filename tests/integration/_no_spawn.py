"""The CLI with the spawn of one process failing as with a dead fork server (test_parallel.py,
test_streaming.py).

:func:`run_failing_spawn` runs ``backbeat ARGS…`` (this file as a script) with the spawn of process
``job`` — a block, or a slot of one (``block#k``) — raising what a gone fork server raises.  A run
still going after 30 s (it hung) is interrupted as by Ctrl-C: every process killed, exit 130, rather
than a test waiting for its timeout with the run's processes left behind.
"""

from __future__ import annotations

import os
import subprocess
import sys

GONE = "the fork server is gone: [Errno 32] Broken pipe"
HUNG_S = 30


def run_failing_spawn(job: str, *args: object, timeout: float = 90) -> subprocess.CompletedProcess:
    """``backbeat ARGS…`` in a subprocess, its spawn of ``job`` failing (no warm template: the
    command itself runs, with the failing spawn)."""
    env = dict(os.environ, NO_SPAWN=job, BACKBEAT_TEMPLATE="off")
    return subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def patch():
    """Make ``ProcessGroup.spawn`` of process ``$NO_SPAWN`` raise what a gone fork server raises;
    the patched function is returned (for scripts adding to it: ``_stuck_spawn.py``)."""
    from backbeat.core.errors import ExecutionError
    from backbeat.processes.group import ProcessGroup

    spawn = ProcessGroup.spawn

    def failing(self, job, *args, **kwargs):
        if job == os.environ["NO_SPAWN"]:
            raise ExecutionError(GONE)
        return spawn(self, job, *args, **kwargs)

    ProcessGroup.spawn = failing  # type: ignore[method-assign]
    return failing


def enter() -> None:
    """Run the CLI on this script's arguments, interrupted as by Ctrl-C after ``HUNG_S``."""
    import signal

    from backbeat.cli import entry

    def hung(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, hung)
    signal.alarm(HUNG_S)
    sys.path.pop(0)  # (this folder, as a script's: the command sees the path it would have)
    sys.argv[0] = "backbeat"
    entry()


if __name__ == "__main__":
    patch()
    enter()
