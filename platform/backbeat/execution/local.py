"""Running a plan on this machine: cache reuse, locking, block processes, progress.

State of one run (:class:`Run`):

* ``status[job]`` — ``pending`` → (``waiting`` for another run's lock) → ``running`` →
  ``ran`` | ``failed``; or ``cached`` (outputs already committed); or ``skipped``
  (an upstream job failed);
* ``handles[job]`` — the fork-server handle of each running block process, and
  ``messages[job]`` the control messages it sent (start, progress, done, error);
* ``locks[job]`` — an exclusive ``fcntl`` lock on ``<cache>/.locks/<job key>`` held while
  the job runs, so that two runs sharing blocks never compute the same output twice at
  once: the second waits, then finds the output committed and reuses it;
* ``feeders[job]`` — for a job started together with its producer to read its output as it
  is written (:mod:`backbeat.streams`; eligibility: :func:`~backbeat.selection.stream_consumers`),
  the producer and the cancel file that tells the producer the job has ended; ``starved`` —
  such jobs killed because their producer failed (reported ``skipped``).  Streamed jobs do
  not count against ``jobs`` and their time limit starts when their producer ends.

Order of work: index the datasets that have no stored index (in block processes: views
are user code), compute the cache keys, mark jobs whose outputs are committed as cached,
verify the cache files that jobs about to run will read (a corrupted file is removed and
its producer re-run), then start every job whose inputs are ready, up to ``jobs`` at once.
Nothing is started after a failure; running jobs finish; the run reports ``failed``.
The fork server and the control socket are created only when something must run, so a
fully cached re-run starts no process at all.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbeat.cache.results import (  # noqa: F401  (re-exported: the executor's public API)
    cached_results,
    cachefile,
    drop_partial,
    index_path,
    output_path,
    read_result,
    read_results,
    remove_cache,
    report,
    scratch_cache,
    summary,
)
from backbeat.core.errors import ExecutionError, IntegrityError
from backbeat.declarations.catalog import Catalog
from backbeat.planning.planner import Job, Plan, assign_keys, plan
from backbeat.planning.selection import Options, ancestors, decide, descendants, stream_consumers  # noqa: F401

Progress = Callable[[dict], None]


@dataclass
class Run:
    plan: Plan
    prefix: Path
    cache: Path
    options: Options
    progress: Progress | None = None
    status: dict[str, str] = field(default_factory=dict)
    errors: dict[str, dict] = field(default_factory=dict)
    stats: dict[str, dict] = field(default_factory=dict)
    handles: dict[str, Any] = field(default_factory=dict)
    messages: dict[str, list] = field(default_factory=dict)
    locks: dict[str, int] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    slot_ranges: dict[str, list] = field(default_factory=dict)
    dataset_errors: dict[str, dict] = field(default_factory=dict)  # datasets whose view index failed
    killed: set[str] = field(default_factory=set)  # processes killed because their loop partner failed
    feeders: dict[str, tuple[str, str]] = field(default_factory=dict)  # streamed job -> (producer, cancel file)
    starved: set[str] = field(default_factory=set)  # streamed jobs killed because their producer failed
    catalog: Catalog | None = None  # the catalog the plan was made from (declarations validated once)
    _server: Any = None
    _control: Any = None
    _provider: Any = None
    _tmpdir: str | None = None

    def _catalog(self) -> Catalog:
        if self.catalog is None:
            self.catalog = Catalog(self.prefix)
        return self.catalog

    # -- infrastructure (created lazily: a cached run starts nothing) ----------------------
    def _infrastructure(self) -> None:
        if self._control is not None:
            return
        from backbeat.processes.control import ControlServer
        from backbeat.processes.workerpool import ForkServer

        if self._server is None:
            self._server = ForkServer().start()
        self._control = ControlServer()
        self._tmpdir = self._control.directory

    def _spawn(self, job_id: str, target: str, payload: dict, timed: bool = True) -> Any:
        """Start a process; ``timed=False``: its time limit starts later (``Handle.set_timeout``)."""
        from backbeat.processes.workerpool import Limits

        self._infrastructure()
        payload = dict(payload, target=target, control=self._control.address, job=job_id,
                       root=str(self.prefix.resolve()))
        limits = Limits(self.options.timeout_s if timed else None, self.options.memory_bytes)
        handle = self._server.spawn("backbeat.processes.control:job_main", payload, limits)
        self.handles[job_id] = handle
        self.messages[job_id] = []
        return handle

    def _collect(self, timeout_ms: int) -> None:
        """Take control messages for up to ``timeout_ms`` (less if a process exits meanwhile)."""
        wake = self._server.event_fd()
        for msg in self._control.poll(timeout_ms, wake):
            self.messages.setdefault(msg.job, []).append(msg)
            block, _, slot = msg.job.partition("#")
            if msg.type == "progress" and block in self.status:
                extra = {"slot": int(slot)} if slot else {}
                self._emit(block, "running", done=msg.data.get("done"), total=msg.data.get("total"), **extra)
        self._server.pump(0)

    def _wait(self, job_ids: list[str]) -> dict[str, Any]:
        """Wait until the given jobs end; return their outcomes."""
        from backbeat.processes.control import outcome

        results: dict[str, Any] = {}
        while len(results) < len(job_ids):
            self._collect(20)
            for j in job_ids:
                if j not in results:
                    exit_ = self.handles[j].poll()
                    if exit_ is not None:
                        self._collect(0)
                        results[j] = outcome(exit_, self.messages.get(j, []))
        return results

    def close(self) -> None:
        if self._provider is not None:
            self._provider.kill()
        if self._server is not None:
            self._server.close()  # kills every block process still running (e.g. on Ctrl-C)
        if self._control is not None:
            self._control.close()
        for ds in self.plan.datasets.values():  # an interrupted indexing job leaves its temporaries
            if ds.index_digest is None and self._server is not None:
                cachefile.remove_stale_temporaries(index_path(self.cache, ds.index_key))
        for job in self.plan.jobs:
            if self.status.get(job.name) == "running":  # interrupted: drop its partial files
                self.status[job.name] = "failed"
                self.errors.setdefault(job.name, {"kind": "interrupted", "message": "the run was interrupted",
                                                  "traceback": None})
                drop_partial(self.cache, job, job.nb_slots)
        for fd in self.locks.values():
            os.close(fd)
        self.locks.clear()

    def _emit(self, job: str, state: str, **extra: Any) -> None:
        if self.progress is not None:
            self.progress({"block": job, "state": state, **extra})

    # -- datasets -------------------------------------------------------------------------
    def dataset_spec(self, name: str) -> dict:
        ds = self.plan.datasets[name]
        catalog_files = self._catalog().prefix.locate("database", ds.database)
        return {
            "database": ds.database, "code": str(catalog_files.code(None)), "view": ds.view,
            "root_folder": ds.root_folder, "parameters": ds.view_parameters,
            "index_path": str(index_path(self.cache, ds.index_key)),
            "outputs": {o: [df, self.plan.expanded[df]] for o, df in ds.outputs.items()},
        }

    def index_datasets(self) -> None:
        from backbeat.data.dbindex import verified_digest

        todo = []
        for name, ds in self.plan.datasets.items():
            path = index_path(self.cache, ds.index_key)
            if path.is_file() and not self.options.force:
                ds.index_digest = verified_digest(path)
                if ds.index_digest is None:
                    self._emit(f"dataset {name}", "corrupt", message=f"view index `{path}' was damaged")
                    todo.append(name)
            else:
                todo.append(name)
        if not todo:
            return
        for name in todo:
            path = index_path(self.cache, self.plan.datasets[name].index_key)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._spawn(f"index:{name}", "backbeat.runtime.dbprovider:build_index", {"dataset": self.dataset_spec(name)})
        outcomes = self._wait([f"index:{n}" for n in todo])
        for name in todo:
            out = outcomes[f"index:{name}"]
            if out.ok and "digest" in out.statistics:
                self.plan.datasets[name].index_digest = out.statistics["digest"]
            else:
                ds = self.plan.datasets[name]
                index_path(self.cache, ds.index_key).unlink(missing_ok=True)
                hint = "" if not ds.root_folder or os.path.isdir(ds.root_folder) else (
                    f" (the root folder `{ds.root_folder}' of {ds.database} does not exist: set "
                    f"`database/{ds.database}' in .backbeatrc to where its data is)")
                self.dataset_errors[name] = {
                    "kind": out.kind if not out.ok else "system",
                    "message": f"database view `{ds.view}' of {ds.database} could not index set "
                               f"`{ds.protocol}/{ds.set}': {out.message}{hint}",
                    "traceback": out.traceback}

    # -- cache state ----------------------------------------------------------------------
    def _committed(self, job: Job) -> bool:
        return all(output_path(self.cache, o.key).is_file() for o in job.outputs.values())

    def _intact(self, job: Job) -> bool:
        """Verify a cached job's output files; remove corrupted ones (False if any was)."""
        ok = True
        for o in job.outputs.values():
            path = output_path(self.cache, o.key)
            if summary(path) is not None:  # verified before and unchanged since
                continue
            try:
                cachefile.verify(str(path))
            except (IntegrityError, OSError) as exc:
                self._emit(job.name, "corrupt", message=str(exc))
                path.unlink(missing_ok=True)
                ok = False
        return ok

    def _verify_inputs(self, to_run: set[str]) -> set[str]:
        """Verify cached files read by jobs that will run; return producers to re-run."""
        rerun: set[str] = set()
        jobs = {j.name: j for j in self.plan.jobs}
        for name in to_run:
            for inp in jobs[name].inputs.values():
                if inp.source != "block" or inp.node in to_run:
                    continue
                path = output_path(self.cache, inp.key)
                try:
                    cachefile.verify(str(path))
                except (IntegrityError, OSError) as exc:
                    self._emit(inp.node, "corrupt", message=str(exc))
                    path.unlink(missing_ok=True)
                    rerun.add(inp.node)
        return rerun

    def _lock(self, job: Job) -> bool:
        """Try to take the job's lock (non-blocking)."""
        lockdir = self.cache / ".locks"
        lockdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lockdir / job.key, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.locks[job.name] = fd
        return True

    def _unlock(self, name: str) -> None:
        fd = self.locks.pop(name, None)
        if fd is not None:
            os.close(fd)

    # -- blocks ---------------------------------------------------------------------------
    def block_payload(self, job: Job) -> dict:
        if job.kind == "loop":  # two processes and a loop channel: see _start_loop / loops.side_job
            raise ExecutionError(f"loop `{job.name}' can only run with the local executor (not as one remote or "
                                 f"Dask task): its processor and evaluator are two processes joined by a loop channel")
        catalog = self._catalog()
        algo = catalog.get("algorithm", job.algorithm)
        libraries = {}
        for lib_name, _h in job.libraries:
            lib = catalog.get("library", lib_name)
            libraries[lib_name] = [str(lib.code_path), dict(lib.declaration.get("uses") or {})]
        formats = {i.dataformat: self.plan.expanded[i.dataformat] for i in job.inputs.values()}
        formats.update({o.dataformat: self.plan.expanded[o.dataformat] for o in job.outputs.values()})
        inputs = {}
        for name, inp in job.inputs.items():
            spec = {"channel": inp.channel, "dataformat": inp.dataformat}
            if inp.source == "dataset":
                ds_df = self.plan.datasets[inp.node].outputs[inp.output]
                formats[ds_df] = self.plan.expanded[ds_df]
                spec.update(source="database", dataset=inp.node, output=inp.output, dataformat=ds_df)
            else:
                # an output committed by this very run (its digest computed as it was written,
                # moments ago) is not re-hashed on open; anything older is verified
                spec.update(source="cache", path=str(output_path(self.cache, inp.key)),
                            verify=self.status.get(inp.node) != "ran")
            inputs[name] = spec
        from backbeat.declarations.algorithm import Algorithm

        a = Algorithm(algo)
        return {
            "block": {"name": job.name, "kind": job.kind, "algorithm": job.algorithm, "type": a.type,
                      "channel": job.channel, "values": job.values},
            "code": {"algorithm": str(algo.code_path), "uses": a.uses, "libraries": libraries},
            "inputs": inputs,
            "outputs": {n: {"dataformat": o.dataformat, "key": o.key, "path": str(output_path(self.cache, o.key))}
                        for n, o in job.outputs.items()},
            "formats": formats,
            # the provider's address is filled in where the block starts (True: one is needed)
            "database": True if any(i.source == "dataset" for i in job.inputs.values()) else None,
            "window": self.options.window,
        }

    def _provider_address(self) -> str:
        if self._provider is None:
            self._infrastructure()
            address = f"ipc://{self._tmpdir}/database"
            specs = {name: self.dataset_spec(name) for name in self.plan.datasets}
            self._provider = self._spawn("database-provider", "backbeat.runtime.dbprovider:serve",
                                         {"address": address, "datasets": specs})
            self._provider_addr = address
        return self._provider_addr

    def decide(self) -> dict[str, tuple[str, str]]:
        """``{job: (action, reason)}``: action ``run``, ``cached`` or ``excluded``."""
        blocked = {j.name for j in self.plan.jobs if not j.key}  # downstream of an unindexable dataset
        committed = {j.name: j.name not in blocked and self._committed(j) for j in self.plan.jobs}
        for job in self.plan.jobs:  # cached analyzer results are read at the end: verify them now
            if job.kind == "analyzer" and committed[job.name] and not self._intact(job):
                committed[job.name] = False
        decisions = decide(self.plan, committed, self.options)
        for name in blocked:
            decisions[name] = ("blocked", "a dataset it needs could not be indexed")
        to_run = {n for n, (a, _r) in decisions.items() if a == "run"}
        while True:  # re-run producers of corrupted files (and everything downstream of them)
            extra = self._verify_inputs(to_run) - to_run
            if not extra:
                return decisions
            for n in extra:
                decisions[n] = ("run", "its cached output is corrupted")
            to_run |= extra
            for n in descendants(self.plan, extra):
                if n not in to_run and decisions[n][0] != "excluded":
                    decisions[n] = ("run", "an upstream output is re-computed")
                    to_run.add(n)

    def execute(self) -> None:
        jobs = {j.name: j for j in self.plan.jobs}
        decisions = self.decide()
        for name, job in jobs.items():
            action, reason = decisions[name]
            self.status[name] = {"run": "pending", "cached": "cached", "excluded": "excluded",
                                 "blocked": "skipped"}[action]
            if action == "cached":
                self._emit(name, "cached")
            failed_ds = [i.node for i in job.inputs.values() if i.source == "dataset" and i.node in self.dataset_errors]
            if failed_ds:
                self.status[name] = "failed"
                error = self.dataset_errors[failed_ds[0]]
                if "reported_by" in error:  # said once, with its traceback, by the first block reading it
                    self.errors[name] = {"kind": error["kind"], "message": f"its dataset `{failed_ds[0]}' could "
                                         f"not be indexed (see block `{error['reported_by']}')"}
                else:
                    self.errors[name] = {k: v for k, v in error.items() if k != "reported_by"}
                    error["reported_by"] = name
                self._emit(name, "failed", message=self.errors[name]["message"])
        limit = self.options.jobs or os.cpu_count() or 1
        failed = False
        procs: dict[str, list[str]] = {}  # running job -> its process ids (one per slot)

        while True:
            pending = [n for n in jobs if self.status[n] in ("pending", "waiting")]
            if not procs and (failed or not pending):
                break
            for name in pending:
                # streamed jobs keep pace with their producer: they do not count against the limit
                if failed or sum(len(p) for n, p in procs.items() if n not in self.feeders) >= limit:
                    break
                if self.status[name] not in ("pending", "waiting"):
                    continue  # started meanwhile, as the consumer of a stream
                job = jobs[name]
                if any(self.status[d] in ("failed", "skipped") for d in job.depends):
                    continue
                if not all(self.status[d] in ("ran", "cached") for d in job.depends):
                    continue
                if not self._lock(job):
                    if self.status[name] != "waiting":
                        self.status[name] = "waiting"
                        self._emit(name, "waiting")
                    continue
                if not self.options.force and self._committed(job):
                    self._unlock(name)  # another run computed it meanwhile
                    self.status[name] = "cached"
                    self._emit(name, "cached")
                    continue
                self.status[name] = "running"
                self.started[name] = time.perf_counter()
                self._emit(name, "running", done=0, total=None)
                procs.update(self._start(job))
            if not procs:
                if any(self.status[n] == "waiting" for n in jobs):
                    time.sleep(0.05)
                    continue
                break
            self._collect(20)
            for name in list(procs):
                exits = [self.handles[p].poll() for p in procs[name]]
                if jobs[name].kind == "loop" and any(e is not None and not e.ok for e in exits):
                    for p, e in zip(procs[name], exits, strict=True):  # one side failed: stop the other
                        if e is None:
                            self.killed.add(p)
                            self.handles[p].kill()
                if any(e is None for e in exits):
                    continue
                self._collect(0)
                if not self._finish(jobs[name], procs.pop(name), exits):
                    failed = True
                    self._starve(name, procs)
                elif name in self.starved:  # and so are the jobs it was feeding
                    self._starve(name, procs)
        for name in jobs:
            if self.status[name] in ("pending", "waiting", "excluded"):
                self.status[name] = "skipped"
                self._emit(name, "skipped")

    def _start(self, job: Job, fed: dict[str, str] | None = None) -> dict[str, list[str]]:
        """Spawn the job's block process(es) — one, or one per slot for a split block — and
        the consumers it streams to (``{job: process ids}``).  ``fed``: the job's inputs that
        are streamed to it (input name → address)."""
        for o in job.outputs.values():  # left by a writer killed with an earlier run (kill -9)
            cachefile.remove_stale_temporaries(output_path(self.cache, o.key))
        if job.kind == "loop":
            return {job.name: self._start_loop(job)}
        payload = self.block_payload(job)
        for inp, address in (fed or {}).items():
            payload["inputs"][inp] = dict(payload["inputs"][inp], source="stream", address=address)
        if payload["database"]:
            payload["database"] = self._provider_address()
        ranges = self._slots(job, payload) if job.nb_slots > 1 and job.kind == "block" and not fed else []
        if len(ranges) <= 1:
            consumers = self._consumers(job)
            for _cons, _inp, out, address, cancel in consumers:
                payload["outputs"][out].setdefault("streams", []).append({"address": address, "cancel": cancel})
            # a streamed job's time limit starts when its producer has ended (see _finish)
            self._spawn(job.name, "backbeat.runtime.blockrun:run", payload, timed=not fed)
            started = {job.name: [job.name]}
            for cons, inp, _out, address, cancel in consumers:
                self.feeders[cons.name] = (job.name, cancel)
                self.status[cons.name] = "running"
                self.started[cons.name] = time.perf_counter()
                self._emit(cons.name, "running", done=0, total=None)
                started.update(self._start(cons, {inp: address}))
            return started
        ids = []
        for k, (s, e) in enumerate(ranges):
            slot = dict(payload, range=[s, e], slot=k)
            slot["outputs"] = {n: dict(o, path=f"{o['path']}.slot{k}") for n, o in payload["outputs"].items()}
            pid = f"{job.name}#{k}"
            self._spawn(pid, "backbeat.runtime.blockrun:run", slot)
            ids.append(pid)
        self.slot_ranges[job.name] = ranges
        return {job.name: ids}

    def _consumers(self, job: Job) -> list[tuple[Job, str, str, str, str]]:
        """The pending jobs that will read ``job``'s output while it is written (streams):
        ``[(consumer, its input, job's output, address, cancel file)]`` (see
        :func:`backbeat.selection.stream_consumers`); their locks are taken here."""
        if not self.options.stream or self.options.jobs == 1:  # -j 1: one block process at a time
            return []
        from backbeat.declarations.algorithm import Algorithm

        def algorithm_type(name: str) -> str:
            return Algorithm(self._catalog().get("algorithm", name)).type

        found = []
        for cons, inp, out in stream_consumers(self.plan, job.name, self.status, algorithm_type):
            if not self._lock(cons):
                continue
            if not self.options.force and self._committed(cons):
                self._unlock(cons.name)  # another run computed it meanwhile: the main loop reuses it
                continue
            self._infrastructure()  # the run's private directory holds the stream sockets
            n = len(self.feeders) + len(found)
            found.append((cons, inp, out, f"ipc://{self._tmpdir}/stream{n}",
                          os.path.join(self._tmpdir, f"stream{n}.gone")))
        return found

    def _starve(self, producer: str, procs: dict[str, list[str]]) -> None:
        """Kill the running consumers of a failed producer's streams (they become skipped)."""
        for cons, (prod, _cancel) in self.feeders.items():
            if prod == producer and cons in procs and cons not in self.starved:
                self.starved.add(cons)
                for pid in procs[cons]:
                    self.handles[pid].kill()

    def _start_loop(self, job: Job) -> list[str]:
        """Spawn a loop's evaluator (``#0``, binds the loop channel) and processor (``#1``)."""
        from backbeat.planning.loops import side_payloads

        self._infrastructure()
        address = f"ipc://{self._tmpdir}/loop{[j.name for j in self.plan.jobs].index(job.name)}"
        ids = []
        for k, payload in enumerate(side_payloads(self, job, address)):
            self._spawn(f"{job.name}#{k}", "backbeat.runtime.blockrun:run", payload)
            ids.append(f"{job.name}#{k}")
        return ids

    def _slots(self, job: Job, payload: dict) -> list[tuple[int, int]]:
        """Split ranges of a splittable block over the units of its synchronisation channel."""
        from backbeat.declarations.algorithm import Algorithm
        from backbeat.execution.splitting import payload_slots

        if not Algorithm(self._catalog().get("algorithm", job.algorithm)).splittable:
            return []
        return payload_slots(payload, job.channel, job.nb_slots)

    def _finish(self, job: Job, ids: list[str], exits: list) -> bool:
        """Classify the ended process(es) of a job, assemble split outputs; False on failure."""
        from backbeat.processes.control import outcome

        self._unlock(job.name)
        wall = time.perf_counter() - self.started[job.name]
        if self.options.timeout_s:  # the consumers of its streams now run on their own
            for cons, (prod, _cancel) in self.feeders.items():
                if prod == job.name and cons in self.handles:
                    self.handles[cons].set_timeout(self.options.timeout_s)
        if job.name in self.feeders:  # a consumer has ended: its producer stops feeding it
            Path(self.feeders[job.name][1]).touch()
        if job.name in self.starved:  # killed because the producer it read from failed
            drop_partial(self.cache, job, 0)
            self.status[job.name] = "skipped"
            self._emit(job.name, "skipped")
            return True
        outcomes = [outcome(e, self.messages.get(p, [])) for p, e in zip(ids, exits, strict=True)]
        bad = next((o for p, o in zip(ids, outcomes, strict=True) if not o.ok and p not in self.killed),
                   next((o for o in outcomes if not o.ok), None))
        if bad is None and len(ids) > 1 and job.kind != "loop":
            try:
                self._assemble(job, len(ids))
            except Exception as exc:  # noqa: BLE001 - reported as the block's failure
                from backbeat.processes.control import Outcome

                bad = Outcome("system", f"cannot assemble the outputs of the split block: {exc}")
        if bad is None and self._committed(job):
            self.status[job.name] = "ran"
            stats = outcomes[0].statistics if len(ids) == 1 else {"slots": [o.statistics for o in outcomes]}
            rss = [e.rusage.get("maxrss_kb", 0) for e in exits if getattr(e, "rusage", None)]
            self.stats[job.name] = dict(stats, wall_s=wall, **({"max_rss_mb": max(rss) / 1024} if rss else {}))
            if job.name in self.feeders:
                self.stats[job.name]["streamed_from"] = self.feeders[job.name][0]
            self._emit(job.name, "done", wall_s=wall)
            return True
        # a killed writer leaves its temporary file; a loop node is all or nothing (drop the side that committed)
        drop_partial(self.cache, job, len(ids) if len(ids) > 1 else 0, committed=job.kind == "loop")
        self.status[job.name] = "failed"
        message = bad.message if bad is not None else "the block completed but did not commit its outputs"
        kind = bad.kind if bad is not None else "system"
        self.errors[job.name] = {"kind": kind, "message": message, "traceback": bad.traceback if bad else None}
        self._emit(job.name, "failed", message=message)
        return False

    def _assemble(self, job: Job, n: int) -> None:
        """Concatenate the slot files of each output into the single cache entry."""
        from backbeat.execution.splitting import assemble

        ranges = self.slot_ranges[job.name]
        for o in job.outputs.values():
            final = output_path(self.cache, o.key)
            assemble([f"{final}.slot{k}" for k in range(n)], final, o.dataformat, self.plan.expanded[o.dataformat],
                     o.key, ranges[0][0], ranges[-1][1])

def prepare(prefix: str | os.PathLike, cache: str | os.PathLike, name: str,
            options: Options | None = None, progress: Progress | None = None, warm: bool = False) -> Run:
    """Plan an experiment and index its datasets (keys assigned), ready to execute.

    With ``warm``, the fork server is started first, so that its zygote imports numpy,
    h5py and zmq on the other core while this process plans (a cached run just closes it).
    """
    server = None
    if warm:
        from backbeat.processes.workerpool import ForkServer

        server = ForkServer().start()
    catalog = Catalog(prefix)
    try:
        p = plan(catalog, name)
    except BaseException:
        if server is not None:
            server.close()
        raise
    run = Run(p, Path(prefix), Path(cache), options or Options(), progress, catalog=catalog)
    run._server = server
    try:
        run.index_datasets()
        assign_keys(p)
    except BaseException:
        run.close()
        raise
    return run


def run_experiment(prefix: str | os.PathLike, cache: str | os.PathLike, name: str,
                   options: Options | None = None, progress: Progress | None = None) -> dict:
    """Run an experiment; return the JSON-able report of ``backbeat experiments run --json``."""
    from backbeat.provenance import records as provenance

    run = prepare(prefix, cache, name, options, progress, warm=True)
    try:
        run.execute()
    finally:
        run.close()
    rep = report(run)
    rep["provenance"] = str(provenance.write(run, rep))
    return rep


def dry_run(prefix: str | os.PathLike, cache: str | os.PathLike, name: str,
            options: Options | None = None) -> dict:
    """The plan of a run without running any block: each job's action, reason and key.

    Dataset views whose index is missing are indexed first (their content enters the keys).
    """
    run = prepare(prefix, cache, name, options)
    try:
        decisions = run.decide()
    finally:
        run.close()
    return {
        "experiment": run.plan.experiment,
        "blocks": {
            j.name: {"action": decisions[j.name][0], "reason": decisions[j.name][1], "key": j.key,
                     "algorithm": j.algorithm, "depends": j.depends}
            for j in run.plan.jobs
        },
    }
