"""Semantic checks of toolchains (spec §2.6, §3.6) and the block graph they describe.

A toolchain is a graph: *datasets* (sources with outputs), *blocks* (inputs → outputs),
*loops* (processor/evaluator inputs → outputs) and *analyzers* (inputs only), linked by
``connections`` ``{"from": "node.output", "to": "node.input", "channel": dataset}``.

:func:`check` reports every error BEAT reports (duplicate names, synchronisation channels,
doubly-connected inputs, unknown endpoints, unconnected inputs, representation keys) with
an RFC 6901 pointer, plus what BEAT misses: cycles (BEAT hangs in ``execution_order``) and
connections that start at an input or end at an output/dataset.  Every function reads the
declaration defensively — odd shapes are skipped (the JSON schema reports them), never raised on.

:func:`execution_order` reproduces BEAT's order exactly (repeated passes over
``blocks + loops + analyzers`` in declaration order, a node being queued as soon as all its
dependencies are) but raises :class:`~backbeat.errors.ExecutionError` instead of looping forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backbeat.core.errors import ExecutionError, Problem, pointer

if TYPE_CHECKING:
    from backbeat.declarations.catalog import Asset, Catalog

SECTIONS = ("datasets", "blocks", "loops", "analyzers")
# (section, key) pairs holding input / output endpoint names
_INPUT_KEYS = {"blocks": ("inputs",), "loops": ("processor_inputs", "evaluator_inputs"),
               "analyzers": ("inputs",), "datasets": ()}
_OUTPUT_KEYS = {"datasets": ("outputs",), "blocks": ("outputs",),
                "loops": ("processor_outputs", "evaluator_outputs"), "analyzers": ()}


@dataclass
class Node:
    """One dataset, block, loop or analyzer of a toolchain."""

    name: str
    section: str  # "datasets", "blocks", "loops" or "analyzers"
    index: int  # position in its section
    channel: Any = None  # synchronized_channel (None for datasets)
    inputs: dict[str, str] = field(default_factory=dict)  # endpoint -> JSON pointer
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def pointer(self) -> str:
        return pointer(self.section, self.index)


def _entries(decl: Any, key: str) -> list[tuple[int, dict]]:
    """``(index, entry)`` of the dict entries of list ``decl[key]`` (anything else skipped)."""
    items = decl.get(key) if isinstance(decl, dict) else None
    if not isinstance(items, list):
        return []
    return [(i, e) for i, e in enumerate(items) if isinstance(e, dict) and isinstance(e.get("name"), str)]


def _strings(value: Any) -> list[tuple[int, str]]:
    if not isinstance(value, list):
        return []
    return [(i, v) for i, v in enumerate(value) if isinstance(v, str)]


def nodes(declaration: Any) -> list[Node]:
    """Every node, section by section in declaration order (duplicates included)."""
    result = []
    for section in SECTIONS:
        for i, entry in _entries(declaration, section):
            node = Node(entry["name"], section, i, entry.get("synchronized_channel"))
            for key in _INPUT_KEYS[section]:
                for j, ep in _strings(entry.get(key)):
                    node.inputs.setdefault(ep, pointer(section, i, key, j))
            for key in _OUTPUT_KEYS[section]:
                for j, ep in _strings(entry.get(key)):
                    node.outputs.setdefault(ep, pointer(section, i, key, j))
            result.append(node)
    return result


def connections(declaration: Any) -> list[tuple[int, str, str, Any]]:
    """``(index, from, to, channel)`` of each well-formed connection."""
    items = declaration.get("connections") if isinstance(declaration, dict) else None
    if not isinstance(items, list):
        return []
    return [
        (i, c["from"], c["to"], c.get("channel"))
        for i, c in enumerate(items)
        if isinstance(c, dict) and isinstance(c.get("from"), str) and isinstance(c.get("to"), str)
    ]


def _split(endpoint: str) -> tuple[str, str]:
    node, _, name = endpoint.partition(".")
    return node, name


def _node_map(declaration: Any) -> dict[str, Node]:
    """First node of each name."""
    result: dict[str, Node] = {}
    for node in nodes(declaration):
        result.setdefault(node.name, node)
    return result


def dependencies(declaration: Any) -> dict[str, set[str]]:
    """``{node: nodes it reads from}`` for blocks, loops and analyzers (datasets ignored), as BEAT."""
    datasets = {name for _i, e in _entries(declaration, "datasets") for name in [e["name"]]}
    deps: dict[str, set[str]] = {}
    for section in ("blocks", "loops", "analyzers"):
        for _i, entry in _entries(declaration, section):
            deps.setdefault(entry["name"], set())
    for _i, src, dst, _ch in connections(declaration):
        to_node, from_node = _split(dst)[0], _split(src)[0]
        if to_node in deps and from_node not in datasets:
            deps[to_node].add(from_node)
    return deps


def find_cycle(deps: dict[str, set[str]]) -> list[str] | None:
    """A dependency cycle as a path ``[a, b, …, a]`` (data flows a → b), or None."""
    # successors: data flows from dependency to dependent
    succ: dict[str, list[str]] = {n: [] for n in deps}
    for node, ds in deps.items():
        for d in sorted(ds):
            if d in succ:
                succ[d].append(node)
    state: dict[str, int] = {}  # 1 = on stack, 2 = done
    for start in deps:
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path = [start]
        state[start] = 1
        while stack:
            node, k = stack[-1]
            if k < len(succ[node]):
                stack[-1] = (node, k + 1)
                nxt = succ[node][k]
                if state.get(nxt) == 1:
                    return path[path.index(nxt):] + [nxt]
                if not state.get(nxt):
                    state[nxt] = 1
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                state[node] = 2
                stack.pop()
                path.pop()
    return None


def execution_order(declaration: Any) -> list[str]:
    """BEAT's execution order of blocks, loops and analyzers; ExecutionError on a cycle."""
    deps = dependencies(declaration)
    items = list(deps)  # blocks + loops + analyzers in declaration order, first of each name
    queued: dict[str, None] = {}
    while len(queued) != len(items):
        progress = False
        for name in items:
            if name not in queued and deps[name] <= queued.keys():
                queued[name] = None
                progress = True
        if not progress:
            cycle = find_cycle(deps)
            if cycle:
                raise ExecutionError(f"toolchain has a cycle: {' -> '.join(cycle)}")
            missing = sorted({d for n in items if n not in queued for d in deps[n] if d not in deps})
            raise ExecutionError(f"toolchain reads from unknown node(s): {', '.join(missing)}")
    return list(queued)


# -- semantic check --------------------------------------------------------------------------------


def check(asset: Asset, catalog: Catalog | None = None) -> list[Problem]:
    """All semantic problems of a toolchain declaration (schema already passed)."""
    decl = asset.declaration
    if not isinstance(decl, dict):
        return [asset.problem("a toolchain declaration must be a JSON object")]
    problems: list[Problem] = []

    def report(message: str, where: str) -> None:
        problems.append(asset.problem(message, where))

    # names (duplicates across all sections) and synchronisation channels
    all_nodes = nodes(decl)
    first: dict[str, Node] = {}
    for node in all_nodes:
        if node.name in first:
            report(f"duplicated name `{node.name}', first occurrence at {first[node.name].pointer}",
                   pointer(node.section, node.index, "name"))
        else:
            first[node.name] = node
    channels = {n.name for n in all_nodes if n.section == "datasets"}
    for node in all_nodes:
        if node.section != "datasets" and node.channel not in channels:
            report(f"invalid synchronization channel `{node.channel}': not a dataset",
                   pointer(node.section, node.index, "synchronized_channel"))

    inputs = {f"{n.name}.{ep}": (n, p) for n in all_nodes for ep, p in n.inputs.items()}
    outputs = {f"{n.name}.{ep}": (n, p) for n in all_nodes for ep, p in n.outputs.items()}

    # connections
    ending: dict[str, int] = {}
    listed: set[str] = set()
    for i, src, dst, channel in connections(decl):
        listed.add(f"{src}/{dst}")
        if dst in ending:
            report(f"connection {src} -> {dst} ends on the same input as /connections/{ending[dst]}",
                   pointer("connections", i, "to"))
        else:
            ending[dst] = i
        if src not in outputs:
            report(_bad_endpoint(src, "output", inputs, first), pointer("connections", i, "from"))
        if dst not in inputs:
            report(_bad_endpoint(dst, "input", outputs, first), pointer("connections", i, "to"))
        if channel not in channels:
            report(f"invalid synchronization channel `{channel}': not a dataset",
                   pointer("connections", i, "channel"))
    for endpoint, (_node, where) in inputs.items():
        if endpoint not in ending:
            report(f"input `{endpoint}' is not connected", where)

    # cycles (BEAT would hang)
    deps = dependencies(decl)
    cycle = find_cycle(deps)
    if cycle:
        edges = {(_split(s)[0], _split(d)[0]): i for i, s, d, _c in reversed(connections(decl))}
        where = pointer("connections", edges[(cycle[0], cycle[1])]) if (cycle[0], cycle[1]) in edges else ""
        report(f"the connections form a cycle: {' -> '.join(cycle)}", where)

    problems.extend(_check_representation(asset, decl, listed, first, channels))
    return problems


def _bad_endpoint(endpoint: str, side: str, other_side: dict, known: dict[str, Node]) -> str:
    node_name, _ = _split(endpoint)
    if endpoint in other_side:
        other = "an input" if side == "output" else "an output"
        if side == "input" and other_side[endpoint][0].section == "datasets":
            return f"invalid input endpoint `{endpoint}': datasets cannot receive connections"
        return f"invalid {side} endpoint `{endpoint}': it is {other} of `{node_name}'"
    if node_name not in known:
        return f"invalid {side} endpoint `{endpoint}': no node named `{node_name}'"
    return f"invalid {side} endpoint `{endpoint}': `{node_name}' has no such {side}"


def _check_representation(asset: Asset, decl: dict, listed: set[str], names: dict, channels: set) -> list[Problem]:
    rep = decl.get("representation")
    if not isinstance(rep, dict):
        return []
    problems = []
    for key, allowed, message in (
        ("connections", listed, "not listed in /connections"),
        ("blocks", names, "not listed in /datasets, /blocks, /loops or /analyzers"),
        ("channel_colors", channels, "not a dataset listed in /datasets"),
    ):
        section = rep.get(key)
        if isinstance(section, dict):
            for name in section:
                if name not in allowed:
                    problems.append(asset.problem(f"`{name}': {message}", pointer("representation", key, name)))
    return problems
