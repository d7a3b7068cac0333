"""A warm template shared by one user's runs: each run's zygote is forked from it, already warm.

A run's fork server must import numpy, zmq, h5py and the block runtime before its first job
can fork (~0.15 s of wall time on the critical path of a trivial run).  A *template* is a
process that has done that once and stays, like a build daemon: :func:`open_zygote` asks it
for a fresh zygote (forked from it: a child with the modules loaded) that serves the run over
a socketpair exactly as a zygote forked from the command does
(:mod:`~backbeat.processes.zygote`).  When no template answers, the run forks its own zygote as
before and starts a template in the background for the next runs (:func:`launch`).

Trust.  A template holds only backbeat's and numpy's, h5py's, zmq's and simplejson's code
(:data:`ALLOWED`), never user code (its preload list is checked; user code is imported by block
processes only, after they are forked).  It serves only runs of exactly its *context*
(:func:`context_key`, the name of its socket): the interpreter and its flags (``-W`` too), ``sys.path``
(absolute entries only, the first of them the interpreter's own folder, as for the installed
``backbeat`` command: ``python -m backbeat`` puts the working folder there, whose files could
shadow what the template imports, and gets no template) and the modification times of its
folders (a package installed or removed), the
environment (but ``PWD``, ``OLDPWD``, ``_``), user and groups, hard resource limits, namespaces,
cgroup, capabilities, seccomp and security label, the preload list, and the ``stat`` signature (inode, size, mtime, ctime) of every
file of the installed ``backbeat`` package — a file changed is a new key, so a template never
runs stale backbeat code; the template computes its own key again once its modules are loaded
and serves only if it is still the one it was started for.  Its socket is in a private folder
(0700, owned by the user: else no template is used) and it answers only peers of its own uid
(``SO_PEERCRED``).  A run's zygote adopts the run's working folder (by descriptor), umask, environment, soft
limits, CPU affinity and nice value, and its standard error; it is tied to the command by its socket: when the command dies
(even by SIGKILL) the zygote reads EOF and kills every block (and they die with it).

Robustness.  One template per key (a ``flock`` on ``<key>.lock``, held while it lives: a second
one started concurrently exits at once; the holder removes a stale socket); a command that
cannot connect falls back at once; the template leaves after :data:`IDLE_S` seconds without a
request and with no zygote alive (``BACKBEAT_TEMPLATE_IDLE``), or when its socket was removed.
Opt out with ``BACKBEAT_TEMPLATE=off`` or ``"template": false`` in ``.backbeatrc``;
``BACKBEAT_TEMPLATE_DIR`` puts the sockets elsewhere (tests isolate their templates so).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import importlib
import json
import os
import resource
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time

from backbeat.processes import reaper, warmup

SWITCH = "BACKBEAT_TEMPLATE"
FOLDER = "BACKBEAT_TEMPLATE_DIR"
IDLE = "BACKBEAT_TEMPLATE_IDLE"
IDLE_S = 600.0
#: environment variables that do not make another context (the working folder is adopted; this
#: module's own switches)
VOLATILE = frozenset({"PWD", "OLDPWD", "_", SWITCH, IDLE})
#: the top-level packages a template may import
ALLOWED = frozenset({"numpy", "h5py", "zmq", "simplejson", "backbeat"})
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NAMESPACES = ("mnt", "pid", "net", "user", "ipc", "uts", "cgroup")
_LIMITS = sorted(n for n in dir(resource) if n.startswith("RLIMIT_"))
#: the longest path of a Unix socket (``sun_path``, with its NUL)
_PATH_MAX = 107
#: a template that failed to start is not started again for this long (seconds)
_FAILED_S = 600.0
#: how long a command waits for a template's answer before running without it
_ANSWER_S = 1.0


def enabled(setting: bool | None = None) -> bool:
    """Whether runs use a template (``BACKBEAT_TEMPLATE=off`` or ``setting`` False: no; Linux only)."""
    if os.environ.get(SWITCH, "").strip().lower() in ("0", "off", "no", "false"):
        return False
    return setting is not False and sys.platform.startswith("linux")


def folder() -> str | None:
    """The private folder of this user's template sockets (made 0700), or None if it is not private."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = os.environ.get(FOLDER) or os.path.join(base, f"backbeat-templates-{os.geteuid()}")
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


def _package_signature() -> str:
    h = hashlib.sha256()

    def walk(d: str) -> None:
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                if e.name != "__pycache__":
                    walk(e.path)
            elif not e.name.endswith(".pyc"):
                s = e.stat()
                h.update(f"{e.path}\0{s.st_ino}\0{s.st_size}\0{s.st_mtime_ns}\0{s.st_ctime_ns}\n".encode())

    walk(PACKAGE)
    return h.hexdigest()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def context_key(preload: tuple[str, ...]) -> str | None:
    """The key of the template that may serve this process's runs, or None when none may (a
    relative ``sys.path`` entry, a module outside :data:`ALLOWED` to preload)."""
    if any(not os.path.isabs(p) for p in sys.path) or any(m.split(".")[0] not in ALLOWED for m in preload):
        return None
    if sys.path[:1] != [os.path.dirname(sys.executable)]:
        # only for the installed command (its script beside the interpreter): else ``sys.path[0]``
        # is a folder of the user's (``python -m``: the working folder), whose files could
        # shadow modules the template imports — user code in it, unseen by the key
        return None

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

    parts = {"v": 1, "python": os.path.realpath(sys.executable), "version": sys.version,
             "flags": repr(sys.flags), "x": sorted(map(str, sys._xoptions.items())),
             "path": sys.path, "dirs": [mtime(p) for p in sys.path], "warnings": sys.warnoptions,
             "env": sorted((k, v) for k, v in os.environ.items() if k not in VOLATILE),
             "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), sorted(os.getgroups())],
             "limits": [resource.getrlimit(getattr(resource, n))[1] for n in _LIMITS],
             "ns": [link(n) for n in _NAMESPACES], "cgroup": _read("/proc/self/cgroup"),
             "security": [line for line in (_read("/proc/self/status") or "").splitlines()
                          if line.startswith(("Cap", "NoNewPrivs", "Seccomp"))],
             "label": _read("/proc/self/attr/current"),
             "preload": list(preload), "package": _package_signature()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _peer_uid(sock: socket.socket) -> int:
    cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", cred)[1]


# --------------------------------------------------------------------------- the command's side

def open_zygote(preload: tuple[str, ...]) -> tuple[socket.socket, int] | None:
    """A zygote forked from this context's template: ``(socket, pid)`` — the socket speaks the
    zygote protocol — or None (no template: one is started for the next runs)."""
    key = context_key(preload)
    where = folder() if key else None
    if key is None or where is None or len(os.path.join(where, f"{key}.sock").encode()) > _PATH_MAX:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.settimeout(_ANSWER_S)
    ours = theirs = None
    try:
        conn.connect(os.path.join(where, f"{key}.sock"))
        if _peer_uid(conn) != os.geteuid():
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request = {"op": "zygote", "key": key, "umask": _umask(), "env": dict(os.environ),
                   "limits": {n: resource.getrlimit(getattr(resource, n)) for n in _LIMITS},
                   "cpus": sorted(os.sched_getaffinity(0)), "nice": os.getpriority(os.PRIO_PROCESS, 0)}
        here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)  # (the working folder, even if removed)
        try:
            socket.send_fds(conn, [json.dumps(request).encode()], [theirs.fileno(), 2, here])
        finally:
            os.close(here)
        answer = json.loads(conn.recv(1 << 16) or b"{}")
    except (OSError, ValueError):
        if ours is None:  # nobody listens: start one for the next runs
            launch(key, where, preload)
        answer = {}
    finally:
        conn.close()
        if theirs is not None:
            theirs.close()
    if not answer.get("ok") or ours is None:
        if ours is not None:
            ours.close()
        return None
    return ours, int(answer["pid"])


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def launch(key: str, where: str, preload: tuple[str, ...]) -> int | None:
    """Start the template of ``key`` in the background unless one holds its lock, or one failed
    to start less than :data:`_FAILED_S` ago (``<key>.failed``); its pid."""
    with contextlib.suppress(OSError):
        if time.time() - os.stat(os.path.join(where, f"{key}.failed")).st_mtime < _FAILED_S:
            return None
    try:
        fd = os.open(os.path.join(where, f"{key}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return None  # one is starting (or alive and not answering)
    finally:
        os.close(fd)
    boot = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
            "from backbeat.processes.template import serve; serve(*sys.argv[2:])")
    argv = [sys.executable, *subprocess._args_from_interpreter_flags(), "-c", boot,  # type: ignore[attr-defined]
            json.dumps(sys.path), key, where, ",".join(preload)]
    try:
        proc = subprocess.Popen(argv, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError:
        return None
    reaper.spare(proc.pid)  # (a child in another session: not a leftover of a block)
    return proc.pid


# --------------------------------------------------------------------------- the template

def serve(key: str, where: str, preload_list: str) -> None:
    """The template's life (``launch`` runs it): lock, preload, check its key, serve, leave when idle."""
    try:
        _Template(key, where, tuple(m for m in preload_list.split(",") if m)).main()
    except BaseException:  # noqa: BLE001 - never served: say so, so that runs do not start it again and again
        import traceback

        traceback.print_exc()
        with contextlib.suppress(OSError):
            os.close(os.open(os.path.join(where, f"{key}.failed"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    finally:
        os._exit(0)


class _Template:
    def __init__(self, key: str, where: str, preload: tuple[str, ...]) -> None:
        self.key, self.where, self.preload = key, where, preload
        self.path = os.path.join(where, f"{key}.sock")
        self.zygotes: set[int] = set()
        self.idle = float(os.environ.get(IDLE) or IDLE_S)

    def main(self) -> None:
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        self.lock = os.open(os.path.join(self.where, f"{self.key}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # another template of this key lives or starts
        if any(m.split(".")[0] not in ALLOWED for m in self.preload):
            raise RuntimeError(f"a template never imports {self.preload}")
        for name in self.preload:
            importlib.import_module(name)
            if name == "numpy":
                warmup.quiet_blas()
                np = sys.modules["numpy"]
                np.random.seed()  # (numpy's entropy source initialised once, here)
        from backbeat.processes.interpreter import describe

        self.interpreter = describe()  # (the same in every run of its context)
        gc.collect()
        gc.freeze()
        if context_key(self.preload) != self.key:  # its files or context changed while it started
            raise RuntimeError("the context changed while the template started: it never serves it")
        reaper.become_subreaper()  # what dead zygotes' blocks leave comes up here, and dies
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket (we hold the lock: its template is gone)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old = os.umask(0o077)
        try:
            srv.bind(self.path)
        finally:
            os.umask(old)
        srv.listen(16)
        inode = os.stat(self.path).st_ino
        os.ftruncate(self.lock, 0)
        os.write(self.lock, f"{os.getpid()}\n".encode())
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wfd)
        stopping: list[bool] = []  # (SIGTERM, or its socket removed: no new run, the running ones end)
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        last = time.monotonic()
        while True:
            if stopping:
                if srv.fileno() != -1:
                    srv.close()
                    self.unlink(inode)
                if not self.zygotes:
                    self.leave(None)
            try:
                listening = [srv.fileno()] if srv.fileno() != -1 else []
                ready, _, _ = select.select([*listening, rfd], [], [], min(self.idle, 30.0) if listening else 0.5)
            except InterruptedError:
                ready = []
            if rfd in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(rfd, 512)
            self.reap()
            if listening and srv.fileno() in ready:
                last = time.monotonic()
                with contextlib.suppress(Exception):  # (a malformed request never ends the template)
                    conn, _ = srv.accept()
                    with conn:
                        self.answer(conn, (srv, rfd, wfd))
            try:
                here = os.stat(self.path).st_ino == inode
            except OSError:
                here = False
            if not here:  # (e.g. a cleaner of the temporary folder: the runs it serves go on)
                stopping.append(True)
            elif not self.zygotes and time.monotonic() - last > self.idle:
                self.leave(inode)

    def reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self.zygotes.discard(pid)
        reaper.kill_strays(self.zygotes)  # leftovers of killed zygotes' blocks

    def unlink(self, inode: int | None) -> None:
        """Remove its socket, if it is still its own (``inode``)."""
        with contextlib.suppress(OSError):
            if inode is not None and os.stat(self.path).st_ino == inode:
                os.unlink(self.path)

    def leave(self, inode: int | None) -> None:
        self.unlink(inode)
        os._exit(0)

    def answer(self, conn: socket.socket, ours: tuple) -> None:
        conn.settimeout(_ANSWER_S)
        msg, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
        try:
            if _peer_uid(conn) != os.geteuid():
                return
            req = json.loads(msg)
            if req.get("op") != "zygote" or req.get("key") != self.key or len(fds) != 3:
                conn.send(json.dumps({"ok": False, "error": "not this template's context"}).encode())
                return
            pid = os.fork()
            if pid == 0:
                try:
                    srv, rfd, wfd = ours  # (the template's listening socket must not outlive it here)
                    for fd in (srv.detach(), conn.detach(), rfd, wfd, self.lock):
                        os.close(fd)
                    sock = _adopt(req, fds)
                    from backbeat.processes.zygote import Zygote

                    Zygote(sock, self.preload, None, self.interpreter).main()
                finally:
                    os._exit(1)
            self.zygotes.add(pid)
            conn.send(json.dumps({"ok": True, "pid": pid}).encode())
        finally:
            for fd in fds:
                os.close(fd)


def _adopt(req: dict, fds: list[int]) -> socket.socket:
    """In a run's zygote just forked from the template: take on the run's context."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.fchdir(fds[2])
    os.umask(int(req["umask"]))
    with contextlib.suppress(OSError, ValueError):
        os.sched_setaffinity(0, req["cpus"])
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, int(req["nice"]))
    os.environ.clear()
    os.environ.update(req["env"])
    for name, (soft, hard) in req["limits"].items():
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(getattr(resource, name), (soft, hard))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(fds[1], 1)
    os.dup2(fds[1], 2)
    sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
    sock = socket.socket(fileno=os.dup(fds[0]))
    for fd in fds:
        os.close(fd)
    return sock
