"""Per-key lock files of a cache: ``<root>/.locks/<key>``, locked with ``fcntl.flock``.

A lock file stays after its lock is released (removing it then would race with a process
that opened it and waits for it).  :func:`prune` removes those nobody holds, each while
holding it; a process that was waiting for a removed file finds, once it gets it, that the
file at the path is another one, and takes that one instead (:func:`acquire`): two processes
never both believe they hold the lock of one key.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

_KEY = re.compile(r"^[0-9a-f]{64}$")
#: lock folders this process has made or found (not made again for each lock: a run takes one per job)
_FOLDERS: set[str] = set()


def is_key(name: str) -> bool:
    """Whether ``name`` is a cache key (64 lowercase hex digits): the only names of lock files."""
    return _KEY.fullmatch(name) is not None


class EntryLock:
    """An exclusive lock on one key (``fcntl.flock`` on ``<root>/.locks/<key>``), held until released."""

    def __init__(self, fd: int, key: str) -> None:
        self._fd: int | None = fd
        self.key = key

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> EntryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: str | Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)


def acquire(folder: Path, key: str, wait: bool = True) -> EntryLock | None:
    """Lock ``folder/key`` (created if needed): wait for it, or (``wait=False``) None if it is held."""
    if not is_key(key):  # (a key read back from a journal is not trusted to be one)
        raise ValueError(f"not a cache key: {key!r}")
    where = os.fspath(folder)
    if where not in _FOLDERS:
        os.makedirs(where, exist_ok=True)
        _FOLDERS.add(where)
    path = os.path.join(where, key)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed since: made again (anything else raises)
            if os.path.isdir(where):
                raise
            os.makedirs(where, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, path):
                return EntryLock(fd, key)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # (pruned while this process waited for it: lock the new file)


def prune(folder: Path, dry_run: bool = False) -> int:
    """Remove the lock files in ``folder`` nobody holds; how many (or would be, ``dry_run``)."""
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.iterdir():
        if not is_key(path.name):
            continue
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, path):
                if not dry_run:
                    path.unlink()
                removed += 1
        except OSError:
            pass  # held by a run (or gone)
        finally:
            os.close(fd)
    return removed
