"""Library verbs over database views: ``index`` and ``view`` (``backbeat databases …``).

Both resolve ``DB/VERSION[/PROTOCOL[/SET]]`` into datasets (:func:`backbeat.planning.planner.dataset`)
and run them as runs do (:mod:`backbeat.execution.views`): indexes are built by jobs in block
processes, and ``view`` reads the units through a database-provider process, as blocks do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from backbeat.cache import journal
from backbeat.cache.store import CacheStore
from backbeat.core import jsonio
from backbeat.core.errors import ExecutionError, UsageError
from backbeat.core.names import parse_name
from backbeat.execution.specs import SpecBuilder
from backbeat.execution.state import Run
from backbeat.execution.views import index_datasets, provider_log, start_provider
from backbeat.execution.workspace import Workspace
from backbeat.planning.model import Dataset, Plan
from backbeat.planning.planner import dataset
from backbeat.planning.selection import Options
from backbeat.processes.group import ProcessGroup


def _datasets(workspace: Workspace, name: str) -> Plan:
    """A plan of no job holding the named datasets."""
    parts = name.split("/")
    if len(parts) < 2 or len(parts) > 4:
        raise UsageError(f"`{name}': expected DATABASE/VERSION[/PROTOCOL[/SET]]")
    _k, db = parse_name("database", "/".join(parts[:2]))
    from backbeat.declarations.database import sets as database_sets

    catalog = workspace.catalog
    db_sets = database_sets(catalog, catalog.get("database", db).require_valid())
    protocols = [parts[2]] if len(parts) > 2 else sorted(db_sets)
    ctx = workspace.context()
    found: dict[str, Dataset] = {}
    for protocol in protocols:
        if protocol not in db_sets:
            raise UsageError(f"database `{db}' has no protocol `{protocol}' - valid protocols are "
                             f"{', '.join(sorted(db_sets))}")
        names = [parts[3]] if len(parts) > 3 else sorted(db_sets[protocol])
        for set_name in names:
            ds = dataset(ctx, f"{protocol}/{set_name}", db, protocol, set_name)
            found[ds.name] = ds
    return Plan("", "", found, [], ctx.formats, ctx.expanded)


def _run(prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike, name: str, force: bool) -> Run:
    workspace = Workspace.open(prefix, cache)
    journal.sweep(workspace.store)  # what runs killed with kill -9 left
    return Run(_datasets(workspace, name), workspace, Options(force=force), ProcessGroup(root=workspace.user_root))


def index(prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike, name: str,
          force: bool = False) -> list[dict]:
    """Build (or find) the view index of every named set; one report per set."""
    from backbeat.data import dbindex

    run = _run(prefix, cache, name, force)
    before = {n: run.store.index_record(ds.index_key) for n, ds in run.plan.datasets.items()}
    try:
        index_datasets(run)
    finally:
        run.close()
        run.end()
    if run.state.dataset_errors:
        raise ExecutionError("\n".join(f"{e['message']}\n{e.get('traceback') or ''}".rstrip()
                                        for e in run.state.dataset_errors.values()))
    out = []
    for n, ds in run.plan.datasets.items():
        path = run.store.index_path(ds.index_key)
        out.append({"database": ds.database, "protocol": ds.protocol, "set": ds.set, "path": str(path),
                    "entries": len(dbindex.read_index(str(path))), "digest": ds.index_digest, "data": ds.data_digest,
                    "status": "existing" if before[n] == run.store.index_record(ds.index_key) and not force
                    else "built"})
    return out


def view(prefix: str | os.PathLike, cache: CacheStore | str | os.PathLike, name: str,
         exclude: list[str] | None = None) -> Iterator[dict]:
    """Every data unit of one set: yields ``{"start", "end", "data": {output: value}}``."""
    if len(name.split("/")) != 4:
        raise UsageError(f"`{name}': expected DATABASE/VERSION/PROTOCOL/SET")
    run = _run(prefix, cache, name, False)
    try:
        (ds_name, ds), = run.plan.datasets.items()
        unknown = [o for o in exclude or [] if o not in ds.outputs]
        if unknown:
            raise UsageError(f"--exclude: set `{name}' has no output {', '.join(f'`{o}' + chr(39) for o in unknown)}"
                             f" (its outputs: {', '.join(ds.outputs)})")
        index_datasets(run)
        if run.state.dataset_errors:
            raise ExecutionError("\n".join(e["message"] for e in run.state.dataset_errors.values()))
        address = start_provider(run.group, SpecBuilder(run.plan, run.workspace).datasets(), provider_log(run))
        from backbeat.runtime.dbprovider import DatabaseClient

        client = DatabaseClient(address)
        try:
            outputs = [o for o in ds.outputs if o not in (exclude or [])]
            sources = {o: client.source(ds_name, o, ds.outputs[o], run.plan.expanded[ds.outputs[o]])
                       for o in outputs}
            # one record per unit of the finest output; coarser outputs repeat their value
            boundaries = sorted({(s, e) for src in sources.values() for s, e in src.data_indices()})
            for start, end in boundaries:
                data = {}
                for o, src in sources.items():
                    value, s, e = src.getAtDataIndex(start)
                    if value is not None and s == start and e == end:
                        data[o] = jsonio.plain(value.as_dict())
                if data:
                    yield {"start": int(start), "end": int(end), "data": data}
        finally:
            client.close()
    finally:
        run.close()
        run.end()
