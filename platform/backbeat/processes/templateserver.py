"""The warm template's own process (:mod:`backbeat.processes.template` says what it is for).

:class:`Template` is its loop: one listening socket, the connections of the commands it serves,
its children (runs' zygotes and commands' children) reaped as they end.  :func:`run_command` is
the life of a command's child.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Sequence

from backbeat.core import durable, exiting
from backbeat.core.exiting import run_exit_handlers
from backbeat.core.templatekey import (
    ALLOWED,
    ANSWER_S,
    FAILED,
    IDLE,
    LOCK,
    LOG_MAX,
    SOCKET,
    WARM,
    context_key,
    file,
    peer_uid,
)
from backbeat.processes import freshstate, reaper, template, warmup

#: the signals a client may ask the template to send to its command (those it relays, and
#: SIGSTOP when it is stopped itself: Ctrl-Z)
_RELAYABLE = frozenset({*template.RELAYED, signal.SIGSTOP})


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def valid(req: object, key: str, fds: list[int]) -> bool:
    """A request of this template's context, well formed (types checked before any fork)."""
    if not isinstance(req, dict) or req.get("key") != key or req.get("op") not in ("zygote", "command"):
        return False
    env, limits = req.get("env"), req.get("limits")
    ok = (type(req.get("umask")) is int and type(req.get("nice")) is int
          and isinstance(req.get("cpus"), list) and all(type(c) is int for c in req["cpus"])
          and isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
          and isinstance(limits, dict)
          and all(isinstance(n, str) and n.startswith("RLIMIT_") and isinstance(v, list) and len(v) == 2
                  and all(type(x) is int for x in v) for n, v in limits.items()))
    if req["op"] == "zygote":
        preload = req.get("preload", [])
        return ok and len(fds) == 3 and _strings(preload) and all(m.split(".")[0] in ALLOWED for m in preload)
    return (ok and len(fds) == 4 and _strings(req.get("argv")) and bool(req["argv"])
            and isinstance(req.get("ignored"), list) and all(type(s) is int for s in req["ignored"]))


class Template:
    def __init__(self, key: str, where: str, preload: tuple[str, ...], entry: str) -> None:
        self.key, self.where, self.preload, self.entry = key, where, preload, entry
        self.path = file(where, key, SOCKET)
        self.children: set[int] = set()  # zygotes and commands' children
        self.served: dict[int, socket.socket] = {}  # command's child -> its client's connection
        self.clients: dict[int, tuple[socket.socket, int]] = {}  # connection's fd -> (it, the child)
        #: command's child -> the read end of its pipe: it writes ``a`` there once it has answered
        #: its client, and the pipe ends with it (:func:`run_command`)
        self.pipes: dict[int, int] = {}
        self.answered: set[int] = set()  # commands' children working after their answer
        self.idle = float(os.environ.get(IDLE) or template.IDLE_S)

    def main(self) -> None:
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        lock = template._lock(self.where, self.key)
        if lock is None:
            return  # another template of this key lives or starts
        self.lock = lock
        os.ftruncate(lock, 0)  # its pid, at once: whatever the file held was a gone template's
        os.write(lock, f"{os.getpid()}\n".encode())  # (the pid of one that holds the lock, never stale)
        if any(m.split(".")[0] not in ALLOWED for m in (*self.preload, self.entry, *WARM)):
            raise RuntimeError(f"a template never imports {self.preload} nor runs {self.entry}")
        for name in self.preload:
            warmup.preload(name)  # (numpy: its OpenBLAS threads quiet)
            if name == "numpy":
                sys.modules["numpy"].random.seed()  # (numpy's entropy source initialised once, here)
        module, _, func = self.entry.partition(":")
        self.run = getattr(importlib.import_module(module), func)
        for step in WARM:  # (backbeat's own code on backbeat's own files: the schemas, the parser)
            module, _, func = step.partition(":")
            getattr(importlib.import_module(module), func)()
        from backbeat.processes.interpreter import describe

        template._INTERPRETER = describe()  # (the same in every run of its context)
        gc.collect()
        gc.freeze()
        if context_key(self.preload, self.entry, fresh=True) != self.key:  # its files or context changed while it started
            raise RuntimeError("the context changed while the template started: it never serves it")
        with contextlib.suppress(OSError):
            os.unlink(file(self.where, self.key, FAILED))
        template.sweep(self.where, self.key)
        reaper.become_subreaper()  # what dead children's descendants leave comes up here, and dies
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
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wfd)
        self.private = [rfd, wfd, self.lock]  # (closed in every child)
        stopping: list[bool] = []  # (SIGTERM, or its socket removed: no new run, the running ones end)
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        last = time.monotonic()
        while True:
            if stopping:
                if srv.fileno() != -1:
                    srv.close()
                    self.unlink(inode)
                if not self.children:
                    self.leave(None)
            try:
                listening = [srv.fileno()] if srv.fileno() != -1 else []
                ready, _, _ = select.select([*listening, rfd, *self.clients], [], [],
                                            min(self.idle, 30.0) if listening else 0.5)
            except InterruptedError:
                ready = []
            if rfd in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(rfd, 512)
            self.reap()
            for fd in ready:
                if fd in self.clients:
                    self.relay(fd)
            if listening and srv.fileno() in ready:
                last = time.monotonic()
                with contextlib.suppress(Exception):  # (a malformed request never ends the template)
                    conn, _ = srv.accept()
                    self.answer(conn, srv)
            try:
                here = os.stat(self.path).st_ino == inode
            except OSError:
                here = False
            if not here:  # (e.g. a cleaner of the temporary folder: the runs it serves go on)
                stopping.append(True)
            elif not self.children and time.monotonic() - last > self.idle:
                self.leave(inode)
            elif not ready and not self.children and context_key(self.preload, self.entry, fresh=True) != self.key:
                self.leave(inode)  # (backbeat's files or a package changed: it would never serve again)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self.children.discard(pid)
            self.answered.discard(pid)
            with contextlib.suppress(KeyError, OSError):
                os.close(self.pipes.pop(pid))
            conn = self.served.pop(pid, None)
            if conn is not None:  # a command's child: its client exits with its status
                code = os.waitstatus_to_exitcode(status)
                with contextlib.suppress(OSError):
                    conn.send(f"exit {code}".encode() if code >= 0 else f"signal {-code}".encode())
                self.drop(conn)
        reaper.kill_strays(self.children)  # leftovers of killed children's descendants

    def drop(self, conn: socket.socket) -> None:
        self.clients.pop(conn.fileno(), None)
        conn.close()

    def relay(self, fd: int) -> None:
        """A message of a served command's client: a signal for its command, or its end."""
        conn, pid = self.clients[fd]
        try:
            msg = conn.recv(64)
        except BlockingIOError:
            return
        except OSError:
            msg = b""
        alive = pid in self.served
        if not msg:  # the client is gone (even by SIGKILL): its command dies with it
            if alive:  # (unless it had answered: its work after the answer goes on)
                if not self.has_answered(pid):
                    os.kill(pid, signal.SIGKILL)
                self.served.pop(pid)
            self.drop(conn)
            return
        word, _, arg = msg.partition(b" ")
        if word == b"signal" and arg.isdigit() and int(arg) in _RELAYABLE and alive:
            os.kill(pid, int(arg))

    def has_answered(self, pid: int) -> bool:
        """Whether command's child ``pid`` has answered its client (said so on its pipe)."""
        fd = self.pipes.get(pid)
        if pid not in self.answered and fd is not None:
            with contextlib.suppress(OSError):
                if os.read(fd, 1) == b"a":
                    self.answered.add(pid)
        return pid in self.answered

    def unlink(self, inode: int | None) -> None:
        """Remove its socket, if it is still its own (``inode``)."""
        with contextlib.suppress(OSError):
            if inode is not None and os.stat(self.path).st_ino == inode:
                os.unlink(self.path)

    def leave(self, inode: int | None) -> None:
        self.unlink(inode)
        with contextlib.suppress(OSError):  # (removed while held: one opening it now gives up)
            os.unlink(file(self.where, self.key, LOCK))
        os._exit(0)

    def answer(self, conn: socket.socket, srv: socket.socket) -> None:
        conn.settimeout(ANSWER_S)
        kept = False
        msg, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 4)
        try:
            if peer_uid(conn) != os.geteuid():
                return
            try:
                req = json.loads(msg)
            except ValueError:
                req = None
            if not valid(req, self.key, fds):
                conn.send(json.dumps({"ok": False, "error": "not this template's context"}).encode())
                return
            if req["op"] == "command":
                conn.send(b"ok")
                if conn.recv(16) != b"go":  # (the client gave up waiting: it runs the command itself)
                    return
            command = req["op"] == "command"
            # (a command waits, if it must, for those that answered before it: see run_command)
            peers = [fd for pid, fd in self.pipes.items() if command and self.has_answered(pid)]
            done, said = os.pipe() if command else (-1, -1)
            old = signal.pthread_sigmask(signal.SIG_BLOCK, template.RELAYED)  # (until the child's own handlers)
            try:
                pid = os.fork()
            except OSError:  # (EAGAIN, ENOMEM: the client runs the command itself)
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
                for fd in (done, said):
                    if fd != -1:
                        os.close(fd)
                raise
            if pid == 0:
                try:
                    for fd in (srv.detach(), *self.private, *self.clients, *self.pipes.values(), done):
                        if fd not in peers and fd != -1:
                            os.close(fd)
                    if command:
                        run_command(req, fds, conn, self.run, said, peers)
                    sock = socket.socket(fileno=os.dup(fds[0]))
                    conn.close()
                    template.adopt(req, fds, stdin=False)
                    for fd in fds:
                        os.close(fd)
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
                    from backbeat.processes.zygote import Zygote

                    Zygote(sock, tuple(req.get("preload") or self.preload), None, template._INTERPRETER).main()
                finally:
                    os._exit(1)
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            self.children.add(pid)
            if command:
                os.close(said)
                os.set_blocking(done, False)
                self.pipes[pid] = done
            if req["op"] == "zygote":
                conn.send(json.dumps({"ok": True, "pid": pid}).encode())
                return
            conn.setblocking(False)
            self.served[pid] = conn
            self.clients[conn.fileno()] = (conn, pid)
            kept = True
            with contextlib.suppress(OSError):
                conn.send(f"pid {pid}".encode())
        finally:
            for fd in fds:
                os.close(fd)
            if not kept:
                conn.close()


def serve(key: str, where: str, preload_list: str, entry: str) -> None:
    """The template's life (``launch`` runs it): lock, preload, check its key, serve, leave when idle."""
    try:
        Template(key, where, tuple(m for m in preload_list.split(",") if m), entry).main()
    except BaseException:  # noqa: BLE001 - never served: say so, so that runs do not start it again and again
        traceback.print_exc()
        with contextlib.suppress(OSError):
            os.close(os.open(file(where, key, FAILED), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    finally:
        os._exit(0)


def run_command(req: dict, fds: list[int], conn: socket.socket, run: object, said: int = -1,
                peers: Sequence[int] = ()) -> None:
    """The life of a command's child (never returns): adopt the client's context, argv, streams
    and signal dispositions, then run the command's entry point as the command would.

    Once it has answered (its exit status sent), it lets go of the client's streams and does
    the work its command left for after the answer (:func:`backbeat.core.exiting.after_answer`:
    e.g. waiting for its outputs to be durable), then ends.  ``said``: the pipe on which it tells
    its template that it has answered (its client leaving then does not kill it), open until it
    ends; ``peers``: those pipes of the commands working after their answer when it started (a
    marked file they are syncing is waited for rather than verified:
    :func:`backbeat.core.durable.await_peers`)."""
    ppid = os.getppid()
    reaper.set_parent_death_signal(signal.SIGKILL)  # (its template killed: the command too)
    if os.getppid() != ppid:
        os._exit(1)
    template._SERVED = True
    log = os.dup(2)  # (the template's log: its standard error after the answer; not inherited)
    template.adopt(req, fds, stdin=True)
    freshstate.seed_numpy()  # (its own random state, as a new process's: ``random`` reseeds itself)
    for fd in fds:
        os.close(fd)
    sys.argv[:] = req["argv"]
    if isinstance(req.get("orig_argv"), list):
        sys.orig_argv = list(req["orig_argv"])
    ignored = set(req["ignored"])
    for sig in template.RELAYED:  # as Python starts: SIGINT raises KeyboardInterrupt, the others default
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        signal.signal(sig, signal.SIG_IGN if sig in ignored else default)
    from backbeat.core import config

    try:
        declined = config.load().template is False
    except Exception:  # noqa: BLE001 - the command reports it
        declined = False
    if declined:  # ``"template": false`` here: the client runs the command itself
        with contextlib.suppress(OSError):
            conn.send(b"declined")
        os._exit(0)
    # (the connection tells the client the exit status as soon as it is known; never inherited:
    # closed in any process forked from this one, close-on-exec for the others)
    told = [said, log]  # (closed once: in a process forked from one forked from this one, their numbers are others')
    os.register_at_fork(after_in_child=lambda: _forget(conn, told))
    os.register_at_fork(after_in_child=exiting.forget)  # (a fork never answers: it leaves nothing for after)
    exiting.answer_later()
    durable.expect_peers(peers)
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        code = run()  # type: ignore[operator]
        code = code if isinstance(code, int) else 0
    except SystemExit as exc:  # as the interpreter ends on it
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:  # as the interpreter: its traceback, then death by SIGINT
        traceback.print_exc()
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # noqa: BLE001 - as the interpreter: its traceback, exit 1
        traceback.print_exc()
    code = _finish(code)
    with contextlib.suppress(OSError):
        os.write(said, b"a")  # (first: the client leaving at once must find the template told)
    with contextlib.suppress(OSError):
        conn.send(f"exit {code}".encode())  # (before this process's teardown: the client exits now)
    if exiting.pending():
        _let_go(conn, log)
        exiting.run_after_answer()  # (what it cannot do is said on the standard error: the template's log)
        _flush()
    os._exit(code)


def _forget(conn: socket.socket, told: list[int] | None = None) -> None:
    fd = conn.detach()  # (-1 in a process forked from one that forgot it already)
    if fd >= 0:
        os.close(fd)
    for i, fd in enumerate(told or ()):
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
            told[i] = -1  # type: ignore[index]
    durable.forget_peers()


def _let_go(conn: socket.socket, log: int = -1) -> None:
    """After the answer: nothing of the client is held any more (whoever reads its streams to
    their end, as a shell's ``$(…)`` does, is not kept waiting); the standard error is the
    template's ``log`` (a descriptor) from now on, if it has one — started afresh when larger
    than :data:`LOG_MAX` (a template serving command after command never restarts it)."""
    _flush()
    with contextlib.suppress(OSError):
        if log >= 0 and os.fstat(log).st_size > LOG_MAX:
            os.ftruncate(log, 0)  # (appended to: the next line is at its start)
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(log if fd == 2 and log >= 0 else null, fd)
        os.close(null)
    _forget(conn)


def _finish(code: int) -> int:
    """What the interpreter does as it exits: wait for the other (non-daemon) threads, run the
    exit handlers, flush the streams (a closed pipe: exit 1); the exit status."""
    import threading

    if threading.active_count() > 1:
        threading._shutdown()  # type: ignore[attr-defined]
    try:
        return run_exit_handlers(code)
    except BaseException:  # noqa: BLE001 - as the interpreter: said, not raised
        traceback.print_exc()
    return code


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
