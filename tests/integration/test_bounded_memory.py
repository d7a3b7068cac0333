"""Block processes' memory is bounded by their windows and batches, not by the data's size (#13)."""

from __future__ import annotations

import sys
from pathlib import Path

from backbeat.execution import executors

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from make_prefix import write_prefix  # noqa: E402


def test_block_memory_does_not_grow_with_the_data(tmp_path):
    """8 MB then 48 MB of vectors (1,000 float64 each) through an identity block into an analyzer:
    the peak RSS of each block process grows by far less than the 40 MB more data it handles."""
    names = write_prefix(tmp_path / "prefix", {"v1k": ("vectors", 1_000), "v6k": ("vectors", 6_000)},
                         [(1, "v1k"), (1, "v6k")])
    peaks = {}
    for name in names:
        rep = executors.run_experiment(tmp_path / "prefix", tmp_path / "cache", name, executors.Options())
        assert rep["status"] == "ok", rep
        peaks[name] = {b: rep["blocks"][b]["statistics"]["max_rss_mb"] for b in ("identity1", "sum")}
    small, large = (peaks[n] for n in sorted(peaks, key=lambda n: "v6k" in n))
    for block in ("identity1", "sum"):
        assert large[block] - small[block] < 20, (block, small, large)
