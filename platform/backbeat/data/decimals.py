"""The decimal text of many int64 values at once, in numpy: what ``repr`` of each writes.

BEAT's index file (:mod:`backbeat.data.indextable`'s ``to_json``) holds one number an entry for the
common index of a view (``{"index": 0}, {"index": 1}, ...``); made by ``repr`` of each Python int, the
text of 1M entries cost ~0.25 s of the indexing job, on the path the cache keys wait for.  Here the
digits are computed column by column (a digit position for every value at once) into a byte matrix,
then gathered where each value has a digit: ~2x faster, the same bytes.
"""

from __future__ import annotations

import numpy as np


def texts(values: np.ndarray, sep: bytes) -> bytes:
    """Each value of ``values`` (int64) in decimal, as ``repr`` writes it (``-`` before a negative one,
    no leading zero), followed by ``sep`` (ASCII)."""
    n = len(values)
    if n == 0:
        return b""
    v = np.ascontiguousarray(values, dtype=np.int64)
    neg = v < 0
    mag = v.view(np.uint64).copy()
    np.negative(mag, out=mag, where=neg)  # (|v| modulo 2**64: exact, int64's least value too)
    top = int(mag.max())
    digits = len(str(top))
    rest = mag.astype(np.uint32) if top < 2 ** 32 else mag  # (a narrower division when it fits)
    width = digits + 1  # (a sign's column first)
    out = np.empty((width + len(sep), n), dtype=np.uint8)  # (a row a column of the text: each contiguous)
    keep = np.empty((width + len(sep), n), dtype=bool)
    keep[0] = False
    for j in range(digits):  # the j-th digit from the right: there when the value is at least 10**j
        col = width - 1 - j
        q = rest // 10
        out[col] = rest - q * 10
        out[col] += 48
        keep[col] = rest > 0 if j else True
        rest = q
    if neg.any():
        rows = np.flatnonzero(neg)
        cols = width - 1 - keep[1:width, rows].sum(axis=0)
        out[cols, rows] = ord("-")
        keep[cols, rows] = True
    out[width:] = np.frombuffer(sep, dtype=np.uint8)[:, None]
    keep[width:] = True
    return out.T[keep.T].tobytes()
