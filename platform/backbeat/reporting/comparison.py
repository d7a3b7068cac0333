"""Comparing experiments: one row per experiment, what differs as columns, scalar results.

Like DVC's ``exp show`` and MLflow's run comparison: the columns are the effective block
parameters (``BLOCK.PARAM``: defaults and globals applied), the database sets (``dataset
NAME``), the algorithms (``algorithm BLOCK``), the block environments (``environment BLOCK``)
and the run environment of the last run (``run python``, ``run numpy``…) — only those whose
values differ between the experiments (all of them for a single experiment, or with
``all_columns``) — then every scalar result of the analyzers (``ANALYZER.RESULT``; numbers,
booleans and short strings) from the cache.  Rows also carry the status and time of the
last run.  An experiment without cached results has empty result cells; an invalid one has
its error in ``error``.
"""

from __future__ import annotations

import os
from typing import Any

from backbeat.core import jsonio
from backbeat.core.errors import BackbeatError
from backbeat.declarations.catalog import Catalog
from backbeat.reporting import engine, patterns

#: column groups in display order; ``result`` columns are always shown
GROUPS = ("parameter", "database", "algorithm", "environment", "run", "result")
MAX_TEXT = 60


def is_scalar(value: Any) -> bool:
    """True for what fits in a table cell: numbers, booleans, short strings.

    >>> [is_scalar(v) for v in (1, 0.5, True, "ok", [1], {"a": 1}, "x" * 100)]
    [True, True, True, True, False, False, False]
    """
    if isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and len(value) <= MAX_TEXT


def scalar_results(results: dict[str, list] | None) -> dict[str, Any]:
    """``{"ANALYZER.RESULT": value}`` of the scalar results (``[i]`` appended when an analyzer wrote
    several records).

    >>> scalar_results({"a": [{"start": 0, "end": 9, "data": {"acc": 0.9, "cm": [[1]]}}]})
    {'a.acc': 0.9}
    """
    out: dict[str, Any] = {}
    for analyzer, records in (results or {}).items():
        for i, rec in enumerate(records):
            for key, value in jsonio.plain(rec.get("data") or {}).items():
                if is_scalar(value):
                    out[f"{analyzer}.{key}" + (f"[{i}]" if len(records) > 1 else "")] = value
    return out


def _environment(env: Any) -> str:
    if isinstance(env, dict):
        return f"{env.get('name', '?')} {env.get('version', '?')}"
    return str(env)


def experiment_row(catalog: Catalog, cache: str | os.PathLike, name: str,
                   record: dict | None = None, results: Any = "read") -> dict:
    """One experiment's row: ``{"experiment", "status", "created", "values": {(group, column): value}}``.

    ``record`` (the latest provenance record) and ``results`` are read when not given.
    """
    if record is None:
        hist = engine.history(cache, name)
        record = hist[0] if hist else None
    row: dict[str, Any] = {"experiment": name, "status": record.get("status") if record else "not run",
                           "created": record.get("created") if record else None, "values": {}}
    values: dict[tuple[str, str], Any] = row["values"]
    try:
        catalog.get("experiment", name).require_valid()
        plan = engine.plan(catalog, name)
    except BackbeatError as exc:
        row.update(status="invalid", error=str(exc))
        return row
    for ds in plan.datasets.values():
        values[("database", f"dataset {ds.name}")] = f"{ds.database}/{ds.protocol}/{ds.set}"
    for job in plan.jobs:
        values[("algorithm", f"algorithm {job.name}")] = job.algorithm
        values[("environment", f"environment {job.name}")] = _environment(job.environment)
        for param, value in jsonio.plain(job.values).items():
            values[("parameter", f"{job.name}.{param}")] = value
    if record is not None:
        env = record.get("environment") or {}
        values[("run", "run backbeat")] = env.get("backbeat")
        values[("run", "run python")] = env.get("python")
        for pkg, version in (env.get("packages") or {}).items():
            values[("run", f"run {pkg}")] = version
    if isinstance(results, str):
        results = engine.results(catalog.prefix.root, cache, name)
    for column, value in scalar_results(results).items():
        values[("result", column)] = value
    return row


def table(rows: list[dict], all_columns: bool = False) -> dict:
    """Columns that differ (and results), in group order; JSON-able rows keyed by column name.

    ``{"columns": [{"name", "group"}], "rows": [{"experiment", "status", "created", "values"}],
    "same": {column: value shared by every row}}``.
    """
    found: dict[tuple[str, str], None] = {}
    for r in rows:
        for col in r["values"]:
            found.setdefault(col, None)
    columns, same = [], {}
    for group in GROUPS:
        for col in [c for c in found if c[0] == group]:
            seen = [r["values"].get(col) for r in rows]
            differs = any(v != seen[0] for v in seen)
            if group == "result" or differs or all_columns or len(rows) == 1:
                columns.append({"name": col[1], "group": group})
            else:
                same[col[1]] = seen[0]
    out_rows = []
    for r in rows:
        entry = {k: v for k, v in r.items() if k != "values"}
        entry["values"] = {c["name"]: r["values"].get((c["group"], c["name"])) for c in columns}
        out_rows.append(entry)
    return {"columns": columns, "rows": out_rows, "same": same}


def compare(prefix: str | os.PathLike, cache: str | os.PathLike, names: list[str],
            all_columns: bool = False) -> dict:
    """The comparison table of the experiments named (glob patterns expanded)."""
    catalog = engine.catalog(prefix)
    expanded = patterns.expand(catalog.prefix, names)
    return table([experiment_row(catalog, cache, n) for n in expanded], all_columns)
