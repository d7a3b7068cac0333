"""The catalog: loads, validates and hashes assets of a prefix, each once.

State: ``_assets`` memoises every fully validated :class:`Asset` by ``(kind, name)``;
``_in_progress`` holds the assets whose semantic checks are running, so that a checker
asking for an asset already on the stack can report recursion instead of looping.

Loading goes through BEAT's stages and stops at the first failing one (spec §3):
file present → JSON parses (no duplicate keys) → JSON Schema → semantic checks.
Semantic checks live in one module per kind (``backbeat.<kind>.check``); each returns
a list of :class:`~backbeat.errors.Problem` and may ask the catalog for other assets.
Problems of severity ``warning`` are kept apart in :attr:`Asset.warnings`: they never make an
asset invalid.  At most :data:`MAX_PROBLEMS` problems are kept per asset; :attr:`Asset.omitted`
counts the others (a declaration with a million unknown keys is reported in bounded time
and memory).

Every asset gets BEAT's hash, even an unparseable one (BEAT's storage hash of the file:
the lenient parse with duplicate keys last-wins, or the raw bytes when it is not JSON).
Files whose path is not a name of their kind (:class:`~backbeat.declarations.prefix.Stray`)
are checked too by :meth:`Catalog.check_all`, never skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from backbeat.core import hashing, jsonio
from backbeat.core.errors import AssetNotFoundError, BackbeatError, InvalidAssetError, Problem, UsageError
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
from backbeat.declarations.prefix import AssetFiles, Prefix, Stray

#: problems kept per asset (the others are only counted, in ``Asset.omitted``)
MAX_PROBLEMS = 100


@dataclass
class Asset:
    """One loaded declaration with its verdict, warnings and BEAT-compatible hash.

    ``conforming`` is False for a file whose path is not a name of the kind (a stray).
    """

    kind: str
    name: str
    files: AssetFiles
    declaration: Any = None
    problems: list[Problem] = field(default_factory=list)
    hash: str | None = None
    found: bool = True
    warnings: list[Problem] = field(default_factory=list)
    omitted: int = 0
    conforming: bool = True
    #: the bytes of the code file that went into :attr:`hash` (None: no code, or not read):
    #: what runs is these bytes, never the file read again (``docs/provenance.md``)
    code: bytes | None = field(default=None, repr=False)

    @property
    def valid(self) -> bool:
        return not self.problems and not self.omitted

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

    def warning(self, message: str, pointer: str = "") -> Problem:
        """A warning (never makes the asset invalid) located in this asset's declaration file."""
        return Problem(message, pointer, str(self.files.json), self.label, severity="warning")

    def own(self, problems: list[Problem]) -> list[Problem]:
        """``problems`` (e.g. from a code file) labelled with this asset; file defaults to the declaration."""
        return [replace(p, asset=self.label, file=p.file or str(self.files.json)) for p in problems]

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

    def __init__(self, prefix: Prefix | str | os.PathLike, roots: dict[str, str] | None = None):
        """``roots``: database name -> root folder of its raw data, overriding the declared one
        (from ``.backbeatrc``; the catalog reads no configuration itself)."""
        self.prefix = prefix if isinstance(prefix, Prefix) else Prefix(prefix)
        self.roots: dict[str, str] = dict(roots or {})
        if not self.prefix.root.is_dir():
            raise UsageError(f"prefix folder `{self.prefix.root}' does not exist")
        self._assets: dict[tuple[str, str], Asset] = {}
        self._in_progress: set[tuple[str, str]] = set()
        self._names: dict[str, list[str]] = {}

    # -- loading ---------------------------------------------------------------------------------
    def load(self, kind: str, name: object) -> Asset:
        """Stages file → JSON → schema only (no semantic checks), not memoised."""
        kind, name = parse_name(kind, name)
        files = self.prefix.locate(kind, name)
        asset = Asset(kind, name, files)
        if not files.json.is_file():
            asset.found = False
            label = KINDS[kind].label
            asset.problems.append(asset.problem(f"{label} declaration file not found: {name}"
                                                + self._suggestion(kind, name)))
            return asset
        self._read(asset)
        return asset

    def _read(self, asset: Asset) -> None:
        from backbeat.declarations import schema

        decl, problems = jsonio.load(asset.files.json, asset.label)
        asset.declaration = decl
        if problems:
            asset.problems.extend(problems)
            asset.hash = self._storage_hash(asset)
            return
        asset.hash = self._hash(asset)
        found, omitted = schema.validate_bounded(asset.kind, decl, MAX_PROBLEMS)
        asset.problems.extend(replace(p, file=str(asset.files.json), asset=asset.label) for p in found)
        asset.omitted += omitted

    def _hash(self, asset: Asset) -> str:
        kind = KINDS[asset.kind]
        decl_hash = hashing.hash_json(asset.declaration, kind.description_key)
        if not kind.has_code:
            return decl_hash
        code = asset.code_path
        code_hash = None
        if code is not None and code.is_file():
            asset.code = code.read_bytes()
            code_hash = hashing.sha(asset.code)
        return hashing.code_asset_hash(decl_hash, code_hash)

    def _storage_hash(self, asset: Asset) -> str | None:
        """BEAT's hash of a declaration file backbeat refuses to parse (None if unreadable)."""
        kind = KINDS[asset.kind]
        try:
            decl_hash = hashing.hash_json_file(asset.files.json, kind.description_key)
            if not kind.has_code:
                return decl_hash
            code = asset.files.code(hashing.declared_language(asset.files.json))
            code_hash = hashing.hash_file_contents(code) if code is not None and code.is_file() else None
        except OSError:
            return None
        return hashing.code_asset_hash(decl_hash, code_hash)

    def _suggestion(self, kind: str, name: str) -> str:
        """`` (did you mean `x'?)`` when the prefix has names close to ``name``."""
        close = suggestions(self.names(kind), name)
        return f" (did you mean {' or '.join(f'`{c}' + chr(39) for c in close)}?)" if close else ""

    def names(self, kind: str) -> list[str]:
        """The names of a kind in the prefix (listed once per catalog)."""
        if kind not in self._names:
            self._names[kind] = self.prefix.list(kind)
        return self._names[kind]

    def loaded(self, kind: str, name: object) -> Asset:
        """The asset as this catalog already read it (memoised by :meth:`get`), else as
        :meth:`load` reads it now: what a run hashed stays what its record says."""
        kind, name = parse_name(kind, name)
        return self._assets.get((kind, name)) or self.load(kind, name)

    def get(self, kind: str, name: object) -> Asset:
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
        self._assets[key] = _settle(asset)
        return asset

    def stray(self, stray: Stray) -> Asset:
        """Check a file whose path is not a name of its kind (memoised).

        At the depth of a name its content is checked as BEAT checks it (which accepts it), with
        a warning that nothing can refer to it; anywhere else it is invalid.
        """
        key = (stray.kind, stray.name)
        if key in self._assets:
            return self._assets[key]
        asset = Asset(stray.kind, stray.name, self.prefix.stray_files(stray), conforming=False)
        self._assets[key] = asset
        if not stray.placed:
            asset.problems.append(asset.problem(stray.reason))
            asset.hash = self._storage_hash(asset)
            return asset
        asset.warnings.append(asset.warning(
            f"{stray.reason}: no other asset can refer to it and backbeat's commands cannot name it"))
        self._read(asset)
        if asset.valid:
            try:
                asset.problems.extend(_checkers()[stray.kind](asset, self))
            except BackbeatError as exc:
                asset.problems.append(asset.problem(f"cannot be checked further: {exc}"))
        _settle(asset)
        return asset

    def in_progress(self, kind: str, name: str) -> bool:
        """True while ``(kind, name)`` is being validated (a request for it is a cycle)."""
        return (kind, name) in self._in_progress

    def valid(self, kind: str, name: str) -> bool:
        return self.get(kind, name).valid

    # -- bulk ------------------------------------------------------------------
    def check_all(self, labels: list[tuple[str, str]] | None = None, kinds: list[str] | None = None) -> list[Asset]:
        """Validate the named assets, or every ``.json`` file of the prefix (of ``kinds``), strays included."""
        if labels is not None:
            return [self.get(k, n) for k, n in labels]
        out: list[Asset] = []
        for kind in kinds if kinds is not None else list(KINDS):
            names, strays = self.prefix.scan(kind)
            self._names[kind] = names
            assets = [self.get(kind, n) for n in names] + [self.stray(s) for s in strays]
            out += sorted(assets, key=lambda a: a.name)
        return out


def _settle(asset: Asset) -> Asset:
    """Move warnings apart and keep at most :data:`MAX_PROBLEMS` problems (counting the others)."""
    errors = [p for p in asset.problems if not p.is_warning]
    asset.warnings += [p for p in asset.problems if p.is_warning]
    if len(errors) > MAX_PROBLEMS:
        asset.omitted += len(errors) - MAX_PROBLEMS
        errors = errors[:MAX_PROBLEMS]
    asset.problems = errors
    del asset.warnings[MAX_PROBLEMS:]
    return asset


def not_found(prefix: Prefix, kind: str, name: str) -> AssetNotFoundError:
    """``<Kind> `name' not found in prefix `…'``, with the closest names of the prefix if any."""
    close = suggestions(prefix.list(kind), name)
    hint = f" (did you mean {' or '.join(f'`{c}' + chr(39) for c in close)}?)" if close else ""
    return AssetNotFoundError(f"{KINDS[kind].label} `{name}' not found in prefix `{prefix.root}'{hint}")


def suggestions(candidates: list[str], name: str, n: int = 3) -> list[str]:
    """Names among ``candidates`` close to ``name`` (as ``difflib`` judges), best first.

    >>> suggestions(["user/sum/1", "user/sum/2", "user/product/1"], "user/sun/1")
    ['user/sum/1', 'user/sum/2']
    """
    import difflib

    return difflib.get_close_matches(name, candidates, n=n, cutoff=0.75)
