"""Scheduling the jobs of a run on this machine (the local executor, :mod:`backbeat.execution.local`).

:class:`Scheduler` runs the pending jobs of a run in its process group
(:class:`~backbeat.processes.group.ProcessGroup`):

* a job starts once its inputs are ready, up to ``-j`` at once (default: the cores);
* before it starts, its lock is taken (:meth:`backbeat.cache.store.CacheStore.lock`, without
  waiting): a job locked by another run is ``waiting``, then found committed and reused;
* when a job starts, the pending jobs that can read its output *while it is written* start
  with it (:func:`~backbeat.planning.selection.stream_consumers`, :mod:`backbeat.runtime.streams`);
  each gets a *cancel file* that tells its producer when it has ended.  Streamed jobs do not
  count against ``-j``, and their time limit starts when their producer ends;
* at most :func:`alive_limit` block processes are alive at once: a chain is streamed in
  segments of that many blocks, and the block after a segment starts once the file it reads
  is committed (it then heads the next segment), so memory and the fork server's queue stay
  bounded however long the chain;
* the running jobs, their processes and which have ended are kept by
  :class:`~backbeat.execution.running.RunningJobs`; while more block processes are alive than
  ``-j``, polls are at least :data:`POLL_GAP_S` apart (events taken a few at a time: a later
  reaction idles no core then);
* the cost per job does not grow with the plan: jobs become ready when their last input
  does (counters, a heap in plan order), consumers are looked up in an index, and a chain
  is started by a loop, not by recursion;
* a split block runs one process per slot (:mod:`~backbeat.execution.splitting`), assembled
  into the single cache entry; a loop runs its evaluator (``#0``) and processor (``#1``)
  together, joined by a loop channel, all or nothing;
* a failed job's partial files are removed, no new job starts, running jobs finish; the
  consumers of a failed producer's streams are killed and reported ``skipped``;
* each process's stdout and stderr go to its log in the cache (:mod:`backbeat.execution.logs`);
  a failed job's error carries the end of its log (``output``, ``log``);
* a cache that cannot be written (read-only, full) or a dead fork server fails the job as a
  ``system`` error saying so (a block that cannot start deep in a chain fails itself, not the
  chain's first block, and its producer stops feeding it);
  control messages refused (a block naming another job) become warnings of the run;
* each process runs in the fork server of its environment's interpreter (``run.interpreters``,
  :mod:`backbeat.execution.environments`); in a sandboxed run it writes into its staging folder,
  published into the cache after checks once it has ended well (:mod:`backbeat.execution.sandboxing`).

The fork server, control channel and database provider are started only when something
must run, so a fully cached re-run starts no process.  On an interruption every process is
killed, running jobs are reported failed (``interrupted``) and their partial files removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import os
import time
from collections import deque
from pathlib import Path

from backbeat.cache.store import EntryLock
from backbeat.core import exiting
from backbeat.core.errors import ExecutionError, describe_environmental
from backbeat.execution import environments
from backbeat.execution.lingering import Lingering
from backbeat.execution.logs import failure_output, process_log
from backbeat.execution.running import RunningJobs
from backbeat.execution.sandboxing import reported_digests
from backbeat.execution.specs import SpecBuilder, streamed, streaming
from backbeat.execution.splitting import assemble_job, slot_ranges
from backbeat.execution.state import AVAILABLE, BROKEN, STARTABLE, JobState, Run
from backbeat.execution.views import PROVIDER_JOB, provider_log, start_provider
from backbeat.planning.model import Job
from backbeat.planning.selection import Options, readers, stream_consumers
from backbeat.processes.exits import Exit, Limits
from backbeat.processes.outcome import Outcome
from backbeat.runtime.spec import BlockSpec, StreamTarget

BLOCK_TARGET = "backbeat.runtime.blockrun:run"
#: the memory block processes alive at once may use, by default (each ~:data:`PROCESS_MB` of PSS
#: when its data is small: ``docs/performance.md``)
ALIVE_BUDGET_MB = 256
PROCESS_MB = 8
#: while more block processes are alive than ``-j``, polls are at least this far apart (seconds)
POLL_GAP_S = 0.01
#: how long the processes of a job one of whose processes could not start are waited for once killed
KILLED_WAIT_S = 10.0


def alive_limit(options: Options, jobs: int) -> int:
    """How many block processes may be alive at once (``--alive``; by default the memory budget
    :data:`ALIVE_BUDGET_MB` over :data:`PROCESS_MB`, and at least twice ``-j``; never under ``-j``)."""
    return max(jobs, options.alive or max(2 * jobs, ALIVE_BUDGET_MB // PROCESS_MB))


class Scheduler:
    """Runs the pending jobs of one run on this machine (see the module docstring)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.status = run.state.status
        self.store = run.store
        self.options = run.options
        self.group = run.group
        self.jobs = run.jobs
        self.order = {j.name: k for k, j in enumerate(run.plan.jobs)}
        self.readers = readers(run.plan)
        self.specs = SpecBuilder(run.plan, run.workspace, run.options.window)
        self.locks: dict[str, EntryLock] = {}
        self.started: dict[str, float] = {}
        self.running = RunningJobs(run.group, run.jobs)
        self.slot_ranges: dict[str, list[tuple[int, int]]] = {}
        self.feeders: dict[str, tuple[str, str]] = {}  # streamed job -> (producer, cancel file)
        self.fed_by: dict[str, list[str]] = {}  # producer -> the jobs it streams to
        self.fresh = {n for n, s in self.status.items() if s == JobState.RAN}  # committed by this run
        # a job is ready when its last input is: inputs not yet available, and the ready heap (plan order)
        self.blockers = {j.name: sum(self.status[d] not in AVAILABLE for d in set(j.depends)) for j in run.plan.jobs}
        self.ready = [(self.order[n], n) for n, b in self.blockers.items() if not b and self.status[n] in STARTABLE]
        heapq.heapify(self.ready)
        self.promised = 0  # streamed consumers accepted, not yet spawned
        self.streams = 0  # stream sockets named so far (a name is never reused: its .gone file stays)
        self.window = 0  # at most that many alive (alive_limit)
        self.starved: set[str] = set()  # streamed jobs killed because their producer failed
        self.held: dict[str, float] = {}  # streamed jobs ended before their producer -> when seen ended (_held)
        self._provider: str | None = None
        self._provider_lost: Outcome | None = None  # how the database provider ended, if it died
        self.orphaned: set[str] = set()  # processes killed because the database provider died
        self._polled = 0.0  # when the last poll returned
        self.lingering = Lingering(run.store, run.staging)  # jobs that could not start, a killed process not ended

    # -- the loop ---------------------------------------------------------------------------
    def execute(self) -> None:
        try:
            for python in sorted({environments.of(self.run.interpreters, n).key or "" for n in self.jobs
                                  if self.status[n] in STARTABLE}):
                self.group.warm(python or None)  # every interpreter's zygote warms up at once
            self._check_interpreters()
            self._loop()
        finally:
            self._close()

    def _loop(self) -> None:
        limit = self.options.jobs or os.cpu_count() or 1
        self.window = alive_limit(self.options, limit)
        failed = False
        while True:
            if not failed and not self._start_ready(limit):
                failed = True
            if not self.running:
                if not failed and any(self.status[n] == JobState.WAITING for _k, n in self.ready):
                    time.sleep(0.05)
                    continue
                return
            if self.running.alive - len(self.held) > limit:  # cores busy: events taken a few at a time
                pause = self._polled + POLL_GAP_S - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            self.group.poll(20)
            self._polled = time.monotonic()
            self._watch_provider()
            self.lingering.settle(self.group)
            for name in [n for n in self.running.ended_jobs() if not self._held(n)]:
                ok = self._finish(self.jobs[name], self.running.remove(name))
                if not ok:
                    failed = True
                if not ok or name in self.starved:  # the jobs it was feeding are starved too
                    self._starve(name)

    def _held(self, name: str) -> bool:
        """In a sandboxed run, a streamed job that has ended well is published only once its
        producer's outputs were (if those are then refused, it is skipped; one that failed is settled
        at once); its producer is told at once (its cancel file): it waits neither to feed it nor for its ack."""
        feeder, exit_ = self.feeders.get(name), self.group.ended(self.running[name][0])
        if self.run.staging is None or feeder is None or feeder[0] not in self.running or not (exit_ and exit_.ok):
            return False
        if name not in self.held:
            self.held[name] = time.perf_counter()  # (its wall time ends here, not when published)
            Path(feeder[1]).touch()
        return True

    def _start_ready(self, limit: int) -> bool:
        """Start ready jobs in plan order while fewer than ``limit`` counted processes run; False
        if one failed to start (then no other is started)."""
        again = []
        ok = True
        # streamed jobs keep pace with their producer: they do not count against the limit
        while self.ready and self.running.counted < limit:
            item = heapq.heappop(self.ready)
            name = item[1]
            if self.status[name] not in STARTABLE:  # started meanwhile, as the consumer of a stream
                continue
            if not self._try_start(self.jobs[name]):
                ok = False
                break
            if self.status[name] in STARTABLE:  # waiting for another run's lock: try again later
                again.append(item)
        for item in again:
            heapq.heappush(self.ready, item)
        return ok

    def _available(self, name: str) -> None:
        """``name``'s outputs are available: its readers whose last input it was are ready."""
        for reader in self.readers.get(name, ()):
            self.blockers[reader.name] -= 1
            if not self.blockers[reader.name] and self.status[reader.name] in STARTABLE:
                heapq.heappush(self.ready, (self.order[reader.name], reader.name))

    def _watch_provider(self) -> None:
        """If the database provider died (killed…), the blocks reading datasets would wait for it:
        they are killed, and fail saying why."""
        if self._provider is None or self._provider_lost is not None or self.group.exit(PROVIDER_JOB) is None:
            return
        self._provider_lost = self.group.outcome(PROVIDER_JOB)
        for name, ids in self.running.items():
            if any(i.source == "dataset" for i in self.jobs[name].inputs.values()):
                for pid in ids:
                    self.orphaned.add(pid)
                    self.group.kill(pid)

    def _check_interpreters(self) -> None:
        """Jobs whose fork server cannot run backbeat's block runtime fail at once, saying why."""
        startable = [n for n in self.jobs if self.status[n] in STARTABLE]
        for name, message in environments.unable(self.jobs, startable, self.run.interpreters,
                                                 self.run.staging is not None, self.group.failure).items():
            self.run.state.fail(name, {"kind": "system", "message": message, "traceback": None})
            self.run.emit(name, "failed", message=message)

    def _try_start(self, job: Job) -> bool:
        """Start ``job`` if it can start; False if it failed to (the cache cannot be written…)."""
        run = self.run
        if any(self.status[d] in BROKEN for d in job.depends):
            return True
        twin = run.decisions[job.name].twin  # the same outputs, computed by an earlier job of this run
        if twin is not None and self.status[twin] not in AVAILABLE:
            return True
        if not all(self.status[d] in AVAILABLE for d in job.depends):
            return True
        try:
            if not self._lock(job):
                if self.status[job.name] != JobState.WAITING:
                    run.set(job.name, JobState.WAITING)
                return True
            if not self.run.decisions[job.name].forced and self.store.committed(job.output_keys):
                self._unlock(job.name)  # another run computed it meanwhile
                run.set(job.name, JobState.CACHED)
                self._available(job.name)
                return True
        except (OSError, ExecutionError) as exc:  # a cache that cannot be written
            return self._cannot_start(job, exc)
        self._running(job)
        return self._start(job)

    def _cannot_start(self, job: Job, exc: Exception | None) -> bool:
        """``job`` could not start: it fails (``exc``; None: pending again, accepted with one that
        failed); a producer feeding it stops (its cancel file: it would wait for it forever); False."""
        self._unlock(job.name)
        if job.name in self.feeders:
            Path(self.feeders.pop(job.name)[1]).touch()
        if exc is None:
            self.run.set(job.name, JobState.PENDING)
            return False
        message = (f"{describe_environmental(exc, cache=self.store.location)}: the block could not start"
                   if isinstance(exc, OSError) else f"cannot start: {exc}")
        self.run.state.fail(job.name, {"kind": "system", "message": message, "traceback": None})
        self.run.emit(job.name, "failed", message=message)
        return False

    def _running(self, job: Job) -> None:
        self.started[job.name] = time.perf_counter()
        self.run.set(job.name, JobState.RUNNING, done=0, total=None)

    def _close(self) -> None:
        """Kill what still runs (e.g. on Ctrl-C): interrupted jobs fail, their partial files go."""
        for r in self.group.refused:
            sender = f"block process `{r['sender']}'" if r["sender"] else f"process {r['pid'] or '(unknown)'}"
            self.run.state.warnings.append(f"a `{r['type']}' control message naming `{r['job']}' from {sender} "
                                           f"was refused ({r['reason']})")
        self.group.close()
        self.lingering.close()
        for job in self.run.plan.jobs:
            if self.status.get(job.name) == JobState.RUNNING:
                self.run.state.fail(job.name, {"kind": "interrupted", "message": "the run was interrupted",
                                                "traceback": None})
                self.store.drop_partial(job.output_keys, job.nb_slots)
        for lock in self.locks.values():
            lock.release()
        self.locks.clear()

    # -- locks ------------------------------------------------------------------------------
    def _lock(self, job: Job) -> bool:
        lock = self.store.lock(job.key, wait=False)
        if lock is None:
            return False
        self.locks[job.name] = lock
        return True

    def _unlock(self, name: str) -> None:
        lock = self.locks.pop(name, None)
        if lock is not None:
            lock.release()

    # -- starting ---------------------------------------------------------------------------
    def _provider_address(self) -> str:
        if self._provider is None:
            specs = self.specs.datasets()
            if self.run.staging is not None:  # (the cache is read-only in the sandbox)
                specs = self.run.staging.journals(specs)
            self._provider = start_provider(self.group, specs, provider_log(self.run))
        return self._provider

    def _spawn(self, pid: str, spec: BlockSpec, timed: bool = True) -> None:
        """Start one block process; ``timed=False``: its time limit starts later (a streamed job)."""
        if spec.reads_datasets and spec.database is None:
            spec = dataclasses.replace(spec, database=self._provider_address())
        limits = Limits(self.options.timeout_s if timed else None, self.options.memory_bytes)
        log = process_log(self.store, self.jobs[pid.partition("#")[0]], pid)
        if self.run.staging is not None:
            spec = self.run.staging.block(pid, spec)
        try:
            self.group.spawn(pid, BLOCK_TARGET, spec.to_json(), limits, log=str(log),
                             python=environments.of(self.run.interpreters, pid).key)
        except (OSError, ExecutionError):
            if self.run.staging is not None:  # (its staging folder: removed now, not at the run's end)
                self.run.staging.discard(pid)
            raise

    def _start(self, job: Job) -> bool:
        """Start a job, the consumers it streams to, theirs…, as far as the window allows
        (a loop: a chain of any length never deepens the stack); False if one could not start (it fails,
        not the chain's first block; those accepted after it are pending again)."""
        todo: deque[tuple[Job, dict[str, str] | None]] = deque([(job, None)])
        while todo:
            job, fed = todo.popleft()
            if fed:
                self.promised -= 1
            try:
                ids, consumers = self._spawn_job(job, fed)
            except (OSError, ExecutionError) as exc:  # a cache that cannot be written, a dead fork server
                self.promised -= len(todo)
                for cons, _fed in todo:
                    self._cannot_start(cons, None)
                return self._cannot_start(job, exc)
            self.running.add(job.name, ids, counted=job.name not in self.feeders)
            for cons, inp, _out, target in consumers:
                self.feeders[cons.name] = (job.name, target.cancel)
                self.fed_by.setdefault(job.name, []).append(cons.name)
                self._running(cons)
                todo.append((cons, {inp: target.address}))
        return True

    def _spawn_job(self, job: Job, fed: dict[str, str] | None) -> tuple[list[str], list]:
        """Spawn the job's block process(es) — one, one per slot of a split block, or the two
        sides of a loop; ``(process ids, the consumers it streams to)``.
        ``fed``: the job's inputs streamed to it (input name → address)."""
        self.store.drop_partial(job.output_keys)  # temporaries left by a writer killed with an earlier run
        if job.kind == "loop":
            return self._start_loop(job), []
        spec = _served(self.specs.block(job, self.fresh))
        if fed:
            spec = streamed(spec, fed)
        if job.nb_slots > 1 and job.kind == "block" and not fed and self.specs.splittable(job):
            if spec.reads_datasets:
                spec = dataclasses.replace(spec, database=self._provider_address())
            ranges = slot_ranges(spec, job.nb_slots)
            if len(ranges) > 1:
                self.slot_ranges[job.name] = ranges
                return self._spawn_all(job, self.specs.slots(spec, ranges)), []
        consumers = self._consumers(job)
        for _cons, _inp, out, target in consumers:
            spec = streaming(spec, out, target)
        try:
            self._spawn(job.name, spec, timed=not fed)  # a streamed job's time limit starts when its producer ends
        except (OSError, ExecutionError):  # the consumers just accepted are not promised any more
            self.promised -= len(consumers)
            for cons, *_rest in consumers:
                self._unlock(cons.name)
            raise
        return [job.name], consumers

    def _consumers(self, job: Job) -> list[tuple[Job, str, str, StreamTarget]]:
        """The pending jobs that will read ``job``'s output while it is written:
        ``[(consumer, its input, job's output, stream target)]``; their locks are taken here.
        Only as many as the window has room for (``job`` itself is about to be alive too):
        the others start once ``job`` has committed its outputs, reading them from the cache."""
        if not self.options.stream or self.options.jobs == 1:  # -j 1: one block process at a time
            return []
        room = self.window - self.running.alive - self.promised - 1
        if room <= 0:
            return []
        found: list[tuple[Job, str, str, StreamTarget]] = []
        for cons, inp, out in stream_consumers(self.run.plan, job.name, self.status, self.specs.algorithm_type,
                                               (self.jobs, self.readers)):
            if len(found) >= room:
                break
            if self.run.decisions[cons.name].twin is not None or not self._lock(cons):
                continue
            if not self.run.decisions[cons.name].forced and self.store.committed(cons.output_keys):
                self._unlock(cons.name)  # another run computed it meanwhile: the main loop reuses it
                continue
            n, self.streams = self.streams, self.streams + 1  # (in the run's private directory)
            found.append((cons, inp, out, StreamTarget(self.group.address(f"stream{n}"),
                                                       os.path.join(self.group.directory, f"stream{n}.gone"))))
        self.promised += len(found)
        return found

    def _start_loop(self, job: Job) -> list[str]:
        """Spawn a loop's evaluator (``#0``, binds the loop channel) and processor (``#1``)."""
        address = self.group.address(f"loop{self.order[job.name]}")
        return self._spawn_all(job, [_served(s) for s in self.specs.loop_sides(job, address, self.fresh)])

    def _spawn_all(self, job: Job, specs: list[BlockSpec]) -> list[str]:
        """Spawn ``job#0``, ``job#1``… (a split block's slots, a loop's sides): all or none — if one
        cannot be spawned, those already are killed at once and what they wrote is removed (again
        once those not reported ended within ``KILLED_WAIT_S`` are: :mod:`~backbeat.execution.lingering`)."""
        ids: list[str] = []
        try:
            for k, spec in enumerate(specs):
                self._spawn(f"{job.name}#{k}", spec)
                ids.append(f"{job.name}#{k}")
        except (OSError, ExecutionError):
            for pid in ids:
                with contextlib.suppress(OSError, ExecutionError):  # (a dead fork server: they end `lost')
                    self.group.kill(pid)
            ended = self.group.wait(ids, KILLED_WAIT_S)  # (killed: they end at once, unless stuck in the kernel)
            self.lingering.drop(job, ids)
            if len(ended) < len(ids):  # (its fork server stopped…): they may write on; the job stays locked
                self.lingering.add(job, ids, self.locks.pop(job.name, None))
            raise
        return ids

    def _starve(self, producer: str) -> None:
        """Kill the running consumers of a failed producer's streams (they become skipped)."""
        for cons in self.fed_by.get(producer, ()):
            if cons in self.running and cons not in self.starved:
                self.starved.add(cons)
                for pid in self.running[cons]:
                    self.group.kill(pid)

    # -- ending -----------------------------------------------------------------------------
    def _finish(self, job: Job, ids: list[str]) -> bool:
        """Classify the ended process(es) of a job, assemble split outputs; False on failure.
        The job's lock is released once its outputs are settled (or its leftovers removed)."""
        try:
            return self._settle(job, ids)
        finally:
            self._unlock(job.name)

    def _settle(self, job: Job, ids: list[str]) -> bool:
        run = self.run
        wall = self.held.pop(job.name, time.perf_counter()) - self.started[job.name]
        if self.options.timeout_s:  # the consumers of its streams now run on their own
            for cons in self.fed_by.get(job.name, ()):
                if cons in self.group:
                    self.group.set_timeout(cons, self.options.timeout_s)
        if job.name in self.feeders and self.feeders[job.name][0] in self.running:
            Path(self.feeders[job.name][1]).touch()  # a consumer has ended: its running producer stops feeding it
        if job.name in self.starved:  # killed because the producer it read from failed (or ended first)
            self.store.drop_partial(job.output_keys)
            if run.staging is not None:  # (its staged files: never published)
                for pid in ids:
                    run.staging.discard(pid)
            run.set(job.name, JobState.SKIPPED)
            return True
        outcomes = [self.group.outcome(p) for p in ids]
        # the digests (and results) of the files it committed, for the report and record — not
        # from a sandboxed block (its process is not trusted: they are read from the checked files)
        own = job.output_keys if (len(ids) == 1 or job.kind == "loop") and run.staging is None else ()
        for o in outcomes:
            run.state.learn(o.statistics, own)
        failures = [(p, o) for p, o in zip(ids, outcomes, strict=True) if not o.ok]
        culprit = next((p for p, _o in failures if p not in self.running.killed), failures[0][0] if failures else None)
        bad = dict(failures).get(culprit) if culprit is not None else None
        if culprit in self.orphaned and self._provider_lost is not None:
            lost = self._provider_lost
            bad = Outcome("system", "the database provider it read from died ("
                          + (lost.exit.describe() if lost.exit is not None else lost.message) + ")")
        if bad is None:
            bad = self._publish(job, ids, outcomes)
        if bad is None and len(ids) > 1 and job.kind != "loop":
            try:
                assemble_job(self.store, job, self.slot_ranges[job.name], self.run.plan.expanded,
                             self.run.workspace.compression)
            except Exception as exc:  # noqa: BLE001 - reported as the block's failure
                bad = Outcome("system", f"cannot assemble the outputs of the split block: {exc}")
        if bad is None and self.store.committed(job.output_keys):
            stats = outcomes[0].statistics if len(ids) == 1 else {"slots": [o.statistics for o in outcomes]}
            exits: list[Exit] = [o.exit for o in outcomes if o.exit is not None]
            rss = [e.rusage.get("maxrss_kb", 0) for e in exits if e.rusage]
            run.state.stats[job.name] = dict(stats, wall_s=wall, **({"max_rss_mb": max(rss) / 1024} if rss else {}))
            if job.name in self.feeders:
                run.state.stats[job.name]["streamed_from"] = self.feeders[job.name][0]
            run.set(job.name, JobState.RAN)
            run.settle(job)
            self.fresh.add(job.name)
            self._available(job.name)
            run.emit(job.name, "done", wall_s=wall)
            return True
        if self.run.staging is not None:
            for pid in ids:
                self.run.staging.discard(pid)
        # a killed writer leaves its temporary file; a loop node is all or nothing (drop the side that committed)
        self.store.drop_partial(job.output_keys, len(ids) if len(ids) > 1 else 0, committed=job.kind == "loop")
        failure = bad or Outcome("system", "the block completed but did not commit its outputs")
        error = failure.error_json()
        log = process_log(self.store, job, culprit or ids[0])
        output = failure_output(log)
        if output is not None:  # the last words of the process (its log is bounded, kept in the cache)
            error.update(output=output, log=str(log))
        run.state.fail(job.name, error)
        run.emit(job.name, "failed", message=failure.message)
        return False

    def _publish(self, job: Job, ids: list[str], outcomes: list[Outcome]) -> Outcome | None:
        """Record where the job ran; in a sandboxed run, check its staged outputs into the cache."""
        staging = self.run.staging
        interpreter = environments.of(self.run.interpreters, job.name)
        self.run.state.runtime[job.name] = environments.runtime(
            job.environment, interpreter, self.group.interpreter(interpreter.key), staging is not None)
        reported = [reported_digests(o.statistics) for o in outcomes]  # (out of the statistics, sandboxed or not)
        refused = staging.publish_job(ids, reported) if staging is not None else None
        return Outcome("system", refused) if refused is not None else None


def _served(spec: BlockSpec) -> BlockSpec:
    """A served command's blocks start no early writeback (``cache/durability.py``; ``splitting.assemble``)."""
    return dataclasses.replace(spec, writeback=False) if exiting.answers_later() else spec
