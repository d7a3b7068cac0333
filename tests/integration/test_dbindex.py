"""Database view index files (BEAT's .db JSON) and grouping of equal consecutive values into units."""

from __future__ import annotations

import os
import subprocess
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from backbeat.core.errors import DataError
from backbeat.data import dbindex
from backbeat.data.dbindex import group_units, output_units, read_index, write_index

BEAT_PYTHON = Path("/tmp/beatenv/bin/python")
Entry = namedtuple("Entry", ["label", "data", "name"])


def _entries():
    return [Entry(label=i // 5, data=np.float32(i) / 2, name=f"é{i // 3}") for i in range(15)]


def test_write_and_read_index(tmp_path):
    path = tmp_path / "sub" / "view.db"
    write_index(path, _entries())
    assert sorted(os.listdir(path.parent)) == ["view.db", "view.db.sha256"]  # no temporaries left
    assert dbindex.verified_digest(path) == dbindex.index_digest(path)
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(path.read_bytes().replace(b"1", b"2"))
    (tmp_path / "damaged.db.sha256").write_bytes((path.parent / "view.db.sha256").read_bytes())
    assert dbindex.verified_digest(damaged) is None  # no longer what was written
    text = path.read_text("utf-8")
    assert text.startswith('[{"label": 0, "data": 0.0, "name": "\\u00e90"}')
    got = read_index(path)
    assert type(got[0]).__name__ == "Entry" and got[0]._fields == ("data", "label", "name")
    assert got[7] == (3.5, 1, "é2")
    write_index(path, [{"b": [1, 2], "a": "x"}])
    assert read_index(path)[0].b == [1, 2]
    write_index(path, [])
    assert read_index(path) == []


@pytest.mark.skipif(not BEAT_PYTHON.exists(), reason="BEAT not installed")
def test_same_bytes_as_beat(tmp_path):
    ours = tmp_path / "ours.db"
    write_index(ours, _entries())
    code = (
        "import simplejson, numpy, sys\n"
        "from collections import namedtuple\n"
        "from beat.backend.python.utils import NumpyJSONEncoder\n"
        "E = namedtuple('Entry', ['label', 'data', 'name'])\n"
        "objs = [E(label=i // 5, data=numpy.float32(i) / 2, name='\\u00e9%d' % (i // 3)) for i in range(15)]\n"
        "sys.stdout.buffer.write(simplejson.dumps(objs, cls=NumpyJSONEncoder).encode('utf-8'))\n"
    )
    beat = subprocess.run([str(BEAT_PYTHON), "-c", code], capture_output=True, check=True).stdout
    assert beat == ours.read_bytes()


def test_read_errors(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_text('[{"a": 1, "a": 2}]')  # an index is data: the last value wins, as in BEAT
    assert read_index(bad)[0].a == 2
    bad.write_text('[{"a": 1}, {"a": 2]')
    with pytest.raises(DataError, match="invalid JSON"):
        read_index(bad)
    bad.write_bytes(b'[{"a": "\xff"}]')
    with pytest.raises(DataError, match="invalid JSON"):
        read_index(bad)
    bad.write_text('{"a": 1}')
    with pytest.raises(DataError, match="JSON array of objects"):
        read_index(bad)
    bad.write_text('[{"a": 1}, {"b": 2}]')
    with pytest.raises(DataError, match="entry 1 has keys"):
        read_index(bad)
    with pytest.raises(DataError, match="cannot read"):
        read_index(tmp_path / "missing.db")
    with pytest.raises(DataError, match="cannot be written"):
        write_index(tmp_path / "x.db", [object()])
    assert not (tmp_path / "x.db").exists() and len(os.listdir(tmp_path)) == 1


def test_group_units():
    s, e = group_units([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    assert s.tolist() == [0, 5, 10] and e.tolist() == [4, 9, 14] and s.dtype == np.int64
    s, e = group_units(["a", "a", "b", "a"])
    assert s.tolist() == [0, 2, 3] and e.tolist() == [1, 2, 3]
    s, e = group_units([[1, 2], [1, 2], [1, 3], [1, 3], "[1, 3]"])
    assert s.tolist() == [0, 2, 4] and e.tolist() == [1, 3, 4]
    s, e = group_units(np.array([[1, 2], [1, 2], [0, 0]]))
    assert s.tolist() == [0, 2] and e.tolist() == [1, 2]
    s, e = group_units(np.arange(4))
    assert s.tolist() == [0, 1, 2, 3] and e.tolist() == [0, 1, 2, 3]
    s, e = group_units([])
    assert s.size == 0 and e.size == 0
    s, e = output_units(_entries(), "label")
    assert list(zip(s.tolist(), e.tolist(), strict=True)) == [(0, 4), (5, 9), (10, 14)]
    with pytest.raises(DataError, match="no attribute"):
        output_units(_entries(), "nope")


def test_group_units_is_vectorised_on_large_inputs():
    values = np.repeat(np.arange(100_000), 3)
    s, e = group_units(values)
    assert len(s) == 100_000 and e[-1] == 299_999
    s, e = group_units([f"k{i // 2}" for i in range(200_000)])
    assert len(s) == 100_000
