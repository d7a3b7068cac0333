"""The catalog: loads, validates and hashes assets of a prefix, each once.

State: ``_assets`` memoises every fully validated :class:`Asset` by ``(kind, name)``;
``_in_progress`` holds the assets whose semantic checks are running, so that a checker
asking for an asset already on the stack can report recursion instead of looping.

Loading goes through BEAT's stages and stops at the first failing one (spec §3):
file present → JSON parses (no duplicate keys) → JSON Schema → semantic checks.
Semantic checks live in one module per kind (``backbeat.<kind>.check``); each returns
a list of :class:`~backbeat.errors.Problem` and may ask the catalog for other assets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from backbeat.core import hashing, jsonio
from backbeat.core.errors import AssetNotFoundError, InvalidAssetError, Problem, UsageError
from backbeat.core.names import KINDS, parse_name
from backbeat.declarations import (
    algorithm,
    database,
    dataformat,
    experiment,
    library,
    plotter,
    plotterparameter,
    protocoltemplate,
    toolchain,
)
from backbeat.declarations.prefix import AssetFiles, Prefix


@dataclass
class Asset:
    """One loaded declaration with its verdict and BEAT-compatible hash."""

    kind: str
    name: str
    files: AssetFiles
    declaration: Any = None
    problems: list[Problem] = field(default_factory=list)
    hash: str | None = None
    found: bool = True

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def label(self) -> str:
        return f"{KINDS[self.kind].folder}/{self.name}"

    @property
    def code_path(self):
        lang = self.declaration.get("language") if isinstance(self.declaration, dict) else None
        return self.files.code(lang)

    def problem(self, message: str, pointer: str = "") -> Problem:
        """A Problem located in this asset's declaration file."""
        return Problem(message, pointer, str(self.files.json), self.label)

    def require_valid(self) -> Asset:
        if not self.found:
            raise AssetNotFoundError(self.problems[0].message if self.problems else self.label)
        if self.problems:
            raise InvalidAssetError(self.label, list(self.problems))
        return self


def _checkers() -> dict[str, Callable[[Asset, Catalog], list[Problem]]]:
    """The semantic checker of each kind: one module per kind, listed explicitly."""
    return {"dataformat": dataformat.check, "library": library.check, "algorithm": algorithm.check,
            "database": database.check, "protocoltemplate": protocoltemplate.check,
            "toolchain": toolchain.check, "experiment": experiment.check, "plotter": plotter.check,
            "plotterparameter": plotterparameter.check}


class Catalog:
    """All assets of one prefix, loaded lazily and validated once."""

    def __init__(self, prefix: Prefix | str):
        self.prefix = prefix if isinstance(prefix, Prefix) else Prefix(prefix)
        if not self.prefix.root.is_dir():
            raise UsageError(f"prefix folder `{self.prefix.root}' does not exist")
        self._assets: dict[tuple[str, str], Asset] = {}
        self._in_progress: set[tuple[str, str]] = set()

    # -- loading ---------------------------------------------------------------
    def load(self, kind: str, name: str) -> Asset:
        """Stages file → JSON → schema only (no semantic checks), not memoised."""
        from backbeat.declarations import schema

        kind, name = parse_name(kind, name)
        files = self.prefix.locate(kind, name)
        asset = Asset(kind, name, files)
        label = KINDS[kind].label
        if not files.json.is_file():
            asset.found = False
            asset.problems.append(asset.problem(f"{label} declaration file not found: {name}"))
            return asset
        decl, problems = jsonio.load(files.json, asset.label)
        asset.declaration = decl
        if problems:
            asset.problems.extend(problems)
            return asset
        asset.hash = self._hash(asset)
        asset.problems.extend(
            replace(p, file=str(files.json), asset=asset.label) for p in schema.validate(kind, decl)
        )
        return asset

    def _hash(self, asset: Asset) -> str:
        kind = KINDS[asset.kind]
        decl_hash = hashing.hash_json(asset.declaration, kind.description_key)
        if not kind.has_code:
            return decl_hash
        code = asset.code_path
        code_hash = hashing.hash_file_contents(code) if code is not None and code.is_file() else None
        return hashing.code_asset_hash(decl_hash, code_hash)

    def get(self, kind: str, name: str) -> Asset:
        """The fully validated asset (memoised)."""
        kind, name = parse_name(kind, name)
        key = (kind, name)
        if key in self._assets:
            return self._assets[key]
        asset = self.load(kind, name)
        if asset.valid:
            self._in_progress.add(key)
            try:
                asset.problems.extend(_checkers()[kind](asset, self))
            finally:
                self._in_progress.discard(key)
        self._assets[key] = asset
        return asset

    def in_progress(self, kind: str, name: str) -> bool:
        """True while ``(kind, name)`` is being validated (a request for it is a cycle)."""
        return (kind, name) in self._in_progress

    def valid(self, kind: str, name: str) -> bool:
        return self.get(kind, name).valid

    # -- bulk ------------------------------------------------------------------
    def check_all(self, labels: list[tuple[str, str]] | None = None) -> list[Asset]:
        """Validate the named assets (default: every asset of the prefix)."""
        pairs = labels if labels is not None else self.prefix.list_all()
        return [self.get(k, n) for k, n in pairs]
