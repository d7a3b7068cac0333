"""What the zygote does while it warms up (:class:`backbeat.processes.zygote.Zygote`).

It imports its preload modules in order and, between two of them, forks the jobs already
asked for whose modules are loaded (:func:`can_fork`): a run's first job (indexing a view)
need not wait for the whole preload.  Right after numpy, :func:`quiet_blas` stops the threads
OpenBLAS started.  Once it has forked a job, the zygote lets the preloaded modules learn from its
payload (:func:`learn`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

#: called by the zygote with the payload of each job it forks (:func:`learn_from`)
_LEARNERS: list[Callable[[Any], None]] = []


def learn_from(learner: Callable[[Any], None]) -> None:
    """Have the zygote call ``learner(payload)`` once it has forked a job: what the learner
    makes in the zygote (e.g. the value classes of the dataformats a block reads and writes) is
    inherited by the jobs forked after it instead of being made again in each.  A preloaded module
    registers it (:mod:`backbeat.runtime.preload`); it must be quick, and never run user code."""
    _LEARNERS.append(learner)


def learn(req: dict) -> None:
    """Give a spawn request's payload to every learner (a learner that fails is ignored)."""
    payload = req.get("payload")
    for learner in _LEARNERS:
        try:
            learner(payload)
        except Exception:  # noqa: BLE001 - learning is only an optimisation
            pass


def can_fork(req: dict) -> bool:
    """Whether the modules a request runs are imported: its target's, and for a job run through
    :func:`backbeat.processes.control.job_main`, the target named in its payload."""
    if req.get("op") != "spawn":
        return True
    targets = [req.get("target"), (req.get("payload") or {}).get("target")]
    return all(t.partition(":")[0] in sys.modules for t in targets if isinstance(t, str))


def quiet_blas() -> None:
    """Stop the threads numpy's OpenBLAS starts on import: they spin for ~0.1 s, burning the
    other core while the zygote imports the rest and the executor plans.  OpenBLAS shuts its
    thread pool down before any fork (its fork handler), so one empty fork is enough; the pool
    is made again on the first BLAS call of a child, with its usual number of threads."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
