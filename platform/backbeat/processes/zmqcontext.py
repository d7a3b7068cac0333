"""The one ZeroMQ context of this process, shared by its sockets and ended with the last of them.

Every ZeroMQ socket backbeat opens (database provider and its clients, loop channels; the
control channel is a plain Unix socket since wave 12, the streams since wave 14) takes the process's context with :func:`acquire` and gives it back with
:func:`release` once its socket is closed.  The context is created on first use and
terminated when the last user releases it, so:

* a process has at most one context (and one set of ZeroMQ I/O threads) at a time;
* a forked child never uses its parent's context: the context belongs to the pid that
  created it, and a child asking for one gets its own (ZeroMQ contexts do not survive
  ``fork``);
* a parent with no socket left has no ZeroMQ thread either, so it can start a fork server
  again (:meth:`backbeat.processes.workerpool.ForkServer.start` refuses to fork a process
  with threads).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import zmq

_lock = threading.Lock()
_context: zmq.Context | None = None
_owner = 0  # pid that created _context
_users = 0
_substitute = False  # _context is substitute()'s stand-in
_inherited: list[zmq.Context] = []  # contexts of a parent, kept referenced: destroying one after fork may hang


def acquire() -> zmq.Context:
    """The process's context (created if needed); pair every call with :func:`release`."""
    global _context, _owner, _users
    with _lock:
        if _context is not None and _owner != os.getpid():  # inherited across fork: never used, never freed
            _inherited.append(_context)
            _context = None
        if _context is None:
            _context, _owner, _users = zmq.Context(), os.getpid(), 0
        _users += 1
        return _context


def release() -> None:
    """Give the context back; the last user terminates it (its sockets must be closed)."""
    global _context, _users
    with _lock:
        if _context is None or _owner != os.getpid():
            return
        _users -= 1
        if _users <= 0:
            ctx, _context, _users = _context, None, 0
            ctx.term()


def substituted() -> Any | None:
    """The stand-in given to :func:`substitute`, while it is in use in this process; else None (the
    streams' sockets, which are no ZeroMQ sockets, take it in the zygote's rehearsal)."""
    with _lock:
        return _context if _substitute and _context is not None and _owner == os.getpid() else None


def users() -> int:
    """How many sockets of this process hold the context (for tests)."""
    return _users if _context is not None and _owner == os.getpid() else 0


@contextlib.contextmanager
def substitute(context: Any) -> Iterator[None]:
    """Within the block, this process's sockets come from ``context`` (the zygote's rehearsal: an
    in-process stand-in, :mod:`backbeat.runtime.loopback`, since a zygote holds no ZeroMQ context);
    there must be no context before, and none is left after."""
    global _context, _owner, _users, _substitute
    with _lock:
        if _context is not None and _owner == os.getpid():
            raise RuntimeError("a ZeroMQ context is in use: it cannot be substituted")
        _context, _owner, _users = context, os.getpid(), 1  # (held: not ended by its last socket)
        _substitute = True
    try:
        yield
    finally:
        with _lock:
            _context, _users, _substitute = None, 0, False
