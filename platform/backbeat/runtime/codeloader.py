"""Loading user code (algorithms, libraries, database views, plotters) as BEAT does — from the
bytes that were hashed.

The planner hashed each code file's bytes into the cache keys and the parent wrote those
very bytes to a content-addressed snapshot (:class:`~backbeat.runtime.spec.CodeFile`); a
process loads the snapshot, never the prefix file (which may have been edited since), and
refuses bytes whose sha256 is not the one planned (:class:`~backbeat.core.errors.IntegrityError`).

A module is created under a name derived from the asset name (``user/sum/1`` →
``user_sum_1``), each library it ``uses`` is loaded first and injected as a module attribute
named by its alias (recursively), then the code is executed in the module's namespace.  The
code object is compiled with the user's file name (``filename``: the prefix file the bytes
came from), so ``__file__``, ``co_filename`` and tracebacks name it as the user knows it,
with the right line numbers; the snapshot's lines are given to :mod:`linecache`, so a
traceback shows the code that ran even if the file was edited meanwhile.
"""

from __future__ import annotations

import hashlib
import linecache
import sys
import types

from backbeat.core.errors import IntegrityError
from backbeat.runtime.spec import CodeFile, CodeSpec


def read_snapshot(code: CodeFile) -> bytes:
    """The bytes of a code snapshot, checked against the digest planned."""
    try:
        with open(code.path, "rb") as f:
            source = f.read()
    except OSError as exc:
        raise IntegrityError(f"the code snapshot of `{code.filename}' ({code.path}) cannot be read: "
                             f"{exc.strerror or exc}") from None
    if hashlib.sha256(source).hexdigest() != code.sha256:
        raise IntegrityError(f"the code snapshot of `{code.filename}' ({code.path}) does not hold the bytes that "
                             f"were hashed (sha256 {code.sha256[:12]}…): refusing to run it")
    return source


def load_module(name: str, code: CodeFile, uses: dict[str, types.ModuleType] | None = None) -> types.ModuleType:
    """Execute the snapshot ``code`` in a fresh module with ``uses`` injected as attributes."""
    source = read_snapshot(code)
    mod_name = name.replace("/", "_").replace("-", "_")
    module = types.ModuleType(mod_name)
    module.__file__ = code.filename
    for alias, lib in (uses or {}).items():
        setattr(module, alias, lib)
    compiled = compile(source, code.filename, "exec")
    lines = source.decode("utf-8", errors="replace").splitlines(keepends=True)
    linecache.cache[code.filename] = (len(source), None, lines, code.filename)  # None: never re-read
    sys.modules.setdefault(mod_name, module)
    exec(compiled, module.__dict__)
    return module


def load_code(name: str, spec: CodeSpec, _cache: dict[str, types.ModuleType] | None = None,
              _code: CodeFile | None = None) -> types.ModuleType:
    """Load ``name`` (``spec.main``) and, recursively, the libraries it uses (``spec.libraries``)."""
    cache = {} if _cache is None else _cache
    code = spec.main if _code is None else _code
    modules = {}
    for alias, lib_name in code.uses.items():
        if lib_name not in cache:
            cache[lib_name] = load_code(lib_name, spec, cache, spec.libraries[lib_name])
        modules[alias] = cache[lib_name]
    return load_module(name, code, modules)
