"""The adapter between reporting and the engine: every call reporting makes into execution,
cache, planning, provenance, audit and plotting goes through here.

Those layers are being restructured (an executor interface, a cache store); when their public
functions change, this module is the one place to edit.  Everything here is a thin call:
no logic of its own beyond turning "not there" errors into ``None``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from backbeat.core.errors import BackbeatError, ExecutionError
from backbeat.declarations.catalog import Catalog

Progress = Any  # Callable[[dict], None]


def options(**fields: Any) -> Any:
    """The executor's run options (``force``, ``jobs``, ``timeout_s``, ``memory_bytes``, ``only``…)."""
    from backbeat.planning.selection import Options

    return Options(**fields)


def run(prefix: str | os.PathLike, cache: str | os.PathLike, name: str, opts: Any, progress: Progress,
        executor: str = "local", scheduler: str | None = None, workers: int | None = None) -> dict:
    """Run one experiment; its report (``experiments run --json``)."""
    if executor == "dask":
        from backbeat.execution import dask_executor

        return dask_executor.run_experiment(prefix, cache, name, opts, progress, scheduler=scheduler,
                                            workers=workers)
    from backbeat.execution import local

    return local.run_experiment(prefix, cache, name, opts, progress)


def dry_run(prefix: str | os.PathLike, cache: str | os.PathLike, name: str, opts: Any) -> dict:
    from backbeat.execution import local

    return local.dry_run(prefix, cache, name, opts)


def results(prefix: str | os.PathLike, cache: str | os.PathLike, name: str) -> dict[str, list] | None:
    """The experiment's cached analyzer results, or None when they are not all in the cache."""
    from backbeat.cache.results import cached_results

    try:
        return cached_results(prefix, cache, name)
    except ExecutionError:
        return None


def read_result(cache: str | os.PathLike, key: str) -> list[dict] | None:
    """An analyzer output file's records by key (None when no longer in the cache)."""
    from backbeat.cache.results import output_path, read_result

    path = output_path(Path(cache), key)
    if not path.is_file():
        return None
    try:
        return read_result(path)
    except (BackbeatError, OSError):
        return None


def plan(catalog: Catalog, name: str) -> Any:
    """The experiment's plan (jobs with effective parameters; keys not assigned)."""
    from backbeat.planning.planner import plan as make_plan

    return make_plan(catalog, name)


def states(prefix: str | os.PathLike, cache: str | os.PathLike, name: str) -> tuple[Any, dict[str, str]]:
    """``(keyed plan, {node: cached|run|failed|unknown})``, nothing run."""
    from backbeat.cache import tools

    return tools.states(prefix, cache, name)


def history(cache: str | os.PathLike, name: str) -> list[dict]:
    """Stored provenance records of an experiment, newest first."""
    from backbeat.provenance import records

    return records.history(cache, name)


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
    from backbeat.audit.audit import json_diff as diff

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
