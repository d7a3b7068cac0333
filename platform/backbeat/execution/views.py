"""Running database views: indexing jobs and the database provider, in a run's process group.

Views are user code, so they never run in the executor's process.  :func:`index_datasets`
gives every dataset of a run its view index digest and its data digest
(:mod:`backbeat.provenance.manifests`): a dataset whose index is in the cache with its
record of the files the view read is checked without running the view — the files are
``stat``ed (the stat memo hashes only those that changed) and the digest of the data as it
is now enters the keys; a dataset never indexed, whose index is damaged or lacks that
record, or one of whose files read by ``index()`` changed, is (re-)indexed in a block
process (which also reads every unit once, so the files ``get()`` reads are known too).
Files the provider saw the view open beyond the manifest (its journal) are added to the
manifest first.  A view that fails to index fails the blocks that read it (with the user's
traceback), and only those.  The datasets to index are indexed side by side, each in its own
process, up to ``-j`` at a time (each holds its whole index while it builds it); an executor
that indexes them itself (as tasks: the Dask executor) gets them back (``defer``).  Whoever
runs it, an indexing job begins with :func:`begin_index` — the files it may leave go to the
run's journal (a ``kill -9`` leaves no temporary for good), a cache that cannot be written
(full, read-only) is the dataset's system error, which keeps any index already there — and
ends with :func:`record_index`.  Each indexing job writes its output to its log in the cache
(``<index key>.log``).
:func:`start_provider` starts the database provider
(:func:`backbeat.runtime.dbprovider.serve`) that serves dataset outputs to block processes.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from backbeat.core.errors import DataError, IntegrityError, describe_environmental, environmental
from backbeat.data import indexfiles
from backbeat.execution.logs import provider_key
from backbeat.execution.state import Run
from backbeat.planning.model import Dataset
from backbeat.processes.group import ProcessGroup
from backbeat.processes.outcome import Outcome
from backbeat.provenance import manifests

if TYPE_CHECKING:
    from backbeat.execution.specs import SpecBuilder
    from backbeat.runtime.spec import DatasetSpec

INDEX_TARGET = "backbeat.runtime.dbprovider:build_index"
PROVIDER_TARGET = "backbeat.runtime.dbprovider:serve"
PROVIDER_JOB = "database-provider"


def _learn(run: Run, ds: Dataset) -> None:
    """Add the files the provider saw the view open beyond its manifest (the journal) to it."""
    store = run.store
    journal = Path(f"{store.index_path(ds.index_key)}.journal")
    rec = store.index_record(ds.index_key)
    if rec is None or not journal.is_file():
        return
    taken = journal.with_name(f"{journal.name}.{os.getpid()}")
    try:
        os.replace(journal, taken)
        seen = {}
        for line in taken.read_text(encoding="utf-8").splitlines():
            e = json.loads(line)
            seen[e["label"]] = {"kind": e.get("kind", "file"), "phase": "get", "stat": None}
        where = manifests.folders(run.catalog, ds.database, ds.root_folder)
        stored = manifests.load(store, rec["manifest"])
        extra = manifests.current({"files": {k: v for k, v in seen.items() if v["kind"] == "file"},
                                   "folders": {k: v for k, v in seen.items() if v["kind"] == "folder"}},
                                  where, store.memo)
        store.set_index_record(ds.index_key, rec["index_digest"],
                               manifests.store_manifest(store, manifests.merge(stored, extra)))
        run.emit(f"dataset {ds.name}", "learnt", message=f"the view read {len(seen)} file(s) it had not read when "
                 f"indexed (e.g. {manifests.describe_label(next(iter(seen)))}): they now enter its keys")
    except (OSError, ValueError, KeyError, DataError):
        pass
    finally:
        taken.unlink(missing_ok=True)


def index_datasets(run: Run, rebuild: bool | None = None, defer: bool = False) -> list[str]:
    """Give every dataset of the run its index and data digests; failures go to
    ``run.state.dataset_errors``.

    ``rebuild`` (default: ``--force``): index again even the datasets whose index is stored.
    The datasets that need their view run are indexed here, side by side, up to ``-j`` at a
    time (one block process each), unless ``defer``: they are then returned, for the executor
    to index (as tasks, :func:`begin_index` and :func:`record_index`) while blocks that do not
    read them run.
    """
    store = run.store
    todo = []
    rebuild = run.options.force if rebuild is None else rebuild
    for name, ds in run.plan.datasets.items():
        if rebuild:
            todo.append(name)
            continue
        _learn(run, ds)
        why, _now = manifests.resolve(store, run.catalog, ds)
        if why is None:
            continue
        if store.index_path(ds.index_key).is_file():
            run.emit(f"dataset {name}", "reindex", message=why)
        todo.append(name)
    if todo and not defer:
        _index(run, todo)
    store.flush()
    return todo if defer else []


def begin_index(run: Run, name: str, builder: SpecBuilder | None = None,
                cores: int = 0) -> tuple[DatasetSpec, Path] | None:
    """Begin indexing dataset ``name`` (in a local process or as a task): note its files in the
    run's journal and give the spec of its indexing job (that may use ``cores`` cores: its
    ``-j`` slots) and the file that job writes what its view opened to (in a sandboxed run, both
    in its staging folder).  None when the cache cannot be written (full, read-only): the
    dataset's error is then in ``run.state.dataset_errors``."""
    from backbeat.execution.specs import SpecBuilder  # (not imported by a run that indexes nothing)

    store = run.store
    ds = run.plan.datasets[name]
    index = store.index_path(ds.index_key)
    run.intend(paths=indexfiles.files(index))  # (its temporaries, the deps file's among them)
    for path in indexfiles.files(index):  # (an earlier job's, killed while its files had temporary names: a
        store.drop_temporaries(path)      # killed job discards no index, its run went on; live writers' kept)
    deps = Path(f"{index}.tmp-{os.getpid()}-deps")
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        spec = replace((builder or SpecBuilder(run.plan, run.workspace)).dataset(name, str(deps.absolute())),
                       cores=cores)
    except OSError as exc:  # the cache cannot be written: the view cannot be indexed into it
        run.state.dataset_errors[name] = {
            "kind": "system", "traceback": None,
            "message": f"cannot index set `{ds.set}': " + describe_environmental(exc, cache=store.location)}
        return None
    if run.staging is not None:  # sandboxed: written into its staging folder, published once checked
        spec = run.staging.index(f"index:{name}", spec)
        deps = Path(spec.deps or deps)
    run.indexing[name] = deps
    return spec, deps


def _index(run: Run, todo: list[str]) -> None:
    """Index the datasets ``todo`` in the run's process group, at most ``-j`` at a time (each
    holds its whole index while it builds it), the ``-j`` slots shared between those running
    together (a job probing with two processes needs two: :mod:`backbeat.runtime.probe`); each
    is recorded as soon as it ends."""
    from backbeat.execution.specs import SpecBuilder

    store = run.store
    builder = SpecBuilder(run.plan, run.workspace)
    slots = max(1, run.options.jobs or os.cpu_count() or 1)
    cores = max(1, slots // min(slots, len(todo)))
    waiting, running = list(todo), dict[str, Path]()
    while waiting or running:
        while waiting and len(running) < slots:
            name = waiting.pop(0)
            begun = begin_index(run, name, builder, cores)
            if begun is None:
                continue
            spec, running[name] = begun
            run.group.spawn(f"index:{name}", INDEX_TARGET, spec.to_json(),
                            log=str(store.log_path(run.plan.datasets[name].index_key)))
        if running:
            run.group.poll(20)
        for name in [n for n in running if run.group.exit(f"index:{n}") is not None]:
            record_index(run, name, run.group.outcome(f"index:{name}"), running.pop(name))


def record_index(run: Run, name: str, out: Outcome, deps: Path) -> bool:
    """Record what the indexing job of dataset ``name`` gave (``out``; ``deps``: where it wrote
    what its view opened): its index and data digests, or its error in
    ``run.state.dataset_errors``.  Whether it was indexed."""
    store = run.store
    ds = run.plan.datasets[name]
    index = store.index_path(ds.index_key)
    if out.ok and "digest" in out.statistics and run.staging is not None:
        try:
            run.staging.publish(f"index:{name}", {"index.db": out.statistics["digest"]})
        except (IntegrityError, OSError) as exc:
            out = Outcome("system", f"the sandbox refused the view index: {exc}")
    message = out.message
    kind = out.kind if not out.ok else "system"
    environment = kind == "system" and not out.ok  # (a full disk says nothing about an index already there)
    if out.ok and "digest" in out.statistics:
        try:
            # (sandboxed: moved out of the sandbox's reach before it is read)
            source = run.staging.take(f"index:{name}", "deps.json") if run.staging is not None else deps
            seen = json.loads(source.read_text(encoding="utf-8"))["seen"]
            where = manifests.folders(run.catalog, ds.database, ds.root_folder)
            digest = manifests.store_manifest(store, manifests.build(seen, where, store.memo))
            store.set_index_record(ds.index_key, out.statistics["digest"], digest)
            Path(f"{index}.journal").unlink(missing_ok=True)
            ds.index_digest, ds.data_digest = out.statistics["digest"], digest
        except (OSError, ValueError, KeyError, DataError) as exc:
            failure = environmental(exc)
            environment = failure is not None
            message = (describe_environmental(failure, cache=store.location) if failure is not None
                       else str(exc) if isinstance(exc, DataError)
                       else f"the files its view read are unknown: {exc}")
    deps.unlink(missing_ok=True)
    if ds.data_digest is None:
        for path in indexfiles.files(index):  # (what the job left under temporary names: it has ended)
            store.drop_temporaries(path)
        if not environment:
            store.discard_index(ds.index_key)
        hint = "" if not ds.root_folder or os.path.isdir(ds.root_folder) or environment else (
            f" (the root folder `{ds.root_folder}' of {ds.database} does not exist: set "
            f"`database/{ds.database}' in .backbeatrc to where its data is)")
        run.state.dataset_errors[name] = {
            "kind": kind,
            "message": f"database view `{ds.view}' of {ds.database} could not index set "
                       f"`{ds.protocol}/{ds.set}': {message}{hint}",
            "traceback": out.traceback}
    store.flush()
    return ds.data_digest is not None


def start_provider(group: ProcessGroup, datasets: dict[str, DatasetSpec], log: str | None = None,
                   job: str = PROVIDER_JOB) -> str:
    """Start the database provider of ``datasets`` in ``group`` as job ``job``; its address.  Its
    output (the views' prints) goes to ``log`` (see :func:`provider_log`)."""
    from backbeat.runtime.spec import ProviderSpec

    address = group.address("database" if job == PROVIDER_JOB else job)
    group.spawn(job, PROVIDER_TARGET, ProviderSpec(address, datasets).to_json(), log=log)
    return address


def provider_log(run: Run) -> str:
    """The log of the database provider serving every dataset of ``run``."""
    return str(run.store.log_path(provider_key([ds.index_key for ds in run.plan.datasets.values()])))
