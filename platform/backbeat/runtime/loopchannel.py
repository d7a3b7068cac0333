"""The loop channel: a loop processor asks its evaluator, in another block process, over ZeroMQ.

The two sides of a toolchain loop (:mod:`backbeat.planning.loops`) run as two block
processes joined by a ZeroMQ PAIR socket on ``ipc://`` in the run's private directory: the
evaluator binds (:func:`run_evaluator`), the processor connects (:class:`LoopChannel`, what
the user's ``process`` gets as ``loop_channel``).  Messages are multipart, request → reply:

=========================================== ==============================================
processor → evaluator                        evaluator → processor
=========================================== ==============================================
``val`` + request frames                     ``True``/``False`` + answer frames
``wrt``, output name, end index or ``None``  ``ack``
``rdi``                                      ``ack``
``don``                                      ``ack`` (the evaluator then commits)
=========================================== ==============================================

Any failure of the evaluator's user code is answered with ``err`` and the error, encoded as
every error between processes is (:meth:`backbeat.processes.outcome.Outcome.to_json`,
traceback paths relative to the prefix); the processor raises it as a
:class:`~backbeat.core.errors.UserCodeError`.  Request and answer values travel as a
one-unit batch in backbeat's wire encoding (:mod:`backbeat.data.wire`), never pickle.  As in
BEAT, a processor output ``write`` sends ``wrt`` with the end index the user gave (``None``
for the default) and a sequential processor sends ``rdi`` before every ``process`` call, on
which a sequential evaluator advances its main group and calls ``read(inputs)``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import zmq

from backbeat.core.errors import ExecutionError, UserCodeError
from backbeat.processes import zmqcontext
from backbeat.processes.outcome import Outcome, format_user_traceback

if TYPE_CHECKING:
    from backbeat.runtime.outputs import OutputList
    from backbeat.runtime.spec import LoopSpec

OK = b"ack"


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
        self._sock = zmqcontext.acquire().socket(zmq.PAIR)
        self._sock.setsockopt(zmq.LINGER, 1000)
        self._sock.connect(address)
        self.request = request
        self.answer = answer

    def _call(self, frames: list) -> list:
        self._sock.send_multipart(frames, copy=False)
        reply = self._sock.recv_multipart()
        if reply and reply[0] == b"err":
            try:
                failure = Outcome.from_json(json.loads(reply[1]))
            except (IndexError, ValueError):
                failure = Outcome("system", "malformed error reply")
            raise UserCodeError(f"the loop evaluator failed: {failure.message}", failure.traceback or "")
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
            zmqcontext.release()


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


def run_evaluator(algorithm: Any, loop: LoopSpec, *, inputs: Any, data_loaders: Any,
                  outputs: OutputList, parameters: dict, root: str | None = None) -> int:
    """Set the evaluator up, then answer the processor until ``don``; return messages served.

    Outputs are closed at the end; an output with missing data fails the evaluator.
    """
    from backbeat.data.values import value_type
    from backbeat.runtime.outputs import convert_value

    if hasattr(algorithm, "setup") and not _user_call(algorithm, "setup", dict(parameters)):
        raise ExecutionError("Could not setup algorithm (returned False)")
    if hasattr(algorithm, "prepare") and not _user_call(algorithm, "prepare", data_loaders):
        raise ExecutionError("Could not prepare algorithm (returned False)")
    request, answer = loop.request, loop.answer
    answer_type = value_type(answer[0], answer[1])
    sock = zmqcontext.acquire().socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.bind(loop.address)
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
                sock.send_multipart([b"err", json.dumps(Outcome("user", message, text).to_json()).encode()])
                raise
    finally:
        sock.close()
        zmqcontext.release()
    for output in outputs:
        output.close()
    missing = [o.name for o in outputs if o.isDataMissing()]
    if missing:
        raise ExecutionError("Missing data on the following output(s): " + ", ".join(missing))
    return served
