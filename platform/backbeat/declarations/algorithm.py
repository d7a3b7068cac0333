"""Algorithms: semantic checks (spec §3.3), parameter casting and a typed view.

Checks run in BEAT's order: code file present (not required for ``cxx``), endpoint
names unique across groups, every dataformat of inputs/outputs/loop/results usable,
declared parameters castable to their numpy type (range, choices, default), used
libraries valid and written in the same language.

Parameters are cast the way BEAT does it: ``numpy.dtype(type).type(value)`` with
``string`` mapped to ``str``; a cast that numpy refuses (or that overflows) is an error.
numpy is imported only when a parameter is cast (every command imports this module: most
need no numpy, and it is ~70 % of the command line's start-up).
:func:`check_parameters`, :func:`clean_parameter` and :func:`check_uses` are shared
with plotters, which declare parameters and libraries the same way.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import TYPE_CHECKING, Any

from backbeat.core.errors import DataError, InvalidNameError, Problem, pointer
from backbeat.core.names import parse_name
from backbeat.declarations import dataformat, usercode

if TYPE_CHECKING:
    import numpy as np

    from backbeat.declarations.catalog import Asset, Catalog

LEGACY = "legacy"
SEQUENTIAL = "sequential"
AUTONOMOUS = "autonomous"
SEQUENTIAL_LOOP_PROCESSOR = "sequential_loop_processor"
AUTONOMOUS_LOOP_PROCESSOR = "autonomous_loop_processor"
SEQUENTIAL_LOOP_EVALUATOR = "sequential_loop_evaluator"
AUTONOMOUS_LOOP_EVALUATOR = "autonomous_loop_evaluator"
#: algorithm types by how they are driven (spec §5.8); the one definition backbeat uses
SEQUENTIAL_TYPES = frozenset({SEQUENTIAL, SEQUENTIAL_LOOP_PROCESSOR, SEQUENTIAL_LOOP_EVALUATOR})
AUTONOMOUS_TYPES = frozenset({AUTONOMOUS, AUTONOMOUS_LOOP_PROCESSOR, AUTONOMOUS_LOOP_EVALUATOR})
TYPES = frozenset({LEGACY}) | SEQUENTIAL_TYPES | AUTONOMOUS_TYPES
#: types that step through their inputs unit by unit, so that they can read a stream
STEPPED_TYPES = frozenset({LEGACY, SEQUENTIAL})


def analysis_format(algorithm: str, results: dict) -> tuple[str, dict]:
    """Dataformat of an analyzer's results: ``("analysis:<algorithm>", {name: type})``.

    ``results`` is the algorithm's ``results`` declaration (``{name: {"type": ..., "display": ...}}``);
    a type is a basetype string or an already expanded dataformat dict.
    """
    expanded = {}
    for key, spec in results.items():
        expanded[key] = spec["type"] if isinstance(spec, dict) and "type" in spec else spec
    return f"analysis:{algorithm}", expanded


# -- parameter casting ------------------------------------------------------------------


def parameter_dtype(type_name: object) -> np.dtype:
    """The numpy dtype of a declared parameter type (``string`` → ``str``)."""
    import numpy as np

    if type_name == "string":
        return np.dtype("str")
    if not isinstance(type_name, str) or type_name not in dataformat.BASETYPES:
        raise TypeError(f"`{type_name}' is not a basetype")
    return np.dtype(type_name)


def cast(dtype: np.dtype, value: Any) -> Any:
    """``dtype.type(value)`` like BEAT, but overflow warnings are errors and containers refused."""
    if isinstance(value, (list, dict, tuple)) or value is None:
        raise TypeError(f"a {type(value).__name__ if value is not None else 'null'} is not a scalar")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return dtype.type(value)


def plain(value: Any) -> Any:
    """Python value of a numpy scalar (for messages: ``5`` rather than ``np.int32(5)``)."""
    np = sys.modules.get("numpy")  # (no numpy value exists before numpy is imported)
    return value.item() if np is not None and isinstance(value, np.generic) else value


def _fmt_choices(choices: list) -> str:
    return ", ".join(repr(plain(c)) for c in choices)


def _compare(a: Any, b: Any) -> bool:
    """``a < b``; raises TypeError for unordered types (complex)."""
    np = sys.modules.get("numpy")
    unordered = (complex, np.complexfloating) if np is not None else complex
    if isinstance(a, unordered) or isinstance(b, unordered):
        raise TypeError("complex values cannot be ordered")
    return bool(a < b)


def converted(declaration: Any) -> dict | None:
    """A parameter declaration with ``type`` as dtype and range/choice/default cast (None if it cannot)."""
    if not isinstance(declaration, dict):
        return None
    try:
        dtype = parameter_dtype(declaration.get("type"))
        out = dict(declaration, type=dtype)
        if isinstance(declaration.get("range"), list):
            out["range"] = [cast(dtype, v) for v in declaration["range"]]
        if isinstance(declaration.get("choice"), list):
            out["choice"] = [cast(dtype, v) for v in declaration["choice"]]
        if "default" in declaration:
            out["default"] = cast(dtype, declaration["default"])
    except Exception:
        return None
    return out


def bool_string_warning(asset: Asset, name: str, declared: Any, value: Any, *where: object) -> list[Problem]:
    """A warning when a string is given for a ``bool`` parameter (BEAT casts it: any non-empty string is true).

    The verdict stays BEAT's (valid); the warning says what the value really means.
    """
    if not (isinstance(declared, dict) and declared.get("type") == "bool" and isinstance(value, str)):
        return []
    meaning = "true" if value else "false"
    intended = {"false": "false", "0": "false", "no": "false", "off": "false"}.get(value.strip().lower(), meaning)
    return [asset.warning(
        f"the value {json.dumps(value)} of boolean parameter `{name}' is a string, which counts as {meaning} "
        f"(every non-empty string is true): write {intended} without quotes", pointer(*where))]


def _attempt(asset: Asset, problems: list[Problem], name: str, dtype: np.dtype, value: Any, desc: str,
             at: tuple) -> tuple[bool, Any]:
    try:
        return True, cast(dtype, value)
    except Exception as exc:
        problems.append(asset.problem(
            f"{desc} for parameter `{name}' cannot be cast to type `{dtype.name}': {exc}", pointer(*at)))
        return False, None


def check_parameters(asset: Asset, parameters: Any, base: tuple = ("parameters",)) -> list[Problem]:
    """BEAT's ``_convert_parameter_types`` as a list of Problems (never raises)."""
    problems: list[Problem] = []
    if not isinstance(parameters, dict):
        return problems

    for name, decl in parameters.items():
        at = (*base, name)
        if not isinstance(decl, dict):
            problems.append(asset.problem(f"parameter `{name}' must be an object", pointer(*at)))
            continue
        try:
            dtype = parameter_dtype(decl.get("type"))
        except TypeError as exc:
            problems.append(asset.problem(f"type of parameter `{name}' is invalid: {exc}", pointer(*at, "type")))
            continue

        def attempt(value: Any, desc: str, *where: object, _n=name, _t=dtype, _at=at) -> tuple[bool, Any]:
            return _attempt(asset, problems, _n, _t, value, desc, (*_at, *where))

        rng = None
        if "range" in decl:
            raw = decl["range"]
            if not isinstance(raw, list) or len(raw) != 2:
                problems.append(asset.problem(f"range for parameter `{name}' must be a list [start, end]",
                                              pointer(*at, "range")))
            else:
                ok0, start = attempt(raw[0], "start of range", "range", 0)
                ok1, end = attempt(raw[1], "end of range", "range", 1)
                if ok0 and ok1:
                    try:
                        if not _compare(start, end):
                            problems.append(asset.problem(
                                f"range for parameter `{name}' has a start greater then the end value "
                                f"({plain(start)!r} >= {plain(end)!r})", pointer(*at, "range")))
                        else:
                            rng = (start, end)
                    except TypeError as exc:
                        problems.append(asset.problem(f"range for parameter `{name}' is not ordered: {exc}",
                                                      pointer(*at, "range")))
        choices = None
        if "choice" in decl:
            raw = decl["choice"]
            if not isinstance(raw, list):
                problems.append(asset.problem(f"choice for parameter `{name}' must be a list", pointer(*at, "choice")))
            else:
                results = [attempt(c, f"choice[{i}]", "choice", i) for i, c in enumerate(raw)]
                if all(ok for ok, _ in results):
                    choices = [v for _, v in results]
        if "default" in decl:
            problems.extend(bool_string_warning(asset, name, decl, decl["default"], *at, "default"))
            ok, default = attempt(decl["default"], "default", "default")
            if not ok:
                continue
            if rng is not None:
                try:
                    outside = _compare(default, rng[0]) or _compare(rng[1], default)
                except TypeError:
                    outside = False
                if outside:
                    problems.append(asset.problem(
                        f"default for parameter `{name}' ({plain(default)!r}) is not within parameter range "
                        f"[{plain(rng[0])!r}, {plain(rng[1])!r}]", pointer(*at, "default")))
            if choices is not None and default not in choices:
                problems.append(asset.problem(
                    f"default for parameter `{name}' ({plain(default)!r}) is not a valid choice "
                    f"`[{_fmt_choices(choices)}]'", pointer(*at, "default")))
    return problems


def clean_parameter(parameters: dict | None, name: str, value: Any, owner: str = "algorithm") -> Any:
    """Cast ``value`` for declared parameter ``name`` (BEAT's ``clean_parameter``); raises DataError."""
    if not parameters or name not in parameters:
        valid = ", ".join(parameters or {}) or "none"
        raise DataError(f"parameter `{name}' is not declared for {owner} (valid parameters: {valid})")
    decl = converted(parameters[name])
    if decl is None:
        raise DataError(f"parameter `{name}' of {owner} has an invalid declaration")
    try:
        result = cast(decl["type"], value)
    except Exception as exc:
        raise DataError(
            f"value for `{name}' ({value!r}) cannot be cast to type `{decl['type'].name}' of {owner}: {exc}"
        ) from None
    if "choice" in decl and result not in decl["choice"]:
        raise DataError(f"value for `{name}' ({value!r}) must be one of `[{_fmt_choices(decl['choice'])}]'")
    if "range" in decl and len(decl["range"]) == 2:
        lo, hi = decl["range"]
        try:
            outside = _compare(result, lo) or _compare(hi, result)
        except TypeError:
            outside = False
        if outside:
            raise DataError(
                f"value for `{name}' ({value!r}) must be picked within interval `[{plain(lo)!r}, {plain(hi)!r}]'"
            )
    return result


# -- library use (shared with plotters) ------------------------------------------------------


def check_uses(asset: Asset, catalog: Catalog, what: str) -> list[Problem]:
    """Used libraries are valid and (unless language is unknown) share this asset's language."""
    decl = asset.declaration
    uses = decl.get("uses") if isinstance(decl, dict) else None
    if not isinstance(uses, dict):
        return []
    problems: list[Problem] = []
    loaded: dict[str, Asset] = {}
    for alias, libname in uses.items():
        at = pointer("uses", alias)
        try:
            kind, libname = parse_name("library", libname)
        except InvalidNameError as exc:
            problems.append(asset.problem(f"referred library `{libname}' ({alias}) is not valid: {exc}", at))
            continue
        lib = catalog.get(kind, libname)
        loaded[alias] = lib
        if not lib.valid:
            reasons = "; ".join(p.brief for p in lib.problems)
            problems.append(asset.problem(f"referred library `{libname}' ({alias}) is not valid: {reasons}", at))
    language = decl.get("language")
    if language == "unknown":
        return problems
    for alias, lib in loaded.items():
        at = pointer("uses", alias)
        if not isinstance(lib.declaration, dict):
            problems.append(asset.problem(
                f"language for used library `{lib.name}' cannot be inferred as the library was not properly loaded",
                at))
            continue
        lib_language = lib.declaration.get("language", "unknown")
        if lib_language != language:
            problems.append(asset.problem(
                f"language for used library `{lib.name}' (`{lib_language}') differs from current language "
                f"for this {what} (`{language}')", at))
    return problems


def check_code(asset: Asset, label: str) -> list[Problem]:
    """``<label> code not found: <path>`` when the code file is missing."""
    code = asset.code_path
    if code is None or not code.is_file():
        return [asset.problem(f"{label} code not found: {code}")]
    return []


def check_static(asset: Asset, classes: list[tuple[str, tuple[str, ...], str]]) -> list[Problem]:
    """Python code compiles and binds each ``(class, methods, what)`` (:mod:`backbeat.declarations.usercode`)."""
    code = asset.code_path
    if code is None or code.suffix != ".py" or not code.is_file():
        return []
    return asset.own(usercode.check_file(code, classes))


def dataformat_problem(asset: Asset, catalog: Catalog, df: object, message_head: str, *path: object) -> list[Problem]:
    reasons = dataformat.reference_problems(catalog, df)
    if not reasons:
        return []
    return [asset.problem(f"{message_head}: {'; '.join(reasons)}", pointer(*path))]


# -- semantic checks ---------------------------------------------------------------------------


def _groups(decl: dict) -> list[tuple[int, dict]]:
    groups = decl.get("groups")
    if not isinstance(groups, list):
        return []
    return [(i, g) for i, g in enumerate(groups) if isinstance(g, dict)]


def _endpoints(group: dict, key: str) -> dict:
    value = group.get(key)
    return value if isinstance(value, dict) else {}


def _type_of(entry: Any) -> Any:
    return entry.get("type") if isinstance(entry, dict) else None


def _unique(asset: Asset, groups: list[tuple[int, dict]], key: str, word: str) -> list[Problem]:
    names: list[str] = []
    first_dup: tuple | None = None
    for i, g in groups:
        for n in _endpoints(g, key):
            if n in names and first_dup is None:
                first_dup = ("groups", i, key, n)
            names.append(n)
    if first_dup is None:
        return []
    return [asset.problem(
        f"repeated {word} name in algorithm `{asset.name}' declaration: {', '.join(names)}", pointer(*first_dup))]


def check(asset: Asset, catalog: Catalog) -> list[Problem]:
    """Semantic checks of a schema-valid algorithm (spec §3.3)."""
    decl = asset.declaration
    if not isinstance(decl, dict):
        return [asset.problem("an algorithm declaration must be a JSON object")]
    if decl.get("language") != "cxx":
        problems = check_code(asset, "Algorithm")
        if problems:
            return problems
    problems = []
    groups = _groups(decl)
    problems += _unique(asset, groups, "inputs", "input")
    problems += _unique(asset, groups, "outputs", "output")
    for i, g in groups:
        for key in ("inputs", "outputs", "loop"):
            for n, entry in _endpoints(g, key).items():
                problems += dataformat_problem(
                    asset, catalog, _type_of(entry),
                    f"found error validating data format `{_type_of(entry)}' for {key} `{n}' on algorithm `{asset.name}'",
                    "groups", i, key, n, "type")
    results = decl.get("results")
    if isinstance(results, dict):
        for n, entry in results.items():
            rtype = _type_of(entry)
            if isinstance(rtype, str) and "/" in rtype:
                problems += dataformat_problem(
                    asset, catalog, rtype,
                    f"found error validating data format `{rtype}' for result `{n}' on algorithm `{asset.name}'",
                    "results", n, "type")
    problems += check_parameters(asset, decl.get("parameters"))
    problems += check_uses(asset, catalog, "algorithm")
    kind = decl.get("type", SEQUENTIAL) if decl.get("api_version", 1) != 1 else LEGACY
    methods = usercode.ALGORITHM_METHODS.get(kind, usercode.DEFAULT_ALGORITHM_METHODS)
    problems += check_static(asset, [("Algorithm", methods, "algorithm")])
    return problems


# -- typed view ---------------------------------------------------------------------------------


class Algorithm:
    """Read-only typed view over a valid algorithm declaration."""

    def __init__(self, asset: Asset):
        self.asset = asset.require_valid()
        self.data: dict = asset.declaration

    def __repr__(self) -> str:
        return f"Algorithm({self.name!r})"

    @property
    def name(self) -> str:
        return self.asset.name

    @property
    def hash(self) -> str | None:
        return self.asset.hash

    @property
    def schema_version(self) -> int:
        return self.data.get("schema_version", 1)

    @property
    def api_version(self) -> int:
        return self.data.get("api_version", 1)

    @property
    def language(self) -> str:
        return self.data["language"]

    @property
    def type(self) -> str:
        if self.api_version == 1:
            return LEGACY
        return self.data.get("type", SEQUENTIAL)

    @property
    def is_analyzer(self) -> bool:
        return self.data.get("results") is not None

    @property
    def is_autonomous(self) -> bool:
        return self.type in AUTONOMOUS_TYPES

    @property
    def is_sequential(self) -> bool:
        return self.type in SEQUENTIAL_TYPES

    @property
    def is_loop_processor(self) -> bool:
        return self.type in (SEQUENTIAL_LOOP_PROCESSOR, AUTONOMOUS_LOOP_PROCESSOR)

    @property
    def is_loop_evaluator(self) -> bool:
        return self.type in (SEQUENTIAL_LOOP_EVALUATOR, AUTONOMOUS_LOOP_EVALUATOR)

    @property
    def splittable(self) -> bool:
        return bool(self.data.get("splittable", False))

    @property
    def groups(self) -> list[dict]:
        return self.data["groups"]

    def _map(self, key: str) -> dict[str, str]:
        return {n: e["type"] for g in self.groups for n, e in g.get(key, {}).items()}

    @property
    def inputs(self) -> dict[str, str]:
        """Input name → dataformat, in declaration order (group by group)."""
        return self._map("inputs")

    @property
    def outputs(self) -> dict[str, str]:
        return self._map("outputs")

    @property
    def loop(self) -> dict[str, str] | None:
        """``{"request": df, "answer": df}`` for loop processors/evaluators, else None."""
        for g in self.groups:
            if "loop" in g:
                return {k: v["type"] for k, v in g["loop"].items()}
        return None

    @property
    def results(self) -> dict[str, str]:
        """``{result: type}`` of an analyzer, in declaration order."""
        return {n: r["type"] for n, r in (self.data.get("results") or {}).items()}

    @property
    def hidden_results(self) -> list[str]:
        """The results declared ``"display": false`` (BEAT's flag; missing means displayed)."""
        return [n for n, r in (self.data.get("results") or {}).items() if r.get("display") is False]

    @property
    def parameters(self) -> dict[str, dict]:
        return self.data.get("parameters") or {}

    @property
    def uses(self) -> dict[str, str]:
        return dict(self.data.get("uses") or {})

    def clean_parameter(self, name: str, value: Any) -> Any:
        """One value cast to its declared type; DataError on unknown name, bad cast, range/choice."""
        return clean_parameter(self.parameters, name, value, f"algorithm `{self.name}'")

    def clean_parameters(self, values: dict | None) -> dict:
        """Declared defaults applied and every value cast (BEAT's ``_check_parameters``)."""
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise DataError(f"parameters for algorithm `{self.name}' must be an object, not {type(values).__name__}")
        unknown = [k for k in values if k not in self.parameters]
        if unknown:
            raise DataError(
                f"parameters `{','.join(unknown)}' are not declared for algorithm `{self.name}' - "
                f"valid parameters are `{','.join(self.parameters)}'")
        out: dict = {}
        for name, decl in self.parameters.items():
            if name in values:
                try:
                    out[name] = self.clean_parameter(name, values[name])
                except DataError as exc:
                    raise DataError(
                        f"parameter `{name}' cannot be safely cast to the declared type on algorithm "
                        f"`{self.name}': {exc}") from None
            elif "default" in decl:
                out[name] = converted(decl)["default"]  # type: ignore[index]
            else:
                raise DataError(f"parameter `{name}' of algorithm `{self.name}' has no default and no value was given")
        return out
