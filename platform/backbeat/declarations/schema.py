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

import functools
import json
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # jsonschema/referencing are imported lazily: only refused declarations need them
    from jsonschema.exceptions import ValidationError

from backbeat.core.errors import Problem, pointer
from backbeat.declarations.schemacompiler import Check, fast_check, unique
from backbeat.declarations.schemafiles import (
    VERSIONS,
    check_kind,
    for_validation,
    registry,
    schema_dir,
    schema_for,
    schema_id,
    schema_path,
    version_key,
)

__all__ = ["VERSIONS", "Check", "fast_check", "is_valid", "registry", "schema_dir", "schema_for", "schema_id",
           "schema_path", "select_version", "validate", "validate_bounded", "validator", "version_key"]

# -- validator ----------------------------------------------------------------------
def _draft4_integer(checker: Any, instance: Any) -> bool:
    """BEAT (draft-4, jsonschema 3.2): only JSON integers, ``2.0`` is not one."""
    return isinstance(instance, int) and not isinstance(instance, bool)


def warm() -> None:
    """Compile every schema's fast check now (a warm template does it once for all its commands)."""
    for kind, versions in VERSIONS.items():
        for version in versions:
            fast_check(kind, version)


@functools.cache
def validator(kind: str, version: int) -> Any:
    """The compiled validator of ``kind`` at ``version`` (cached)."""
    check_kind(kind, version)
    import jsonschema
    import jsonschema.validators

    cls = jsonschema.validators.extend(
        jsonschema.Draft7Validator,
        validators={"uniqueItems": _unique_items, "additionalProperties": _additional_properties},
        type_checker=jsonschema.Draft7Validator.TYPE_CHECKER.redefine("integer", _draft4_integer),
    )
    return cls(for_validation()[schema_id(kind, version)], registry=registry())


def _unique_items(validator: Any, flag: Any, instance: Any, schema: dict) -> Iterator[ValidationError]:
    """jsonschema's ``uniqueItems`` (same verdict and message) in linear time (its own is quadratic for objects)."""
    if flag and isinstance(instance, list) and not unique(instance):
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
    check_kind(kind)
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
