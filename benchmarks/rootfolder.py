"""A fully cached re-run as a database's root folder fills with files its view never reads (issue 11).

Usage: python benchmarks/rootfolder.py [--files 0 10000 100000] [--repeat 5]

The demo iris experiment (prefix/) runs with its database's root folder set to a folder
holding ``iris.csv`` (which the view reads) and N other files (which it never opens).  For
each N it runs the real CLI (``backbeat experiments run NAME --json``) once cold and once
cached (untimed: files written less than 2 s earlier are re-hashed, see
``backbeat.core.statmemo``), then ``--repeat`` times fully cached, alternating between the
sizes, and prints: the cached re-run's wall and CPU time (median; CPU = user + system of the
process and its children: on a shared machine it moves less than wall time), its ratio to
N = 0, the provenance record's size, the stat memo's size, and ``experiments status``'s
wall time.

Target: the cached re-run the same within 20 % for 0 and 100,000 unread files, records
under 100 KB (before issue 11: 6-10 s instead of 0.3 s, 38 MB records, status 15 s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "user/user/iris/1/iris"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def backbeat(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    exe = shutil.which("backbeat") or str(Path(sys.executable).with_name("backbeat"))
    cmd = [exe] if Path(exe).exists() else [sys.executable, "-c", "from backbeat.cli import entry; entry()"]
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"backbeat {' '.join(args)} failed:\n{proc.stderr}")
    return wall, proc


def setup(where: Path, files: int) -> tuple[Path, Path]:
    """A copy of the demo prefix whose iris root folder holds iris.csv and ``files`` unread files."""
    prefix, cache, data = where / "prefix", where / "cache", where / "data"
    shutil.copytree(ROOT / "prefix", prefix, ignore=shutil.ignore_patterns("cache", "__pycache__"))
    data.mkdir()
    shutil.copy(prefix / "databases/iris/data/iris.csv", data / "iris.csv")
    for i in range(files):  # 1,000 per folder, as real datasets are laid out
        folder = data / "unread" / f"{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"{i:06d}.bin").write_bytes(i.to_bytes(4, "little"))
    decl = prefix / "databases/iris/1.json"
    decl.write_text(decl.read_text().replace('"/backbeat/databases/iris"', json.dumps(str(data))))
    return prefix, cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[0, 10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bb-rootfolder-"))
    try:
        worlds = {}
        for n in args.files:
            t0 = time.perf_counter()
            prefix, cache = setup(tmp / str(n), n)
            made = time.perf_counter() - t0
            cold, proc = backbeat("-p", str(prefix), "-c", str(cache), "experiments", "run", NAME, "--json", "-q")
            worlds[n] = (prefix, cache, json.loads(proc.stdout)["provenance"])
            print(f"{n:>7} unread files: created in {made:.1f} s, cold run {cold:.2f} s", flush=True)
        time.sleep(2.5)  # files written just now are racy for the stat memo: let one cached run settle them
        for n in args.files:
            backbeat("-p", str(worlds[n][0]), "-c", str(worlds[n][1]), "experiments", "run", NAME, "--json", "-q")
        walls: dict[int, list[float]] = {n: [] for n in args.files}
        cpus: dict[int, list[float]] = {n: [] for n in args.files}
        for _ in range(args.repeat):
            for n in args.files:  # alternating, so that load on the machine hits every size alike
                prefix, cache, _rec = worlds[n]
                before = cpu()
                wall, proc = backbeat("-p", str(prefix), "-c", str(cache), "experiments", "run", NAME, "--json", "-q")
                cpus[n].append(cpu() - before)
                rep = json.loads(proc.stdout)
                assert {b["status"] for b in rep["blocks"].values()} == {"cached"}, rep
                walls[n].append(wall)
        base_wall, base_cpu = statistics.median(walls[args.files[0]]), statistics.median(cpus[args.files[0]])
        print(f"\n{'unread files':>12} {'cached wall':>11} {'ratio':>6} {'cached cpu':>10} {'ratio':>6} {'record':>9} "
              f"{'memo':>9} {'status':>7}")
        for n in args.files:
            prefix, cache, rec = worlds[n]
            status, _ = backbeat("-p", str(prefix), "-c", str(cache), "experiments", "status", NAME, "--json")
            memo = cache / ".memo"  # (before issue 11: provenance/stat-cache.json)
            memo_files = list(memo.iterdir()) if memo.is_dir() else list(cache.glob("provenance/stat-cache.json"))
            memo_bytes = sum(p.stat().st_size for p in memo_files)
            w, c = statistics.median(walls[n]), statistics.median(cpus[n])
            print(f"{n:>12} {w:>10.3f}s {w / base_wall:>6.2f} {c:>9.3f}s {c / base_cpu:>6.2f} "
                  f"{Path(rec).stat().st_size / 1024:>7.1f}KB {memo_bytes / 1024:>7.1f}KB {status:>6.2f}s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
