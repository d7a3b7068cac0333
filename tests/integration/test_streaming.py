"""Streaming between blocks (backbeat.streams): real block processes, ZeroMQ sockets, HDF5 files.

The run fixture's pipeline (items → first → second → analysis) is fed 20,000 or 60,000
items here, so that every stream carries many batches (4,096 units each) and producers
meet back-pressure; ``run/late/1`` (written by the tests) fails at item ``at``.  A fan-out
(items → b1, then b1 → b2 → a2 and b1 → b3 → a3) has a block whose process cannot be spawned.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import pytest
from _no_spawn import GONE, run_failing_spawn

from backbeat.cache.backends import open_store
from backbeat.execution import executors as executor
from conftest import cli_json

EXP_DIR = Path("experiments/run/run/pipeline/1")

LATE = '''import os
import signal


class Algorithm:
    def setup(self, parameters):
        self.mode, self.at, self.seen = parameters["mode"], parameters["at"], 0
        if self.mode == "setup":
            raise RuntimeError("late: setup failed on purpose")
        return True

    def process(self, inputs, data_loaders, outputs):
        self.seen += 1
        if self.seen == self.at:
            if self.mode == "process":
                raise ValueError("late: failed on purpose at item %d" % self.seen)
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.mode == "nice":  # the niceness of every thread of this block's process, of its autogroup
                tids = [int(t) for t in os.listdir("/proc/self/task")]
                group = open("/proc/self/autogroup").read().split()[-1] if os.path.exists("/proc/self/autogroup") else "-"
                raise ValueError("late: nice %s autogroup %s" % (sorted({os.getpriority(os.PRIO_PROCESS, t) for t in tids}), group))
        outputs["out"].write(inputs["value"].data)
        return True
'''


@pytest.fixture
def prefix(copy_prefix) -> Path:
    root = copy_prefix()
    db = root / "databases/counter/1.json"
    decl = json.loads(db.read_text())
    for n in (20_000, 60_000):
        decl["protocols"].append({"name": f"n{n}", "template": "run_sets/1",
                                  "views": {"items": {"view": "Counter", "parameters": {"n": n, "mode": "none"}}}})
    db.write_text(json.dumps(decl, indent=4))
    algo = json.loads((root / "algorithms/run/faulty/1.json").read_text())
    algo["parameters"] = {"mode": {"type": "string", "default": "none"}, "at": {"type": "int32", "default": 5000}}
    (root / "algorithms/run/late").mkdir()
    (root / "algorithms/run/late/1.json").write_text(json.dumps(algo, indent=4))
    (root / "algorithms/run/late/1.py").write_text(LATE)
    return root


def experiment(prefix: Path, name: str, n: int, second: dict | None = None) -> str:
    decl = json.loads((prefix / EXP_DIR / "base.json").read_text())
    decl["datasets"]["items"]["protocol"] = f"n{n}"
    if second is not None:
        decl["blocks"]["second"].update(algorithm="run/late/1", parameters=second)
    (prefix / EXP_DIR / f"{name}.json").write_text(json.dumps(decl, indent=4))
    return f"run/run/pipeline/1/{name}"


def run(prefix, cache, name, events=None, **options) -> dict:
    return executor.run_experiment(prefix, cache, name, executor.Options(jobs=2, **options),
                                   events.append if events is not None else None)


def statuses(rep: dict) -> dict:
    return {b: v["status"] for b, v in rep["blocks"].items()}


def digests(cache: Path, rep: dict) -> dict:
    out = {}
    for block, v in rep["blocks"].items():
        for o, key in v["outputs"].items():
            path = open_store(cache).output_path(key)
            if path.exists():
                with h5py.File(path, "r") as f:
                    out[(block, o)] = f.attrs["digest"]
    return out


def leftovers(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if ".tmp-" in p.name or ".slot" in p.name]


def test_a_streamed_run_writes_the_same_bytes_as_an_unstreamed_one(prefix, tmp_path):
    name = experiment(prefix, "many", 20_000)
    events: list[dict] = []
    streamed = run(prefix, tmp_path / "a", name, events)
    plain = run(prefix, tmp_path / "b", name, stream=False)
    assert statuses(streamed) == statuses(plain) == {"first": "ran", "second": "ran", "analysis": "ran"}
    assert streamed["results"] == plain["results"]
    assert streamed["results"]["analysis"][0]["data"] == {"count": 20_000, "sum": sum(range(11, 20_011))}
    assert digests(tmp_path / "a", streamed) == digests(tmp_path / "b", plain) and len(digests(tmp_path / "a", streamed)) == 3
    stats = {b: v["statistics"] for b, v in streamed["blocks"].items()}
    assert stats["second"]["streamed_from"] == "first" and stats["analysis"]["streamed_from"] == "second"
    assert "streamed_from" not in stats["first"]
    assert not any("streamed_from" in v["statistics"] for v in plain["blocks"].values())
    order = [(e["block"], e["state"]) for e in events if e["state"] in ("running", "done") and not e.get("done")]
    assert order.index(("analysis", "running")) < order.index(("first", "done"))  # a pipeline
    for e in events:  # streamed blocks report progress without a total
        if e["block"] == "analysis" and e["state"] == "running" and e.get("done"):
            assert e["total"] is None
    # the cached re-run reads what the streams produced
    again = run(prefix, tmp_path / "a", name)
    assert set(statuses(again).values()) == {"cached"} and again["results"] == plain["results"]


def test_a_producer_failing_mid_stream_skips_its_consumers_and_leaves_nothing_partial(prefix, tmp_path):
    cache = tmp_path / "cache"
    name = experiment(prefix, "late", 20_000, {"mode": "process", "at": 9000})
    rep = run(prefix, cache, name)
    assert statuses(rep) == {"first": "ran", "second": "failed", "analysis": "skipped"}
    assert "late: failed on purpose at item 9000" in rep["blocks"]["second"]["error"]["message"]
    assert rep["status"] == "failed" and not leftovers(cache)
    assert set(digests(cache, rep)) == {("first", "out")}  # nothing of second or analysis committed
    name = experiment(prefix, "late", 20_000, {"mode": "none", "at": 9000})  # fixed: resumes
    rep = run(prefix, cache, name)
    assert statuses(rep) == {"first": "cached", "second": "ran", "analysis": "ran"}
    assert rep["results"]["analysis"][0]["data"]["count"] == 20_000


@pytest.fixture(scope="module")
def unstreamed() -> dict[str, str]:
    """``{output key: content digest}`` of outputs written by unstreamed runs, for the module (the
    variants below share ``first``: one unstreamed run of it is their reference)."""
    return {}


@pytest.mark.parametrize("mode, at", [("process", 3000), ("kill", 3000), ("setup", 1)])
def test_a_consumer_ending_early_does_not_stop_its_producer(prefix, tmp_path, mode, at, unstreamed):
    """60,000 units are 15 batches: more than the sockets hold, so the producer waits on its
    consumer until the executor tells it the consumer is gone; it then finishes its output."""
    cache = tmp_path / "cache"
    name = experiment(prefix, f"early_{mode}", 60_000, {"mode": mode, "at": at})
    rep = run(prefix, cache, name)
    assert statuses(rep) == {"first": "ran", "second": "failed", "analysis": "skipped"}, rep["blocks"]
    assert not leftovers(cache)
    key = rep["blocks"]["first"]["outputs"]["out"]
    if key not in unstreamed:  # first's file is what it would be unstreamed
        plain = run(prefix, tmp_path / "plain", name, stream=False)
        assert plain["blocks"]["first"]["outputs"]["out"] == key
        unstreamed[key] = digests(tmp_path / "plain", plain)[("first", "out")]
    assert digests(cache, rep)[("first", "out")] == unstreamed[key]


def test_a_producer_runs_at_a_lower_priority_than_its_consumers(prefix, tmp_path):
    """A streamed producer (here ``second``, which also reads a stream: its ZeroMQ I/O thread
    already runs) lowers the priority of all its threads and of its session's autogroup (a
    block process is a session of its own: with the kernel's autogroups, only the latter orders
    it against the run's other blocks), so that a consumer with data runs first and the last
    block does not end alone with a backlog; an unstreamed block does not."""
    from backbeat.runtime.streams import PRODUCER_NICE

    base = os.getpriority(os.PRIO_PROCESS, 0)
    groups = os.path.exists("/proc/self/autogroup")  # (a block's autogroup is new: niceness 0)
    name = experiment(prefix, "nice", 20_000, {"mode": "nice", "at": 5})
    for stream, nice, group in ((True, min(19, base + PRODUCER_NICE), PRODUCER_NICE), (False, base, 0)):
        rep = run(prefix, tmp_path / str(stream), name, stream=stream)
        assert statuses(rep) == {"first": "ran", "second": "failed", "analysis": "skipped"}, rep["blocks"]
        message = rep["blocks"]["second"]["error"]["message"]
        assert f"late: nice [{nice}] autogroup {group if groups else '-'}" in message, (stream, message)


def test_cli_streams_by_default_and_not_with_no_stream(prefix, tmp_path):
    name = experiment(prefix, "cli", 20_000)
    code, rep, err = cli_json("--prefix", prefix, "--cache", tmp_path / "a", "experiments", "run", name, "--json")
    assert code == 0, err
    assert rep["blocks"]["second"]["statistics"]["streamed_from"] == "first"
    for cache, flag in (("b", "--no-stream"), ("c", "-j1")):  # one block process at a time: no streams
        code, rep, err = cli_json("--prefix", prefix, "--cache", tmp_path / cache, "experiments", "run", name,
                                  "--json", flag)
        assert code == 0, err
        assert all("streamed_from" not in b["statistics"] for b in rep["blocks"].values()), flag


@pytest.mark.parametrize("expanded, most", [({"value": "float64"}, 2), ({"value": [1000, "float64"]}, 2)])
def test_stream_sockets_bound_how_far_a_consumer_lags(tmp_path, expanded, most):
    """Small units: the sockets of each side hold no more than ``QUEUED_UNITS`` (a slow consumer,
    such as an analyzer at the end of a chain, is never left alone with a backlog of tens of
    thousands of units once its producer is done); large ones: no more than ``QUEUED_BYTES``."""
    from backbeat.runtime import streams
    from backbeat.runtime.blockrun import _batch_size
    from backbeat.runtime.spec import StreamTarget

    size, units = _batch_size(expanded, "t/1")
    address = f"ipc://{tmp_path}/s"
    sender = streams.StreamSender([StreamTarget(address, str(tmp_path / "cancel"))], size, units)
    source = streams.StreamSource(address, "t/1", expanded, size, units)
    try:
        (sock, _cancel), = sender._live
        assert (sock.sndhwm, source._sock.rcvhwm) == (most, most)
        assert most * units <= max(streams.QUEUED_UNITS, units) and most * size <= streams.QUEUED_BYTES
    finally:
        sender.close()
        source.close()


def write_fan(prefix: Path) -> str:
    """Toolchain ``run/fan/1`` and experiment ``run/run/fan/1/e``: items -> b1, then b1 -> b2 -> a2
    and b1 -> b3 -> a3 (``run/echo/1`` blocks, offsets 1, 2, 3; ``run/total/1`` analyzers)."""
    links = [("items.value", "b1.value"), ("b1.out", "b2.value"), ("b1.out", "b3.value"),
             ("b2.out", "a2.values"), ("b3.out", "a3.values")]
    toolchain = {
        "description": "a fan-out",
        "datasets": [{"name": "items", "outputs": ["value"]}],
        "blocks": [{"name": n, "synchronized_channel": "items", "inputs": ["value"], "outputs": ["out"]}
                   for n in ("b1", "b2", "b3")],
        "analyzers": [{"name": n, "synchronized_channel": "items", "inputs": ["values"]} for n in ("a2", "a3")],
        "connections": [{"from": a, "to": b, "channel": "items"} for a, b in links],
        "representation": {"connections": {}, "blocks": {}, "channel_colors": {}},
    }
    experiment = {
        "description": "a fan-out",
        "datasets": {"items": {"database": "counter/1", "protocol": "default", "set": "items"}},
        "blocks": {f"b{k}": {"algorithm": "run/echo/1", "inputs": {"value": "value"}, "outputs": {"out": "out"},
                             "parameters": {"offset": k}} for k in (1, 2, 3)},
        "analyzers": {n: {"algorithm": "run/total/1", "inputs": {"values": "values"}} for n in ("a2", "a3")},
        "globals": {"queue": "queue", "environment": {"name": "Python", "version": "3"}},
    }
    (prefix / "toolchains/run/fan").mkdir(parents=True)
    (prefix / "toolchains/run/fan/1.json").write_text(json.dumps(toolchain))
    (prefix / "experiments/run/run/fan/1").mkdir(parents=True)
    (prefix / "experiments/run/run/fan/1/e.json").write_text(json.dumps(experiment))
    return "run/run/fan/1/e"


@pytest.mark.parametrize("flags", [[], ["--no-stream"]], ids=["streamed", "unstreamed"])
def test_a_block_that_cannot_start_fails_itself_and_its_producer_ends(prefix, tmp_path, flags):
    """b2's process cannot be spawned. Streamed, b2 is started with b1 as its consumer, with b3
    beside it and a2 accepted as b2's own: b2 fails saying why — not b1, already running — b1 is
    told to stop feeding it (it waited for it forever: the run hung), b3 is pending again (not
    started after a failure: skipped), and b1 commits. Unstreamed, b2 fails once b1 has ended."""
    done = run_failing_spawn("b2", "-p", prefix, "-c", tmp_path / "cache", "experiments", "run", write_fan(prefix),
                             "--json", *flags)
    assert done.returncode == 1, done.stderr[-3000:]
    rep = json.loads(done.stdout)
    assert statuses(rep) == {"b1": "ran", "b2": "failed", "b3": "skipped", "a2": "skipped", "a3": "skipped"}
    assert rep["blocks"]["b2"]["error"]["message"] == f"cannot start: {GONE}"
    assert "b2" in done.stderr and "cannot start: the fork server is gone" in done.stderr, done.stderr
    assert not leftovers(tmp_path / "cache")
