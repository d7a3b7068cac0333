"""Small cache files written from byte templates (backbeat.data.h5image): byte-identical to h5py's."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backbeat.data import cachefile, h5image, h5objects
from backbeat.data.cachereader import CacheReader
from backbeat.data.cachewriter import CacheWriter
from backbeat.data.values import canonical, value_type
from conftest import run_cli

BENCH = Path(__file__).parents[2] / "benchmarks"


def _strategies():
    path = Path(__file__).parents[1] / "unit" / "test_batch.py"
    spec = importlib.util.spec_from_file_location("_backbeat_batch_strategies_h5image", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


S = _strategies()


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv(h5image.SWITCH, raising=False)
    h5image.Images._known.clear()
    yield
    h5image.Images._known.clear()


def test_lookup3_known_values():
    # the values published with Bob Jenkins' lookup3.c (its driver's self-test)
    assert h5image.lookup3(b"") == 0xDEADBEEF
    assert h5image.lookup3(b"Four score and seven years ago") == 0x17770551
    assert h5image.lookup3(b"Four score and seven years ago", 1) == 0xCD628161
    rng = random.Random(3)
    for n in (1, 11, 12, 13, 24, 25, 100, 509):
        data = rng.randbytes(n)
        for blocks in range(0, n // 12 + 2):
            state = h5image.lookup3_state(data, blocks)
            other = data[:12 * state[0]] + rng.randbytes(n - 12 * state[0])  # (the same first blocks)
            assert h5image.lookup3(other, 0, state) == h5image.lookup3(other)


def test_every_object_header_chunk_of_a_file_is_found_with_its_checksum(tmp_path):
    path = tmp_path / "o.h5"
    with CacheWriter(path, "user/s/1", {"value": "float64"}, key="k" * 64, start=0, end=9) as w:
        for i in range(10):
            w.write({"value": i / 7})
    image = path.read_bytes()
    found = h5image.chunks(image)
    starts = {s for s, _e in found}
    assert 0 in starts  # the superblock
    assert {i for i in range(len(image)) if image.startswith(b"OHDR", i)} <= starts
    assert any(image.startswith(b"OCHK", s) for s in starts)
    bad = bytearray(image)
    s, e = next((s, e) for s, e in found if s)
    bad[e] ^= 1  # a wrong checksum: not a chunk
    assert (s, e) not in h5image.chunks(bytes(bad))


def _content(names, specs, rows, rng, key_len, labels):
    """Random arrays of ``rows`` rows each (offsets too: byte identity needs no meaning) and attributes."""
    arrays = []
    for name in names:
        dtype, shape = specs[name]
        n = rows + 1 if name.endswith("#offsets") else rows
        raw = rng.randbytes(int(np.dtype(dtype).itemsize * n * int(np.prod(shape))))
        arrays.append(np.frombuffer(raw, dtype=dtype).reshape((n, *shape)) if raw else np.empty((n, *shape), dtype))
    text = "".join(rng.choice(labels) for _ in range(key_len))
    attrs = [("backbeat", cachefile.FORMAT_TAG), ("dataformat", "user/hypo/1"), ("declaration", "{...}" * 5),
             ("key", text), ("start", rng.randrange(-2**63, 2**63)), ("end", rng.randrange(2**40)),
             ("units", rng.randrange(2**31)), ("digest_algorithm", cachefile.DIGEST_ALGORITHM),
             ("digest", "%064x" % rng.getrandbits(256))]
    return arrays, attrs


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(S.formats(), st.sampled_from([0, 1, 2, 7, 300]), st.integers(0, 2**32), st.sampled_from([0, 5, 16, 64]))
def test_a_templated_file_is_byte_identical_to_h5py(tmp_path_factory, fmt, rows, seed, key_len):
    folder = tmp_path_factory.mktemp("t")
    names = [n for n, _d, _s in cachefile.arrays("user/hypo/1", fmt)]
    specs = {n: (d, s) for n, d, s in cachefile.arrays("user/hypo/1", fmt)}
    rng = random.Random(seed)
    labels = "aé✓"  # (multi-byte UTF-8: the same length in characters, not in bytes: another signature)
    arrays, attrs = _content(names, specs, rows, rng, key_len, labels[:1])
    sig = h5image.signature(names, arrays, attrs)
    if sig is None:
        return  # (an array of 1 to 7 bytes: h5py writes it)
    real = folder / "real.h5"
    h5objects.write_small(str(real), arrays, attrs, names=names)

    def write(path, a, t):
        h5objects.write_small(path, a, t, names=names)

    template = h5image.make(sig, write, str(folder / "scratch"), arrays, attrs, real.read_bytes())
    assert template is not None
    for k in range(3):
        other, other_attrs = _content(names, specs, rows, rng, key_len, labels[:1])
        assert h5image.signature(names, other, other_attrs) == sig
        expected = folder / f"h5py{k}.h5"
        h5objects.write_small(str(expected), other, other_attrs, names=names)
        assert bytes(template.render(other, other_attrs)) == expected.read_bytes()
    for a in arrays:
        if a.nbytes:
            wrong = [np.concatenate([x, x[:1]]) if x is a else x for x in arrays]
            with pytest.raises(ValueError, match="do not match"):
                template.render(wrong, attrs)
            break


MIXED = {"value": "float64", "label": "string", "vec": [3, "int32"], "pos": {"x": "int64", "y": "uint64"}}


def _write(path, values, key, images):
    with CacheWriter(path, "user/mixed/1", MIXED, key=key, start=0, end=len(values) - 1, images=images) as w:
        for v in values:
            w.write(v)
        return w


def _mixed(n, seed):
    rng = random.Random(seed)
    T = value_type("user/mixed/1", MIXED)
    return [T(value=rng.random(), label="ünit %03d" % rng.randrange(1000), vec=[rng.randrange(-99, 99)] * 3,
              pos={"x": rng.randrange(-2**63, 2**63), "y": rng.randrange(2**64)}) for _ in range(n)]


def test_a_file_larger_than_small_is_written_by_h5py_and_never_templated(tmp_path):
    images = str(tmp_path / "images")
    values = _mixed(1000, 0)  # (~20 KB of arrays: rendering would re-hash more than h5py costs)
    assert h5image.signature(["a/b"], [np.zeros(h5image.SMALL // 8 + 1)], []) is None
    _write(tmp_path / "big.h5", values, "a" * 64, images)
    assert not os.path.isdir(images) or not [f for f in os.listdir(images) if f.endswith(".h5image")]
    with CacheReader(tmp_path / "big.h5") as r:
        assert r.units == 1000


@pytest.mark.parametrize("units", [1, 10, 40])
def test_writers_use_the_caches_template_and_write_the_same_bytes_as_h5py(tmp_path, monkeypatch, units):
    images = str(tmp_path / "images")
    _write(tmp_path / "first.h5", _mixed(units, 0), "a" * 64, images)  # h5py; the template made
    assert [f for f in os.listdir(images) if f.endswith(".h5image")]
    h5image.Images._known.clear()  # (as a fresh process: read from the folder)
    calls = []
    real_write = h5objects.write_small
    monkeypatch.setattr(h5objects, "write_small", lambda *a, **k: calls.append(a) or real_write(*a, **k))
    for seed in range(1, 4):
        values = _mixed(units, seed)
        _write(tmp_path / f"t{seed}.h5", values, "%064x" % seed, images)
        monkeypatch.setenv(h5image.SWITCH, "off")
        _write(tmp_path / f"h{seed}.h5", values, "%064x" % seed, images)
        monkeypatch.delenv(h5image.SWITCH)
        assert (tmp_path / f"t{seed}.h5").read_bytes() == (tmp_path / f"h{seed}.h5").read_bytes()
        with CacheReader(tmp_path / f"t{seed}.h5") as r:
            assert r.verified and r.key == "%064x" % seed and r.read_range(0, 10**6).to_values() == values
        with h5py.File(tmp_path / f"t{seed}.h5") as f:
            assert f.attrs["units"] == units and json.loads(f.attrs["declaration"]) == json.loads(canonical(MIXED))
    assert len(calls) == 3  # only the h5py writes asked for: the templated files never went through HDF5


def _tamper(images, how):
    (path,) = [os.path.join(images, f) for f in os.listdir(images) if f.endswith(".h5image")]
    data = bytearray(open(path, "rb").read())
    how(data)
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("how", [
    lambda d: d.__setitem__(len(d) - 100, d[len(d) - 100] ^ 0xFF),  # a byte of the image
    lambda d: d.__delitem__(slice(len(d) - 10, None)),  # truncated
    lambda d: d.__setitem__(slice(0, 6), b"XXXXXX"),  # not a template
])
def test_a_corrupt_template_is_refused_and_h5py_writes_the_file(tmp_path, monkeypatch, how):
    images = str(tmp_path / "images")
    _write(tmp_path / "first.h5", _mixed(10, 0), "a" * 64, images)
    _tamper(images, how)
    h5image.Images._known.clear()
    calls = []
    real_write = h5objects.write_small
    monkeypatch.setattr(h5objects, "write_small", lambda *a, **k: calls.append(a) or real_write(*a, **k))
    values = _mixed(10, 5)
    _write(tmp_path / "t.h5", values, "b" * 64, images)
    # refused: h5py wrote the file (then made the template again, from two more files of its own)
    assert calls and calls[0][0].startswith(str(tmp_path / "t.h5.tmp-"))
    assert all(".claim." in c[0] for c in calls[1:])
    monkeypatch.setenv(h5image.SWITCH, "off")
    _write(tmp_path / "h.h5", values, "b" * 64, images)
    assert (tmp_path / "t.h5").read_bytes() == (tmp_path / "h.h5").read_bytes()
    with CacheReader(tmp_path / "t.h5") as r:
        assert r.verified


def test_a_template_of_another_signature_is_refused(tmp_path):
    images = str(tmp_path / "images")
    _write(tmp_path / "first.h5", _mixed(10, 0), "a" * 64, images)
    (path,) = [os.path.join(images, f) for f in os.listdir(images) if f.endswith(".h5image")]
    data = open(path, "rb").read()
    names = [n for n, _d, _s in cachefile.arrays("user/mixed/1", MIXED)]
    arrays = [np.zeros(5, dtype=np.int64) for _ in names]
    other = h5image.signature(names, arrays, [("key", "x" * 64)])
    assert other is not None and h5image.Template.loads(data, other) is None
    sig = json.loads(data.split(b"\n")[2])["signature"]
    assert h5image.Template.loads(data, sig) is not None


def test_a_signature_failing_its_self_check_is_never_templated(tmp_path, monkeypatch):
    images = str(tmp_path / "images")
    monkeypatch.setattr(h5image.Template, "render", lambda self, a, t: bytearray(b"not the file"))
    _write(tmp_path / "first.h5", _mixed(10, 0), "a" * 64, images)
    assert not [f for f in os.listdir(images) if f.endswith(".h5image")]
    assert [f for f in os.listdir(images) if f.endswith(".refused")]
    h5image.Images._known.clear()
    monkeypatch.undo()
    _write(tmp_path / "second.h5", _mixed(10, 1), "b" * 64, images)  # (another process: refused there too)
    assert not [f for f in os.listdir(images) if f.endswith(".h5image")]


def test_a_chain_run_through_the_cli_writes_the_same_cache_bytes_with_and_without_templates(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        from make_prefix import write_prefix
    finally:
        sys.path.remove(str(BENCH))
    write_prefix(tmp_path / "prefix", {"s10": ("scalars", 10)}, [(6, "s10")])
    sums = {}
    for mode in ("on", "off"):
        cache = tmp_path / f"cache-{mode}"
        proc = run_cli("--prefix", tmp_path / "prefix", "--cache", cache, "experiments", "run",
                       "bench/bench/chain6/1/s10", "--json", timeout=120, env={h5image.SWITCH: mode})
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["results"]["sum"][0]["data"] == {"sum": "0.045", "count": 10}
        files = sorted(p for p in cache.rglob("*.h5") if ".h5images" not in p.parts)
        sums[mode] = {str(p.relative_to(cache)): p.read_bytes() for p in files}
        made = list((cache / ".h5images").glob("*.h5image")) if (cache / ".h5images").exists() else []
        assert bool(made) == (mode == "on")
    assert len(sums["on"]) >= 7 and sums["on"] == sums["off"]
    verify = run_cli("--cache", tmp_path / "cache-on", "cache", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_zygote_preloads_the_checked_templates_of_a_cache(tmp_path):
    images = str(tmp_path / "images")
    _write(tmp_path / "first.h5", _mixed(10, 0), "a" * 64, images)
    _write(tmp_path / "other.h5", _mixed(20, 0), "a" * 64, images)
    good, bad = sorted(os.path.join(images, f) for f in os.listdir(images) if f.endswith(".h5image"))
    data = bytearray(open(bad, "rb").read())
    data[-1] ^= 1
    open(bad, "wb").write(data)
    os.rename(good, good + "x")  # (a template under another signature's name: not loaded either)
    os.rename(good + "x", os.path.join(images, "0" * 40 + ".h5image"))
    h5image.Images._known.clear()
    h5image.Images(images).preload()
    assert not h5image.Images._known
    _write(tmp_path / "again.h5", _mixed(20, 1), "b" * 64, images)  # (h5py: the template made again)
    h5image.Images._known.clear()
    h5image.Images._listed.clear()
    h5image.Images(images).preload()
    assert len(h5image.Images._known) == 1 and all(h5image.Images._known.values())


def _racer(i, images, path, marks, start, done):
    """A process writing a cache file whose template nobody has made yet; its maker, if it wins the
    claim, holds it until the other process has written its file (so that both ask at once)."""
    try:
        h5image.Images._known.clear()
        real_make = h5image.make

        def make(*a, **k):
            (marks / f"made.{i}").touch()
            done[1 - i].wait(30)  # (the other one asked meanwhile: its file is written)
            return real_make(*a, **k)

        h5image.make = make
        start.wait(30)
        _write(path, _mixed(10, 7), "c" * 64, images)
        done[i].set()
        os._exit(0)
    except BaseException:  # noqa: BLE001 - said, and the exit status tells the test
        import traceback

        traceback.print_exc()
        os._exit(1)


def test_two_processes_making_the_same_template_at_once_one_makes_it_both_files_right(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    images = str(tmp_path / "images")
    start, done = ctx.Event(), [ctx.Event(), ctx.Event()]
    procs = [ctx.Process(target=_racer, args=(i, images, tmp_path / f"r{i}.h5", tmp_path, start, done))
             for i in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    makers = sorted(tmp_path.glob("made.*"))
    assert len(makers) == 1, makers  # one claimed it; the other wrote its file with h5py meanwhile
    left = sorted(os.listdir(images))
    assert len(left) == 1 and left[0].endswith(".h5image"), left  # no claim, scratch or refusal left
    os.environ[h5image.SWITCH] = "off"
    try:
        _write(tmp_path / "h.h5", _mixed(10, 7), "c" * 64, images)
    finally:
        del os.environ[h5image.SWITCH]
    for i in range(2):
        assert (tmp_path / f"r{i}.h5").read_bytes() == (tmp_path / "h.h5").read_bytes()
        with CacheReader(tmp_path / f"r{i}.h5") as r:
            assert r.verified and r.read_range(0, 100).to_values() == _mixed(10, 7)
    h5image.Images._known.clear()  # (as a third process: the kept template is read, checked, used)
    sig = json.loads(open(os.path.join(images, left[0]), "rb").read().split(b"\n")[2])["signature"]
    assert h5image.Images(images).find(sig) is not None
