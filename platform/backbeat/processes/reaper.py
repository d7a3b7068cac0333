"""Process trees: every process a block starts dies with the block.

A block may start processes of its own, and one of them may detach (fork, ``setsid``, fork
again): it leaves the block's process group, so killing the group misses it, and once its
parent exits it is re-parented — normally to init, where it would outlive the run, holding
the block's output pipe and cache files open.  Linux's *child subreaper* attribute
(``PR_SET_CHILD_SUBREAPER``) makes a process the new parent of the orphans among its
descendants instead, so:

* each block process is a subreaper: while it runs, its detached descendants stay its children;
* the fork server's zygote is a subreaper: when a block process ends (however it ends) its
  remaining descendants become the zygote's children, and every child of the zygote that is
  not a block process it forked is such a leftover: :func:`kill_strays` kills them (their own
  children come up next, until none is left);
* the command line makes itself a subreaper too (:func:`adopt_orphans`): if the zygote itself
  is killed, the blocks die with it (parent-death signal) and their leftovers come up to the
  command, which kills those outside its own session (:func:`kill_adopted`).

Nothing here is needed for the common case; it is what makes hostile or careless code unable
to outlive a run.  Off Linux these are no-ops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Container
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_LIBC: Any = None
#: whether this process adopts the orphans of its descendants (set by :func:`adopt_orphans`)
_ADOPTING = False
#: children of this process that are not leftovers of blocks (e.g. a template started for later runs)
_SPARED: set[int] = set()


def _prctl(option: int, value: int) -> bool:
    global _LIBC
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _LIBC is None:
            import ctypes

            _LIBC = ctypes.CDLL(None, use_errno=True)
        return _LIBC.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def set_parent_death_signal(sig: int) -> None:
    """Receive ``sig`` when the thread that forked this process ends (Linux)."""
    _prctl(_PR_SET_PDEATHSIG, int(sig))


def become_subreaper() -> bool:
    """Make this process the parent of the orphans among its descendants (not inherited by children)."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def children(pid: int | None = None) -> list[int]:
    """The pids of the children of ``pid`` (default: this process), from ``/proc``."""
    pid = os.getpid() if pid is None else pid
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for tid in tasks:  # (os.open: no file object — the zygote looks at each job's exit, ~0.03 ms less)
            fd = os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)
            try:
                text = b""
                while chunk := os.read(fd, 1 << 16):
                    text += chunk
            finally:
                os.close(fd)
            found.update(int(c) for c in text.split())
        return sorted(found)
    except FileNotFoundError:
        pass  # no CONFIG_PROC_CHILDREN: scan every process's parent
    except OSError:
        return []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
    return sorted(found)


def kill_strays(keep: Container[int]) -> list[int]:
    """SIGKILL every child of this process not in ``keep``; their pids (the caller reaps them)."""
    killed = []
    for pid in children():
        if pid not in keep:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def kill_descendants(timeout: float = 1.0) -> int:
    """Kill every descendant of this (subreaper) process and reap them; how many were killed.

    A block process calls it as it ends: its children die, their orphans come up to it and die
    in turn, until none is left (or ``timeout``).  A process with no child at all — no
    descendant either: an orphan only ever comes up to a subreaper as its child — learns it with
    one ``waitpid`` (what nearly every block process has when it ends), without reading
    ``/proc``."""
    try:
        os.waitpid(-1, os.WNOHANG)  # (a child that ended by itself is reaped here: looked for below)
    except ChildProcessError:
        return 0
    import time

    deadline = time.monotonic() + timeout
    killed = 0
    while True:
        strays = kill_strays(())
        killed += len(strays)
        for pid in strays:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        with contextlib.suppress(ChildProcessError):  # zombies of children that ended by themselves
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        if not strays or time.monotonic() > deadline:
            return killed


def spare(pid: int) -> None:
    """Never take child ``pid`` for a leftover (:func:`kill_adopted`)."""
    _SPARED.add(pid)


def adopt_orphans() -> bool:
    """Make this process (the command line) adopt the orphans of its descendants, so that the
    leftovers of blocks whose fork server was killed can still be killed (:func:`kill_adopted`)."""
    global _ADOPTING
    _ADOPTING = become_subreaper()
    return _ADOPTING


def kill_adopted(timeout: float = 2.0) -> list[int]:
    """Kill and reap the adopted leftovers of block processes: children of this process in
    another session than ours (blocks start their own sessions; this process's own children —
    e.g. a Dask cluster's — stay in its session).  Does nothing unless :func:`adopt_orphans` was called."""
    if not _ADOPTING:
        return []
    import time

    ours = os.getsid(0)
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        strays = []
        for pid in children():
            with contextlib.suppress(OSError):
                if pid not in _SPARED and os.getsid(pid) != ours:
                    strays.append(pid)
        if not strays:
            break
        for pid in strays:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            killed.append(pid)
    return killed


def namespace_pids(pid: int) -> list[int]:
    """``pid``'s pids in each nested PID namespace, from this process's down to its own
    (``NSpid`` of ``/proc/PID/status``; ``[pid]`` without namespaces, ``[]`` if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(p) for p in line.split()[1:]]
    except (OSError, ValueError):
        return []
    return [pid]


def host_pid(inner: object, parent: int, depth: int = 1) -> int | None:
    """The pid, as this process sees it, of the descendant of ``parent`` (at most ``depth``
    levels down) whose pid in its own PID namespace is ``inner`` (a sandboxed zygote reports the
    pids of its namespace); None if there is none."""
    if not isinstance(inner, int):
        return None
    level = [parent]
    for _ in range(depth):
        level = [c for p in level for c in children(p)]
        for c in level:
            ns = namespace_pids(c)
            if ns and ns[-1] == inner:
                return c
    return None
