"""Which jobs of a plan run, and why: pure functions of the plan and the cache state.

:func:`decide` turns ``{job: output committed?}`` and the run options (``--force``,
``--only``, ``--from``, ``--until``) into ``{job: Decision}``: the one decision that
``--dry-run`` prints and the run carries out (``docs/execution.md`` §3).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from backbeat.core.errors import ExecutionError
from backbeat.declarations.algorithm import STEPPED_TYPES


@dataclass
class Options:
    force: bool = False
    only: str | None = None  # run just this block (its inputs must be cached)
    from_: str | None = None  # re-run this block and everything downstream
    until: str | None = None  # run only this block and what it needs
    jobs: int = 0  # 0 = number of cores
    timeout_s: float | None = None
    memory_bytes: int | None = None
    window: int = 4096
    stream: bool = True  # a consumer may read an output while its producer writes it (backbeat.streams)
    sandbox: bool = False  # every process of the run in the sandbox (backbeat.processes.sandbox)


def descendants(plan: Any, names: set[str]) -> set[str]:
    """Every job downstream of ``names`` (excluded)."""
    out: set[str] = set()
    frontier = set(names)
    while frontier:
        frontier = {j.name for j in plan.jobs if set(j.depends) & frontier} - out
        out |= frontier
    return out


def ancestors(plan: Any, name: str) -> set[str]:
    """Every job ``name`` needs, directly or not (excluded)."""
    jobs = {j.name: j for j in plan.jobs}
    out: set[str] = set()
    frontier = set(jobs[name].depends)
    while frontier:
        out |= frontier
        frontier = {d for n in frontier for d in jobs[n].depends} - out
    return out


#: the status a run reports for a job, by its decision's action (when no job fails)
STATUS = {"run": "ran", "cached": "cached", "excluded": "skipped", "blocked": "skipped", "failed": "failed"}


@dataclass(frozen=True)
class Decision:
    """What a run does with one job, and why: ``--dry-run`` prints it, the run does it.

    ``action``: ``run``, ``cached``, ``excluded`` (not selected), ``blocked`` (a dataset it
    needs could not be indexed, upstream) or ``failed`` (it reads that dataset).  ``forced``:
    the job runs even if its outputs are committed when it starts (``--force``, ``--from``,
    ``--only``); otherwise a job found committed by then (another run computed it) is reused.
    ``twin``: a ``cached`` job whose outputs (same keys) an earlier job of the run computes;
    it waits for that job, then reuses them.
    """

    action: str
    reason: str
    forced: bool = False
    twin: str | None = None  # ``cached``: the earlier job of this run computing the same outputs

    @property
    def status(self) -> str:
        """The job's status in the run's report, unless a job fails (then it may be ``skipped``)."""
        return STATUS[self.action]


def selected(plan: Any, options: Options) -> tuple[set[str], set[str], str]:
    """``(selected, forced, flag)``: the jobs a run may run or reuse, those it re-runs even when
    cached, and the selection flag as written (``--only X``…; "" without one).

    * no flag: every job; ``--force`` forces them all;
    * ``--from X``: every job; X and everything downstream forced (``--force`` adds nothing);
    * ``--until X``: X and the jobs it needs; ``--force`` forces those;
    * ``--only X``: X (forced) and the jobs whose outputs it reads (which must be cached).
    """
    names = [j.name for j in plan.jobs]
    for flag, value in (("--only", options.only), ("--from", options.from_), ("--until", options.until)):
        if value is not None and value not in names:
            raise ExecutionError(f"{flag}: no block or analyzer named `{value}' - blocks are {', '.join(names)}")
    if options.only:
        job = next(j for j in plan.jobs if j.name == options.only)
        return {options.only, *job.depends}, {options.only}, f"--only {options.only}"
    if options.until:
        chosen = {options.until} | ancestors(plan, options.until)
        return chosen, set(chosen) if options.force else set(), f"--until {options.until}"
    if options.from_:
        return set(names), {options.from_} | descendants(plan, {options.from_}), f"--from {options.from_}"
    return set(names), set(names) if options.force else set(), ""


def decide(plan: Any, committed: Mapping[str, bool], options: Options) -> dict[str, Decision]:
    """What each job will do and why (pure): ``{job: Decision}`` (see :func:`selected`).

    >>> from types import SimpleNamespace as NS
    >>> p = NS(jobs=[NS(name="a", depends=[]), NS(name="b", depends=["a"]), NS(name="c", depends=["b"])])
    >>> {n: d.action for n, d in decide(p, {"a": True, "b": False, "c": True}, Options()).items()}
    {'a': 'cached', 'b': 'run', 'c': 'cached'}
    >>> decide(p, {"a": True, "b": True, "c": True}, Options(from_="b"))["c"]
    Decision(action='run', reason='downstream of --from b', forced=True, twin=None)
    >>> decide(p, {"a": True, "b": True, "c": True}, Options(from_="b", force=True))["a"].action
    'cached'
    >>> [d.status for d in decide(p, {"a": True, "b": True, "c": True}, Options(only="b")).values()]
    ['cached', 'ran', 'skipped']
    """
    chosen, forced, flag = selected(plan, options)
    if options.only:
        missing = sorted(d for d in chosen - {options.only} if not committed[d])
        if missing:
            raise ExecutionError(f"--only {options.only}: it reads the output(s) of {', '.join(missing)}, not in "
                                 f"the cache; run them first (or use --until {options.only})")
    out: dict[str, Decision] = {}
    for job in plan.jobs:
        name = job.name
        if name not in chosen:
            out[name] = Decision("excluded", f"not {'needed for' if options.until else 'selected by'} {flag}")
        elif name in forced:
            reason = ("--force" if options.force and not (options.from_ or options.only) else
                      flag.split()[0] if name in (options.only, options.from_) else f"downstream of {flag}")
            out[name] = Decision("run", reason, forced=True)
        elif committed[name]:
            out[name] = Decision("cached", f"output in the cache, read by {flag}" if options.only
                                 else "output in the cache")
        else:
            out[name] = Decision("run", "output not in the cache")
    return with_twins(plan, out)


def with_twins(plan: Any, decisions: dict[str, Decision]) -> dict[str, Decision]:
    """Jobs computing the same outputs (same keys) as an earlier job that runs are ``cached``
    ``twin`` jobs of it, unless forced (``decisions`` updated and returned).

    >>> from types import SimpleNamespace as NS
    >>> p = NS(jobs=[NS(name="a", output_keys=["k"]), NS(name="b", output_keys=["k"])])
    >>> with_twins(p, {"a": Decision("run", "r"), "b": Decision("run", "r")})["b"]
    Decision(action='cached', reason="the same outputs as `a', computed once by this run", forced=False, twin='a')
    """
    first: dict[tuple, str] = {}
    for job in plan.jobs:
        decision = decisions[job.name]
        keys = tuple(getattr(job, "output_keys", None) or ())
        if decision.action != "run" or not keys or not all(keys):
            continue
        if keys not in first:
            first[keys] = job.name
        elif not decision.forced:
            decisions[job.name] = Decision("cached", f"the same outputs as `{first[keys]}', computed once by this "
                                                     "run", twin=first[keys])
    return decisions


def stream_consumers(plan: Any, producer: str, status: Mapping[str, str],
                     algorithm_type: Callable[[str], str]) -> list[tuple[Any, str, str]]:
    """Jobs that may read ``producer``'s output while it is written: ``[(job, input, output)]``.

    ``producer`` must be a plain unsplit block; a consumer is a pending legacy/sequential
    block (unsplit) or analyzer whose block channel has exactly one input, fed by
    ``producer``, and whose other inputs are all available (``ran`` or ``cached``).
    ``algorithm_type(name)`` gives an algorithm's type.
    """
    jobs = {j.name: j for j in plan.jobs}
    prod = jobs[producer]
    if prod.kind != "block" or prod.nb_slots > 1:
        return []
    found = []
    for cons in plan.jobs:
        if producer not in cons.depends or status.get(cons.name) not in ("pending", "waiting"):
            continue
        if cons.kind not in ("block", "analyzer") or (cons.kind == "block" and cons.nb_slots > 1):
            continue
        if any(status.get(d) not in ("ran", "cached") for d in cons.depends if d != producer):
            continue
        own = [(n, i) for n, i in cons.inputs.items() if i.channel == cons.channel]
        if len(own) != 1 or own[0][1].source != "block" or own[0][1].node != producer:
            continue
        if any(i.node == producer for n, i in cons.inputs.items() if n != own[0][0]):
            continue
        if algorithm_type(cons.algorithm) in STEPPED_TYPES:
            found.append((cons, own[0][0], own[0][1].output))
    return found
