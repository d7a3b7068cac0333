"""Data-plane benchmark: cache files and ZeroMQ batches against raw h5py / raw pyzmq, side by side.

Run: ``python3 benchmarks/dataplane.py [--quick] [--dir DIR]``.

Cases: (a) 100,000 float64 scalar units; (b) 10,000 units of 1,000-float64 arrays.  For each: write
and read throughput of backbeat's CacheWriter/CacheReader (digest computed on write and verified on
open) against h5py writing/reading the same numpy arrays in one call; per-unit ``write()`` as well as
``write_batch``.  ZeroMQ: (b) sent in batches between two processes (``send_batch``/``recv_batch``)
against raw pyzmq sending the same bytes.  Memory: peak RSS of a process streaming 2 GB through a
cache file (write, verify, iterate), measured in a child process.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import zmq

from backbeat.data.batch import Batch
from backbeat.data.cachereader import CacheReader
from backbeat.data.cachewriter import CacheWriter
from backbeat.data.values import value_type
from backbeat.data.wire import send_batch

SCALAR = ("bench/scalar/1", {"value": "float64"})
ARRAY = ("bench/array/1", {"value": [1000, "float64"]})


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def h5_raw_write(path: str, arr: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=arr)


def h5_raw_write_fsync(path: str, arr: np.ndarray) -> None:
    h5_raw_write(path, arr)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def h5_raw_read(path: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["x"][:]


def ours_write_batch(path: str, fmt: tuple, arr: np.ndarray, per_batch: int) -> None:
    n = len(arr)
    idx = np.arange(n)
    with CacheWriter(path, fmt[0], fmt[1], key="bench", start=0, end=n - 1) as w:
        for a in range(0, n, per_batch):
            b = min(n, a + per_batch)
            w.write_batch(Batch.from_columns(fmt[0], fmt[1], {"value": arr[a:b]}, idx[a:b], idx[a:b]))


def ours_write_units(path: str, fmt: tuple, values: list) -> None:
    n = len(values)
    with CacheWriter(path, fmt[0], fmt[1], key="bench", start=0, end=n - 1) as w:
        write = w.write
        for v in values:
            write(v)


def ours_read(path: str, verify: bool = True) -> int:
    with CacheReader(path, verify=verify) as r:
        return sum(len(b) for b in r.iter_batches())


def file_case(label: str, fmt: tuple, arr: np.ndarray, per_batch: int, tmp: str) -> list[tuple]:
    n, mb = len(arr), arr.nbytes / 1e6
    raw, ours = os.path.join(tmp, "raw.h5"), os.path.join(tmp, "ours.h5")
    rows = []
    t_raw_w = best(lambda: h5_raw_write(raw, arr))
    t_raw_wf = best(lambda: h5_raw_write_fsync(raw, arr))
    t_ours_w = best(lambda: ours_write_batch(ours, fmt, arr, per_batch))
    t_raw_r = best(lambda: h5_raw_read(raw))
    t_ours_r = best(lambda: ours_read(ours, True))
    t_ours_rf = best(lambda: ours_read(ours, False))
    rows.append((label, "write", "raw h5py (1 call)", n / t_raw_w, mb / t_raw_w, 1.0))
    rows.append((label, "write", "  (reference: raw h5py + fsync)", n / t_raw_wf, mb / t_raw_wf, t_raw_w / t_raw_wf))
    rows.append((label, "write", f"write_batch x{per_batch}", n / t_ours_w, mb / t_ours_w, t_raw_w / t_ours_w))
    T = value_type(*fmt)
    t0 = time.perf_counter()
    values = [T._raw({"value": x}) for x in arr]  # what an algorithm does: one object per unit
    t_make = time.perf_counter() - t0
    t_units = best(lambda: ours_write_units(ours, fmt, values), repeat=2)
    rows.append((label, "write", "write() per unit (objects prebuilt)", n / t_units, mb / t_units, t_raw_w / t_units))
    rows.append((label, "write", "  same, incl. making the objects", n / (t_units + t_make), mb / (t_units + t_make),
                 t_raw_w / (t_units + t_make)))
    rows.append((label, "read", "raw h5py (1 call)", n / t_raw_r, mb / t_raw_r, 1.0))
    rows.append((label, "read", "open + iter_batches, verify=False", n / t_ours_rf, mb / t_ours_rf, t_raw_r / t_ours_rf))
    rows.append((label, "read", "open + verify digest + iter_batches", n / t_ours_r, mb / t_ours_r, t_raw_r / t_ours_r))
    return rows


RECEIVER = """
import sys, time, zmq
from backbeat.data.wire import recv_batch
mode, addr, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
fmt = ("bench/array/1", {"value": [1000, "float64"]})
sock = zmq.Context().socket(zmq.PAIR)
sock.connect(addr)
sock.send(b"ready")
for _ in range(2):
    got = 0
    while got < count:
        if mode == "ours":
            got += len(recv_batch(sock, *fmt))
        else:
            frames = sock.recv_multipart(copy=False)
            got += len(frames[0].buffer) // 8000
    sock.send(b"done")
"""


def zmq_case(arr: np.ndarray, per_batch: int, tmp: str) -> list[tuple]:
    n, mb = len(arr), arr.nbytes / 1e6
    idx = np.arange(n)
    batches = [Batch.from_columns(*ARRAY, {"value": arr[a:a + per_batch]}, idx[a:a + per_batch],
                                  idx[a:a + per_batch]) for a in range(0, n, per_batch)]
    rows = []
    results = {}
    for mode in ("raw", "ours"):
        addr = f"ipc://{tmp}/bench-{mode}"
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PAIR)
        sock.bind(addr)
        proc = subprocess.Popen([sys.executable, "-c", RECEIVER, mode, addr, str(n)])
        assert sock.recv() == b"ready"
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            for b in batches:
                if mode == "ours":
                    send_batch(sock, b)
                else:
                    sock.send_multipart([b.columns["value"]], copy=False)
            assert sock.recv() == b"done"
            times.append(time.perf_counter() - t0)
        proc.wait()
        sock.close(linger=0)
        ctx.term()
        results[mode] = min(times)
    rows.append(("(b) zmq", "send+recv", f"raw pyzmq, {per_batch} units/msg", n / results["raw"], mb / results["raw"], 1.0))
    rows.append(("(b) zmq", "send+recv", f"send_batch, {per_batch} units/msg", n / results["ours"],
                 mb / results["ours"], results["raw"] / results["ours"]))
    return rows


STREAM = """
import resource, sys, time, numpy as np
from backbeat.data.batch import Batch
from backbeat.data.cachereader import CacheReader
from backbeat.data.cachewriter import CacheWriter
path, total = sys.argv[1], int(sys.argv[2])
fmt = ("bench/array/1", {"value": [1000, "float64"]})
per = 256
n = total // 8000
t0 = time.perf_counter()
with CacheWriter(path, *fmt, start=0, end=n - 1) as w:
    block = np.random.rand(per, 1000)
    for a in range(0, n, per):
        b = min(n, a + per)
        w.write_batch(Batch.from_columns(*fmt, {"value": block[: b - a]}, np.arange(a, b), np.arange(a, b)))
t1 = time.perf_counter()
with CacheReader(path) as r:
    s = sum(float(b.columns["value"][:, 0].sum()) for b in r.iter_batches())
t2 = time.perf_counter()
try:  # VmHWM is this process's own peak (ru_maxrss may include the parent's, inherited on fork)
    rss = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
except (OSError, IndexError):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{n} {t1 - t0:.2f} {t2 - t1:.2f} {rss:.0f}")
"""


def memory_case(tmp: str, total: int) -> str:
    path = os.path.join(tmp, "stream.h5")
    out = subprocess.run([sys.executable, "-c", STREAM, path, str(total)], capture_output=True, text=True,
                         check=True).stdout.split()
    os.unlink(path)
    n, tw, tr, rss = int(out[0]), float(out[1]), float(out[2]), float(out[3])
    gb = n * 8000 / 1e9
    return (f"streamed {gb:.2f} GB ({n} units of 1000 float64): write {gb / tw * 1000:.0f} MB/s, "
            f"verify-on-open + iterate {gb / tr * 1000:.0f} MB/s, peak RSS {rss:.0f} MB (target < 300 MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 2 GB streaming measurement")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--stream-bytes", type=int, default=2 * 10**9)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(dir=args.dir)
    rng = np.random.default_rng(0)
    rows: list[tuple] = []
    rows += file_case("(a) 100k scalars", SCALAR, rng.random(100_000), 100_000, tmp)
    rows += file_case("(b) 10k x 1000", ARRAY, rng.random((10_000, 1000)), 1024, tmp)
    rows += zmq_case(rng.random((10_000, 1000)), 256, tmp)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start (numbers are best of 3)")
    print(f"{'case':18} {'op':9} {'variant':36} {'units/s':>12} {'MB/s':>9} {'vs raw':>7}")
    for case, op, variant, ups, mbs, ratio in rows:
        print(f"{case:18} {op:9} {variant:36} {ups:12,.0f} {mbs:9.0f} {ratio:6.0%}")
    if not args.quick:
        print(memory_case(tmp, args.stream_bytes))
    print(f"(this process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
