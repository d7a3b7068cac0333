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

Compiling is data work (no user code runs), so the fork server's zygote does it once for the
blocks it forks (:func:`learn`, registered by :mod:`~backbeat.runtime.preload`): it reads a
block's snapshots, keeps the code objects of those whose bytes have the planned sha256, and each
child forked after it executes the code object compiled from exactly those bytes instead of
reading, hashing and compiling them again (~0.7 ms and ~55 copied pages of a chain block).
"""

from __future__ import annotations

import hashlib
import linecache
import os
import sys
import types
import warnings
from typing import Any

from backbeat.core.errors import IntegrityError
from backbeat.runtime.spec import CodeFile, CodeSpec

#: snapshots up to this size are compiled by the zygote for its children (:func:`learn`) ...
LEARNT_BYTES = 64 << 10
#: ... and at most this many code objects kept (the zygote serves one run, or a template's runs: what
#: it holds, each fork copies the page tables of; an algorithm's file is typically a few KiB)
LEARNT_MOST = 64
#: (sha256, filename) -> (code object, size of the source, its lines): compiled from bytes of that sha256
_COMPILED: dict[tuple[str, str], tuple[types.CodeType, int, list[str]]] = {}


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


def _compile(source: bytes, filename: str) -> tuple[types.CodeType, int, list[str]]:
    """The code object of ``source``, its size and its lines (for :mod:`linecache`)."""
    lines = source.decode("utf-8", errors="replace").splitlines(keepends=True)
    # dont_inherit: the user's code is compiled with its own __future__ imports, not this module's
    return compile(source, filename, "exec", dont_inherit=True), len(source), lines


def compiled(code: CodeFile) -> tuple[types.CodeType, int, list[str]]:
    """The code object of the snapshot ``code`` (its size and lines too): the zygote's, compiled
    from bytes of the planned sha256 (:func:`learn`), else compiled here from the checked snapshot."""
    known = _COMPILED.get((code.sha256, code.filename))
    return known if known is not None else _compile(read_snapshot(code), code.filename)


def load_module(name: str, code: CodeFile, uses: dict[str, types.ModuleType] | None = None) -> types.ModuleType:
    """Execute the snapshot ``code`` in a fresh module with ``uses`` injected as attributes."""
    bytecode, size, lines = compiled(code)
    mod_name = name.replace("/", "_").replace("-", "_")
    module = types.ModuleType(mod_name)
    module.__file__ = code.filename
    for alias, lib in (uses or {}).items():
        setattr(module, alias, lib)
    linecache.cache[code.filename] = (size, None, lines, code.filename)  # None: never re-read
    sys.modules.setdefault(mod_name, module)
    exec(bytecode, module.__dict__)
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


def learn(payload: Any) -> None:
    """In the zygote, once it has forked a block: compile the block's code snapshots (its
    algorithm's and its libraries', ``payload["spec"]["code"]``) whose bytes have the planned
    sha256, for the next children (:func:`compiled`).  Data only: compiling runs no user code
    (:func:`backbeat.processes.warmup.learn_from`); a snapshot that cannot be read, is larger than
    :data:`LEARNT_BYTES`, does not compile or warns as it compiles is left to each child (which
    reports it)."""
    spec = payload.get("spec") if isinstance(payload, dict) else None
    obj = spec.get("code") if isinstance(spec, dict) else None
    if not isinstance(obj, dict):
        return
    files = [obj.get("main"), *(obj.get("libraries") or {}).values()]
    if all(isinstance(f, dict) and (f.get("sha256"), f.get("filename")) in _COMPILED for f in files):
        return  # (every fork of a chain after its first: learnt already)
    code = CodeSpec.from_json(obj)
    for file in (code.main, *code.libraries.values()):
        if (file.sha256, file.filename) in _COMPILED or len(_COMPILED) >= LEARNT_MOST:
            continue
        try:
            if os.stat(file.path).st_size > LEARNT_BYTES:
                continue
            with warnings.catch_warnings(record=True) as said:  # (compile-time warnings, e.g. SyntaxWarning)
                warnings.simplefilter("always")
                learnt = _compile(read_snapshot(file), file.filename)
        except (IntegrityError, OSError, SyntaxError, ValueError):
            continue
        if not said:  # (code that warns is compiled by each child: its log shows the warning, as BEAT's)
            _COMPILED[(file.sha256, file.filename)] = learnt
