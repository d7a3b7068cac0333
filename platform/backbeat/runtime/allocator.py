"""Keeping the memory of data batches in the process instead of mapping it afresh for each batch.

glibc's ``malloc`` serves an allocation over its *mmap threshold* (128 KiB at first, raised
on the fly up to 32 MiB as such blocks are freed) with a fresh ``mmap`` and returns it to the
kernel on ``free``; and it gives the top of its heap back to the kernel beyond its *trim
threshold*.  A block process allocates and frees arrays of the size of its batches (about
2 MB: windows read, values copied out of a message, columns gathered for the writer, ZeroMQ
messages) thousands of times, so each batch paid its pages again: a page fault per 4 KiB
touched, ~1 ms per MB — as much as the copying itself (80 MB copied and stacked in 2 MB
batches: 37,000 page faults and 0.17 s, 1,500 and 0.07 s once the memory is reused).

:func:`reuse_batch_memory` sets both thresholds (``mallopt``) so that allocations up to
:data:`MMAP_THRESHOLD` come from the heap and up to :data:`TRIM_THRESHOLD` of free heap stays
in the process: the memory of one batch is reused for the next.  The process's peak memory
does not grow (a freed batch's memory is what the next batch takes); larger arrays (a user's
own) are still mapped and unmapped as before.  Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 << 20  # allocations up to this size come from the heap (batches are ~2-4 MB)
TRIM_THRESHOLD = 64 << 20  # free memory kept at the top of the heap before it is given back

_done: list[bool] = []


def reuse_batch_memory() -> bool:
    """Set glibc's thresholds (once per process; a forked child inherits them); False where the C
    library is not glibc or refuses."""
    if _done:
        return _done[0]
    ok = False
    try:  # the process's own symbols: glibc's when it is linked with glibc (find_library would
        mallopt = ctypes.CDLL(None).mallopt  # run ldconfig in a child process: not in a block)
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is not None:
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _done.append(ok)
    return ok
