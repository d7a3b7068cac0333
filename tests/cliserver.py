"""``backbeat ARGS…`` as a process forked from a preloaded one: what :func:`conftest.run_cli` uses.

The suite runs the CLI ~1,000 times; a fresh ``python -c "from backbeat.cli import entry; entry()"``
spends most of a short command starting the interpreter and importing the command line, numpy, h5py
and zmq (~0.5 s of CPU, more under load) — the same work every time, which no test looks at.  A
*server*, started once per test session, has imported what the product's own warm template imports
before it serves a command (:data:`backbeat.core.templatekey.PRELOAD`: backbeat's command line and
run machinery, numpy, h5py, zmq — never user code) and nothing else, and forks one child per
command.  The child takes on what a fresh process would have had — its argv (``sys.argv`` as ``-c``
gives it), working folder, environment (replaced whole), standard output and error (the client's
pipes, ``SCM_RIGHTS``), standard input (the test process's, inherited) — and calls the entry point
at the top level of its ``-c`` code: an uncaught exception prints its traceback and exits 1,
``SystemExit`` gives the exit code, the interpreter's shutdown (``atexit``, flushing) runs as in any
process.  The product's warm template serves commands the same way
(:func:`backbeat.processes.template.adopt`); here ``BACKBEAT_TEMPLATE`` stays off, so the command
runs its unserved path (its own fork server, zygote and blocks) exactly as before.

The client waits as :func:`subprocess.run` does: until both pipes reach end-of-file (a process the
command left holding them holds the test too) and the child's exit status is known (negative: the
signal that ended it); on timeout the child is killed and :class:`subprocess.TimeoutExpired` raised.

What a forked command cannot be, and so runs as a fresh process (:func:`forkable`): one whose
environment changes what the interpreter reads as it starts (``PYTHON*``, ``LD_*``) or switches the
warm template on.  Two servers are started with different hash seeds (``PYTHONHASHSEED``) and
alternate, so that consecutive commands never share the seed — as fresh processes would not: a key
or an order depending on string hashing still shows as a cached run not reused.  Tests that look at
the processes of a command (by command line, rusage, kill) start it with :func:`conftest.cli_command`.
"""

from __future__ import annotations

import atexit
import json
import locale
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

#: the server (``-c`` code; argv[1]: the descriptor of its end of the socketpair).  After the fork the
#: child falls out of the loop and, at the top level as a ``-c`` program, runs the entry point.
_SERVER = r"""
import json, os, socket, sys
from backbeat.cli import entry
import importlib
from backbeat.core.templatekey import PRELOAD
for _name in PRELOAD:  # (what the product's warm template imports before serving a command)
    importlib.import_module(_name)
_conn = socket.socket(fileno=int(sys.argv[1]))
while True:
    _msg, _fds, _flags, _addr = socket.recv_fds(_conn, 1 << 22, 2)
    if not _msg:
        os._exit(0)
    _req = json.loads(_msg)
    _pid = os.fork()
    if _pid == 0:
        from backbeat.processes.freshstate import fresh_random_state
        fresh_random_state()  # (numpy's global state not shared by every command: as the product's template)
        break
    for _fd in _fds:
        os.close(_fd)
    _conn.send(json.dumps({"pid": _pid}).encode())
    _status = os.waitpid(_pid, 0)[1]
    _conn.send(json.dumps({"code": os.waitstatus_to_exitcode(_status)}).encode())
_conn.close()
os.dup2(_fds[0], 1)
os.dup2(_fds[1], 2)
os.close(_fds[0])
os.close(_fds[1])
os.chdir(_req["cwd"])
os.environ.clear()
os.environ.update(_req["env"])
sys.argv = ["backbeat", *_req["args"]]
del importlib, json, socket, PRELOAD, _name, _conn, _msg, _fds, _flags, _addr, _req, _pid
entry()
"""

#: environment variables a forked process cannot take on (read as the interpreter starts), and the
#: warm template (its key names the interpreter's argv and ``sys.path``: a ``-c`` command gets none)
_STARTUP = ("PYTHON", "LD_", "LC_", "LANG", "TZ")
#: the environment the servers started in (None: not started yet)
_started: dict[str, str] | None = None


def forkable(env: dict[str, str]) -> bool:
    """Whether a command with environment ``env`` can be forked from a server started in this
    process's environment (else it runs as a fresh process).  ``BACKBEAT_TEST_FRESH_CLI=1`` in the
    suite's environment: every command a fresh process (as before; to compare)."""
    if os.environ.get("BACKBEAT_TEST_FRESH_CLI") == "1":
        return False
    if env.get("PYTHONHASHSEED") != os.environ.get("PYTHONHASHSEED"):
        return False  # (a seed asked for: the servers' own seeds would win)
    base = os.environ if _started is None else _started
    for name in set(env) | set(base) | set(os.environ):
        if name.startswith(_STARTUP) and name != "PYTHONHASHSEED" and \
                not env.get(name) == base.get(name) == os.environ.get(name):
            return False
    return env.get("BACKBEAT_TEMPLATE") == os.environ.get("BACKBEAT_TEMPLATE") == "off"


class _Server:
    def __init__(self, seed: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, PYTHONHASHSEED=str(seed))
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
        theirs.close()
        self.conn = ours

    def _answer(self, timeout: float | None) -> dict:
        self.conn.settimeout(timeout)
        try:
            msg = self.conn.recv(1 << 16)
        finally:
            self.conn.settimeout(None)
        if not msg:
            raise RuntimeError(f"the CLI server ended (exit {self.proc.wait()})")
        return json.loads(msg)

    def run(self, argv: list[str], args: list[str], cwd: str, env: dict[str, str],
            timeout: float | None) -> subprocess.CompletedProcess:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            request = json.dumps({"args": args, "cwd": cwd, "env": env}).encode()
            socket.send_fds(self.conn, [request], [out_w, err_w])
        finally:
            os.close(out_w)
            os.close(err_w)
        pid = self._answer(30)["pid"]
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
        with selectors.DefaultSelector() as sel:
            sel.register(out_r, selectors.EVENT_READ)
            sel.register(err_r, selectors.EVENT_READ)
            sel.register(self.conn, selectors.EVENT_READ)
            try:
                return self._wait(argv, pid, sel, chunks, deadline, timeout, out_r, err_r)
            except BaseException:
                if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                    with _gone():  # (interrupted: the command does not outlive its test)
                        os.kill(pid, signal.SIGKILL)
                raise
            finally:
                for fd in chunks:
                    if fd in sel.get_map():
                        sel.unregister(fd)
                        os.close(fd)

    def _wait(self, argv: list[str], pid: int, sel: selectors.BaseSelector, chunks: dict[int, list[bytes]],
              deadline: float | None, timeout: float | None, out_r: int, err_r: int) -> subprocess.CompletedProcess:
        code = None
        while len(sel.get_map()) > 0:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                if code is None:
                    try:
                        code = json.loads(self.conn.recv(1 << 16, socket.MSG_DONTWAIT))["code"]
                    except BlockingIOError:  # (not reaped yet: the server reaps it after its answer)
                        with _gone():
                            os.kill(pid, signal.SIGKILL)
                        self._answer(None)
                raise subprocess.TimeoutExpired(argv, timeout or 0, _text(b"".join(chunks[out_r])),
                                                _text(b"".join(chunks[err_r])))
            for key, _ in sel.select(left):
                if key.fileobj is self.conn:
                    code = self._answer(None)["code"]
                    sel.unregister(self.conn)
                    continue
                data = os.read(key.fd, 1 << 16)
                if data:
                    chunks[key.fd].append(data)
                else:
                    sel.unregister(key.fd)
                    os.close(key.fd)
        assert code is not None
        return subprocess.CompletedProcess(argv, code, _text(b"".join(chunks[out_r])), _text(b"".join(chunks[err_r])))

    def close(self, kill: bool = False) -> None:
        self.conn.close()
        if kill:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _gone():
    """Errors of a kill whose process is gone already (reaped by its server meanwhile) suppressed."""
    import contextlib
    return contextlib.suppress(ProcessLookupError)


def _text(data: bytes) -> str:
    """As ``subprocess.run(..., text=True)`` decodes: the locale's encoding, universal newlines."""
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


_servers: list[_Server] = []
_owner = os.getpid()


def _close() -> None:
    for server in _servers:
        server.close()


_busy = threading.Lock()
_turn = 0


def run(argv: list[str], args: list[str], cwd: str, env: dict[str, str],
        timeout: float | None) -> subprocess.CompletedProcess:
    """Run the command ``argv`` (``cli_command(*args)``) forked from a server (started on first use);
    as a fresh process when another thread's command is running (commands run concurrently, as
    they would) or in a process forked from the test process (the servers are its own)."""
    global _turn
    if os.getpid() != _owner or not _busy.acquire(blocking=False):
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    try:
        if not _servers:
            global _started
            _started = dict(os.environ)
            seeds = random.SystemRandom().sample(range(1, 1 << 32), 2)
            _servers.extend(_Server(seed) for seed in seeds)
            atexit.register(_close)
        _turn = 1 - _turn
        server = _servers[_turn]
        try:
            return server.run(argv, args, cwd, env, timeout)
        except subprocess.TimeoutExpired:
            raise  # (its child killed and reaped: the server answers the next command)
        except BaseException:  # (interrupted mid-exchange: its next answer would be this command's)
            _servers[_turn] = _Server(random.SystemRandom().randrange(1, 1 << 32))
            server.close(kill=True)
            raise
    finally:
        _busy.release()
