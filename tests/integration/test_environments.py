"""Execution environments: one experiment whose blocks run in two interpreters, shown in the
provenance record and by ``audit``; unmapped environments; ``environments list|check``; Dask.

The second interpreter is a venv made once for this module (``python -m venv --without-pip``)
with another numpy release installed into it by pip, and the running venv's other packages
(h5py, pyzmq, simplejson) on its path through a ``.pth`` file — a genuinely different
interpreter and package set.  The pipeline's ``second`` block is ``tests/fixtures/sandbox/npver.py``,
which writes numpy's minor version: the results say which interpreter ran it.
"""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from conftest import FIXTURES, RUN_PREFIX, cli_json, run_cli

EXP_DIR = Path("experiments/run/run/pipeline/1")
NAME = "run/run/pipeline/1/envs"
OTHER_ENV = {"name": "Other numpy", "version": "1"}
OTHER_NUMPY = "2.3.5" if not numpy.__version__.startswith("2.3.") else "2.2.6"


def _minor(version: str) -> int:
    return int(version.split(".")[1])


@pytest.fixture(scope="module")
def other_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with numpy OTHER_NUMPY (made once for the module)."""
    env = tmp_path_factory.mktemp("envs") / "other"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    lib = next((env / "lib").glob("python*")) / "site-packages"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(lib),
                          f"numpy=={OTHER_NUMPY}"], capture_output=True, text=True)
    if pip.returncode != 0:
        pytest.fail(f"cannot install numpy {OTHER_NUMPY} into the test venv: {pip.stderr[-2000:]}")
    (lib / "zz-running-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    dst = tmp_path / "prefix"
    shutil.copytree(RUN_PREFIX, dst, ignore=shutil.ignore_patterns("cache", "__pycache__"))
    algo = dst / "algorithms" / "run" / "npver"
    algo.mkdir()
    shutil.copy(FIXTURES / "sandbox" / "npver.py", algo / "1.py")
    shutil.copy(FIXTURES / "sandbox" / "npver.json", algo / "1.json")
    decl = json.loads((dst / EXP_DIR / "base.json").read_text())
    decl["blocks"]["second"] = {"algorithm": "run/npver/1", "inputs": {"value": "value"},
                                "outputs": {"out": "out"}, "environment": OTHER_ENV}
    (dst / EXP_DIR / "envs.json").write_text(json.dumps(decl, indent=4))
    return dst


def _rc(folder: Path, environments: dict) -> None:
    (folder / ".backbeatrc").write_text(json.dumps({"environments": environments}))


def test_one_experiment_two_interpreters_in_the_record_and_audit(prefix: Path, other_env: Path) -> None:
    work = prefix.parent
    _rc(work, {"Other numpy/1": str(other_env), "*": "default"})
    code, rep, err = cli_json("-p", prefix, "experiments", "run", NAME, "--json", cwd=work, timeout=120)
    assert code == 0, err
    # `second' wrote the minor version of the numpy it ran with: the other venv's
    assert rep["results"]["analysis"][0]["data"] == {"count": 6, "sum": 6 * _minor(OTHER_NUMPY)}
    code, record, err = cli_json("-p", prefix, "experiments", "provenance", NAME, "--json", cwd=work)
    first, second = record["blocks"]["first"]["runtime"], record["blocks"]["second"]["runtime"]
    assert first["packages"]["numpy"] == numpy.__version__ and first["interpreter"] == sys.executable
    assert second["packages"]["numpy"] == OTHER_NUMPY
    assert second["interpreter"] == str(other_env / "bin" / "python")
    assert second["environment"] == OTHER_ENV and not second["sandbox"]
    assert record["blocks"]["analysis"]["runtime"]["environment"] == {"name": "Python", "version": "3"}
    text = run_cli("-p", prefix, "experiments", "provenance", NAME, cwd=work).stdout
    assert f"environment Other numpy/1: {other_env / 'bin' / 'python'}" in text and f"numpy {OTHER_NUMPY}" in text

    code, audit, err = cli_json("-p", prefix, "experiments", "audit", NAME, "--json", cwd=work)
    assert code == 0 and audit["ok"], audit["mismatches"]
    # the environment now maps to the running interpreter: audit names the block and what changed
    _rc(work, {"*": "default"})
    code, audit, err = cli_json("-p", prefix, "experiments", "audit", NAME, "--json", cwd=work)
    assert code == 1
    assert [m["subject"] for m in audit["mismatches"]] == ["second"]
    assert audit["mismatches"][0]["kind"] == "environment"
    message = audit["mismatches"][0]["message"]
    assert f"numpy {OTHER_NUMPY} -> {numpy.__version__}" in message and f"now runs in {sys.executable}" in message
    # a re-run is cached (environments do not enter cache keys) and keeps the record of where it ran
    code, rep, err = cli_json("-p", prefix, "experiments", "run", NAME, "--json", cwd=work)
    assert rep["blocks"]["second"]["status"] == "cached"
    code, record, err = cli_json("-p", prefix, "experiments", "provenance", NAME, "--json", cwd=work)
    assert record["blocks"]["second"]["runtime"]["packages"]["numpy"] == OTHER_NUMPY


def test_an_unmapped_environment_is_an_error_naming_experiment_and_block(prefix: Path) -> None:
    (prefix / "environments.json").write_text(json.dumps({"Python/*": "default"}))  # the prefix's own mapping
    proc = run_cli("-p", prefix, "experiments", "run", NAME, cwd=prefix.parent)
    assert proc.returncode == 1
    assert f"block `second' of experiment `{NAME}' runs in environment `Other numpy/1'" in proc.stderr
    assert "environments.json" in proc.stderr and "Traceback" not in proc.stderr
    assert not (prefix / "cache").exists() or not list((prefix / "cache").rglob("*.h5"))


def test_environments_list_and_check(prefix: Path, other_env: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"  # an interpreter without backbeat's requirements
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    _rc(prefix.parent, {"Other numpy/1": str(other_env), "Bare/*": str(bare)})
    code, doc, err = cli_json("-p", prefix, "environments", "list", "--json", cwd=prefix.parent)
    assert code == 0
    entries = {e["pattern"]: e for e in doc["entries"]}
    assert entries["Other numpy/1"]["packages"]["numpy"] == OTHER_NUMPY and entries["Other numpy/1"]["ok"]
    declared = {d["environment"]: d for d in doc["declared"]}
    assert declared["Python/3"]["python"] is None and not declared["Python/3"]["ok"]  # unmapped
    assert declared["Other numpy/1"]["experiments"] == [NAME]
    proc = run_cli("-p", prefix, "environments", "check", cwd=prefix.parent)
    assert proc.returncode == 1
    assert "numpy>=2, h5py>=3.10, pyzmq>=25, simplejson>=3.19" in proc.stdout
    assert f"ok   Other numpy/1 -> {other_env}" in proc.stdout
    assert "Python/3: (no interpreter)" in proc.stdout
    # a block in an environment lacking backbeat's requirements fails at once, saying why
    _rc(prefix.parent, {"Other numpy/1": str(bare), "*": "default"})
    code, rep, err = cli_json("-p", prefix, "experiments", "run", NAME, "--json", cwd=prefix.parent)
    assert code == 1 and rep["blocks"]["first"]["status"] == "ran"
    message = rep["blocks"]["second"]["error"]["message"]
    assert f"its environment's interpreter ({bare / 'bin' / 'python'}) cannot run backbeat's block runtime" in message
    assert "cannot preload `numpy'" in message and "environments check" in message


def test_the_dask_executor_honours_environments(prefix: Path, other_env: Path) -> None:
    pytest.importorskip("distributed")
    _rc(prefix.parent, {"Other numpy/1": str(other_env), "*": "default"})
    code, rep, err = cli_json("-p", prefix, "experiments", "run", NAME, "--json", "--executor", "dask",
                              "--workers", "1", cwd=prefix.parent, timeout=180)
    assert code == 0, err
    assert rep["results"]["analysis"][0]["data"]["sum"] == 6 * _minor(OTHER_NUMPY)
    assert rep["blocks"]["second"]["runtime"]["packages"]["numpy"] == OTHER_NUMPY
