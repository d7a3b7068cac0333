"""The prefix: a folder of declarations laid out as BEAT lays them out (spec §1.1).

A :class:`Prefix` only *locates* and *lists* files; it never interprets them.  Names
are checked against their kind's grammar (:mod:`backbeat.names`) before any path is
built, so no name can reach outside the prefix.  Both layouts are supported: the simple
``<folder>/<user>/<rest>.json`` and the hashed-user ``<folder>/<h0:2>/<h2:4>/<user>/<rest>.json``
(``h = sha256(user)``), the hashed one being tried first as BEAT does.

Listing never drops a file silently: every ``.json`` file under a kind's folder is either a
declaration with a name of the kind's grammar, or a :class:`Stray` saying why it is not one
(BEAT lists and checks such files too).  A stray at the depth of a name (``toolchains/u/tc/notnum.json``)
is checked by its content; one at another depth (``toolchains/u/a/b/c/1.json``, a hashed-user
folder that is not the user's hash) cannot be a declaration at all.
"""

from __future__ import annotations

import builtins
import os
from dataclasses import dataclass
from pathlib import Path

from backbeat.core.hashing import sha
from backbeat.core.names import KINDS, LANGUAGE_EXTENSIONS, is_reference, kind_of, name_problem, parse_name


@dataclass(frozen=True)
class AssetFiles:
    """Where one asset's files are (or would be)."""

    kind: str
    name: str
    base: Path  # path without extension, e.g. prefix/algorithms/user/sum/1

    @property
    def json(self) -> Path:
        return self.base.with_name(self.base.name + ".json")

    @property
    def rst(self) -> Path:
        return self.base.with_name(self.base.name + ".rst")

    def code(self, language: object) -> Path | None:
        """The code file for ``language`` (databases: always Python); None for kinds without code."""
        if not KINDS[self.kind].has_code:
            return None
        if self.kind == "database":
            ext = ".py"
        else:
            ext = LANGUAGE_EXTENSIONS.get(language if isinstance(language, str) else "unknown", "")
        return self.base.with_name(self.base.name + ext)


@dataclass(frozen=True)
class Stray:
    """A ``.json`` file under a kind's folder whose path is not a name of the kind.

    ``name`` is its path relative to the kind's folder, without ``.json``; ``reason`` says what
    is wrong with it; ``placed`` is True when it sits at the depth of a name (its content can be
    checked as a declaration of the kind), False when no declaration can be there.
    """

    kind: str
    name: str
    reason: str
    placed: bool


def _name_parts(kind: str) -> int:
    return {"database": 2, "protocoltemplate": 2, "experiment": 5}.get(kind, 3)


class Prefix:
    """A prefix folder on disk."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Prefix({str(self.root)!r})"

    def locate(self, kind_word: str, name: str) -> AssetFiles:
        """Files of asset ``name`` (validated first); hashed-user layout preferred if present."""
        kind, name = parse_name(kind_word, name)
        folder = self.root / KINDS[kind].folder
        if kind != "database":
            user, rest = name.split("/", 1)
            h = sha(user)
            hashed = folder / h[0:2] / h[2:4] / user / rest
            if hashed.with_name(hashed.name + ".json").is_file():
                return AssetFiles(kind, name, hashed)
        return AssetFiles(kind, name, folder / name)

    def exists(self, kind_word: str, name: str) -> bool:
        return self.locate(kind_word, name).json.is_file()

    def scan(self, kind_word: str) -> tuple[list[str], list[Stray]]:
        """``(names, strays)`` of a kind: every ``.json`` file under its folder, each sorted."""
        kind = kind_of(kind_word)
        folder = self.root / kind.folder
        if not folder.is_dir():
            return [], []
        n = _name_parts(kind.name)
        grammar = f"{kind.folder}/{kind.grammar}.json"
        found: set[str] = set()
        strays: dict[str, Stray] = {}
        for dirpath, _dirs, files in os.walk(folder):
            rel = Path(dirpath).relative_to(folder).parts
            for f in files:
                if not f.endswith(".json"):
                    continue
                parts = [*rel, f[: -len(".json")]]
                path = "/".join(parts)
                if len(parts) == n + 2 and kind.name != "database":
                    h = sha(parts[2])
                    if parts[0] != h[0:2] or parts[1] != h[2:4]:
                        hashed = all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts[:2])
                        hint = (f" (in the hashed-user layout, user `{parts[2]}' lives in "
                                f"{kind.folder}/{h[0:2]}/{h[2:4]}/{parts[2]}/)" if hashed else "")
                        strays[path] = Stray(kind.name, path, f"not a declaration's place: expected {grammar}{hint}",
                                             False)
                        continue
                    parts = parts[2:]
                if len(parts) != n:
                    strays[path] = Stray(kind.name, path, f"not a declaration's place: expected {grammar}", False)
                    continue
                candidate = "/".join(parts)
                if is_reference(kind.name, candidate):
                    found.add(candidate)
                else:
                    why = name_problem(kind.name, candidate) or f"expected {kind.grammar}"
                    strays[path] = Stray(kind.name, path, f"`{candidate}' is not a {kind.name} name ({why})", True)
        return sorted(found), [strays[k] for k in sorted(strays)]

    def list(self, kind_word: str) -> list[str]:
        """Every asset name of a kind present in the prefix, sorted (strays: :meth:`scan`)."""
        return self.scan(kind_word)[0]

    def strays(self, kind_word: str) -> builtins.list[Stray]:
        """The ``.json`` files of a kind whose path is not a name of the kind (see :class:`Stray`)."""
        return self.scan(kind_word)[1]

    def stray_files(self, stray: Stray) -> AssetFiles:
        """Where a stray's files are (its path as found, never built from user input)."""
        return AssetFiles(stray.kind, stray.name, self.root / KINDS[stray.kind].folder / stray.name)

    def list_all(self) -> builtins.list[tuple[str, str]]:
        """``(kind, name)`` of every asset in the prefix, kinds in dependency order."""
        return [(k, n) for k in KINDS for n in self.list(k)]
