"""Live progress of runs in progress, observable from another process (``backbeat serve``).

A run started through :func:`backbeat.reporting.runs.run_many` (``backbeat experiments run``)
keeps a small JSON file ``<cache>/.progress/<sha256(experiment)>.json`` up to date from the
executor's progress events: ``{"experiment", "pid", "started", "updated", "blocks": {block:
{"state", "done", "total"}}}``.  It is written atomically (temporary file + rename), at most
every :data:`MIN_INTERVAL` seconds unless a block changes state, and removed when the run ends;
the provenance record then tells the outcome.  A file whose process is gone (a run killed with
``kill -9``) is ignored by :func:`read` and removed, and so is every such file (and temporary)
when a run starts (:func:`sweep`).  ``.progress`` is a bookkeeping folder of
the cache (never scanned nor collected by ``cache gc``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backbeat.core import hashing, jsonio

FOLDER = ".progress"
MIN_INTERVAL = 0.25


def path(cache: str | os.PathLike, experiment: str) -> Path:
    return Path(cache) / FOLDER / f"{hashing.sha(experiment)}.json"


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Recorder:
    """A progress callback that records each block's state into the experiment's progress file
    and passes every event on to ``then`` (the terminal display)."""

    def __init__(self, cache: str | os.PathLike, experiment: str, then: Callable[[dict], None] | None = None):
        self.file = path(cache, experiment)
        self.then = then
        self.state: dict[str, Any] = {"experiment": experiment, "pid": os.getpid(), "started": time.time(),
                                      "updated": time.time(), "blocks": {}}
        self._written = 0.0
        sweep(cache)
        self._write()

    def __call__(self, event: dict) -> None:
        block = self.state["blocks"].setdefault(event["block"], {})
        changed = block.get("state") != event["state"]
        block["state"] = event["state"]
        for k in ("done", "total"):
            if event.get(k) is not None:
                block[k] = event[k]
        if changed or time.monotonic() - self._written >= MIN_INTERVAL:
            self._write()
        if self.then is not None:
            self.then(event)

    def _write(self) -> None:
        self.state["updated"] = time.time()
        self._written = time.monotonic()
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_name(f"{self.file.name}.tmp-{os.getpid()}-0")
            try:
                tmp.write_text(jsonio.dumps(self.state), encoding="utf-8")
                os.replace(tmp, self.file)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
        except OSError:  # progress is a courtesy: never fail a run for it
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.unlink()


def read(cache: str | os.PathLike, experiment: str) -> dict | None:
    """The progress of a run of ``experiment`` in progress, or None (no run, or its process is gone)."""
    p = path(cache, experiment)
    try:
        state = jsonio.parse(p.read_bytes())
    except (OSError, jsonio.JSONProblem):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("blocks"), dict):
        return None
    if not _alive(state.get("pid")):
        with contextlib.suppress(OSError):
            p.unlink()
        return None
    return state


def sweep(cache: str | os.PathLike) -> None:
    """Remove the progress files (and their temporaries) of runs whose process is gone."""
    folder = Path(cache) / FOLDER
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        p = folder / name
        if ".tmp-" in name:
            pid = name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    p.unlink()
        elif name.endswith(".json"):
            try:
                state = jsonio.parse(p.read_bytes())
            except (OSError, jsonio.JSONProblem):
                continue
            if isinstance(state, dict) and not _alive(state.get("pid")):
                with contextlib.suppress(OSError):
                    p.unlink()
