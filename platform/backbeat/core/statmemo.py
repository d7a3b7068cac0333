"""Digests of files memoised by what ``stat`` says of them, kept in SQLite.

A file is hashed again only when its size, modification time, change time or inode differ
from when it was hashed (git's index and ninja's log work the same way).  An entry is *racy*
— not trusted — when the file changed less than :data:`RACY_NS` before it was hashed: a
same-size rewrite within one clock tick would otherwise go unseen.  A file marked as not yet
durable (:func:`backbeat.core.durable.is_unsynced`) is neither remembered nor looked up.  The change time
(``st_ctime_ns``) cannot be set by a user, so restoring a file's modification time after
editing it does not fool the memo.

Entries are tagged (``sha256`` for file bytes, other tags for other facts derived from a
file, e.g. the identity of a cache entry), so one memo serves every use.  The store is one
SQLite file (standard library): lookups are indexed, a run writes only the rows it adds,
several processes may share it (WAL journal, busy timeout), and when it cannot be used
(read-only cache, locked too long, damaged, a Python without ``sqlite3``) the memo silently
degrades to computing every digest: it is an accelerator, never a source of truth.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> (folder / "a").write_bytes(b"abc") and None
>>> memo = StatMemo(folder / "memo.sqlite3")
>>> memo.digest(folder / "a")
'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'
>>> memo.computed
1
>>> memo.close()  # persisted, but the file changed less than 2 s before it was hashed: racy
>>> StatMemo(folder / "memo.sqlite3").lookup("sha256", folder / "a") is None
True
"""

from __future__ import annotations

import atexit
import contextlib
import os
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backbeat.core import durable, hashing

if TYPE_CHECKING:
    import sqlite3


def _sqlite() -> Any:
    """The ``sqlite3`` module, imported when a memo first opens its database: the block processes
    import this module (through :mod:`backbeat.core.hashing`'s users) but never open a memo, and
    every library loaded into the fork server's zygote costs each fork and each exit its
    mappings (``docs/performance.md``, "Wave 11 (perf-v)").  None when Python was built without
    it (no ``_sqlite3``): the memo then only computes, like a memo whose database cannot be used."""
    try:
        import sqlite3
    except ImportError:
        return None
    return sqlite3

RACY_NS = 2_000_000_000
_SCHEMA = ("CREATE TABLE IF NOT EXISTS memo (tag TEXT NOT NULL, path TEXT NOT NULL, size INTEGER, "
           "mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER, value TEXT, stamped_ns INTEGER, "
           "PRIMARY KEY (tag, path)) WITHOUT ROWID")

Signature = tuple[int, int, int, int]


def signature(st: os.stat_result) -> Signature:
    """What the memo compares: ``(size, mtime_ns, ctime_ns, inode)``."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class StatMemo:
    """Values derived from files (by default their sha256), memoised by :func:`signature`.

    ``path`` None: an in-memory memo (nothing persisted).  Writes are kept in a transaction
    until :meth:`flush` or :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self._db: sqlite3.Connection | None = None
        self._opened = False
        self._pending: list[tuple] = []
        self._mem: dict[tuple[str, str], tuple] = {}
        self._registered = False
        self._pid = os.getpid()
        self.computed = 0  # values actually computed (statistics and tests)

    # -- the database ------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection | None:
        if self._opened:
            return self._db if os.getpid() == self._pid else None  # a forked child never uses its parent's
        self._opened = True
        if self.path is None:
            return None
        sqlite = _sqlite()
        if sqlite is None:
            return None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite.connect(str(self.path), timeout=5.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            self._db = db
        except (sqlite.Error, OSError):
            self._db = None
        if self._db is not None and not self._registered:  # what is learnt is kept even if nobody flushes
            pid = self._pid = os.getpid()
            ref = weakref.ref(self)  # (a memo nobody holds is closed by __del__: its descriptors freed)
            atexit.register(lambda: _close_alive(ref) if os.getpid() == pid else None)  # (never from a fork)
            self._registered = True
        return self._db

    def _fail(self) -> None:
        """Stop using a database that errs (the memo then only computes)."""
        if self._db is not None:
            with contextlib.suppress(_sqlite().Error):
                self._db.close()
        self._db = None

    def _row(self, tag: str, path: str) -> tuple | None:
        row = self._mem.get((tag, path))
        if row is not None:
            return row
        db = self._conn()
        if db is None:
            return None
        try:
            row = db.execute("SELECT size, mtime_ns, ctime_ns, ino, value, stamped_ns FROM memo "
                             "WHERE tag = ? AND path = ?", (tag, path)).fetchone()
        except _sqlite().Error:
            self._fail()
            return None
        return row

    def preload(self, tag: str, paths: Iterable[str]) -> None:
        """Read the rows of many paths at once (one query per thousand, not one per file)."""
        db = self._conn()
        if db is None:
            return
        todo = [p for p in paths if (tag, p) not in self._mem]
        try:
            for i in range(0, len(todo), 900):
                part = todo[i:i + 900]
                marks = ",".join("?" * len(part))
                for row in db.execute(f"SELECT path, size, mtime_ns, ctime_ns, ino, value, stamped_ns FROM memo "
                                      f"WHERE tag = ? AND path IN ({marks})", (tag, *part)):
                    self._mem[(tag, row[0])] = row[1:]
        except _sqlite().Error:
            self._fail()

    # -- lookups -----------------------------------------------------------------------------
    def lookup(self, tag: str, path: str | os.PathLike, st: os.stat_result | None = None) -> str | None:
        """The value remembered for ``path`` if the file is unchanged since (and not racy)."""
        p = os.fspath(path)
        if st is None:
            try:
                st = os.stat(p)
            except OSError:
                return None
        if durable.is_unsynced(st):  # (a file not yet on disk is never trusted by its stat)
            return None
        row = self._row(tag, p)
        if row is None or tuple(row[:4]) != signature(st):
            return None
        if row[5] - max(st.st_mtime_ns, st.st_ctime_ns) <= RACY_NS:
            return None
        return str(row[4])

    def remember(self, tag: str, path: str | os.PathLike, st: os.stat_result, value: str) -> None:
        """Remember ``value`` for ``path`` as ``st`` describes it — unless ``st`` says the file
        is marked as not yet durable (:mod:`backbeat.core.durable`): after a crash its bytes
        could be other than those the value was derived from."""
        if durable.is_unsynced(st):
            return
        p = os.fspath(path)
        row = (*signature(st), value, time.time_ns())
        self._mem[(tag, p)] = row
        self._pending.append((tag, p, *row))
        if len(self._pending) >= 5000:
            self.flush()

    def digest(self, path: str | os.PathLike, st: os.stat_result | None = None,
               compute: Callable[[Path], str] | None = None, tag: str = "sha256") -> str:
        """``compute(path)`` (default: sha256 of its bytes), memoised while the file is unchanged.

        ``st`` is the file's stat taken *before* it is read (a file changing while it is hashed
        then shows a newer signature next time).  Raises ``OSError`` when it cannot be read.
        """
        if st is None:
            st = os.stat(path)
        value = self.lookup(tag, path, st)
        if value is None:
            value = (compute or hashing.hash_file_contents)(Path(path))
            self.computed += 1
            self.remember(tag, path, st, value)
        return value

    def forget(self, tag: str, path: str | os.PathLike) -> None:
        p = os.fspath(path)
        self._mem.pop((tag, p), None)
        self._pending = [r for r in self._pending if (r[0], r[1]) != (tag, p)]
        db = self._conn()
        if db is not None:
            try:
                db.execute("DELETE FROM memo WHERE tag = ? AND path = ?", (tag, p))
            except _sqlite().Error:
                self._fail()

    def prune(self, dry_run: bool = False) -> int:
        """Forget every row of a file that no longer exists (``cache gc``); how many rows."""
        self.flush()
        db = self._conn()
        if db is None:
            return 0
        try:
            gone = [(tag, path) for tag, path in db.execute("SELECT tag, path FROM memo")
                    if not os.path.lexists(path)]
            if gone and not dry_run:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("DELETE FROM memo WHERE tag = ? AND path = ?", gone)
                db.execute("COMMIT")
        except _sqlite().Error:
            with contextlib.suppress(_sqlite().Error):
                db.execute("ROLLBACK")
            self._fail()
            return 0
        for row in gone:
            if not dry_run:
                self._mem.pop(row, None)
        return len(gone)

    # -- persistence -------------------------------------------------------------------------
    def flush(self) -> None:
        """Write the rows added since the last flush (one transaction)."""
        rows, self._pending = self._pending, []
        db = self._conn() if rows else None
        if db is None:
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO memo VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except _sqlite().Error:
            with contextlib.suppress(_sqlite().Error):
                db.execute("ROLLBACK")
            self._fail()

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            with contextlib.suppress(_sqlite().Error):
                self._db.close()
        self._db = None
        self._opened = False

    def __del__(self) -> None:
        """A memo dropped unclosed (a store of a long-lived caller) keeps what it learnt; its database
        connection, no longer held by the exit hook, is closed when it is collected (with the memo,
        unless a caller of ``_conn`` still holds it)."""
        if getattr(self, "_db", None) is not None and os.getpid() == self._pid:
            with contextlib.suppress(Exception):
                self.flush()

    def __enter__(self) -> StatMemo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_alive(ref: weakref.ref[StatMemo]) -> None:
    memo = ref()
    if memo is not None:
        memo.close()
