"""What a sandboxed block writes enters the cache only after checks (``execution/sandboxing.py``):
real cache files written into a staging folder, then published or refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from backbeat.cache.store import CacheStore
from backbeat.core.errors import IntegrityError
from backbeat.data import cachefile
from backbeat.execution.sandboxing import Staging
from backbeat.runtime.spec import BlockSpec, CodeFile, CodeSpec, DatasetSpec, OutputSpec

FORMAT = {"value": "int32"}
KEY, OTHER = "a" * 64, "b" * 64


def _spec(store: CacheStore) -> BlockSpec:
    return BlockSpec(name="b", kind="block", algorithm="u/a/1", type="sequential", channel="c", values={},
                     code=CodeSpec("/dev/null"), inputs={},
                     outputs={"out": OutputSpec("u/f/1", KEY, str(store.output_path(KEY)))},
                     formats={"u/f/1": FORMAT})


def _write(path: str, key: str, n: int = 3) -> str:
    with cachefile.CacheWriter(path, "u/f/1", FORMAT, key=key, start=0, end=n - 1) as w:
        for i in range(n):
            w.put({"value": np.int32(i)}, i, i)
    return cachefile.verify(path)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[CacheStore, Staging, BlockSpec]:
    store = CacheStore(tmp_path / "cache")
    staging = Staging(store)
    return store, staging, staging.block("b", _spec(store))


def test_a_checked_output_is_moved_to_its_entry(setup) -> None:
    store, staging, staged = setup
    digest = _write(staged.outputs["out"].path, KEY)
    staging.publish("b", {"out.h5": digest})
    assert cachefile.verify(store.output_path(KEY)) == digest
    assert not os.path.exists(staged.outputs["out"].path)
    assert store.committed([KEY])


@pytest.mark.parametrize("tamper, message", [
    ("key", "under key bbbbbbbbbbbb"),
    ("reported", "not the"),
    ("symlink", "something else than a file"),
    ("missing", "did not write"),
    ("corrupt", "digest"),
])
def test_a_tampered_output_never_enters_the_cache(setup, tmp_path: Path, tamper: str, message: str) -> None:
    store, staging, staged = setup
    path = staged.outputs["out"].path
    reported = None
    if tamper == "key":
        _write(path, OTHER)
    elif tamper == "reported":
        _write(path, KEY)
        reported = {"out.h5": "0" * 64}
    elif tamper == "symlink":  # e.g. to another entry of the cache
        other = str(store.output_path(OTHER))
        _write(other, KEY)
        os.symlink(other, path)
    elif tamper == "corrupt":
        _write(path, KEY, n=50)
        import h5py

        with h5py.File(path, "r+") as f:
            f["columns/value"][3] = 99
    with pytest.raises(IntegrityError, match=message):
        staging.publish("b", reported)
    assert not store.output_path(KEY).exists()


def test_what_the_executor_reads_itself_is_taken_out_of_reach_and_must_be_a_file(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "cache")
    staging = Staging(store)
    spec = DatasetSpec(database="d/1", code=CodeFile("/dev/null", "0" * 64, "v.py"), view="V", root_folder=None,
                       parameters={}, index_path=str(store.index_path(KEY)), outputs={}, protocol="p", set="s",
                       folders={}, deps=str(tmp_path / "deps"))
    staged = staging.index("index:s", spec)
    assert Path(staged.deps).parent == Path(staged.index_path).parent  # both in its staging folder
    Path(staged.deps).write_text('{"seen": {}}')
    taken = staging.take("index:s", "deps.json")
    assert taken.read_text() == '{"seen": {}}' and not Path(staged.deps).exists()
    os.symlink("/etc/passwd", staged.deps)  # a link is not a file of its own
    with pytest.raises(IntegrityError, match="something else than a file"):
        staging.take("index:s", "deps.json")


def test_the_providers_journals_reach_the_cache_when_the_run_ends(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "cache")
    staging = Staging(store)
    journal = tmp_path / "cache" / "index.db.journal"
    spec = DatasetSpec(database="d/1", code=CodeFile("/dev/null", "0" * 64, "v.py"), view="V", root_folder=None,
                       parameters={}, index_path=str(store.index_path(KEY)), outputs={}, protocol="p", set="s",
                       folders={}, deps=str(journal))
    staged = staging.journals({"s": spec})["s"]
    assert staged.deps != str(journal) and Path(staged.deps).parent == staging.open
    Path(staged.deps).write_text('{"label": "root/a"}\n{"label": "root/b"}\n{"label": "cut sh')
    staging.close()
    assert journal.read_text() == '{"label": "root/a"}\n{"label": "root/b"}\n'  # whole lines only
    assert not staging.root.exists()
