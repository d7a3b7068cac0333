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
4. opens one :class:`~backbeat.data.cachefile.CacheWriter` per output (temporary file, renamed
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
from backbeat.data import cachefile
from backbeat.data.values import value_type
from backbeat.processes import control
from backbeat.runtime.codeloader import load_code
from backbeat.runtime.compat import install_beat_aliases
from backbeat.runtime.driver import build_inputs, build_outputs, count_steps, run_algorithm
from backbeat.runtime.sources import BatchSource, restrict
from backbeat.runtime.spec import BlockSpec
from backbeat.runtime.streams import StreamSender, StreamSource

STREAM_BATCH = 4096  # at most, units per batch of a streamed output (the pipeline's grain)


class _Sink:
    """BEAT ``Output`` sink protocol (``write(value, start, end)``) over an HDF5 cache writer.

    ``writer`` lets the ``Output`` append to the writer's buffer directly (see
    :meth:`backbeat.cachefile.CacheWriter.buffer`).
    """

    __slots__ = ("write", "writer")

    def __init__(self, writer: cachefile.CacheWriter):
        self.write = writer.put
        self.writer = writer


def _cache_source(path: str, window: int, verify: bool = True, key: str | None = None) -> tuple[BatchSource, Any]:
    reader = cachefile.CacheReader(path, verify=verify, key=key)
    return BatchSource(reader.starts, reader.ends, reader.read_units, window), reader


def _commit(writers: dict, senders: dict, outputs: Any, digests: dict[str, str]) -> dict[str, int]:
    """Commit every output (its content digest into ``digests``); tell the consumers of streamed
    ones; ``{output: units written}``."""
    written = {}
    for name, writer in writers.items():
        digests[name] = writer.close()
        if name in senders:
            senders[name].finish(writer.end if writer.end is not None else writer.next_index - 1)
        written[name] = outputs[name].nb_data_blocks_written
    return written


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
    spec = BlockSpec.from_json(payload["spec"])
    formats = spec.formats
    window = spec.window
    algorithm = _algorithm_class(spec)()

    readers = []
    client = None
    sources = {}
    src: Any
    for name, inp in spec.inputs.items():
        if inp.source == "cache":
            assert inp.path is not None
            src, reader = _cache_source(inp.path, window, inp.verify, inp.key or None)
            readers.append(reader)
        elif inp.source == "stream":  # from a producer running at the same time (runtime.streams)
            assert inp.address is not None
            src = StreamSource(inp.address, inp.dataformat, formats[inp.dataformat])
            readers.append(src)
        else:
            if client is None:
                from backbeat.runtime.dbprovider import DatabaseClient

                if spec.database is None:
                    raise WireError(f"block `{spec.name}' reads a dataset but was given no database provider")
                client = DatabaseClient(spec.database)
            assert inp.dataset is not None and inp.output is not None
            src = client.source(inp.dataset, inp.output, inp.dataformat, formats[inp.dataformat], window)
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
    writers: dict[str, cachefile.CacheWriter] = {}
    senders: dict[str, StreamSender] = {}
    sinks: dict[str, tuple[Any, Any]] = {}
    digests: dict[str, str] = {}
    try:
        for name, out in spec.outputs.items():
            df = out.dataformat
            writer = cachefile.CacheWriter(out.path, df, formats[df], key=out.key, start=start, end=end)
            writers[name] = writer
            if out.streams:  # consumers run at the same time: each batch written is also sent to them
                writer.buffer_units = min(writer.buffer_units, STREAM_BATCH)  # (batches stay ≤ ~4 MB)
                senders[name] = StreamSender(out.streams)
                writer.on_batch = senders[name].send
            sinks[name] = (_Sink(writer), value_type(df, formats[df]))
        outputs = build_outputs(sinks, input_list, start_index=start)
        if loop is not None and loop.role == "evaluator":
            from backbeat.runtime.loopchannel import run_evaluator

            served = run_evaluator(algorithm, loop, inputs=input_list, data_loaders=loaders,
                                   outputs=outputs, parameters=spec.values, root=payload.get("root"))
            written = _commit(writers, senders, outputs, digests)
            return {"steps": served, "written": written, "digests": digests,
                    "read_bytes": sum(s.bytes_read for (_c, s, _d) in sources.values()),
                    "wall_s": time.perf_counter() - t0}
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
        written = _commit(writers, senders, outputs, digests)
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
    }
