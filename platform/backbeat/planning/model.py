"""The plan model: datasets, jobs, their inputs and outputs, and their cache keys (pure data).

A :class:`Plan` is what :func:`backbeat.planning.planner.plan` makes of an experiment: the
datasets it reads and its jobs in BEAT's execution order.  Everything here is plain data
and pure functions of it; nothing reads files, configuration or process state.

Keys are computed in a second step (:func:`assign_keys`) once the content digests of the
database view indexes and of the data files their views read are known (they come from
running the views and from the files, see :mod:`backbeat.execution` and
:mod:`backbeat.provenance.manifests`).  A key covers everything that can change an output; the
pre-image (:func:`key_components`) is specified in ``docs/hashing.md`` ("Cache keys").

A toolchain loop is one job of kind ``loop`` (:mod:`backbeat.planning.loops`): its inputs
and outputs are named ``processor.<name>`` / ``evaluator.<name>`` and its ``evaluator``
field holds the evaluator's algorithm, parameters and libraries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backbeat.core import hashing
from backbeat.core.errors import ExecutionError

#: Version of the data encoding in cache files; part of every key.
DATA_ENCODING = "backbeat-hdf5-1"

#: the two sides of a loop job, as its input and output names are prefixed
LOOP_SIDES = ("processor", "evaluator")


@dataclass
class Dataset:
    """One experiment dataset: a (database, protocol, set) view."""

    name: str
    database: str
    protocol: str
    set: str
    view: str
    view_parameters: dict
    outputs: dict[str, str]  # output -> dataformat
    database_hash: str
    root_folder: str
    beat_hash: str  # hashDataset
    index_key: str = ""  # key of the view index (content-independent, see docs/hashing.md)
    index_digest: str | None = None  # sha256 of the index content, known after indexing
    data_digest: str | None = None  # digest of the data manifest now (files the view read), after indexing

    def index_components(self) -> dict:
        """Pre-image of :attr:`index_key` (``dataset-index`` domain)."""
        return {
            "database": self.database, "database_hash": self.database_hash, "protocol": self.protocol,
            "set": self.set, "view": self.view, "parameters": self.view_parameters,
            "root_folder": self.root_folder,
        }

    def output_components(self, output: str, dataformats: dict[str, str]) -> dict:
        """Pre-image of :meth:`output_key` (``dataset-output`` domain)."""
        if self.index_digest is None or self.data_digest is None:
            raise ExecutionError(f"dataset `{self.name}' has not been indexed yet")
        return {
            "index": self.index_key, "index_content": self.index_digest, "data": self.data_digest,
            "output": output, "dataformat": dataformats[self.outputs[output]],
            "encoding": DATA_ENCODING,
        }

    def output_key(self, output: str, dataformats: dict[str, str]) -> str:
        return hashing.key("dataset-output", self.output_components(output, dataformats))


@dataclass
class Input:
    name: str  # algorithm input name
    channel: str
    dataformat: str
    source: str  # "dataset" or "block"
    node: str  # dataset name or upstream job name
    output: str  # dataset output or upstream algorithm output name
    key: str = ""


@dataclass
class Output:
    name: str  # algorithm output name ("result" for analyzers)
    channel: str
    dataformat: str
    key: str = ""
    beat_hash: str = ""


@dataclass
class Job:
    """One block, analyzer or loop (processor + evaluator, see :mod:`backbeat.planning.loops`)."""

    name: str
    kind: str  # "block", "analyzer" or "loop"
    algorithm: str
    algorithm_hash: str
    channel: str
    parameters: dict[str, list]  # typed: name -> [type, text] (hashing.typed_value)
    values: dict[str, Any]  # cleaned parameter values (defaults applied, cast)
    raw_parameters: dict  # BEAT's view: globals[algorithm] updated by the block's parameters
    environment: dict
    inputs: dict[str, Input]
    outputs: dict[str, Output]
    libraries: list[list[str]]  # [name, hash] in load order
    nb_slots: int = 1
    depends: list[str] = field(default_factory=list)
    key: str = ""
    evaluator: dict | None = None  # loops: the evaluator's algorithm, parameters, libraries, loop formats

    @property
    def beat_hash(self) -> Any:
        """BEAT's hashes: an analyzer's, ``{output: hash}`` of a block, per side for a loop."""
        if self.kind == "analyzer":
            return self.outputs["result"].beat_hash
        if self.kind == "loop":
            out: dict[str, dict] = {side: {} for side in LOOP_SIDES}
            for name, o in self.outputs.items():
                side, algo_out = name.split(".", 1)
                out[side][algo_out] = o.beat_hash
            return out
        return {n: o.beat_hash for n, o in self.outputs.items()}

    @property
    def output_keys(self) -> list[str]:
        return [o.key for o in self.outputs.values()]


@dataclass
class Plan:
    experiment: str
    toolchain: str
    datasets: dict[str, Dataset]
    jobs: list[Job]
    dataformats: dict[str, str]  # dataformat name -> digest of its expanded declaration
    expanded: dict[str, dict]  # dataformat name -> expanded declaration

    def job(self, name: str) -> Job:
        for j in self.jobs:
            if j.name == name:
                return j
        raise ExecutionError(f"no block or analyzer named `{name}' in experiment `{self.experiment}'")


def assign_keys(p: Plan) -> None:
    """Compute every job's and output's cache key.

    A job reading a dataset without an index digest (its view could not be indexed), or
    downstream of one, gets the empty key ``""``: it cannot run.
    """
    jobs = {j.name: j for j in p.jobs}
    for job in p.jobs:
        for inp in job.inputs.values():
            if inp.source == "dataset":
                ds = p.datasets[inp.node]
                inp.key = ds.output_key(inp.output, p.dataformats) if ds.index_digest and ds.data_digest else ""
            else:
                inp.key = jobs[inp.node].outputs[inp.output].key
        if not all(i.key for i in job.inputs.values()):  # an input could not be keyed (view not indexed)
            job.key = ""
            for out in job.outputs.values():
                out.key = ""
            continue
        job.key = hashing.key(job.kind, key_components(p, job))
        for out in job.outputs.values():
            out.key = hashing.key("output", {"job": job.key, "output": out.name})


def key_components(p: Plan, job: Job) -> dict:
    """The pre-image of ``job.key`` (domain ``job.kind``), exactly what :func:`assign_keys` hashes.

    Input keys are taken from ``job.inputs[*].key`` (set by :func:`assign_keys`).  A loop's
    key adds the evaluator's identity: each side's results depend on the other's.
    """
    out = {
        "algorithm": job.algorithm_hash,
        "libraries": job.libraries,
        "parameters": job.parameters,
        "inputs": {n: {"key": i.key, "dataformat": p.dataformats[i.dataformat]}
                   for n, i in job.inputs.items()},
        "outputs": {n: p.dataformats[o.dataformat] for n, o in job.outputs.items()},
        "encoding": DATA_ENCODING,
    }
    if job.kind == "loop":
        ev = job.evaluator or {}
        out["evaluator"] = {"algorithm": ev.get("algorithm_hash"), "libraries": ev.get("libraries"),
                            "parameters": ev.get("parameters")}
    return out
