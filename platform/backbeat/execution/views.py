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
traceback), and only those.  :func:`start_provider` starts the database provider
(:func:`backbeat.runtime.dbprovider.serve`) that serves dataset outputs to block processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from backbeat.core.errors import DataError
from backbeat.execution.state import Run
from backbeat.planning.model import Dataset
from backbeat.provenance import manifests

if TYPE_CHECKING:
    from backbeat.processes.group import ProcessGroup
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


def index_datasets(run: Run, rebuild: bool | None = None) -> None:
    """Give every dataset of the run its index and data digests; failures go to
    ``run.state.dataset_errors``.

    ``rebuild`` (default: ``--force``): index again even the datasets whose index is stored.
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
    if todo:
        _index(run, todo)
    store.flush()


def _index(run: Run, todo: list[str]) -> None:
    from backbeat.execution.specs import SpecBuilder  # (not imported by a run that indexes nothing)

    store = run.store
    builder = SpecBuilder(run.plan, run.workspace)
    deps = {}
    for name in todo:
        ds = run.plan.datasets[name]
        index = store.index_path(ds.index_key)
        index.parent.mkdir(parents=True, exist_ok=True)
        deps[name] = Path(f"{index}.tmp-{os.getpid()}-deps")
        run.group.spawn(f"index:{name}", INDEX_TARGET, builder.dataset(name, str(deps[name].absolute())).to_json())
    outcomes = run.group.wait([f"index:{n}" for n in todo])
    for name in todo:
        out = outcomes[f"index:{name}"]
        ds = run.plan.datasets[name]
        message = out.message
        if out.ok and "digest" in out.statistics:
            try:
                seen = json.loads(deps[name].read_text(encoding="utf-8"))["seen"]
                where = manifests.folders(run.catalog, ds.database, ds.root_folder)
                digest = manifests.store_manifest(store, manifests.build(seen, where, store.memo))
                store.set_index_record(ds.index_key, out.statistics["digest"], digest)
                Path(f"{store.index_path(ds.index_key)}.journal").unlink(missing_ok=True)
                ds.index_digest, ds.data_digest = out.statistics["digest"], digest
            except (OSError, ValueError, KeyError, DataError) as exc:
                message = str(exc) if isinstance(exc, DataError) else f"the files its view read are unknown: {exc}"
        deps[name].unlink(missing_ok=True)
        if ds.data_digest is None:
            store.discard_index(ds.index_key)
            hint = "" if not ds.root_folder or os.path.isdir(ds.root_folder) else (
                f" (the root folder `{ds.root_folder}' of {ds.database} does not exist: set "
                f"`database/{ds.database}' in .backbeatrc to where its data is)")
            run.state.dataset_errors[name] = {
                "kind": out.kind if not out.ok else "system",
                "message": f"database view `{ds.view}' of {ds.database} could not index set "
                           f"`{ds.protocol}/{ds.set}': {message}{hint}",
                "traceback": out.traceback}


def start_provider(group: ProcessGroup, datasets: dict[str, DatasetSpec]) -> str:
    """Start the database provider of ``datasets`` in ``group``; its address."""
    from backbeat.runtime.spec import ProviderSpec

    address = group.address("database")
    group.spawn(PROVIDER_JOB, PROVIDER_TARGET, ProviderSpec(address, datasets).to_json())
    return address
