"""ZeroMQ wire format for batches: one multipart message per batch, never pickle.

Frames (``docs/dataplane.md`` has the full specification):

0. header: UTF-8 JSON object ``{"backbeat": "wire/1", "dataformat": name, "declaration":
   sha256(canonical expanded declaration), "units": N, "columns": [[name, dtype, shape], ...]}``
   where ``shape`` is the full array shape and ``columns`` follows :func:`backbeat.batch.layout` order;
1. ``starts`` (int64 little-endian, N values); 2. ``ends`` (same);
3+. one frame per column, raw little-endian C-order bytes.

Many small data units travel in one message (one batch); large column buffers are sent without
copies (``copy=False``, pyzmq copies frames below its ``copy_threshold`` itself).  Decoding checks the
header against the expected dataformat and layout, every frame's size, then the batch structure
(offsets, shapes, ranges), and raises :class:`~backbeat.errors.WireError` on any mismatch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast

import numpy as np

from backbeat.core.errors import DataError, WireError
from backbeat.data.batch import I64, Batch, layout, unit_bytes
from backbeat.data.snapshot import UnitBuffer
from backbeat.data.values import canonical

TAG = "wire/1"
MAX_HEADER = 1 << 20


def declaration_hash(expanded: dict) -> str:
    """sha256 of the canonical JSON of an expanded declaration."""
    return hashlib.sha256(canonical(expanded).encode("utf-8")).hexdigest()


def encode(batch: Batch) -> list[Any]:
    """The frames of one message carrying ``batch`` (buffers are not copied)."""
    cols = layout(batch.expanded, batch.name)
    arrays = [np.ascontiguousarray(batch.columns[c.name]) for c in cols]
    header = {
        "backbeat": TAG,
        "dataformat": batch.name,
        "declaration": declaration_hash(batch.expanded),
        "units": len(batch),
        "columns": [[c.name, c.dtype.str, list(a.shape)] for c, a in zip(cols, arrays, strict=False)],
    }
    frames: list[Any] = [json.dumps(header, separators=(",", ":")).encode("utf-8")]
    for arr in (batch.starts, batch.ends, *arrays):
        frames.append(memoryview(cast(Any, np.ascontiguousarray(arr).reshape(-1).view(np.uint8))) if arr.size else b"")
    return frames


def _buffer(frame: Any) -> memoryview:
    buf = getattr(frame, "buffer", frame)
    try:
        return memoryview(buf).cast("B")
    except TypeError as exc:
        raise WireError(f"message frame is not a byte buffer: {exc}") from None


def decode(frames: list[Any], expected_fmt_name: str, expected_expanded: dict, private: bool = False) -> Batch:
    """The batch carried by ``frames``; WireError if malformed, truncated or of another dataformat.

    ``private``: the frames were received from another process and nothing else holds them, so the
    values made from the batch may view their (writable) memory instead of copies of it
    (:attr:`backbeat.data.batch.Batch.private`); a frame that is not writable is copied as before."""
    if not isinstance(frames, (list, tuple)) or len(frames) < 3:
        raise WireError(f"message has {len(frames) if isinstance(frames, (list, tuple)) else '?'} frames, "
                        "expected at least 3 (header, starts, ends)")
    raw = _buffer(frames[0])
    if len(raw) > MAX_HEADER:
        raise WireError(f"message header too large ({len(raw)} bytes)")
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise WireError("message header is not valid UTF-8 JSON") from None
    if not isinstance(header, dict) or header.get("backbeat") != TAG:
        raise WireError(f"message is not a backbeat batch ({TAG})")
    name = header.get("dataformat")
    if name != expected_fmt_name:
        raise WireError(f"message carries dataformat `{name}', expected `{expected_fmt_name}'")
    if header.get("declaration") != declaration_hash(expected_expanded):
        raise WireError(f"message declaration of `{name}' differs from the expected one")
    units = header.get("units")
    if not isinstance(units, int) or isinstance(units, bool) or units < 0:
        raise WireError(f"message header has an invalid unit count: {units!r}")
    cols = layout(expected_expanded, expected_fmt_name)
    described = header.get("columns")
    if not isinstance(described, list) or len(described) != len(cols):
        raise WireError(f"message header describes {len(described) if isinstance(described, list) else '?'} "
                        f"columns, dataformat `{name}' has {len(cols)}")
    if len(frames) != 3 + len(cols):
        raise WireError(f"message has {len(frames)} frames, expected {3 + len(cols)} (truncated?)")
    specs: list[tuple[str, np.dtype, tuple[int, ...]]] = [("starts", I64, (units,)), ("ends", I64, (units,))]
    for col, desc in zip(cols, described, strict=False):
        if (not isinstance(desc, list) or len(desc) != 3 or desc[0] != col.name or desc[1] != col.dtype.str
                or not isinstance(desc[2], list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in desc[2])
                or tuple(desc[2][1:]) != col.shape or len(desc[2]) != 1 + len(col.shape)):
            raise WireError(f"message column {desc!r} does not match `{col.name}' {col.dtype.str} {col.shape}")
        specs.append((col.name, col.dtype, tuple(desc[2])))
    arrays = []
    for (cname, dtype, shape), frame in zip(specs, frames[1:], strict=False):
        buf = _buffer(frame)
        need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if len(buf) != need:
            raise WireError(f"message frame for `{cname}' has {len(buf)} bytes, expected {need} (truncated?)")
        arrays.append(np.frombuffer(buf, dtype=dtype).reshape(shape) if need else np.empty(shape, dtype))
    try:
        batch = Batch(name, expected_expanded, arrays[0], arrays[1],
                      {s[0]: a for s, a in zip(specs[2:], arrays[2:], strict=False)})
    except DataError as exc:
        raise WireError(f"malformed batch of `{name}' in message: {exc}") from None
    batch.private = private and all(a.flags.writeable for a in arrays[2:])
    return batch


def send_batch(socket: Any, batch: Batch, flags: int = 0) -> None:
    """Send ``batch`` as one multipart message (large frames zero-copy)."""
    socket.send_multipart(encode(batch), flags=flags, copy=False)


def recv_batch(socket: Any, expected_fmt_name: str, expected_expanded: dict, flags: int = 0) -> Batch:
    """Receive one message and decode it (zero-copy: the arrays view the received frames)."""
    return decode(socket.recv_multipart(flags=flags, copy=False), expected_fmt_name, expected_expanded)


class BatchSender:
    """Accumulate data units and send them as batches of about ``target_bytes`` (one message each).

    ``add(value, start, end)`` buffers one unit (an instance or a dict, safe casting; its values as they
    are at ``add``: :class:`~backbeat.data.snapshot.UnitBuffer`); a message is sent
    once ``max_units`` units are buffered (default: ~``target_bytes`` of unit-level columns, at least 16);
    ``flush()`` sends what is left.  Units must be contiguous, as in a batch.
    """

    def __init__(self, socket: Any, fmt_name: str, expanded: dict, max_units: int | None = None,
                 target_bytes: int = 1 << 20, flags: int = 0) -> None:
        self.socket, self.name, self.expanded, self.flags = socket, fmt_name, expanded, flags
        self.max_units = max_units or max(16, target_bytes // unit_bytes(expanded, fmt_name))
        self._units = UnitBuffer(fmt_name, expanded, self.max_units)
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.sent_messages = 0

    def add(self, value: Any, start: int, end: int) -> None:
        self._units.add(value)
        self._starts.append(start)
        self._ends.append(end)
        if len(self._ends) >= self.max_units:
            self.flush()

    def add_batch(self, batch: Batch) -> None:
        self.flush()
        self._send(batch)

    def flush(self) -> None:
        if not self._ends:
            return
        batch = self._units.take(self._starts, self._ends)
        self._starts, self._ends = [], []
        self._send(batch)

    def _send(self, batch: Batch) -> None:
        send_batch(self.socket, batch, self.flags)
        self.sent_messages += 1
