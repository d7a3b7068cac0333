"""Whether a process is alive, and still the one that left a trace (a pid is reused once freed).

Files named after their writer's pid (a cache writer's temporary ``<entry>.tmp-<pid>-…``, a
run's journal, a control folder ``bb-ctl-<pid>-…``) belong to a dead process when that pid is
gone, is a zombie, or now names a process started *after* the file was made.
"""

from __future__ import annotations

import os


def alive(pid: int, since: float | None = None) -> bool:
    """Whether process ``pid`` exists, is not a zombie and (with ``since``, a time as from
    ``time.time()``) started no later than ``since`` — i.e. is not a newer process reusing the pid."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return False
        if since is None:
            return True
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
        started = btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return started <= since + 2
    except (OSError, IndexError, ValueError, StopIteration):
        return True  # no /proc: trust kill(pid, 0)
