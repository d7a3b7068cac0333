"""Which jobs of a plan run, and why: pure functions of the plan and the cache state.

:func:`decide` turns ``{job: output committed?}`` and the run options (``--force``,
``--only``, ``--from``, ``--until``) into ``{job: (action, reason)}``; the executor runs
the jobs whose action is ``run`` and ``--dry-run`` prints the reasons.
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


def decide(plan: Any, committed: dict[str, bool], options: Options) -> dict[str, tuple[str, str]]:
    """What each job will do and why (pure): ``{job: ("run"|"cached"|"excluded", reason)}``.

    >>> from types import SimpleNamespace as NS
    >>> p = NS(jobs=[NS(name="a", depends=[]), NS(name="b", depends=["a"]), NS(name="c", depends=["b"])])
    >>> decide(p, {"a": True, "b": False, "c": True}, Options())
    {'a': ('cached', 'output in the cache'), 'b': ('run', 'output not in the cache'), 'c': ('cached', 'output in the cache')}
    >>> decide(p, {"a": True, "b": True, "c": True}, Options(from_="b"))["c"]
    ('run', 'downstream of --from b')
    >>> decide(p, {"a": True, "b": True, "c": True}, Options(until="a"))["b"]
    ('excluded', 'not needed for --until a')
    """
    names = [j.name for j in plan.jobs]
    for flag, value in (("--only", options.only), ("--from", options.from_), ("--until", options.until)):
        if value is not None and value not in names:
            raise ExecutionError(f"{flag}: no block or analyzer named `{value}' - blocks are {', '.join(names)}")
    out: dict[str, tuple[str, str]] = {}
    forced: set[str] = set()
    if options.from_:
        forced = {options.from_} | descendants(plan, {options.from_})
    selected = set(names)
    if options.until:
        selected = {options.until} | ancestors(plan, options.until)
    if options.only:
        selected = {options.only}
        missing = [d for d in ancestors(plan, options.only) if not committed[d]]
        if missing:
            raise ExecutionError(f"--only {options.only}: upstream block(s) {', '.join(sorted(missing))} "
                                 f"are not in the cache; run them first (or use --until {options.only})")
    for name in names:
        if name not in selected:
            flag = f"--only {options.only}" if options.only else f"--until {options.until}"
            out[name] = ("excluded", f"not needed for {flag}")
        elif options.force:
            out[name] = ("run", "--force")
        elif name == options.only:
            out[name] = ("run", "--only")
        elif name == options.from_:
            out[name] = ("run", "--from")
        elif name in forced:
            out[name] = ("run", f"downstream of --from {options.from_}")
        elif committed[name]:
            out[name] = ("cached", "output in the cache")
        else:
            out[name] = ("run", "output not in the cache")
    return out


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
