"""Provenance records, ``status`` and ``audit`` on real runs of the demo prefix.

One real run of the iris experiment is shared (module fixture); every test works on its own
copy of prefix + cache, tampers with one kind of input and checks that status/audit name it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import pytest

from backbeat.audit import audit
from backbeat.cache.backends import open_store
from backbeat.core import hashing
from backbeat.data import cachefile
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
    # the demo's root folder does not exist: the data next to the view code is manifested
    db = rec["databases"]["iris/1"]
    assert db["source"] == "code_folder" and db["folder"] == "databases/iris"
    csv = where / "prefix/databases/iris/data/iris.csv"
    assert db["files"] == {"data/iris.csv": {"size": csv.stat().st_size, "mtime_ns": csv.stat().st_mtime_ns,
                                             "sha256": hashing.hash_file_contents(csv)}}
    assert rec["order"] == ["normaliser", "training", "scoring", "analysis"]
    for name, b in rec["blocks"].items():
        assert b["status"] == "ran"
        assert hashing.key(b["kind"], b["pre_image"]) == b["key"] == rep["blocks"][name]["key"]
        assert b["statistics"]["wall_s"] > 0
        for o in b["outputs"].values():
            assert o["digest"] == cachefile.verify(where / "cache" / o["path"])
    # input digests are the upstream output digests / the view index digests
    tr = rec["blocks"]["training"]
    assert tr["inputs"]["normaliser"]["digest"] == rec["blocks"]["normaliser"]["outputs"]["model"]["digest"]
    assert tr["inputs"]["measurements"]["digest"] == rec["datasets"]["train"]["index_digest"]
    for ds in rec["datasets"].values():
        assert hashing.key("dataset-index", ds["index_pre_image"]) == ds["index_key"]
        for o in ds["outputs"].values():
            assert hashing.key("dataset-output", o["pre_image"]) == o["key"]
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
    doc = provenance.to_prov(rec)
    ids = set(doc["entity"]) | set(doc["activity"])
    for u in doc["used"].values():
        assert u["prov:activity"] in doc["activity"] and u["prov:entity"] in ids
    for g in doc["wasGeneratedBy"].values():
        assert g["prov:entity"] in doc["entity"] and g["prov:activity"] in doc["activity"]
    out = rec["blocks"]["scoring"]["outputs"]["scores"]
    assert doc["entity"][f"bb:output/{out['key']}"]["bb:digest"] == out["digest"]
    assert "bb:file/iris/1/data/iris.csv" in doc["entity"]


def test_stat_cache_avoids_rehashing(tmp_path):
    data = tmp_path / "root"
    (data / "sub").mkdir(parents=True)
    (data / "a.bin").write_bytes(b"a" * 100)
    (data / "sub" / "b.txt").write_text("b")
    old = 1_600_000_000
    for p in (data / "a.bin", data / "sub" / "b.txt"):
        os.utime(p, (old, old))
    sc = manifests.StatCache(tmp_path / "stat.json")
    m1 = manifests.manifest(data, sc)
    sc.save()
    assert set(m1) == {"a.bin", "sub/b.txt"} and sc.hashed == 2
    sc2 = manifests.StatCache(tmp_path / "stat.json")
    assert manifests.manifest(data, sc2) == m1 and sc2.hashed == 0
    (data / "a.bin").write_bytes(b"b" * 100)  # same size, new time: re-hashed
    m3 = manifests.manifest(data, sc2)
    assert sc2.hashed == 1 and m3["a.bin"]["sha256"] == hashing.sha(b"b" * 100)


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
    assert change["database"] == "iris/1" and change["file"] == "data/iris.csv" and change["change"] == "changed"
    for b in st["blocks"].values():  # keys do not change (the index is cached), results are stale
        assert b["state"] == "stale" and b["key"] == b["recorded_key"]
        assert "database iris/1: file data/iris.csv changed (same size" in "\n".join(b["changes"])
    res = audit.audit(prefix, cache, NAME)
    assert [m["kind"] for m in res["mismatches"]] == ["data-file"]
    assert res["mismatches"][0]["subject"] == "iris/1:data/iris.csv"
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


def test_data_change_stays_stale_after_cached_run(world):
    """The index is reused (data files are not in keys): the new record must not hide the change."""
    prefix, cache = world
    csv = prefix / "databases/iris/data/iris.csv"
    csv.write_text(csv.read_text() + "5.0,3.0,1.5,0.2,setosa\n")
    rep = executor.run_experiment(prefix, cache, NAME)
    assert {b["status"] for b in rep["blocks"].values()} == {"cached"}
    st = audit.status(prefix, cache, NAME)
    assert st["data_files"] == []  # the latest record saw the new file...
    for b in st["blocks"].values():  # ...but every block was computed from the old one
        assert b["state"] == "stale"
        assert "database iris/1: file data/iris.csv changed (size 3858 -> 3881" in "\n".join(b["changes"])
    res = audit.audit(prefix, cache, NAME)
    assert {m["subject"] for m in res["mismatches"]} == {"normaliser", "training", "scoring", "analysis"}
    rep = executor.run_experiment(prefix, cache, NAME, executor.Options(force=True))
    st = audit.status(prefix, cache, NAME)
    assert {b["state"] for b in st["blocks"].values()} == {"cached"}


def test_root_folder_files_are_manifested(world, tmp_path):
    prefix, cache = world
    root = tmp_path / "iris-data"
    (root / "extra").mkdir(parents=True)
    shutil.copy(prefix / "databases/iris/data/iris.csv", root / "iris.csv")
    (root / "extra" / "README").write_text("not read by the view, still part of the database\n")
    _edit(prefix / "databases/iris/1.json", '"/backbeat/databases/iris"', json.dumps(str(root)))
    st = audit.status(prefix, cache, NAME)
    assert "root_folder" in "\n".join(st["datasets"]["train"])
    rep = executor.run_experiment(prefix, cache, NAME)
    assert rep["status"] == "ok"
    db = provenance.load(cache, NAME)["databases"]["iris/1"]
    assert db["source"] == "root_folder" and db["folder"] == str(root)
    assert set(db["files"]) == {"iris.csv", "extra/README"}
    (root / "extra" / "README").write_text("edited\n")
    st = audit.status(prefix, cache, NAME)
    assert st["blocks"]["normaliser"]["state"] == "stale"
    assert "database iris/1: file extra/README changed (size 49 -> 7" in _changes(st, "normaliser")


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
