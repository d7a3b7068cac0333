"""Inputs, groups and outputs: BEAT's synchronisation semantics on multi-frequency channels."""

from __future__ import annotations

import numpy as np
import pytest

from backbeat.core.errors import DataError
from backbeat.data.values import value_type
from backbeat.runtime.inputs import Input, InputGroup, InputList, ListDataSource, first, unit_at
from backbeat.runtime.outputs import WRITE_INDEX_ERROR, Output, OutputList, SynchronizationListener

OVER = (
    "User algorithm asked for more data for channel `{}' on input `{}', but it is over (no more data). "
    "This normally indicates a programming error on the user side."
)


def source_a() -> ListDataSource:
    return ListDataSource(["a0", "a1"], [(0, 4), (5, 9)])


def source_b() -> ListDataSource:
    return ListDataSource([f"b{i}" for i in range(10)], [(i, i) for i in range(10)])


class Sink:
    def __init__(self) -> None:
        self.written: list[tuple] = []
        self.closed = False

    def write(self, value, start, end) -> None:
        self.written.append((value, start, end))

    def close(self) -> None:
        self.closed = True


def make_group(restricted: bool = False) -> tuple[InputGroup, SynchronizationListener]:
    listener = SynchronizationListener()
    group = InputGroup("ch", listener, restricted_access=restricted)
    group.add(Input("a", "user/a/1", source_a()))
    group.add(Input("b", "user/b/1", source_b()))
    return group, listener


def test_first():
    assert first([]) is None
    assert first([], 3) == 3
    assert first(iter([4, 5])) == 4


def test_list_source_and_unit_at():
    src = source_a()
    assert len(src) == 2 and src[1] == ("a1", 5, 9) and src.data_indices() == [(0, 4), (5, 9)]
    assert unit_at(src, 7) == ("a1", 5, 9)
    assert unit_at(src, 0) == ("a0", 0, 4)
    assert unit_at(src, 10) == (None, None, None)
    assert src.getAtDataIndex(4) == ("a0", 0, 4)
    with pytest.raises(IndexError):
        src[2]
    with pytest.raises(DataError, match="does not follow"):
        ListDataSource([1, 2], [(0, 1), (3, 4)])
    with pytest.raises(DataError, match="ends before"):
        ListDataSource([1], [(2, 1)])
    with pytest.raises(DataError, match="2 values but 1"):
        ListDataSource([1, 2], [(0, 1)])


def test_group_advances_only_the_inputs_that_end_first():
    group, listener = make_group()
    a, b = group["a"], group["b"]
    assert group.hasMoreData() and a.data_index == -1
    group.next()
    assert (a.data, a.data_index, a.data_index_end) == ("a0", 0, 4)
    assert (b.data, b.data_index, b.data_index_end) == ("b0", 0, 0)
    assert (group.data_index, group.data_index_end, group.first_data_index, group.last_data_index) == (
        0,
        4,
        0,
        0,
    )
    assert (listener.data_index_start, listener.data_index_end) == (0, 0)
    assert a.hasDataChanged() and b.hasDataChanged()
    assert not a.isDataUnitDone() and b.isDataUnitDone()

    trace = []
    for _ in range(9):
        group.next()
        trace.append(
            (
                a.data,
                b.data,
                a.hasDataChanged(),
                a.isDataUnitDone(),
                group.data_index,
                group.data_index_end,
                group.first_data_index,
                group.last_data_index,
            )
        )
    assert trace[0] == ("a0", "b1", False, False, 0, 4, 1, 1)
    assert trace[3] == ("a0", "b4", False, True, 0, 4, 4, 4)
    assert trace[4] == ("a1", "b5", True, False, 5, 9, 5, 5)
    assert trace[8] == ("a1", "b9", False, True, 5, 9, 9, 9)
    assert (listener.data_index_start, listener.data_index_end) == (9, 9)
    assert a.nb_data_blocks_read == 2 and b.nb_data_blocks_read == 10
    assert not group.hasMoreData() and not a.hasMoreData()
    with pytest.raises(RuntimeError) as info:
        group.next()
    assert str(info.value) == OVER.format("ch", "a")  # both end at 9: the first input fails


def test_input_next_past_end_message():
    group = InputGroup("train", restricted_access=False)
    inp = Input("labels", None, ListDataSource([1], [(0, 0)]))
    group.add(inp)
    inp.next()
    with pytest.raises(RuntimeError) as info:
        inp.next()
    assert str(info.value) == OVER.format("train", "labels")


def test_restricted_group_refuses_user_next():
    group, _ = make_group(restricted=True)
    with pytest.raises(RuntimeError, match="^Not authorized$"):
        group.next()
    with pytest.raises(RuntimeError, match="^Not authorized$"):
        group["a"].next()
    group.platform_next()
    assert group["b"].data == "b0" and group.restricted_access
    with pytest.raises(RuntimeError, match="^Not authorized$"):
        group.next()


def test_is_data_unit_done_before_first_step():
    group, _ = make_group()
    assert group["a"].isDataUnitDone()  # BEAT: end -1 == last -1


def test_input_list_lookup():
    main, _ = make_group(restricted=True)
    other = InputGroup("other", None, restricted_access=False)
    other.add(Input("c", "f", ListDataSource(["c0"], [(0, 9)])))
    second_restricted = InputGroup("x", None, restricted_access=True)
    lst = InputList()
    lst.add(other)
    lst.add(main)
    lst.add(second_restricted)
    assert lst.main_group is main
    assert len(lst) == 3 and lst.nbGroups() == 3
    assert [i.name for i in lst] == ["c", "a", "b"]
    assert lst[0].name == "c" and lst[2].name == "b" and lst[3] is None and lst[-1] is None
    assert lst["b"] is main["b"] and lst["zz"] is None
    assert lst.groupOf("c") is other and lst.groupOf("zz") is None
    assert (
        lst.group("ch") is main
        and lst.group(0) is other
        and lst.group("nope") is None
        and lst.group(9) is None
    )
    assert main[5] is None and main[1].name == "b" and len(main) == 2
    assert lst.hasMoreData()


def test_output_follows_listener():
    group, listener = make_group()
    sink = Sink()
    out = Output("o", sink, listener)
    assert not out.isDataMissing()  # -1 == -1
    written_at = []
    while group.hasMoreData():
        group.next()
        assert out.isDataMissing()
        if group["a"].isDataUnitDone():
            out.write("x")
            written_at.append(group.last_data_index)
        assert out.isDataMissing() == (not group["a"].isDataUnitDone())
    assert sink.written == [("x", 0, 4), ("x", 5, 9)]
    assert written_at == [4, 9] and out.nb_data_blocks_written == 2
    assert not out.isDataMissing()


def test_output_write_range_errors():
    listener = SynchronizationListener()
    listener.onIntervalChanged(0, 3)
    sink = Sink()
    out = Output("o", sink, listener)
    with pytest.raises(KeyError) as info:
        out.write(1, 4)  # beyond the listener's end
    assert info.value.args[0] == WRITE_INDEX_ERROR
    assert WRITE_INDEX_ERROR == (
        "Algorithm logic error on write(): `end_data_index' is not consistent with last written index"
    )
    out.write(1, 1)
    with pytest.raises(KeyError):
        out.write(2, 1)  # not after the last written index
    out.write(2)
    assert sink.written == [(1, 0, 1), (2, 2, 3)]


def test_output_without_listener_and_start_index():
    sink = Sink()
    out = Output("o", sink, None, force_start_index=10)
    out.write("a")
    out.write("b", 14)
    out.write("c")
    assert sink.written == [("a", 10, 10), ("b", 11, 14), ("c", 15, 15)]
    assert not out.isDataMissing()
    with pytest.raises(KeyError):
        out.write("d", 15)
    out.close()
    assert sink.closed and out.isConnected()


def test_output_converts_dicts_safely():
    fmt = value_type("user/single_integer/1", {"value": "int32"})
    sink = Sink()
    out = Output("o", sink, None, value_type=fmt)
    out.write({"value": np.int32(7)})
    value = sink.written[0][0]
    assert isinstance(value, fmt) and value.value == 7 and value.value.dtype == np.int32
    with pytest.raises(TypeError) as info:
        out.write({"value": np.int64(3)})
    assert str(info.value) == (
        "cannot safely cast attribute `value' on dataformat `user/single_integer/1' with type `int64' "
        "to `int32' without precision loss"
    )
    with pytest.raises(AttributeError, match=r"missing attributes \(value\)"):
        out.write({})
    with pytest.raises(AttributeError, match=r"unexpected attribute \(x\)"):
        out.write({"value": np.int32(1), "x": 1})
    assert len(sink.written) == 1 and out.last_written_data_index == 0
    created = out._createData()
    assert isinstance(created, fmt)
    with pytest.raises(RuntimeError, match="not bound to a dataformat"):
        Output("p", Sink())._createData()


def test_output_converts_with_classmethod_style_from_dict():
    class Fake:
        def __init__(self, **kw):
            self.kw = kw

        @classmethod
        def from_dict(cls, data, casting="unsafe", add_defaults=True):
            assert casting == "safe" and add_defaults is False
            return cls(**data)

    sink = Sink()
    Output("o", sink, value_type=Fake).write({"v": 1})
    assert sink.written[0][0].kw == {"v": 1}


def test_output_on_write_hook_and_list():
    seen = []
    sink = Sink()
    out = Output("first", sink, on_write=lambda name, end: seen.append((name, end)))
    out.write(1)
    out.write(2, 5)
    assert seen == [("first", 0), ("first", 5)]
    lst = OutputList()
    lst.add(out)
    lst.add(Output("second", Sink()))
    assert lst["second"].name == "second" and lst["zz"] is None
    assert lst[0] is out and lst[2] is None and lst[-1] is None  # positions, as BEAT (no slices)
    assert [o.name for o in lst] == ["first", "second"] and len(lst) == 2
