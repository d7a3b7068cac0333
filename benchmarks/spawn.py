"""Spawn latency of backbeat's pre-warmed block processes (ForkServer + ZeroMQ control channel).

Usage: python benchmarks/spawn.py [--n 50] [--preload numpy,h5py,zmq]

Prints:
* the cost of starting the ForkServer (``start()`` returning, and the zygote ready with
  its preload imported), in this process;
* over ``n`` sequential jobs through ``backbeat.control:job_main``: mean/median latency from
  ``spawn()`` to the job's ``start`` message and to its process exit (as reported back);
* the same for bare jobs without the control channel (spawn → exit);
* a cold end-to-end figure: a fresh interpreter that starts a ForkServer, runs 3 jobs with
  the control channel and exits (what a trivial experiment pays besides the real work).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from backbeat.processes.control import ControlServer
from backbeat.processes.workerpool import ForkServer

TARGET = "spawn:noop"  # this file, imported by name in the block process (sys.path[0] is its folder)


def noop(payload: dict) -> dict:
    return {"ok": True}


def fmt(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"mean {statistics.mean(ms):6.2f} ms   median {statistics.median(ms):6.2f} ms   max {max(ms):6.2f} ms"


def measure(n: int, preload: tuple[str, ...]) -> None:
    t0 = time.perf_counter()
    fs = ForkServer(preload=preload).start()
    t1 = time.perf_counter()
    fs.wait_ready()
    t2 = time.perf_counter()
    print(f"ForkServer ({fs.kind}, preload={','.join(preload) or '-'}): start() {1000 * (t1 - t0):.1f} ms, "
          f"ready {1000 * (t2 - t0):.1f} ms")
    ctl = ControlServer()
    try:
        to_start, to_exit, bare = [], [], []
        for i in range(n):
            job = f"b{i}"
            t = time.perf_counter()
            h = fs.spawn("backbeat.processes.control:job_main", {"control": ctl.address, "job": job, "target": TARGET})
            seen: list[str] = []
            while "start" not in seen:
                msgs = ctl.poll(2000)
                if not msgs:
                    raise SystemExit("no start message within 2 s")
                seen += [m.type for m in msgs if m.job == job]
            to_start.append(time.perf_counter() - t)
            deadline = time.monotonic() + 10
            while h.poll() is None and time.monotonic() < deadline:  # the executor's loop
                seen += [m.type for m in ctl.poll(5) if m.job == job]
            ex = h.wait(timeout=0)
            to_exit.append(time.perf_counter() - t)
            if not ex.ok or "done" not in seen:
                raise SystemExit(f"job {job} failed: {ex}, messages {seen}")
        for _ in range(n):
            t = time.perf_counter()
            fs.spawn(TARGET, {}).wait(timeout=10)
            bare.append(time.perf_counter() - t)
        print(f"spawn → start message ({n} jobs): {fmt(to_start)}")
        print(f"spawn → exit          ({n} jobs): {fmt(to_exit)}")
        print(f"bare spawn → exit     ({n} jobs): {fmt(bare)}")
    finally:
        ctl.close()
        fs.close()


COLD = """
import sys, time
sys.path.insert(0, {here!r})
from backbeat.processes.workerpool import ForkServer
from backbeat.processes.control import ControlServer
with ForkServer(preload={preload!r}) as fs:
    ctl = ControlServer()
    hs = [fs.spawn("backbeat.processes.control:job_main", {{"control": ctl.address, "job": str(i), "target": {target!r}}})
          for i in range(3)]
    got = []
    while not all(h.poll() for h in hs):
        got += ctl.poll(5)
    exits = [h.exit for h in hs]
    ctl.close()
    assert all(e.ok for e in exits), exits
"""


def cold(preload: tuple[str, ...]) -> None:
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    code = COLD.format(here=here, preload=preload, target=TARGET)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t)
    print(f"cold: new interpreter + ForkServer + 3 jobs with control channel: best {1000 * min(times):.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--preload", default="numpy,h5py,zmq")
    args = parser.parse_args()
    preload = tuple(p for p in args.preload.split(",") if p)
    measure(args.n, preload)
    cold(preload)


if __name__ == "__main__":
    main()
