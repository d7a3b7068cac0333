"""Per-block overhead of the Dask executor on a real cluster (a scheduler and 2 workers on localhost).

Usage: python benchmarks/dask_overhead.py [--chains 1,5,10] [--repeat 3] [--json FILE]

Starts ``dask scheduler`` and ``dask worker --nworkers 2 --nthreads 1`` as separate processes
(what a real deployment runs, not a LocalCluster inside the submitting process), then runs chains
of K identity blocks over 10 scalars (make_prefix.write_prefix) through the real CLI, cold (empty
cache each time), alternating the local executor
(``backbeat experiments run NAME``) and the Dask executor
(``backbeat experiments run NAME --executor dask --scheduler ADDRESS``).  The per-block cost of
each executor is the slope of the median wall time against K (least squares); the Dask
executor's **per-block overhead** is its slope minus the local one (goal: < 0.25 s).  The
intercept (cost at K=0: interpreter, imports — ``distributed`` for Dask —, planning, indexing,
connecting) is printed too.

To explain the Dask slope it also measures, on this machine: the round trip of a chain of no-op
Dask tasks (scheduling latency per dependent task), the start of a fresh interpreter importing
what ``python -m backbeat.execution.remote`` imports (every Dask block task starts one), and the
block runner's own time per block as it reports it (``statistics.wall_s``: fork server start,
block process, commit).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import runner  # noqa: E402
from make_prefix import write_prefix  # noqa: E402

GOAL_S = 0.25
REMOTE_IMPORTS = ("import backbeat.execution.remote; from backbeat.data import cachereader, cachewriter; "
                  "from backbeat.processes import control, workerpool")


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of wall time against K."""
    n = len(points)
    mk = sum(k for k, _ in points) / n
    mt = sum(t for _, t in points) / n
    var = sum((k - mk) ** 2 for k, _ in points)
    slope = sum((k - mk) * (t - mt) for k, t in points) / var if var else 0.0
    return slope, mt - slope * mk


def noop(x: object = None) -> int:
    return 0


class Cluster:
    """A ``dask scheduler`` and a ``dask worker`` (2 processes, 1 thread each) on localhost."""

    def __init__(self, root: Path, workers: int = 2):
        dask = Path(sys.executable).with_name("dask")
        self.file = root / "scheduler.json"
        self.logs = [open(root / "scheduler.log", "w"), open(root / "worker.log", "w")]  # noqa: SIM115
        self.scheduler = subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                           "--scheduler-file", str(self.file), "--no-dashboard", "--no-show"],
                                          cwd=root, start_new_session=True, stdout=subprocess.DEVNULL,
                                          stderr=self.logs[0])
        deadline = time.monotonic() + 60
        while not self.file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.worker = subprocess.Popen([str(dask), "worker", "--scheduler-file", str(self.file), "--nworkers",
                                        str(workers), "--nthreads", "1", "--no-dashboard",
                                        "--local-directory", str(root / "dask-worker-space")],
                                       cwd=root, start_new_session=True, stdout=subprocess.DEVNULL,
                                       stderr=self.logs[1])
        from distributed import Client

        self.client = Client(scheduler_file=str(self.file), timeout="60s")
        self.client.wait_for_workers(workers, timeout=120)
        self.address = json.loads(self.file.read_text())["address"]

    @property
    def pids(self) -> set[int]:
        return {self.scheduler.pid, self.worker.pid}

    def task_latency(self, n: int = 20) -> float:
        """Seconds per task of a chain of ``n`` dependent no-op tasks (submit -> result)."""
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fut = self.client.submit(noop, None, pure=False)
            for _ in range(n - 1):
                fut = self.client.submit(noop, fut, pure=False)
            fut.result()
            times.append((time.perf_counter() - t0) / n)
        return statistics.median(times)

    def close(self) -> None:
        self.client.close()
        for proc in (self.worker, self.scheduler):  # the process groups this script started
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=20)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
            if proc.poll() is None:
                proc.wait()
        for log in self.logs:
            log.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", default="1,5,10", help="chain lengths K (default 1,5,10)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per executor and K (default 3)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    chains = sorted({int(k) for k in args.chains.split(",") if k})
    if len(chains) < 2:
        ap.error("--chains needs at least two lengths")
    try:
        import distributed  # noqa: F401
    except ImportError:
        print("Dask is not installed: pip install 'backbeat[dask]'", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="backbeat-dask-"))
    prefix = root / "prefix"
    write_prefix(prefix, {"s10": ("scalars", 10)}, [(k, "s10") for k in chains])
    env = {k: v for k, v in os.environ.items() if k not in ("BACKBEAT_DEBUG", "BACKBEAT_PREFIX")}
    exe = str(Path(sys.executable).with_name("backbeat"))
    machine = runner.machine()
    print(runner.backbeat_version(sys.executable))
    print(f"machine: {machine['cores']} cores, load {machine['loadavg'][0]:.2f}, parallel capacity now "
          f"{machine['capacity']:.2f}x")
    cluster = None
    n = 0
    try:
        t0 = time.perf_counter()
        cluster = Cluster(root)
        print(f"cluster: dask scheduler at {cluster.address} + 2 worker processes (1 thread each), "
              f"up in {time.perf_counter() - t0:.1f} s")
        walls: dict[str, dict[int, list[float]]] = {"local": {}, "dask": {}}
        inner: list[float] = []
        failures: list[str] = []
        for extra in ([], ["--executor", "dask", "--scheduler", cluster.address]):  # warm-up, not measured
            runner.run([exe, "--prefix", str(prefix), "--cache", str(root / f"warm{len(extra)}"), "experiments", "run",
                        f"bench/bench/chain{chains[0]}/1/s10", *extra], env=env, exclude=cluster.pids)
        for r in range(args.repeat):
            for k in chains:
                order = ("local", "dask") if r % 2 == 0 else ("dask", "local")
                for tool in order:
                    n += 1
                    cache = root / f"cache{n}"
                    cmd = [exe, "--prefix", str(prefix), "--cache", str(cache), "experiments", "run",
                           f"bench/bench/chain{k}/1/s10", "--json"]
                    if tool == "dask":
                        cmd += ["--executor", "dask", "--scheduler", cluster.address]
                    m = runner.run(cmd, cwd=root, env=env, timeout=600, exclude=cluster.pids)
                    shutil.rmtree(cache, ignore_errors=True)
                    if not m.ok:
                        failures.append(f"{tool} K={k}: {m.failure()}")
                        continue
                    walls[tool].setdefault(k, []).append(m.wall_s)
                    if tool == "dask":
                        rep = json.loads(m.stdout)
                        inner += [b["statistics"]["wall_s"] for b in rep["blocks"].values()
                                  if b.get("status") == "ran" and "wall_s" in b.get("statistics", {})]
        latency = cluster.task_latency()
        starts = [runner.run([sys.executable, "-c", REMOTE_IMPORTS], env=env, exclude=cluster.pids).wall_s
                  for _ in range(5)]
        print(f"\n{'K':>5} {'local s':>16} {'dask s':>16}   (median [min-max] of {args.repeat}, cold cache)")
        for k in chains:
            cells = []
            for tool in ("local", "dask"):
                v = walls[tool].get(k, [])
                cells.append(f"{statistics.median(v):6.2f} [{min(v):.2f}-{max(v):.2f}]" if v else "FAILED")
            print(f"{k:5d} {cells[0]:>16} {cells[1]:>16}")
        fits = {}
        for tool in ("local", "dask"):
            pts = [(k, statistics.median(v)) for k, v in walls[tool].items() if v]
            fits[tool] = fit(pts) if len(pts) >= 2 else (float("nan"), float("nan"))
        overhead = fits["dask"][0] - fits["local"][0]
        print(f"\nper block (slope): local {1000 * fits['local'][0]:.0f} ms, Dask {1000 * fits['dask'][0]:.0f} ms "
              f"-> Dask per-block overhead {1000 * overhead:.0f} ms (goal < {1000 * GOAL_S:.0f} ms: "
              f"{'met' if overhead < GOAL_S else 'missed'})")
        print(f"fixed part (intercept): local {fits['local'][1]:.2f} s, Dask {fits['dask'][1]:.2f} s")
        print("where a Dask block's time goes (measured separately on this machine):")
        print(f"  Dask scheduling, one dependent no-op task (chain of 20): {1000 * latency:6.0f} ms")
        print(f"  fresh interpreter importing the block runner's modules:    {1000 * statistics.median(starts):6.0f} ms")
        if inner:
            print(f"  block runner's own time per block (fork server + block): {1000 * statistics.median(inner):6.0f} ms "
                  f"(median of {len(inner)})")
        for f in failures:
            print(f"  ! {f}")
        after = runner.machine()
        print(f"machine after: load {after['loadavg'][0]:.2f}, parallel capacity {after['capacity']:.2f}x")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "machine": {"before": machine, "after": after}, "walls": walls,
                "slope_s": {t: f[0] for t, f in fits.items()}, "intercept_s": {t: f[1] for t, f in fits.items()},
                "overhead_s": overhead, "goal_s": GOAL_S, "task_latency_s": latency,
                "runner_start_s": statistics.median(starts), "runner_inner_s": inner, "failures": failures,
            }, indent=1) + "\n")
    finally:
        if cluster is not None:
            cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
