"""Where a run happens: a prefix (its catalog), a cache store, and the database root folders.

The execution layer is where ``.backbeatrc`` meets planning: :meth:`Workspace.open` takes
the database root folder overrides of the active configuration (unless given), and every
plan made through the workspace gets them, so planning itself reads no configuration.  It
also holds the environment mapping in force (:mod:`backbeat.processes.environments`: the
prefix's ``environments.json`` and the configuration's ``environments``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from backbeat.cache.backends import open_store
from backbeat.cache.store import CacheStore
from backbeat.core import config
from backbeat.declarations.catalog import Catalog
from backbeat.planning.context import PlanContext
from backbeat.planning.model import Plan, assign_keys
from backbeat.planning.planner import plan
from backbeat.processes.environments import Mapping


@dataclass
class Workspace:
    prefix: Path
    store: CacheStore
    catalog: Catalog
    roots: dict[str, str]  # database name -> root folder of its raw data (overrides)
    environments: Mapping = field(default_factory=Mapping)  # execution environment -> interpreter

    @classmethod
    def open(cls, prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike,
             roots: dict[str, str] | None = None, catalog: Catalog | None = None) -> Workspace:
        """The workspace of a prefix and a cache; ``roots`` default to the active ``.backbeatrc``'s."""
        cfg = config.active()
        if roots is None:
            roots = dict(cfg.databases) if cfg is not None else {}
        return cls(Path(prefix), open_store(cache), catalog or Catalog(str(prefix), roots=roots), roots,
                   Mapping.load(prefix, cfg))

    @property
    def user_root(self) -> str:
        """The folder of user code, to which tracebacks are made relative."""
        return str(self.prefix.resolve())

    def context(self) -> PlanContext:
        return PlanContext(self.catalog, dict(self.roots))

    def plan(self, name: str) -> Plan:
        """The plan of experiment ``name`` (keys not set)."""
        return plan(self.catalog, name, self.roots)

    def keyed_plan(self, name: str) -> tuple[Plan, list[str]]:
        """``(plan, datasets never indexed)``; the plan has its keys when none is missing.

        Keys are computed without running user code: from the view indexes in the cache and
        the data files their views read, as they are now (:func:`backbeat.provenance.manifests.resolve`).
        """
        from backbeat.provenance.manifests import resolve

        p = self.plan(name)
        missing = [ds.name for ds in p.datasets.values() if resolve(self.store, self.catalog, ds)[0] is not None]
        self.store.flush()
        if not missing:
            assign_keys(p)
        return p, missing
