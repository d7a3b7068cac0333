"""What the zygote does while it warms up (:class:`backbeat.processes.zygote.Zygote`).

It imports its preload modules in order and, between two of them, forks the jobs already
asked for whose modules are loaded (:func:`can_fork`): a run's first job (indexing a view)
need not wait for the whole preload.  numpy is imported with OpenBLAS at one thread (its pool would
spin through the rest of the import) and given its usual number back at once; :func:`quiet_blas` then
stops the threads that made (:func:`preload`).  Once it has forked a job, the zygote lets the preloaded modules learn from its
payload (:func:`learn`).
"""

from __future__ import annotations

import importlib
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


#: what OpenBLAS reads for its number of threads as it loads: one set is the user's choice, kept
BLAS_THREADS_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


def preload(name: str) -> None:
    """Import ``name`` (the zygote's and a template's preload).  numpy: with ``OPENBLAS_NUM_THREADS=1``
    unless one of :data:`BLAS_THREADS_ENV` is set (even empty) — OpenBLAS starts its pool as its library loads,
    early in numpy's import, and the pool's threads spin (~0.1 s of the other core) through the rest
    of it —, the variable removed right after, OpenBLAS's number of threads set back to what it
    would have chosen (its count of processors) and :func:`quiet_blas`: a child's first BLAS call makes
    the pool it always did."""
    if name != "numpy" or name in sys.modules:
        importlib.import_module(name)
        return
    chosen = any(v in os.environ for v in BLAS_THREADS_ENV)  # (even empty: the user's, kept)
    if not chosen:
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        importlib.import_module(name)
    finally:
        if not chosen:
            del os.environ["OPENBLAS_NUM_THREADS"]
            blas_threads_as_usual()
    quiet_blas()


def blas_threads_as_usual() -> int:
    """Set the loaded OpenBLAS's number of threads to its count of processors (what it chooses with
    no variable set); the number set, 0 if no OpenBLAS with those functions is loaded."""
    import ctypes  # (loaded already: numpy imports it)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[5].strip() for line in maps if "openblas" in line.rsplit("/", 1)[-1]}
    except (OSError, IndexError):
        return 0
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", "_64_", ""):
                procs = getattr(lib, f"{prefix}_get_num_procs{suffix}", None)
                threads = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if procs is not None and threads is not None:
                    n = int(procs())
                    if n > 0:
                        threads(ctypes.c_int(n))
                        return n
    return 0


def quiet_blas() -> None:
    """Stop the threads numpy's OpenBLAS starts on import: they spin for ~0.1 s, burning the
    other core while the zygote imports the rest and the executor plans.  OpenBLAS shuts its
    thread pool down before any fork (its fork handler), so one empty fork is enough; the pool
    is made again on the first BLAS call of a child, with its usual number of threads."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
