"""The executor table: executors by name, lazily imported; a new executor is one class and one
table entry, and gets the whole run lifecycle (decisions, report, provenance record)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from backbeat.core.errors import UsageError
from backbeat.execution import executors
from backbeat.execution.base import Executor
from backbeat.execution.local import LocalExecutor
from backbeat.execution.remote import RemoteJob, TaskResult, run
from backbeat.execution.specs import SpecBuilder
from backbeat.execution.state import JobState, Run
from backbeat.provenance import records

BASE = "run/run/pipeline/1/base"
RESULT = [{"start": 0, "end": 5, "data": {"count": 6, "sum": 81}}]


class SerialExecutor(Executor):
    """One block at a time, each through the remote runner (as a batch system would)."""

    name = "serial"

    def execute(self, run_: Run) -> None:
        specs = SpecBuilder(run_.plan, run_.workspace, run_.options.window)
        for job in run_.plan.jobs:
            if run_.state.status[job.name] != JobState.PENDING:
                continue
            needed = {i.node for i in job.inputs.values() if i.source == "dataset"}
            result = run(RemoteJob(job.key, specs.block(job), specs.datasets(needed), run_.store.location,
                                   run_.workspace.user_root))
            if result.status == "failed":
                assert result.outcome is not None
                run_.state.fail(job.name, result.outcome.error_json())
                return
            run_.state.stats[job.name] = result.statistics
            run_.set(job.name, JobState(result.status))


def _serve_runner() -> subprocess.Popen:
    """A ``python -m backbeat.remote --serve`` runner: jobs on its standard input, results on its output."""
    serve = subprocess.Popen([sys.executable, "-m", "backbeat.remote", "--serve"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert serve.stdin is not None and serve.stdout is not None
    return serve


class CommandExecutor(Executor):
    """Each block through ``python -m backbeat.remote``: the first alone (one job on standard
    input), the others through one ``--serve`` runner (jobs and results line by line)."""

    name = "command"

    def execute(self, run_: Run) -> None:
        specs = SpecBuilder(run_.plan, run_.workspace, run_.options.window)
        serve = _serve_runner()
        try:
            for k, job in enumerate(j for j in run_.plan.jobs if run_.state.status[j.name] == JobState.PENDING):
                needed = {i.node for i in job.inputs.values() if i.source == "dataset"}
                line = json.dumps(RemoteJob(job.key, specs.block(job), specs.datasets(needed), run_.store.location,
                                            run_.workspace.user_root).to_json())
                if k == 0:
                    out = subprocess.run([sys.executable, "-m", "backbeat.remote"], input=line, text=True,
                                         capture_output=True, check=True).stdout.splitlines()[-1]
                else:
                    serve.stdin.write(line + "\n")
                    serve.stdin.flush()
                    out = serve.stdout.readline()
                result = TaskResult.from_json(json.loads(out))
                assert result.status == "ran", result
                run_.state.stats[job.name] = result.statistics
                run_.set(job.name, JobState.RAN)
        finally:
            serve.stdin.close()
            assert serve.wait(30) == 0


def test_blocks_run_through_the_remote_runner_command_alone_or_served(copy_prefix, tmp_path, monkeypatch):
    prefix = copy_prefix()
    monkeypatch.setitem(executors.EXECUTORS, "command", f"{__name__}:CommandExecutor")
    rep = executors.run_experiment(prefix, tmp_path / "cache", BASE, executor_name="command")
    assert rep["status"] == "ok" and rep["results"] == {"analysis": RESULT}
    assert len(rep["blocks"]) >= 3 and {b["status"] for b in rep["blocks"].values()} == {"ran"}


def test_executors_are_named_in_one_table_and_imported_when_chosen():
    code = ("import sys; from backbeat.cli.command import build_parser; build_parser(); "  # --executor's choices
            "print(sorted(m for m in ('zmq', 'h5py', 'backbeat.execution.base') if m in sys.modules)); "
            "from backbeat.execution import executors as e; print(sorted(e.EXECUTORS)); "
            "print(type(e.executor('local')).__name__, 'backbeat.execution.dask_executor' in sys.modules, "
            "'distributed' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:3] == ["[]", "['dask', 'local']", "LocalExecutor False False"]


def test_unknown_executors_and_settings_are_refused():
    assert isinstance(executors.executor("local", scheduler=None), LocalExecutor)  # None: not given
    with pytest.raises(UsageError, match="unknown executor `cloud' \\(known: local, dask\\)"):
        executors.executor("cloud")
    with pytest.raises(UsageError, match="--scheduler cannot be used with the `local' executor "
                                         "\\(with --executor dask\\)"):
        executors.executor("local", scheduler="tcp://x:1")


def test_a_new_executor_is_one_class_and_one_table_entry(copy_prefix, tmp_path, monkeypatch):
    prefix = copy_prefix()
    monkeypatch.setitem(executors.EXECUTORS, "serial", f"{__name__}:SerialExecutor")
    rep = executors.run_experiment(prefix, tmp_path / "cache", BASE, executor_name="serial")
    assert rep["status"] == "ok" and rep["results"] == {"analysis": RESULT}
    assert {b["status"] for b in rep["blocks"].values()} == {"ran"}
    rec = records.load(tmp_path / "cache", rep["experiment"])
    assert rec is not None and rep["provenance"] == str(records.record_path(tmp_path / "cache", rep["experiment"]))
    assert {n: b["status"] for n, b in rec["blocks"].items()} == {n: "ran" for n in rep["blocks"]}
    again = executors.run_experiment(prefix, tmp_path / "cache", BASE, executor_name="serial")
    assert {b["status"] for b in again["blocks"].values()} == {"cached"}  # decided by the shared lifecycle


class LostZygoteExecutor(Executor):
    """The first block through a ``--serve`` runner; then its zygote is killed (as by the OOM
    killer): the next job fails, and the runner leaves rather than fail every job after it."""

    name = "lost"
    seen: list = []

    def execute(self, run_: Run) -> None:
        import psutil

        specs = SpecBuilder(run_.plan, run_.workspace, run_.options.window)
        serve = _serve_runner()
        try:
            for k, job in enumerate(j for j in run_.plan.jobs if run_.state.status[j.name] == JobState.PENDING):
                if k == 1:
                    for child in psutil.Process(serve.pid).children():  # its fork server's zygote
                        child.kill()
                needed = {i.node for i in job.inputs.values() if i.source == "dataset"}
                serve.stdin.write(json.dumps(RemoteJob(job.key, specs.block(job), specs.datasets(needed),
                                                       run_.store.location, run_.workspace.user_root).to_json()) + "\n")
                serve.stdin.flush()
                result = TaskResult.from_json(json.loads(serve.stdout.readline()))
                self.seen.append(result.status)
                if result.status == "failed":
                    assert result.outcome is not None
                    run_.state.fail(job.name, result.outcome.error_json())
                    break
                run_.state.stats[job.name] = result.statistics
                run_.set(job.name, JobState.RAN)
            self.seen.append(serve.stdout.readline())  # '' : it left
            self.seen.append(serve.wait(30))
        finally:
            serve.kill()


def test_a_served_runner_whose_zygote_died_leaves(copy_prefix, tmp_path, monkeypatch):
    prefix = copy_prefix()
    monkeypatch.setitem(executors.EXECUTORS, "lost", f"{__name__}:LostZygoteExecutor")
    rep = executors.run_experiment(prefix, tmp_path / "cache", BASE, executor_name="lost")
    assert rep["status"] == "failed"
    assert LostZygoteExecutor.seen == ["ran", "failed", "", 0]
