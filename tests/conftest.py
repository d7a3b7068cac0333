"""Shared test helpers: fixture prefixes copied into ``tmp_path`` and the CLI in a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import cliserver

FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: backbeat's own small prefix for engine behaviour (cache, failures, concurrency)
RUN_PREFIX = FIXTURES / "run" / "prefix"
#: prefix of experiments also run by BEAT (expected results in ``exec/expected.json``)
EXEC_PREFIX = FIXTURES / "exec" / "prefix"

# the processes tests start get SIGINT and SIGHUP as from a terminal even when the suite itself was
# started with them ignored (in the background by a non-interactive shell, nohup): an ignored signal
# stays ignored across exec, and tests send them to their commands.  The suite itself stays immune
# to SIGHUP (nohup's intent): a handler of its own is reset to the default by exec, an ignore is not
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, lambda *_: None)

#: runs of the suite fork their own fork servers: no warm template outlives a test (those testing
#: templates switch them on in a folder of their own: tests/integration/test_template.py)
os.environ["BACKBEAT_TEMPLATE"] = "off"

_CLI = "import sys; from backbeat.cli import entry; sys.argv[0] = 'backbeat'; entry()"


def cli_command(*args: str) -> list[str]:
    """The argv running ``backbeat ARGS…`` with this interpreter."""
    return [sys.executable, "-c", _CLI, *map(str, args)]


def wait_until(condition: Callable[[], object], timeout: float = 30.0) -> bool:
    """Whether ``condition()`` holds within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def run_cli(*args: str | os.PathLike, timeout: float = 60, cwd: str | os.PathLike | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``backbeat ARGS…`` in a subprocess; return the completed process (text output).  It is forked
    from a preloaded server (:mod:`cliserver`) unless its environment needs a fresh interpreter."""
    environ = dict(os.environ)
    environ.pop("BACKBEAT_DEBUG", None)
    environ.pop("BACKBEAT_PREFIX", None)
    environ.update(env or {})
    if cliserver.forkable(environ):  # (forked from a preloaded server: tests/cliserver.py)
        return cliserver.run(cli_command(*map(str, args)), [str(a) for a in args], os.fspath(cwd or os.getcwd()),
                             environ, timeout)
    return subprocess.run(cli_command(*map(str, args)), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=environ)


def cli_json(*args: str | os.PathLike, timeout: float = 60, **kw) -> tuple[int, object, str]:
    """Run the CLI and parse its stdout as JSON: ``(exit code, document, stderr)``."""
    proc = run_cli(*args, timeout=timeout, **kw)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"stdout is not JSON (exit {proc.returncode}):\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}") from None
    return proc.returncode, doc, proc.stderr


_BATCH = r"""
import contextlib, io, json, sys
from backbeat import cli
out = []
for argv in json.loads(sys.argv[1]):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
    out.append([code, o.getvalue(), e.getvalue()])
print(json.dumps(out))
"""


def cli_batch(argvs: list[list[str]], timeout: float = 60) -> list[tuple[int, str, str]]:
    """Run many CLI invocations through ``backbeat.cli.main`` (:func:`backbeat.cli.command.main`) in ONE subprocess (startup once)."""
    proc = subprocess.run([sys.executable, "-c", _BATCH, json.dumps(argvs)], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return [tuple(r) for r in json.loads(proc.stdout)]


def page_cache(path: str | os.PathLike) -> tuple[int, int] | None:
    """(pages of a file in the page cache, those of them dirty: nothing started writing them to disk
    yet), from Linux ``cachestat`` (6.5+); None where there is none."""
    import ctypes

    class _Range(ctypes.Structure):
        _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]

    class _Stat(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint64) for n in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]

    if os.uname().machine not in ("x86_64", "aarch64"):  # (its number, 451, on these)
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        rng, st = _Range(0, 0), _Stat()
        if libc.syscall(451, fd, ctypes.byref(rng), ctypes.byref(st), 0) != 0:
            return None
    finally:
        os.close(fd)
    return st.cache, st.dirty


def writes_back(folder: str | os.PathLike) -> bool:
    """Whether dirty pages of files in ``folder`` are seen written back (``page_cache`` works and the
    file system writes them: tmpfs keeps them dirty)."""
    probe = Path(folder) / ".writeback-probe"
    probe.write_bytes(b"x" * 65536)
    try:
        os.sync()
        seen = page_cache(probe)
    finally:
        probe.unlink()
    return seen is not None and seen[0] > 0 and seen[1] == 0


def live_processes(marker: str) -> list:
    """Live processes (psutil) whose command line names ``marker`` (a run's processes all carry its
    prefix folder: the fork server and block processes are forks of the command)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def flock_holders(path: str | os.PathLike) -> set[int]:
    """The pids holding a ``flock`` on the file at ``path`` (``/proc/locks``, matched by device and
    inode; the pid there is the one that took the lock); empty if there is none or no such file."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    holders = set()
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF" ("1: -> FLOCK …": a waiter)
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[5].count(":") != 2:
            continue
        major, minor, inode = fields[5].split(":")
        with contextlib.suppress(ValueError):
            if (int(major, 16), int(minor, 16), int(inode)) == (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino):
                holders.add(int(fields[4]))
    return holders


def template_pid(lock: str | os.PathLike) -> int | None:
    """The pid of the warm template holding ``lock`` (a ``<key>.lock`` file), or None: the pid
    written in the file, trusted only if that process holds the file's ``flock`` and is a template
    server.  A lock file nobody holds is a gone template's (killed with SIGKILL: never removed): the
    pid in it may be another process's by now (pid_max may be 32768); one held by another process
    (a template starting, not yet written there; a client or a template sweeping) names none."""
    try:
        text = Path(lock).read_text().strip()
    except OSError:  # (swept meanwhile)
        return None
    if not text.isdigit() or int(text) not in flock_holders(lock):
        return None
    try:
        with open(f"/proc/{text}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return None
    return int(text) if b"backbeat.processes.templateserver" in cmdline else None


def live_templates(folder: str | os.PathLike) -> dict[str, int]:
    """key -> pid of the warm templates of ``folder`` that live (:func:`template_pid`)."""
    found = {}
    for lock in Path(folder).glob("*.lock"):
        pid = template_pid(lock)
        if pid is not None:
            found[lock.stem] = pid
    return found


def kill_templates(folder: str | os.PathLike, timeout: float = 10.0) -> None:
    """SIGKILL the warm templates of ``folder`` that still live: those holding their ``<key>.lock``
    (:func:`template_pid`; never a pid read from a lock file alone).  A lock held by a process
    whose pid is not (yet) in it — a template just starting, a process checking or sweeping the
    lock — is looked at again until nobody holds it or its template wrote its pid, for at most
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        held = False
        for lock in Path(folder).glob("*.lock"):
            pid = template_pid(lock)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            held = held or bool(flock_holders(lock))
        if not held or time.monotonic() >= deadline:
            return
        time.sleep(0.02)


@contextlib.contextmanager
def private_tmpdir() -> Iterator[Path]:
    """A fresh, short temporary folder, removed on exit with whatever is left in it.

    For processes that are killed on purpose (SIGKILL cannot be cleaned up after): run them with
    ``TMPDIR`` set to it, so that their ``bb-ctl-*`` control folders never stay in the system's
    temporary folder.  Short, because ZeroMQ ``ipc://`` paths must stay under ~100 bytes.
    """
    folder = Path(tempfile.mkdtemp(prefix="bbt-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def threads_besides_main() -> list[str]:
    """This process's threads that would make a :class:`~backbeat.processes.workerpool.ForkServer`
    fall back to multiprocessing: Python threads besides the main one, and ZeroMQ's I/O threads."""
    import threading

    names = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    for tid in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else []:
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/comm") as f:
            comm = f.read().strip()
            if comm.startswith("ZMQbg"):
                names.append(comm)
    return sorted(names)


@pytest.fixture(scope="module")
def no_threads_left() -> Iterator[None]:
    """Fails the module if it leaves threads behind (a ZeroMQ context not terminated…): later tests
    in the same process would see a threaded parent, and their fork servers fall back."""
    before = threads_besides_main()
    yield
    left = threads_besides_main()
    for name in before:
        if name in left:
            left.remove(name)
    assert not left, f"threads left behind by the module: {left}"


@pytest.fixture
def copy_prefix(tmp_path: Path) -> Callable[..., Path]:
    """``copy_prefix(src=RUN_PREFIX, name="prefix")``: a private copy of a fixture prefix."""

    def copy(src: str | os.PathLike = RUN_PREFIX, name: str = "prefix") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache", "__pycache__"))
        return dst

    return copy


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the Dask tests last: an in-process Dask scheduler leaves threads behind (its offload
    pool) for the rest of the session, and a fork server started in a process with threads
    falls back to multiprocessing — the tests after them would no longer exercise the zygote.  Under
    pytest-xdist only ``--dist loadfile --no-loadscope-reorder`` keeps this order (by default it hands
    out the files with the most tests first: Dask would run in the middle of its worker's share)."""
    items.sort(key=lambda item: item.path.name == "test_dask.py")  # (stable: the order stays otherwise)
