"""What ``check`` must catch, through the real CLI, on backbeat's own fixture ``tests/fixtures/checks``.

* every ``.json`` file of a kind is listed and checked, also when its path is not a name of the
  kind's grammar; verdicts and hashes are BEAT's (``expected.json``, recorded by running BEAT 1.13);
* declarations that do not parse get BEAT's hash (the bytes, or the lenient parse);
* user code that cannot load is invalid in ``check`` (file and line) and a run refuses it once,
  before any block, without backbeat's frames;
* non-fatal warnings (a string for a boolean, a missing root folder) are printed and in the JSON,
  and never change ``valid``; output stays bounded; long names are usage errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FIXTURES, cli_json, run_cli

CHECKS = FIXTURES / "checks"
BEAT = json.loads((CHECKS / "expected.json").read_text())
TWO = "u/u/two/1"


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> Path:
    """A private copy of the fixture prefix (runs write a cache into it)."""
    import shutil

    root = tmp_path_factory.mktemp("checks") / "prefix"
    shutil.copytree(CHECKS / "prefix", root)
    return root


@pytest.fixture(scope="module")
def reports(prefix) -> dict:
    code, doc, _err = cli_json("-p", prefix, "check", "--json")
    assert code == 1
    return {f"{r['kind']}/{r['name']}": r for r in doc}


def no_backbeat_frames(text: str) -> None:
    assert "Traceback" not in text and "platform/backbeat" not in text and "internal error" not in text, text


# -- files check never skips; BEAT's verdicts and hashes -----------------------------------------
@pytest.mark.parametrize("case", BEAT["cases"], ids=lambda c: f"{c['kind']}:{c['name']}")
def test_every_file_is_checked_with_beats_verdict_and_hash(reports, case):
    folder = {"toolchain": "toolchains", "dataformat": "dataformats", "algorithm": "algorithms"}[case["kind"]]
    report = reports[f"{folder}/{case['name']}"]
    expected = "invalid" if case["beat"] == "crash" else case["beat"]  # BEAT crashes: invalid, said why
    assert ("valid" if report["valid"] else "invalid") == expected, report
    if case["hash"] is not None:
        assert report["hash"] == case["hash"]
    assert report["errors"] or report["warnings"], report  # never silent: a reason is given


def test_strays_say_why_and_keep_beats_verdict(reports):
    empty = reports["toolchains/errors/incomplete/empty"]
    assert "the version `empty' is not a number" in empty["warnings"][0]["message"]
    assert any("'datasets' is a required property" in e["message"] for e in empty["errors"])
    draft = reports["toolchains/u/two/draft"]  # valid content: BEAT says ok, backbeat warns
    assert draft["valid"] and "cannot name it" in draft["warnings"][0]["message"]
    deep = reports["toolchains/u/deep/er/1"]  # BEAT crashes on it
    assert not deep["valid"] and "not a declaration's place" in deep["errors"][0]["message"]


def test_list_shows_every_file(prefix):
    beat_lines = BEAT["list"]["toolchains"]["lines"]
    proc = run_cli("-p", prefix, "toolchains", "list")
    assert proc.returncode == 0, proc.stderr
    for name in beat_lines:  # BEAT lists these; so does backbeat
        assert name in proc.stdout.splitlines(), proc.stdout
    assert "  (!) `errors/incomplete/empty' is not a toolchain name (the version `empty' is not a number)" in proc.stdout
    code, items, _ = cli_json("-p", prefix, "dataformats", "list", "--json")
    problems = {i["name"]: i["problem"] for i in items}
    assert problems["u/int/1"] is None
    assert "several times" in problems["u/dup_key/1"] and "invalid JSON" in problems["u/bad_json/1"]


def test_unparseable_declarations_have_beats_hash(prefix):
    """``KIND hash NAME`` too (tools comparing prefixes by hash); the algorithm's code is in it."""
    for case in BEAT["cases"]:
        if case["kind"] != "toolchain":  # the unparseable ones
            proc = run_cli("-p", prefix, f"{case['kind']}s", "hash", case["name"])
            assert (proc.returncode, proc.stdout.strip()) == (0, case["hash"]), proc.stderr


# -- code that cannot load --------------------------------------------------------------------------
@pytest.mark.parametrize("label, line, words", [
    ("algorithms/u/syntax/1", 2, "SyntaxError: expected ':'"),
    ("algorithms/u/nullbyte/1", 3, "null byte"),
    ("algorithms/u/noprocess/1", 1, "has no method `process'"),
    ("algorithms/u/noclass/1", None, "defines no class `Algorithm'"),
    ("libraries/u/broken/1", 2, "SyntaxError"),
    ("databases/badview/1", 16, "SyntaxError: expected ':'"),
    ("databases/noview/1", None, "defines no class `Missing'"),
])
def test_code_that_cannot_load_is_invalid(reports, label, line, words):
    report = reports[label]
    assert not report["valid"]
    error, = report["errors"]
    assert words in error["message"] and error["file"].endswith(".py")
    assert error.get("line") == line


def test_a_broken_library_makes_its_users_invalid(reports):
    error, = reports["algorithms/u/badlib/1"]["errors"]
    assert error["pointer"] == "/uses/helper" and "libraries/u/broken/1.py:2" in error["message"]


def test_human_output_names_file_and_line(prefix):
    proc = run_cli("-p", prefix, "algorithms", "check", "u/syntax/1", "u/copy/1")
    assert proc.returncode == 1
    assert "algorithms/u/syntax/1: invalid" in proc.stdout and "algorithms/u/copy/1: ok" in proc.stdout
    assert "algorithms/u/syntax/1.py:2: the code does not compile: SyntaxError: expected ':'" in proc.stdout


@pytest.mark.parametrize("experiment, where", [("syntax", "algorithms/u/syntax/1.py:2"),
                                                ("bad_view", "databases/badview/1.py:16")])
def test_a_run_refuses_code_that_cannot_load_once(prefix, experiment, where):
    proc = run_cli("-p", prefix, "experiments", "run", f"{TWO}/{experiment}", "-q")
    assert proc.returncode == 1
    no_backbeat_frames(proc.stderr + proc.stdout)
    assert proc.stderr.count(where) == 1, proc.stderr  # once, not per block
    assert "block `" not in proc.stderr  # refused before any block ran
    assert not (prefix / "cache").exists() or not list((prefix / "cache").rglob("*.h5"))


# -- warnings ----------------------------------------------------------------------------------------
def test_string_for_a_boolean_warns_and_keeps_beats_meaning(prefix, reports):
    report = reports[f"experiments/{TWO}/flag_string"]
    assert report["valid"]  # BEAT accepts it
    assert [w["pointer"] for w in report["warnings"]] == ["/blocks/a/parameters/normalise",
                                                          "/blocks/b/parameters/normalise"]
    assert "counts as true" in report["warnings"][0]["message"]
    proc = run_cli("-p", prefix, "experiments", "check", f"{TWO}/flag_string")
    assert proc.returncode == 0 and "ok (2 warnings)" in proc.stdout
    assert "warning: " in proc.stdout and "write false without quotes" in proc.stdout
    proc = run_cli("-p", prefix, "experiments", "run", f"{TWO}/flag_string", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("counts as true") == 2
    assert "total: -20" in proc.stdout  # "false" is true, as in BEAT: every value negated
    proc = run_cli("-p", prefix, "experiments", "run", f"{TWO}/flag_string", "--progress-json")  # cached now
    warned = [e for e in map(json.loads, proc.stderr.splitlines()) if e["state"] == "warning"]
    assert [(w["pointer"], w["experiment"]) for w in warned] == [("/blocks/a/parameters/normalise", TWO + "/flag_string"),
                                                                 ("/blocks/b/parameters/normalise", TWO + "/flag_string")]
    proc = run_cli("-p", prefix, "experiments", "run", f"{TWO}/flag_string", "--dry-run")
    assert proc.stderr.count("counts as true") == 2


def test_a_runs_warning_lines_are_those_of_check(tmp_path):
    """The run's display and ``--dry-run`` print a warning as ``check`` does (one formatter): a
    problem in code by its line, one in a declaration by its JSON pointer."""
    import io

    from backbeat.cli import output
    from backbeat.cli.run import ProgressDisplay

    stream = io.StringIO()
    display = ProgressDisplay(stream, quiet=True)
    for problem in ({"file": "algorithms/u/a/1.py", "pointer": "", "line": 7, "message": "m1"},
                    {"file": "experiments/e.json", "pointer": "", "message": "m2"},
                    {"file": "experiments/e.json", "pointer": "/blocks/a", "message": "m3"}):
        display({"state": "warning", "asset": "a", **problem})
        assert output.warning_line(problem) == stream.getvalue().splitlines()[-1]
    assert stream.getvalue().splitlines() == ["warning: algorithms/u/a/1.py:7: m1", "warning: experiments/e.json: /: m2",
                                              "warning: experiments/e.json: /blocks/a: m3"]


def test_missing_root_folder_warns_then_fails_once_with_a_hint(prefix, reports):
    report = reports["databases/files/1"]
    assert report["valid"] and report["warnings"][0]["pointer"] == "/root_folder"
    assert reports["databases/gen/1"]["valid"]  # its views never read the folder: they run
    proc = run_cli("-p", prefix, "experiments", "run", f"{TWO}/no_root_folder", "-q")
    assert proc.returncode == 1
    assert proc.stderr.count("Traceback") == 1, proc.stderr  # for the first block only
    assert "of files/1 does not exist: set `database/files/1' in .backbeatrc" in proc.stderr
    assert "block `b' failed (user): its dataset `items' could not be indexed (see block `a')" in proc.stderr
    no_backbeat_frames(proc.stderr.replace("Traceback (most recent call last):", ""))


def test_a_good_experiment_next_to_the_bad_ones_runs(prefix):
    proc = run_cli("-p", prefix, "experiments", "run", f"{TWO}/ok", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "total: 20" in proc.stdout


# -- bounded output, long names, did you mean ------------------------------------------------------
def test_validation_output_is_bounded(tmp_path):
    decl = {"value": "int32"} | {f"extra{i}": i for i in range(1200)}  # (over a thousand: the count's comma)
    (tmp_path / "dataformats" / "u" / "wide").mkdir(parents=True)
    (tmp_path / "dataformats" / "u" / "wide" / "1.json").write_text(json.dumps(decl))
    code, doc, _ = cli_json("-p", tmp_path, "check", "--json")
    assert code == 1
    report, = doc
    assert len(report["errors"]) == 100 and report["errors_omitted"] == 1100
    proc = run_cli("-p", tmp_path, "check")
    assert len(proc.stdout.splitlines()) == 102  # the asset, 100 problems, the count
    assert "... and 1,100 more problem(s) not shown" in proc.stdout


def test_long_names_are_usage_errors(prefix):
    name = f"u/{'x' * 300}/1"
    for argv in (["dataformats", "show", name], ["check", f"dataformats/{name}"],
                 ["experiments", "run", f"u/u/{'t' * 300}/1/e"]):
        proc = run_cli("-p", prefix, *argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert "too long (300 characters, at most 200)" in proc.stderr
        no_backbeat_frames(proc.stderr)


def test_unknown_names_get_a_suggestion(prefix):
    proc = run_cli("-p", prefix, "algorithms", "show", "u/coppy/1")
    assert proc.returncode == 1 and "did you mean `u/copy/1'?" in proc.stderr
    proc = run_cli("-p", prefix, "experiments", "run", f"{TWO}/okk", "-q")
    assert proc.returncode == 1 and f"did you mean `{TWO}/ok'?" in proc.stderr
