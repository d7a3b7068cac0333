"""The library verbs behind the CLI; each returns plain data (dicts, lists, strings).

Every function takes the prefix folder (and, where relevant, the cache folder) and
raises only :class:`~backbeat.errors.BackbeatError` subclasses on bad input.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# the verbs of attestations (experiments export, attest verify|import; docs/attestations.md)
from backbeat.attestation.verbs import export_experiment, import_attestation, verify_attestation  # noqa: F401
from backbeat.core.errors import BackbeatError, UsageError
from backbeat.core.names import KINDS, kind_of, parse_label, parse_name
from backbeat.declarations import assets
from backbeat.declarations.catalog import Asset, Catalog, not_found
from backbeat.declarations.prefix import Prefix
from backbeat.planning.selection import Options  # the options of a run (--force, -j, limits…)


def _catalog(prefix: str | os.PathLike) -> Catalog:
    root = Path(prefix)
    if not root.is_dir():
        raise UsageError(f"prefix folder `{root}' does not exist")
    from backbeat.core import config

    cfg = config.active()  # database root folders configured in .backbeatrc (warnings about them)
    return Catalog(Prefix(root), roots=dict(cfg.databases) if cfg is not None else None)


def asset_report(asset: Asset) -> dict[str, Any]:
    """The JSON form of one checked asset.

    ``valid`` is BEAT's verdict (plus the cases where backbeat refuses what BEAT accepts and
    cannot run, docs/schemas.md); ``warnings`` never affect it; ``errors`` holds at most
    100 problems and ``errors_omitted`` counts the others.
    """
    return {
        "kind": KINDS[asset.kind].folder,
        "name": asset.name,
        "valid": asset.valid,
        "errors": [p.to_json() for p in asset.problems],
        "errors_omitted": asset.omitted,
        "warnings": [p.to_json() for p in asset.warnings],
        "hash": asset.hash,
    }


def check(prefix: str | os.PathLike, labels: list[str] | None = None, kind: str | None = None) -> list[dict]:
    """Validate the whole prefix, one kind, or the named ``KIND/NAME`` labels."""
    catalog = _catalog(prefix)
    if labels:
        pairs = [parse_name(kind, n) if kind else parse_label(n) for n in labels]
        return [asset_report(a) for a in catalog.check_all(pairs)]
    kinds = [kind_of(kind).name] if kind else None
    return [asset_report(a) for a in catalog.check_all(None, kinds)]


def warnings(prefix: str | os.PathLike, kind: str, name: str) -> list[dict]:
    """The warnings of one asset's check (e.g. a string for a boolean parameter); [] if it has none.

    An asset that is missing or invalid has none here: the command using it reports that.
    """
    catalog = _catalog(prefix)
    k, n = parse_name(kind, name)
    if not catalog.prefix.exists(k, n):
        return []
    return [p.to_json() for p in catalog.get(k, n).warnings]


def list_assets(prefix: str | os.PathLike, kind: str) -> list[dict]:
    """``[{name, description, problem}]`` of every ``.json`` file of a kind, sorted by name.

    ``problem`` is None, or why the file cannot be used: its declaration does not parse, or its
    path is not a name of the kind (BEAT lists such files too).
    """
    catalog = _catalog(prefix)
    k = kind_of(kind)
    names, strays = catalog.prefix.scan(k.name)
    out = []
    for name in names:
        asset = catalog.load(k.name, name)
        decl = asset.declaration if isinstance(asset.declaration, dict) else {}
        desc = decl.get(k.description_key)
        problem = asset.problems[0].message if asset.declaration is None and asset.problems else None
        out.append({"name": name, "description": desc if isinstance(desc, str) else "", "problem": problem})
    for stray in strays:  # never left out silently: listed with what is wrong with their path
        out.append({"name": stray.name, "description": "", "problem": stray.reason})
    return sorted(out, key=lambda item: item["name"])


def _existing(catalog: Catalog, kind: str, name: str) -> Asset:
    k, n = parse_name(kind, name)
    if not catalog.prefix.exists(k, n):
        raise not_found(catalog.prefix, k, n)
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
    """The BEAT-compatible hash of an asset (spec §4.2), also of one that is invalid or does not parse
    (BEAT's storage hash of its files, which tools comparing prefixes rely on)."""
    catalog = _catalog(prefix)
    asset = _existing(catalog, kind, name)
    if asset.hash is None:  # the declaration file cannot be read
        asset.require_valid()
        raise BackbeatError(f"{asset.label}: the declaration file cannot be read")
    return asset.hash


def asset_paths(prefix: str | os.PathLike, kind: str, name: str) -> list[str]:
    """The files making up an asset (declaration, code, documentation) that exist."""
    catalog = _catalog(prefix)
    k, n = parse_name(kind, name)
    if not catalog.prefix.exists(k, n):
        raise not_found(catalog.prefix, k, n)
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


def experiment_logs(prefix: str | os.PathLike, cache: str | os.PathLike, name: str,
                    block: str | None = None) -> dict:
    """The output logs of an experiment's processes, as kept in the cache:
    ``{"experiment", "blocks": {block: {part: {"path", "bytes"}}}, "datasets", "provider"}``;
    with ``block``, that block's logs only, each with its ``text``."""
    from backbeat.execution.logs import logs

    return logs(prefix, cache, name, block)


def adopt_orphans() -> None:
    """Make this process adopt the orphans of its descendants (Linux child subreaper), so that
    nothing a block starts can outlive a run, even if the fork server is killed.  For programs
    running experiments (the command line does it)."""
    from backbeat.processes.reaper import adopt_orphans as adopt

    adopt()


def warm_template() -> None:
    """Start this context's warm template in the background, for the next commands to be served by it
    (unless one is up, templates are off, or this process is served by one: ``processes/template.py``)."""
    from backbeat.core import config, templatekey

    setting = getattr(config.active(), "template", None)
    if templatekey.enabled(setting):  # (else not even imported)
        from backbeat.processes.template import warm_next

        warm_next(setting)


def environments(prefix: str | os.PathLike, check: bool = False) -> dict:
    """The environment mapping, the environments the prefix's experiments declare and each one's
    interpreter; with ``check``, whether backbeat's block runtime works in each (``ok``)."""
    from backbeat.execution.environments import listing

    return listing(prefix, check)


def dry_run(prefix: str | os.PathLike, cache: str | os.PathLike, name: str, options: Options | None = None) -> dict:
    """Each block's action (run, cached, excluded) and why, without running any block."""
    from backbeat.execution.base import dry_run as plan_run

    return plan_run(prefix, cache, name, options)


def cached_results(prefix: str | os.PathLike, cache: str | os.PathLike, name: str) -> dict[str, list]:
    """The analyzer results of an experiment already in the cache (nothing is run)."""
    from backbeat.execution.report import cached_results as results

    return results(prefix, cache, name)


def cached_report(prefix: str | os.PathLike, cache: str | os.PathLike, name: str) -> dict:
    """``{"results", "hidden_results"}``: the cached results and those declared ``"display": false``."""
    from backbeat.execution.report import cached_report as results

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


# -- the cache folder itself (backbeat.cache.tools: no experiment planned) ------------------------
def cache_info(cache: str | os.PathLike, paths: list[str] | None = None) -> dict:
    """Counts and sizes of the cache's entries, or details of the given entries."""
    from backbeat.cache import tools

    return tools.info(cache, paths)


def cache_view(cache: str | os.PathLike, path: str, start: int | None = None, end: int | None = None) -> Iterator[dict]:
    """The records of one cache entry (an output's data units or a view index's entries)."""
    from backbeat.cache import tools

    return tools.view(cache, path, start, end)


def cache_verify(cache: str | os.PathLike, paths: list[str] | None = None, delete: bool = False) -> list[dict]:
    """Verify cache entries against their digests (every entry by default); ``delete`` corrupt ones."""
    from backbeat.cache import tools

    return tools.verify_cache(cache, paths, delete=delete)


def cache_verify_file(cache: str | os.PathLike, path: str | os.PathLike) -> dict:
    """Verify one cache file: ``{"path", "status", "message"}``."""
    from backbeat.cache import tools

    return tools.verify_file(Path(path), cache)


def cache_delete(cache: str | os.PathLike, paths: list[str]) -> int:
    """Delete the given cache entries; the bytes freed."""
    from backbeat.cache import tools

    return tools.delete_entries(cache, [Path(p) for p in paths])


def cache_clear(cache: str | os.PathLike, dry_run: bool = False) -> dict:
    """Delete every cache entry (never the bookkeeping folders nor files that are not entries)."""
    from backbeat.cache import tools

    return tools.clear(cache, dry_run=dry_run)


# -- drawings (backbeat.declarations.graph) --------------------------------------------------------
def draw_toolchain(prefix: str | os.PathLike, name: str) -> str:
    """The DOT drawing of a toolchain."""
    from backbeat.declarations.graph import to_dot, toolchain_graph

    decl = show(prefix, "toolchain", name)
    nodes, edges = toolchain_graph(decl)
    return to_dot(f"toolchains/{name}", nodes, edges, (decl.get("representation") or {}).get("channel_colors"))


def draw_experiment(prefix: str | os.PathLike, cache: str | os.PathLike, name: str,
                    report: dict | None = None) -> tuple[str, str | None]:
    """``(DOT drawing, note)`` of an experiment with its blocks' cache states (or a run report's);
    the note says why it was drawn without dataformats and states, when it was."""
    from backbeat.core.errors import ExecutionError
    from backbeat.core.names import experiment_toolchain
    from backbeat.declarations.graph import experiment_graph, to_dot

    _k, name = parse_name("experiment", name)
    catalog = _catalog(prefix)
    exp = _existing(catalog, "experiment", name).require_valid().declaration
    tc = catalog.get("toolchain", experiment_toolchain(name)).require_valid().declaration
    formats: dict[str, str] = {}
    note = None
    states: dict[str, str] = {}
    try:
        plan, states = cache_states(prefix, cache, name, report)
    except ExecutionError as exc:  # e.g. loops: drawn from the declarations alone
        note = f"drawn without dataformats and cache states: {exc}"
    else:
        for section in ("blocks", "analyzers"):
            for node, spec in (exp.get(section) or {}).items():
                job = plan.job(node)
                for algo_in, tc_in in spec.get("inputs", {}).items():
                    formats[f"{node}.{tc_in}"] = job.inputs[algo_in].dataformat
    nodes, edges = experiment_graph(tc, exp, formats, states)
    return to_dot(f"experiments/{name}", nodes, edges, (tc.get("representation") or {}).get("channel_colors")), note


def render_drawing(dot_text: str, output: str | os.PathLike) -> str:
    """Write a DOT drawing to ``output`` (``.dot``, or ``.svg``/``.png`` with Graphviz); the path written."""
    from backbeat.declarations.graph import render

    return render(dot_text, output)


# -- provenance, status, audit (backbeat.provenance, backbeat.audit) --------------------------------
def provenance(cache: str | os.PathLike, name: str) -> dict | None:
    """The provenance record of an experiment's last run, whatever its status (None if it never
    ran with this cache; a corrupt one is a :class:`~backbeat.core.errors.DataError` saying so)."""
    from backbeat.provenance import records

    return records.last(cache, parse_name("experiment", name)[1])


def read_record(path: str | os.PathLike) -> dict:
    """A provenance record read from a file (checked to be one)."""
    from backbeat.provenance import records

    return records.read_record(path)


def prov_json(record: dict, cache: str | os.PathLike | None = None) -> dict:
    """A provenance record as W3C PROV-JSON (with the data files its views read, when ``cache``
    holds its data manifests)."""
    from backbeat.provenance import records

    return records.to_prov(record, records.data_manifests(cache, record) if cache is not None else None)


def data_manifests(cache: str | os.PathLike, record: dict) -> dict[str, dict]:
    """``{digest: data manifest}`` of the manifests a record references that ``cache`` holds."""
    from backbeat.provenance import records

    return records.data_manifests(cache, record)


def status(prefix: str | os.PathLike, cache: str | os.PathLike, name: str) -> dict:
    """What changed since the experiment's recorded run, block by block, and whether it would re-run."""
    from backbeat.audit import audit as auditing

    return auditing.status(prefix, cache, name)


def audit(prefix: str | os.PathLike, cache: str | os.PathLike, name: str | None = None,
          record: dict | None = None, rerun: bool = False) -> dict:
    """Whether a recorded run still holds by hash (and, with ``rerun``, re-executes to compare outputs)."""
    from backbeat.audit import audit as auditing

    return auditing.audit(prefix, cache, name, record=record, rerun=rerun)


# -- plotting (backbeat.plotting) --------------------------------------------------------------------
def plot_experiments(prefix: str | os.PathLike, cache: str | os.PathLike, names: list[str], fmt: str,
                     choices: list[str] | None, output_folder: str | os.PathLike,
                     timeout: float | None = None) -> list[dict]:
    """Render the plot results of cached experiments (``choices``: ``RESULT,PLOTTERPARAMETER`` each)."""
    from backbeat.plotting import render

    chosen = render.parse_choices(choices)
    tasks = []
    for name in names:
        tasks += render.experiment_tasks(prefix, cache, name, fmt, chosen)
    return render.render(prefix, tasks, output_folder, timeout)


def plot_data(prefix: str | os.PathLike, plotter: str, data: Any, output: str | os.PathLike | None,
              plotterparameter: str | None, fmt: str, timeout: float | None = None) -> dict:
    """Render ``data`` (JSON) with a plotter."""
    from backbeat.plotting import render

    return render.plot_data(prefix, plotter, data, output, plotterparameter, fmt, timeout)


# -- asset verbs (backbeat.declarations.assets) ---------------------------------------------------
VERSIONABLE = assets.VERSIONABLE
FORKABLE = assets.FORKABLE


def create(prefix: str | os.PathLike, kind: str, name: str) -> dict:
    """Write the kind's prototype under ``name``: ``{"files", "notes"}`` (notes: what to create or edit
    before the new asset is valid)."""
    files = assets.create(prefix, kind, name)
    return {"files": files, "notes": assets.check_created(prefix, kind, name)}


def version(prefix: str | os.PathLike, kind: str, name: str) -> dict:
    """Copy ``…/<v>`` to ``…/<v+1>``: ``{"name", "files"}``."""
    return assets.version(prefix, kind, name)


def fork(prefix: str | os.PathLike, kind: str, src: str, dst: str) -> dict:
    """Copy ``src`` under the new name ``dst``: ``{"name", "files"}`` (an experiment's toolchain must exist)."""
    return assets.fork(prefix, kind, src, dst)


def diff(prefix: str | os.PathLike, kind: str, name: str, other: str) -> dict:
    """Differences between two assets of a kind (see :func:`backbeat.declarations.assets.diff`)."""
    return assets.diff(prefix, kind, name, other)


def remove(prefix: str | os.PathLike, kind: str, names: list[str], purge: bool = False,
           force: bool = False) -> list[dict]:
    """Remove assets: ``[{"name", "removed", "backups", "used_by"}]`` (:func:`backbeat.declarations.assets.remove`:
    with ``purge``, an asset still used by others is refused unless ``force``)."""
    return assets.remove(prefix, kind, names, purge, force)


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
