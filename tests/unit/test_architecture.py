"""The package's layering, checked from the source (AST): ``docs/architecture.md`` in code.

Rules:

* layers, bottom to top, are :data:`LAYERS`; a module may import its own layer and the
  layers below it, never one above — at module level or inside a function;
* the command line imports only :mod:`backbeat.api`, ``core`` and itself;
* no import cycle between modules (imports under ``if TYPE_CHECKING:`` are for type
  checkers only and are not imports at run time, so they are not counted);
* imports are absolute (``from backbeat.x import y``), so the layer of each is visible;
* no module is much over 500 lines.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "backbeat"

#: bottom to top; a module's layer is its subpackage (top-level modules: :data:`TOP_LEVEL`)
LAYERS = ["core", "declarations", "data", "cache", "planning", "provenance", "processes", "runtime",
          "execution", "audit", "attestation", "plotting", "reporting", "api", "cli"]
TOP_LEVEL = {"backbeat": "core", "backbeat.api": "api", "backbeat.remote": "execution",
             "backbeat.__main__": "cli"}
CLI_MAY_IMPORT = {"core", "api", "cli"}
MAX_LINES = 520

#: upward imports still to remove (this list only ever shrinks)
KNOWN_UPWARD: set[tuple[str, str]] = set()
KNOWN_CYCLES: list[set[str]] = []
KNOWN_CLI: set[tuple[str, str]] = set()
KNOWN_BIG: set[str] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if "prototypes" in parts:  # templates copied into prefixes by `create', not package code
            continue
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def layer_of(module: str) -> str:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    return module.split(".")[1]


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """``[(imported backbeat module, line, relative?)]`` of one file, function-level ones included."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, False) for a in child.names if a.name.split(".")[0] == "backbeat")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    found.append((child.module or "", child.lineno, True))
                elif child.module and child.module.split(".")[0] == "backbeat":
                    for alias in child.names:
                        full = f"{child.module}.{alias.name}"
                        found.append((full if full in MODULES else child.module, child.lineno, False))
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


GRAPH: dict[str, set[str]] = defaultdict(set)
for _name, _path in MODULES.items():
    for _target, _line, _relative in imports_of(_path):
        if _target in MODULES and _target != _name:
            GRAPH[_name].add(_target)


def test_every_layer_is_known() -> None:
    unknown = {layer_of(m) for m in MODULES} - set(LAYERS)
    assert not unknown, f"modules outside the documented layers: {unknown}"


def test_imports_are_absolute() -> None:
    relative = [f"{m}:{line}" for m, p in MODULES.items() for _t, line, rel in imports_of(p) if rel]
    assert not relative, f"relative imports (write `from backbeat.<layer>.<module> import ...'): {relative}"


def test_no_layer_imports_a_layer_above() -> None:
    upward = set()
    for name, targets in GRAPH.items():
        for target in targets:
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(name)):
                upward.add((name, target))
    assert upward <= KNOWN_UPWARD, f"new upward imports: {sorted(upward - KNOWN_UPWARD)}"


def test_cli_goes_through_the_api() -> None:
    bad = {(n, t) for n, ts in GRAPH.items() if layer_of(n) == "cli" for t in ts
           if layer_of(t) not in CLI_MAY_IMPORT}
    assert bad <= KNOWN_CLI, f"the CLI reaches past the API: {sorted(bad - KNOWN_CLI)}"


def _cycles() -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def strong(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for module in sorted(MODULES):
        if module not in index:
            strong(module)
    return out


def test_no_import_cycle() -> None:
    new = [c for c in _cycles() if c not in KNOWN_CYCLES]
    assert not new, f"import cycles: {[sorted(c) for c in new]}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    if module not in KNOWN_BIG:
        assert lines <= MAX_LINES, f"{module} has {lines} lines: split it by concept"


def test_every_subpackage_says_what_it_holds_and_may_import() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        if init.parent.name in ("prototypes", "schemas"):
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, f"{init}: the docstring must say what lives there and what it may import"
