"""Running database views: indexing jobs and the database provider, in a run's process group.

Views are user code, so they never run in the executor's process.  :func:`index_datasets`
builds (in block processes) the view index of every dataset of a run whose index is not in
the cache (or is damaged, or with ``--force``); its content digest then enters the keys of
everything downstream.  A view that fails to index fails the blocks that read it (with the
user's traceback), and only those.  :func:`start_provider` starts the database provider
(:func:`backbeat.runtime.dbprovider.serve`) that serves dataset outputs to block processes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from backbeat.execution.state import Run

if TYPE_CHECKING:
    from backbeat.processes.group import ProcessGroup
    from backbeat.runtime.spec import DatasetSpec

INDEX_TARGET = "backbeat.runtime.dbprovider:build_index"
PROVIDER_TARGET = "backbeat.runtime.dbprovider:serve"
PROVIDER_JOB = "database-provider"


def index_datasets(run: Run, rebuild: bool | None = None) -> None:
    """Give every dataset of the run its index digest; failures go to ``run.state.dataset_errors``.

    ``rebuild`` (default: ``--force``): index again even the datasets whose index is stored.
    """
    store = run.store
    todo = []
    rebuild = run.options.force if rebuild is None else rebuild
    for name, ds in run.plan.datasets.items():
        if not rebuild and store.index_path(ds.index_key).is_file():
            ds.index_digest = store.verified_index_digest(ds.index_key)
            if ds.index_digest is None:
                run.emit(f"dataset {name}", "corrupt",
                         message=f"view index `{store.index_path(ds.index_key)}' was damaged")
                todo.append(name)
        else:
            todo.append(name)
    if not todo:
        return
    from backbeat.execution.specs import SpecBuilder  # (not imported by a run that indexes nothing)

    builder = SpecBuilder(run.plan, run.workspace)
    for name in todo:
        store.index_path(run.plan.datasets[name].index_key).parent.mkdir(parents=True, exist_ok=True)
        run.group.spawn(f"index:{name}", INDEX_TARGET, builder.dataset(name).to_json())
    outcomes = run.group.wait([f"index:{n}" for n in todo])
    for name in todo:
        out = outcomes[f"index:{name}"]
        ds = run.plan.datasets[name]
        if out.ok and "digest" in out.statistics:
            ds.index_digest = out.statistics["digest"]
        else:
            store.discard_index(ds.index_key)
            hint = "" if not ds.root_folder or os.path.isdir(ds.root_folder) else (
                f" (the root folder `{ds.root_folder}' of {ds.database} does not exist: set "
                f"`database/{ds.database}' in .backbeatrc to where its data is)")
            run.state.dataset_errors[name] = {
                "kind": out.kind if not out.ok else "system",
                "message": f"database view `{ds.view}' of {ds.database} could not index set "
                           f"`{ds.protocol}/{ds.set}': {out.message}{hint}",
                "traceback": out.traceback}


def start_provider(group: ProcessGroup, datasets: dict[str, DatasetSpec]) -> str:
    """Start the database provider of ``datasets`` in ``group``; its address."""
    from backbeat.runtime.spec import ProviderSpec

    address = group.address("database")
    group.spawn(PROVIDER_JOB, PROVIDER_TARGET, ProviderSpec(address, datasets).to_json())
    return address
