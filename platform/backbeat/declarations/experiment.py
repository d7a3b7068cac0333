"""Semantic checks of experiments (spec §2.7, §3.7, §10.4).

An experiment binds its toolchain (implied by its name, :func:`toolchain_name`) to data and
code: datasets → database sets, blocks/loops/analyzers → algorithms (mapping *algorithm*
endpoint names to *toolchain* endpoint names) and parameters.

:func:`check` follows BEAT's stages: first the experiment on its own (datasets, algorithms,
endpoint names, slots, parameters, globals) and the toolchain's validity; only if all that
holds, the cross-checks against the toolchain (node names, endpoint mappings), then — once the
mappings are consistent — connection dataformats and synchronisation grouping.  Within a stage
every error is collected.  Beyond BEAT it reports experiment nodes missing from the toolchain
(BEAT crashes with ``KeyError``), mapping values that are not toolchain endpoints, loop
``processor_parameters``/``evaluator_parameters``, node roles (an analyzer must run an analyzer
algorithm, loops need loop processor/evaluator algorithms) and mapped outputs without an outgoing
connection (BEAT's ``setup`` fails with ``KeyError``).  ``globals.queue``/``environment`` are
never required; environments are mapped to interpreters when a run starts
(:mod:`backbeat.execution.environments`), not checked here.
"""

from __future__ import annotations

import collections
import itertools
from typing import TYPE_CHECKING, Any

from backbeat.core import names
from backbeat.core.errors import BackbeatError, Problem, pointer
from backbeat.declarations import toolchain
from backbeat.declarations.algorithm import bool_string_warning

if TYPE_CHECKING:
    from backbeat.declarations.algorithm import Algorithm
    from backbeat.declarations.catalog import Asset, Catalog

PREFIXES = ("processor_", "evaluator_")
_CONVERSION_ERRORS = (BackbeatError, ValueError, TypeError, KeyError, OverflowError)


def toolchain_name(asset: Asset) -> str:
    """The toolchain of an experiment (``user/tc_user/tc/version/name`` → ``tc_user/tc/version``)."""
    return names.experiment_toolchain(asset.name)


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _summary(asset: Asset) -> str:
    msgs = [p.brief for p in asset.problems[:3]]
    more = len(asset.problems) - len(msgs)
    return "; ".join(msgs) + (f" (and {more} more)" if more > 0 else "")


class _Checker:
    """State of one experiment check: what was resolved so far, and the problems."""

    def __init__(self, asset: Asset, catalog: Catalog):
        self.asset = asset
        self.catalog = catalog
        self.decl: dict = asset.declaration
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []  # never stop a stage
        self.dataset_outputs: dict[str, dict] = {}  # dataset -> {output: dataformat}
        self.algorithms: dict[str, Algorithm | None] = {}  # algorithm name -> Algorithm view, or None if invalid
        self.tc: dict = {}
        self._tc_nodes: list[toolchain.Node] | None = None  # toolchain.nodes(self.tc), once (O(K) each)
        self._ends: dict[str, tuple[list, set]] | None = None  # node -> (channels into it, {(output, channel)})

    def report(self, message: str, *path: object) -> None:
        self.problems.append(self.asset.problem(message, pointer(*path)))

    # -- stage 1: the experiment on its own --------------------------------------------------------
    def datasets(self) -> None:
        from backbeat.declarations.database import sets as database_sets

        for name, spec in _dict(self.decl.get("datasets")).items():
            if not isinstance(spec, dict):
                self.report("a dataset must be an object", "datasets", name)
                continue
            dbname, proto, setname = spec.get("database"), spec.get("protocol"), spec.get("set")
            try:
                db = self.catalog.get("database", dbname)
            except BackbeatError as exc:
                self.report(f"invalid database reference `{dbname}': {exc}", "datasets", name, "database")
                continue
            if not db.valid:
                self.report(f"database `{dbname}' is invalid: {_summary(db)}", "datasets", name, "database")
                continue
            try:
                protocols = database_sets(self.catalog, db)
            except BackbeatError as exc:
                self.report(f"database `{dbname}' is invalid: {exc}", "datasets", name, "database")
                continue
            if not isinstance(proto, str) or proto not in protocols:
                self.report(f"cannot find protocol `{proto}' on database `{dbname}' - valid protocols are "
                            f"{', '.join(protocols)}", "datasets", name, "protocol")
                continue
            if not isinstance(setname, str) or setname not in protocols[proto]:
                self.report(f"cannot find set `{setname}' on protocol `{proto}' from database `{dbname}' - "
                            f"valid set names are {', '.join(protocols[proto])}", "datasets", name, "set")
                continue
            self.dataset_outputs[name] = dict(_dict(protocols[proto][setname].get("outputs")))

    def algorithm(self, algoname: Any, where: tuple) -> Any:
        """The Algorithm view of ``algoname`` or None (and a problem at ``where``)."""
        from backbeat.declarations.algorithm import Algorithm

        key = algoname if isinstance(algoname, str) else repr(algoname)
        if key in self.algorithms:  # an invalid one is reported once, where it is first used
            return self.algorithms[key]
        try:
            alg_asset = self.catalog.get("algorithm", algoname)
        except BackbeatError as exc:
            self.report(f"invalid algorithm reference `{algoname}': {exc}", *where)
            self.algorithms[key] = None
            return None
        if not alg_asset.valid:
            self.report(f"algorithm `{algoname}' is invalid: {_summary(alg_asset)}", *where)
            self.algorithms[key] = None
            return None
        self.algorithms[key] = Algorithm(alg_asset)
        return self.algorithms[key]

    def _known(self, algoname: Any) -> Algorithm | None:
        """An algorithm already resolved (None if unknown, invalid or not a name)."""
        return self.algorithms.get(algoname) if isinstance(algoname, str) else None

    def endpoints(self, mapping: Any, known: dict, algoname: Any, what: str, *where: object) -> None:
        for algo_ep in _dict(mapping):
            if algo_ep not in known:
                self.report(f"algorithm `{algoname}' does not have an {what} named `{algo_ep}' - valid "
                            f"algorithm {what}s are {', '.join(known)}", *where, algo_ep)

    def parameters(self, alg: Any, algoname: Any, values: Any, *where: object) -> None:
        for param, value in _dict(values).items():
            self.warnings += bool_string_warning(self.asset, param, alg.parameters.get(param), value, *where, param)
            try:
                alg.clean_parameter(param, value)
            except _CONVERSION_ERRORS as exc:
                self.report(f"cannot convert value `{value}' to required type for algorithm `{algoname}': {exc}",
                            *where, param)

    def required(self, alg: Any, algoname: Any, values: Any, *where: object) -> None:
        """A declared parameter without default must get a value (BEAT fails only at run time)."""
        given = set(_dict(values)) | set(_dict(_dict(self.decl.get("globals")).get(algoname)))
        for param, spec in _dict(getattr(alg, "parameters", {})).items():
            if isinstance(spec, dict) and "default" not in spec and param not in given:
                self.report(f"parameter `{param}' of algorithm `{algoname}' has no default and no value is "
                            f"given (in the parameters here or in /globals/{algoname})", *where)

    def slots(self, entry: dict, algs: list[tuple[Any, Any]], *where: object) -> None:
        slots = entry.get("nb_slots", 1)
        if isinstance(slots, int) and not isinstance(slots, bool) and slots > 1:
            for algoname, alg in algs:
                if not getattr(alg, "splittable", False):
                    self.report(f"you have set the number of slots for algorithm `{algoname}' to {slots}, "
                                "but it is not splittable", *where, "nb_slots")

    def blocks(self, section: str) -> None:
        for name, entry in _dict(self.decl.get(section)).items():
            if not isinstance(entry, dict):
                self.report(f"{section[:-1]} `{name}' must be an object", section, name)
                continue
            algoname = entry.get("algorithm")
            alg = self.algorithm(algoname, (section, name, "algorithm"))
            if alg is None:
                continue
            analyzer = bool(getattr(alg, "is_analyzer", False))
            if section == "analyzers" and not analyzer:
                self.report(f"algorithm `{algoname}' is not an analyzer", section, name, "algorithm")
            elif section == "blocks" and analyzer:
                self.report(f"algorithm `{algoname}' is an analyzer and cannot be used in a block",
                            section, name, "algorithm")
            self.endpoints(entry.get("inputs"), alg.inputs, algoname, "input", section, name, "inputs")
            if section == "blocks":
                self.endpoints(entry.get("outputs"), alg.outputs, algoname, "output", section, name, "outputs")
            self.slots(entry, [(algoname, alg)], section, name)
            self.parameters(alg, algoname, entry.get("parameters"), section, name, "parameters")
            self.required(alg, algoname, entry.get("parameters"), section, name)

    def loops(self) -> None:
        for name, entry in _dict(self.decl.get("loops")).items():
            if not isinstance(entry, dict):
                self.report(f"loop `{name}' must be an object", "loops", name)
                continue
            algs = []
            for prefix in PREFIXES:
                algoname = entry.get(prefix + "algorithm")
                alg = self.algorithm(algoname, ("loops", name, prefix + "algorithm"))
                if alg is None:
                    continue
                role = prefix[:-1]
                if not str(getattr(alg, "type", "")).endswith(f"_loop_{role}"):
                    self.report(f"algorithm `{algoname}' is not a loop {role}", "loops", name, prefix + "algorithm")
                self.endpoints(entry.get(prefix + "inputs"), alg.inputs, algoname, "input",
                               "loops", name, prefix + "inputs")
                self.endpoints(entry.get(prefix + "outputs"), alg.outputs, algoname, "output",
                               "loops", name, prefix + "outputs")
                self.parameters(alg, algoname, entry.get(prefix + "parameters"), "loops", name, prefix + "parameters")
                self.required(alg, algoname, entry.get(prefix + "parameters"), "loops", name)
                algs.append((algoname, alg))
            self.slots(entry, algs, "loops", name)

    def globals(self) -> None:
        used = set()
        for section in ("blocks", "analyzers"):  # (names only: a malformed one is the schema's to report)
            used |= {e.get("algorithm") for e in _dict(self.decl.get(section)).values()
                     if isinstance(e, dict) and isinstance(e.get("algorithm"), str)}
        for e in _dict(self.decl.get("loops")).values():
            if isinstance(e, dict):
                used |= {e.get(p + "algorithm") for p in PREFIXES if isinstance(e.get(p + "algorithm"), str)}
        for algoname, values in _dict(self.decl.get("globals")).items():
            if algoname in ("queue", "environment"):
                continue
            if algoname not in used:
                self.report(f"found parameter section for algorithm `{algoname}' which is not used anywhere "
                            "in the experiment", "globals", algoname)
                continue
            alg = self.algorithms.get(algoname)
            if alg is not None:
                self.parameters(alg, algoname, values, "globals", algoname)

    def load_toolchain(self) -> bool:
        name = toolchain_name(self.asset)
        tc = self.catalog.get("toolchain", name)
        if not tc.valid:
            details = "\n  * ".join(p.message if not p.pointer else f"{p.pointer}: {p.message}" for p in tc.problems)
            self.report(f"toolchain `{name}' is not valid, because:\n  * {details}")
            return False
        self.tc, self._tc_nodes = tc.declaration, None
        return True

    # -- stage 2: cross-checks against the toolchain -----------------------------------------------
    def names(self, section: str) -> dict[str, toolchain.Node]:
        """Compare node names of a section; return the toolchain nodes present in both."""
        singular = section[:-1]
        if self._tc_nodes is None:
            self._tc_nodes = toolchain.nodes(self.tc)
        tc_nodes = {n.name: n for n in self._tc_nodes if n.section == section}
        exp = _dict(self.decl.get(section))
        for name in exp:
            if name not in tc_nodes:
                self.report(f"{singular} `{name}' is not in toolchain `{toolchain_name(self.asset)}' "
                            f"(its {section}: {', '.join(sorted(tc_nodes))})", section, name)
        missing = sorted(set(tc_nodes) - set(exp))
        if missing:
            self.report(f"toolchain {section} missing from the experiment: {', '.join(missing)}", section)
        return {k: v for k, v in tc_nodes.items() if k in exp and isinstance(exp[k], dict)}

    def cross_datasets(self) -> None:
        for name, node in self.names("datasets").items():
            available = self.dataset_outputs.get(name)
            if available is None:
                continue
            extra = [o for o in node.outputs if o not in available]
            if extra:
                spec = self.decl["datasets"][name]
                self.report(f"toolchain endpoints ({', '.join(node.outputs)}) must be a subset of what is available "
                            f"on database `{spec.get('database')}', protocol `{spec.get('protocol')}', set "
                            f"`{spec.get('set')}' outputs ({', '.join(available)}); missing: {', '.join(extra)}",
                            "datasets", name)

    def mapping(self, section: str, name: str, key: str, tc_endpoints: list[str], what: str,
                connected: set[str] | None) -> None:
        """Check one experiment mapping (algorithm endpoint -> toolchain endpoint) against the toolchain."""
        mapping = _dict(self.decl[section][name].get(key))
        singular = section[:-1]
        if what == "input" and len(mapping) != len(tc_endpoints):
            self.report(f"toolchain {section} has {len(tc_endpoints)} {key} while the experiment has "
                        f"{len(mapping)} {key}", section, name, key)
        seen: dict[str, str] = {}
        for algo_ep, tc_ep in mapping.items():
            if tc_ep not in tc_endpoints:
                self.report(f"toolchain {singular} `{name}' has no {what} named `{tc_ep}' (its {key}: "
                            f"{', '.join(tc_endpoints)})", section, name, key, algo_ep)
            elif tc_ep in seen:
                self.report(f"toolchain {what} `{name}.{tc_ep}' is already mapped by `{seen[tc_ep]}'",
                            section, name, key, algo_ep)
            else:
                seen[tc_ep] = algo_ep
                if connected is not None and f"{name}.{tc_ep}" not in connected:
                    self.report(f"output `{name}.{tc_ep}' has no connection in the toolchain: "
                                "the experiment could not be set up", section, name, key, algo_ep)
        if connected is not None:
            unmapped = [ep for ep in tc_endpoints if f"{name}.{ep}" in connected and ep not in seen]
            if unmapped:
                self.report(f"connected toolchain outputs not produced by any algorithm output: "
                            f"{', '.join(unmapped)}", section, name, key)

    def cross_nodes(self) -> None:
        sources = {src for _i, src, _d, _c in toolchain.connections(self.tc)}
        for section in ("blocks", "analyzers"):
            for name, node in self.names(section).items():
                self.mapping(section, name, "inputs", list(node.inputs), "input", None)
                if section == "blocks":
                    self.mapping(section, name, "outputs", list(node.outputs), "output", sources)
        tc_loops = {e["name"]: e for _i, e in toolchain._entries(self.tc, "loops")}
        for name in self.names("loops"):
            for prefix in PREFIXES:
                for key, what, conn in ((prefix + "inputs", "input", None), (prefix + "outputs", "output", sources)):
                    eps = [ep for _j, ep in toolchain._strings(tc_loops[name].get(key))]
                    self.mapping("loops", name, key, eps, what, conn)

    # -- stage 3: dataformats and synchronisation ---------------------------------------------------
    def _endpoint(self, endpoint: str, side: str) -> tuple[str, str | None, tuple] | None:
        """``(kind, dataformat, pointer parts)`` of a toolchain endpoint under this experiment."""
        node, _, ep = endpoint.partition(".")
        if side == "from" and node in self.dataset_outputs:
            return "dataset", self.dataset_outputs[node].get(ep), ("datasets", node)
        sections = ("blocks", "loops") if side == "from" else ("blocks", "loops", "analyzers")
        for section in sections:
            entry = _dict(self.decl.get(section)).get(node)
            if not isinstance(entry, dict):
                continue
            prefixes = PREFIXES if section == "loops" else ("",)
            for prefix in prefixes:
                key = prefix + ("outputs" if side == "from" else "inputs")
                reverse = {v: k for k, v in _dict(entry.get(key)).items()}
                if ep in reverse:
                    alg = self._known(entry.get(prefix + "algorithm"))
                    eps = (alg.outputs if side == "from" else alg.inputs) if alg is not None else {}
                    return section[:-1], eps.get(reverse[ep]), (section, node, key, reverse[ep])
        return None

    def connection_dataformats(self) -> None:
        from backbeat.declarations.dataformat import is_parent

        for i, src, dst, _ch in toolchain.connections(self.tc):
            start, end = self._endpoint(src, "from"), self._endpoint(dst, "to")
            if start is None or end is None:
                self.report(f"unknown endpoint in toolchain connection /connections/{i}: "
                            f"{src if start is None else dst}")
                continue
            (from_kind, from_df, _), (to_kind, to_df, where) = start, end
            if from_df == to_df:
                continue
            try:
                ok = isinstance(from_df, str) and isinstance(to_df, str) and is_parent(self.catalog, to_df, from_df)
            except BackbeatError:
                ok = False
            if not ok:
                self.report(f"mismatch in data type at connection ({from_kind}) {src} -> ({to_kind}) {dst} - start "
                            f"point uses `{from_df}' while end point uses `{to_df}' (must be equal or a parent format)",
                            *where)

    def _channel_groups(self, name: str) -> collections.Counter:
        if self._ends is None:  # the toolchain's connections by node, once (not once per node: O(K^2))
            self._ends = {}
            for _i, src, dst, ch in toolchain.connections(self.tc):
                node, dot, _input = dst.partition(".")
                if dot:
                    self._ends.setdefault(node, ([], set()))[0].append(ch)
                node, dot, output = src.partition(".")
                if dot:
                    self._ends.setdefault(node, ([], set()))[1].add((output, ch))
        into, out_of = self._ends.get(name, ([], set()))
        ins = collections.Counter(into)
        outs = collections.Counter(ch for _o, ch in out_of)
        return collections.Counter((v, outs.get(k, 0)) for k, v in ins.items())

    @staticmethod
    def _groups(alg: Any) -> list[dict]:
        return [g for g in (getattr(alg, "groups", None) or []) if isinstance(g, dict)]

    def block_sync(self) -> None:
        for name, entry in _dict(self.decl.get("blocks")).items():
            alg = self._known(entry.get("algorithm")) if isinstance(entry, dict) else None
            if alg is None:
                continue
            expected = collections.Counter((len(g.get("inputs") or {}), len(g.get("outputs") or {}))
                                           for g in self._groups(alg))
            if self._channel_groups(name) != expected:
                self.report(f"synchronization mismatch in input/output grouping between block `{name}' and "
                            f"algorithm `{entry.get('algorithm')}'", "blocks", name)

    def loop_sync(self) -> None:
        for name, entry in _dict(self.decl.get("loops")).items():
            if not isinstance(entry, dict):
                continue
            pname, ename = entry.get("processor_algorithm"), entry.get("evaluator_algorithm")
            proc, eval_ = self._known(pname), self._known(ename)
            if proc is None or eval_ is None:
                continue
            counts = []
            for pg, eg in itertools.zip_longest(self._groups(proc), self._groups(eval_)):
                ins = outs = 0
                for g in (pg, eg):
                    if g:
                        ins += len(g.get("inputs") or {})
                        outs += len(g.get("outputs") or {})
                counts.append((ins, outs))
            if self._channel_groups(name) != collections.Counter(counts):
                self.report(f"synchronization mismatch in input/output grouping between loop `{name}', algorithm "
                            f"`{pname}' and loop algorithm `{ename}'", "loops", name)
            for pg, eg in zip(self._groups(proc), self._groups(eval_), strict=False):
                ploop, eloop = _dict(pg.get("loop")), _dict(eg.get("loop"))
                for channel in ("request", "answer"):
                    ptype = _dict(ploop.get(channel)).get("type")
                    etype = _dict(eloop.get(channel)).get("type")
                    if ptype != etype:
                        self.report(f"{channel} loop channel type incompatible between {pname} (`{ptype}') and "
                                    f"{ename} (`{etype}')", "loops", name, "evaluator_algorithm")


def check(asset: Asset, catalog: Catalog) -> list[Problem]:
    """All semantic problems of an experiment declaration (schema already passed)."""
    if not isinstance(asset.declaration, dict):
        return [asset.problem("an experiment declaration must be a JSON object")]
    c = _Checker(asset, catalog)
    c.datasets()
    c.blocks("blocks")
    c.loops()
    c.blocks("analyzers")
    c.globals()
    if not c.load_toolchain() or c.problems:
        return c.problems + c.warnings
    c.cross_datasets()
    c.cross_nodes()
    if c.problems:
        return c.problems + c.warnings
    c.connection_dataformats()
    c.block_sync()
    c.loop_sync()
    return c.problems + c.warnings
