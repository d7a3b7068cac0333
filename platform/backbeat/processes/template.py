"""A warm template shared by one user's commands: it serves the ``backbeat`` command itself and
the zygotes of runs, with everything already imported.

The ``backbeat`` command must import its command line, the run machinery, numpy, zmq, h5py
and the block runtime before its first block can fork (~0.25 s of CPU, most of a trivial run).
A *template* is a process that has done that once and stays, like a build daemon.  It serves:

* **commands** (``op: command``): the thin client (:mod:`backbeat.cli.client`) sends its
  argv, environment, working folder (a descriptor), umask, limits, affinity, nice value, the
  signals it ignores and its standard streams (``SCM_RIGHTS``); the template forks a child that
  adopts all of that and runs the command's entry point (:data:`~backbeat.core.templatekey.ENTRY`,
  named in its start arguments: this layer does not import the command line).  That child
  forks its run's zygote itself (everything is loaded: no import twice).  The template relays
  the signals the client forwards to the child, kills it (``SIGKILL``) when the client's
  connection ends (the client died, even by ``kill -9``), and tells the client the child's exit
  status once it has reaped it (:func:`_run_command`);
* **zygotes** (``op: zygote``, :func:`open_zygote`): a run not served (another interpreter's
  command, ``python -m backbeat``…) asks for a fresh zygote forked from the template, serving
  it over a socketpair exactly as a zygote forked from the command does
  (:mod:`~backbeat.processes.zygote`).

When no template answers, the command runs in its own process, forks its own zygote, and
starts a template in the background for the next commands (:func:`launch`, :func:`warm_next`).

Trust.  A template holds only backbeat's and numpy's, h5py's, zmq's and simplejson's code
(:data:`~backbeat.core.templatekey.ALLOWED`), never user code (its preload list is checked; user
code is imported by block processes only, after they are forked, or by the command's child).
It serves only commands and runs of exactly its *context*
(:func:`~backbeat.core.templatekey.context_key`, the name of its socket): the interpreter and
its flags (``-W`` too), ``sys.path`` (absolute entries only, the first of them the interpreter's
own folder, as for the installed ``backbeat`` command: ``python -m backbeat`` puts the working
folder there, whose files could shadow what the template imports, and gets no template) and
the modification times of its folders (a package installed or removed), the environment (but
variables that cannot change what it imported: ``PWD``, ``_``, ``SHLVL``, the session's
identifiers… :data:`~backbeat.core.templatekey.VOLATILE`), user and groups, hard resource
limits, namespaces, cgroup, capabilities, seccomp and security label, the preload list and
entry point, and the ``stat`` signature of every file of the installed ``backbeat`` package —
a file changed is a new key, so a template never runs stale backbeat code; the template
computes its own key again once its modules are loaded and serves only if it is still the one
it was started for.  Its socket is in a private folder (0700, owned by the user: else no
template is used) and it answers only peers of its own uid (``SO_PEERCRED``).  A command's
child declines (the client then runs the command itself) when the working folder's
``.backbeatrc`` says ``"template": false``.

Robustness.  One template per key (a ``flock`` on ``<key>.lock``, held while it lives and
removed when it leaves; its pid written there as soon as it holds it, before it preloads anything; a second one started concurrently exits at once; the holder removes a
stale socket and the leftovers of others: unlocked ``.lock`` files, old ``.failed`` marks); a
client that cannot connect or gets no answer within :data:`~backbeat.core.templatekey.ANSWER_S` runs the command itself
(a child is forked only after the client said ``go``: never both); the template leaves after
:data:`IDLE_S` seconds without a request and with no child alive (``BACKBEAT_TEMPLATE_IDLE``),
or when its socket was removed (letting the commands it serves end).  Opt out with
``BACKBEAT_TEMPLATE=off`` or ``"template": false`` in ``.backbeatrc``; ``BACKBEAT_TEMPLATE_DIR``
puts the sockets elsewhere (tests isolate their templates so).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time

from backbeat.core import templatekey
from backbeat.core.templatekey import (
    ALLOWED,
    ANSWER_S,
    ENTRY,
    FAILED,
    LOCK,
    LOG,
    LOG_MAX,
    PRELOAD,
    SOCKET,
    context,
    context_key,
    enabled,
    file,
    folder,
    peer_uid,
    socket_path,
)
from backbeat.processes import reaper
from backbeat.processes.freshstate import fresh_std_streams

IDLE_S = 600.0
#: how long the log of a template that is gone is kept (seconds)
_LOG_KEPT_S = 7 * 86400.0
#: a template that failed to start is not started again for this long (seconds)
_FAILED_S = 600.0
#: the signals a client relays (:data:`~backbeat.core.templatekey.RELAYED`; blocked in the template
#: around the fork of a command's child, so that one relayed at once waits for the child's own dispositions)
RELAYED = tuple(signal.Signals[name] for name in templatekey.RELAYED)
#: this process is a command served by a template (its run forks its zygote itself)
_SERVED = False
#: the template's interpreter description (:func:`backbeat.processes.interpreter.describe`)
_INTERPRETER: dict | None = None


def served() -> bool:
    """Whether this process is a command served by a template (its zygote is forked from it)."""
    return _SERVED


def interpreter() -> dict | None:
    """The interpreter's description, when this process was forked from a template (known)."""
    return _INTERPRETER


# --------------------------------------------------------------------------- a run's side

def open_zygote(preload: tuple[str, ...]) -> tuple[socket.socket, int] | None:
    """A zygote forked from this context's template, importing what ``preload`` names that the
    template has not: ``(socket, pid)`` — the socket speaks the zygote protocol — or None (no
    template: one is started for the next runs)."""
    if any(m.split(".")[0] not in ALLOWED for m in preload):
        return None
    key = context_key()
    where = folder() if key else None
    path = socket_path(key, where) if key and where else None
    if key is None or where is None or path is None:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.settimeout(ANSWER_S)
    ours = theirs = None
    pid = None
    try:
        conn.connect(path)
        if peer_uid(conn) != os.geteuid():
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request = {"op": "zygote", "key": key, "preload": list(preload), **context()}
        here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)  # (the working folder, even if removed)
        try:
            socket.send_fds(conn, [json.dumps(request).encode()], [theirs.fileno(), 2, here])
        finally:
            os.close(here)
        answer = json.loads(conn.recv(1 << 16) or b"{}")
        if isinstance(answer, dict) and answer.get("ok") is True and type(answer.get("pid")) is int:
            pid = answer["pid"]
    except (OSError, ValueError):
        if ours is None:  # nobody listens: start one for the next runs
            launch(key, where)
    finally:
        conn.close()
        if theirs is not None:
            theirs.close()
    if pid is None or ours is None:
        if ours is not None:
            ours.close()
        return None
    return ours, pid


def warm_next(setting: bool | None = None) -> int | None:
    """At the end of a command run in its own process: start its context's template in the
    background (unless one is up or starting, or templates are off), for the next commands."""
    if _SERVED or not enabled(setting):
        return None
    key = context_key()
    where = folder() if key else None
    if key is None or where is None or socket_path(key, where) is None:
        return None
    return launch(key, where)


def _lock(where: str, key: str) -> int | None:
    """Hold ``<key>.lock`` (an open descriptor), or None when another process holds it, or the
    file was replaced or removed meanwhile (a template leaving removes its own)."""
    path = file(where, key, LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def launch(key: str, where: str) -> int | None:
    """Start the template of ``key`` in the background unless one holds its lock, or one failed
    to start less than :data:`_FAILED_S` ago (``<key>.failed``, removed once older); its pid."""
    failed = file(where, key, FAILED)
    with contextlib.suppress(OSError):
        if time.time() - os.stat(failed).st_mtime < _FAILED_S:
            return None
        os.unlink(failed)
    fd = _lock(where, key)
    if fd is None:
        return None  # one is starting (or alive and not answering)
    os.close(fd)
    boot = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
            "from backbeat.processes.templateserver import serve; serve(*sys.argv[2:])")
    argv = [sys.executable, *subprocess._args_from_interpreter_flags(), "-c", boot,  # type: ignore[attr-defined]
            json.dumps(sys.path), key, where, ",".join(PRELOAD), ENTRY]
    log = _open_log(where, key)
    try:
        proc = subprocess.Popen(argv, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL if log is None else log, start_new_session=True,
                                close_fds=True)
    except OSError:
        return None
    finally:
        if log is not None:
            os.close(log)
    reaper.spare(proc.pid)  # (a child in another session: not a leftover of a block)
    return proc.pid


def _open_log(where: str, key: str) -> int | None:
    """The template's log (``<key>.log``, its standard error), appended to — started afresh when
    larger than :data:`LOG_MAX` —; None if it cannot be opened (the template then logs nothing)."""
    path = file(where, key, LOG)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_size > LOG_MAX:
            os.ftruncate(fd, 0)
        os.utime(fd)  # (in use again: the sweep's week counts from now)
    return fd


# --------------------------------------------------------------------------- the template

def sweep(where: str, keep: str) -> None:
    """Remove the leftovers of other templates from ``where``: ``.failed`` marks older than
    :data:`_FAILED_S`, ``.lock``/``.sock`` files whose lock nobody holds (their template is gone),
    and the logs of gone templates untouched for :data:`_LOG_KEPT_S`."""
    try:
        names = os.listdir(where)
    except OSError:
        return
    now = time.time()
    for name in names:
        key, kind = os.path.splitext(name)
        if key == keep or kind not in (LOCK, FAILED, LOG):
            continue
        path = os.path.join(where, name)
        if kind == LOG:
            with contextlib.suppress(OSError):
                st = os.stat(path)  # (an empty one at once: a template that had nothing to say)
                if (st.st_size == 0 or now - st.st_mtime >= _LOG_KEPT_S) and not os.path.exists(file(where, key, LOCK)):
                    os.unlink(path)
            continue
        if kind == FAILED:
            with contextlib.suppress(OSError):
                if now - os.stat(path).st_mtime >= _FAILED_S:
                    os.unlink(path)
            continue
        fd = _lock(where, key)
        if fd is not None:  # nobody holds it: its template is gone (or one starting gives up: the next run starts it)
            with contextlib.suppress(OSError):
                os.unlink(file(where, key, SOCKET))
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)


def adopt(req: dict, fds: list[int], stdin: bool) -> None:
    """In a process just forked from the template (a run's zygote or a command's child): take on
    the requester's context — session, working folder (``fds[-1]``), umask, affinity, nice value,
    environment (replaced), soft limits — and its standard streams (``fds[:3]``, or its stderr
    ``fds[1]`` as stdout and stderr of a zygote: ``stdin`` False)."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.fchdir(fds[-1])
    os.umask(int(req["umask"]))
    with contextlib.suppress(OSError, ValueError, TypeError):
        os.sched_setaffinity(0, req["cpus"])
    with contextlib.suppress(OSError, ValueError, TypeError):
        os.setpriority(os.PRIO_PROCESS, 0, int(req["nice"]))
    os.environ.clear()
    os.environ.update(req["env"])
    for name, (soft, hard) in req["limits"].items():
        with contextlib.suppress(ValueError, OSError, AttributeError):
            resource.setrlimit(getattr(resource, name), (soft, hard))
    if stdin:
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
    else:
        os.dup2(fds[1], 1)
        os.dup2(fds[1], 2)
    fresh_std_streams(stdin=stdin, line_buffered=not stdin)
