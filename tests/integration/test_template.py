"""The warm template (``backbeat.processes.template``): real template processes, sockets and CLI runs.

Each test switches templates on in a private folder of its own (the rest of the suite runs
with ``BACKBEAT_TEMPLATE=off``) and kills the templates it started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from backbeat.core import config
from backbeat.processes import template
from conftest import RUN_PREFIX, kill_templates, live_templates, wait_until

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "_template_client.py"
BACKBEAT = [str(Path(sys.executable).parent / "backbeat")]  # (installed with backbeat: a template serves only it)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _templates(folder: Path) -> dict[str, int]:
    """key -> pid of the live templates of ``folder`` (those holding their lock files: from the
    start of their slow start on)."""
    return live_templates(folder)


def _serving(folder: Path) -> dict[str, int]:
    """:func:`_templates` whose socket is bound and listening (``/proc/net/unix``: a stale socket
    file, its template gone, is not listed)."""
    with open("/proc/net/unix") as f:  # "Num RefCount Protocol Flags Type St Inode Path"
        listening = {fields[7] for fields in map(str.split, f.readlines()[1:])
                     if len(fields) >= 8 and int(fields[3], 16) & 0x10000}  # (__SO_ACCEPTCON)
    return {key: pid for key, pid in _templates(folder).items() if str(folder / f"{key}.sock") in listening}


@pytest.fixture
def env(tmp_path):
    short = Path(tempfile.mkdtemp(prefix="bbt-", dir="/tmp"))  # (a socket's path is at most 107 bytes)
    folder = short / "templates"
    environ = dict(os.environ, BACKBEAT_TEMPLATE="on", BACKBEAT_TEMPLATE_DIR=str(folder),
                   BACKBEAT_TEMPLATE_IDLE="120", BB_TEMPLATE_MARK="one")
    yield environ
    kill_templates(folder)
    shutil.rmtree(short, ignore_errors=True)


def client(env: dict, mode: str, out: Path, where: str = "here") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CLIENT), mode, str(out), where], env=env, cwd=out.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def first_line(proc: subprocess.Popen) -> dict:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    return json.loads(line)


def warm(env: dict, tmp_path: Path) -> int:
    """Start the template of the client's context (the first client forks its own zygote); its pid."""
    proc = client(env, "report", tmp_path / "first.json")
    assert first_line(proc)["kind"] == "zygote"  # nobody answered: its own zygote, a template launched
    _out, err = proc.communicate(timeout=60)
    folder = Path(env["BACKBEAT_TEMPLATE_DIR"])
    assert wait_until(lambda: bool(_serving(folder)), timeout=20), f"no template came up: {err}"
    assert (folder.stat().st_mode & 0o777) == 0o700
    (pid,) = _serving(folder).values()
    return pid


def test_a_run_zygote_forked_from_the_template_adopts_the_run_context(env, tmp_path):
    pid = warm(env, tmp_path)
    out = tmp_path / "report.json"
    proc = client(env, "report", out)
    started = first_line(proc)
    assert started["kind"] == "template"
    assert json.loads(proc.stdout.readline()) == {"exit": "ok", "code": 0}
    proc.communicate(timeout=30)
    seen = json.loads(out.read_text())
    assert seen["zygote"] == started["zygote"] and seen["zygote"] != proc.pid
    assert seen["cwd"] == str(tmp_path) and seen["umask"] == 0o027 and seen["mark"] == "one"
    assert seen["nofile"] <= 999 and seen["stdout_is_stderr"] and len(seen["cpus"]) == 1
    assert wait_until(lambda: not _alive(started["zygote"]))  # ended with its run
    assert _alive(pid)  # the template stays for the next runs
    proc = client(env, "report", out, "gone")  # a working folder removed: still the run's
    assert first_line(proc)["kind"] == "template"
    proc.communicate(timeout=30)
    assert json.loads(out.read_text())["cwd"] == f"{tmp_path / 'gone'} (deleted)"


def test_killing_the_command_kills_its_zygote_and_blocks_not_the_template(env, tmp_path):
    pid = warm(env, tmp_path)
    out = tmp_path / "hold.pid"
    proc = client(env, "hold", out)
    started = first_line(proc)
    assert started["kind"] == "template"
    assert wait_until(out.exists), "the job never started"
    block = int(out.read_text())
    assert _alive(block) and _alive(started["zygote"])
    proc.kill()
    proc.communicate(timeout=30)
    assert wait_until(lambda: not _alive(block) and not _alive(started["zygote"]), timeout=10)
    assert _alive(pid)


def test_a_template_told_to_stop_lets_the_runs_it_serves_end(env, tmp_path):
    """Its socket removed (a cleaner of the temporary folder) or SIGTERM: it takes no new run, and
    leaves once the runs it serves have ended — never killing them."""
    pid = warm(env, tmp_path)
    out = tmp_path / "hold.pid"
    proc = client(env, "hold", out)
    started = first_line(proc)
    assert started["kind"] == "template" and wait_until(out.exists), "the job never started"
    block = int(out.read_text())
    (sock,) = Path(env["BACKBEAT_TEMPLATE_DIR"]).glob("*.sock")
    sock.unlink()
    os.kill(pid, signal.SIGTERM)
    time.sleep(1.5)
    assert _alive(block) and _alive(started["zygote"]) and _alive(pid)  # the run goes on
    proc.kill()  # the run ends (here: its command killed)
    proc.communicate(timeout=30)
    assert wait_until(lambda: not _alive(block) and not _alive(pid), timeout=15), "the template did not leave"


def test_another_context_gets_another_template_and_a_stale_one_is_replaced(env, tmp_path):
    pid = warm(env, tmp_path)
    folder = Path(env["BACKBEAT_TEMPLATE_DIR"])
    other = dict(env, BB_TEMPLATE_MARK="two")  # another environment: never served by the first
    proc = client(other, "report", tmp_path / "other.json")
    assert first_line(proc)["kind"] == "zygote"
    proc.communicate(timeout=60)
    assert wait_until(lambda: len(_templates(folder)) == 2, timeout=60)
    os.kill(pid, signal.SIGKILL)  # its socket file stays behind, stale
    assert wait_until(lambda: not _alive(pid))
    proc = client(env, "report", tmp_path / "again.json")
    assert first_line(proc)["kind"] == "zygote"  # nobody answers the stale socket: it runs without
    proc.communicate(timeout=60)
    assert wait_until(lambda: len(_serving(folder)) == 2 and pid not in _serving(folder).values(), timeout=60)
    proc = client(env, "report", tmp_path / "served.json")
    assert first_line(proc)["kind"] == "template"
    proc.communicate(timeout=30)


def test_an_idle_template_leaves_and_nothing_of_it_nor_of_older_ones(env, tmp_path):
    """It removes its socket and lock when it leaves (its log stays); starting, the leftovers of
    templates gone (a ``.lock`` nobody holds, a stale ``.sock``, a ``.failed`` mark older than 10
    minutes, a log untouched for a week, an empty log at once)."""
    env["BACKBEAT_TEMPLATE_IDLE"] = "0.5"
    folder = Path(env["BACKBEAT_TEMPLATE_DIR"])
    folder.mkdir(mode=0o700, parents=True)
    old = ["gone.lock", "gone.sock", "old.failed", "ancient.log", "empty.log"]
    for name in [*old, "new.failed", "recent.log"]:
        (folder / name).write_text("" if name != "ancient.log" and name != "recent.log" else "said\n")
    os.utime(folder / "old.failed", (time.time() - 3600,) * 2)
    os.utime(folder / "ancient.log", (time.time() - 8 * 86400,) * 2)
    pid = warm(env, tmp_path)
    assert not any((folder / name).exists() for name in old) and (folder / "new.failed").exists()
    assert wait_until(lambda: not _alive(pid), timeout=30)
    names = sorted(p.name for p in folder.iterdir())
    own = [n for n in names if n.endswith(".log") and n != "recent.log"]  # (its log stays)
    assert len(own) == 1 and sorted(set(names) - set(own)) == ["new.failed", "recent.log"], names


def test_switched_off_by_the_environment_or_the_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKBEAT_TEMPLATE", "off")
    assert not template.enabled()
    monkeypatch.setenv("BACKBEAT_TEMPLATE", "on")
    assert template.enabled() and not template.enabled(False)
    rc = tmp_path / ".backbeatrc"
    rc.write_text('{"template": false}')
    assert config.load(cwd=tmp_path, home=tmp_path / "nohome").template is False
    rc.write_text('{"template": "no"}')
    with pytest.raises(config.ConfigError, match="`template' must be true or false"):
        config.load(cwd=tmp_path, home=tmp_path / "nohome")
    assert template.context_key(("numpy", "mymodule")) is None  # only backbeat's own and its libraries


def test_a_command_run_here_warms_a_template_only_when_templates_are_on(monkeypatch):
    from types import SimpleNamespace

    from backbeat import api

    warmed: list = []
    monkeypatch.setattr(template, "warm_next", lambda setting=None: warmed.append(setting))
    for switch, setting, expected in (("on", None, [None]), ("on", True, [True]), ("on", False, []),
                                      ("off", None, []), ("off", True, [])):
        monkeypatch.setenv("BACKBEAT_TEMPLATE", switch)
        monkeypatch.setattr(config, "active", lambda setting=setting: SimpleNamespace(template=setting))
        warmed.clear()
        api.warm_template()
        assert warmed == expected, (switch, setting)


def test_cli_runs_share_the_template_and_give_the_same_results(env, tmp_path):
    prefix = tmp_path / "prefix"
    shutil.copytree(RUN_PREFIX, prefix)
    folder = Path(env["BACKBEAT_TEMPLATE_DIR"])

    def run(cache: str) -> dict:
        proc = subprocess.run([*BACKBEAT, "--prefix", str(prefix), "--cache", str(tmp_path / cache),
                               "experiments", "run", "run/run/short/1/base", "--json"],
                              env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    first = run("c1")
    assert wait_until(lambda: bool(_serving(folder)), timeout=60)
    (pid,) = _serving(folder).values()

    def children_cpu() -> int:  # ticks of the reaped children of the template: its zygotes
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[13]) + int(fields[14])

    assert wait_until(lambda: any(folder.glob("*.sock")), timeout=60)
    before = children_cpu()
    second = run("c2")
    assert _templates(folder) == {next(iter(_templates(folder))): pid}  # the same template
    assert wait_until(lambda: children_cpu() > before, timeout=10), "the run's zygote was not the template's"

    def outcome(doc: dict) -> list:
        return {name: (b["status"], b["key"], b.get("outputs")) for name, b in doc["blocks"].items()}

    assert outcome(first) == outcome(second) and {s for s, _k, _o in outcome(first).values()} == {"ran"}
    assert first["results"] == second["results"]


def test_only_the_installed_command_gets_a_template(tmp_path, monkeypatch):
    """``python -m backbeat`` puts the working folder first on ``sys.path``: a ``queue.py`` there
    would be imported by the template (user code, unseen by its key), so it gets none."""
    assert Path(BACKBEAT[0]).is_file(), "the `backbeat' console script is installed beside the interpreter"
    monkeypatch.setattr(sys, "path", [os.path.dirname(sys.executable), *sys.path[1:]])
    assert template.context_key(("numpy",)) is not None
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path[1:]])
    assert template.context_key(("numpy",)) is None
    monkeypatch.setattr(sys, "path", [os.path.dirname(sys.executable), *sys.path[1:]])
    monkeypatch.setattr(sys, "warnoptions", [])
    key = template.context_key(("numpy",))
    monkeypatch.setattr(sys, "warnoptions", ["error"])  # (-W error: another context)
    assert template.context_key(("numpy",)) not in (None, key)


def test_a_malformed_request_does_not_end_the_template(env, tmp_path):
    import socket

    pid = warm(env, tmp_path)
    (sock,) = Path(env["BACKBEAT_TEMPLATE_DIR"]).glob("*.sock")
    for garbage in (b"not json", b'{"op": "zygote", "key": "another"}', b'{"op": "zygote"}'):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
            conn.settimeout(5)
            conn.connect(str(sock))
            conn.send(garbage)
            answer = conn.recv(1 << 16)
        assert answer == b"" or not json.loads(answer)["ok"]
    assert _alive(pid)
    proc = client(env, "report", tmp_path / "after.json")
    assert first_line(proc)["kind"] == "template"
    proc.communicate(timeout=30)


def test_concurrent_first_runs_start_one_template(env, tmp_path):
    folder = Path(env["BACKBEAT_TEMPLATE_DIR"])
    procs = [client(env, "report", tmp_path / f"c{i}.json") for i in range(3)]
    for proc in procs:
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    assert wait_until(lambda: any(folder.glob("*.sock")), timeout=60)
    time.sleep(0.5)  # (a second template, had one started, would have given up or be alive by now)
    launched = [p for p in command_lines() if str(folder) in p]
    assert len(_templates(folder)) == 1 and len(launched) == 1, launched


def command_lines() -> list[str]:
    """Command lines of every process (the templates are re-parented: found by their folder argument)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return found


#: a template whose slow start (preloading numpy, then warming up) pauses once numpy is imported
_SLOW_START = """
import sys, time
import backbeat.processes.templateserver as templateserver
from backbeat.processes import template
def paused():
    open(sys.argv[3], "w").close()
    time.sleep(120)
templateserver.warmup.quiet_blas = paused
templateserver.Template(sys.argv[1], sys.argv[2], ("numpy",), template.ENTRY).main()
"""


def test_a_starting_template_writes_its_pid_in_its_lock_before_its_slow_start(tmp_path):
    """A lock file held names its holder from the start: never the stale pid of a template killed
    earlier (a process that may be another one by now), while its successor starts."""
    lock = tmp_path / "k.lock"
    lock.write_text("4194303999\n")  # a gone template's (longer than any pid: all of it replaced)
    mark = tmp_path / "preloaded"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_START, "k", str(tmp_path), str(mark)])
    try:
        assert wait_until(mark.exists, timeout=60), "the template never preloaded"
        assert lock.read_text() == f"{proc.pid}\n" and not any(tmp_path.glob("*.sock"))
        assert live_templates(tmp_path) == {"k": proc.pid}
        kill_templates(tmp_path)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


def test_kill_templates_signals_only_a_pid_holding_its_lock(tmp_path):
    """A lock file held by a process that has not written its pid in it (a template just starting,
    a client checking the lock) names a stale pid — here a live unrelated process: never signalled."""
    import fcntl

    other = subprocess.Popen(["sleep", "120"])
    (tmp_path / "k.lock").write_text(f"{other.pid}\n")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, fcntl, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print(flush=True); time.sleep(120)",
                               str(tmp_path / "k.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "\n"  # (it holds the lock)
        with open(tmp_path / "k.lock") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert live_templates(tmp_path) == {}
        kill_templates(tmp_path, timeout=0.5)
        with pytest.raises(subprocess.TimeoutExpired):  # (a SIGKILL sent would end it within that)
            other.wait(timeout=2)
        assert holder.poll() is None
    finally:
        for proc in (other, holder):
            proc.kill()
            proc.wait()
