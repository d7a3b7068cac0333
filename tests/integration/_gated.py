"""Test prefix additions: views that index only once something else has happened (tests that
prove indexing overlaps with blocks, or with other indexing, without timing anything).

Added to a copy of ``tests/fixtures/parallel/prefix``: database ``gated/1`` (view ``Gated``:
items 1..n, two entries each, like ``spin/1``; its ``index()`` first appends ``announce`` to
the file ``log`` (default: the one named by ``$PARALLEL_FIXTURE_LOG``, which the local fork
server may have inherited from an earlier test), then waits up to ``wait_s`` (60) seconds for the
line ``after`` in it — a block's setup logs ``ms=<ms>`` there — raising if it never comes
(unless ``lenient``), then appends ``finish``; or it raises at once with ``fail``), analyzer ``par/one/1``
(sum and count of one input) and toolchain ``par/gate/1``: ``items -> left -> al`` and
``gated -> right -> ar``, two datasets that no block reads both of.
"""

from __future__ import annotations

import json
from pathlib import Path

GATED_VIEW = '''
import collections, os, time

import numpy
from beat.backend.python.database import View

Entry = collections.namedtuple("Entry", ["value"])


class Gated(View):
    def index(self, root_folder, parameters):
        if parameters["fail"]:
            raise RuntimeError("this view cannot index")
        log, after = parameters.get("log") or os.environ["PARALLEL_FIXTURE_LOG"], parameters["after"]
        if parameters["announce"]:
            with open(log, "a") as f:
                f.write(parameters["announce"] + "\\n")
        deadline = time.monotonic() + parameters.get("wait_s", 60)
        while after and not (os.path.exists(log) and after in open(log).read().split()):
            if time.monotonic() > deadline:
                if parameters.get("lenient"):
                    break
                raise RuntimeError(f"nothing logged {after} while this view was indexed")
            time.sleep(0.05)
        if parameters.get("finish"):
            with open(log, "a") as f:
                f.write(parameters["finish"] + "\\n")
        return [Entry(i // 2 + 1) for i in range(2 * int(parameters["n"]))]

    def get(self, output, index):
        return {"value": numpy.int32(self.objs[index].value)}
'''

ONE_INPUT = '''
import numpy


class Algorithm:
    def setup(self, parameters):
        self.sum = self.count = 0
        return True

    def process(self, inputs, data_loaders, output):
        self.sum += int(inputs["a"].data.value)
        self.count += 1
        if not inputs.hasMoreData():
            output.write({"sum": numpy.int32(self.sum), "count": numpy.int32(self.count)})
        return True
'''

#: what ``al`` and ``ar`` give over 20 items through ``par/busy/1`` (value * value + 1)
ONE_RESULT = [{"start": 0, "end": 39, "data": {"count": 20, "sum": 2890}}]


def write_gated(prefix: Path, protocols: dict[str, dict]) -> None:
    """Add ``gated/1`` with one protocol per entry of ``protocols`` (``{"after", "announce",
    "fail"}``, optionally ``log``, ``wait_s``, ``lenient``, ``finish``; 20 items each), ``par/one/1`` and
    ``par/gate/1`` to ``prefix``."""
    db = prefix / "databases" / "gated"
    db.mkdir()
    (db / "1.py").write_text(GATED_VIEW)
    (db / "1.json").write_text(json.dumps({"schema_version": 2, "root_folder": "/backbeat/tests/gated", "protocols": [
        {"name": name, "template": "par_sets/1", "views": {"items": {"view": "Gated", "parameters": {"n": 20, **p}}}}
        for name, p in protocols.items()]}))
    alg = prefix / "algorithms" / "par" / "one"
    alg.mkdir()
    (alg / "1.py").write_text(ONE_INPUT)
    (alg / "1.json").write_text(json.dumps({
        "schema_version": 2, "api_version": 2, "type": "sequential", "language": "python",
        "groups": [{"name": "main", "inputs": {"a": {"type": "par/timed/1"}}}],
        "results": {"sum": {"type": "int32", "display": True}, "count": {"type": "int32", "display": False}}}))
    tc = prefix / "toolchains" / "par" / "gate"
    tc.mkdir()
    (tc / "1.json").write_text(json.dumps({
        "datasets": [{"name": "items", "outputs": ["value"]}, {"name": "gated", "outputs": ["value"]}],
        "blocks": [{"name": "left", "synchronized_channel": "items", "inputs": ["value"], "outputs": ["out"]},
                   {"name": "right", "synchronized_channel": "gated", "inputs": ["value"], "outputs": ["out"]}],
        "analyzers": [{"name": "al", "synchronized_channel": "items", "inputs": ["a"]},
                      {"name": "ar", "synchronized_channel": "gated", "inputs": ["a"]}],
        "connections": [{"from": "items.value", "to": "left.value", "channel": "items"},
                        {"from": "gated.value", "to": "right.value", "channel": "gated"},
                        {"from": "left.out", "to": "al.a", "channel": "items"},
                        {"from": "right.out", "to": "ar.a", "channel": "gated"}],
        "representation": {"connections": {}, "blocks": {}, "channel_colors": {}}}))


def gate_experiment(prefix: Path, name: str, items: tuple[str, str], gated: tuple[str, str],
                    ms: tuple[float, float]) -> str:
    """An experiment of ``par/gate/1``: datasets ``items`` and ``gated`` as (database, protocol)
    (set ``items``), blocks ``left``/``right`` busy ``ms`` per unit; its name."""
    busy = json.loads((prefix / "experiments/par/par/two/1/base.json").read_text())
    folder = prefix / "experiments" / "par" / "par" / "gate" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({
        "datasets": {"items": {"database": items[0], "protocol": items[1], "set": "items"},
                     "gated": {"database": gated[0], "protocol": gated[1], "set": "items"}},
        "blocks": {"left": {**busy["blocks"]["left"], "parameters": {"ms": ms[0]}},
                   "right": {**busy["blocks"]["right"], "parameters": {"ms": ms[1]}}},
        "analyzers": {"al": {"algorithm": "par/one/1", "inputs": {"a": "a"}},
                      "ar": {"algorithm": "par/one/1", "inputs": {"a": "a"}}},
        "globals": busy["globals"]}))
    return f"par/par/gate/1/{name}"
