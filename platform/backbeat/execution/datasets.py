"""Library verbs over database views: ``index`` and ``view`` (``backbeat databases …``).

Both resolve ``DB/VERSION[/PROTOCOL[/SET]]`` into datasets (:func:`backbeat.planning.dataset`)
and reuse the executor's machinery: indexes are built by jobs in block processes, and
``view`` reads the units through a database-provider process, as blocks do.
"""

from __future__ import annotations

import os
from pathlib import Path

from backbeat.core import jsonio
from backbeat.core.errors import ExecutionError, UsageError
from backbeat.core.names import parse_name
from backbeat.declarations.catalog import Catalog
from backbeat.execution.local import Options, Run, index_path
from backbeat.planning.planner import Plan, dataset


def _datasets(catalog: Catalog, name: str) -> dict:
    parts = name.split("/")
    if len(parts) < 2 or len(parts) > 4:
        raise UsageError(f"`{name}': expected DATABASE/VERSION[/PROTOCOL[/SET]]")
    _k, db = parse_name("database", "/".join(parts[:2]))
    from backbeat.declarations.database import sets as database_sets

    db_sets = database_sets(catalog, catalog.get("database", db).require_valid())
    protocols = [parts[2]] if len(parts) > 2 else sorted(db_sets)
    found, formats, expanded = {}, {}, {}
    for protocol in protocols:
        if protocol not in db_sets:
            raise UsageError(f"database `{db}' has no protocol `{protocol}' - valid protocols are "
                             f"{', '.join(sorted(db_sets))}")
        names = [parts[3]] if len(parts) > 3 else sorted(db_sets[protocol])
        for set_name in names:
            ds = dataset(catalog, f"{protocol}/{set_name}", db, protocol, set_name, formats, expanded)
            found[ds.name] = ds
    return found, formats, expanded


def _run(prefix: str | os.PathLike, cache: str | os.PathLike, name: str, force: bool) -> Run:
    catalog = Catalog(prefix)
    found, formats, expanded = _datasets(catalog, name)
    plan = Plan("", "", found, [], formats, expanded)
    return Run(plan, Path(prefix), Path(cache), Options(force=force), catalog=catalog)


def index(prefix: str | os.PathLike, cache: str | os.PathLike, name: str, force: bool = False) -> list[dict]:
    """Build (or find) the view index of every named set; one report per set."""
    from backbeat.data import dbindex

    run = _run(prefix, cache, name, force)
    before = {n: index_path(run.cache, ds.index_key).is_file() for n, ds in run.plan.datasets.items()}
    try:
        run.index_datasets()
    finally:
        run.close()
    if run.dataset_errors:
        raise ExecutionError("\n".join(f"{e['message']}\n{e.get('traceback') or ''}".rstrip()
                                        for e in run.dataset_errors.values()))
    out = []
    for n, ds in run.plan.datasets.items():
        path = index_path(run.cache, ds.index_key)
        out.append({"database": ds.database, "protocol": ds.protocol, "set": ds.set, "path": str(path),
                    "entries": len(dbindex.read_index(str(path))), "digest": ds.index_digest,
                    "status": "existing" if before[n] and not force else "built"})
    return out


def view(prefix: str | os.PathLike, cache: str | os.PathLike, name: str, exclude: list[str] | None = None):
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
        run.index_datasets()
        if run.dataset_errors:
            raise ExecutionError("\n".join(e["message"] for e in run.dataset_errors.values()))
        address = run._provider_address()
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
