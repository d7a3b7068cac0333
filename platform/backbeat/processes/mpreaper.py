"""The multiprocessing fallback's reaper: a guard process per block, like the zygote for its blocks.

When a :class:`~backbeat.processes.workerpool.ForkServer` falls back to multiprocessing (threads
were alive as it started), its jobs are forked by multiprocessing's own fork server — the one the
embedding program shares, if it uses that start method itself.  A block is a child subreaper (its
detached descendants stay its children) and kills them as it ends; but a block that is killed
(timeout, ``kill``, parent-death signal) or crashes cannot, and its leftovers would come up to the
next subreaper or to init and outlive the run.  So the process multiprocessing forks for a job is
a *guard* (:func:`guard`): a subreaper in a session of its own that forks the block, waits for it,
kills whatever the block left the moment it ends, and exits with the block's status (its exit code,
or the same signal) — the leftovers of a block die when its job ends, as a zygote's do.  The
parent signals the block itself, never the guard: the guard tells it the block's pid on a pipe
(:func:`block_of`; looked for among the guard's children, a block that ended before the parent
looked was taken for one of its leftovers, adopted by the guard).  The guard dies with the fork
server (which exits as soon as the command that started it has ended), first killing its block.
Nothing else multiprocessing's fork server forks is touched: it is no subreaper itself.

multiprocessing's fork server learns that the command has ended when the last copy of the write end
of its "alive" pipe is closed — and it hands a copy to every process it forks, which keep it open
(the fallback cannot close a block's inherited fds).  A block (and what it detaches) would then keep
the fork server, and itself, alive after the command died: :func:`release` closes the guard's copy
before it forks the block.  Imported in multiprocessing's fork server (its preload), this module also
removes, as that process exits, the command's ``pymp-*`` folder holding its socket (a killed command
cannot).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import sys
import time
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


def guard(said: Any) -> int:
    """In the process multiprocessing forked for a job: fork the block process and return the
    guard's pid in it; in the guard, tell the block's pid on ``said`` (the write end of a
    multiprocessing pipe, :func:`block_of` reads it), wait for the block, kill what it left,
    exit as it did."""
    server = os.getppid()  # (the fork server: its end is seen as this process's parent changing)
    os.setsid()  # (out of reach of signals to the command's group: the parent signals the block)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # (an inherited SIG_IGN would reap the block unseen)
    reaper.become_subreaper()  # the block's orphans come up here when it ends, however it ends
    pid = os.getpid()
    block = os.fork()
    if block == 0:
        said.close()
        return pid
    with contextlib.suppress(OSError, ValueError):  # (the parent gone: nobody asks)
        said.send_bytes(str(block).encode())
    said.close()

    def end_block(*_: object) -> None:  # the fork server has ended (parent-death signal): the command has
        for target in (-block, block):
            with contextlib.suppress(OSError):
                os.kill(target, signal.SIGKILL)

    signal.signal(signal.SIGTERM, end_block)
    reaper.set_parent_death_signal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (the guard ends only with its block)
    if os.getppid() != server:  # (the fork server ended before the signal was armed: re-parented)
        end_block()
    status: int | None = None
    while status is None:
        try:
            done, got = os.waitpid(block, 0)
        except ChildProcessError:  # (cannot happen with SIGCHLD at its default: never spin on it)
            break
        if done == block:
            status = got
    reaper.kill_descendants(5.0)  # what the block left: only its descendants come up to the guard
    if status is None:
        os._exit(1)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        import resource

        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # (the block dumped its core, if any)
        with contextlib.suppress(OSError, ValueError):  # (SIGKILL, SIGSTOP: always the default)
            signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
            os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def block_of(said: Any, alive: Any, timeout: float = 5.0) -> int | None:
    """The pid of the block process a guard forked, as it told it on ``said`` (the read end of its
    pipe: told even if the block has ended since, when the guard's children are only what the
    block left); None if the guard ended without telling it (``alive()`` false), or after
    ``timeout`` (then signal the guard)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if said.poll(0.005):
                return int(said.recv_bytes())
        except (EOFError, OSError, ValueError):  # (the guard ended before it forked the block)
            return None
        if not alive() or time.monotonic() >= deadline:
            return None


def _at_exit() -> None:
    """The fork server ends (the command has ended): remove the command's multiprocessing folder
    holding its socket if the command could not (killed)."""
    from multiprocessing import forkserver

    address = getattr(forkserver._forkserver, "_forkserver_address", None)
    if isinstance(address, str) and os.path.basename(os.path.dirname(address)).startswith("pymp-"):
        shutil.rmtree(os.path.dirname(address), ignore_errors=True)


if _in_fork_server():
    atexit.register(_at_exit)
