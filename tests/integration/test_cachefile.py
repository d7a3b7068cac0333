"""HDF5 cache files: round trips, digests, flipped bytes, killed writers, bounded reads."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from backbeat.cache.store import CacheStore
from backbeat.core.errors import DataError, IntegrityError
from backbeat.data import cachewriter
from backbeat.data.batch import Batch
from backbeat.data.cachereader import CacheReader, digest_of, stored_digest, verify
from backbeat.data.cachewriter import CacheWriter
from backbeat.data.values import value_type


def _strategies():
    path = Path(__file__).parents[1] / "unit" / "test_batch.py"
    spec = importlib.util.spec_from_file_location("_backbeat_batch_strategies", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


S = _strategies()
FMT = {"value": "float64", "label": "string", "vec": [0, "int16"], "pos": {"x": "int32", "y": "int32"}}
NAME = "user/mixed/1"


def _values(n):
    T = value_type(NAME, FMT)
    return [T(value=i / 3, label="ünit %d ✓" % i, vec=list(range(i % 4)), pos={"x": i, "y": -i}) for i in range(n)]


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(S.format_and_values(max_values=6))
def test_roundtrip_hypothesis(tmp_path_factory, fv):
    fmt, values = fv
    if not values:
        return
    path = tmp_path_factory.mktemp("h") / "out.h5"
    half = len(values) // 2
    with CacheWriter(path, "user/hypo/1", fmt, key="k1", start=10, end=10 + len(values) - 1,
                     buffer_units=2) as w:
        for v in values[:half]:
            w.write(v)
        w.write_batch(Batch.from_values("user/hypo/1", fmt, values[half:],
                                        np.arange(half, len(values)) + 10))
    with CacheReader(path) as r:
        assert r.verified and len(r) == len(values) and r.key == "k1"
        assert r.read_range(0, 10**6).to_values() == values
        assert [r.read(i) for i in range(len(values))] == values
        assert r.expanded == json.loads(json.dumps(fmt))


def test_every_type_and_rank_roundtrip(tmp_path):
    values = S.sink_values()
    path = tmp_path / "sink.h5"
    with CacheWriter(path, "user/sink/1", S.SINK, start=0, end=len(values) - 1) as w:
        for v in values:
            w.write(v)
    with CacheReader(path) as r:
        assert r.read_units(0, len(r)).to_values() == values


def test_writer_reader_api(tmp_path):
    path = tmp_path / "sub" / "out.h5"
    values = _values(1000)
    w = CacheWriter(path, NAME, FMT, key="abc", start=0, end=2999, buffer_units=128)
    for i, v in enumerate(values):
        w.write(v if i % 2 else v.as_dict(), end_data_index=3 * i + 2)
    assert not path.exists()
    digest = w.close()
    assert os.listdir(path.parent) == ["out.h5"]
    assert path.stat().st_size < 400_000
    with CacheReader(path) as r:
        assert r.digest == digest == verify(path) == digest_of(path) == stored_digest(path)
        assert (r.dataformat, r.key, r.start, r.end, len(r)) == (NAME, "abc", 0, 2999, 1000)
        assert r.starts.tolist() == list(range(0, 3000, 3)) and r.ends[-1] == 2999
        assert r.at_data_index(301) == (values[100], 300, 302)
        assert r.read_range(3, 11).to_values() == values[1:4]
        assert r.read_range(4, 11).to_values() == values[2:4]
        assert [len(b) for b in r.iter_batches(300)] == [300, 300, 300, 100]
        got = [v for v, _, _ in r]
        assert got == values
        with pytest.raises(IndexError):
            r.at_data_index(3000)
    with CacheReader(path, verify=False) as r:
        assert not r.verified and r.read(999) == values[999]


def test_compression_and_batches(tmp_path):
    path = tmp_path / "c.h5"
    n = 5000
    b = Batch.from_columns("user/arr/1", {"a": [100, "float64"]}, {"a": np.ones((n, 100))},
                           np.arange(n), np.arange(n))
    with CacheWriter(path, "user/arr/1", {"a": [100, "float64"]}, start=0, end=n - 1, compression="lzf") as w:
        w.write_batch(b.slice(0, 2000))
        w.write_batch(b.slice(2000, n))
    assert path.stat().st_size < n * 800 / 10
    with CacheReader(path) as r:
        assert r._ds["columns/a"].compression == "lzf"
        assert r.read_units(0, n).equals(b)


def test_files_are_sized_to_their_data_and_digests_do_not_depend_on_the_layout(tmp_path, monkeypatch):
    def write(name, n, compression=None):
        with CacheWriter(tmp_path / name, NAME, FMT, start=0, end=n - 1, compression=compression) as w:
            w.write_batch(Batch.from_values(NAME, FMT, _values(n)))

    digests = {}
    for name, n, compression in (("tiny.h5", 10, None), ("tiny-gz.h5", 10, "gzip"), ("mid.h5", 3000, None),
                                 ("mid-gz.h5", 3000, "gzip:9"), ("mid-lzf.h5", 3000, "lzf")):
        write(name, n, compression)
        digests[name] = stored_digest(tmp_path / name)
        with CacheReader(tmp_path / name) as r:  # verified: the digest covers the data, not the layout
            assert r.read_units(0, n).equals(Batch.from_values(NAME, FMT, _values(n)))
    assert os.path.getsize(tmp_path / "tiny.h5") < 12_000  # compact datasets (a chunked file took ~60 KB)
    with h5py.File(tmp_path / "mid.h5") as f:
        assert all(f[c].chunks is None for c in ("columns/value", "index/start"))  # contiguous, exact
    with h5py.File(tmp_path / "mid-gz.h5") as f:
        assert f["columns/value"].compression == "gzip" and f["columns/value"].compression_opts == 9
    assert os.path.getsize(tmp_path / "mid-gz.h5") < os.path.getsize(tmp_path / "mid.h5") / 2
    monkeypatch.setattr(cachewriter, "SMALL_BYTES", -1)  # the layout of older backbeat: always chunked
    write("old.h5", 3000)
    with h5py.File(tmp_path / "old.h5") as f:
        assert f["columns/value"].chunks is not None
    with CacheReader(tmp_path / "old.h5") as r:
        assert r.verified and r.read_units(2990, 3000).equals(Batch.from_values(NAME, FMT, _values(3000)).slice(2990, 3000))
    assert digests["tiny.h5"] == digests["tiny-gz.h5"]
    assert digests["mid.h5"] == digests["mid-gz.h5"] == digests["mid-lzf.h5"] == stored_digest(tmp_path / "old.h5")
    big = Batch.from_columns("user/x/1", {"v": "float64"}, {"v": np.arange(300_000) * 0.5}, np.arange(300_000),
                             np.arange(300_000))
    for step in (4096, 100_000):  # a chunked file's bytes do not depend on how its units were batched
        with CacheWriter(tmp_path / f"big{step}.h5", "user/x/1", {"v": "float64"}, start=0, end=299_999) as w:
            for a in range(0, 300_000, step):
                w.write_batch(big.slice(a, a + step))
    assert (tmp_path / "big4096.h5").read_bytes() == (tmp_path / "big100000.h5").read_bytes()
    with CacheReader(tmp_path / "big4096.h5") as r:  # (small batches are written to HDF5 in runs: the last at close)
        assert r.verified and r.read_units(299_990, 300_000).equals(big.slice(299_990, 300_000))
    with pytest.raises(DataError, match="unknown cache compression `zstd'"):
        CacheWriter(tmp_path / "x.h5", NAME, FMT, compression="zstd")


def test_no_object_of_a_cache_file_records_when_it_was_written(tmp_path, monkeypatch):
    """Two runs writing the same data write the same bytes: no group or dataset carries HDF5's
    object timestamps, whatever the layout (exact, compressed, chunked, whole chunks)."""
    cases = [("tiny", 10, None), ("gz", 3000, "gzip"), ("mid", 3000, None)]
    for name, n, compression in cases:
        with CacheWriter(tmp_path / f"{name}.h5", NAME, FMT, start=0, end=n - 1, compression=compression) as w:
            w.write_batch(Batch.from_values(NAME, FMT, _values(n)))
    monkeypatch.setattr(cachewriter, "SMALL_BYTES", -1)  # chunked: variable-length fields, and whole chunks
    with CacheWriter(tmp_path / "chunked.h5", NAME, FMT, start=0, end=99) as w:
        w.write_batch(Batch.from_values(NAME, FMT, _values(100)))
    with CacheWriter(tmp_path / "direct.h5", "user/x/1", {"v": "float64"}, start=0, end=99) as w:
        w.write_batch(Batch.from_columns("user/x/1", {"v": "float64"}, {"v": np.arange(100.0)},
                                         np.arange(100), np.arange(100)))
    for name in [c[0] for c in cases] + ["chunked", "direct"]:
        with h5py.File(tmp_path / f"{name}.h5") as f:
            timed = []
            f.visititems(lambda path, obj, timed=timed: timed.append(path)
                         if obj.id.get_create_plist().get_obj_track_times() else None)
            assert timed == [], (name, timed)


def test_missing_units_is_an_error_and_leaves_nothing(tmp_path):
    path = tmp_path / "out.h5"
    w = CacheWriter(path, NAME, FMT, start=0, end=9)
    for v in _values(5):
        w.write(v)
    with pytest.raises(IntegrityError, match="not enough data written"):
        w.close()
    assert os.listdir(tmp_path) == []
    with pytest.raises(IntegrityError, match="not enough data"):
        CacheWriter(path, NAME, FMT, start=0).close()
    with pytest.raises(RuntimeError), CacheWriter(path, NAME, FMT, start=0, end=0) as w:
        w.write(_values(1)[0])
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with pytest.raises(IntegrityError, match="does not exist"):
        CacheReader(path)


def test_write_errors(tmp_path):
    w = CacheWriter(tmp_path / "o.h5", NAME, FMT, start=0, end=3)
    v = _values(1)[0]
    w.write(v, 1)
    with pytest.raises(DataError, match="must be within"):
        w.write(v, 1)
    with pytest.raises(DataError, match="must be within"):
        w.write(v, 4)
    with pytest.raises(DataError, match="missing attributes"):
        w.write({"value": 1.0})
    with pytest.raises(DataError, match="batch starts at data index 0, expected 2"):
        w.write_batch(Batch.from_values(NAME, FMT, [v]))
    w.abort()
    assert os.listdir(tmp_path) == []


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


@pytest.mark.parametrize("column, n", [(c, 500) for c in ("columns/value", "columns/label#bytes", "columns/vec[]",
                                                          "index/end")] + [("columns/value", 40_000)])
def test_flipped_byte_is_detected(tmp_path, column, n):
    """Small outputs are stored with their exact shapes (compact or contiguous), large ones chunked."""
    path = tmp_path / "out.h5"
    with CacheWriter(path, NAME, FMT, start=0, end=n - 1) as w:
        w.write_batch(Batch.from_values(NAME, FMT, _values(n)))
    with h5py.File(path, "r") as f:
        ds = f[column]
        assert (ds.chunks is not None) == (n > 500)
        if ds.chunks:
            offset = ds.id.get_chunk_info(0).byte_offset
            size = min(ds.id.get_chunk_info(0).size, ds.size * ds.dtype.itemsize)
        else:
            raw = ds[()].tobytes()
            offset, size = path.read_bytes().find(raw), len(raw)
            assert offset > 0
    _flip(path, offset + size // 2)
    # (a compact dataset's data lies in the file's metadata: HDF5's own checksum sees the flip first)
    with pytest.raises(IntegrityError, match="digest|malformed"):
        CacheReader(path)
    if n > 500:
        with CacheReader(path, verify=False) as r:  # the fast mode skips the digest and says so
            assert not r.verified


def test_garbage_file_is_an_integrity_error(tmp_path):
    path = tmp_path / "bad.h5"
    path.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(IntegrityError, match="cannot be opened"):
        CacheReader(path)
    with pytest.raises(IntegrityError, match="cannot be opened"):
        stored_digest(path)
    with pytest.raises(IntegrityError, match="does not exist"):
        stored_digest(tmp_path / "missing.h5")
    with h5py.File(path, "w") as f:  # HDF5, but not a committed backbeat cache file
        f.attrs["backbeat"] = "something else"
    with pytest.raises(IntegrityError, match="not a complete backbeat cache file"):
        stored_digest(path)


WRITER = textwrap.dedent("""
    import sys, time, numpy as np
    from backbeat.data.batch import Batch
    from backbeat.data.cachewriter import CacheWriter
    fmt = {"a": [64, "float64"], "s": "string"}
    n = 20000
    w = CacheWriter(sys.argv[1], "user/k/1", fmt, start=0, end=n - 1)
    print("started", flush=True)
    for a in range(0, n, 1000):
        cols = {"a": np.random.rand(1000, 64), "s": [str(i) for i in range(a, a + 1000)]}
        w.write_batch(Batch.from_columns("user/k/1", fmt, cols, np.arange(a, a + 1000), np.arange(a, a + 1000)))
        time.sleep(0.03)
    w.close()
    print("done", flush=True)
""")


def test_killed_writer_never_leaves_a_complete_looking_file(tmp_path):
    rng = random.Random(1234)
    outcomes = {"absent": 0, "complete": 0, "killed mid-write": 0}
    for i in range(5):
        path = tmp_path / f"out{i}.h5"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout.readline() == b"started\n"
        time.sleep(rng.uniform(0.0, 0.7) if i < 4 else 0)
        if i == 4:
            proc.wait(timeout=60)
        else:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        proc.stdout.close()
        if path.exists():
            with CacheReader(path) as r:
                assert r.verified and len(r) == 20000
            outcomes["complete"] += 1
        else:
            outcomes["absent"] += 1
            outcomes["killed mid-write"] += bool(list(tmp_path.glob(f"out{i}.h5.tmp-*")))
            CacheStore(tmp_path).drop_temporaries(path)
            assert not list(tmp_path.glob(f"out{i}.h5.tmp-*"))
    assert outcomes["killed mid-write"] >= 1 and outcomes["complete"] >= 1, outcomes


def test_bad_writer_arguments(tmp_path):
    with pytest.raises(DataError, match="invalid data-index range"):
        CacheWriter(tmp_path / "o.h5", NAME, FMT, start=5, end=2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot create cache file"):
        CacheWriter(tmp_path / "file" / "o.h5", NAME, FMT, start=0, end=2)


def _state(pid: int) -> str:
    """A process's state letter (``/proc/PID/stat``); ``gone`` once it has been reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return "gone"


def test_stale_temporaries_of_dead_zombie_or_reused_pids(tmp_path):
    final = tmp_path / "out.h5"
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 60
    while _state(zombie.pid) != "Z":  # exited but not reaped: a zombie
        assert time.monotonic() < deadline, f"{zombie.pid} never became a zombie: {_state(zombie.pid)}"
        time.sleep(0.02)
    live = tmp_path / f"out.h5.tmp-{os.getpid()}-aaaa"
    reused = tmp_path / f"out.h5.tmp-{os.getpid()}-bbbb"
    dead = tmp_path / f"out.h5.tmp-{zombie.pid}-cccc"
    for p in (live, reused, dead):
        p.write_bytes(b"x")
    os.utime(reused, (time.time() - 10 * 86400, time.time() - 10 * 86400))  # older than this process
    removed = [str(p) for p in CacheStore(tmp_path).drop_temporaries(final)]
    zombie.wait()
    assert sorted(removed) == sorted([str(reused), str(dead)]) and live.exists()


def test_no_thread_outlives_a_writer_or_a_verification(tmp_path):
    import threading

    before = threading.active_count()
    path = tmp_path / "big.h5"
    n = 2000
    b = Batch.from_columns("user/arr/1", {"a": [1000, "float64"]}, {"a": np.ones((n, 1000))},
                           np.arange(n), np.arange(n))
    with CacheWriter(path, "user/arr/1", {"a": [1000, "float64"]}, start=0, end=n - 1) as w:
        w.write_batch(b)
    verify(path)
    assert threading.active_count() == before


def test_put_refuses_a_gap_or_an_overlap(tmp_path):
    """The sink protocol of BEAT outputs: each unit must start right after the previous one."""
    w = CacheWriter(tmp_path / "o.h5", "u/x/1", {"value": "int32"}, start=0, end=9)
    w.put({"value": np.int32(1)}, 0, 1)
    for start, end in ((5, 6), (1, 1), (2, 10)):
        with pytest.raises(DataError):
            w.put({"value": np.int32(2)}, start, end)
    assert w.next_index == 2
    w.abort()
    assert not list(tmp_path.iterdir())


def test_attributes_are_those_h5py_writes_kept_in_the_root_header(tmp_path):
    """The writer's low-level attributes read back exactly as ``f.attrs[name] = value`` would have
    written them (variable-length UTF-8 strings, int64 scalars), on small, chunked and compressed
    files alike, and stay in the root group's object header (no dense attribute storage)."""
    reference = tmp_path / "reference.h5"
    with h5py.File(reference, "w") as f:
        f.attrs["text"] = "ü"
        f.attrs["number"] = 1
        string_type, int_type = f.attrs.get_id("text").dtype, f.attrs.get_id("number").dtype
    n_big = (cachewriter.SMALL_BYTES // 8) + 1000  # beyond SMALL_BYTES: chunked datasets
    for name, n, compression in (("tiny.h5", 10, None), ("big.h5", n_big, None), ("tiny-gz.h5", 10, "gzip")):
        batch = Batch.from_columns("user/x/1", {"v": "float64"}, {"v": np.arange(n) * 0.5}, np.arange(n), np.arange(n))
        with CacheWriter(tmp_path / name, "user/x/1", {"v": "float64"}, key="k" * 64, start=0, end=n - 1,
                         compression=compression) as w:
            w.write_batch(batch)
        with h5py.File(tmp_path / name) as f:
            a = f.attrs
            assert sorted(a) == ["backbeat", "dataformat", "declaration", "digest", "digest_algorithm", "end", "key",
                                 "start", "units"]
            assert (a["backbeat"], a["dataformat"], a["key"], a["start"], a["end"], a["units"]) == \
                ("cache/1", "user/x/1", "k" * 64, 0, n - 1, n)
            assert json.loads(a["declaration"]) == {"v": "float64"}
            for attr in a:
                dtype = a.get_id(attr).dtype
                assert dtype == (int_type if attr in ("start", "end", "units") else string_type), attr
                assert a.get_id(attr).shape == ()
                if dtype == string_type:
                    assert h5py.check_string_dtype(dtype).encoding == "utf-8"
            meta = h5py.h5o.get_info(h5py.h5g.open(f.id, b"/")).meta_size.attr  # no dense storage (9 > 8,
            assert (meta.index_size, meta.heap_size) == (0, 0)  # HDF5's default limit of the latest format)
            digest = a["digest"]
            assert (f["columns/v"].chunks is not None) == (name == "big.h5")
        with CacheReader(tmp_path / name) as r:
            assert r.verified and r.digest == digest and r.key == "k" * 64


def test_fixed_shape_outputs_are_written_by_whole_chunks(tmp_path, monkeypatch):
    """A large unfiltered output of fixed-shape fields goes to the file a whole chunk at a time, from the
    batches' memory (never through h5py's selections and chunk cache); the bytes do not depend on the
    batching (arrays with chunks of different rows), the digest is that of any other layout."""
    # chunks: 1,024 rows of `v', 2,048 of the index and `m', 16,384 of `k' and `b'
    fmt, n = {"v": [100, "float64"], "k": "int8", "m": [2, 3, "complex64"], "b": "bool"}, 5000
    big = Batch.from_columns("user/v/1", fmt, {"v": np.random.rand(n, 100), "k": np.arange(n) % 100,
                                               "m": np.random.rand(n, 2, 3) + 1j, "b": np.arange(n) % 3 == 0},
                             np.arange(n) * 2, np.arange(n) * 2 + 1)

    def write(name, steps, compression=None):
        with CacheWriter(tmp_path / name, "user/v/1", fmt, start=0, end=2 * n - 1, compression=compression) as w:
            a = 0
            for step in steps:
                w.write_batch(big.slice(a, a + step))
                a += step
        return tmp_path / name

    gz = write("gz.h5", [n], "gzip:1")  # (compressed: through h5py, as before)
    monkeypatch.setattr(h5py.Dataset, "__setitem__", None)
    monkeypatch.setattr(h5py.Dataset, "resize", None)
    paths = [write("a.h5", [n]), write("b.h5", [7, 1017, 2000, 1, 1975]), write("c.h5", [256] * 19 + [136])]
    assert paths[0].read_bytes() == paths[1].read_bytes() == paths[2].read_bytes()
    assert stored_digest(paths[0]) == stored_digest(gz)
    with CacheReader(paths[1]) as r:
        assert r.verified and r.read_units(0, n).equals(big)
        window = r.read_units(10, 20)  # read afresh: the values view the arrays read (no second copy)
        assert window.private and np.shares_memory(window.to_values()[3].v, window.columns["v"])
    with h5py.File(paths[0]) as f:
        assert f["columns/v"].shape == (n, 100) and f["columns/v"].chunks == (1024, 100)
