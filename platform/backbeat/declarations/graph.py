"""Graphviz drawings of toolchains and experiments (``backbeat toolchains|experiments draw``).

The DOT text is a pure, deterministic function of the declarations (and, for experiments, of
the dataformats and cache states passed in): nodes in declaration order, one ``cluster`` per
synchronisation channel, no timestamps or memory addresses.  Node shape tells the kind
(dataset: cylinder, block: box, loop: diamond, analyzer: hexagon); the fill colour tells the
cache state (``cached``, ``run`` = will run, ``failed``, ``unknown``); edges carry the
dataformat flowing through them (experiments) or ``output → input`` (toolchains), coloured by
channel (the toolchain's ``representation.channel_colors`` when declared).

:func:`render` writes ``.dot`` itself and asks Graphviz's ``dot`` for ``.svg``/``.png``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backbeat.core.errors import BackbeatError, UsageError
from backbeat.declarations.toolchain import connections, nodes

SHAPES = {"datasets": "cylinder", "blocks": "box", "loops": "diamond", "analyzers": "hexagon"}
KIND = {"datasets": "dataset", "blocks": "block", "loops": "loop", "analyzers": "analyzer"}
STATE_COLOURS = {"cached": "#b8e0b0", "run": "#fde3a7", "failed": "#f4a3a3", "unknown": "#ffffff"}
STATE_TEXT = {"cached": "cached", "run": "will run", "failed": "failed", "unknown": "cache state unknown"}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
FORMATS = (".dot", ".gv", ".svg", ".png")


@dataclass
class Node:
    name: str
    kind: str  # "dataset", "block", "loop" or "analyzer"
    shape: str
    channel: str | None
    detail: str = ""  # second label line (algorithm, database set)
    state: str | None = None


@dataclass
class Edge:
    src: str
    output: str
    dst: str
    input: str
    channel: str | None
    label: str


def quote(text: str) -> str:
    r"""A DOT double-quoted string.

    >>> quote('a "b"\\c')
    '"a \\"b\\"\\\\c"'
    """
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def toolchain_graph(declaration: Any) -> tuple[list[Node], list[Edge]]:
    """Nodes and edges of a toolchain declaration (first node of each name; odd entries skipped)."""
    seen: dict[str, Node] = {}
    for n in nodes(declaration):
        if n.name in seen:
            continue
        channel = n.name if n.section == "datasets" else n.channel
        seen[n.name] = Node(n.name, KIND[n.section], SHAPES[n.section],
                            channel if isinstance(channel, str) else None)
    edges = []
    for _i, src, dst, channel in connections(declaration):
        s_node, _, s_out = src.partition(".")
        d_node, _, d_in = dst.partition(".")
        if s_node in seen and d_node in seen:
            edges.append(Edge(s_node, s_out, d_node, d_in, channel if isinstance(channel, str) else None,
                              s_out if s_out == d_in else f"{s_out} → {d_in}"))
    return list(seen.values()), edges


def experiment_graph(toolchain: Any, experiment: Any, formats: dict[str, str] | None = None,
                     states: dict[str, str] | None = None) -> tuple[list[Node], list[Edge]]:
    """The toolchain graph annotated with an experiment: algorithms, database sets, dataformats, states.

    ``formats`` maps ``"dst_node.dst_input"`` (toolchain endpoints) to the dataformat carried;
    ``states`` maps node names to ``cached``/``run``/``failed``/``unknown``.
    """
    graph_nodes, edges = toolchain_graph(toolchain)
    exp = experiment if isinstance(experiment, dict) else {}
    sections = {"dataset": exp.get("datasets"), "block": exp.get("blocks"), "loop": exp.get("loops"),
                "analyzer": exp.get("analyzers")}
    for node in graph_nodes:
        spec = (sections.get(node.kind) or {}).get(node.name)
        if isinstance(spec, dict):
            if node.kind == "dataset":
                node.detail = "/".join(str(spec.get(k, "?")) for k in ("database", "protocol", "set"))
            elif node.kind == "loop":
                node.detail = " + ".join(str(spec[f"{k}_algorithm"]) for k in ("processor", "evaluator")
                                         if f"{k}_algorithm" in spec)
            else:
                node.detail = str(spec.get("algorithm", ""))
        if states and node.name in states:
            node.state = states[node.name]
    for edge in edges:
        df = (formats or {}).get(f"{edge.dst}.{edge.input}")
        if df:
            edge.label = df
    return graph_nodes, edges


def _channel_colours(channels: list[str], declared: Any) -> dict[str, str]:
    colours: dict[str, str] = {}
    declared = declared if isinstance(declared, dict) else {}
    for i, ch in enumerate(channels):
        value = declared.get(ch)
        colours[ch] = value if isinstance(value, str) and value.startswith("#") else PALETTE[i % len(PALETTE)]
    return colours


def _node_line(node: Node, indent: str) -> str:
    label = node.name + (f"\n{node.detail}" if node.detail else "")
    attrs = [f"label={quote(label)}", f"shape={node.shape}"]
    if node.state is not None:
        attrs += ["style=filled", f"fillcolor={quote(STATE_COLOURS.get(node.state, '#ffffff'))}",
                  f"tooltip={quote(STATE_TEXT.get(node.state, node.state))}"]
    return f"{indent}{quote(node.name)} [{', '.join(attrs)}];"


def to_dot(title: str, graph_nodes: list[Node], edges: list[Edge], channel_colors: Any = None) -> str:
    """The DOT text of a graph: deterministic for equal inputs."""
    channels: list[str] = []
    for n in graph_nodes:
        if n.channel is not None and n.channel not in channels:
            channels.append(n.channel)
    colours = _channel_colours(channels, channel_colors)
    lines = [f"digraph {quote(title)} {{",
             f"  graph [rankdir=LR, label={quote(title)}, labelloc=t, fontname=Helvetica];",
             "  node [fontname=Helvetica, fontsize=11];",
             "  edge [fontname=Helvetica, fontsize=9];"]
    for ch in channels:
        lines.append(f"  subgraph {quote('cluster_' + ch)} {{")
        lines.append(f"    label={quote('channel ' + ch)}; style=rounded; color={quote(colours[ch])};")
        lines += [_node_line(n, "    ") for n in graph_nodes if n.channel == ch]
        lines.append("  }")
    lines += [_node_line(n, "  ") for n in graph_nodes if n.channel is None]
    for e in edges:
        attrs = [f"label={quote(e.label)}"]
        if e.channel in colours:
            attrs.append(f"color={quote(colours[e.channel])}")
        lines.append(f"  {quote(e.src)} -> {quote(e.dst)} [{', '.join(attrs)}];")
    used = sorted({n.state for n in graph_nodes if n.state is not None}, key=list(STATE_COLOURS).index)
    if used:
        lines.append('  subgraph "cluster_legend" {')
        lines.append('    label="cache state"; style=dashed; color="#999999";')
        for s in used:
            lines.append(f"    {quote('legend: ' + s)} [label={quote(STATE_TEXT[s])}, shape=note, style=filled, "
                         f"fillcolor={quote(STATE_COLOURS[s])}];")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot_text: str, path: str | os.PathLike) -> str:
    """Write the drawing to ``path``: ``.dot``/``.gv`` as text, ``.svg``/``.png`` through Graphviz."""
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"cannot draw into `{out}': the file name must end with one of {', '.join(FORMATS)}")
    if not out.parent.is_dir():
        raise UsageError(f"cannot draw into `{out}': folder `{out.parent}' does not exist")
    if suffix in (".dot", ".gv"):
        out.write_text(dot_text, encoding="utf-8")
        return str(out)
    dot = shutil.which("dot")
    if dot is None:
        raise BackbeatError(f"cannot write `{out}': Graphviz's `dot' program is not installed "
                            f"(install graphviz, or write DOT with -o {out.with_suffix('.dot').name})")
    try:
        proc = subprocess.run([dot, f"-T{suffix[1:]}", "-o", str(out)], input=dot_text.encode("utf-8"),
                              capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackbeatError(f"Graphviz's `dot' failed to write `{out}': {exc}") from None
    if proc.returncode != 0:
        raise BackbeatError(f"Graphviz's `dot' failed to write `{out}': "
                            f"{proc.stderr.decode('utf-8', 'replace').strip()}")
    return str(out)
