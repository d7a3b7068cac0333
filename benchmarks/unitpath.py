"""An identity block's per-unit CPU in one process (docs/performance.md, waves 13 and 14).

``python benchmarks/unitpath.py [--units N] [--repeat R] [SRC ...]`` runs, for each source tree
``SRC`` (a folder holding ``backbeat/``, e.g. ``git archive main platform | tar -x``; default: the
installed package), in a fresh interpreter each, alternated R times: received wire frames of 4,096
scalars (``float64``), read by the real :class:`~backbeat.runtime.streams.StreamSource` (its socket
replaced by the frames, as received), driven by ``run_algorithm`` through BEAT's identity ``process``,
written by ``Output`` into a real :class:`~backbeat.data.cachewriter.CacheWriter` (a streamed
output's batch growth; each batch ``wire.encode``d as its ``on_batch``), closed.  Prints the CPU
(``time.process_time``) per unit, min of 3 runs in each interpreter, and the medians per tree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, sys, tempfile, time
import numpy as np
import zmq
from backbeat.data import wire
from backbeat.data.batch import Batch
from backbeat.data.cachewriter import CacheWriter
from backbeat.data.values import value_type
from backbeat.runtime import blockrun
from backbeat.runtime.driver import build_inputs, build_outputs, run_algorithm
from backbeat.runtime.streams import StreamSource

FMT, EXP = "user/f/1", {"value": "float64"}
F = value_type(FMT, EXP)
N, BATCH = int(sys.argv[1]), 4096


class Frames:
    closed = False

    def __init__(self, messages):
        self.messages = iter(messages)

    def recv_multipart(self, copy=False):
        return next(self.messages)

    def poll(self, timeout=0, flags=0):
        return 1

    def send(self, data):
        pass

    def close(self, linger=0):
        self.closed = True


def messages():
    out = []
    for a in range(0, N, BATCH):
        idx = np.arange(a, min(N, a + BATCH), dtype=np.int64)
        frames = wire.encode(Batch(FMT, EXP, idx, idx.copy(), {"value": idx * 0.5}))
        out.append([zmq.Frame(b"batch")] + [zmq.Frame(bytes(f)) for f in frames])
    out.append([zmq.Frame(b"end"), zmq.Frame(json.dumps({"end": N - 1}).encode())])
    return out


class Identity:
    def process(self, inputs, data_loaders, outputs):
        outputs["out"].write(inputs["in"].data)
        return True


def once(folder):
    source = StreamSource("inproc://unitpath", FMT, EXP)
    source._sock.close(0)
    source._sock = Frames(messages())
    inputs, loaders = build_inputs("sequential", "ch", {"in": ("ch", source, FMT)})
    writer = CacheWriter(os.path.join(folder, "out.h5"), FMT, EXP, end=N - 1)
    writer.grow(blockrun.STREAM_FIRST, min(writer.buffer_units, blockrun.STREAM_BATCH))
    sent = []
    writer.on_batch = lambda b: sent.append(len(wire.encode(b)))
    sink = type("Sink", (), {})()
    sink.write, sink.writer, sink.value_type = writer.put, writer, F
    t0 = time.process_time()
    run_algorithm(Identity(), "sequential", inputs=inputs, data_loaders=loaders,
                  outputs=build_outputs({"out": (sink, F)}, inputs))
    writer.close()
    t = time.process_time() - t0
    assert len(sent) and source.end == N - 1
    os.remove(os.path.join(folder, "out.h5"))
    return t / N * 1e6


with tempfile.TemporaryDirectory() as folder:
    once(folder)
    best = min(once(folder) for _ in range(3))
import backbeat
print(json.dumps({"us": best, "file": backbeat.__file__}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=400_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("trees", nargs="*", default=[""])
    args = ap.parse_args()
    results: dict[str, list[float]] = {t: [] for t in args.trees}
    for r in range(args.repeat):
        for tree in (args.trees if r % 2 == 0 else args.trees[::-1]):
            env = dict(os.environ)
            if tree:
                env["PYTHONPATH"] = os.path.abspath(tree) + os.pathsep + env.get("PYTHONPATH", "")
            with tempfile.TemporaryDirectory():
                out = subprocess.run([sys.executable, "-c", CHILD, str(args.units)], env=env, check=True,
                                     capture_output=True, text=True).stdout
            res = json.loads(out.splitlines()[-1])
            results[tree].append(res["us"])
            print(f"{tree or 'installed'}: {res['us']:.3f} µs a unit ({res['file']})", flush=True)
    for tree, values in results.items():
        print(f"median {tree or 'installed'}: {statistics.median(values):.3f} µs a unit "
              f"[{min(values):.3f}–{max(values):.3f}] over {len(values)}")


if __name__ == "__main__":
    main()
