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


# -- running several experiments, comparing, sweeping, history, reports (backbeat.reporting) ---------
def is_pattern(text: str) -> bool:
    """True if an experiment argument is a glob pattern (``*``, ``?``, ``[``)."""
    from backbeat.reporting.patterns import is_pattern as check

    return check(text)


def run_experiments(prefix: str | os.PathLike, cache: str | os.PathLike, names: list[str], progress=None,
                    announce=None, executor: str = "local", scheduler: str | None = None,
                    workers: int | None = None, **options: Any) -> dict:
    """Run experiments (names and glob patterns) one after the other into one cache.

    ``{"experiments": [run report], "summary": [one line each], "status"}``; ``options`` are the
    run options (``force``, ``jobs``, ``timeout_s``, ``memory_bytes``, ``only``, ``from_``,
    ``until``, ``stream``).  Runs in progress are visible to ``backbeat serve``.
    """
    from backbeat.reporting import runs

    return runs.run_many(prefix, cache, names, progress, announce, executor, scheduler, workers, **options)


def dry_runs(prefix: str | os.PathLike, cache: str | os.PathLike, names: list[str], **options: Any) -> list[dict]:
    """The plan (cache hit or miss and why) of each experiment named, nothing run."""
    from backbeat.reporting import runs

    return runs.dry_runs(prefix, cache, names, **options)


def compare(prefix: str | os.PathLike, cache: str | os.PathLike, names: list[str],
            all_columns: bool = False) -> dict:
    """One row per experiment: what differs between them as columns, and their scalar results."""
    from backbeat.reporting import comparison

    return comparison.compare(prefix, cache, names, all_columns)


def sweep(prefix: str | os.PathLike, cache: str | os.PathLike, base: str, sets: list[str],
          name: str | None = None, zipped: bool = False, run: bool = False, progress=None, announce=None,
          **options: Any) -> dict:
    """Write the experiments of a parameter sweep of ``base`` (``BLOCK.PARAM=v1,v2`` each), run them and
    the base if asked (cached blocks are reused), and compare them with the base:
    ``{"base", "experiments", "run", "comparison"}``."""
    from backbeat.reporting import comparison, runs
    from backbeat.reporting import sweep as sweeping

    written = sweeping.sweep(prefix, base, sets, name, zipped)
    names = [written["base"]] + [e["name"] for e in written["experiments"]]
    ran = runs.run_many(prefix, cache, names, progress, announce, **options) if run else None
    return dict(written, run=ran, comparison=comparison.compare(prefix, cache, names))


def history(cache: str | os.PathLike, name: str) -> dict:
    """Past runs of an experiment, newest first: time, status, what changed, results digest."""
    from backbeat.reporting import history as runs_history

    return runs_history.history(cache, name)


def provenance_record(cache: str | os.PathLike, name: str, run: int = 1) -> dict:
    """The provenance record of run ``run`` of an experiment (1 = the last, as ``history`` numbers them)."""
    from backbeat.reporting import history as runs_history

    return runs_history.record(cache, name, run)


def report(prefix: str | os.PathLike, cache: str | os.PathLike, names: list[str] | None,
           output: str | os.PathLike, plots: bool = True) -> dict:
    """Write the static HTML report of the experiments (all of the prefix by default) into ``output``."""
    from backbeat.reporting import site

    return site.build(prefix, cache, names, output, plots)


def serve(prefix: str | os.PathLike, cache: str | os.PathLike, names: list[str] | None = None,
          host: str = "127.0.0.1", port: int = 8000, ready=None, quiet: bool = True) -> None:
    """Serve the report's pages live and read-only until interrupted (``ready(url)`` once listening)."""
    from backbeat.reporting import server

    server.serve(prefix, cache, names, host, port, ready, quiet)
