"""``experiments run A B|GLOB``, ``compare``, ``sweep``, ``history`` and ``provenance --run N``
through the real CLI (subprocesses), on copies of the demo prefix and of the run fixture.

The demo prefix is run once per module (``iris``: shrinkage 0.0, accuracy 0.96;
``iris_shrinkage``: 1.0, 0.9067) and swept once (shrinkage 0.25 and 0.5).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from conftest import RUN_PREFIX, cli_batch, cli_json, run_cli

DEMO = Path(__file__).resolve().parents[2] / "prefix"
IRIS = "user/user/iris/1/iris"
GLOB = "user/user/iris/1/*"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache", "__pycache__"))
    return dst


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo prefix, both experiments run with one command (a glob)."""
    pfx = _copy(DEMO, tmp_path_factory.mktemp("reports") / "prefix")
    code, doc, err = cli_json("-p", pfx, "experiments", "run", GLOB, "--json", "-q", timeout=120)
    assert code == 0, err
    assert [s["experiment"] for s in doc["summary"]] == [IRIS, IRIS + "_shrinkage"]
    assert doc["status"] == "ok" and [r["status"] for r in doc["experiments"]] == ["ok", "ok"]
    # the two experiments share their first block: computed once, reused by the second
    assert doc["summary"][0]["ran"] == 4 and doc["summary"][1]["cached"] == 1
    return pfx


def test_run_several_names_prints_one_summary(demo: Path) -> None:
    proc = run_cli("-p", demo, "experiments", "run", IRIS, IRIS + "_shrinkage", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "summary: 2 experiment(s), 2 ok, 0 failed" in proc.stdout
    assert f"  {IRIS}: ok (0 ran, 4 cached, 0 failed)" in proc.stdout
    proc = run_cli("-p", demo, "experiments", "run", "user/user/iris/1/nothing*", "-q")
    assert proc.returncode == 2 and "no experiment of prefix" in proc.stderr and "matches" in proc.stderr


def test_compare_json_csv_md(demo: Path) -> None:
    code, doc, err = cli_json("-p", demo, "experiments", "compare", GLOB, "--json")
    assert code == 0, err
    names = [(c["group"], c["name"]) for c in doc["columns"]]
    assert ("parameter", "training.shrinkage") in names and ("result", "analysis.accuracy") in names
    assert not any(g == "algorithm" for g, _n in names)  # equal in both: not a column…
    assert doc["same"]["algorithm training"] == "user/lda_trainer/1"  # …but listed as the same
    rows = {r["experiment"]: r for r in doc["rows"]}
    assert rows[IRIS]["values"]["training.shrinkage"] == 0.0
    assert rows[IRIS + "_shrinkage"]["values"]["training.shrinkage"] == 1.0
    assert rows[IRIS]["values"]["analysis.accuracy"] == pytest.approx(0.96)
    assert rows[IRIS + "_shrinkage"]["values"]["analysis.accuracy"] == pytest.approx(0.9067, abs=1e-4)
    assert rows[IRIS]["status"] == "ok" and rows[IRIS]["created"]

    proc = run_cli("-p", demo, "experiments", "compare", IRIS, IRIS + "_shrinkage", "--csv")
    assert proc.returncode == 0, proc.stderr
    table = list(csv.reader(io.StringIO(proc.stdout)))
    assert table[0][:4] == ["experiment", "status", "last run", "training.shrinkage"]
    assert [r[0] for r in table[1:]] == [IRIS, IRIS + "_shrinkage"]
    assert table[1][table[0].index("analysis.errors")] == "3"

    proc = run_cli("-p", demo, "experiments", "compare", GLOB, "--md")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("| experiment | status | last run | training.shrinkage |") and lines[1].startswith("|---|")
    assert len(lines) == 4

    proc = run_cli("-p", demo, "experiments", "compare", IRIS)  # one experiment: every column
    assert proc.returncode == 0 and "algorithm training" in proc.stdout and "0.96" in proc.stdout


def test_sweep_writes_valid_experiments_runs_them_and_compares(demo: Path) -> None:
    code, doc, err = cli_json("-p", demo, "experiments", "sweep", IRIS, "--set", "training.shrinkage=0.25,0.5",
                              "--run", "--json", "-q", timeout=120)
    assert code == 0, err
    swept = [IRIS + "_shrinkage-0_25", IRIS + "_shrinkage-0_5"]
    assert [e["name"] for e in doc["experiments"]] == swept
    assert [e["status"] for e in doc["experiments"]] == ["written", "written"]
    assert doc["run"]["status"] == "ok" and [s["experiment"] for s in doc["run"]["summary"]] == [IRIS, *swept]
    rows = {r["experiment"]: r["values"] for r in doc["comparison"]["rows"]}
    assert rows[swept[0]]["training.shrinkage"] == 0.25
    assert rows[swept[0]]["analysis.accuracy"] == pytest.approx(0.9733, abs=1e-4)
    decl = json.loads((demo / "experiments" / (swept[1] + ".json")).read_text())
    assert decl["blocks"]["training"]["parameters"] == {"shrinkage": 0.5}
    code, checked, _err = cli_json("-p", demo, "experiments", "check", *swept, "--json")
    assert code == 0 and all(c["valid"] for c in checked)

    # the same sweep again writes nothing; the table alone is printed (text)
    proc = run_cli("-p", demo, "experiments", "sweep", IRIS, "--set", "training.shrinkage=0.25,0.5", "--name",
                   "{name}_shrinkage-{shrinkage}")
    assert proc.returncode == 0, proc.stderr
    assert f"{swept[0]}: training.shrinkage=0.25 (unchanged)" in proc.stdout
    # a grid of two parameters of two blocks would multiply; --zip pairs them (one here)
    code, doc, _err = cli_json("-p", demo, "experiments", "sweep", IRIS, "--set", "training.shrinkage=0.75",
                               "--name", "zip{i}", "--zip", "--json")
    assert code == 0 and [e["name"] for e in doc["experiments"]] == ["user/user/iris/1/zip1"]
    assert doc["run"] is None and len(doc["comparison"]["rows"]) == 2


@pytest.mark.parametrize(("spec", "code", "message"), [
    ("training.nope=1", 2, "the algorithm of `training' has no parameter `nope' (parameters: shrinkage)"),
    ("nowhere.shrinkage=1", 2, "has no block `nowhere'"),
    ("training.shrinkage", 2, "expected BLOCK.PARAM=VALUE"),
    ("training.shrinkage=abc", 1, "/blocks/training/parameters/shrinkage: cannot convert value `abc'"),
])
def test_sweep_errors_name_the_problem_and_leave_nothing(demo: Path, spec: str, code: int, message: str) -> None:
    before = sorted(p.name for p in (demo / "experiments/user/user/iris/1").iterdir())
    proc = run_cli("-p", demo, "experiments", "sweep", IRIS, "--set", spec)
    assert proc.returncode == code and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (demo / "experiments/user/user/iris/1").iterdir()) == before


def test_history_and_provenance_of_run_n(tmp_path: Path) -> None:
    pfx = _copy(RUN_PREFIX, tmp_path / "prefix")
    name = "run/run/pipeline/1/base"
    assert run_cli("-p", pfx, "experiments", "run", name, "-q").returncode == 0
    path = pfx / "experiments" / (name + ".json")
    path.write_text(path.read_text().replace('"offset": 10', '"offset": 11'))
    assert run_cli("-p", pfx, "experiments", "run", name, "-q").returncode == 0

    code, hist, err = cli_json("-p", pfx, "experiments", "history", name, "--json")
    assert code == 0, err
    runs = hist["runs"]
    assert [r["run"] for r in runs] == [1, 2] and [r["status"] for r in runs] == ["ok", "ok"]
    assert runs[1]["changes"] is None and runs[1]["blocks"] == {"ran": 3}
    assert "block first: parameter /offset: 10 -> 11" in runs[0]["changes"]
    assert any(c.startswith(f"experiments/{name}: ") for c in runs[0]["changes"])
    assert runs[0]["results_digest"] != runs[1]["results_digest"]
    assert runs[0]["results"] == {"analysis.count": 6, "analysis.sum": 87}
    assert runs[1]["results"] == {"analysis.count": 6, "analysis.sum": 81}

    proc = run_cli("-p", pfx, "experiments", "history", name)
    assert proc.returncode == 0 and "run 2" in proc.stdout and "changed: block first: parameter /offset" in proc.stdout

    code, rec, _err = cli_json("-p", pfx, "experiments", "provenance", name, "--run", "2", "--json")
    assert code == 0 and rec["blocks"]["first"]["parameters"]["offset"] == 10
    code, rec, _err = cli_json("-p", pfx, "experiments", "provenance", name, "--run", "1", "--json")
    assert code == 0 and rec["blocks"]["first"]["parameters"]["offset"] == 11
    proc = run_cli("-p", pfx, "experiments", "provenance", name, "--run", "3")
    assert proc.returncode == 2 and "has 2 recorded run(s): --run must be 1 (the last) to 2" in proc.stderr


def test_provenance_shows_the_last_run_even_a_failed_one(tmp_path: Path) -> None:
    pfx = _copy(RUN_PREFIX, tmp_path / "prefix")
    name = "run/run/pipeline/1/base"
    assert run_cli("-p", pfx, "experiments", "run", name, "-q").returncode == 0
    path = pfx / "experiments" / (name + ".json")
    decl = json.loads(path.read_text())
    decl["blocks"]["second"]["parameters"] = {"mode": "process"}  # fails at its 3rd unit
    path.write_text(json.dumps(decl))
    base = ["-p", str(pfx), "experiments"]
    (failed, _, _), (code, out, err), (code2, text, _) = cli_batch([
        base + ["run", name, "-q"], base + ["provenance", name, "--json"], base + ["provenance", name]])
    assert failed == 1
    assert code == 0, err
    rec = json.loads(out)
    assert rec["status"] == "failed" and rec["blocks"]["second"]["status"] == "failed"
    assert code2 == 0 and text.startswith(f"experiment {name}: run of ") and "(failed)" in text.splitlines()[0]


def test_run_several_goes_on_after_a_failure(tmp_path: Path) -> None:
    pfx = _copy(RUN_PREFIX, tmp_path / "prefix")
    name = "run/run/pipeline/1/base"
    code, doc, err = cli_json("-p", pfx, "experiments", "sweep", name, "--set", 'second.mode=process,none',
                              "--run", "--json", "-q", timeout=120)
    assert code == 1, err
    status = {s["experiment"]: s["status"] for s in doc["run"]["summary"]}
    assert status == {name: "ok", name + "_mode-process": "failed", name + "_mode-none": "ok"}
    assert doc["run"]["summary"][1]["failed"] == 1
