"""The library verbs behind the CLI; each returns plain data (dicts, lists, strings).

Every function takes the prefix folder (and, where relevant, the cache folder) and
raises only :class:`~backbeat.errors.BackbeatError` subclasses on bad input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from backbeat.core.errors import AssetNotFoundError, UsageError
from backbeat.core.names import KINDS, kind_of, parse_label, parse_name
from backbeat.declarations.catalog import Asset, Catalog
from backbeat.declarations.prefix import Prefix


def _catalog(prefix: str | os.PathLike) -> Catalog:
    root = Path(prefix)
    if not root.is_dir():
        raise UsageError(f"prefix folder `{root}' does not exist")
    return Catalog(Prefix(root))


def asset_report(asset: Asset) -> dict[str, Any]:
    """The JSON form of one checked asset.

    ``valid`` is BEAT's verdict (plus the cases where backbeat refuses what BEAT accepts and
    cannot run, docs/schemas.md); ``warnings`` never affect it; ``errors`` holds at most
    100 problems and ``errors_omitted`` counts the others.
    """
    return {
        "kind": KINDS[asset.kind].folder,
        "name": asset.name,
        "valid": asset.valid,
        "errors": [p.to_json() for p in asset.problems],
        "errors_omitted": asset.omitted,
        "warnings": [p.to_json() for p in asset.warnings],
        "hash": asset.hash,
    }


def check(prefix: str | os.PathLike, labels: list[str] | None = None, kind: str | None = None) -> list[dict]:
    """Validate the whole prefix, one kind, or the named ``KIND/NAME`` labels."""
    catalog = _catalog(prefix)
    if labels:
        pairs = [parse_name(kind, n) if kind else parse_label(n) for n in labels]
        return [asset_report(a) for a in catalog.check_all(pairs)]
    kinds = [kind_of(kind).name] if kind else None
    return [asset_report(a) for a in catalog.check_all(None, kinds)]


def list_assets(prefix: str | os.PathLike, kind: str) -> list[dict]:
    """``[{name, description, problem}]`` of every ``.json`` file of a kind, sorted by name.

    ``problem`` is None, or why the file cannot be used: its declaration does not parse, or its
    path is not a name of the kind (BEAT lists such files too).
    """
    catalog = _catalog(prefix)
    k = kind_of(kind)
    names, strays = catalog.prefix.scan(k.name)
    out = []
    for name in names:
        asset = catalog.load(k.name, name)
        decl = asset.declaration if isinstance(asset.declaration, dict) else {}
        desc = decl.get(k.description_key)
        problem = asset.problems[0].message if asset.declaration is None and asset.problems else None
        out.append({"name": name, "description": desc if isinstance(desc, str) else "", "problem": problem})
    for stray in strays:  # never left out silently: listed with what is wrong with their path
        out.append({"name": stray.name, "description": "", "problem": stray.reason})
    return sorted(out, key=lambda item: item["name"])


def _existing(catalog: Catalog, kind: str, name: str) -> Asset:
    k, n = parse_name(kind, name)
    if not catalog.prefix.exists(k, n):
        raise AssetNotFoundError(f"{KINDS[k].label} `{n}' not found in prefix `{catalog.prefix.root}'")
    return catalog.get(k, n)


def show(prefix: str | os.PathLike, kind: str, name: str) -> Any:
    """The resolved declaration: dataformats with ``#extends`` and references expanded."""
    catalog = _catalog(prefix)
    asset = _existing(catalog, kind, name).require_valid()
    if asset.kind == "dataformat":
        from backbeat.declarations.dataformat import expand

        return expand(catalog, asset.name)
    return asset.declaration


def asset_hash(prefix: str | os.PathLike, kind: str, name: str) -> str:
    """The BEAT-compatible hash of an asset (spec §4.2)."""
    catalog = _catalog(prefix)
    asset = _existing(catalog, kind, name)
    if asset.hash is None:
        asset.require_valid()
    return asset.hash


def asset_paths(prefix: str | os.PathLike, kind: str, name: str) -> list[str]:
    """The files making up an asset (declaration, code, documentation) that exist."""
    catalog = _catalog(prefix)
    k, n = parse_name(kind, name)
    if not catalog.prefix.exists(k, n):
        raise AssetNotFoundError(f"{KINDS[k].label} `{n}' not found in prefix `{catalog.prefix.root}'")
    asset = catalog.load(k, n)
    paths = [asset.files.json, asset.code_path, asset.files.rst]
    return [str(p) for p in paths if p is not None and p.is_file()]
