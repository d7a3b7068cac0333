"""Live progress of runs in progress, observable from another process (``backbeat serve``).

A run started through :func:`backbeat.reporting.runs.run_many` (``backbeat experiments run``)
keeps a small file ``<cache>/.progress/<sha256(experiment)>.jsonl`` up to date from the
executor's progress events.  It is a *journal*, so that recording an event costs the same
however many blocks the run has:

* its first line is a snapshot of the whole run, ``{"experiment", "pid", "started", "updated",
  "blocks": {block: {"state", "done", "total", "rate", "eta_s"}}}``;
* every event then appends one line, ``{"block", "state", "time"}`` plus what it says of the
  block (``done``, ``total``, ``rate``, ``eta_s``), with one ``write`` on a file opened for
  appending;
* when the lines after the snapshot outnumber :data:`COMPACT_LINES` (or four per block), a new
  snapshot replaces the file atomically (temporary file + rename): the file stays small and
  each event costs O(1) amortised.

:func:`read` replays a file into the snapshot's shape (a line being written — the last one,
without its newline — is left for the next read).  The file is removed when the run ends; the
provenance record then tells the outcome.  A file whose process is gone (a run killed with
``kill -9``) is ignored by :func:`read` and removed, and so is every such file (and temporary)
when a run starts (:func:`sweep`) — also those earlier versions wrote
(``<sha256>.json``, the whole state as one JSON document).  ``.progress`` is a bookkeeping folder of
the cache (never scanned nor collected by ``cache gc``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backbeat.core import hashing, jsonio

FOLDER = ".progress"
#: journal lines after which the snapshot is rewritten (at least; more for long runs)
COMPACT_LINES = 256
#: what an event may say about its block (besides its state)
FIELDS = ("done", "total", "rate", "eta_s")


def path(cache: str | os.PathLike, experiment: str) -> Path:
    return Path(cache) / FOLDER / f"{hashing.sha(experiment)}.jsonl"


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


def _apply(blocks: dict, event: dict) -> None:
    """Record one event (``{"block", "state", ...}``) into ``{block: {"state", ...}}``."""
    block = blocks.setdefault(event["block"], {})
    if block.get("state") != event["state"]:
        for k in ("rate", "eta_s"):  # said of the running state only
            block.pop(k, None)
    block["state"] = event["state"]
    for k in FIELDS:
        if event.get(k) is not None:
            block[k] = event[k]


class Recorder:
    """A progress callback that records each event into the experiment's progress file and
    passes every event on to ``then`` (the terminal display)."""

    def __init__(self, cache: str | os.PathLike, experiment: str, then: Callable[[dict], None] | None = None):
        self.file = path(cache, experiment)
        self.then = then
        self.state: dict[str, Any] = {"experiment": experiment, "pid": os.getpid(), "started": time.time(),
                                      "updated": time.time(), "blocks": {}}
        self._fd: int | None = None
        self._lines = 0
        sweep(cache)
        self._snapshot()

    def __call__(self, event: dict) -> None:
        if "block" in event:  # (a warning is about the experiment: passed on, not recorded)
            _apply(self.state["blocks"], event)
            self._append(event)
        if self.then is not None:
            self.then(event)

    def _append(self, event: dict) -> None:
        if self._lines >= max(COMPACT_LINES, 4 * len(self.state["blocks"])):
            self._snapshot()
            return
        if self._fd is None:
            return
        line = {"block": event["block"], "state": event["state"], "time": time.time()}
        line.update((k, event[k]) for k in FIELDS if event.get(k) is not None)
        try:
            os.write(self._fd, (json.dumps(line, default=str) + "\n").encode("utf-8"))
            self._lines += 1
        except (OSError, TypeError, ValueError):  # progress is a courtesy: never fail a run for it
            pass

    def _snapshot(self) -> None:
        """Write the whole state as a new file (replacing the journal) and append to it from now on."""
        self.state["updated"] = time.time()
        self._close_fd()
        self._lines = 0
        tmp = self.file.with_name(f"{self.file.name}.tmp-{os.getpid()}-0")
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
            try:
                os.write(fd, (json.dumps(jsonio.plain(self.state), ensure_ascii=False) + "\n").encode("utf-8"))
                os.replace(tmp, self.file)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        except OSError:  # progress is a courtesy: never fail a run for it
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()
        with contextlib.suppress(OSError):
            self.file.unlink()


def parse(data: bytes) -> dict | None:
    """The state a progress file says (its snapshot with every complete journal line applied)."""
    lines = data.split(b"\n")
    try:
        state = json.loads(lines[0])
    except ValueError:
        return None
    if not isinstance(state, dict) or not isinstance(state.get("blocks"), dict):
        return None
    for raw in lines[1:-1]:  # the last piece has no newline yet: it may still be being written
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("block"), str) and isinstance(event.get("state"), str):
            _apply(state["blocks"], event)
            if isinstance(event.get("time"), (int, float)):
                state["updated"] = event["time"]
    return state


def _old(data: bytes) -> dict | None:
    """The state an earlier version's progress file says (``<sha256>.json``: the whole state as
    one indented JSON document, rewritten atomically)."""
    try:
        state = json.loads(data)
    except ValueError:
        return None
    return state if isinstance(state, dict) else None


def read(cache: str | os.PathLike, experiment: str) -> dict | None:
    """The progress of a run of ``experiment`` in progress, or None (no run, or its process is gone)."""
    p = path(cache, experiment)
    try:
        state = parse(p.read_bytes())
    except OSError:
        return None
    if state is None:
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
        elif name.endswith((".jsonl", ".json")):
            try:
                data = p.read_bytes()
            except OSError:
                continue
            state = parse(data) if name.endswith(".jsonl") else _old(data)
            if isinstance(state, dict) and not _alive(state.get("pid")):
                with contextlib.suppress(OSError):
                    p.unlink()
