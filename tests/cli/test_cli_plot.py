"""``experiments plot`` and ``plotters plot`` through the real CLI, on ``tests/fixtures/plot/prefix``.

The experiment ``plotfx/plotfx/scatter/1/base`` is run once per module (its analyzer writes a
``plot/scatter/1`` result); plotters run in child processes and write real image files whose
magic bytes are checked.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from backbeat.core.errors import UsageError
from backbeat.plotting.render import parse_choices, sniff
from conftest import FIXTURES, cli_json, run_cli

PLOT_PREFIX = FIXTURES / "plot" / "prefix"
EXP = "plotfx/plotfx/scatter/1/base"
IMAGE = "plotfx_plotfx_scatter_1_base_analysis_scatter"
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-"}

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Path:
    """A private copy of the plot prefix whose base experiment has run (cache inside)."""
    prefix = tmp_path_factory.mktemp("plot") / "prefix"
    shutil.copytree(PLOT_PREFIX, prefix, ignore=shutil.ignore_patterns("cache", "__pycache__"))
    proc = run_cli("-p", prefix, "experiments", "run", EXP, "--quiet")
    assert proc.returncode == 0, proc.stderr
    return prefix


def _is_svg(data: bytes) -> bool:
    return data.lstrip().startswith((b"<?xml", b"<svg")) and b"<svg" in data[:2048]


@pytest.mark.parametrize("fmt", ["svg", "pdf"])  # PNG: the default, below
def test_experiment_plot_formats(ran: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "images"
    code, doc, err = cli_json("-p", ran, "experiments", "plot", EXP, "-o", out, "--format", fmt, "--json")
    assert code == 0, err
    assert len(doc) == 1
    entry = doc[0]
    assert entry["status"] == "ok" and entry["format"] == fmt
    assert (entry["analyzer"], entry["result"], entry["plotter"]) == ("analysis", "scatter", "plotfx/scatter/1")
    path = Path(entry["path"])
    assert path == out / f"{IMAGE}.{fmt}"
    data = path.read_bytes()
    assert len(data) == entry["bytes"] > 100
    assert _is_svg(data) if fmt == "svg" else data.startswith(MAGIC[fmt])
    assert sorted(p.name for p in out.iterdir()) == [path.name]  # no temporary file left behind
    assert "scatter plotter: drawing" in err  # the plotter's prints go to stderr, not into the JSON


def test_default_format_and_plain_output(ran: Path, tmp_path: Path) -> None:
    proc = run_cli("-p", ran, "experiments", "plot", EXP, cwd=tmp_path)  # default folder: the current one
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / f"{IMAGE}.png"
    assert Path(proc.stdout.strip()).resolve() == path.resolve()  # the image's path on stdout
    assert path.read_bytes().startswith(MAGIC["png"])
    assert "PNG written by plotfx/scatter/1" in proc.stderr


def test_plotterparameter_chooses_plotter_and_parameters(ran: Path, tmp_path: Path) -> None:
    # plotfx/big_text/1 belongs to plotfx/textsvg/1 (not the first plotter of plot/scatter/1)
    code, doc, err = cli_json("-p", ran, "experiments", "plot", EXP, "-o", tmp_path,
                              "-p", "analysis.scatter,plotfx/big_text/1", "--json")
    assert code == 0, err
    entry = doc[0]
    assert (entry["plotter"], entry["plotterparameter"], entry["format"]) == (
        "plotfx/textsvg/1", "plotfx/big_text/1", "svg")
    svg = Path(entry["path"]).read_text()
    assert svg.count("<circle") == 5 and 'r="7"' in svg and 'cy="184"' in svg  # y = 16 for x = 4


def test_plotter_failure_is_reported_with_user_traceback(ran: Path, tmp_path: Path) -> None:
    proc = run_cli("-p", ran, "experiments", "plot", EXP, "-o", tmp_path, "-p", "scatter,plotfx/failing/1")
    assert proc.returncode == 1
    assert "plotter `plotfx/scatter/1' failed (user): ValueError: scatter plotter: failing on purpose" in proc.stderr
    assert 'File "plotters/plotfx/scatter/1.py"' in proc.stderr  # the user's frame, relative to the prefix
    assert "backbeat/" not in proc.stderr and "plotting.py" not in proc.stderr  # no internal frames
    assert list(tmp_path.iterdir()) == []


def test_format_mismatch_is_an_error(ran: Path, tmp_path: Path) -> None:
    proc = run_cli("-p", ran, "experiments", "plot", EXP, "-o", tmp_path, "--format", "pdf",
                   "-p", "scatter,plotfx/big_text/1")
    assert proc.returncode == 1
    assert "PDF was asked but the plotter returned SVG instead" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_plotter_timeout(ran: Path, tmp_path: Path) -> None:
    proc = run_cli("-p", ran, "experiments", "plot", EXP, "-o", tmp_path, "-p", "scatter,plotfx/slow_text/1",
                   "--timeout", "0.3", timeout=20)
    assert proc.returncode == 1
    # (how long it ran: the limit and the kill's delay, longer under load)
    assert re.search(r"failed \(timeout\): the plotter was killed after exceeding its time limit of 0\.3 s \(it ran \d+\.\d s\)",
                     proc.stderr), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_matplotlib_gets_a_hint(ran: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "matplotlib.py").write_text("raise ModuleNotFoundError(\"No module named 'matplotlib'\", "
                                        "name='matplotlib')\n")
    proc = run_cli("-p", ran, "experiments", "plot", EXP, "-o", tmp_path / "out", env={"PYTHONPATH": str(fake)})
    assert proc.returncode == 1, proc.stderr
    assert "No module named 'matplotlib'" in proc.stderr
    assert "pip install 'backbeat[plot]'" in proc.stderr
    assert "Traceback" in proc.stderr and "backbeat/" not in proc.stderr


def test_plotters_plot_input_data(ran: Path, tmp_path: Path) -> None:
    data = tmp_path / "points.json"
    data.write_text(json.dumps({"label": "line", "x": [0, 1, 2], "y": [2, 1, 0]}))
    out = tmp_path / "img.pdf"
    code, doc, err = cli_json("-p", ran, "plotters", "plot", "plotfx/scatter/1", "--input-data", data,
                              "-o", out, "-P", "plotfx/red/1", "--json")
    assert code == 0, err
    assert doc[0]["status"] == "ok" and doc[0]["path"] == str(out)
    assert out.read_bytes().startswith(MAGIC["pdf"])


def test_plotters_plot_bad_input(ran: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad.json"
    data.write_text(json.dumps({"x": [0, 1]}))
    proc = run_cli("-p", ran, "plotters", "plot", "plotfx/scatter/1", "--input-data", data)
    assert proc.returncode == 1
    assert "the input data is not a value of `plot/scatter/1'" in proc.stderr
    assert "missing attributes (label, y)" in proc.stderr
    data.write_text("{not json")
    proc = run_cli("-p", ran, "plotters", "plot", "plotfx/scatter/1", "--input-data", data)
    assert proc.returncode == 1 and "invalid JSON" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("-p", ran, "plotters", "plot", "plotfx/scatter/1", "--input-data", tmp_path / "nope.json")
    assert proc.returncode == 2 and "cannot read the input data" in proc.stderr
    data.write_text(json.dumps({"label": "l", "x": [0.5], "y": [1]}))
    proc = run_cli("-p", ran, "plotters", "plot", "plotfx/scatter/1", "--input-data", data, "-P", "plotfx/big_text/1")
    assert proc.returncode == 2 and "is for plotter `plotfx/textsvg/1', not `plotfx/scatter/1'" in proc.stderr
    proc = run_cli("-p", ran, "plotters", "plot", "plotfx/scatter/1", "--input-data", data, "-o", tmp_path / "a.png",
                   "--format", "svg")
    assert proc.returncode == 2 and "has a .png extension but --format svg was asked" in proc.stderr


@pytest.mark.parametrize(("args", "code", "message"), [
    (["user/user/none/1/nope"], 1, "Experiment declaration file not found"),
    (["not a name"], 2, "not a name"),
    ([EXP.replace("base", "simple")], 1, "has no plot results"),
    ([EXP, "-p", "scatter"], 2, "expected RESULT,PLOTTERPARAMETER"),
    ([EXP, "-p", "nothing,plotfx/red/1"], 2, "has no plot result 'nothing'"),
    ([EXP, "-p", "scatter,plotfx/unknown/1"], 1, "plotfx/unknown/1"),
    ([EXP, "--format", "gif"], 2, "invalid choice"),
])
def test_experiments_plot_errors(ran: Path, tmp_path: Path, args: list, code: int, message: str) -> None:
    proc = run_cli("-p", ran, "experiments", "plot", *args, "-o", tmp_path)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_cached_results(tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    shutil.copytree(PLOT_PREFIX, prefix, ignore=shutil.ignore_patterns("cache", "__pycache__"))
    proc = run_cli("-p", prefix, "experiments", "plot", EXP, "-o", tmp_path / "out")
    assert proc.returncode == 1
    assert "has no cached results" in proc.stderr and "run it first" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_sniff_and_choices() -> None:
    assert sniff(b"\x89PNG\r\n\x1a\nrest") == "png"
    assert sniff(b"%PDF-1.4") == "pdf"
    assert sniff(b'<?xml version="1.0"?>\n<svg xmlns="x"/>') == "svg"
    assert sniff(b"  <svg/>") == "svg"
    assert sniff(b"\xff\xd8\xff\xe0") == "jpg"
    assert sniff(b"[1, 2]") is None
    assert parse_choices(["a,u/p/1", " an.b , u/q/2 "]) == {"a": "u/p/1", "an.b": "u/q/2"}
    with pytest.raises(UsageError):
        parse_choices([",u/p/1"])
