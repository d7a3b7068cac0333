"""Reporting commands of the CLI: ``experiments compare|sweep|history``, ``report``, ``serve``.

Registered into :mod:`backbeat.cli` through its command table; the work is done by
:mod:`backbeat.api` (over :mod:`backbeat.reporting`); this module parses and prints.
``compare`` prints a table (text, ``--json``, ``--csv`` or ``--md``); ``sweep`` lists the
experiments written and, with ``--run``, runs them and ends with their comparison (exit 1 if
a run failed); ``history`` lists past runs; ``report`` writes a static site; ``serve`` serves
it live until Ctrl-C.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys

from backbeat import api
from backbeat.cli import output
from backbeat.cli.run import ProgressDisplay, _megabytes, _print_summary
from backbeat.core.errors import UsageError

FIXED = ("experiment", "status", "last run")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def table_rows(table: dict) -> list[list[str]]:
    """Header and rows of a comparison as text cells."""
    head = [*FIXED, *(c["name"] for c in table["columns"])]
    rows = [head]
    for r in table["rows"]:
        created = (r.get("created") or "")[:19].replace("T", " ")
        rows.append([r["experiment"], r["status"], created, *(_cell(r["values"][c["name"]]) for c in table["columns"])])
    return rows


def format_table(table: dict, fmt: str) -> str:
    rows = table_rows(table)
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue()
    if fmt == "md":
        def md(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
        return "\n".join([md(rows[0]), "|" + "|".join("---" for _ in rows[0]) + "|", *map(md, rows[1:])]) + "\n"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _print_table(table: dict, args: argparse.Namespace) -> None:
    if args.json:
        output.print_json(table)
        return
    fmt = "csv" if args.csv else "md" if args.md else "text"
    sys.stdout.write(format_table(table, fmt))
    if fmt == "text" and table["same"]:
        print(f"(the same in every experiment: {', '.join(sorted(table['same']))})", file=sys.stderr)


def cmd_compare(args: argparse.Namespace) -> int:
    _print_table(api.compare(args.prefix, args.cache, args.names, all_columns=args.all), args)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    api.adopt_orphans()
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    display = ProgressDisplay(quiet=args.quiet or not args.run)

    def announce(name: str) -> None:
        if not args.quiet:
            print(f"running {name}", file=sys.stderr)

    options = {"jobs": args.jobs or 0, "timeout_s": args.timeout, "memory_bytes": args.memory} if args.run else {}
    done = api.sweep(args.prefix, args.cache, args.base, args.set, name=args.name, zipped=args.zip, run=args.run,
                     progress=display, announce=announce, **options)
    failed = done["run"] is not None and done["run"]["status"] != "ok"
    if args.json:
        output.print_json(done)
        return 1 if failed else 0
    for e in done["experiments"]:
        setting = ", ".join(f"{k}={v}" for k, v in e["parameters"].items())
        print(f"{e['name']}: {setting} ({e['status']})", file=sys.stderr if args.csv or args.md else sys.stdout)
    if done["run"] is not None and not (args.csv or args.md):
        _print_summary(done["run"]["summary"])
    if not (args.csv or args.md):
        print()
    _print_table(done["comparison"], args)
    return 1 if failed else 0


def cmd_history(args: argparse.Namespace) -> int:
    hist = api.history(args.cache, args.name)
    for c in hist.get("corrupt", []):
        print(f"warning: {c['message']} (left out)", file=sys.stderr)
    if args.json:
        output.print_json(hist)
        return 0
    if not hist["runs"]:
        print(f"{hist['experiment']}: no recorded run in cache `{args.cache}'")
        return 0
    print(f"{hist['experiment']}: {len(hist['runs'])} recorded run(s), newest first "
          f"(details: experiments provenance NAME --run N)")
    for h in hist["runs"]:
        blocks = ", ".join(f"{n} {s}" for s, n in h["blocks"].items())
        opts = " " + " ".join(f"--{k.rstrip('_')}" + ("" if v is True else f" {v}") for k, v in h["options"].items()) \
            if h["options"] else ""
        print(f"run {h['run']}  {(h['created'] or '')[:19].replace('T', ' ')}  {h['status']}  ({blocks}){opts}")
        print(f"  results digest {h['results_digest'] or '-'}"
              + (": " + ", ".join(f"{k}={_cell(v)}" for k, v in h["results"].items()) if h["results"] else ""))
        if h["changes"] is None:
            print("  first recorded run")
        elif not h["changes"]:
            print("  nothing changed since the run before")
        for c in h["changes"] or []:
            print(f"  changed: {c}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    done = api.report(args.prefix, args.cache, args.names or None, args.output, plots=not args.no_plots)
    if args.json:
        output.print_json(done)
    else:
        failed = [p for p in done["plots"] if p.get("status") != "ok"]
        print(done["index"])
        print(f"  {len(done['experiments'])} experiment(s), {len(done['pages'])} page(s), "
              f"{len(done['plots']) - len(failed)} plot(s)", file=sys.stderr)
        for p in failed:
            print(f"  note: plot {p.get('experiment')}: {p.get('analyzer')}.{p.get('result')} failed: "
                  f"{p['error']['message']}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")

    def ready(url: str) -> None:
        print(f"serving {args.prefix} (cache {args.cache}) read-only on {url} - Ctrl-C to stop", flush=True)

    api.serve(args.prefix, args.cache, args.names or None, args.host, args.port, ready, quiet=not args.verbose)
    return 0


def _formats(p: argparse.ArgumentParser) -> None:
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--csv", action="store_true", help="print the table as CSV")
    fmt.add_argument("--md", action="store_true", help="print the table as Markdown")


def register(sub: argparse._SubParsersAction, kinds: dict) -> None:
    exp = kinds["experiments"]
    p = exp.add_parser("compare", help="one row per experiment: what differs, and their scalar results")
    p.add_argument("names", nargs="+", metavar="NAME", help="experiment names or quoted glob patterns")
    p.add_argument("--all", action="store_true", help="every column, also those equal in all experiments")
    _formats(p)
    p.set_defaults(handler=cmd_compare)

    p = exp.add_parser("sweep", help="write forked experiments for a grid of parameter values (and run them)")
    p.add_argument("base", metavar="BASE")
    p.add_argument("--set", action="append", required=True, metavar="BLOCK.PARAM=V1,V2",
                   help="a parameter and its values (repeatable; values are JSON, else strings)")
    p.add_argument("--name", default=None, metavar="PATTERN",
                   help="name of each experiment, e.g. '{name}_s{shrinkage}' or 'run{i}' (default: "
                        "BASE_PARAM-VALUE...)")
    p.add_argument("--zip", action="store_true", help="a list: the i-th values of every --set together, not the grid")
    p.add_argument("--run", action="store_true", help="run the base and the sweep, then compare them")
    p.add_argument("-j", "--jobs", type=int, default=None, help="blocks run at once (default: cores)")
    p.add_argument("--timeout", type=output.positive, default=None, metavar="SECONDS", help="per-block time limit")
    p.add_argument("--memory", type=_megabytes, default=None, metavar="MB", help="per-block memory limit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    _formats(p)
    p.set_defaults(handler=cmd_sweep)

    p = exp.add_parser("history", help="past runs: time, status, what changed, results digest")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_history)

    p = sub.add_parser("report", help="write a static HTML report (opens from the file system, no server)")
    p.add_argument("names", nargs="*", metavar="NAME", help="experiments or glob patterns (default: all)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder of the site (index.html)")
    p.add_argument("--no-plots", action="store_true", help="do not render plotter images")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("serve", help="serve the report live and read-only on this machine")
    p.add_argument("names", nargs="*", metavar="NAME", help="experiments or glob patterns (default: all)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request on stderr")
    p.set_defaults(handler=cmd_serve)
