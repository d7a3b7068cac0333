"""An indexing job probes its view over the entries its ``index()`` made only when they are what the
index's table gives back (but for their class): real jobs (``build_index``), real files opened by
``get`` and recorded, the index files written and then served by the provider's ``_Dataset``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from backbeat.cache.blobs import Blobs
from backbeat.data import dbindex
from backbeat.runtime import dbprovider
from backbeat.runtime.probe import PARALLEL_UNITS
from backbeat.runtime.spec import CodeFile, DatasetSpec

HEAD = '''
import collections, os
import numpy
from beat.backend.python.database import View

Entry = collections.namedtuple("Entry", ["name", "value"])
'''

GET = '''
    def get(self, output, index):
        entry = self.objs[index]
        with open(os.path.join(self.parameters["marks"], "objs"), "a") as f:  # (not under the view's root)
            f.write(type(self.objs).__name__ + "\\n")
        with open(os.path.join(self.root_folder, entry.name)) as f:
            return {"value": numpy.int32(int(f.read()) + int(entry.value))}
'''

VIEWS = {  # what index() returns, and a setup of the view's own or not
    "plain": ("return [Entry(n, k) for k, n in enumerate(sorted(os.listdir(root_folder)))]", ""),
    "numpy values": ("return [Entry(n, numpy.int64(k)) for k, n in enumerate(sorted(os.listdir(root_folder)))]", ""),
    "a setup of its own": ("return [Entry(n, k) for k, n in enumerate(sorted(os.listdir(root_folder)))]",
                           "    def setup(self, *args, **kwargs):\n        super().setup(*args, **kwargs)\n"),
    "fields out of order": ("return [Other(k, n) for k, n in enumerate(sorted(os.listdir(root_folder)))]", ""),
    "a class of its own": ("return [Mine(n, k) for k, n in enumerate(sorted(os.listdir(root_folder)))]", ""),
}
CLASSES = '''
Other = collections.namedtuple("Other", ["value", "name"])


class Mine(Entry):
    def path(self):
        return self.name
'''


def _job(tmp_path: Path, label: str) -> tuple[dict, dict, list[str], list[int]]:
    """Index the view ``label`` (its files ``a`` .. ``e``): the job's result, what it recorded, the
    class of the entries its view's ``get`` read, and the values the provider then serves."""
    made, setup = VIEWS[label]
    code = (HEAD + CLASSES + "\n\nclass V(View):\n" + setup
            + f"    def index(self, root_folder, parameters):\n        {made}\n" + GET).encode()
    root, marks = tmp_path / "root", tmp_path / "marks"
    root.mkdir()
    marks.mkdir()
    for k, name in enumerate("abcde"):
        (root / name).write_text(str(10 * k))
    blobs = Blobs(tmp_path / "code")
    snapshot = CodeFile(str(blobs.path(blobs.put(code))), hashlib.sha256(code).hexdigest(), str(tmp_path / "1.py"))
    spec = DatasetSpec("t/1", snapshot, "V", str(root), {"marks": str(marks)}, str(tmp_path / "i.db"),
                       {"value": ("t/int/1", {"value": "int32"})}, folders={"root": str(root)},
                       deps=str(tmp_path / "deps.json"))
    stats = dbprovider.build_index({"spec": spec.to_json()})
    seen = json.loads((tmp_path / "deps.json").read_text())["seen"]
    objs = (marks / "objs").read_text().split()
    served = dbprovider._Dataset(dataclasses.replace(spec, deps=None, index_digest=dbindex.index_digest(spec.index_path)))
    return stats, seen, objs, [int(v.value) for v in served.window("value", 0, 5).to_values()]


@pytest.mark.parametrize("label", list(VIEWS))
def test_the_probe_reads_the_views_own_entries_only_when_they_are_what_the_table_gives(tmp_path, label):
    """Plain namedtuples of one class, fields in the table's (sorted) order, values of the types read
    back, BEAT's ``setup``: the probe reads them (a list: no entry made again from the table); any
    other view is probed over the table's entries, as the provider serves them.  Either way the job
    records every file ``get`` opened and the provider serves the same values."""
    stats, seen, objs, values = _job(tmp_path, label)
    assert stats["probe"] == "complete" and stats["entries"] == 5
    assert {k: v["phase"] for k, v in seen.items()} == {
        "root": "index", **{f"root/{name}": "get" for name in "abcde"}}
    assert objs == ["list" if label == "plain" else "Entries"] * 5
    assert values == [11 * k for k in range(5)]


LARGE = HEAD + '''
Number = collections.namedtuple("Number", ["value", "weight"])
Triple = collections.namedtuple("Triple", ["name", "value", "weight"])


class V(View):
    def index(self, root_folder, parameters):
        return [%s for k in range(parameters["n"])]

    def get(self, output, index):
        mark = os.path.join(self.parameters["marks"], str(os.getpid()))  # each probing process, once
        if not os.path.exists(mark):
            with open(mark, "w") as f:
                f.write(type(self.objs).__name__)
        return {"value": numpy.int32(self.objs[index].value)}
'''
LARGE_ENTRIES = {  # what index() makes, and what a probing copy then reads
    "a name and an int": ('Entry("x", k)', "Entries"),
    "an int and a float": ("Number(k, 0.5)", "list"),
    "three fields": ('Triple("x", k, 1.5)', "Entries"),
}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one usable core: the probe never forks")
@pytest.mark.parametrize("label", list(LARGE_ENTRIES))
def test_a_probing_copy_reads_the_jobs_list_only_when_its_entries_are_small_numbers(tmp_path, label):
    """On two slots the job reads its view's own entries; its forked copy too when they are small numeric
    tuples (at most 2 fields, int/float/bool: it writes their reference counts, a copy of their pages,
    ~40 MB at 1M, the table's entries costing it twice the CPU a unit), else the table's (1M entries
    with a path, 3 fields: ~230 MB the copy would copy)."""
    made, copy_reads = LARGE_ENTRIES[label]
    marks = tmp_path / "marks"
    marks.mkdir()
    code = (LARGE % made).encode()
    blobs = Blobs(tmp_path / "code")
    snapshot = CodeFile(str(blobs.path(blobs.put(code))), hashlib.sha256(code).hexdigest(), str(tmp_path / "1.py"))
    spec = DatasetSpec("t/1", snapshot, "V", str(tmp_path), {"marks": str(marks), "n": PARALLEL_UNITS},
                       str(tmp_path / "i.db"), {"value": ("t/int/1", {"value": "int32"})}, cores=2)
    assert dbprovider.build_index({"spec": spec.to_json()})["probe"] == "complete"
    seen = {int(m.name): m.read_text() for m in marks.iterdir()}
    assert seen.pop(os.getpid()) == "list" and list(seen.values()) == [copy_reads]
