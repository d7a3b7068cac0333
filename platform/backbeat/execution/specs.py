"""Building the typed job descriptions (:mod:`backbeat.runtime.spec`) from a plan and a store.

The one place where a planned job becomes what its process reads: :class:`SpecBuilder`
snapshots code into the cache store (the very bytes the catalog hashed into the keys,
:func:`code_file`), names cache files by the store, takes dataformats from the plan.  Whoever starts the process then fills in what only it knows (the database
provider's address, streams, slot ranges, a loop channel) with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection

from backbeat.cache.blobs import Blobs
from backbeat.cache.store import IMAGES
from backbeat.core.errors import ExecutionError
from backbeat.declarations.algorithm import Algorithm
from backbeat.declarations.catalog import Asset, Catalog
from backbeat.execution.workspace import Workspace
from backbeat.planning.loops import side_job
from backbeat.planning.model import LOOP_SIDES, Job, Plan
from backbeat.provenance.manifests import folders as data_folders
from backbeat.runtime.spec import (
    BlockSpec,
    CodeFile,
    CodeSpec,
    DatasetSpec,
    InputSpec,
    LoopSpec,
    OutputSpec,
    StreamTarget,
)


def code_file(code: Blobs, asset: Asset) -> CodeFile:
    """The snapshot of an asset's code: the bytes its hash was computed from, written once to
    a content-addressed area (a cache store's ``code``); the process loading it refuses
    anything else."""
    if asset.code is None:
        raise ExecutionError(f"{asset.label}: no code file was read when it was hashed ({asset.code_path})")
    digest = code.put(asset.code)
    return CodeFile(str(code.path(digest).absolute()), digest, os.path.abspath(str(asset.code_path)),
                    dict((asset.declaration or {}).get("uses") or {}))


def code_spec(code: Blobs, catalog: Catalog, kind: str, name: str, libraries: list[str]) -> CodeSpec:
    """The code of an algorithm or plotter (``kind``) and of ``libraries`` (every one it needs)."""
    return CodeSpec(code_file(code, catalog.get(kind, name)),
                    {lib: code_file(code, catalog.get("library", lib)) for lib in libraries})


class SpecBuilder:
    def __init__(self, plan: Plan, workspace: Workspace, window: int = 4096) -> None:
        self.plan = plan
        self.workspace = workspace
        self.window = window
        self._types: dict[str, str] = {}
        self._code: dict[tuple[str, tuple[str, ...]], CodeSpec] = {}

    def algorithm_type(self, name: str) -> str:
        if name not in self._types:
            self._types[name] = Algorithm(self.workspace.catalog.get("algorithm", name)).type
        return self._types[name]

    def splittable(self, job: Job) -> bool:
        return Algorithm(self.workspace.catalog.get("algorithm", job.algorithm)).splittable

    def dataset(self, name: str, deps: str | None = None) -> DatasetSpec:
        """The spec of one dataset of the plan: for its indexing job (``deps``: where it writes
        what the view opened), or for the provider (it checks the files the view opens
        against the data manifest the keys were computed from)."""
        ds = self.plan.datasets[name]
        store, catalog = self.workspace.store, self.workspace.catalog
        index_path = store.index_path(ds.index_key)
        manifest = None
        if deps is None and ds.data_digest is not None:
            manifest = str(store.manifests.path(ds.data_digest).absolute())
        return DatasetSpec(
            database=ds.database, code=code_file(store.code, catalog.get("database", ds.database)), view=ds.view,
            root_folder=ds.root_folder, parameters=ds.view_parameters, index_path=str(index_path),
            outputs={o: (df, self.plan.expanded[df]) for o, df in ds.outputs.items()},
            protocol=ds.protocol, set=ds.set, folders=data_folders(catalog, ds.database, ds.root_folder),
            deps=deps if deps is not None else f"{index_path.absolute()}.journal", manifest=manifest,
            memo=str(store.memo.path) if store.memo.path is not None else None,
            index_digest=ds.index_digest if deps is None else None,
        )

    def datasets(self, names: Collection[str] | None = None) -> dict[str, DatasetSpec]:
        return {n: self.dataset(n) for n in (self.plan.datasets if names is None else names)}

    def code(self, algorithm: str, libraries: list[list[str]]) -> CodeSpec:
        """The code of an algorithm, snapshotted once per run (the blocks of a chain share it: its
        bytes were hashed once; each block process checks the snapshot's digest as it loads it)."""
        key = (algorithm, tuple(lib for lib, _h in libraries))
        spec = self._code.get(key)
        if spec is None:
            spec = self._code[key] = code_spec(self.workspace.store.code, self.workspace.catalog, "algorithm",
                                               algorithm, list(key[1]))
        return spec

    def block(self, job: Job, fresh: Collection[str] = ()) -> BlockSpec:
        """The spec of a block or analyzer job (no provider address, streams or slot yet).

        ``fresh``: jobs whose outputs this run has just committed; their files are not
        re-verified when opened (their digest was computed as they were written).
        """
        if job.kind == "loop":  # two processes and a loop channel: see loop_sides
            raise ExecutionError(f"loop `{job.name}' can only run with the local executor (not as one remote or "
                                 f"Dask task): its processor and evaluator are two processes joined by a loop channel")
        store = self.workspace.store
        expanded = self.plan.expanded
        formats = {i.dataformat: expanded[i.dataformat] for i in job.inputs.values()}
        formats.update({o.dataformat: expanded[o.dataformat] for o in job.outputs.values()})
        inputs = {}
        for name, inp in job.inputs.items():
            if inp.source == "dataset":
                ds_df = self.plan.datasets[inp.node].outputs[inp.output]
                formats[ds_df] = expanded[ds_df]
                inputs[name] = InputSpec(inp.channel, ds_df, "dataset", key=inp.key, dataset=inp.node,
                                         output=inp.output)
            else:
                inputs[name] = InputSpec(inp.channel, inp.dataformat, "cache", key=inp.key,
                                         path=str(store.output_path(inp.key)), verify=inp.node not in fresh)
        return BlockSpec(
            name=job.name, kind=job.kind, algorithm=job.algorithm, type=self.algorithm_type(job.algorithm),
            channel=job.channel, values=job.values, code=self.code(job.algorithm, job.libraries),
            inputs=inputs,
            outputs={n: OutputSpec(o.dataformat, o.key, str(store.output_path(o.key))) for n, o in job.outputs.items()},
            formats=formats, window=self.window, compression=self.workspace.compression,
            images=str(store.root / IMAGES),
        )

    def slots(self, spec: BlockSpec, ranges: list[tuple[int, int]]) -> list[BlockSpec]:
        """One spec per slot of a split block: its range, its own slot files."""
        store = self.workspace.store
        return [dataclasses.replace(spec, range=rng, slot=k,
                                    outputs={n: dataclasses.replace(o, path=str(store.slot_path(o.key, k)))
                                             for n, o in spec.outputs.items()})
                for k, rng in enumerate(ranges)]

    def loop_sides(self, job: Job, address: str, fresh: Collection[str] = ()) -> list[BlockSpec]:
        """The specs of a loop's evaluator then processor, joined by the loop channel at ``address``."""
        specs = []
        for side in reversed(LOOP_SIDES):
            spec = self.block(side_job(job, side), fresh)
            if side == "evaluator":
                formats = dict((job.evaluator or {})["loop"])
            else:
                formats = dict(Algorithm(self.workspace.catalog.get("algorithm", job.algorithm)).loop or {})
            request, answer = formats["request"], formats["answer"]
            loop = LoopSpec(side, address, (request, self.plan.expanded[request]),
                            (answer, self.plan.expanded[answer]))
            specs.append(dataclasses.replace(spec, loop=loop))
        return specs


def streamed(spec: BlockSpec, inputs: dict[str, str]) -> BlockSpec:
    """``spec`` reading ``inputs`` (name → address) from producers running at the same time."""
    return dataclasses.replace(spec, inputs={
        n: dataclasses.replace(i, source="stream", address=inputs[n]) if n in inputs else i
        for n, i in spec.inputs.items()})


def streaming(spec: BlockSpec, output: str, target: StreamTarget) -> BlockSpec:
    """``spec`` also sending ``output`` to a consumer as it is written."""
    out = spec.outputs[output]
    return dataclasses.replace(spec, outputs=dict(spec.outputs, **{
        output: dataclasses.replace(out, streams=out.streams + (target,))}))
