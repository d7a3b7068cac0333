"""``--from``/``--only``/``--until`` (with and without ``--force``) on an empty, a partly and a
fully cached cache, through the CLI: the dry run's status for each block is exactly what the
run then reports (both come from one decision, ``execution/decisions.py``).

Pipeline of ``tests/fixtures/run/prefix``: ``items -> first -> second -> analysis``.  Every step
runs ``--dry-run --json`` then the run itself, in order, on the same cache (so each step starts
from the cache state the previous one left); all steps run in one CLI process (``cli_batch``).
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import cli_batch

BASE = "run/run/pipeline/1/base"
RESULT = {"analysis": [{"start": 0, "end": 5, "data": {"count": 6, "sum": 81}}]}
RAN, CACHED, SKIPPED = "ran", "cached", "skipped"

#: (cache, options, expected statuses of first, second, analysis); None: refused (exit 1)
STEPS = [
    ("a", ["--only", "second"], None),                          # empty cache: --only needs its inputs
    ("a", ["--until", "second"], (RAN, RAN, SKIPPED)),          # empty: runs what --until needs
    ("a", ["--only", "analysis"], (SKIPPED, CACHED, RAN)),      # partly cached: reads second's output
    ("a", ["--from", "second"], (CACHED, RAN, RAN)),            # fully cached: re-runs second and after
    ("a", ["--only", "analysis"], (SKIPPED, CACHED, RAN)),      # fully cached: re-runs analysis
    ("a", ["--until", "second"], (CACHED, CACHED, SKIPPED)),    # fully cached: nothing to do
    ("a", ["--until", "second", "--force"], (RAN, RAN, SKIPPED)),  # --force re-runs the selection only
    ("a", ["--from", "second", "--force"], (CACHED, RAN, RAN)),    # ...never upstream of --from
    ("b", ["--from", "second"], (RAN, RAN, RAN)),               # empty: what --from needs runs too
]


TWINS = "run/run/twins/1/base"
TWINS_TOOLCHAIN = {  # items -> a -> analysis, items -> b -> c -> analysis2: a and b are the same block
    "datasets": [{"name": "items", "outputs": ["value"]}],
    "blocks": [{"name": n, "synchronized_channel": "items", "inputs": ["value"], "outputs": ["out"]} for n in "abc"],
    "analyzers": [{"name": n, "synchronized_channel": "items", "inputs": ["values"]} for n in ("analysis", "analysis2")],
    "connections": [{"from": f, "to": t, "channel": "items"} for f, t in (
        ("items.value", "a.value"), ("items.value", "b.value"), ("a.out", "analysis.values"),
        ("b.out", "c.value"), ("c.out", "analysis2.values"))],
    "representation": {"connections": {}, "blocks": {}, "channel_colors": {}},
}


def twins(prefix: Path) -> None:
    """Experiment ``TWINS``: blocks ``a`` and ``b`` with the same cache keys; ``c`` reads ``b``."""
    decl = json.loads((prefix / "experiments/run/run/short/1/base.json").read_text())
    prep = decl["blocks"]["prep"]
    decl["blocks"] = {"a": prep, "b": prep, "c": dict(prep, parameters={"offset": 1})}
    decl["analyzers"]["analysis2"] = decl["analyzers"]["analysis"]
    (prefix / "toolchains/run/twins").mkdir(parents=True)
    (prefix / "toolchains/run/twins/1.json").write_text(json.dumps(TWINS_TOOLCHAIN))
    (prefix / "experiments/run/run/twins/1").mkdir(parents=True)
    (prefix / "experiments/run/run/twins/1/base.json").write_text(json.dumps(decl))


def test_dry_run_says_what_the_run_does(copy_prefix, tmp_path: Path):
    prefix = copy_prefix()
    twins(prefix)
    argvs = []
    for cache, options, _expected in STEPS:
        base = ["-p", str(prefix), "-c", str(tmp_path / cache), "experiments", "run", BASE, *options, "--json"]
        argvs += [base + ["--dry-run"], base + ["-q"]]
    for options in ([], ["--force"]):  # blocks with the same keys: computed once (unless forced)
        base = ["-p", str(prefix), "-c", str(tmp_path / "c"), "experiments", "run", TWINS, *options, "--json"]
        argvs += [base + ["--dry-run"], base]
    argvs.append(["-p", str(prefix), "-c", str(tmp_path / "a"), "experiments", "run", BASE, "--only", "analysis",
                  "--dry-run"])  # the human form of a dry run
    results = cli_batch(argvs, timeout=180)
    for i, (_cache, options, expected) in enumerate(STEPS):
        (dry_code, dry_out, dry_err), (code, out, err) = results[2 * i], results[2 * i + 1]
        if expected is None:
            assert dry_code == code == 1, (options, dry_err, err)
            message = "--only second: it reads the output(s) of first, not in the cache"
            assert message in dry_err and message in err and "--until second" in err
            continue
        assert dry_code == 0 and code == 0, (options, dry_err, err)
        plan, report = json.loads(dry_out), json.loads(out)
        said = {n: b["status"] for n, b in plan["blocks"].items()}
        did = {n: b["status"] for n, b in report["blocks"].items()}
        assert said == did == dict(zip(("first", "second", "analysis"), expected, strict=True)), options
        assert all(plan["blocks"][n]["key"] == b["key"] for n, b in report["blocks"].items())
        if did["analysis"] != SKIPPED:
            assert report["results"] == RESULT
        for name, block in report["blocks"].items():  # a block reported "ran" did run a process
            assert ("statistics" in block) == (block["status"] == RAN), (options, name)
    for i, expected in ((len(STEPS), (RAN, CACHED, RAN, RAN, RAN)), (len(STEPS) + 1, (RAN,) * 5)):
        (dry_code, dry_out, dry_err), (code, out, err) = results[2 * i], results[2 * i + 1]
        assert dry_code == 0 and code == 0, (dry_err, err)
        assert "corrupt" not in err  # (b's output is not in the cache before a writes it: not corrupted)
        said = {n: b["status"] for n, b in json.loads(dry_out)["blocks"].items()}
        did = {n: b["status"] for n, b in json.loads(out)["blocks"].items()}
        assert said == did == dict(zip(("a", "b", "c", "analysis", "analysis2"), expected, strict=True))
        if expected[1] == CACHED:
            assert json.loads(dry_out)["blocks"]["b"]["reason"] == "the same outputs as `a', computed once by this run"
    code, text, _err = results[-1]
    assert code == 0
    assert text.splitlines() == [
        line for line in text.splitlines() if line.split(":")[0] in ("first", "second", "analysis")]
    assert text.splitlines()[0].startswith("first: skipped  not selected by --only analysis")
    assert text.splitlines()[1].startswith("second: cached  output in the cache, read by --only analysis")
    assert text.splitlines()[2].startswith("analysis: run  --only  (run/total/1, key ")


def test_force_rebuilds_no_view_index_upstream_of_the_selection_nor_in_a_dry_run(copy_prefix, tmp_path: Path):
    from backbeat.execution import executors

    prefix, cache = copy_prefix(), tmp_path / "cache"
    executors.run_experiment(prefix, cache, BASE, executors.Options(until="first"))
    (index,) = cache.rglob("*.db")
    built = index.stat().st_ino
    executors.dry_run(prefix, cache, BASE, executors.Options(force=True))
    report = executors.run_experiment(prefix, cache, BASE, executors.Options(from_="second", force=True))
    assert {n: b["status"] for n, b in report["blocks"].items()} == {"first": CACHED, "second": RAN, "analysis": RAN}
    assert index.stat().st_ino == built  # the view ran neither in the dry run nor upstream of --from
    executors.run_experiment(prefix, cache, BASE, executors.Options(force=True))
    assert index.stat().st_ino != built  # --force alone indexes again
