"""Plotter parameters: a named set of values for one plotter's parameters (spec §2.8).

The plotter must exist and be valid (its problems are reported as ours, as BEAT does);
every key of ``data`` must be a parameter of the plotter and its value must clean
(cast, range, choice) against the plotter's declaration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backbeat.core.errors import DataError, InvalidNameError, Problem, pointer
from backbeat.core.names import parse_name
from backbeat.declarations import plotter as plotter_module
from backbeat.declarations.algorithm import bool_string_warning

if TYPE_CHECKING:
    from backbeat.declarations.catalog import Asset, Catalog


def check(asset: Asset, catalog: Catalog) -> list[Problem]:
    decl = asset.declaration
    if not isinstance(decl, dict):
        return [asset.problem("a plotterparameter declaration must be a JSON object")]
    name = decl.get("plotter")
    try:
        kind, name = parse_name("plotter", name)
    except InvalidNameError as exc:
        return [asset.problem(str(exc), pointer("plotter"))]
    plotter = catalog.get(kind, name)
    if not plotter.valid:
        return [asset.problem(p.message, pointer("plotter")) for p in plotter.problems]
    data = decl.get("data")
    if not isinstance(data, dict):
        return [asset.problem("data must be an object mapping plotter parameters to values", pointer("data"))]
    declared = plotter.declaration.get("parameters") or {}
    problems: list[Problem] = []
    for key, value in data.items():
        if key not in declared:
            problems.append(asset.problem(f"'{key}' isn't a parameter for plotter {name}", pointer("data", key)))
            continue
        problems += bool_string_warning(asset, key, declared[key], value, "data", key)
        try:
            plotter_module.clean(plotter, key, value)
        except DataError as exc:
            problems.append(asset.problem(
                f"'{value}' is invalid for parameter {key} of plotter {name}: {exc}", pointer("data", key)))
    return problems
