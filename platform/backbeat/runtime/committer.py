"""The committer: one trusted, long-lived writer process per run for block outputs that stay small.

A freshly forked block process pays ~5.6 ms of CPU and ~600 copied pages to create, fill and
close one small HDF5 file (``docs/performance.md``, wave 8); a process that stays warm pays
~1.5–2.5 ms.  So a run's local executor forks one *committer* through its fork server (a job
like the database provider, started with the first block that may use it), and a block whose
output stays under :data:`~backbeat.data.handoff.HANDOFF_BYTES` hands its batches over
(:class:`~backbeat.data.handoff.HandoffWriter`) instead of opening HDF5.  The command stays out
of it: it only *grants* each output when it builds the block's spec.

Trust:

* **Grants.** The command draws a secret per run (:class:`Grants`; it reaches the committer in
  its job payload, as every job's control token does) and gives each block, in its spec, one
  grant per output: an HMAC-SHA256 under that secret of the output's key, cache path,
  dataformat, the sha256 of its expanded declaration and the compression
  (:func:`backbeat.runtime.grants.grant`).
  The committer writes a file only for a commit whose fields match their grant, so a block can
  commit only its own outputs, at their paths, in their formats; and each key at most once per
  run (a refused attempt leaves nothing, and may be made again).
* **Content.** The committer decodes and checks every batch against the granted dataformat
  (:func:`backbeat.data.wire.decode`), writes them with an ordinary
  :class:`~backbeat.data.cachewriter.CacheWriter` (every unit from 0 to the end, else nothing
  is left) and answers the content digest *it* computed of the bytes it wrote: the same file,
  the same digest as the block writing it itself.  The file is committed as any output
  (renamed into place, marked unsynced; the command makes it durable when the block's job
  ends: ``docs/execution.md`` §3b).
* **Failure.** A refused commit fails the block as a ``system`` error with the committer's
  reason (:class:`CommitRefused`); a committer that dies fails the blocks holding grants (the
  scheduler kills them, saying why), and later blocks write their own files.

Protocol: a block's DEALER sends ``[header JSON, declaration, *wire frames of its batches]``
(header: ``key``, ``path``, ``dataformat``, ``compression``, ``end``, ``grant``; the declaration:
the output's expanded dataformat as :func:`backbeat.runtime.grants.declaration` writes it — the
committer keeps the few it sees, parsed and hashed); the committer (ROUTER) answers
``{"type": "committed", "digest"}`` or ``{"type": "refused", "message"}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from typing import Any

import zmq

from backbeat.core.errors import BackbeatError, DataError, WireError
from backbeat.data import wire
from backbeat.data.batch import Batch, layout
from backbeat.data.handoff import MAX_FRAME_BYTES
from backbeat.processes import zmqcontext
from backbeat.runtime.grants import declaration, grant
from backbeat.runtime.spec import OutputSpec

#: how long a block waits for the committer's answer (it answers within milliseconds; a committer
#: that died is seen by the command, which fails the block at once)
COMMIT_TIMEOUT_S = 600.0
MAX_MESSAGE_BYTES = 4 << 20  # one frame at most (a larger one makes ZeroMQ drop the peer)


class CommitRefused(DataError):
    """The committer did not commit an output handed over (a ``system`` failure of the block)."""

    error_kind = "system"


# -- the block's side --------------------------------------------------------------------------
class CommitClient:
    """A block process's connection to the committer at ``address`` (opened at the first commit)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._sock: Any = None
        self._declarations: dict[str, bytes] = {}

    def commit(self, out: OutputSpec, expanded: dict, compression: str | None, end: int,
               batches: list[Batch]) -> str:
        """Hand output ``out``'s batches (units 0..``end``) to the committer; the digest it computed."""
        if self._sock is None:
            sock = zmqcontext.acquire().socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(self.address)
            self._sock = sock
        head = {"key": out.key, "path": out.path, "dataformat": out.dataformat, "compression": compression,
                "end": int(end), "grant": out.grant}
        text = self._declarations.get(out.dataformat)
        if text is None:
            text = self._declarations[out.dataformat] = declaration(expanded)
        frames = [f for b in batches for f in wire.encode(b)]
        self._sock.send_multipart([json.dumps(head).encode("utf-8"), text, *frames], copy=False)
        deadline = time.monotonic() + COMMIT_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            if not self._sock.poll(int(min(left, 1.0) * 1000) + 1, zmq.POLLIN):
                continue
            try:
                answer = json.loads(self._sock.recv())
            except ValueError:
                continue
            if isinstance(answer, dict) and answer.get("type") == "committed" and isinstance(answer.get("digest"), str):
                return answer["digest"]
            if isinstance(answer, dict) and answer.get("type") == "refused":
                raise CommitRefused(f"the committer refused output `{out.key}': {answer.get('message')}")
        raise CommitRefused(f"the committer did not answer the commit of `{out.key}' within {COMMIT_TIMEOUT_S:.0f} s")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
            zmqcontext.release()


# -- the committer's side ----------------------------------------------------------------------
def _field(head: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    value = head.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise WireError(f"malformed commit: `{name}' missing or of the wrong type")
    return value


class Declarations:
    """The expanded declarations commits carry, parsed and hashed once each (a run has a few)."""

    MOST = 256

    def __init__(self) -> None:
        self._known: dict[bytes, tuple[dict, str]] = {}

    def get(self, text: bytes) -> tuple[dict, str]:
        """``(expanded declaration, sha256 of text)``; WireError if it is no JSON object."""
        known = self._known.get(text)
        if known is None:
            try:
                expanded = json.loads(text)
            except (ValueError, UnicodeDecodeError):
                raise WireError("malformed commit: its declaration is not JSON") from None
            if not isinstance(expanded, dict):
                raise WireError("malformed commit: its declaration is not an object")
            if len(self._known) >= self.MOST:
                self._known.clear()
            known = self._known[text] = (expanded, hashlib.sha256(text).hexdigest())
        return known


def commit(header: bytes, text: bytes, frames: list[Any], secret: bytes, committed: set[str],
           declarations: Declarations) -> str:
    """Check and commit one output handed over (its header, its declaration's text and its
    batches' frames; see the module docstring); its digest.  Anything not granted, malformed or
    incomplete raises, leaving nothing in the cache."""
    from backbeat.data.cachewriter import CacheWriter

    try:
        head = json.loads(header)
    except (ValueError, UnicodeDecodeError):
        raise WireError("malformed commit: its header is not JSON") from None
    if not isinstance(head, dict):
        raise WireError("malformed commit: its header is not an object")
    key, path, df = (_field(head, n, str) for n in ("key", "path", "dataformat"))
    end, mac = _field(head, "end", int), _field(head, "grant", str)
    compression = head.get("compression")
    if compression is not None and not isinstance(compression, str):
        raise WireError("malformed commit: `compression' of the wrong type")
    expanded, declaration_sha = declarations.get(text)
    if not hmac.compare_digest(mac.encode("utf-8"), grant(secret, key, path, df, declaration_sha, compression).encode()):
        raise WireError(f"no grant to commit `{key}' at `{path}' (a forged or altered commit)")
    if key in committed:
        raise WireError(f"output `{key}' was already committed by this run")
    if sum(len(f) for f in frames) > MAX_FRAME_BYTES:
        raise WireError(f"output `{key}' is too large to be handed over (more than {MAX_FRAME_BYTES} bytes)")
    per = 3 + len(layout(expanded, df))
    if not frames or len(frames) % per:
        raise WireError(f"the frames of output `{key}' do not make whole batches ({len(frames)}, {per} a batch)")
    batches = [wire.decode(frames[i:i + per], df, expanded) for i in range(0, len(frames), per)]
    writer = CacheWriter(path, df, expanded, key=key, start=0, end=end, compression=compression)
    try:
        for batch in batches:
            writer.write_batch(batch)
        digest = writer.close()
    except BaseException:
        writer.abort()
        raise
    committed.add(key)
    return digest


def serve(payload: dict) -> dict:
    """Job: the committer (see the module docstring); returns ``{"committed": n, "refused": n}``."""
    spec = payload["spec"]
    secret = bytes.fromhex(spec["secret"])
    sock = zmqcontext.acquire().socket(zmq.ROUTER)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    sock.bind(spec["address"])
    committed: set[str] = set()
    declarations = Declarations()
    refused = 0
    parent = os.getppid()
    try:
        while True:
            if not sock.poll(1000):
                if os.getppid() != parent:
                    break
                continue
            frames = sock.recv_multipart(copy=False)
            if len(frames) < 3:
                continue
            try:
                answer = {"type": "committed",
                          "digest": commit(frames[1].bytes, frames[2].bytes, frames[3:], secret, committed, declarations)}
            except (BackbeatError, OSError, ValueError, KeyError, TypeError) as exc:
                refused += 1
                answer = {"type": "refused", "message": str(exc)}
            sock.send_multipart([frames[0].bytes, json.dumps(answer).encode("utf-8")])
    finally:
        sock.close(0)
        zmqcontext.release()
    return {"committed": len(committed), "refused": refused}
