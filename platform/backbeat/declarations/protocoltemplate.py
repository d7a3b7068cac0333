"""Protocol templates: the set names and output dataformats shared by v2 databases.

BEAT checks a template against its schema only: its output dataformats (and the
uniqueness of its set names) are checked by every database that uses it.  We keep that
verdict (a template naming a missing dataformat is valid on its own);
:func:`output_problems` gives the dataformat check for callers that want it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backbeat.core.errors import Problem
from backbeat.declarations.algorithm import dataformat_problem

if TYPE_CHECKING:
    from backbeat.declarations.catalog import Asset, Catalog


def check(asset: Asset, catalog: Catalog) -> list[Problem]:
    """No semantic checks beyond the schema (BEAT's verdict)."""
    if not isinstance(asset.declaration, dict):
        return [asset.problem("a protocol template declaration must be a JSON object")]
    return []


def output_problems(asset: Asset, catalog: Catalog) -> list[Problem]:
    """Every output dataformat of every set is usable (checked by databases, not by BEAT here)."""
    decl = asset.declaration
    if not isinstance(decl, dict):
        return [asset.problem("a protocol template declaration must be a JSON object")]
    problems: list[Problem] = []
    sets = decl.get("sets")
    for i, set_ in enumerate(sets if isinstance(sets, list) else []):
        if not isinstance(set_, dict) or not isinstance(set_.get("outputs"), dict):
            continue
        for output, df in set_["outputs"].items():
            problems += dataformat_problem(
                asset, catalog, df,
                f"found error validating data format `{df}' for output `{output}' on set "
                f"`{set_.get('name')}' of protocol template `{asset.name}'",
                "sets", i, "outputs", output)
    return problems


def sets(asset: Asset) -> list[dict]:
    """The template's set declarations (``[{"name", "outputs"}, …]``) of a valid template."""
    return list(asset.require_valid().declaration["sets"])
