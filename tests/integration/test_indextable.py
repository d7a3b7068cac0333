"""View index tables: BEAT's bytes written from columns, entries read by windows, a provider
whose memory does not grow with the index (issue #13)."""

from __future__ import annotations

import collections
import hashlib
import multiprocessing
import os
import textwrap

import numpy as np
import pytest

from backbeat.core.errors import DataError, IntegrityError
from backbeat.data import dbindex, indextable
from backbeat.runtime import dbprovider

E = collections.namedtuple("E", ["z", "a", "m"])
Ix = collections.namedtuple("Ix", ["index"])
CASES = {
    "scalars": [E(i, "s%d" % i, i * 0.5) for i in range(10)],
    "numpy scalars, odd strings": [E(np.int64(i), np.str_("é\ud800x%s"), np.float32(i / 3)) for i in range(5)],
    "nested values": [E(i, [1, (2, 3)], {"b": 1, "a": None}) for i in range(3)],
    "bools, big ints": [E(True, 1, 2**70) for _ in range(3)],
    "mixed types in a field": [E(1, 1.5, None), E(2, 2, "x"), E(np.bool_(False), np.float64(2.5), [1])],
    "dicts": [{"k": 1, "b": "x"}, {"k": 2, "b": "y"}],
    "dicts, keys in another order": [{"k": 1, "b": "x"}, {"b": "y", "k": 2}],
    "no fields": [{}, {}],
    "empty": [],
    "arrays": [E(np.array([1, 2]), np.arange(3.0), np.bool_(True))],
    # (over several of the chunks non-numeric columns are grouped by, which the test makes 4,096
    # values long: the runs of equal strings, 3 long, straddle their boundaries)
    "long": [E(i % 7, "v%d" % (i // 3), i / 7) for i in range(15_000)],
    # one int a entry (a view's common index): its digits made in numpy (backbeat.data.decimals)
    "one int a entry": [Ix(i) for i in range(9_000)] + [Ix(v) for v in (
        0, -1, 1, 9, 10, -9, -10, 99, 100, 4294967295, 4294967296, -4294967296, 10**18 - 1, 10**18, -(10**18),
        2**63 - 1, -(2**63), -(2**63) + 1, np.int64(-7), 12345678901234567)],
    "one small int a entry, negative": [Ix(-i) for i in range(5_000)],
    "one int a entry, zeros": [Ix(0)] * 3,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_index_written_from_columns_is_beats_and_reads_back_as_beats_entries(tmp_path, name, monkeypatch):
    monkeypatch.setattr(indextable, "CHUNK", 4096)  # (65,536 in use: 150,000 entries took ~10 s)
    entries = CASES[name]
    path = tmp_path / "x.db"
    info = indextable.write_index(path, entries)
    assert path.read_bytes() == dbindex.dumps_index(entries)  # byte-identical to simplejson's
    assert info == {"digest": dbindex.index_digest(path), "entries": len(entries)}
    want = dbindex.read_index(path)
    got = indextable.load_entries(path, info["digest"])
    assert os.path.exists(indextable.table_path(path))
    assert list(got) == want and len(got) == len(want)
    step = max(1, len(want) // 500)
    assert [got[i] for i in range(0, len(want), step)] == want[::step]
    assert list(got[1:-1]) == want[1:-1] and isinstance(got[1:], indextable.Entries)
    if want and want[0]._fields:
        assert got[-1] == want[-1] and type(got[0])._fields == want[0]._fields
    found = indextable.index_columns(entries)
    if found is not None and found[1]:  # what an indexing job probes from, before the files exist
        memory = indextable.Entries(indextable.memory_table(path, len(entries), found[1]))
        assert list(memory) == want and type(memory[0])._fields == want[0]._fields
        for field in want[0]._fields:
            assert [a.tolist() for a in got.units(field)] == [
                a.tolist() for a in dbindex.output_units(want, field)]


def test_a_stale_or_damaged_table_is_made_again_and_a_changed_index_is_refused(tmp_path):
    path = tmp_path / "x.db"
    first = indextable.write_index(path, [{"i": k} for k in range(100)])
    table = indextable.table_path(path)
    raw = bytearray(open(table, "rb").read())
    raw[-3] ^= 0xFF  # one entry changed: the digest no longer holds
    open(table, "wb").write(bytes(raw))
    with pytest.raises(DataError, match="does not match its digest"):
        indextable.IndexTable(table)
    assert [e.i for e in indextable.load_entries(path, first["digest"])] == list(range(100))
    assert indextable.IndexTable(table).source == first["digest"]  # made again from the JSON file
    os.unlink(table)  # an index written by BEAT (or an older backbeat) has no table
    assert indextable.load_entries(path)[99].i == 99  # the digest recorded beside the index is used
    second = dbindex.write_index(path, [{"i": -k} for k in range(100)])  # table now of another index
    assert indextable.load_entries(path, second)[5].i == -5
    with pytest.raises(IntegrityError, match="changed after this run computed its cache keys"):
        indextable.load_entries(path, first["digest"])


def test_indexes_beat_cannot_reload_fail_when_read_as_before(tmp_path):
    path = tmp_path / "x.db"
    indextable.write_index(path, [{"a": 1}, {"b": 2}])
    assert not os.path.exists(indextable.table_path(path))
    with pytest.raises(DataError, match="entry 1 has keys"):
        indextable.load_entries(path)
    with pytest.raises(DataError, match="JSON"):
        indextable.write_index(path, [{"a": float("nan")}])


VIEW = textwrap.dedent('''
    import collections

    import numpy

    from beat.backend.python.database import View

    Entry = collections.namedtuple("Entry", ["label", "i", "name"])


    class Items(View):
        def __init__(self):
            super().__init__()
            self.output_member_map = {"value": "i"}

        def index(self, root_folder, parameters):
            return [Entry(i // 2, i, "item-%d" % i) for i in range(int(parameters["n"]))]

        def get(self, output, index):
            return {"value": numpy.float64(self.objs[index].i)}
''')
FMT, EXP = "t/value/1", {"value": "float64"}


def _peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def test_provider_memory_does_not_grow_with_the_index(tmp_path):
    """A provider process serving a 400k-entry index peaks within a few MB of one serving 1k
    entries (holding every entry as an object took ~150 MB more: 371 MB for 1M entries)."""
    code = tmp_path / "db.py"
    code.write_text(VIEW)
    snapshot = {"path": str(code), "sha256": hashlib.sha256(VIEW.encode()).hexdigest(), "filename": str(code),
                "uses": {}}
    specs = {}
    for n in (1_000, 400_000):  # (indexed first: a provider forked from this process inherits its pages)
        spec = {"database": "t/1", "code": snapshot, "view": "Items", "root_folder": str(tmp_path),
                "parameters": {"n": n}, "index_path": str(tmp_path / f"i{n}.db"),
                "outputs": {"value": [FMT, EXP], "label": [FMT, EXP]}}
        spec["index_digest"] = dbprovider.build_index({"spec": spec})["digest"]
        specs[n] = spec
    peaks = {}
    for n, spec in specs.items():
        address = f"ipc://{tmp_path}/p{n}"
        proc = multiprocessing.get_context("fork").Process(
            target=dbprovider.serve, args=({"spec": {"address": address, "datasets": {"items": spec}}},), daemon=True)
        proc.start()
        client = dbprovider.DatabaseClient(address, timeout_ms=60_000)
        try:
            labels = client.source("items", "label", FMT, EXP, window=1000)
            values = client.source("items", "value", FMT, EXP, window=1000)
            assert len(values) == n and len(labels) == n // 2
            assert labels[n // 2 - 1][1:] == (n - 2, n - 1)
            last, start, end = values[n - 1]
            assert (float(last.value), start, end) == (n - 1, n - 1, n - 1)
            peaks[n] = _peak_rss_kb(proc.pid)
            assert client._ask(b"bye") == []
        finally:
            client.close()
            proc.join(10)
    growth_mb = (peaks[400_000] - peaks[1_000]) / 1024
    assert growth_mb < 50, f"the provider grew by {growth_mb:.0f} MB for 400k entries"


def test_entries_neither_namedtuples_nor_dicts_are_refused(tmp_path):
    """The indexing job checks each entry's kind (by type: a million entries cost one check per type)."""
    code = tmp_path / "db.py"
    code.write_text(VIEW.replace('return [Entry(i // 2, i, "item-%d" % i) for i in range(int(parameters["n"]))]',
                                 'return [{"label": 0, "i": 0, "name": "a"}, Entry(0, 1, "b"), 7]'))
    snapshot = {"path": str(code), "sha256": hashlib.sha256(code.read_bytes()).hexdigest(), "filename": str(code),
                "uses": {}}
    spec = {"database": "t/1", "code": snapshot, "view": "Items", "root_folder": str(tmp_path), "parameters": {"n": 3},
            "index_path": str(tmp_path / "i.db"), "outputs": {"value": [FMT, EXP]}}
    with pytest.raises(TypeError, match="must be namedtuples or dicts, not int"):
        dbprovider.build_index({"spec": spec})


def test_str_subclasses_are_written_as_simplejson_writes_them_and_bad_values_are_data_errors(tmp_path):
    import enum

    import simplejson

    class Kind(str, enum.Enum):
        A = "a"

    entries = [{"k": Kind.A, "n": 1}, {"k": "b", "n": 2}]
    indextable.write_index(tmp_path / "i.db", entries)
    assert simplejson.loads((tmp_path / "i.db").read_text()) == [{"k": "a", "n": 1}, {"k": "b", "n": 2}]
    with pytest.raises(DataError):
        indextable.write_index(tmp_path / "j.db", [{"k": {1, 2}}])


def test_a_discarded_index_leaves_none_of_its_files(tmp_path):
    """The store knows an index entry's files by the data layer's names (the table's among them):
    discarding an index removes the index, its digest, its table and its record."""
    from backbeat.cache.store import CacheStore
    from backbeat.data import indexfiles

    store = CacheStore(tmp_path)
    key = "ab" * 32
    index = store.index_path(key)
    index.parent.mkdir(parents=True)
    indextable.write_index(index, CASES["scalars"])
    store.set_index_record(key, dbindex.index_digest(index), "0" * 64)
    files = indexfiles.files(index)
    assert os.fspath(files[2]) == indextable.table_path(index) and all(p.is_file() for p in files)
    store.discard_index(key)
    assert not list(index.parent.iterdir())


def test_units_of_mixed_values_end_where_beats_python_comparison_ends_them(tmp_path, monkeypatch):
    """BEAT ends a unit where ``value != previous`` (Python: 1 == 1.0 == True, [1] == [1.0]): the
    table's grouping, chunk by chunk, and the general grouping of the entries agree with it, also
    when a chunk holds only numbers and the next lists (chunks of 4 here, 65,536 in a run)."""
    values = [1, 1.0, True, 2, [1], [1.0], [True], 2.0, {"a": 1}, {"a": 1.0}, "x", "x", None, None,
              [1, [2]], [1.0, [2.0]], 2, 2.0, [2], 3]
    entries = [{"v": v} for v in values]
    path = tmp_path / "x.db"
    monkeypatch.setattr(indextable, "CHUNK", 4)
    info = indextable.write_index(path, entries)
    assert path.read_bytes() == dbindex.dumps_index(entries)
    beat = [e.v for e in dbindex.read_index(path)]
    starts = [0] + [i for i in range(1, len(beat)) if beat[i] != beat[i - 1]]  # BEAT's loop, in short
    got = indextable.load_entries(path, info["digest"])
    assert got.units("v")[0].tolist() == starts == dbindex.output_units(dbindex.read_index(path), "v")[0].tolist()
    assert got[3:].units("v")[0].tolist() == [s - 3 for s in starts if s >= 3]
