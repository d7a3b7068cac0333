"""The executor commits the small outputs block processes hand over (:mod:`backbeat.data.handoff`).

A block process of the local executor whose output stays small sends its batches over its
control channel (``commit``: authenticated by its job's token and its process, like every
control message) instead of opening HDF5 itself; :class:`Handoffs` — in the executor, a warm
process that has written such files before — writes them with an ordinary
:class:`~backbeat.data.cachewriter.CacheWriter` at the path, key, dataformat and compression
*the executor* gave the job (the block names only which of its outputs, and its data), commits
the file (marked unsynced, renamed into place: "durable before trusted" as for any output) and
answers the content digest it computed of exactly the bytes it wrote.

Trust: the block can only influence its data — each of its outputs is committed at most once,
through its own job's registration; the batches are decoded and checked against the output's
dataformat (:func:`backbeat.data.wire.decode`), the units against the range (start 0, every
unit up to the end), the size against :func:`max_bytes`;
anything else is refused (the block fails with that message, a ``system`` error) and nothing
is left in the cache.  The digests the run records for those outputs are the executor's own.

numpy and h5py are imported at the first commit, not with this module: a command that runs no
block (a cached run) does not import them, and one that does imports them after its fork
server's zygote is started, off its critical path.
"""

from __future__ import annotations

from dataclasses import dataclass

from backbeat.core.errors import BackbeatError
from backbeat.processes.control import Message
from backbeat.runtime.spec import BlockSpec


def max_bytes() -> int:
    """The most a handed-over output's frames may hold (a block hands over at most
    :data:`~backbeat.data.handoff.HANDOFF_BYTES` of arrays)."""
    from backbeat.data.handoff import HANDOFF_BYTES

    return 2 * HANDOFF_BYTES + (64 << 10)


@dataclass(frozen=True)
class _Output:
    key: str
    path: str
    dataformat: str
    expanded: dict
    compression: str | None


def _refused(message: str) -> dict:
    return {"type": "refused", "message": message}


class Handoffs:
    """What each block process may hand over, and the digests of what was committed for it."""

    def __init__(self) -> None:
        self._allowed: dict[str, dict[str, _Output]] = {}  # process id -> {output: where}
        self._digests: dict[str, dict[str, str]] = {}  # process id -> {key: digest computed here}

    def allow(self, pid: str, spec: BlockSpec) -> None:
        """Process ``pid`` runs ``spec`` (with ``handoff`` set): it may hand each output over once."""
        self._allowed[pid] = {n: _Output(o.key, o.path, o.dataformat, spec.formats[o.dataformat], spec.compression)
                              for n, o in spec.outputs.items()}

    def committed(self, pid: str) -> dict[str, str]:
        """``{key: digest}`` of the outputs committed for process ``pid`` (forgotten: it has ended)."""
        self._allowed.pop(pid, None)
        return self._digests.pop(pid, {})

    def commit(self, msg: Message) -> dict:
        """Commit the output a ``commit`` message hands over; the answer to send back."""
        name, start, end, counts = (msg.data.get(k) for k in ("output", "start", "end", "frames"))
        allowed = self._allowed.get(msg.job, {})
        out = allowed.get(name) if isinstance(name, str) else None
        if out is None:
            return _refused(f"block process `{msg.job}' may not hand over an output `{name}' "
                            "(not one of its outputs, or already committed)")
        if (not isinstance(start, int) or isinstance(start, bool) or start != 0 or not isinstance(end, int)
                or isinstance(end, bool) or end < start):
            return _refused(f"invalid data-index range [{start}, {end}] for output `{name}'")
        if (not isinstance(counts, list) or not counts or not all(isinstance(c, int) and c > 0 for c in counts)
                or sum(counts) != len(msg.frames)):
            return _refused(f"the batches of output `{name}' do not match their frames")
        if sum(len(f.buffer) for f in msg.frames) > max_bytes():
            return _refused(f"output `{name}' is too large to be handed over (more than {max_bytes()} bytes)")
        from backbeat.data import wire
        from backbeat.data.cachewriter import CacheWriter

        try:
            writer = CacheWriter(out.path, out.dataformat, out.expanded, key=out.key, start=start, end=end,
                                 compression=out.compression)
        except (BackbeatError, OSError, ValueError) as exc:
            return _refused(str(exc))
        try:
            first = 0
            for n in counts:
                writer.write_batch(wire.decode(list(msg.frames[first:first + n]), out.dataformat, out.expanded))
                first += n
            digest = writer.close()
        except (BackbeatError, OSError, ValueError) as exc:
            writer.abort()
            return _refused(str(exc))
        allowed.pop(str(name))  # (committed once: a refused attempt left nothing, the block may try again)
        self._digests.setdefault(msg.job, {})[out.key] = digest
        return {"type": "committed", "digest": digest}
