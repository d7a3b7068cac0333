"""Parameter sweeps: forked experiments for a grid (or a list) of parameter values.

``--set BLOCK.PARAM=v1,v2`` (repeatable) names a parameter of a block, analyzer or loop (a
loop's processor parameter, else its evaluator's) and its values; each value is read as JSON
(``0.5``, ``true``, ``"a,b"``) or else taken as a string.  The experiments are every
combination of the values (the grid), or with ``zip`` the i-th value of each ``--set``
together (a list).  Each is the base experiment with those parameters set, written next to it
under a name from ``pattern`` — a :meth:`str.format` template of the last name component with
the fields ``name`` (the base's), ``i`` (1-based), and each parameter by its name
(``{shrinkage}``); by default ``{name}_PARAM-VALUE…`` — then validated: nothing invalid is left
in the prefix.  Writing the same sweep again is a no-op; a different experiment of that name
is refused.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

from backbeat.core import jsonio
from backbeat.core.errors import BackbeatError, InvalidNameError, UsageError
from backbeat.core.names import parse_name
from backbeat.declarations.catalog import Catalog, not_found
from backbeat.declarations.prefix import Prefix
from backbeat.reporting import engine  # noqa: I001

_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


def parse_value(text: str) -> Any:
    """A value of ``--set``: JSON if it parses, else the text itself.

    >>> parse_value("0.5"), parse_value("true"), parse_value("abc"), parse_value('"1"')
    (0.5, True, 'abc', '1')
    """
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_set(spec: str) -> tuple[str, str, list[Any]]:
    """``BLOCK.PARAM=v1,v2`` → ``(block, param, [v1, v2])`` (a JSON list also gives the values).

    >>> parse_set("training.shrinkage=0,0.5")
    ('training', 'shrinkage', [0, 0.5])
    >>> parse_set('b.p=["x,y", "z"]')
    ('b', 'p', ['x,y', 'z'])
    """
    target, eq, values = spec.partition("=")
    block, dot, param = target.strip().partition(".")
    if not eq or not dot or not block or not param or not values.strip():
        raise UsageError(f"--set `{spec}': expected BLOCK.PARAM=VALUE[,VALUE...]")
    text = values.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            raise UsageError(f"--set `{spec}': the values are not a valid JSON list") from None
        return block, param, list(parsed)
    return block, param, [parse_value(v.strip()) for v in text.split(",")]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def points(sets: list[tuple[str, str, list[Any]]], zipped: bool = False) -> list[dict[str, Any]]:
    """The parameter settings ``{"BLOCK.PARAM": value}`` of every experiment of the sweep.

    >>> points([("b", "x", [1, 2]), ("b", "y", ["a", "b"])], zipped=True)
    [{'b.x': 1, 'b.y': 'a'}, {'b.x': 2, 'b.y': 'b'}]
    >>> len(points([("b", "x", [1, 2]), ("b", "y", ["a", "b", "c"])]))
    6
    """
    keys = [f"{b}.{p}" for b, p, _v in sets]
    if len(set(keys)) != len(keys):
        raise UsageError("--set: a parameter is set twice")
    if zipped:
        lengths = {len(v) for _b, _p, v in sets}
        if len(lengths) > 1:
            raise UsageError("--zip: every --set needs the same number of values")
        combos = list(zip(*(v for _b, _p, v in sets), strict=True))
    else:
        combos = list(itertools.product(*(v for _b, _p, v in sets)))
    return [dict(zip(keys, combo, strict=True)) for combo in combos]


def experiment_name(base: str, point: dict[str, Any], index: int, pattern: str | None) -> str:
    """The canonical name of one swept experiment.

    >>> experiment_name("u/u/t/1/e", {"b.shrinkage": 0.5}, 1, None)
    'u/u/t/1/e_shrinkage-0_5'
    >>> experiment_name("u/u/t/1/e", {"b.shrinkage": 0.5}, 3, "run{i}")
    'u/u/t/1/run3'
    """
    head, _, last = base.rpartition("/")
    if pattern is None:
        stem = last + "".join(f"_{k.split('.', 1)[1]}-{_UNSAFE.sub('_', _text(v))}" for k, v in point.items())
    else:
        fields = {k.split(".", 1)[1]: _UNSAFE.sub("_", _text(v)) for k, v in point.items()}
        try:
            stem = pattern.format(name=last, i=index, **fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(f"--name `{pattern}': unknown or bad field {exc} (fields: name, i, "
                             f"{', '.join(sorted(fields))})") from None
    name = stem if "/" in stem else f"{head}/{stem}"
    try:
        return parse_name("experiment", name)[1]
    except InvalidNameError as exc:
        raise UsageError(f"--name: {exc}") from None


def _parameter_slot(catalog: Catalog, decl: dict, block: str, param: str, base: str) -> tuple[dict, str]:
    """``(the block's declaration entry, its parameters key)`` where ``block.param`` is set."""
    for section in ("blocks", "analyzers"):
        entry = (decl.get(section) or {}).get(block)
        if isinstance(entry, dict):
            algos = [(entry.get("algorithm"), "parameters")]
            break
    else:
        entry = (decl.get("loops") or {}).get(block)
        if not isinstance(entry, dict):
            names = [n for s in ("blocks", "analyzers", "loops") for n in (decl.get(s) or {})]
            raise UsageError(f"--set {block}.{param}: experiment `{base}' has no block `{block}' "
                             f"(blocks: {', '.join(names)})")
        algos = [(entry.get(f"{r}_algorithm"), f"{r}_parameters") for r in ("processor", "evaluator")]
    declared: list[str] = []
    for algo, key in algos:
        params = (catalog.get("algorithm", str(algo)).declaration or {}).get("parameters") or {}
        if param in params:
            return entry, key
        declared += list(params)
    raise UsageError(f"--set {block}.{param}: the algorithm of `{block}' has no parameter `{param}' "
                     f"(parameters: {', '.join(declared) or 'none'})")


def sweep(prefix: str | os.PathLike, base: str, specs: list[str], pattern: str | None = None,
          zipped: bool = False) -> dict:
    """Write the experiments of a sweep of ``base``; ``{"base", "experiments": [{"name",
    "parameters", "path", "status": written|unchanged}]}``."""
    catalog = engine.catalog(prefix)
    try:
        _k, base = parse_name("experiment", base)
    except InvalidNameError as exc:
        raise UsageError(str(exc)) from None
    if not catalog.prefix.exists("experiment", base):
        raise not_found(catalog.prefix, "experiment", base)
    source = catalog.get("experiment", base).require_valid()
    if not specs:
        raise UsageError("sweep: give at least one --set BLOCK.PARAM=VALUES")
    sets = [parse_set(s) for s in specs]
    plan = []
    for i, point in enumerate(points(sets, zipped), start=1):
        decl = copy.deepcopy(source.declaration)
        for key, value in point.items():
            block, param = key.split(".", 1)
            entry, slot = _parameter_slot(catalog, decl, block, param, base)
            entry.setdefault(slot, {})[param] = value
        setting = ", ".join(f"{k}={_text(v)}" for k, v in point.items())
        desc = f"sweep of {base}: {setting}"  # BEAT allows 100 characters
        decl["description"] = desc if len(desc) <= 100 else desc[:99] + "…"
        plan.append((experiment_name(base, point, i, pattern), point, decl))
    names = [n for n, _p, _d in plan]
    if len(set(names)) != len(names):
        raise UsageError("sweep: two experiments get the same name: give --name a pattern using every parameter")
    return {"base": base, "experiments": _write(catalog.prefix, plan)}


def _write(pfx: Prefix, plan: list[tuple[str, dict, dict]]) -> list[dict]:
    written: list[Path] = []
    out: list[dict[str, Any]] = []
    try:
        for name, point, decl in plan:
            path = pfx.locate("experiment", name).json
            text = json.dumps(decl, indent=4, ensure_ascii=False) + "\n"
            if path.is_file():
                try:
                    same = jsonio.parse(path.read_bytes()) == decl
                except (OSError, jsonio.JSONProblem):
                    same = False
                if not same:
                    raise UsageError(f"experiment `{name}' already exists ({path}) with other content: "
                                     f"remove it or choose another --name")
                status = "unchanged"
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                written.append(path)
                status = "written"
            out.append({"name": name, "parameters": point, "path": str(path), "status": status})
        fresh = Catalog(pfx)  # validate what was written, with nothing memoised
        for e in out:
            fresh.get("experiment", e["name"]).require_valid()
    except BackbeatError:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return out
