"""Files on disk: written atomically, made durable, and marked until they are.

*Atomic* (:func:`write_atomic`): a file is written under a temporary name
``<path>.tmp-<pid>-<random>`` (the pattern the cache store recognises, so a killed writer's
leftover is removed), optionally fsync'ed, then renamed over ``path``: a reader sees the old
file or the new one, never part of one.  The one helper every small atomic writer uses (view
index files and their tables, run records, blobs, index records, result summaries).

*Verified before trusted*: a cache file committed by renaming it into place is complete, but
its bytes may still be only in the page cache; after a power loss a file system may keep its
name and size and lose its data (XFS, ext4 ``data=writeback``: zeros).  So a writer that
commits without waiting for the disk *marks* the file (:func:`mark_unsynced`: the sticky bit
of its mode, :data:`UNSYNCED`, meaningless on a regular file in Linux) before the rename, and
whoever makes it durable (:func:`make_durable`: fsync of the file, then of its folder) clears
the mark only then.  A marked file is never trusted on its identity alone, nor remembered by a
stat memo: it is verified by its content digest (:mod:`backbeat.cache.store`), made durable, and
only then trusted by its identity.  (A reader may first wait for the processes that said they
are making it durable: :func:`await_peers`.)  The mark is
part of the file's inode, so it goes wherever the file goes (a rename, a crash); a mark lost
or never set only happens to files written without it, which were synced before their rename.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterable
from typing import Any

#: the mode bit of a committed file whose data may not be on disk yet
UNSYNCED = stat.S_ISVTX


@functools.cache
def boot_id() -> str:
    """This boot of the machine (Linux ``boot_id``; "" where unknown): a file marked unsynced by a
    process of this boot still has, in the page cache, the data its writer wrote.  Read once per
    process (a process never outlives its boot): a journal asks at each job it adds."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def is_unsynced(st: os.stat_result) -> bool:
    """Whether the file ``st`` describes is marked as not yet durable."""
    return bool(st.st_mode & UNSYNCED)


def mark_unsynced(fd_or_path: int | str | os.PathLike) -> bool:
    """Mark a file (before its rename into place) as not yet durable; False if the file system
    refused (the caller then syncs it before the rename)."""
    try:
        if isinstance(fd_or_path, int):
            os.fchmod(fd_or_path, stat.S_IMODE(os.fstat(fd_or_path).st_mode) | UNSYNCED)
        else:
            os.chmod(fd_or_path, stat.S_IMODE(os.stat(fd_or_path).st_mode) | UNSYNCED)
    except OSError:
        return False
    return True


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Any = None


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing a file's dirty pages to disk now, without waiting
    (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, not in Python's ``os``; a no-op elsewhere).
    A large file written so while its writer computes is mostly on disk when it is fsync'ed: the
    fsync that makes it durable is then short.  Nothing is promised: only fsync makes durable."""
    global _sync_file_range
    if _sync_file_range is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).sync_file_range
            fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            _sync_file_range = fn
        except (OSError, AttributeError):
            _sync_file_range = False
    if _sync_file_range:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def fsync_path(path: str | os.PathLike) -> None:
    """fsync one file (or folder) by name; OSError if it cannot be opened or synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(path: str | os.PathLike) -> None:
    """fsync the folder holding ``path`` (so that a rename into it is durable)."""
    fsync_path(os.path.dirname(os.path.abspath(path)) or ".")


def make_durable(paths: Iterable[str | os.PathLike],
                 synced: dict[str, tuple[int, int]] | None = None) -> dict[str, OSError]:
    """fsync each file, then each of their folders once, then clear their marks; the files that
    could not be made durable (``{path: error}``; a file gone meanwhile is not one of them).
    ``synced`` (if given) receives ``{path: (st_dev, st_ino)}`` of each file made durable: the
    file that was at that path when it was synced.

    A mark is cleared only after the file's data and its name are on disk: a crash at any
    point leaves a file that is durable, or still marked.  It is cleared on the file that was
    synced, never on one renamed over it meanwhile (a writer committing the same entry again:
    its file stays marked, for its own syncer).
    """
    failed: dict[str, OSError] = {}
    done: list[tuple[str, os.stat_result]] = []
    folders: dict[str, list[str]] = {}
    for p in [str(os.fspath(q)) for q in paths]:
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            continue
        except OSError as exc:
            failed[p] = exc
            continue
        try:
            os.fsync(fd)
            done.append((p, os.fstat(fd)))
        except OSError as exc:
            failed[p] = exc
        finally:
            os.close(fd)
    for p, _st in done:
        folders.setdefault(os.path.dirname(os.path.abspath(p)), []).append(p)
    for folder, members in folders.items():
        try:
            fsync_path(folder)
        except OSError as exc:
            for p in members:
                failed[p] = exc
    for p, st in done:
        if p in failed:
            continue
        if st.st_mode & UNSYNCED:
            try:
                _clear_mark(p, st)
            except FileNotFoundError:
                continue
            except OSError as exc:  # (a file of another user: durable, but it stays marked)
                failed[p] = exc
                continue
        if synced is not None:
            synced[p] = (st.st_dev, st.st_ino)
    return failed


def _clear_mark(path: str, synced: os.stat_result) -> None:
    """Clear the mark of the file at ``path`` if it is still the file ``synced`` describes
    (through a descriptor of that very file: a rename over the path cannot redirect it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (synced.st_dev, synced.st_ino):
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~UNSYNCED)
    finally:
        os.close(fd)


#: descriptors that reach end of file once other processes have made their files durable
_peers: list[int] = []
#: how long a reader waits for them at most (seconds)
PEERS_WAIT_S = 3.0


def expect_peers(fds: Iterable[int]) -> None:
    """``fds`` (read ends of pipes) reach end of file once the processes holding their other ends
    have ended, having made durable the files they committed (a warm template's earlier commands,
    syncing after their answer): a reader finding a marked file may wait for them
    (:func:`await_peers`) rather than verify it."""
    _peers.extend(fds)


def forget_peers() -> None:
    """Close the descriptors of :func:`expect_peers` (a process forked from this one)."""
    while _peers:
        with contextlib.suppress(OSError):
            os.close(_peers.pop())


def await_peers(timeout: float = PEERS_WAIT_S) -> bool:
    """Wait until the processes of :func:`expect_peers` have ended (at most ``timeout`` seconds,
    once per process: later calls return at once); whether there were any.  Only a wait: a file
    still marked after it is verified as any marked file."""
    if not _peers:
        return False
    import select
    import time

    waiting = list(_peers)
    _peers.clear()
    deadline = time.monotonic() + timeout
    try:
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(waiting, [], [], left)
            for fd in ready:
                try:
                    data = os.read(fd, 64)  # (a byte its writer sent, or end of file)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    waiting.remove(fd)
                    os.close(fd)
    finally:
        for fd in waiting:
            with contextlib.suppress(OSError):
                os.close(fd)
    return True


def temporary_name(path: str | os.PathLike) -> str:
    """A writer's temporary name for ``path`` (``<path>.tmp-<pid>-<random>``)."""
    return f"{os.fspath(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


class Later:
    """Atomic writes (:func:`write_atomic` given ``later``) whose fsync and rename wait: each file is
    written now under its temporary name and the kernel asked to start writing it to disk
    (:func:`start_writeback`); :meth:`commit` (from another thread, while the writer computes)
    fsyncs and renames them, in the order they were written, exactly as :func:`write_atomic` would
    have (synced before its rename, the folder after it when asked): only the waits move off the
    writer's path.  Until then nothing has its name.  Every file (and folder) is opened by the
    writer, none by :meth:`commit`: a thread opening nothing, which a process watching what it
    opens (:class:`backbeat.runtime.dependencies.OpenRecorder`) does not see.  :meth:`discard`
    closes and removes the temporaries."""

    def __init__(self) -> None:
        self.files: list[tuple[int, str, str, bool, int | None]] = []  # (fd, temporary, path, sync, folder's fd)

    def write(self, tmp: str, path: str, pieces: Iterable[bytes], sync: bool, sync_folder: bool) -> None:
        """Write ``tmp`` (its descriptor kept), to be renamed to ``path`` by :meth:`commit`."""
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        folder = None
        try:
            with open(fd, "wb", closefd=False) as f:
                for piece in pieces:
                    f.write(piece)
            if sync:
                start_writeback(fd)
            if sync_folder:
                folder = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(fd)
            raise
        self.files.append((fd, tmp, path, sync, folder))

    def commit(self) -> None:
        """fsync and rename every file, in order (an OSError is given the file's name; the
        temporaries not renamed are removed)."""
        path = ""
        try:
            while self.files:
                fd, tmp, path, sync, folder = self.files[0]
                if sync:
                    os.fsync(fd)
                os.replace(tmp, path)
                self.files.pop(0)
                try:  # (the folder closed even if closing the file fails: no descriptor leaks)
                    os.close(fd)
                    if folder is not None:
                        os.fsync(folder)
                finally:
                    if folder is not None:
                        os.close(folder)
        except OSError as exc:
            self.discard()
            if exc.filename is None:
                raise OSError(exc.errno, exc.strerror, path) from exc
            raise

    def commit_meanwhile(self) -> Callable[[], None]:
        """:meth:`commit` in a thread (its waits release the GIL: the writer computes meanwhile; a
        process forking must do so before); a callable that waits for it and raises what it raised.  If no
        thread can be started (``RuntimeError``: e.g. under an address space limit), :meth:`commit` runs
        here and now (what it raises, raised)."""
        failed: list[BaseException] = []

        def run() -> None:
            try:
                self.commit()
            except BaseException as exc:  # noqa: BLE001 - raised in the writer, by the callable returned
                failed.append(exc)

        thread = threading.Thread(target=run, name="backbeat-commit", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # ("can't start new thread": never a digest reported for files never named)
            self.commit()
            return lambda: None

        def wait() -> None:
            thread.join()
            if failed:
                raise failed[0]

        return wait

    def discard(self) -> None:
        """Close and remove the temporaries not renamed yet."""
        for fd, tmp, _path, _sync, folder in self.files:
            for each in (fd, folder):
                if each is not None:
                    with contextlib.suppress(OSError):
                        os.close(each)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self.files.clear()


def write_atomic(path: str | os.PathLike, data: bytes | str | Iterable[bytes], *, sync: bool = True,
                 sync_folder: bool = False, mkdir: bool = False, tmp: str | None = None,
                 later: Later | None = None) -> None:
    """Write ``data`` (bytes, text in UTF-8, or pieces of bytes) to ``path`` atomically.

    ``sync``: fsync the file before its rename (it is durable once it has its name);
    ``sync_folder``: fsync the folder after it (the name is durable too); ``mkdir``: create
    the folder; ``tmp``: the temporary name (default :func:`temporary_name`); ``later``: only
    the temporary written now, its fsync and rename left to ``later`` (:class:`Later`).  Nothing
    is left if it fails; an ``OSError`` without a file name (a full disk found by ``write``) is
    given ``path``'s.
    """
    path = os.fspath(path)
    if mkdir:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = tmp or temporary_name(path)
    pieces = [data.encode("utf-8") if isinstance(data, str) else data] if isinstance(data, (bytes, str)) else data
    try:
        if later is not None:
            later.write(tmp, path, pieces, sync, sync_folder)
            return
        with open(tmp, "wb") as f:
            for piece in pieces:
                f.write(piece)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise
    if sync_folder:
        fsync_folder(path)
