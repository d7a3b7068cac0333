"""Time `backbeat check` on a generated prefix of 1,000 assets (target: under 1 s).

Usage: python benchmarks/check.py [--assets N] [--keep DIR]

Prints the wall time of the library call (``backbeat.api.check``) and of the whole CLI
command (``backbeat check``, including interpreter start-up), best of 3.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) if not isinstance(obj, str) else obj)


def generate(root: Path, n: int) -> int:
    """Write about ``n`` assets: dataformats, libraries, algorithms, a database, toolchains, experiments."""
    count = 0
    n_df = n * 4 // 10
    for i in range(n_df):
        decl = {"value": "float64", "label": "string", "vector": [0, "float32"]}
        if i:
            decl["#extends"] = f"bench/df{i - 1}/1" if i % 10 else "bench/df0/1"
            decl = {k: v for k, v in decl.items() if k == "#extends"} | {f"f{i}": "int32"}
        write(root / "dataformats" / "bench" / f"df{i}" / "1.json", decl)
        count += 1
    write(root / "dataformats" / "bench" / "num" / "1.json", {"value": "float64"})
    n_lib = n // 10
    for i in range(n_lib):
        write(root / "libraries" / "bench" / f"lib{i}" / "1.json",
              {"language": "python", "uses": {"prev": f"bench/lib{i - 1}/1"} if i % 5 else {}})
        write(root / "libraries" / "bench" / f"lib{i}" / "1.py", "def f(x):\n    return x\n")
        count += 1
    n_algo = n * 3 // 10
    for i in range(n_algo):
        write(root / "algorithms" / "bench" / f"algo{i}" / "1.json", {
            "schema_version": 2, "api_version": 2, "type": "sequential", "language": "python",
            "splittable": True, "uses": {"lib": f"bench/lib{i % n_lib}/1"},
            "groups": [{"inputs": {"in": {"type": "bench/num/1"}},
                        "outputs": {"out": {"type": f"bench/df{i % n_df}/1"}}}],
            "parameters": {"gain": {"type": "float64", "default": 1.0, "range": [0.0, 10.0]}},
        })
        write(root / "algorithms" / "bench" / f"algo{i}" / "1.py",
              "class Algorithm:\n    def process(self, inputs, data_loaders, outputs):\n        return True\n")
        count += 1
    write(root / "protocoltemplates" / "bench_tpl" / "1.json",
          {"schema_version": 1, "sets": [{"name": "all", "outputs": {"x": "bench/num/1"}}]})
    write(root / "databases" / "benchdb" / "1.json", {
        "schema_version": 2, "root_folder": "/tmp/benchdb",
        "protocols": [{"name": "p", "template": "bench_tpl/1", "views": {"all": {"view": "All"}}}]})
    write(root / "databases" / "benchdb" / "1.py", "class All:\n    pass\n")
    count += 3
    while count < n:
        i = count
        tc = {
            "datasets": [{"name": "set", "outputs": ["x"]}],
            "blocks": [{"name": "b", "synchronized_channel": "set", "inputs": ["i"], "outputs": ["o"]}],
            "analyzers": [], "connections": [{"from": "set.x", "to": "b.i", "channel": "set"}],
            "representation": {"connections": {}, "blocks": {}, "channel_colors": {}},
        }
        write(root / "toolchains" / "bench" / f"tc{i}" / "1.json", tc)
        count += 1
    return count


def best_of(fn, k: int = 3) -> float:
    times = []
    for _ in range(k):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", type=int, default=1000)
    ap.add_argument("--keep", default=None, help="write the prefix here and keep it")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="backbeat-bench-check-"))
    n = generate(root, args.assets)
    from backbeat import api

    reports = api.check(root)
    bad = [r for r in reports if not r["valid"]]
    lib = best_of(lambda: api.check(root))
    cli = best_of(lambda: subprocess.run([sys.executable, "-m", "backbeat.cli.main", "--prefix", str(root), "check"],
                                         capture_output=True, check=False))
    print(f"assets generated: {n}, checked: {len(reports)}, invalid: {len(bad)}")
    print(f"library api.check: {lib:.3f} s  ({len(reports) / lib:,.0f} assets/s)")
    print(f"CLI `backbeat check` (incl. start-up): {cli:.3f} s   target < 1 s")
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
