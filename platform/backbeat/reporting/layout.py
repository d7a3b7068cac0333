"""The drawn graph of an experiment as SVG, laid out here (no Graphviz needed).

A layered drawing, left to right, as Graphviz's ``dot`` does with ``rankdir=LR``: each node's
column is its longest path from a source (datasets first), nodes in a column are ordered by a
few barycenter sweeps (fewer crossings), edges are Bézier curves labelled with the dataformat
they carry.  Shapes and fills follow :mod:`backbeat.declarations.graph` (kind by shape, cache
state by fill colour); each node is a ``<g class="node" data-node=NAME data-state=STATE>`` so a
live page can recolour it.  Deterministic for equal inputs.
"""

from __future__ import annotations

from html import escape

from backbeat.declarations.graph import STATE_COLOURS, STATE_TEXT, Edge, Node

NODE_W, NODE_H, COL_GAP, ROW_GAP, MARGIN = 165, 46, 80, 26, 16
#: fill of the run states a live page shows (besides the cache states of ``graph``)
LIVE_COLOURS = {"running": "#9ecae1", "waiting": "#dadaeb", "done": "#b8e0b0", "skipped": "#eeeeee"}


def columns(nodes: list[Node], edges: list[Edge]) -> dict[str, int]:
    """Each node's column: its longest path from a source (cycles broken, every node placed).

    >>> n = [Node(x, "block", "box", None) for x in "abc"]
    >>> columns(n, [Edge("a", "o", "b", "i", None, ""), Edge("b", "o", "c", "i", None, ""),
    ...             Edge("a", "o", "c", "j", None, "")])
    {'a': 0, 'b': 1, 'c': 2}
    """
    names = [n.name for n in nodes]
    preds: dict[str, set[str]] = {n: set() for n in names}
    for e in edges:
        if e.src in preds and e.dst in preds and e.src != e.dst:
            preds[e.dst].add(e.src)
    col: dict[str, int] = {}
    remaining = list(names)
    while remaining:
        ready = [n for n in remaining if preds[n] <= col.keys()]
        if not ready:  # a cycle: place the first remaining node after what is placed
            ready = [remaining[0]]
        for n in ready:
            col[n] = max((col[p] + 1 for p in preds[n] if p in col), default=0)
            remaining.remove(n)
    return {n: col[n] for n in names}


def order(nodes: list[Node], edges: list[Edge], col: dict[str, int], sweeps: int = 4) -> list[list[str]]:
    """Nodes of each column, ordered by barycenter sweeps (declaration order to start)."""
    ncols = max(col.values(), default=-1) + 1
    cols: list[list[str]] = [[n.name for n in nodes if col[n.name] == c] for c in range(ncols)]
    nbrs: dict[str, list[str]] = {n.name: [] for n in nodes}
    for e in edges:
        if e.src in nbrs and e.dst in nbrs:
            nbrs[e.src].append(e.dst)
            nbrs[e.dst].append(e.src)
    for sweep in range(sweeps):
        rng = range(1, ncols) if sweep % 2 == 0 else range(ncols - 2, -1, -1)
        for c in rng:
            ref = c - 1 if sweep % 2 == 0 else c + 1
            pos = {n: i for i, n in enumerate(cols[ref])}
            current = {n: i for i, n in enumerate(cols[c])}

            def centre(n: str, pos: dict[str, int] = pos, current: dict[str, int] = current) -> float:
                near = [pos[m] for m in nbrs[n] if m in pos]
                return sum(near) / len(near) if near else float(current[n])

            cols[c].sort(key=lambda n: (centre(n), current[n]))
    return cols


def _shape(node: Node, x: float, y: float, fill: str) -> str:
    w, h = NODE_W, NODE_H
    if node.kind == "analyzer":
        d = 14
        pts = [(x + d, y), (x + w - d, y), (x + w, y + h / 2), (x + w - d, y + h), (x + d, y + h), (x, y + h / 2)]
        return (f'<polygon points="{" ".join(f"{a:.0f},{b:.0f}" for a, b in pts)}" fill="{fill}" '
                f'stroke="#333" class="shape"/>')
    if node.kind == "dataset":
        return (f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="16" ry="16" fill="{fill}" stroke="#333" '
                f'class="shape"/>')
    dash = ' stroke-dasharray="5,3"' if node.kind == "loop" else ""
    return f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}" stroke="#333"{dash} class="shape"/>'


def _clip(text: str, n: int = 25) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def svg(nodes: list[Node], edges: list[Edge], title: str = "") -> str:
    """The graph as a standalone SVG document (UTF-8 text)."""
    col = columns(nodes, edges)
    cols = order(nodes, edges, col)
    tallest = max((len(c) for c in cols), default=1)
    height = MARGIN * 2 + tallest * NODE_H + (tallest - 1) * ROW_GAP + 22
    width = MARGIN * 2 + len(cols) * NODE_W + max(len(cols) - 1, 0) * COL_GAP
    at: dict[str, tuple[float, float]] = {}
    for c, names in enumerate(cols):
        span = len(names) * NODE_H + (len(names) - 1) * ROW_GAP
        top = MARGIN + (height - 22 - 2 * MARGIN - span) / 2
        for i, n in enumerate(names):
            at[n] = (MARGIN + c * (NODE_W + COL_GAP), top + i * (NODE_H + ROW_GAP))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" role="img" '
           f'aria-label="{escape(title)}">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>']
    for e in edges:
        if e.src not in at or e.dst not in at:
            continue
        (sx, sy), (dx, dy) = at[e.src], at[e.dst]
        x1, y1, x2, y2 = sx + NODE_W, sy + NODE_H / 2, dx, dy + NODE_H / 2
        mid = (x1 + x2) / 2
        out.append(f'<g class="edge"><title>{escape(e.src)}.{escape(e.output)} → {escape(e.dst)}.{escape(e.input)}'
                   f' ({escape(e.label)})</title>'
                   f'<path d="M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} {x2:.0f},{y2:.0f}" '
                   f'fill="none" stroke="#555" marker-end="url(#arrow)"/>'
                   f'<text x="{mid:.0f}" y="{(y1 + y2) / 2 - 3:.0f}" font-size="9" text-anchor="middle" '
                   f'fill="#444" stroke="#fff" stroke-width="3" paint-order="stroke">{escape(_clip(e.label, 22))}</text></g>')
    for node in nodes:
        x, y = at[node.name]
        state = node.state or "unknown"
        fill = STATE_COLOURS.get(state, "#ffffff")
        tip = f"{node.kind} {node.name}" + (f" ({node.detail})" if node.detail else "") + \
            f": {STATE_TEXT.get(state, state)}"
        out.append(f'<g class="node" data-node="{escape(node.name)}" data-state="{escape(state)}">'
                   f'<title>{escape(tip)}</title>{_shape(node, x, y, fill)}'
                   f'<text x="{x + NODE_W / 2:.0f}" y="{y + 20:.0f}" font-size="12" font-weight="bold" '
                   f'text-anchor="middle">{escape(_clip(node.name))}</text>'
                   f'<text x="{x + NODE_W / 2:.0f}" y="{y + 36:.0f}" font-size="10" text-anchor="middle" '
                   f'fill="#333">{escape(_clip(node.detail))}</text></g>')
    lx = MARGIN
    for s in ("cached", "run", "failed", "unknown"):
        out.append(f'<rect x="{lx}" y="{height - 18}" width="12" height="12" fill="{STATE_COLOURS[s]}" '
                   f'stroke="#333"/><text x="{lx + 16}" y="{height - 8}" font-size="10">{STATE_TEXT[s]}</text>')
        lx += 30 + 7 * len(STATE_TEXT[s])
    out.append("</svg>")
    return "\n".join(out) + "\n"
