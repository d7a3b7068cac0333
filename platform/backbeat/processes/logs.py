"""The output of a block process, kept in a bounded log file.

A block's standard output and error (its ``print``\\ s, warnings, what its libraries write) never
reach backbeat's own streams: the fork server gives each block process a pipe as fds 1 and 2
and copies what comes out of it into the job's log file (:class:`BoundedLog`), which the
executor names in the cache (:meth:`backbeat.cache.store.CacheStore.log_path`).

A log holds at most :data:`HEAD` + :data:`TAIL` bytes (plus one line saying how much was left
out): the first :data:`HEAD` bytes are written as they come, then only the last :data:`TAIL`
are kept, and written when the process ends — so a block printing 100 MB costs 1 MiB of cache
and its last words (what one wants after a failure, :func:`tail`) are always there.
"""

from __future__ import annotations

import contextlib
import os
import stat

HEAD = 256 * 1024
TAIL = 768 * 1024
OMITTED = "\n[backbeat: {} bytes of output omitted here]\n"


class BoundedLog:
    """Copy a stream into ``path``, keeping its first ``head`` and last ``tail`` bytes.

    An earlier log at ``path`` is removed at once; the file is created with the first byte
    written (a process that writes nothing has no log).  A log that cannot be written (full
    disk, read-only cache, a NUL byte in its path) is dropped silently: the output of a block is
    a courtesy, never a reason for it to fail (nor for the zygote, which makes it, to fail).
    """

    def __init__(self, path: str, head: int = HEAD, tail: int = TAIL) -> None:
        self.path = path
        self.head, self.tail_size = head, tail
        self.size = 0  # bytes received
        self._written = 0
        self._tail = bytearray()
        self._omitted = 0
        self._fd: int | None = None
        self._failed = False
        with contextlib.suppress(OSError, ValueError, TypeError):  # (ValueError: a NUL byte in it)
            os.unlink(path)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._written < self.head:
            first = data[:self.head - self._written]
            data = data[len(first):]
            self._written += len(first)
            self._put(first)
        if data:
            self._tail += data
            extra = len(self._tail) - self.tail_size
            if extra > 0:
                self._omitted += extra
                del self._tail[:extra]

    def _put(self, data: bytes) -> None:
        if self._failed or not data:
            return
        try:
            if self._fd is None:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except (OSError, ValueError, TypeError):  # (never out of the zygote's loop: it serves other jobs)
            self._drop()

    def _drop(self) -> None:
        self._failed = True
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Write the kept tail (after a line counting what was left out) and close the file."""
        if self._omitted:
            self._put(OMITTED.format(self._omitted).encode())
        self._put(bytes(self._tail))
        self._tail = bytearray()
        self._drop()


def move_log(staged: str, path: str) -> None:
    """Move a log written where a sandboxed process could reach it (``staged``) to ``path``, as a
    :class:`BoundedLog` of it: only a regular file of its own is read (never through a link, nor a
    pipe), at most a bounded log's worth of it kept; no log (the process wrote nothing) removes
    an earlier one at ``path``."""
    out = BoundedLog(path)
    try:
        fd = os.open(staged, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            while chunk := os.read(fd, 1 << 20):
                out.write(chunk)
    except OSError:
        pass
    finally:
        os.close(fd)
        out.close()
        with contextlib.suppress(OSError):
            os.unlink(staged)


def compact(path: str, head: int = HEAD, tail: int = TAIL) -> None:
    """Bound a log written directly by a process (the multiprocessing fallback) as :class:`BoundedLog`
    would (an empty one is removed)."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            os.unlink(path)
        if size <= head + tail:
            return
        with open(path, "rb") as f:
            first = f.read(head)
            f.seek(size - tail)
            last = f.read(tail)
        with open(path, "wb") as f:
            f.write(first + OMITTED.format(size - head - tail).encode() + last)
    except OSError:
        pass


def tail(path: str | os.PathLike, lines: int = 20, limit: int = 4096) -> str | None:
    """The last ``lines`` lines (at most ``limit`` bytes) of a log; None if it is missing or empty."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return None
    text = data.decode("utf-8", "replace")
    if size > limit:  # the first line read is cut
        text = text.partition("\n")[2]
    text = "\n".join(text.rstrip("\n").split("\n")[-lines:])
    return text if text.strip() else None
