"""JSON Schema validation of declarations (spec §2), with BEAT's verdicts.

The schemas are our own files in the package's ``schemas`` folder
(``schemas/<kind>/<version>.json`` plus shared ``common.json`` parts), written in
JSON Schema draft-07; every file has a stable ``$id``
(``https://backbeat.dev/schemas/<kind>/<version>.json``) and refers to the others by
those ids, so editors can use them for completion.  ``docs/schemas.md`` lists the BEAT
quirks they keep and the few deliberate deviations.

State: one :class:`referencing.Registry` of all schema files and, per
``(kind, version)``, one jsonschema validator and one compiled predicate; all built on
first use and cached for the life of the process.  The predicate (our own small
compiler for the keywords our schemas use) gives the verdict in tens of microseconds;
only refused declarations go through jsonschema, which explains the errors.

Version selection is BEAT's: ``schema_version`` (``#schema_version`` for dataformats),
default 1.  A version that is not an integer, or has no schema file, is reported as a
:class:`~backbeat.errors.Problem` (BEAT crashes on both).

Validation applies draft-4 ``integer`` semantics as BEAT does (``2.0`` is *not* an
integer), collects every error, sorts them by location, and turns each into a short
message: an unexpected key is reported at that key, and a ``oneOf`` failure is
explained by the errors of the closest alternative instead of all alternatives.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # jsonschema/referencing are imported lazily: only refused declarations need them
    from jsonschema.exceptions import ValidationError
    from referencing import Registry

from backbeat.core.errors import Problem, UsageError, pointer

BASE_ID = "https://backbeat.dev/schemas/"

#: Supported schema versions of each declaration kind.
VERSIONS: dict[str, tuple[int, ...]] = {
    "dataformat": (1,),
    "algorithm": (1, 2, 3),
    "library": (1,),
    "database": (1, 2),
    "protocoltemplate": (1,),
    "toolchain": (1, 2),
    "experiment": (1, 2),
    "plotter": (1,),
    "plotterparameter": (1,),
}


def version_key(kind: str) -> str:
    """The declaration key that selects the schema version."""
    return "#schema_version" if kind == "dataformat" else "schema_version"


# -- files and registry -----------------------------------------------------------
def schema_dir() -> Path:
    """The package's ``schemas`` folder."""
    return Path(str(importlib.resources.files("backbeat") / "schemas"))


def schema_id(kind: str, version: int | str) -> str:
    """The ``$id`` of a schema file, e.g. ``https://backbeat.dev/schemas/toolchain/2.json``."""
    return f"{BASE_ID}{kind}/{version}.json"


def _check_kind(kind: str, version: int | None = None) -> None:
    if kind not in VERSIONS:
        raise UsageError(f"no schema for kind `{kind}': expected one of {', '.join(VERSIONS)}")
    if version is not None and version not in VERSIONS[kind]:
        supported = ", ".join(map(str, VERSIONS[kind]))
        raise UsageError(f"no schema version {version} for {kind}: supported {supported}")


def schema_path(kind: str, version: int = 1) -> Path:
    """Path of the schema file of ``kind`` at ``version`` (for the CLI and editors)."""
    _check_kind(kind, version)
    return schema_dir() / kind / f"{version}.json"


@functools.cache
def _documents() -> dict[str, dict]:
    """Every schema file of the package, by ``$id``."""
    docs: dict[str, dict] = {}
    for path in sorted(schema_dir().glob("*/*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        expected = schema_id(path.parent.name, path.stem)
        if doc.get("$id") != expected:
            raise RuntimeError(f"schema file {path} has $id {doc.get('$id')!r}, expected {expected!r}")
        docs[expected] = doc
    return docs


@functools.cache
def _for_validation() -> dict[str, dict]:
    """The documents without ``$schema``.

    jsonschema picks the validator class of a subschema from its ``$schema``; without
    it every document is checked by our own class (draft-07 with BEAT's integers).
    """
    return {uri: {k: v for k, v in doc.items() if k != "$schema"} for uri, doc in _documents().items()}


@functools.cache
def registry() -> Registry:
    """A registry holding every schema file, keyed by ``$id`` (no remote retrieval)."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    resources = [(uri, Resource.from_contents(doc, default_specification=DRAFT7))
                 for uri, doc in _for_validation().items()]
    return Registry().with_resources(resources).crawl()


def schema_for(kind: str, version: int = 1) -> dict:
    """A copy of the schema document of ``kind`` at ``version``."""
    _check_kind(kind, version)
    return copy.deepcopy(_documents()[schema_id(kind, version)])


# -- validator ----------------------------------------------------------------------
def _draft4_integer(checker: Any, instance: Any) -> bool:
    """BEAT (draft-4, jsonschema 3.2): only JSON integers, ``2.0`` is not one."""
    return isinstance(instance, int) and not isinstance(instance, bool)


@functools.cache
def validator(kind: str, version: int) -> Any:
    """The compiled validator of ``kind`` at ``version`` (cached)."""
    _check_kind(kind, version)
    import jsonschema
    import jsonschema.validators

    cls = jsonschema.validators.extend(
        jsonschema.Draft7Validator,
        validators={"uniqueItems": _unique_items, "additionalProperties": _additional_properties},
        type_checker=jsonschema.Draft7Validator.TYPE_CHECKER.redefine("integer", _draft4_integer),
    )
    return cls(_for_validation()[schema_id(kind, version)], registry=registry())


def _unique_items(validator: Any, unique: Any, instance: Any, schema: dict) -> Iterator[ValidationError]:
    """jsonschema's ``uniqueItems`` (same verdict and message) in linear time (its own is quadratic for objects)."""
    if unique and isinstance(instance, list) and not _unique(instance):
        from jsonschema.exceptions import ValidationError

        yield ValidationError(f"{instance!r} has non-unique elements")


def _additional_properties(validator: Any, allowed: Any, instance: Any, schema: dict) -> Iterator[ValidationError]:
    """jsonschema's ``additionalProperties``; for ``false``, the message lists at most 100 keys.

    (jsonschema sorts and quotes every unexpected key in one message: seconds and megabytes for
    a declaration with a million of them, which :func:`_explain` reports one by one anyway.)
    """
    from jsonschema._keywords import additionalProperties
    from jsonschema.exceptions import ValidationError

    if allowed is not False or not isinstance(instance, dict) or len(instance) <= 100:
        yield from additionalProperties(validator, allowed, instance, schema)
        return
    known = schema.get("properties", {})
    patterns = "|".join(schema.get("patternProperties", {}))
    extras = [k for k in instance if k not in known and not (patterns and re.search(patterns, k))]
    if extras:
        shown = ", ".join(repr(k) for k in sorted(extras[:100], key=str))
        more = f" and {len(extras) - 100} more" if len(extras) > 100 else ""
        yield ValidationError(f"Additional properties are not allowed ({shown}{more} "
                              f"{'was' if len(extras) == 1 else 'were'} unexpected)")


# -- fast verdicts ---------------------------------------------------------------
# jsonschema explains errors well but costs ~1 ms per declaration; the compiled
# predicates below give the same verdict (same keywords, draft-07 rules with draft-4
# integers) at a fraction of the cost.  Only refused declarations go to jsonschema.
Check = Callable[[Any], bool]
_ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description", "default", "definitions", "examples"}


_TYPE_CHECKS: dict[str, Check] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
}

_NUMBER = _TYPE_CHECKS["number"]


def _all(checks: list[Check]) -> Check:
    if not checks:
        return lambda x: True
    if len(checks) == 1:
        return checks[0]

    def check(x: Any) -> bool:
        for c in checks:
            if not c(x):
                return False
        return True
    return check


class _Compiler:
    """Compile schema nodes into predicates; ``$ref`` targets are compiled once."""

    def __init__(self) -> None:
        self._done: dict[int, Check] = {}

    def compile(self, node: Any, base: str) -> Check:
        if node is True:
            return lambda x: True
        if node is False:
            return lambda x: False
        key = id(node)
        if key in self._done:
            return self._done[key]
        cell: list[Check] = []
        self._done[key] = lambda x: cell[0](x)  # forward reference for recursive schemas
        check = self._build(node, base)
        cell.append(check)
        self._done[key] = check
        return check

    def _build(self, node: dict, base: str) -> Check:
        if "$ref" in node:  # draft-07: keywords next to $ref are ignored
            target, target_base = _lookup(node["$ref"], base)
            return self.compile(target, target_base)
        checks: list[Check] = []
        sub = functools.partial(self.compile, base=base)
        for keyword, value in node.items():
            if keyword in _ANNOTATIONS or keyword in ("properties", "patternProperties",
                                                      "additionalProperties", "items", "additionalItems"):
                continue
            maker = getattr(self, "_k_" + keyword, None)
            if maker is None:
                raise RuntimeError(f"schema keyword {keyword!r} is not supported by the fast validator")
            checks.append(maker(value, node, sub))
        if any(k in node for k in ("properties", "patternProperties", "additionalProperties")):
            checks.append(self._object(node, sub))
        if "items" in node:
            checks.append(self._items(node, sub))
        return _all(checks)

    # keywords
    @staticmethod
    def _k_type(value: Any, node: dict, sub: Any) -> Check:
        names = [value] if isinstance(value, str) else list(value)
        checks = [_TYPE_CHECKS[n] for n in names]
        if len(checks) == 1:
            return checks[0]
        return lambda x: any(c(x) for c in checks)

    @staticmethod
    def _k_enum(value: list, node: dict, sub: Any) -> Check:
        if all(isinstance(v, str) for v in value):
            allowed = frozenset(value)
            return lambda x: isinstance(x, str) and x in allowed
        return lambda x: any(_equal(x, v) for v in value)

    @staticmethod
    def _k_const(value: Any, node: dict, sub: Any) -> Check:
        return lambda x: _equal(x, value)

    @staticmethod
    def _k_pattern(value: str, node: dict, sub: Any) -> Check:
        search = re.compile(value).search
        return lambda x: not isinstance(x, str) or search(x) is not None

    @staticmethod
    def _k_maxLength(value: int, node: dict, sub: Any) -> Check:
        return lambda x: not isinstance(x, str) or len(x) <= value

    @staticmethod
    def _k_minItems(value: int, node: dict, sub: Any) -> Check:
        return lambda x: not isinstance(x, list) or len(x) >= value

    @staticmethod
    def _k_maxItems(value: int, node: dict, sub: Any) -> Check:
        return lambda x: not isinstance(x, list) or len(x) <= value

    @staticmethod
    def _k_minProperties(value: int, node: dict, sub: Any) -> Check:
        return lambda x: not isinstance(x, dict) or len(x) >= value

    @staticmethod
    def _k_uniqueItems(value: bool, node: dict, sub: Any) -> Check:
        if not value:
            return lambda x: True
        return lambda x: not isinstance(x, list) or _unique(x)

    @staticmethod
    def _k_multipleOf(value: Any, node: dict, sub: Any) -> Check:
        def check(x: Any) -> bool:
            if not _NUMBER(x):
                return True
            if isinstance(value, float):
                try:
                    quotient = x / value
                    return int(quotient) == quotient
                except (OverflowError, ValueError):
                    return False
            try:
                return not (x % value)
            except (OverflowError, ValueError):
                return False
        return check

    @staticmethod
    def _k_minimum(value: Any, node: dict, sub: Any) -> Check:
        return lambda x: not _NUMBER(x) or x >= value

    @staticmethod
    def _k_required(value: list, node: dict, sub: Any) -> Check:
        return lambda x: not isinstance(x, dict) or all(k in x for k in value)

    @staticmethod
    def _k_oneOf(value: list, node: dict, sub: Any) -> Check:
        branches = [sub(v) for v in value]

        def check(x: Any) -> bool:
            matched = False
            for branch in branches:
                if branch(x):
                    if matched:
                        return False
                    matched = True
            return matched
        return check

    @staticmethod
    def _k_anyOf(value: list, node: dict, sub: Any) -> Check:
        branches = [sub(v) for v in value]
        return lambda x: any(b(x) for b in branches)

    @staticmethod
    def _k_not(value: Any, node: dict, sub: Any) -> Check:
        inner = sub(value)
        return lambda x: not inner(x)

    @staticmethod
    def _object(node: dict, sub: Any) -> Check:
        props = {k: sub(v) for k, v in node.get("properties", {}).items()}
        patterns = [(re.compile(p).search, sub(v)) for p, v in node.get("patternProperties", {}).items()]
        extra = node.get("additionalProperties", True)
        extra_check = None if extra is True else sub(extra)

        def check(x: Any) -> bool:
            if not isinstance(x, dict):
                return True
            for key, value in x.items():
                matched = False
                prop = props.get(key)
                if prop is not None:
                    matched = True
                    if not prop(value):
                        return False
                for search, pcheck in patterns:
                    if search(key) is not None:
                        matched = True
                        if not pcheck(value):
                            return False
                if not matched and extra_check is not None and not extra_check(value):
                    return False
            return True
        return check

    @staticmethod
    def _items(node: dict, sub: Any) -> Check:
        items = node["items"]
        if isinstance(items, list):
            heads = [sub(v) for v in items]
            tail = sub(node.get("additionalItems", True))

            def check(x: Any) -> bool:
                if not isinstance(x, list):
                    return True
                for i, value in enumerate(x):
                    ok = heads[i](value) if i < len(heads) else tail(value)
                    if not ok:
                        return False
                return True
            return check
        each = sub(items)
        return lambda x: not isinstance(x, list) or all(each(v) for v in x)


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: ``1 == 1.0`` but booleans are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False
    return a == b


def _identity(value: Any) -> Any:
    """A hashable key equal for two values exactly when :func:`_equal` holds (JSON equality)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value)  # 1 and 1.0 hash and compare equal
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list):
        return ("l", tuple(_identity(v) for v in value))
    if isinstance(value, dict):
        return ("d", frozenset((k, _identity(v)) for k, v in value.items()))
    return ("o", value)


def _unique(items: list) -> bool:
    """No two items are equal as JSON values (linear time: one hashable key per item)."""
    if all(isinstance(v, str) for v in items):
        return len(set(items)) == len(items)
    return len({_identity(v) for v in items}) == len(items)


def _lookup(ref: str, base: str) -> tuple[Any, str]:
    """Resolve ``#/json/pointer`` or ``<id>#/json/pointer`` (the only forms our files use)."""
    uri, _, fragment = ref.partition("#")
    uri = uri or base
    node: Any = _for_validation()[uri]
    for part in fragment.split("/")[1:] if fragment else ():
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, uri


@functools.cache
def fast_check(kind: str, version: int) -> Check:
    """A compiled predicate with the same verdict as :func:`validator` (cached)."""
    _check_kind(kind, version)
    uri = schema_id(kind, version)
    return _Compiler().compile(_for_validation()[uri], uri)


# -- version selection -----------------------------------------------------------
def select_version(kind: str, declaration: dict) -> int | Problem:
    """The schema version a declaration asks for, or a Problem if it cannot be used."""
    key = version_key(kind)
    raw = declaration.get(key, 1)
    integral = (isinstance(raw, int) and not isinstance(raw, bool)) or (
        isinstance(raw, float) and raw.is_integer())
    if not integral:
        return Problem(f"`{key}' must be an integer, not {_short(raw)}", pointer(key))
    version = int(raw)
    if version not in VERSIONS[kind]:
        supported = ", ".join(map(str, VERSIONS[kind]))
        return Problem(f"unsupported {kind} `{key}' {version} (supported: {supported})", pointer(key))
    return version


# -- validation -----------------------------------------------------------------------
def validate(kind: str, declaration: Any) -> list[Problem]:
    """Every schema problem of ``declaration`` (empty list = valid), sorted by location.

    ``file``/``asset`` of the problems are left unset (the catalog fills them).
    """
    return validate_bounded(kind, declaration, None)[0]


def validate_bounded(kind: str, declaration: Any, limit: int | None) -> tuple[list[Problem], int]:
    """``(problems, omitted)``: at most ``limit`` problems (None: all), and how many more there are.

    The kept problems are the first ones in document order, sorted by location.  The cost stays
    proportional to the declaration: a million unexpected keys are counted, not explained.
    """
    _check_kind(kind)
    if not isinstance(declaration, dict):
        article = "an" if kind[0] in "aeiou" else "a"
        return [Problem(f"{article} {kind} declaration must be a JSON object, not {_json_type(declaration)}")], 0
    version = select_version(kind, declaration)
    if isinstance(version, Problem):
        return [version], 0
    found: list[tuple[tuple, str]] = []
    seen: set[tuple[tuple, str]] = set()
    omitted = 0
    try:
        if fast_check(kind, version)(declaration):
            return [], 0
        for error in validator(kind, version).iter_errors(declaration):
            for path, message in _explain(error):
                if limit is not None and len(found) >= limit:
                    omitted += 1  # counted, never formatted (a million unexpected keys stay cheap)
                    continue
                item = (path, message() if callable(message) else message)
                if item not in seen:
                    seen.add(item)
                    found.append(item)
    except RecursionError:
        return [Problem(f"the {kind} declaration is nested too deeply to be checked")], 0
    found.sort(key=lambda item: _path_key(item[0]))
    return [Problem(message, pointer(*path)) for path, message in found], omitted


def is_valid(kind: str, declaration: Any) -> bool:
    """True if the declaration passes its schema."""
    return not validate(kind, declaration)


def _path_key(path: tuple) -> tuple:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in path)


# -- messages -----------------------------------------------------------------------
_WEAK_MISS = {"type", "minItems", "maxItems", "enum", "const", "pattern"}


def _explain(error: ValidationError) -> Iterator[tuple[tuple, str | Callable[[], str]]]:
    """Turn one jsonschema error into ``(path, message)`` items."""
    path = tuple(error.absolute_path)
    keyword = error.validator
    if keyword in ("oneOf", "anyOf") and error.context:
        branch = _closest_branch(error)
        if branch is not None:
            yield from branch
            return
        yield path, _alternatives_message(error)
        return
    if keyword == "additionalProperties" and error.validator_value is False:
        for key in _unexpected_keys(error):  # the message is made only if it is shown
            yield (*path, key), functools.partial(_unexpected_message, key)
        return
    yield path, _message(error)


def _unexpected_message(key: str) -> str:
    return f"unexpected property {_short(key)} (not allowed here)"


def _closest_branch(error: ValidationError) -> list[tuple[tuple, str | Callable[[], str]]] | None:
    """The explained errors of the alternative that came closest to matching, or None.

    Alternatives refused because the value itself has the wrong type, shape or value
    are discarded; among the rest the one with the fewest problems wins, ties going to
    the one with fewer wrong discriminating values (an ``enum``/``const`` on a direct
    member, such as an algorithm's ``type``).  No unique winner: None.
    """
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context or ():
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    scored = []
    for errs in branches.values():
        if any(not e.relative_path and e.validator in _WEAK_MISS for e in errs):
            continue
        explained = [item for e in errs for item in _explain(e)]
        wrong_tags = sum(1 for e in errs if len(e.relative_path) == 1 and e.validator in ("enum", "const"))
        scored.append(((len(explained), wrong_tags), explained))
    if not scored:
        return None
    scored.sort(key=lambda item: item[0])
    if len(scored) > 1 and scored[0][0] == scored[1][0]:
        return None
    return scored[0][1]


def _alternatives_message(error: ValidationError) -> str:
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    if description:
        return f"{_short(error.instance)} is not valid here: expected {description[0].lower()}{description[1:]}"
    from jsonschema.exceptions import best_match

    best = best_match([error])
    text = f"{_short(error.instance)} matches none of the allowed forms"
    if best is not None and best is not error:
        where = pointer(*best.absolute_path)
        text += f" (closest: {_message(best)} at {where or '/'})"
    return text


def _unexpected_keys(error: ValidationError) -> list[str]:
    schema = error.schema if isinstance(error.schema, dict) else {}
    known = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [k for k in error.instance if k not in known and not any(re.search(p, k) for p in patterns)]


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _message(error: ValidationError) -> str:
    keyword, expected, value = error.validator, error.validator_value, error.instance
    if keyword == "type" and expected == "integer" and isinstance(value, float):
        return f"must be an integer, not {_short(value)}"
    if keyword == "type":
        types = [expected] if isinstance(expected, str) else list(expected)
        return f"must be of type {' or '.join(types)}, not {_json_type(value)} ({_short(value)})"
    if keyword == "required":
        return error.message
    if keyword == "maxLength":
        return f"is too long ({len(value)} characters, at most {expected} allowed)"
    if keyword == "minItems":
        return f"must have at least {expected} item{'s' if expected != 1 else ''}"
    if keyword == "maxItems":
        return f"must have at most {expected} item{'s' if expected != 1 else ''}"
    if keyword == "minProperties":
        return f"must have at least {expected} entr{'ies' if expected != 1 else 'y'}"
    if keyword == "uniqueItems":
        return "items must be unique"
    if keyword == "pattern":
        description = error.schema.get("description") if isinstance(error.schema, dict) else None
        return f"{_short(value)} does not match {expected}" + (f" ({description.rstrip('.')})" if description else "")
    if keyword == "enum":
        return f"{_short(value)} is not one of {', '.join(map(str, expected))}"
    if keyword == "const":
        return f"must be {_short(expected)}, not {_short(value)}"
    if keyword == "multipleOf":
        return f"{_short(value)} is not an integer" if expected == 1 else f"{_short(value)} is not a multiple of {expected}"
    if keyword == "minimum":
        return f"{_short(value)} is less than {expected}"
    if keyword == "not" and expected == {}:
        return "this key is not allowed here"
    return error.message
