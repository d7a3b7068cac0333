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
from backbeat.runtime.spec import BlockSpec, CodeSpec, OutputSpec

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
