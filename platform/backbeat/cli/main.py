"""``backbeat`` command line: argument parsing and printing over :mod:`backbeat.api`.

Exit codes: 0 success, 1 invalid input or failed run, 2 usage error, 130 interrupted.
A :class:`~backbeat.errors.BackbeatError` becomes one clear message on stderr; an
unexpected exception too (set ``BACKBEAT_DEBUG=1`` to see its traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from backbeat import __version__
from backbeat.cli import assets, attest, audit, plot, reports, run, tools
from backbeat.core.errors import BackbeatError

#: The command modules, each adding its commands with ``register(subparsers, kinds)``;
#: ``assets`` comes first: it creates the per-kind groups (``kinds``) the others extend.
COMMANDS = (assets.register, run.register, tools.register, audit.register, attest.register, plot.register,
            reports.register)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backbeat", description="Declarative, reproducible experiments on BEAT prefixes."
    )
    parser.add_argument("--version", action="version", version=f"backbeat {__version__}")
    parser.add_argument("-p", "--prefix", default=None, help="prefix folder (default: ./prefix)")
    parser.add_argument("-c", "--cache", default=None, help="cache folder (default: <prefix>/cache)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    kinds: dict[str, argparse._SubParsersAction] = {}
    for register in COMMANDS:
        register(sub, kinds)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "handler", None) is None:
        args.parser.print_help(sys.stderr)
        return 2
    from backbeat.core import config

    try:
        cfg = config.load()
    except BackbeatError as exc:
        print(f"backbeat: error: {exc}", file=sys.stderr)
        return exc.exit_code
    config.activate(cfg)
    args.prefix, args.cache = config.resolve(cfg, args.prefix, args.cache)
    if os.path.exists(args.cache) and not os.path.isdir(args.cache):
        print(f"backbeat: error: cache folder `{args.cache}' exists and is not a folder", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except BackbeatError as exc:
        print(f"backbeat: error: {exc}", file=sys.stderr)
        user = getattr(exc, "traceback", None)  # user code failed (e.g. a database view): its own frames
        if isinstance(user, str) and user:
            print("  " + user.rstrip().replace("\n", "\n  "), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("backbeat: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # never show a raw traceback to users
        if os.environ.get("BACKBEAT_DEBUG"):
            raise
        print(f"backbeat: internal error: {type(exc).__name__}: {exc} (set BACKBEAT_DEBUG=1 for details)",
              file=sys.stderr)
        return 3


def entry() -> None:
    sys.exit(main())

