"""The per-unit fast paths give exactly what the general paths give.

* the driver's one-input step loop (``iter_units``) against the general ``platform_next`` loop;
* ``Output`` appending to a cache writer's buffer against going through ``put``;
* the database provider computing windows on demand, with the client asking for the next
  window ahead of need, several outputs interleaved on one socket (a real provider process).
"""

from __future__ import annotations

import multiprocessing
import textwrap

import numpy as np
import pytest
from _steploop import EXP, FMT, F, ListSink, Recorder, run_steps

from backbeat.core import hashing
from backbeat.core.errors import DataError, UserCodeError, WireError
from backbeat.data import dbindex
from backbeat.data.batch import Batch
from backbeat.data.cachereader import CacheReader
from backbeat.data.cachewriter import CacheWriter
from backbeat.data.values import value_type
from backbeat.runtime import dbprovider
from backbeat.runtime.driver import build_inputs, build_outputs, run_algorithm
from backbeat.runtime.inputs import ListDataSource
from backbeat.runtime.outputs import Output, SynchronizationListener
from backbeat.runtime.sources import BatchSource, restrict

UNITS = [(0, 1), (2, 2), (3, 5), (6, 6), (7, 9), (10, 10), (11, 14)]


def _batch(units=UNITS) -> Batch:
    values = [F(value=np.float64(10 * k + 0.5)) for k in range(len(units))]
    return Batch.from_values(FMT, EXP, values, [s for s, _ in units], [e for _, e in units])


def _batch_source(window=3, prefetched=None) -> BatchSource:
    batch = _batch()

    def prefetch(i, j):
        prefetched.append((i, j))

    return BatchSource(batch.starts, batch.ends, lambda i, j: batch.slice(i, j), window,
                       prefetch if prefetched is not None else None)


def _list_source() -> ListDataSource:
    return ListDataSource(_batch().to_values(), UNITS)


@pytest.mark.parametrize("stop_after", [None, 4])
def test_one_input_step_loop_equals_the_general_loop(stop_after):
    runs = []
    for source in (_list_source(), _batch_source()):
        assert hasattr(source, "iter_units") == isinstance(source, BatchSource)
        algo = Recorder(stop_after)
        runs.append((algo.seen, *run_steps(source, algo)))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) == (stop_after or len(UNITS))


def test_iter_units_prefetches_the_next_window_and_restricts():
    asked = []
    src = _batch_source(window=3, prefetched=asked)
    assert [u[1:] for u in src.iter_units()] == UNITS
    assert asked == [(3, 6), (6, 7)]  # the following window, announced as each one is fetched
    assert src[4][1:] == UNITS[4]  # random access still works after iteration
    assert [u[1:] for u in src.iter_units(5)] == UNITS[5:]
    part = restrict(_batch_source(), 3, 9)
    assert [u[1:] for u in part.iter_units()] == UNITS[2:5]
    assert [u[1:] for u in part.iter_units(2)] == UNITS[4:5]
    assert src.last_end() == 14


def _write(path, fused: bool, buffer_units: int):
    """Writes through BEAT's Output into a cache writer; ``fused`` lets it fill the buffer directly."""
    writer = CacheWriter(path, FMT, EXP, key="k", start=0, end=14, buffer_units=buffer_units)

    class Sink:
        def __init__(self):
            self.write = writer.put
            if fused:
                self.writer = writer

    listener = SynchronizationListener()
    out = Output("out", Sink(), listener, value_type=F)
    assert (out._buffer is not None) == fused
    for k, (s, e) in enumerate(UNITS):
        listener.onIntervalChanged(s, e)
        if k == 2:  # an explicit end within the step, then the rest of it
            out.write(F(value=np.float64(k)), 4)
            out.write({"value": np.float64(-k)})
        elif k % 2:
            out.write({"value": np.float64(k)})
        else:
            out.write(F(value=np.float64(k)))
    digest = writer.close()
    with CacheReader(path) as reader:
        return digest, reader.starts.tolist(), reader.ends.tolist(), [float(v.value) for v in reader.read_units(0, len(reader)).to_values()]


@pytest.mark.parametrize("buffer_units", [1, 2, 3, 64])
def test_output_filling_the_writer_buffer_equals_put(tmp_path, buffer_units):
    fused = _write(tmp_path / "fused.h5", True, buffer_units)
    plain = _write(tmp_path / "plain.h5", False, buffer_units)
    assert fused == plain
    assert fused[1][:4] == [0, 2, 3, 5] and fused[2][:4] == [1, 2, 4, 5]


def test_fused_output_still_refuses_what_put_refuses(tmp_path):
    writer = CacheWriter(tmp_path / "x.h5", FMT, EXP, key="k", start=0, end=3)

    sink = type("Sink", (), {"write": staticmethod(writer.put), "writer": writer})()
    listener = SynchronizationListener()
    out = Output("out", sink, listener, value_type=F)
    assert out._buffer is not None
    listener.onIntervalChanged(0, 1)
    out.write({"value": np.float64(1)})
    with pytest.raises(KeyError):  # BEAT's error: an end before the last written index
        out.write({"value": np.float64(1)}, 0)
    listener.onIntervalChanged(2, 9)  # beyond the output's range: the writer refuses it
    with pytest.raises(DataError, match="within"):
        out.write({"value": np.float64(2)})
    with pytest.raises(TypeError):
        out.write({"value": "not a number"})
    writer.abort()


VIEW = textwrap.dedent('''
    import collections

    import numpy

    from beat.backend.python.database import View

    Entry = collections.namedtuple("Entry", ["group", "i"])


    class Items(View):
        def index(self, root_folder, parameters):
            return [Entry(i // 3, i) for i in range(int(parameters["n"]))]

        def get(self, output, index):
            obj = self.objs[index]
            if obj.i == int(self.parameters.get("fail_at", -1)):
                raise ValueError("item %d is broken" % obj.i)
            if output == "group":
                return {"value": numpy.float64(obj.group)}
            return {"value": numpy.float64(obj.i) / 4}
''')


@pytest.fixture()
def provider(tmp_path):
    code = tmp_path / "db.py"
    code.write_text(VIEW)
    procs = []

    def start(n=50, **parameters):
        snapshot = {"path": str(code), "sha256": hashing.sha(code.read_bytes()), "filename": str(code), "uses": {}}
        spec = {"database": "t/1", "code": snapshot, "view": "Items", "root_folder": str(tmp_path),
                "parameters": {"n": n, **parameters}, "index_path": str(tmp_path / f"index{len(procs)}.db"),
                "outputs": {"i": [FMT, EXP], "group": [FMT, EXP]}}
        dbprovider.build_index({"spec": spec})
        address = f"ipc://{tmp_path}/provider{len(procs)}"
        proc = multiprocessing.get_context("fork").Process(
            target=dbprovider.serve, args=({"spec": {"address": address, "datasets": {"items": spec}}},), daemon=True)
        proc.start()
        procs.append(proc)
        return dbprovider.DatabaseClient(address, timeout_ms=20_000)

    yield start
    for proc in procs:
        proc.kill()
        proc.join()


def test_provider_serves_interleaved_outputs_with_prefetching(provider):
    client = provider(n=50)
    try:
        items = client.source("items", "i", FMT, EXP, window=4)
        groups = client.source("items", "group", FMT, EXP, window=3)
        assert len(items) == 50 and len(groups) == 17
        it_items, it_groups = items.iter_units(), groups.iter_units()
        got_items, got_groups = [], []
        for k in range(50):  # both outputs read in step, as two inputs of one block are
            got_items.append(next(it_items))
            if k % 3 == 0:
                got_groups.append(next(it_groups))
        assert [(float(v.value), s, e) for v, s, e in got_items] == [(i / 4, i, i) for i in range(50)]
        assert [(float(v.value), s, e) for v, s, e in got_groups] == [
            (float(g), 3 * g, min(3 * g + 2, 49)) for g in range(17)]
        assert items.bytes_read == 50 * 8 + 50 * 16  # every window fetched once (values + ranges)
        with pytest.raises(WireError, match="requested"):
            client._ask(b"get", b"items", b"i", b"40", b"60")
        assert client._ask(b"bye") == []
    finally:
        client.close()


def test_view_failure_in_a_prefetched_window_surfaces_when_that_window_is_read(provider):
    client = provider(n=30, fail_at=9)
    try:
        items = client.source("items", "i", FMT, EXP, window=4)
        it = items.iter_units()
        assert [next(it)[1] for _ in range(8)] == list(range(8))  # windows 0-3, 4-7 (8-11 asked ahead)
        with pytest.raises(UserCodeError, match="item 9 is broken"):
            next(it)
    finally:
        client.close()


def test_index_files_are_read_back_as_beat_entries(tmp_path):
    path = tmp_path / "i.db"
    dbindex.write_index(path, [{"b": 1, "a": [1, 2]}, {"a": [3], "b": 2}])
    entries = dbindex.read_index(path)
    assert [tuple(e) for e in entries] == [([1, 2], 1), ([3], 2)] and entries[0]._fields == ("a", "b")
    dbindex.write_index(path, [{"only": k} for k in range(3)])
    assert [e.only for e in dbindex.read_index(path)] == [0, 1, 2]


class LegacyRecorder(Recorder):
    def process(self, inputs, outputs):  # legacy algorithms get (inputs, outputs)
        return Recorder.process(self, inputs, None, outputs)


class NotifiedListener(SynchronizationListener):
    """A listener of another class: the step loop must call its ``onIntervalChanged``."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def onIntervalChanged(self, start, end):  # noqa: N802 (BEAT name)
        self.calls += 1
        super().onIntervalChanged(start, end)


@pytest.mark.parametrize("kind", ["legacy", "sequential"])
@pytest.mark.parametrize("notified", [False, True])
def test_step_loop_variants_equal_the_general_loop(kind, notified):
    runs, reports = [], []
    for source in (_list_source(), _batch_source()):
        inputs, loaders = build_inputs(kind, "ch", {"in": ("ch", source, FMT)})
        if notified:
            inputs.main_group.synchronization_listener = NotifiedListener()
        sink = ListSink()
        outputs = build_outputs({"out": (sink, F)}, inputs)
        algo = LegacyRecorder() if kind == "legacy" else Recorder()
        progress: list[int] = []
        summary = run_algorithm(algo, kind, inputs=inputs, data_loaders=loaders, outputs=outputs,
                                progress=progress.append)
        runs.append((algo.seen, sink.written, summary.steps))
        reports.append(progress[-1])
        if notified:
            assert inputs.main_group.synchronization_listener.calls == len(UNITS)
    assert runs[0] == runs[1] and reports == [len(UNITS)] * 2


def test_the_collector_examines_less_while_an_algorithm_runs_and_garbage_still_goes():
    import gc
    import weakref

    from backbeat.runtime.driver import YOUNG_THRESHOLD

    before = gc.get_threshold()
    n = 3 * YOUNG_THRESHOLD
    starts = np.arange(n, dtype=np.int64)
    batch = Batch(FMT, EXP, starts, starts, {"value": np.zeros(n)})
    alive = weakref.WeakSet()
    seen = {}

    class Node:
        pass

    class Cycles:  # makes a reference cycle per unit: only the collector frees them
        def process(self, inputs, data_loaders, outputs):
            seen.setdefault("threshold", gc.get_threshold()[0])
            node = Node()
            node.me = node
            alive.add(node)
            seen["most"] = max(seen.get("most", 0), len(alive))
            outputs["out"].write(inputs["in"].data)
            return True

    source = BatchSource(starts, starts, batch.slice, 4096)
    inputs, loaders = build_inputs("sequential", "ch", {"in": ("ch", source, FMT)})
    sink = ListSink()
    run_algorithm(Cycles(), "sequential", inputs=inputs, data_loaders=loaders,
                  outputs=build_outputs({"out": (sink, F)}, inputs))
    assert seen["threshold"] >= YOUNG_THRESHOLD > before[0]
    assert gc.get_threshold() == before  # restored
    assert seen["most"] < n // 2  # collected along the way, not only at the end
    assert len(sink.written) == n


def test_streamed_batches_grow_and_the_file_does_not_depend_on_them(tmp_path):
    n = 100
    values = [F(value=np.float64(k)) for k in range(n)]
    digests, sizes = [], []
    for grow in (False, True):
        writer = CacheWriter(tmp_path / f"{grow}.h5", FMT, EXP, key="k", start=0, end=n - 1, buffer_units=64)
        if grow:
            writer.grow(1, 16)
            writer.on_batch = lambda b: sizes.append(len(b))
        listener = SynchronizationListener()
        sink = type("Sink", (), {"write": staticmethod(writer.put), "writer": writer})()
        out = Output("out", sink, listener, value_type=F)
        for k, v in enumerate(values):
            listener.onIntervalChanged(k, k)
            if k == 50:  # the general path (a dict) in between: it follows the same thresholds
                out.write({"value": np.float64(k)})
            else:
                out.write(v)
        digests.append(writer.close())
    assert sizes[:6] == [1, 2, 4, 8, 16, 16] and sum(sizes) == n and max(sizes) == 16
    assert digests[0] == digests[1]


def test_streamed_batches_stop_growing_when_their_values_are_large(tmp_path):
    """Variable-length values are not counted by the unit budget: growth also stops on bytes."""
    fmt, exp = "user/ragged/1", {"value": [0, "float64"]}
    big = value_type(fmt, exp)
    writer = CacheWriter(tmp_path / "r.h5", fmt, exp, key="k", start=0, end=39)
    writer.grow(4, 1024)
    sizes = []
    writer.on_batch = lambda b: sizes.append(len(b))
    for _ in range(40):
        writer.write(big(value=np.zeros(40_000)))  # 320 KB each: a batch of 4 is over 1 MB
    writer.close()
    assert sizes == [4] * 10
