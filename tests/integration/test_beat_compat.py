"""backbeat against BEAT's own answers on backbeat's fixture prefix.

``tests/fixtures/beat/prefix`` holds declarations of every kind and schema version,
with one invalid declaration per error class of beat-spec §3; ``expected.json`` is what
BEAT 1.13 said about each of them (recorded by ``tests/fixtures/beat/oracle.py``, which
explains how to regenerate it).  For every case the catalog must give BEAT's verdict
(or, where BEAT crashes, hangs or accepts something broken, ``invalid`` with the named
problem, within a time limit) and BEAT's hash; for every valid experiment the block
output and analyzer hashes of spec §4.4–4.6 must be BEAT's.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from backbeat.core import hashing
from backbeat.core.names import KINDS, parse_name
from backbeat.declarations.catalog import Asset, Catalog
from backbeat.declarations.prefix import Prefix

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent / "fixtures" / "beat"
PREFIX = FIXTURE / "prefix"
EXPECTED: list[dict] = json.loads((FIXTURE / "expected.json").read_text())
BY_NAME = {(r["kind"], r["name"]): r for r in EXPECTED}
TIME_LIMIT = 5.0  # seconds for one catalog lookup (BEAT hangs forever on some cases)


def _id(rec: dict) -> str:
    return f"{rec['kind']}:{rec['name']}"


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the main thread if the body runs longer than ``seconds``."""

    def on_alarm(_signum, _frame):
        raise TimeoutError(f"no answer within {seconds}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def lookup(kind: str, name: str, catalog: Catalog | None = None) -> Asset:
    catalog = catalog or Catalog(PREFIX)
    with time_limit(TIME_LIMIT):
        return catalog.get(kind, name)


def _explain(asset: Asset, rec: dict) -> str:
    ours = "\n".join(f"    {p.pointer or '/'}: {p.message}" for p in asset.problems) or "    (none)"
    beats = "\n".join(f"    {e}" for e in rec["errors"]) or "    (none)"
    return (f"{_id(rec)} ({rec['intent']})\n  BEAT said {rec['beat']}:\n{beats}\n"
            f"  backbeat said {'valid' if asset.valid else 'invalid'}:\n{ours}")


# -- fixture sanity -----------------------------------------------------------------
def test_expected_covers_every_kind_and_outcome():
    kinds = {r["kind"] for r in EXPECTED}
    assert kinds == set(KINDS)
    outcomes = {r["beat"] for r in EXPECTED}
    assert outcomes == {"valid", "invalid", "crash", "hang"}
    for kind in KINDS:
        verdicts = {r["beat"] for r in EXPECTED if r["kind"] == kind}
        assert {"valid", "invalid"} <= verdicts, kind
    assert any(r.get("layout") == "hashed" for r in EXPECTED)


def test_prefix_lists_every_fixture_asset():
    """Prefix.list finds every declaration, hashed-user layout included, and nothing else."""
    listed = set(Prefix(PREFIX).list_all())
    on_disk = set()
    for rec in EXPECTED:
        kind, name = parse_name(rec["kind"], rec["name"])
        if rec["intent"] != "invalid: file not found":
            on_disk.add((kind, name))
    assert listed == on_disk


# -- verdicts and hashes ------------------------------------------------------------
@pytest.mark.parametrize("rec", EXPECTED, ids=_id)
def test_verdict_matches_beat(rec: dict):
    try:
        asset = lookup(rec["kind"], rec["name"])
    except TimeoutError:
        pytest.fail(f"{_id(rec)}: backbeat gave no verdict within {TIME_LIMIT}s (BEAT: {rec['beat']})")
    expected = rec.get("backbeat", rec["beat"])
    if expected in ("crash", "hang"):  # never expected of backbeat: it must report instead
        expected = "invalid"
    got = "valid" if asset.valid else "invalid"
    assert got == expected, _explain(asset, rec)
    if expected == "invalid" and rec.get("problem") and "backbeat" in rec:
        word = rec["problem"].lower()
        assert any(word in str(p).lower() for p in asset.problems), (
            f"no problem mentions `{rec['problem']}'\n" + _explain(asset, rec))


@pytest.mark.parametrize("rec", [r for r in EXPECTED if r["hash"]], ids=_id)
def test_hash_matches_beat(rec: dict):
    try:
        asset = lookup(rec["kind"], rec["name"])
    except TimeoutError:
        pytest.fail(f"{_id(rec)}: no answer within {TIME_LIMIT}s")
    # also for declarations backbeat refuses to parse: BEAT's storage hash of the file
    assert asset.hash == rec["hash"], _id(rec)


def test_description_does_not_enter_the_hash():
    catalog = Catalog(PREFIX)
    one = catalog.get("dataformat", "bb/described/1")
    two = catalog.get("dataformat", "bb/described/2")
    assert one.hash == two.hash == BY_NAME[("dataformat", "bb/described/1")]["hash"]


def test_shared_catalog_gives_the_same_verdicts():
    """One catalog for everything: memoisation and the recursion guard must not change answers."""
    catalog = Catalog(PREFIX)
    wrong = []
    for rec in EXPECTED:
        try:
            asset = lookup(rec["kind"], rec["name"], catalog)
        except TimeoutError:
            wrong.append(f"{_id(rec)}: timeout")
            continue
        expected = rec.get("backbeat", rec["beat"])
        expected = "invalid" if expected in ("crash", "hang") else expected
        if ("valid" if asset.valid else "invalid") != expected:
            wrong.append(_id(rec))
    assert not wrong


# -- block output and analyzer hashes (spec §4.4–4.6) ---------------------------------
EXPERIMENTS = [r for r in EXPECTED if r["kind"] == "experiment" and "setup" in r]


class BeatHashes:
    """Spec §4.4–4.6 computed from the declarations with backbeat.hashing's primitives."""

    def __init__(self, catalog: Catalog, name: str):
        _kind, name = parse_name("experiment", name)
        self.catalog = catalog
        self.exp = catalog.get("experiment", name).declaration
        tc_name = "/".join(name.split("/")[1:4])
        tc = catalog.get("toolchain", tc_name).declaration
        self.feeds = {c["to"]: c["from"] for c in tc["connections"]}
        self.globals = self.exp["globals"]
        self.memo: dict[tuple, str] = {}

    def _algo_hash(self, algorithm: str) -> str:
        return self.catalog.get("algorithm", algorithm).hash

    def _config(self, spec: dict, prefix: str = "") -> tuple[str, dict, dict, dict]:
        algorithm = spec[prefix + "algorithm"]
        params = dict(self.globals.get(algorithm, {}))
        params.update(spec.get(prefix + "parameters", {}))
        env = spec.get(prefix + "environment", self.globals.get("environment"))
        inputs = {a: self.source(f"{self.node}.{t}") for a, t in spec[prefix + "inputs"].items()}
        return algorithm, params, env, inputs

    def source(self, endpoint: str) -> str:
        """Hash of what feeds toolchain input ``endpoint``."""
        src_node, src_out = self.feeds[endpoint].split(".", 1)
        if src_node in self.exp["datasets"]:
            ds = self.exp["datasets"][src_node]
            return hashing.dataset_hash(ds["database"], ds["protocol"], ds["set"])
        return self.output(src_node, src_out)

    def output(self, node: str, tc_out: str) -> str:
        key = (node, tc_out)
        if key not in self.memo:
            saved, self.node = getattr(self, "node", None), node
            if node in self.exp.get("blocks", {}):
                spec, prefix = self.exp["blocks"][node], ""
            else:
                spec = self.exp["loops"][node]
                prefix = "processor_" if tc_out in spec["processor_outputs"].values() else "evaluator_"
            algo_out = {t: a for a, t in spec[prefix + "outputs"].items()}[tc_out]
            algorithm, params, env, inputs = self._config(spec, prefix)
            self.memo[key] = hashing.block_output_hash(self._algo_hash(algorithm), params, env, inputs, algo_out)
            self.node = saved
        return self.memo[key]

    def all(self) -> dict:
        out: dict = {"blocks": {}, "loops": {}, "analyzers": {}}
        for node, spec in self.exp.get("blocks", {}).items():
            out["blocks"][node] = {a: self.output(node, t) for a, t in spec["outputs"].items()}
        for node, spec in self.exp.get("loops", {}).items():
            out["loops"][node] = {
                part: {a: self.output(node, t) for a, t in spec[f"{part}_outputs"].items()}
                for part in ("processor", "evaluator")
            }
        for node, spec in self.exp["analyzers"].items():
            self.node = node
            algorithm, params, env, inputs = self._config(spec)
            out["analyzers"][node] = hashing.analyzer_hash(
                algorithm, self._algo_hash(algorithm), params, env, inputs)
        return out


@pytest.mark.parametrize("rec", EXPERIMENTS, ids=_id)
def test_block_and_analyzer_hashes_match_beat(rec: dict):
    assert BeatHashes(Catalog(PREFIX), rec["name"]).all() == rec["setup"]


@pytest.mark.parametrize(
    "rec", [r for r in EXPERIMENTS if not r["setup"]["loops"] and r.get("backbeat", "valid") == "valid"], ids=_id)
def test_planning_beat_hashes_match_beat(rec: dict):
    """backbeat.planning.planner's ``beat_hash`` of every job (loops are not planned yet)."""
    from backbeat.planning import planner as planning

    plan = planning.plan(Catalog(PREFIX), rec["name"])
    got = {"blocks": {}, "loops": {}, "analyzers": {}}
    for job in plan.jobs:
        got["analyzers" if job.kind == "analyzer" else "blocks"][job.name] = job.beat_hash
    assert got == rec["setup"]


# -- reference vectors of spec §4.7 (and §4.1) reproducible from our own files ----------
def test_spec_vector_single_integer():
    """``{"#schema_version": 1, "value": "int32"}`` is the spec's ``user/single_integer/1``."""
    vector = "678855156f241083a0f2cfe17521511a1edad028e92ec8c367351f27a0cbf0ef"
    files = Prefix(PREFIX).locate("dataformat", "bb/single_integer/1")
    assert hashing.hash_json_file(files.json, "#description") == vector
    assert hashing.hash_json({"#schema_version": 1, "value": "int32"}, "#description") == vector
    assert hashing.hash_json({"value": "int32", "#schema_version": 1, "#description": "x"}, "#description") == vector
    asset = Catalog(PREFIX).get("dataformat", "bb/single_integer/1")
    assert asset.valid and asset.hash == vector
    assert BY_NAME[("dataformat", "bb/single_integer/1")]["hash"] == vector


def test_spec_vectors_primitives():
    assert hashing.sha("123456") == "8d969eef6ecad3c29a3a629280e686cf0c3f5d5a86aff3ca12020c923adc6c92"
    assert hashing.sha("áéçü") == "477993339861be6552873127471f9da6ae443991d5aced735f51140c34cd7599"
    ds = hashing.dataset_hash("integers_db/1", "double", "double")
    assert ds == "73de0be62c5d2b203bbcbb2218d869ae283e6916217836a202d4bb2c1e183930"
    assert hashing.to_path(ds, ".db") == "73/de/0b/e62c5d2b203bbcbb2218d869ae283e6916217836a202d4bb2c1e183930.db"
    assert hashing.to_user_path("user") == "04/f8/user"


def test_spec_vectors_block_and_analyzer():
    """integers_addition/1: block `addition' output `sum', then analyzer `analysis'."""
    ds = "73de0be62c5d2b203bbcbb2218d869ae283e6916217836a202d4bb2c1e183930"
    env = {"name": "Python for tests", "version": "1.3.0"}
    sum_hash = hashing.block_output_hash(
        "c485b577395ff30f4b101c04d6556d82d4b3646d614a738ed67db01565b86d5a", {}, env, {"a": ds, "b": ds}, "sum")
    assert sum_hash == "9670995359ce49d72b0a327b51869577f1b20e97f7f518a04f84f61c78d66220"
    analysis = hashing.analyzer_hash(
        "v1/integers_analysis/1", "74487aab862dbd453d2b210c8445121146bf17602639272d8a45648cf37d8217",
        {}, env, {"input": sum_hash})
    assert analysis == "70aa8d6f5f4ba72811f73093aa40b262a9c0cfe20f667999e358d7306d281906"


def test_algorithm_hash_combines_declaration_and_code():
    """spec §4.2: sha('{"code":<code>,"declaration":<decl>}') for assets with code."""
    files = Prefix(PREFIX).locate("algorithm", "bb/echo/1")
    decl = hashing.hash_json_file(files.json, "description")
    code = hashing.hash_file_contents(files.code("python"))
    expected = hashing.sha('{"code":%s,"declaration":%s}' % (code, decl))
    assert hashing.code_asset_hash(decl, code) == expected == BY_NAME[("algorithm", "bb/echo/1")]["hash"]
    cxx = BY_NAME[("algorithm", "bb/cxx_algo/1")]["hash"]  # no code file: declaration hash only
    assert cxx == hashing.hash_json_file(Prefix(PREFIX).locate("algorithm", "bb/cxx_algo/1").json, "description")
