"""Run journals: what a run in progress may leave in the cache if it is killed, for the next run to clean.

A run stopped by a signal cleans up after itself (its block processes are killed, their
temporaries removed).  A run killed with ``kill -9`` (or whose machine stopped) cannot: the
temporaries of its writers (``<entry>.tmp-<pid>-…``), the slot files of its split blocks, a
half-written record stay in the cache.  So a run keeps a *journal*,
``<root>/.runs/<host>-<pid>-<random>.json``: the jobs it may run (key, output keys, slots) and
the entries whose temporaries it may leave (and a sandboxed run's staging folder).  The next run on the same host
(:func:`sweep`, called as a run starts) finds the journals whose process is dead and removes
what they list: writers' temporaries whose writer is dead, and — under the job's lock, so
never under a run computing it now — the job's slot files, and makes its committed outputs
that were not yet durable so (``boot``: verified by their digest first if the machine has
restarted since, see :mod:`backbeat.core.durable`); what the run's own process was writing in
the content-addressed areas (code snapshots, data manifests); then the journal.

Journals are bookkeeping (never scanned as entries, never deleted by ``cache clear``).  A
cache that cannot be written gets no journal (nothing can be left in it either).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
from pathlib import Path

from backbeat.cache import locks
from backbeat.cache.store import CacheStore
from backbeat.core import durable, jsonio, pids
from backbeat.core.errors import IntegrityError

FOLDER = ".runs"
#: the folder of the cache holding sandboxed runs' staging folders (``backbeat.execution.sandboxing``)
STAGING = ".staging"


def _host() -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())[:64] or "host"


class Journal:
    """The journal of one run (written as entries are added; removed by :meth:`close`)."""

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self.path = store.root / FOLDER / f"{_host()}-{os.getpid()}-{secrets.token_hex(4)}.json"
        self.jobs: dict[str, dict] = {}
        self.paths: list[str] = []
        self.folders: list[str] = []

    def add(self, jobs: list[tuple[str, list[str], int]] = (), paths: list[Path] = (),  # type: ignore[assignment]
            folders: list[Path] = ()) -> None:  # type: ignore[assignment]
        """Note ``jobs`` (``(key, output keys, slots)``) and entry ``paths`` the run may write, and
        the ``folders`` of its own it may leave (a sandboxed run's staging folder)."""
        changed = False
        for p in folders:
            name = os.path.relpath(p, self.store.root)
            if name not in self.folders:
                self.folders.append(name)
                changed = True
        for key, outputs, slots in jobs:
            if key and key not in self.jobs:
                self.jobs[key] = {"key": key, "outputs": [k for k in outputs if k], "slots": int(slots)}
                changed = True
        for p in paths:
            name = os.path.relpath(p, self.store.root)
            if name not in self.paths:
                self.paths.append(name)
                changed = True
        if changed:
            self._write()

    def _write(self) -> None:
        text = jsonio.dumps({"pid": os.getpid(), "boot": durable.boot_id(), "jobs": list(self.jobs.values()),
                             "paths": self.paths, "folders": self.folders})
        for _attempt in range(2):  # (another run may remove the folder, empty, just as it is made)
            try:
                durable.write_atomic(self.path, text, sync=False, mkdir=True)
                return
            except FileNotFoundError:
                continue
            except OSError:  # a read-only or full cache: nothing will be written there either
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        with contextlib.suppress(OSError):  # (if no other run has a journal there)
            self.path.parent.rmdir()


def _drop_blob_temporaries(store: CacheStore, pid: int) -> None:
    """Remove what the dead run ``pid`` was writing in the content-addressed areas (a code
    snapshot, a data manifest: ``<digest>.tmp-<pid>-…``, written by the run's own process)."""
    for blobs in (store.code, store.manifests):
        try:
            subs = [e.path for e in os.scandir(blobs.folder) if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for sub in subs:
            with contextlib.suppress(OSError):
                for e in os.scandir(sub):
                    if f".tmp-{pid}-" in e.name and store.is_temporary(Path(e.path)):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(e.path)


def _clean(store: CacheStore, path: Path, pid: int) -> None:
    _drop_blob_temporaries(store, pid)
    try:
        rec = jsonio.parse(path.read_bytes())
    except (OSError, jsonio.JSONProblem):
        rec = None
    if isinstance(rec, dict):
        for name in rec.get("paths") or []:
            if isinstance(name, str) and not os.path.isabs(name) and ".." not in Path(name).parts:
                store.drop_temporaries(store.root / name)
        for name in rec.get("folders") or []:  # only a staging folder, never anything else
            if isinstance(name, str) and len(Path(name).parts) == 2 and Path(name).parts[0] == STAGING:
                shutil.rmtree(store.root / name, ignore_errors=True)
        for job in rec.get("jobs") or []:
            if not isinstance(job, dict) or not isinstance(job.get("key"), str) or not locks.is_key(job["key"]):
                continue
            outputs = [k for k in job.get("outputs") or [] if isinstance(k, str)]
            lock = store.lock(job["key"], wait=False)
            if lock is None:
                continue  # a live run computes it now: it cleans before it starts
            with lock:
                slots = job.get("slots")
                store.drop_partial(outputs, slots if isinstance(slots, int) and slots > 1 else 0, locked=True)
                _make_durable(store, outputs, bool(rec.get("boot")) and rec.get("boot") == durable.boot_id())
    path.unlink(missing_ok=True)


def _make_durable(store: CacheStore, keys: list[str], same_boot: bool) -> None:
    """The outputs a dead run committed but had not made durable yet (still marked unsynced).
    If the machine has not restarted since (``same_boot``), the page cache holds what their
    writers wrote: they are synced.  Otherwise (a crash, a power loss) their bytes may be lost:
    each is verified by its content digest first, and quarantined if it does not hold."""
    marked = []
    for key in keys:
        with contextlib.suppress(OSError):
            if durable.is_unsynced(store.output_path(key).stat()):
                marked.append(key)
    if same_boot:
        store.make_durable(marked)  # (one batch: each folder synced once)
        return
    for key in marked:
        try:
            store.verify_output(key)  # (made durable once verified)
        except IntegrityError as exc:
            store.reject(key, f"committed by a run that died before it was durable, and not intact: {exc}")
        except OSError:
            continue  # (unreadable now: it stays marked, verified whenever it is read)


def sweep(store: CacheStore) -> list[Path]:
    """Clean after the dead runs of this host (see the module docstring); their journals."""
    folder = store.root / FOLDER
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    host = _host() + "-"
    done = []
    for name in names:
        if not name.startswith(host):
            continue
        path = folder / name
        pid_text = name[len(host):].split("-", 1)[0].split(".", 1)[0]
        try:
            since = path.stat().st_mtime
        except OSError:
            continue
        if not pid_text.isdigit() or pids.alive(int(pid_text), since):
            continue
        try:
            if store.is_temporary(path):
                path.unlink(missing_ok=True)
            else:
                _clean(store, path, int(pid_text))
            done.append(path)
        except OSError:  # a read-only cache: nothing to do about it now
            continue
    with contextlib.suppress(OSError):
        folder.rmdir()
    return done
