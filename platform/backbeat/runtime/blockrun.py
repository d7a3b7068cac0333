"""What runs inside a block process: load the user's algorithm, wire its data, drive it.

The executor spawns ``backbeat.processes.control:job_main`` in a fresh child of the fork
server; ``job_main`` calls :func:`run` with the job envelope, whose ``spec`` is a
:class:`~backbeat.runtime.spec.BlockSpec` (built by :mod:`backbeat.execution.specs`).  It:

1. installs the ``beat.backend.python`` import aliases (user code written for BEAT imports them);
2. loads the libraries the algorithm ``uses`` and the algorithm module from the snapshots of
   the bytes hashed at planning (:mod:`~backbeat.runtime.codeloader`);
3. opens every input: upstream outputs from their HDF5 cache files (verified, and checked to
   hold the key they were looked up by), dataset outputs
   from the database-provider process over ZeroMQ (:mod:`~backbeat.runtime.dbprovider`), both
   as windowed :class:`~backbeat.runtime.sources.BatchSource`\\ s, or a stream from a producer
   running at the same time (:mod:`~backbeat.runtime.streams`);
4. opens one :class:`~backbeat.data.cachewriter.CacheWriter` per output (temporary file, renamed
   into place only when complete);
5. drives the algorithm with BEAT's semantics (:mod:`~backbeat.runtime.driver`), reporting
   progress over the control channel, and commits the outputs.  Any exception propagates to
   ``job_main``, which reports it; uncommitted writers are aborted so nothing partial remains.

One side of a loop node has a ``loop`` spec (:mod:`~backbeat.runtime.loopchannel`): the
processor is driven as above with a ``loop_channel`` (its writes and steps notify the
evaluator); the evaluator is set up, then answers the processor until it is done, and
commits its outputs.
"""

from __future__ import annotations

import time
from typing import Any

from backbeat.core.errors import WireError
from backbeat.data import cachereader, cachewriter
from backbeat.data.batch import unit_bytes, units_within
from backbeat.data.values import value_type
from backbeat.processes import control
from backbeat.runtime.allocator import reuse_batch_memory
from backbeat.runtime.codeloader import load_code
from backbeat.runtime.compat import install_beat_aliases
from backbeat.runtime.driver import build_inputs, build_outputs, count_steps, run_algorithm
from backbeat.runtime.sources import BatchSource, restrict
from backbeat.runtime.spec import BlockSpec
from backbeat.runtime.streams import StreamSender, StreamSource

STREAM_FIRST = 1024  # units of the first batch of a streamed output, twice as many in each next one ...
#: ... up to this many (and ~2 MB): consumers start early, later batches cost less.  (16,384 saved ~10 %
#: of an identity block's CPU on scalars, but let the last block of a chain lag tens of thousands of
#: units behind, finishing alone on one core: docs/performance.md, wave 7)
STREAM_BATCH = 4096
WINDOW_BYTES = 2 << 20  # at most, bytes of an input's window (of units read at once): memory is bounded
#: an analyzer's result of at most that many units is reported with its records (statistic
#: ``records``), so that the executor need not open the file to report it
REPORTED_RESULT_UNITS = 1000


class _Sink:
    """BEAT ``Output`` sink protocol (``write(value, start, end)``) over an HDF5 cache writer.

    ``writer`` lets the ``Output`` append to the writer's buffer directly (see
    :meth:`backbeat.data.cachewriter.CacheWriter.buffer`).
    """

    __slots__ = ("write", "writer")

    def __init__(self, writer: cachewriter.CacheWriter):
        self.write = writer.put
        self.writer = writer


def _batch_size(expanded: dict, fmt: str) -> tuple[int, int]:
    """About how large the batches of a streamed output of ``fmt`` are, ``(bytes, units)`` (both
    ends compute it)."""
    units = units_within(expanded, fmt, STREAM_BATCH, cachewriter.BUFFER_BYTES)
    return units * unit_bytes(expanded, fmt), units


def _cache_source(path: str, window: int, verify: bool = True, key: str | None = None) -> tuple[BatchSource, Any]:
    reader = cachereader.CacheReader(path, verify=verify, key=key)
    return BatchSource(reader.starts, reader.ends, reader.read_units, window), reader


def _commit(writers: dict, senders: dict, outputs: Any, digests: dict[str, str],
            streamed: list[StreamSource]) -> dict[str, int]:
    """Commit every output (its content digest into ``digests``); tell the consumers of streamed
    ones; ``{output: units written}``.

    A small streamed output is sealed and announced first (its last batch, its end and digest:
    the consumers go on while its file is written), and every output is renamed into place only
    once the producers of the ``streamed`` inputs have committed theirs
    (:meth:`~backbeat.runtime.streams.StreamSource.settle`, docs/execution.md "Streaming").  Every
    output's consumers are told of its commit as it happens; their acks are collected at the end."""
    announced = set()
    for name, writer in writers.items():
        sender = senders.get(name)
        if sender is not None and writer.small:
            digest = writer.seal()  # (sends the last batch)
            if sender.early:
                sender.announce(writer.start, writer.last, digest)
                announced.add(name)

    def settle() -> None:
        for source in streamed:
            source.settle()

    written = {}
    for name, writer in writers.items():
        digests[name] = writer.close(gate=settle)
        if name in announced:
            senders[name].confirm(digests[name])
        elif name in senders:
            senders[name].finish(writer.last)
        written[name] = outputs[name].nb_data_blocks_written
    for sender in senders.values():  # (every output's consumers told first: one wait for all acks)
        sender.acks()
    return written


def _committed(spec: BlockSpec, digests: dict[str, str]) -> dict[str, Any]:
    """What the executor learns of the committed outputs without opening them: their content
    digests by key (``committed``: key → digest, for its provenance record and stat memo;
    ``digests``: output → digest, what a sandboxed run checks) and, for an analyzer's small
    result, its records read back from the file (``records``: key → records, for its report)."""
    out: dict[str, Any] = {"committed": {spec.outputs[n].key: d for n, d in digests.items() if n in spec.outputs}}
    if spec.kind == "analyzer" and spec.slot is None:
        kept = {}
        for o in spec.outputs.values():
            try:
                with cachereader.CacheReader(o.path, verify=False) as reader:  # (its digest was just computed)
                    if len(reader) <= REPORTED_RESULT_UNITS:
                        kept[o.key] = cachereader.records(reader)
            except Exception:  # noqa: BLE001 - committed all the same: the executor reads the file itself
                continue
        out["records"] = kept
    return out


def _last_end(source: Any) -> int:
    last = getattr(source, "last_end", None)
    return last() if last is not None else source.data_indices()[-1][1]


def _algorithm_class(spec: BlockSpec) -> Any:
    module = load_code(spec.algorithm, spec.code)
    cls = getattr(module, "Algorithm", None)
    if cls is None:
        raise RuntimeError(f"algorithm `{spec.algorithm}' defines no class `Algorithm'")
    return cls


def run(payload: dict) -> dict:
    """Execute one block (see module docstring); returns the I/O statistics."""
    t0 = time.perf_counter()
    install_beat_aliases()
    reuse_batch_memory()  # (batches of ~2 MB allocated and freed again and again: no page faults each time)
    spec = BlockSpec.from_json(payload["spec"])
    formats = spec.formats
    window = spec.window
    algorithm = _algorithm_class(spec)()

    readers = []
    streams: list[StreamSource] = []  # the streamed inputs (settled before any output is committed)
    client = None
    sources = {}
    src: Any
    for name, inp in spec.inputs.items():
        units = units_within(formats[inp.dataformat], inp.dataformat, window, WINDOW_BYTES)
        if inp.source == "cache":
            assert inp.path is not None
            src, reader = _cache_source(inp.path, units, inp.verify, inp.key or None)
            readers.append(reader)
        elif inp.source == "stream":  # from a producer running at the same time (runtime.streams)
            assert inp.address is not None
            src = StreamSource(inp.address, inp.dataformat, formats[inp.dataformat],
                               *_batch_size(formats[inp.dataformat], inp.dataformat))
            readers.append(src)
            streams.append(src)
        else:
            if client is None:
                from backbeat.runtime.dbprovider import DatabaseClient

                if spec.database is None:
                    raise WireError(f"block `{spec.name}' reads a dataset but was given no database provider")
                client = DatabaseClient(spec.database)
            assert inp.dataset is not None and inp.output is not None
            src = client.source(inp.dataset, inp.output, inp.dataformat, formats[inp.dataformat], units)
        sources[name] = (inp.channel, src, inp.dataformat)

    if spec.range is not None:  # a slot of a split block: only its share of the block's channel
        lo, hi = spec.range
        sources = {n: (ch, restrict(src, lo, hi) if ch == spec.channel else src, df)
                   for n, (ch, src, df) in sources.items()}
    input_list, loaders = build_inputs(spec.type, spec.channel, sources)
    own = [s for (ch, s, _df) in sources.values() if ch == spec.channel]
    loop = spec.loop  # one side of a loop node (runtime.loopchannel)
    start: int
    end: int | None
    if any(getattr(s, "live", False) for s in own):  # the end is known when the stream ends
        start, end = 0, None
    elif loop is not None and loop.role == "evaluator":
        # the evaluator writes when the processor does, on the processor's timeline (BEAT: its
        # file's name says its own inputs' range, its units follow the processor's end indices)
        start, end = 0, None
    else:
        start, end = spec.range or (0, max((_last_end(s) for s in own if len(s)), default=-1))

    channel = None  # the loop channel of a loop processor
    writers: dict[str, cachewriter.CacheWriter] = {}
    senders: dict[str, StreamSender] = {}
    sinks: dict[str, tuple[Any, Any]] = {}
    digests: dict[str, str] = {}
    try:
        for name, out in spec.outputs.items():
            df = out.dataformat
            writer = cachewriter.CacheWriter(out.path, df, formats[df], key=out.key, start=start, end=end,
                                           compression=spec.compression, images=spec.images,
                                           writeback=spec.writeback)
            writers[name] = writer
            if out.streams:  # consumers run at the same time: each batch written is also sent to them
                writer.grow(STREAM_FIRST, min(writer.buffer_units, STREAM_BATCH))  # (batches stay ≤ ~2 MB)
                senders[name] = StreamSender(out.streams, *_batch_size(formats[df], df))
                writer.on_batch = senders[name].send
            sinks[name] = (_Sink(writer), value_type(df, formats[df]))
        outputs = build_outputs(sinks, input_list, start_index=start)
        if loop is not None and loop.role == "evaluator":
            from backbeat.runtime.loopchannel import run_evaluator

            served = run_evaluator(algorithm, loop, inputs=input_list, data_loaders=loaders,
                                   outputs=outputs, parameters=spec.values, root=payload.get("root"))
            written = _commit(writers, senders, outputs, digests, streams)
            return {"steps": served, "written": written, "digests": digests,
                    "read_bytes": sum(s.bytes_read for (_c, s, _d) in sources.values()),
                    "wall_s": time.perf_counter() - t0, **_committed(spec, digests)}
        if loop is not None:
            from backbeat.runtime.loopchannel import LoopChannel, attach_writes

            channel = LoopChannel(loop.address, loop.request, loop.answer)
            attach_writes(outputs, channel)
        cc = control.client()
        total = count_steps(input_list, loaders)

        def progress(done: int) -> None:
            if cc is not None:
                cc.progress(done, total)

        summary = run_algorithm(
            algorithm, spec.type, inputs=input_list, data_loaders=loaders, outputs=outputs,
            parameters=spec.values, analyzer=spec.kind == "analyzer", name=spec.algorithm,
            progress=progress, loop_channel=channel,
            before_process=channel.read_next if channel is not None else None,
        )
        if channel is not None:
            channel.done()
        written = _commit(writers, senders, outputs, digests, streams)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        for sender in senders.values():
            sender.close()
        for reader in readers:
            reader.close()
        if client is not None:
            client.close()
        if channel is not None:
            channel.close()
    return {
        "steps": summary.steps,
        "written": written,
        "digests": digests,  # checked against the files by a sandboxed run (execution.sandboxing)
        "read_bytes": sum(s.bytes_read for (_c, s, _d) in sources.values()),
        "wall_s": time.perf_counter() - t0,
        **_committed(spec, digests),
    }
