"""BEAT's algorithm-side outputs: ``Output``, ``OutputList``, ``SynchronizationListener`` (§5.6).

An :class:`Output` writes consecutive ranges of the synchronisation timeline into an
*output sink* (any object with ``write(value, start, end)``; optional ``close()`` and
``isConnected()``).  Each ``write`` covers ``[last written + 1, end]``.  ``end`` defaults
to the listener's ``data_index_end`` — the ``last_data_index`` of the block's main input
group, reported by :meth:`InputGroup.next` — or to ``last + 1`` when there is no listener
(autonomous algorithms).  An explicit ``end`` must lie in ``[last + 1, listener end]``,
otherwise BEAT's ``KeyError`` is raised.  Dicts are converted to the output's value type
with safe casting and no defaults, so a wrong or missing field fails where it is written.

``isDataMissing()`` is true while the listener's end differs from the last written
index: the driver checks it after the algorithm finished.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from operator import attrgetter
from typing import Any

from backbeat.data.compiled import Slots, dict_subscript, native

WRITE_INDEX_ERROR = (
    "Algorithm logic error on write(): `end_data_index' is not consistent with last written index"
)


class SynchronizationListener(Slots):
    """Remembers the interval of the main input group's current step."""

    def __init__(self) -> None:
        self.data_index_start = -1
        self.data_index_end = -1

    def onIntervalChanged(self, data_index_start: int, data_index_end: int) -> None:  # noqa: N802
        self.data_index_start = data_index_start
        self.data_index_end = data_index_end


def convert_value(value_type: Any, data: dict) -> Any:
    """Build a ``value_type`` object from ``data`` (safe casting, no defaults).

    Works whether ``from_dict`` is an instance method filling ``self`` (BEAT's
    baseformat style, may return ``self`` or ``None``) or a classmethod returning a
    new object.
    """
    build = getattr(value_type, "_build", None)
    if build is not None:  # backbeat value classes: one pass, no default construction first
        return build(data, "safe", False)
    obj = value_type()
    result = obj.from_dict(data, casting="safe", add_defaults=False)
    return obj if result is None else result


class Output(Slots):
    """One output of a block, writing to a sink in increasing index ranges."""

    def __init__(
        self,
        name: str,
        data_sink: Any,
        synchronization_listener: SynchronizationListener | None = None,
        force_start_index: int = 0,
        value_type: Any = None,
        on_write: Callable[[str, int], None] | None = None,
    ) -> None:
        self.name = str(name)
        self.last_written_data_index = force_start_index - 1
        self.nb_data_blocks_written = 0
        self.data_sink = data_sink
        self._sink_write = data_sink.write
        self.value_type = value_type if value_type is not None else getattr(data_sink, "value_type", None)
        self._synchronization_listener = synchronization_listener
        self._on_write = on_write
        self._buffer: list | None = None
        self._plain: tuple | None = None
        writer = getattr(data_sink, "writer", None)  # a cache writer whose buffer we may fill directly
        if (writer is not None and on_write is None and self.value_type is not None
                and getattr(writer, "type", None) is self.value_type
                and getattr(writer, "next_index", None) == force_start_index):
            add, ends, threshold, flush = writer.buffer()  # (add: the unit's values as they are now)
            self._buffer = [add, ends.append, ends, threshold, flush, writer.limit]
            self._plain = getattr(writer, "plain", None)  # (append, get): scalars and strings only
            if synchronization_listener is not None:
                self.write = self._direct_write(synchronization_listener)  # type: ignore[method-assign]

    def _direct_write(self, listener: SynchronizationListener) -> Callable[..., None]:
        """The common case of :meth:`write` as a closure over what it reads (one unit per step,
        of the output's type, into the cache writer's buffer); anything else goes to :meth:`write`."""
        assert self._buffer is not None
        append_value, append_end, ends, threshold, flush, limit = self._buffer
        vtype, general, output = self.value_type, Output.write, self
        if self._plain is not None:  # (the unit's values taken by C-level calls, no frame of the buffer's)
            append_row, get = self._plain
            if (native is not None and type(listener) is SynchronizationListener
                    and type(output) is Output):  # (the same, compiled: data.compiled)

                def write_general(data: Any, end_data_index: int | None = None) -> None:
                    general(output, data, end_data_index)  # (every other case: write_plain's signature)

                write_general.__qualname__ = "Output.write"
                return native.PlainWrite(listener, vtype, output, write_general, append_row, get, ends,
                                         threshold, flush, limit, *_one_field(get, append_row))

            def write_plain(data: Any, end_data_index: int | None = None) -> None:
                nonlocal threshold
                end = listener.data_index_end
                if end_data_index is None and type(data) is vtype and output.last_written_data_index < end <= limit:
                    append_row(get(data))
                    append_end(end)
                    output.last_written_data_index = end
                    output.nb_data_blocks_written += 1
                    if len(ends) >= threshold:
                        threshold = flush()
                else:
                    general(output, data, end_data_index)

            write_plain.__qualname__ = "Output.write"  # (a wrong call's TypeError names BEAT's API, as the C one's)
            return write_plain

        def write(data: Any, end_data_index: int | None = None) -> None:
            nonlocal threshold  # (only grows: one the general path left behind flushes early, harmlessly)
            end = listener.data_index_end
            if end_data_index is None and type(data) is vtype and output.last_written_data_index < end <= limit:
                append_value(data)  # (the unit's values taken now: data.snapshot)
                append_end(end)
                output.last_written_data_index = end
                output.nb_data_blocks_written += 1
                if len(ends) >= threshold:
                    threshold = flush()  # (the writer's next threshold: batches grow)
            else:
                general(output, data, end_data_index)

        write.__qualname__ = "Output.write"
        return write

    def __repr__(self) -> str:
        return f"Output({self.name!r}, last_written={self.last_written_data_index})"

    def _createData(self) -> Any:  # noqa: N802 (BEAT name)
        """A fresh, default-valued object of the output's value type."""
        if self.value_type is None:
            raise RuntimeError(
                "The currently used data sink is not bound to a dataformat - you cannot create "
                "uninitialized data under these circumstances"
            )
        return self.value_type()

    def _compute_end_data_index(self, end_data_index: int | None) -> int:
        listener = self._synchronization_listener
        if end_data_index is not None:
            end_data_index = int(end_data_index)
            if end_data_index < self.last_written_data_index + 1 or (
                listener is not None and end_data_index > listener.data_index_end
            ):
                raise KeyError(WRITE_INDEX_ERROR)
            return end_data_index
        if listener is not None:
            return listener.data_index_end
        return self.last_written_data_index + 1

    def write(self, data: Any, end_data_index: int | None = None) -> None:
        """Write ``data`` for ``[last written + 1, end_data_index]``."""
        listener = self._synchronization_listener
        if end_data_index is None and listener is not None:  # the common case, inlined
            end = listener.data_index_end
        else:
            end = self._compute_end_data_index(end_data_index)
        if type(data) is not self.value_type and isinstance(data, dict):
            if self.value_type is None:
                raise RuntimeError(f"output `{self.name}' has no dataformat to convert a dict into")
            data = convert_value(self.value_type, data)
        buffer = self._buffer
        if buffer is not None and type(data) is self.value_type and self.last_written_data_index < end <= buffer[5]:
            # straight into the cache writer's buffer: what its put() would check holds here
            buffer[0](data)
            buffer[1](end)
            if len(buffer[2]) >= buffer[3]:
                buffer[3] = buffer[4]()
        else:
            self._sink_write(data, self.last_written_data_index + 1, end)
        self.last_written_data_index = end
        self.nb_data_blocks_written += 1
        if self._on_write is not None:
            self._on_write(self.name, end)

    def isDataMissing(self) -> bool:  # noqa: N802
        listener = self._synchronization_listener
        return listener is not None and listener.data_index_end != self.last_written_data_index

    def isConnected(self) -> bool:  # noqa: N802
        probe = getattr(self.data_sink, "isConnected", None)
        return bool(probe()) if callable(probe) else True

    def close(self) -> None:
        closer = getattr(self.data_sink, "close", None)
        if callable(closer):
            closer()


def _one_field(get: Any, append_row: Any) -> tuple[str, list] | tuple[()]:
    """``(name, rows)`` when ``get`` is ``operator.attrgetter(name)`` of one plain name and ``append_row``
    is a list's ``append`` (a one-field format's buffer, data.snapshot): the compiled write then does
    ``rows.append(getattr(value, name))`` itself, what those two calls do (wave 16); else ``()``."""
    rows = getattr(append_row, "__self__", None)
    if type(get) is not attrgetter or type(rows) is not list or append_row != rows.append:
        return ()
    names = get.__reduce__()[1]
    if len(names) != 1 or type(names[0]) is not str or "." in names[0]:
        return ()
    return names[0], rows


@dict_subscript  # (`inputs["in"]`, `outputs["out"]` at every unit: dict's C subscript when compiled)
class OutputList(dict):
    """The outputs of a block, by name or position.

    A ``dict`` of output name → :class:`Output` underneath (``outputs["name"]`` is a C-level
    lookup); positions go through ``__missing__``, unknown names give ``None`` as in BEAT.
    Iteration, length, equality and hashing are those of a list of outputs.
    """

    __hash__ = object.__hash__  # type: ignore[assignment]  # identity, as BEAT's lists
    __eq__ = object.__eq__

    def __init__(self) -> None:
        super().__init__()
        self._outputs: list[Output] = []

    def __repr__(self) -> str:
        return f"OutputList({self._outputs!r})"

    def __missing__(self, index: object) -> Any:
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(self._outputs):
            return self._outputs[index]
        return None

    def __iter__(self) -> Iterator[Output]:
        return iter(list(self._outputs))

    def __len__(self) -> int:
        return len(self._outputs)

    def __bool__(self) -> bool:
        return bool(self._outputs)

    def add(self, output: Output) -> None:
        self._outputs.append(output)
        dict.setdefault(self, output.name, output)
