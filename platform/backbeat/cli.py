"""``backbeat`` command line: argument parsing and printing over :mod:`backbeat.api`.

Exit codes: 0 success, 1 invalid input or failed run, 2 usage error, 130 interrupted.
A :class:`~backbeat.errors.BackbeatError` becomes one clear message on stderr; an
unexpected exception too (set ``BACKBEAT_DEBUG=1`` to see its traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from . import __version__, api, jsonio
from .errors import BackbeatError
from .names import FOLDERS

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj) -> None:
    print(jsonio.dumps(obj))


def _print_check(reports: list[dict], as_json: bool) -> int:
    if as_json:
        _print_json(reports)
    else:
        for r in reports:
            print(f"{r['kind']}/{r['name']}: {'ok' if r['valid'] else 'invalid'}")
            for e in r["errors"]:
                where = e["file"] or ""
                print(f"  {where}: {e['pointer'] or '/'}: {e['message']}".replace("\n", "\n    "))
        bad = sum(not r["valid"] for r in reports)
        print(f"{len(reports)} asset(s) checked, {bad} invalid", file=sys.stderr)
    return 1 if any(not r["valid"] for r in reports) else 0


def cmd_check(args: argparse.Namespace) -> int:
    return _print_check(api.check(args.prefix, args.names or None), args.json)


def cmd_kind_check(args: argparse.Namespace) -> int:
    return _print_check(api.check(args.prefix, args.names or None, kind=args.kind), args.json)


def cmd_list(args: argparse.Namespace) -> int:
    items = api.list_assets(args.prefix, args.kind)
    if args.json:
        _print_json(items)
    else:
        for it in items:
            print(it["name"] + (f"  {it['description']}" if it["description"] else ""))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    _print_json(api.show(args.prefix, args.kind, args.name))
    return 0


def cmd_hash(args: argparse.Namespace) -> int:
    print(api.asset_hash(args.prefix, args.kind, args.name))
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    for p in api.asset_paths(args.prefix, args.kind, args.name):
        print(p)
    return 0


def _add_kind_commands(sub: argparse._SubParsersAction, folder: str) -> argparse._SubParsersAction:
    p = sub.add_parser(folder, help=f"work with {folder}")
    p.set_defaults(kind=folder, handler=None, parser=p)
    ksub = p.add_subparsers(dest="verb", metavar="COMMAND")
    q = ksub.add_parser("list", help=f"list the {folder} of the prefix")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(handler=cmd_list)
    q = ksub.add_parser("check", help=f"validate {folder} (all, or the named ones)")
    q.add_argument("names", nargs="*", metavar="NAME")
    q.add_argument("--json", action="store_true", help="print a JSON list, one object per asset")
    q.set_defaults(handler=cmd_kind_check)
    for verb, handler, text in (
        ("show", cmd_show, "print the resolved declaration as JSON"),
        ("hash", cmd_hash, "print the BEAT-compatible hash"),
        ("path", cmd_path, "print the files of the asset"),
    ):
        q = ksub.add_parser(verb, help=text)
        q.add_argument("name", metavar="NAME")
        q.set_defaults(handler=handler)
    return ksub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backbeat", description="Declarative, reproducible experiments on BEAT prefixes."
    )
    parser.add_argument("--version", action="version", version=f"backbeat {__version__}")
    parser.add_argument("-p", "--prefix", default=None, help="prefix folder (default: ./prefix)")
    parser.add_argument("-c", "--cache", default=None, help="cache folder (default: <prefix>/cache)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("check", help="validate the whole prefix or the named KIND/NAME assets")
    p.add_argument("names", nargs="*", metavar="KIND/NAME")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per asset")
    p.set_defaults(handler=cmd_check)
    kind_parsers = {folder: _add_kind_commands(sub, folder) for folder in FOLDERS}
    for extend in _EXTENSIONS:
        extend(sub, kind_parsers)
    return parser


# Modules adding commands (execution, audit...) register a function here:
# extend(top_level_subparsers, {folder: kind_subparsers}).
_EXTENSIONS: list[Callable] = []


def _load_extensions() -> None:
    # cli_run: execution commands; cli_tools: graphs, asset and cache commands
    from . import (  # noqa: F401
        cli_audit,  # noqa: F401
        cli_plot,  # noqa: F401
        cli_run,
        cli_tools,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        _load_extensions()
    except ImportError:  # pragma: no cover - only while the execution layer is absent
        pass
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "handler", None) is None:
        args.parser.print_help(sys.stderr)
        return 2
    from . import config  # .backbeatrc: option > BACKBEAT_PREFIX > ./.backbeatrc > ~/.backbeatrc > defaults

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


if __name__ == "__main__":  # python -m backbeat.cli: run the imported module, where commands register
    from backbeat.cli import entry as _entry

    _entry()
