"""The ``backbeat`` command's entry point: a thin client of this context's warm template.

When a template of this process's context is up (:mod:`backbeat.core.templatekey`,
:mod:`backbeat.processes.template`), the command is served by it: :func:`entry` sends it the
argv, environment, working folder (a descriptor), umask, limits, CPU affinity, nice value, the
signals this process ignores and its three standard streams (``SCM_RIGHTS``); a child of the
template, with everything already imported, adopts them and runs the command line
(:func:`backbeat.cli.command.main`).  The client relays the signals it gets (Ctrl-C's SIGINT,
SIGTERM, SIGHUP, SIGWINCH…; Ctrl-Z stops the command too) and exits with the command's exit
status (128 + n when a signal ended it); if the client dies, even by ``kill -9``, its template
kills the command, whose run's processes die with it.

Otherwise (no template up, templates off, a context no template may serve, no answer within a
second, or ``"template": false`` in the working folder's ``.backbeatrc``) the command runs in
this process as it always did, and starts the template in the background for the next ones.

This module is on every command's critical path: it imports only small built-in modules
(``_socket``, ``_json``, ``_signal``: not ``socket``, ``json`` nor ``signal``, whose enums and
regular expressions cost ~20 ms).
"""

from __future__ import annotations

import os
import sys

from backbeat.core import templatekey
from backbeat.core.templatekey import RELAYED


def entry() -> None:
    """Run the ``backbeat`` command: served by the warm template when one is up, else here."""
    code = serve()
    if code is None:
        from backbeat.cli.command import entry as run_here

        run_here()
        return
    os._exit(code)


def _dumps(obj: object) -> str:
    """JSON of plain data (``json`` costs ~10 ms to import; ``_json`` escapes the strings)."""
    from _json import encode_basestring_ascii as string  # type: ignore[import-not-found]

    if isinstance(obj, str):
        return string(obj)
    if obj is None or isinstance(obj, bool):
        return {None: "null", True: "true", False: "false"}[obj]
    if isinstance(obj, int):
        return int.__repr__(obj)
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(map(_dumps, obj)) + "]"
    if isinstance(obj, dict):
        return "{" + ",".join(f"{string(k)}:{_dumps(v)}" for k, v in obj.items()) + "}"
    raise TypeError(type(obj).__name__)


def _request(key: str) -> bytes:
    import _signal  # type: ignore[import-not-found]

    ignored = [getattr(_signal, n) for n in RELAYED if _signal.getsignal(getattr(_signal, n)) == _signal.SIG_IGN]
    return _dumps({"op": "command", "key": key, "argv": sys.argv, "orig_argv": getattr(sys, "orig_argv", []),
                   **templatekey.context(), "ignored": ignored}).encode("utf-8")


def serve() -> int | None:
    """The served command's exit status, or None when no template serves it (run it here)."""
    if templatekey.switched_off():
        return None
    key = templatekey.context_key()
    where = templatekey.folder() if key else None
    path = templatekey.socket_path(key, where) if key and where else None
    if key is None or path is None:
        return None
    import _socket  # type: ignore[import-not-found]

    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    try:
        conn.settimeout(templatekey.ANSWER_S)
        conn.connect(path)
        if templatekey.peer_uid(conn) != os.geteuid():
            return None
        here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)  # (the working folder, even if removed)
        try:
            fds = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in (0, 1, 2, here))
            conn.sendmsg([_request(key)], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        finally:
            os.close(here)
        if conn.recv(64) != b"ok":
            conn.close()
            return None
        relay = _Relay(conn)
    except (OSError, ValueError, TypeError):
        conn.close()
        return None
    try:
        conn.send(b"go")  # (from here on, the command is the template's to run: no timeout)
        conn.settimeout(None)
    except OSError:
        relay.restore()
        return None
    finally:
        relay.unblock()
    return relay.wait()


class _Relay:
    """The served command's signals and end, seen from the client."""

    def __init__(self, conn: object) -> None:
        import _signal

        self.conn, self.started = conn, False
        # (blocked until the template was told ``go``: one arriving meanwhile is relayed after it)
        self.blocked = {getattr(_signal, n) for n in (*RELAYED, "SIGTSTP")}
        _signal.pthread_sigmask(_signal.SIG_BLOCK, self.blocked)
        for name in (*RELAYED, "SIGTSTP"):
            sig = getattr(_signal, name)
            if _signal.getsignal(sig) != _signal.SIG_IGN:
                _signal.signal(sig, self.stop if name == "SIGTSTP" else self.forward)

    def unblock(self) -> None:
        import _signal

        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, self.blocked)

    def forward(self, sig: int, _frame: object) -> None:
        try:
            self.conn.send(b"signal %d" % sig)  # type: ignore[attr-defined]
        except OSError:
            pass

    def stop(self, _sig: int, _frame: object) -> None:
        """Ctrl-Z: the command stops, then this process (``fg`` sends SIGCONT: relayed)."""
        import _signal

        self.forward(_signal.SIGSTOP, None)
        os.kill(os.getpid(), _signal.SIGSTOP)

    def wait(self) -> int | None:
        """The command's exit status (None: it declined, to be run here)."""
        while True:
            try:
                msg = self.conn.recv(64)  # type: ignore[attr-defined]
            except OSError:
                msg = b""
            word, _, arg = msg.partition(b" ")
            if word == b"pid":
                self.started = True
            elif word == b"exit" and arg.isdigit():
                return int(arg)
            elif word == b"signal" and arg.isdigit():
                return 128 + int(arg)
            elif word == b"declined" or (not msg and not self.started):
                self.conn.close()  # type: ignore[attr-defined]
                self.restore()
                return None
            elif not msg:
                os.write(2, b"backbeat: error: the warm template serving this command ended before it "
                            b"(run it again, or set BACKBEAT_TEMPLATE=off)\n")
                return 1

    def restore(self) -> None:
        """The signals' dispositions as they were (the command is to run in this process)."""
        import _signal

        for name in (*RELAYED, "SIGTSTP"):
            sig = getattr(_signal, name)
            if _signal.getsignal(sig) in (self.forward, self.stop):
                _signal.signal(sig, _signal.default_int_handler if name == "SIGINT" else _signal.SIG_DFL)
