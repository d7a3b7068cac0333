"""Attestations through the real CLI: ``experiments export``, ``attest verify [--rerun]``, ``attest import``.

The demo prefix is run once and exported twice (with and without its raw data, module
fixture); every verification happens in a fresh folder holding nothing but the archive (and,
for some, a data folder), with real block processes for ``--rerun``.  Tampered archives are
made here with the standard library only (tarfile, json, hashlib) — which also shows that
the format is readable without backbeat.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import cli_batch, cli_json, run_cli

ROOT = Path(__file__).resolve().parents[2]
NAME = "user/user/iris/1/iris"
CSV = "iris/1/code/data/iris.csv"  # the demo's data file, as laid out in data/ and --data DIR


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_tar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def write_tar(path: Path, members: dict[str, bytes], reseal: bool = False) -> None:
    """Write members (manifest first); ``reseal``: recompute the manifest and its name, as a forger would."""
    if reseal:
        manifest = json.loads(members["manifest.json"])
        body = {n: b for n, b in members.items() if n not in ("manifest.json", "manifest.sha256")}
        manifest["members"] = {n: {"sha256": _sha(b), "size": len(b)} for n, b in sorted(body.items())}
        raw = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        members = {"manifest.json": raw, "manifest.sha256": f"{_sha(raw)}  manifest.json\n".encode(), **body}
    with tarfile.open(path, "w") as tar:
        for name in ["manifest.json", "manifest.sha256"] + sorted(set(members) - {"manifest.json", "manifest.sha256"}):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))


def edited(src: Path, dst: Path, change: Callable[[dict[str, bytes]], None], reseal: bool) -> Path:
    members = read_tar(src)
    change(members)
    write_tar(dst, members, reseal)
    return dst


def edit_json(members: dict[str, bytes], name: str, change: Callable[[dict], None]) -> None:
    doc = json.loads(members[name])
    change(doc)
    members[name] = json.dumps(doc, indent=2).encode()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    where = tmp_path_factory.mktemp("attest")
    shutil.copytree(ROOT / "prefix", where / "prefix", ignore=shutil.ignore_patterns("cache"))
    opts = ["-p", where / "prefix", "-c", where / "cache"]
    assert run_cli(*opts, "experiments", "run", NAME, "-q").returncode == 0
    code, bare, err = cli_json(*opts, "experiments", "export", NAME, "-o", where / "bare.tar", "--json")
    assert code == 0, err
    assert "--data DIR" in err  # says that the data is not in it
    code, full, err = cli_json(*opts, "experiments", "export", NAME, "-o", where / "full.tar", "--with-data", "--json")
    assert code == 0, err
    code, rec, _ = cli_json(*opts, "experiments", "provenance", NAME, "--json")
    return {"where": where, "bare": bare, "full": full, "record": rec}


def verify(archive: Path, *args: str | Path, cwd: Path, timeout: float = 120) -> tuple[int, dict]:
    code, res, err = cli_json("attest", "verify", archive, *args, "--json", cwd=cwd, timeout=timeout)
    assert "Traceback" not in err
    return code, res


def test_archive_is_plain_and_self_describing(made):
    """Readable with tarfile/json/hashlib: the name is the manifest's sha256, every member checks."""
    members = read_tar(made["where"] / "full.tar")
    names = list(members)
    assert names[:2] == ["manifest.json", "manifest.sha256"]
    assert members["manifest.sha256"].decode().split() == [made["full"]["attestation"], "manifest.json"]
    assert _sha(members["manifest.json"]) == made["full"]["attestation"]
    manifest = json.loads(members["manifest.json"])
    assert manifest["format"] == "backbeat-attestation-1" and manifest["with_data"] is True
    assert set(manifest["members"]) == set(names[2:])
    assert all(_sha(members[n]) == m["sha256"] and len(members[n]) == m["size"] for n, m in manifest["members"].items())
    att, rec = json.loads(members["attestation.json"]), made["record"]
    assert att["experiment"] == NAME and att["order"] == ["normaliser", "training", "scoring", "analysis"]
    # every asset with its BEAT hash and its files; dataformats transitively, the database, its template
    assert set(att["assets"]) == set(rec["assets"])
    lda = att["assets"]["algorithms/user/lda_trainer/1"]
    assert lda["hash"] == rec["assets"]["algorithms/user/lda_trainer/1"]["hash"]
    assert _sha(members[lda["members"]["code"]]) == lda["code_hash"]
    assert {"dataformats/user/lda_model/1", "databases/iris/1", "protocoltemplates/iris_train_test/1",
            "libraries/user/linalg/1", "toolchains/user/iris/1"} <= set(att["assets"])
    # keys, environments, the data manifest (relative paths, sizes, digests), the results
    assert att["blocks"]["training"]["key"] == rec["blocks"]["training"]["key"]
    assert att["blocks"]["training"]["environment"]["environment"] == {"name": "Python", "version": "3"}
    assert att["blocks"]["training"]["environment"]["runtime"]["packages"]["numpy"]
    csv = att["data"]["iris/1"]["files"]["code/data/iris.csv"]
    assert csv["member"] == f"data/{CSV}" and csv["sha256"] == _sha(members[f"data/{CSV}"])
    assert att["results"]["analysis"]["digest"] == rec["blocks"]["analysis"]["outputs"]["result"]["digest"]
    result = json.loads(members["results/analysis.json"])
    assert result["records"][0]["data"]["errors"] == 3
    assert json.loads(members["provenance.json"])["created"] == rec["created"]
    # the archive without data: the same but data/, hence another name
    bare = read_tar(made["where"] / "bare.tar")
    assert not any(n.startswith("data/") for n in bare) and made["bare"]["attestation"] != made["full"]["attestation"]


def test_verify_and_rerun_from_the_archive_alone(made, tmp_path):
    shutil.copy(made["where"] / "full.tar", tmp_path / "a.tar")
    code, res = verify(tmp_path / "a.tar", "--rerun", "--sandbox", "--expect", made["full"]["attestation"],
                       cwd=tmp_path)
    assert code == 0 and res["ok"], res["mismatches"]
    assert res["rerun"]["sandbox"] is True  # (untrusted code: re-run where it cannot reach beyond its folders)
    assert res["checked"]["assets"] == 14 and res["checked"]["keys"] >= 16 and res["checked"]["data_files"] == 1
    assert res["rerun"]["first_divergence"] is None and set(res["rerun"]["blocks"].values()) == {"same"}
    assert res["rerun"]["datasets"] == {"train": "same", "test": "same"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar"]  # nothing left behind
    (c0, out, _), (c1, expected, _) = cli_batch([["attest", "verify", str(tmp_path / "a.tar")],
                                                 ["attest", "verify", str(tmp_path / "a.tar"), "--expect", "0" * 64,
                                                  "--json"]])
    assert c0 == 0 and f"attestation {made['full']['attestation']}" in out and ": OK" in out
    assert c1 == 1 and json.loads(expected)["mismatches"][0]["kind"] == "name"


def test_verify_with_data_supplied_separately(made, tmp_path):
    archive = str(made["where"] / "bare.tar")
    good, bad, missing = (tmp_path / n for n in ("good", "bad", "missing"))
    for folder in (good, bad):
        (folder / CSV).parent.mkdir(parents=True)
        shutil.copy(ROOT / "prefix/databases/iris/data/iris.csv", folder / CSV)
    (bad / CSV).write_text((bad / CSV).read_text().replace("5.1,3.5,1.4", "5.9,3.5,1.4", 1))
    missing.mkdir()
    base = ["attest", "verify", archive]
    answers = cli_batch([base + ["--json"], base + ["--data", str(good), "--rerun", "--json"],
                         base + ["--data", str(bad), "--rerun", "--json"], base + ["--data", str(bad)],
                         base + ["--data", str(missing), "--json"], base + ["--rerun", "--json"]], timeout=180)
    (c0, o0, _), (c1, o1, e1), (c2, o2, _), (c3, o3, _), (c4, o4, _), (c5, o5, _) = answers
    res = json.loads(o0)  # no data at all: what can be checked is, and it says the data is not
    assert c0 == 0 and res["ok"] and any("raw data is not checked" in n for n in res["notes"])
    res = json.loads(o1)
    assert c1 == 0 and res["ok"] and res["rerun"]["first_divergence"] is None, (res["mismatches"], e1)
    assert res["checked"]["data_files"] == 1
    # tampered data: the file is named, and the re-run names the first block it changes, because of data
    res = json.loads(o2)
    first = res["mismatches"][0]
    assert c2 == 1 and first["kind"] == "data-file" and str(bad / CSV) in first["message"]
    assert "data/iris.csv (next to the view code) changed" in first["message"]
    div = res["rerun"]["first_divergence"]
    assert div["block"] == "normaliser" and div["cause"] == "data" and "data/iris.csv" in div["message"]
    assert c3 == 1 and "[data-file] database iris/1: file data/iris.csv" in o3
    assert "first diverging block" not in o3
    res = json.loads(o4)  # missing data: named too, with the layout expected
    assert c4 == 1 and "data/iris.csv" in res["mismatches"][0]["message"]
    assert any("laid out as" in n for n in res["notes"])
    # a re-run without the data: its views fail, and the blocks that never ran have no environment
    # of their own to compare (nothing reads as an environment difference)
    res = json.loads(o5)
    assert c5 == 1 and res["rerun"]["first_divergence"]["cause"] == "failed"
    assert set(res["rerun"]["blocks"].values()) == {"failed"} and res["rerun"]["environments"] == {}


def _code(m: dict[str, bytes]) -> None:
    m["prefix/algorithms/user/lda_trainer/1.py"] += b"\n# edited\n"


def _declaration(m: dict[str, bytes]) -> None:
    edit_json(m, "prefix/experiments/user/user/iris/1/iris.json",
              lambda d: d["blocks"]["training"]["parameters"].update(shrinkage=0.5))


def _result(m: dict[str, bytes]) -> None:
    edit_json(m, "results/analysis.json", lambda d: d["records"][0]["data"].update(errors=0))


def _h5(m: dict[str, bytes]) -> None:
    m["results/analysis.h5"] = (m["results/analysis.h5"].replace(b"key", b"kez", 1))


def _environment(m: dict[str, bytes]) -> None:
    edit_json(m, "attestation.json",
              lambda d: d["blocks"]["training"]["environment"]["runtime"]["packages"].update(numpy="1.0.0"))


def _manifest(m: dict[str, bytes]) -> None:
    edit_json(m, "manifest.json", lambda d: d.update(experiment="user/user/iris/1/other"))


def _data(m: dict[str, bytes]) -> None:
    m[f"data/{CSV}"] = m[f"data/{CSV}"].replace(b"5.1,3.5,1.4", b"5.9,3.5,1.4", 1)


def _record(m: dict[str, bytes]) -> None:
    edit_json(m, "provenance.json", lambda d: d["blocks"]["analysis"]["outputs"]["result"].update(digest="0" * 64))


def _malformed(m: dict[str, bytes]) -> None:
    edit_json(m, "provenance.json", lambda d: d["blocks"]["training"].update(outputs=7))


TAMPERING = [  # (id, change, reseal, kind, culprit named)
    ("record", _record, True, "result", "result file results/analysis.h5 holds content"),
    ("malformed-record", _malformed, True, "record", "provenance.json is not a well-formed record"),
    ("code", _code, False, "member", "member prefix/algorithms/user/lda_trainer/1.py: sha256"),
    ("code-resealed", _code, True, "asset",
     "algorithms/user/lda_trainer/1: code prefix/algorithms/user/lda_trainer/1.py has sha256"),
    ("declaration", _declaration, True, "asset", "/blocks/training/parameters/shrinkage: 0.0 -> 0.5"),
    ("result-json", _result, True, "result", "results/analysis.json does not hold the records of results/analysis.h5"),
    ("result-h5", _h5, True, "result", "result file results/analysis.h5 does not verify"),
    ("environment", _environment, True, "environment", "/blocks/training/environment/runtime/packages/numpy"),
    ("manifest", _manifest, False, "member", "manifest.json: its sha256"),
    ("data", _data, False, "member", f"member data/{CSV}: sha256"),
    ("data-resealed", _data, True, "data-file", "file data/iris.csv (next to the view code) changed"),
]


def test_tampering_is_reported_naming_the_culprit(made, tmp_path):
    """Each file of the archive changed (as is, or with the manifest recomputed as a forger would)."""
    archives = [edited(made["where"] / "full.tar", tmp_path / f"{case[0]}.tar", case[1], case[2]) for case in TAMPERING]
    answers = cli_batch([["attest", "verify", str(a), "--json"] for a in archives])
    for (what, _change, reseal, kind, culprit), (code, out, err) in zip(TAMPERING, answers, strict=True):
        res = json.loads(out)
        assert code == 1 and not res["ok"] and "Traceback" not in err, what
        assert any(m["kind"] == kind and culprit in m["message"] for m in res["mismatches"]), (what, res["mismatches"])
        if reseal:  # a consistent forgery is another attestation: its name differs
            assert res["attestation"] != made["full"]["attestation"], what


def test_resealed_code_change_is_traced_to_keys_and_to_the_first_block_on_rerun(made, tmp_path):
    def change(m: dict[str, bytes]) -> None:
        path = "prefix/algorithms/user/lda_trainer/1.py"
        m[path] = m[path].replace(b'float(parameters["shrinkage"])', b'float(parameters["shrinkage"]) + 0.5', 1)
    archive = edited(made["where"] / "full.tar", tmp_path / "t.tar", change, True)
    code, res = verify(archive, "--rerun", cwd=tmp_path)
    assert code == 1
    keys = [m for m in res["mismatches"] if m["kind"] == "key"]
    assert keys and keys[0]["subject"] == "training" and "algorithms/user/lda_trainer/1: code" in keys[0]["message"]
    assert {m["subject"] for m in keys} == {"training", "scoring", "analysis"}
    first = res["rerun"]["first_divergence"]
    assert first["block"] == "training" and first["cause"] == "code" and "algorithm hash" in first["message"]
    assert res["rerun"]["blocks"]["normaliser"] == "same"


def test_rerun_names_non_determinism_and_environment(made, tmp_path):
    """A block drawing unseeded random numbers: same inputs, other outputs; with a recorded
    environment other than the verifier's, the difference is blamed on the environment."""
    prefix = tmp_path / "prefix"
    shutil.copytree(made["where"] / "prefix", prefix)
    code = prefix / "algorithms/user/normaliser_trainer/1.py"
    anchor = "mean, std = linalg.mean_std(samples)"
    code.write_text(code.read_text().replace(anchor, anchor + "\n        std = std * (1 + numpy.random.random())"))
    opts = ["-p", prefix, "-c", tmp_path / "cache"]
    assert run_cli(*opts, "experiments", "run", NAME, "-q").returncode == 0
    assert run_cli(*opts, "experiments", "export", NAME, "-o", tmp_path / "r.tar", "--with-data").returncode == 0

    def older_numpy(m: dict[str, bytes]) -> None:
        def change(rec: dict) -> None:
            for b in rec["blocks"].values():  # (per block when the record keeps where each ran)
                if "runtime" in b:
                    b["runtime"]["packages"]["numpy"] = "1.0.0"
            rec["environment"]["packages"]["numpy"] = "1.0.0"
        edit_json(m, "provenance.json", change)
        edit_json(m, "attestation.json", lambda d: [b["environment"]["runtime"]["packages"].update(numpy="1.0.0")
                                                    for b in d["blocks"].values()])
    edited(tmp_path / "r.tar", tmp_path / "e.tar", older_numpy, True)
    (a, out_a, err_a), (e, out_e, err_e) = cli_batch([["attest", "verify", str(tmp_path / n), "--rerun", "--json"]
                                                       for n in ("r.tar", "e.tar")], timeout=180)
    res = json.loads(out_a)
    assert a == 1, err_a
    first = res["rerun"]["first_divergence"]
    assert first["block"] == "normaliser" and first["cause"] == "non-determinism", first
    res = json.loads(out_e)
    assert e == 1 and not [m for m in res["mismatches"] if m["kind"] != "rerun"], res["mismatches"]
    first = res["rerun"]["first_divergence"]
    assert first["block"] == "normaliser" and first["cause"] == "environment" and "numpy 1.0.0 ->" in first["message"]
    assert "numpy 1.0.0 ->" in res["rerun"]["environments"]["analysis"][0]


UNSAFE = [
    ("symlink", "is a symbolic link: refused"),
    ("traversal", "has an empty, `.' or `..' component"),
    ("absolute", "is an absolute path"),
    ("unlisted", "is not listed in manifest.json"),
    ("device", "is a device or fifo: refused"),
    ("not-a-tar", "cannot be read"),
    ("no-manifest", "its first member must be manifest.json"),
]


def _unsafe(members: dict[str, bytes], path: Path, what: str) -> Path:
    if what == "not-a-tar":
        path.write_bytes(b"not a tar file at all" * 100)
        return path
    if what == "no-manifest":
        with tarfile.open(path, "w") as tar:
            info = tarfile.TarInfo("attestation.json")
            info.size = len(members["attestation.json"])
            tar.addfile(info, io.BytesIO(members["attestation.json"]))
        return path
    write_tar(path, members)
    with tarfile.open(path, "a") as tar:
        info = tarfile.TarInfo({"symlink": "prefix/evil", "traversal": "prefix/../../evil", "absolute": "/tmp/evil",
                                "unlisted": "prefix/extra.json", "device": "prefix/dev"}[what])
        if what == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif what == "device":
            info.type = tarfile.CHRTYPE
        tar.addfile(info, io.BytesIO(b"") if what in ("traversal", "absolute", "unlisted") else None)
    return path


def test_unsafe_archives_are_refused(made, tmp_path):
    """Untrusted input: links, devices, paths leaving the folder, unlisted members, not a tar at all."""
    members = read_tar(made["where"] / "full.tar")
    paths = [_unsafe(members, tmp_path / f"bad-{what}.tar", what) for what, _m in UNSAFE]
    argvs = [argv for p in paths for argv in (["attest", "verify", str(p)],
                                              ["-p", str(tmp_path / "p"), "attest", "import", str(p)])]
    answers = iter(cli_batch(argvs))
    for (what, message), path in zip(UNSAFE, paths, strict=True):
        for code, out, err in (next(answers), next(answers)):
            assert code == 1 and message in err and path.name in err and out == "", (what, err)
            assert "Traceback" not in err
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


def test_import_into_fresh_and_conflicting_prefixes(made, tmp_path):
    archive = made["where"] / "full.tar"
    fresh = tmp_path / "fresh"
    code, res, err = cli_json("-p", fresh, "attest", "import", archive, "--json", cwd=tmp_path)
    assert code == 0, err
    assert len(res["added"]) == 14 and res["identical"] == [] and len(res["data_files"]) == 1
    # the imported prefix runs the experiment to the attested result (fork and extend from here)
    code, rep, err = cli_json("-p", fresh, "-c", tmp_path / "cache", "experiments", "run", NAME, "--json", "-q",
                              cwd=tmp_path)
    assert code == 0, err
    assert rep["results"]["analysis"][0]["data"]["errors"] == 3
    code, res, _ = cli_json("-p", fresh, "attest", "import", archive, "--json", cwd=tmp_path)
    assert code == 0 and res["added"] == [] and len(res["identical"]) == 14
    # a prefix whose algorithm of the same name has other code: refused, naming it; nothing written
    other = tmp_path / "other"
    shutil.copytree(ROOT / "prefix", other, ignore=shutil.ignore_patterns("cache", "experiments"))
    algo = other / "algorithms/user/lda_trainer/1.py"
    algo.write_text(algo.read_text() + "\n# mine\n")
    proc = run_cli("-p", other, "attest", "import", archive, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "algorithms/user/lda_trainer/1 (code differ)" in proc.stderr and "Nothing was imported" in proc.stderr
    assert not (other / "experiments").exists()


def test_export_takes_what_ran_and_refuses_what_does_not_match(made, tmp_path):
    """The prefix edited after the run: the code that ran (its snapshot) and the recorded declaration
    are exported; data changed since the run, or no successful record, are refused with the reason."""
    prefix = tmp_path / "prefix"
    shutil.copytree(made["where"] / "prefix", prefix)
    shutil.copytree(made["where"] / "cache", tmp_path / "cache")
    code = prefix / "algorithms/user/lda_trainer/1.py"
    ran = code.read_bytes()
    code.write_text(code.read_text() + "\n# edited after the run\n")
    decl = prefix / "algorithms/user/lda_trainer/1.json"
    decl.write_text(decl.read_text().replace('"splittable": false', '"splittable": true', 1))
    (prefix / "databases/iris/data/iris.csv").write_text("changed\n")
    opts = ["-p", str(prefix), "-c", str(tmp_path / "cache")]
    out = str(tmp_path / "a.tar")
    answers = cli_batch([[*opts, "experiments", "export", NAME, "-o", out, "--json"],
                         [*opts, "experiments", "export", NAME, "-o", str(tmp_path / "b.tar"), "--with-data"],
                         [*opts, "experiments", "export", "user/user/iris/1/iris_shrinkage", "-o", out],
                         ["attest", "verify", out, "--json"]])
    (c0, o0, e0), (c1, _o1, e1), (c2, _o2, e2), (c3, o3, _e3) = answers
    assert c0 == 0, e0
    assert read_tar(tmp_path / "a.tar")["prefix/algorithms/user/lda_trainer/1.py"] == ran
    assert any("lda_trainer/1: the prefix's declaration changed" in n for n in json.loads(o0)["notes"]), e0
    assert c3 == 0 and json.loads(o3)["ok"], o3
    assert c1 == 1 and "iris.csv' has sha256" in e1 and "changed since the recorded run" in e1
    assert not (tmp_path / "b.tar").exists()
    assert c2 == 1 and "no provenance record of experiment `user/user/iris/1/iris_shrinkage'" in e2


def test_plotters_of_the_results_are_attested(tmp_path):
    """Plotters (their plotterparameters, libraries) of an analyzer's plot results go with it, checked too."""
    shutil.copytree(ROOT / "tests/fixtures/plot/prefix", tmp_path / "prefix")
    opts = ["-p", str(tmp_path / "prefix"), "-c", str(tmp_path / "cache")]
    archive = tmp_path / "p.tar"
    name = "plotfx/plotfx/scatter/1/base"
    (c0, _o, e0), (c1, _o1, e1) = cli_batch([[*opts, "experiments", "run", name, "-q"],
                                            [*opts, "experiments", "export", name, "-o", str(archive)]])
    assert c0 == 0 and c1 == 0, e0 + e1
    plotting = json.loads(read_tar(archive)["attestation.json"])["plotting"]
    assert {"plotters/plotfx/scatter/1", "plotters/plotfx/textsvg/1", "plotterparameters/plotfx/red/1",
            "libraries/plotfx/svg/1"} <= set(plotting)

    def change(m: dict[str, bytes]) -> None:
        m["prefix/plotters/plotfx/textsvg/1.py"] += b"\n# edited\n"
    edited(archive, tmp_path / "t.tar", change, True)
    (c2, o2, _), (c3, o3, e3) = cli_batch([["attest", "verify", str(archive), "--json"],
                                          ["attest", "verify", str(tmp_path / "t.tar"), "--json"]])
    assert c2 == 0 and json.loads(o2)["ok"]
    assert c3 == 1 and any(m["kind"] == "asset" and m["subject"] == "plotters/plotfx/textsvg/1"
                           for m in json.loads(o3)["mismatches"]), o3
