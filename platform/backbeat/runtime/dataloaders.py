"""BEAT's API-v2 data loaders: ``DataLoader``, ``DataView``, ``DataLoaderList`` (spec §5.7).

A :class:`DataLoader` gives random access to the inputs of one synchronisation channel.
Its units are the *mixed* partition of its inputs' units (:func:`mix_data_indices`): a
boundary wherever any input's unit ends, so ``loader[i]`` returns, for the i-th mixed
unit ``[start, end]``, the value of every input whose unit covers ``start``.  The last
value read per input is kept, so walking the units in order reads each source unit once.

``loader.view(input, i)`` restricts the loader to the i-th unit of one input (the mixed
units inside it) as a :class:`DataView`.  A :class:`DataLoaderList` holds one loader per
channel; its ``main_loader`` is the loader of the block's own channel (see
:meth:`DataLoaderList.add`).  Data sources follow the protocol of :mod:`backbeat.inputs`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Sequence
from typing import Any


def mix_data_indices(lists: Sequence[Sequence[tuple[int, int]]]) -> list[tuple[int, int]]:
    """The most granular partition common to several unit lists (BEAT ``mixDataIndices``).

    The span is ``[max first start, min last end]``; a unit ends at every index that
    ends a unit in any list.

    >>> mix_data_indices([[(0, 2), (3, 4)], [(0, 1), (2, 3), (4, 4)]])
    [(0, 1), (2, 2), (3, 3), (4, 4)]
    >>> mix_data_indices([[(0, 2), (3, 4)], [(0, 4)]])
    [(0, 2), (3, 4)]
    """
    lists = [x for x in lists]
    if not lists or any(len(x) == 0 for x in lists):
        return []
    start = max(int(x[0][0]) for x in lists)
    end = min(int(x[-1][1]) for x in lists)
    ends = sorted({int(e) for units in lists for _, e in units if start <= e <= end})
    result: list[tuple[int, int]] = []
    current = start
    for e in ends:
        result.append((current, e))
        current = e + 1
    return result


class _Slot:
    """Per-input state of a loader or view: source, units, last value read."""

    __slots__ = ("data_source", "data_indices", "starts", "ends", "data", "start_index", "end_index")

    def __init__(
        self,
        data_source: Any,
        data_indices: list[tuple[int, int]],
        source_units: tuple[list[int], list[int]] | None = None,
    ) -> None:
        self.data_source = data_source
        #: units as reported by ``count`` (a view's are clipped to the view)
        self.data_indices = data_indices
        #: the source's own unit starts and ends, for lookups by index
        if source_units is None:
            source_units = ([s for s, _ in data_indices], [e for _, e in data_indices])
        self.starts, self.ends = source_units
        self.data: Any = None
        self.start_index = -1
        self.end_index = -1

    def value_at(self, index: int) -> Any:
        if index < self.start_index or self.end_index < index:
            pos = bisect.bisect_left(self.ends, index)
            if pos < len(self.ends) and self.starts[pos] <= index:
                self.data, self.start_index, self.end_index = self.data_source[pos]
            else:
                self.data, self.start_index, self.end_index = None, -1, -1
        return self.data


def _read(slots: dict[str, _Slot], units: list[tuple[int, int]], index: int) -> tuple[Any, Any, Any]:
    if index < 0 or index >= len(units):
        return (None, None, None)
    start, end = units[index]
    return ({name: slot.value_at(start) for name, slot in slots.items()}, start, end)


class DataView:
    """A loader restricted to a contiguous run of its mixed units."""

    def __init__(self, data_loader: DataLoader, data_indices: list[tuple[int, int]]) -> None:
        self.data_indices = list(data_indices)
        self.nb_data_units = len(self.data_indices)
        self.data_index_start = self.data_indices[0][0] if self.data_indices else -1
        self.data_index_end = self.data_indices[-1][1] if self.data_indices else -1
        self.infos: dict[str, _Slot] = {}
        lo, hi = self.data_index_start, self.data_index_end
        for name, slot in data_loader.infos.items():
            clipped: list[tuple[int, int]] = []
            current = lo
            # the input's units ending inside [lo, hi], clipped to start at lo
            for e in slot.ends[bisect.bisect_left(slot.ends, lo) : bisect.bisect_right(slot.ends, hi)]:
                clipped.append((current, e))
                current = e + 1
            if self.data_indices and (not clipped or clipped[-1][1] != hi):
                clipped.append((current, hi))
            self.infos[name] = _Slot(slot.data_source, clipped, (slot.starts, slot.ends))

    def __repr__(self) -> str:
        return f"DataView([{self.data_index_start}, {self.data_index_end}], {self.nb_data_units} units)"

    def count(self, input_name: str | None = None) -> int | None:
        if input_name is None:
            return self.nb_data_units
        slot = self.infos.get(input_name)
        return None if slot is None else len(slot.data_indices)

    def __len__(self) -> int:
        return self.nb_data_units

    def __getitem__(self, index: int) -> tuple[Any, Any, Any]:
        return _read(self.infos, self.data_indices, index)


class DataLoader:
    """Random access to the synchronised inputs of one channel."""

    def __init__(self, channel: str) -> None:
        self.channel = str(channel)
        self.infos: dict[str, _Slot] = {}
        self.mixed_data_indices: list[tuple[int, int]] = []
        self._mixed_starts: list[int] = []
        self._mixed_ends: list[int] = []
        self.nb_data_units = 0
        self.data_index_start = -1
        self.data_index_end = -1
        self.on_read: Callable[[int], None] | None = None  # told of each unit read (progress)

    def __repr__(self) -> str:
        return f"DataLoader({self.channel!r}, {list(self.infos)}, {self.nb_data_units} units)"

    def reset(self) -> None:
        """Reset the data sources and forget the values kept."""
        for slot in self.infos.values():
            resetter = getattr(slot.data_source, "reset", None)
            if callable(resetter):
                resetter()
            slot.data, slot.start_index, slot.end_index = None, -1, -1

    def add(self, input_name: str, data_source: Any) -> None:
        self.infos[input_name] = _Slot(data_source, [(int(s), int(e)) for s, e in data_source.data_indices()])
        self.mixed_data_indices = mix_data_indices([s.data_indices for s in self.infos.values()])
        self._mixed_starts = [u[0] for u in self.mixed_data_indices]
        self._mixed_ends = [u[1] for u in self.mixed_data_indices]
        self.nb_data_units = len(self.mixed_data_indices)
        if self.mixed_data_indices:
            self.data_index_start = self.mixed_data_indices[0][0]
            self.data_index_end = self.mixed_data_indices[-1][1]
        else:
            self.data_index_start = self.data_index_end = -1

    def input_names(self) -> list[str]:
        return list(self.infos)

    def count(self, input_name: str | None = None) -> int:
        if input_name is None:
            return self.nb_data_units
        slot = self.infos.get(input_name)
        return 0 if slot is None else len(slot.data_indices)

    def __len__(self) -> int:
        return self.nb_data_units

    def view(self, input_name: str, index: int) -> DataView | None:
        slot = self.infos.get(input_name)
        if slot is None or index < 0 or index >= len(slot.data_indices):
            return None
        lo, hi = slot.data_indices[index]
        # mixed units are contiguous and sorted: those inside [lo, hi] form one slice
        first = bisect.bisect_left(self._mixed_starts, lo)
        last = bisect.bisect_right(self._mixed_ends, hi)
        return DataView(self, self.mixed_data_indices[first:last])

    def __getitem__(self, index: int) -> tuple[Any, Any, Any]:
        if self.on_read is not None:
            self.on_read(index)
        return _read(self.infos, self.mixed_data_indices, index)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["infos"] = {name: _Slot(s.data_source, s.data_indices) for name, s in self.infos.items()}
        state["on_read"] = None  # (the driver's progress hook of this process: not data)
        return state


class DataLoaderList:
    """The data loaders of a block, one per channel."""

    def __init__(self) -> None:
        self._loaders: list[DataLoader] = []
        self.main_loader: DataLoader | None = None

    def __repr__(self) -> str:
        return f"DataLoaderList({self._loaders!r}, main={getattr(self.main_loader, 'channel', None)!r})"

    def add(self, data_loader: DataLoader, main: bool | None = None) -> None:
        """Add a loader; ``main=True`` makes it the main loader.

        With ``main=None`` the first loader added becomes main (BEAT's rule);
        :func:`backbeat.driver.build_inputs` passes ``main`` explicitly so the main
        loader is always the block's own channel.
        """
        if main or (main is None and self.main_loader is None):
            self.main_loader = data_loader
        self._loaders.append(data_loader)

    def __getitem__(self, name_or_index: str | int) -> DataLoader | None:
        if isinstance(name_or_index, str):
            for loader in self._loaders:
                if loader.channel == name_or_index:
                    return loader
            return None
        if isinstance(name_or_index, int):
            try:
                return self._loaders[name_or_index]
            except IndexError:
                return None
        return None

    def __iter__(self) -> Iterator[DataLoader]:
        return iter(list(self._loaders))

    def __len__(self) -> int:
        return len(self._loaders)

    def loaderOf(self, input_name: str) -> DataLoader | None:  # noqa: N802
        for loader in self._loaders:
            if input_name in loader.infos:
                return loader
        return None

    def secondaries(self) -> DataLoaderList:
        """All loaders but the main one (a list without a main loader)."""
        others = DataLoaderList()
        for loader in self._loaders:
            if loader is not self.main_loader:
                others._loaders.append(loader)
        return others
