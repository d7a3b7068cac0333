"""End-to-end experiment benchmark on the BEAT-format benchmark prefix (make_prefix.py).

Usage: python benchmarks/experiments.py [--repeat N] [--only NAME ...]

For each experiment — a synthetic database feeding N items through a chain of K identity
blocks into a summing analyzer (N = 100,000 float64 scalars or 10,000 arrays of 1,000
float64; K = 1 and 5), plus a trivial 10-item experiment — it runs the real CLI
(`backbeat experiments run NAME --json`) in a fresh process, cold (empty cache) and fully
cached, and prints wall time, items/s, MB/s (bytes through all blocks) and the peak
resident memory of any process of the run.  Best of --repeat runs.

backbeat only, against the absolute targets of issue 4: K=5 scalars < 2 s, K=5 arrays < 1.5 s,
trivial < 0.5 s cold, cached < 0.3 s, every process < 300 MB.  Comparisons with BEAT come from
versus_beat.py, which times both tools in the same run (figures recorded on another machine or
at another time are not comparable).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_prefix import make_prefix  # noqa: E402

EXPERIMENTS = {  # name: (items, bytes per item, K)
    "bench/bench/chain1/1/trivial": (10, 8, 1),
    "bench/bench/chain1/1/scalars": (100_000, 8, 1),
    "bench/bench/chain5/1/scalars": (100_000, 8, 5),
    "bench/bench/chain1/1/vectors": (10_000, 8_000, 1),
    "bench/bench/chain5/1/vectors": (10_000, 8_000, 5),
}
TARGETS = {"bench/bench/chain5/1/scalars": 2.0, "bench/bench/chain5/1/vectors": 1.5,
           "bench/bench/chain1/1/trivial": 0.5}


def backbeat_cmd() -> list[str]:
    exe = shutil.which("backbeat")
    return [exe] if exe else [sys.executable, "-c", "from backbeat.cli import entry; entry()"]


def run_once(prefix: Path, cache: Path, name: str) -> tuple[float, dict, float]:
    """(wall seconds, report, peak RSS in MB of the CLI and its descendants)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with byte-code caching, as users run it
    t0 = time.perf_counter()
    proc = subprocess.run([*backbeat_cmd(), "--prefix", str(prefix), "--cache", str(cache),
                           "experiments", "run", name, "--json", "--quiet"],
                          capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, json.loads(proc.stdout), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="backbeat-bench-"))
    try:
        prefix = root / "prefix"
        make_prefix(prefix)
        # warm the byte-code cache of backbeat itself (not measured)
        subprocess.run([*backbeat_cmd(), "--prefix", str(prefix), "check"], capture_output=True, check=False)
        print(f"{'experiment':34} {'cold s':>8} {'items/s':>12} {'MB/s':>8} {'cached s':>9} {'peak MB':>8}"
              f"  {'target':>7}")
        for name, (items, size, k) in EXPERIMENTS.items():
            if args.only and name not in args.only:
                continue
            cold, cached, peak = [], [], 0.0
            for _ in range(args.repeat):
                cache = root / "cache"
                shutil.rmtree(cache, ignore_errors=True)
                w, rep, p = run_once(prefix, cache, name)
                assert all(b["status"] == "ran" for b in rep["blocks"].values()), rep["blocks"]
                cold.append(w)
                w, rep, p2 = run_once(prefix, cache, name)
                assert all(b["status"] == "cached" for b in rep["blocks"].values()), rep["blocks"]
                cached.append(w)
                peak = max(peak, p, p2)
                for b in rep["blocks"].values():
                    peak = max(peak, b.get("statistics", {}).get("max_rss_mb", 0.0))
            best = min(cold)
            volume = items * size * (k + 1)  # every block reads the N items once
            print(f"{name:34} {best:8.3f} {items * (k + 1) / best:12,.0f} {volume / best / 1e6:8.1f} "
                  f"{min(cached):9.3f} {peak:8.1f}  {TARGETS.get(name, float('nan')):7.2f}")
        print("targets: cached re-run < 0.3 s, every process < 300 MB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
