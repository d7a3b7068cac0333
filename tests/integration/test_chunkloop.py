"""The driver's chunk loop (units handed out a window or a received batch at a time) shows an
algorithm exactly what the general step loop shows, over a real ZeroMQ stream whose batches
grow (1, 2, 4 .. units: every batch boundary, the small stream's early end and the large
stream's plain path); values kept across units do not change; a writer's rows gathered by one
``numpy.array`` call are the bytes ``numpy.stack`` gave, and anything else still goes through
``numpy.stack`` with its errors; ``InputList.hasMoreData`` of one input and of several."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from _steploop import EXP, FMT, F, Recorder, run_steps

from backbeat.data.cachewriter import CacheWriter
from backbeat.data.casting import stack_rows
from backbeat.data.values import value_type
from backbeat.runtime.inputs import Input, InputGroup, InputList, ListDataSource
from backbeat.runtime.outputs import SynchronizationListener


def _units(n: int) -> list[tuple[int, int]]:
    """Units of 1 to 3 indices each."""
    out, at = [], 0
    for k in range(n):
        out.append((at, at + k % 3))
        at += k % 3 + 1
    return out


def _run(source, stop_after):
    algo = Recorder(stop_after)
    return (algo, *run_steps(source, algo))


@pytest.mark.parametrize("n, stop_after", [(1, None), (7, None), (7, 4), (1500, None), (1500, 1100)])
def test_a_stream_through_the_chunk_loop_shows_what_the_general_loop_shows(tmp_path, n, stop_after):
    from backbeat.runtime import streams
    from backbeat.runtime.spec import StreamTarget

    units = _units(n)
    address = f"ipc://{tmp_path}/s"
    sender = streams.StreamSender([StreamTarget(address, str(tmp_path / "cancel"))])
    source = streams.StreamSource(address, FMT, EXP)
    writer = CacheWriter(tmp_path / "out.h5", FMT, EXP)
    writer.grow(1, 256)  # batches of 1, 2, 4 .. 256 units
    writer.on_batch = sender.send
    try:
        for k, (s, e) in enumerate(units):
            writer.put({"value": np.float64(k + 0.5)}, s, e)
        digest = writer.seal()
        if sender.early:
            sender.announce(writer.start, writer.last, digest)
        else:
            writer.close()
            sender.finish(writer.last)
        streamed = _run(source, stop_after)
        if sender.early:
            threading.Timer(0.1, lambda: sender.confirm(writer.close())).start()
        source.settle()
        sender.acks()
    finally:
        sender.close()
        source.close()
    listed = _run(ListDataSource([F(value=np.float64(k + 0.5)) for k in range(n)], units), stop_after)
    assert streamed[0].seen == listed[0].seen and streamed[1:] == listed[1:]
    assert len(streamed[0].seen) == (stop_after or n)
    assert [m[7] for m in streamed[0].seen] == [True] * (len(streamed[0].seen) - 1) + [stop_after is not None]
    # values kept across units are those it was given (changed only by itself), each its own object
    kept = streamed[0].kept
    assert [float(v.value) for v, _ in kept] == [-1.0] * len(kept)
    assert len({id(v) for v, _ in kept}) == len(kept)
    assert [c for _, c in kept] == [k + 0.5 for k in range(len(kept))]


def test_rows_gathered_at_once_are_the_bytes_stack_gave_and_anything_else_is_stacked_as_before():
    f8, f4 = np.dtype("<f8"), np.dtype("<f4")
    base = np.random.default_rng(1).random((8, 5))
    rows = list(base[::2])  # (views, not contiguous with each other)
    got = stack_rows(rows, f8, (5,))
    assert got.dtype == f8 and got.tobytes() == np.stack(rows).tobytes() and got.flags.c_contiguous
    assert not np.shares_memory(got, base)
    odd = [
        [r.astype(f4) for r in rows],  # another dtype: stacked, then cast
        [np.arange(5, dtype=np.int64) + k for k in range(3)],
        [rows[0], rows[1].astype(f4)],  # mixed dtypes
        [np.ma.masked_array(r) for r in rows],  # an ndarray subclass
        [r[:4] for r in rows],  # rows of equal, other shapes: as numpy.stack made them
    ]
    for items in odd:
        want = np.asarray(np.stack(items), dtype=f8)
        have = stack_rows(items, f8, (5,))
        assert have.dtype == want.dtype and have.shape == want.shape and have.tobytes() == want.tobytes()
    ragged = [rows[0], rows[1][:4]]
    with pytest.raises(ValueError) as stacked:
        np.stack(ragged)
    with pytest.raises(ValueError) as ours:
        stack_rows(ragged, f8, (5,))
    assert str(ours.value) == str(stacked.value)


def test_the_writer_gathers_vector_rows_into_the_same_file_content(tmp_path):
    fmt, exp = "user/v/1", {"value": [4, "float64"]}
    V = value_type(fmt, exp)
    digests = []
    for cast in (False, True):  # plain float64 rows (one numpy.array call) / int rows (numpy.stack)
        writer = CacheWriter(tmp_path / f"v{cast}.h5", fmt, exp, buffer_units=3)
        for k in range(10):
            row = np.arange(4, dtype=np.int64) + k
            v = V(value=row.astype(np.float64))
            if cast:
                v.__dict__["value"] = row  # (bypassing the setter: what the writer still casts)
            writer.put(v, k, k)
        digests.append(writer.close())
    assert digests[0] == digests[1]


def test_has_more_data_of_one_input_and_of_several():
    listener = SynchronizationListener()
    inputs = InputList()
    main = InputGroup("a", listener)
    inputs.add(main)
    assert not inputs.hasMoreData()  # no input at all
    main.add(Input("x", None, ListDataSource([1, 2], [(0, 0), (1, 1)])))
    assert inputs.hasMoreData()
    main.platform_next()
    main.platform_next()
    assert not inputs.hasMoreData()  # the one input is read to its end
    other = InputGroup("b", None, restricted_access=False)
    other.add(Input("y", None, ListDataSource([3], [(0, 1)])))
    inputs.add(other)
    assert inputs.hasMoreData()  # a second input, not read yet
    other.next()
    assert not inputs.hasMoreData()
