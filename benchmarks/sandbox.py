"""The sandbox's cost (``--sandbox``, bubblewrap): per block, and once per fork server.

Usage: python benchmarks/sandbox.py [--n 40] [--rounds 3] [--units 6,20000]

Prints, plain and sandboxed, alternating (best of ``rounds``):

* fork server start-up: a zygote forked from this process vs ``bwrap`` starting the interpreter,
  which imports numpy, h5py, zmq and the block runtime inside the sandbox — time until it is ready
  (paid once per run and interpreter);
* per job, through a process group (fork, control channel, outcome), ``n`` trivial jobs one after
  the other: the median spawn → outcome latency, and the difference;
* per block of a real run: the pipeline of ``tests/fixtures/run/prefix`` (a dataset, two blocks and
  an analyzer, with a database provider) with ``--force -j 1 --no-stream`` on ``units`` data units:
  the whole run, and the mean time of a block from its spawn to its outputs committed — in the
  sandbox, staged, checked by the parent (a full read: it grows with the output) and moved into
  the cache.  The difference is the sandbox's cost per block (target: under 20 ms).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from backbeat.planning.selection import Options
from backbeat.processes.group import ProcessGroup
from backbeat.processes.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
NOOP = "backbeat.processes.interpreter:runtime"  # returns {} for a job envelope: a no-op job
BASE = "run/run/pipeline/1/base"


def group(sandboxed: bool, folder: str) -> ProcessGroup:
    return ProcessGroup(sandbox=Sandbox(read_only=(folder,)) if sandboxed else None)


def startup(sandboxed: bool, folder: str) -> float:
    g = group(sandboxed, folder)
    t0 = time.perf_counter()
    g.warm()
    g.interpreter()  # waits until the zygote has imported its preload
    wall = time.perf_counter() - t0
    g.close()
    return wall


def per_job(sandboxed: bool, folder: str, n: int) -> float:
    g = group(sandboxed, folder)
    g.warm()
    g.interpreter()
    times = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            g.spawn(f"j{i}", NOOP)
            out = g.wait([f"j{i}"])[f"j{i}"]
            times.append(time.perf_counter() - t0)
            assert out.ok, out
    finally:
        g.close()
    return statistics.median(times)


def make_prefix(folder: Path, units: int) -> Path:
    prefix = folder / f"prefix{units}"
    shutil.copytree(ROOT / "tests" / "fixtures" / "run" / "prefix", prefix,
                    ignore=shutil.ignore_patterns("cache", "__pycache__"))
    decl = json.loads((prefix / "databases/counter/1.json").read_text())
    for proto in decl["protocols"]:
        for view in proto["views"].values():
            view["parameters"]["n"] = units
    (prefix / "databases/counter/1.json").write_text(json.dumps(decl, indent=4))
    return prefix


def whole_run(prefix: Path, sandboxed: bool) -> tuple[float, float]:
    """``(run wall time, summed wall time of its blocks)``: one block at a time, each block's
    time from its spawn to its outputs committed (published, in the sandbox)."""
    from backbeat import api

    t0 = time.perf_counter()
    rep = api.run_experiment(prefix, prefix.parent / f"cache-{prefix.name}", BASE,
                             Options(force=True, sandbox=sandboxed, jobs=1, stream=False))
    wall = time.perf_counter() - t0
    assert rep["status"] == "ok", rep
    return wall, sum(b["statistics"]["wall_s"] for b in rep["blocks"].values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--units", default="6,20000")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bb-bench-sandbox-"))
    try:
        starts: dict[bool, list[float]] = {False: [], True: []}
        jobs: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for sandboxed in (False, True):
                starts[sandboxed].append(startup(sandboxed, str(folder)))
                jobs[sandboxed].append(per_job(sandboxed, str(folder), args.n))
        s0, s1 = min(starts[False]), min(starts[True])
        j0, j1 = min(jobs[False]), min(jobs[True])
        print(f"fork server start-up (until ready): plain {s0 * 1000:7.1f} ms   sandboxed {s1 * 1000:7.1f} ms   "
              f"(+{(s1 - s0) * 1000:.1f} ms once per run and interpreter)")
        print(f"per job (spawn -> outcome, median of {args.n}): plain {j0 * 1000:6.2f} ms   sandboxed "
              f"{j1 * 1000:6.2f} ms   sandbox cost {(j1 - j0) * 1000:+.2f} ms per job")
        for units in (int(u) for u in args.units.split(",")):
            prefix = make_prefix(folder, units)
            runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for _ in range(args.rounds):
                for sandboxed in (False, True):
                    runs[sandboxed].append(whole_run(prefix, sandboxed))
            r0, r1 = min(r for r, _b in runs[False]), min(r for r, _b in runs[True])
            b0, b1 = min(b for _r, b in runs[False]), min(b for _r, b in runs[True])
            print(f"pipeline, {units} units, 3 blocks one at a time: run plain {r0:6.3f} s, sandboxed {r1:6.3f} s; "
                  f"a block (spawn -> committed) plain {b0 / 3 * 1000:6.1f} ms, sandboxed {b1 / 3 * 1000:6.1f} ms: "
                  f"sandbox cost {(b1 - b0) / 3 * 1000:+.1f} ms per block")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"(python {sys.version.split()[0]}; best of {args.rounds} rounds, plain and sandboxed alternating)")


if __name__ == "__main__":
    main()
