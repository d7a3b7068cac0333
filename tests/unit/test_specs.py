"""The typed contract between the executor and its processes: specs, remote jobs and outcomes
survive their JSON form unchanged, and malformed JSON is refused with a clear error."""

from __future__ import annotations

import dataclasses
import json

import pytest

from backbeat.core.errors import WireError
from backbeat.execution.remote import RemoteJob, TaskResult
from backbeat.processes.outcome import Outcome
from backbeat.runtime.spec import (
    BlockSpec,
    CodeFile,
    CodeSpec,
    DatasetSpec,
    InputSpec,
    LoopSpec,
    OutputSpec,
    ProviderSpec,
    StreamTarget,
)

FMT = {"value": "float64"}


def block(**changes) -> BlockSpec:
    spec = BlockSpec(
        name="scoring", kind="block", algorithm="user/score/1", type="sequential", channel="train",
        values={"shrinkage": 0.5, "mode": "fast"},
        code=CodeSpec(CodeFile("/c/code/aa/" + "a" * 62, "aa" + "a" * 62, "/p/algorithms/user/score/1.py",
                               {"la": "user/linalg/1"}),
                      {"user/linalg/1": CodeFile("/c/code/bb/" + "b" * 62, "bb" + "b" * 62,
                                                 "/p/libraries/user/linalg/1.py")}),
        inputs={"a": InputSpec("train", "user/f/1", "cache", key="a" * 64, path="/c/aa/a.h5", verify=False),
                "b": InputSpec("train", "user/f/1", "dataset", key="b" * 64, dataset="train", output="x"),
                "c": InputSpec("test", "user/f/1", "stream", address="ipc:///tmp/s0")},
        outputs={"out": OutputSpec("user/f/1", "c" * 64, "/c/cc/c.h5",
                                   (StreamTarget("ipc:///tmp/s1", "/tmp/s1.gone"),))},
        formats={"user/f/1": FMT}, database="ipc:///tmp/db", window=128, range=(10, 19), slot=1,
        loop=LoopSpec("processor", "ipc:///tmp/loop0", ("user/req/1", FMT), ("user/ans/1", {"ok": "bool"})),
    )
    return dataclasses.replace(spec, **changes)


def round_trip(obj):
    return type(obj).from_json(json.loads(json.dumps(obj.to_json())))


@pytest.mark.parametrize("spec", [block(), block(range=None, slot=None, loop=None, database=None),
                                  block(writeback=False)])
def test_block_spec_round_trip(spec):
    assert round_trip(spec) == spec
    assert spec.reads_datasets


def test_dataset_and_provider_specs_round_trip():
    ds = DatasetSpec("iris/1", CodeFile("/c/code/cc/" + "c" * 62, "cc" + "c" * 62, "/p/databases/iris/1.py"),
                     "Train", "/data/iris", {"fold": 1}, "/c/i.db", {"measurements": ("iris/measurements/1", FMT)},
                     "train_test", "train", {"root": "/data/iris", "code": "/p/databases/iris"}, "/c/i.db.journal",
                     "/c/manifests/x.json", "/c/.memo/stat.sqlite3")
    assert round_trip(ds) == ds
    assert round_trip(dataclasses.replace(ds, cores=2)).cores == 2  # (an indexing job's share of -j)
    provider = ProviderSpec("ipc:///tmp/db", {"train": ds})
    assert round_trip(provider) == provider


@pytest.mark.parametrize("mutate, message", [
    (lambda j: j.pop("name"), "`name'"),
    (lambda j: j["inputs"]["a"].update(source="ftp"), "unknown source"),
    (lambda j: j["loop"].update(role="judge"), "unknown role"),
    (lambda j: j["outputs"]["out"].update(key=None), "`key'"),
    (lambda j: j.update(writeback="no"), "`writeback'"),
    (lambda j: j.update(writeback=0), "`writeback'"),
])
def test_malformed_block_spec_is_refused(mutate, message):
    obj = block().to_json()
    mutate(obj)
    with pytest.raises(WireError, match=message):
        BlockSpec.from_json(obj)


def test_remote_job_and_task_results_round_trip():
    job = RemoteJob("d" * 64, block(range=None, slot=None, loop=None), {}, "/shared/cache", "/prefix", True, 5.0, 1 << 30)
    assert round_trip(job) == job
    ran = TaskResult("ran", statistics={"steps": 3})
    assert ran.to_json() == {"status": "ran", "statistics": {"steps": 3}}
    assert round_trip(ran) == ran
    failed = TaskResult("failed", Outcome("user", "boom", "Traceback…"))
    assert failed.to_json() == {"status": "failed", "kind": "user", "message": "boom", "traceback": "Traceback…"}
    assert round_trip(failed).outcome.error_json() == failed.outcome.error_json()
    assert TaskResult("cached").to_json() == {"status": "cached"}
    assert TaskResult.from_json({"status": "exploded"}).outcome.kind == "system"


def test_outcome_is_the_one_error_encoding():
    out = Outcome("exit", "the block called sys.exit(3)", None, {"steps": 1}, code=3)
    back = Outcome.from_json(json.loads(json.dumps(out.to_json())))
    assert (back.kind, back.message, back.traceback, back.statistics, back.code) == ("exit", out.message, None,
                                                                                     {"steps": 1}, 3)
    assert Outcome.from_json({"kind": "user", "message": "m", "traceback": ""}).traceback is None
    bad = Outcome.from_json(["not", "an", "outcome"])
    assert bad.kind == "system" and "malformed" in bad.message
