"""Output helpers and argument types shared by the command modules (no command lives here)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from backbeat.core import jsonio


def print_json(obj: Any) -> None:
    print(jsonio.dumps(obj))


def print_check(reports: list[dict], as_json: bool) -> int:
    """Print ``check`` reports; exit status 1 if any asset is invalid."""
    if as_json:
        print_json(reports)
    else:
        for r in reports:
            print(f"{r['kind']}/{r['name']}: {'ok' if r['valid'] else 'invalid'}")
            for e in r["errors"]:
                where = e["file"] or ""
                print(f"  {where}: {e['pointer'] or '/'}: {e['message']}".replace("\n", "\n    "))
        bad = sum(not r["valid"] for r in reports)
        print(f"{len(reports)} asset(s) checked, {bad} invalid", file=sys.stderr)
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
