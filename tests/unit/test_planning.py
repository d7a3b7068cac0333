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
