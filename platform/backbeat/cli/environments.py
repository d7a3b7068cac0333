"""``backbeat environments list|check``: which interpreter runs each execution environment."""

from __future__ import annotations

import argparse

from backbeat import api
from backbeat.cli import output


def _line(item: dict) -> str:
    if item.get("python") is None:
        return "(no interpreter)"
    text = item["python"]
    if item.get("version"):
        pkgs = ", ".join(f"{k} {v}" for k, v in (item.get("packages") or {}).items() if v)
        text += f"  (Python {item['version']}; {pkgs})"
    return text


def _print(doc: dict, check: bool) -> None:
    mark = (lambda item: "ok   " if item["ok"] else "FAIL ") if check else (lambda item: "")
    if not doc["mapped"]:
        print("no environment mapping: every environment runs in the running interpreter "
              f"(map them in .backbeatrc's `environments' or {doc['prefix_file']})")
    else:
        print("mapping (" + ", ".join(doc["files"]) + "):")
        for e in doc["entries"]:
            print(f"  {mark(e)}{e['pattern']} -> {e['target']}: {_line(e)}")
            if e.get("error"):
                print(f"      {e['error']}")
    print(f"default: {mark(doc['default'])}{_line(doc['default'])}")
    if doc["default"].get("error"):
        print(f"      {doc['default']['error']}")
    if doc["declared"]:
        print("environments of the prefix's experiments:")
    for d in doc["declared"]:
        where = f" [{d['pattern']}]" if d.get("pattern") else ""
        print(f"  {mark(d)}{d['environment']}{where}: {_line(d)}  ({len(d['experiments'])} experiment(s))")
        if d.get("error") and (check or d.get("python") is None):
            print(f"      {d['error']}")


def cmd_environments(args: argparse.Namespace) -> int:
    check = args.action == "check"
    doc = api.environments(args.prefix, check)
    if args.json:
        output.print_json(doc)
    else:
        _print(doc, check)
    return 0 if doc["ok"] or not check else 1


def register(sub: argparse._SubParsersAction, kinds: dict) -> None:
    p = sub.add_parser("environments", help="the interpreters of the execution environments (list, check)")
    p.add_argument("action", choices=("list", "check"),
                   help="list: the mapping and each interpreter; check: also whether backbeat's runtime works there")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_environments, parser=p)
