"""Per-process timeline and CPU of cold backbeat runs, as they are benchmarked (served by the warm template).

Usage::

    python benchmarks/timeline.py [--row s100k] [--repeat N] [--vs PLATFORM_DIR] [--json FILE]

Runs the row's experiment (``benchmarks/make_prefix.py``'s prefix, an empty cache each time)
with the real CLI — served by backbeat's warm template, as ``versus_beat.py`` runs it — and
samples ``/proc`` every few milliseconds: every process of the run (the thin client, the served
command, its zygote, the zygote's children: the index job and the copies probing its units, the database provider,
the blocks) with when it was first seen, when its CPU time last grew (*CPU end*: a block that is
done computing but waits for its consumer's acknowledgement is not working) and when it was last
seen, its user and system CPU; how many of them were running at each sample.  The zygote's
children are named in the order they were forked (their pids) (for the chains of ``make_prefix``: the
index job, the provider, each identity block, the analyzer).  The *tail* is how long the last
block ran alone after the block feeding it stopped computing (``docs/performance.md``, wave 7).

``--sync`` flushes the page cache before each run (untimed, as ``versus_beat.py`` does); ``--wchan``
samples each thread's state and wait channel: what the run waits on when none of it runs.
``--vs DIR`` alternates each run with one of another source tree (``DIR`` holds the
``backbeat`` package, e.g. an extracted ``git archive main platform schemas``): A/B pairs on
the same machine load.  The load (``/proc/loadavg``) is recorded with every run.  CPU figures
are from ``/proc/PID/stat`` at the last sample before a process ended (up to one sampling
period of CPU may be missed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import runner  # noqa: E402
from make_prefix import protocol_name, write_prefix  # noqa: E402

ROWS = {"s10k": ("scalars", 10_000, 5), "s100k": ("scalars", 100_000, 5), "v1k": ("vectors", 1_000, 5),
        "v10k": ("vectors", 10_000, 5), "v50k": ("vectors", 50_000, 5), "s1m": ("scalars", 1_000_000, 5),
        "s1m-pysum": ("scalars", 1_000_000, 5, "pysum"),  # (the plain-Python analyzer: versus_beat.py's row)
        "chain100": ("scalars", 10, 100), "chain500": ("scalars", 10, 500)}
CHAIN = 5


def roles(chain: int) -> list[str]:
    """The zygote's children in the order they are forked, for a chain of ``chain`` blocks."""
    return ["index", "provider", *[f"identity{i + 1}" for i in range(chain)], "analyzer"]
PERIOD = 0.005


def _stat(pid: int) -> tuple[int, str, int, int] | None:
    """(parent pid, state, user ticks, system ticks) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    return int(fields[1]), fields[0].decode(), int(fields[11]), int(fields[12])


def _own(templates: set[int]) -> set[int]:
    """The templates of this interpreter (other worktrees' templates serve others' runs)."""
    mine = set()
    for pid in templates:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if os.path.dirname(f.read().split(b"\0", 1)[0]) == os.path.dirname(sys.executable).encode():
                    mine.add(pid)
        except OSError:
            pass
    return mine


def _waits(pid: int) -> list[str]:
    """``state:wchan`` of each thread of a process (``--wchan``: what it waits on)."""
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                raw = f.read()
            with open(f"/proc/{pid}/task/{tid}/wchan", "rb") as f:
                wchan = f.read().decode() or "-"
        except OSError:
            continue
        out.append(f"{raw[raw.rfind(b')') + 2:].split()[0].decode()}:{wchan}")
    return out


def sample_run(command: list[str], env: dict, cwd: Path, chain: int = CHAIN, wchan: bool = False) -> dict:
    """Run ``command`` in ``cwd`` (a folder of its own); the timeline of every process of its tree
    and of the tree of the command a template of this interpreter serves for it (found by that
    folder: other commands the machine's templates serve meanwhile are not this run's)."""
    tick = os.sysconf("SC_CLK_TCK")
    load = os.getloadavg()[0]
    where = os.path.realpath(cwd)
    before = runner.served(runner.templates())
    t0 = time.monotonic()
    proc = subprocess.Popen(command, env=env, cwd=where, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict[int, dict] = {}
    grew: dict[int, list[tuple[float, int]]] = {}  # pid -> (time, CPU ticks) whenever its CPU grew
    running: dict[int, int] = {}
    waits: dict[str, float] = {}  # (--wchan) "pid state:wchan" -> samples in which nothing of the run ran
    waits_any: dict[str, float] = {}  # (--wchan) the same over every sample
    series: list[tuple[float, list[int], list[str]]] = []  # (--wchan) each sample: time, running pids, waits
    roots = _own(runner.templates())
    served_now: list[int] = []
    n = 0
    while proc.poll() is None:
        now = time.monotonic() - t0
        if n % 20 == 0:
            roots = _own(runner.templates())
        n += 1
        if roots and (not served_now or n % 20 == 1):  # (a scan of /proc: not every sample once found)
            served_now = runner.served_commands(where, roots, before)
        pids = runner.tree({proc.pid, *served_now})
        busy = 0
        for pid in pids:
            st = _stat(pid)
            if st is None:
                continue
            ppid, state, ut, stt = st
            e = seen.setdefault(pid, {"ppid": ppid, "first": now, "cpu_end": now, "last": now, "user": ut, "sys": stt})
            if ut + stt != e["user"] + e["sys"]:
                e["cpu_end"] = now
                grew.setdefault(pid, []).append((now, ut + stt))
            e.update(last=now, user=ut, sys=stt)
            busy += state == "R"
        if wchan:
            now_waits = [f"{pid} {w}" for pid in pids for w in _waits(pid) if not w.startswith("R:")]
            for w in now_waits:
                waits_any[w] = waits_any.get(w, 0) + 1
                if not busy:
                    waits[w] = waits.get(w, 0) + 1
            waits["(samples)"] = waits.get("(samples)", 0) + (not busy)
            waits_any["(samples)"] = waits_any.get("(samples)", 0) + 1
            series.append((round(now, 4), [pid for pid in pids if (_stat(pid) or (0, ""))[1] == "R"], now_waits))
        running[busy] = running.get(busy, 0) + 1
        time.sleep(PERIOD)
    wall = time.monotonic() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    for e in seen.values():
        e["user"], e["sys"] = e["user"] / tick, e["sys"] / tick
    # the served command: a child of a template; its zygote: its first child; the blocks: the zygote's
    served = sorted((p for p, e in seen.items() if e["ppid"] in roots), key=lambda p: seen[p]["first"])
    names = {proc.pid: "client"}
    if served:
        names[served[0]] = "command"
        kids = sorted((p for p, e in seen.items() if e["ppid"] == served[0]), key=lambda p: seen[p]["first"])
        if kids:
            names[kids[0]] = "zygote"
            forked = sorted((p for p, e in seen.items() if e["ppid"] == kids[0]), key=lambda p: (seen[p]["first"], p))
            if forked and max(forked) - min(forked) < 1 << 20:  # no pid wrap-around: pids say the order of forks
                forked.sort()
            for role, pid in zip(roles(chain), forked, strict=False):
                names[pid] = role
    halves = sorted(p for p, e in seen.items() if p not in names and names.get(e["ppid"]) == "index")
    for k, pid in enumerate(halves):  # (one copy probing beside the job, or two while it writes the files)
        names[pid] = "probe half" if k == 0 else f"probe half {k + 1}"
    procs = {names.get(p, str(p)): {k: round(v, 3) for k, v in e.items() if k != "ppid"} for p, e in seen.items()}
    if wchan:  # pids named by their role
        def named(w: str) -> str:
            pid, rest = w.split(" ", 1) if " " in w else (w, "")
            return f"{names.get(int(pid), pid)} {rest}".strip() if pid.isdigit() else w

        def group(d: dict) -> dict:
            g: dict[str, float] = {}
            for w, k in d.items():
                g[named(w)] = g.get(named(w), 0) + k
            return dict(sorted(g.items(), key=lambda kv: -kv[1]))
        waits, waits_any = group(waits), group(waits_any)
    out = {"wall": round(wall, 3), "rc": proc.returncode, "load": load, "served": bool(served),
           "cpu": round(sum(e["user"] + e["sys"] for e in seen.values()), 3), "running": running, "procs": procs}
    feeder = f"identity{chain}"
    if "analyzer" in procs and feeder in procs:
        out["tail"] = round(procs["analyzer"]["cpu_end"] - procs[feeder]["cpu_end"], 3)
        # the analyzer's backlog in its own CPU time, whatever else ran meanwhile: what it computed
        # after its feeder stopped (the tail's length on an idle machine, at load's mercy otherwise)
        analyzer = next(p for p, n in names.items() if n == "analyzer")
        before = [ticks for t, ticks in grew.get(analyzer, []) if t <= procs[feeder]["cpu_end"]]
        total = procs["analyzer"]["user"] + procs["analyzer"]["sys"]
        out["tail_cpu"] = round(max(0.0, total - (before[-1] / tick if before else 0.0)), 3)
    if chain > CHAIN:
        out["relay"] = relay(procs, chain)
    if wchan:
        out["waits_idle"], out["waits"] = waits, waits_any
        out["series"] = [(t, [names.get(p, str(p)) for p in run], [named(w) for w in ws]) for t, run, ws in series]
    if proc.returncode:
        out["stderr"] = err[-2000:]
    return out


def relay(procs: dict, chain: int) -> dict:
    """A chain of small blocks is a relay: block i+1 ends its work once block i has committed and
    sent it everything.  ``step``: the median time between two blocks' CPU ends; ``late``: the blocks
    first seen after their feeder stopped computing (spawned after the relay reached them: the
    heads of segments) and the seconds the relay waited for them to be seen."""
    ends, late, waited = [], 0, 0.0
    for i in range(1, chain):
        a, b = procs.get(f"identity{i}"), procs.get(f"identity{i + 1}")
        if a is None or b is None:
            continue
        ends.append(b["cpu_end"] - a["cpu_end"])
        if b["first"] > a["cpu_end"]:
            late += 1
            waited += b["first"] - a["cpu_end"]
    return {"step": round(statistics.median(ends), 4) if ends else None, "late": late, "waited": round(waited, 3)}


def print_run(tag: str, r: dict) -> None:
    print(f"{tag}: wall {r['wall']:.3f} s, load {r['load']:.2f}, CPU of the run {r['cpu']:.2f} s"
          + (f", tail {r['tail']:.3f} s ({r.get('tail_cpu', 0):.2f} s of the analyzer's CPU)" if "tail" in r else "") + ("" if r["served"] else " (NOT served)"))
    for name, e in sorted(r["procs"].items(), key=lambda kv: kv[1]["first"]):
        if "relay" in r and name.startswith("identity") and name[8:] not in ("1", "2", "33", "34"):
            continue  # (a long chain: its first blocks and those around the first segment's end)
        print(f"    {name:12s} {e['first']:6.3f} -> CPU end {e['cpu_end']:6.3f}, gone {e['last']:6.3f}   "
              f"user {e['user']:5.2f} sys {e['sys']:5.2f}")
    total = sum(r["running"].values()) or 1
    print("    samples by processes of the run running: "
          + ", ".join(f"{k}: {100 * v / total:.0f}%" for k, v in sorted(r["running"].items())))
    if "waits_idle" in r:
        idle = r["waits_idle"].get("(samples)", 0) or 1
        print(f"    waits in the {idle:.0f} samples where nothing of the run ran (share of those samples): "
              + ", ".join(f"{w} {100 * k / idle:.0f}%" for w, k in r["waits_idle"].items() if w != "(samples)"
                          and k / idle >= 0.05))
    if "relay" in r:
        print(f"    relay: step median {1000 * r['relay']['step']:.1f} ms, {r['relay']['late']} blocks spawned after "
              f"their feeder's CPU end, waited {r['relay']['waited']:.3f} s")


def _under2(r: dict) -> float:
    """The share of samples with fewer than two processes of the run runnable (a core left idle by
    the run, whatever the load)."""
    total = sum(r["running"].values()) or 1
    return sum(v for k, v in r["running"].items() if int(k) < 2) / total


def summary(tag: str, runs: list[dict]) -> None:
    runs = [r for r in runs if r["served"] and not r["rc"]]
    if not runs:
        print(f"{tag}: no served run")
        return

    def med(f) -> float:
        return statistics.median(f(r) for r in runs)

    def cpu(name: str) -> float:
        return med(lambda r: r["procs"].get(name, {}).get("user", 0) + r["procs"].get(name, {}).get("sys", 0))

    walls = [r["wall"] for r in runs]
    chain = max((int(n[8:]) for r in runs for n in r["procs"] if n.startswith("identity")), default=CHAIN)
    blocks = sum(cpu(f"identity{i + 1}") for i in range(chain))
    print(f"{tag}: n={len(runs)} wall median {med(lambda r: r['wall']):.3f} s [{min(walls):.3f}-{max(walls):.3f}], "
          f"CPU {med(lambda r: r['cpu']):.2f} s (command {cpu('command'):.2f}, zygote {cpu('zygote'):.2f}, "
          f"index {cpu('index') + cpu('probe half') + cpu('probe half 2'):.2f}, provider {cpu('provider'):.2f}, identity blocks "
          f"{blocks:.2f}, analyzer {cpu('analyzer'):.2f}), tail median {med(lambda r: r.get('tail', 0)):.3f} s "
          f"(analyzer CPU after its feeder stopped: median {med(lambda r: r.get('tail_cpu', 0)):.2f} s "
          f"[{min(r.get('tail_cpu', 0) for r in runs):.2f}-{max(r.get('tail_cpu', 0) for r in runs):.2f}]), "
          f"load {min(r['load'] for r in runs):.1f}-{max(r['load'] for r in runs):.1f}, "
          f"under two runnable {100 * med(_under2):.0f}% of samples"
          + (f", relay step {1000 * med(lambda r: r['relay']['step']):.1f} ms, late blocks "
             f"{med(lambda r: r['relay']['late']):.0f} (waited {med(lambda r: r['relay']['waited']):.3f} s)"
             if all("relay" in r for r in runs) else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", default="s100k", choices=sorted(ROWS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--vs", type=Path, default=None, help="another source tree (a folder holding `backbeat')")
    ap.add_argument("--quiet", action="store_true", help="only the summaries")
    ap.add_argument("--json", default=None, metavar="FILE")
    ap.add_argument("--sync", action="store_true",
                    help="flush the page cache (os.sync, untimed) before each run, as versus_beat.py does: no run pays "
                         "for the writeback of the one before")
    ap.add_argument("--wchan", action="store_true",
                    help="sample each thread's state and wait channel: what the run waits on when none of it runs")
    args = ap.parse_args(argv)
    kind, n, chain, *analyzer = ROWS[args.row]
    work = Path(tempfile.mkdtemp(prefix="backbeat-timeline-"))
    try:
        name = protocol_name(kind, n)
        label = "_".join([name, *analyzer])  # ("s1m_pysum": make_prefix's label for the other analyzer)
        write_prefix(work / "prefix", {name: (kind, n)}, [(chain, label)], force=True)
        backbeat = str(Path(sys.executable).with_name("backbeat"))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "BACKBEAT_DEBUG")}
        sides = {"A": None, **({"B": args.vs.resolve()} if args.vs else {})}
        results: dict[str, list[dict]] = {tag: [] for tag in sides}
        for i in range(args.repeat + 1):  # the first round warms the templates up: not counted
            for tag, tree in sides.items():
                cache = work / f"cache-{tag}"
                shutil.rmtree(cache, ignore_errors=True)
                side_env = {**env, "PYTHONPATH": str(tree)} if tree else env
                if args.sync:
                    os.sync()
                r = sample_run([backbeat, "--prefix", str(work / "prefix"), "--cache", str(cache),
                                "experiments", "run", f"bench/bench/chain{chain}/1/{label}", "--json"], side_env, work,
                               chain, args.wchan)
                if i:
                    results[tag].append(r)
                    if not args.quiet:
                        print_run(f"{tag} run {i}", r)
        for tag, runs in results.items():
            summary(tag, runs)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
