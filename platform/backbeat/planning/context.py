"""What planning one experiment accumulates: its catalog, dataformats, database roots and wiring.

A :class:`PlanContext` is handed to every step of :func:`backbeat.planning.planner.plan`
(blocks, analyzers, loops, datasets): it registers each dataformat used, once, with the
digest of its expanded declaration (what cache keys contain), resolves the libraries an
algorithm uses, and gives each database's root folder.  Root folders come from the caller
(``roots``: the ``database/<name>/<version>`` overrides of ``.backbeatrc``, read by the
execution layer), never from process state: the same arguments always give the same plan.
:class:`Wiring` is the toolchain's connections and the jobs planned so far, shared by the
planning of blocks and of loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backbeat.core import hashing
from backbeat.declarations.catalog import Catalog
from backbeat.planning.model import Dataset, Input, Job


@dataclass
class PlanContext:
    catalog: Catalog
    roots: dict[str, str] = field(default_factory=dict)  # database name -> root folder override
    formats: dict[str, str] = field(default_factory=dict)  # dataformat name -> digest of its expansion
    expanded: dict[str, dict] = field(default_factory=dict)  # dataformat name -> expanded declaration

    def dataformat(self, name: str) -> dict:
        """Register dataformat ``name`` (its expansion and digest, once); return its expansion."""
        from backbeat.declarations.dataformat import expand

        if name not in self.formats:
            exp = expand(self.catalog, name)
            self.expanded[name] = exp
            self.formats[name] = hashing.key("dataformat", {"name": name, "declaration": exp})
        return self.expanded[name]

    def register(self, name: str, expanded: dict) -> None:
        """Register a format made by backbeat itself (an analyzer's ``analysis:<algorithm>``)."""
        self.expanded[name] = expanded
        self.formats[name] = hashing.key("dataformat", {"name": name, "declaration": expanded})

    def library_chain(self, uses: dict[str, str]) -> list[list[str]]:
        """``[[library, hash], …]`` in load order of everything ``uses`` needs, transitively."""
        from backbeat.declarations.library import load_order

        seen: dict[str, str] = {}
        for alias in sorted(uses):
            for lib in load_order(self.catalog, uses[alias]):
                if lib not in seen:
                    seen[lib] = self.catalog.get("library", lib).require_valid().hash or ""
        return [[n, h] for n, h in seen.items()]

    def root_folder(self, database: str, declared: str) -> str:
        """The root folder of ``database``'s raw data: the caller's override, else the declared one."""
        return self.roots.get(database, declared)


def plain(values: dict) -> dict[str, Any]:
    """Parameter values as plain Python (numpy scalars converted)."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in values.items()}


@dataclass
class Wiring:
    """How a toolchain's nodes connect, and the jobs planned so far (in execution order)."""

    ctx: PlanContext
    globals: dict  # the experiment's globals (per-algorithm parameters, environment)
    default_env: dict
    feeds: dict[str, tuple[str, str]]  # "node.input" -> ("source node.output", channel)
    channels: dict[str, str]  # node -> its synchronisation channel
    out_channel: dict[str, str]  # "node.output" -> channel
    datasets: dict[str, Dataset]
    jobs: dict[str, Job] = field(default_factory=dict)
    tc_out_to_algo: dict[str, dict[str, str]] = field(default_factory=dict)  # job -> toolchain out -> algo out

    def input(self, node: str, name: str, tc_input: str, dataformat: str) -> Input:
        """Input ``name`` of ``node`` (its toolchain endpoint ``tc_input``, of ``dataformat``)."""
        src, channel = self.feeds[f"{node}.{tc_input}"]
        src_node, src_out = src.split(".", 1)
        self.ctx.dataformat(dataformat)
        if src_node in self.datasets:
            return Input(name, channel, dataformat, "dataset", src_node, src_out)
        return Input(name, channel, dataformat, "block", src_node, self.tc_out_to_algo[src_node][src_out])

    def output_channel(self, node: str, tc_output: str) -> str:
        return self.out_channel.get(f"{node}.{tc_output}", self.channels[node])

    def beat_hash(self, inp: Input) -> str:
        """BEAT's hash of what an input reads (spec §4.4)."""
        if inp.source == "dataset":
            return self.datasets[inp.node].beat_hash
        return self.jobs[inp.node].outputs[inp.output].beat_hash
