"""What a block's data path shows and writes, printed as JSON (``python _compiled_probe.py FOLDER``):
run once with the compiled per-unit path (backbeat.data.compiled) and once with
``BACKBEAT_COMPILED=off`` by test_compiled.py, which compares the two — every cache file's bytes,
every step as BEAT's API shows it, every error's type and message."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
from _steploop import EXP, FMT, F, Recorder

from backbeat.data import compiled
from backbeat.data.cachereader import CacheReader
from backbeat.data.cachewriter import CacheWriter
from backbeat.runtime import streams
from backbeat.runtime.driver import Pacer, build_inputs, build_outputs, run_algorithm
from backbeat.runtime.sources import BatchSource
from backbeat.runtime.spec import StreamTarget


class Scripted:
    """Writes each unit as ``how`` says at step ``at`` (plainly at the others); keeps every 97th unit."""

    def __init__(self, how: str = "", at: int = 5):
        self.how, self.at, self.step, self.kept = how, at, 0, []

    def process(self, inputs, data_loaders, outputs):
        x, out, how = inputs["in"], outputs["out"], self.how if self.step == self.at else ""
        data = x.data
        if self.step % 97 == 0:
            self.kept.append(data)
        self.step += 1
        if how == "raise":
            raise RuntimeError(f"boom at {x.data_index}")
        if how == "false":
            return False
        if how == "skip":
            return True
        if how == "beyond":
            out.write(data, x.data_index_end + 1)
        elif how == "twice":
            out.write(data)
            out.write(data)
        elif how == "dict":
            out.write({"value": float(data.value) * 2})
        elif how == "bad dict":
            out.write({"value": "x"})
        elif how == "int":
            out.write(7)
        elif how == "no args":
            out.write()
        elif how == "unknown keyword":
            out.write(data, until=3)
        elif how == "keyword none":
            out.write(data, end_data_index=None)
        elif how == "positional none":
            out.write(data, None)
        elif how == "explicit end":
            out.write(data, x.data_index_end)
        elif how == "listener changed":
            out._synchronization_listener.data_index_end = "9"
            out.write(data)
        elif how == "index changed":
            out.last_written_data_index = x.data_index_end
            out.write(data)
        elif how == "user attributes":
            x.data, x.data_index = F(value=np.float64(-1)), -5
            out.write(x.data)
        else:
            out.write(data)
        return True


class Uneven:
    """A source whose chunk's lists differ in length (a bug: zip's strict error)."""

    live = False

    def __init__(self, values, starts, ends):
        self.chunk = (values, starts, ends)

    def __len__(self):
        return len(self.chunk[0])

    def iter_chunks(self, i=0):
        yield self.chunk


def digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def drive(source, folder, name, algorithm, *, progress=None) -> dict:
    inputs, loaders = build_inputs("sequential", "ch", {"in": ("ch", source, FMT)})
    writer = CacheWriter(os.path.join(folder, name + ".h5"), FMT, EXP)
    writer.grow(64, 4096)
    sink = type("Sink", (), {})()
    sink.write, sink.writer = writer.put, writer
    outputs = build_outputs({"out": (sink, F)}, inputs)
    seen: dict = {"write": type(outputs["out"].write).__name__}
    try:
        summary = run_algorithm(algorithm, "sequential", inputs=inputs, data_loaders=loaders, outputs=outputs,
                                progress=progress)
        seen["steps"] = summary.steps
        writer.close()
        seen["file"] = digest(writer.path)
    except Exception as exc:  # noqa: BLE001 - compared between the two paths
        seen["error"] = f"{type(exc).__name__}: {exc}".replace(folder, "<folder>")
        writer.abort()
    out = outputs["out"]
    seen["output"] = [out.last_written_data_index, out.nb_data_blocks_written, out.isDataMissing()]
    x = inputs["in"]
    seen["input"] = [x.data_index, x.data_index_end, x.next_data_index, x.nb_data_blocks_read,
                     x.data_same_as_previous, float(x.data.value) if x.data is not None else None]
    return seen


def units(folder, n) -> str:
    path = os.path.join(folder, f"in{n}.h5")
    with CacheWriter(path, FMT, EXP) as writer:
        for k in range(n):
            writer.put({"value": np.float64(k + 0.5)}, 2 * k, 2 * k + 1)
    return path


def main(folder: str) -> None:
    report: dict = {"native": compiled.native is not None}
    path = units(folder, 3000)
    reader = CacheReader(path)

    def window():
        return BatchSource(reader.starts, reader.ends, reader.read_units, window=300)

    report["file"] = drive(window(), folder, "file", Scripted())
    for how in ("raise", "false", "skip", "beyond", "twice", "dict", "bad dict", "int", "no args",
                "unknown keyword", "keyword none", "positional none", "explicit end", "listener changed",
                "index changed", "user attributes"):
        report[how] = drive(window(), folder, how.replace(" ", "-"), Scripted(how, at=1234))
    ticks: list[int] = []
    report["paced"] = drive(window(), folder, "paced", Scripted(), progress=ticks.append)
    report["ticks"] = [ticks[-1], all(a <= b for a, b in zip(ticks, ticks[1:], strict=False))]
    recorder = Recorder(stop_after=2500)
    report["recorded"] = drive(window(), folder, "recorded", recorder)
    report["seen"] = hashlib.sha256(repr(recorder.seen).encode()).hexdigest()
    for lengths in ((5, 4, 5), (5, 5, 6), (4, 5, 5)):
        vals = reader.read_units(0, 6).to_values()
        src = Uneven(vals[:lengths[0]], list(range(lengths[1])), list(range(lengths[2])))
        report[f"uneven {lengths}"] = drive(src, folder, "uneven", Scripted())
    # a real streamed hop: a producer's writer sending over ZeroMQ, this block reading it
    address = f"ipc://{folder}/s"
    sender = streams.StreamSender([StreamTarget(address, os.path.join(folder, "cancel"))])
    source = streams.StreamSource(address, FMT, EXP)
    produced = CacheWriter(os.path.join(folder, "produced.h5"), FMT, EXP)
    produced.grow(1024, 4096)
    produced.on_batch = sender.send
    try:
        for k in range(20_000):
            produced.put({"value": np.float64(k * 0.25)}, k, k)
        produced.close()
        sender.finish(produced.last)
        report["stream"] = drive(source, folder, "stream", Scripted())
        source.settle()
        sender.acks()
    finally:
        sender.close()
        source.close()
    report["pacer"] = Pacer.__name__
    json.dump(report, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
