"""Loops (algorithm schema 3): a loop processor and its evaluator, run as two processes.

A toolchain *loop* node runs two user algorithms at once (spec §2.3, §6.4–6.5): the
**processor** (``sequential_loop_processor`` / ``autonomous_loop_processor``) is driven
like a block and receives a ``loop_channel``; the **evaluator**
(``sequential_loop_evaluator`` / ``autonomous_loop_evaluator``) is never driven by its
data: after ``setup`` and ``prepare`` it only answers the processor.  Each side reads its
own inputs and writes its own outputs.

Planning (:func:`plan_loop`) makes one :class:`~backbeat.planning.Job` of kind ``loop``
whose inputs and outputs are named ``processor.<name>`` / ``evaluator.<name>`` (both sides
may use the same names) and whose ``evaluator`` field holds the evaluator's algorithm,
parameters and libraries; one job key covers both sides, since each side's results depend
on the other (BEAT hashes each side alone, spec §4.4).  :func:`side_job` gives the plain
per-side job the executor turns into a block payload.

The loop channel is a ZeroMQ PAIR socket on ``ipc://`` in the run's private directory:
the evaluator binds, the processor connects.  Messages are multipart, request → reply:

=========================================== ==============================================
processor → evaluator                        evaluator → processor
=========================================== ==============================================
``val`` + request frames                     ``True``/``False`` + answer frames
``wrt``, output name, end index or ``None``  ``ack``
``rdi``                                      ``ack``
``don``                                      ``ack`` (the evaluator then commits)
=========================================== ==============================================

Any failure of the evaluator's user code is answered with ``err``, ``usr``, message,
traceback (paths relative to the prefix); the processor raises it as a
:class:`~backbeat.errors.UserCodeError`.  Request and answer values travel as a one-unit
batch in backbeat's wire encoding (:mod:`backbeat.wire`), never pickle.  As in BEAT, a
processor output ``write`` sends ``wrt`` with the end index the user gave (``None`` for the
default) and a sequential processor sends ``rdi`` before every ``process`` call, on which a
sequential evaluator advances its main group and calls ``read(inputs)``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import zmq

from backbeat.core import hashing
from backbeat.core.errors import DataError, ExecutionError, UserCodeError

if TYPE_CHECKING:
    from backbeat.planning.planner import Job
    from backbeat.runtime.outputs import OutputList

SIDES = ("processor", "evaluator")
OK = b"ack"


# -------------------------------------------------------------------------- planning

def plan_loop(ctx: dict, node: str, spec: dict) -> Job:
    """The ``loop`` job of toolchain loop ``node`` (experiment entry ``spec``).

    ``ctx`` carries :func:`backbeat.planning.plan`'s state: ``catalog``, ``globals``,
    ``default_env``, ``feeds``, ``channels``, ``out_channel``, ``datasets``, ``jobs``,
    ``tc_out_to_algo``, ``formats``, ``expanded``.  BEAT's hashes are set on the outputs.
    """
    from backbeat.declarations.algorithm import Algorithm
    from backbeat.planning.planner import Input, Job, Output, _dataformat_digest, _library_chain, _plain

    catalog, formats, expanded = ctx["catalog"], ctx["formats"], ctx["expanded"]
    inputs: dict[str, Input] = {}
    outputs: dict[str, Output] = {}
    sides: dict[str, dict] = {}
    ctx["tc_out_to_algo"][node] = {}
    for side in SIDES:
        algo = Algorithm(catalog.get("algorithm", spec[f"{side}_algorithm"]))
        raw = dict(ctx["globals"].get(algo.name, {}))
        raw.update(spec.get(f"{side}_parameters") or {})
        try:
            values = algo.clean_parameters(raw)
        except DataError as exc:
            raise ExecutionError(f"loop `{node}' ({side}): {exc}") from None
        for df in (algo.loop or {}).values():
            _dataformat_digest(catalog, df, formats, expanded)
        beat_inputs = {}
        for algo_in, tc_in in spec[f"{side}_inputs"].items():
            src, channel = ctx["feeds"][f"{node}.{tc_in}"]
            src_node, src_out = src.split(".", 1)
            df = algo.inputs[algo_in]
            _dataformat_digest(catalog, df, formats, expanded)
            name = f"{side}.{algo_in}"
            if src_node in ctx["datasets"]:
                inputs[name] = Input(name, channel, df, "dataset", src_node, src_out)
                beat_inputs[algo_in] = ctx["datasets"][src_node].beat_hash
            else:
                upstream = ctx["tc_out_to_algo"][src_node][src_out]
                inputs[name] = Input(name, channel, df, "block", src_node, upstream)
                beat_inputs[algo_in] = ctx["jobs"][src_node].outputs[upstream].beat_hash
        env = spec.get(f"{side}_environment") or ctx["default_env"]
        for algo_out, tc_out in spec[f"{side}_outputs"].items():
            df = algo.outputs[algo_out]
            _dataformat_digest(catalog, df, formats, expanded)
            name = f"{side}.{algo_out}"
            channel = ctx["out_channel"].get(f"{node}.{tc_out}", ctx["channels"][node])
            outputs[name] = Output(name, channel, df, beat_hash=hashing.block_output_hash(
                algo.hash or "", raw, env, beat_inputs, algo_out))
            ctx["tc_out_to_algo"][node][tc_out] = name
        sides[side] = {
            "algorithm": algo.name, "algorithm_hash": algo.hash or "",
            "parameters": {p: hashing.typed_value(algo.parameters[p]["type"], v) for p, v in values.items()},
            "values": _plain(values), "raw_parameters": raw, "environment": env,
            "libraries": _library_chain(catalog, algo.uses), "loop": dict(algo.loop or {}),
        }
    proc = sides["processor"]
    return Job(
        name=node, kind="loop", algorithm=proc["algorithm"], algorithm_hash=proc["algorithm_hash"],
        channel=ctx["channels"][node], parameters=proc["parameters"], values=proc["values"],
        raw_parameters=proc["raw_parameters"], environment=proc["environment"], inputs=inputs,
        outputs=outputs, libraries=proc["libraries"], nb_slots=1,
        depends=sorted({i.node for i in inputs.values() if i.source == "block"}),
        evaluator=sides["evaluator"],
    )


def key_extra(job: Job) -> dict:
    """What a loop job's key adds to a block's pre-image: the evaluator's identity."""
    ev = job.evaluator or {}
    return {"evaluator": {"algorithm": ev.get("algorithm_hash"), "libraries": ev.get("libraries"),
                          "parameters": ev.get("parameters")}}


def beat_hashes(job: Job) -> dict:
    """BEAT's view of a loop's hashes: ``{"processor": {output: hash}, "evaluator": {...}}``."""
    out: dict = {side: {} for side in SIDES}
    for name, o in job.outputs.items():
        side, algo_out = name.split(".", 1)
        out[side][algo_out] = o.beat_hash
    return out


def side_job(job: Job, side: str) -> Job:
    """The plain job of one side of a loop (unqualified input/output names)."""
    if side not in SIDES:
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


# -------------------------------------------------------------------------- encoding

def pack(value: Any, fmt: tuple[str, dict]) -> list:
    """A value (an instance, or a dict converted with safe casting) as wire frames."""
    from backbeat.data import wire
    from backbeat.data.batch import Batch
    from backbeat.data.values import value_type

    name, expanded = fmt
    if not isinstance(value, (dict, value_type(name, expanded))):
        raise TypeError(f"Can't transform {type(value).__name__} in dataformat `{name}' (give a dict)")
    return wire.encode(Batch.from_values(name, expanded, [value], starts=[0], ends=[0]))


def unpack(frames: list, fmt: tuple[str, dict]) -> Any:
    from backbeat.data import wire

    batch = wire.decode(frames, fmt[0], fmt[1])
    if len(batch) != 1:
        raise ExecutionError(f"loop message carries {len(batch)} values of `{fmt[0]}', expected 1")
    return batch.to_values()[0]


# -------------------------------------------------------------------------- processor side

class LoopChannel:
    """Processor side of the loop channel (what the user's ``process`` gets as ``loop_channel``)."""

    def __init__(self, address: str, request: tuple[str, dict], answer: tuple[str, dict]) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PAIR)
        self._sock.setsockopt(zmq.LINGER, 1000)
        self._sock.connect(address)
        self.request = request
        self.answer = answer

    def _call(self, frames: list) -> list:
        self._sock.send_multipart(frames, copy=False)
        reply = self._sock.recv_multipart()
        if reply and reply[0] == b"err":
            parts = [p.decode("utf-8", "replace") for p in reply[1:]] + ["", "", ""]
            raise UserCodeError(f"the loop evaluator failed: {parts[1]}", parts[2])
        return reply

    def validate(self, hypothesis: Any) -> tuple[bool, Any]:
        """Ask the evaluator about ``hypothesis`` (a dict of the request dataformat).

        Returns ``(valid, answer)``, ``answer`` an object of the answer dataformat.
        """
        reply = self._call([b"val"] + pack(hypothesis, self.request))
        if reply[0] not in (b"True", b"False"):
            raise ExecutionError(f"unexpected reply from the loop evaluator: {reply[0][:40]!r}")
        return reply[0] == b"True", unpack(reply[1:], self.answer)

    def notify_write(self, output: str, end_data_index: int | None) -> None:
        self._call([b"wrt", output.encode(), str(end_data_index).encode()])

    def read_next(self) -> None:
        self._call([b"rdi"])

    def done(self) -> None:
        self._call([b"don"])

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close()
            self._ctx.term()


def attach_writes(outputs: OutputList, channel: LoopChannel) -> None:
    """Make every processor output notify the evaluator (``wrt``) after each write."""
    for output in outputs:
        original = output.write

        def write(data: Any, end_data_index: int | None = None, _orig: Any = original,
                  _name: str = output.name) -> None:
            _orig(data, end_data_index)
            channel.notify_write(_name, end_data_index)

        output.write = write  # type: ignore[method-assign]


# -------------------------------------------------------------------------- evaluator side

def _user_call(algorithm: Any, method: str, *args: Any) -> Any:
    fn = getattr(algorithm, method, None)
    if fn is None or not callable(fn):
        raise ExecutionError(f"the loop evaluator has no `{method}' method")
    return fn(*args)


def run_evaluator(algorithm: Any, kind: str, loop: dict, *, inputs: Any, data_loaders: Any,
                  outputs: OutputList, parameters: dict, root: str | None = None) -> int:
    """Set the evaluator up, then answer the processor until ``don``; return messages served.

    ``loop`` holds ``address``, ``request`` and ``answer`` (``[name, expanded]`` each).
    Outputs are closed at the end; an output with missing data fails the evaluator.
    """
    from backbeat.data.values import value_type
    from backbeat.processes.control import format_user_traceback
    from backbeat.runtime.outputs import convert_value

    if hasattr(algorithm, "setup") and not _user_call(algorithm, "setup", dict(parameters)):
        raise ExecutionError("Could not setup algorithm (returned False)")
    if hasattr(algorithm, "prepare") and not _user_call(algorithm, "prepare", data_loaders):
        raise ExecutionError("Could not prepare algorithm (returned False)")
    request, answer = tuple(loop["request"]), tuple(loop["answer"])
    answer_type = value_type(answer[0], answer[1])
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.bind(loop["address"])
    served = 0
    try:
        while True:
            frames = sock.recv_multipart(copy=False)
            command = bytes(frames[0].buffer)
            served += 1
            try:
                if command == b"val":
                    result = _user_call(algorithm, "validate", unpack(frames[1:], request))
                    if not isinstance(result, tuple) or len(result) != 2:
                        raise ExecutionError("Improper implementation: validate must return a tuple")
                    valid, ans = result
                    value = ans if isinstance(ans, answer_type) else convert_value(answer_type, ans)
                    sock.send_multipart([b"True" if valid else b"False"] + pack(value, answer), copy=False)
                elif command == b"wrt":
                    name = bytes(frames[1].buffer).decode()
                    end_text = bytes(frames[2].buffer).decode()
                    try:  # as BEAT: anything but an integer is the default end index
                        end = int(end_text)
                    except ValueError:
                        end = None
                    _user_call(algorithm, "write", outputs, name, end)
                    sock.send(OK)
                elif command == b"rdi":
                    if inputs is not None and inputs.main_group is not None:
                        inputs.main_group.platform_next()
                        if hasattr(algorithm, "read"):
                            _user_call(algorithm, "read", inputs)
                    sock.send(OK)
                elif command == b"don":
                    sock.send(OK)
                    break
                else:
                    raise ExecutionError(f"Command `{command[:20]!r}' is not implemented")
            except BaseException as exc:
                message, text, _ = format_user_traceback(exc, root)
                sock.send_multipart([b"err", b"usr", message.encode(), text.encode()])
                raise
    finally:
        sock.close()
        ctx.term()
    for output in outputs:
        output.close()
    missing = [o.name for o in outputs if o.isDataMissing()]
    if missing:
        raise ExecutionError("Missing data on the following output(s): " + ", ".join(missing))
    return served


def side_payloads(run: Any, job: Any, address: str) -> list[dict]:
    """Block payloads of a loop node's evaluator then processor, joined at ``address``.

    ``run`` is the executor's :class:`~backbeat.executor.Run` (its ``block_payload``,
    plan and database provider).
    """
    from backbeat.declarations.algorithm import Algorithm

    payloads = []
    for side in reversed(SIDES):
        payload = run.block_payload(side_job(job, side))
        if payload["database"]:
            payload["database"] = run._provider_address()
        if side == "evaluator":
            formats = (job.evaluator or {})["loop"]
        else:
            formats = dict(Algorithm(run._catalog().get("algorithm", job.algorithm)).loop or {})
        payload["loop"] = {"role": side, "address": address,
                           **{k: [df, run.plan.expanded[df]] for k, df in formats.items()}}
        payloads.append(payload)
    return payloads
