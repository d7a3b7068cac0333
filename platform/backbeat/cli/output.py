"""Output helpers and argument types shared by the command modules (no command lives here)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from backbeat.core import jsonio


def print_json(obj: Any) -> None:
    print(jsonio.dumps(obj))


def _where(problem: dict) -> str:
    """``file:line`` for code, ``file: /pointer`` for declarations."""
    where = problem.get("file") or problem.get("asset") or "?"
    if problem.get("line") is not None:
        return f"{where}:{problem['line']}"
    if problem.get("pointer") or where.endswith(".json"):
        return f"{where}: {problem.get('pointer') or '/'}"
    return where


def warning_line(problem: dict) -> str:
    """How a warning (a :class:`~backbeat.core.errors.Problem` as JSON) is printed: ``warning:
    <where>: <message>`` (``file: /pointer`` for declarations, ``file:line`` for code)."""
    return f"warning: {_where(problem)}: {problem['message']}"


def print_check(reports: list[dict], as_json: bool) -> int:
    """Print ``check`` reports; exit status 1 if any asset is invalid."""
    if as_json:
        print_json(reports)
    else:
        for r in reports:
            warnings = r.get("warnings") or []
            note = f" ({len(warnings)} warning{'s' if len(warnings) != 1 else ''})" if warnings else ""
            print(f"{r['kind']}/{r['name']}: {'ok' if r['valid'] else 'invalid'}{note}")
            for e in r["errors"]:
                print(f"  {_where(e)}: {e['message']}".replace("\n", "\n    "))
            if r.get("errors_omitted"):
                print(f"  ... and {r['errors_omitted']:,} more problem(s) not shown "
                      f"(the first {len(r['errors'])} are)")
            for w in warnings:
                print(f"  {warning_line(w)}".replace("\n", "\n    "))
        bad = sum(not r["valid"] for r in reports)
        warned = sum(len(r.get("warnings") or []) for r in reports)
        print(f"{len(reports)} asset(s) checked, {bad} invalid"
              + (f", {warned} warning(s)" if warned else ""), file=sys.stderr)
    return 1 if any(not r["valid"] for r in reports) else 0


def positive(text: str) -> float:
    """argparse type: a positive number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{text}' is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value
