"""``backbeat report``: the static HTML site of a prefix's experiments, written to a folder.

The site opens from the file system (``file://…/index.html``): no server, no network, no
CDN — pages link to each other and to ``static/`` by relative file names, charts and the
graph are inline SVG, plots are image files under ``plots/`` rendered by the prefix's
plotters from the cached results (nothing is run).  A folder that is neither empty nor a
previous report (marker file :data:`MARKER`) is refused rather than written into.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from backbeat.core.errors import UsageError
from backbeat.declarations.prefix import Prefix
from backbeat.reporting import engine, pages, patterns

MARKER = ".backbeat-report"


def plot_entries(prefix: str | os.PathLike, cache: str | os.PathLike, names: list[str],
                 folder: Path, href_root: str = "plots") -> dict[str, list[dict]]:
    """Render the plots of the experiments into ``folder``; entries by experiment, with ``href``."""
    out: dict[str, list[dict]] = {}
    for e in engine.plots(prefix, cache, names, folder):
        if e.get("status") == "ok":
            e["href"] = f"{href_root}/{Path(e['path']).name}"
        out.setdefault(e.get("experiment", ""), []).append(e)
    return out


def _prepare(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"report folder `{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UsageError(f"report folder `{out}' is not empty and holds no earlier report: choose another -o")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("written by backbeat report\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the report folder `{out}': {exc.strerror or exc}") from None


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build(prefix: str | os.PathLike, cache: str | os.PathLike, names: list[str] | None,
          output: str | os.PathLike, plots: bool = True) -> dict:
    """Write the site; ``{"output", "index", "pages": [...], "plots": [entries]}``."""
    pfx = Prefix(prefix)
    expanded = patterns.expand(pfx, names) if names else pfx.list("experiment")
    out = Path(output)
    _prepare(out)
    ctx = pages.Context(Path(prefix), Path(cache), expanded)
    if plots:
        plot_dir = out / "plots"
        if plot_dir.is_dir():
            shutil.rmtree(plot_dir)
        ctx.plots = plot_entries(prefix, cache, expanded, plot_dir)
    static = out / "static"
    static.mkdir(exist_ok=True)
    for f in pages.static_files():
        shutil.copyfile(f, static / f.name)
    written = {"index.html": pages.index(ctx), pages.compare_href(): pages.compare(ctx)}
    for tc, members in ctx.toolchains().items():
        if len(members) > 1:
            written[pages.compare_href(tc)] = pages.compare(ctx, tc)
    for n in expanded:
        written[pages.experiment_href(n)] = pages.experiment(ctx, n)
    for file, html in written.items():
        _write(out / file, html)
    return {"output": str(out), "index": str(out / "index.html"), "pages": sorted(written),
            "experiments": expanded, "plots": [e for es in ctx.plots.values() for e in es]}
