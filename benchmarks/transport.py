"""What moving a large output from one block process to the next costs, by transport (issue 13, row v10k).

Usage::

    python benchmarks/transport.py [--mb 80] [--batch-rows 256] [--width 1000] [--repeat 3] [--json]

One producer process hands ``--mb`` MB of float64 rows, in batches of ``--batch-rows`` rows (the
writer's batches of the 10k-vector chain: 2 MB), to a consumer process it forked; each side
prints its CPU (every thread: ``getrusage``) and minor page faults.  The producer gathers each
batch from the values it was given (the writer's snapshot, ``numpy.concatenate``) and hands it on;
the consumer ends up with the batch's bytes in memory of its own, and touches every page.
Transports, alternated run by run:

* ``zmq``: what ``runtime/streams.py`` does — a ZeroMQ ``PAIR`` socket over ``ipc://``, frames sent
  zero-copy and received zero-copy (the kernel copies each byte twice, in ZeroMQ's I/O threads);
* ``memfd``: the snapshot gathered into a fresh memfd, sealed against writes (``F_SEAL_WRITE``, set
  once the producer's writable mapping is gone), passed over a Unix socket (``SCM_RIGHTS``); the
  consumer checks the seals and maps it privately (copy on write);
* ``ring``: one memfd of 4 batch slots, mapped once by both; the producer seals it against *new*
  writable mappings and writes (``F_SEAL_FUTURE_WRITE``, Linux >= 5.1) keeping its own, gathers each
  batch into a free slot, the consumer (which checks the seal: it cannot write the slots) copies the
  slot out and frees it.

Nothing here is backbeat's code path except the gather and the ``zmq`` variant's socket options;
it measures what a transport would save before anyone builds one (``docs/performance.md``, wave 9).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import mmap
import os
import resource
import signal
import socket
import statistics
import sys
import tempfile
import time
from typing import Any, cast

import numpy as np
import zmq

F_SEAL_FUTURE_WRITE = 0x10  # linux/fcntl.h (not in Python's fcntl module before 3.12 on every build)
SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
SLOTS = 4
KINDS = ("zmq", "memfd", "ring")


def _usage() -> tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_minflt


def _connect(addr: str) -> socket.socket:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for _ in range(500):
        try:
            c.connect(addr)
            return c
        except OSError:
            time.sleep(0.01)
    raise SystemExit(f"cannot connect to {addr}")


def produce(kind: str, addr: str, batches: int, values: list[np.ndarray]) -> None:
    """Hand ``batches`` batches gathered from ``values`` to the consumer at ``addr``."""
    size = len(values) * values[0].nbytes
    if kind == "zmq":
        ctx = zmq.Context()
        s = ctx.socket(zmq.PAIR)
        s.sndhwm = 2
        s.bind("ipc://" + addr)
        for _ in range(batches):
            arr = np.concatenate(values)
            s.send_multipart([b"batch", memoryview(cast(Any, arr.view(np.uint8)))], copy=False)
        s.send(b"end")
        s.recv()
        s.close()
        ctx.term()
        return
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(addr)
    srv.listen(1)
    conn, _ = srv.accept()
    if kind == "memfd":
        for _ in range(batches):
            fd = os.memfd_create("batch", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.ftruncate(fd, size)
            m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            np.concatenate(values, out=np.frombuffer(m, dtype=np.float64))
            m.close()  # (no writable mapping may remain for F_SEAL_WRITE)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
            socket.send_fds(conn, [b"b"], [fd])
            os.close(fd)
    else:
        fd = os.memfd_create("ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size * SLOTS)
        m = mmap.mmap(fd, size * SLOTS, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        ring = np.frombuffer(m, dtype=np.float64).reshape(SLOTS, -1)
        socket.send_fds(conn, [b"r"], [fd])
        os.close(fd)
        free = list(range(SLOTS))
        for _ in range(batches):
            while not free:
                free.extend(conn.recv(64))
            k = free.pop(0)
            np.concatenate(values, out=ring[k])
            conn.sendall(bytes([k]))
        del ring
    conn.sendall(b"e")
    while b"a" not in conn.recv(64):
        pass
    conn.close()
    srv.close()


def consume(kind: str, addr: str) -> None:
    """Receive batches until the end; each one's bytes end up in this process's own memory or mapping."""
    if kind == "zmq":
        ctx = zmq.Context()
        s = ctx.socket(zmq.PAIR)
        s.rcvhwm = 2
        s.connect("ipc://" + addr)
        while True:
            frames = s.recv_multipart(copy=False)
            if frames[0].bytes == b"end":
                s.send(b"ack")
                break
            np.frombuffer(frames[1].buffer, dtype=np.float64).sum()
        s.close()
        ctx.term()
        return
    c = _connect(addr)
    ring = None
    if kind == "ring":
        _, fds, _, _ = socket.recv_fds(c, 1, 1)
        if not fcntl.fcntl(fds[0], fcntl.F_GET_SEALS) & F_SEAL_FUTURE_WRITE:
            raise SystemExit("the ring is not sealed against writes")
        m = mmap.mmap(fds[0], os.fstat(fds[0]).st_size, mmap.MAP_SHARED, mmap.PROT_READ)
        os.close(fds[0])
        ring = np.frombuffer(m, dtype=np.float64).reshape(SLOTS, -1)
    while True:
        if ring is not None:
            got = c.recv(1)
            if got == b"e":
                break
            mine = ring[got[0]].copy()  # (then the slot is the producer's again)
            c.sendall(got)
            mine.sum()
            continue
        msg, fds, _, _ = socket.recv_fds(c, 1, 1)
        if msg == b"e":
            break
        if fcntl.fcntl(fds[0], fcntl.F_GET_SEALS) & SEALS != SEALS:
            raise SystemExit("a batch is not sealed")
        m = mmap.mmap(fds[0], os.fstat(fds[0]).st_size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
        os.close(fds[0])
        np.frombuffer(m, dtype=np.float64).sum()
        m.close()
    del ring
    c.sendall(b"a")
    c.close()


def run(kind: str, batches: int, rows: int, width: int) -> dict:
    """One hand-over; the CPU and faults of each side."""
    folder = tempfile.mkdtemp(prefix="bb-transport-")
    addr = os.path.join(folder, "sock")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            c0 = _usage()
            consume(kind, addr)
            c1 = _usage()
            os.write(w, json.dumps([c1[0] - c0[0], c1[1] - c0[1]]).encode())
        except BaseException as exc:  # noqa: BLE001 (reported by the parent)
            os.write(w, json.dumps(str(exc)).encode())
            code = 1
        os._exit(code)
    os.close(w)
    values = list(np.random.default_rng(0).random((rows, width)))  # views, as an identity block's values
    c0 = _usage()
    try:
        produce(kind, addr, batches, values)
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # (the consumer would wait for batches forever)
        os.waitpid(pid, 0)
        if os.path.exists(addr):
            os.unlink(addr)
        os.rmdir(folder)
        raise
    c1 = _usage()
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        child = json.loads(f.read() or '"no answer"')
    if os.path.exists(addr):
        os.unlink(addr)
    os.rmdir(folder)
    if isinstance(child, str):
        raise SystemExit(f"{kind}: the consumer failed: {child}")
    return {"producer_ms": 1e3 * (c1[0] - c0[0]), "producer_faults": c1[1] - c0[1],
            "consumer_ms": 1e3 * child[0], "consumer_faults": child[1]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=80.0, help="MB handed over per run (default 80: one v10k output)")
    ap.add_argument("--batch-rows", type=int, default=256, help="rows per batch (default 256: 2 MB)")
    ap.add_argument("--width", type=int, default=1000, help="float64 per row (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per transport, alternated (default 3)")
    ap.add_argument("--json", action="store_true", help="print the runs as JSON")
    args = ap.parse_args(argv)
    from backbeat.runtime.allocator import reuse_batch_memory

    reuse_batch_memory()  # (as in a block process; forked children inherit it)
    batches = max(1, round(args.mb * 1e6 / (args.batch_rows * args.width * 8)))
    results: dict[str, list[dict]] = {k: [] for k in KINDS}
    for _ in range(args.repeat):
        for kind in KINDS:
            results[kind].append(run(kind, batches, args.batch_rows, args.width))
    if args.json:
        print(json.dumps({"batches": batches, "load": os.getloadavg()[0], "runs": results}))
        return 0
    mb = batches * args.batch_rows * args.width * 8 / 1e6
    print(f"{mb:.0f} MB in {batches} batches of {args.batch_rows} x {args.width} float64; "
          f"load {os.getloadavg()[0]:.1f}; median [min-max] of {args.repeat}")
    for kind in KINDS:
        runs = results[kind]

        def fig(key: str, runs: list[dict] = runs) -> str:
            v = [r[key] for r in runs]
            return f"{statistics.median(v):.0f} [{min(v):.0f}-{max(v):.0f}]"

        print(f"  {kind:6} producer {fig('producer_ms')} ms CPU ({fig('producer_faults')} faults), "
              f"consumer {fig('consumer_ms')} ms CPU ({fig('consumer_faults')} faults)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
