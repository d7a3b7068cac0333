"""The ``beat.backend.python`` import shim, exercised in fresh interpreters."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backbeat.runtime.compat import View

VIEW_CODE = textwrap.dedent(
    """
    from collections import namedtuple

    import numpy

    from beat.backend.python.database import View


    class Numbers(View):
        def __init__(self):
            super().__init__()
            self.output_member_map = {"number": "value"}

        def index(self, root_folder, parameters):
            Entry = namedtuple("Entry", ["value", "label"])
            return [Entry(i * parameters["scale"], i % 2) for i in range(6)]

        def get(self, output, index):
            obj = self.objs[index]
            if output == "number":
                return {"value": numpy.int32(obj.value)}
            return {"value": numpy.int32(obj.label)}


    class NoInit(View):
        def get(self, output, index):
            return {"value": self.objs[index]}
    """
)

DRIVER = textwrap.dedent(
    """
    import importlib.util, json, sys
    from backbeat.runtime.compat import install_beat_aliases, View
    install_beat_aliases()
    install_beat_aliases()  # idempotent
    spec = importlib.util.spec_from_file_location("user_view", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    view = module.Numbers()
    objs = view.index("/data", {"scale": 10})
    view.setup("/data", {"scale": 10}, objs, start_index=2, end_index=4)
    plain = module.NoInit()
    plain.setup("/x", {}, [7, 8, 9])
    import beat.backend.python.inputs as bi
    import beat.backend.python.outputs as bo
    import beat.backend.python.data_loaders as bd
    from beat.backend.python.baseformat import value_type
    import backbeat.runtime.inputs, backbeat.runtime.outputs, backbeat.runtime.dataloaders
    print(json.dumps({
        "is_backbeat_view": issubclass(module.Numbers, View),
        "objs": [list(o) for o in view.objs],
        "range": [view.start_index, view.end_index],
        "get": int(view.get("number", 1)["value"]),
        "mapping": [view.get_output_mapping("number"), view.get_output_mapping("label")],
        "noinit": [plain.get_output_mapping("x"), plain.get("x", 2)["value"], len(plain.objs)],
        "same_classes": [bi.InputGroup is backbeat.runtime.inputs.InputGroup, bo.Output is backbeat.runtime.outputs.Output,
                         bd.DataLoader is backbeat.runtime.dataloaders.DataLoader,
                         bd.mixDataIndices is backbeat.runtime.dataloaders.mix_data_indices],
        "value_type": callable(value_type),
        "module_names": [bi.__name__, backbeat.runtime.inputs.__name__],
    }))
    """
)


def run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


def test_view_module_written_for_beat_loads(tmp_path: Path):
    view_file = tmp_path / "numbers.py"
    view_file.write_text(VIEW_CODE)
    done = run(DRIVER, str(view_file))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {
        "is_backbeat_view": True,
        "objs": [[20, 0], [30, 1], [40, 0]],
        "range": [2, 4],
        "get": 30,
        "mapping": ["value", "label"],
        "noinit": ["x", 9, 3],
        "same_classes": [True, True, True, True],
        "value_type": True,
        "module_names": ["beat.backend.python.inputs", "backbeat.runtime.inputs"],
    }


def test_aliases_inactive_unless_installed(tmp_path: Path):
    view_file = tmp_path / "numbers.py"
    view_file.write_text(VIEW_CODE)
    code = textwrap.dedent(
        """
        import importlib.util, sys
        import backbeat.runtime.compat, backbeat.runtime.driver, backbeat.runtime.inputs
        try:
            import beat.backend.python.database
        except ModuleNotFoundError as exc:
            print("missing:", exc.name)
        backbeat.runtime.compat.install_beat_aliases()
        import beat.backend.python.database as db
        assert db.View is backbeat.runtime.compat.View
        try:
            import beat.backend.python.nonexistent
        except ModuleNotFoundError as exc:
            print("unknown:", exc.name)
        try:
            import beat.core
        except ModuleNotFoundError as exc:
            print("core:", exc.name)
        backbeat.runtime.compat.uninstall_beat_aliases()
        assert not any(n == "beat" or n.startswith("beat.") for n in sys.modules)
        try:
            import beat.backend.python.database
        except ModuleNotFoundError as exc:
            print("again missing:", exc.name)
        """
    )
    done = run(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == [
        "missing: beat",
        "unknown: beat.backend.python.nonexistent",
        "core: beat.core",
        "again missing: beat",
    ]


def test_no_beat_package_on_the_path():
    done = run("import importlib.util; print(importlib.util.find_spec('beat'))")
    assert done.stdout.strip() == "None"


def test_view_base_defaults():
    view = View()
    with pytest.raises(NotImplementedError):
        view.index("/r", {})
    with pytest.raises(NotImplementedError):
        view.get("o", 0)
    view.setup("/r", {"p": 1}, list(range(5)))
    assert view.objs == [0, 1, 2, 3, 4] and (view.start_index, view.end_index) == (0, 4)
    view.setup("/r", {}, list(range(5)), start_index=3)
    assert view.objs == [3, 4] and view.end_index == 4
    assert view.get_output_mapping("z") == "z"


IRIS = Path(__file__).resolve().parents[2] / "prefix" / "databases" / "iris" / "1.py"


@pytest.mark.skipif(not IRIS.exists(), reason="test prefix not present")
def test_prefix_iris_view_runs_through_the_shim():
    code = textwrap.dedent(
        """
        import importlib.util, sys
        from backbeat.runtime.compat import install_beat_aliases, View
        install_beat_aliases()
        spec = importlib.util.spec_from_file_location("iris_1", sys.argv[1])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        view = module.IrisSplit()
        assert isinstance(view, View)
        objs = view.index("/nonexistent", {"subset": "train"})
        view.setup("/nonexistent", {"subset": "train"}, objs, start_index=3, end_index=5)
        print(len(objs), len(view.objs), view.get("species", 0)["label"], view.get_output_mapping("species"))
        """
    )
    done = run(code, str(IRIS))
    assert done.returncode == 0, done.stderr
    count, kept, label, mapping = done.stdout.split()
    assert int(count) == 75 and int(kept) == 3 and label == "0" and mapping == "species"
