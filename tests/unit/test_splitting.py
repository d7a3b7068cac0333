"""Split ranges: BEAT's vectors and backbeat's own splitter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backbeat.core.errors import UsageError
from backbeat.execution.splitting import found_split_ranges, split_ranges


def test_beat_vectors():
    assert found_split_ranges([[0, 2, 4, 6, 8, 10, 12], [0, 3, 6, 9, 12]], 2) == [(0, 5), (6, 11)]
    assert found_split_ranges([[0, 2, 4, 6, 8, 10, 12, 15], [0, 3, 6, 9, 12, 15]], 5) == [
        (0, 5),
        (6, 11),
        (12, 14),
    ]


def test_beat_edge_cases():
    assert found_split_ranges([], 2) == []
    assert found_split_ranges([[0, 5], []], 2) == []
    assert found_split_ranges([[0, 10]], 1) == [(0, 9)]
    assert found_split_ranges([[0, 1, 2, 3, 4]], 2) == [(0, 1), (2, 3)]
    with pytest.raises(UsageError):
        found_split_ranges([[0, 1]], 0)


def test_split_multi_frequency():
    a = [(0, 4), (5, 9)]
    b = [(i, i) for i in range(10)]
    assert split_ranges([a, b], 2) == [(0, 4), (5, 9)]
    assert split_ranges([a, b], 5) == [(0, 4), (5, 9)]  # only one common boundary
    assert split_ranges([b], 3) == [(0, 2), (3, 6), (7, 9)]
    assert split_ranges([b], 1) == [(0, 9)]
    assert split_ranges([b], 20) == [(i, i) for i in range(10)]
    assert split_ranges([[(3, 5), (6, 8)]], 2) == [(3, 5), (6, 8)]
    assert split_ranges([], 2) == [] and split_ranges([[]], 2) == []
    with pytest.raises(UsageError):
        split_ranges([b], 0)


@st.composite
def unit_lists(draw):
    total = draw(st.integers(1, 40))
    lists = []
    for _ in range(draw(st.integers(1, 3))):
        cuts = sorted(draw(st.sets(st.integers(1, total - 1), max_size=total - 1))) if total > 1 else []
        edges = [0] + cuts + [total]
        lists.append([(edges[i], edges[i + 1] - 1) for i in range(len(edges) - 1)])
    return lists, draw(st.integers(1, 8))


@given(unit_lists())
def test_split_properties(case):
    lists, n = case
    ranges = split_ranges(lists, n)
    assert 1 <= len(ranges) <= n
    assert ranges[0][0] == 0 and ranges[-1][1] == lists[0][-1][1]
    for (_, e), (s, _) in zip(ranges, ranges[1:], strict=False):
        assert s == e + 1
        assert all(any(u[0] == s for u in units) for units in lists)  # cut at a common unit start
    assert all(s <= e for s, e in ranges)
