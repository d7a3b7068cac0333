"""One small block run by the fork server before it forks any: its children then copy fewer pages.

A block process is forked from the zygote and shares its pages until it writes to them
(copy-on-write: a page fault and a 4 KiB copy each, then the page is freed when the process
ends).  Code the zygote has never run writes to many shared pages the first time it runs in
*each* child: CPython 3.11 counts down and specialises bytecode in place, fills the type
attribute cache (whose entries hold references: their reference counts are written), creates
dicts and caches lazily (the dataformat layouts and value types, ``inspect.signature``); h5py
and HDF5 set up their type conversion paths and free lists.  :func:`rehearse` runs one block
through the same code (:func:`backbeat.runtime.blockrun.run`: a code snapshot loaded and checked,
an identity algorithm of our own reading a cache file and writing another, committed and
read back) in a private temporary folder, so that all of that is done once, in the pages every
block process inherits.  It runs no user code and opens no socket (a zygote must not hold a
ZeroMQ context when it forks).  ``docs/performance.md`` ("After wave 6 (perf-f)") has the figures.
:func:`rehearse_streamed` then runs a chain's block as a block process does — control channel,
streamed input and output — 8 times, its streams over in-process sockets
(:mod:`~backbeat.runtime.loopback`: no ZeroMQ context) and its control channel over a real
:class:`~backbeat.processes.control.ControlServer` (a plain Unix socket, closed before any fork):
the code every chain block runs once is quickened and specialised here (wave 12, perf-c3) — its output
written from a template of its file (:mod:`backbeat.data.h5image`) after the first run, as a chain's is.

:mod:`backbeat.runtime.preload` (the zygote's last preloaded module) calls both once; a failure
is ignored (a block process then only costs more).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import linecache
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from backbeat.data import h5image
from backbeat.data.batch import layout, tree, unit_bytes
from backbeat.data.cachewriter import CacheWriter
from backbeat.data.values import value_type
from backbeat.processes import control, controlfolders, zmqcontext
from backbeat.runtime import blockrun, loopback
from backbeat.runtime.spec import StreamTarget
from backbeat.runtime.streams import StreamSender, staying_put

#: the rehearsal's algorithm (BEAT's API v2, sequential): copies its input
ALGORITHM = b'''class Algorithm:
    def process(self, inputs, data_loaders, outputs):
        outputs["out"].write(inputs["in"].data)
        return True
'''
NAME = "backbeat/rehearsal/1"
FORMAT = "backbeat/rehearsal_scalar/1"
EXPANDED = {"value": "float64"}
UNITS = 10
#: how many times :func:`rehearse_streamed` runs its block: CPython 3.11 quickens a function's code
#: once it has been called 8 times (its ``co_warmup``), and specialises it as it then runs
STREAMED = 8


def _folder() -> str:
    """A private temporary folder, in memory where there is one (nothing needs to reach a disk),
    named after this process; those of dead processes (killed while rehearsing) are removed."""
    where = controlfolders.memory_folder() or tempfile.gettempdir()
    controlfolders.sweep_dead(where, _FOLDER)
    return tempfile.mkdtemp(prefix=f"bb-rehearsal-{os.getpid()}-", dir=where)


_FOLDER = re.compile(r"^bb-rehearsal-(\d+)-")


def spec(folder: str) -> dict:
    """The block spec of the rehearsal (files in ``folder``; the input must be written first)."""
    code = os.path.join(folder, "algorithm.py")
    digest = hashlib.sha256(ALGORITHM).hexdigest()
    return {
        "name": "rehearsal", "kind": "block", "algorithm": NAME, "type": "sequential", "channel": "main",
        "values": {},
        "code": {"main": {"path": code, "sha256": digest, "filename": code, "uses": {}}, "libraries": {}},
        "inputs": {"in": {"channel": "main", "dataformat": FORMAT, "source": "cache", "key": "0" * 64,
                          "path": os.path.join(folder, "in.h5"), "verify": True}},
        "outputs": {"out": {"dataformat": FORMAT, "key": "1" * 64, "path": os.path.join(folder, "out.h5"),
                            "streams": []}},
        "formats": {FORMAT: EXPANDED},
        # (small files' templates: the streamed rehearsal's first run makes one, its next runs write from it)
        "images": os.path.join(folder, "images"),
    }


@contextlib.contextmanager
def _rehearsing() -> Iterator[str]:
    """A private folder holding the rehearsal's algorithm; afterwards nothing of it is left (the
    folder, the algorithm's module, its source in ``linecache``)."""
    folder = _folder()
    module = NAME.replace("/", "_")
    had_module = module in sys.modules
    try:
        with open(os.path.join(folder, "algorithm.py"), "wb") as f:
            f.write(ALGORITHM)
        yield folder
    finally:
        if not had_module:
            sys.modules.pop(module, None)
        with contextlib.suppress(KeyError):
            del linecache.cache[os.path.join(folder, "algorithm.py")]
        shutil.rmtree(folder, ignore_errors=True)


def rehearse() -> dict:
    """Run the rehearsal block once in this process; its statistics (see module docstring)."""
    with _rehearsing() as folder:
        block = spec(folder)
        with CacheWriter(block["inputs"]["in"]["path"], FORMAT, EXPANDED, key="0" * 64, start=0,
                         end=UNITS - 1) as writer:
            for i in range(UNITS):
                writer.write({"value": i * 0.001})
        return blockrun.run({"spec": block})


def rehearse_streamed(times: int = STREAMED) -> None:
    """Run a block of a chain ``times`` in this process, as a block process runs it: through
    :func:`backbeat.processes.control.run_job` (its control channel: ``progress``, ``done``, over a
    real :class:`~backbeat.processes.control.ControlServer`: a plain Unix socket, closed before any
    fork), reading its input from a stream whose producer ends early (the small output of a chain:
    ``end`` announced, then ``committed``, the commit's watcher thread) and streaming its own output
    to a consumer, over :mod:`~backbeat.runtime.loopback` sockets (no ZeroMQ context: the producer and
    the consumer are answered in this process).  The block's code is then quickened and specialised
    in the pages its children inherit (``docs/performance.md``, wave 12).  RuntimeError if the block
    failed.  This process's priority stays (a producer lowers its own:
    :func:`~backbeat.runtime.streams.staying_put`)."""
    with _rehearsing() as folder, staying_put():
        for i in range(times):
            _streamed(folder, i)
    h5image.Images.forget(os.path.join(folder, "images"))


def _streamed(folder: str, i: int) -> None:
    """One run of :func:`rehearse_streamed`'s block (its files named after ``i``).  Its control channel
    is a real :class:`~backbeat.processes.control.ControlServer` (a plain Unix socket, no ZeroMQ; its
    messages are queued in the kernel, read once the block is done; closed before any fork)."""
    address = {name: f"ipc://{folder}/{name}{i}" for name in ("in", "out")}

    def consumer(frames: list[bytes], reply: Any) -> None:  # acknowledges the output's commit
        if frames[0] == b"committed" or (frames[0] == b"end" and json.loads(frames[1]).get("committed")):
            reply([b"ack"])

    block = spec(folder)
    block["inputs"]["in"].update(source="stream", address=address["in"], path=os.path.join(folder, f"in{i}.h5"))
    block["outputs"]["out"].update(path=os.path.join(folder, f"out{i}.h5"), streams=[
        {"address": address["out"], "cancel": os.path.join(folder, f"out{i}.gone")}])
    target = "backbeat.runtime.blockrun:run"
    cancel = os.path.join(folder, f"in{i}.gone")
    # (the output's cancel file made at once: its ack comes synchronously, and a stand-in that stopped
    # answering after a change of the stream protocol must end the wait, not hang the zygote)
    open(os.path.join(folder, f"out{i}.gone"), "wb").close()
    # (the control server's folder inside the rehearsal's, which a later zygote sweeps if this one is
    # killed while rehearsing — a fully cached run closes its fork server early; with no /dev/shm and a
    # long TMPDIR the socket's path may be too long: the rehearsal then fails, ignored, its gain lost)
    with control.ControlServer(folder) as server, zmqcontext.substitute(loopback.Hub({address["out"]: consumer})):
        payload = {"target": target, "control": server.address, "job": "rehearsal",
                   "token": server.register("rehearsal"), "root": folder, "spec": block}
        producer = StreamSender([StreamTarget(address["in"], cancel)], *blockrun._batch_size(EXPANDED, FORMAT))
        try:
            with CacheWriter(os.path.join(folder, f"up{i}.h5"), FORMAT, EXPANDED, key="0" * 64) as writer:
                writer.grow(blockrun.STREAM_FIRST, min(writer.buffer_units, blockrun.STREAM_BATCH))
                writer.on_batch = producer.send
                for u in range(UNITS):
                    writer.write({"value": u * 0.001})
                digest = writer.seal()
                producer.announce(writer.start, writer.last, digest)
            producer.confirm(digest)
            code = control.run_job(target, payload)
            open(cancel, "wb").close()  # (its ack is there, or it will not come)
            producer.acks()
        finally:
            producer.close()
        messages = server.poll(0)
    errors = [m.data for m in messages if m.type == "error"]
    if code or errors or not any(m.type == "done" for m in messages):
        raise RuntimeError(f"the streamed rehearsal failed (exit code {code}): {errors}")


#: the dataformats :func:`learn` has seen (by name: within a run a name is one declaration)
_LEARNT: set[str] = set()


def learn(payload: Any) -> None:
    """In the zygote, once it has forked a block: make the value class, column tree and layout of
    each dataformat the block reads or writes (``payload["spec"]["formats"]``), which its next
    children then inherit (each made them again: ~100 copied pages per block process), and read the
    templates of small files its blocks made (:meth:`backbeat.data.h5image.Images.preload`).  Data only:
    no user code runs (:func:`backbeat.processes.warmup.learn_from`)."""
    spec = payload.get("spec") if isinstance(payload, dict) else None
    images = spec.get("images") if isinstance(spec, dict) else None
    if isinstance(images, str) and h5image.enabled():  # (the small files' templates made by its blocks so far)
        h5image.Images(images).preload()
    formats = spec.get("formats") if isinstance(spec, dict) else None
    if not isinstance(formats, dict):
        return
    for name, expanded in formats.items():
        if name in _LEARNT or not isinstance(name, str) or not isinstance(expanded, dict):
            continue
        _LEARNT.add(name)
        value_type(name, expanded)
        tree(name, expanded)
        layout(expanded, name)
        unit_bytes(expanded, name)
