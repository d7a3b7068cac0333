"""BEAT 1.13 and backbeat side by side, in one run, on the same prefix (issue 13's table).

Usage::

    python benchmarks/versus_beat.py [--rows ID,...] [--repeat N] [--quick] [--memory all|targets|none]
                                     [--beat-cap S] [--no-beat] [--json [FILE]] [--keep DIR]

It writes one BEAT-format prefix (make_prefix.write_prefix: a synthetic database whose
views compute item i from its index, chains of K identity blocks, a summing analyzer; the
same declarations for both tools), then for each row runs BEAT
(``/tmp/beatenv/bin/beat --prefix P --cache C experiments run NAME``) and backbeat
(``backbeat --prefix P --cache C experiments run NAME --json``) alternately, N times each
(the order flips every repeat so a change of load hits both alike), each run a fresh
process; *cold* runs start from an empty cache folder, *cached* runs re-run over a cache
filled by an untimed run (then, after ``--settle`` seconds, one more untimed re-run: the
timed ones are in the steady state of re-runs).  Before each timed run the dirty pages the
previous run left are flushed (``os.sync``, untimed; ``--no-sync`` to skip): alternating tools,
one tool's writeback otherwise lands in the other's time.  It prints, per row, the median wall time of each tool with
[min-max], the ratio BEAT/backbeat, the goal and whether backbeat meets it; with memory
sampling (a separate, untimed run per tool: sampling costs CPU), the peak summed PSS of
all the processes of the run; and for cold rows the bytes each tool's cache holds.  The
``others`` column is how many cores other programs used during the row's timed runs, on
average (this is a shared 2-core machine: read ratios with it).

Every run's result (the analyzer's sum and count) and block statuses are checked: a run
that fails, stops at the time cap, disagrees with the other tool or does not run/reuse
what it should is reported in the table, never a crash.  Rows whose BEAT run takes minutes
(``heavy``) run BEAT once, capped at ``--beat-cap`` seconds, sampling its memory in that
run; a capped time is printed as ``>cap`` and the ratio as a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import runner  # noqa: E402
from make_prefix import protocol_name, write_prefix  # noqa: E402

BEAT = Path("/tmp/beatenv/bin/beat")
TOOLS = ("beat", "backbeat")


@dataclass(frozen=True)
class Goal:
    """``metric`` is time, memory or cache; ``kind``: ``faster`` (BEAT/backbeat >= value),
    ``under`` (backbeat below value, in s or MB), ``within`` (backbeat/BEAT <= value)."""

    metric: str
    kind: str
    value: float

    def text(self) -> str:
        unit = {"time": "s", "memory": "MB", "cache": "MB"}[self.metric]
        return {"faster": f">= {self.value:g}x faster", "under": f"< {self.value:g} {unit}",
                "within": f"<= {self.value:g}x BEAT's"}[self.kind]


@dataclass(frozen=True)
class Row:
    id: str
    title: str
    kind: str  # scalars | vectors
    n: int
    k: int
    mode: str  # cold | cached | check
    goals: tuple[Goal, ...] = ()
    heavy: bool = False  # BEAT takes minutes: one capped run
    analyzer: str = ""  # "pysum": a plain-Python analyzer instead of numpy.sum per item
    floor: bool = False  # also time the analyzer's own per-item code alone, between the runs (FLOOR_CODE)

    @property
    def protocol(self) -> str:
        return protocol_name(self.kind, self.n)

    @property
    def label(self) -> str:
        return f"{self.protocol}_{self.analyzer}" if self.analyzer else self.protocol

    @property
    def experiment(self) -> str:
        return f"bench/bench/chain{self.k}/1/{self.label}"

    def tiny(self) -> Row:
        """The same row at smoke-test size (a few items, at most 3 blocks)."""
        n = min(self.n, 12 if self.kind == "scalars" else 3)
        return Row(self.id, self.title, self.kind, n, min(self.k, 3), self.mode, self.goals, self.heavy,
                   self.analyzer, self.floor)


def _faster(x: float) -> Goal:
    return Goal("time", "faster", x)


ROWS = (
    Row("trivial", "10 scalars, 1 block, cold", "scalars", 10, 1, "cold", (_faster(2.5),)),
    Row("s10k-cached", "10k scalars, 5 blocks, cached re-run", "scalars", 10_000, 5, "cached", (_faster(4),)),
    Row("s10k", "10k scalars, 5 blocks, cold", "scalars", 10_000, 5, "cold",
        (_faster(15), Goal("cache", "within", 1.5))),
    Row("s100k", "100k scalars, 5 blocks, cold", "scalars", 100_000, 5, "cold", (_faster(50),)),
    Row("v1k", "1k x 1,000 float64, 5 blocks, cold", "vectors", 1_000, 5, "cold", (_faster(4),)),
    Row("v10k", "10k x 1,000 float64, 5 blocks, cold", "vectors", 10_000, 5, "cold", (_faster(11),)),
    Row("chain100", "chain K=100, 10 scalars, cold", "scalars", 10, 100, "cold", (_faster(2),)),
    Row("chain100-cached", "chain K=100, 10 scalars, cached", "scalars", 10, 100, "cached"),
    Row("chain200", "chain K=200, 10 scalars, cold", "scalars", 10, 200, "cold"),
    Row("chain200-cached", "chain K=200, 10 scalars, cached", "scalars", 10, 200, "cached"),
    Row("chain500", "chain K=500, 10 scalars, cold", "scalars", 10, 500, "cold",
        (_faster(2), Goal("memory", "under", 400))),
    Row("chain500-cached", "chain K=500, 10 scalars, cached", "scalars", 10, 500, "cached",
        (Goal("time", "under", 1.0),)),
    Row("s1m", "1M scalars, 5 blocks, cold", "scalars", 1_000_000, 5, "cold",
        (Goal("time", "under", 8.0), Goal("memory", "under", 400)), heavy=True, floor=True),
    Row("v50k", "50k x 1,000 float64, 5 blocks, cold", "vectors", 50_000, 5, "cold",
        (Goal("memory", "under", 400),), heavy=True),
    Row("s1m-pysum", "1M scalars, 5 blocks, plain-Python analyzer, cold", "scalars", 1_000_000, 5, "cold",
        (Goal("time", "under", 8.0),), heavy=True, analyzer="pysum"),
    Row("check1000", "check of a 1,000-block toolchain", "scalars", 10, 1000, "check", (Goal("time", "under", 0.5),)),
)
#: the summing analyzer's own work for ``n`` items (make_prefix's SUM_CODE ``process`` without the platform's
#: inputs: the same values, one ``numpy.sum`` each), timed alone in a fresh interpreter: the least time any
#: platform needs to run that analyzer over them, as it is one process taking every item in order
FLOOR_CODE = """
import sys, time, numpy
values = [numpy.float64(i * 0.001) for i in range(int(sys.argv[1]))]
total, count = numpy.float64(0.0), 0
t = time.perf_counter()
for value in values:
    total += numpy.sum(value, dtype=numpy.float64)
    count += 1
print(time.perf_counter() - t)
"""
QUICK = ("trivial", "s10k-cached", "s10k", "chain100", "chain100-cached", "check1000")


@dataclass
class ToolRows:
    """What one tool did on one row."""

    times: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)
    capped: bool = False
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    results: list[tuple] = field(default_factory=list)
    memory: dict | None = None
    cache: dict | None = None
    floor: list[float] = field(default_factory=list)  # the analyzer's own code alone (Row.floor), seconds

    def to_json(self) -> dict:
        return {"time": runner.spread(self.times), "times": self.times, "capped": self.capped,
                "others_cores": self.others, "failures": self.failures, "notes": self.notes,
                "results": [list(r) for r in self.results], "memory": self.memory, "cache": self.cache,
                "floor": self.floor}


class Bench:
    def __init__(self, root: Path, args: argparse.Namespace, rows: list[Row]):
        self.root, self.args, self.rows = root, args, rows
        self.prefix = root / "prefix"
        self.backbeat = args.backbeat
        self.beat = None if args.no_beat else str(args.beat)
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONDONTWRITEBYTECODE", "BACKBEAT_DEBUG", "BACKBEAT_PREFIX", "PYTHONPATH")}
        self._n = 0

    def write_prefix(self) -> None:
        protocols = {r.protocol: (r.kind, r.n) for r in self.rows if r.mode != "check"}
        protocols.setdefault(protocol_name("scalars", 10), ("scalars", 10))
        experiments = sorted({(r.k, r.label) for r in self.rows if r.mode != "check"} | {(1, "s10")})
        write_prefix(self.prefix, protocols, experiments, force=True,
                     toolchains=tuple(r.k for r in self.rows if r.mode == "check"))

    def fresh_cache(self, tool: str) -> Path:
        self._n += 1
        return self.root / f"cache-{tool}-{self._n}"

    def command(self, tool: str, row: Row, cache: Path) -> list[str]:
        if tool == "beat":
            assert self.beat is not None
            if row.mode == "check":
                return [self.beat, "--prefix", str(self.prefix), "toolchains", "check", f"bench/chain{row.k}/1"]
            return [self.beat, "--prefix", str(self.prefix), "--cache", str(cache), "experiments", "run",
                    row.experiment]
        if row.mode == "check":
            return [*self.backbeat, "--prefix", str(self.prefix), "check", f"toolchains/bench/chain{row.k}/1"]
        return [*self.backbeat, "--prefix", str(self.prefix), "--cache", str(cache), "experiments", "run",
                row.experiment, "--json"]

    def run(self, tool: str, row: Row, cache: Path, memory: bool = False,
            timeout: float | None = None) -> runner.Measured:
        timeout = timeout or self.args.timeout
        return runner.run(self.command(tool, row, cache), cwd=self.root, env=self.env, timeout=timeout,
                          memory=memory)

    # -- checking what a run did -------------------------------------------------------------
    @staticmethod
    def outcome(tool: str, row: Row, m: runner.Measured, expect: str) -> tuple[tuple | None, str]:
        """(the analyzer's (sum, count) or None, a note if the blocks did not do ``expect``)."""
        if row.mode == "check":
            return None, "" if "invalid" not in m.stdout or " 0 invalid" in m.stdout else "asset reported invalid"
        blocks = row.k + 1
        if tool == "backbeat":
            try:
                rep = json.loads(m.stdout)
                statuses = [b["status"] for b in rep["blocks"].values()]
                data = rep["results"]["sum"][0]["data"]
                result: tuple | None = (str(data["sum"]), int(data["count"]))
            except (ValueError, KeyError, IndexError, TypeError):
                return None, "no JSON report on stdout"
            wrong = [s for s in statuses if s != expect]
            return result, f"{len(wrong)} block(s) not {expect}: {sorted(set(wrong))}" if wrong else ""
        text = m.stdout + m.stderr
        result = None
        at = text.find("Results:")
        if at >= 0:
            try:
                data, _ = json.JSONDecoder().raw_decode(text[at + len("Results:"):].lstrip())
                result = (str(data["sum"]), int(data["count"]))
            except (ValueError, KeyError, TypeError):
                pass
        ran, skipped = len(re.findall(r"^Running `", text, re.M)), text.count("Skipping execution")
        done = ran if expect == "ran" else skipped
        return result, "" if done == blocks else f"{done} of {blocks} block(s) {expect}"

    # -- one row ---------------------------------------------------------------------------------
    def measure(self, row: Row) -> dict[str, ToolRows]:
        tools = [t for t in TOOLS if t == "backbeat" or self.beat]
        out = {t: ToolRows() for t in tools}
        expect = "cached" if row.mode == "cached" else "ran"
        caches: dict[str, Path] = {}
        if row.mode == "cached":  # fill each tool's cache once (not timed)
            for tool in tools:
                caches[tool] = self.fresh_cache(tool)
                m = self.run(tool, row, caches[tool], timeout=self.args.beat_cap if row.heavy else None)
                if not m.ok:
                    out[tool].failures.append("filling the cache: " + m.failure())
            if self.args.settle > 0:  # the steady state of re-runs (see --settle)
                time.sleep(self.args.settle)
                for tool in tools:
                    if not out[tool].failures:
                        self.run(tool, row, caches[tool], timeout=self.args.beat_cap if row.heavy else None)
        heavy_beat = row.heavy and "beat" in tools
        for r in range(self.args.repeat):
            order = tools if r % 2 == 0 else tools[::-1]
            for tool in order:
                if out[tool].failures and row.mode == "cached":
                    continue
                if tool == "beat" and heavy_beat and r > 0:
                    continue
                self.once(tool, row, out[tool], caches.get(tool), expect,
                          memory=tool == "beat" and heavy_beat)
            if row.floor:
                self.floor(row, out["backbeat"])
        if self.wants_memory(row):
            for tool in tools:
                if (tool == "beat" and heavy_beat) or (row.mode == "cached" and out[tool].failures):
                    continue
                m, cache = self.one_run(tool, row, caches.get(tool), memory=True)
                if m.ok:
                    out[tool].memory = self.memory_of(m)
                else:
                    out[tool].failures.append("memory run: " + m.failure())
                self.drop(cache, caches.get(tool))
        for cache in caches.values():
            shutil.rmtree(cache, ignore_errors=True)
        return out

    def floor(self, row: Row, acc: ToolRows) -> None:
        """Time :data:`FLOOR_CODE` over the row's items with the measured backbeat's Python."""
        try:
            proc = subprocess.run([self.args.python, "-c", FLOOR_CODE, str(row.n)], capture_output=True, text=True,
                                  env=self.env, timeout=self.args.timeout, check=False)
        except subprocess.TimeoutExpired:
            acc.notes.append(f"floor not measured: over {self.args.timeout} s")
            return
        try:
            acc.floor.append(float(proc.stdout.strip()))
        except ValueError:
            acc.notes.append(f"floor not measured: {proc.stderr.strip()[-200:]}")

    def wants_memory(self, row: Row) -> bool:
        if self.args.memory == "none" or row.mode == "check":
            return False
        return self.args.memory == "all" or any(g.metric == "memory" for g in row.goals)

    @staticmethod
    def memory_of(m: runner.Measured) -> dict:
        return {"peak_pss_mb": m.peak_pss_mb, "peak_rss_mb": m.peak_rss_mb, "peak_processes": m.peak_processes,
                "samples": m.samples, "wall_s": m.wall_s}

    def one_run(self, tool: str, row: Row, cache: Path | None, memory: bool) -> tuple[runner.Measured, Path]:
        cache = cache or self.fresh_cache(tool)
        if self.args.sync:  # untimed: no run pays for the writeback of what the one before it left dirty
            os.sync()
        cap = self.args.beat_cap if tool == "beat" and row.heavy else None
        return self.run(tool, row, cache, memory=memory, timeout=cap), cache

    def drop(self, cache: Path, keep: Path | None) -> None:
        if cache != keep:
            shutil.rmtree(cache, ignore_errors=True)

    def once(self, tool: str, row: Row, acc: ToolRows, cache: Path | None, expect: str, memory: bool) -> None:
        m, used = self.one_run(tool, row, cache, memory)
        if m.timed_out and tool == "beat" and row.heavy:
            acc.capped = True
            acc.times.append(m.wall_s)
            acc.others.append(m.others_cores)
            acc.memory = dict(self.memory_of(m), capped=True) if memory else None
        elif not m.ok:
            acc.failures.append(m.failure())
        else:
            acc.times.append(m.wall_s)
            acc.others.append(m.others_cores)
            result, note = self.outcome(tool, row, m, expect)
            if result is not None:
                acc.results.append(result)
            if note and note not in acc.notes:
                acc.notes.append(note)
            if memory:
                acc.memory = self.memory_of(m)
            if row.mode == "cold" and acc.cache is None:
                acc.cache = runner.folder_bytes(used)
        if m.leftovers:
            acc.notes.append(f"{m.leftovers} process(es) still alive after the run (killed)")
        if m.extra.get("served_unsettled"):
            acc.notes.append("the served command still ran after the time cap: its CPU not all counted")
        self.drop(used, cache)


# -- the table -----------------------------------------------------------------------------------
def _size(mb: float | None) -> str:
    if mb is None:
        return "-"
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB" if mb >= 10 else f"{mb:.1f} MB"


def _kb(mb: float | None) -> str:
    return "-" if mb is None else f"{mb * 1024:.0f} KB" if mb < 10 else _size(mb)


def _time(acc: ToolRows | None) -> str:
    if acc is None:
        return "-"
    if not acc.times:
        return "FAILED"
    s = runner.spread(acc.times)
    if acc.capped:
        return f">{s['max']:.0f} s (cap)"
    text = f"{s['median']:.2f} s"
    return text + (f" [{s['min']:.2f}-{s['max']:.2f}]" if s["n"] > 1 else " (n=1)")


def metrics(row: Row, res: dict[str, ToolRows]) -> list[dict]:
    """The lines of one row: time, then memory and cache when measured, with goal and verdict."""
    beat, bb = res.get("beat"), res["backbeat"]
    goals = {g.metric: g for g in row.goals}
    lines = []

    def verdict(goal: Goal | None, ratio: float | None, value: float | None, lower_bound: bool = False) -> str:
        if goal is None:
            return ""
        if goal.kind == "under":
            return "-" if value is None else "met" if value < goal.value else "missed"
        if ratio is None:
            return "n/a (no BEAT figure)"
        met = ratio >= goal.value if goal.kind == "faster" else ratio <= goal.value
        return "met" if met else ("missed (BEAT capped: ratio is a lower bound)" if lower_bound else "missed")

    tb = runner.spread(bb.times)["median"]
    tB = runner.spread(beat.times)["median"] if beat and beat.times else None
    ratio = tB / tb if tB and tb else None
    capped = bool(beat and beat.capped)
    rtext = "-" if ratio is None else (">" if capped else "") + f"{ratio:.2f}x faster"
    others = [o for acc in res.values() for o in acc.others]
    lines.append({"metric": "time", "beat": _time(beat), "backbeat": _time(bb), "ratio": rtext,
                  "ratio_value": ratio, "goal": goals["time"].text() if "time" in goals else "",
                  "status": verdict(goals.get("time"), ratio, tb, capped),
                  "others": sum(others) / len(others) if others else None})
    if bb.floor:  # (the analyzer's own code alone: what no platform can run under)
        floor = runner.spread(bb.floor)
        lines.append({"metric": "floor", "beat": "-", "backbeat": f"{floor['median']:.2f} s "
                      f"[{floor['min']:.2f}-{floor['max']:.2f}]", "ratio": "-", "ratio_value": None, "goal": "",
                      "status": "the analyzer's own numpy.sum per item, alone in one process", "others": None})
        if lines[0]["status"] == "missed" and "time" in goals and floor["median"] >= goals["time"].value:
            lines[0]["status"] = "missed: the analyzer's own code alone is slower (floor)"
    if bb.memory or (beat and beat.memory):
        mB = beat.memory["peak_pss_mb"] if beat and beat.memory else None
        mb = bb.memory["peak_pss_mb"] if bb.memory else None
        r = mb / mB if mb and mB else None
        procs = f" ({bb.memory['peak_processes']} procs)" if bb.memory else ""
        lines.append({"metric": "memory", "beat": _size(mB) + (" (capped)" if beat and beat.memory
                                                                and beat.memory.get("capped") else ""),
                      "backbeat": _size(mb) + procs, "ratio": "-" if r is None else f"{r:.1f}x BEAT's",
                      "ratio_value": r, "goal": goals["memory"].text() if "memory" in goals else "",
                      "status": verdict(goals.get("memory"), r, mb), "others": None})
    if row.mode == "cold" and (bb.cache or (beat and beat.cache)):
        cB = beat.cache["disk"] / 2**20 if beat and beat.cache else None
        cb = bb.cache["disk"] / 2**20 if bb.cache else None
        r = cb / cB if cb and cB else None
        lines.append({"metric": "cache", "beat": _kb(cB), "backbeat": _kb(cb),
                      "ratio": "-" if r is None else f"{r:.1f}x BEAT's", "ratio_value": r,
                      "goal": goals["cache"].text() if "cache" in goals else "",
                      "status": verdict(goals.get("cache"), r, cb), "others": None})
    problems = []
    for tool, acc in res.items():
        problems += [f"{tool}: {f}" for f in acc.failures] + [f"{tool}: {n}" for n in acc.notes]
    sums = {tool: set(acc.results) for tool, acc in res.items() if acc.results}
    if len({frozenset(s) for s in sums.values()}) > 1 or any(len(s) > 1 for s in sums.values()):
        problems.append(f"RESULTS DIFFER: {sums}")
    if problems:
        lines[0]["problems"] = problems
    return lines


def print_table(table: list[tuple[Row, list[dict]]]) -> None:
    head = f"{'workload':38} {'metric':6} {'BEAT':22} {'backbeat':22} {'ratio':14} {'goal':17} {'others':6}  status"
    print(head)
    print("-" * len(head))
    for row, lines in table:
        for i, ln in enumerate(lines):
            others = f"{ln['others']:.1f}" if ln.get("others") is not None else ""
            print(f"{row.title if i == 0 else '':38} {ln['metric']:6} {ln['beat']:22} {ln['backbeat']:22} "
                  f"{ln['ratio']:14} {ln['goal']:17} {others:6}  {ln['status']}")
            for p in ln.get("problems", []):
                print(f"{'':38} ! {p}")


def _capacity(machine: dict) -> str:
    return "not measured" if machine["capacity"] is None else f"{machine['capacity']:.2f}x"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=None, help="comma-separated row ids (default: all): "
                    + ", ".join(r.id for r in ROWS))
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per tool and row (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: rows {','.join(QUICK)}, 1 repeat, memory only where it is a goal")
    ap.add_argument("--tiny", action="store_true",
                    help="every row at a few items and <= 3 blocks, parallel capacity not measured (tests)")
    ap.add_argument("--memory", choices=("all", "targets", "none"), default="all",
                    help="sample peak memory (one more run per tool) for every row, only where it is a goal, "
                         "or never")
    ap.add_argument("--beat-cap", type=float, default=120.0, help="time cap of BEAT on heavy rows (s)")
    ap.add_argument("--settle", type=float, default=None,
                    help="cached rows: after filling the caches, wait that long, then re-run each tool once "
                         "untimed, so that the timed re-runs are in the steady state (backbeat's stat memo "
                         "does not trust what it learnt of a file changed < 2 s before, and the first re-run "
                         "keeps the results' summaries); 0: time the re-runs right after the cold run "
                         "(default 2.5; 0 with --tiny)")
    ap.add_argument("--sync", action=argparse.BooleanOptionalAction, default=True,
                    help="flush the page cache's dirty pages (os.sync, untimed) before each timed run, so that "
                         "no run pays for the writeback of the previous one, of either tool (default on)")
    ap.add_argument("--timeout", type=float, default=600.0, help="time cap of any other run (s)")
    ap.add_argument("--no-beat", action="store_true", help="run backbeat only")
    ap.add_argument("--beat", type=Path, default=BEAT, help=f"BEAT's `beat' command (default {BEAT})")
    ap.add_argument("--backbeat", default=None, help="backbeat's command (default: next to this Python)")
    ap.add_argument("--backbeat-python", default=None, metavar="PYTHON",
                    help="run the backbeat installed for this interpreter (the `backbeat' next to it, e.g. "
                         "another venv's bin/python3; default: this Python)")
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                    help="write every measurement as JSON to FILE (or stdout, instead of the table)")
    ap.add_argument("--keep", type=Path, default=None, help="work in DIR and keep the prefix there")
    args = ap.parse_args(argv)
    if args.settle is None:
        args.settle = 0.0 if args.tiny else 2.5
    if args.quick:
        args.repeat = 1
        args.memory = "targets" if args.memory == "all" else args.memory
        args.rows = args.rows or ",".join(QUICK)
    if not args.no_beat and not args.beat.exists():
        print(f"BEAT not found at {args.beat}: running backbeat only (install it with "
              f"../shared/reference/beat-install.sh)", file=sys.stderr)
        args.no_beat = True
    if args.backbeat and args.backbeat_python:
        raise SystemExit("versus_beat.py: give --backbeat or --backbeat-python, not both")
    python = str(Path(args.backbeat_python).absolute()) if args.backbeat_python else sys.executable  # (runs
    # in the work folder; not resolved: a venv's python is a link to its base)
    exe = Path(python).with_name("backbeat")
    args.backbeat = (args.backbeat.split() if args.backbeat else
                     [str(exe)] if exe.exists() else
                     [python, "-c", "import sys; from backbeat.cli import entry; sys.argv[0] = 'backbeat'; entry()"])
    args.python = python
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = args.rows.split(",") if args.rows else [r.id for r in ROWS]
    unknown = set(wanted) - {r.id for r in ROWS}
    if unknown:
        print(f"unknown row(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    rows = [r.tiny() if args.tiny else r for r in ROWS if r.id in wanted]
    runner.become_subreaper()
    root = args.keep or Path(tempfile.mkdtemp(prefix="backbeat-versus-"))
    root.mkdir(parents=True, exist_ok=True)
    to_stdout = args.json == "-"
    log = sys.stderr if to_stdout else sys.stdout
    try:
        bench = Bench(root, args, rows)
        bench.write_prefix()
        before = runner.machine(not args.tiny)
        version = runner.command_version(args.backbeat)  # (the backbeat measured: --backbeat's too)
        print(f"{version}; BEAT 1.13 at {args.beat}" if not args.no_beat else version, file=log)
        print(f"machine: {before['cores']} cores, load {before['loadavg'][0]:.2f}, parallel capacity now "
              f"{_capacity(before)}; {args.repeat} timed run(s) per tool and row, alternating; "
              f"memory: {args.memory}; BEAT: {'not run' if args.no_beat else args.beat}", file=log, flush=True)
        warm = Row("warm-up", "", "scalars", 10, 1, "cold")  # byte-code and OS caches (not measured)
        for tool in [t for t in TOOLS if t == "backbeat" or bench.beat]:
            m = bench.run(tool, warm, bench.fresh_cache(tool))
            if not m.ok:
                print(f"warning: {tool} warm-up run failed: {m.failure()}", file=log)
        table = []
        for row in rows:
            print(f"... {row.title} ({row.experiment if row.mode != 'check' else 'check'})", file=log, flush=True)
            res = bench.measure(row)
            table.append((row, metrics(row, res), res))
        after = runner.machine(not args.tiny)
        doc = {"version": version, "machine": {"before": before, "after": after}, "repeat": args.repeat,
               "memory": args.memory,
               "beat": None if args.no_beat else str(args.beat), "backbeat": args.backbeat,
               "rows": [{"id": r.id, "title": r.title, "experiment": r.experiment, "mode": r.mode, "items": r.n,
                         "blocks": r.k, "goals": [g.__dict__ for g in r.goals], "metrics": lines,
                         "tools": {t: acc.to_json() for t, acc in res.items()}} for r, lines, res in table]}
        if args.json and not to_stdout:
            Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
        if to_stdout:
            print(json.dumps(doc, indent=1))
        else:
            print()
            print_table([(r, lines) for r, lines, _ in table])
            print(f"\nmachine after: load {after['loadavg'][0]:.2f}, parallel capacity {_capacity(after)}. "
                  "ratio = BEAT median / backbeat median; memory = peak summed PSS of all processes of a run; "
                  "cache = bytes on disk after a cold run; others = cores used by other programs meanwhile")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
