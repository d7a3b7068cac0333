"""Asset kinds and their name grammars (spec §1.1).

Every name is checked here *before* any file is touched, so ``..``, absolute paths or
characters outside the grammar can never make backbeat read outside the prefix.

>>> parse_name("dataformats", "user/single_integer/1")
('dataformat', 'user/single_integer/1')
>>> parse_name("experiment", "user/tc/1/exp")
('experiment', 'user/user/tc/1/exp')
>>> parse_name("algorithms", "../etc/1")
Traceback (most recent call last):
...
backbeat.core.errors.InvalidNameError: invalid algorithm name `../etc/1': expected user/name/version (the user `..' must start with a letter or `_' and hold only letters, digits, `_' and `-')
>>> name_problem("toolchain", "errors/incomplete/empty")
"the version `empty' is not a number"

A part of a name may be at most :data:`MAX_PART` characters, so that every file backbeat
writes for it (``<part>.json~`` backups included) stays within the file system's limit
of 255 bytes per file name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from backbeat.core.errors import InvalidNameError

_USER = r"[a-zA-Z_][a-zA-Z0-9_-]*"
_NAME = r"[a-zA-Z0-9_-]+"
_VERSION = r"[0-9]+"

#: longest part of a name (user, name, version...): file names stay under 255 bytes
MAX_PART = 200


@dataclass(frozen=True)
class Kind:
    """Static facts about one asset kind."""

    name: str  # singular, e.g. "dataformat"
    folder: str  # plural folder in the prefix, e.g. "dataformats"
    grammar: str  # human form of the name
    pattern: re.Pattern
    has_code: bool
    description_key: str
    version_key: str  # key holding the schema version

    @property
    def label(self) -> str:
        return {"protocoltemplate": "Protocol template"}.get(self.name, self.name.capitalize())


def _k(name, folder, grammar, regex, has_code=False, description_key="description", version_key="schema_version"):
    return Kind(name, folder, grammar, re.compile(f"^{regex}$"), has_code, description_key, version_key)


_THREE = f"{_USER}/{_NAME}/{_VERSION}"
_TWO = f"{_USER}/{_VERSION}"

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        _k("dataformat", "dataformats", "user/name/version", _THREE,
           description_key="#description", version_key="#schema_version"),
        _k("library", "libraries", "user/name/version", _THREE, has_code=True),
        _k("algorithm", "algorithms", "user/name/version", _THREE, has_code=True),
        _k("protocoltemplate", "protocoltemplates", "name/version", _TWO),
        _k("database", "databases", "name/version", _TWO, has_code=True),
        _k("toolchain", "toolchains", "user/name/version", _THREE),
        _k("experiment", "experiments", "user/toolchain_user/toolchain/version/name",
           f"{_USER}/(?:{_USER}/)?{_NAME}/{_VERSION}/{_NAME}"),
        _k("plotter", "plotters", "user/name/version", _THREE, has_code=True),
        _k("plotterparameter", "plotterparameters", "user/name/version", _THREE),
    )
}

FOLDERS: dict[str, Kind] = {k.folder: k for k in KINDS.values()}

LANGUAGE_EXTENSIONS = {"unknown": "", "cxx": ".so", "matlab": ".m", "python": ".py", "r": ".r"}


def kind_of(word: str) -> Kind:
    """Look a kind up by singular or plural name."""
    kind = KINDS.get(word) or FOLDERS.get(word)
    if kind is None:
        raise InvalidNameError(
            f"unknown asset kind `{word}': expected one of {', '.join(sorted(FOLDERS))}"
        )
    return kind


_PART_RULES = {
    "user": (re.compile(f"^{_USER}$"), "must start with a letter or `_' and hold only letters, digits, `_' and `-'"),
    "name": (re.compile(f"^{_NAME}$"), "may hold only letters, digits, `_' and `-'"),
    "version": (re.compile(f"^{_VERSION}$"), "is not a number"),
}


def _grammar_parts(kind: Kind, count: int) -> list[str] | None:
    """The role of each part of a name of ``count`` parts (None: no such form)."""
    roles = {"database": ["name", "version"], "protocoltemplate": ["name", "version"],
             "experiment": ["user", "user", "name", "version", "name"]}.get(kind.name, ["user", "name", "version"])
    if kind.name == "experiment" and count == 4:
        return ["user", "name", "version", "name"]
    return roles if count == len(roles) else None


def name_problem(kind_word: str, name: object) -> str | None:
    """Why ``name`` is not a valid name of its kind, in words (None if it is one).

    >>> name_problem("dataformat", "user/x/1") is None
    True
    >>> name_problem("dataformat", "9u/x/1")
    "the user `9u' must start with a letter or `_' and hold only letters, digits, `_' and `-'"
    >>> name_problem("database", "a/b/1")
    'expected name/version (2 parts separated by /, not 3)'
    """
    kind = kind_of(kind_word)
    if not isinstance(name, str):
        return f"a name must be a string, not {type(name).__name__}"
    parts = name.split("/")
    roles = _grammar_parts(kind, len(parts))
    if roles is None:
        expected = kind.grammar.count("/") + 1
        return f"expected {kind.grammar} ({expected} parts separated by /, not {len(parts)})"
    for role, part in zip(roles, parts, strict=True):
        if len(part) > MAX_PART:
            return f"the {role} `{part[:20]}…' is too long ({len(part)} characters, at most {MAX_PART})"
        pattern, rule = _PART_RULES[role]
        if not pattern.match(part):
            return f"the {role} `{part}' {rule}"
    if not kind.pattern.match(name):
        return f"expected {kind.grammar}"
    return None


def parse_name(kind_word: str, name: object) -> tuple[str, str]:
    """Validate ``name`` for its kind; return ``(kind, canonical name)``.

    Experiment labels with 4 parts get the toolchain user (= the experiment user) inserted.
    Names are checked against the grammar and :data:`MAX_PART` (a usage error, exit 2).
    """
    kind = kind_of(kind_word)
    if isinstance(name, str) and is_reference(kind.name, name):
        parts = name.split("/")
        if kind.name == "experiment" and len(parts) == 4:
            return kind.name, "/".join([parts[0], parts[0], *parts[1:]])
        return kind.name, name
    shown = name if not isinstance(name, str) or len(name) <= 80 else name[:77] + "..."
    why = name_problem(kind.name, name)
    raise InvalidNameError(f"invalid {kind.name} name `{shown}': expected {kind.grammar}"
                           + (f" ({why})" if why and not why.startswith("expected") else ""))


def parse_label(label: str) -> tuple[str, str]:
    """Parse ``KIND/NAME`` (e.g. ``dataformats/user/single_integer/1``)."""
    if "/" not in label:
        raise InvalidNameError(f"invalid asset label `{label}': expected KIND/NAME, e.g. dataformats/user/x/1")
    kind, name = label.split("/", 1)
    return parse_name(kind, name)


def experiment_toolchain(name: str) -> str:
    """The toolchain implied by a canonical (5-part) experiment name."""
    parts = name.split("/")
    return "/".join(parts[1:4])


def is_reference(kind_word: str, name: object) -> bool:
    """True if ``name`` is a well-formed name of that kind (no exception)."""
    kind = kind_of(kind_word)
    return (isinstance(name, str) and bool(kind.pattern.match(name))
            and all(len(p) <= MAX_PART for p in name.split("/")))
