"""The ``backbeat`` command line end to end, in real subprocesses.

Exit codes: 0 success, 1 invalid input or failed run, 2 usage error.  No command may print
a Python traceback of backbeat itself.  Runs use ``tests/fixtures/run/prefix`` (see
``tests/integration/test_execution.py``) copied into ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from conftest import EXEC_PREFIX, cli_batch, cli_command, cli_json, run_cli

BASE = "run/run/pipeline/1/base"
RESULT = {"analysis": [{"start": 0, "end": 5, "data": {"count": 6, "sum": 81}}]}
ASSETS = {  # one asset per kind present in the run fixture, and its files
    "dataformats": ("run/int32/1", ["dataformats/run/int32/1.json"]),
    "libraries": ("run/util/1", ["libraries/run/util/1.json", "libraries/run/util/1.py"]),
    "algorithms": ("run/echo/1", ["algorithms/run/echo/1.json", "algorithms/run/echo/1.py"]),
    "protocoltemplates": ("run_sets/1", ["protocoltemplates/run_sets/1.json"]),
    "databases": ("counter/1", ["databases/counter/1.json", "databases/counter/1.py"]),
    "toolchains": ("run/pipeline/1", ["toolchains/run/pipeline/1.json"]),
    "experiments": (BASE, ["experiments/run/run/pipeline/1/base.json"]),
    "plotters": ("run/bars/1", ["plotters/run/bars/1.json", "plotters/run/bars/1.py"]),
    "plotterparameters": ("run/bars_wide/1", ["plotterparameters/run/bars_wide/1.json"]),
}

def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text
    assert "internal error" not in text, text


@pytest.fixture
def prefix(copy_prefix) -> Path:
    return copy_prefix()


# ----------------------------------------------------------------------------- declarations

def test_check_whole_prefix(prefix):
    proc = run_cli("-p", prefix, "check")
    assert proc.returncode == 0, proc.stderr
    for kind, (name, _files) in ASSETS.items():
        assert f"{kind}/{name}: ok" in proc.stdout
    assert "0 invalid" in proc.stderr


def test_check_json_shape(prefix):
    code, doc, _ = cli_json("-p", prefix, "check", "--json")
    assert code == 0
    assert isinstance(doc, list) and len(doc) == sum(1 for _ in prefix.rglob("*.json"))
    for item in doc:
        assert {"kind", "name", "valid", "errors", "hash"} <= set(item), item
        assert item["valid"] is True and item["errors"] == []
        assert isinstance(item["hash"], str) and len(item["hash"]) == 64
    assert {(i["kind"], i["name"]) for i in doc} == {(k, n) for k, (n, _f) in ASSETS.items()} | {
        ("algorithms", "run/faulty/1"), ("algorithms", "run/total/1"), ("toolchains", "run/short/1"),
        ("experiments", "run/run/short/1/base"), ("dataformats", "plot/bars/1")}


def test_every_kind_list_check_show_hash_path(prefix):
    argvs = []
    for kind, (name, _files) in ASSETS.items():
        argvs += [["-p", str(prefix), kind, "list"], ["-p", str(prefix), kind, "list", "--json"],
                  ["-p", str(prefix), kind, "check", name, "--json"], ["-p", str(prefix), kind, "show", name],
                  ["-p", str(prefix), kind, "hash", name], ["-p", str(prefix), kind, "path", name]]
    empty = ["-p", str(EXEC_PREFIX), "plotters"]  # a kind with no asset in the prefix
    argvs += [empty + ["list"], empty + ["check", "--json"]]
    results = iter(cli_batch(argvs))
    for kind, (name, files) in ASSETS.items():
        code, out, err = next(results)  # list
        assert code == 0 and name in out.split(), (kind, out, err)
        code, out, _ = next(results)  # list --json
        assert code == 0 and name in [i["name"] for i in json.loads(out)], (kind, out)
        code, out, _ = next(results)  # check NAME --json
        (report,) = json.loads(out)
        assert code == 0 and report["valid"] and report["name"] == name, (kind, out)
        code, out, _ = next(results)  # show
        assert code == 0 and isinstance(json.loads(out), dict), (kind, out)
        if kind == "dataformats":
            assert json.loads(out) == {"value": "int32"}
        code, out, _ = next(results)  # hash
        assert code == 0 and out.strip() == report["hash"], (kind, out, report)
        code, out, _ = next(results)  # path
        printed = [Path(line) for line in out.split()]
        assert code == 0 and printed, (kind, out)
        assert sorted(p.resolve() for p in printed) == sorted((prefix / f).resolve() for f in files), (kind, out)
    code, out, err = next(results)
    assert code == 0 and out.strip() == "", (out, err)
    code, out, err = next(results)
    assert code == 0 and json.loads(out) == [], (out, err)


USAGE_ERRORS = [
    [],
    ["dataformats"],
    ["dataformats", "hash"],
    ["frobnicate"],
    ["experiments", "run"],
    ["experiments", "run", BASE, "--jobs", "0"],
    ["experiments", "run", BASE, "--bogus"],
    ["databases", "view", "counter/1/default"],
]
TRAVERSALS = [
    ["dataformats", "show", "../../../etc/passwd"],
    ["dataformats", "hash", "../../etc/1"],
    ["algorithms", "path", "run/../../../../etc/1"],
    ["experiments", "run", "../../../../../tmp"],
    ["experiments", "results", "run/run/pipeline/1/../../../../x"],
    ["databases", "index", "../../etc"],
    ["databases", "view", "../x/1/default/items"],
    ["check", "dataformats/../../../etc/1"],
]


def test_usage_error_exits_2_in_a_real_process(prefix):
    for argv in (USAGE_ERRORS[0], USAGE_ERRORS[5]):
        proc = run_cli("-p", prefix, *argv)
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        no_traceback(proc.stderr)


def test_usage_errors_exit_2(prefix):
    for argv, (code, out, err) in zip(USAGE_ERRORS, cli_batch([["-p", str(prefix), *a] for a in USAGE_ERRORS]),
                                      strict=True):
        assert code == 2, (argv, out, err)
        no_traceback(err)
        assert err.strip(), argv


def test_path_traversal_names_are_rejected(prefix):
    cache = prefix.parent / "cache"
    proc = run_cli("-p", prefix, "-c", cache, *TRAVERSALS[0])
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    results = cli_batch([["-p", str(prefix), "-c", str(cache), *a] for a in TRAVERSALS])
    for argv, (code, out, err) in zip(TRAVERSALS, results, strict=True):
        assert code == 2, (argv, out, err)
        no_traceback(err)
        assert "invalid" in err or "expected" in err, (argv, err)
    assert not any(cache.rglob("*.h5")) and not any(cache.rglob("*.db"))


def test_missing_prefix(tmp_path):
    missing = tmp_path / "nowhere"
    for argv in (["check"], ["dataformats", "list"], ["experiments", "run", BASE]):
        proc = run_cli("-p", missing, *argv)
        assert proc.returncode in (1, 2), (argv, proc.stderr)
        assert str(missing) in proc.stderr and "does not exist" in proc.stderr, proc.stderr
        no_traceback(proc.stderr)


def test_missing_asset(prefix):
    proc = run_cli("-p", prefix, "dataformats", "show", "run/nope/1")
    assert proc.returncode == 1 and "run/nope/1" in proc.stderr and "not found" in proc.stderr, proc.stderr
    no_traceback(proc.stderr)


def test_broken_json_reports_file_and_position(prefix):
    folder = prefix / "dataformats/run/broken"
    folder.mkdir(parents=True)
    (folder / "1.json").write_text('{\n  "value": "int32",\n  "x": \n}\n')
    bad = prefix / "dataformats/run/badtype"
    bad.mkdir(parents=True)
    (bad / "1.json").write_text('{\n  "value": "int33"\n}\n')
    proc = run_cli("-p", prefix, "check")
    assert proc.returncode == 1
    no_traceback(proc.stdout + proc.stderr)
    lines = proc.stdout.splitlines()
    broken = next(line for line in lines if "dataformats/run/broken/1.json" in line)
    assert "line 4" in broken and "column 1" in broken, broken
    badtype = next(line for line in lines if "dataformats/run/badtype/1.json" in line)
    assert "/value" in badtype and "int33" in badtype, badtype
    assert "2 invalid" in proc.stderr
    code, doc, _ = cli_json("-p", prefix, "dataformats", "check", "run/broken/1", "run/badtype/1", "--json")
    assert code == 1
    errors = {item["name"]: item["errors"] for item in doc}
    assert errors["run/broken/1"][0]["file"].endswith("dataformats/run/broken/1.json")
    assert "line 4" in errors["run/broken/1"][0]["message"]
    assert errors["run/badtype/1"][0]["pointer"] == "/value"
    proc = run_cli("-p", prefix, "dataformats", "show", "run/broken/1")
    assert proc.returncode == 1 and "dataformats/run/broken/1.json" in proc.stderr, proc.stderr
    no_traceback(proc.stderr)
    # an experiment that cannot be planned: exit 1, file and pointer, nothing run
    exp = prefix / "experiments/run/run/pipeline/1"
    (exp / "broken.json").write_text('{\n  "description": "x",\n}\n')
    decl = json.loads((exp / "base.json").read_text())
    decl["blocks"]["first"]["algorithm"] = "run/missing/1"
    (exp / "missing.json").write_text(json.dumps(decl, indent=4))
    cache = prefix.parent / "cache"
    base = ["-p", str(prefix), "-c", str(cache), "experiments", "run"]
    (code, _out, err), (code2, _out2, err2) = cli_batch([base + ["run/run/pipeline/1/broken"],
                                                        base + ["run/run/pipeline/1/missing", "--json"]])
    assert code == 1 and "experiments/run/run/pipeline/1/broken.json" in err and "line 2" in err, err
    assert code2 == 1 and "/blocks/first/algorithm" in err2 and "run/missing/1" in err2, err2
    no_traceback(err + err2)
    assert not any(cache.rglob("*.h5"))


# ----------------------------------------------------------------------------- execution

def assert_report_shape(doc: dict, name: str) -> None:
    assert {"experiment", "status", "blocks", "results"} <= set(doc)
    assert doc["experiment"] == name and doc["status"] in ("ok", "failed")
    assert list(doc["blocks"]) == ["first", "second", "analysis"]
    for block in doc["blocks"].values():
        assert block["status"] in ("ran", "cached", "failed", "skipped")
        assert isinstance(block["key"], str) and len(block["key"]) == 64
        assert block["beat_hash"]
        if block["status"] == "failed":
            assert {"kind", "message"} <= set(block["error"])
    for records in doc["results"].values():
        for rec in records:
            assert set(rec) == {"start", "end", "data"}


def test_run_json_then_cached_then_results(prefix):
    cache = prefix / "cache"  # the default cache folder
    proc = run_cli("-p", prefix, "experiments", "results", BASE)
    assert proc.returncode == 1 and "run it first" in proc.stderr, proc.stderr
    no_traceback(proc.stderr)

    code, doc, err = cli_json("-p", prefix, "experiments", "run", BASE, "--json")
    assert code == 0, err
    assert_report_shape(doc, BASE)
    assert doc["status"] == "ok" and doc["results"] == RESULT
    assert list(doc["results"]["analysis"][0]["data"]) == ["sum", "count"]  # run/total/1 declares them so
    assert doc["hidden_results"] == {"analysis": ["count"]}  # "display": false
    assert {n: b["status"] for n, b in doc["blocks"].items()} == {"first": "ran", "second": "ran", "analysis": "ran"}
    assert "first: running" in err and "first: done" in err and "analysis: done" in err  # progress display
    assert any(cache.rglob("*.h5"))

    (code, out, err), (code2, out2, _), (code3, text, _) = cli_batch([
        ["-p", str(prefix), "experiments", "run", BASE],  # human output, all cached: no process
        ["-p", str(prefix), "experiments", "results", BASE, "--json"],
        ["-p", str(prefix), "experiments", "results", BASE]])
    assert code == 0, err
    assert "first: cached" in err and "analysis: cached" in err
    hidden = '  (count declared "display": false; --json shows them)'
    assert "    sum: 81\n" + hidden in out and "count: 6" not in out  # kept in --json only
    assert code2 == 0 and json.loads(out2) == RESULT
    assert list(json.loads(out2)["analysis"][0]["data"]) == ["sum", "count"]
    assert code3 == 0 and "    sum: 81\n" + hidden in text and "count: 6" not in text

    code, doc, err = cli_json("-p", prefix, "-c", cache, "experiments", "run", BASE, "--json", "--force", "-q")
    assert code == 0 and {b["status"] for b in doc["blocks"].values()} == {"ran"} and doc["results"] == RESULT
    assert err == ""  # --quiet: no progress display


def test_failed_run_exits_1_with_report(prefix):
    exp = prefix / "experiments/run/run/pipeline/1"
    decl = json.loads((exp / "base.json").read_text())
    decl["blocks"]["second"]["parameters"] = {"mode": "process"}
    (exp / "broken.json").write_text(json.dumps(decl))
    name = "run/run/pipeline/1/broken"
    cache = prefix.parent / "cache"
    code, doc, err = cli_json("-p", prefix, "-c", cache, "experiments", "run", name, "--json")
    assert code == 1
    assert_report_shape(doc, name)
    assert doc["status"] == "failed" and doc["results"] == {}
    assert {n: b["status"] for n, b in doc["blocks"].items()} == {
        "first": "ran", "second": "failed", "analysis": "skipped"}
    error = doc["blocks"]["second"]["error"]
    assert error["kind"] == "user" and "process failed on purpose" in error["message"]
    assert "FAILED" in err
    proc = run_cli("-p", prefix, "-c", cache, "experiments", "run", name)
    assert proc.returncode == 1
    assert "block `second' failed" in proc.stderr
    assert 'File "algorithms/run/faulty/1.py"' in proc.stderr and str(prefix) not in proc.stderr


def test_failing_view_index_exits_1_with_user_traceback(prefix):
    exp = prefix / "experiments/run/run/pipeline/1"
    decl = json.loads((exp / "base.json").read_text())
    decl["datasets"]["items"]["protocol"] = "index_fails"
    (exp / "noindex.json").write_text(json.dumps(decl))
    name = "run/run/pipeline/1/noindex"
    code, doc, _ = cli_json("-p", prefix, "-c", prefix.parent / "cache", "experiments", "run", name, "--json")
    assert code == 1 and doc["status"] == "failed"
    assert doc["blocks"]["first"]["status"] == "failed"
    proc = run_cli("-p", prefix, "-c", prefix.parent / "cache", "experiments", "run", name)
    assert proc.returncode == 1
    assert "internal error" not in proc.stderr and 'File "/' not in proc.stderr, proc.stderr
    assert 'File "databases/counter/1.py"' in proc.stderr and "index failed on purpose" in proc.stderr
    assert str(prefix) not in proc.stderr


def test_databases_index_and_view(prefix):
    cache = prefix.parent / "cache"
    proc = run_cli("-p", prefix, "-c", cache, "databases", "index", "counter/1/default")
    assert proc.returncode == 0, proc.stderr
    assert "counter/1/default/items: 6 entries (built)" in proc.stdout
    path = Path(proc.stdout.split()[-1])
    assert path.is_file() and cache.resolve() in path.resolve().parents
    base = ["-p", str(prefix), "-c", str(cache), "databases"]
    (again, view_json, view_text, failing_index, unknown, failing_get) = cli_batch([
        base + ["index", "counter/1/default/items"],
        base + ["view", "counter/1/default/items", "--json"],
        base + ["view", "counter/1/default/items"],
        base + ["index", "counter/1/index_fails"],
        base + ["index", "counter/1/nope"],
        base + ["view", "counter/1/get_fails/items"],
    ])
    code, out, err = again
    assert code == 0 and "(existing)" in out, (out, err)
    code, out, err = view_json
    assert code == 0, err
    units = [json.loads(line) for line in out.splitlines()]
    assert units == [{"start": i, "end": i, "data": {"value": {"value": i + 1}}} for i in range(6)]
    code, out, err = view_text
    assert code == 0 and out.count("FROM") == 6, (out, err)
    code, out, err = failing_index
    assert code == 1 and "index failed on purpose" in err and str(prefix) not in err, err
    code, out, err = unknown
    assert code == 2 and "nope" in err, err
    no_traceback(err)
    code, out, err = failing_get
    assert code == 1 and "get failed on purpose" in err, err


def test_databases_index_a_whole_database(copy_prefix):
    prefix = copy_prefix(EXEC_PREFIX)
    proc = run_cli("-p", prefix, "-c", prefix.parent / "cache", "databases", "index", "numbers/1")
    assert proc.returncode == 0, proc.stderr
    lines = sorted(proc.stdout.splitlines())
    assert len(lines) == 2, lines
    assert lines[0].startswith("numbers/1/default/items: 20 entries (built) ")
    assert lines[1].startswith("numbers/1/small/items: 7 entries (built) ")


def test_live_progress_on_a_terminal(prefix):
    """On a terminal each block's line is rewritten in place with the units done."""
    exp = prefix / "experiments/run/run/pipeline/1"
    decl = json.loads((exp / "base.json").read_text())
    decl["blocks"]["first"]["parameters"]["delay"] = 0.15
    (exp / "slow.json").write_text(json.dumps(decl))
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cli_command("-p", prefix, "experiments", "run", "run/run/pipeline/1/slow"),
                            stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 60  # (a run that hangs fails the test, never hangs the suite)
    while True:
        if not select.select([leader], [], [], 1.0)[0]:
            assert time.monotonic() < deadline, f"the terminal was not closed within 60 s: {b''.join(chunks)!r}"
            continue
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out, _ = proc.communicate(timeout=60)
    os.close(leader)
    screen = b"".join(chunks).decode()
    assert proc.returncode == 0, screen
    assert "\r\x1b[2K" in screen  # rewritten in place
    assert "first: running " in screen and "/6 units" in screen, screen
    assert re.search(r"first: running [1-5]/6 units, [0-9.]+/s, [0-9]+ s left", screen), screen  # rate, time left
    assert "first: done" in screen and "analysis: done" in screen
    assert "sum: 81" in out


def test_cache_that_is_not_a_folder(prefix):
    not_a_folder = prefix.parent / "cache-file"
    not_a_folder.write_text("")
    proc = run_cli("-p", prefix, "-c", not_a_folder, "experiments", "run", BASE, "-q")
    assert proc.returncode in (1, 2), proc.stderr
    no_traceback(proc.stderr)
    assert str(not_a_folder) in proc.stderr and "cache" in proc.stderr, proc.stderr


@pytest.mark.parametrize("argv", [
    ["experiments", "run", "a/b/c/1/d", "-j", "2", "--alive", "4", "--progress-json"],
    ["-p", "somewhere", "--cache", "elsewhere", "experiments", "results", "x", "--json"],
    ["--prefix=p", "databases", "index", "db/1", "--force"],
    ["plotters", "plot", "p/1", "--help-is-not-an-option"],
    ["check", "--json"],
    ["toolchains", "draw", "t/1"],
    ["cache", "verify"],
])
def test_the_parser_of_the_named_command_alone_parses_as_the_whole_parser(argv):
    """Only the command the arguments name is built (the ~110 sub-commands cost ~15 ms per
    command); what it parses, or refuses, is what the whole parser would."""
    import argparse
    from unittest import mock

    from backbeat.cli.command import build_parser

    def parse(parser):
        try:
            return {k: v for k, v in vars(parser.parse_args(argv)).items() if k != "parser"}
        except SystemExit as exc:
            return exc.code

    made = []
    real = argparse.ArgumentParser.__init__
    with mock.patch.object(argparse.ArgumentParser, "__init__",
                           lambda self, *a, **k: made.append(1) or real(self, *a, **k)), \
            mock.patch("sys.stderr"):
        named = parse(build_parser(argv))
        few, made[:] = len(made), []
        whole = parse(build_parser())
    assert named == whole
    assert few < len(made) / 4, (few, len(made))
