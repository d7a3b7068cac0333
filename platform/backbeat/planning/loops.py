"""Planning toolchain loops (algorithm schema 3): a loop processor and its evaluator as one job.

A toolchain *loop* node runs two user algorithms at once (spec §2.3, §6.4–6.5): the
**processor** (``sequential_loop_processor`` / ``autonomous_loop_processor``) is driven
like a block and receives a ``loop_channel``; the **evaluator**
(``sequential_loop_evaluator`` / ``autonomous_loop_evaluator``) only answers the processor
(see :mod:`backbeat.runtime.loopchannel`).  Each side reads its own inputs and writes its
own outputs.

:func:`plan_loop` makes one :class:`~backbeat.planning.model.Job` of kind ``loop`` whose
inputs and outputs are named ``processor.<name>`` / ``evaluator.<name>`` (both sides may use
the same names) and whose ``evaluator`` field holds the evaluator's algorithm, parameters,
libraries and loop formats; one job key covers both sides, since each side's results depend
on the other (BEAT hashes each side alone, spec §4.4).  :func:`side_job` gives the plain
per-side job the execution layer runs as a block process.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from backbeat.core import hashing
from backbeat.core.errors import DataError, ExecutionError
from backbeat.planning.context import Wiring, plain
from backbeat.planning.model import LOOP_SIDES, Input, Job, Output


def plan_loop(wiring: Wiring, node: str, spec: dict) -> Job:
    """The ``loop`` job of toolchain loop ``node`` (experiment entry ``spec``); BEAT's hashes set."""
    from backbeat.declarations.algorithm import Algorithm

    ctx = wiring.ctx
    inputs: dict[str, Input] = {}
    outputs: dict[str, Output] = {}
    sides: dict[str, dict] = {}
    wiring.tc_out_to_algo[node] = {}
    for side in LOOP_SIDES:
        algo = Algorithm(ctx.catalog.get("algorithm", spec[f"{side}_algorithm"]))
        raw = dict(wiring.globals.get(algo.name, {}))
        raw.update(spec.get(f"{side}_parameters") or {})
        try:
            values = algo.clean_parameters(raw)
        except DataError as exc:
            raise ExecutionError(f"loop `{node}' ({side}): {exc}") from None
        for df in (algo.loop or {}).values():
            ctx.dataformat(df)
        beat_inputs = {}
        for algo_in, tc_in in spec[f"{side}_inputs"].items():
            name = f"{side}.{algo_in}"
            inputs[name] = wiring.input(node, name, tc_in, algo.inputs[algo_in])
            beat_inputs[algo_in] = wiring.beat_hash(inputs[name])
        env = spec.get(f"{side}_environment") or wiring.default_env
        for algo_out, tc_out in spec[f"{side}_outputs"].items():
            df = algo.outputs[algo_out]
            ctx.dataformat(df)
            name = f"{side}.{algo_out}"
            outputs[name] = Output(name, wiring.output_channel(node, tc_out), df,
                                   beat_hash=hashing.block_output_hash(algo.hash or "", raw, env, beat_inputs,
                                                                       algo_out))
            wiring.tc_out_to_algo[node][tc_out] = name
        sides[side] = {
            "algorithm": algo.name, "algorithm_hash": algo.hash or "",
            "parameters": {p: hashing.typed_value(algo.parameters[p]["type"], v) for p, v in values.items()},
            "values": plain(values), "raw_parameters": raw, "environment": env,
            "libraries": ctx.library_chain(algo.uses), "loop": dict(algo.loop or {}),
        }
    proc = sides["processor"]
    return Job(
        name=node, kind="loop", algorithm=proc["algorithm"], algorithm_hash=proc["algorithm_hash"],
        channel=wiring.channels[node], parameters=proc["parameters"], values=proc["values"],
        raw_parameters=proc["raw_parameters"], environment=proc["environment"], inputs=inputs,
        outputs=outputs, libraries=proc["libraries"], nb_slots=1,
        depends=sorted({i.node for i in inputs.values() if i.source == "block"}),
        evaluator=sides["evaluator"],
    )


def side_job(job: Job, side: str) -> Job:
    """The plain job of one side of a loop (unqualified input/output names)."""
    if side not in LOOP_SIDES:
        raise ExecutionError(f"unknown loop side `{side}'")
    strip = len(side) + 1

    def mine(items: dict) -> dict:
        return {n[strip:]: dataclasses.replace(v, name=n[strip:]) for n, v in items.items()
                if n.startswith(side + ".")}

    fields: dict[str, Any] = {"inputs": mine(job.inputs), "outputs": mine(job.outputs), "kind": "block"}
    if side == "evaluator":
        ev = job.evaluator or {}
        fields.update({k: ev[k] for k in ("algorithm", "algorithm_hash", "parameters", "values",
                                          "raw_parameters", "environment", "libraries")})
    return dataclasses.replace(job, evaluator=None, **fields)

