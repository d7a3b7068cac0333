"""Cache decisions of a run: which jobs run, given what the cache holds and can be trusted.

:func:`decide` asks the store which jobs have their outputs committed, checks that each
cached entry holds the key it is found under (a copied or moved file does not; memoised by
``stat``, so a cached run opens no HDF5 file), verifies what the run is about to trust —
cached analyzer results (read at the end of the run: their summaries must be bound to the
verified file, :mod:`backbeat.cache.results`), and the cached files that jobs about to run
will read — and applies the selection options (:func:`backbeat.planning.selection.decide`).
An entry that is not what its name says is moved to the cache's quarantine, reported (in
the progress display and the run report's ``incidents``) and its producer re-run.  A job
reading a dataset that could not be indexed ``failed``, the jobs downstream of it (they
have no key) are ``blocked``.  The run and ``--dry-run`` both take their decisions from
here (``execution/base.py``).
"""

from __future__ import annotations

from collections.abc import Collection

from backbeat.cache.results import check_result
from backbeat.core.errors import IntegrityError, describe_environmental, environmental
from backbeat.execution.state import Run
from backbeat.planning.model import Job
from backbeat.planning.selection import Decision, with_twins
from backbeat.planning.selection import decide as select


def _reject(run: Run, key: str, producer: str, exc: Exception) -> None:
    """Quarantine an entry found not to hold what its key says, and say so.  One that could not
    be read (the machine failed: an input/output error…) is not trusted either, but left in place."""
    failure = None if isinstance(exc, IntegrityError) else environmental(exc)
    if failure is not None:
        run.incident(producer, f"cache entry {key[:12]} could not be checked: "
                               f"{describe_environmental(failure, doing='reading')}")
        return
    run.incident(producer, run.store.reject(key, str(exc)))


def _trusted(run: Run, key: str, producer: str) -> bool:
    """Verify one cached output (identity and content); a bad one is quarantined (and said)."""
    try:
        run.store.verify_output(key)
        return True
    except (IntegrityError, OSError) as exc:
        _reject(run, key, producer, exc)
        return False


def _identified(run: Run, job: Job) -> bool:
    """Check that each output entry of a cached job holds its key (False if one did not)."""
    ok = True
    for o in job.outputs.values():
        try:
            run.store.check_identity(o.key)
        except (IntegrityError, OSError) as exc:
            _reject(run, o.key, job.name, exc)
            ok = False
    return ok


def _intact(run: Run, job: Job) -> bool:
    """Check a cached analyzer's results: each bound to its verified file (False if a file did
    not hold, and was quarantined; a summary that did not match is rebuilt, and said)."""
    ok = True
    for o in job.outputs.values():
        try:
            problem = check_result(run.store, o.key)
        except (IntegrityError, OSError) as exc:
            _reject(run, o.key, job.name, exc)
            ok = False
            continue
        if problem:
            run.incident(job.name, problem)
    return ok


def _corrupted_inputs(run: Run, decisions: dict[str, Decision], jobs: Collection[str] | None) -> set[str]:
    """Verify the cached files read by jobs that will run; the producers to re-run.

    (Only files in the cache now: not those of a twin, which its twin job is about to write.)
    """
    rerun: set[str] = set()
    nodes = run.jobs
    for name, decision in decisions.items():
        if decision.action != "run" or (jobs is not None and name not in jobs):
            continue
        for inp in nodes[name].inputs.values():
            producer = decisions.get(inp.node) if inp.source == "block" else None
            if (producer is not None and producer.action == "cached" and producer.twin is None
                    and not _trusted(run, inp.key, inp.node)):
                rerun.add(inp.node)
    return rerun


def decide(run: Run, jobs: Collection[str] | None = None) -> dict[str, Decision]:
    """``{job: Decision}`` (:class:`~backbeat.planning.selection.Decision`): the selection
    (:func:`backbeat.planning.selection.decide`) over what the cache holds and can be trusted.

    A job reading a dataset whose view could not be indexed ``failed``; the jobs downstream
    of it are ``blocked`` (they have no key), unless not selected anyway.  The producer of a
    corrupted file that a running job reads is re-run (its output was removed); the jobs
    downstream of it keep their own decisions: the re-computed output has the same key.
    ``jobs``: only the decisions of these jobs are wanted (the inputs of the others are not
    verified: they were decided before, and may be running).
    """
    plan = run.plan
    broken = set(run.state.dataset_errors)
    blocked = {j.name for j in plan.jobs if not j.key}  # downstream of an unindexable dataset
    committed = {j.name: j.name not in blocked and run.store.committed(j.output_keys) for j in plan.jobs}
    for job in plan.jobs:  # cached analyzer results are read at the end: verify them now
        if committed[job.name] and not (_intact(run, job) if job.kind == "analyzer" else _identified(run, job)):
            committed[job.name] = False
    run.store.flush()
    decisions = select(plan, committed, run.options)
    for job in plan.jobs:
        if job.name not in blocked or decisions[job.name].action == "excluded":
            continue
        failed = sorted({i.node for i in job.inputs.values() if i.source == "dataset"} & broken)
        decisions[job.name] = (Decision("failed", f"its dataset `{failed[0]}' could not be indexed") if failed
                               else Decision("blocked", "a dataset it needs could not be indexed"))
    while True:  # re-run producers of corrupted files read by jobs that run (until none is left)
        extra = _corrupted_inputs(run, decisions, jobs)
        if not extra:
            run.store.flush()
            return with_twins(plan, decisions)
        for n in extra:
            decisions[n] = Decision("run", "its cached output is corrupted")
