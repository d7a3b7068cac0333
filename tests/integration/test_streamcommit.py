"""A small streamed output is announced before its producer commits it (backbeat.runtime.streams):
its consumer computes meanwhile but commits nothing before its producer did, with the content
(digest) it received.  Real block processes, ZeroMQ sockets and HDF5 files."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from backbeat.cache.backends import open_store
from backbeat.core.errors import IntegrityError
from backbeat.data.cachewriter import CacheWriter
from backbeat.execution import executors as executor

EXP_DIR = Path("experiments/run/run/pipeline/1")

#: copies its input; with mode "commitkill", the process kills itself when it renames its cache file
#: into place — after its stream's end was sent, before its commit — once its consumer had time to
#: reach its own commit
COMMITKILL = '''import os
import signal
import time


def _die(*args, **kwargs):
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)


class Algorithm:
    def setup(self, parameters):
        self.mode = parameters["mode"]
        return True

    def process(self, inputs, data_loaders, outputs):
        if self.mode == "commitkill" and not inputs.hasMoreData():
            os.replace = _die
        outputs["out"].write(inputs["value"].data)
        return True
'''


@pytest.fixture
def prefix(copy_prefix) -> Path:
    root = copy_prefix()
    algo = json.loads((root / "algorithms/run/faulty/1.json").read_text())
    (root / "algorithms/run/commitkill").mkdir()
    (root / "algorithms/run/commitkill/1.json").write_text(json.dumps(algo, indent=4))
    (root / "algorithms/run/commitkill/1.py").write_text(COMMITKILL)
    return root


def experiment(prefix: Path, mode: str) -> str:
    decl = json.loads((prefix / EXP_DIR / "base.json").read_text())
    decl["blocks"]["second"].update(algorithm="run/commitkill/1", parameters={"mode": mode})
    (prefix / EXP_DIR / f"{mode}.json").write_text(json.dumps(decl, indent=4))
    return f"run/run/pipeline/1/{mode}"


def test_a_producer_killed_between_its_end_and_its_commit_leaves_nothing_cached_downstream(prefix, tmp_path):
    cache = tmp_path / "cache"
    rep = executor.run_experiment(prefix, cache, experiment(prefix, "commitkill"), executor.Options(jobs=2))
    assert {b: v["status"] for b, v in rep["blocks"].items()} == {"first": "ran", "second": "failed",
                                                                     "analysis": "skipped"}
    store = open_store(cache)
    committed = {b for b, v in rep["blocks"].items() for key in v["outputs"].values() if store.output_path(key).exists()}
    assert committed == {"first"}  # the analyzer had its input's end, not its commit: it committed nothing
    assert not [p for p in cache.rglob("*") if ".tmp-" in p.name]
    rep = executor.run_experiment(prefix, cache, experiment(prefix, "none"), executor.Options(jobs=2))
    assert {b: v["status"] for b, v in rep["blocks"].items()} == {"first": "cached", "second": "ran", "analysis": "ran"}
    assert rep["blocks"]["analysis"]["statistics"]["streamed_from"] == "second"


def _pair(tmp_path: Path):
    from backbeat.runtime import streams
    from backbeat.runtime.spec import StreamTarget

    expanded = {"value": "int32"}
    address = f"ipc://{tmp_path}/s"
    sender = streams.StreamSender([StreamTarget(address, str(tmp_path / "cancel"))])
    source = streams.StreamSource(address, "t/1", expanded)
    writer = CacheWriter(tmp_path / "out.h5", "t/1", expanded)
    writer.on_batch = sender.send
    for i in range(10):
        writer.put({"value": np.int32(i)}, i, i)
    return sender, source, writer


def test_a_consumer_reads_a_small_stream_to_its_end_before_the_commit_and_checks_its_digest(tmp_path):
    sender, source, writer = _pair(tmp_path)
    try:
        digest = writer.seal()
        assert sender.early
        sender.announce(writer.start, writer.last, digest)
        units = [v.value for v, _s, _e in source.iter_units()]  # the whole stream, nothing committed yet
        assert units == list(range(10)) and source.end == 9 and not (tmp_path / "out.h5").exists()
        confirm = threading.Timer(0.3, lambda: sender.confirm(writer.close()))
        t0 = time.monotonic()
        confirm.start()
        source.settle()  # returns once the producer's file is in place
        assert time.monotonic() - t0 >= 0.25 and (tmp_path / "out.h5").exists()
        confirm.join()
    finally:
        sender.close()
        source.close()


def test_a_consumer_refuses_an_announced_digest_that_is_not_what_it_received(tmp_path):
    sender, source, writer = _pair(tmp_path)
    try:
        writer.seal()
        sender.announce(writer.start, writer.last, "0" * 64)
        list(source.iter_units())
        with pytest.raises(IntegrityError, match="not those its producer announced"):
            source.settle()
    finally:
        writer.abort()
        sender.close()
        source.close()
