"""Plotting analyzer results: BEAT plotters run on ``plot/*`` results, images written to files.

An analyzer declares results of type ``plot/<name>/<version>`` (a dataformat of the prefix).
``experiments plot`` renders every such result of an experiment's *cached* results
(:func:`backbeat.execution.report.cached_results`; nothing is run) with a plotter:

* the plotter is the first plotter of the prefix (sorted by name) whose ``dataformat`` is the
  result's type, as BEAT does, or the plotter of the plotterparameter given for that result
  (``-p RESULT,PLOTTERPARAMETER``, ``RESULT`` optionally ``ANALYZER.RESULT``);
* its parameters are the plotter's declared defaults, overlaid with the plotterparameter's
  ``data`` (each value cleaned against the declaration), and ``content_type`` set from the
  requested format (``png`` → ``image/png``, ``svg`` → ``image/svg+xml``, ``pdf`` →
  ``application/pdf``; ``image/png`` when nothing asks otherwise, as BEAT does);
* a plotter is user code: each image is rendered in a block process of a process group
  (:class:`backbeat.processes.group.ProcessGroup`), reporting over the control channel like a
  block.  The child loads the code with its ``uses`` libraries — snapshots of the bytes the
  catalog read (:func:`backbeat.execution.specs.code_spec`), in a temporary folder removed
  afterwards, never the prefix files again — creates ``Plotter()``,
  calls ``setup(parameters)`` when defined (``False`` means failure), builds the result value as
  a typed object of the plot dataformat (attribute access, like BEAT) and calls
  ``process([(label, value)])``, which returns the image as ``bytes`` (or ``str``, written as
  UTF-8).  The bytes go to a temporary file beside the final one;
* the parent checks the image's magic bytes (PNG, SVG, PDF, JPEG), names the file
  ``<experiment with _>_<analyzer>_<result>[_<record>].<ext>`` and renames it into place.

``plotters plot`` (:func:`plot_data`) renders one plotter on a JSON value of its dataformat.
Failures of user code carry the user's traceback (frames under the prefix only); a missing
matplotlib gets a hint to install the ``plot`` extra.
"""

from __future__ import annotations

import contextlib
import importlib.util
import mimetypes
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbeat.cache.blobs import Blobs
from backbeat.core import jsonio
from backbeat.core.errors import DataError, ExecutionError, InvalidNameError, UsageError
from backbeat.core.names import parse_name
from backbeat.declarations.catalog import Asset, Catalog
from backbeat.execution.report import cached_results
from backbeat.execution.specs import code_spec
from backbeat.execution.workspace import Workspace
from backbeat.runtime.spec import CodeSpec

#: output formats and their content types
FORMATS = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
_EXTENSIONS = {"image/png": "png", "image/svg+xml": "svg", "application/pdf": "pdf", "image/jpeg": "jpg"}
JOB_TARGET = "backbeat.plotting.render:plot_job"
MATPLOTLIB_HINT = "matplotlib is not installed: install the plot extra (pip install 'backbeat[plot]')"


@dataclass
class PlotTask:
    """One image to render: a plotter, its parameters and the value to plot."""

    plotter: str
    dataformat: str
    data: Any
    parameters: dict
    label: str
    stem: str  # output file name without extension
    plotterparameter: str | None = None
    fmt: str | None = None  # requested format (png/svg/pdf), None: whatever the plotter makes
    where: dict = field(default_factory=dict)  # experiment/analyzer/result/record, for reports


# --------------------------------------------------------------------------- plotters & parameters

def sniff(image: bytes) -> str | None:
    """The format of ``image`` from its first bytes: ``png``, ``pdf``, ``svg``, ``jpg`` or None."""
    if image.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if image.startswith(b"%PDF-"):
        return "pdf"
    if image.startswith(b"\xff\xd8\xff"):
        return "jpg"
    head = image[:1024].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head) or \
            (head.startswith(b"<!doctype svg")):
        return "svg"
    return None


def find_plotter(catalog: Catalog, dataformat: str) -> Asset:
    """The first plotter of the prefix (by name) rendering ``dataformat``; must be valid."""
    for name in catalog.prefix.list("plotter"):
        decl = catalog.load("plotter", name).declaration
        if isinstance(decl, dict) and decl.get("dataformat") == dataformat:
            return catalog.get("plotter", name).require_valid()
    raise ExecutionError(f"no plotter in the prefix renders `{dataformat}' (a plotter declares it as its "
                         f"\"dataformat\")")


def plotter_parameters(catalog: Catalog, plotter: Asset, plotterparameter: str | None = None,
                       fmt: str | None = None) -> dict:
    """The plotter's defaults, overlaid with the plotterparameter's ``data``, cleaned; plain JSON."""
    from backbeat.declarations.algorithm import converted
    from backbeat.declarations.plotter import clean

    declared = plotter.declaration.get("parameters") or {}
    values: dict = {}
    for key, decl in declared.items():
        conv = converted(decl)
        if conv is not None and "default" in conv:
            values[key] = conv["default"]
    if plotterparameter is not None:
        pp = catalog.get("plotterparameter", plotterparameter).require_valid()
        if pp.declaration.get("plotter") != plotter.name:
            raise UsageError(f"plotterparameter `{plotterparameter}' is for plotter "
                             f"`{pp.declaration.get('plotter')}', not `{plotter.name}'")
        for key, value in (pp.declaration.get("data") or {}).items():
            values[key] = clean(plotter, key, value)
    if fmt is not None:
        content_type = FORMATS[fmt]
        if "content_type" in declared:
            try:
                values["content_type"] = clean(plotter, "content_type", content_type)
            except DataError as exc:
                raise UsageError(f"plotter `{plotter.name}' cannot produce {fmt.upper()}: {exc}") from None
        else:
            values["content_type"] = content_type
    values.setdefault("content_type", "image/png")
    return jsonio.plain(values)


def _plotterparameter_plotter(catalog: Catalog, name: str) -> Asset:
    try:
        kind, name = parse_name("plotterparameter", name)
    except InvalidNameError as exc:
        raise UsageError(str(exc)) from None
    pp = catalog.get(kind, name).require_valid()
    return catalog.get("plotter", pp.declaration["plotter"]).require_valid()


def parse_choices(specs: list[str] | None) -> dict[str, str]:
    """``["RESULT,PLOTTERPARAMETER", …]`` → ``{RESULT: PLOTTERPARAMETER}``."""
    out: dict[str, str] = {}
    for spec in specs or []:
        result, sep, pp = spec.partition(",")
        if not sep or not result.strip() or not pp.strip():
            raise UsageError(f"-p `{spec}': expected RESULT,PLOTTERPARAMETER (e.g. scatter,user/wide/1)")
        out[result.strip()] = pp.strip()
    return out


# --------------------------------------------------------------------------- experiments plot

def _plot_results(workspace: Workspace, experiment: str) -> list[tuple[str, str, str]]:
    """``(analyzer, result, plot dataformat)`` of every plot result of the experiment's analyzers."""
    from backbeat.declarations.algorithm import Algorithm

    catalog = workspace.catalog
    p = workspace.plan(experiment)
    found = []
    for job in p.jobs:
        if job.kind != "analyzer":
            continue
        algo = Algorithm(catalog.get("algorithm", job.algorithm))
        for result, rtype in algo.results.items():
            if isinstance(rtype, str) and rtype.startswith("plot/"):
                found.append((job.name, result, rtype))
    return found


def experiment_tasks(prefix: str | os.PathLike, cache: str | os.PathLike, experiment: str,
                     fmt: str | None = None, choices: dict[str, str] | None = None) -> list[PlotTask]:
    """The images ``experiments plot`` renders for one experiment (its results must be cached)."""
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"unknown image format `{fmt}' (choose among {', '.join(FORMATS)})")
    catalog = Catalog(str(prefix))
    try:
        kind, experiment = parse_name("experiment", experiment)
    except InvalidNameError as exc:
        raise UsageError(str(exc)) from None
    catalog.get(kind, experiment).require_valid()
    plots = _plot_results(Workspace.open(prefix, cache, catalog=catalog), experiment)
    choices = dict(choices or {})
    known = {r for _a, r, _t in plots} | {f"{a}.{r}" for a, r, _t in plots}
    unknown = [c for c in choices if c not in known]
    if unknown:
        listed = ", ".join(sorted({r for _a, r, _t in plots})) or "none"
        raise UsageError(f"-p: experiment `{experiment}' has no plot result {', '.join(map(repr, unknown))} "
                         f"(plot results: {listed})")
    if not plots:
        raise ExecutionError(f"experiment `{experiment}' has no plot results (no analyzer result of a "
                             f"`plot/…' dataformat): nothing to plot")
    results = cached_results(prefix, cache, experiment)
    tasks = []
    stem_exp = experiment.replace("/", "_")
    for analyzer, result, rtype in plots:
        pp = choices.get(f"{analyzer}.{result}", choices.get(result))
        if pp is not None:
            plotter = _plotterparameter_plotter(catalog, pp)
            if plotter.declaration.get("dataformat") != rtype:
                raise UsageError(f"plotterparameter `{pp}' is for plotter `{plotter.name}', which renders "
                                 f"`{plotter.declaration.get('dataformat')}', not `{rtype}' (result `{result}')")
        else:
            plotter = find_plotter(catalog, rtype)
        parameters = plotter_parameters(catalog, plotter, pp, fmt)
        records = results.get(analyzer, [])
        for i, record in enumerate(records):
            stem = f"{stem_exp}_{analyzer}_{result}" + (f"_{i}" if len(records) > 1 else "")
            tasks.append(PlotTask(plotter.name, rtype, record["data"][result], parameters, result, stem, pp, fmt,
                                  {"experiment": experiment, "analyzer": analyzer, "result": result, "record": i,
                                   "start": record["start"], "end": record["end"]}))
    return tasks


# --------------------------------------------------------------------------- plotters plot

def plot_data(prefix: str | os.PathLike, plotter: str, data: Any, output: str | os.PathLike | None = None,
              plotterparameter: str | None = None, fmt: str | None = None,
              timeout_s: float | None = None) -> dict:
    """Render ``plotter`` on ``data`` (a JSON value of its dataformat) into ``output``.

    Without ``output`` the image is ``./<plotter with _>.<ext>``; an ``output`` with a
    known extension (``.png``, ``.svg``, ``.pdf``) also sets the format.
    """
    from backbeat.data.values import value_type
    from backbeat.declarations.dataformat import expand

    catalog = Catalog(str(prefix))
    try:
        kind, plotter = parse_name("plotter", plotter)
    except InvalidNameError as exc:
        raise UsageError(str(exc)) from None
    asset = catalog.get(kind, plotter).require_valid()
    out = Path(output) if output is not None else Path(plotter.replace("/", "_"))
    ext = out.suffix.lower().lstrip(".")
    if fmt is None and ext in FORMATS:
        fmt = ext
    elif fmt is not None and ext in FORMATS and ext != fmt:
        raise UsageError(f"the output image `{out}' has a .{ext} extension but --format {fmt} was asked")
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"unknown image format `{fmt}' (choose among {', '.join(FORMATS)})")
    if ext in FORMATS or ext == "jpg":
        stem, folder = out.stem, out.parent
    else:
        stem, folder = out.name, out.parent
    df = asset.declaration["dataformat"]
    try:
        value_type(df, expand(catalog, df))().from_dict(data, casting="unsafe")
    except DataError as exc:
        raise DataError(f"the input data is not a value of `{df}': {exc}") from None
    parameters = plotter_parameters(catalog, asset, plotterparameter, fmt)
    task = PlotTask(plotter, df, jsonio.plain(data), parameters, "sample_plot", stem, plotterparameter, fmt,
                    {"plotter": plotter})
    return render(prefix, [task], folder, timeout_s)[0]


# --------------------------------------------------------------------------- running plotters

def _code(catalog: Catalog, snapshots: Blobs, plotter: str) -> CodeSpec:
    from backbeat.declarations.library import load_order

    asset = catalog.get("plotter", plotter).require_valid()
    uses = dict(asset.declaration.get("uses") or {})
    libraries: list[str] = []
    for alias in sorted(uses):
        libraries += [lib for lib in load_order(catalog, uses[alias]) if lib not in libraries]
    return code_spec(snapshots, catalog, "plotter", plotter, libraries)


def _preload(payloads: list[dict]) -> tuple[str, ...]:
    """Modules the zygote imports once for all plotter processes.

    matplotlib (slow to import) only when several images come from plotters that use it.
    """
    mods: tuple[str, ...] = ("numpy", "zmq", "backbeat.processes.control", "backbeat.data.values",
                             "backbeat.runtime.codeloader", "backbeat.runtime.compat")
    if len(payloads) > 1 and importlib.util.find_spec("matplotlib") is not None:
        codes = {p["code"]["main"]["path"] for p in payloads}
        if any(b"matplotlib" in Path(c).read_bytes() for c in codes):
            mods += ("matplotlib", "matplotlib.pyplot")
    return mods


def render(prefix: str | os.PathLike, tasks: list[PlotTask], output_folder: str | os.PathLike,
           timeout_s: float | None = None, jobs: int | None = None) -> list[dict]:
    """Run each task's plotter in a child process; write the images; one report entry per task.

    An entry is ``{"status": "ok", "path", "format", "bytes", "plotter", ...}`` or
    ``{"status": "failed", "error": {"kind", "message", "traceback"}, ...}``.
    """
    from backbeat.declarations.dataformat import expand

    if not tasks:
        return []
    catalog = Catalog(str(prefix))
    folder = Path(output_folder).absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder `{folder}': {exc.strerror}") from None
    payloads: list[dict] = []
    snapshots = Blobs(Path(tempfile.mkdtemp(prefix="backbeat-code-")))
    try:
        for i, t in enumerate(tasks):
            tmp = folder / f".{t.stem}.tmp-{os.getpid()}-{i}"
            payloads.append({"code": _code(catalog, snapshots, t.plotter).to_json(), "name": t.plotter,
                             "dataformat": t.dataformat, "format": expand(catalog, t.dataformat), "data": t.data,
                             "label": t.label, "parameters": t.parameters, "output": str(tmp)})
        return _render(prefix, tasks, payloads, folder, timeout_s, jobs)
    finally:
        shutil.rmtree(snapshots.folder, ignore_errors=True)


def _render(prefix: str | os.PathLike, tasks: list[PlotTask], payloads: list[dict], folder: Path,
            timeout_s: float | None, jobs: int | None) -> list[dict]:
    from backbeat.processes.exits import Limits
    from backbeat.processes.group import ProcessGroup

    os.environ.setdefault("MPLBACKEND", "Agg")  # never a window: the zygote and children inherit it
    limit = max(1, jobs or os.cpu_count() or 1)
    reports: list[dict] = [{} for _ in tasks]
    group = ProcessGroup(root=str(Path(prefix).resolve()), preload=_preload(payloads))
    try:
        running: set[str] = set()
        pending = list(range(len(tasks)))
        while pending or running:
            while pending and len(running) < limit:
                i = pending.pop(0)
                group.spawn(str(i), JOB_TARGET, payloads[i], Limits(timeout_s))
                running.add(str(i))
            group.poll(20)
            for j in [j for j in running if group.exit(j) is not None]:
                running.discard(j)
                i = int(j)
                reports[i] = _finish(tasks[i], Path(payloads[i]["output"]), group.outcome(j), folder)
    finally:
        group.close()
        for p in payloads:
            Path(p["output"]).unlink(missing_ok=True)
    return reports


def _finish(task: PlotTask, tmp: Path, result: Any, folder: Path) -> dict:
    entry: dict = dict(task.where, plotter=task.plotter, plotterparameter=task.plotterparameter)
    if not result.ok:
        message = result.message.replace("the block", "the plotter")
        if "No module named 'matplotlib'" in message:
            message += f" ({MATPLOTLIB_HINT})"
        entry.update(status="failed", error={"kind": result.kind, "message": message,
                                             "traceback": result.traceback})
        return entry
    try:
        image = tmp.read_bytes()
    except OSError:
        entry.update(status="failed", error={"kind": "system", "message": "the plotter process wrote no image",
                                             "traceback": None})
        return entry
    detected = sniff(image)
    content_type = (result.statistics or {}).get("content_type") or task.parameters.get("content_type")
    if task.fmt is not None and detected != task.fmt:
        what = f"{detected.upper()} instead" if detected else "data that is not a PNG, SVG or PDF image"
        entry.update(status="failed", error={
            "kind": "user", "traceback": None,
            "message": f"{task.fmt.upper()} was asked but the plotter returned {what}"})
        return entry
    ext = detected or _EXTENSIONS.get(str(content_type)) or \
        (mimetypes.guess_extension(str(content_type)) or ".bin").lstrip(".")
    final = folder / f"{task.stem}.{ext}"
    os.replace(tmp, final)
    entry.update(status="ok", path=str(final), format=ext, bytes=len(image))
    return entry


# --------------------------------------------------------------------------- child side

def plot_job(payload: dict) -> dict:
    """Inside the plotter process (a job of the group): render one image (``payload["spec"]``)."""
    from backbeat.data.values import value_type
    from backbeat.runtime.codeloader import load_code
    from backbeat.runtime.compat import install_beat_aliases

    t0 = time.perf_counter()
    install_beat_aliases()
    payload = payload["spec"]
    code = CodeSpec.from_json(payload["code"])
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the CLI's (e.g. its --json document)
        module = load_code(payload["name"], code)
        cls = getattr(module, "Plotter", None)
        if cls is None:
            raise ExecutionError(f"plotter `{payload['name']}' defines no class `Plotter'")
        obj = cls()
        setup = getattr(obj, "setup", None)
        if setup is not None and setup(dict(payload["parameters"])) is False:
            raise ExecutionError(f"plotter `{payload['name']}': setup() returned False")
        value = value_type(payload["dataformat"], payload["format"])().from_dict(payload["data"], casting="unsafe")
        image = obj.process([(payload["label"], value)])
    if isinstance(image, str):
        image = image.encode("utf-8")
    elif isinstance(image, (bytearray, memoryview)):
        image = bytes(image)
    if not isinstance(image, bytes) or not image:
        what = "empty bytes" if isinstance(image, bytes) else type(image).__name__
        raise ExecutionError(f"plotter `{payload['name']}': process() returned {what}, not the image bytes")
    with open(payload["output"], "wb") as fh:
        fh.write(image)
    content_type = getattr(obj, "content_type", None)
    return {"bytes": len(image), "content_type": content_type if isinstance(content_type, str) else None,
            "wall_s": time.perf_counter() - t0}

