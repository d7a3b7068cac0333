"""Cache backends: the table of store classes by scheme, and :func:`open_store`.

A cache *location* is a folder (``/shared/cache``, ``file:///shared/cache``) or, for another
backend, ``<scheme>://…``.  :data:`BACKENDS` maps each scheme to the
:class:`~backbeat.cache.store.CacheStore` (sub)class serving it, named ``"module:Class"`` so a
backend's dependencies are imported only when it is used.  Adding a backend is one module
(a ``CacheStore`` subclass) and one entry here (``docs/architecture.md``).
"""

from __future__ import annotations

import importlib
import os
from typing import cast

from backbeat.cache.store import CacheStore
from backbeat.core.errors import UsageError

#: scheme -> "module:Class" of its CacheStore
BACKENDS: dict[str, str] = {
    "file": "backbeat.cache.store:CacheStore",
}


def open_store(location: CacheStore | str | os.PathLike) -> CacheStore:
    """The store at ``location`` (a store is returned as is)."""
    if isinstance(location, CacheStore):
        return location
    text = os.fspath(location)
    scheme, sep, rest = text.partition("://")
    if not sep or "/" in scheme:  # a plain path
        scheme, rest = "file", text
    if scheme not in BACKENDS:
        raise UsageError(f"cache `{text}': unknown cache backend `{scheme}' (known: {', '.join(sorted(BACKENDS))})")
    module, _, name = BACKENDS[scheme].partition(":")
    cls = cast(type[CacheStore], getattr(importlib.import_module(module), name))
    return cls(rest)
