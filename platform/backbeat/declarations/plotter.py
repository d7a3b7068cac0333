"""Plotters: semantic checks (BEAT ``plotter.py``) and parameter cleaning.

A plotter is checked like an algorithm without endpoints: code file present, its
``plot/…`` dataformat usable, parameters castable (range/choice/default), used
libraries valid and in the same language.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from backbeat.core.errors import Problem
from backbeat.declarations import usercode
from backbeat.declarations.algorithm import (
    check_code,
    check_parameters,
    check_static,
    check_uses,
    clean_parameter,
    dataformat_problem,
)

if TYPE_CHECKING:
    from backbeat.declarations.catalog import Asset, Catalog


def check(asset: Asset, catalog: Catalog) -> list[Problem]:
    """Semantic checks of a schema-valid plotter."""
    decl = asset.declaration
    if not isinstance(decl, dict):
        return [asset.problem("a plotter declaration must be a JSON object")]
    problems = check_code(asset, "Plotter")
    if problems:
        return problems
    df = decl.get("dataformat")
    problems += dataformat_problem(
        asset, catalog, df, f"found error validating base data format `{df}' for plotter `{asset.name}'",
        "dataformat")
    problems += check_parameters(asset, decl.get("parameters"))
    problems += check_uses(asset, catalog, "plotter")
    problems += check_static(asset, [("Plotter", usercode.PLOTTER_METHODS, "plotter")])
    return problems


def clean(asset: Asset, name: str, value: Any) -> Any:
    """Cast ``value`` for plotter parameter ``name``; raises DataError (unknown name, cast, range, choice)."""
    return clean_parameter(asset.declaration.get("parameters") or {}, name, value, f"plotter `{asset.name}'")
