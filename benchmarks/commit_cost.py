"""What committing a cache file costs the block that writes it (issue 13, "verified before trusted").

Usage::

    python benchmarks/commit_cost.py [--units N] [--width W] [--repeat R] [--folder DIR] [--json]

Writes ``R`` cache files of ``N`` units of ``W`` float64 each (default 10,000 × 1,000: the 80 MB
output of one block of the 10k-vector chain) through :class:`backbeat.data.cachewriter.CacheWriter`,
unit by unit as a block does, and prints per file the wall time of the writes and of ``close()``
— the commit a streamed consumer waits for before it can commit its own output — then the
time to make the file durable afterwards (fsync of the file and its folder, what the command's
syncer does off the critical path), and the CPU the process (every thread) spent writing and closing.  Run it with another checkout's ``platform`` first on
``PYTHONPATH`` to compare (``close()`` there includes the fsync, and ``durable`` is then ~0).
The first file is a warm-up, not printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from backbeat.data.cachewriter import CacheWriter


def measure(folder: str, units: int, width: int) -> dict:
    path = os.path.join(folder, f"f{time.perf_counter_ns()}.h5")
    rows = np.random.default_rng(0).random((units, width))
    w = CacheWriter(path, "bench:vectors", {"value": [width, "float64"]}, key="k", start=0, end=units - 1)
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(units):
        w.write({"value": rows[i]}, i)
    t1 = time.perf_counter()
    w.close()
    t2, c2 = time.perf_counter(), time.process_time()
    for target in (path, folder):  # (what core.durable.make_durable does; written out: older checkouts lack it)
        fd = os.open(target, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    t3 = time.perf_counter()
    os.unlink(path)
    return {"write_s": t1 - t0, "close_ms": (t2 - t1) * 1e3, "durable_ms": (t3 - t2) * 1e3, "cpu_s": c2 - c0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=10_000)
    ap.add_argument("--width", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--folder", default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="backbeat-commit-", dir=args.folder)
    try:
        measure(folder, args.units, args.width)  # (warm-up)
        runs = [measure(folder, args.units, args.width) for _ in range(args.repeat)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"units": args.units, "width": args.width, "load": load, "runs": runs}))
        return 0
    mb = args.units * args.width * 8 / 1e6
    print(f"{args.units} units x {args.width} float64 ({mb:.0f} MB), load {load:.1f}")
    for r in runs:
        print(f"  write {r['write_s']:.2f} s   close (commit) {r['close_ms']:6.1f} ms   "
              f"made durable after {r['durable_ms']:6.1f} ms   CPU of write + close {r['cpu_s']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
