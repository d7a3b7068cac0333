"""The multiprocessing fallback's fork server as a reaper, like the zygote.

When a :class:`~backbeat.processes.workerpool.ForkServer` falls back to multiprocessing (threads
were alive as it started), its block processes are children of multiprocessing's own fork server
process, not of a zygote.  A block is a child subreaper (its detached descendants stay its
children), but when the command dies the block dies by its parent-death signal (SIGKILL, no
clean-up), and its leftovers would come up to init and outlive the run.  The fallback therefore
names this module in the fork server's preload list: imported there, it makes that process a child
subreaper that kills every descendant still alive as it exits — multiprocessing's fork server
exits as soon as the command that started it has ended, however it ended — as the zygote does
when its parent dies (:mod:`~backbeat.processes.reaper`); it also removes the command's ``pymp-*``
folder holding its socket (a killed command cannot).  Imported anywhere else it does nothing.

multiprocessing's fork server learns that the command has ended when the last copy of the write end
of its "alive" pipe is closed — and it hands a copy to every process it forks, which keep it open
(the fallback cannot close a block's inherited fds).  A block (and what it detaches) would then keep
the fork server, and itself, alive after the command died: :func:`release` closes the block's copy.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
from types import FrameType
from typing import Any

from backbeat.processes import reaper


def _in_fork_server() -> bool:
    """Whether this import runs in multiprocessing's fork server (its ``main`` is importing us)."""
    forkserver = sys.modules.get("multiprocessing.forkserver")  # (loaded there: not imported elsewhere)
    if forkserver is None:
        return False

    code = forkserver.main.__code__
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def release() -> None:
    """In a process forked by multiprocessing's fork server (a block of the fallback): close its copy
    of the fork server's "alive" pipe, so the fork server sees the command end (a process it forks
    later from here starts a fork server of its own)."""
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver  # (its private state: no public way to close the copy)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None and getattr(server, "_forkserver_pid", None) is None:  # (not the command's own)
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None


def _at_exit() -> None:
    """The fork server ends (the command has ended): kill what its blocks left, and remove the
    command's multiprocessing folder holding its socket if the command could not (killed)."""
    reaper.kill_descendants(5.0)
    from multiprocessing import forkserver

    address = getattr(forkserver._forkserver, "_forkserver_address", None)
    if isinstance(address, str) and os.path.basename(os.path.dirname(address)).startswith("pymp-"):
        shutil.rmtree(os.path.dirname(address), ignore_errors=True)


if _in_fork_server() and reaper.become_subreaper():
    atexit.register(_at_exit)
