"""Where a run leaves a core idle: its scheduler timeline from ``perf sched record``, whatever the load.

Usage::

    python benchmarks/schedgaps.py [--bins 0.25] -- COMMAND [ARG ...]
    python benchmarks/schedgaps.py --data perf.data --root PID   # an existing recording

Runs ``COMMAND`` under ``perf sched record`` (every context switch and wake-up of the machine),
then follows the tasks (processes and threads) descended from it and reconstructs, at every
instant, how many of them were *running* (on a core) and how many were *waiting* (runnable, but
other programs had the cores).  What it prints does not depend on how busy the machine was as a
wall time does:

* ``runnable < 2``: the share of the run during which fewer than two of its tasks could run — a
  core the run itself left idle (a serial stretch, a process waiting for a message, a wake-up);
* ``waiting``: the task-seconds the run's tasks were runnable but not running (others' load);
* per bin of ``--bins`` seconds, the mean number of the run's runnable tasks (where the gaps are);
* per command name, the CPU of its tasks.

Serve runs off (``BACKBEAT_TEMPLATE=off``) so that every process of the run descends from
``COMMAND``.  Needs ``perf`` and root (or ``perf_event_paranoid`` ≤ -1).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

LINE = re.compile(r"^\s*(.*?)\s+(-?\d+)/(-?\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
FIELD = re.compile(r"(\w+)=(\S+)")


def record(command: list[str], data: Path) -> tuple[int, int]:
    """Run ``command`` under ``perf sched record``; (its pid, its exit code)."""
    pidfile = data.with_suffix(".pid")
    shell = 'echo $$ > "$0"; exec "$@"'  # (the command's pid: perf forks it before recording starts)
    proc = subprocess.Popen(["perf", "sched", "record", "-o", str(data), "--", "sh", "-c", shell, str(pidfile),
                             *command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _out, err = proc.communicate()
    if proc.returncode:
        sys.stderr.write(err.decode(errors="replace")[-2000:])
    return int(pidfile.read_text()), proc.returncode


def events(data: Path):
    """(time, event, tid, fields) of every scheduler event recorded."""
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,pid,tid,cpu,time,event,trace"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        m = LINE.match(line)
        if m is None:
            continue
        comm, _pid, tid, _cpu, t, ev, trace = m.groups()
        if "==>" in trace:  # sched_switch: prev_… ==> next_…
            fields = dict(FIELD.findall(trace))  # prev_pid, prev_state… next_pid, next_comm…
        else:
            fields = dict(FIELD.findall(trace))
        fields["_comm"] = comm
        yield float(t), ev.removeprefix("sched:"), int(tid), fields


def analyse(data: Path, root: int, bins: float) -> dict:
    """The run's runnable and running tasks over time (see the module docstring)."""
    ours = {root}
    state: dict[int, str] = {}  # tid -> running | waiting (absent: sleeping)
    comm: dict[int, str] = {}
    cpu: dict[int, float] = defaultdict(float)
    hist: dict[tuple[int, int], float] = defaultdict(float)  # (running, waiting) -> seconds
    binned: dict[int, float] = defaultdict(float)  # bin -> runnable task-seconds
    start = end = last = None
    since: dict[int, float] = {}

    def counts() -> tuple[int, int]:
        run = sum(1 for s in state.values() if s == "running")
        return run, len(state) - run

    def advance(t: float) -> None:
        nonlocal last
        if last is not None and start is not None and t > last:
            r, w = counts()
            hist[(r, w)] += t - last
            k0, k1 = int((last - start) / bins), int((t - start) / bins)
            for k in range(k0, k1 + 1):  # spread over the bins the interval covers
                a, b = max(last, start + k * bins), min(t, start + (k + 1) * bins)
                if b > a:
                    binned[k] += (r + w) * (b - a)
        last = t

    for t, ev, tid, f in events(data):
        if ev == "sched_process_fork":
            parent, child = int(f.get("pid", tid)), int(f["child_pid"])
            if parent in ours:
                ours.add(child)
                comm[child] = f.get("child_comm", "?")
                if start is None:
                    start = t
            continue
        if start is None and tid == root:
            start = t
        touched = []
        if ev == "sched_switch":
            prev, nxt = int(f["prev_pid"]), int(f["next_pid"])
            touched = [prev, nxt]
        elif ev in ("sched_waking", "sched_wakeup_new"):
            touched = [int(f["pid"])]
        if not any(x in ours for x in touched):
            continue
        advance(t)
        if ev == "sched_switch":
            if prev in ours:
                if prev in since:
                    cpu[prev] += t - since.pop(prev)
                comm[prev] = f.get("prev_comm", comm.get(prev, "?"))
                if f.get("prev_state", "S").startswith("R"):
                    state[prev] = "waiting"
                else:
                    state.pop(prev, None)
            if nxt in ours:
                state[nxt] = "running"
                since[nxt] = t
                comm[nxt] = f.get("next_comm", comm.get(nxt, "?"))
        else:
            x = touched[0]
            if x in ours and state.get(x) != "running":
                state[x] = "waiting"
        end = t
    if start is None or end is None:
        raise SystemExit("no event of the run was recorded")
    wall = end - start
    by_comm: dict[str, float] = defaultdict(float)
    for tid, s in cpu.items():
        by_comm[comm.get(tid, "?")] += s
    runnable = defaultdict(float)
    for (r, w), s in hist.items():
        runnable[min(r + w, 2)] += s
    return {
        "wall": round(wall, 3),
        "tasks": len(ours),
        "cpu": round(sum(cpu.values()), 3),
        "runnable": {str(k): round(v / wall, 4) for k, v in sorted(runnable.items())},
        "running": {str(k): round(sum(s for (r, _w), s in hist.items() if min(r, 2) == k) / wall, 4) for k in (0, 1, 2)},
        "waiting_task_s": round(sum(w * s for (_r, w), s in hist.items()), 3),
        "bins": [round(binned.get(k, 0.0) / bins, 2) for k in range(int(wall / bins) + 1)],
        "by_comm": {k: round(v, 3) for k, v in sorted(by_comm.items(), key=lambda kv: -kv[1])[:8]},
    }


def show(r: dict, bins: float) -> None:
    print(f"wall {r['wall']:.3f} s (first to last event of the run), {r['tasks']} tasks, CPU {r['cpu']:.3f} s")
    print("share of the run with N of its tasks runnable: "
          + ", ".join(f"{k}{'+' if k == '2' else ''}: {100 * v:.1f}%" for k, v in r["runnable"].items()))
    print("share with N of them on a core: " + ", ".join(f"{k}{'+' if k == '2' else ''}: {100 * v:.1f}%"
                                                       for k, v in r["running"].items()))
    print(f"runnable but waiting for a core (others' load): {r['waiting_task_s']:.3f} task-s")
    print(f"mean runnable tasks per {bins:g} s: " + " ".join(f"{b:.1f}" for b in r["bins"]))
    print("CPU by command name: " + ", ".join(f"{k} {v:.2f}" for k, v in r["by_comm"].items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bins", type=float, default=0.25, help="seconds per bin of the runnable profile")
    ap.add_argument("--data", type=Path, default=None, help="analyse this recording (with --root)")
    ap.add_argument("--root", type=int, default=None, help="the pid of the recorded command")
    ap.add_argument("--json", default=None, metavar="FILE")
    ap.add_argument("command", nargs="*")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="backbeat-schedgaps-") as tmp:
        if args.data is not None:
            data, root = args.data, args.root
        else:
            if not args.command:
                ap.error("a command to run (after --), or --data and --root")
            data = Path(tmp) / "perf.data"
            root, rc = record(args.command, data)
            if rc:
                print(f"the command failed (exit {rc})", file=sys.stderr)
        if root is None:
            ap.error("--data needs --root")
        r = analyse(data, root, args.bins)
    show(r, args.bins)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
