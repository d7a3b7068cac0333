"""A small streamed output is announced before its producer commits it (backbeat.runtime.streams):
its consumer computes meanwhile but commits nothing before its producer did, with the content
(digest) it received.  Real block processes, ZeroMQ sockets and HDF5 files."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from backbeat.cache.backends import open_store
from backbeat.core.errors import IntegrityError, WireError
from backbeat.data.cachewriter import CacheWriter
from backbeat.execution import executors as executor

EXP_DIR = Path("experiments/run/run/pipeline/1")

#: copies its input; with mode "commitkill", the process kills itself when it renames its cache file
#: into place — after its stream's end was sent, before its commit — once its consumer had time to
#: reach its own commit; "late": starts LATE seconds late (then is fast); "slow": spends SLOW seconds
#: over its UNITS units, evenly (its input's early end must be read at the first, not the last)
COMMITKILL = '''import os
import signal
import time

LATE, SLOW, UNITS, LINGER = 2.0, 2.0, 6, 1.5  # (the pipeline's dataset has 6 units)


def _die(*args, **kwargs):
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)


def _unpublishable():
    """Its file gets a second link once renamed (a sandboxed run refuses to publish it), and the
    process ends 1.5 s after its commit (after its consumer)."""
    import backbeat.runtime.blockrun as blockrun

    replace, committed = os.replace, blockrun._committed

    def linked(src, dst):
        replace(src, dst)
        os.link(dst, dst + ".link")

    def late(*args, **kwargs):
        time.sleep(1.5)
        return committed(*args, **kwargs)

    os.replace, blockrun._committed = linked, late


def _linger():
    """The process ends LINGER seconds after its commit (and its consumers' acks)."""
    import backbeat.runtime.blockrun as blockrun

    committed = blockrun._committed

    def late(*args, **kwargs):
        time.sleep(LINGER)
        return committed(*args, **kwargs)

    blockrun._committed = late


class Algorithm:
    def setup(self, parameters):
        self.mode = parameters["mode"]
        if self.mode == "late":
            time.sleep(LATE)
        return True

    def process(self, inputs, data_loaders, outputs):
        if self.mode == "commitkill" and not inputs.hasMoreData():
            os.replace = _die
        if self.mode == "slow":
            time.sleep(SLOW / UNITS)
        if self.mode == "unpublishable" and not inputs.hasMoreData():
            _unpublishable()
        if self.mode == "linger" and not inputs.hasMoreData():
            _linger()
        if self.mode == "raise":
            raise RuntimeError("this block fails on its own")
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


def experiment(prefix: Path, mode: str, first: str | None = None) -> str:
    decl = json.loads((prefix / EXP_DIR / "base.json").read_text())
    decl["blocks"]["second"].update(algorithm="run/commitkill/1", parameters={"mode": mode})
    if first is not None:
        decl["blocks"]["first"].update(algorithm="run/commitkill/1", parameters={"mode": first})
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


def test_a_producer_ends_after_its_own_commit_not_after_its_slow_consumer(prefix, tmp_path):
    """`first` starts LATE (2 s) late, then streams its 6 units and commits at once; `second`
    spends SLOW (2 s) on its 6 units, a third of a second on each.  With a 3.5 s time limit, `first`
    (~2.1 s) must be done long before `second`: were it to wait until `second` reads its early `end`
    before its last unit (found by the review of wave 10) — or until `second`'s own commit — it
    would live ~3.8 s or more and be killed by its own time limit (while `second`'s limit counts
    from `first`'s end: ~2.4 s, its units and its commit)."""
    rep = executor.run_experiment(prefix, tmp_path / "cache", experiment(prefix, "slow", first="late"),
                                  executor.Options(jobs=2, timeout_s=3.5))
    assert {b: v["status"] for b, v in rep["blocks"].items()} == {"first": "ran", "second": "ran",
                                                                     "analysis": "ran"}, rep["blocks"]
    assert rep["blocks"]["second"]["statistics"]["streamed_from"] == "first"


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
def test_a_sandboxed_consumer_is_not_published_before_its_producer(prefix, tmp_path):
    """`second`'s file is refused by the sandbox's checks after its consumer `analysis` has ended
    well (with its input's digest): `analysis` is held until `second` is published, then skipped."""
    cache = tmp_path / "cache"
    rep = executor.run_experiment(prefix, cache, experiment(prefix, "unpublishable"),
                                  executor.Options(jobs=2, sandbox=True))
    assert {b: v["status"] for b, v in rep["blocks"].items()} == {"first": "ran", "second": "failed",
                                                                     "analysis": "skipped"}, rep["blocks"]
    assert "the sandbox refused the outputs of `second'" in rep["blocks"]["second"]["error"]["message"]
    store = open_store(cache)
    assert not [k for b in ("second", "analysis") for k in rep["blocks"][b]["outputs"].values()
                if store.output_path(k).exists()]


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
def test_a_sandboxed_consumer_that_fails_is_reported_failed_not_held(prefix, tmp_path):
    """`second` fails at once while `first` (whose file the sandbox then refuses) is still running:
    its own failure is what the report says — not `skipped` because its producer failed later."""
    rep = executor.run_experiment(prefix, tmp_path / "cache", experiment(prefix, "raise", first="unpublishable"),
                                  executor.Options(jobs=2, sandbox=True))
    status = {b: v["status"] for b, v in rep["blocks"].items()}
    assert status == {"first": "failed", "second": "failed", "analysis": "skipped"}, rep["blocks"]
    assert "this block fails on its own" in rep["blocks"]["second"]["error"]["message"]


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
def test_a_held_sandboxed_consumer_reports_its_own_wall_time_not_the_hold(prefix, tmp_path):
    """`first` ends LINGER (1.5 s) after its commit; `second`, streamed from it, ends well meanwhile
    and is held until `first` is published: its `wall_s` ends when its process did — not when it was
    published (before, it counted the hold: about `first`'s own)."""
    rep = executor.run_experiment(prefix, tmp_path / "cache", experiment(prefix, "none", first="linger"),
                                  executor.Options(jobs=2, sandbox=True))
    assert {b: v["status"] for b, v in rep["blocks"].items()} == {"first": "ran", "second": "ran",
                                                                     "analysis": "ran"}, rep["blocks"]
    stats = {b: rep["blocks"][b]["statistics"] for b in ("first", "second")}
    assert stats["second"]["streamed_from"] == "first"
    assert stats["second"]["wall_s"] < stats["first"]["wall_s"] - 0.75, stats


def _pair(tmp_path: Path, units: int = 10, grow: tuple[int, int] | None = None):
    from backbeat.runtime import streams
    from backbeat.runtime.spec import StreamTarget

    expanded = {"value": "int32"}
    address = f"ipc://{tmp_path}/s"
    sender = streams.StreamSender([StreamTarget(address, str(tmp_path / "cancel"))])
    source = streams.StreamSource(address, "t/1", expanded)
    writer = CacheWriter(tmp_path / "out.h5", "t/1", expanded)
    if grow is not None:  # (as a block's streamed output: its first batch is sent before the seal)
        writer.grow(*grow)
    writer.on_batch = sender.send
    for i in range(units):
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
        confirm = threading.Timer(0.3, lambda: (sender.confirm(writer.close()), sender.acks()))
        t0 = time.monotonic()
        confirm.start()
        source.settle()  # returns once the producer's file is in place
        assert time.monotonic() - t0 >= 0.25 and (tmp_path / "out.h5").exists()
        confirm.join()
    finally:
        sender.close()
        source.close()


def test_the_early_end_is_read_before_the_first_unit_and_a_stopped_watcher_fails_closed(tmp_path):
    """The consumer reads an early `end` (and starts the commit's watcher) before it hands the
    algorithm the batch's first unit, not its last; a watcher stopped before `committed` arrives
    leaves settle() refusing to go on (it never reads a stopped watcher as a commit)."""
    for attempt, delay in enumerate((0.1, 0.5, 2.0)):  # (until the end has crossed the socket: under load
        folder = tmp_path / str(attempt)               # ZeroMQ's I/O threads may take longer than 0.1 s)
        folder.mkdir()
        sender, source, writer = _pair(folder)
        try:
            digest = writer.seal()
            sender.announce(writer.start, writer.last, digest)
            time.sleep(delay)  # (the batch and the end are both there)
            first = next(iter(source.iter_units()))
            assert first[1] == 0
            if source.end is None and attempt < 2:
                continue  # (the end had not arrived yet: nothing to read before the first unit)
            assert source.end == 9 and source._watcher is not None
            source._stop = True  # (as close() does)
            source._watcher.join()
            with pytest.raises(WireError, match="closed before its producer's commit"):
                source.settle()
            break
        finally:
            writer.abort()
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


def test_nothing_reaches_a_sealed_writer(tmp_path):
    """After seal() (the digest taken, announced to the consumers), every way of appending is
    refused, and close() commits nothing that the digest does not cover: units left in buffer()'s
    buffer are refused, not silently dropped (put, write_batch and flush being refused, nothing else
    reaches the file: close() has no other check to make)."""
    from backbeat.core.errors import DataError
    from backbeat.data.batch import Batch

    expanded = {"value": "int32"}
    writer = CacheWriter(tmp_path / "out.h5", "t/1", expanded)
    add, ends, _threshold, flush = writer.buffer()
    for i in range(3):
        writer.put({"value": np.int32(i)}, i, i)
    writer.seal()
    with pytest.raises(DataError, match="sealed"):
        writer.put({"value": np.int32(3)}, 3, 3)
    extra = Batch.from_values("t/1", expanded, [writer.type(value=np.int32(3))], np.array([3]), np.array([3]))
    with pytest.raises(DataError, match="sealed"):
        writer.write_batch(extra)
    add(writer.type(value=np.int32(3)))  # (a producer appending to the buffer itself)
    ends.append(3)
    with pytest.raises(DataError, match="after its digest was taken"):
        flush()
    with pytest.raises(DataError, match="after its digest was taken"):  # (and not flushed: close() sees it)
        writer.close()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("units", [1024, 1025])
def test_a_stream_of_exactly_early_units_is_announced_early(tmp_path, units):
    """The limits of both sides meet: at EARLY_UNITS units the producer announces before its commit
    and the consumer, which hashes up to as many, checks it; one more unit and it does not."""
    from backbeat.runtime import streams
    from backbeat.runtime.blockrun import STREAM_BATCH, STREAM_FIRST

    assert units - 1024 in (0, 1) and streams.EARLY_UNITS == 1024 and streams.HASHED_BYTES >= streams.EARLY_BYTES
    sender, source, writer = _pair(tmp_path, units, grow=(STREAM_FIRST, STREAM_BATCH))
    try:
        digest = writer.seal()
        assert sender.early == (units == 1024)
        if sender.early:
            sender.announce(writer.start, writer.last, digest)
        else:
            writer.close()
            sender.finish(writer.last)
        assert [v.value for v, _s, _e in source.iter_units()] == list(range(units))
        if sender.early:
            threading.Timer(0.1, lambda: sender.confirm(writer.close())).start()
        source.settle()
        sender.acks()
        assert (tmp_path / "out.h5").exists()
    finally:
        sender.close()
        source.close()

