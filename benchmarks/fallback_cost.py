"""CPU a job costs in the multiprocessing fallback (a ForkServer started with threads alive).

Usage: python benchmarks/fallback_cost.py [--n 40] [--preload numpy]

Runs ``n`` trivial jobs one after another through ``ForkServer(mode="multiprocessing")`` and prints
the CPU (user + system) per job of what multiprocessing's fork server reaped meanwhile — each job's
processes (the guard and its block: ``processes/mpreaper.py``), whatever the machine's load —
and the wall time per job (meaningless under load).  Compare two trees by running it with each on
``PYTHONPATH``, alternated.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from backbeat.processes import reaper
from backbeat.processes.workerpool import ForkServer

TARGET = "fallback_cost:noop"  # this file, imported by name in the block process (sys.path[0] is its folder)


def noop(payload: dict) -> None:
    return None


def _reaped_cpu(pid: int) -> float:
    """CPU seconds of the children ``pid`` has reaped (``cutime + cstime`` of ``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--preload", default="numpy")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    with ForkServer(preload=tuple(filter(None, args.preload.split(","))), mode="multiprocessing") as fs:
        assert fs.spawn(TARGET, {}).wait(60).ok  # (multiprocessing's fork server started and warm)
        server = next(p for p in reaper.children() if b"forkserver" in open(f"/proc/{p}/cmdline", "rb").read())
        cpu0, wall0 = _reaped_cpu(server), time.perf_counter()
        for _ in range(args.n):
            assert fs.spawn(TARGET, {}).wait(60).ok
        cpu, wall = _reaped_cpu(server) - cpu0, time.perf_counter() - wall0
    print(f"fallback: {1000 * cpu / args.n:.2f} ms CPU a job (its processes), {1000 * wall / args.n:.1f} ms wall a job "
          f"(n={args.n}, preload {args.preload or 'none'})")


if __name__ == "__main__":
    main()
