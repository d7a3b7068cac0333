"""Long graphs and fixed costs (issue #13): real CLI processes, fork server, block processes.

Chains of K ``echo`` blocks over the run fixture's 6 items (``run/chainK/1``), written by the
tests.  No timing is asserted: the tests check what the changes guarantee — a chain far longer
than the window of live processes is streamed within it, starting a chain never recurses, a
fully cached run starts no process and imports none of numpy, h5py and zmq, and a slow block
reports its progress (units, rate, time left) while it runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import cli_command, run_cli

PLAIN = """class Algorithm:
    def process(self, inputs, data_loaders, outputs):
        outputs["out"].write({"value": inputs["value"].data.value + 1})
        return True
"""


def write_chain(prefix: Path, k: int, delay: float = 0.0, plain: bool = False) -> str:
    """Toolchain ``run/chainK/1`` and experiment ``run/run/chainK/1/e`` (``…/plain`` with ``plain``:
    an algorithm without parameters, so that nothing casts one with numpy): items -> b1 -> … ->
    bK -> analysis, each block adding 1."""
    names = [f"b{i}" for i in range(1, k + 1)]
    block = {"algorithm": "run/echo/1", "inputs": {"value": "value"}, "outputs": {"out": "out"}}
    if plain:
        echo = json.loads((prefix / "algorithms/run/echo/1.json").read_text())
        del echo["parameters"], echo["uses"]
        (prefix / "algorithms/run/plain").mkdir(exist_ok=True)
        (prefix / "algorithms/run/plain/1.json").write_text(json.dumps(echo))
        (prefix / "algorithms/run/plain/1.py").write_text(PLAIN)
        block["algorithm"] = "run/plain/1"
    toolchain = {
        "description": f"a chain of {k} blocks",
        "datasets": [{"name": "items", "outputs": ["value"]}],
        "blocks": [{"name": n, "synchronized_channel": "items", "inputs": ["value"], "outputs": ["out"]} for n in names],
        "analyzers": [{"name": "analysis", "synchronized_channel": "items", "inputs": ["values"]}],
        "connections": [{"from": "items.value", "to": "b1.value", "channel": "items"}]
        + [{"from": f"{a}.out", "to": f"{b}.value", "channel": "items"} for a, b in zip(names, names[1:], strict=False)]
        + [{"from": f"{names[-1]}.out", "to": "analysis.values", "channel": "items"}],
        "representation": {"connections": {}, "blocks": {}, "channel_colors": {}},
    }
    experiment = {
        "description": f"a chain of {k} blocks",
        "datasets": {"items": {"database": "counter/1", "protocol": "default", "set": "items"}},
        "blocks": {n: dict(block, **({} if plain else {"parameters": {"offset": 1, "delay": delay if n == "b1" else 0.0}}))
                   for n in names},
        "analyzers": {"analysis": {"algorithm": "run/total/1", "inputs": {"values": "values"}}},
        "globals": {"queue": "queue", "environment": {"name": "Python", "version": "3"}},
    }
    (prefix / f"toolchains/run/chain{k}").mkdir(parents=True, exist_ok=True)
    (prefix / f"toolchains/run/chain{k}/1.json").write_text(json.dumps(toolchain, indent=1))
    (prefix / f"experiments/run/run/chain{k}/1").mkdir(parents=True, exist_ok=True)
    name = "plain" if plain else "e"
    (prefix / f"experiments/run/run/chain{k}/1/{name}.json").write_text(json.dumps(experiment, indent=1))
    return f"run/run/chain{k}/1/{name}"


@pytest.fixture
def prefix(copy_prefix) -> Path:
    return copy_prefix()


def _result(k: int) -> list:
    return [{"start": 0, "end": 5, "data": {"count": 6, "sum": 21 + 6 * k}}]  # (1..6) + k each


def test_a_chain_far_longer_than_the_window_is_streamed_within_it(prefix, tmp_path) -> None:
    """24 blocks, at most 4 block processes alive: the chain is streamed in segments (counted
    from outside: every process of the run's tree, sampled while it runs)."""
    name = write_chain(prefix, 24)
    cmd = cli_command("-p", prefix, "-c", tmp_path / "cache", "experiments", "run", name, "--json", "-q",
                      "--alive", "4", "-j", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    most = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:  # the fork server's zygote, the database provider and the block processes
            most = max(most, len(root.children(recursive=True)))
        except psutil.Error:
            pass
        time.sleep(0.005)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    rep = json.loads(out)
    assert rep["results"] == {"analysis": _result(24)}
    assert all(b["status"] == "ran" for b in rep["blocks"].values())
    streamed = [n for n, b in rep["blocks"].items() if "streamed_from" in b["statistics"]]
    assert 0 < len(streamed) < 24  # streamed, and in segments: some blocks read the committed file
    assert 3 <= most <= 4 + 2, most  # the window, plus the zygote and the database provider


def test_starting_a_chain_never_recurses(prefix, tmp_path) -> None:
    """Streamed consumers are started by a loop: a chain longer than the interpreter's
    recursion limit allows for nested calls still runs (it failed with RecursionError)."""
    name = write_chain(prefix, 160)
    script = ("import sys; import numpy, h5py, zmq; from backbeat.cli import main; "  # (imports need a deeper stack)
              "import backbeat.execution.scheduler, backbeat.reporting.runs; "
              "sys.setrecursionlimit(140); sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, "-p", str(prefix), "-c", str(tmp_path / "cache"),
                           "experiments", "run", name, "--json", "-q", "--alive", "200"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rep = json.loads(done.stdout)
    assert rep["results"] == {"analysis": _result(160)}
    assert sum("streamed_from" in b["statistics"] for b in rep["blocks"].values()) == 160  # one pipeline


PROBE = """
import sys
from backbeat.declarations import experiment, toolchain
from backbeat.processes.workerpool import ForkServer
started, checked = [], []
real = ForkServer.start
ForkServer.start = lambda self: started.append(1) or real(self)
for module in (experiment, toolchain):  # every validation of the experiment and its toolchain
    module.check = (lambda real: lambda asset, catalog: checked.append(asset.name) or real(asset, catalog))(module.check)
from backbeat.cli import main
code = main(sys.argv[1:])
print("CHECKED", *checked, file=sys.stderr)
print("PROBE", code, len(started), *[m for m in ("numpy", "h5py", "zmq") if m in sys.modules], file=sys.stderr)
"""


def _probe(*args, checked: list | None = None) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, timeout=120)
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("PROBE"))
    if checked is not None:  # the assets validated, in order
        checked += next(ln for ln in done.stderr.splitlines() if ln.startswith("CHECKED")).split()[1:]
    return line.split()[1:]


def test_a_cached_run_starts_no_process_and_imports_neither_numpy_h5py_nor_zmq(prefix, tmp_path) -> None:
    name = write_chain(prefix, 2, plain=True)
    cache = tmp_path / "cache"
    # cold: the command process runs no numpy nor h5py (results and digests come from the blocks), nor
    # ZeroMQ (its control channel is a plain Unix socket since wave 12)
    checked: list[str] = []
    assert _probe("-p", prefix, "-c", cache, "experiments", "run", name, "-q", checked=checked) == ["0", "1"]
    assert checked == [name, "run/chain2/1"]  # each validated once per run (warnings, plan, provenance)
    # cached: nothing started; once the stat memo trusts what it learnt (after its racy window,
    # backbeat.core.statmemo) and the result's summary was derived from the verified file (by the
    # first run that reads it), nothing heavy imported
    time.sleep(2.1)
    assert _probe("-p", prefix, "-c", cache, "experiments", "run", name, "-q")[:2] == ["0", "0"]
    assert _probe("-p", prefix, "-c", cache, "experiments", "run", name, "-q") == ["0", "0"]
    assert _probe("-p", prefix, "-c", cache, "experiments", "results", name) == ["0", "0"]


def test_a_slow_sequential_block_reports_units_rate_and_time_left_while_it_runs(prefix, tmp_path) -> None:
    name = write_chain(prefix, 1, delay=0.3)  # 6 items, 0.3 s each
    done = run_cli("-p", prefix, "-c", tmp_path / "cache", "experiments", "run", name, "--json", "--progress-json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"] == {"analysis": _result(1)}  # stdout: the one report
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert events[0]["state"] == "started" and all(e["experiment"] == name and "time" in e for e in events)
    running = [e for e in events if e.get("block") == "b1" and e["state"] == "running" and e.get("done")]
    assert any(0 < e["done"] < 6 for e in running), running  # before the end of the block
    assert any(e["total"] == 6 and e.get("rate", 0) > 0 and "eta_s" in e for e in running), running
    states = [e["state"] for e in events if e.get("block") == "b1"]
    assert states.index("running") < states.index("done")
