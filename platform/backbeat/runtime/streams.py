"""Block-to-block streaming: a downstream block reads an output while its producer writes it.

Without streaming, a block starts once the cache files it reads are committed, so a chain
of blocks uses one core at a time.  With streaming (the executor decides, see
:mod:`backbeat.execution.scheduler`), the producer *also* sends each batch it appends to its cache
file to the consumer, which starts at the same time and processes units as they arrive:
the chain runs as a pipeline.  The cache files written are the same bytes either way.

State and protocol (one socket per producer output and consumer, a plain Unix stream socket at the
``ipc://`` path in the run's private directory, :class:`~backbeat.runtime.streamsocket.StreamSocket`:
ZeroMQ's ``PAIR`` until wave 14; the producer binds, the consumer connects):

* producer → consumer: ``batch`` messages (``b"batch"`` then :func:`backbeat.wire.encode`
  frames), in order (the writer's batches: 1,024 units first, then twice as many each time up
  to 4,096 and ~2 MB, :meth:`backbeat.data.cachewriter.CacheWriter.grow`), then one ``end`` message (``b"end"``,
  JSON ``{"end": last index, "committed": true}``) sent only after the producer's cache file is committed;
* except for a *small* output (at most :data:`EARLY_UNITS` units and :data:`EARLY_BYTES` bytes, all
  sent in one batch or a few: a chain over a few scalars), whose ``end`` comes before its file is
  written — ``{"end", "start", "digest", "committed": false}``, the digest the file will hold — and
  a ``committed`` message (``b"committed"``, the digest) once it is renamed into place: the consumer
  computes while its producer writes and commits (the relay's hop no longer waits for an HDF5 file),
  but **commits nothing before its producers did**: its cache writer calls :meth:`StreamSource.settle`
  before the rename, which checks that the digest announced is that of the batches received (hashed
  as they arrive, before the algorithm sees them, up to :data:`HASHED_BYTES`) and waits for
  ``committed`` with that digest.  ``committed`` is received and acknowledged at once, not at
  the consumer's own commit: once the early ``end`` is read the algorithm no longer reads the
  socket, and a small thread (:meth:`StreamSource._await_commit`) takes it over, receives
  ``committed``, acks it and sets an event that ``settle()`` waits on — so a producer ends after its
  own commit and a round trip, not after its consumer's whole computation (its ``--timeout``, its
  place among the processes alive and its ``wall_s`` are its own).  A producer
  that fails (or is killed) before it has committed never sends it: the consumer waits until the
  executor kills it (the consumers of a failed producer are, and theirs), leaving only temporaries;
  a producer never ends well without it (it waits for the ack, which follows ``committed``);
* consumer → producer: ``ack`` once ``end`` (committed) or ``committed`` is received; the producer
  waits for it (so nothing sent is lost when it closes) and then closes its side — a block with
  several streamed outputs sends every ``end``/``committed`` first, then collects the acks
  (:meth:`StreamSender.acks`);
* back-pressure: high-water marks of a few messages on both sides (at most 4, about 4 MB and
  8,192 units: fewer when batches are large) bound the memory in flight and how far a consumer
  lags behind its producer; a producer whose consumer stops reading waits, polling every 50 ms whether the
  executor dropped that consumer (a *cancel file* the executor creates when the consumer
  process ends); if so it stops sending to it and finishes its own work normally;
* the consumer blocks until the next message; if the producer fails, the executor kills
  the consumer (its partial files are removed as for any killed block);
* priority: a block process that produces streams lowers its own priority by ``PRODUCER_NICE``
  as it opens them — its session's *autogroup* (with the kernel's autogroups every session is
  scheduled as one group, and a block process is a session of its own) and every thread — so that
  when the run's processes outnumber the cores the scheduler runs a consumer that has data before
  the producers feeding it.  Producers run ahead of their slowest consumer (the analyzer at the end
  of a chain) only by the queues' bound, and the consumer does not end the run alone on one core
  with a backlog (docs/performance.md, wave 9).  An autogroup's niceness weighs it against every
  session of the machine, so under others' load producers get less than their share.  Only a
  session leader does this (a block process): a sender opened by any other process (a test, a
  tool) changes nothing of its caller's session.  It never rises again: a block process is used
  for one block.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import zmq

from backbeat.core.errors import IntegrityError, WireError
from backbeat.data import wire
from backbeat.data.batch import Batch
from backbeat.data.contentdigest import ContentDigest
from backbeat.processes import zmqcontext
from backbeat.runtime.sources import index_lists
from backbeat.runtime.spec import StreamTarget
from backbeat.runtime.streamsocket import StreamSocket

HWM = 4  # at most, messages queued per side before the producer waits
QUEUED_BYTES = 4 << 20  # and no more bytes than this per side (fewer messages when batches are large)
#: and no more units than this per side: a consumer slower than its producer (the last block of
#: a chain, an analyzer) lags behind by a few batches at most, so the producer keeps working
#: while the consumer does, instead of finishing early and leaving the consumer alone on a core
#: at the end of the run with tens of thousands of units still queued (docs/performance.md, wave 7)
QUEUED_UNITS = 8192
POLL_MS = 50
#: how much lower a producer's priority is than a consumer's (CFS weights 1024 against 335: a
#: consumer with data runs ~3× as often as a producer competing with it for a core)
PRODUCER_NICE = 5
#: an output of at most this many units and bytes (batch.nbytes) is announced before its file is written
EARLY_UNITS = 1024
EARLY_BYTES = 1 << 20
#: a consumer hashes the batches it receives up to this many bytes (and :data:`EARLY_UNITS` units: the
#: same limit as the producer's), to check an early ``end``'s digest: at least what a producer may
#: announce early, or a consumer would refuse a small stream its producer was entitled to announce
HASHED_BYTES = 2 * EARLY_BYTES
assert HASHED_BYTES >= EARLY_BYTES


def yield_to_consumers() -> None:
    """Lower the priority of this process by ``PRODUCER_NICE``, once: its session's autogroup
    (where the kernel groups tasks by session: a block process is a session of its own, and
    a niceness then only orders the tasks inside it) and every thread (where it does not: the
    ZeroMQ I/O thread that a stream source or a provider client may have started is lowered
    too, and threads started later inherit it).  A niceness already at the floor of 19 stays
    there."""
    global _yielded, _autogroup_pending
    if os.getsid(0) != os.getpid():  # not a block process (a session of its own): leave the caller's alone
        return
    if _yielded == os.getpid():
        if _autogroup_pending:
            _autogroup_pending = not _lower_autogroup()
        return
    _yielded = os.getpid()
    _autogroup_pending = not _lower_autogroup()
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # (no /proc: this thread only)
        tids = [0]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + PRODUCER_NICE))
        except OSError:  # (a thread that has just ended)
            pass


@contextlib.contextmanager
def staying_put() -> Iterator[None]:
    """Within, this process's producers do not lower its priority (:func:`yield_to_consumers`):
    the zygote's rehearsal, whose priority its children would inherit."""
    global _yielded, _autogroup_pending
    saved = _yielded, _autogroup_pending
    _yielded, _autogroup_pending = os.getpid(), False
    try:
        yield
    finally:
        _yielded, _autogroup_pending = saved


def _lower_autogroup() -> bool:
    """Lower this session's autogroup by ``PRODUCER_NICE``; False to try again later (the
    kernel lets a process without CAP_SYS_ADMIN change an autogroup's niceness only once per
    0.1 s, machine-wide: the producers of a run starting together take turns)."""
    try:
        fd = os.open("/proc/self/autogroup", os.O_RDWR)
    except OSError:  # no autogroups (kernel, container): threads only
        return True
    try:
        nice = int(os.read(fd, 128).rsplit(b"nice", 1)[1])
        os.write(fd, b"%d" % min(19, nice + PRODUCER_NICE))  # (os.write raises EAGAIN; a buffered
        # file's write would return None for it)
    except BlockingIOError:  # (EAGAIN: another process changed one less than 0.1 s ago)
        return False
    except (OSError, ValueError, IndexError):  # refused otherwise: threads only
        pass
    finally:
        os.close(fd)
    return True


_yielded = 0  # the pid that lowered its priority (a forked child starts from its parent's)
_autogroup_pending = False  # its autogroup still to lower (the kernel said: not now)


def _socket() -> Any:
    """A stream's socket: a :class:`StreamSocket`, or in the zygote's rehearsal the stand-in it
    substituted for ZeroMQ (:func:`backbeat.processes.zmqcontext.substitute`)."""
    stand_in = zmqcontext.substituted()
    return stand_in.socket(zmq.PAIR) if stand_in is not None else StreamSocket()


def high_water_mark(batch_bytes: int, batch_units: int = 0) -> int:
    """Messages queued per side for batches of about ``batch_bytes`` and ``batch_units``: memory
    and the consumer's lag stay bounded."""
    by_units = QUEUED_UNITS // batch_units if batch_units > 0 else HWM
    return max(1, min(HWM, QUEUED_BYTES // max(1, batch_bytes), by_units))


class StreamSender:
    """Producer side: the consumers of one output (one bound PAIR socket each)."""

    def __init__(self, targets: Sequence[StreamTarget], batch_bytes: int = 0, batch_units: int = 0):
        """One consumer per target: the ipc address to bind, the cancel file to watch;
        ``batch_bytes``, ``batch_units``: about how large the batches sent are."""
        yield_to_consumers()
        self.units = self.bytes = 0  # sent so far
        self._live: list[tuple[Any, str]] = []
        for t in targets:
            try:
                sock = _socket()
            except BaseException:
                self.close()
                raise
            try:
                sock.linger = 0
                sock.sndhwm = high_water_mark(batch_bytes, batch_units)
                sock.message_bytes = batch_bytes
                sock.bind(t.address)
            except BaseException:  # (nothing left bound: neither this socket nor the ones before)
                sock.close(0)
                self.close()
                raise
            self._live.append((sock, t.cancel))

    def _drop(self, sock: Any) -> None:
        self._live = [(s, c) for s, c in self._live if s is not sock]
        sock.close(0)

    def _send(self, frames: list[Any]) -> None:
        for sock, cancel in list(self._live):
            while True:
                try:
                    sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                    break
                except zmq.Again:
                    if os.path.exists(cancel):  # the consumer has ended: stop feeding it
                        self._drop(sock)
                        break
                    sock.poll(POLL_MS, zmq.POLLOUT)

    def send(self, batch: Batch) -> None:
        """Send one batch (just appended to the producer's cache file) to every live consumer."""
        if _autogroup_pending:
            yield_to_consumers()
        if self._live and len(batch):
            self.units += len(batch)
            self.bytes += batch.nbytes
            self._send([b"batch", *wire.encode(batch)])

    @property
    def early(self) -> bool:
        """Whether the output sent so far is small enough to be announced before it is written."""
        return self.units <= EARLY_UNITS and self.bytes <= EARLY_BYTES

    def announce(self, start: int, end: int, digest: str) -> None:
        """Every batch is sent and the file's digest known, not committed yet: tell the consumers
        (only if :attr:`early`); :meth:`confirm` follows once the file is in place."""
        assert self.early
        self._send([b"end", json.dumps({"end": int(end), "start": int(start), "digest": digest,
                                        "committed": False}).encode()])

    def confirm(self, digest: str) -> None:
        """The output announced is committed with ``digest``: tell the consumers (then :meth:`acks`)."""
        self._send([b"committed", digest.encode()])

    def finish(self, end: int) -> None:
        """The output is committed, ending at ``end``: tell the consumers (then :meth:`acks`)."""
        self._send([b"end", json.dumps({"end": int(end), "committed": True}).encode()])

    def acks(self) -> None:
        """Wait for every live consumer's ack of :meth:`confirm` or :meth:`finish` (a consumer that
        has ended — its cancel file — is not waited for), then close."""
        for sock, cancel in list(self._live):
            while not sock.poll(POLL_MS, zmq.POLLIN):
                if os.path.exists(cancel):
                    break
        self.close()

    def close(self) -> None:
        for sock, _ in self._live:
            sock.close(0)
        self._live = []


class StreamSource:
    """Consumer side: a data source whose units arrive from the producer, in order.

    It offers what the driver's one-input step loop needs: :meth:`iter_chunks` and
    :attr:`more` (whether a unit follows the last one handed out: one message of look-ahead,
    so that ``hasMoreData()`` is exact).  The number of units is not known in advance:
    ``len()`` is the number received so far.
    """

    live = True  # the driver updates the input's unit count as units arrive

    def __init__(self, address: str, fmt: str, expanded: dict, batch_bytes: int = 0, batch_units: int = 0):
        self._sock = _socket()
        self._sock.linger = 0
        self._sock.rcvhwm = high_water_mark(batch_bytes, batch_units)
        self._sock.reconnect_ivl = 10
        self._sock.connect(address)
        self._fmt, self._expanded = fmt, expanded
        self._received = 0
        self.more = True
        self.end: int | None = None
        self.bytes_read = 0
        #: the digest of the batches received, while few (an early end's check); None beyond
        self._content: ContentDigest | None = ContentDigest(fmt, expanded)
        self._announced: tuple[int, str] | None = None  # an early end's start and digest, until committed
        self._committed = threading.Event()  # set by the watcher once ``committed`` is received (or it failed)
        self._watcher: threading.Thread | None = None  # receives ``committed`` after an early end
        self._failure: str | None = None  # what the watcher received instead
        self._stop = False  # (tells the watcher to give the socket back: the source closes)

    def __len__(self) -> int:
        return self._received

    def _next_batch(self) -> Batch | None:
        frames = self._sock.recv_multipart(copy=False)
        kind = bytes(frames[0])
        if kind == b"batch":
            batch = wire.decode(frames[1:], self._fmt, self._expanded, private=True)  # (from the producer)
            self._received += len(batch)
            self.bytes_read += batch.nbytes
            if self._content is not None:  # (hashed as received: the algorithm may change its values)
                if self._received > EARLY_UNITS or self.bytes_read > HASHED_BYTES:
                    self._content = None
                else:
                    self._content.add(batch)
            return batch
        if kind == b"end":
            end = json.loads(bytes(frames[1]))
            self.end = int(end["end"])
            if end.get("committed", True):
                self._content = None
                self._sock.send(b"ack")
            elif self._content is None:
                raise WireError(f"a stream of {self._received} units ended before its producer committed it")
            else:
                self._announced = (int(end["start"]), str(end["digest"]))
                # from now on the socket is the watcher's (this thread no longer reads it)
                watcher = threading.Thread(target=self._await_commit, args=(self._announced[1],),
                                           name="stream-commit", daemon=True)
                watcher.start()  # (a thread that could not start is not joined at close)
                self._watcher = watcher
            return None
        raise WireError(f"unexpected stream message {kind[:20]!r}")

    def iter_chunks(self, i: int = 0) -> Iterator[tuple[list, list, list]]:
        """``(values, starts, ends)`` lists of units ``0, 1, ..`` as they arrive (``i`` must be 0: a
        stream is read once): a batch's units but its last, then its last alone once the next
        message is read, so that :attr:`more` tells, whenever a chunk is handed out, whether any
        unit follows it."""
        if i:
            raise WireError("a streamed input is read from its first unit only")
        batch = self._next_batch()
        last_end = -1
        spare: list | None = None  # the values of the batch before the last one: done with (data.recycling)
        previous: list | None = None
        while batch is not None:
            values, (starts, ends) = batch.to_values(spare), index_lists(batch.starts, batch.ends)
            spare, previous = previous, values
            self.more = True
            following: Batch | None | bool = False  # (False: the next message is not read yet)
            m = len(values) - 1
            if self._content is None:
                if m:
                    yield values[:m], starts[:m], ends[:m]
            else:  # a stream small so far may end early: its `end` is read (and the commit's watcher
                a, k = 0, 0  # started) as soon as it is there (polled before units 0, 1, 2, 4, ..), so
                while k < m and following is False:  # that the producer's wait for its ack does
                    if k > a:  # not include this block's computation
                        yield values[a:k], starts[a:k], ends[a:k]
                        a = k
                    if self._sock.poll(0, zmq.POLLIN):
                        following = self._next_batch()
                    k = 2 * k or 1
                if m > a:
                    yield values[a:m], starts[a:m], ends[a:m]
            if following is False:
                following = self._next_batch()  # before the batch's last unit: is there more?
            assert following is not True
            self.more = following is not None
            last_end = ends[-1]
            yield values[m:], starts[m:], ends[m:]
            batch = following
        self.more = False
        if self.end != last_end:
            raise WireError(f"the stream ended at data index {self.end}, after a unit ending at {last_end}")

    def iter_units(self, i: int = 0) -> Iterator[tuple[Any, int, int]]:
        """Units ``0, 1, ..`` as they arrive (see :meth:`iter_chunks`)."""
        for values, starts, ends in self.iter_chunks(i):
            yield from zip(values, starts, ends, strict=True)

    def settle(self) -> None:
        """Return once the producer has committed what was received (at once if it had when it
        ended the stream; else once the watcher has received ``committed``); IntegrityError if the
        digest it announced is not that of the units received, WireError if it sends anything
        else.  Blocks while the producer writes (if it fails, the executor kills this process)."""
        while self.end is None and not self._sock.closed:  # (not read to its end: what follows
            self._next_batch()  # is not used, but this block commits only after its producer did)
        if self._announced is None:
            return
        start, digest = self._announced
        assert self.end is not None and self._content is not None
        if self._content.digest(start, self.end) != digest:
            raise IntegrityError("the units received from a stream are not those its producer announced "
                                 f"(digest {digest[:12]}…)")
        self._committed.wait()
        if self._failure is not None:
            raise WireError(self._failure)
        self._announced = None

    def _await_commit(self, digest: str) -> None:
        """The watcher's thread, once an early ``end`` is read: receive ``committed``, check that it
        names the digest announced, ack it at once (the producer ends then, not when this block
        commits) and set the event :meth:`settle` waits on — also on anything else received."""
        committed = False
        try:
            while not self._stop:
                if self._sock.poll(POLL_MS, zmq.POLLIN):
                    frames = self._sock.recv_multipart()
                    if frames[0] != b"committed" or frames[1:] != [digest.encode()]:
                        self._failure = (f"expected the producer's commit of digest {digest[:12]}…, "
                                         f"got {frames[0][:20]!r}")
                    else:
                        self._sock.send(b"ack")
                        committed = True
                    return
        except Exception as exc:  # (fails closed: settle refuses to go on without the commit)
            self._failure = f"the stream broke before its producer's commit: {exc}"
        finally:
            if not committed and self._failure is None:
                self._failure = "the stream was closed before its producer's commit"
            self._committed.set()

    def data_indices(self) -> list[tuple[int, int]]:
        raise WireError("the units of a streamed input are not known in advance")

    def close(self) -> None:
        if self._watcher is not None:  # (the socket is given back within POLL_MS)
            self._stop = True
            self._watcher.join()
            self._watcher = None
        if not self._sock.closed:
            self._sock.close(0)
