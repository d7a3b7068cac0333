"""backbeat gives the results BEAT gives: every fixture experiment recorded with BEAT 1.13.

``tests/fixtures/exec/expected.json`` (and ``prefix/EXPECTED_RESULTS.json`` for the demo) hold
what BEAT's local executor produced (``tests/fixtures/exec/regenerate.sh``).  For every
experiment BEAT ran successfully, backbeat must produce the same analyzer results, the same
block outputs unit by unit, and BEAT's hashes for every block output and analyzer; floats are
compared with a tolerance matching float32.  Every experiment BEAT failed must fail here too.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from backbeat.cache.backends import open_store
from backbeat.core import jsonio
from backbeat.data import cachereader
from backbeat.declarations.catalog import Catalog
from backbeat.execution import executors as executor
from backbeat.planning.planner import plan

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {
    "exec": (ROOT / "tests/fixtures/exec/prefix", ROOT / "tests/fixtures/exec/expected.json"),
    "demo": (ROOT / "prefix", ROOT / "prefix/EXPECTED_RESULTS.json"),
}


def _load(source: str) -> dict:
    path = SOURCES[source][1]
    if not path.is_file():
        return {}
    return json.loads(path.read_text())["experiments"]


EXPECTED = {(source, label): rec for source in SOURCES for label, rec in _load(source).items()}
GOOD = sorted(k for k, rec in EXPECTED.items() if rec["status"] == "ok")
BAD = sorted(k for k, rec in EXPECTED.items() if rec["status"] != "ok")


def close(a, b, path: str = "") -> None:
    """Assert ``a`` (backbeat) equals ``b`` (BEAT), floats within float32 precision."""
    if isinstance(b, float) or isinstance(a, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), f"{path}: {a!r} != {b!r}"
        assert math.isclose(a, b, rel_tol=2e-6, abs_tol=1e-6), f"{path}: {a!r} != {b!r}"
    elif isinstance(b, dict):
        assert isinstance(a, dict) and sorted(a) == sorted(b), f"{path}: keys {a!r} != {b!r}"
        for k in b:
            close(a[k], b[k], f"{path}/{k}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), f"{path}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}/{i}")
    else:
        assert a == b and type(a) is type(b), f"{path}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One private copy of each fixture prefix and one cache per prefix (shared indexes)."""
    base = tmp_path_factory.mktemp("beat-results")
    spaces = {}
    for source, (prefix, _expected) in SOURCES.items():
        if not prefix.is_dir():
            continue
        dst = base / source
        shutil.copytree(prefix, dst, ignore=shutil.ignore_patterns("cache", "__pycache__", "*.json.bak"))
        spaces[source] = (dst, base / f"cache-{source}")
    return spaces


def records(path: Path) -> list[dict]:
    reader = cachereader.CacheReader(str(path), verify=True)
    try:
        return [{"start": int(s), "end": int(e), "data": jsonio.plain(v.as_dict())} for v, s, e in reader]
    finally:
        reader.close()


@pytest.mark.skipif(not GOOD, reason="no BEAT expected results recorded")
@pytest.mark.parametrize("source,label", GOOD, ids=[f"{s}:{lab}" for s, lab in GOOD])
def test_same_results_as_beat(workspace, source, label):
    expected = EXPECTED[(source, label)]
    prefix, cache = workspace[source]
    report = executor.run_experiment(prefix, cache, label, executor.Options(jobs=2))
    assert report["status"] == "ok", json.dumps(report["blocks"], indent=1)
    close(report["results"], expected["results"], "results")
    for name, block in expected.get("blocks", {}).items():
        got = report["blocks"][name]
        for output, out in block["outputs"].items():
            assert got["beat_hash"][output] == out["hash"], f"BEAT hash of {name}.{output}"
            if isinstance(out.get("records"), list):
                path = open_store(cache).output_path(got["outputs"][output])
                close(records(path), out["records"], f"{name}.{output}")
    for name, analyzer in expected.get("analyzers", {}).items():
        assert report["blocks"][name]["beat_hash"] == analyzer["hash"], f"BEAT hash of analyzer {name}"


@pytest.mark.skipif(not EXPECTED, reason="no BEAT expected results recorded")
@pytest.mark.parametrize("source,label", sorted(EXPECTED), ids=[f"{s}:{lab}" for s, lab in sorted(EXPECTED)])
def test_plan_matches_beat(source, label):
    """Execution order and BEAT's dataset, block-output and analyzer hashes, without running."""
    expected = EXPECTED[(source, label)]
    p = plan(Catalog(SOURCES[source][0]), label)
    if "order" in expected:
        assert [j.name for j in p.jobs] == expected["order"]
    for name, ds in expected.get("datasets", {}).items():
        assert p.datasets[name].beat_hash == ds["hash"], f"BEAT hash of dataset {name}"
    jobs = {j.name: j for j in p.jobs}
    for name, block in expected.get("blocks", {}).items():
        assert jobs[name].beat_hash == {o: out["hash"] for o, out in block["outputs"].items()}, name
    for name, analyzer in expected.get("analyzers", {}).items():
        assert jobs[name].beat_hash == analyzer["hash"], name


def failure_kind(label: str) -> str:
    """The failure kind of the fixture's failing experiments, from their names."""
    mode = label.rsplit("/", 1)[-1]
    if mode.startswith("fail_exit"):
        return "exit"
    if mode in ("fail_segv", "fail_sigkill"):
        return "signal"
    return "user"  # exceptions or False returned by user code, failing database views


@pytest.mark.skipif(not BAD, reason="no BEAT expected failures recorded")
@pytest.mark.parametrize("source,label", BAD, ids=[f"{s}:{lab}" for s, lab in BAD])
def test_fails_where_beat_fails(workspace, source, label):
    prefix, cache = workspace[source]
    report = executor.run_experiment(prefix, cache, label, executor.Options(jobs=2, timeout_s=20))
    assert report["status"] == "failed"
    assert report["results"] == {}
    failed = [n for n, b in report["blocks"].items() if b["status"] == "failed"]
    assert failed, report["blocks"]
    for name in failed:
        error = report["blocks"][name]["error"]
        assert error["message"], error
        assert error["kind"] == failure_kind(label), error
        assert str(prefix) not in json.dumps(error), error
    for name, block in report["blocks"].items():
        assert block["status"] in ("failed", "skipped", "ran"), (name, block)
