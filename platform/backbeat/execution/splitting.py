"""Split blocks: cutting a block's synchronisation timeline into ranges, assembling the slots.

A block whose algorithm is *splittable* may run as N independent slices, each over an
inclusive range ``[start, end]`` of its synchronisation channel.  A cut is only legal at
an index where **every** input starts a new data unit (otherwise a unit would be split
in two).  Two helpers:

* :func:`found_split_ranges` reproduces BEAT's ``foundSplitRanges`` exactly (spec §5.9):
  its input is, per input, the list of unit *start* indices followed by ``last end + 1``.
* :func:`split_ranges` is backbeat's own splitter: it takes the ``(start, end)`` unit
  lists the data sources give (``data_indices()``) and returns at most ``n`` ranges cut
  at common boundaries, each cut placed at the common boundary nearest to an even share.

:func:`slot_ranges` gives the ranges of a :class:`~backbeat.runtime.spec.BlockSpec`; each
slot writes its own file (:meth:`backbeat.cache.store.CacheStore.slot_path`) and
:func:`assemble` concatenates them into the single cache entry, identical (same key, same
content digest) to the output of an unsplit run (:func:`assemble_job`: every output of a job).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from backbeat.core import exiting
from backbeat.core.errors import UsageError
from backbeat.runtime.spec import BlockSpec

if TYPE_CHECKING:
    from backbeat.cache.store import CacheStore
    from backbeat.planning.model import Job


def _common_indices(lists: Sequence[Sequence[int]]) -> list[int]:
    common = set(lists[0])
    for other in lists[1:]:
        common &= set(other)
    return sorted(common)


def found_split_ranges(lists: Sequence[Sequence[int]], n_split: int) -> list[tuple[int, int]]:
    """BEAT's ``foundSplitRanges``: greedy cut at common start indices.

    >>> found_split_ranges([[0, 2, 4, 6, 8, 10, 12], [0, 3, 6, 9, 12]], 2)
    [(0, 5), (6, 11)]
    >>> found_split_ranges([[0, 2, 4, 6, 8, 10, 12, 15], [0, 3, 6, 9, 12, 15]], 5)
    [(0, 5), (6, 11), (12, 14)]
    """
    if n_split < 1:
        raise UsageError(f"cannot split into {n_split} ranges (need at least 1)")
    if not lists or any(len(x) == 0 for x in lists):
        return []
    common = _common_indices(lists)
    result: list[tuple[int, int]] = []
    target = float(common[-1]) / n_split if common else 0.0
    cuts = 0
    begin = 0
    for i in range(1, len(common)):
        if common[i] >= (cuts + 1) * target and cuts < n_split - 1:
            result.append((common[begin], common[i] - 1))
            begin = i
            cuts += 1
        elif i == len(common) - 1:
            result.append((common[begin], common[i] - 1))
    return result


def split_ranges(index_lists: Sequence[Sequence[tuple[int, int]]], n: int) -> list[tuple[int, int]]:
    """Cut the common span of ``index_lists`` into at most ``n`` contiguous ranges.

    ``index_lists`` holds, per input of the synchronisation channel, its data units as
    ``(start, end)`` pairs (inclusive, sorted, contiguous).  The result covers
    ``[max first start, min last end]``; every cut lies where all inputs start a unit.
    Fewer than ``n`` ranges come back when there are not enough common boundaries.

    >>> split_ranges([[(0, 4), (5, 9)], [(i, i) for i in range(10)]], 2)
    [(0, 4), (5, 9)]
    >>> split_ranges([[(0, 9)]], 3)
    [(0, 9)]
    """
    if n < 1:
        raise UsageError(f"cannot split into {n} ranges (need at least 1)")
    if not index_lists or any(len(x) == 0 for x in index_lists):
        return []
    first = max(int(x[0][0]) for x in index_lists)
    last = min(int(x[-1][1]) for x in index_lists)
    if first > last:
        return []
    starts = [{int(s) for s, _ in units if first < s <= last} for units in index_lists]
    common = set.intersection(*starts) if starts else set()
    boundaries = sorted(common)
    cuts: list[int] = []
    length = last - first + 1
    for k in range(1, n):
        if not boundaries:
            break
        goal = first + k * length / n
        best = min(boundaries, key=lambda b: (abs(b - goal), b))
        if (not cuts or best > cuts[-1]) and best > first:
            cuts.append(best)
    edges = [first] + cuts + [last + 1]
    return [(edges[i], edges[i + 1] - 1) for i in range(len(edges) - 1)]


def assemble(parts: Sequence[str], final: str | os.PathLike, fmt: str, expanded: dict, key: str,
             start: int, end: int, compression: str | None = None) -> None:
    """Concatenate the (verified) slot files ``parts`` of a split block into the cache file
    ``final`` covering ``[start, end]``; the parts are removed once it is committed."""
    from backbeat.data import cachereader, cachewriter

    writer = cachewriter.CacheWriter(final, fmt, expanded, key=key, start=start, end=end, compression=compression,
                                     writeback=not exiting.answers_later())  # (as its blocks: scheduler._spec)
    try:
        for part in parts:
            with cachereader.CacheReader(part, verify=True, key=key) as reader:
                for batch in reader.iter_batches():
                    writer.write_batch(batch)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    for part in parts:
        Path(part).unlink(missing_ok=True)


def assemble_job(store: CacheStore, job: Job, ranges: list[tuple[int, int]], expanded: dict[str, dict],
                 compression: str | None = None) -> None:
    """:func:`assemble` each output of the split block ``job`` from its slot files (one per range)."""
    for o in job.outputs.values():
        assemble([str(store.slot_path(o.key, k)) for k in range(len(ranges))], store.output_path(o.key),
                 o.dataformat, expanded[o.dataformat], o.key, ranges[0][0], ranges[-1][1], compression)


def slot_ranges(spec: BlockSpec, nb_slots: int) -> list[tuple[int, int]]:
    """Split ranges for a block: over the units of its inputs on its synchronisation channel,
    read from their cache files or asked of the database provider (``[]`` if there is none)."""
    from backbeat.data import cachereader

    lists: list[Sequence[tuple[int, int]]] = []
    for inp in spec.inputs.values():
        if inp.channel != spec.channel:
            continue
        if inp.source == "cache":
            with cachereader.CacheReader(str(inp.path), verify=False, key=inp.key or None) as reader:
                lists.append(list(zip(reader.starts.tolist(), reader.ends.tolist(), strict=True)))
        elif inp.source == "dataset":
            from backbeat.runtime.dbprovider import DatabaseClient

            if spec.database is None or inp.dataset is None or inp.output is None:
                raise UsageError(f"block `{spec.name}': no database provider to split its dataset input")
            client = DatabaseClient(spec.database)
            try:
                src = client.source(inp.dataset, inp.output, inp.dataformat, spec.formats[inp.dataformat])
                lists.append(src.data_indices())
            finally:
                client.close()
    return split_ranges(lists, nb_slots) if lists else []
