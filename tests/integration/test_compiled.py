"""The compiled per-unit path (``backbeat.data.compiled``, C): in use wherever it is built, and
indistinguishable from the Python path — the same cache files to the byte, the same steps as BEAT's
API shows them, the same errors and messages — through a real ZeroMQ stream and cache files; the
data path's own tests pass on the Python path too (``BACKBEAT_COMPILED=off``); nothing leaks."""

from __future__ import annotations

import copy
import gc
import json
import os
import pickle
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from _steploop import EXP, FMT, F

from backbeat.data import compiled
from backbeat.data.cachewriter import CacheWriter
from backbeat.runtime.driver import build_inputs, build_outputs, run_algorithm
from backbeat.runtime.inputs import Input, InputGroup
from backbeat.runtime.outputs import Output, SynchronizationListener
from backbeat.runtime.sources import BatchSource

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
#: the tests of the data path the compiled code replaces a part of (run again on the Python path)
DATA_PATH_TESTS = ["tests/integration/test_recycling.py", "tests/integration/test_snapshots.py",
                   "tests/integration/test_fastpaths.py", "tests/integration/test_chunkloop.py",
                   "tests/unit/test_driver.py", "tests/unit/test_inputs.py", "tests/unit/test_batch.py"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "BACKBEAT_COMPILED"}
    env.update(extra)
    return env


def test_the_compiled_path_is_in_use_where_it_is_built(tmp_path, monkeypatch):
    if compiled.SWITCHED_OFF:
        assert compiled.native is None and Input.__bases__ == (object,)
        return
    # (the install builds it wherever a C compiler is, as in CI: a build that silently failed fails here)
    assert compiled.native is not None, "backbeat.data._unitpath is not built: `pip install -e .` builds it"
    for cls in (Input, InputGroup, SynchronizationListener, Output):
        assert cls.__bases__ == (compiled.Slots,) and issubclass(cls, compiled.native.Slots)
    calls = []
    drive = compiled.native.drive
    monkeypatch.setattr(compiled.native, "drive", lambda *a: calls.append(1) or drive(*a))
    idx = np.arange(0, 100, dtype=np.int64)
    from backbeat.data.batch import Batch
    batch = Batch(FMT, EXP, idx, idx.copy(), {"value": idx + 0.5})
    source = BatchSource(batch.starts, batch.ends, lambda a, b: batch.slice(a, b), window=30)
    inputs, loaders = build_inputs("sequential", "ch", {"in": ("ch", source, FMT)})
    writer = CacheWriter(tmp_path / "out.h5", FMT, EXP)
    sink = type("Sink", (), {})()
    sink.write, sink.writer = writer.put, writer  # type: ignore[attr-defined]
    outputs = build_outputs({"out": (sink, F)}, inputs)
    assert type(outputs["out"].write) is compiled.native.PlainWrite

    class Identity:
        def process(self, inputs, data_loaders, outputs):
            outputs["out"].write(inputs["in"].data)
            return True

    run_algorithm(Identity(), "sequential", inputs=inputs, data_loaders=loaders, outputs=outputs)
    writer.close()
    assert calls == [1] and outputs["out"].nb_data_blocks_written == 100


def _probe(folder: Path, **env: str) -> dict:
    folder.mkdir()
    out = subprocess.run([sys.executable, str(HERE / "_compiled_probe.py"), str(folder)], env=_env(**env),
                         cwd=HERE, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_both_paths_write_the_same_bytes_show_the_same_steps_and_raise_the_same_errors(tmp_path):
    native, python = _probe(tmp_path / "native"), _probe(tmp_path / "python", BACKBEAT_COMPILED="off")
    assert native.pop("native") is (compiled.native is not None or compiled.SWITCHED_OFF)
    assert python.pop("native") is False
    kinds = {name: (native[name].pop("write"), python[name].pop("write"))
             for name in native if isinstance(native[name], dict)}
    assert kinds["file"] == ("PlainWrite", "function") and kinds["stream"] == ("PlainWrite", "function")
    assert native == python
    # (and the probe saw what it was meant to: files written, errors raised, a stream read whole)
    assert native["stream"]["steps"] == 20_000 and "file" in native["stream"]
    assert native["beyond"]["error"].startswith("KeyError: \"Algorithm logic error on write()")
    assert native["no args"]["error"].startswith("TypeError: Output.write() missing 1 required")
    assert native["uneven (5, 4, 5)"]["error"] == "ValueError: zip() argument 2 is shorter than argument 1"


@pytest.mark.skipif(compiled.SWITCHED_OFF, reason="this session runs the Python path already")
def test_the_data_path_tests_pass_on_the_python_path():
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *DATA_PATH_TESTS],
                         env=_env(BACKBEAT_COMPILED="off"), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and " failed" not in out.stdout


def test_many_windows_leave_no_memory_behind(tmp_path):
    n = 60_000
    idx = np.arange(n, dtype=np.int64)
    from backbeat.data.batch import Batch
    batch = Batch(FMT, EXP, idx, idx.copy(), {"value": idx * 0.5})

    class Identity:
        def process(self, inputs, data_loaders, outputs):
            outputs["out"].write(inputs["in"].data)
            return True

    def once(k: int) -> None:
        source = BatchSource(batch.starts, batch.ends, lambda a, b: batch.slice(a, b), window=512)
        inputs, loaders = build_inputs("sequential", "ch", {"in": ("ch", source, FMT)})
        writer = CacheWriter(tmp_path / f"out{k}.h5", FMT, EXP)
        sink = type("Sink", (), {})()
        sink.write, sink.writer = writer.put, writer  # type: ignore[attr-defined]
        run_algorithm(Identity(), "sequential", inputs=inputs, data_loaders=loaders,
                      outputs=build_outputs({"out": (sink, F)}, inputs))
        writer.close()
        os.remove(writer.path)

    once(0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(1, 4):
            once(k)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # (one int or value object kept per unit would be 180,000 objects, several MB)
    assert after - before < 256 << 10, f"{after - before} bytes left after 3 runs of {n} units"


def test_the_per_step_attributes_behave_as_attributes():
    x = Input("in", None, [])
    assert x.data is None and x.data_index == -1
    x.data = "mine"
    del x.data
    with pytest.raises(AttributeError, match="'Input' object has no attribute 'data'"):
        _ = x.data
    x.anything = 1  # (other attributes: the instance's dictionary, as before)
    x.data = F(value=np.float64(2.5))
    twin = copy.copy(x)  # (copied and pickled as a plain object's attributes are)
    assert (twin.data, twin.data_index, twin.anything, twin.name) == (x.data, -1, 1, "in")
    with pytest.raises(AttributeError):
        _ = Input("in", None, []).__class__.__new__(Input).data
    again = pickle.loads(pickle.dumps(SynchronizationListener()))
    assert (again.data_index_start, again.data_index_end) == (-1, -1)
    listener = SynchronizationListener()
    listener.onIntervalChanged(3, 4)
    assert (listener.data_index_start, listener.data_index_end) == (3, 4)
