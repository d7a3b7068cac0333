"""The ``backbeat`` command served by the warm template (``cli/client.py``, ``processes/templateserver.py``).

Real templates, sockets and commands: what a served command prints, exits with and sees is what
the same command run directly prints, exits with and sees.  ``_served.py`` is the console
script's path, telling on descriptor 3 whether a template served it.  Signals and ``kill -9``:
``tests/faults/test_template_kills.py``.
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
from pathlib import Path

import pytest

from backbeat.core import templatekey
from backbeat.processes import template
from conftest import RUN_PREFIX, kill_templates, live_templates, wait_until

SERVED = Path(__file__).resolve().parent / "_served.py"
EXPERIMENT = "run/run/short/1/base"


def _templates(folder: Path) -> list[int]:
    return list(live_templates(folder).values())


def backbeat(env: dict, *args: str, cwd: Path, umask: int | None = None, **kw) -> tuple[str, subprocess.CompletedProcess]:
    """Run ``backbeat ARGS…`` as the installed command: ``("served" or "here", completed process)``."""
    r, w = os.pipe()

    def setup() -> None:
        if umask is not None:
            os.umask(umask)

    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    try:
        proc = subprocess.run([sys.executable, str(SERVED), str(w), *args], env=env, cwd=cwd, text=True, timeout=120,
                              pass_fds=(w,), preexec_fn=setup, **kw)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        how = f.read().decode()
    return how, proc


def start_template(env: dict, cwd: Path) -> int:
    how, proc = backbeat(env, "--version", cwd=cwd)
    assert how == "here" and proc.returncode == 0, proc.stderr  # none yet: run here, one started
    folder = Path(env[templatekey.FOLDER])
    assert wait_until(lambda: any(folder.glob("*.sock")), timeout=60), "no template came up"
    (pid,) = _templates(folder)
    return pid


@pytest.fixture(scope="module")
def served_env():
    short = Path(tempfile.mkdtemp(prefix="bbs-", dir="/tmp"))  # (a socket's path is at most 107 bytes)
    env = dict(os.environ, BACKBEAT_TEMPLATE="on", BACKBEAT_TEMPLATE_DIR=str(short / "t"),
               BACKBEAT_TEMPLATE_IDLE="120")
    for var in ("BACKBEAT_DEBUG", "BACKBEAT_PREFIX", "COLUMNS", "LINES"):
        env.pop(var, None)
    start_template(env, short)
    yield env
    kill_templates(short / "t")
    shutil.rmtree(short, ignore_errors=True)


def _stable(text: str) -> str:
    """Output without its timings (progress lines, durations, the order blocks running together end in)."""
    lines = [line for line in text.splitlines() if not re.search(r"/s\b|units", line)]
    return re.sub(r"\(\d+(\.\d+)? s\)", "(T s)", "\n".join(sorted(lines)))


def test_a_served_command_answers_as_a_direct_one(served_env, tmp_path):
    shutil.copytree(RUN_PREFIX, tmp_path / "prefix", ignore=shutil.ignore_patterns("cache"))
    off = dict(served_env, BACKBEAT_TEMPLATE="off")
    cases = [("--version",), ("nosuch",), ("-p", "prefix", "experiments", "run", "user/nosuch/1/x"),
             ("-p", "prefix", "-c", "cache", "experiments", "run", EXPERIMENT),
             ("-p", "prefix", "-c", "cache", "experiments", "run", EXPERIMENT, "--json")]
    for args in cases:
        results = {}
        for how_wanted, env in (("here", off), ("served", served_env)):
            shutil.rmtree(tmp_path / "cache", ignore_errors=True)
            how, proc = backbeat(env, *args, cwd=tmp_path, umask=0o077)  # (a relative prefix: the working folder's)
            assert how == how_wanted, (args, proc.stderr)
            assert "Traceback" not in proc.stderr, proc.stderr
            modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in (tmp_path / "cache").rglob("*")}
            results[how] = (proc.returncode, proc.stdout, _stable(proc.stderr), modes)
        if "--json" in args:  # (timings differ: the same blocks, keys and results)
            docs = [json.loads(results[h][1]) for h in ("here", "served")]
            outcome = [({b: (v["status"], v["key"]) for b, v in d["blocks"].items()}, d["results"], d["status"])
                       for d in docs]
            assert outcome[0] == outcome[1] and docs[0]["status"] == "ok"
            results = {h: (r[0], "", r[2], r[3]) for h, r in results.items()}
        # (the stat memo: a served run remembers nothing before its answer — its outputs are synced after
        # it, docs/execution.md §3b —, so a cold one may have none; what it has, it has as a direct one)
        memo = {h: {p: m for p, m in r[3].items() if p.startswith("cache/.memo")} for h, r in results.items()}
        assert all(memo["here"].get(p) == m for p, m in memo["served"].items()), memo
        results = {h: (*r[:3], {p: m for p, m in r[3].items() if p not in memo[h]}) for h, r in results.items()}
        modes_diff = {p: (results["here"][3].get(p), results["served"][3].get(p))
                      for p in set(results["here"][3]) ^ set(results["served"][3])
                      | {p for p in results["here"][3] if results["here"][3][p] != results["served"][3].get(p)}}
        assert results["served"] == results["here"], (args, "modes here/served that differ:", modes_diff)
        code, out, err, modes = results["served"]
        if args[0] == "nosuch":
            assert code == 2 and "invalid choice: 'nosuch'" in err
        elif "user/nosuch/1/x" in args:
            assert code == 1 and err.startswith("backbeat: error:") and "user/nosuch/1/x" in err, err
        elif "run" in args:
            assert code == 0 and modes and all(m & 0o077 == 0 for m in modes.values()), modes  # (umask 077)


def test_a_terminal_and_the_environment_are_the_clients(served_env, tmp_path):
    """The client's terminal (its size, through the descriptors) and environment (``COLUMNS``:
    not part of the key, replacing the template's) are what the served command sees."""
    outputs = {}
    for columns in (None, "40"):
        for how_wanted, env in (("here", dict(served_env, BACKBEAT_TEMPLATE="off")), ("served", served_env)):
            if columns:
                env = dict(env, COLUMNS=columns, OLDPWD="/", _="/usr/bin/other", SHLVL="7")
            leader, follower = pty.openpty()
            fcntl_size = struct.pack("HHHH", 24, 60, 0, 0)
            import fcntl

            fcntl.ioctl(follower, termios.TIOCSWINSZ, fcntl_size)
            chunks: list[bytes] = []
            reader = threading.Thread(target=_drain, args=(leader, chunks))
            reader.start()
            try:
                how, proc = backbeat(env, "--help", cwd=tmp_path, stdin=follower, stdout=follower, stderr=follower)
            finally:
                os.close(follower)
                reader.join(10)
                os.close(leader)
            assert how == how_wanted and proc.returncode == 0
            outputs[(columns, how)] = b"".join(chunks).decode()
        assert outputs[(columns, "served")] == outputs[(columns, "here")]
        width = max(map(len, outputs[(columns, "served")].splitlines()))
        assert "positional arguments" in outputs[(columns, "served")] and width <= int(columns or 60), width
    assert outputs[(None, "served")] != outputs[("40", "served")]


def _drain(fd: int, chunks: list[bytes]) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # (EIO: the terminal's last holder closed it)
            return
        if not data:
            return
        chunks.append(data)


def test_stdin_and_a_declining_working_folder(served_env, tmp_path):
    """The served command reads the client's stdin; a working folder whose ``.backbeatrc`` says
    ``"template": false`` is not served (the command runs in the client)."""
    (tmp_path / "input.txt").write_text("{not json")
    (tmp_path / "prefix").mkdir()
    with open(tmp_path / "input.txt") as stdin:
        how, proc = backbeat(served_env, "-p", "prefix", "attest", "verify", "/dev/stdin", cwd=tmp_path, stdin=stdin)
    with open(tmp_path / "input.txt") as stdin:
        _, direct = backbeat(dict(served_env, BACKBEAT_TEMPLATE="off"), "-p", "prefix", "attest", "verify",
                             "/dev/stdin", cwd=tmp_path, stdin=stdin)
    assert how == "served" and proc.returncode == direct.returncode != 0
    assert proc.stderr == direct.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "not a file" not in proc.stderr  # (its stdin: the file, not /dev/null)
    (tmp_path / ".backbeatrc").write_text('{"template": false}')
    how, proc = backbeat(served_env, "--version", cwd=tmp_path)
    assert how == "here" and proc.stdout.startswith("backbeat ")


def test_a_stale_or_mismatched_template_is_not_used(tmp_path):
    short = Path(tempfile.mkdtemp(prefix="bbs-", dir="/tmp"))
    folder = short / "t"
    env = dict(os.environ, BACKBEAT_TEMPLATE="on", BACKBEAT_TEMPLATE_DIR=str(folder), BACKBEAT_TEMPLATE_IDLE="60",
               BB_MARK="one")
    try:
        pid = start_template(env, tmp_path)
        assert backbeat(env, "--version", cwd=tmp_path)[0] == "served"
        how, proc = backbeat(dict(env, BB_MARK="two"), "--version", cwd=tmp_path)  # another context
        assert how == "here" and proc.returncode == 0
        assert wait_until(lambda: len(_templates(folder)) == 2, timeout=60)  # (it started its own)
        os.kill(pid, signal.SIGKILL)  # its socket stays behind: stale
        assert wait_until(lambda: pid not in _templates(folder))
        how, proc = backbeat(env, "--version", cwd=tmp_path)
        assert how == "here" and proc.stdout.startswith("backbeat ") and proc.returncode == 0
    finally:
        kill_templates(folder)
        shutil.rmtree(short, ignore_errors=True)


def test_a_malformed_answer_is_no_zygote(monkeypatch):
    """``open_zygote`` facing a server that answers garbage: no zygote, no exception."""
    short = Path(tempfile.mkdtemp(prefix="bbs-", dir="/tmp"))  # (a socket's path is at most 107 bytes)
    monkeypatch.setattr(template, "context_key", lambda *a: "k" * 32)
    monkeypatch.setattr(template, "folder", lambda: str(short))
    path = short / f"{'k' * 32}.sock"
    for garbage in (b'{"ok": true, "pid": "12"}', b"[1, 2]", b'{"ok": true}', b"\xff", b'"ok"'):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as srv:
            srv.bind(str(path))
            srv.listen(1)

            def answer(srv=srv, garbage=garbage) -> None:
                conn, _ = srv.accept()
                with conn:
                    socket.recv_fds(conn, 1 << 20, 3)
                    conn.send(garbage)

            thread = threading.Thread(target=answer)
            thread.start()
            assert template.open_zygote(("numpy",)) is None
            thread.join(5)
        path.unlink()
    shutil.rmtree(short, ignore_errors=True)


def test_the_key_ignores_per_session_variables(monkeypatch):
    monkeypatch.setattr(sys, "path", [os.path.dirname(sys.executable), *sys.path[1:]])
    key = templatekey.context_key()
    assert key is not None
    for var, value in (("_", "/usr/bin/a-wrapper"), ("OLDPWD", "/"), ("PWD", "/x"), ("SHLVL", "9"),
                       ("SSH_CONNECTION", "1 2 3 4"), ("XDG_SESSION_ID", "c7"), ("WINDOWID", "1")):
        monkeypatch.setenv(var, value)
    assert templatekey.context_key() == key
    monkeypatch.setenv("BB_ANOTHER", "1")  # (any other variable may change what it imports)
    assert templatekey.context_key() not in (None, key)


def test_the_key_is_computed_once_per_process_and_again_in_a_new_one(tmp_path, monkeypatch):
    """A command not served asks for its key three times: the package is stat'ed once; a changed
    file changes the key of a new process (and of a template checking its own, ``fresh``), and
    of a long-lived process a second later (it does not keep asking for the old template)."""
    monkeypatch.setattr(sys, "path", [os.path.dirname(sys.executable), *sys.path[1:]])
    module = tmp_path / "m.py"
    module.write_text("a = 1\n")
    monkeypatch.setattr(templatekey, "PACKAGE", str(tmp_path))
    walks, walk = [], templatekey._package_signature
    monkeypatch.setattr(templatekey, "_package_signature", lambda: walks.append(1) or walk())
    now = [0.0]  # (the clock stands still until said: a stall of a second under load must not change the key)
    monkeypatch.setattr(templatekey, "_clock", lambda: now[0])
    monkeypatch.setattr(templatekey, "_LAST", None)  # (nothing remembered from an earlier test)
    key = templatekey.context_key()
    assert key is not None and templatekey.context_key() == key and len(walks) == 1
    module.write_text("a = 22\n")
    assert templatekey.context_key() == key  # (this process's: computed once)
    assert templatekey.context_key(fresh=True) not in (None, key)
    monkeypatch.setattr(os, "getpid", lambda: 1 << 30)  # (another process)
    module.write_text("a = 333\n")
    later = templatekey.context_key()
    assert later not in (None, key) and len(walks) == 3
    module.write_text("a = 4444\n")
    now[0] = templatekey.REUSE_S / 2
    assert templatekey.context_key() == later and len(walks) == 3  # (within the second: reused)
    now[0] = templatekey.REUSE_S
    assert templatekey.context_key() not in (None, key, later) and len(walks) == 4
