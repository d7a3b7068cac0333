"""The adapter between reporting and the engine: every call reporting makes into execution,
cache, planning, provenance, audit and plotting goes through here.

When their public functions change, this module is the one place to edit.  Everything here is
a thin call: no logic of its own beyond turning "not there" errors into ``None``.
"""

from __future__ import annotations

import os
from typing import Any

from backbeat.core.errors import BackbeatError, ExecutionError
from backbeat.declarations.catalog import Catalog

Progress = Any  # Callable[[dict], None]


def catalog(prefix: str | os.PathLike) -> Catalog:
    """The prefix's catalog, with the database root folders configured in ``.backbeatrc``."""
    from backbeat.core import config
    from backbeat.declarations.prefix import Prefix

    cfg = config.active()
    return Catalog(Prefix(prefix), roots=dict(cfg.databases) if cfg is not None else None)


def options(**fields: Any) -> Any:
    """The executor's run options (``force``, ``jobs``, ``timeout_s``, ``memory_bytes``, ``only``…)."""
    from backbeat.planning.selection import Options

    return Options(**fields)


def run(prefix: str | os.PathLike, cache: str | os.PathLike, name: str, opts: Any, progress: Progress,
        executor: str = "local", scheduler: str | None = None, workers: int | None = None) -> dict:
    """Run one experiment; its report (``experiments run --json``)."""
    from backbeat.execution.executors import run_experiment

    settings = {k: v for k, v in (("scheduler", scheduler), ("workers", workers)) if v is not None}
    return run_experiment(prefix, cache, name, opts, progress, executor, **settings)


def dry_run(prefix: str | os.PathLike, cache: str | os.PathLike, name: str, opts: Any) -> dict:
    from backbeat.execution.base import dry_run as plan_run

    return plan_run(prefix, cache, name, opts)


def results(prefix: str | os.PathLike, cache: str | os.PathLike, name: str) -> dict[str, list] | None:
    """The experiment's cached analyzer results, or None when they are not all in the cache."""
    from backbeat.execution.report import cached_results

    try:
        return cached_results(prefix, cache, name)
    except ExecutionError:
        return None


def read_result(cache: str | os.PathLike, key: str) -> list[dict] | None:
    """An analyzer output file's records by key (None when no longer in the cache)."""
    from backbeat.cache.backends import open_store

    store = open_store(cache)
    if not store.output_path(key).is_file():
        return None
    try:
        return store.read_result(key)
    except (BackbeatError, OSError):
        return None


def plan(catalog: Catalog, name: str) -> Any:
    """The experiment's plan (jobs with effective parameters; keys not assigned)."""
    from backbeat.planning.planner import plan as make_plan

    return make_plan(catalog, name, catalog.roots)


def states(prefix: str | os.PathLike, cache: str | os.PathLike, name: str) -> tuple[Any, dict[str, str]]:
    """``(keyed plan, {node: cached|run|failed|unknown})``, nothing run."""
    from backbeat.execution import inventory

    return inventory.states(prefix, cache, name)


def history(cache: str | os.PathLike, name: str, corrupt: list[dict] | None = None) -> list[dict]:
    """Stored provenance records of an experiment, newest first (corrupt ones go to ``corrupt``)."""
    from backbeat.provenance import records

    return records.history(cache, name, corrupt)


def status(prefix: str | os.PathLike, cache: str | os.PathLike, name: str) -> dict:
    """``experiments status``: each block cached / will run / stale and what changed."""
    from backbeat.audit import audit

    return audit.status(prefix, cache, name)


def audit(prefix: str | os.PathLike, cache: str | os.PathLike, name: str) -> dict | None:
    """``experiments audit`` of the last run (None when there is no record)."""
    from backbeat.audit import audit as auditing

    try:
        return auditing.audit(prefix, cache, name)
    except ExecutionError:
        return None


def json_diff(old: Any, new: Any) -> list[str]:
    """Readable lines of what differs between two JSON values."""
    from backbeat.audit.changes import json_diff as diff

    return diff(old, new)


def plots(prefix: str | os.PathLike, cache: str | os.PathLike, names: list[str],
          folder: str | os.PathLike) -> list[dict]:
    """Render every plot result of the cached experiments into ``folder`` (one entry per image).

    Experiments without plot results or cached results give no entry.
    """
    from backbeat.plotting import render

    tasks = []
    for name in names:
        try:
            tasks += render.experiment_tasks(prefix, cache, name)
        except BackbeatError:  # nothing to plot, or not cached
            continue
    return render.render(prefix, tasks, folder) if tasks else []
