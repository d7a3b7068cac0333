"""DOT generation (:mod:`backbeat.graph`): structure, determinism, escaping, rendering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from backbeat.core.errors import BackbeatError, UsageError
from backbeat.declarations import graph

TOOLCHAIN = {
    "datasets": [{"name": "set", "outputs": ["x", "y"]}, {"name": "other", "outputs": ["z"]}],
    "blocks": [{"name": "b1", "synchronized_channel": "set", "inputs": ["in"], "outputs": ["out"]},
               {"name": "b2", "synchronized_channel": "other", "inputs": ["a", "b"], "outputs": ["out"]}],
    "loops": [{"name": "lp", "synchronized_channel": "set", "processor_inputs": ["p"], "evaluator_inputs": [],
               "processor_outputs": ["po"], "evaluator_outputs": []}],
    "analyzers": [{"name": "an", "synchronized_channel": "set", "inputs": ["r", "y"]}],
    "connections": [
        {"from": "set.x", "to": "b1.in", "channel": "set"},
        {"from": "b1.out", "to": "b2.a", "channel": "set"},
        {"from": "other.z", "to": "b2.b", "channel": "other"},
        {"from": "b2.out", "to": "an.r", "channel": "other"},
        {"from": "set.y", "to": "an.y", "channel": "set"},
        {"from": "ghost.q", "to": "an.r", "channel": "set"},  # unknown node: skipped
    ],
}


def test_nodes_and_edges():
    nodes, edges = graph.toolchain_graph(TOOLCHAIN)
    assert [(n.name, n.kind, n.shape, n.channel) for n in nodes] == [
        ("set", "dataset", "cylinder", "set"), ("other", "dataset", "cylinder", "other"),
        ("b1", "block", "box", "set"), ("b2", "block", "box", "other"),
        ("lp", "loop", "diamond", "set"), ("an", "analyzer", "hexagon", "set")]
    assert [(e.src, e.dst, e.label) for e in edges] == [
        ("set", "b1", "x → in"), ("b1", "b2", "out → a"), ("other", "b2", "z → b"),
        ("b2", "an", "out → r"), ("set", "an", "y")]


def test_dot_groups_channels_and_is_deterministic():
    dot = graph.to_dot("toolchains/u/t/1", *graph.toolchain_graph(TOOLCHAIN))
    again = graph.to_dot("toolchains/u/t/1", *graph.toolchain_graph(json.loads(json.dumps(TOOLCHAIN))))
    assert dot == again
    lines = dot.splitlines()
    start = lines.index('  subgraph "cluster_set" {')
    end = lines.index("  }", start)
    inside = "\n".join(lines[start:end])
    assert '"b1"' in inside and '"lp"' in inside and '"an"' in inside and '"b2"' not in inside
    # palette colours by order of first appearance when the toolchain declares none
    assert 'color="#1f77b4"' in lines[start + 1] and '"other" -> "b2" [label="z → b", color="#ff7f0e"];' in dot
    assert "fillcolor" not in dot and "legend" not in dot  # no states: no colours, no legend
    assert dot.endswith("}\n")


def test_declared_channel_colours():
    dot = graph.to_dot("t", *graph.toolchain_graph(TOOLCHAIN), {"set": "#123456", "other": "not a colour"})
    assert '"set" -> "b1" [label="x → in", color="#123456"];' in dot
    assert '"other" -> "b2" [label="z → b", color="#ff7f0e"];' in dot


def test_experiment_annotations_and_states():
    experiment = {
        "datasets": {"set": {"database": "db/1", "protocol": "p", "set": "s"}},
        "blocks": {"b1": {"algorithm": "u/a/1"}, "b2": {"algorithm": "u/b/2"}},
        "loops": {"lp": {"processor_algorithm": "u/p/1", "evaluator_algorithm": "u/e/1"}},
        "analyzers": {"an": {"algorithm": "u/an/1"}},
    }
    nodes, edges = graph.experiment_graph(TOOLCHAIN, experiment, {"b1.in": "u/fmt/1"},
                                          {"b1": "cached", "b2": "run", "an": "failed", "set": "cached"})
    by = {n.name: n for n in nodes}
    assert by["set"].detail == "db/1/p/s" and by["b2"].detail == "u/b/2" and by["lp"].detail == "u/p/1 + u/e/1"
    assert by["lp"].state is None and by["an"].state == "failed"
    assert edges[0].label == "u/fmt/1" and edges[1].label == "out → a"
    dot = graph.to_dot("e", nodes, edges)
    assert '"b1" [label="b1\\nu/a/1", shape=box, style=filled, fillcolor="#b8e0b0", tooltip="cached"];' in dot
    assert 'fillcolor="#f4a3a3", tooltip="failed"' in dot and 'tooltip="will run"' in dot
    legend = dot[dot.index('subgraph "cluster_legend"'):]
    assert legend.index('"legend: cached"') < legend.index('"legend: run"') < legend.index('"legend: failed"')


def test_quoting_and_odd_declarations():
    assert graph.quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    nodes, edges = graph.toolchain_graph({"blocks": [{"name": "x"}, {"name": "x"}, "junk", {"nope": 1}],
                                          "connections": "bad"})
    assert [n.name for n in nodes] == ["x"] and nodes[0].channel is None and edges == []
    assert graph.toolchain_graph(None) == ([], [])
    dot = graph.to_dot('we "quote"', nodes, edges)
    assert dot.startswith('digraph "we \\"quote\\"" {') and '  "x" [label="x", shape=box];' in dot


def test_render(tmp_path, monkeypatch):
    text = graph.to_dot("t", *graph.toolchain_graph(TOOLCHAIN))
    assert graph.render(text, tmp_path / "g.dot") == str(tmp_path / "g.dot")
    assert (tmp_path / "g.dot").read_text() == text
    with pytest.raises(UsageError, match="must end with one of"):
        graph.render(text, tmp_path / "g.jpeg")
    with pytest.raises(UsageError, match="does not exist"):
        graph.render(text, tmp_path / "missing" / "g.dot")
    real_dot = shutil.which("dot")
    monkeypatch.setattr(graph.shutil, "which", lambda name: None)
    with pytest.raises(BackbeatError, match="not installed"):
        graph.render(text, tmp_path / "g.svg")
    assert not (tmp_path / "g.svg").exists()
    monkeypatch.undo()
    if real_dot:
        graph.render(text, tmp_path / "g.svg")
        assert "<svg" in (tmp_path / "g.svg").read_text()
        graph.render(text, tmp_path / "g.png")
        assert Path(tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
