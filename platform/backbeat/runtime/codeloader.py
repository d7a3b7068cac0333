"""Loading user code (algorithms, libraries, database views, plotters) as BEAT does.

A module is created under a name derived from the asset name (``user/sum/1`` →
``user_sum_1``), each library it ``uses`` is loaded first and injected as a module
attribute named by its alias (recursively), then the code is executed in the module's
namespace.  ``__file__`` is the real path so tracebacks point at the user's file.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path


def load_module(name: str, code_path: str | Path, uses: dict[str, types.ModuleType] | None = None) -> types.ModuleType:
    """Execute ``code_path`` in a fresh module with ``uses`` injected as attributes."""
    code_path = Path(code_path)
    mod_name = name.replace("/", "_").replace("-", "_")
    module = types.ModuleType(mod_name)
    module.__file__ = str(code_path)
    for alias, lib in (uses or {}).items():
        setattr(module, alias, lib)
    source = code_path.read_bytes()
    code = compile(source, str(code_path), "exec")
    sys.modules.setdefault(mod_name, module)
    exec(code, module.__dict__)
    return module


def load_with_libraries(
    name: str,
    code_path: str | Path,
    uses: dict[str, str],
    library: Callable[[str], tuple[str, dict[str, str]]],
    _cache: dict[str, types.ModuleType] | None = None,
) -> types.ModuleType:
    """Load ``name`` and, recursively, the libraries it uses.

    ``library(lib_name) -> (code_path, uses)`` describes a library.
    """
    cache = {} if _cache is None else _cache
    modules = {}
    for alias, lib_name in uses.items():
        if lib_name not in cache:
            lib_path, lib_uses = library(lib_name)
            cache[lib_name] = load_with_libraries(lib_name, lib_path, lib_uses, library, cache)
        modules[alias] = cache[lib_name]
    return load_module(name, code_path, modules)
