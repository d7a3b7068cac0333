"""The pages of the report: what each page shows, gathered from the prefix and the cache, and
rendered to HTML with Jinja2 (``templates/``, autoescaped: names, declarations and user
tracebacks are text, never markup).

Pages sit side by side so that links are plain relative file names, the same on the file
system (``backbeat report``) and over HTTP (``backbeat serve``): ``index.html``, one
``exp-<name with / as .>.html`` per experiment, ``compare.html`` (every experiment) and one
``compare-<toolchain>.html`` per toolchain with several experiments; ``static/`` has the CSS
and JavaScript, ``plots/`` the plotter images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from backbeat import __version__
from backbeat.core import jsonio
from backbeat.core.errors import BackbeatError
from backbeat.core.names import experiment_toolchain
from backbeat.declarations.catalog import Catalog
from backbeat.declarations.graph import STATE_COLOURS, experiment_graph
from backbeat.declarations.prefix import Prefix
from backbeat.reporting import (
    charts,
    comparison,
    engine,
    history,
    layout,
    live,
)

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def slug(name: str) -> str:
    """A file-name-safe, unique stem for an asset name (names never contain dots).

    >>> slug("user/user/iris/1/iris")
    'user.user.iris.1.iris'
    """
    return name.replace("/", ".")


def experiment_href(name: str) -> str:
    return f"exp-{slug(name)}.html"


def compare_href(toolchain: str | None = None) -> str:
    return "compare.html" if toolchain is None else f"compare-{slug(toolchain)}.html"


@dataclass
class Context:
    """What every page of one report (or of one request of the server) reads from."""

    prefix: Path
    cache: Path
    names: list[str]
    live: bool = False  # pages served by `backbeat serve' (they poll for progress)
    plots: dict[str, list[dict]] = field(default_factory=dict)  # experiment -> image entries (href)
    catalog: Catalog = field(init=False)
    _rows: dict[str, dict] = field(default_factory=dict)
    _history: dict[str, list[dict]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.catalog = engine.catalog(self.prefix)

    def records(self, name: str) -> list[dict]:
        if name not in self._history:
            self._history[name] = engine.history(self.cache, name)
        return self._history[name]

    def row(self, name: str) -> dict:
        """The comparison row of an experiment (read once per context)."""
        if name not in self._rows:
            recs = self.records(name)
            self._rows[name] = comparison.experiment_row(self.catalog, self.cache, name, recs[0] if recs else None)
        return self._rows[name]

    def toolchains(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for n in self.names:
            groups.setdefault(experiment_toolchain(n), []).append(n)
        return groups


_ENV: jinja2.Environment | None = None


def environment() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                                  undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        _ENV.filters["cell"] = cell
        _ENV.filters["json"] = lambda v: jsonio.dumps(v)
        _ENV.globals.update(experiment_href=experiment_href, compare_href=compare_href, version=__version__)
    return _ENV


def cell(value: Any) -> str:
    """A value as table-cell text.

    >>> cell(0.123456789), cell(None), cell(True), cell([1, 2])
    ('0.123457', '', 'true', '[1, 2]')
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return jsonio.simplejson.dumps(jsonio.plain(value))
    return str(value)


def _render(template: str, ctx: Context, **values: Any) -> str:
    return environment().get_template(template).render(live=ctx.live, **values)


# -- index -------------------------------------------------------------------------------------
def index(ctx: Context) -> str:
    rows = [ctx.row(n) for n in ctx.names]
    results: list[str] = []
    for r in rows:
        for (group, col) in r["values"]:
            if group == "result" and col not in results:
                results.append(col)
    entries = []
    for r in rows:
        recs = ctx.records(r["experiment"])
        entries.append({"name": r["experiment"], "status": r["status"], "created": r["created"] or "",
                        "runs": len(recs), "description": _description(ctx, r["experiment"]),
                        "results": [r["values"].get(("result", c)) for c in results]})
    groups = {tc: names for tc, names in ctx.toolchains().items() if len(names) > 1}
    return _render("index.html", ctx, title="Experiments", prefix=str(ctx.prefix), entries=entries,
                   results=results, toolchains=groups)


def _description(ctx: Context, name: str) -> str:
    decl = ctx.catalog.load("experiment", name).declaration
    desc = decl.get("description") if isinstance(decl, dict) else None
    return desc if isinstance(desc, str) else ""


# -- comparison --------------------------------------------------------------------------------
def compare(ctx: Context, toolchain: str | None = None) -> str:
    names = ctx.names if toolchain is None else ctx.toolchains().get(toolchain, [])
    tab = comparison.table([ctx.row(n) for n in names])
    figures = []
    for col in tab["columns"]:
        if col["group"] != "result":
            continue
        items = [(r["experiment"], float(r["values"][col["name"]])) for r in tab["rows"]
                 if isinstance(r["values"].get(col["name"]), int | float)
                 and not isinstance(r["values"].get(col["name"]), bool)]
        if len(items) > 1 and len({v for _n, v in items}) > 1:  # a chart of equal bars says nothing
            figures.append(Markup(charts.bars(col["name"], items)))
    title = "Comparison" + (f" of toolchain {toolchain}" if toolchain else " of every experiment")
    return _render("compare.html", ctx, title=title, table=tab, figures=figures)


# -- one experiment ----------------------------------------------------------------------------
def _graph(ctx: Context, name: str, decl: dict) -> tuple[str, dict[str, str]]:
    tc = ctx.catalog.get("toolchain", experiment_toolchain(name)).declaration
    formats: dict[str, str] = {}
    try:
        plan, states = engine.states(ctx.prefix, ctx.cache, name)
    except BackbeatError:  # e.g. a loop the planner cannot key yet: drawn from the declarations
        states = {}
    else:
        for section in ("blocks", "analyzers"):
            for node, spec in (decl.get(section) or {}).items():
                job = plan.job(node)
                for algo_in, tc_in in (spec.get("inputs") or {}).items():
                    formats[f"{node}.{tc_in}"] = job.inputs[algo_in].dataformat
    nodes, edges = experiment_graph(tc, decl, formats, states)
    return layout.svg(nodes, edges, f"experiment {name}"), states


def _results(results: dict[str, list] | None) -> list[dict]:
    """Per analyzer: its records, each as scalar rows and larger values (shown as JSON)."""
    out = []
    for analyzer, records in (results or {}).items():
        recs = []
        for rec in records:
            data = jsonio.plain(rec.get("data") or {})
            recs.append({"start": rec.get("start"), "end": rec.get("end"),
                         "scalars": [(k, v) for k, v in data.items() if comparison.is_scalar(v)],
                         "large": [(k, jsonio.dumps(v)) for k, v in data.items() if not comparison.is_scalar(v)]})
        out.append({"analyzer": analyzer, "records": recs})
    return out


def _blocks(record: dict | None) -> list[dict]:
    if record is None:
        return []
    out = []
    for name in record.get("order", []):
        b = record["blocks"][name]
        st = b.get("statistics") or {}
        out.append({"name": name, "kind": b.get("kind"), "algorithm": b.get("algorithm"), "status": b.get("status"),
                    "wall_s": st.get("wall_s"), "max_rss_mb": st.get("max_rss_mb"), "read_bytes": st.get("read_bytes"),
                    "steps": st.get("steps"), "written": st.get("written"), "from": b.get("statistics_from"),
                    "error": b.get("error"), "key": b.get("key")})
    return out


def experiment(ctx: Context, name: str) -> str:
    asset = ctx.catalog.get("experiment", name)
    decl = asset.declaration if isinstance(asset.declaration, dict) else {}
    page: dict[str, Any] = {"name": name, "description": _description(ctx, name), "valid": asset.valid,
                            "problems": [p.to_json() for p in asset.problems], "hash": asset.hash,
                            "declaration": jsonio.dumps(asset.declaration), "toolchain": experiment_toolchain(name),
                            "file": str(asset.files.json)}
    records = ctx.records(name)
    record = records[0] if records else None
    page.update(record=record, history=[], graph=None, states={}, parameters=[], datasets=[], results=[], status=None,
                audit=None, plots=ctx.plots.get(name, []), progress=live.read(ctx.cache, name) if ctx.live else None)
    if records:
        page["history"] = history.history(ctx.cache, name)["runs"]
    if asset.valid:
        svg, page["states"] = _graph(ctx, name, decl)
        page["graph"] = Markup(svg)
        plan = engine.plan(ctx.catalog, name)
        page["parameters"] = [{"block": j.name, "algorithm": j.algorithm, "params": jsonio.plain(j.values)}
                              for j in plan.jobs]
        page["datasets"] = [{"name": d.name, "database": d.database, "protocol": d.protocol, "set": d.set}
                            for d in plan.datasets.values()]
        page["results"] = _results(engine.results(ctx.prefix, ctx.cache, name))
        page["status"] = engine.status(ctx.prefix, ctx.cache, name)
        if record is not None:
            page["audit"] = engine.audit(ctx.prefix, ctx.cache, name)
    page["blocks"] = _blocks(record)
    page["failures"] = [b for b in page["blocks"] if b["error"]]
    return _render("experiment.html", ctx, title=name, page=page, colours=dict(STATE_COLOURS, **layout.LIVE_COLOURS),
                   slug=slug(name))


def progress(ctx: Context, name: str) -> dict:
    """What a live page polls: the run in progress (if any) and the time of the last record."""
    state = live.read(ctx.cache, name)
    records = engine.history(ctx.cache, name)
    return {"experiment": name, "running": state is not None, "progress": state,
            "last_run": records[0].get("created") if records else None}


def running(ctx: Context) -> dict:
    """Every experiment of the context with a run in progress, and the newest record time of each."""
    out = {}
    for n in ctx.names:
        state = live.read(ctx.cache, n)
        if state is not None:
            out[n] = {b: s.get("state") for b, s in state["blocks"].items()}
    return {"running": out}


def static_files() -> list[Path]:
    return sorted(p for p in STATIC.iterdir() if p.is_file())


def experiment_names(prefix: str | os.PathLike) -> list[str]:
    return Prefix(prefix).list("experiment")
