"""Data loaders: mixed partitions, random access, views, the loader list."""

from __future__ import annotations

import pickle

from hypothesis import given
from hypothesis import strategies as st

from backbeat.runtime.dataloaders import DataLoader, DataLoaderList, DataView, mix_data_indices
from backbeat.runtime.inputs import ListDataSource


def src(prefix: str, units: list[tuple[int, int]]) -> ListDataSource:
    return ListDataSource([f"{prefix}{k}" for k in range(len(units))], units)


A_UNITS = [(0, 4), (5, 9)]
B_UNITS = [(i, i) for i in range(10)]
C_UNITS = [(0, 1), (2, 6), (7, 9)]


def loader_abc() -> DataLoader:
    loader = DataLoader("ch")
    loader.add("a", src("a", A_UNITS))
    loader.add("b", src("b", B_UNITS))
    loader.add("c", src("c", C_UNITS))
    return loader


def test_mix_examples():
    assert mix_data_indices([[(0, 2), (3, 4)], [(0, 1), (2, 3), (4, 4)]]) == [(0, 1), (2, 2), (3, 3), (4, 4)]
    assert mix_data_indices([[(0, 2), (3, 4)], [(0, 4)]]) == [(0, 2), (3, 4)]
    assert mix_data_indices([A_UNITS, C_UNITS]) == [(0, 1), (2, 4), (5, 6), (7, 9)]
    assert mix_data_indices([]) == [] and mix_data_indices([[(0, 1)], []]) == []
    # different spans: the common part only
    assert mix_data_indices([[(0, 3), (4, 7)], [(2, 5), (6, 9)]]) == [(2, 3), (4, 5), (6, 7)]


def _reference_mix(lists):
    """BEAT's definition, index by index."""
    start = max(x[0][0] for x in lists)
    end = min(x[-1][1] for x in lists)
    result, current = [], start
    for index in range(start, end + 1):
        if any(e == index for units in lists for _, e in units):
            result.append((current, index))
            current = index + 1
    return result


@st.composite
def unit_lists(draw):
    total = draw(st.integers(1, 30))
    lists = []
    for _ in range(draw(st.integers(1, 4))):
        cuts = sorted(draw(st.sets(st.integers(1, total - 1), max_size=total - 1))) if total > 1 else []
        edges = [0] + cuts + [total]
        lists.append([(edges[i], edges[i + 1] - 1) for i in range(len(edges) - 1)])
    return lists


@given(unit_lists())
def test_mix_matches_definition(lists):
    assert mix_data_indices(lists) == _reference_mix(lists)


def test_loader_random_access():
    loader = loader_abc()
    assert loader.count() == 10 and len(loader) == 10
    assert (loader.count("a"), loader.count("b"), loader.count("c"), loader.count("zz")) == (2, 10, 3, 0)
    assert (loader.data_index_start, loader.data_index_end) == (0, 9)
    assert loader.input_names() == ["a", "b", "c"]
    assert loader[-1] == (None, None, None) and loader[10] == (None, None, None)
    assert loader[0] == ({"a": "a0", "b": "b0", "c": "c0"}, 0, 0)
    assert loader[6] == ({"a": "a1", "b": "b6", "c": "c1"}, 6, 6)
    assert loader[2] == ({"a": "a0", "b": "b2", "c": "c1"}, 2, 2)  # backwards is fine too


def test_loader_reads_each_unit_once_when_walking():
    a, c = src("a", A_UNITS), src("c", C_UNITS)
    loader = DataLoader("ch")
    loader.add("a", a)
    loader.add("c", c)
    assert loader.mixed_data_indices == [(0, 1), (2, 4), (5, 6), (7, 9)]
    rows = [loader[i] for i in range(loader.count())]
    assert rows[1] == ({"a": "a0", "c": "c1"}, 2, 4)
    assert a.nb_reads == 2 and c.nb_reads == 3
    loader.reset()
    loader[0]
    assert a.nb_reads == 3


def test_views():
    loader = loader_abc()
    view = loader.view("a", 1)
    assert isinstance(view, DataView)
    assert (view.data_index_start, view.data_index_end, view.count()) == (5, 9, 5)
    assert (view.count("a"), view.count("b"), view.count("c"), view.count("zz")) == (1, 5, 2, None)
    assert view.infos["c"].data_indices == [(5, 6), (7, 9)]  # clipped to the view
    assert view[0] == ({"a": "a1", "b": "b5", "c": "c1"}, 5, 5)
    assert view[4] == ({"a": "a1", "b": "b9", "c": "c2"}, 9, 9)
    assert view[5] == (None, None, None) and view[-1] == (None, None, None)
    cview = loader.view("c", 1)
    assert (cview.data_index_start, cview.data_index_end, cview.count()) == (2, 6, 5)
    assert cview.infos["a"].data_indices == [(2, 4), (5, 6)]
    assert loader.view("a", 2) is None and loader.view("a", -1) is None and loader.view("zz", 0) is None
    bview = loader.view("b", 3)
    assert bview.count() == 1 and bview[0] == ({"a": "a0", "b": "b3", "c": "c1"}, 3, 3)


def test_loader_pickles_without_cached_values():
    loader = loader_abc()
    loader[3]
    clone = pickle.loads(pickle.dumps(loader))
    assert clone.infos["a"].data is None and clone.infos["a"].start_index == -1
    assert clone[3] == loader[3]
    seen = []
    loader.on_read = lambda index: seen.append(index)  # (as the driver's progress hook, a closure)
    clone = pickle.loads(pickle.dumps(loader))
    assert clone.on_read is None and clone[3] == loader[3] and seen == [3]


def test_loader_list():
    first, second = DataLoader("one"), DataLoader("two")
    first.add("x", src("x", [(0, 1)]))
    second.add("y", src("y", [(0, 0), (1, 1)]))
    lst = DataLoaderList()
    lst.add(first)
    lst.add(second)
    assert lst.main_loader is first  # BEAT: first added
    assert lst["two"] is second and lst[0] is first and lst[5] is None and lst["zz"] is None
    assert lst.loaderOf("y") is second and lst.loaderOf("zz") is None
    assert list(lst) == [first, second] and len(lst) == 2
    sec = lst.secondaries()
    assert list(sec) == [second] and sec.main_loader is None

    forced = DataLoaderList()
    forced.add(first, main=False)
    forced.add(second, main=True)
    assert forced.main_loader is second and list(forced.secondaries()) == [first]
