"""A command served by the warm template against the same command in its own process.

Usage::

    python benchmarks/served.py [--repeat N] [--cases version,help,trivial,cached] [--baseline BACKBEAT]

Runs the installed ``backbeat`` command (next to this Python) in pairs, alternating: *here*
(``BACKBEAT_TEMPLATE=off``: the command imports and runs in its own process, forking its own
zygote) and *served* (a template of this context is up in a private folder: the client sends
its command to it).  Cases: ``version`` (``backbeat --version``), ``help`` (``--help``),
``trivial`` (the 10-scalar, 1-block experiment into an empty cache) and ``cached`` (the same,
fully cached).  For each: median wall time [min-max], and the mean CPU time of the whole command
— the client's own and its children's, plus, when served, the template's reaped children's (the
command's child, its zygote and blocks: ``runner.served_cpu``) — and the ratio here/served of
the paired walls.  The load (others' cores, from ``/proc/stat``) is printed with each case.
``--baseline BACKBEAT`` compares with another installation's command instead (e.g. an older
commit's, templates on too: its own template, keyed by its files), in place of *here*.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_prefix  # noqa: E402
import runner  # noqa: E402

BACKBEAT = str(Path(sys.executable).parent / "backbeat")
EXPERIMENT = "bench/bench/chain1/1/s10"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=10, help="pairs per case (default 10)")
    ap.add_argument("--cases", default="version,help,trivial,cached")
    ap.add_argument("--baseline", default=None, help="another backbeat command to compare with (templates on)")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bb-served-", dir="/tmp"))
    folder = root / "t"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKBEAT_")}
    served = dict(env, BACKBEAT_TEMPLATE="on", BACKBEAT_TEMPLATE_DIR=str(folder), BACKBEAT_TEMPLATE_IDLE="300")
    here = dict(served, BACKBEAT_TEMPLATE="off")  # (the same context: only the switch differs)
    commands = {"here": args.baseline or BACKBEAT, "served": BACKBEAT}
    if args.baseline:
        here = served
    try:
        make_prefix.write_prefix(root / "prefix", {"s10": ("scalars", 10)}, [(1, "s10")])
        for n, command in enumerate(set(commands.values())):  # (a cold run: starts its template, any version)
            first = runner.run([command, "-p", "prefix", "-c", f"first{n}", "experiments", "run", EXPERIMENT],
                               cwd=root, env=served)
            assert first.returncode == 0, first.stderr
        deadline = time.monotonic() + 60
        while len(list(folder.glob("*.sock"))) < len(set(commands.values())) and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(list(folder.glob("*.sock"))) < len(set(commands.values())):
            print("no template came up", file=sys.stderr)
            return 1
        cases = {"version": ["--version"], "help": ["--help"],
                 "trivial": ["-p", "prefix", "-c", "cache", "experiments", "run", EXPERIMENT],
                 "cached": ["-p", "prefix", "-c", "kept", "experiments", "run", EXPERIMENT]}
        runner.run([commands["here"], *cases["cached"]], cwd=root, env=here)
        print(f"{'case':8} {'baseline wall' if args.baseline else 'here wall':>22} {'served wall':>22} {'ratio':>6} {'here cpu':>9} "
              f"{'served cpu':>10} {'others':>6}")
        for case in args.cases.split(","):
            walls: dict[str, list[float]] = {"here": [], "served": []}
            cpus: dict[str, list[float]] = {"here": [], "served": []}
            others: list[float] = []
            for _ in range(args.repeat):
                for how, environ in (("here", here), ("served", served)):
                    shutil.rmtree(root / "cache", ignore_errors=True)
                    m = runner.run([commands[how], *cases[case]], cwd=root, env=environ)
                    if m.returncode != 0:
                        print(f"{case} {how}: exit {m.returncode}: {m.stderr}", file=sys.stderr)
                        return 1
                    walls[how].append(m.wall_s)
                    cpus[how].append(m.cpu_s)
                    others.append(m.others_cores)
            ratio = statistics.median(h / s for h, s in zip(walls["here"], walls["served"], strict=True))

            def fmt(values: list[float]) -> str:
                return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"

            print(f"{case:8} {fmt(walls['here']):>22} {fmt(walls['served']):>22} {ratio:5.2f}x "
                  f"{statistics.mean(cpus['here']):8.3f}s {statistics.mean(cpus['served']):9.3f}s "
                  f"{statistics.mean(others):6.2f}")
    finally:
        for lock in folder.glob("*.lock"):
            text = lock.read_text().strip()
            if text.isdigit():
                os.kill(int(text), signal.SIGTERM)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
