"""Making committed cache files durable off the critical path: :class:`Syncer`, :class:`Durability`.

A block process commits its output by renaming it into place, marked unsynced
(:mod:`backbeat.core.durable`), without waiting for the disk: its consumers and the blocks
after it go on at once.  The run hands each committed file to its store's syncer
(:meth:`backbeat.cache.store.CacheStore.entrust`): one background thread fsyncs the files,
then their folders (once per batch of files in a folder), then clears their marks.  The run
asks what is done (:meth:`Syncer.take`) to let the stat memo remember those files, and waits
for all of it (:meth:`Durability.wait`) before it ends — a command served by a warm template
after its answer (``docs/execution.md`` §3b): until then the files stay marked, and nothing
trusts a marked file without verifying its content.  ``fsync`` releases the GIL: the thread
costs the run nothing but the disk's time, overlapped with its blocks.

*Held until the answer.*  A command that answers before its last work
(:func:`backbeat.core.exiting.answers_later`: served by a warm template) does not sync its large
outputs (:data:`HOLD_BYTES` or more) during its run: they are held, and the syncer starts on
them when the run waits for them (:meth:`Durability.wait` with ``block``) — after its answer.
Its small outputs are synced at once, as anywhere else: their fsyncs are short, and a cached
re-run right after it would otherwise find them all still marked (and wait for them, then
verify each: a K=500 chain's 500 small files).  The disk is one
queue: the megabytes a syncer (or a writer's early writeback) has in flight are written before
any small synced write behind them, and the run's own few before its answer (the stat memo's
database, the provenance record) then waited for all of them (``docs/performance.md``, wave 15).

``BACKBEAT_SYNC_DELAY_S`` (tests only) holds each batch back for that many seconds: the
window in which a killed run leaves committed, unsynced files.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from backbeat.core import durable, exiting
from backbeat.core.errors import IntegrityError
from backbeat.core.statmemo import StatMemo

#: an output of a served command this large or larger is held until its answer (the megabytes its
#: fsync writes would be queued on the disk before the command's own small synced writes); smaller
#: ones are synced at once (``docs/execution.md`` §3b)
HOLD_BYTES = 4 << 20


class Syncer:
    """One background thread making files durable, in the order they are given."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._todo: list[str] = []
        self._done: list[tuple[str, OSError | None, tuple[int, int] | None]] = []
        self._busy = 0  # files given and not yet done
        self._thread: threading.Thread | None = None  # the running thread (None: idle)
        self._last: threading.Thread | None = None
        self._pid = os.getpid()
        try:
            self._delay = float(os.environ.get("BACKBEAT_SYNC_DELAY_S") or 0)
        except ValueError:
            self._delay = 0.0

    def submit(self, paths: Iterable[str | os.PathLike]) -> None:
        """Make ``paths`` durable in the background."""
        todo = [str(os.fspath(p)) for p in paths]
        if not todo:
            return
        with self._cond:
            self._todo.extend(todo)
            self._busy += len(todo)
            if self._thread is None or os.getpid() != self._pid:  # (a forked child has no thread)
                self._pid = os.getpid()
                self._thread = self._last = threading.Thread(target=self._work, name="backbeat-syncer",
                                                             daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._todo:  # idle: the thread ends (a process with a thread forks no fork server)
                    self._thread = None
                    self._cond.notify_all()
                    return
                batch, self._todo = self._todo, []
            if self._delay:
                time.sleep(self._delay)
            synced: dict[str, tuple[int, int]] = {}
            try:
                failed = durable.make_durable(batch, synced)
            except Exception as exc:  # noqa: BLE001 - never lose the count: each file says why
                failed = {p: OSError(str(exc)) for p in batch}
            with self._cond:
                self._done.extend((p, failed.get(p), synced.get(p)) for p in batch)
                self._busy -= len(batch)
                self._cond.notify_all()

    def take(self) -> list[tuple[str, OSError | None, tuple[int, int] | None]]:
        """The files made durable (error None) or that could not be, since the last call, each with
        the ``(st_dev, st_ino)`` of the file that was made durable (None: none was)."""
        with self._cond:
            done, self._done = self._done, []
        return done

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every file given is done and the thread has ended; False if ``timeout``
        passed first."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._busy == 0 and self._thread is None, timeout):
                return False
            last = self._last
        if last is not None and last is not threading.current_thread():
            last.join(timeout)
        return True


class Durability:
    """What a cache store knows of its entries' durability: those entrusted to its syncer, and
    those that could not be made durable.  ``memo``: the store's stat memo (the main thread's:
    only the thread that owns the memo remembers, the syncer thread only syncs)."""

    def __init__(self, memo: Callable[[], StatMemo]) -> None:
        self._memo = memo
        self._syncer: Syncer | None = None
        self._entrusted: dict[str, tuple[str, str | None]] = {}  # path -> (key, digest or None)
        self._held: list[Path] = []  # entrusted, not given to the syncer yet (held until the answer)
        #: entries that could not be made durable (path -> why): they stay marked, never trusted unverified
        self.failures: dict[str, OSError] = {}

    def entrust(self, path: Path, key: str, digest: str | None) -> None:
        """Make the entry at ``path`` durable in the background; then the memo remembers its
        identity (``key``, content ``digest`` as its writer reported), if a digest is given."""
        if self._syncer is None:
            self._syncer = Syncer()
        self._entrusted[str(path)] = (key, digest)
        if exiting.answers_later() and _large(path):  # (synced after the answer: see the module docstring)
            self._held.append(path)
            return
        self._syncer.submit([path])
        self.settle()

    def release(self) -> None:
        """Give the held entries to the syncer now, without waiting for them."""
        if self._syncer is not None and self._held:
            held, self._held = self._held, []
            self._syncer.submit(held)

    def settle(self, remember: bool = True) -> None:
        """Remember the identity of the entrusted entries made durable so far (``remember``
        False: only take them, the memo untouched)."""
        if self._syncer is None:
            return
        for p, error, synced in self._syncer.take():
            key, digest = self._entrusted.pop(p, ("", None))
            if error is not None:
                self.failures[p] = error
                continue
            if digest is None or not remember:
                continue
            try:
                st = os.stat(p)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) != synced:  # (another file renamed over it: not what was written)
                continue
            self._memo().remember("h5-identity", p, st, f"{key} {digest}")  # (not if marked again)

    @property
    def pending(self) -> bool:
        """Whether entries entrusted are not settled yet (their syncing may still go on)."""
        return bool(self._entrusted)

    def wait(self, block: bool = True, remember: bool = True) -> dict[str, OSError]:
        """Wait until every entry entrusted is durable (``block``; else only settle those done
        so far), settle them (``remember``: see :meth:`settle`); those that could not be made
        durable, and why (forgotten here)."""
        if block and self._syncer is not None:
            self.release()
            self._syncer.wait()
        self.settle(remember)
        failures, self.failures = self.failures, {}
        return failures

    def sync_verified(self, path: Path, verified: os.stat_result) -> os.stat_result:
        """Make an entry whose content was just verified durable now; its ``stat`` then (still
        marked unsynced if that failed — e.g. another user's file, whose mark this process may not
        clear —: a memo does not remember it, and it is verified again whenever it is read).
        ``verified``: its ``stat`` taken before it was opened to be verified; IntegrityError if the
        file at ``path`` is another one now (renamed over it meanwhile: what was verified is gone)."""
        durable.make_durable([path])
        st = path.stat()
        if (st.st_dev, st.st_ino) != (verified.st_dev, verified.st_ino):
            raise IntegrityError(f"cache file `{path}' was replaced while it was verified")
        return st

    def verified_identity(self, path: Path) -> tuple[str, str]:
        """``(stored key, digest)`` of an entry marked unsynced, its content verified (after a crash
        its attributes may have survived without its data), then made durable and remembered."""
        from backbeat.data.cachereader import CacheReader

        try:
            before = path.stat()
            with CacheReader(str(path), verify=True) as reader:
                stored, digest = reader.key, reader.digest
        except FileNotFoundError:
            raise IntegrityError(f"cache file `{path}' does not exist") from None
        except OSError as exc:
            raise IntegrityError(f"cache file `{path}' cannot be opened (corrupted?): {exc}") from None
        self._memo().remember("h5-identity", path, self.sync_verified(path, before), f"{stored} {digest}")
        return stored, digest


def _large(path: Path) -> bool:
    """Whether the file at ``path`` has :data:`HOLD_BYTES` or more (False if it cannot be told)."""
    try:
        return os.stat(path).st_size >= HOLD_BYTES
    except OSError:
        return False
