"""The environment each block of a recorded run ran in, and how two of them differ.

A block's environment is what BEAT declares (``{"name", "version"}``: the block's own, else
the experiment's ``globals.environment``) and what actually ran it (``runtime``): the
interpreter, its Python version and the versions of the packages a record keeps.  A record
that carries a block's ``runtime`` gives it; an older one has only the run's ``environment``
(the interpreter that ran backbeat, which then ran every block).  This module is the one
place that reads either, so the archive and its verification agree on what "the environment
of a block" is.
"""

from __future__ import annotations

from typing import Any


def _runtime_of(record: dict, block: dict) -> dict[str, Any]:
    """The block's ``runtime`` (``interpreter``, ``executable``, ``python``, ``implementation``,
    ``packages``, ``sandbox``), else the same fields from the run's ``environment``."""
    rt = block.get("runtime")
    if isinstance(rt, dict):
        return {k: v for k, v in rt.items() if k != "environment"}  # (the declared one is kept apart)
    env = record.get("environment") or {}
    return {"interpreter": env.get("executable"), "executable": env.get("executable"), "python": env.get("python"),
            "implementation": env.get("python_implementation"), "packages": dict(env.get("packages") or {})}


def block_environments(record: dict) -> dict[str, dict]:
    """``{block: {"environment": {name, version}, "runtime": {interpreter, python, packages, …}}}``."""
    out = {}
    for name in record.get("order", []):
        block = record["blocks"].get(name) or {}
        env = block.get("environment") or {}
        out[name] = {"environment": {"name": env.get("name"), "version": env.get("version")},
                     "runtime": _runtime_of(record, block)}
    return out


def differences(recorded: dict, now: dict) -> list[str]:
    """How the environment ``now`` differs from ``recorded`` (both from :func:`block_environments`),
    one readable line each: ``numpy 2.3.5 -> 2.4.6``, ``Python 3.11.7 -> 3.12.1``."""
    out = []
    if recorded.get("environment") != now.get("environment"):
        out.append(f"declared environment {_label(recorded.get('environment'))} -> {_label(now.get('environment'))}")
    old, new = recorded.get("runtime") or {}, now.get("runtime") or {}
    for key in ("python", "implementation"):  # (where the interpreter is says nothing of what it is)
        if old.get(key) and old.get(key) != new.get(key):
            out.append(f"{'Python' if key == 'python' else 'implementation'} {old.get(key)} -> {new.get(key)}")
    old_p, new_p = old.get("packages") or {}, new.get("packages") or {}
    for pkg in sorted(old_p):
        if old_p.get(pkg) != new_p.get(pkg):
            out.append(f"{pkg} {old_p.get(pkg) or 'not installed'} -> {new_p.get(pkg) or 'not installed'}")
    return out


def _label(env: Any) -> str:
    env = env or {}
    return f"{env.get('name')}/{env.get('version')}"
