"""The everyday commands through the real CLI (subprocesses): drawings, asset verbs, caches, config.

One module-scoped run of the demo iris experiment fills a cache; tests that delete from a cache
work on their own copy of that prefix.  ``HOME`` points at an empty folder so that no
``~/.backbeatrc`` of the machine leaks in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import RUN_PREFIX, run_cli

DEMO = Path(__file__).resolve().parents[2] / "prefix"
IRIS = "user/user/iris/1/iris"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


def bb(home: Path, *args, cwd: Path | None = None, env: dict | None = None):
    return run_cli(*args, cwd=cwd or home, env={"HOME": str(home), **(env or {})})


def bj(home: Path, *args, cwd: Path | None = None, env: dict | None = None):
    proc = bb(home, *args, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def ran(tmp_path_factory, home) -> Path:
    """A copy of the demo prefix whose cache holds a full run of the iris experiment."""
    prefix = tmp_path_factory.mktemp("ran") / "prefix"
    shutil.copytree(DEMO, prefix, ignore=shutil.ignore_patterns("cache", "__pycache__", ".beat"))
    proc = bb(home, "--prefix", prefix, "experiments", "run", "-q", IRIS)
    assert proc.returncode == 0, proc.stderr
    return prefix


@pytest.fixture
def own(ran, tmp_path) -> Path:
    """A private copy of the ran prefix (with its cache), for tests that change it."""
    dst = tmp_path / "prefix"
    shutil.copytree(ran, dst)
    return dst


def _corrupt(path: Path) -> None:
    """Change one stored number of a cache file behind the digest's back."""
    import h5py

    with h5py.File(path, "r+") as f:
        columns = []
        f["columns"].visititems(lambda name, obj: columns.append(obj) if isinstance(obj, h5py.Dataset) else None)
        ds = next(c for c in columns if c.dtype.kind in "fiu" and c.size > 0)
        values = ds[()]
        values.flat[0] += 1
        ds[...] = values


def _outputs(home: Path, prefix: Path) -> list[dict]:
    return bj(home, "-p", prefix, "experiments", "caches", IRIS, "--json")["outputs"]


# -- drawings ------------------------------------------------------------------------------------
def test_toolchain_draw_is_deterministic_dot(home, ran, tmp_path):
    first = bb(home, "-p", ran, "toolchains", "draw", "user/iris/1")
    second = bb(home, "-p", ran, "toolchains", "draw", "user/iris/1", "-o", tmp_path / "tc.dot")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    dot = first.stdout
    assert dot == (tmp_path / "tc.dot").read_text()
    assert dot.startswith('digraph "toolchains/user/iris/1" {')
    assert 'subgraph "cluster_train"' in dot and 'subgraph "cluster_test"' in dot
    assert '"train" [label="train", shape=cylinder]' in dot
    assert '"analysis" [label="analysis", shape=hexagon]' in dot
    assert '"training" -> "scoring" [label="model → lda", color="#1f77b4"]' in dot  # declared channel colour


def test_draw_svg_needs_graphviz(home, ran, tmp_path):
    # without `dot' on the PATH: a clear message, exit 1, no file
    proc = bb(home, "-p", ran, "toolchains", "draw", "user/iris/1", "-o", tmp_path / "tc.svg",
              env={"PATH": str(tmp_path)})
    assert proc.returncode == 1
    assert "Graphviz's `dot' program is not installed" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "tc.svg").exists()
    if shutil.which("dot"):
        proc = bb(home, "-p", ran, "toolchains", "draw", "user/iris/1", "-o", tmp_path / "tc.svg")
        assert proc.returncode == 0, proc.stderr
        assert "<svg" in (tmp_path / "tc.svg").read_text()


def test_draw_bad_input(home, ran, tmp_path):
    proc = bb(home, "-p", ran, "toolchains", "draw", "user/iris/1", "-o", tmp_path / "tc.txt")
    assert proc.returncode == 2 and "must end with one of .dot" in proc.stderr
    proc = bb(home, "-p", ran, "toolchains", "draw", "user/nope/1")
    assert proc.returncode == 1 and "not found" in proc.stderr
    proc = bb(home, "-p", ran, "experiments", "draw", "../../x")
    assert proc.returncode == 2 and "invalid experiment name" in proc.stderr
    proc = bb(home, "-p", ran, "experiments", "draw", IRIS, "--report", tmp_path / "missing.json")
    assert proc.returncode == 1 and "--report" in proc.stderr


def test_experiment_draw_states(home, ran, tmp_path):
    # the ran cache: every block cached, edges carry dataformats, algorithms on the nodes
    dot = bb(home, "-p", ran, "experiments", "draw", IRIS).stdout
    assert '"scoring" [label="scoring\\nuser/lda_scorer/1", shape=box, style=filled, fillcolor="#b8e0b0"' in dot
    assert '"training" -> "scoring" [label="user/lda_model/1"' in dot
    assert '"train" [label="train\\niris/1/train_test/train", shape=cylinder' in dot
    # an empty cache: datasets not indexed, so block keys (and states) are unknown
    proc = bb(home, "-p", ran, "-c", tmp_path / "empty", "experiments", "draw", IRIS)
    assert proc.returncode == 0, proc.stderr
    assert 'tooltip="cache state unknown"' in proc.stdout and "#b8e0b0" not in proc.stdout
    # a saved run report marks its failed blocks (cached blocks stay cached)
    report = tmp_path / "run.json"
    report.write_text(json.dumps({"blocks": {"analysis": {"status": "failed"}, "scoring": {"status": "failed"}}}))
    own_cache = tmp_path / "cache"
    shutil.copytree(ran / "cache", own_cache)
    scores = next(o for o in _outputs(home, ran) if o["block"] == "analysis")
    (own_cache / Path(scores["path"]).relative_to(ran / "cache")).unlink()
    dot = bb(home, "-p", ran, "-c", own_cache, "experiments", "draw", IRIS, "--report", report).stdout
    assert '"analysis" [label="analysis\\nuser/iris_analyzer/1", shape=hexagon, style=filled, ' \
           'fillcolor="#f4a3a3", tooltip="failed"]' in dot
    assert 'tooltip="failed"];\n    "scoring"' not in dot and dot.count('tooltip="failed"') == 1


def test_experiment_draw_failed_from_last_run(home, tmp_path):
    """Without --report, the failed blocks come from the last stored run record."""
    prefix = tmp_path / "run"
    shutil.copytree(RUN_PREFIX, prefix, ignore=shutil.ignore_patterns("cache", "__pycache__"))
    folder = prefix / "experiments" / "run" / "run" / "pipeline" / "1"
    decl = json.loads((folder / "base.json").read_text())
    decl["blocks"]["second"]["parameters"] = {"mode": "process"}
    (folder / "broken.json").write_text(json.dumps(decl))
    assert bb(home, "-p", prefix, "experiments", "run", "-q", "run/run/pipeline/1/broken").returncode == 1
    dot = bb(home, "-p", prefix, "experiments", "draw", "run/run/pipeline/1/broken").stdout
    states = {line.split('"')[1]: line.split('tooltip="')[1].split('"')[0]
              for line in dot.splitlines() if "tooltip=" in line}
    assert states == {"items": "cached", "first": "cached", "second": "failed", "analysis": "will run"}


def test_experiment_draw_with_loops(home, tmp_path):
    """Loop experiments are drawn (a loop is one diamond node)."""
    beat = Path(__file__).resolve().parents[1] / "fixtures" / "beat" / "prefix"
    proc = bb(home, "-p", beat, "-c", tmp_path / "cache", "experiments", "draw", "bb/bb/tc_loop/1/loop")
    assert proc.returncode == 0, proc.stderr
    assert '"loop" [label="loop\\nbb/proc/1 + bb/eval/1", shape=diamond' in proc.stdout


# -- experiments caches ------------------------------------------------------------------------------
def test_experiment_caches(home, own):
    outs = _outputs(home, own)
    assert [o["block"] for o in outs] == ["normaliser", "training", "scoring", "analysis"]
    assert all(o["exists"] and o["bytes"] > 0 and Path(o["path"]).is_file() for o in outs)
    listing = bb(home, "-p", own, "experiments", "caches", IRIS, "--list").stdout
    assert f"analysis.result: {outs[-1]['path']}" in listing
    # corrupt one file: --verify says so and exits 1
    victim = Path(outs[1]["path"])
    _corrupt(victim)
    proc = bb(home, "-p", own, "experiments", "caches", IRIS, "--verify")
    assert proc.returncode == 1
    assert "training.model" in proc.stdout and "corrupt" in proc.stdout.split("training.model")[1].splitlines()[0]
    # --delete removes every output, and the experiment has no results any more
    out = bj(home, "-p", own, "experiments", "caches", IRIS, "--delete", "--json")
    assert out["bytes_freed"] == sum(o["bytes"] for o in outs)
    assert not any(Path(o["path"]).exists() for o in outs)
    assert bb(home, "-p", own, "experiments", "results", IRIS).returncode == 1
    # mutually exclusive actions, unknown experiment, never-indexed datasets
    assert bb(home, "-p", own, "experiments", "caches", IRIS, "--list", "--delete").returncode == 2
    proc = bb(home, "-p", own, "experiments", "caches", "user/user/iris/1/nope")
    assert proc.returncode == 1 and "not found" in proc.stderr
    proc = bb(home, "-p", own, "-c", own / "nocache", "experiments", "caches", IRIS)
    assert proc.returncode == 1 and "never indexed" in proc.stderr


# -- cache ------------------------------------------------------------------------------------------
def test_cache_info_view_verify(home, own):
    info = bj(home, "-p", own, "cache", "info", "--json")
    assert info["outputs"] == 4 and info["indexes"] == 2 and info["bytes"] > 0
    result = _outputs(home, own)[-1]
    detail = bj(home, "-p", own, "cache", "info", result["key"], "--json")["files"][0]
    assert detail["dataformat"] == "analysis:user/iris_analyzer/1" and detail["units"] == 1
    view = bb(home, "-p", own, "cache", "view", result["path"], "--json")
    record = json.loads(view.stdout.splitlines()[0])
    assert record["start"] == 0 and record["data"]["flowers"] == 75
    index = sorted((own / "cache").glob("*/*/*/*.db"))[0]
    entries = [json.loads(line) for line in bb(home, "-p", own, "cache", "view", index, "--start", "1", "--end", "2",
                                                "--json").stdout.splitlines()]
    assert [e["entry"] for e in entries] == [1, 2] and set(entries[0]["data"]) == {"flower", "measurements", "species"}
    assert bj(home, "-p", own, "cache", "info", index, "--json")["files"][0]["entries"] == 75
    assert bb(home, "-p", own, "cache", "verify").returncode == 0
    # a corrupt output: verify exits 1 and names it; --delete removes it
    victim = Path(_outputs(home, own)[0]["path"])
    _corrupt(victim)
    proc = bb(home, "-p", own, "cache", "verify")
    assert proc.returncode == 1 and str(victim) in proc.stdout and "corrupt" in proc.stdout
    proc = bb(home, "-p", own, "cache", "verify", "--delete", "--json")
    assert proc.returncode == 1
    results = json.loads(proc.stdout)
    assert [r["path"] for r in results if r["status"] == "corrupt"] == [str(victim)] and not victim.exists()
    assert bb(home, "-p", own, "cache", "verify").returncode == 0
    # bad input
    proc = bb(home, "-p", own, "cache", "view", "0" * 64)
    assert proc.returncode == 1 and "neither a file nor the key" in proc.stderr
    assert bb(home, "-p", own, "cache", "view", "x", "--start", "-1").returncode == 2
    proc = bb(home, "-p", own, "-c", own / "nowhere", "cache", "info")
    assert proc.returncode == 1 and "does not exist" in proc.stderr


def test_cache_gc_and_clear(home, own):
    cache = own / "cache"
    needed = {Path(o["path"]) for o in _outputs(home, own)}
    garbage = cache / "ab" / "cd" / "ef" / ("0" * 58 + ".h5")
    garbage.parent.mkdir(parents=True)
    garbage.write_bytes(b"x" * 1000)
    stranger = cache / "notes.txt"
    stranger.write_text("not a cache entry")
    dry = bj(home, "-p", own, "cache", "gc", "--dry-run", "--json")
    assert dry["removed"] == [str(garbage)] and dry["bytes_freed"] == 1000 and garbage.exists()
    assert dry["unrecognised_files"] == [str(stranger)]
    proc = bb(home, "-p", own, "cache", "gc")
    assert proc.returncode == 0 and "1 file(s)" in proc.stdout and "1000 B" in proc.stdout
    assert not garbage.exists() and not (cache / "ab").exists() and stranger.exists()
    assert all(p.is_file() for p in needed)
    assert bb(home, "-p", own, "experiments", "results", IRIS).returncode == 0
    # an experiment removed from the prefix: its outputs become garbage
    (own / "experiments" / "user" / "user" / "iris" / "1" / "iris.json").unlink()
    gc = bj(home, "-p", own, "cache", "gc", "--json")
    removed = {p for p in map(Path, gc["removed"]) if p.suffix != ".json"}  # minus results' JSON summaries
    assert removed == needed - {Path(o["path"]) for o in _shared_outputs(home, own)}
    # clear: every entry goes, bookkeeping and unknown files stay
    out = bj(home, "-p", own, "cache", "clear", "--json")
    assert out["bytes_freed"] > 0 and stranger.exists() and (cache / ".locks").is_dir()
    assert bj(home, "-p", own, "cache", "info", "--json")["entries"] == 0


def _shared_outputs(home: Path, prefix: Path) -> list[dict]:
    """Outputs of the iris_shrinkage experiment (it shares the normaliser with iris)."""
    return bj(home, "-p", prefix, "experiments", "caches", "user/user/iris/1/iris_shrinkage", "--json")["outputs"]


# -- asset verbs ------------------------------------------------------------------------------------
def test_create_every_kind_is_valid(home, tmp_path):
    prefix = tmp_path / "new"
    prefix.mkdir()
    steps = [("dataformats", "u/example/1", "user/example/1", "plot/chart/1"), ("libraries", "u/lib/1"),
             ("algorithms", "u/copy/1"), ("toolchains", "u/tc/1"), ("protocoltemplates", "demo/1"),
             ("databases", "demo/1"), ("plotters", "u/chart/1"), ("plotterparameters", "u/chart/1")]
    for folder, *names in steps:
        proc = bb(home, "-p", prefix, folder, "create", *names)
        assert proc.returncode == 0, proc.stderr
        assert "note:" not in proc.stderr  # created in dependency order: valid at once
    assert (prefix / "algorithms" / "u" / "copy" / "1.py").is_file()
    reports = bj(home, "-p", prefix, "check", "--json")
    assert len(reports) == 10 and all(r["valid"] for r in reports), reports
    # the database prototype's view really runs
    proc = bb(home, "-p", prefix, "databases", "index", "demo/1")
    assert proc.returncode == 0 and "10 entries" in proc.stdout, proc.stderr
    # errors: existing asset, kind without prototype, bad name
    proc = bb(home, "-p", prefix, "algorithms", "create", "u/copy/1")
    assert proc.returncode == 1 and "already exists" in proc.stderr
    assert bb(home, "-p", prefix, "experiments", "create", "u/u/tc/1/x").returncode == 2
    proc = bb(home, "-p", prefix, "algorithms", "create", "../x/1")
    assert proc.returncode == 2 and "invalid algorithm name" in proc.stderr
    # an asset created before what it refers to: created, with a note
    proc = bb(home, "-p", prefix, "algorithms", "create", "w/copy/1")
    assert proc.returncode == 0 and "note:" in proc.stderr and "w/example/1" in proc.stderr


def test_version_fork_rm_diff(home, tmp_path):
    prefix = tmp_path / "p"
    shutil.copytree(DEMO, prefix, ignore=shutil.ignore_patterns("cache", "__pycache__", ".beat"))
    algo = prefix / "algorithms" / "user" / "lda_trainer"
    assert bj(home, "-p", prefix, "algorithms", "version", "user/lda_trainer/1", "--json")["name"] == \
        "user/lda_trainer/2"
    assert (algo / "2.json").read_bytes() == (algo / "1.json").read_bytes()
    assert (algo / "2.py").read_bytes() == (algo / "1.py").read_bytes()
    proc = bb(home, "-p", prefix, "algorithms", "diff", "user/lda_trainer/1", "2")
    assert proc.returncode == 0 and "are identical" in proc.stdout
    decl = json.loads((algo / "2.json").read_text())
    decl["description"] = "changed"
    (algo / "2.json").write_text(json.dumps(decl))
    with open(algo / "2.py", "a") as f:
        f.write("# tweak\n")
    proc = bb(home, "-p", prefix, "algorithms", "diff", "user/lda_trainer/1", "user/lda_trainer/2")
    assert '+    "description": "changed",' in proc.stdout and "+# tweak" in proc.stdout
    d = bj(home, "-p", prefix, "algorithms", "diff", "user/lda_trainer/1", "2", "--json")
    assert d["changes"] == [{"pointer": "/description", "change": "changed", "old": decl_old(algo),
                             "new": "changed"}] and d["code_changed"] and not d["identical"]
    # fork (experiments too), recorded as BEAT records it
    fork = bj(home, "-p", prefix, "experiments", "fork", IRIS, "user/user/iris/1/copy", "--json")
    assert fork["name"] == "user/user/iris/1/copy" and fork["files"][0].endswith("iris/1/copy.json")
    assert bb(home, "-p", prefix, "check", "experiments/user/user/iris/1/copy").returncode == 0
    selected = json.loads((prefix / ".beat" / "selected.json").read_text())
    assert selected["version"]["algorithm"] == {"user/lda_trainer/2": "user/lda_trainer/1"}
    assert selected["fork"]["experiment"] == {"user/user/iris/1/copy": IRIS}
    # rm keeps `~' backups, --purge does not; the bookkeeping forgets the asset
    removed = bj(home, "-p", prefix, "algorithms", "rm", "user/lda_trainer/2", "--json")
    assert removed[0]["backups"] == [str(algo / "2.json~"), str(algo / "2.py~")]
    assert not (algo / "2.json").exists() and (algo / "2.json~").is_file() and (algo / "2.py~").is_file()
    assert bb(home, "-p", prefix, "algorithms", "path", "user/lda_trainer/2").returncode == 1
    assert bb(home, "-p", prefix, "experiments", "rm", "--purge", "user/user/iris/1/copy").returncode == 0
    assert not list((prefix / "experiments" / "user" / "user" / "iris" / "1").glob("copy*"))
    selected = json.loads((prefix / ".beat" / "selected.json").read_text())
    assert selected["version"]["algorithm"] == {} and selected["fork"]["experiment"] == {}
    # errors
    proc = bb(home, "-p", prefix, "algorithms", "version", "user/nope/1")
    assert proc.returncode == 1 and "not found" in proc.stderr
    assert bb(home, "-p", prefix, "databases", "fork", "iris/1", "iris2/1").returncode == 2  # not forkable
    assert bb(home, "-p", prefix, "experiments", "version", IRIS).returncode == 2  # no versions
    proc = bb(home, "-p", prefix, "algorithms", "fork", "user/lda_trainer/1", "user/lda_scorer/1")
    assert proc.returncode == 1 and "already exists" in proc.stderr
    proc = bb(home, "-p", prefix, "algorithms", "diff", "user/lda_trainer/1", "9")
    assert proc.returncode == 1 and "user/lda_trainer/9" in proc.stderr
    (prefix / ".beat" / "selected.json").write_text("{oops")
    proc = bb(home, "-p", prefix, "algorithms", "version", "user/lda_trainer/1")
    assert proc.returncode == 1 and "selected.json" in proc.stderr and "Traceback" not in proc.stderr


def test_rm_says_who_still_uses_an_asset(home, tmp_path):
    prefix = tmp_path / "p"
    shutil.copytree(DEMO, prefix, ignore=shutil.ignore_patterns("cache", "__pycache__", ".beat"))
    trainer = prefix / "algorithms" / "user" / "lda_trainer"
    # --purge refuses an asset others use (nothing is deleted), naming them
    proc = bb(home, "-p", prefix, "algorithms", "rm", "--purge", "user/lda_trainer/1")
    assert proc.returncode == 1 and f"`user/lda_trainer/1' by experiments/{IRIS}" in proc.stderr, proc.stderr
    assert (trainer / "1.json").is_file() and (trainer / "1.py").is_file()
    proc = bb(home, "-p", prefix, "dataformats", "rm", "--purge", "user/iris_measurements/1")
    assert proc.returncode == 1 and "algorithms/user/normaliser_trainer/1" in proc.stderr
    assert "protocoltemplates/" in proc.stderr or "databases/iris/1" in proc.stderr
    # without --purge it is removed (backups kept) with a warning
    proc = bb(home, "-p", prefix, "algorithms", "rm", "user/lda_trainer/1")
    assert proc.returncode == 0, proc.stderr
    assert f"warning: algorithms/user/lda_trainer/1 is still used by experiments/{IRIS}" in proc.stderr
    assert (trainer / "1.json~").is_file()
    # names are all checked before anything is removed; --force purges a used asset
    proc = bb(home, "-p", prefix, "toolchains", "rm", "user/iris/1", "user/nope/1")
    assert proc.returncode == 1 and "not found" in proc.stderr
    assert (prefix / "toolchains" / "user" / "iris" / "1.json").is_file()
    done = bj(home, "-p", prefix, "toolchains", "rm", "--purge", "--force", "user/iris/1", "--json")
    assert f"experiments/{IRIS}" in done[0]["used_by"] and not (prefix / "toolchains" / "user" / "iris").exists()
    # a removed user (only its `~' backup left) no longer counts
    done = bj(home, "-p", prefix, "libraries", "rm", "user/linalg/1", "--json")
    assert done[0]["used_by"] == ["algorithms/user/lda_scorer/1", "algorithms/user/normaliser_trainer/1"]


def test_fork_an_experiment_onto_a_toolchain_that_does_not_exist(home, tmp_path):
    prefix = tmp_path / "p"
    shutil.copytree(DEMO, prefix, ignore=shutil.ignore_patterns("cache", "__pycache__", ".beat"))
    proc = bb(home, "-p", prefix, "experiments", "fork", IRIS, "user/user/irs/1/copy")
    assert proc.returncode == 1 and "toolchain `user/irs/1', which does not exist" in proc.stderr, proc.stderr
    assert "did you mean `user/iris/1'?" in proc.stderr
    assert not (prefix / "experiments" / "user" / "user" / "irs").exists()


def test_commands_work_from_inside_the_prefix(home, ran, tmp_path):
    """No -p: the prefix is ./prefix, a prefix/ of a parent folder, or the prefix one is in."""
    inside = ran / "algorithms" / "user"
    for cwd in (ran.parent, ran, inside):
        proc = bb(home, "algorithms", "list", cwd=cwd)
        assert proc.returncode == 0 and "user/lda_trainer/1" in proc.stdout, (cwd, proc.stderr)
    assert bb(home, "experiments", "results", IRIS, cwd=inside).returncode == 0  # and its cache
    shown = bj(home, "config", "show", "--json", cwd=inside)
    assert shown["prefix"] == str(ran) and shown["cache"] == str(ran / "cache")
    # .backbeatrc of a parent folder is read too (the nearest one)
    project = tmp_path / "project"
    (project / "src" / "deep").mkdir(parents=True)
    (project / ".backbeatrc").write_text(json.dumps({"prefix": str(ran)}))
    shown = bj(home, "config", "show", "--json", cwd=project / "src" / "deep")
    assert shown["prefix"] == str(ran) and shown["files"] == [str(project / ".backbeatrc")]
    # nothing found: the usual error
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = bb(home, "check", cwd=empty)
    assert proc.returncode == 2 and "prefix folder `prefix' does not exist" in proc.stderr


def test_database_view_refuses_unknown_outputs(home, ran):
    proc = bb(home, "-p", ran, "databases", "view", "iris/1/train_test/train", "--exclude", "nosuch,species")
    assert proc.returncode == 2 and "has no output `nosuch'" in proc.stderr and "Traceback" not in proc.stderr


def decl_old(algo: Path) -> str:
    return json.loads((algo / "1.json").read_text())["description"]


# -- configuration ----------------------------------------------------------------------------------
def test_config_files(home, ran, tmp_path):
    work, fake_home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    fake_home.mkdir()
    env = {"HOME": str(fake_home)}
    # ~/.backbeatrc gives the prefix; ./.backbeatrc overrides the cache; the option wins over both
    (fake_home / ".backbeatrc").write_text(json.dumps({"prefix": str(ran), "cache": "elsewhere", "user": "me"}))
    (work / ".backbeatrc").write_text(json.dumps({"cache": str(ran / "cache")}))
    shown = bj(home, "config", "show", "--json", cwd=work, env=env)
    assert shown["prefix"] == str(ran) and shown["cache"] == str(ran / "cache")
    assert shown["files"] == [str(fake_home / ".backbeatrc"), str(work / ".backbeatrc")]
    assert bb(home, "experiments", "results", IRIS, cwd=work, env=env).returncode == 0
    assert bj(home, "-c", work / "c2", "config", "show", "--json", cwd=work, env=env)["cache"] == str(work / "c2")
    (work / ".backbeatrc").unlink()
    assert bj(home, "config", "show", "--json", cwd=work, env=env)["cache"] == str(ran / "elsewhere")
    # bad files: named in a clear error, exit 1
    for text, message in (("{", "is not valid JSON"), ("[1]", "must hold a JSON object"),
                          ('{"colour": 1}', "unknown key `colour'"), ('{"prefix": 3}', "must be a non-empty"),
                          ('{"database/../x": "/d"}', "does not name a database"),
                          ('{"environments": ["x"]}', "`environments' must be an object"),
                          ('{"environments": {"Py/3": 3}}', "`environments/Py/3' must be a non-empty string"),
                          ('{"sandbox": "yes"}', "`sandbox' must be true, false or a list")):
        (work / ".backbeatrc").write_text(text)
        proc = bb(home, "check", cwd=work, env=env)
        assert proc.returncode == 1 and str(work / ".backbeatrc") in proc.stderr and message in proc.stderr, \
            (text, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_config_database_root(home, ran, tmp_path):
    """``database/<name>/<version>`` overrides the root folder the views read (and the index key)."""
    rows = (DEMO / "databases" / "iris" / "data" / "iris.csv").read_text().splitlines()
    small = [rows[0]] + [r for s in ("setosa", "versicolor", "virginica") for r in [x for x in rows if x.endswith(s)][:2]]
    data = tmp_path / "rawdata"
    data.mkdir()
    (data / "iris.csv").write_text("\n".join(small) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / ".backbeatrc").write_text(json.dumps({"database/iris/1": "../rawdata"}))
    cache = tmp_path / "cache"
    proc = bb(home, "-p", ran, "-c", cache, "databases", "index", "iris/1/train_test/train", cwd=work)
    assert proc.returncode == 0 and ": 3 entries (built)" in proc.stdout, proc.stderr
    assert bj(home, "-p", ran, "config", "show", "--json", cwd=work)["databases"] == {"iris/1": str(data)}
    proc = bb(home, "-p", ran, "-c", cache, "databases", "index", "iris/1/train_test/train")
    assert proc.returncode == 0 and ": 75 entries (built)" in proc.stdout, proc.stderr
