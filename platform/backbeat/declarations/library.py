"""Libraries: semantic checks (spec §3.4) and the dependency order of ``uses``.

A library's code file must exist; every library it ``uses`` must be valid (a library
whose check is still running is a cycle: ``recursion for library … detected``) and,
unless this library's language is ``unknown``, written in the same language.  As in
BEAT the language check only runs when every used library is valid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backbeat.core.errors import InvalidNameError, Problem, pointer
from backbeat.core.names import parse_name
from backbeat.declarations.algorithm import check_code, check_static

if TYPE_CHECKING:
    from backbeat.declarations.catalog import Asset, Catalog


def check(asset: Asset, catalog: Catalog) -> list[Problem]:
    """Semantic checks of a schema-valid library (spec §3.4)."""
    decl = asset.declaration
    if not isinstance(decl, dict):
        return [asset.problem("a library declaration must be a JSON object")]
    problems = check_code(asset, "Library")
    if problems:
        return problems
    return check_static(asset, []) + _check_uses(asset, catalog, decl)


def _check_uses(asset: Asset, catalog: Catalog, decl: dict) -> list[Problem]:
    problems: list[Problem] = []
    uses = decl.get("uses") or {}
    if not isinstance(uses, dict):
        return [asset.problem("uses must be an object mapping aliases to libraries", pointer("uses"))]
    used: dict[str, Asset] = {}
    for alias, name in uses.items():
        at = pointer("uses", alias)
        try:
            kind, name = parse_name("library", name)
        except InvalidNameError as exc:
            problems.append(asset.problem(f"referred library `{name}' ({alias}) is not valid: {exc}", at))
            continue
        if catalog.in_progress(kind, name):
            problems.append(asset.problem(f"recursion for library `{name}' detected", at))
            continue
        lib = catalog.get(kind, name)
        if not lib.valid:
            reasons = "; ".join(p.brief for p in lib.problems)
            problems.append(asset.problem(f"referred library `{name}' ({alias}) is not valid: {reasons}", at))
        used[alias] = lib
    if problems:
        return problems
    language = decl.get("language", "unknown")
    if language == "unknown":
        return problems
    for alias, lib in used.items():
        lib_language = lib.declaration.get("language", "unknown")
        if lib_language != language:
            problems.append(asset.problem(
                f"language for used library `{lib.name}' (`{lib_language}') differs from current language "
                f"for this library (`{language}')", pointer("uses", alias)))
    return problems


def load_order(catalog: Catalog, name: str) -> list[str]:
    """``name`` and every library it uses (transitively), dependencies first, each once.

    Raises :class:`~backbeat.errors.InvalidAssetError` if any of them is invalid.
    """
    order: list[str] = []

    def visit(lib_name: str) -> None:
        if lib_name in order:
            return
        asset = catalog.get("library", lib_name).require_valid()
        for used in (asset.declaration.get("uses") or {}).values():
            visit(used)
        order.append(asset.name)

    visit(name)
    return order
