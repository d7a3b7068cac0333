"""Cache decisions of a run: which jobs run, given what the cache holds and can be trusted.

:func:`decide` asks the store which jobs have their outputs committed, verifies what the
run is about to trust — cached analyzer results (read at the end of the run), and the cached
files that jobs about to run will read — and applies the selection options
(:func:`backbeat.planning.selection.decide`).  A corrupted file is removed and its producer
re-run, with everything downstream of it.  Jobs downstream of a dataset that could not be
indexed have no key: they are ``blocked``.
"""

from __future__ import annotations

from backbeat.core.errors import IntegrityError
from backbeat.execution.state import Run
from backbeat.planning.model import Job
from backbeat.planning.selection import decide as select
from backbeat.planning.selection import descendants


def _trusted(run: Run, key: str, producer: str) -> bool:
    """Verify one cached output against its digest; a corrupted one is removed (and said)."""
    try:
        run.store.verify_output(key)
        return True
    except (IntegrityError, OSError) as exc:
        run.emit(producer, "corrupt", message=str(exc))
        run.store.discard(key)
        return False


def _intact(run: Run, job: Job) -> bool:
    """Verify a cached job's output files (False if any was corrupted, and removed)."""
    ok = True
    for o in job.outputs.values():
        if run.store.result_summary(o.key) is None and not _trusted(run, o.key, job.name):
            ok = False  # (a summary: verified before and unchanged since)
    return ok


def _corrupted_inputs(run: Run, to_run: set[str]) -> set[str]:
    """Verify the cached files read by jobs that will run; the producers to re-run."""
    rerun: set[str] = set()
    jobs = run.jobs
    for name in to_run:
        for inp in jobs[name].inputs.values():
            if inp.source == "block" and inp.node not in to_run and not _trusted(run, inp.key, inp.node):
                rerun.add(inp.node)
    return rerun


def decide(run: Run) -> dict[str, tuple[str, str]]:
    """``{job: (action, reason)}``: action ``run``, ``cached``, ``excluded`` or ``blocked``."""
    plan = run.plan
    blocked = {j.name for j in plan.jobs if not j.key}  # downstream of an unindexable dataset
    committed = {j.name: j.name not in blocked and run.store.committed(j.output_keys) for j in plan.jobs}
    for job in plan.jobs:  # cached analyzer results are read at the end: verify them now
        if job.kind == "analyzer" and committed[job.name] and not _intact(run, job):
            committed[job.name] = False
    decisions = select(plan, committed, run.options)
    for name in blocked:
        decisions[name] = ("blocked", "a dataset it needs could not be indexed")
    to_run = {n for n, (a, _r) in decisions.items() if a == "run"}
    while True:  # re-run producers of corrupted files (and everything downstream of them)
        extra = _corrupted_inputs(run, to_run) - to_run
        if not extra:
            return decisions
        for n in extra:
            decisions[n] = ("run", "its cached output is corrupted")
        to_run |= extra
        for n in descendants(plan, extra):
            if n not in to_run and decisions[n][0] != "excluded":
                decisions[n] = ("run", "an upstream output is re-computed")
                to_run.add(n)
