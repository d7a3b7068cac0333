"""``experiments provenance|status|audit`` and ``audit RECORD.json`` through the real CLI.

The demo prefix is copied into a temporary folder and run once with ``backbeat experiments
run`` (module fixture); each test copies that prefix + cache and calls ``backbeat`` in
subprocesses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backbeat.provenance import records as provenance
from conftest import cli_command, cli_json, run_cli

ROOT = Path(__file__).resolve().parents[2]
NAME = "user/user/iris/1/iris"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    where = tmp_path_factory.mktemp("cli-audit")
    shutil.copytree(ROOT / "prefix", where / "prefix", ignore=shutil.ignore_patterns("cache"))
    code, rep, err = cli_json("-p", where / "prefix", "-c", where / "cache", "experiments", "run", NAME, "--json",
                              "-q")
    assert code == 0, err
    assert Path(rep["provenance"]).is_file()
    return where


@pytest.fixture
def world(base, tmp_path):
    shutil.copytree(base, tmp_path / "w")
    w = tmp_path / "w"
    return ["-p", str(w / "prefix"), "-c", str(w / "cache")], w


def _no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr


def test_provenance_json_human_and_prov(world):
    opts, _w = world
    code, rec, _ = cli_json(*opts, "experiments", "provenance", NAME, "--json")
    assert code == 0 and rec["format"] == "backbeat-provenance-2" and rec["experiment"] == NAME
    assert set(rec["blocks"]) == {"normaliser", "training", "scoring", "analysis"}
    proc = run_cli(*opts, "experiments", "provenance", NAME)
    assert proc.returncode == 0
    assert "data/iris.csv" in proc.stdout and f"key {rec['blocks']['training']['key']}" in proc.stdout
    code, prov, _ = cli_json(*opts, "experiments", "provenance", NAME, "--prov")
    assert code == 0 and {"entity", "activity", "agent", "used", "wasGeneratedBy"} <= set(prov)
    assert f"bb:block/{NAME}/training" in prov["activity"]


def test_status_names_the_change(world):
    opts, w = world
    code, st, _ = cli_json(*opts, "experiments", "status", NAME, "--json")
    assert code == 0 and {b["state"] for b in st["blocks"].values()} == {"cached"}
    exp = w / "prefix/experiments/user/user/iris/1/iris.json"
    exp.write_text(exp.read_text().replace('"shrinkage": 0.0', '"shrinkage": 0.25'))
    code, st, _ = cli_json(*opts, "experiments", "status", NAME, "--json")
    assert code == 0
    assert st["blocks"]["training"]["state"] == "stale"
    assert st["blocks"]["training"]["changes"] == ["parameter shrinkage: 0.0 -> 0.25"]
    proc = run_cli(*opts, "experiments", "status", NAME)
    assert proc.returncode == 0
    assert "training: STALE" in proc.stdout and "parameter shrinkage: 0.0 -> 0.25" in proc.stdout
    assert "/blocks/training/parameters/shrinkage: 0.0 -> 0.25" in proc.stdout


def test_audit_ok_then_mismatch(world):
    opts, w = world
    code, res, _ = cli_json(*opts, "experiments", "audit", NAME, "--json")
    assert code == 0 and res["ok"] and res["mismatches"] == []
    proc = run_cli(*opts, "experiments", "audit", NAME)
    assert proc.returncode == 0 and "audit OK" in proc.stdout
    lib = w / "prefix/libraries/user/linalg/1.py"
    lib.write_text(lib.read_text() + "\n# changed\n")
    code, res, _ = cli_json(*opts, "experiments", "audit", NAME, "--json")
    assert code == 1 and not res["ok"]
    assert res["mismatches"][0] == {"kind": "asset", "subject": "libraries/user/linalg/1",
                                    "message": "libraries/user/linalg/1: code changed"}
    proc = run_cli(*opts, "experiments", "audit", NAME)
    assert proc.returncode == 1 and "audit FAILED" in proc.stdout and "libraries/user/linalg/1: code changed" in proc.stdout


def test_audit_through_another_name_of_the_same_interpreter_is_ok(world):
    """Recorded through one name of the interpreter (``venv/bin/python``: ``sys.executable`` of
    ``python -m backbeat``), audited through another (``venv/bin/python3``: the ``backbeat``
    script's): the same interpreter, no environment mismatch (it reported one)."""
    opts, _w = world
    here = Path(sys.executable)
    other = next((here.with_name(n) for n in ("python3", "python") if n != here.name
                  and here.with_name(n).exists() and here.with_name(n).resolve() == here.resolve()), None)
    if other is None:
        pytest.skip(f"no other name of {here} in its folder")
    argv = [str(other), *cli_command(*opts, "experiments", "audit", NAME, "--json")[1:]]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout)["mismatches"] == [], proc.stdout + proc.stderr


def test_audit_rerun_reports_nondeterministic_block(world):
    opts, w = world
    code = w / "prefix/algorithms/user/normaliser_trainer/1.py"
    text = code.read_text()
    anchor = "mean, std = linalg.mean_std(samples)"
    assert anchor in text
    code.write_text(text.replace(anchor, anchor + "\n        std = std * (1 + numpy.random.random())"))
    assert run_cli(*opts, "experiments", "run", NAME, "-q").returncode == 0
    code, res, err = cli_json(*opts, "experiments", "audit", NAME, "--rerun", "--json", timeout=120)
    assert code == 1, err
    first = res["rerun"]["first_divergence"]
    assert first["block"] == "normaliser" and first["non_deterministic"] is True
    blocks = res["rerun"]["blocks"]  # (the analysis may not change: same classification)
    assert blocks["normaliser"] == blocks["training"] == blocks["scoring"] == "different"
    proc = run_cli(*opts, "experiments", "audit", NAME, "--rerun", timeout=120)
    assert proc.returncode == 1
    assert ("first diverging block on re-run: normaliser - block `normaliser' is non-deterministic: same inputs, "
            "different output(s) model") in proc.stdout


def test_audit_record_file(world, tmp_path):
    opts, w = world
    record = tmp_path / "received.json"
    code, rec, _ = cli_json(*opts, "experiments", "provenance", NAME, "--json")
    record.write_text(json.dumps(rec))
    fresh = tmp_path / "fresh"
    shutil.copytree(w / "prefix", fresh / "prefix")
    local = ["-p", str(fresh / "prefix"), "-c", str(fresh / "cache")]
    code, res, _ = cli_json(*local, "audit", record, "--json")
    assert code == 0 and res["ok"], res["mismatches"]
    view = fresh / "prefix/databases/iris/1.py"
    view.write_text(view.read_text() + "\n# another view\n")
    proc = run_cli(*local, "audit", record)
    assert proc.returncode == 1 and "databases/iris/1: code changed" in proc.stdout
    _no_traceback(proc)


@pytest.mark.parametrize("argv, code, message", [
    (["experiments", "status", "user/user/iris/1/nothing"], 1, "not found"),
    (["experiments", "audit", "not a name"], 2, ""),
    (["experiments", "provenance", "user/user/iris/1/iris_shrinkage"], 1, "no provenance record"),
    (["experiments", "audit", "user/user/iris/1/iris_shrinkage"], 1, "no provenance record"),
    (["audit", "{missing}"], 1, "cannot be read"),
    (["audit", "{notjson}"], 1, "is not valid JSON"),
    (["audit", "{notrecord}"], 1, "is not a backbeat provenance record"),
    (["audit", "{badkey}"], 1, "blocks/training/outputs/model/key is not a 64-digit hex key"),
])
def test_errors(world, tmp_path, argv, code, message):
    opts, w = world
    (tmp_path / "bad.json").write_text("{oops")
    rec = json.loads(provenance.record_path(w / "cache", NAME).read_text())
    rec["blocks"]["training"]["outputs"]["model"]["key"] = "../../../etc/passwd"
    (tmp_path / "badkey.json").write_text(json.dumps(rec))
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    files = {"missing": tmp_path / "nope.json", "notjson": tmp_path / "bad.json", "notrecord": tmp_path / "other.json",
             "badkey": tmp_path / "badkey.json"}
    argv = [a.format(**files) for a in argv]
    proc = run_cli(*opts, *argv)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert proc.stderr.strip() and proc.stdout == ""
    _no_traceback(proc)
