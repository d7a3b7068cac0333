"""Planning: a validated experiment becomes an ordered list of block jobs with cache keys.

The plan is pure data (dataclasses of strings, dicts and lists, JSON-serialisable through
:meth:`Job.to_payload`), so the same job can be handed to a local block process or to a
remote worker.  Planning happens in two steps:

1. :func:`plan` resolves the experiment against its toolchain, algorithms, databases and
   dataformats, in BEAT's execution order (spec §2.6, §4.6), and computes BEAT's own block
   and analyzer hashes (``beat_hash``, spec §4.4–4.5) for audits against BEAT results; a
   toolchain loop becomes one job of kind ``loop`` (:func:`backbeat.loops.plan_loop`);
2. :func:`assign_keys` computes backbeat's cache keys once the content digests of the
   database view indexes are known (they come from running the views, see
   :mod:`backbeat.executor`).  A key covers everything that can change an output; the
   pre-image is specified in ``docs/hashing.md`` ("Cache keys").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from backbeat.core import config, hashing
from backbeat.core.errors import DataError, ExecutionError, InvalidAssetError
from backbeat.core.names import experiment_toolchain, parse_name
from backbeat.data.values import analysis_format
from backbeat.declarations.catalog import Catalog

#: Version of the data encoding in cache files; part of every key.
DATA_ENCODING = "backbeat-hdf5-1"


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

    def index_components(self) -> dict:
        """Pre-image of :attr:`index_key` (``dataset-index`` domain)."""
        return {
            "database": self.database, "database_hash": self.database_hash, "protocol": self.protocol,
            "set": self.set, "view": self.view, "parameters": self.view_parameters,
            "root_folder": self.root_folder,
        }

    def output_components(self, output: str, dataformats: dict[str, str]) -> dict:
        """Pre-image of :meth:`output_key` (``dataset-output`` domain)."""
        if self.index_digest is None:
            raise ExecutionError(f"dataset `{self.name}' has not been indexed yet")
        return {
            "index": self.index_key, "index_content": self.index_digest,
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
    """One block, analyzer or loop (processor + evaluator, see :mod:`backbeat.loops`) to execute."""

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
    evaluator: dict | None = None  # loops: the evaluator's algorithm, parameters, libraries (loops.plan_loop)

    @property
    def beat_hash(self) -> Any:
        if self.kind == "analyzer":
            return self.outputs["result"].beat_hash
        if self.kind == "loop":
            from backbeat.planning.loops import beat_hashes

            return beat_hashes(self)
        return {n: o.beat_hash for n, o in self.outputs.items()}

    def to_payload(self) -> dict:
        return asdict(self)


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


def _dataformat_digest(catalog: Catalog, name: str, plan_formats: dict, expanded: dict) -> None:
    from backbeat.declarations.dataformat import expand

    if name in plan_formats:
        return
    exp = expand(catalog, name)
    expanded[name] = exp
    plan_formats[name] = hashing.key("dataformat", {"name": name, "declaration": exp})


def _library_chain(catalog: Catalog, uses: dict[str, str]) -> list[list[str]]:
    from backbeat.declarations.library import load_order

    seen: dict[str, str] = {}
    for alias in sorted(uses):
        for lib in load_order(catalog, uses[alias]):
            if lib not in seen:
                seen[lib] = catalog.get("library", lib).require_valid().hash or ""
    return [[n, h] for n, h in seen.items()]



def dataset(catalog: Catalog, name: str, database: str, protocol: str, set_name: str,
            formats: dict | None = None, expanded: dict | None = None) -> Dataset:
    """Resolve one (database, protocol, set) view; its index key is set, its digest is not."""
    from backbeat.declarations.database import sets as database_sets

    formats = {} if formats is None else formats
    expanded = {} if expanded is None else expanded
    db_asset = catalog.get("database", database).require_valid()
    all_sets = database_sets(catalog, db_asset)
    if protocol not in all_sets:
        raise ExecutionError(f"database `{database}' has no protocol `{protocol}' - valid protocols are "
                             f"{', '.join(sorted(all_sets))}")
    if set_name not in all_sets[protocol]:
        raise ExecutionError(f"protocol `{protocol}' of database `{database}' has no set `{set_name}' - "
                             f"valid sets are {', '.join(sorted(all_sets[protocol]))}")
    info = all_sets[protocol][set_name]
    for df in info["outputs"].values():
        _dataformat_digest(catalog, df, formats, expanded)
    d = Dataset(
        name=name, database=database, protocol=protocol, set=set_name,
        view=info["view"], view_parameters=dict(info.get("parameters") or {}),
        outputs=dict(info["outputs"]), database_hash=db_asset.hash or "",
        root_folder=config.database_root(database, db_asset.declaration.get("root_folder", "")),
        beat_hash=hashing.dataset_hash(database, protocol, set_name),
    )
    d.index_key = hashing.key("dataset-index", d.index_components())
    return d


def plan(catalog: Catalog, name: str) -> Plan:
    """Resolve a valid experiment into jobs in BEAT's execution order (keys not yet set)."""
    from backbeat.declarations.algorithm import Algorithm
    from backbeat.declarations.toolchain import connections, execution_order

    _kind, name = parse_name("experiment", name)
    exp_asset = catalog.get("experiment", name)
    if not exp_asset.found:
        exp_asset.require_valid()
    if not exp_asset.valid:
        raise InvalidAssetError(exp_asset.label, list(exp_asset.problems))
    exp = exp_asset.declaration
    tc_name = experiment_toolchain(name)
    tc = catalog.get("toolchain", tc_name).require_valid().declaration

    formats: dict[str, str] = {}
    expanded: dict[str, dict] = {}
    globals_ = exp.get("globals", {})
    default_env = globals_.get("environment") or {}

    datasets = {
        ds_name: dataset(catalog, ds_name, ds["database"], ds["protocol"], ds["set"], formats, expanded)
        for ds_name, ds in exp["datasets"].items()
    }

    # where each toolchain input endpoint reads from
    feeds = {dst: (src, channel) for _i, src, dst, channel in connections(tc)}
    channels = {n["name"]: n["synchronized_channel"] for sec in ("blocks", "loops", "analyzers")
                for n in tc.get(sec, [])}
    out_channel = {src: channel for _i, src, _dst, channel in connections(tc)}

    jobs: dict[str, Job] = {}
    tc_out_to_algo: dict[str, dict[str, str]] = {}  # job -> toolchain output -> algorithm output
    for node in execution_order(tc):
        if node in (exp.get("loops") or {}):
            from backbeat.planning.loops import plan_loop

            jobs[node] = plan_loop(dict(
                catalog=catalog, globals=globals_, default_env=default_env, feeds=feeds, channels=channels,
                out_channel=out_channel, datasets=datasets, jobs=jobs, tc_out_to_algo=tc_out_to_algo,
                formats=formats, expanded=expanded), node, exp["loops"][node])
            continue
        if node in exp.get("blocks", {}):
            kind, spec = "block", exp["blocks"][node]
        else:
            kind, spec = "analyzer", exp["analyzers"][node]
        algo = Algorithm(catalog.get("algorithm", spec["algorithm"]))
        raw = dict(globals_.get(algo.name, {}))
        raw.update(spec.get("parameters", {}))
        try:
            values = algo.clean_parameters(raw)
        except DataError as exc:
            raise ExecutionError(f"{kind} `{node}': {exc}") from None
        typed = {p: hashing.typed_value(algo.parameters[p]["type"], v) for p, v in values.items()}
        env = spec.get("environment") or default_env

        inputs: dict[str, Input] = {}
        for algo_in, tc_in in spec["inputs"].items():
            src, channel = feeds[f"{node}.{tc_in}"]
            src_node, src_out = src.split(".", 1)
            df = algo.inputs[algo_in]
            _dataformat_digest(catalog, df, formats, expanded)
            if src_node in datasets:
                inputs[algo_in] = Input(algo_in, channel, df, "dataset", src_node, src_out)
            else:
                inputs[algo_in] = Input(algo_in, channel, df, "block", src_node,
                                        tc_out_to_algo[src_node][src_out])
        outputs: dict[str, Output] = {}
        if kind == "block":
            tc_out_to_algo[node] = {}
            for algo_out, tc_out in spec["outputs"].items():
                df = algo.outputs[algo_out]
                _dataformat_digest(catalog, df, formats, expanded)
                channel = out_channel.get(f"{node}.{tc_out}", channels[node])
                outputs[algo_out] = Output(algo_out, channel, df)
                tc_out_to_algo[node][tc_out] = algo_out
        else:
            results = {}
            for r_name, r_type in algo.results.items():
                if "/" in r_type:  # dataformats, plot/* ones too (BEAT loads them)
                    _dataformat_digest(catalog, r_type, formats, expanded)
                    results[r_name] = expanded[r_type]
                else:
                    results[r_name] = r_type
            fmt, expanded[fmt_key := f"analysis:{algo.name}"] = analysis_format(algo.name, results)
            formats[fmt] = hashing.key("dataformat", {"name": fmt, "declaration": expanded[fmt_key]})
            outputs["result"] = Output("result", channels[node], fmt)

        job = Job(
            name=node, kind=kind, algorithm=algo.name, algorithm_hash=algo.hash or "",
            channel=channels[node], parameters=typed, values=_plain(values), raw_parameters=raw,
            environment=env, inputs=inputs, outputs=outputs,
            libraries=_library_chain(catalog, algo.uses), nb_slots=int(spec.get("nb_slots", 1)),
            depends=sorted({i.node for i in inputs.values() if i.source == "block"}),
        )
        _beat_hashes(job, datasets, jobs)
        jobs[node] = job

    return Plan(name, tc_name, datasets, list(jobs.values()), formats, expanded)


def _plain(values: dict) -> dict:
    out = {}
    for k, v in values.items():
        out[k] = v.item() if hasattr(v, "item") else v
    return out


def _beat_hashes(job: Job, datasets: dict[str, Dataset], jobs: dict[str, Job]) -> None:
    """BEAT's block output / analyzer hashes (spec §4.4–4.5)."""
    input_hashes = {}
    for name, inp in job.inputs.items():
        if inp.source == "dataset":
            input_hashes[name] = datasets[inp.node].beat_hash
        else:
            input_hashes[name] = jobs[inp.node].outputs[inp.output].beat_hash
    if job.kind == "analyzer":
        job.outputs["result"].beat_hash = hashing.analyzer_hash(
            job.algorithm, job.algorithm_hash, job.raw_parameters, job.environment, input_hashes)
    else:
        for name, out in job.outputs.items():
            out.beat_hash = hashing.block_output_hash(
                job.algorithm_hash, job.raw_parameters, job.environment, input_hashes, name)


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
                inp.key = ds.output_key(inp.output, p.dataformats) if ds.index_digest else ""
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

    Input keys are taken from ``job.inputs[*].key`` (set by :func:`assign_keys`).
    """
    return {
        "algorithm": job.algorithm_hash,
        "libraries": job.libraries,
        "parameters": job.parameters,
        "inputs": {n: {"key": i.key, "dataformat": p.dataformats[i.dataformat]}
                   for n, i in job.inputs.items()},
        "outputs": {n: p.dataformats[o.dataformat] for n, o in job.outputs.items()},
        "encoding": DATA_ENCODING,
        **(loop_key_extra(job) if job.kind == "loop" else {}),
    }


def loop_key_extra(job: Job) -> dict:
    from backbeat.planning.loops import key_extra

    return key_extra(job)
