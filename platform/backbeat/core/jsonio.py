"""Strict JSON reading: duplicate keys, syntax errors and binary input become Problems.

BEAT parses declarations with simplejson and an ``object_pairs_hook`` that refuses
duplicate keys; we do the same and report the line and column of every failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import simplejson

from backbeat.core.errors import Problem


class JSONProblem(Exception):
    """Raised internally by :func:`parse`; carries a human message."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):  # rare: find the first key seen twice
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise JSONProblem(f"invalid JSON: key `{key}' found several times")
            seen.add(key)
    return out


def parse(data: bytes | str) -> Any:
    """Parse JSON text strictly; raise :class:`JSONProblem` with a readable message.

    >>> parse(b'{"a": 1}')
    {'a': 1}
    >>> parse('{"a": 1, "a": 2}')
    Traceback (most recent call last):
    ...
    backbeat.core.jsonio.JSONProblem: invalid JSON: key `a' found several times
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONProblem(f"invalid JSON: not UTF-8 text (byte {exc.start})") from None
    else:
        text = data
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        return simplejson.loads(text, object_pairs_hook=_no_duplicates)
    except simplejson.JSONDecodeError as exc:
        raise JSONProblem(f"invalid JSON code: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise JSONProblem("invalid JSON: nested too deeply") from None


def load(path: Path, asset: str | None = None) -> tuple[Any, list[Problem]]:
    """Read and parse ``path``; return ``(document, problems)`` (document None on failure)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, [Problem(f"cannot read file: {exc.strerror}", "", str(path), asset)]
    try:
        return parse(raw), []
    except JSONProblem as exc:
        return None, [Problem(str(exc), "", str(path), asset)]


def plain(obj: Any) -> Any:
    """Convert numpy scalars and arrays (at any depth) to plain Python values for JSON.

    >>> import numpy as np
    >>> plain({"a": np.int32(3), "b": [np.float32(0.5)], "c": np.arange(2)})
    {'a': 3, 'b': [0.5], 'c': [0, 1]}
    """
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    made = _leaf(obj)
    return obj if made is obj else plain(made)


def _leaf(obj: Any) -> Any:
    """A value JSON cannot hold as it is, as one it can (at one level: a numpy array's list may
    hold complex numbers), or ``obj`` itself."""
    if hasattr(obj, "tolist"):  # numpy scalar or array
        return obj.tolist()
    if isinstance(obj, complex):
        return [obj.real, obj.imag]
    return obj


def _default(obj: Any) -> Any:
    """What :func:`plain` makes of a value JSON cannot hold as it is (called by the encoder)."""
    made = _leaf(obj)
    if made is obj:
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
    return made


def dumps(obj: Any) -> str:
    """Pretty JSON for people (stable key order as declared); numpy values converted as by
    :func:`plain`, by the encoder as it meets them (a run's record holds thousands of values:
    copying it all first cost as much as encoding it).

    >>> import numpy as np
    >>> value = {"n": np.int64(2), "z": np.array([1j, 2]), "c": 2 + 1j}
    >>> parse(dumps(value)) == plain(value) == {"n": 2, "z": [[0.0, 1.0], [2.0, 0.0]], "c": [2.0, 1.0]}
    True
    """
    return simplejson.dumps(obj, indent=2, ensure_ascii=False, default=_default, namedtuple_as_object=False)
