"""Which warm template may serve this process: the switch, the socket folder and the context key,
and what its clients share: the files of a template, its answer delay, the relayed signals, the
peer check and the context a request carries.

A warm template (:mod:`backbeat.processes.template`) is a process that imported backbeat's
command, its run machinery and the block runtime once and stays; it serves the ``backbeat``
command itself (:mod:`backbeat.cli.client`) and the zygotes of runs, but only those of exactly
its *context*: :func:`context_key`, the name of its socket.  The thin client computes the key
before anything else is imported, so this module imports nothing but small built-in modules
(no ``json``, ``re``, ``enum``, ``hashlib``, ``socket`` nor ``signal``: ~10 ms of imports on the
client's path; ``resource`` and ``_socket`` only in the functions that need them; ``time`` is built in).
"""

from __future__ import annotations

import os
import stat
import sys
import time

SWITCH = "BACKBEAT_TEMPLATE"
FOLDER = "BACKBEAT_TEMPLATE_DIR"
IDLE = "BACKBEAT_TEMPLATE_IDLE"
#: environment variables left out of the key: none of them can change what a template imported
#: (the command and the zygotes it serves adopt the full environment anyway): the shell's
#: working folders, last command (``_``, different for every script) and nesting level, the
#: session's and terminal's identifiers, and the template's own switches
VOLATILE = frozenset({
    "PWD", "OLDPWD", "_", "SHLVL", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "SSH_AUTH_SOCK",
    "XDG_SESSION_ID", "WINDOWID", "TERM_SESSION_ID", "ITERM_SESSION_ID", "TMUX_PANE", "STY", "GPG_TTY",
    "COLUMNS", "LINES", SWITCH, IDLE,
})
#: the top-level packages a template may import (by the names it preloads)
ALLOWED = frozenset({"numpy", "h5py", "zmq", "simplejson", "backbeat"})
#: what a template imports, in this order: what a run's zygote needs first (the order of
#: ``backbeat.execution.state.PRELOAD``), then the command and the machinery of a run
PRELOAD = ("numpy", "zmq", "backbeat.processes.control", "backbeat.runtime.dbprovider", "h5py",
           "backbeat.runtime.preload", "backbeat.cli.command", "backbeat.core.config",
           "backbeat.execution.local", "backbeat.execution.executors", "backbeat.execution.scheduler",
           "backbeat.execution.decisions", "backbeat.execution.views", "backbeat.planning.planner",
           "backbeat.cache.store", "backbeat.provenance.builder", "backbeat.reporting.live",
           "backbeat.declarations.schemacompiler", "backbeat.processes.group", "backbeat.processes.workerpool",
           "backbeat.processes.template", "backbeat.declarations.schema", "backbeat.reporting.runs",
           "backbeat.reporting.engine")
#: what a template does once its modules are loaded (``module:function``, no argument), so that
#: no command it serves does it again: every declaration schema compiled (~15 ms of a command's
#: first validation), the whole parser built once (argparse's messages and patterns cached)
WARM = ("backbeat.declarations.schema:warm", "backbeat.cli.command:warm")
#: the function a template runs in the child serving a command (``module:function``, no argument:
#: it reads ``sys.argv``; its exit status returned)
ENTRY = "backbeat.cli.command:main"
#: backbeat's package folder
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: how long a client waits for a template's first answer before running without it (seconds)
ANSWER_S = 1.0
#: the signals a client relays to the command a template serves (by name: ``signal``'s enums
#: cost the client ~10 ms; those the client ignores stay ignored in the command)
RELAYED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGCONT", "SIGALRM")
#: the files of a template in its folder (:func:`file`): its socket, its lock (held while it
#: lives), the mark of a failed start and its log (its standard error: why it failed to start,
#: and what its commands could not do after their answer, when nobody listens any more)
SOCKET, LOCK, FAILED, LOG = ".sock", ".lock", ".failed", ".log"
#: a template's log is started afresh when it is larger than this, as a template starts and after each answer (bytes)
LOG_MAX = 1 << 20
_NAMESPACES = ("mnt", "pid", "net", "user", "ipc", "uts", "cgroup")
#: the longest path of a Unix socket (``sun_path``, with its NUL)
_PATH_MAX = 107


def switched_off() -> bool:
    """``BACKBEAT_TEMPLATE=off`` (or ``0``, ``no``, ``false``), or not Linux."""
    return (os.environ.get(SWITCH, "").strip().lower() in ("0", "off", "no", "false")
            or not sys.platform.startswith("linux"))


def enabled(setting: bool | None = None) -> bool:
    """Whether templates are used (``BACKBEAT_TEMPLATE=off`` or ``setting`` False — ``"template"``
    of ``.backbeatrc`` — no; Linux only)."""
    return setting is not False and not switched_off()


def folder() -> str | None:
    """The private folder of this user's template sockets (made 0700), or None if it is not private."""
    path = os.environ.get(FOLDER)
    if not path:
        base = os.environ.get("XDG_RUNTIME_DIR") or next(
            (os.environ[v] for v in ("TMPDIR", "TEMP", "TMP") if os.path.isdir(os.environ.get(v) or "")), "/tmp")
        path = os.path.join(base, f"backbeat-templates-{os.geteuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return None
    return path


def file(where: str, key: str, kind: str) -> str:
    """The file of template ``key`` in ``where`` of ``kind`` (:data:`SOCKET`, :data:`LOCK`, :data:`FAILED`,
    :data:`LOG`)."""
    return os.path.join(where, key + kind)


def socket_path(key: str, where: str) -> str | None:
    """The socket of template ``key`` in ``where``, or None when the path is too long for one."""
    path = file(where, key, SOCKET)
    return path if len(os.fsencode(path)) <= _PATH_MAX else None


def peer_uid(conn: object) -> int:
    """The user id of the process at the other end of the Unix socket ``conn`` (``SO_PEERCRED``:
    a ``struct ucred`` of three native ints, pid, uid and gid)."""
    import _socket  # type: ignore[import-not-found]  # (not ``socket``: its enums cost the client ~5 ms)

    cred = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # type: ignore[attr-defined]
    return int.from_bytes(cred[4:8], sys.byteorder)


def limits() -> dict[str, list[int]]:
    """This process's resource limits, ``{"RLIMIT_…": [soft, hard]}`` by name."""
    import resource

    return {n: list(resource.getrlimit(getattr(resource, n))) for n in sorted(dir(resource)) if n.startswith("RLIMIT_")}


def context() -> dict[str, object]:
    """What a process forked from a template adopts of its requester (besides its descriptors and,
    for a command, its argv and ignored signals): umask, environment, CPU affinity, limits, nice value."""
    umask = os.umask(0o022)
    os.umask(umask)
    return {"umask": umask, "env": dict(os.environ), "cpus": sorted(os.sched_getaffinity(0)),
            "limits": limits(), "nice": os.getpriority(os.PRIO_PROCESS, 0)}


def _package_signature() -> list[str]:
    found = []

    seen = set()

    def walk(d: str) -> None:
        seen.add(os.path.realpath(d))
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.is_dir():  # (a folder linked into the package too: its ``schemas``, in a source tree)
                if e.name != "__pycache__" and os.path.realpath(e.path) not in seen:
                    walk(e.path)
            elif not e.name.endswith(".pyc"):
                s = e.stat()
                found.append(f"{e.path}\0{s.st_ino}\0{s.st_size}\0{s.st_mtime_ns}\0{s.st_ctime_ns}")

    walk(PACKAGE)
    return found


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _sha256(data: bytes) -> str:
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # (Python 3.11: no OpenSSL to load)
    except ImportError:
        from hashlib import sha256
    return sha256(data).hexdigest()


#: the last key this process computed, by what it depends on that a process may change while it
#: lives, and when (:func:`context_key`)
_LAST: tuple[tuple, float, str] | None = None
#: how long a key computed by this process is reused (seconds): a command's three asks fall within
#: it; a long-lived process (the library API) sees a changed package within it, as a new process would
REUSE_S = 1.0
_clock = time.monotonic


def context_key(preload: tuple[str, ...] = PRELOAD, entry: str = ENTRY, fresh: bool = False) -> str | None:
    """The key of the template that may serve this process, or None when none may: a relative
    ``sys.path`` entry, a module outside :data:`ALLOWED` to preload, or ``sys.path[0]`` not the
    interpreter's folder (only the installed ``backbeat`` command: with ``python -m`` the working
    folder comes first, whose files could shadow modules the template imports, unseen by the key).

    Computed once per process and second (3-8 ms: it stats every file of the package; a command
    not served asks for it three times: its client, its run's zygote, the template it starts at
    its end): again when what a process may change while it lives changed (``sys.path``, ``-W``
    options, the environment, its ids and limits), in a new process (a fork too), once
    :data:`REUSE_S` has passed (a long-lived process: its package may have changed — it must not
    keep asking for a template of files that are no longer there), or ``fresh`` (a template
    checking that its files and context are still those of its key)."""
    global _LAST
    if any(not os.path.isabs(p) for p in sys.path) or any(m.split(".")[0] not in ALLOWED for m in preload):
        return None
    if sys.path[:1] != [os.path.dirname(sys.executable)]:
        return None
    live = (os.getpid(), tuple(preload), entry, tuple(sys.path), tuple(sys.warnoptions),
            tuple(sorted((k, v) for k, v in os.environ.items() if k not in VOLATILE)),
            (os.getuid(), os.geteuid(), os.getgid(), os.getegid(), tuple(sorted(os.getgroups()))),
            tuple(hard for _soft, hard in limits().values()))
    now = _clock()
    if not fresh and _LAST is not None and _LAST[0] == live and now - _LAST[1] < REUSE_S:
        return _LAST[2]

    def mtime(p: str) -> int | None:
        try:
            return os.stat(p).st_mtime_ns
        except OSError:
            return None

    def link(ns: str) -> str | None:
        try:
            return os.readlink(f"/proc/self/ns/{ns}")
        except OSError:
            return None

    _pid, preload, entry, path, warnings, env, ids, hard = live
    parts = (("v", 3), ("python", os.path.realpath(sys.executable)), ("version", sys.version),
             ("flags", repr(sys.flags)), ("x", sorted(map(str, sys._xoptions.items()))),
             ("path", path), ("dirs", [mtime(p) for p in path]), ("warnings", warnings), ("env", env),
             ("ids", ids), ("limits", hard), ("ns", [link(n) for n in _NAMESPACES]),
             ("cgroup", _read("/proc/self/cgroup")),
             ("security", [line for line in (_read("/proc/self/status") or "").splitlines()
                           if line.startswith(("Cap", "NoNewPrivs", "Seccomp"))]),
             ("label", _read("/proc/self/attr/current")), ("preload", preload), ("entry", entry), ("warm", WARM),
             ("package", _package_signature()))
    key = _sha256(repr(parts).encode("utf-8", "surrogateescape"))[:32]
    _LAST = (live, now, key)
    return key
