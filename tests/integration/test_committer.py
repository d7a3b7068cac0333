"""The committer (backbeat.runtime.committer): small outputs written by one trusted process per run.

Real fork server, real ZeroMQ sockets, real HDF5 files: the same bytes and digests as blocks
writing their own files; commits that are not granted, altered, incomplete or malformed are
refused with nothing left in the cache; a committer that dies fails the blocks waiting on it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import psutil
import pytest

from backbeat.cache.backends import open_store
from backbeat.cache.tools import verify_cache
from backbeat.data import wire
from backbeat.data.batch import Batch
from backbeat.data.cachewriter import CacheWriter
from backbeat.data.values import as_value, value_type
from backbeat.execution import executors as executor
from backbeat.processes.group import ProcessGroup
from backbeat.runtime.committer import CommitClient, CommitRefused
from backbeat.runtime.grants import COMMITTER_JOB, COMMITTER_TARGET, Grants, declaration
from backbeat.runtime.spec import OutputSpec
from conftest import cli_command, wait_until

EXP_DIR = Path("experiments/run/run/pipeline/1")

HOLD = '''import os
import time


class Algorithm:
    def setup(self, parameters):
        self.flag = parameters["flag"]
        return True

    def process(self, inputs, data_loaders, outputs):
        outputs["out"].write(inputs["value"].data)
        if not inputs.hasMoreData():  # holds its grant until the test has killed the committer
            open(self.flag, "w").close()
            time.sleep(30)
        return True
'''


@pytest.fixture
def prefix(copy_prefix) -> Path:
    root = copy_prefix()
    db = root / "databases/counter/1.json"
    decl = json.loads(db.read_text())
    decl["protocols"].append({"name": "n20000", "template": "run_sets/1",
                              "views": {"items": {"view": "Counter", "parameters": {"n": 20_000, "mode": "none"}}}})
    db.write_text(json.dumps(decl, indent=4))
    algo = json.loads((root / "algorithms/run/faulty/1.json").read_text())
    algo["parameters"] = {"flag": {"type": "string", "default": ""}}
    (root / "algorithms/run/hold").mkdir()
    (root / "algorithms/run/hold/1.json").write_text(json.dumps(algo, indent=4))
    (root / "algorithms/run/hold/1.py").write_text(HOLD)
    return root


def experiment(prefix: Path, name: str, protocol: str = "default", second: dict | None = None) -> str:
    decl = json.loads((prefix / EXP_DIR / "base.json").read_text())
    decl["datasets"]["items"]["protocol"] = protocol
    if second is not None:
        decl["blocks"]["second"].update(algorithm="run/hold/1", parameters=second)
    (prefix / EXP_DIR / f"{name}.json").write_text(json.dumps(decl, indent=4))
    return f"run/run/pipeline/1/{name}"


def run(prefix: Path, cache: Path, name: str) -> dict:
    return executor.run_experiment(prefix, cache, name, executor.Options(jobs=2))


def files(cache: Path, rep: dict) -> dict:
    """(block, output) -> the bytes of its cache file."""
    return {(b, o): open_store(cache).output_path(key).read_bytes()
            for b, v in rep["blocks"].items() for o, key in v["outputs"].items()}


def leftovers(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if ".tmp-" in p.name]


def test_small_outputs_are_committed_by_the_committer_with_the_bytes_a_block_writes(prefix, tmp_path, monkeypatch):
    small, big = experiment(prefix, "small"), experiment(prefix, "big", "n20000")
    handed = run(prefix, tmp_path / "a", small)
    large = run(prefix, tmp_path / "a", big)
    monkeypatch.setenv("BACKBEAT_COMMITTER", "off")
    plain = run(prefix, tmp_path / "b", small)
    assert handed["status"] == plain["status"] == large["status"] == "ok"
    assert handed["results"] == plain["results"]
    assert {b: v["outputs"] for b, v in handed["blocks"].items()} == {b: v["outputs"] for b, v in plain["blocks"].items()}
    assert files(tmp_path / "a", handed) == files(tmp_path / "b", plain)  # the same bytes, digests included
    stats = {b: v["statistics"].get("handed_off") for b, v in handed["blocks"].items()}
    assert stats == {"first": ["out"], "second": ["out"], "analysis": None}  # (an analyzer reads its result back)
    assert not any("handed_off" in v["statistics"] for v in plain["blocks"].values())
    # outputs past HANDOFF_BYTES (20,000 units) are written by their blocks, as before
    assert {b: v["statistics"].get("handed_off") for b, v in large["blocks"].items()} == \
        {"first": [], "second": [], "analysis": None}
    assert large["results"]["analysis"][0]["data"]["count"] == 20_000
    assert [r for r in verify_cache(tmp_path / "a") if r["status"] != "ok"] == [] and not leftovers(tmp_path / "a")


def _batch(n: int, start: int = 0) -> Batch:
    fmt, expanded = "run/int32/1", {"value": "int32"}
    t = value_type(fmt, expanded)
    idx = np.arange(start, start + n, dtype=np.int64)
    return Batch.from_values(fmt, expanded, [as_value(t, {"value": np.int32(i * 7)}) for i in idx], idx, idx)


def test_the_committer_commits_only_granted_complete_outputs_and_leaves_nothing_else(tmp_path):
    cache = tmp_path / "cache"
    grants = Grants()
    expanded = {"value": "int32"}

    def out(key: str, **kw) -> OutputSpec:
        spec = OutputSpec("run/int32/1", key, str(cache / key[:2] / f"{key}.h5"))
        spec = grants.outputs({"o": spec}, {"run/int32/1": expanded}, None)["o"]
        return OutputSpec(**{**spec.__dict__, **kw})

    with ProcessGroup() as group:
        address = group.address("committer")
        group.spawn(COMMITTER_JOB, COMMITTER_TARGET, grants.payload(address))
        client = CommitClient(address)
        try:
            good = out("aa" * 32)
            forged = [
                (out("bb" * 32, path=str(cache / "elsewhere.h5")), 9, [_batch(10)], "no grant"),  # altered path
                (out("cc" * 32, grant="0" * 64), 9, [_batch(10)], "no grant"),  # forged grant
                (out("dd" * 32, dataformat="run/float64/1"), 9, [_batch(10)], "no grant"),  # another format
                (good, 12, [_batch(10)], "not enough data written"),  # units missing
                (good, 9, [_batch(5, 5)], "batch starts at data index 5"),  # not from unit 0
            ]
            for spec, end, batches, why in forged:
                with pytest.raises(CommitRefused, match=why):
                    client.commit(spec, expanded, None, end, batches)
            # a malformed batch (frames of no backbeat batch) and frames that make no whole batch
            client._sock.send_multipart([json.dumps({**json.loads(_head(good)), "end": 0}).encode(),
                                         declaration(expanded), b"{}", b"", b"", b""])
            assert "not a backbeat batch" in json.loads(client._sock.recv())["message"]
            client._sock.send_multipart([_head(good), declaration(expanded), *wire.encode(_batch(10))[:-1]])
            assert "do not make whole batches" in json.loads(client._sock.recv())["message"]
            client._sock.send_multipart([_head(good), declaration({"value": "int64"}), *wire.encode(_batch(10))])
            assert "no grant" in json.loads(client._sock.recv())["message"]  # (another declaration)
            client._sock.send_multipart([b"[", declaration(expanded)])
            assert "not JSON" in json.loads(client._sock.recv())["message"]
            assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing left by any of them
            digest = client.commit(good, expanded, None, 9, [_batch(4), _batch(6, 4)])
            with pytest.raises(CommitRefused, match="already committed"):  # one commit per key
                client.commit(good, expanded, None, 9, [_batch(10)])
            # what a block writes itself: the same bytes, the same digest
            own = CacheWriter(tmp_path / "own.h5", "run/int32/1", expanded, key=good.key, start=0, end=9)
            own.write_batch(_batch(10))
            assert own.close() == digest
            assert (tmp_path / "own.h5").read_bytes() == Path(good.path).read_bytes()
        finally:
            client.close()
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == [Path(good.path).name]


def _head(spec: OutputSpec) -> bytes:
    return json.dumps({"key": spec.key, "path": spec.path, "dataformat": spec.dataformat, "compression": None,
                       "end": 9, "grant": spec.grant}).encode()


def _committer(root: psutil.Process) -> psutil.Process | None:
    """The committer among ``root``'s descendants (the process listening on a socket named `committer')."""
    for p in root.children(recursive=True):
        try:
            if any(str(c.laddr).endswith("/committer") for c in p.net_connections(kind="unix")):
                return p
        except psutil.Error:
            continue
    return None


def test_a_committer_that_dies_fails_the_blocks_holding_its_grants_saying_so(prefix, tmp_path):
    flag, cache = tmp_path / "holding", tmp_path / "cache"
    name = experiment(prefix, "held", second={"flag": str(flag)})
    with subprocess.Popen(cli_command("--prefix", prefix, "--cache", cache, "experiments", "run", name, "--json"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert wait_until(flag.exists, 30)
            found = _committer(psutil.Process(proc.pid))
            assert found is not None, "no committer found"
            found.kill()
            out, err = proc.communicate(timeout=30)  # (no hang: the block waiting on it is failed at once)
        finally:
            proc.kill()
    rep = json.loads(out)
    assert proc.returncode != 0 and rep["status"] == "failed" and rep["blocks"]["second"]["status"] == "failed"
    error = rep["blocks"]["second"]["error"]
    assert error["kind"] == "system" and "the committer process it hands its outputs to died" in error["message"], error
    assert "the committer process it hands its outputs to died" in err
    assert rep["blocks"]["analysis"]["status"] in ("skipped", "failed")
    assert not leftovers(cache)
    assert [r for r in verify_cache(cache) if r["status"] != "ok"] == []


@pytest.mark.parametrize("n", [10, 20_000])
def test_a_handoff_writer_writes_what_a_cache_writer_does_once_it_grows_too_large(tmp_path, n):
    from backbeat.data.handoff import HandoffWriter

    handed: list = []
    sent: list[int] = []
    t = value_type("run/int32/1", {"value": "int32"})
    writers = [CacheWriter(tmp_path / "own.h5", "run/int32/1", {"value": "int32"}, key="k", end=n - 1),
               HandoffWriter(tmp_path / "handed.h5", "run/int32/1", {"value": "int32"}, key="k", end=n - 1,
                             handoff=lambda batches, end: handed.append((batches, end)) or "handed")]
    writers[1].grow(1024, 4096)
    writers[1].on_batch = lambda b: sent.extend(int(i) for i in b.starts)
    for w in writers:
        for i in range(n):
            w.write(as_value(t, {"value": np.int32(i * 3)}))
    digests = [w.close() for w in writers]
    assert sent == list(range(n))  # every unit told to the consumers once, in order
    if n == 10:  # handed over: nothing on disk, the batches and end given to the handoff
        assert digests[1] == "handed" and not (tmp_path / "handed.h5").exists()
        assert [int(i) for b, _e in handed for batch in b for i in batch.starts] == list(range(n))
        assert handed[0][1] == n - 1
    else:  # written here after all: the same file
        assert not handed and digests[0] == digests[1]
        assert (tmp_path / "own.h5").read_bytes() == (tmp_path / "handed.h5").read_bytes()
