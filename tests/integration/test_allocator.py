"""Block processes reuse the memory of their batches instead of mapping it afresh (runtime/allocator)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from backbeat.runtime import allocator

# copies 40 MB in 2 MB batches (as a block copies the values out of its windows), freeing each;
# prints the minor page faults that took
CHILD = """
import json, resource, sys
import numpy as np
from backbeat.runtime.allocator import reuse_batch_memory
if sys.argv[1] == "reuse":
    ok = reuse_batch_memory()
else:  # glibc's default threshold, pinned: its sliding makes the baseline depend on the heap's past
    import ctypes
    ok = None
    ctypes.CDLL(None).mallopt(-3, 128 * 1024)
batch = np.random.rand(256, 1000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    rows = list(np.array(batch))
    stacked = np.stack(rows)
    del rows, stacked
print(json.dumps({"ok": ok, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_batches_reuse_their_memory_in_a_process():
    fresh, reused = _faults("fresh"), _faults("reuse")
    assert reused["ok"] is True
    # fresh 2 MB arrays fault their 512 pages in again (~13,000 faults with glibc's default threshold,
    # pinned: sliding it spares some, by how much depends on what the process freed before); reused
    # memory ~1,500 (the first round's)
    assert fresh["faults"] > 3_000 and reused["faults"] < fresh["faults"] / 2.5, (fresh, reused)


def test_reuse_is_set_once_per_process(monkeypatch):
    monkeypatch.setattr(allocator, "_done", [])
    first = allocator.reuse_batch_memory()
    assert allocator.reuse_batch_memory() is first and allocator._done == [first]
