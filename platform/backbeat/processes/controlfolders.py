"""Where control channels' private folders are made, and removing those of dead processes.

A run's control channel (:mod:`backbeat.processes.control`) and its stream sockets live in a
private folder ``bb-ctl-<pid of the owner>-<random>`` (0700), made in :func:`socket_parent`.  A
process killed with ``kill -9`` cannot remove its folder: :func:`sweep_folders` removes those whose
owner is dead.  Every :class:`~backbeat.processes.group.ProcessGroup` calls it as it is made (every
run makes one as it starts, :mod:`backbeat.execution.base` — also a run that starts no process,
everything cached), which is why this lives apart from the channel itself (no ZeroMQ to import).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile

from backbeat.core import pids

#: the private folders of control channels: ``bb-ctl-<pid of the owner>-<random>``
FOLDER = re.compile(r"^bb-ctl-(\d+)-")


def memory_folder() -> str | None:
    """``/dev/shm`` (a memory file system) when this process may make files there, else None."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def socket_parent() -> str:
    """Where the private folders of control channels (and the run's stream sockets) are made:
    in ``TMPDIR`` when it is set (the user's choice), else in ``/dev/shm`` (a memory file system:
    each ``ipc://`` socket bound is a new inode, and on a disk file system busy making and deleting
    files, ext4's search for a free inode cost ~5 % of a block process), else in the system's
    temporary folder."""
    return (None if os.environ.get("TMPDIR") else memory_folder()) or tempfile.gettempdir()


def sweep_folders() -> list[str]:
    """Remove the control folders (``bb-ctl-<pid>-…``) left by dead processes (killed with
    ``kill -9``: nothing of theirs ran to remove them) where they are made (:func:`socket_parent`)
    and in the temporary folder; those removed."""
    removed: list[str] = []
    for folder in dict.fromkeys((socket_parent(), tempfile.gettempdir())):
        removed += sweep_dead(folder, FOLDER)
    return removed


def sweep_dead(parent: str, pattern: re.Pattern[str]) -> list[str]:
    """Remove the folders in ``parent`` whose name ``pattern`` matches with the pid of their owner
    (its first group), ours, when that process is dead (:func:`backbeat.core.pids.alive`, pid reuse
    judged by the folder's time); those removed."""
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if m is None:
            continue
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode):  # (lstat: a link is no folder)
            continue
        if not pids.alive(int(m.group(1)), st.st_mtime):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
