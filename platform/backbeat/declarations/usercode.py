"""Static checks of user code: would the code load, and has it what the run will call?

``check`` must catch what fails at once at run time — a syntax error, null bytes, a missing
``Algorithm``/``Plotter``/view class or a missing method — without executing anything: user
code is untrusted and may be slow or have effects, so it is only *compiled* (to an AST, then to
bytecode, exactly as :mod:`backbeat.runtime.codeloader` compiles it before running it) and the
AST is read:

* the required class must be bound at the top level of the module (a ``class`` statement, also
  inside ``if``/``try``; a name bound by an assignment or an import is accepted unchecked, and a
  ``from … import *`` accepts any name);
* each required method must be defined by the class or by a base class of the same module;
  when a base comes from elsewhere (a library, an import) nothing is said about its methods,
  except for BEAT's ``View``, whose ``index`` and ``get`` only raise ``NotImplementedError``.

Problems name the code file and line (:class:`~backbeat.core.errors.Problem` ``file``/``line``).
Only Python code is checked (other languages are not run by backbeat).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from backbeat.core.errors import Problem

#: what the run calls, per algorithm type (``setup``, ``prepare``, ``read``, ``write`` are optional)
ALGORITHM_METHODS = {"sequential_loop_evaluator": ("validate",), "autonomous_loop_evaluator": ("validate",)}
DEFAULT_ALGORITHM_METHODS = ("process",)
VIEW_METHODS = ("index", "get")
PLOTTER_METHODS = ("process",)


@dataclass
class _Class:
    node: ast.ClassDef
    methods: set[str] = field(default_factory=set)


@dataclass
class Module:
    """What the top level of a compiled module binds."""

    classes: dict[str, _Class] = field(default_factory=dict)
    other_names: dict[str, int] = field(default_factory=dict)  # name -> line (assignments, imports, functions)
    star_import: bool = False


def _bound_names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for t in target.elts for n in _bound_names(t)]
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    return []


def _statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements of a block, with those inside ``if``/``try``/``with`` (run at import) flattened."""
    out: list[ast.stmt] = []
    for stmt in body:
        out.append(stmt)
        if isinstance(stmt, (ast.If, ast.For, ast.While)):
            out += _statements(stmt.body) + _statements(stmt.orelse)
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            out += _statements(stmt.body) + _statements(stmt.orelse) + _statements(stmt.finalbody)  # type: ignore[attr-defined]
            for handler in stmt.handlers:  # type: ignore[attr-defined]
                out += _statements(handler.body)
        elif isinstance(stmt, ast.With):
            out += _statements(stmt.body)
    return out


def _methods(node: ast.ClassDef) -> set[str]:
    names: set[str] = set()
    for stmt in _statements(node.body):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(stmt.name)
        elif isinstance(stmt, ast.Assign):
            names.update(n for t in stmt.targets for n in _bound_names(t))
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            names.update(_bound_names(stmt.target))
    return names


def read_module(tree: ast.Module) -> Module:
    """The names bound at the top level of ``tree``."""
    module = Module()
    for stmt in _statements(tree.body):
        if isinstance(stmt, ast.ClassDef):
            module.classes[stmt.name] = _Class(stmt, _methods(stmt))
            module.other_names.pop(stmt.name, None)
            continue
        names: list[str] = []
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = [stmt.name]
        elif isinstance(stmt, ast.Assign):
            names = [n for t in stmt.targets for n in _bound_names(t)]
        elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
            names = _bound_names(stmt.target)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                if alias.name == "*":
                    module.star_import = True
                else:
                    names.append(alias.asname or alias.name.split(".")[0])
        for name in names:
            module.classes.pop(name, None)
            module.other_names[name] = stmt.lineno
    return module


def compile_file(path: Path) -> tuple[ast.Module | None, Problem | None]:
    """``(tree, None)`` if ``path`` compiles as the code loader compiles it, else ``(None, problem)``."""
    try:
        source = path.read_bytes()
    except OSError as exc:
        return None, Problem(f"cannot read the code file: {exc.strerror or exc}", file=str(path))
    if b"\0" in source:
        line = source.count(b"\n", 0, source.index(b"\0")) + 1
        return None, Problem("the code contains a null byte: it cannot be compiled", file=str(path), line=line)
    try:
        tree = ast.parse(source, filename=str(path))
        compile(tree, str(path), "exec", dont_inherit=True)  # errors found past the parser (e.g. `return' outside a function)
    except SyntaxError as exc:
        text = f"{type(exc).__name__}: {exc.msg}"
        if exc.offset:
            text += f" (column {exc.offset})"
        if exc.text and exc.text.strip():
            text += f": {exc.text.strip()[:80]}"
        return None, Problem(f"the code does not compile: {text}", file=str(path), line=exc.lineno)
    except (ValueError, RecursionError, MemoryError) as exc:
        return None, Problem(f"the code does not compile: {type(exc).__name__}: {exc}", file=str(path))
    return tree, None


def _is_view_base(base: ast.expr) -> bool:
    return (isinstance(base, ast.Name) and base.id == "View") or (
        isinstance(base, ast.Attribute) and base.attr == "View")


def _missing_methods(module: Module, name: str, required: tuple[str, ...], seen: set[str] | None = None) -> list[str] | None:
    """Required methods the class ``name`` lacks (None: cannot tell, a base comes from elsewhere)."""
    seen = set() if seen is None else seen
    cls = module.classes[name]
    if name in seen or cls.node.decorator_list or cls.node.keywords:
        return None  # a decorator or metaclass may add anything
    seen.add(name)
    missing = [m for m in required if m not in cls.methods]
    for base in cls.node.bases:
        if not missing:
            break
        if isinstance(base, ast.Name) and base.id == "object":
            continue
        if _is_view_base(base):
            continue  # BEAT's View: its index() and get() only raise NotImplementedError
        if isinstance(base, ast.Name) and base.id in module.classes and base.id != name:
            inherited = _missing_methods(module, base.id, tuple(missing), seen)
            if inherited is None:
                return None
            missing = inherited
            continue
        return None
    return missing


def check_class(path: Path, tree: ast.Module, class_name: str, required: tuple[str, ...],
                what: str, module: Module | None = None) -> list[Problem]:
    """Problems if ``class_name`` is not bound at the top of ``tree`` or lacks a required method."""
    module = module if module is not None else read_module(tree)
    if class_name in module.classes:
        missing = _missing_methods(module, class_name, required)
        if not missing:
            return []
        node = module.classes[class_name].node
        listed = ", ".join(f"`{m}'" for m in missing)
        return [Problem(f"{what} class `{class_name}' has no method {listed}: the run calls "
                        f"{'it' if len(missing) == 1 else 'them'}", file=str(path), line=node.lineno)]
    if class_name in module.other_names or module.star_import:
        return []
    known = sorted(module.classes)
    hint = f" (classes defined: {', '.join(known)})" if known else " (it defines no class)"
    return [Problem(f"the code defines no class `{class_name}': the run needs it as the {what}{hint}",
                    file=str(path))]


def check_file(path: Path, classes: list[tuple[str, tuple[str, ...], str]]) -> list[Problem]:
    """Compile ``path``; then each ``(class name, required methods, what)`` must be there."""
    tree, problem = compile_file(path)
    if problem is not None:
        return [problem]
    assert tree is not None
    module = read_module(tree)
    return [p for cls, methods, what in classes for p in check_class(path, tree, cls, methods, what, module)]
