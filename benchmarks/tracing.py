"""Span tracing of one backbeat CLI run, in every process it starts (used by fixed_cost.py).

``python benchmarks/tracing.py SPANS_DIR [--cprofile FILE] [--cprofile-jobs JOB,... PREFIX] -- ARGS...`` runs
``backbeat BACKBEAT-ARGS`` in this process (``backbeat.cli.command``) after wrapping the
functions listed in :data:`TARGETS` with timers.  A wrapper records a *span* — label,
process, start and end (``time.perf_counter``: ``CLOCK_MONOTONIC``, comparable across
processes), nesting depth — kept in memory and written to ``SPANS_DIR/<pid>.jsonl`` when the
process's work ends; so the fork server's zygote and the block processes it forks (children
of this process that inherit the wrappers, and leave through ``os._exit``) are traced too.  A target is wrapped
when its module is imported (an import hook), in whichever process imports it, so the
tracing does not change what is imported where or when.  A target that no longer exists
(the code changed) is skipped and recorded as a ``missing target`` instant.

Besides spans, *instants* are recorded: the zygote's start and ``ready``, each fork-server
event the parent receives (``spawned``, ``exit`` with the child's CPU rusage).  The first
line of this file records ``first_line`` (interpreter start is measured by the caller).
Only the standard library is imported before the run starts.  ``--cprofile FILE`` profiles the
CLI process (then no timers are installed); ``--cprofile-jobs`` profiles the named block
processes' jobs (``PREFIX.JOB.pstats``).
"""

from __future__ import annotations

import time

T_FIRST = time.perf_counter()

import functools  # noqa: E402
import importlib  # noqa: E402
import importlib.abc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

#: (module, qualified name, label).  Order does not matter; nesting is recorded at run time.
TARGETS = [
    # the CLI process
    ("backbeat.core.config", "load", "configuration (.backbeatrc)"),
    ("backbeat.cli.command", "build_parser", "argument parser"),
    ("backbeat.execution.base", "prepare", "prepare: plan + index datasets"),
    ("backbeat.processes.workerpool", "ForkServer.start", "fork server: start (fork the zygote)"),
    ("backbeat.execution.workspace", "Workspace.open", "workspace: open prefix and cache"),
    ("backbeat.declarations.catalog", "Catalog.__init__", "catalog: open prefix"),
    ("backbeat.planning.planner", "plan", "plan: validate + resolve the experiment"),
    ("backbeat.declarations.catalog", "Catalog.get", "catalog.get (load, validate, hash an asset)"),
    ("backbeat.execution.views", "index_datasets", "index datasets"),
    ("backbeat.cache.store", "CacheStore.verified_index_digest", "verify stored view index"),
    ("backbeat.planning.model", "assign_keys", "assign keys"),
    ("backbeat.execution.base", "decide", "decide (cached or not)"),
    ("backbeat.execution.decisions", "_corrupted_inputs", "verify cached inputs"),
    ("backbeat.execution.local", "LocalExecutor.execute", "execute"),
    ("backbeat.execution.scheduler", "Scheduler._start", "start a job"),
    ("backbeat.execution.scheduler", "Scheduler._spec", "block spec"),
    ("backbeat.execution.scheduler", "Scheduler._consumers", "find stream consumers"),
    ("backbeat.planning.selection", "stream_consumers", "selection.stream_consumers"),
    ("backbeat.execution.scheduler", "Scheduler._lock", "take job lock"),
    ("backbeat.execution.scheduler", "Scheduler._provider_address", "start database provider"),
    ("backbeat.cache.store", "CacheStore.drop_partial", "drop stale temporaries (scan the folder)"),
    ("backbeat.cache.store", "CacheStore.committed", "committed? (stat the outputs)"),
    ("backbeat.processes.workerpool", "ForkServer.spawn", "fork server: spawn request"),
    ("backbeat.processes.workerpool", "ForkServer._request", "socket sendall to zygote"),
    ("backbeat.processes.workerpool", "ForkServer.wait_ready", "wait for zygote ready"),
    ("backbeat.processes.control", "ControlServer.__init__", "control socket: bind"),
    ("backbeat.processes.group", "ProcessGroup.poll", "poll control messages (waiting)"),
    ("backbeat.execution.scheduler", "Scheduler._finish", "finish a job (classify, stats)"),
    ("backbeat.execution.scheduler", "Scheduler._close", "scheduler: close"),
    ("backbeat.execution.state", "Run.close", "close (fork server, control)"),
    ("backbeat.processes.workerpool", "ForkServer.close", "fork server: close"),
    ("backbeat.execution.report", "report", "report"),
    ("backbeat.execution.report", "read_results", "read analyzer results"),
    ("backbeat.execution.base", "record", "provenance: write record"),
    ("backbeat.cache.durability", "Durability.wait", "wait until the outputs are durable (fsync)"),
    ("backbeat.provenance.records", "history", "provenance: read history"),
    ("backbeat.provenance.builder", "used_assets", "provenance: used assets"),
    ("backbeat.provenance.builder", "asset_entry", "provenance: asset entry (load, hash)"),
    ("backbeat.provenance.builder", "environment", "provenance: environment (package versions)"),
    ("backbeat.provenance.builder", "output_digest", "provenance: digest stored in an output (h5py)"),
    ("backbeat.core.statmemo", "StatMemo.flush", "stat memo: write rows"),
    ("backbeat.provenance.manifests", "resolve", "data manifest of a stored view index (stat memo)"),
    ("backbeat.cache.store", "CacheStore.flush", "stat memo: write what was learnt"),
    ("backbeat.provenance.records", "store", "provenance: store record"),
    ("backbeat.cli.output", "print_json", "print JSON report"),
    # the zygote
    ("backbeat.processes.zygote", "Zygote.spawn", "zygote: fork a child"),
    ("backbeat.processes.zygote", "_fresh_random_state", "zygote: numpy entropy init"),
    # every child
    ("backbeat.processes.zygote", "child_setup", "child: setup (signals, limits, fds)"),
    ("backbeat.processes.control", "run_job", "child: job"),
    ("backbeat.processes.control", "ControlClient.__init__", "child: control connect"),
    ("backbeat.processes.control", "ControlClient.start", "child: send start message"),
    ("backbeat.processes.control", "ControlClient.close", "child: control close (wait ack)"),
    ("backbeat.runtime.blockrun", "run", "block: run"),
    ("backbeat.runtime.compat", "install_beat_aliases", "block: beat aliases"),
    ("backbeat.runtime.blockrun", "_algorithm_class", "block: load algorithm code"),
    ("backbeat.data.cachereader", "CacheReader.__init__", "block: open cache input (verify)"),
    ("backbeat.runtime.streams", "StreamSource.__init__", "block: connect stream input"),
    ("backbeat.runtime.dbprovider", "DatabaseClient.__init__", "block: connect database provider"),
    ("backbeat.data.cachewriter", "CacheWriter.__init__", "block: open cache writer (h5 create)"),
    ("backbeat.runtime.streams", "StreamSender.__init__", "block: bind stream output"),
    ("backbeat.runtime.driver", "count_steps", "block: count steps"),
    ("backbeat.runtime.driver", "run_algorithm", "block: drive the algorithm"),
    ("backbeat.data.cachewriter", "CacheWriter.close", "block: commit output (digest, fsync, rename)"),
    ("backbeat.runtime.streams", "StreamSender.acks", "block: stream end handshake (acks)"),
    ("backbeat.runtime.dbprovider", "build_index", "index job: build view index"),
    ("backbeat.data.indextable", "write_index", "index job: write the JSON index and its table"),
    ("backbeat.runtime.dbprovider", "_Dataset.probe", "index job: probe every unit (get, files read)"),
    ("backbeat.runtime.dbprovider", "serve", "database provider: serve"),
]
#: modules whose whole import is a span ("import NAME") wherever it happens (heavy, or lazily imported)
IMPORTS = ("numpy", "h5py", "zmq", "distributed", "jinja2", "backbeat.data.cachewriter", "backbeat.runtime.blockrun")

_DIR = ""
_STACK: list[str] = []
_NAME = "main"
_ZYGOTE = 0  # the zygote's pid (in the zygote and its children)


_BUF: list[str] = []
_BUF_PID = 0


def _write(record: dict) -> None:
    """Keep a record in memory (written by :func:`flush`: at the end of the run, of a child's
    job, of the zygote), so tracing costs no file I/O while the run goes."""
    global _BUF_PID
    if os.getpid() != _BUF_PID:  # a forked child: its parent's records are not its own
        _BUF.clear()
        _BUF_PID = os.getpid()
    record.setdefault("pid", os.getpid())
    record.setdefault("proc", _NAME)
    _BUF.append(json.dumps(record))


def flush() -> None:
    if _BUF and os.getpid() == _BUF_PID:
        with open(os.path.join(_DIR, f"{os.getpid()}.jsonl"), "a") as f:
            f.write("\n".join(_BUF) + "\n")
        _BUF.clear()


def instant(label: str, **extra: Any) -> None:
    _write({"label": label, "t": time.perf_counter(), **extra})


def _cpu() -> float:
    """CPU seconds of this process (since its fork, for a forked child)."""
    return time.process_time()


def _job_of(label: str, args: tuple) -> str | None:
    """The job a spawn is for (parent: ``spawn(target, payload)``; zygote: ``spawn(request)``)."""
    if label == "fork server: spawn request" and len(args) > 2 and isinstance(args[2], dict):
        return str(args[2].get("job"))
    if label == "zygote: fork a child" and len(args) > 1 and isinstance(args[1], dict):
        return str((args[1].get("payload") or {}).get("job"))
    return None


class _TracedImportlib:
    """Stands for ``importlib`` in the module that imports a job's target (a span per import)."""

    def __init__(self, label: str):
        self.import_module = _wrap(importlib.import_module, label)

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib, name)


def _wrap(fn: Any, label: str) -> Any:
    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        global _NAME
        if label == "child: job" and len(args) > 1 and isinstance(args[1], dict) and os.getpid() != _ZYGOTE:
            _NAME = str(args[1].get("job", "child"))  # (the zygote's own rehearsals stay the zygote's spans)
        if label in _STACK:  # recursion: only the outermost call is a span
            return fn(*args, **kwargs)
        job = _job_of(label, args)
        depth = len(_STACK)
        _STACK.append(label)
        c0 = time.process_time()
        t0 = time.perf_counter()
        profiler = None
        if label == "child: job" and _NAME in _PROFILE_JOBS:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(f"{_PROFILE_JOBS[_NAME]}")
            t1 = time.perf_counter()
            _STACK.pop()
            rec = {"label": label, "t0": t0, "t1": t1, "depth": depth, "c": time.process_time() - c0}
            if job is not None:
                rec["job"] = job
            if label == "child: job":
                rec["cpu"] = _cpu()
            _write(rec)
            if label == "child: job":  # the child leaves through os._exit right after
                flush()

    return traced


_PROFILING = False  # under cProfile: no timers (their cost would show), only the process hooks
_PROFILE_JOBS: dict[str, str] = {}  # job -> file: that child process's job runs under cProfile


def _patch(module: Any) -> None:
    for mod, qualname, label in [] if _PROFILING else TARGETS:
        if mod != module.__name__:
            continue
        owner, *path = [module, *qualname.split(".")]
        try:
            for part in path[:-1]:
                owner = getattr(owner, part)
            fn = getattr(owner, path[-1])
        except AttributeError:
            instant("missing target", target=f"{mod}:{qualname}")
            continue
        setattr(owner, path[-1], _wrap(fn, label))
    hook = _HOOKS.get(module.__name__)
    if hook is not None:
        hook(module)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: Any):
        self.inner = inner

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        if module.__name__ in IMPORTS and not _PROFILING:
            _wrap(self.inner.exec_module, f"import {module.__name__}")(module)
        else:
            self.inner.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of every module named in TARGETS so it is patched once executed."""

    names = {m for m, _, _ in TARGETS} | {"backbeat.processes.zygote", "backbeat.processes.workerpool"} | set(IMPORTS)

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.names:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


def _zygote_hook(zygote: Any) -> None:
    """Name the zygote's spans; record its start and ``ready`` instants."""
    cls = getattr(zygote, "Zygote", None) or getattr(zygote, "_Zygote", None)
    if cls is None:
        instant("missing target", target="backbeat.processes.zygote:Zygote")
        return
    main, send = cls.main, cls.send

    def traced_main(self: Any) -> None:
        global _NAME, _ZYGOTE
        _NAME, _ZYGOTE = "zygote", os.getpid()
        sys.setprofile(None)  # forked from a parent run under cProfile: profile the parent only
        _STACK.clear()  # forked inside the parent's ForkServer.start span
        instant("zygote: started")
        main(self)

    def traced_send(self: Any, event: dict) -> None:
        if event.get("ev") == "ready":
            instant("zygote: ready (preload imported)")
        send(self, event)

    shutdown = cls.shutdown

    def traced_shutdown(self: Any, code: int) -> None:
        instant("zygote: shutdown")
        flush()
        shutdown(self, code)

    cls.main, cls.send, cls.shutdown = traced_main, traced_send, traced_shutdown


def _workerpool_hook(workerpool: Any) -> None:
    """Record each fork-server event the parent receives (child exits carry their rusage)."""
    event = workerpool.ForkServer._event

    def traced_event(self: Any, ev: dict) -> None:
        if _NAME == "main" and not _PROFILING:
            instant(f"parent: zygote event {ev.get('ev')}", id=ev.get("id"), rusage=ev.get("rusage"))
        event(self, ev)

    workerpool.ForkServer._event = traced_event


def _control_hook(control: Any) -> None:
    """A span for the import of each job's target module in the child (``run_job``)."""
    if hasattr(control, "importlib"):
        control.importlib = _TracedImportlib("child: import job target module")


_HOOKS: dict[str, Any] = {"backbeat.processes.zygote": _zygote_hook, "backbeat.processes.workerpool": _workerpool_hook,
          "backbeat.processes.control": _control_hook}


def main(argv: list[str]) -> int:
    global _DIR, _PROFILING
    _DIR = argv[0]
    profile_to = None
    rest = argv[1:]
    if rest[:1] == ["--cprofile"]:
        profile_to, rest, _PROFILING = rest[1], rest[2:], True
    if rest[:1] == ["--cprofile-jobs"]:  # JOB,JOB PREFIX: those block processes under cProfile
        _PROFILE_JOBS.update({job: f"{rest[2]}.{job}.pstats" for job in rest[1].split(",")})
        rest = rest[3:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    os.makedirs(_DIR, exist_ok=True)
    instant("first line", t=T_FIRST)
    sys.meta_path.insert(0, _Finder())
    c0, t0 = _cpu(), time.perf_counter()
    cli_main = importlib.import_module("backbeat.cli.command")  # what the `backbeat` script imports first

    _write({"label": "import backbeat.cli", "t0": t0, "t1": time.perf_counter(), "depth": 0, "c": _cpu() - c0})
    sys.argv[0] = "backbeat"
    # each wrapper adds a frame, and Run._start recurses once per block of a streamed chain
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
    profiler = None
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()  # wall clock (a CPU clock would cost more than most functions)
    c0, t0 = _cpu(), time.perf_counter()
    try:
        if profiler is not None:
            profiler.enable()
        code = cli_main.main(rest)
    finally:
        if profiler is not None and profile_to is not None:
            profiler.disable()
            profiler.dump_stats(profile_to)
        _write({"label": "backbeat.cli.command", "t0": t0, "t1": time.perf_counter(), "depth": 0, "c": _cpu() - c0,
                "cpu": _cpu()})
    sys.stdout.flush()
    with open(os.path.join(_DIR, "modules.json"), "w") as f:
        json.dump(sorted(n for n in sys.modules if not n.startswith("_")), f)
    instant("main returned")
    flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
