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
    if not pidfile.exists() or not data.exists():  # perf could not record (not root, perf_event_paranoid…)
        raise SystemExit(f"schedgaps: perf sched record did not run the command (exit {proc.returncode})")
    return int(pidfile.read_text()), proc.returncode


def events(data: Path):
    """(time, event, tid, fields) of every scheduler event recorded."""
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,pid,tid,cpu,time,event,trace"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        m = LINE.match(line)
        if m is None:
            continue
        comm, pid, tid, _cpu, t, ev, trace = m.groups()
        fields = dict(FIELD.findall(trace))  # (sched_switch: prev_pid, prev_state… ==> next_pid, next_comm…)
        fields["_comm"] = comm
        fields["_tgid"] = pid
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
    runs: dict[int, list[tuple[float, float, bool]]] = defaultdict(list)  # tid -> (on, off, preempted)
    wakes: dict[int, list[tuple[float, int]]] = defaultdict(list)  # tid -> (when, by whom) woken from sleep
    born: dict[int, tuple[float, int]] = {}  # tid -> (when, parent)

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

    tgid: dict[int, int] = {}
    for t, ev, tid, f in events(data):
        if tid > 0 and int(f["_tgid"]) > 0:
            tgid.setdefault(tid, int(f["_tgid"]))
        if ev == "sched_process_fork":
            parent, child = int(f.get("pid", tid)), int(f["child_pid"])
            if parent in ours:
                ours.add(child)
                born[child] = (t, parent)
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
                    on = since.pop(prev)
                    cpu[prev] += t - on
                    runs[prev].append((on, t, f.get("prev_state", "S").startswith("R")))
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
            if x in ours and state.get(x) != "waiting":  # (a task may be woken just before it sleeps)
                wakes[x].append((t, tid))
            if x in ours and state.get(x) != "running":
                state[x] = "waiting"
        end = t
    if start is None or end is None:
        raise SystemExit("no event of the run was recorded")
    wall = end - start
    by_comm: dict[str, float] = defaultdict(float)
    for tid, s in cpu.items():
        by_comm[comm.get(tid, "?")] += s
    # by role: the command (the root's process), the processes it forked directly (the zygote…),
    # and theirs (the blocks: the zygote's children)
    proc_parent = {tgid.get(c, c): tgid.get(p, p) for c, (_t, p) in born.items() if tgid.get(c, c) != tgid.get(p, p)}
    role_cpu: dict[str, float] = defaultdict(float)
    for tid, sec in cpu.items():
        g = tgid.get(tid, tid)
        depth = 0
        while g != tgid.get(root, root) and g in proc_parent and depth < 10:
            g, depth = proc_parent[g], depth + 1
        role_cpu[{0: "command", 1: "its children (zygote…)"}.get(depth, "grandchildren (blocks…)")] += sec
    path = critical_path(root, runs, wakes, born, ours, comm)
    replayed = {str(n): replay(runs, wakes, born, ours, n) for n in (1, 2, 4)}
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
        "critical": path,
        "by_role": {k: round(v, 3) for k, v in role_cpu.items()},
        "replayed": replayed,
    }


def bursts(runs: dict, wakes: dict, born: dict, ours: set[int]) -> dict:
    """Each task's CPU bursts (runs joined across preemptions) and what started each:
    ``{tid: [(cpu seconds, start)]}`` where ``start`` is ``("task", waker tid, wall time)``, or
    ``("delay", seconds after the previous burst)`` for a wake-up by no task of the run."""
    out: dict[int, list] = {}
    for tid, intervals in runs.items():
        seq: list = []
        cpu, first_on = 0.0, None
        prev_off = prev_on = None
        for on, off, preempted in intervals:
            if first_on is None:
                first_on = on
                if not seq and tid in born:
                    start: tuple = ("task", born[tid][1], born[tid][0])
                elif prev_off is not None:
                    # the wake-up that ended the sleep: the last one before this run (it may have
                    # come while the task was still going to sleep)
                    woken = [w for w in wakes.get(tid, []) if prev_on <= w[0] <= on and w[1] != tid]
                    if woken and woken[-1][1] in ours:
                        start = ("task", woken[-1][1], woken[-1][0])
                    else:
                        start = ("delay", max(0.0, (woken[-1][0] if woken else on) - prev_off))
                else:
                    start = ("delay", 0.0)
            cpu += off - on
            if not preempted:  # went to sleep: the burst ends
                seq.append([cpu, start])
                cpu, first_on, prev_off, prev_on = 0.0, None, off, on
        if first_on is not None:
            seq.append([cpu, start])
        out[tid] = seq
    return out


def replay(runs: dict, wakes: dict, born: dict, ours: set[int], cores: int) -> float:
    """The run's wall time replayed on ``cores`` idle cores: every burst of CPU as recorded, each
    started when what woke it had reached the same point of its own burst (or after the same
    delay, for a timer or a device), the runnable bursts sharing the cores equally (as the
    kernel's fair scheduler does).  Others' load is gone from it; what is left is the run's own
    structure: its serial stretches and how its work overlaps."""
    import bisect

    seqs = bursts(runs, wakes, born, ours)
    # the CPU offset, inside the waker's burst, of each wake-up: where it was when it woke the next one
    starts: dict[int, list[float]] = {}
    offsets: dict[tuple[int, int], list[tuple[float, int, int]]] = defaultdict(list)  # (task, burst) -> triggers
    for tid, intervals in runs.items():
        starts[tid] = [i[0] for i in intervals]

    def locate(task: int, t: float) -> tuple[int, float] | None:
        """(burst index, CPU offset in it) of ``task`` at wall time ``t``."""
        intervals = runs.get(task)
        if not intervals:
            return None
        k = max(0, bisect.bisect_right(starts[task], t) - 1)
        b, cpu = 0, 0.0
        for j, (on, off, preempted) in enumerate(intervals):  # (tasks have few intervals: linear is fine)
            if j == k:
                return b, cpu + max(0.0, min(t, off) - on)
            cpu += off - on
            if not preempted:
                b, cpu = b + 1, 0.0
        return None

    pending: dict[tuple[int, int], float | None] = {}  # burst -> wall time it may start (None: not yet known)
    for tid, seq in seqs.items():
        for b, (_cpu, start) in enumerate(seq):
            if start[0] == "task":
                at = locate(start[1], start[2])
                if at is not None and start[1] in seqs and at[0] < len(seqs[start[1]]):
                    offsets[(start[1], at[0])].append((at[1], tid, b))
                    pending[(tid, b)] = None
                else:
                    seq[b][1] = ("delay", 0.0)
    for key in offsets:
        offsets[key].sort()
    # roots of the replay: bursts whose start is a delay after their predecessor (the first one of a task not forked by ours)
    now = 0.0
    ready: dict[tuple[int, int], float] = {}  # running burst -> CPU done
    timers: list[tuple[float, tuple[int, int]]] = []
    done_in_task: dict[int, int] = defaultdict(int)  # bursts finished per task
    arrived: set[tuple[int, int]] = set()  # bursts whose waker reached them

    hurried: dict[int, int] = {}  # task -> a later burst of it whose waker has come

    def may_start(tid: int, b: int) -> None:
        """Burst ``b`` of ``tid`` starts if its predecessor has ended and its trigger has come.
        Once a later burst's waker has come, the bursts before it that a timer starts wait for no
        timer (a loop polling with a timeout: on an idle machine the message it waits for comes
        sooner, and the wait recorded is the load's)."""
        if seqs[tid][b][1][0] == "task" and (tid, b) in arrived and done_in_task[tid] < b:
            hurried[tid] = max(hurried.get(tid, -1), b)
            j = done_in_task[tid]
            if (tid, j) not in ready and seqs[tid][j][1][0] == "delay":
                heapq.heappush(timers, (now, (tid, j)))
        if done_in_task[tid] != b or (tid, b) in ready:
            return
        start = seqs[tid][b][1]
        if start[0] == "task":
            if (tid, b) in arrived:
                ready[(tid, b)] = 0.0
        else:
            heapq.heappush(timers, (now + (0.0 if hurried.get(tid, -1) > b else start[1]), (tid, b)))

    import heapq
    for tid, seq in seqs.items():
        if seq and seq[0][1][0] == "delay":
            may_start(tid, 0)
    fired: dict[tuple[int, int], int] = defaultdict(int)  # triggers fired per running burst
    for _ in range(10_000_000):
        if not ready and not timers:
            break
        rate = min(1.0, cores / len(ready)) if ready else 0.0
        step = float("inf")
        for key, done in ready.items():
            tid, b = key
            trig = offsets.get(key, [])
            nxt = trig[fired[key]][0] if fired[key] < len(trig) else seqs[tid][b][0]
            step = min(step, max(0.0, nxt - done) / rate)
        if timers:
            step = min(step, max(0.0, timers[0][0] - now))
        now += step
        for key in list(ready):
            ready[key] += step * rate
        while timers and timers[0][0] <= now + 1e-12:
            _t, key = heapq.heappop(timers)
            if key not in ready and done_in_task[key[0]] == key[1]:
                ready[key] = 0.0
        for key in list(ready):
            tid, b = key
            trig = offsets.get(key, [])
            while fired[key] < len(trig) and trig[fired[key]][0] <= ready[key] + 1e-12:
                _o, t2, b2 = trig[fired[key]]
                fired[key] += 1
                arrived.add((t2, b2))
                may_start(t2, b2)
            if ready[key] >= seqs[tid][b][0] - 1e-12 and fired[key] >= len(trig):
                del ready[key]
                done_in_task[tid] += 1
                if b + 1 < len(seqs[tid]):
                    may_start(tid, b + 1)
    return round(now, 3)


def critical_path(root: int, runs: dict, wakes: dict, born: dict, ours: set[int], comm: dict) -> dict:
    """Walk back from the run's end along what each task waited for: while a task ran, its CPU is on
    the path; while it was preempted (runnable, others had the cores) nothing is (an idle machine
    would have run it); while it slept, the path jumps to the task that woke it, at that moment (a
    wake-up by no task of the run — a timer, a disk — counts as sleep on the path); a task's start
    jumps to its parent at the fork.  ``run``: CPU seconds on the path (what no number of cores
    would shorten), ``sleep``: waits for timers and devices on it, ``hops``: wake-ups followed."""
    import bisect

    on_path: dict[str, float] = defaultdict(float)
    run = sleep = 0.0
    hops = 0
    task = root
    t = runs[root][-1][1] if runs.get(root) else 0.0
    for _ in range(1_000_000):
        intervals = runs.get(task, [])
        k = bisect.bisect_left(intervals, (t, float("inf"), True)) - 1  # the last interval started before t
        while k >= 0 and intervals[k][0] >= t:
            k -= 1
        if k < 0:  # before the task's first run: its fork
            if task not in born:
                break
            t, task = born[task]
            hops += 1
            continue
        on, off, _preempted = intervals[k]
        if off >= t:  # running at t
            on_path[comm.get(task, "?")] += t - on
            run += t - on
            t = on
            if k > 0 and not intervals[k - 1][2]:  # it had slept before this run: who woke it?
                woken = [w for w in wakes.get(task, []) if intervals[k - 1][1] <= w[0] <= on]
                if woken:
                    w, by = woken[0]
                    if by in ours and by != task:
                        task, t = by, w
                        hops += 1
                    else:
                        sleep += w - intervals[k - 1][1]
                        t = intervals[k - 1][1]
            continue
        t = off  # off the CPU between off and t: preempted (not on the path) or asleep (handled above)
    return {"run": round(run, 3), "sleep": round(sleep, 3), "hops": hops,
            "by_comm": {k: round(v, 3) for k, v in sorted(on_path.items(), key=lambda kv: -kv[1])[:6]}}


def show(r: dict, bins: float) -> None:
    print(f"wall {r['wall']:.3f} s (first to last event of the run), {r['tasks']} tasks, CPU {r['cpu']:.3f} s")
    print("share of the run with N of its tasks runnable: "
          + ", ".join(f"{k}{'+' if k == '2' else ''}: {100 * v:.1f}%" for k, v in r["runnable"].items()))
    print("share with N of them on a core: " + ", ".join(f"{k}{'+' if k == '2' else ''}: {100 * v:.1f}%"
                                                       for k, v in r["running"].items()))
    print(f"runnable but waiting for a core (others' load): {r['waiting_task_s']:.3f} task-s")
    print(f"mean runnable tasks per {bins:g} s: " + " ".join(f"{b:.1f}" for b in r["bins"]))
    print("CPU by command name: " + ", ".join(f"{k} {v:.2f}" for k, v in r["by_comm"].items()))
    print("replayed on idle cores: " + ", ".join(f"{k}: {v:.3f} s" for k, v in r["replayed"].items()))
    print("CPU by role: " + ", ".join(f"{k} {v:.2f}" for k, v in r["by_role"].items()))
    c = r["critical"]
    print(f"critical path: {c['run']:.3f} s of CPU + {c['sleep']:.3f} s of sleep ({c['hops']} wake-ups followed; "
          + ", ".join(f"{k} {v:.2f}" for k, v in c["by_comm"].items()) + f"); CPU / 2 = {r['cpu'] / 2:.3f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bins", type=float, default=0.25, help="seconds per bin of the runnable profile")
    ap.add_argument("--data", type=Path, default=None, help="analyse this recording (with --root)")
    ap.add_argument("--root", type=int, default=None, help="the pid of the recorded command")
    ap.add_argument("--json", default=None, metavar="FILE")
    ap.add_argument("command", nargs="*")
    args = ap.parse_args(argv)
    rc = 0
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
    return 1 if rc else 0


if __name__ == "__main__":
    raise SystemExit(main())
