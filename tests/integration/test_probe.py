"""The probe of an indexing job on two cores gives what one process probing in order gives.

Real processes (the probe forks), real files opened by a view's ``get`` and seen through the
audit hook of :class:`~backbeat.runtime.dependencies.OpenRecorder`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest

from backbeat.runtime.dependencies import OpenRecorder
from backbeat.runtime.probe import PARALLEL_UNITS, probe
from conftest import wait_until


def _view(root: Path, fail_at: int | None = None):
    """A get reading one file per unit (the unit's entry), raising at entry ``fail_at``;
    and the calls of two outputs, 6 units each (entries 0, 2, .. 10 and 20, 22, .. 30)."""
    for k in list(range(0, 12, 2)) + list(range(20, 32, 2)):
        (root / f"{k}.txt").write_text(str(k))

    def get(output, start):
        if start == fail_at:
            raise ValueError(f"no unit {start}")
        with open(root / f"{start}.txt") as f:
            return {output: int(f.read())}

    return get, [("a", list(range(0, 12, 2))), ("b", list(range(20, 32, 2)))]


@pytest.mark.parametrize("fail_at", [None, 4, 24], ids=["complete", "first half fails", "second half fails"])
def test_two_processes_record_what_one_process_records(tmp_path, fail_at):
    """... and so do a copy probing while the job does other work (``meanwhile``: writing the
    index files) on two slots, the job probing the first half after it."""
    results = {}
    for parallel, meanwhile in ((False, False), (True, False), (True, True)):
        root = tmp_path / f"{parallel}-{meanwhile}"
        root.mkdir()
        get, calls = _view(root, fail_at)
        recorder = OpenRecorder({"root": str(root)})
        pids, done = [], []

        def watched(output, start, get=get, pids=pids):
            pids.append(os.getpid())  # (in a copy: its own list)
            return get(output, start)

        outcome = probe(watched, calls, recorder, parallel=parallel, cores=2,
                        meanwhile=(lambda done=done, pids=pids: done.append(len(pids))) if meanwhile else None)
        results[parallel, meanwhile] = outcome, sorted(recorder.seen), {v["phase"] for v in recorder.seen.values()}
        if meanwhile:
            assert done == [0] and len(pids) <= 12  # done once, here, before the job probed its chunks
    assert results[True, False] == results[False, False] == results[True, True]
    outcome, seen, phases = results[True, True]
    if fail_at is None:
        assert outcome == "complete" and len(seen) == 12 and phases == {"get"}
    else:
        assert outcome == f"stopped: ValueError: no unit {fail_at}"
        assert seen == sorted(f"root/{k}.txt" for k in (*range(0, 12, 2), *range(20, 32, 2)) if k < fail_at)


@pytest.mark.parametrize("fail_at", [None, 3, 17, 58, 59], ids=["complete", "job fails", "job's last unit",
                                                          "copy fails", "last unit fails"])
def test_the_copy_probes_what_the_job_cannot_reach_while_it_works(tmp_path, fail_at):
    """On two slots the copy takes chunks from the last one back while the job does its work: it
    probes more than half the units when the work lasts (a fixed half left it idle then; here the
    work waits until the copy has passed the middle, up to 20 s), and the result is still what
    one process probing in order gives, whichever process a failure falls in."""
    files = tmp_path / "files"
    files.mkdir()
    for k in range(60):
        (files / f"{k}.txt").write_text(str(k))
    calls = [("a", list(range(0, 20))), ("b", list(range(20, 25))), ("c", list(range(25, 60)))]
    marks = tmp_path / "marks"

    def get(output, start):
        if start == fail_at:
            raise ValueError(f"no unit {start}")
        with open(files / f"{start}.txt") as f:
            f.read()
        with open(marks, "a") as f:  # (not under a watched folder)
            f.write(f"{os.getpid()} {start}\n")

    def work():  # the job's own work, until the copy has probed 40 units (or 20 s; 2 s if it may fail first)
        wait_until(lambda: marks.exists() and len(marks.read_text().split("\n")) > 40, timeout=20 if fail_at is None else 2)

    results = []
    for parallel in (False, True):
        marks.unlink(missing_ok=True)
        recorder = OpenRecorder({"root": str(files)})
        outcome = probe(get, calls, recorder, parallel=parallel, cores=2, meanwhile=work if parallel else None)
        results.append((outcome, sorted(recorder.seen)))
    assert results[0] == results[1]
    expected = [f"root/{k}.txt" for k in range(60) if fail_at is None or k < fail_at]
    assert results[1] == ("complete" if fail_at is None else f"stopped: ValueError: no unit {fail_at}", sorted(expected))
    if fail_at is None:
        by = [line.split()[0] for line in marks.read_text().splitlines()]
        assert len(by) == 60 and by.count(str(os.getpid())) < 20  # the copy probed more than 40 of 60 units


def test_work_done_meanwhile_that_fails_stops_both_halves(tmp_path):
    """What ``meanwhile`` raises is raised at once: the copy probing (which would sleep a minute
    here) is killed and reaped."""
    get, calls = _view(tmp_path)
    pids = tmp_path / "pids"

    def slow(output, start):
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(60)

    def failing():
        assert wait_until(lambda: pids.exists() and len(set(pids.read_text().split())) == 1)
        raise OSError(28, "No space left on device")

    t0 = time.monotonic()
    with pytest.raises(OSError, match="No space left"):
        probe(slow, calls, OpenRecorder({"root": str(tmp_path)}), parallel=True, cores=2, meanwhile=failing)
    assert time.monotonic() - t0 < 20
    for child in set(map(int, pids.read_text().split())):
        with pytest.raises(ChildProcessError):  # reaped: no child of ours left
            os.waitpid(child, os.WNOHANG)
        assert not psutil.pid_exists(child)


def test_a_job_with_work_of_its_own_keeps_to_its_two_slots(tmp_path):
    """On two ``-j`` slots, a job writing its index files while it probes forks one copy, not two
    (three busy processes on two slots: the review of wave 8)."""
    get, calls = _view(tmp_path)
    copies, before = [], {c.pid for c in psutil.Process().children()}  # (a test runner's own children)
    outcome = probe(get, calls, OpenRecorder({"root": str(tmp_path)}), parallel=True, cores=2,
                    meanwhile=lambda: copies.append(len({c.pid for c in psutil.Process().children()} - before)))
    assert outcome == "complete" and copies == [1]


@pytest.mark.parametrize("cores", [2, 3])
def test_in_copy_runs_in_each_probing_copy_only(tmp_path, cores):
    """``in_copy`` (an indexing job: its view then reads the table's entries, not the job's list) is
    called in each forked copy before it probes, never in the job; the result is unchanged."""
    get, calls = _view(tmp_path)
    marks = tmp_path / "marks"

    def in_copy():
        with open(marks, "a") as f:
            f.write(f"{os.getpid()}\n")

    outcome = probe(get, calls, OpenRecorder({"root": str(tmp_path)}), parallel=True, cores=cores,
                    meanwhile=lambda: None, in_copy=in_copy)
    assert outcome == "complete"
    pids = marks.read_text().split()
    assert str(os.getpid()) not in pids and len(set(pids)) == len(pids) >= 1


def test_a_second_half_that_dies_stops_the_probe(tmp_path):
    get, calls = _view(tmp_path)
    parent = os.getpid()

    def dying(output, start):
        if os.getpid() != parent:
            (tmp_path / "died").touch()
            os._exit(3)  # (user code killing its process)
        return get(output, start)

    outcome = probe(dying, calls, OpenRecorder({"root": str(tmp_path)}), parallel=True,  # (the job waits for it)
                    cores=2, meanwhile=lambda: wait_until((tmp_path / "died").exists))
    assert outcome == "stopped: the process probing the second half of the units ended (exit code 3)"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one usable core: the probe never forks")
def test_a_job_given_one_slot_probes_in_one_process(tmp_path):
    """With ``-j`` slots for one process only (``cores=1``), a large probe does not fork."""
    parent, seen = os.getpid(), []
    calls = [("a", range(PARALLEL_UNITS))]
    for cores in (1, 2):
        seen.clear()
        assert probe(lambda output, start: seen.append(os.getpid()), calls, OpenRecorder({}), cores=cores) == "complete"
        assert set(seen) == {parent}
        assert len(seen) == PARALLEL_UNITS if cores == 1 else len(seen) < PARALLEL_UNITS  # (a copy probed the rest)


def test_an_interrupted_probe_kills_and_reaps_its_second_half_at_once(tmp_path):
    """A signal (KeyboardInterrupt) in the first half: the second half is killed and reaped, not
    waited for (it would sleep a minute here)."""
    get, calls = _view(tmp_path)
    parent = os.getpid()

    def interrupted(output, start):
        if os.getpid() != parent and not (tmp_path / "child").exists():
            (tmp_path / "child").write_text(str(os.getpid()))
            time.sleep(60)
        elif start == 4:
            assert wait_until(lambda: (tmp_path / "child").exists() and (tmp_path / "child").read_text())
            raise KeyboardInterrupt
        return get(output, start)

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        probe(interrupted, calls, OpenRecorder({"root": str(tmp_path)}), parallel=True)
    assert time.monotonic() - t0 < 20
    child = int((tmp_path / "child").read_text())
    with pytest.raises(ChildProcessError):  # reaped: no child of ours left
        os.waitpid(child, os.WNOHANG)
    assert not psutil.pid_exists(child)


MARKS_VIEW = '''
import collections, os

import numpy
from beat.backend.python.database import View

Entry = collections.namedtuple("Entry", ["value"])


class Marks(View):
    def index(self, root_folder, parameters):
        return [Entry(i) for i in range(parameters["n"])]

    def get(self, output, index):
        mark = os.path.join(self.parameters["marks"], str(os.getpid()))  # the processes that probe
        if not os.path.exists(mark):
            open(mark, "w").close()
        return {"value": numpy.int32(index)}
'''


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one usable core: the probe never forks")
def _marks_prefix(copy_prefix, tmp_path: Path, view: str, n: int) -> Path:
    """The parallel fixture's prefix with a database ``marks/1`` of ``n`` units served by ``view``'s code."""
    from conftest import FIXTURES

    prefix = copy_prefix(FIXTURES / "parallel" / "prefix")
    (prefix / "databases" / "marks").mkdir()
    (prefix / "databases" / "marks" / "1.py").write_text(view)
    (prefix / "databases" / "marks" / "1.json").write_text(json.dumps({
        "schema_version": 2, "root_folder": str(tmp_path), "protocols": [{
            "name": "p", "template": "par_sets/1",
            "views": {"items": {"view": "Marks", "parameters": {"n": n, "marks": str(tmp_path)}}}}]}))
    return prefix


def _index(workspace, jobs: int):
    """Index the database ``marks/1`` of ``workspace`` as a run with ``jobs`` slots does; the run (ended)."""
    from backbeat.execution.datasets import _datasets
    from backbeat.execution.state import Run, local_group
    from backbeat.execution.views import index_datasets
    from backbeat.planning.selection import Options

    run = Run(_datasets(workspace, "marks/1"), workspace, Options(jobs=jobs, force=True), local_group(workspace.user_root))
    try:
        index_datasets(run)
    finally:
        run.close()
        run.end()
    assert not run.state.dataset_errors, run.state.dataset_errors
    return run


def test_an_indexing_job_probes_on_two_cores_only_with_two_slots(copy_prefix, tmp_path):
    """A dataset indexed alone with ``-j 1`` is probed by one process; with ``-j 2`` by two."""
    from backbeat.execution.workspace import Workspace

    prefix = _marks_prefix(copy_prefix, tmp_path, MARKS_VIEW, PARALLEL_UNITS)
    workspace = Workspace.open(prefix, tmp_path / "cache")
    for jobs in (1, 2):
        for mark in tmp_path.glob("[0-9]*"):
            mark.unlink()
        _index(workspace, jobs)
        assert len(list(tmp_path.glob("[0-9]*"))) == jobs


def test_units_given_as_an_array_reach_get_as_ints_in_both_processes(tmp_path):
    """The units' first entries may be a numpy array (the job's: ints are made a range at a time, so a
    copy never touches ints made for the job): ``get`` receives ``int`` in one process probing them
    all and in a forked copy, and the probe records what it records from a list."""
    import numpy as np

    found = {}
    for kind in ("list", "array"):
        for parallel in (False, True):
            root = tmp_path / f"{kind}-{parallel}"
            root.mkdir()
            get, calls = _view(root)
            types = tmp_path / f"{kind}-{parallel}.types"

            def watched(output, start, get=get, types=types):
                with open(types, "a") as f:
                    f.write(f"{os.getpid()} {type(start).__name__}\n")
                return get(output, start)

            def work(types=types):  # (the job's work: until its copy has probed a unit, up to 20 s)
                wait_until(lambda: types.exists() and types.read_text().strip() != "", timeout=20)

            given = [(o, np.array(s, dtype=np.int64)) for o, s in calls] if kind == "array" else calls
            recorder = OpenRecorder({"root": str(root)})
            assert probe(watched, given, recorder, parallel=parallel, cores=2,
                         meanwhile=work if parallel else None) == "complete"
            lines = [line.split() for line in types.read_text().splitlines()]
            assert parallel == any(pid != str(os.getpid()) for pid, _ in lines)  # (a copy probed)
            found[kind, parallel] = sorted(recorder.seen), {t for _, t in lines}
    expected = sorted(f"root/{k}.txt" for k in (*range(0, 12, 2), *range(20, 32, 2))), {"int"}
    assert list(found.values()) == [expected] * 4


FREED_VIEW = MARKS_VIEW.replace("class Marks(View):\n", '''class Marks(View):
    def __del__(self):  # (a view freed: its process says so)
        with open(os.path.join(self.parameters["marks"], f"freed-{os.getpid()}"), "a") as f:
            f.write("freed\\n")

''').replace("    def index(self, root_folder, parameters):\n", '''    def index(self, root_folder, parameters):
        self.parameters = parameters
''')


def test_an_indexing_job_process_leaves_without_freeing_what_it_made(copy_prefix, tmp_path):
    """A job process (``job_main``: it reports ``done``, then leaves through ``os._exit``) keeps its
    view, its entries and its table: freeing 1M entries one by one cost 0.1-0.25 s that the keys
    waited for.  Called in a process that lives on, the job frees them as it returns."""
    from backbeat.execution.workspace import Workspace

    prefix = _marks_prefix(copy_prefix, tmp_path, FREED_VIEW, 100)
    workspace = Workspace.open(prefix, tmp_path / "cache")
    run = _index(workspace, 1)
    probed = [p.name for p in tmp_path.glob("[0-9]*")]
    assert len(probed) == 1 and int(probed[0]) != os.getpid()  # (indexed, by a job process)
    assert not list(tmp_path.glob("freed-*"))

    from backbeat.execution.specs import SpecBuilder
    from backbeat.runtime import dbprovider

    spec = SpecBuilder(run.plan, workspace).dataset(next(iter(run.plan.datasets)), str(tmp_path / "deps.json"))
    assert dbprovider.build_index({"spec": spec.to_json()})["probe"] == "complete"  # (in this process: freed)
    assert (tmp_path / f"freed-{os.getpid()}").read_text() == "freed\n" * 2  # (the view index() ran on, get's)
