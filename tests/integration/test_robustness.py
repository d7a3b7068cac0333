"""Malformed input never crashes, hangs or escapes the prefix.

Thousands of random mutations of the valid declarations of the BEAT fixture prefix (every
kind) go through the real catalog, with files rewritten on disk: validation must finish
quickly with a verdict (and every problem located in a file), never raise.  Then broken,
binary and unreadable files and path-traversal names go through the real CLI.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backbeat.core import hashing
from backbeat.core.errors import BackbeatError
from backbeat.declarations.catalog import Catalog
from conftest import FIXTURES, run_cli

BEAT = FIXTURES / "beat"
VALID = [(r["kind"], r["name"]) for r in json.loads((BEAT / "expected.json").read_text())
         if r["beat"] == "valid"]
KINDS = sorted({k for k, _ in VALID})


@pytest.fixture(scope="module")
def prefix(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("robust") / "prefix"
    shutil.copytree(BEAT / "prefix", root)
    return root


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
                      st.sampled_from(["int32", "float64", "string", "user/x/1", "a.b", "../../etc/passwd",
                                       "/abs/path", "bb/echo/1", "x" * 120]))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def _paths(doc, here=()):
    yield here
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*here, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*here, i))


def _apply(doc, path: tuple, op: str, value=None, key: str = ""):
    """One mutation of ``doc`` in place (the new root for a root ``replace``); a path that no
    longer leads anywhere (an earlier step replaced its parent) leaves ``doc`` as it is."""
    if not path:
        return value if op == "replace" else doc
    parent = doc
    try:
        for p in path[:-1]:
            parent = parent[p]
        last = path[-1]
        if op == "replace":
            parent[last] = value
        elif op == "delete":
            del parent[last]
        elif op == "wrap":
            parent[last] = [parent[last]]
        elif isinstance(parent, dict):
            parent[key] = value
        elif isinstance(parent, list):
            parent.append(value)
    except (KeyError, IndexError, TypeError):
        pass
    return doc


def _mutate(doc, data) -> object:
    doc = json.loads(json.dumps(doc))
    for _ in range(data.draw(st.integers(1, 3))):
        # the paths of the document as it is now: an earlier step may have replaced a list by a
        # scalar (adding into it through the old paths crashed this helper)
        path = data.draw(st.sampled_from(list(_paths(doc))))
        op = data.draw(st.sampled_from(["replace", "delete", "add", "wrap"]))
        value = data.draw(json_value) if op in ("replace", "add") else None
        key = data.draw(st.text(max_size=8)) if op == "add" and isinstance(_at(doc, path[:-1]), dict) else ""
        doc = _apply(doc, path, op, value, key)
        if not path and op == "replace":
            return doc
    return doc


def _at(doc, path: tuple):
    for p in path:
        doc = doc[p]
    return doc


def test_mutation_helper_survives_a_replaced_parent():
    """The draw that made the hypothesis test fail every time once in its example database."""
    doc = _apply({"sets": [{"name": "a"}]}, ("sets",), "replace", None)
    assert _apply(doc, ("sets", 0), "add", 1) == {"sets": None}
    assert _apply(doc, ("sets", 0), "replace", 1) == {"sets": None}
    assert _apply({"a": 1}, (), "replace", [2]) == [2]


class _Timeout(Exception):
    pass


def _alarm(_sig, _frame):
    raise _Timeout()


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_random_mutations_get_a_verdict(prefix, kind, data):
    name = data.draw(st.sampled_from([n for k, n in VALID if k == kind]))
    files = Catalog(prefix).prefix.locate(kind, name)
    original = files.json.read_bytes()
    mutated = _mutate(json.loads(original), data)
    files.json.write_text(json.dumps(mutated))
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(5)
    try:
        asset = Catalog(prefix).get(kind, name)  # must not raise, must not hang
        for p in asset.problems:
            assert p.message and p.file, p
        if kind == "experiment" and asset.valid:
            from backbeat.planning.planner import plan

            try:
                plan(Catalog(prefix), name)  # a valid experiment plans, or says why it can't
            except BackbeatError:
                pass
    except _Timeout:
        pytest.fail(f"validating a mutation of {kind} {name} took over 5 s: {mutated!r}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        files.json.write_bytes(original)


def test_broken_binary_and_unreadable_files_through_the_cli(tmp_path):
    root = tmp_path / "prefix"
    (root / "dataformats" / "u" / "broken").mkdir(parents=True)
    (root / "dataformats" / "u" / "broken" / "1.json").write_text('{"value": "int32",')
    (root / "dataformats" / "u" / "binary").mkdir(parents=True)
    (root / "dataformats" / "u" / "binary" / "1.json").write_bytes(bytes(range(256)) * 4)
    (root / "dataformats" / "u" / "dir" / "1.json").mkdir(parents=True)  # a folder where a file should be
    (root / "dataformats" / "u" / "dup").mkdir(parents=True)
    (root / "dataformats" / "u" / "dup" / "1.json").write_text('{"value": "int32", "value": "int8"}')
    proc = run_cli("-p", root, "check", "--json")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    reports = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(reports) == {"u/broken/1", "u/binary/1", "u/dup/1"}  # the folder is not an asset file
    assert "line 1" in reports["u/broken/1"]["errors"][0]["message"]
    assert "UTF-8" in reports["u/binary/1"]["errors"][0]["message"]
    assert "several times" in reports["u/dup/1"]["errors"][0]["message"]
    assert not any(r["valid"] for r in reports.values())
    # BEAT's storage hash even when unparseable: the raw bytes (invalid JSON; not UTF-8, where BEAT
    # crashes), the lenient parse for duplicate keys (last value wins)
    for name in ("broken", "binary"):
        raw = (root / "dataformats" / "u" / name / "1.json").read_bytes()
        assert reports[f"u/{name}/1"]["hash"] == hashlib.sha256(raw).hexdigest()
    assert reports["u/dup/1"]["hash"] == hashing.hash_json({"value": "int8"}, "#description")
    proc = run_cli("-p", root, "dataformats", "check", "u/dir/1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert "u/dir/1" in proc.stdout + proc.stderr
    for name in ("../../etc/passwd", "/etc/passwd", "u/x/1/../../..", "u/x y/1", "u/../1"):
        proc = run_cli("-p", root, "dataformats", "show", name)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (name, proc.stderr)
