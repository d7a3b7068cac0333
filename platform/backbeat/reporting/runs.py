"""Running several experiments (names and glob patterns) in one command, with one summary.

Experiments run one after the other into the same cache, so a block that two experiments
share (same cache key) is computed once and reused by the next; every run keeps a live
progress file (:mod:`backbeat.reporting.live`) for ``backbeat serve``.  A failed experiment
does not stop the others, nor does one that cannot start (an invalid declaration: its
summary line has the ``error``), unless it is the only one (then its error is raised).  ``.backbeatrc`` limits
and ``sandbox`` apply per experiment; explicit options win.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from backbeat.core import config
from backbeat.core.errors import BackbeatError, Interrupted
from backbeat.declarations.prefix import Prefix
from backbeat.reporting import engine, live, patterns

#: the run options of ``experiments run`` that apply to every experiment of the command
OPTION_FIELDS = ("force", "jobs", "timeout_s", "memory_bytes", "only", "from_", "until", "stream", "sandbox")


def summary_entry(rep: dict, wall_s: float) -> dict:
    """One line of the summary: status, how many blocks ran / were cached / failed, time, results."""
    counts: dict[str, int] = {}
    for b in rep["blocks"].values():
        counts[b["status"]] = counts.get(b["status"], 0) + 1
    out = {"experiment": rep["experiment"], "status": rep["status"], "ran": counts.get("ran", 0),
           "cached": counts.get("cached", 0), "failed": counts.get("failed", 0),
           "skipped": counts.get("skipped", 0), "wall_s": round(wall_s, 3)}
    if "error" in rep:
        out["error"] = rep["error"]
    return out


def run_many(prefix: str | os.PathLike, cache: str | os.PathLike, names: list[str],
             progress: Callable[[dict], None] | None = None, announce: Callable[[str], None] | None = None,
             executor: str = "local", scheduler: str | None = None, workers: int | None = None,
             **fields: Any) -> dict:
    """Run every experiment named (globs expanded); ``{"experiments": [reports], "summary": [...]}``.

    ``progress`` receives every block event (with ``experiment`` added); ``announce`` is called
    with each experiment name before it starts.
    """
    unknown = set(fields) - set(OPTION_FIELDS)
    if unknown:
        raise TypeError(f"unknown run options {sorted(unknown)}")
    expanded = patterns.expand(Prefix(prefix), names)
    reports, summary = [], []
    for name in expanded:
        timeout, memory = config.limits_for(config.active(), name)
        opts = dict(fields)
        if opts.get("timeout_s") is None:
            opts["timeout_s"] = timeout
        if opts.get("memory_bytes") is None:
            opts["memory_bytes"] = memory
        if opts.get("sandbox") is None:  # --sandbox/--no-sandbox, else the configuration's `sandbox'
            opts["sandbox"] = config.sandbox_for(config.active(), name)
        if announce is not None:
            announce(name)

        def forward(event: dict, _name: str = name) -> None:
            if progress is not None:
                progress(dict(event, experiment=_name))

        recorder = live.Recorder(cache, name, forward)
        start = time.perf_counter()
        try:
            rep = engine.run(prefix, cache, name, engine.options(**opts), recorder, executor, scheduler, workers)
        except Interrupted as exc:  # the experiments run so far, and the interrupted one, go with it
            if exc.report is not None:
                reports.append(exc.report)
                summary.append(summary_entry(exc.report, time.perf_counter() - start))
            exc.done = {"experiments": reports, "summary": summary, "status": "interrupted"}
            raise
        except BackbeatError as exc:
            if len(expanded) == 1:
                raise
            rep = {"experiment": name, "status": "failed", "blocks": {}, "results": {}, "error": str(exc)}
        finally:
            recorder.close()
        reports.append(rep)
        summary.append(summary_entry(rep, time.perf_counter() - start))
    return {"experiments": reports, "summary": summary,
            "status": "ok" if all(r["status"] == "ok" for r in reports) else "failed"}


def dry_runs(prefix: str | os.PathLike, cache: str | os.PathLike, names: list[str], **fields: Any) -> list[dict]:
    """The plan of each experiment named (globs expanded), nothing run."""
    return [engine.dry_run(prefix, cache, n, engine.options(**fields))
            for n in patterns.expand(Prefix(prefix), names)]
