"""Dataformats: semantic checks (spec §3.2) and the resolved ("expanded") view.

A dataformat declaration maps field names to a basetype, an array
``[d1, …, dn, elem]``, a reference ``user/name/version`` to another dataformat or an
inline object (itself a dataformat).  ``#extends`` names a parent whose fields come
first.  Checking a format asks the catalog for every format it refers to, wherever the
reference sits (field, array element, inline object, ``#extends``); a reference to a
format whose check is still running is a cycle and reported as recursion, as BEAT does.

State: :func:`expand` memoises the resolved dicts per catalog (weakly, so a dropped
catalog drops its cache); callers get a deep copy they may modify.
"""

from __future__ import annotations

import copy
import weakref
from typing import TYPE_CHECKING, Any

from backbeat.core.errors import InvalidAssetError, InvalidNameError, Problem, pointer
from backbeat.core.names import parse_name

if TYPE_CHECKING:
    from backbeat.declarations.catalog import Asset, Catalog

RESERVED = ("#description", "#schema_version", "#extends")
BASETYPES = frozenset(
    "int8 int16 int32 int64 uint8 uint16 uint32 uint64 float32 float64 complex64 complex128 bool string".split()
)

_expanded: weakref.WeakKeyDictionary[Any, dict[str, dict]] = weakref.WeakKeyDictionary()


def is_reference(value: object) -> bool:
    """True for a string that BEAT treats as a dataformat reference (it contains ``/``)."""
    return isinstance(value, str) and "/" in value


def reference_problems(catalog: Catalog, name: object) -> list[str]:
    """Why dataformat ``name`` cannot be used ([] when it is valid).

    Never raises: a malformed name, a cycle (the format is being checked right now) or a
    missing/invalid file all come back as messages.
    """
    try:
        kind, name = parse_name("dataformat", name)  # type: ignore[arg-type]
    except InvalidNameError as exc:
        return [str(exc)]
    if catalog.in_progress(kind, name):
        return [f"recursion for dataformat `{name}' detected"]
    asset = catalog.get(kind, name)
    return [p.message for p in asset.problems]


def _explain(messages: list[str]) -> str:
    return "; ".join(messages)


class _Checker:
    """Collects the problems of one declaration (top level or inline objects)."""

    def __init__(self, asset: Asset, catalog: Catalog):
        self.asset = asset
        self.catalog = catalog
        self.problems: list[Problem] = []

    def add(self, message: str, *path: object) -> None:
        self.problems.append(self.asset.problem(message, pointer(*path)))

    def reference(self, name: str, path: tuple) -> bool:
        reasons = reference_problems(self.catalog, name)
        if not reasons:
            return True
        if isinstance(name, str) and self.catalog.in_progress("dataformat", name):
            self.add(reasons[0], *path)
        else:
            self.add(f"referred dataformat `{name}' is invalid: {_explain(reasons)}", *path)
        return False

    def value(self, value: Any, path: tuple) -> None:
        """Check one field value (basetype, reference, array or inline object)."""
        if is_reference(value):
            self.reference(value, path)
        elif isinstance(value, dict):
            self.declaration(value, path, f"{self.asset.name} (field {pointer(*path)})")
        elif isinstance(value, list) and value:
            if isinstance(value[-1], list):
                self.add("arrays of arrays are not supported", *path)
                return
            self.value(value[-1], (*path, len(value) - 1))

    def declaration(self, decl: Any, path: tuple, label: str) -> None:
        if not isinstance(decl, dict):
            self.add("a dataformat declaration must be a JSON object", *path)
            return
        for field, value in decl.items():
            if field in RESERVED:
                continue
            self.value(value, (*path, field))
        parent = decl.get("#extends")
        if parent is None:
            return
        if not isinstance(parent, str):
            self.add(f"#extends must be a dataformat reference, not {type(parent).__name__}", *path, "#extends")
            return
        if not self.reference(parent, (*path, "#extends")):
            return
        try:
            inherited = expand(self.catalog, parent)
        except InvalidAssetError as exc:  # pragma: no cover - reference() already checked validity
            self.add(f"referred dataformat `{parent}' is invalid: {exc}", *path, "#extends")
            return
        for field in decl:
            if field not in RESERVED and field in inherited:
                self.add(
                    f"the attribute `{field}' in `{label}' clashes with an attribute with the same "
                    f"name on the extended class `{parent}'",
                    *path,
                    field,
                )


def check(asset: Asset, catalog: Catalog) -> list[Problem]:
    """Semantic checks of a schema-valid dataformat (spec §3.2)."""
    checker = _Checker(asset, catalog)
    checker.declaration(asset.declaration, (), asset.name)
    return checker.problems


# -- resolved view ----------------------------------------------------------------------


def _resolve_value(catalog: Catalog, value: Any) -> Any:
    if is_reference(value):
        return _expand_cached(catalog, value)
    if isinstance(value, dict):
        return _resolve_declaration(catalog, value)
    if isinstance(value, list) and value:
        return [*value[:-1], _resolve_value(catalog, value[-1])]
    return value


def _resolve_declaration(catalog: Catalog, decl: dict) -> dict:
    out: dict = {}
    parent = decl.get("#extends")
    if isinstance(parent, str):
        out.update(_expand_cached(catalog, parent))
    for field, value in decl.items():
        if field.startswith("#"):
            continue
        out[field] = _resolve_value(catalog, value)
    return out


def _expand_cached(catalog: Catalog, name: str) -> dict:
    cache = _expanded.setdefault(catalog, {})
    if name not in cache:
        asset = catalog.get("dataformat", name).require_valid()
        cache[name] = _resolve_declaration(catalog, asset.declaration)
    return cache[name]


def expand(catalog: Catalog, name: str) -> dict:
    """The fully resolved format ``name`` (a fresh copy).

    ``#extends`` is merged (parent fields first), every referenced dataformat is replaced
    by its own expanded dict (also as array element and inside inline objects) and the
    ``#`` keys are dropped.  Raises :class:`InvalidAssetError` (or
    :class:`~backbeat.errors.AssetNotFoundError`) if the format cannot be used.
    """
    return copy.deepcopy(_expand_cached(catalog, name))


def is_parent(catalog: Catalog, parent: str, child: str) -> bool:
    """True if ``parent`` equals ``child`` or appears in ``child``'s ``#extends`` chain."""
    seen: set[str] = set()
    current: object = child
    while isinstance(current, str) and current not in seen:
        if current == parent:
            return True
        seen.add(current)
        try:
            decl = catalog.get("dataformat", current).declaration
        except InvalidNameError:
            return False
        current = decl.get("#extends") if isinstance(decl, dict) else None
    return False
