"""HDF5 cache files: one file per block output / analyzer result, with a content digest.

This module is the file format and its content digest; :mod:`backbeat.data.cachewriter`
writes files (:class:`~backbeat.data.cachewriter.CacheWriter`), :mod:`backbeat.data.cachereader`
reads and verifies them (:class:`~backbeat.data.cachereader.CacheReader`).
Layout (``docs/dataplane.md`` has the full specification):

* root attributes: ``backbeat`` (``"cache/1"``), ``dataformat``, ``declaration`` (canonical JSON of the
  expanded dataformat), ``key`` (producing block's cache key), ``start``/``end`` (declared data-index
  range, ``end = -1`` when open-ended), ``units``, ``digest``, ``digest_algorithm``;
* ``index/start``, ``index/end``: int64, the inclusive data-index range of every unit;
* ``columns/<name>``: one dataset per column of :func:`backbeat.data.batch.layout`; offsets columns
  are global (first 0, ``units + 1`` / ``elements + 1`` entries).  How a dataset is stored
  (compact, contiguous or chunked, compressed or not) is the writer's choice and never changes
  what a reader reads nor the digest.

The digest is computed over the data, not the file bytes: sha256 per array (raw little-endian C-order
bytes), combined with names, dtypes and shapes in a fixed order (see :func:`final_digest`).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import numpy as np

from backbeat.data.batch import I64, layout

FORMAT_TAG = "cache/1"
DIGEST_ALGORITHM = "sha256-columns/1"
READ_BYTES = 8 << 20  # read (and hashed) at once per dataset when a file is verified


def arrays(fmt_name: str, expanded: dict) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """Every array of a file in digest order: index arrays then columns sorted by name."""
    out: list[tuple[str, np.dtype, tuple[int, ...]]] = [("index/start", I64, ()), ("index/end", I64, ())]
    out += [("columns/" + c.name, c.dtype, c.shape) for c in layout(expanded, fmt_name)]
    return out


def final_digest(fmt_name: str, canon: str, start: int, end: int,
                  parts: list[tuple[str, np.dtype, tuple[int, ...], str]]) -> str:
    """sha256 of the header lines + one line per array ``name dtype shape sha256(bytes)``."""
    lines = [f"backbeat-digest/1\ndataformat {fmt_name}\ndeclaration {canon}\nrange {start} {end}\n"]
    for name, dtype, shape, h in parts:
        lines.append(f"{name} {dtype.str} {'x'.join(map(str, shape))} {h}\n")
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


class Done:
    """A finished job (small buffers are hashed inline: a thread hop costs more than it saves)."""

    def result(self) -> None:
        return None


DONE = Done()


class Hasher:
    """Hash large buffers in one helper thread (hashlib releases the GIL) while HDF5 reads or writes.

    The thread exists only while a writer/verification is running (:meth:`close` ends it): a lingering
    thread would, e.g., stop the worker pool from forking its zygote safely.
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    def update(self, h: Any, arr: np.ndarray) -> Any:
        """``h.update(bytes of arr)``, in the thread for large buffers; returns a job (``.result()``)."""
        mv = memoryview(cast(Any, np.ascontiguousarray(arr).reshape(-1).view(np.uint8)))
        if mv.nbytes < (256 << 10):
            h.update(mv)
            return DONE
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backbeat-hash")
        return self._pool.submit(h.update, mv)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None



def identity_message(path: str, stored: str, expected: str) -> str:
    return (f"cache file `{path}' holds the output of key {stored[:12] or '(none)'}…, not of key {expected[:12]}… "
            f"it was looked up by (copied or moved from another entry)")
