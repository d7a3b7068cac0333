"""Value objects made again (``backbeat.data.recycling``): a window's value objects are reused for a
later window only when nothing else can reach them — an object an algorithm keeps (a reference in a
list, a weak reference) keeps its value whatever follows; objects nobody keeps are reused, through a
real ZeroMQ stream and a cache file read window by window, and what the block writes is exact."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
from _steploop import EXP, FMT, F

from backbeat.data import recycling
from backbeat.data.batch import Batch
from backbeat.data.cachereader import CacheReader
from backbeat.data.cachewriter import CacheWriter
from backbeat.data.values import value_type
from backbeat.runtime.driver import build_inputs, build_outputs, run_algorithm
from backbeat.runtime.sources import BatchSource


def _batch(a: int, b: int) -> Batch:
    idx = np.arange(a, b, dtype=np.int64)
    return Batch(FMT, EXP, idx, idx.copy(), {"value": idx + 0.5})


def test_this_interpreter_counts_references_as_expected():
    assert recycling.ALONE is not None  # (else nothing is ever reused: correct, but the gain is gone)


def test_objects_nothing_refers_to_are_made_again_with_every_field_set():
    spare = _batch(0, 5).to_values()
    assert recycling.unreachable(spare, F)
    ids = [id(v) for v in spare]
    again = _batch(5, 8).to_values(spare)
    assert [id(v) for v in again] == ids[:3] and spare == []  # (the caller gave them up)
    assert [float(v.value) for v in again] == [5.5, 6.5, 7.5] and all(type(v) is F for v in again)
    more = _batch(8, 12).to_values(again)  # (fewer spare than units: new objects for the rest)
    assert [float(v.value) for v in more] == [8.5, 9.5, 10.5, 11.5] and len({id(v) for v in more}) == 4


@pytest.mark.parametrize("hold", ["reference", "weak reference", "another class"])
def test_a_window_anything_still_reaches_is_not_reused(hold):
    spare = _batch(0, 4).to_values()
    kept = spare[2]
    other = value_type("user/g/1", {"value": "float64"})
    held: object
    if hold == "weak reference":
        held = weakref.ref(kept)
    elif hold == "another class":
        spare[1] = other(value=np.float64(9))
        held = None
    else:
        held = kept
    del kept
    assert not recycling.unreachable(spare, F)
    again = _batch(4, 8).to_values(spare)
    assert spare == []  # (given up either way: the unreachable ones, if any, are freed)
    assert [float(v.value) for v in again] == [4.5, 5.5, 6.5, 7.5]
    if hold == "weak reference":
        assert held() is None  # (the only other reference was the spare list's: it went)
    elif hold == "reference":
        assert float(held.value) == 2.5  # type: ignore[attr-defined]


class Keeper:
    """Keeps every 997th value object (``strong``), weak references to every 499th (``weak``), the
    attribute dictionary of every 997th (``vars``: it holds the dictionary, not the object) or memoises
    each unit's value in its object's dictionary (``memo``: a later unit must never find an earlier
    one's), writes each unit's value as given."""

    def __init__(self, how: str):
        self.kept: list[tuple[object, float]] = []
        self.dicts: list[tuple[dict, float]] = []
        self.stale = 0
        self.watched: list[tuple[weakref.ref, float]] = []
        self.step = 0
        self.how = how

    def process(self, inputs, data_loaders, outputs):
        data = inputs["in"].data
        if self.how == "strong" and self.step % 997 == 0:
            self.kept.append((data, float(data.value)))
        if self.how == "weak" and self.step % 499 == 0:
            self.watched.append((weakref.ref(data), float(data.value)))
        if self.how == "vars" and self.step % 997 == 0:
            self.dicts.append((vars(data), float(data.value)))
        if self.how == "memo":
            self.stale += data.__dict__.setdefault("_memo", float(data.value)) != float(data.value)
        self.step += 1
        outputs["out"].write(data)
        return True

    def check(self, n: int) -> None:
        assert self.step == n
        assert [float(v.value) for v, _ in self.kept] == [c for _, c in self.kept]  # type: ignore[attr-defined]
        assert [float(d["value"]) for d, _ in self.dicts] == [c for _, c in self.dicts]
        assert self.stale == 0
        for ref, value in self.watched:
            obj = ref()
            assert obj is None or float(obj.value) == value  # (never another unit's object)


class Passer:
    """BEAT's identity block: keeps nothing."""

    def process(self, inputs, data_loaders, outputs):
        outputs["out"].write(inputs["in"].data)
        return True


def _drive(source, tmp_path, algorithm) -> list[float]:
    inputs, loaders = build_inputs("sequential", "ch", {"in": ("ch", source, FMT)})
    writer = CacheWriter(tmp_path / "out.h5", FMT, EXP)
    sink = type("Sink", (), {})()
    sink.write, sink.writer = writer.put, writer  # type: ignore[attr-defined]
    run_algorithm(algorithm, "sequential", inputs=inputs, data_loaders=loaders,
                  outputs=build_outputs({"out": (sink, F)}, inputs))
    writer.close()
    reader = CacheReader(tmp_path / "out.h5")
    return reader.read_units(0, len(reader.starts)).columns["value"].tolist()


def _count_reuse(monkeypatch) -> list[int]:
    made = [0, 0]  # windows made anew, windows made of spare objects
    unreachable = recycling.unreachable

    def spy(pool, cls):
        found = unreachable(pool, cls)
        made[found] += 1
        return found

    monkeypatch.setattr(recycling, "unreachable", spy)
    return made


@pytest.mark.parametrize("keep", ["", "strong", "weak", "vars", "memo"])
def test_a_stream_read_batch_after_batch(tmp_path, monkeypatch, keep):
    from backbeat.runtime import streams
    from backbeat.runtime.spec import StreamTarget

    n = 20_000
    made = _count_reuse(monkeypatch)
    address = f"ipc://{tmp_path}/s"
    sender = streams.StreamSender([StreamTarget(address, str(tmp_path / "cancel"))])
    source = streams.StreamSource(address, FMT, EXP)
    writer = CacheWriter(tmp_path / "in.h5", FMT, EXP)
    writer.grow(1024, 4096)
    writer.on_batch = sender.send
    try:
        for k in range(n):
            writer.put({"value": np.float64(k + 0.5)}, k, k)
        writer.close()
        sender.finish(writer.last)
        algorithm = Keeper(keep) if keep else Passer()
        written = _drive(source, tmp_path, algorithm)
        source.settle()
        sender.acks()
    finally:
        sender.close()
        source.close()
    assert written == [k + 0.5 for k in range(n)]
    if isinstance(algorithm, Keeper):
        algorithm.check(n)
        assert made[0] > 0  # (windows holding a kept or watched object are made anew)
    else:
        assert made[1] > 0  # (objects nobody kept were made again)


@pytest.mark.parametrize("keep", ["", "strong", "weak", "vars", "memo"])
def test_a_cache_file_read_window_after_window(tmp_path, monkeypatch, keep):
    n = 5_000
    with CacheWriter(tmp_path / "in.h5", FMT, EXP) as writer:
        for k in range(n):
            writer.put({"value": np.float64(k + 0.5)}, k, k)
    made = _count_reuse(monkeypatch)
    reader = CacheReader(tmp_path / "in.h5")
    source = BatchSource(reader.starts, reader.ends, reader.read_units, window=300)
    algorithm = Keeper(keep) if keep else Passer()
    assert _drive(source, tmp_path, algorithm) == [k + 0.5 for k in range(n)]
    if isinstance(algorithm, Keeper):
        algorithm.check(n)
        assert made[0] > 0
    else:
        assert made[1] > 0
