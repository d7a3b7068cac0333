"""The package's JSON Schema files: where they are, their ``$id``s, and one registry of them.

Every file ``schemas/<kind>/<version>.json`` has the stable ``$id``
``https://backbeat.dev/schemas/<kind>/<version>.json`` and refers to the others by those ids.
State: the parsed documents and the registry, built on first use and cached for the process.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # referencing is imported lazily: only refused declarations need it
    from referencing import Registry

from backbeat.core.errors import UsageError

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


def schema_dir() -> Path:
    """The package's ``schemas`` folder (next to the package's files; through
    ``importlib.resources`` — ~10 ms to import — only when the package is not a folder)."""
    import backbeat

    here = Path(backbeat.__file__).parent / "schemas"
    if here.is_dir():
        return here
    import importlib.resources

    return Path(str(importlib.resources.files("backbeat") / "schemas"))


def schema_id(kind: str, version: int | str) -> str:
    """The ``$id`` of a schema file, e.g. ``https://backbeat.dev/schemas/toolchain/2.json``."""
    return f"{BASE_ID}{kind}/{version}.json"


def check_kind(kind: str, version: int | None = None) -> None:
    if kind not in VERSIONS:
        raise UsageError(f"no schema for kind `{kind}': expected one of {', '.join(VERSIONS)}")
    if version is not None and version not in VERSIONS[kind]:
        supported = ", ".join(map(str, VERSIONS[kind]))
        raise UsageError(f"no schema version {version} for {kind}: supported {supported}")


def schema_path(kind: str, version: int = 1) -> Path:
    """Path of the schema file of ``kind`` at ``version`` (for the CLI and editors)."""
    check_kind(kind, version)
    return schema_dir() / kind / f"{version}.json"


@functools.cache
def documents() -> dict[str, dict]:
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
def for_validation() -> dict[str, dict]:
    """The documents without ``$schema``.

    jsonschema picks the validator class of a subschema from its ``$schema``; without
    it every document is checked by our own class (draft-07 with BEAT's integers).
    """
    return {uri: {k: v for k, v in doc.items() if k != "$schema"} for uri, doc in documents().items()}


@functools.cache
def registry() -> Registry:
    """A registry holding every schema file, keyed by ``$id`` (no remote retrieval)."""
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    resources = [(uri, Resource.from_contents(doc, default_specification=DRAFT7))
                 for uri, doc in for_validation().items()]
    return Registry().with_resources(resources).crawl()


def schema_for(kind: str, version: int = 1) -> dict:
    """A copy of the schema document of ``kind`` at ``version``."""
    check_kind(kind, version)
    return copy.deepcopy(documents()[schema_id(kind, version)])
