"""Per-kind asset commands: ``check``, ``KIND list|check|show|hash|path``."""

from __future__ import annotations

import argparse

from backbeat import api
from backbeat.cli import output
from backbeat.core.names import FOLDERS


def cmd_check(args: argparse.Namespace) -> int:
    return output.print_check(api.check(args.prefix, args.names or None), args.json)


def cmd_kind_check(args: argparse.Namespace) -> int:
    return output.print_check(api.check(args.prefix, args.names or None, kind=args.kind), args.json)


def cmd_list(args: argparse.Namespace) -> int:
    items = api.list_assets(args.prefix, args.kind)
    if args.json:
        output.print_json(items)
    else:
        for it in items:
            print(it["name"] + (f"  {it['description']}" if it["description"] else ""))
            if it.get("problem"):
                print(f"  (!) {it['problem']}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    output.print_json(api.show(args.prefix, args.kind, args.name))
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


def register(sub: argparse._SubParsersAction, kinds: dict) -> None:
    """``check`` and one sub-command group per kind; fills ``kinds`` (folder -> its sub-parsers)."""
    p = sub.add_parser("check", help="validate the whole prefix or the named KIND/NAME assets")
    p.add_argument("names", nargs="*", metavar="KIND/NAME")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per asset")
    p.set_defaults(handler=cmd_check)
    for folder in FOLDERS:
        kinds[folder] = _add_kind_commands(sub, folder)
