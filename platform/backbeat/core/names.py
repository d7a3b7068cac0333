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
backbeat.errors.InvalidNameError: invalid algorithm name `../etc/1': expected user/name/version
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from backbeat.core.errors import InvalidNameError

_USER = r"[a-zA-Z_][a-zA-Z0-9_-]*"
_NAME = r"[a-zA-Z0-9_-]+"
_VERSION = r"[0-9]+"


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


def parse_name(kind_word: str, name: str) -> tuple[str, str]:
    """Validate ``name`` for its kind; return ``(kind, canonical name)``.

    Experiment labels with 4 parts get the toolchain user (= the experiment user) inserted.
    """
    kind = kind_of(kind_word)
    if not isinstance(name, str) or not kind.pattern.match(name):
        raise InvalidNameError(f"invalid {kind.name} name `{name}': expected {kind.grammar}")
    if kind.name == "experiment":
        parts = name.split("/")
        if len(parts) == 4:
            name = "/".join([parts[0], parts[0], *parts[1:]])
    return kind.name, name


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
    return isinstance(name, str) and bool(kind.pattern.match(name))
