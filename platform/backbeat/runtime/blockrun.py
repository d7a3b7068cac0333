"""What runs inside a block process: load the user's algorithm, wire its data, drive it.

The executor spawns ``backbeat.control:job_main`` in a fresh child of the fork server with
a JSON payload (:func:`backbeat.executor.block_payload` writes it); ``job_main`` calls
:func:`run`, which:

1. installs the ``beat.backend.python`` import aliases (user code written for BEAT imports them);
2. loads the libraries the algorithm ``uses`` and the algorithm module (:mod:`backbeat.codeloader`);
3. opens every input: upstream outputs from their verified HDF5 cache files, dataset outputs
   from the database-provider process over ZeroMQ (:mod:`backbeat.dbprovider`), both as
   windowed :class:`~backbeat.sources.BatchSource`\\ s;
4. opens one :class:`~backbeat.cachefile.CacheWriter` per output (temporary file, renamed
   into place only when complete);
5. drives the algorithm with BEAT's semantics (:mod:`backbeat.driver`), reporting progress
   over the control channel, and commits the outputs.  Any exception propagates to
   ``job_main``, which reports it; uncommitted writers are aborted so nothing partial remains.

One side of a loop node has ``payload["loop"]`` (:mod:`backbeat.loops`): the processor is
driven as above with a ``loop_channel`` (its writes and steps notify the evaluator); the
evaluator is set up, then answers the processor until it is done, and commits its outputs.
"""

from __future__ import annotations

import time
from typing import Any

from backbeat.data import cachefile
from backbeat.data.values import value_type
from backbeat.processes import control
from backbeat.runtime.codeloader import load_with_libraries
from backbeat.runtime.compat import install_beat_aliases
from backbeat.runtime.driver import build_inputs, build_outputs, count_steps, run_algorithm
from backbeat.runtime.sources import BatchSource, restrict
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


def _cache_source(path: str, window: int, verify: bool = True) -> tuple[BatchSource, Any]:
    reader = cachefile.CacheReader(path, verify=verify)
    return BatchSource(reader.starts, reader.ends, reader.read_units, window), reader


def _commit(writers: dict, senders: dict, outputs: Any) -> dict[str, int]:
    """Commit every output; tell the consumers of streamed ones; ``{output: units written}``."""
    written = {}
    for name, writer in writers.items():
        writer.close()
        if name in senders:
            senders[name].finish(writer.end if writer.end is not None else writer.next_index - 1)
        written[name] = outputs[name].nb_data_blocks_written
    return written


def _last_end(source: Any) -> int:
    last = getattr(source, "last_end", None)
    return last() if last is not None else source.data_indices()[-1][1]


def _algorithm_class(payload: dict):
    code = payload["code"]
    libraries = code.get("libraries", {})

    def library(name: str) -> tuple[str, dict]:
        path, uses = libraries[name]
        return path, uses

    module = load_with_libraries(payload["block"]["algorithm"], code["algorithm"], code.get("uses", {}), library)
    cls = getattr(module, "Algorithm", None)
    if cls is None:
        raise RuntimeError(f"algorithm `{payload['block']['algorithm']}' defines no class `Algorithm'")
    return cls


def run(payload: dict) -> dict:
    """Execute one block (see module docstring); returns the I/O statistics."""
    t0 = time.perf_counter()
    install_beat_aliases()
    block = payload["block"]
    formats = payload["formats"]
    window = int(payload.get("window", 4096))
    algorithm = _algorithm_class(payload)()

    readers = []
    client = None
    sources = {}
    for name, spec in payload["inputs"].items():
        if spec["source"] == "cache":
            src, reader = _cache_source(spec["path"], window, spec.get("verify", True))
            readers.append(reader)
        elif spec["source"] == "stream":  # from a producer running at the same time (backbeat.streams)
            src = StreamSource(spec["address"], spec["dataformat"], formats[spec["dataformat"]])
            readers.append(src)
        else:
            if client is None:
                from backbeat.runtime.dbprovider import DatabaseClient

                client = DatabaseClient(payload["database"])
            src = client.source(spec["dataset"], spec["output"], spec["dataformat"],
                                formats[spec["dataformat"]], window)
        sources[name] = (spec["channel"], src, spec["dataformat"])

    if payload.get("range"):  # a slot of a split block: only its share of the block's channel
        lo, hi = payload["range"]
        sources = {n: (ch, restrict(src, lo, hi) if ch == block["channel"] else src, df)
                   for n, (ch, src, df) in sources.items()}
    input_list, loaders = build_inputs(block["type"], block["channel"], sources)
    own = [s for (ch, s, _df) in sources.values() if ch == block["channel"]]
    if any(getattr(s, "live", False) for s in own):  # the end is known when the stream ends
        start, end = 0, None
    else:
        start, end = payload.get("range") or (0, max((_last_end(s) for s in own if len(s)), default=-1))

    channel = None  # the loop channel of a loop processor
    writers: dict[str, cachefile.CacheWriter] = {}
    senders: dict[str, StreamSender] = {}
    sinks: dict[str, tuple[Any, Any]] = {}
    try:
        for name, spec in payload["outputs"].items():
            df = spec["dataformat"]
            streams = spec.get("streams")
            writer = cachefile.CacheWriter(spec["path"], df, formats[df], key=spec["key"], start=start, end=end)
            writers[name] = writer
            if streams:  # consumers run at the same time: each batch written is also sent to them
                writer.buffer_units = min(writer.buffer_units, STREAM_BATCH)  # (batches stay ≤ ~4 MB)
                senders[name] = StreamSender(streams)
                writer.on_batch = senders[name].send
            sinks[name] = (_Sink(writer), value_type(df, formats[df]))
        outputs = build_outputs(sinks, input_list, start_index=start)
        loop = payload.get("loop")  # one side of a loop node (backbeat.loops)
        if loop is not None and loop["role"] == "evaluator":
            from backbeat.planning.loops import run_evaluator

            served = run_evaluator(algorithm, block["type"], loop, inputs=input_list, data_loaders=loaders,
                                   outputs=outputs, parameters=block["values"], root=payload.get("root"))
            written = _commit(writers, senders, outputs)
            return {"steps": served, "written": written,
                    "read_bytes": sum(s.bytes_read for (_c, s, _d) in sources.values()),
                    "wall_s": time.perf_counter() - t0}
        if loop is not None:
            from backbeat.planning.loops import LoopChannel, attach_writes

            channel = LoopChannel(loop["address"], tuple(loop["request"]), tuple(loop["answer"]))
            attach_writes(outputs, channel)
        cc = control.client()
        total = count_steps(input_list, loaders)

        def progress(done: int) -> None:
            if cc is not None:
                cc.progress(done, total)

        summary = run_algorithm(
            algorithm, block["type"], inputs=input_list, data_loaders=loaders, outputs=outputs,
            parameters=block["values"], analyzer=block["kind"] == "analyzer", name=block["algorithm"],
            progress=progress, loop_channel=channel,
            before_process=channel.read_next if channel is not None else None,
        )
        if channel is not None:
            channel.done()
        written = _commit(writers, senders, outputs)
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
        "read_bytes": sum(s.bytes_read for (_c, s, _d) in sources.values()),
        "wall_s": time.perf_counter() - t0,
    }
