"""Where the milliseconds of a small backbeat run go: fixed cost, and cost per block.

Usage::

    python benchmarks/fixed_cost.py [--repeat N] [--chains 25,50,100] [--cprofile 50,100]
                                    [--checks 250,500,1000] [--throughput s1000000] [--json FILE]
                                    [--skip trivial,imports,chains,cprofile,throughput,check]

Every measured run is the real CLI (``backbeat --prefix P --cache C experiments run NAME
--json``) in a fresh interpreter, on the BEAT-format prefix of make_prefix.write_prefix, run
through benchmarks/tracing.py, which times the main steps in every process of the run (the
CLI process, the fork server's zygote, each block process) with wrappers installed as the
modules are imported.  It prints:

1. **trivial run** (10 scalars, 1 identity block, summing analyzer), cold (empty cache) and
   fully cached: the median over N runs of each step of the CLI process — interpreter start
   (launch to the first line of Python), imports, configuration, planning, indexing, the
   fork server, execution, close, report, provenance, printing, interpreter exit — nested
   steps indented, ``(other)`` what no step covers; then each child process's steps;
   untraced runs alternate with the traced ones so the tracing's own cost shows;
2. **imports of the CLI process**: ``python -X importtime`` of the modules the CLI process
   had imported at the end of a cold trivial run, grouped by top-level package;
3. **per-block cost** over chains of K identity blocks (10 scalars): wall time and CPU
   (CLI process, block processes, zygote) against K, the cost per added block (slope between
   the two largest K), and each step's total in the CLI process and mean per block process,
   with its growth exponent (time ~ K^e: e ~ 1 linear, e ~ 2 quadratic);
4. **cProfile** of the CLI process at two chain lengths: the functions whose own time grows
   fastest with K (the O(K^2) suspects), with call counts;
5. **throughput**: one traced cold run of 1M scalars (``--throughput``) through 5 blocks: each
   process's steps (wall, CPU, peak RSS); then a run with two block processes (an identity block
   and the analyzer) under cProfile, per item;
6. **check**: ``backbeat check`` of one toolchain of K blocks against K, and its cProfile.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pstats
import re
import shutil
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import runner  # noqa: E402
from make_prefix import protocol_name, write_prefix  # noqa: E402

TRACER = HERE / "tracing.py"


def load_spans(folder: Path) -> tuple[list[dict], list[dict]]:
    """(spans, instants) of every process of a traced run."""
    spans: list[dict] = []
    instants: list[dict] = []
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            (spans if "t0" in rec else instants).append(rec)
    return spans, instants


class Bench:
    def __init__(self, root: Path, repeat: int):
        self.root, self.repeat = root, repeat
        self.prefix = root / "prefix"
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONDONTWRITEBYTECODE", "BACKBEAT_DEBUG", "BACKBEAT_PREFIX")}
        # the zygote forked from this run's traced CLI, not from a warm template (whose processes
        # carry no tracer): every process's spans are measured (BACKBEAT_TEMPLATE=on to time it)
        self.env.setdefault("BACKBEAT_TEMPLATE", "off")
        self._n = 0
        self.warned: set[str] = set()

    def cache(self) -> Path:
        self._n += 1
        return self.root / f"cache{self._n}"

    def args(self, name: str, cache: Path) -> list[str]:
        return ["--prefix", str(self.prefix), "--cache", str(cache), "experiments", "run", name, "--json"]

    def traced(self, name: str, cache: Path, profile: Path | None = None,
               profile_jobs: tuple[list[str], Path] | None = None) -> dict:
        """One traced run: its spans, instants, wall and CPU, and the launch/exit times."""
        spans_dir = self.cache().with_name(f"spans{self._n}")
        cmd = [sys.executable, str(TRACER), str(spans_dir)]
        if profile is not None:
            cmd += ["--cprofile", str(profile)]
        if profile_jobs is not None:
            cmd += ["--cprofile-jobs", ",".join(profile_jobs[0]), str(profile_jobs[1])]
        m = runner.run([*cmd, "--", *self.args(name, cache)], cwd=self.root, env=self.env, timeout=600)
        if not m.ok:
            raise SystemExit(f"traced run of {name} failed: {m.failure()}\n{m.stderr[-3000:]}")
        spans, instants = load_spans(spans_dir)
        for missing in sorted({i["target"] for i in instants if i["label"] == "missing target"} - self.warned):
            print(f"warning: tracing target {missing} not found (the code moved: update benchmarks/tracing.py)")
            self.warned.add(missing)
        modules = json.loads((spans_dir / "modules.json").read_text()) if (spans_dir / "modules.json").exists() else []
        shutil.rmtree(spans_dir, ignore_errors=True)
        return {"spans": spans, "instants": instants, "wall": m.wall_s, "cpu": m.cpu_s, "launch": m.started,
                "end": m.started + m.wall_s, "others": m.others_cores, "modules": modules,
                "report": json.loads(m.stdout)}

    def check(self, k: int, profile: Path | None = None) -> float:
        """Wall time of ``backbeat check toolchains/bench/chainK/1`` (optionally under cProfile)."""
        label = f"toolchains/bench/chain{k}/1"
        if profile is not None:
            spans_dir = self.root / f"check-spans{k}"
            cmd = [sys.executable, str(TRACER), str(spans_dir), "--cprofile", str(profile), "--"]
        else:
            cmd = [str(Path(sys.executable).with_name("backbeat"))]
        m = runner.run([*cmd, "--prefix", str(self.prefix), "check", label], cwd=self.root, env=self.env,
                       timeout=600)
        if not m.ok:
            raise SystemExit(f"check of {label} failed: {m.failure()}")
        return m.wall_s

    def untraced(self, name: str, cache: Path) -> runner.Measured:
        exe = Path(sys.executable).with_name("backbeat")
        m = runner.run([str(exe), *self.args(name, cache)], cwd=self.root, env=self.env, timeout=600)
        if not m.ok:
            raise SystemExit(f"run of {name} failed: {m.failure()}")
        return m


# -- the CLI process's steps -------------------------------------------------------------------
COMMAND = "backbeat.cli.command (the command)"


def span_tree(spans: list[dict], origin: float) -> dict[tuple[str, ...], list]:
    """``{call path: [wall ms, first start in ms after origin, CPU ms]}`` of one process's
    spans; a path lists the labels from the outermost span down (spans nest by time)."""
    out: dict[tuple[str, ...], list] = {}
    stack: list[tuple[float, tuple[str, ...]]] = []
    for s in sorted(spans, key=lambda s: (s["t0"], -s["t1"])):
        while stack and stack[-1][0] < s["t1"]:
            stack.pop()
        label = COMMAND if s["label"] == "backbeat.cli.command" else s["label"]
        path = (stack[-1][1] if stack else ()) + (label,)
        stack.append((s["t1"], path))
        entry = out.setdefault(path, [0.0, 1000 * (s["t0"] - origin), 0.0])
        entry[0] += 1000 * (s["t1"] - s["t0"])
        entry[2] += 1000 * s.get("c", 0.0)
    return out


def main_steps(run: dict) -> dict[tuple[str, ...], list]:
    """The CLI process's steps as a tree (see :func:`span_tree`), plus interpreter start and
    exit, what no step of the command covers, and the total (CPU None where not measured)."""
    main = [s for s in run["spans"] if s["proc"] == "main"]
    inst = {i["label"]: i["t"] for i in run["instants"] if i["proc"] == "main"}
    origin = run["launch"]
    steps = span_tree(main, origin)
    first = inst.get("first line", origin)
    steps[("interpreter start (launch -> first line of Python)",)] = [1000 * (first - origin), -1.0, None]
    if (COMMAND,) in steps:
        direct = [v for p, v in steps.items() if len(p) == 2 and p[0] == COMMAND]
        steps[(COMMAND, "(other: argparse, imports inside the command, ...)")] = [
            steps[(COMMAND,)][0] - sum(v[0] for v in direct), 1e9, steps[(COMMAND,)][2] - sum(v[2] for v in direct)]
    steps[("interpreter exit (after main returned)",)] = [
        1000 * (run["end"] - inst.get("main returned", run["end"])), 2e9, None]
    steps[("TOTAL (wall)",)] = [1000 * run["wall"], 3e9, None]
    return steps


def _med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def median_tree(runs: list[dict[tuple[str, ...], list]]) -> list[tuple]:
    """(path, median wall, min, max, median CPU) over runs (0 where a run lacks a step), in
    tree order: the children of a step after it, by their first start."""
    start: dict[tuple[str, ...], float] = {}
    for r in runs:
        for path, v in r.items():
            start[path] = min(start.get(path, v[1]), v[1])
    children: dict[tuple[str, ...], list[tuple[str, ...]]] = defaultdict(list)
    for path in start:
        children[path[:-1]].append(path)
    rows = []

    def visit(parent: tuple[str, ...]) -> None:
        for path in sorted(children.get(parent, []), key=lambda p: start[p]):
            walls = [r[path][0] if path in r else 0.0 for r in runs]
            cpus = [r[path][2] if path in r else 0.0 for r in runs]
            rows.append((path, statistics.median(walls), min(walls), max(walls), _med(cpus)))
            visit(path)

    visit(())
    return rows


def child_steps(run: dict) -> dict[str, dict[str, list]]:
    """``{process: {step: [wall ms, CPU ms or None]}}`` for every child process (index job,
    database provider, blocks; the zygote's preload)."""
    out: dict[str, dict[str, list]] = defaultdict(dict)
    by_pid: dict[int, list[dict]] = defaultdict(list)
    for s in run["spans"]:
        if s["proc"] != "main":
            by_pid[s["pid"]].append(s)
    spawns = sorted((s for s in run["spans"] if s["proc"] == "main" and s.get("job")), key=lambda s: s["t0"])
    requests = {s["job"]: s["t0"] for s in spawns}
    forks = {s["job"]: s for s in run["spans"] if s["proc"] == "zygote" and s.get("job")}
    # the fork server numbers jobs 1, 2, ... in the order of the spawn requests
    exits = {spawns[i["id"] - 1]["job"]: i for i in run["instants"]
             if i["label"] == "parent: zygote event exit" and isinstance(i.get("id"), int) and i["id"] <= len(spawns)}
    for spans in by_pid.values():
        names = [s["proc"] for s in spans if s["proc"] != "zygote"]
        if not names:
            continue
        name = names[0]
        steps = out[name]
        first = min(s["t0"] for s in spans)
        if name in requests and name in forks:
            steps["spawn request -> zygote forks (queue)"] = [1000 * (forks[name]["t0"] - requests[name]), None]
            steps["zygote fork -> child's first step"] = [1000 * (first - forks[name]["t0"]), None]
        for s in sorted(spans, key=lambda s: s["t0"]):
            entry = steps.setdefault(s["label"], [0.0, 0.0])
            entry[0] += 1000 * (s["t1"] - s["t0"])
            entry[1] += 1000 * s.get("c", 0.0)
        job = next((s for s in spans if s["label"] == "child: job"), None)
        if job is not None and name in exits:
            ev = exits[name]
            steps["child done -> parent sees exit"] = [1000 * (ev["t"] - job["t1"]), None]
            ru = ev.get("rusage") or {}
            if "utime" in ru:  # the zygote's wait4: all the child's CPU, its exit included
                steps["CPU after the job: exit, teardown (rusage - process_time)"] = [
                    None, 1000 * (ru["utime"] + ru["stime"] - job.get("cpu", 0.0))]
                steps["CPU of the whole process (rusage)"] = [None, 1000 * (ru["utime"] + ru["stime"])]
            if "maxrss_kb" in ru:
                steps["peak RSS, MB (rusage; shared pages counted)"] = [None, ru["maxrss_kb"] / 1024]
    for name, ev in exits.items():  # killed at the end (the database provider): no spans, its rusage still
        ru = ev.get("rusage") or {}
        if name not in out and "utime" in ru:
            out[name]["CPU of the whole process (rusage)"] = [None, 1000 * (ru["utime"] + ru["stime"])]
            out[name]["peak RSS, MB (rusage; shared pages counted)"] = [None, ru.get("maxrss_kb", 0) / 1024]
    zyg = {i["label"]: i["t"] for i in run["instants"] if i["proc"] == "zygote"}
    if "zygote: started" in zyg and "zygote: ready (preload imported)" in zyg:
        out["zygote"]["preload numpy, h5py, zmq, control (started -> ready)"] = [
            1000 * (zyg["zygote: ready (preload imported)"] - zyg["zygote: started"]), None]
    for s in run["spans"]:  # what the zygote imports itself (the preload the CLI process had not imported)
        if s["proc"] == "zygote" and s["label"].startswith("import ") and s["depth"] == 0:
            entry = out["zygote"].setdefault(f"  {s['label']}", [0.0, 0.0])
            entry[0] += 1000 * (s["t1"] - s["t0"])
            entry[1] += 1000 * s.get("c", 0.0)
    forked = [s for s in run["spans"] if s["proc"] == "zygote" and s["label"] == "zygote: fork a child"]
    if forked:
        out["zygote"]["fork one child (mean)"] = [
            statistics.mean(1000 * (s["t1"] - s["t0"]) for s in forked),
            statistics.mean(1000 * s.get("c", 0.0) for s in forked)]
    return out


def _ms(x: float | None, width: int = 8) -> str:
    return f"{x:{width}.1f}" if x is not None else f"{'-':>{width}}"


def print_steps(title: str, rows: list[tuple], untraced: list[float]) -> None:
    print(f"\n{title}")
    print(f"  {'step (nested steps indented; times include nested ones)':72} {'wall ms':>9} {'min-max':>13} "
          f"{'CPU ms':>7}")
    for path, med, lo, hi, cpu in rows:
        if med < 0.05 and hi < 0.5:
            continue
        print(f"  {'  ' * (len(path) - 1) + path[-1]:72} {med:9.1f} {lo:6.1f}-{hi:<6.1f} {_ms(cpu, 7)}")
    if untraced:
        print(f"  {'untraced runs of the same command (wall)':72} {1000 * statistics.median(untraced):9.1f} "
              f"{1000 * min(untraced):6.1f}-{1000 * max(untraced):<6.1f}")


def print_children(runs: list[dict[str, dict[str, list]]]) -> None:
    procs: list[str] = []
    for r in runs:
        procs += [p for p in r if p not in procs]
    for proc in procs:
        steps: list[str] = []
        for r in runs:
            steps += [s for s in r.get(proc, {}) if s not in steps]
        print(f"  process `{proc}'")
        for step in steps:
            walls = [r[proc][step][0] for r in runs if step in r.get(proc, {}) and r[proc][step][0] is not None]
            cpus = [r[proc][step][1] for r in runs if step in r.get(proc, {})]
            span = f"{min(walls):6.1f}-{max(walls):<6.1f}" if walls else f"{'':13}"
            print(f"    {step:70} {_ms(_med(walls), 9)} {span} {_ms(_med(cpus), 7)}")


# -- imports -------------------------------------------------------------------------------------
def import_profile(modules: list[str], env: dict) -> list[tuple[str, float, int]]:
    """``python -X importtime`` of the given modules: (top-level package, self ms, modules)."""
    wanted = [m for m in modules if m.startswith("backbeat")] + [m for m in ("numpy", "h5py", "zmq") if m in modules]
    code = "; ".join(f"import {m}" for m in wanted)
    m = runner.run([sys.executable, "-X", "importtime", "-c", code], env=env, timeout=120)
    per: dict[str, list[float]] = defaultdict(list)
    for line in m.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if match:
            per[match.group(4).split(".")[0]].append(int(match.group(1)) / 1000)
    return sorted(((pkg, sum(v), len(v)) for pkg, v in per.items()), key=lambda x: -x[1])


# -- chains --------------------------------------------------------------------------------------
def exponent(k1: int, v1: float, k2: int, v2: float) -> float | None:
    if v1 <= 0.05 or v2 <= 0.05:
        return None
    return math.log(v2 / v1) / math.log(k2 / k1)


def chain_summary(run: dict, k: int) -> dict:
    main = [s for s in run["spans"] if s["proc"] == "main"]
    cli = next(s for s in main if s["label"] == "backbeat.cli.command")
    children = [i["rusage"] for i in run["instants"] if i["label"] == "parent: zygote event exit" and i.get("rusage")]
    totals: dict[str, list[float]] = {}
    for s in main:
        entry = totals.setdefault(s["label"], [0.0, 0.0])
        entry[0] += 1000 * (s["t1"] - s["t0"])
        entry[1] += 1000 * s.get("c", 0.0)
    blocks: dict[str, list[list]] = defaultdict(list)
    for proc, steps in child_steps(run).items():
        if proc.startswith("identity"):
            for step, v in steps.items():
                blocks[step].append(v)
    zygote = child_steps(run).get("zygote", {}).get("fork one child (mean)")
    if zygote is not None:
        blocks["zygote: fork one child (mean over all children)"].append(zygote)
    mean = {step: [_mean([x[0] for x in v]), _mean([x[1] for x in v])] for step, v in blocks.items()}
    return {"k": k, "wall": run["wall"], "cpu_main": cli.get("cpu", 0.0),
            "cpu_children": sum(r["utime"] + r["stime"] for r in children), "cpu_tree": run["cpu"],
            "processes": len(children), "main": totals, "blocks": mean, "others": run["others"]}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def print_chains(results: dict[int, list[dict]]) -> None:
    ks = sorted(results)
    med = {k: {key: statistics.median(r[key] for r in results[k])
               for key in ("wall", "cpu_main", "cpu_children", "cpu_tree", "others")} for k in ks}
    print("\nChains of K identity blocks over 10 scalars, cold (median of runs); CPU in s:")
    print(f"  {'K':>5} {'wall s':>8} {'CPU: CLI':>9} {'blocks':>8} {'zygote+rest':>12} {'all':>7} {'others':>7}")
    for k in ks:
        m = med[k]
        print(f"  {k:5d} {m['wall']:8.2f} {m['cpu_main']:9.2f} {m['cpu_children']:8.2f} "
              f"{m['cpu_tree'] - m['cpu_main'] - m['cpu_children']:12.2f} {m['cpu_tree']:7.2f} {m['others']:7.1f}")
    k1, k2 = ks[-2], ks[-1]

    def per(key: str) -> float:
        return 1000 * (med[k2][key] - med[k1][key]) / (k2 - k1)

    print(f"  per added block (K {k1} -> {k2}): wall {per('wall'):.1f} ms; CPU: CLI process {per('cpu_main'):.1f} ms, "
          f"block processes {per('cpu_children'):.1f} ms, zygote and the rest "
          f"{per('cpu_tree') - per('cpu_main') - per('cpu_children'):.1f} ms (all: {per('cpu_tree'):.1f} ms on "
          f"{os.cpu_count()} cores)")

    def values(key: str, index: int) -> dict[int, dict[str, float]]:
        labels: list[str] = []
        for k in ks:
            for r in results[k]:
                labels += [lb for lb in r[key] if lb not in labels]
        return {k: {lb: _med([r[key][lb][index] if lb in r[key] else 0.0 for r in results[k]]) or 0.0
                    for lb in labels} for k in ks}

    cpu, wall = values("main", 1), values("main", 0)
    print("\n  CLI process: CPU ms in each step (inclusive), by K; wall ms at the largest K")
    print(f"    {'step':58} " + " ".join(f"{'K=' + str(k):>8}" for k in ks)
          + f" {'ms/block':>9} {'growth':>7} {'wall':>8}")
    for lb in sorted(cpu[k2], key=lambda lb: -cpu[k2][lb]):
        if cpu[k2][lb] < 1.0 and wall[k2][lb] < 5.0:
            continue
        e = exponent(k1, cpu[k1][lb], k2, cpu[k2][lb])
        print(f"    {lb[:58]:58} " + " ".join(f"{cpu[k][lb]:8.1f}" for k in ks)
              + f" {(cpu[k2][lb] - cpu[k1][lb]) / (k2 - k1):9.2f} " + (f"{'K^%.1f' % e:>7}" if e is not None else
                                                                     f"{'-':>7}") + f" {wall[k2][lb]:8.1f}")
    bw, bc = values("blocks", 0), values("blocks", 1)
    print("\n  identity block processes: mean ms per process in each step, by K (wall / CPU)")
    print(f"    {'step':62} " + " ".join(f"{'K=' + str(k):>13}" for k in ks))
    for lb in sorted(bw[k2], key=lambda lb: -max(bw[k2][lb], bc[k2][lb])):
        if max(bw[k2][lb], bc[k2][lb]) < 0.5:
            continue
        print(f"    {lb[:62]:62} " + " ".join(f"{bw[k][lb]:6.1f} /{bc[k][lb]:5.1f}" for k in ks))


def _where(fn: tuple) -> str:
    path = fn[0]
    at = path.rfind("/backbeat/")
    short = path[at + 1:] if at >= 0 else Path(path).name
    return f"{short}:{fn[1]}({fn[2]})"


def print_cprofile(profiles: dict[int, Path], top: int, what: str = "chains") -> None:
    """Own time of the top functions, then backbeat's functions by cumulative time, with how
    each grows between the two K (time ~ K^e)."""
    ks = sorted(profiles)
    k1, k2 = ks[0], ks[-1]
    stats = {}
    for k, path in profiles.items():
        st = pstats.Stats(str(path))
        stats[k] = {_where(fn): (v[1], v[2], v[3])  # calls, own s, cum s
                    for fn, v in st.stats.items()}  # type: ignore[attr-defined]
    rows = []
    for name, (c2, tt2, ct2) in stats[k2].items():
        c1, tt1, ct1 = stats[k1].get(name, (0, 0.0, 0.0))
        rows.append({"name": name, "c1": c1, "c2": c2, "own1": 1000 * tt1, "own2": 1000 * tt2,
                     "cum1": 1000 * ct1, "cum2": 1000 * ct2})

    def fmt(x: float | None) -> str:
        return f"{x:.1f}" if x is not None else "-"

    def table(title: str, chosen: list[dict], key: str) -> None:
        print(f"\n  {title}")
        print(f"    {'function':64} {'calls':>8} {'calls':>8} {key + ' ms':>9} {key + ' ms':>9} {'~K^e':>5}")
        print(f"    {'':64} {'K=' + str(k1):>8} {'K=' + str(k2):>8} {'K=' + str(k1):>9} {'K=' + str(k2):>9}")
        for r in chosen:
            e = exponent(k1, r[key + "1"], k2, r[key + "2"])
            print(f"    {r['name'][-64:]:64} {r['c1']:8d} {r['c2']:8d} {r[key + '1']:9.1f} {r[key + '2']:9.1f} "
                  f"{fmt(e):>5}")

    print(f"\ncProfile of the CLI process, {what} K={k1} and K={k2} (wall clock: includes waiting and being "
          f"preempted; time ~ K^e: e ~ 1 linear, e ~ 2 quadratic)")
    table(f"top {top} functions by own time at K={k2}", sorted(rows, key=lambda r: -r["own2"])[:top], "own")
    ours = [r for r in rows if r["name"].startswith("backbeat/") and r["cum2"] >= 1.0]
    table(f"backbeat's functions by cumulative time at K={k2}", sorted(ours, key=lambda r: -r["cum2"])[:top], "cum")
    quad = [r for r in rows if r["own2"] >= 5 and (exponent(k1, r["own1"], k2, r["own2"]) or 0) >= 1.6]
    if quad:
        print("\n  growing faster than linearly (own time ~K^e with e >= 1.6, >= 5 ms at K=%d):" % k2)
        for r in sorted(quad, key=lambda r: -r["own2"])[:12]:
            print(f"    {r['name'][-70:]:70} {r['own2']:8.1f} ms, {r['c2']} calls, "
                  f"e={exponent(k1, r['own1'], k2, r['own2']):.1f}")


WAITING = ("poll.py:", "(recv_multipart)", "(recv)", "select.select", "epoll")


def print_job_profile(job: str, path: Path, items: int, top: int) -> None:
    """A block process's cProfile (a second run): its functions by own time, per item; time
    spent blocked on ZeroMQ (waiting for the upstream block) is set apart."""
    if not path.exists():
        print(f"  (no profile of `{job}')")
        return
    st = pstats.Stats(str(path))
    rows = sorted(((_where(fn), v) for fn, v in st.stats.items()),  # type: ignore[attr-defined]
                  key=lambda r: -r[1][2])
    waiting = sum(v[2] for name, v in rows if any(w in name for w in WAITING))
    busy = sum(v[2] for _name, v in rows) - waiting
    print(f"\n  cProfile of block process `{job}' (another run; profiling slows it ~3-5x: read the shares): "
          f"busy {1000 * busy:.0f} ms = {1e6 * busy / items:.2f} us per item, plus {1000 * waiting:.0f} ms "
          f"blocked waiting for data")
    print(f"    {'function':64} {'calls':>9} {'own ms':>8} {'share':>6}")
    for name, v in [r for r in rows if not any(w in r[0] for w in WAITING)][:top]:
        print(f"    {name[-64:]:64} {v[1]:9d} {1000 * v[2]:8.1f} {100 * v[2] / busy:5.1f}%")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="traced runs of the trivial experiment (default 5)")
    ap.add_argument("--chains", default="25,50,100", help="chain lengths K for the per-block cost")
    ap.add_argument("--chain-repeat", type=int, default=2, help="traced runs per chain length")
    ap.add_argument("--cprofile", default="50,100", help="two chain lengths profiled with cProfile")
    ap.add_argument("--top", type=int, default=25, help="functions listed from the profile")
    ap.add_argument("--checks", default="250,500,1000", help="toolchain lengths K for `backbeat check`")
    ap.add_argument("--throughput", default="s1000000", metavar="s|vN",
                    help="data set traced through 5 blocks: sN scalars or vN vectors of 1,000 float64 "
                         "(default s1000000; '' to skip)")
    ap.add_argument("--skip", default="",
                    help="comma-separated parts to skip: trivial,imports,chains,cprofile,throughput,check")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    chains = [int(k) for k in args.chains.split(",") if k]
    profiled = [int(k) for k in args.cprofile.split(",") if k]
    checks = sorted(int(k) for k in args.checks.split(",") if k)
    runner.become_subreaper()
    root = Path(tempfile.mkdtemp(prefix="backbeat-fixed-cost-"))
    doc: dict = {"machine": runner.machine()}
    try:
        b = Bench(root, args.repeat)
        ks = sorted({1, *(chains if "chains" not in skip else []), *(profiled if "cprofile" not in skip else [])})
        protocols = {"s10": ("scalars", 10)}
        experiments = [(k, "s10") for k in ks]
        if args.throughput and "throughput" not in skip:
            kind, n = ("vectors", int(args.throughput[1:])) if args.throughput.startswith("v") else \
                ("scalars", int(args.throughput.lstrip("s")))
            protocols[protocol_name(kind, n)] = (kind, n)
            experiments.append((5, protocol_name(kind, n)))
        write_prefix(b.prefix, protocols, experiments, toolchains=tuple(checks))
        trivial = "bench/bench/chain1/1/s10"
        m = doc["machine"]
        doc["version"] = runner.backbeat_version(sys.executable)
        print(doc["version"])
        print(f"machine: {m['cores']} cores, load {m['loadavg'][0]:.2f}, parallel capacity now {m['capacity']:.2f}x")
        b.untraced(trivial, b.cache())  # byte-code and OS caches warm (not measured)
        interp = [runner.run([sys.executable, "-c", "pass"], env=b.env).wall_s for _ in range(5)]
        interp_s = [runner.run([sys.executable, "-S", "-c", "pass"], env=b.env).wall_s for _ in range(5)]
        print(f"bare interpreter start+exit: `python -c pass` {1000 * statistics.median(interp):.1f} ms, "
              f"without site (-S) {1000 * statistics.median(interp_s):.1f} ms (median of 5)")
        doc["interpreter_ms"] = 1000 * statistics.median(interp)
        modules: list[str] = []
        if "trivial" not in skip:
            for mode in ("cold", "cached"):
                traced, plain, children, others = [], [], [], []
                warm = b.cache()
                if mode == "cached":
                    b.untraced(trivial, warm)
                for _ in range(args.repeat):
                    run = b.traced(trivial, warm if mode == "cached" else b.cache())
                    modules = modules or run["modules"]
                    traced.append(main_steps(run))
                    others.append(run["others"])
                    children.append(child_steps(run))
                    plain.append(b.untraced(trivial, warm if mode == "cached" else b.cache()).wall_s)
                rows = median_tree(traced)
                print_steps(f"Trivial run, {mode} ({trivial}), CLI process, median of {args.repeat} traced runs "
                            f"(other programs used {statistics.median(others):.1f} cores meanwhile)", rows, plain)
                if any(children):
                    print("  child processes (ms; spawn latencies measured from the CLI's spawn request):")
                    print_children(children)
                doc[f"trivial_{mode}"] = {"steps": rows, "untraced_s": plain, "children": children}
        if "imports" not in skip and modules:
            prof = import_profile(modules, b.env)
            print("\nImports of the CLI process in a cold trivial run (python -X importtime of the modules it had "
                  "loaded at the end), by top-level package:")
            for pkg, ms, n in prof[:15]:
                print(f"  {pkg:24} {ms:8.1f} ms  ({n} modules)")
            print(f"  {'total':24} {sum(p[1] for p in prof):8.1f} ms")
            doc["imports"] = prof
        if "chains" not in skip and len(chains) >= 2:
            results: dict[int, list[dict]] = {}
            for k in chains:
                results[k] = [chain_summary(b.traced(f"bench/bench/chain{k}/1/s10", b.cache()), k)
                              for _ in range(args.chain_repeat)]
            print_chains(results)
            doc["chains"] = results
        if "cprofile" not in skip and len(profiled) >= 2:
            profiles = {}
            for k in profiled:
                profiles[k] = root / f"profile{k}.pstats"
                b.traced(f"bench/bench/chain{k}/1/s10", b.cache(), profile=profiles[k])
            print_cprofile(profiles, args.top)
        if "throughput" not in skip and args.throughput:
            kind, n = ("vectors", int(args.throughput[1:])) if args.throughput.startswith("v") else \
                ("scalars", int(args.throughput.lstrip("s")))
            name = f"bench/bench/chain5/1/{protocol_name(kind, n)}"
            run = b.traced(name, b.cache())
            steps = main_steps(run)
            print(f"\nThroughput: {n:,} {kind} through 5 identity blocks ({name}), one traced cold run, "
                  f"wall {run['wall']:.2f} s (other programs used {run['others']:.1f} cores meanwhile)")
            print_steps("  CLI process", median_tree([steps]), [])
            print("  child processes (wall ms, CPU ms; peak RSS in the CPU column where noted):")
            print_children([child_steps(run)])
            doc["throughput"] = {"experiment": name, "wall": run["wall"], "children": child_steps(run)}
            jobs = ["identity3", "sum"]
            b.traced(name, b.cache(), profile_jobs=(jobs, root / "job"))
            for job in jobs:
                print_job_profile(job, root / f"job.{job}.pstats", n, args.top)
        if "check" not in skip and len(checks) >= 2:
            times = {k: [b.check(k) for _ in range(3)] for k in checks}
            print("\n`backbeat check` of one toolchain of K identity blocks (CLI wall time, median of 3; "
                  "goal: K=1000 under 0.5 s):")
            for k, v in times.items():
                print(f"  K={k:5d}: {1000 * statistics.median(v):7.0f} ms  [{1000 * min(v):.0f}-{1000 * max(v):.0f}]")
            profiles = {}
            for k in (checks[0], checks[-1]):
                profiles[k] = root / f"check{k}.pstats"
                b.check(k, profiles[k])
            print_cprofile(profiles, args.top, "check of toolchains")
            doc["check"] = times
        after = runner.machine()
        print(f"\nmachine after: load {after['loadavg'][0]:.2f}, parallel capacity {after['capacity']:.2f}x")
        doc["machine_after"] = after
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
