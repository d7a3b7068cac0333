"""The executors, by name: ``--executor NAME`` picks one from :data:`EXECUTORS`.

Each entry names an :class:`~backbeat.execution.base.Executor` subclass as
``"module:Class"``, imported only when chosen (the Dask executor needs the optional Dask
packages); this module itself imports nothing heavy, so listing the executors (the CLI does
on every command) costs nothing.  Adding an executor is one module and one entry here
(``docs/architecture.md``).
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import TYPE_CHECKING, Any, cast

from backbeat.core.errors import UsageError
from backbeat.planning.selection import Options

if TYPE_CHECKING:
    from backbeat.cache.store import CacheStore
    from backbeat.execution.base import Executor
    from backbeat.execution.state import Progress, Run

__all__ = ["EXECUTORS", "Options", "dry_run", "executor", "executor_class", "prepare", "run_experiment"]

#: name -> "module:Class" of its Executor
EXECUTORS: dict[str, str] = {
    "local": "backbeat.execution.local:LocalExecutor",
    "dask": "backbeat.execution.dask_executor:DaskExecutor",
}


def executor_class(name: str) -> type[Executor]:
    """The executor class registered as ``name`` (its module imported now)."""
    if name not in EXECUTORS:
        raise UsageError(f"unknown executor `{name}' (known: {', '.join(EXECUTORS)})")
    module, _, cls = EXECUTORS[name].partition(":")
    return cast("type[Executor]", getattr(importlib.import_module(module), cls))


def _settings(cls: type[Executor]) -> set[str]:
    if cls.__init__ is object.__init__:  # (no settings; inspect would parse object's text signature: ~5-10 ms)
        return set()
    return set(inspect.signature(cls).parameters)


def executor(name: str, **settings: Any) -> Executor:
    """The executor ``name`` with its settings (e.g. ``scheduler`` for ``dask``; None: not given)."""
    cls = executor_class(name)
    given = {k: v for k, v in settings.items() if v is not None}
    unknown = sorted(set(given) - _settings(cls))
    if unknown:
        others = [n for n in EXECUTORS if n != name and set(unknown) <= _settings(executor_class(n))]
        hint = f" (with --executor {' or '.join(others)})" if others else ""
        raise UsageError(f"{', '.join('--' + k for k in unknown)} cannot be used with the `{name}' executor{hint}")
    return cls(**given)


def run_experiment(prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike, name: str,
                   options: Options | None = None, progress: Progress | None = None,
                   executor_name: str = "local", **settings: Any) -> dict:
    """Run an experiment with an executor; the JSON-able report of ``experiments run --json``."""
    return executor(executor_name, **settings).run(prefix, cache, name, options, progress)


def dry_run(prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike, name: str,
            options: Options | None = None) -> dict:
    """Each job's action, reason and key, without running any block (:func:`backbeat.execution.base.dry_run`)."""
    from backbeat.execution import base

    return base.dry_run(prefix, cache, name, options)


def prepare(prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike, name: str,
            options: Options | None = None, progress: Progress | None = None, warm: bool = False) -> Run:
    """A planned run with its datasets indexed (:func:`backbeat.execution.base.prepare`); close it after use."""
    from backbeat.execution import base

    return base.prepare(prefix, cache, name, options, progress, warm)
