"""Plotting commands of the CLI: ``experiments plot`` and ``plotters plot``.

Registered into :mod:`backbeat.cli` through its extension list; the work is done by
:mod:`backbeat.plotting` (plotters run in child processes); this module parses and prints.
Exit code 1 when any image failed (each failure is reported on stderr with the user's
traceback), 0 when every image was written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from backbeat import api
from backbeat.cli import output
from backbeat.core import jsonio
from backbeat.core.errors import DataError, UsageError


def _report(entries: list[dict], as_json: bool) -> int:
    if as_json:
        output.print_json(entries)
    for e in entries:
        what = (f"{e['experiment']}: {e['analyzer']}.{e['result']}" if "experiment" in e
                else f"plotter {e['plotter']}")
        if e["status"] == "ok":
            if not as_json:
                print(e["path"])
            print(f"  {what}: {e['format'].upper()} written by {e['plotter']} ({e['bytes']} bytes)", file=sys.stderr)
        else:
            err = e["error"]
            print(f"backbeat: error: {what}: plotter `{e['plotter']}' failed ({err['kind']}): {err['message']}",
                  file=sys.stderr)
            if err.get("traceback"):
                print("  " + err["traceback"].rstrip().replace("\n", "\n  "), file=sys.stderr)
    return 0 if all(e["status"] == "ok" for e in entries) else 1


def cmd_experiments_plot(args: argparse.Namespace) -> int:
    api.adopt_orphans()
    entries = api.plot_experiments(args.prefix, args.cache, args.names, args.format, args.plotterparameter,
                                   args.output_folder, args.timeout)
    return _report(entries, args.json)


def cmd_plotters_plot(args: argparse.Namespace) -> int:
    api.adopt_orphans()
    path = Path(args.input_data)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the input data `{path}': {exc.strerror}") from None
    try:
        data = jsonio.parse(raw)
    except jsonio.JSONProblem as exc:
        raise DataError(f"{path}: {exc}") from None
    entry = api.plot_data(args.prefix, args.name, data, args.output_image, args.plotter_parameter,
                               args.format, args.timeout)
    return _report([entry], args.json)


def register(sub: argparse._SubParsersAction, kinds: dict) -> None:
    p = kinds["experiments"].add_parser(
        "plot", help="render the plot results of cached experiments with the prefix's plotters")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-o", "--output-folder", default=".", metavar="DIR",
                   help="where images are written (default: the current folder)")
    p.add_argument("--format", choices=("png", "svg", "pdf"), default=None,
                   help="image format (sets the plotter's content_type; default: the plotter's)")
    p.add_argument("-p", "--plotterparameter", action="append", default=None, metavar="RESULT,PLOTTERPARAMETER",
                   help="plot RESULT (or ANALYZER.RESULT) with this plotterparameter and its plotter (repeatable)")
    p.add_argument("--timeout", type=output.positive, default=None, metavar="SECONDS", help="time limit per image")
    p.add_argument("--json", action="store_true", help="print one JSON entry per image")
    p.set_defaults(handler=cmd_experiments_plot)

    p = kinds["plotters"].add_parser("plot", help="render a plotter on a JSON value of its dataformat")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--input-data", required=True, metavar="F.json", help="the value to plot (JSON)")
    p.add_argument("-o", "--output-image", default=None, metavar="FILE",
                   help="image file (default: ./<plotter name>.<format>); its extension sets the format")
    p.add_argument("-P", "--plotter-parameter", default=None, metavar="PLOTTERPARAMETER",
                   help="parameters of this plotterparameter over the plotter's defaults")
    p.add_argument("--format", choices=("png", "svg", "pdf"), default=None, help="image format")
    p.add_argument("--timeout", type=output.positive, default=None, metavar="SECONDS", help="time limit")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_plotters_plot)

