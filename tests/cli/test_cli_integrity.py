"""Nothing wrong is ever reused (issue 11): each attack that once left `cache verify` and
`experiments audit` saying OK, reproduced through the real CLI, and what happens now.

1. code edited while a run runs: the run executes the bytes it hashed;
2. an analyzer result summary edited: never printed, reported, rebuilt from the verified file;
3. a valid cache file copied under another key: refused, quarantined, recomputed;
4. a data file a view reads edited: its dataset's keys change, what depends on it re-runs;
5. many files in a root folder that the view never reads: they cost nothing, records stay small.

The run fixture prefix is copied and given a database whose view reads files (``samples/1``:
one item per file of ``ROOT/samples``, its value the number the file holds).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import RUN_PREFIX, cli_command, cli_json, run_cli

PIPELINE = "run/run/pipeline/1"
SAMPLES_VIEW = '''"""One item per file of ROOT/samples (sorted by name); its value is the number the file holds."""

import collections
import os

import numpy
from beat.backend.python.database import View

Entry = collections.namedtuple("Entry", ["name"])


class Samples(View):
    def __init__(self):
        super().__init__()
        self.output_member_map = {"value": "name"}  # one data unit per file

    def index(self, root_folder, parameters):
        folder = os.path.join(root_folder, "samples")
        return [Entry(n) for n in sorted(os.listdir(folder)) if n.endswith(".txt")]

    def get(self, output, index):
        with open(os.path.join(self.root_folder, "samples", self.objs[index].name)) as f:
            return {"value": numpy.int32(int(f.read()))}
'''


def _experiment(prefix: Path, name: str, blocks: dict, database: str = "counter/1") -> str:
    exp = json.loads((prefix / f"experiments/{PIPELINE}/base.json").read_text())
    exp["datasets"]["items"]["database"] = database
    for block, spec in blocks.items():
        exp["blocks"][block] = spec
    (prefix / f"experiments/{PIPELINE}/{name}.json").write_text(json.dumps(exp))
    return f"{PIPELINE}/{name}"


def _echo(offset: int, delay: float = 0.0) -> dict:
    return {"algorithm": "run/echo/1", "inputs": {"value": "value"}, "outputs": {"out": "out"},
            "parameters": {"offset": offset, "delay": delay}}


def _samples(prefix: Path, root: Path, values: list[int]) -> None:
    """Database ``samples/1`` reading ``root/samples/*.txt``."""
    folder = prefix / "databases/samples"
    folder.mkdir(parents=True)
    decl = json.loads((prefix / "databases/counter/1.json").read_text())
    decl["root_folder"] = str(root)
    decl["protocols"] = [{"name": "default", "template": "run_sets/1",
                          "views": {"items": {"view": "Samples", "parameters": {}}}}]
    (folder / "1.json").write_text(json.dumps(decl))
    (folder / "1.py").write_text(SAMPLES_VIEW)
    (root / "samples").mkdir(parents=True)
    for i, v in enumerate(values):
        (root / "samples" / f"{i:03d}.txt").write_text(f"{v}\n")


def _run(opts: list, name: str, *extra: str) -> dict:
    code, rep, err = cli_json(*opts, "experiments", "run", name, "--json", "-q", *extra)
    assert code == 0, (rep, err)
    return rep


def _sum(rep: dict) -> int:
    return rep["results"]["analysis"][0]["data"]["sum"]


@pytest.fixture
def world(copy_prefix, tmp_path):
    prefix = copy_prefix(RUN_PREFIX)
    return prefix, tmp_path / "cache", ["-p", str(prefix), "-c", str(tmp_path / "cache")]


# -- 1. code edited during a run -------------------------------------------------------------
def test_code_edited_during_a_run_is_not_what_runs(world):
    prefix, cache, opts = world
    name = _experiment(prefix, "slow", {"first": _echo(10, delay=0.3), "second": _echo(100)})
    code = prefix / "algorithms/run/echo/1.py"
    original = code.read_text()
    proc = subprocess.Popen(cli_command(*opts, "experiments", "run", name, "--json", "-q", "--no-stream", "-j", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not list(cache.glob("??/??/??/*.h5.tmp-*")):  # `first' is running: the run has hashed its code
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        code.write_text(original.replace("int(inputs[\"value\"].data.value), self.offset)",
                                         "int(inputs[\"value\"].data.value), self.offset + 1000)"))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        code.write_text(original)
    assert proc.returncode == 0, err
    rep = json.loads(out)
    # `second' started after the edit, yet ran the code the run hashed: 1..6 + 10 + 100
    assert [b["status"] for b in rep["blocks"].values()] == ["ran", "ran", "ran"]
    assert _sum(rep) == 21 + 6 * 110
    again = _run(opts, name)  # the code restored: same keys, and the cache holds the right results
    assert {b["status"] for b in again["blocks"].values()} == {"cached"} and _sum(again) == 21 + 6 * 110
    code, res, _ = cli_json(*opts, "experiments", "audit", name, "--json")
    assert code == 0 and res["ok"], res["mismatches"]
    # the snapshots run are in the cache, named by the sha256 of the hashed bytes
    rec = json.loads(Path(rep["provenance"]).read_text())
    snapshot = cache / "code" / rec["assets"]["algorithms/run/echo/1"]["code_hash"][:2]
    assert [p.read_text() for p in snapshot.iterdir()] == [original]


# -- 2. a result summary edited ----------------------------------------------------------------
def test_edited_result_summary_is_never_trusted(world):
    prefix, cache, opts = world
    name = f"{PIPELINE}/base"
    rep = _run(opts, name)
    assert _sum(rep) == 81
    assert not list(cache.glob("??/??/??/*.h5.json"))  # the run printed what its analyzer reported
    code, results, _ = cli_json(*opts, "experiments", "results", name, "--json")  # derived, verified: kept
    assert code == 0 and results["analysis"][0]["data"]["sum"] == 81
    (summary,) = cache.glob("??/??/??/*.h5.json")
    summary.write_text(summary.read_text().replace('"sum": 81', '"sum": 82'))
    code, checked, _ = cli_json(*opts, "cache", "verify", "--json")
    bad = [c for c in checked if c["status"] == "corrupt"]
    assert code == 1 and [c["path"] for c in bad] == [str(summary)] and "summary" in bad[0]["message"]
    code, res, _ = cli_json(*opts, "experiments", "audit", name, "--json")
    assert code == 1 and [m["subject"] for m in res["mismatches"]] == ["analysis.result"]
    assert "result summary" in res["mismatches"][0]["message"]
    code, results, _ = cli_json(*opts, "experiments", "results", name, "--json")
    assert code == 0 and results["analysis"][0]["data"]["sum"] == 81
    summary.write_text(summary.read_text().replace('"sum": 81', '"sum": 83'))
    rep = _run(opts, name)
    assert {b["status"] for b in rep["blocks"].values()} == {"cached"} and _sum(rep) == 81
    (incident,) = rep["incidents"]
    assert incident["block"] == "analysis" and "did not match its verified result file" in incident["message"]
    assert '"sum": 81' in summary.read_text()
    code, checked, _ = cli_json(*opts, "cache", "verify", "--json")
    assert code == 0 and {c["status"] for c in checked} == {"ok"}


# -- 3. a valid cache file under the wrong key -------------------------------------------------
def test_cache_file_under_another_key_is_quarantined(world):
    prefix, cache, opts = world
    name = _experiment(prefix, "twice", {"first": _echo(10), "second": _echo(100)})
    rep = _run(opts, name)
    assert _sum(rep) == 21 + 6 * 110
    first, second, analysis = (cache / rep["blocks"][b]["outputs"][o][:2] / rep["blocks"][b]["outputs"][o][2:4] /
                               rep["blocks"][b]["outputs"][o][4:6] / (rep["blocks"][b]["outputs"][o][6:] + ".h5")
                               for b, o in (("first", "out"), ("second", "out"), ("analysis", "result")))
    second.write_bytes(first.read_bytes())  # a valid file of the same dataformat, another key's
    analysis.unlink()  # so that the analysis must read `second' again
    code, checked, _ = cli_json(*opts, "cache", "verify", "--json")
    (bad,) = [c for c in checked if c["status"] == "corrupt"]
    assert code == 1 and bad["path"] == str(second) and "holds the output of key" in bad["message"]
    code, res, _ = cli_json(*opts, "experiments", "audit", name, "--json")
    assert code == 1 and "second.out" in {m["subject"] for m in res["mismatches"]}
    proc = run_cli(*opts, "experiments", "run", name)
    assert proc.returncode == 0, proc.stderr
    assert "second: cache entry not trusted" in proc.stderr and "holds the output of key" in proc.stderr
    rep = _run(opts, name)
    assert _sum(rep) == 21 + 6 * 110 and {b["status"] for b in rep["blocks"].values()} == {"cached"}
    (moved,) = (cache / ".quarantine").glob("*.h5")
    assert moved.read_bytes() == first.read_bytes() and "holds the output of key" in Path(f"{moved}.why").read_text()


# -- 4. a data file a view reads edited ------------------------------------------------------
def test_changed_data_file_changes_the_keys(world, tmp_path):
    prefix, cache, opts = world
    root = tmp_path / "data"
    _samples(prefix, root, [1, 2, 3, 4])
    (root / "README").write_text("never read by the view\n")
    name = _experiment(prefix, "files", {"first": _echo(0)}, database="samples/1")
    rep = _run(opts, name)
    assert _sum(rep) == 10
    (root / "README").write_text("edited: still never read\n")
    rep = _run(opts, name)
    assert {b["status"] for b in rep["blocks"].values()} == {"cached"}
    (root / "samples" / "002.txt").write_text("30\n")  # read by the view's get()
    code, st, _ = cli_json(*opts, "experiments", "status", name, "--json")
    assert code == 0 and {b["state"] for b in st["blocks"].values()} == {"stale"}
    (change,) = st["data_files"]
    assert change["file"] == "root/samples/002.txt" and change["message"].startswith(
        "database samples/1: file samples/002.txt changed (size 2 -> 3, sha256 ")
    assert change["message"] in "\n".join(st["blocks"]["first"]["changes"])
    rep = _run(opts, name)
    assert {b["status"] for b in rep["blocks"].values()} == {"ran"} and _sum(rep) == 37
    code, res, _ = cli_json(*opts, "experiments", "audit", name, "--json")
    assert code == 0 and res["ok"], res["mismatches"]
    (root / "samples" / "004.txt").write_text("5\n")  # a new file: the listing index() read changed
    code, st, _ = cli_json(*opts, "experiments", "status", name, "--json")
    assert "database samples/1: folder samples listing changed (4 -> 5 entries)" in st["datasets"]["items"]
    rep = _run(opts, name)
    assert _sum(rep) == 42


# -- 5. unread files in a root folder ----------------------------------------------------------
def test_unread_files_cost_nothing(world, tmp_path):
    prefix, cache, opts = world
    root = tmp_path / "data"
    _samples(prefix, root, [1, 2, 3])
    name = _experiment(prefix, "files", {"first": _echo(0)}, database="samples/1")
    sizes = []
    for n in (0, 2000):
        junk = root / "unread"
        junk.mkdir(exist_ok=True)
        for i in range(n):
            (junk / f"{i}.bin").write_bytes(b"x")
        rep = _run(opts, name)
        assert _sum(rep) == 6
        sizes.append(Path(rep["provenance"]).stat().st_size)
    assert rep["blocks"]["first"]["status"] == "cached"  # the unread files changed no key
    assert sizes[0] < 100_000 and abs(sizes[1] - sizes[0]) < 200  # (timestamps and timings vary)
    assert not list(cache.rglob("stat-cache.json"))
    with sqlite3.connect(cache / ".memo" / "stat.sqlite3") as db:
        (rows,) = db.execute("SELECT count(*) FROM memo WHERE path LIKE ?", (f"{root}/unread/%",)).fetchone()
    assert rows == 0
    manifests = list((cache / "manifests").rglob("*.json"))
    assert len(manifests) == 1 and "unread" not in manifests[0].read_text()
    assert set(json.loads(manifests[0].read_text())["files"]) == {f"root/samples/{i:03d}.txt" for i in range(3)}
    code, st, _ = cli_json(*opts, "experiments", "status", name, "--json")
    assert code == 0 and {b["state"] for b in st["blocks"].values()} == {"cached"}
    assert os.path.getsize(cache / ".memo" / "stat.sqlite3") < 200_000
