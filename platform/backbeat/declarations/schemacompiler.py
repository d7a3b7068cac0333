"""Fast schema verdicts: our own small compiler for the keywords our schemas use.

jsonschema explains errors well but costs ~1 ms per declaration; the compiled predicates here
give the same verdict (same keywords, draft-07 rules with draft-4 integers) in tens of
microseconds.  Only refused declarations go to jsonschema (:mod:`backbeat.declarations.schema`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from backbeat.declarations.schemafiles import check_kind, for_validation, schema_id

Check = Callable[[Any], bool]
_ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description", "default", "definitions", "examples"}


_TYPE_CHECKS: dict[str, Check] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
}

_NUMBER = _TYPE_CHECKS["number"]


def _all(checks: list[Check]) -> Check:
    if not checks:
        return lambda x: True
    if len(checks) == 1:
        return checks[0]

    def check(x: Any) -> bool:
        for c in checks:
            if not c(x):
                return False
        return True
    return check


class _Compiler:
    """Compile schema nodes into predicates; ``$ref`` targets are compiled once."""

    def __init__(self) -> None:
        self._done: dict[int, Check] = {}

    def compile(self, node: Any, base: str) -> Check:
        if node is True:
            return lambda x: True
        if node is False:
            return lambda x: False
        key = id(node)
        if key in self._done:
            return self._done[key]
        cell: list[Check] = []
        self._done[key] = lambda x: cell[0](x)  # forward reference for recursive schemas
        check = self._build(node, base)
        cell.append(check)
        self._done[key] = check
        return check

    def _build(self, node: dict, base: str) -> Check:
        if "$ref" in node:  # draft-07: keywords next to $ref are ignored
            target, target_base = _lookup(node["$ref"], base)
            return self.compile(target, target_base)
        checks: list[Check] = []
        sub = functools.partial(self.compile, base=base)
        for keyword, value in node.items():
            if keyword in _ANNOTATIONS or keyword in ("properties", "patternProperties",
                                                      "additionalProperties", "items", "additionalItems"):
                continue
            maker = getattr(self, "_k_" + keyword, None)
            if maker is None:
                raise RuntimeError(f"schema keyword {keyword!r} is not supported by the fast validator")
            checks.append(maker(value, node, sub))
        if any(k in node for k in ("properties", "patternProperties", "additionalProperties")):
            checks.append(self._object(node, sub))
        if "items" in node:
            checks.append(self._items(node, sub))
        return _all(checks)

    # keywords
    @staticmethod
    def _k_type(value: Any, node: dict, sub: Any) -> Check:
        names = [value] if isinstance(value, str) else list(value)
        checks = [_TYPE_CHECKS[n] for n in names]
        if len(checks) == 1:
            return checks[0]
        return lambda x: any(c(x) for c in checks)

    @staticmethod
    def _k_enum(value: list, node: dict, sub: Any) -> Check:
        if all(isinstance(v, str) for v in value):
            allowed = frozenset(value)
            return lambda x: isinstance(x, str) and x in allowed
        return lambda x: any(_equal(x, v) for v in value)

    @staticmethod
    def _k_const(value: Any, node: dict, sub: Any) -> Check:
        return lambda x: _equal(x, value)

    @staticmethod
    def _k_pattern(value: str, node: dict, sub: Any) -> Check:
        search = re.compile(value).search
        return lambda x: not isinstance(x, str) or search(x) is not None

    @staticmethod
    def _k_maxLength(value: int, node: dict, sub: Any) -> Check:
        return lambda x: not isinstance(x, str) or len(x) <= value

    @staticmethod
    def _k_minItems(value: int, node: dict, sub: Any) -> Check:
        return lambda x: not isinstance(x, list) or len(x) >= value

    @staticmethod
    def _k_maxItems(value: int, node: dict, sub: Any) -> Check:
        return lambda x: not isinstance(x, list) or len(x) <= value

    @staticmethod
    def _k_minProperties(value: int, node: dict, sub: Any) -> Check:
        return lambda x: not isinstance(x, dict) or len(x) >= value

    @staticmethod
    def _k_uniqueItems(value: bool, node: dict, sub: Any) -> Check:
        if not value:
            return lambda x: True
        return lambda x: not isinstance(x, list) or unique(x)

    @staticmethod
    def _k_multipleOf(value: Any, node: dict, sub: Any) -> Check:
        def check(x: Any) -> bool:
            if not _NUMBER(x):
                return True
            if isinstance(value, float):
                try:
                    quotient = x / value
                    return int(quotient) == quotient
                except (OverflowError, ValueError):
                    return False
            try:
                return not (x % value)
            except (OverflowError, ValueError):
                return False
        return check

    @staticmethod
    def _k_minimum(value: Any, node: dict, sub: Any) -> Check:
        return lambda x: not _NUMBER(x) or x >= value

    @staticmethod
    def _k_required(value: list, node: dict, sub: Any) -> Check:
        return lambda x: not isinstance(x, dict) or all(k in x for k in value)

    @staticmethod
    def _k_oneOf(value: list, node: dict, sub: Any) -> Check:
        branches = [sub(v) for v in value]

        def check(x: Any) -> bool:
            matched = False
            for branch in branches:
                if branch(x):
                    if matched:
                        return False
                    matched = True
            return matched
        return check

    @staticmethod
    def _k_anyOf(value: list, node: dict, sub: Any) -> Check:
        branches = [sub(v) for v in value]
        return lambda x: any(b(x) for b in branches)

    @staticmethod
    def _k_not(value: Any, node: dict, sub: Any) -> Check:
        inner = sub(value)
        return lambda x: not inner(x)

    @staticmethod
    def _object(node: dict, sub: Any) -> Check:
        props = {k: sub(v) for k, v in node.get("properties", {}).items()}
        patterns = [(re.compile(p).search, sub(v)) for p, v in node.get("patternProperties", {}).items()]
        extra = node.get("additionalProperties", True)
        extra_check = None if extra is True else sub(extra)

        def check(x: Any) -> bool:
            if not isinstance(x, dict):
                return True
            for key, value in x.items():
                matched = False
                prop = props.get(key)
                if prop is not None:
                    matched = True
                    if not prop(value):
                        return False
                for search, pcheck in patterns:
                    if search(key) is not None:
                        matched = True
                        if not pcheck(value):
                            return False
                if not matched and extra_check is not None and not extra_check(value):
                    return False
            return True
        return check

    @staticmethod
    def _items(node: dict, sub: Any) -> Check:
        items = node["items"]
        if isinstance(items, list):
            heads = [sub(v) for v in items]
            tail = sub(node.get("additionalItems", True))

            def check(x: Any) -> bool:
                if not isinstance(x, list):
                    return True
                for i, value in enumerate(x):
                    ok = heads[i](value) if i < len(heads) else tail(value)
                    if not ok:
                        return False
                return True
            return check
        each = sub(items)
        return lambda x: not isinstance(x, list) or all(each(v) for v in x)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0`` but booleans are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False
    return a == b


def _identity(value: Any) -> Any:
    """A hashable key equal for two values exactly when :func:`_equal` holds (JSON equality)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value)  # 1 and 1.0 hash and compare equal
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list):
        return ("l", tuple(_identity(v) for v in value))
    if isinstance(value, dict):
        return ("d", frozenset((k, _identity(v)) for k, v in value.items()))
    return ("o", value)


def unique(items: list) -> bool:
    """No two items are equal as JSON values (linear time: one hashable key per item)."""
    if all(isinstance(v, str) for v in items):
        return len(set(items)) == len(items)
    return len({_identity(v) for v in items}) == len(items)


def _lookup(ref: str, base: str) -> tuple[Any, str]:
    """Resolve ``#/json/pointer`` or ``<id>#/json/pointer`` (the only forms our files use)."""
    uri, _, fragment = ref.partition("#")
    uri = uri or base
    node: Any = for_validation()[uri]
    for part in fragment.split("/")[1:] if fragment else ():
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, uri


@functools.cache
def fast_check(kind: str, version: int) -> Check:
    """A compiled predicate with the same verdict as :func:`validator` (cached)."""
    check_kind(kind, version)
    uri = schema_id(kind, version)
    return _Compiler().compile(for_validation()[uri], uri)
