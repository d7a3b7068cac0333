"""The sandbox (``--sandbox``, bubblewrap): hostile algorithms are stopped, and say so; benign ones
give the same results as without it; outputs enter the cache only after checks.

Each attack is a run of the pipeline of ``tests/fixtures/run/prefix`` whose ``second`` block is
``tests/fixtures/sandbox/hostile.py`` (in-process runs: backbeat is this test process).  The
harmless attacks also run without the sandbox, to show they work there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from backbeat import api
from backbeat.cache.store import CacheStore
from backbeat.data import cachereader
from backbeat.planning.selection import Options
from conftest import FIXTURES, RUN_PREFIX, run_cli

HOSTILE = FIXTURES / "sandbox"
BASE = "run/run/pipeline/1/base"
EXP_DIR = Path("experiments/run/run/pipeline/1")

if shutil.which("bwrap") is None:
    if os.environ.get("CI"):
        raise RuntimeError("bubblewrap (bwrap) is missing: .ci/run installs it")
    pytest.skip("bubblewrap (bwrap) is not installed", allow_module_level=True)


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    dst = tmp_path / "prefix"
    shutil.copytree(RUN_PREFIX, dst, ignore=shutil.ignore_patterns("cache", "__pycache__"))
    algo = dst / "algorithms" / "run" / "hostile"
    algo.mkdir()
    shutil.copy(HOSTILE / "hostile.py", algo / "1.py")
    shutil.copy(HOSTILE / "hostile.json", algo / "1.json")
    return dst


def attack(prefix: Path, how: str, target: str | os.PathLike = "") -> str:
    """An experiment whose `second' block tries attack ``how`` on ``target``."""
    decl = json.loads((prefix / EXP_DIR / "base.json").read_text())
    decl["blocks"]["second"]["algorithm"] = "run/hostile/1"
    decl["blocks"]["second"]["parameters"] = {"attack": how, "target": str(target)}
    name = how.replace("-", "_")
    (prefix / EXP_DIR / f"{name}.json").write_text(json.dumps(decl, indent=4))
    return f"run/run/pipeline/1/{name}"


def run(prefix: Path, name: str, sandbox: bool = True, cache: str = "cache") -> dict:
    return api.run_experiment(prefix, prefix.parent / cache, name, Options(sandbox=sandbox, force=True))


def denied(rep: dict, *needles: str) -> str:
    """The error of the hostile block, which must say the sandbox denied it."""
    assert rep["status"] == "failed", rep
    err = rep["blocks"]["second"]["error"]
    assert "[denied by the sandbox" in err["message"], err
    for needle in needles:
        assert needle in err["message"], err
    assert rep["blocks"]["analysis"]["status"] == "skipped"
    return err["message"]


def test_files_outside_the_prefix_and_cache_are_invisible(prefix: Path, tmp_path: Path) -> None:
    secret = tmp_path / "home" / ".ssh" / "id_ed25519"  # a user's key, outside the prefix and the cache
    secret.parent.mkdir(parents=True)
    secret.write_text("PRIVATE KEY")
    name = attack(prefix, "read", secret)
    assert run(prefix, name, sandbox=False)["status"] == "ok"  # the attack works without the sandbox
    denied(run(prefix, name), "No such file or directory", str(secret))
    if os.path.exists("/etc/shadow"):
        denied(run(prefix, attack(prefix, "read", "/etc/shadow")), "/etc/shadow")


def test_no_network(prefix: Path) -> None:
    host = socket.create_server(("127.0.0.1", 0))  # a service of this machine, on its loopback
    port = host.getsockname()[1]
    try:
        name = attack(prefix, "connect", port)
        assert run(prefix, name, sandbox=False)["status"] == "ok"
        denied(run(prefix, name), "Connection refused", "no network")
    finally:
        host.close()


def test_a_listening_block_cannot_be_reached(prefix: Path) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    reached = []
    stop = threading.Event()

    def knock() -> None:  # tries to reach the block's server from outside while it listens
        while not stop.is_set():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                reached.append(True)
            except OSError:
                time.sleep(0.05)

    thread = threading.Thread(target=knock, daemon=True)
    thread.start()
    try:
        rep = run(prefix, attack(prefix, "listen", port))
    finally:
        stop.set()
        thread.join()
    assert rep["status"] == "failed"
    assert f"listening on 0.0.0.0:{port}: nobody could connect" in rep["blocks"]["second"]["error"]["message"]
    assert not reached


def test_prefix_and_cache_are_read_only(prefix: Path) -> None:
    code = prefix / "algorithms" / "run" / "echo" / "1.py"
    before = code.read_bytes()
    denied(run(prefix, attack(prefix, "write", code)), "Read-only file system", "read-only")
    assert code.read_bytes() == before
    # an entry of another experiment, in the same cache
    other = api.run_experiment(prefix, prefix.parent / "cache", "run/run/short/1/base", Options())
    path = CacheStore(prefix.parent / "cache").output_path(other["blocks"]["analysis"]["outputs"]["result"])
    digest = cachereader.verify(path)
    denied(run(prefix, attack(prefix, "replace", path)), "Read-only file system")
    assert cachereader.verify(path) == digest


def test_the_fork_server_and_backbeat_cannot_be_killed(prefix: Path) -> None:
    rep = run(prefix, attack(prefix, "kill-server"))
    assert rep["status"] == "ok", rep  # the analyzer then ran in the same fork server
    assert rep["results"]["analysis"][0]["data"] == {"count": 6, "sum": 81}
    denied(run(prefix, attack(prefix, "kill-pid", os.getpid())), "No such process")


def _sleepers(seconds: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", seconds.encode()]:
            found.append(int(pid))
    return found


def test_no_process_outlives_the_run(prefix: Path) -> None:
    # with the sandbox (the zygote is the init of its PID namespace) as without it (subreapers,
    # processes/reaper.py), a daemon a block starts in a session of its own dies with the block
    seconds = f"{30 + os.getpid() % 1000}.5"
    name = attack(prefix, "daemon", seconds)
    for sandbox, cache in ((False, "cache"), (True, "cache2")):
        try:
            assert run(prefix, name, sandbox=sandbox, cache=cache)["status"] == "ok"
            deadline = time.monotonic() + 5
            while _sleepers(seconds) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _sleepers(seconds), f"a daemon outlived the run (sandbox: {sandbox})"
        finally:
            for pid in _sleepers(seconds):
                with contextlib.suppress(ProcessLookupError):  # (it may end between the look and the kill)
                    os.kill(pid, signal.SIGKILL)


def _digests(cache: Path) -> dict[str, str]:
    return {str(p.relative_to(cache)): cachereader.verify(p) for p in sorted(cache.rglob("*.h5"))}


def test_same_results_with_and_without_the_sandbox(prefix: Path) -> None:
    plain = run(prefix, BASE, sandbox=False, cache="plain")
    boxed = run(prefix, BASE, sandbox=True, cache="boxed")
    assert plain["status"] == boxed["status"] == "ok"
    assert plain["results"] == boxed["results"]
    assert _digests(prefix.parent / "plain") == _digests(prefix.parent / "boxed")
    # nothing is left in the staging area; the record says where each block ran
    assert not any((prefix.parent / "boxed" / ".staging").iterdir())
    record = json.loads(Path(boxed["provenance"]).read_text())
    assert all(b["runtime"]["sandbox"] for b in record["blocks"].values())


def test_without_bubblewrap_the_sandbox_says_what_to_install(prefix: Path, tmp_path: Path) -> None:
    proc = run_cli("-p", prefix, "experiments", "run", BASE, "--sandbox", env={"PATH": str(tmp_path)})
    assert proc.returncode != 0
    assert "bubblewrap" in proc.stderr and "apt-get install bubblewrap" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("fixture, name", [("parallel", "par/par/two/1/two_slots"), ("loops", "lx/lx/loop/1/sequential")])
def test_split_blocks_and_loops_are_the_same_in_the_sandbox(tmp_path: Path, fixture: str, name: str) -> None:
    """Slot files are staged and checked before they are assembled; a loop's two processes talk
    through a socket bound inside the sandbox."""
    prefix = tmp_path / "prefix"
    shutil.copytree(FIXTURES / fixture / "prefix", prefix, ignore=shutil.ignore_patterns("cache", "__pycache__"))
    if fixture == "parallel":
        decl = json.loads((prefix / "experiments/par/par/two/1/base.json").read_text())
        decl["blocks"]["left"]["nb_slots"] = 2
        for block in ("left", "right"):
            decl["blocks"][block]["parameters"]["ms"] = 0.0  # (busy 20 ms a unit by default)
        (prefix / "experiments/par/par/two/1/two_slots.json").write_text(json.dumps(decl))
    plain = run(prefix, name, sandbox=False, cache="plain")
    boxed = run(prefix, name, sandbox=True, cache="boxed")
    assert plain["status"] == boxed["status"] == "ok", boxed
    assert plain["results"] == boxed["results"]
    assert _digests(tmp_path / "plain") == _digests(tmp_path / "boxed")
    if fixture == "parallel":
        assert len(boxed["blocks"]["left"]["statistics"]["slots"]) == 2


def test_the_sandbox_from_the_configuration_per_experiment(prefix: Path) -> None:
    """``"sandbox": [patterns]`` in .backbeatrc puts the matching experiments in it; --no-sandbox does not."""
    from conftest import cli_json

    work = prefix.parent
    (work / ".backbeatrc").write_text(json.dumps({"sandbox": ["run/run/pipeline/*"]}))
    for extra, sandboxed in (((), True), (("--no-sandbox",), False)):
        code, rep, err = cli_json("-p", prefix, "experiments", "run", BASE, "--force", "--json", *extra, cwd=work)
        assert code == 0, err
        assert all(b["runtime"]["sandbox"] is sandboxed for b in rep["blocks"].values())
    code, rep, err = cli_json("-p", prefix, "experiments", "run", "run/run/short/1/base", "--force", "--json", cwd=work)
    assert code == 0 and not any(b["runtime"]["sandbox"] for b in rep["blocks"].values())


def test_the_benchmark_prints_the_cost_per_block() -> None:
    """``benchmarks/sandbox.py`` runs (tiny sizes; no timing asserted)."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "sandbox.py"
    proc = subprocess.run([sys.executable, str(script), "--n", "3", "--rounds", "1", "--units", "6"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "fork server start-up" in proc.stdout and "ms per job" in proc.stdout
    assert "sandbox cost" in proc.stdout and "ms per block" in proc.stdout


def test_blocks_get_default_limits_in_the_sandbox(prefix: Path) -> None:
    from backbeat.execution.base import prepare
    from backbeat.processes.sandbox import DEFAULT_MEMORY_BYTES, DEFAULT_TIMEOUT_S

    for given, expected in ((Options(sandbox=True), (DEFAULT_TIMEOUT_S, DEFAULT_MEMORY_BYTES)),
                            (Options(sandbox=True, timeout_s=5.0), (5.0, DEFAULT_MEMORY_BYTES)),
                            (Options(), (None, None))):
        run_ = prepare(prefix, prefix.parent / "cache", BASE, given)
        try:
            assert (run_.options.timeout_s, run_.options.memory_bytes) == expected
        finally:
            run_.close()
