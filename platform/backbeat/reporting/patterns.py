"""Experiment names and glob patterns (``'user/user/iris/1/*'``) resolved against a prefix."""

from __future__ import annotations

import fnmatch

from backbeat.core.errors import InvalidNameError, UsageError
from backbeat.core.names import parse_name
from backbeat.declarations.catalog import not_found
from backbeat.declarations.prefix import Prefix

GLOB = set("*?[")


def is_pattern(text: str) -> bool:
    """True if ``text`` has glob characters (``*``, ``?``, ``[``).

    >>> is_pattern("u/u/iris/1/*"), is_pattern("u/u/iris/1/iris")
    (True, False)
    """
    return bool(GLOB & set(text))


def _canonical_pattern(pattern: str) -> str:
    parts = pattern.split("/")
    return "/".join([parts[0], parts[0], *parts[1:]]) if len(parts) == 4 else pattern


def expand(prefix: Prefix, patterns: list[str], *, missing_ok: bool = False) -> list[str]:
    """Canonical experiment names for names and glob patterns, in the order given, each once.

    A plain name must exist (unless ``missing_ok``); a pattern must match at least one experiment.
    """
    if not prefix.root.is_dir():
        raise UsageError(f"prefix folder `{prefix.root}' does not exist")
    known = prefix.list("experiment")
    out: list[str] = []
    for text in patterns:
        if is_pattern(text):
            pat = _canonical_pattern(text)
            found = [n for n in known if fnmatch.fnmatchcase(n, pat)]
            if not found:
                raise UsageError(f"no experiment of prefix `{prefix.root}' matches `{text}'")
        else:
            try:
                _k, name = parse_name("experiment", text)
            except InvalidNameError as exc:
                raise UsageError(str(exc)) from None
            if name not in known and not missing_ok:
                raise not_found(prefix, "experiment", name)
            found = [name]
        out += [n for n in found if n not in out]
    return out
