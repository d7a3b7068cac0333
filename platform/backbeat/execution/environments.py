"""Which interpreter runs each process of a run, and ``backbeat environments list|check``.

:func:`assign` maps every job of a plan to the :class:`~backbeat.processes.environments.Interpreter`
of its environment (the block's own ``environment``, else the experiment's
``globals.environment``; a loop's evaluator has its own), before anything runs: an environment
that the mapping does not cover is an error naming the experiment and the block.  Dataset views
and the database provider run in the running interpreter.

:func:`runtime` is what a provenance record keeps of the interpreter a block ran in;
:func:`listing` is ``environments list`` (with ``check``: ``environments check``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from backbeat.core import config
from backbeat.core.errors import BackbeatError
from backbeat.declarations.catalog import Catalog
from backbeat.declarations.prefix import Prefix
from backbeat.planning.model import Job, Plan
from backbeat.processes import environments, interpreter
from backbeat.processes.environments import Interpreter, Mapping


def mapping(prefix: str | os.PathLike | None) -> Mapping:
    """The environment mapping in force for ``prefix`` (its file and the active configuration)."""
    return Mapping.load(prefix, config.active())


def assign(plan: Plan, envs: Mapping) -> dict[str, Interpreter]:
    """``{process: interpreter}`` for every job (a loop's ``<job>#0`` is its evaluator)."""
    out: dict[str, Interpreter] = {}
    for job in plan.jobs:
        where = f"block `{job.name}' of experiment `{plan.experiment}'"
        out[job.name] = environments.require(envs, job.environment, where)
        if job.kind == "loop":
            ev = (job.evaluator or {}).get("environment")
            out[f"{job.name}#0"] = environments.require(envs, ev, f"the evaluator of loop `{job.name}' of "
                                                                  f"experiment `{plan.experiment}'")
            out[f"{job.name}#1"] = out[job.name]
    return out


def of(interpreters: dict[str, Interpreter], process: str) -> Interpreter:
    """The interpreter of one process of a job (``job``, ``job#slot``, ``loop#side``)."""
    found = interpreters.get(process) or interpreters.get(process.partition("#")[0])
    return found or environments.RUNNING


def unable(jobs: dict[str, Job], names: Iterable[str], interpreters: dict[str, Interpreter], sandboxed: bool,
           failure: Callable[[str | None], str | None]) -> dict[str, str]:
    """The jobs of ``names`` whose fork server cannot run backbeat's block runtime (another
    interpreter lacking its requirements, a sandbox that did not start): ``{job: why}``.
    ``failure(key)``: why the fork server of interpreter ``key`` cannot (None: it can), asked once
    per interpreter; the running interpreter's, the zygote forked from this process, is not asked
    unless ``sandboxed``."""
    failures: dict[str | None, str | None] = {}
    out: dict[str, str] = {}
    for name in names:
        for pid in ([f"{name}#0", f"{name}#1"] if jobs[name].kind == "loop" else [name]):
            chosen = of(interpreters, pid)
            if chosen.key is None and not sandboxed:
                continue
            if chosen.key not in failures:
                failures[chosen.key] = failure(chosen.key)
            why = failures[chosen.key]
            if why is not None and name not in out:
                out[name] = (f"its environment's interpreter ({chosen.python}) cannot run backbeat's block runtime: "
                             f"{why} (`backbeat environments check' says what it needs)")
    return out


def runtime(env: dict | None, chosen: Interpreter, info: dict, sandboxed: bool) -> dict:
    """What the record keeps of where a block ran: its environment, the interpreter chosen for it,
    that interpreter's Python and package versions, whether it ran in the sandbox."""
    return {"environment": {"name": (env or {}).get("name"), "version": (env or {}).get("version")},
            "interpreter": chosen.python, **interpreter.runtime(info), "sandbox": sandboxed}


class Present:
    """Where the blocks of a prefix would run now, to compare with a record (``audit``)."""

    def __init__(self, prefix: str | os.PathLike) -> None:
        self.mapping = mapping(prefix)
        self._info: dict[str, dict] = {}

    def changes(self, env: dict | None, recorded: dict | None) -> list[str]:
        """How the interpreter of ``env`` now differs from ``recorded`` (a block's ``runtime``)."""
        if not recorded:
            return []
        what = f"environment `{environments.label(env)}'"
        chosen = self.mapping.resolve(env)
        if chosen is None:
            return [f"{what} has no interpreter now (no entry of the environment mapping matches it)"]
        if chosen.python not in self._info:
            self._info[chosen.python] = environments.describe_interpreter(chosen)
        info = self._info[chosen.python]
        if "error" in info:
            return [f"{what}: its interpreter {info['error']}"]
        out = []
        if recorded.get("interpreter") and not environments.same_python(recorded["interpreter"], chosen.python):
            out.append(f"{what} now runs in {chosen.python}, not {recorded['interpreter']}")
        if recorded.get("python") and recorded["python"] != info.get("python"):
            out.append(f"{what}: Python {recorded['python']} -> {info.get('python')}")
        now = info.get("packages") or {}
        for pkg, version in sorted((recorded.get("packages") or {}).items()):
            if now.get(pkg) != version:
                out.append(f"{what}: {pkg} {version or 'not installed'} -> {now.get(pkg) or 'not installed'}")
        return out


# -- environments list | check ---------------------------------------------------------------------
def _declared(prefix: str | os.PathLike) -> dict[str, list[str]]:
    """``{name/version: [experiments declaring it]}`` over the prefix's experiments."""
    catalog = Catalog(str(prefix))
    names, _strays = Prefix(str(prefix)).scan("experiment")
    out: dict[str, list[str]] = {}
    for name in names:
        try:
            decl = catalog.load("experiment", name).declaration
        except BackbeatError:
            continue
        if not isinstance(decl, dict):
            continue
        found = [(decl.get("globals") or {}).get("environment")]
        for section in ("blocks", "analyzers", "loops"):
            for node in (decl.get(section) or {}).values():
                if isinstance(node, dict):
                    found += [node.get(k) for k in ("environment", "processor_environment", "evaluator_environment")]
        for env in found:
            if isinstance(env, dict) and env.get("name"):
                out.setdefault(environments.label(env), [])
                if name not in out[environments.label(env)]:
                    out[environments.label(env)].append(name)
    return out


def _describe(python: str, check: bool, memo: dict[tuple[str, bool], dict]) -> dict[str, Any]:
    if (python, check) not in memo:
        default = os.path.abspath(python) == os.path.abspath(environments.RUNNING.python)
        info = environments.describe_interpreter(Interpreter(python, default), check)
        entry: dict[str, Any] = {"python": python}
        if "error" in info:
            entry.update(ok=False, error=info["error"])
        else:
            entry.update(executable=info.get("executable"), version=info.get("python"),
                         packages=info.get("packages", {}))
            missing = interpreter.missing_requirements(info.get("packages", {}))
            errors = info.get("errors", {})
            entry["ok"] = not missing and not errors
            if missing:
                install = " ".join(f"'{m}'" for m in missing)
                entry["error"] = (f"backbeat's block runtime needs {', '.join(missing)} in this environment: "
                                  f"`{python} -m pip install {install}'")
            elif errors:
                entry["error"] = "backbeat's block runtime does not import here: " + "; ".join(
                    f"{m}: {e}" for m, e in errors.items())
        memo[(python, check)] = entry
    return memo[(python, check)]


def listing(prefix: str | os.PathLike, check: bool = False) -> dict[str, Any]:
    """The mapping's entries and the environments the prefix's experiments declare, each with its
    interpreter; with ``check``, whether backbeat's block runtime works in each (``ok``)."""
    envs = mapping(prefix)
    memo: dict[tuple[str, bool], dict] = {}
    entries = []
    for pattern in sorted(envs.entries):
        target = envs.entries[pattern]
        python = environments.executable(target)
        entries.append({"pattern": pattern, "target": target, "source": envs.sources.get(pattern),
                        **_describe(python, check, memo)})
    declared = []
    for env_label, experiments in sorted(_declared(prefix).items()):
        name, _, version = env_label.rpartition("/")
        chosen = envs.resolve({"name": name, "version": version})
        item: dict[str, Any] = {"environment": env_label, "experiments": experiments}
        if chosen is None:
            item.update(ok=False, python=None, error="no entry of the mapping matches it: its experiments cannot run")
        else:
            item.update(pattern=chosen.pattern, **_describe(chosen.python, check, memo))
        declared.append(item)
    default = _describe(environments.RUNNING.python, check, memo)
    return {"mapped": bool(envs), "default": default, "entries": entries, "declared": declared,
            "files": sorted(set(envs.sources.values())),
            "ok": all(e["ok"] for e in entries + declared) and default["ok"],
            "prefix_file": str(Path(prefix) / environments.PREFIX_FILE)}
