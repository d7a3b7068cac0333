"""Planning: a validated experiment becomes an ordered list of jobs (:mod:`~backbeat.planning.model`).

:func:`plan` resolves the experiment against its toolchain, algorithms, databases and
dataformats, in BEAT's execution order (spec §2.6, §4.6), and computes BEAT's own block and
analyzer hashes (``beat_hash``, spec §4.4–4.5) for audits against BEAT results; a toolchain
loop becomes one job of kind ``loop`` (:func:`backbeat.planning.loops.plan_loop`).  Cache
keys come later (:func:`backbeat.planning.model.assign_keys`), once the view indexes are known.

Planning is a pure function of the catalog, the experiment name and the database root
folder overrides the caller passes (``roots``); it reads no configuration.
"""

from __future__ import annotations

from backbeat.core import hashing
from backbeat.core.errors import DataError, ExecutionError, InvalidAssetError
from backbeat.core.names import experiment_toolchain, parse_name
from backbeat.declarations.algorithm import analysis_format
from backbeat.declarations.catalog import Catalog
from backbeat.planning.context import PlanContext, Wiring, plain
from backbeat.planning.loops import plan_loop
from backbeat.planning.model import Dataset, Input, Job, Output, Plan


def dataset(ctx: PlanContext, name: str, database: str, protocol: str, set_name: str) -> Dataset:
    """Resolve one (database, protocol, set) view; its index key is set, its digest is not."""
    from backbeat.declarations.database import sets as database_sets

    db_asset = ctx.catalog.get("database", database).require_valid()
    all_sets = database_sets(ctx.catalog, db_asset)
    if protocol not in all_sets:
        raise ExecutionError(f"database `{database}' has no protocol `{protocol}' - valid protocols are "
                             f"{', '.join(sorted(all_sets))}")
    if set_name not in all_sets[protocol]:
        raise ExecutionError(f"protocol `{protocol}' of database `{database}' has no set `{set_name}' - "
                             f"valid sets are {', '.join(sorted(all_sets[protocol]))}")
    info = all_sets[protocol][set_name]
    for df in info["outputs"].values():
        ctx.dataformat(df)
    d = Dataset(
        name=name, database=database, protocol=protocol, set=set_name,
        view=info["view"], view_parameters=dict(info.get("parameters") or {}),
        outputs=dict(info["outputs"]), database_hash=db_asset.hash or "",
        root_folder=ctx.root_folder(database, db_asset.declaration.get("root_folder", "")),
        beat_hash=hashing.dataset_hash(database, protocol, set_name),
    )
    d.index_key = hashing.key("dataset-index", d.index_components())
    return d


def plan(catalog: Catalog, name: str, roots: dict[str, str] | None = None) -> Plan:
    """Resolve a valid experiment into jobs in BEAT's execution order (keys not yet set).

    ``roots``: root folders of databases' raw data overriding their declarations
    (``{"name/version": folder}``, from ``.backbeatrc``).
    """
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

    ctx = PlanContext(catalog, dict(roots or {}))
    globals_ = exp.get("globals", {})
    datasets = {
        ds_name: dataset(ctx, ds_name, ds["database"], ds["protocol"], ds["set"])
        for ds_name, ds in exp["datasets"].items()
    }
    wiring = Wiring(
        ctx=ctx, globals=globals_, default_env=globals_.get("environment") or {},
        feeds={dst: (src, channel) for _i, src, dst, channel in connections(tc)},  # where each input reads
        channels={n["name"]: n["synchronized_channel"] for sec in ("blocks", "loops", "analyzers")
                  for n in tc.get(sec, [])},
        out_channel={src: channel for _i, src, _dst, channel in connections(tc)},
        datasets=datasets,
    )
    for node in execution_order(tc):
        if node in (exp.get("loops") or {}):
            wiring.jobs[node] = plan_loop(wiring, node, exp["loops"][node])
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
        env = spec.get("environment") or wiring.default_env

        inputs: dict[str, Input] = {}
        for algo_in, tc_in in spec["inputs"].items():
            inputs[algo_in] = wiring.input(node, algo_in, tc_in, algo.inputs[algo_in])
        outputs: dict[str, Output] = {}
        if kind == "block":
            wiring.tc_out_to_algo[node] = {}
            for algo_out, tc_out in spec["outputs"].items():
                df = algo.outputs[algo_out]
                ctx.dataformat(df)
                outputs[algo_out] = Output(algo_out, wiring.output_channel(node, tc_out), df)
                wiring.tc_out_to_algo[node][tc_out] = algo_out
        else:
            results: dict = {}
            for r_name, r_type in algo.results.items():
                # dataformats, plot/* ones too (BEAT loads them)
                results[r_name] = ctx.dataformat(r_type) if "/" in r_type else r_type
            fmt, fmt_expanded = analysis_format(algo.name, results)
            ctx.register(fmt, fmt_expanded)
            outputs["result"] = Output("result", wiring.channels[node], fmt)

        job = Job(
            name=node, kind=kind, algorithm=algo.name, algorithm_hash=algo.hash or "",
            channel=wiring.channels[node], parameters=typed, values=plain(values), raw_parameters=raw,
            environment=env, inputs=inputs, outputs=outputs,
            libraries=ctx.library_chain(algo.uses), nb_slots=int(spec.get("nb_slots", 1)),
            depends=sorted({i.node for i in inputs.values() if i.source == "block"}),
        )
        _beat_hashes(job, wiring)
        wiring.jobs[node] = job

    return Plan(name, tc_name, datasets, list(wiring.jobs.values()), ctx.formats, ctx.expanded)


def _beat_hashes(job: Job, wiring: Wiring) -> None:
    """BEAT's block output / analyzer hashes (spec §4.4–4.5)."""
    input_hashes = {name: wiring.beat_hash(inp) for name, inp in job.inputs.items()}
    if job.kind == "analyzer":
        job.outputs["result"].beat_hash = hashing.analyzer_hash(
            job.algorithm, job.algorithm_hash, job.raw_parameters, job.environment, input_hashes)
    else:
        for name, out in job.outputs.items():
            out.beat_hash = hashing.block_output_hash(
                job.algorithm_hash, job.raw_parameters, job.environment, input_hashes, name)
