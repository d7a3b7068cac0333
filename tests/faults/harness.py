"""The fault-injection harness: real CLI runs of the engine fixture, disturbed, then checked.

A :class:`Scene` is a private copy of ``tests/fixtures/run/prefix`` (plus the hostile
algorithm of ``tests/fixtures/faults``), a cache and a private temporary folder (``TMPDIR``
of every process started: control folders land there, and must not stay).  After a fault,
:meth:`Scene.check_recovered` re-runs the experiment and checks what every fault must leave:
no process, no temporary file, journal, progress file or control folder, ``cache verify``
clean, and the same results, keys and output digests as a clean run of the same experiment
in a fresh cache.

Random moments come from ``random.Random(SEED)``: set ``BACKBEAT_FAULT_SEED`` to replay a
failure (every assertion message names the seed).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from backbeat.cache.tools import verify_cache
from backbeat.data import cachereader
from conftest import FIXTURES, RUN_PREFIX, cli_command, kill_templates, live_templates
from conftest import live_processes as processes

SEED = int(os.environ.get("BACKBEAT_FAULT_SEED") or random.SystemRandom().randrange(1 << 30))
RNG = random.Random(SEED)
EXP_DIR = Path("experiments/run/run/pipeline/1")
RESULTS = {"analysis": [{"start": 0, "end": 5, "data": {"count": 6, "sum": 81}}]}


#: prepended to the command's ``-c`` code: a thread alive before its fork server starts
_THREAD = "import threading, time; threading.Thread(target=time.sleep, args=(3600,), daemon=True).start(); "


def hostile(**parameters) -> dict:
    """The ``second`` block of the pipeline, replaced by the hostile algorithm."""
    return {"algorithm": "faults/hostile/1", "inputs": {"value": "value"}, "outputs": {"out": "out"},
            "parameters": parameters}


def ended(proc: psutil.Process) -> bool:
    """Whether ``proc`` has ended (or is a zombie). One reaped between two looks is ended too: asking
    ``is_running()`` then ``status()`` races with its parent's waitpid (NoSuchProcess, a CI flake)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(condition: Callable[[], object], timeout: float = 30.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())


def output_digests(cache: Path, report: dict) -> dict[str, str]:
    """``{block.output: stored content digest}`` of the outputs a run report names."""
    out = {}
    from backbeat.cache.backends import open_store

    store = open_store(cache)
    for block, b in report["blocks"].items():
        for name, key in b["outputs"].items():
            out[f"{block}.{name}"] = cachereader.stored_digest(str(store.output_path(key)))
    return out


@dataclass
class Scene:
    root: Path
    prefix: Path = field(init=False)
    cache: Path = field(init=False)
    tmp: Path = field(init=False)

    def __post_init__(self) -> None:
        self.prefix = self.root / "prefix"
        shutil.copytree(RUN_PREFIX, self.prefix, ignore=shutil.ignore_patterns("cache", "__pycache__"))
        shutil.copytree(FIXTURES / "faults" / "algorithms", self.prefix / "algorithms", dirs_exist_ok=True)
        self.cache = self.root / "cache"
        self.tmp = Path(tempfile.mkdtemp(prefix="bbf-"))  # short: ipc:// paths must stay under ~100 bytes

    def close(self) -> None:
        for proc in processes(str(self.prefix)):  # (only if a test failed: never leave them running)
            try:
                proc.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- experiments and runs
    def experiment(self, name: str, first: dict | None = None, second: dict | None = None) -> str:
        """Write a variant of the pipeline: ``first``'s parameters updated, ``second`` replaced."""
        decl = json.loads((self.prefix / EXP_DIR / "base.json").read_text())
        decl["blocks"]["first"]["parameters"].update(first or {})
        if second is not None:
            decl["blocks"]["second"] = second
        (self.prefix / EXP_DIR / f"{name}.json").write_text(json.dumps(decl, indent=4))
        return f"run/run/pipeline/1/{name}"

    def env(self) -> dict:
        env = dict(os.environ, TMPDIR=str(self.tmp))
        for var in ("BACKBEAT_DEBUG", "BACKBEAT_PREFIX"):
            env.pop(var, None)
        return env

    def start(self, *args: str, cache: Path | None = None, cgroup: Path | None = None,
              env: dict | None = None, threaded: bool = False) -> subprocess.Popen:
        """``backbeat -p PREFIX -c CACHE ARGS…`` in the background (SIGINT not ignored, as in a
        terminal; in the given cgroup, with every process it starts; ``env`` added to its environment).
        ``threaded``: a thread runs in the command before its fork server starts, which then falls
        back to multiprocessing's (:class:`backbeat.processes.workerpool.ForkServer`)."""
        def setup() -> None:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if cgroup is not None:
                (cgroup / "cgroup.procs").write_text(str(os.getpid()))

        argv = cli_command("-p", self.prefix, "-c", cache or self.cache, *args)
        if threaded:
            argv[2] = _THREAD + argv[2]
        return subprocess.Popen(argv,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(self.env(), **(env or {})), preexec_fn=setup)

    def run(self, *args: str, cache: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = self.start(*args, cache=cache)
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def clean_run(self, name: str) -> dict:
        """The report of a run of ``name`` into a fresh cache (what a recovered cache must hold)."""
        cache = self.root / f"reference-{name.rsplit('/', 1)[-1]}"
        t0 = time.monotonic()
        done = self.run("experiments", "run", name, "--json", cache=cache)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        report["wall"] = time.monotonic() - t0  # how long a whole run takes (random moments fall in it)
        report["digests"] = output_digests(cache, report)
        return report

    # -- what a run leaves
    def leftovers(self) -> list[str]:
        """Temporaries, journals, progress files and control folders left (locks are bookkeeping)."""
        found = [str(p) for p in self.tmp.iterdir()]
        if self.cache.is_dir():
            found += [str(p) for p in self.cache.rglob("*") if ".tmp-" in p.name and p.is_file()]
            for folder in (".runs", ".progress"):
                if (self.cache / folder).is_dir():
                    found += [str(p) for p in (self.cache / folder).iterdir()]
        return found

    def no_process_left(self, timeout: float = 10.0) -> None:
        assert wait_until(lambda: not processes(str(self.prefix)), timeout), \
            f"processes outlived the run (seed {SEED}): {[p.info for p in processes(str(self.prefix))]}"

    def check_recovered(self, name: str, reference: dict) -> dict:
        """Re-run ``name``: it succeeds, leaves nothing behind and gives what a clean run gives."""
        self.no_process_left()
        again = self.run("experiments", "run", name, "--json")
        assert again.returncode == 0, f"the re-run failed (seed {SEED}): {again.stderr}"
        report = json.loads(again.stdout)
        assert report["status"] == "ok" and report["results"] == reference["results"] == RESULTS, report
        assert {b: v["outputs"] for b, v in report["blocks"].items()} == \
            {b: v["outputs"] for b, v in reference["blocks"].items()}
        assert output_digests(self.cache, report) == reference["digests"], f"seed {SEED}"
        self.no_process_left()
        assert self.leftovers() == [], f"left behind (seed {SEED}): {self.leftovers()}"
        bad = [r for r in verify_cache(self.cache) if r["status"] != "ok"]
        assert bad == [], f"cache verify (seed {SEED}): {bad}"
        return report


def children_of(pid: int) -> list[psutil.Process]:
    """The children of ``pid``; none once it has ended (``children()`` of a process reaped meanwhile
    raises NoSuchProcess: the processes of a run come and go while a test looks at them)."""
    try:
        return psutil.Process(pid).children()
    except psutil.Error:
        return []


def kill_if_running(proc: psutil.Process) -> None:
    """SIGKILL ``proc`` if it still runs: one that ended between the look that found it and the
    kill is not an error (a block process ends by itself at any moment)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.kill()


def written(cache: Path, pattern: str = "*.h5.tmp-*") -> bool:
    """Whether a file named like ``pattern`` is anywhere below ``cache`` now.  Unlike ``rglob`` (which
    raises FileNotFoundError for a folder removed while it lists it), a folder the run removes
    meanwhile (its journal's, a sandbox's staging folder) is passed over."""
    return any(fnmatch.filter(files, pattern) for _, _, files in os.walk(cache))


class References:
    """Clean runs of the experiments, made once per session (keys do not depend on where the prefix is)."""

    def __init__(self) -> None:
        self._reports: dict[str, dict] = {}

    def get(self, scene: Scene, name: str) -> dict:
        key = (scene.prefix / "experiments" / f"{name}.json").read_text()  # (its declaration now)
        if key not in self._reports:
            self._reports[key] = scene.clean_run(name)
        return self._reports[key]


_REFERENCES = References()


@pytest.fixture(name="scene")
def scene_fixture(tmp_path: Path) -> Iterator[Scene]:
    s = Scene(tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(name="references")
def references_fixture() -> References:
    return _REFERENCES


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at ``path`` (root only; the test is skipped where mounting is impossible)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (not root here)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, mode: str) -> None:
    """Remount ``path`` read-only (``ro``) or read-write (``rw``)."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


def fill(path: Path) -> Path:
    """Fill the file system of ``path`` to the last byte; the filler file (remove it to free the space)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


# -- commands served by a warm template (``processes/template.py``)
BACKBEAT = [str(Path(sys.executable).parent / "backbeat")]  # (installed with backbeat: a template serves only it)


@pytest.fixture(name="templates")
def templates_fixture() -> Iterator[Path]:
    """A private folder of warm templates; the templates left in it are killed at the end."""
    folder = Path(tempfile.mkdtemp(prefix="bbt-"))
    yield folder
    kill_templates(folder / "t")
    shutil.rmtree(folder, ignore_errors=True)


def served(scene: Scene, templates: Path, **extra: str) -> tuple[dict, psutil.Process,
                                                                 Callable[..., subprocess.Popen]]:
    """The environment of served runs (``extra`` added: a template serves only commands of the
    environment it was started in), the template (started by a first, warm run) and a starter."""
    env = dict(scene.env(), BACKBEAT_TEMPLATE="on", BACKBEAT_TEMPLATE_DIR=str(templates / "t"), **extra)

    def start(cache: Path, *more: str, umask: int = 0o022) -> subprocess.Popen:
        def setup() -> None:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # (as in a terminal)
            os.umask(umask)

        return subprocess.Popen([*BACKBEAT, "-p", str(scene.prefix), "-c", str(cache), *more], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=setup)

    warm = start(scene.root / "warm-cache", "--version")  # (run by itself: starts the template)
    warm.communicate(timeout=120)
    assert warm.returncode == 0
    assert wait_until(lambda: any((templates / "t").glob("*.sock")) and live_templates(templates / "t"),
                      timeout=60), "no template came up"
    ((_key, pid),) = live_templates(templates / "t").items()
    return env, psutil.Process(pid), start
