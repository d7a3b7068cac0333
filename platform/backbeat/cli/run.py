"""Execution commands of the CLI: ``experiments run|results|logs``, ``databases index|view``.

``experiments run`` takes several names and glob patterns (run one after the other through
:func:`backbeat.api.run_experiments`, one summary at the end).

Registered into :mod:`backbeat.cli` through its command table; the work is done by
:mod:`backbeat.api` (which imports the execution layer only when a command needs it, so
``backbeat check`` never pays for h5py and zmq); this module parses and prints.  The
executor is chosen by name (``--executor``) from the executor table.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from backbeat import api
from backbeat.cli import output
from backbeat.core import jsonio
from backbeat.core.errors import Interrupted, UsageError


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressDisplay:
    """Live per-block progress on stderr: one line per state change, in place on a terminal;
    a running block shows its units done, its rate and (when its total is known) the time left."""

    SYMBOLS = {"cached": "cached", "waiting": "waiting", "running": "running", "done": "done",
               "failed": "FAILED", "skipped": "skipped", "corrupt": "corrupt"}

    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        stream = stream if stream is not None else sys.stderr  # looked up now: it may be redirected
        self.stream = stream
        self.quiet = quiet
        self.tty = stream.isatty()
        self._last_running: dict[tuple, float] = {}

    def __call__(self, event: dict) -> None:
        if event["state"] == "warning":  # about the experiment (printed even with -q)
            self.stream.write(output.warning_line(event) + "\n")
            self.stream.flush()
            return
        if self.quiet:
            return
        block, state = event["block"], event["state"]
        if state == "running" and event.get("done"):  # a streamed block's total is not known yet
            now = time.monotonic()
            line = (block, event.get("slot"))
            if not self.tty and now - self._last_running.get(line, 0.0) < 2.0:
                return
            self._last_running[line] = now
            slot = f" (slot {event['slot']})" if "slot" in event else ""
            text = f"  {block}{slot}: running {event['done']}/{event.get('total') or '?'} units"
            if event.get("rate") is not None:
                rate = event["rate"]
                text += f", {rate:.3g}/s" if rate < 100 else f", {rate:,.0f}/s"
                if event.get("eta_s") is not None:
                    text += f", {_duration(event['eta_s'])} left"
        elif state == "done":
            text = f"  {block}: done ({event.get('wall_s', 0.0):.2f} s)"
        elif state == "failed":
            text = f"  {block}: FAILED - {event.get('message', '')}"
        elif state == "corrupt":
            text = f"  {block}: cache entry not trusted - {event.get('message', '')}"
        elif state in ("reindex", "learnt"):
            text = f"  {block}: {'re-indexing' if state == 'reindex' else 'new data files'} - {event.get('message', '')}"
        else:
            text = f"  {block}: {self.SYMBOLS.get(state, state)}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("" if state == "running" else "\n"))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


class ProgressEvents:
    """Progress events for tools (``--progress-json``): one JSON object per line on stderr —
    ``{"time", "experiment", "block", "state", …}`` with ``done``, ``total``, ``rate`` (units per
    second), ``eta_s`` (seconds left) and ``slot`` for a running block, ``wall_s`` once done,
    ``message`` when it failed (docs/cli.md)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr

    def __call__(self, event: dict) -> None:
        self.stream.write(jsonio.simplejson.dumps({"time": round(time.time(), 3), **event}, ensure_ascii=False)
                          + "\n")
        self.stream.flush()

    def announce(self, name: str) -> None:
        self({"experiment": name, "state": "started"})


def _print_results(results: dict, hidden: dict[str, list[str]]) -> None:
    """Each analyzer's results in declaration order, but those declared ``"display": false``."""
    for analyzer, records in results.items():
        skip = set(hidden.get(analyzer, ()))
        note = f"{', '.join(hidden.get(analyzer, ()))} declared \"display\": false; --json shows them"
        if records and all(k in skip for rec in records for k in rec["data"]):
            print(f"Results of analyzer `{analyzer}': none displayed ({note})")
            continue
        print(f"Results of analyzer `{analyzer}':")
        for rec in records:
            span = f"[{rec['start']}, {rec['end']}]"
            print(f"  data units {span}:")
            for key, value in rec["data"].items():
                if key not in skip:
                    print(f"    {key}: {jsonio.dumps(value) if isinstance(value, (list, dict)) else value}")
        if skip:
            print(f"  ({note})")


def _print_failures(rep: dict) -> None:
    for name, block in rep["blocks"].items():
        err = block.get("error")
        if err:
            print(f"block `{name}' failed ({err['kind']}): {err['message']}", file=sys.stderr)
            if err.get("traceback"):
                print("  " + err["traceback"].rstrip().replace("\n", "\n  "), file=sys.stderr)
            if err.get("output"):
                print(f"  its last output (whole log: {err.get('log')}):", file=sys.stderr)
                print("    " + err["output"].rstrip().replace("\n", "\n    "), file=sys.stderr)


def _print_warnings(rep: dict) -> None:
    for warning in rep.get("warnings", []):
        print(f"warning: {rep['experiment']}: {warning}", file=sys.stderr)


def _megabytes(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{text}' is not a number of megabytes") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the memory limit must be positive")
    return int(value * 1024 * 1024)


def _print_summary(summary: list[dict]) -> None:
    ok = sum(e["status"] == "ok" for e in summary)
    print(f"summary: {len(summary)} experiment(s), {ok} ok, {len(summary) - ok} failed")
    for e in summary:
        what = e["error"] if "error" in e else (f"{e['ran']} ran, {e['cached']} cached, {e['failed']} failed"
                                                f"{', %d skipped' % e['skipped'] if e['skipped'] else ''}")
        print(f"  {e['experiment']}: {e['status']} ({what}) {e['wall_s']:.2f} s")


def cmd_run(args: argparse.Namespace) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if args.alive is not None and args.alive < 1:
        raise UsageError("--alive must be at least 1")
    options = {"force": args.force, "jobs": args.jobs or 0, "timeout_s": args.timeout, "memory_bytes": args.memory,
               "only": args.only, "from_": args.from_, "until": args.until, "stream": args.stream,
               "alive": args.alive or 0, "sandbox": args.sandbox}
    single = len(args.names) == 1 and not api.is_pattern(args.names[0])
    if args.dry_run:
        for name in args.names:  # (a run reports them as progress events, from the validation that plans it)
            if not api.is_pattern(name):  # e.g. "false" for a boolean parameter: it means true
                for w in api.warnings(args.prefix, "experiment", name):
                    print(output.warning_line(w), file=sys.stderr)
        plans = api.dry_runs(args.prefix, args.cache, args.names, **options)
        if args.json:
            output.print_json(plans[0] if single else plans)
            return 0
        for plan in plans:
            if not single:
                print(f"{plan['experiment']}:")
            for name, b in plan["blocks"].items():  # the status the run will report ("run": it reports "ran")
                word = "run" if b["status"] == "ran" else b["status"]
                key = f"key {b['key'][:12]}" if b["key"] else "no key"
                print(f"{'  ' if not single else ''}{name}: {word}  {b['reason']}  ({b['algorithm']}, {key})")
        return 0
    if args.executor != "dask" and (args.scheduler or args.workers):
        raise UsageError("--scheduler and --workers need --executor dask")
    display: ProgressDisplay | ProgressEvents = ProgressEvents() if args.progress_json else ProgressDisplay(
        quiet=args.quiet)

    def announce(name: str) -> None:
        if isinstance(display, ProgressEvents):
            display.announce(name)
        elif not args.quiet:
            print(f"running {name}", file=sys.stderr)

    api.adopt_orphans()
    try:
        done = api.run_experiments(args.prefix, args.cache, args.names, display, announce, args.executor,
                                   args.scheduler, args.workers, **options)
    except Interrupted as exc:  # say what was done (the CLI's main says it was interrupted)
        if exc.done is not None:
            _print_runs(args, exc.done, single)
        raise
    _print_runs(args, done, single)
    return 0 if done["status"] == "ok" else 1


def _print_runs(args: argparse.Namespace, done: dict, single: bool) -> None:
    reports = done["experiments"]
    for rep in reports:
        _print_warnings(rep)
    if args.json:
        if reports or not single:
            output.print_json(reports[0] if single else done)
        return
    for rep in reports:
        if not single:
            print(f"== {rep['experiment']}: {rep['status']}")
        _print_failures(rep)
        if rep["results"]:
            _print_results(rep["results"], rep.get("hidden_results", {}))
    if not single:
        _print_summary(done["summary"])


def cmd_logs(args: argparse.Namespace) -> int:
    found = api.experiment_logs(args.prefix, args.cache, args.name, args.block)
    if args.json:
        output.print_json(found)
        return 0
    if args.block is not None:
        logs = found["blocks"][args.block]
        if not logs:
            print(f"block `{args.block}' has no log in cache `{args.cache}' (it has not run since its inputs "
                  "or code last changed)", file=sys.stderr)
            return 1
        for part, log in logs.items():
            if len(logs) > 1:
                print(f"==> {args.block}{' ' + part if part else ''} ({log['path']}) <==")
            sys.stdout.write(log["text"])
            if log["text"] and not log["text"].endswith("\n"):
                sys.stdout.write("\n")
        return 0

    def line(label: str, log: dict) -> None:
        print(f"{label}: {log['path']} ({log['bytes']} bytes)")

    for block, logs in found["blocks"].items():
        if not logs:
            print(f"{block}: no log")
        for part, log in logs.items():
            line(f"{block}{' ' + part if part else ''}", log)
    for ds, log in found["datasets"].items():
        line(f"dataset {ds} (indexing)", log)
    if found["provider"] is not None:
        line("database provider", found["provider"])
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    done = api.cached_report(args.prefix, args.cache, args.name)
    if args.json:
        output.print_json(done["results"])
    else:
        _print_results(done["results"], done["hidden_results"])
    return 0


def cmd_db_index(args: argparse.Namespace) -> int:
    api.adopt_orphans()
    done = api.index_datasets(args.prefix, args.cache, args.name, force=args.force)
    for item in done:
        print(f"{item['database']}/{item['protocol']}/{item['set']}: {item['entries']} entries"
              f" ({item['status']}) {item['path']}")
    return 0


def cmd_db_view(args: argparse.Namespace) -> int:
    api.adopt_orphans()
    exclude = [e for e in (args.exclude or "").split(",") if e]
    for record in api.view_dataset(args.prefix, args.cache, args.name, exclude=exclude):
        if args.json:
            print(jsonio.simplejson.dumps(record, ensure_ascii=False))
        else:
            print(f"FROM {record['start']} TO {record['end']}")
            for output, value in record["data"].items():
                print(f"  {output}: {jsonio.simplejson.dumps(value, ensure_ascii=False)}")
    return 0


def register(sub: argparse._SubParsersAction, kinds: dict) -> None:
    exp = kinds["experiments"]
    p = exp.add_parser("run", help="run experiments (names or glob patterns; cached blocks are reused)")
    p.add_argument("names", nargs="+", metavar="NAME", help="experiment names or quoted glob patterns")
    p.add_argument("--force", action="store_true", help="re-run every block even if cached")
    p.add_argument("--json", action="store_true", help="print the run report as JSON")
    p.add_argument("-j", "--jobs", type=int, default=None, help="blocks run at once (default: cores)")
    p.add_argument("--no-stream", dest="stream", action="store_false",
                   help="start a block only once the outputs it reads are committed (no streaming)")
    p.add_argument("--alive", type=int, default=None, metavar="N",
                   help="block processes alive at once, streamed ones included (default: 32, at least 2 x -j); "
                        "a longer chain is streamed in segments")
    p.add_argument("--timeout", type=output.positive, default=None, metavar="SECONDS", help="per-block time limit")
    p.add_argument("--memory", type=_megabytes, default=None, metavar="MB", help="per-block memory limit")
    box = p.add_mutually_exclusive_group()
    box.add_argument("--sandbox", dest="sandbox", action="store_true", default=None,
                     help="run every block in the sandbox (bubblewrap: read-only prefix and cache, no network, "
                          "no home folder; docs/security.md)")
    box.add_argument("--no-sandbox", dest="sandbox", action="store_false",
                     help="run without the sandbox even if .backbeatrc asks for it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.add_argument("--progress-json", action="store_true",
                   help="progress as JSON lines on stderr, one event each (for tools; --json still prints the report)")
    p.add_argument("--executor", choices=api.executor_names(), default="local",
                   help="where blocks run: this machine (default) or a Dask cluster")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address (default: a LocalCluster on this machine)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="LocalCluster worker processes")
    p.add_argument("--dry-run", action="store_true", help="print what the run would do with each block (run, cached, skipped, failed) and why; run nothing")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--only", metavar="BLOCK", help="run just this block (its inputs must be cached)")
    sel.add_argument("--from", dest="from_", metavar="BLOCK", help="re-run this block and everything downstream")
    sel.add_argument("--until", metavar="BLOCK", help="run only this block and the blocks it needs")
    p.set_defaults(handler=cmd_run)
    p = exp.add_parser("results", help="print the cached results of an experiment (no run)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_results)
    p = exp.add_parser("logs", help="the output (stdout, stderr) of an experiment's blocks, kept in the cache")
    p.add_argument("name", metavar="NAME")
    p.add_argument("block", nargs="?", metavar="BLOCK", help="print this block's log(s)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_logs)

    db = kinds["databases"]
    p = db.add_parser("index", help="build the view index of a database, protocol or set")
    p.add_argument("name", metavar="NAME[/PROTOCOL[/SET]]")
    p.add_argument("--force", action="store_true", help="rebuild even if present")
    p.set_defaults(handler=cmd_db_index)
    p = db.add_parser("view", help="print every data unit of a set")
    p.add_argument("name", metavar="DB/VERSION/PROTOCOL/SET")
    p.add_argument("--exclude", default=None, metavar="OUT1,OUT2", help="outputs not to print")
    p.add_argument("--json", action="store_true", help="one JSON object per data unit")
    p.set_defaults(handler=cmd_db_view)

