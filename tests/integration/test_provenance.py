"""Provenance records, ``status`` and ``audit`` on real runs of the demo prefix.

One real run of the iris experiment is shared (module fixture); every test works on its own
copy of prefix + cache, tampers with one kind of input and checks that status/audit name it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from backbeat.audit import audit
from backbeat.cache.backends import open_store
from backbeat.core import hashing, statmemo
from backbeat.data import cachereader
from backbeat.execution import executors as executor
from backbeat.provenance import manifests
from backbeat.provenance import records as provenance

ROOT = Path(__file__).resolve().parents[2]
NAME = "user/user/iris/1/iris"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    where = tmp_path_factory.mktemp("prov-base")
    shutil.copytree(ROOT / "prefix", where / "prefix", ignore=shutil.ignore_patterns("cache"))
    rep = executor.run_experiment(where / "prefix", where / "cache", NAME, executor.Options(jobs=2))
    assert rep["status"] == "ok", {n: b.get("error") for n, b in rep["blocks"].items()}
    return where, rep


@pytest.fixture
def world(base, tmp_path):
    src, _rep = base
    shutil.copytree(src, tmp_path / "w")
    return tmp_path / "w" / "prefix", tmp_path / "w" / "cache"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _changes(st: dict, block: str) -> str:
    return "\n".join(st["blocks"][block]["changes"])


# -- the record ------------------------------------------------------------------------------
def test_record_has_everything(base):
    where, rep = base
    path = Path(rep["provenance"])
    assert path == provenance.record_path(where / "cache", NAME) and path.is_file()
    rec = provenance.load(where / "cache", NAME)
    assert rec == json.loads(path.read_text())
    assert rec["experiment"] == NAME and rec["status"] == "ok"
    kinds = {a["kind"] for a in rec["assets"].values()}
    assert kinds == {"experiment", "toolchain", "algorithm", "library", "database", "protocoltemplate", "dataformat"}
    algo = rec["assets"]["algorithms/user/lda_trainer/1"]
    code = where / "prefix/algorithms/user/lda_trainer/1.py"
    assert algo["code_hash"] == hashing.hash_file_contents(code)
    assert algo["hash"] == hashing.code_asset_hash(algo["declaration_hash"], algo["code_hash"])
    assert rec["format"] == "backbeat-provenance-2"
    # the demo's root folder does not exist: its view reads the data shipped next to its code,
    # and the data manifest (stored once in the cache, by digest) names exactly that file
    db = rec["databases"]["iris/1"]
    assert db["folders"]["code"] == "databases/iris" and db["root_folder"] == "/backbeat/databases/iris"
    csv = where / "prefix/databases/iris/data/iris.csv"
    digest = rec["datasets"]["train"]["data"]
    assert digest == rec["datasets"]["test"]["data"] and rec["datasets"]["train"]["data_summary"]["files"] == 1
    stored = open_store(where / "cache").manifests.path(digest)
    assert hashing.sha(stored.read_bytes()) == digest
    assert json.loads(stored.read_text())["files"] == {"code/data/iris.csv": {
        "size": csv.stat().st_size, "sha256": hashing.hash_file_contents(csv), "read_by": "index"}}
    assert rec["order"] == ["normaliser", "training", "scoring", "analysis"]
    for name, b in rec["blocks"].items():
        assert b["status"] == "ran"
        assert hashing.key(b["kind"], b["pre_image"]) == b["key"] == rep["blocks"][name]["key"]
        assert b["statistics"]["wall_s"] > 0
        for o in b["outputs"].values():
            assert o["digest"] == cachereader.verify(where / "cache" / o["path"])
    # input digests are the upstream output digests / what the dataset serves (its output key:
    # index content, data read, dataformat)
    tr = rec["blocks"]["training"]
    assert tr["inputs"]["normaliser"]["digest"] == rec["blocks"]["normaliser"]["outputs"]["model"]["digest"]
    assert tr["inputs"]["measurements"]["digest"] == rec["datasets"]["train"]["outputs"]["measurements"]["key"]
    for ds in rec["datasets"].values():
        assert hashing.key("dataset-index", ds["index_pre_image"]) == ds["index_key"]
        for o in ds["outputs"].values():
            assert hashing.key("dataset-output", o["pre_image"]) == o["key"]
            assert o["pre_image"]["data"] == ds["data"] and o["pre_image"]["index_content"] == ds["index_digest"]
    env = rec["environment"]
    assert env["backbeat"] and env["python"] and env["packages"]["numpy"] and env["platform"]


def test_history_and_cached_statistics(world):
    prefix, cache = world
    first = provenance.load(cache, NAME)
    rep = executor.run_experiment(prefix, cache, NAME)
    assert all(b["status"] == "cached" for b in rep["blocks"].values())
    assert len(list(provenance.history_folder(cache, NAME).glob("*.json"))) == 1
    hist = provenance.history(cache, NAME)
    assert [h["created"] for h in hist[1:]] == [first["created"]]
    latest = hist[0]
    b = latest["blocks"]["training"]
    assert b["status"] == "cached" and b["statistics"] == first["blocks"]["training"]["statistics"]
    assert b["statistics_from"] == first["created"]


def test_prov_json_export(base):
    rec = provenance.load(base[0] / "cache", NAME)
    doc = provenance.to_prov(rec, provenance.data_manifests(base[0] / "cache", rec))
    ids = set(doc["entity"]) | set(doc["activity"])
    for u in doc["used"].values():
        assert u["prov:activity"] in doc["activity"] and u["prov:entity"] in ids
    for g in doc["wasGeneratedBy"].values():
        assert g["prov:entity"] in doc["entity"] and g["prov:activity"] in doc["activity"]
    out = rec["blocks"]["scoring"]["outputs"]["scores"]
    assert doc["entity"][f"bb:output/{out['key']}"]["bb:digest"] == out["digest"]
    assert "bb:file/iris/1/code/data/iris.csv" in doc["entity"]
    assert f"bb:manifest/{rec['datasets']['train']['data']}" in doc["entity"]


def test_stat_memo_avoids_rehashing(tmp_path, monkeypatch):
    data = tmp_path / "root"
    (data / "sub").mkdir(parents=True)
    (data / "a.bin").write_bytes(b"a" * 100)
    (data / "sub" / "b.txt").write_text("b")
    stored = {"files": {"root/a.bin": {"read_by": "get"}, "root/sub/b.txt": {"read_by": "index"},
                        "root/gone": {"read_by": "get"}}, "folders": {"root/sub": {"read_by": "index"}}}
    where = {"root": str(data)}
    memo = statmemo.StatMemo(tmp_path / "memo.sqlite3")
    assert memo.digest(data / "a.bin") == hashing.sha(b"a" * 100) and memo.computed == 1
    memo.close()
    memo = statmemo.StatMemo(tmp_path / "memo.sqlite3")
    m1 = manifests.current(stored, where, memo)
    assert memo.computed == 3  # just written: racy, hashed again (and the listing of sub/)
    assert m1["files"]["root/gone"] == {"sha256": None, "size": None, "read_by": "get"}
    assert m1["folders"]["root/sub"]["entries"] == 1
    memo.close()
    monkeypatch.setattr(statmemo, "RACY_NS", -1)  # as if the files had been written long ago
    memo = statmemo.StatMemo(tmp_path / "memo.sqlite3")
    assert manifests.current(stored, where, memo) == m1 and memo.computed == 0
    (data / "a.bin").write_bytes(b"b" * 100)  # same size, new times: hashed again
    m3 = manifests.current(stored, where, memo)
    assert memo.computed == 1 and m3["files"]["root/a.bin"]["sha256"] == hashing.sha(b"b" * 100)
    assert [c["change"] for c in manifests.diff("db/1", m1, m3)] == ["changed"]
    assert manifests.index_changed(m1, m3) == []  # a file only get() reads: the index stands


_WITHOUT_SQLITE = """import sys
sys.modules["_sqlite3"] = None  # (as in a Python built without it: `import sqlite3` raises ImportError)
from backbeat.cli import entry
sys.argv[0] = "backbeat"
entry()
"""


def test_without_sqlite3_the_memo_only_computes(tmp_path):
    """The stat memo is imported lazily (perf-v); a Python without ``_sqlite3`` must still run and
    audit experiments, every digest computed (it raised ModuleNotFoundError at the run's end)."""
    shutil.copytree(ROOT / "prefix", tmp_path / "prefix", ignore=shutil.ignore_patterns("cache"))
    opts = ["-p", str(tmp_path / "prefix"), "-c", str(tmp_path / "cache")]
    env = dict(os.environ, BACKBEAT_TEMPLATE="off")
    for argv in (["experiments", "run", NAME], ["experiments", "run", NAME], ["experiments", "audit", NAME]):
        proc = subprocess.run([sys.executable, "-c", _WITHOUT_SQLITE, *opts, *argv], capture_output=True,
                              text=True, timeout=300, env=env)
        assert proc.returncode == 0 and "error" not in proc.stderr, (argv, proc.stdout, proc.stderr)
    assert not (tmp_path / "cache" / ".memo" / "stat.sqlite3").exists()


# -- status and audit, one tampered input at a time ------------------------------------------
def test_untouched_is_cached_and_audit_ok(world):
    prefix, cache = world
    st = audit.status(prefix, cache, NAME)
    assert {b["state"] for b in st["blocks"].values()} == {"cached"}
    assert st["assets"] == [] and st["data_files"] == []
    res = audit.audit(prefix, cache, NAME)
    assert res["ok"], res["mismatches"]
    assert all(v == "ok" for b in res["blocks"].values() for v in b["outputs"].values())


def test_declaration_change(world):
    prefix, cache = world
    _edit(prefix / "experiments/user/user/iris/1/iris.json", '"shrinkage": 0.0', '"shrinkage": 0.5')
    st = audit.status(prefix, cache, NAME)
    states = {n: b["state"] for n, b in st["blocks"].items()}
    assert states == {"normaliser": "cached", "training": "stale", "scoring": "stale", "analysis": "stale"}
    assert _changes(st, "training") == "parameter shrinkage: 0.0 -> 0.5"
    assert "upstream block `training'" in _changes(st, "scoring")
    (exp,) = st["assets"]
    assert exp["asset"] == "experiments/user/user/iris/1/iris" and exp["what"] == "declaration changed"
    assert exp["diff"] == ["/blocks/training/parameters/shrinkage: 0.0 -> 0.5"]
    res = audit.audit(prefix, cache, NAME)
    assert not res["ok"]
    kinds = {(m["kind"], m["subject"]) for m in res["mismatches"]}
    assert ("asset", "experiments/user/user/iris/1/iris") in kinds and ("key", "training") in kinds
    assert ("key", "normaliser") not in kinds
    assert res["blocks"]["training"]["changes"] == ["parameter shrinkage: 0.0 -> 0.5"]


def test_algorithm_code_change(world):
    prefix, cache = world
    code = prefix / "algorithms/user/lda_scorer/1.py"
    code.write_text(code.read_text() + "\n# a comment changes the code hash\n")
    st = audit.status(prefix, cache, NAME)
    assert st["blocks"]["training"]["state"] == "cached"
    assert st["blocks"]["scoring"]["state"] == "stale"
    assert _changes(st, "scoring") == "algorithms/user/lda_scorer/1: code changed"
    assert [a["asset"] for a in st["assets"]] == ["algorithms/user/lda_scorer/1"]
    res = audit.audit(prefix, cache, NAME)
    assert not res["ok"]
    assert {m["subject"] for m in res["mismatches"]} == {"algorithms/user/lda_scorer/1", "scoring", "analysis"}


def test_library_change(world):
    prefix, cache = world
    lib = prefix / "libraries/user/linalg/1.py"
    lib.write_text(lib.read_text() + "\nUNUSED = 1\n")
    st = audit.status(prefix, cache, NAME)
    for block in ("normaliser", "training", "scoring"):
        assert st["blocks"][block]["state"] == "stale"
        assert "libraries/user/linalg/1: code changed" in _changes(st, block)
    (change,) = st["blocks"]["analysis"]["changes"]
    old_key = provenance.load(cache, NAME)["blocks"]["scoring"]["outputs"]["scores"]["key"]
    new_key = st["blocks"]["scoring"]["key"]  # the job key; the output key is derived from it
    assert change.startswith(f"input scores (key {old_key[:12]} -> ") and new_key != old_key
    assert change.endswith("upstream block `scoring' (output scores) changed")
    res = audit.audit(prefix, cache, NAME)
    assert any(m["kind"] == "asset" and m["subject"] == "libraries/user/linalg/1" for m in res["mismatches"])


def test_database_view_change(world):
    prefix, cache = world
    view = prefix / "databases/iris/1.py"
    view.write_text(view.read_text() + "\n# edited view\n")
    st = audit.status(prefix, cache, NAME)
    assert {b["state"] for b in st["blocks"].values()} == {"stale"}
    assert st["datasets"]["train"][0] == "databases/iris/1: code changed"
    assert "must be rebuilt" in st["datasets"]["train"][1]
    assert "databases/iris/1: code changed" in _changes(st, "normaliser")
    res = audit.audit(prefix, cache, NAME)
    subjects = {(m["kind"], m["subject"]) for m in res["mismatches"]}
    assert {("asset", "databases/iris/1"), ("dataset", "train"), ("dataset", "test")} <= subjects
    assert res["blocks"]["normaliser"]["key"] == "unknown"


def test_data_file_change(world):
    prefix, cache = world
    csv = prefix / "databases/iris/data/iris.csv"
    _edit(csv, "5.1,3.5,1.4,0.2,setosa", "5.2,3.5,1.4,0.2,setosa")  # same size
    st = audit.status(prefix, cache, NAME)
    (change,) = st["data_files"]
    assert change["database"] == "iris/1" and change["file"] == "code/data/iris.csv" and change["change"] == "changed"
    message = "database iris/1: file data/iris.csv (next to the view code) changed (same size, sha256 c52742e50315 -> "
    assert change["message"].startswith(message)
    # the view's index() read it: the index must be rebuilt, so no key can be computed yet
    assert st["datasets"]["train"][0].startswith(message) and "must be rebuilt" in st["datasets"]["train"][-1]
    for b in st["blocks"].values():
        assert b["state"] == "stale" and b["key"] is None
    assert message in _changes(st, "normaliser")
    res = audit.audit(prefix, cache, NAME)
    assert [m["kind"] for m in res["mismatches"]] == ["data-file", "key", "key", "key", "key"]
    assert res["mismatches"][0]["subject"] == "iris/1:code/data/iris.csv"
    csv.unlink()
    st = audit.status(prefix, cache, NAME)
    assert st["data_files"][0]["change"] == "removed"


def test_cache_file_tampered(world):
    prefix, cache = world
    rec = provenance.load(cache, NAME)
    out = cache / rec["blocks"]["scoring"]["outputs"]["scores"]["path"]
    os.chmod(out, 0o644)
    with h5py.File(out, "r+") as f:
        ds = f["columns/value[]"]
        ds[0] = ds[0] + 1
    res = audit.audit(prefix, cache, NAME)
    assert not res["ok"]
    (m,) = res["mismatches"]
    assert m["kind"] == "cache-file" and m["subject"] == "scoring.scores" and "corrupted" in m["message"]
    # a cache file replaced by a different (valid) one: status sees the recorded digest differ
    with h5py.File(out, "r+") as f:
        f.attrs["digest"] = "0" * 64
    st = audit.status(prefix, cache, NAME)
    assert st["blocks"]["scoring"]["state"] == "stale"
    assert "cache file of output scores" in _changes(st, "scoring")
    assert st["blocks"]["training"]["state"] == "cached"


def test_rerun_finds_nondeterministic_block(world):
    prefix, cache = world
    code = prefix / "algorithms/user/normaliser_trainer/1.py"
    _edit(code, "mean, std = linalg.mean_std(samples)",
          "mean, std = linalg.mean_std(samples)\n        mean = mean + numpy.random.random()")
    rep = executor.run_experiment(prefix, cache, NAME)
    assert rep["status"] == "ok"
    res = audit.audit(prefix, cache, NAME, rerun=True)
    assert not res["ok"]
    first = res["rerun"]["first_divergence"]
    assert first["block"] == "normaliser" and first["non_deterministic"] and first["inputs"] == []
    assert "non-deterministic" in first["message"]
    assert res["rerun"]["blocks"]["training"] == "different"  # downstream differs too, because of its input
    assert any("because input(s) normaliser" in m["message"] for m in res["mismatches"])


def test_rerun_deterministic_ok(world):
    prefix, cache = world
    res = audit.audit(prefix, cache, NAME, rerun=True)
    assert res["ok"], res["mismatches"]
    assert set(res["rerun"]["blocks"].values()) == {"same"} and res["rerun"]["first_divergence"] is None


def test_foreign_record_against_local_prefix(world, tmp_path):
    prefix, cache = world
    rec = provenance.load(cache, NAME)
    other = tmp_path / "other"
    shutil.copytree(prefix, other / "prefix")
    res = audit.audit(other / "prefix", other / "cache", record=rec)
    assert res["ok"], res["mismatches"]
    assert any("not in this cache" in n for n in res["notes"])
    alg = other / "prefix/algorithms/user/iris_analyzer/1.py"
    alg.write_text(alg.read_text() + "\n")
    res = audit.audit(other / "prefix", other / "cache", record=rec)
    assert {m["subject"] for m in res["mismatches"]} == {"algorithms/user/iris_analyzer/1", "analysis"}


def test_status_without_record(world):
    prefix, cache = world
    shutil.rmtree(open_store(cache).records_folder)
    st = audit.status(prefix, cache, NAME)
    assert st["record"] is None and {b["state"] for b in st["blocks"].values()} == {"cached"}
    with pytest.raises(Exception, match="no provenance record"):
        audit.audit(prefix, cache, NAME)


def test_changed_data_re_runs_downstream_then_is_cached(world):
    """Data files a view read are part of the keys: a change re-runs what depends on it, once."""
    prefix, cache = world
    csv = prefix / "databases/iris/data/iris.csv"
    csv.write_text(csv.read_text() + "5.0,3.0,1.5,0.2,setosa\n")
    rep = executor.run_experiment(prefix, cache, NAME)
    assert {b["status"] for b in rep["blocks"].values()} == {"ran"}
    st = audit.status(prefix, cache, NAME)
    assert st["data_files"] == [] and {b["state"] for b in st["blocks"].values()} == {"cached"}
    assert audit.audit(prefix, cache, NAME)["ok"]
    rep = executor.run_experiment(prefix, cache, NAME)
    assert {b["status"] for b in rep["blocks"].values()} == {"cached"}


def test_only_files_the_view_reads_are_dependencies(world, tmp_path):
    prefix, cache = world
    root = tmp_path / "iris-data"
    (root / "extra").mkdir(parents=True)
    shutil.copy(prefix / "databases/iris/data/iris.csv", root / "iris.csv")
    (root / "extra" / "README").write_text("not read by the view\n")
    _edit(prefix / "databases/iris/1.json", '"/backbeat/databases/iris"', json.dumps(str(root)))
    st = audit.status(prefix, cache, NAME)
    assert "root_folder" in "\n".join(st["datasets"]["train"])
    rep = executor.run_experiment(prefix, cache, NAME)
    assert rep["status"] == "ok"
    rec = provenance.load(cache, NAME)
    assert rec["databases"]["iris/1"]["folders"]["root"] == str(root)
    manifest = manifests.load(open_store(cache), rec["datasets"]["train"]["data"])
    assert set(manifest["files"]) == {"root/iris.csv"}  # the README is never opened
    (root / "extra" / "README").write_text("edited\n")
    st = audit.status(prefix, cache, NAME)
    assert {b["state"] for b in st["blocks"].values()} == {"cached"} and st["data_files"] == []
    _edit(root / "iris.csv", "5.1,3.5,1.4,0.2,setosa", "5.2,3.5,1.4,0.2,setosa")
    st = audit.status(prefix, cache, NAME)
    assert st["blocks"]["normaliser"]["state"] == "stale"
    assert "database iris/1: file iris.csv changed (same size" in _changes(st, "normaliser")


def test_json_diff_is_readable():
    old = {"a": 1, "b": {"c": [1, 2]}, "gone": True}
    new = {"a": 1.0, "b": {"c": [1, 3]}, "new": "x"}
    assert audit.json_diff(old, new) == ["/a: 1 -> 1.0", "/b/c/1: 2 -> 3", "/gone: removed (was true)",
                                         '/new: added "x"']
    assert audit.json_diff([1], [1, 2]) == ["/: [1] -> [1, 2]"]


def test_package_versions_agree_with_importlib_metadata() -> None:
    from importlib import metadata

    from backbeat.provenance.builder import PACKAGES, package_versions

    found = package_versions((*PACKAGES, "no-such-package-anywhere"))
    for name in PACKAGES:
        try:
            expected = metadata.version(name)
        except metadata.PackageNotFoundError:
            expected = None
        assert found[name] == expected, name
    assert found["no-such-package-anywhere"] is None


def test_the_platform_of_the_record_is_pythons_without_running_a_program() -> None:
    import platform

    code = ("import sys; from backbeat.provenance.builder import environment; "
            "print(environment()['platform']); print('subprocess' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    name, imported = done.stdout.split()
    assert name == platform.platform() and imported == "False"


def test_older_records_and_summaries_are_never_misread(world):
    """A cache written by an earlier version: its records are shown but never compared with,
    its summaries (trusted on size and time alone) never used."""
    prefix, cache = world
    path = provenance.record_path(cache, NAME)
    old = json.loads(path.read_text())
    old["format"] = "backbeat-provenance-1"
    path.write_text(json.dumps(old))
    st = audit.status(prefix, cache, NAME)
    assert st["record"] is None and "older record format (backbeat-provenance-1)" in st["note"]
    assert "run the experiment again" in st["note"]
    with pytest.raises(Exception, match="older record format"):
        audit.audit(prefix, cache, NAME)
    with pytest.raises(Exception, match="older format"):
        provenance.read_record(path)
    result = cache / old["blocks"]["analysis"]["outputs"]["result"]["path"]
    st_result = result.stat()
    Path(f"{result}.json").write_text(json.dumps({"size": st_result.st_size, "mtime_ns": st_result.st_mtime_ns,
                                                  "records": [{"start": 0, "end": 74, "data": {"accuracy": 1.0}}]}))
    rep = executor.run_experiment(prefix, cache, NAME)
    assert rep["results"]["analysis"][0]["data"]["errors"] == 3  # from the verified result file
    assert [h["format"] for h in provenance.history(cache, NAME)] == ["backbeat-provenance-2",
                                                                    "backbeat-provenance-1"]
    assert audit.status(prefix, cache, NAME)["record"] is not None


def test_run_and_status_read_only_the_records_they_need(world, monkeypatch):
    prefix, cache = world
    history = provenance.history_folder(cache, NAME)
    history.mkdir(exist_ok=True)
    for i in range(15):
        shutil.copy(provenance.record_path(cache, NAME), history / f"2000010{i // 10}T00000{i % 10}000000Z-1.json")
    reads = []
    real = provenance.read_record
    monkeypatch.setattr(provenance, "read_record", lambda path, older=False: reads.append(path) or real(path, older))
    rep = executor.run_experiment(prefix, cache, NAME)
    assert {b["status"] for b in rep["blocks"].values()} == {"cached"} and len(reads) == 1
    reads.clear()
    assert {b["state"] for b in audit.status(prefix, cache, NAME)["blocks"].values()} == {"cached"}
    assert len(reads) == 1
