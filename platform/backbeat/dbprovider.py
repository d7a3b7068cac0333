"""Database views: building their index, and the provider process serving their outputs.

A database's views are user code (``databases/<name>/<version>.py``, spec §2.5), so they
only ever run in child processes of the fork server:

* :func:`build_index` (a job) loads the view, calls ``index(root_folder, parameters)`` and
  writes the entries to the index file atomically (:mod:`backbeat.dbindex`); the job's
  statistics carry the sha256 of the index content, which enters the cache keys.
* :func:`serve` (a job) is the *database provider*: it binds a ROUTER socket on the
  address the executor chose (``ipc://`` in the run's private directory) and answers
  block processes.  For each (dataset, output) it sets the view up once over the stored
  index, groups consecutive entries with equal values into data units (BEAT's
  ``DatabaseOutputDataSource``), builds one columnar batch and serves slices of it.

Protocol (multipart, the first frame a command):

* ``info <dataset> <output>`` → ``ok``, ``{"units": n}``, starts (int64 bytes), ends (int64 bytes)
* ``get <dataset> <output> <i> <j>`` → ``ok``, then the wire frames of units ``i..j-1``
* ``bye`` → ``ok`` and the provider exits
* any failure → ``error``, ``{"kind", "message", "traceback"}``
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import zmq

from . import dbindex, wire
from .batch import Batch
from .codeloader import load_module
from .compat import install_beat_aliases
from .control import format_user_traceback
from .errors import BackbeatError, UserCodeError, WireError
from .sources import BatchSource


def load_view(spec: dict) -> Any:
    """Instantiate the view class ``spec["view"]`` from ``spec["code"]``."""
    install_beat_aliases()
    module = load_module(spec["database"], spec["code"])
    cls = getattr(module, spec["view"], None)
    if cls is None:
        raise RuntimeError(f"database `{spec['database']}' defines no view class `{spec['view']}'")
    return cls()


def build_index(payload: dict) -> dict:
    """Job: run the view's ``index()`` and store it; returns ``{"digest": sha256 of the file}``."""
    spec = payload["dataset"]
    view = load_view(spec)
    entries = view.index(spec["root_folder"], spec["parameters"])
    if not isinstance(entries, (list, tuple)):
        entries = list(entries)
    bad = next((o for o in entries if not (isinstance(o, dict) or hasattr(o, "_asdict"))), None)
    if bad is not None:  # BEAT stores each entry as a JSON object
        raise TypeError(f"view index entries must be namedtuples or dicts, not {type(bad).__name__}")
    digest = dbindex.write_index(spec["index_path"], entries)
    return {"digest": digest, "entries": len(entries)}


class _Dataset:
    """One set-up view and the batches of its outputs."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.view = load_view(spec)
        objs = dbindex.read_index(spec["index_path"])  # namedtuples, keys sorted as BEAT's Entry
        self.view.setup(spec["root_folder"], spec["parameters"], objs, start_index=None, end_index=None)
        self.objs = getattr(self.view, "objs", None) or objs
        self.batches: dict[str, Batch] = {}

    def batch(self, output: str) -> Batch:
        if output not in self.batches:
            name, expanded = self.spec["outputs"][output]
            mapping = getattr(self.view, "get_output_mapping", None)
            attr = mapping(output) if mapping else output
            column = [getattr(o, attr) for o in self.objs]
            starts, ends = dbindex.group_units(column)
            values = [self.view.get(output, int(s)) for s in starts]
            self.batches[output] = Batch.from_values(name, expanded, values, starts, ends)
        return self.batches[output]


def _error(exc: BaseException, root: str | None) -> list[bytes]:
    message, text, _ = format_user_traceback(exc, root)
    kind = "user" if not isinstance(exc, BackbeatError) else "system"
    return [b"error", json.dumps({"kind": kind, "message": message, "traceback": text}).encode()]


def serve(payload: dict) -> dict:
    """Job: the database provider (see module docstring); returns serving statistics."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.bind(payload["address"])
    datasets: dict[str, _Dataset] = {}
    specs = payload["datasets"]
    root = payload.get("root")
    parent = os.getppid()
    served = 0
    try:
        while True:
            if not sock.poll(1000):
                if os.getppid() != parent:
                    break
                continue
            frames = sock.recv_multipart(copy=True)
            ident, cmd, args = frames[0], frames[2] if len(frames) > 2 else b"", frames[3:]
            reply: list = []
            try:
                if cmd == b"bye":
                    sock.send_multipart([ident, b"", b"ok"])
                    break
                ds_name, output = args[0].decode(), args[1].decode()
                if ds_name not in specs or output not in specs[ds_name]["outputs"]:
                    raise WireError(f"unknown dataset output `{ds_name}.{output}'")
                if ds_name not in datasets:
                    datasets[ds_name] = _Dataset(specs[ds_name])
                batch = datasets[ds_name].batch(output)
                if cmd == b"info":
                    reply = [b"ok", json.dumps({"units": len(batch)}).encode(),
                             batch.starts.tobytes(), batch.ends.tobytes()]
                elif cmd == b"get":
                    i, j = int(args[2]), int(args[3])
                    reply = [b"ok", *wire.encode(batch.slice(i, j))]
                    served += j - i
                else:
                    raise WireError(f"unknown database provider command {cmd!r}")
            except Exception as exc:  # noqa: BLE001 - reported to the block, which fails cleanly
                reply = _error(exc, root)
            sock.send_multipart([ident, b"", *reply], copy=False)
    finally:
        sock.close(0)
        ctx.term()
    return {"units_served": served}


class DatabaseClient:
    """Block-side client of the database provider."""

    def __init__(self, address: str, timeout_ms: int = 600_000):
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.REQ)
        self._sock.linger = 0
        self._sock.rcvtimeo = timeout_ms
        self._sock.connect(address)

    def _ask(self, *frames: bytes) -> list:
        self._sock.send_multipart(list(frames))
        try:
            reply = self._sock.recv_multipart(copy=False)
        except zmq.Again:
            raise WireError("the database provider did not answer in time") from None
        head = reply[0].bytes
        if head == b"error":
            info = json.loads(reply[1].bytes)
            if info.get("kind") == "user":
                raise UserCodeError(f"database view: {info['message']}", info.get("traceback") or "")
            raise WireError(f"the database provider failed: {info['message']}")
        if head != b"ok":
            raise WireError(f"unexpected reply from the database provider: {head[:40]!r}")
        return reply[1:]

    def source(self, dataset: str, output: str, fmt: str, expanded: dict, window: int = 4096) -> BatchSource:
        head, starts, ends = self._ask(b"info", dataset.encode(), output.encode())
        n = json.loads(head.bytes)["units"]
        s = np.frombuffer(starts.bytes, dtype=np.int64)
        e = np.frombuffer(ends.bytes, dtype=np.int64)
        if len(s) != n or len(e) != n:
            raise WireError(f"database provider sent {len(s)} unit starts for {n} units")

        def fetch(i: int, j: int) -> Batch:
            frames = self._ask(b"get", dataset.encode(), output.encode(), str(i).encode(), str(j).encode())
            return wire.decode(frames, fmt, expanded)

        return BatchSource(s, e, fetch, window)

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()
