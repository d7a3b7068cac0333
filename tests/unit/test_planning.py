"""Planning is a pure function of the catalog, the name and the roots it is given: it reads no
configuration; the execution layer passes the ``.backbeatrc`` database roots in."""

from __future__ import annotations

from backbeat.core import config
from backbeat.declarations.catalog import Catalog
from backbeat.execution.workspace import Workspace
from backbeat.planning.planner import plan
from conftest import RUN_PREFIX

BASE = "run/run/pipeline/1/base"


def test_planning_reads_no_configuration(tmp_path):
    catalog = Catalog(str(RUN_PREFIX))
    declared = plan(catalog, BASE)
    (ds,) = declared.datasets.values()
    config.activate(config.Config(databases={ds.database: "/elsewhere"}))
    try:
        assert plan(catalog, BASE).datasets[ds.name].root_folder == ds.root_folder != "/elsewhere"
        workspace = Workspace.open(RUN_PREFIX, tmp_path, catalog=catalog)  # the caller reads .backbeatrc
        assert workspace.roots == {ds.database: "/elsewhere"}
        moved = workspace.plan(BASE).datasets[ds.name]
    finally:
        config.activate(None)
    assert moved.root_folder == "/elsewhere" and moved.index_key != ds.index_key
    assert plan(catalog, BASE, roots={ds.database: "/elsewhere"}).datasets[ds.name] == moved


def test_environment_mapping_and_sandbox_configuration(tmp_path):
    """``environments`` (prefix file, then .backbeatrc; exact key, then longest pattern) and ``sandbox``."""
    import json
    import sys

    import pytest

    from backbeat.core import config
    from backbeat.core.errors import ExecutionError
    from backbeat.processes import environments

    (tmp_path / ".backbeatrc").write_text(json.dumps({
        "environments": {"Py/*": "envs/py", "R/4": "default"}, "sandbox": ["u/*"]}))
    (tmp_path / "envs/py/bin").mkdir(parents=True)  # a venv folder: its bin/python
    (tmp_path / "envs/py/bin/python").touch()
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    (prefix / "environments.json").write_text(json.dumps({"Py/*": "/ignored", "Py/2": "old/bin/python", "*": "default"}))
    cfg = config.load(cwd=tmp_path, home=tmp_path / "nohome")
    mapping = environments.Mapping.load(prefix, cfg)
    py3 = mapping.resolve({"name": "Py", "version": "3"})
    assert py3 is not None and py3.python == str(tmp_path / "envs/py/bin/python") and not py3.default
    assert py3.pattern == "Py/*" and py3.source == str(tmp_path / ".backbeatrc")  # .backbeatrc replaced the prefix's
    py2 = mapping.resolve({"name": "Py", "version": "2"})  # the exact key wins over the pattern
    assert py2 is not None and py2.python == str(prefix / "old/bin/python")
    other = mapping.resolve({"name": "Julia", "version": "1"})
    assert other is not None and other.default and other.python == sys.executable and other.key is None
    assert config.sandbox_for(cfg, "u/t/1/e") and not config.sandbox_for(cfg, "v/t/1/e")
    del mapping.entries["*"]
    with pytest.raises(ExecutionError, match="block `b' runs in environment `Julia/1', which no entry"):
        environments.require(mapping, {"name": "Julia", "version": "1"}, "block `b'")
    assert environments.Mapping().resolve({"name": "Julia", "version": "1"}) is environments.RUNNING
