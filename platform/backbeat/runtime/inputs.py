"""BEAT's algorithm-side inputs: ``Input``, ``InputGroup``, ``InputList`` (spec §5.6).

Every data unit covers an inclusive ``[start, end]`` range of indices on the timeline of
its *synchronisation channel*.  An :class:`Input` walks the units of one *data source*;
an :class:`InputGroup` holds the inputs of one channel and advances them together: on
``next()`` only the inputs whose current unit ends first move on, the others keep their
unit and are flagged ``data_same_as_previous``.  The group's indices (``data_index``,
``data_index_end``, ``first_data_index``, ``last_data_index``) are recomputed after each
step and ``(first_data_index, last_data_index)`` is reported to the group's
synchronisation listener (which the outputs read to know which range they write).

The group on the block's own channel is *restricted*: only the platform advances it
(the driver lifts the restriction around its own ``next()``); user code calling
``next()`` on it gets ``RuntimeError("Not authorized")``, exactly like BEAT.

A *data source* is any object with ``__len__()`` (number of units),
``__getitem__(i) -> (value, start, end)`` and ``data_indices() -> [(start, end), ...]``;
it may also offer ``getAtDataIndex(index)`` and ``reset()``.  :class:`ListDataSource` is
the in-memory one.  Names and method spellings (``hasMoreData``, ``groupOf`` …) are
BEAT's, because user algorithms call them.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from backbeat.core.errors import DataError
from backbeat.data.compiled import Slots, dict_subscript


@runtime_checkable
class DataSource(Protocol):
    """What inputs and data loaders read from."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, int, int]: ...

    def data_indices(self) -> list[tuple[int, int]]: ...


def first(iterable: Iterable[Any], default: Any = None) -> Any:
    """The first element of ``iterable``, or ``default`` when it is empty."""
    for item in iterable:
        return item
    return default


class ListDataSource:
    """An in-memory data source over parallel lists of values and ``(start, end)`` units."""

    def __init__(self, values: Sequence[Any], indices: Sequence[tuple[int, int]]) -> None:
        if len(values) != len(indices):
            raise DataError(f"ListDataSource: {len(values)} values but {len(indices)} (start, end) pairs")
        previous_end: int | None = None
        for start, end in indices:
            if end < start:
                raise DataError(f"ListDataSource: unit ({start}, {end}) ends before it starts")
            if previous_end is not None and start != previous_end + 1:
                raise DataError(f"ListDataSource: unit ({start}, {end}) does not follow index {previous_end}")
            previous_end = end
        self._values = list(values)
        self._indices = [(int(s), int(e)) for s, e in indices]
        self.nb_reads = 0

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        if index < 0 or index >= len(self._values):
            raise IndexError(f"data unit {index} out of range (0..{len(self._values) - 1})")
        self.nb_reads += 1
        start, end = self._indices[index]
        return self._values[index], start, end

    def data_indices(self) -> list[tuple[int, int]]:
        return list(self._indices)

    def getAtDataIndex(self, data_index: int) -> tuple[Any, int | None, int | None]:  # noqa: N802 (BEAT name)
        return unit_at(self, data_index)

    def reset(self) -> None:
        """Nothing to rewind for an in-memory source (kept for the protocol)."""


def unit_at(source: Any, data_index: int) -> tuple[Any, int | None, int | None]:
    """The unit of ``source`` that covers ``data_index`` or ``(None, None, None)``.

    Uses the source's own ``getAtDataIndex`` when it is not :class:`ListDataSource`'s
    delegation back here; otherwise a binary search over ``data_indices()`` (cached on
    the source object when possible).
    """
    own = getattr(type(source), "getAtDataIndex", None)
    if own is not None and own is not ListDataSource.getAtDataIndex:
        return source.getAtDataIndex(data_index)
    ends = getattr(source, "_backbeat_unit_ends", None)
    if ends is None:
        ends = [int(e) for _, e in source.data_indices()]
        try:
            source._backbeat_unit_ends = ends
        except AttributeError:
            pass
    pos = bisect.bisect_left(ends, data_index)
    if pos >= len(ends):
        return (None, None, None)
    value, start, end = source[pos]
    if start <= data_index <= end:
        return (value, start, end)
    return (None, None, None)


class Input(Slots):  # (per-step attributes in C slots when compiled: data.compiled)
    """One input of a block: walks the data units of its data source."""

    def __init__(self, name: str, data_format: Any, data_source: Any) -> None:
        self.group: InputGroup | None = None
        self.name = str(name)
        self.data: Any = None
        self.data_index = -1
        self.data_index_end = -1
        self.next_data_index = 0
        self.data_same_as_previous = True
        self.data_format = data_format
        self.nb_data_blocks_read = 0
        self.data_source = data_source
        self._n = len(data_source)  # sources have a fixed number of units

    def __repr__(self) -> str:
        return f"Input({self.name!r}, [{self.data_index}, {self.data_index_end}])"

    def isDataUnitDone(self) -> bool:  # noqa: N802
        """Whether the current unit will change at the next step of the group."""
        group = self.group
        last = group.last_data_index if group is not None else -1
        if self.data_index_end >= 0 and last == -1:
            return True
        return self.data_index_end == last

    def hasMoreData(self) -> bool:  # noqa: N802
        """Whether the source has units not read yet."""
        return self.next_data_index < self._n

    def hasDataChanged(self) -> bool:  # noqa: N802
        """Whether the current unit differs from the one of the previous step."""
        return not self.data_same_as_previous

    def next(self) -> None:
        """Load the next unit (only outside restricted groups)."""
        group = self.group
        if group is not None and group.restricted_access:
            raise RuntimeError("Not authorized")
        self._load()

    def _load(self) -> None:
        if self.next_data_index >= self._n:
            group = self.group
            channel = group.channel if group is not None else "?"
            raise RuntimeError(
                f"User algorithm asked for more data for channel `{channel}' on input `{self.name}', "
                "but it is over (no more data). This normally indicates a programming error on the user side."
            )
        self.data, self.data_index, self.data_index_end = self.data_source[self.next_data_index]
        self.data_same_as_previous = False
        self.next_data_index += 1
        self.nb_data_blocks_read += 1


class InputGroup(Slots):
    """The inputs of one synchronisation channel, advanced together."""

    def __init__(
        self, channel: str, synchronization_listener: Any = None, restricted_access: bool = True
    ) -> None:
        self._inputs: list[Input] = []
        self._by_name: dict[str, Input] = {}
        self.data_index = -1
        self.data_index_end = -1
        self.first_data_index = -1
        self.last_data_index = -1
        self.channel = str(channel)
        self.synchronization_listener = synchronization_listener
        self.restricted_access = restricted_access

    def __repr__(self) -> str:
        names = ", ".join(i.name for i in self._inputs)
        return f"InputGroup({self.channel!r}, [{names}], restricted={self.restricted_access})"

    def __getitem__(self, index: str | int) -> Input | None:
        if isinstance(index, str):
            return self._by_name.get(index)
        if isinstance(index, int) and 0 <= index < len(self._inputs):
            return self._inputs[index]
        return None

    def __iter__(self) -> Iterator[Input]:
        return iter(list(self._inputs))

    def __len__(self) -> int:
        return len(self._inputs)

    def add(self, input_: Input) -> None:
        input_.group = self
        self._inputs.append(input_)
        self._by_name.setdefault(input_.name, input_)
        if self._list is not None:
            self._list._reindex()

    _list: InputList | None = None  # the InputList holding this group (for its name index)

    def hasMoreData(self) -> bool:  # noqa: N802
        for x in self._inputs:
            if x.next_data_index < x._n:
                return True
        return False

    def next(self) -> None:
        """Advance the inputs whose unit ends first; recompute the group's indices."""
        if self.restricted_access:
            raise RuntimeError("Not authorized")
        self._advance()

    def _advance(self) -> None:
        if not self._inputs:
            return
        if len(self._inputs) == 1:  # fast path: one input, it always advances (Input._load inlined)
            x = self._inputs[0]
            i = x.next_data_index
            if i >= x._n:
                x._load()  # raises the "no more data" error
            x.data, start, end = x.data_source[i]
            x.data_index, x.data_index_end = start, end
            x.data_same_as_previous = False
            x.next_data_index = i + 1
            x.nb_data_blocks_read += 1
            self.data_index = self.first_data_index = start
            self.data_index_end = self.last_data_index = end
            if self.synchronization_listener is not None:
                self.synchronization_listener.onIntervalChanged(start, end)
            return
        lowest_end = min(x.data_index_end for x in self._inputs)
        for input_ in self._inputs:
            if input_.data_index_end == lowest_end:
                input_._load()
            else:
                input_.data_same_as_previous = True
        starts = [x.data_index for x in self._inputs]
        ends = [x.data_index_end for x in self._inputs]
        self.data_index = min(starts)
        self.data_index_end = max(ends)
        self.first_data_index = max(starts)
        self.last_data_index = min(ends)
        if self.synchronization_listener is not None:
            self.synchronization_listener.onIntervalChanged(self.first_data_index, self.last_data_index)

    def platform_next(self) -> None:
        """Advance a restricted group on behalf of the platform (the driver's step)."""
        self._advance()


@dict_subscript  # (`inputs["in"]`, `outputs["out"]` at every unit: dict's C subscript when compiled)
class InputList(dict):
    """All groups of a block; ``main_group`` is the first restricted group added.

    A ``dict`` of input name → :class:`Input` underneath, so that ``inputs["name"]`` — done
    for every unit by user code — is a C-level lookup; positions (``inputs[0]``) and
    unknown names go through ``__missing__`` (``None`` when there is no such input, as BEAT).
    Iteration, length, equality and hashing are those of BEAT's list of inputs.
    """

    __hash__ = object.__hash__  # type: ignore[assignment]  # identity, as BEAT's lists
    __eq__ = object.__eq__

    def __init__(self) -> None:
        super().__init__()
        self._groups: list[InputGroup] = []
        self.main_group: InputGroup | None = None

    def __repr__(self) -> str:
        return f"InputList({self._groups!r})"

    def add(self, group: InputGroup) -> None:
        if group.restricted_access and self.main_group is None:
            self.main_group = group
        self._groups.append(group)
        group._list = self
        self._reindex()

    def _reindex(self) -> None:
        dict.clear(self)
        for g in self._groups:
            for x in g._inputs:
                dict.setdefault(self, x.name, x)
        only = [x for g in self._groups for x in g._inputs]
        self._only = only[0] if len(only) == 1 else None

    def __missing__(self, index: object) -> Input | None:
        if isinstance(index, int) and not isinstance(index, bool) and index >= 0:
            for group in self._groups:
                if index < len(group):
                    return group[index]
                index -= len(group)
        return None

    def __iter__(self) -> Iterator[Input]:
        for group in list(self._groups):
            yield from group

    def __len__(self) -> int:
        return sum(len(g) for g in self._groups)

    def __bool__(self) -> bool:
        return len(self) > 0

    def nbGroups(self) -> int:  # noqa: N802
        return len(self._groups)

    def groupOf(self, input_name: str) -> InputGroup | None:  # noqa: N802
        return first(g for g in self._groups if g[input_name] is not None)

    _only: Input | None = None  # the list's one input, when it has exactly one

    def hasMoreData(self) -> bool:  # noqa: N802
        x = self._only  # (analyzers ask at every unit; most blocks have one input)
        if x is not None:
            return x.next_data_index < x._n
        for g in self._groups:  # (InputGroup.hasMoreData inlined)
            for x in g._inputs:
                if x.next_data_index < x._n:
                    return True
        return False

    def group(self, name_or_index: str | int) -> InputGroup | None:
        if isinstance(name_or_index, str):
            return first(g for g in self._groups if g.channel == name_or_index)
        if isinstance(name_or_index, int):
            try:
                return self._groups[name_or_index]
            except IndexError:
                return None
        return None

    @property
    def groups(self) -> list[InputGroup]:
        return list(self._groups)
