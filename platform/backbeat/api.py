"""The library verbs behind the CLI; each returns plain data (dicts, lists, strings).

Every function takes the prefix folder (and, where relevant, the cache folder) and
raises only :class:`~backbeat.errors.BackbeatError` subclasses on bad input.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from backbeat.core.errors import AssetNotFoundError, UsageError
from backbeat.core.names import KINDS, kind_of, parse_label, parse_name
from backbeat.declarations.catalog import Asset, Catalog
from backbeat.declarations.prefix import Prefix
from backbeat.planning.selection import Options  # the options of a run (--force, -j, limits…)


def _catalog(prefix: str | os.PathLike) -> Catalog:
    root = Path(prefix)
    if not root.is_dir():
        raise UsageError(f"prefix folder `{root}' does not exist")
    return Catalog(Prefix(root))


def asset_report(asset: Asset) -> dict[str, Any]:
    """The JSON form of one checked asset."""
    return {
        "kind": KINDS[asset.kind].folder,
        "name": asset.name,
        "valid": asset.valid,
        "errors": [p.to_json() for p in asset.problems],
        "hash": asset.hash,
    }


def check(prefix: str | os.PathLike, labels: list[str] | None = None, kind: str | None = None) -> list[dict]:
    """Validate the whole prefix, one kind, or the named ``KIND/NAME`` labels."""
    catalog = _catalog(prefix)
    if labels:
        pairs = [parse_name(kind, n) if kind else parse_label(n) for n in labels]
    elif kind:
        k = kind_of(kind).name
        pairs = [(k, n) for n in catalog.prefix.list(k)]
    else:
        pairs = None
    return [asset_report(a) for a in catalog.check_all(pairs)]


def list_assets(prefix: str | os.PathLike, kind: str) -> list[dict]:
    """Names (and descriptions) of every asset of a kind."""
    catalog = _catalog(prefix)
    k = kind_of(kind)
    out = []
    for name in catalog.prefix.list(k.name):
        asset = catalog.load(k.name, name)
        decl = asset.declaration if isinstance(asset.declaration, dict) else {}
        desc = decl.get(k.description_key)
        out.append({"name": name, "description": desc if isinstance(desc, str) else ""})
    return out


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
    return asset.hash or ""


def asset_paths(prefix: str | os.PathLike, kind: str, name: str) -> list[str]:
    """The files making up an asset (declaration, code, documentation) that exist."""
    catalog = _catalog(prefix)
    k, n = parse_name(kind, name)
    if not catalog.prefix.exists(k, n):
        raise AssetNotFoundError(f"{KINDS[k].label} `{n}' not found in prefix `{catalog.prefix.root}'")
    asset = catalog.load(k, n)
    paths = [asset.files.json, asset.code_path, asset.files.rst]
    return [str(p) for p in paths if p is not None and p.is_file()]


# -- running experiments and views (the execution layer, imported only when used) ---------------
def executor_names() -> list[str]:
    """The executors ``experiments run --executor`` accepts."""
    from backbeat.execution.executors import EXECUTORS

    return list(EXECUTORS)


def run_experiment(prefix: str | os.PathLike, cache: str | os.PathLike, name: str, options: Options | None = None,
                   progress: Callable[[dict], None] | None = None, executor: str = "local",
                   **settings: Any) -> dict:
    """Run an experiment with the named executor (``settings``: its own, e.g. Dask's ``scheduler``);
    the run report (``experiments run --json``)."""
    from backbeat.execution.executors import run_experiment as run

    return run(prefix, cache, name, options, progress, executor, **settings)


def dry_run(prefix: str | os.PathLike, cache: str | os.PathLike, name: str, options: Options | None = None) -> dict:
    """Each block's action (run, cached, excluded) and why, without running any block."""
    from backbeat.execution.base import dry_run as plan_run

    return plan_run(prefix, cache, name, options)


def cached_results(prefix: str | os.PathLike, cache: str | os.PathLike, name: str) -> dict[str, list]:
    """The analyzer results of an experiment already in the cache (nothing is run)."""
    from backbeat.execution.report import cached_results as results

    return results(prefix, cache, name)


def index_datasets(prefix: str | os.PathLike, cache: str | os.PathLike, name: str, force: bool = False) -> list[dict]:
    """Build (or find) the view indexes of ``DB/VERSION[/PROTOCOL[/SET]]``."""
    from backbeat.execution import datasets

    return datasets.index(prefix, cache, name, force)


def view_dataset(prefix: str | os.PathLike, cache: str | os.PathLike, name: str,
                 exclude: list[str] | None = None) -> Iterator[dict]:
    """Every data unit of ``DB/VERSION/PROTOCOL/SET``."""
    from backbeat.execution import datasets

    return datasets.view(prefix, cache, name, exclude)


def experiment_caches(prefix: str | os.PathLike, cache: str | os.PathLike, name: str) -> list[dict]:
    """The cache files of an experiment's block outputs and results."""
    from backbeat.execution import inventory

    return inventory.experiment_caches(prefix, cache, name)


def cache_states(prefix: str | os.PathLike, cache: str | os.PathLike, name: str,
                 report: dict | None = None) -> tuple[Any, dict[str, str]]:
    """``(plan, {node: cached|run|failed|unknown})`` of an experiment, without running anything."""
    from backbeat.execution import inventory

    return inventory.states(prefix, cache, name, report)


def cache_gc(prefix: str | os.PathLike, cache: str | os.PathLike, dry_run: bool = False) -> dict:
    """Delete the cache entries no experiment of the prefix needs."""
    from backbeat.execution import inventory

    return inventory.gc(prefix, cache, dry_run)
