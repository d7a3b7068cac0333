"""Time `backbeat check` on a generated prefix of 1,000 assets (target: under 1 s), and on one
toolchain as it grows to 2,000 blocks (target: a 1,000-block toolchain under 0.5 s).

Usage: python benchmarks/check.py [--assets N] [--keep DIR] [--blocks K,K,...]

Prints the wall time of the library call (``backbeat.api.check``) and of the whole CLI
command (``backbeat check``, including interpreter start-up), best of 3; then, per toolchain
size, the check of that one toolchain (a chain of K blocks: every array of the schema with
``uniqueItems`` has K objects) and, when BEAT 1.13 is installed in /tmp/beatenv, BEAT's load of
the same file (``beat.core.toolchain.Toolchain``, timed inside its process), alternating with
backbeat's, with the ratio.
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
    write(root / "databases" / "benchdb" / "1.py", "class All:\n    def index(self, root_folder, parameters):\n"
          "        return []\n\n    def get(self, output, index):\n        return {}\n")
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


def chain_toolchain(k: int) -> dict:
    """A toolchain of one dataset, ``k`` blocks in a chain and an analyzer."""
    blocks = [{"name": f"b{i}", "synchronized_channel": "set", "inputs": ["i"], "outputs": ["o"]} for i in range(k)]
    conns = [{"from": "set.x", "to": "b0.i", "channel": "set"}]
    conns += [{"from": f"b{i - 1}.o", "to": f"b{i}.i", "channel": "set"} for i in range(1, k)]
    conns.append({"from": f"b{k - 1}.o", "to": "a.i", "channel": "set"})
    return {"datasets": [{"name": "set", "outputs": ["x"]}], "blocks": blocks,
            "analyzers": [{"name": "a", "synchronized_channel": "set", "inputs": ["i"]}], "connections": conns,
            "representation": {"connections": {}, "blocks": {}, "channel_colors": {}}}


BEAT_PYTHON = Path("/tmp/beatenv/bin/python")
_BEAT_TIMER = """
import sys, time
from beat.core.toolchain import Toolchain
t0 = time.perf_counter()
tc = Toolchain(sys.argv[1], sys.argv[2])
print(time.perf_counter() - t0, tc.valid)
"""


def beat_load(root: Path, name: str) -> float | None:
    """BEAT's time to load and validate one toolchain, measured in its own process (None: no BEAT)."""
    if not BEAT_PYTHON.exists():
        return None
    proc = subprocess.run([str(BEAT_PYTHON), "-c", _BEAT_TIMER, str(root), name], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        return None
    seconds, valid = proc.stdout.split()
    if valid != "True":
        raise SystemExit(f"BEAT finds the generated toolchain {name} invalid")
    return float(seconds)


def toolchain_sizes(root: Path, sizes: list[int]) -> None:
    from backbeat import api

    print("toolchain check by size (best of 3; BEAT alternating with backbeat):")
    for k in sizes:
        name = f"bench/chain{k}/1"
        write(root / "toolchains" / "bench" / f"chain{k}" / "1.json", chain_toolchain(k))
        ours, beats = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            report, = api.check(root, [f"toolchains/{name}"])
            ours.append(time.perf_counter() - t0)
            assert report["valid"], report["errors"][:3]
            beat = beat_load(root, name)
            if beat is not None:
                beats.append(beat)
        line = f"  {k:5d} blocks: backbeat {min(ours):.3f} s"
        if beats:
            line += f", BEAT {min(beats):.3f} s (BEAT/backbeat {min(beats) / min(ours):.1f}x)"
        print(line + ("   target < 0.5 s" if k == 1000 else ""))


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
    ap.add_argument("--blocks", default="250,500,1000,2000", help="toolchain sizes to time (comma-separated)")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="backbeat-bench-check-"))
    n = generate(root, args.assets)
    from backbeat import api

    reports = api.check(root)
    bad = [r for r in reports if not r["valid"]]
    lib = best_of(lambda: api.check(root))
    cli = best_of(lambda: subprocess.run([sys.executable, "-m", "backbeat", "--prefix", str(root), "check"],
                                         capture_output=True, check=False))
    print(f"assets generated: {n}, checked: {len(reports)}, invalid: {len(bad)}")
    print(f"library api.check: {lib:.3f} s  ({len(reports) / lib:,.0f} assets/s)")
    print(f"CLI `backbeat check` (incl. start-up): {cli:.3f} s   target < 1 s")
    toolchain_sizes(root, [int(k) for k in args.blocks.split(",") if k])
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
