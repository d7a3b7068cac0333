"""``beat.backend.python`` import shim for user code written for BEAT, and BEAT's ``View``.

Database views, algorithms and libraries written for BEAT import from
``beat.backend.python`` (nearly always ``from beat.backend.python.database import View``).
backbeat installs nothing named ``beat``: inside its own block and database-provider
processes it calls :func:`install_beat_aliases`, which puts a meta-path finder first on
``sys.meta_path``.  The finder answers only for the names in :data:`ALIASES`: the
packages ``beat``, ``beat.backend`` and ``beat.backend.python`` are empty synthetic
packages; each other name becomes a fresh module re-exporting the public names of a
backbeat module (so classes are backbeat's own objects and ``isinstance`` works).
Nothing is active until installed; :func:`uninstall_beat_aliases` removes the finder and
the modules it made.

:class:`View` is the base class of database views (spec §2.5): ``index(root_folder,
parameters)`` lists the entries, ``setup(...)`` keeps ``objs[start:end + 1]``,
``get(output, index)`` returns one output's value for one entry, and
``output_member_map`` / ``get_output_mapping`` name the entry field behind an output.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any


class View:
    """Base class of a database view (BEAT's ``beat.backend.python.database.View``)."""

    #: class-level default so subclasses that skip ``super().__init__()`` still work
    output_member_map: dict[str, str] = {}

    def __init__(self) -> None:
        self.output_member_map = {}
        self.root_folder: str | None = None
        self.parameters: dict | None = None
        self.objs: Any = None
        self.start_index = 0
        self.end_index = -1

    def index(self, root_folder: str, parameters: dict) -> list:
        """The list of (named) tuples describing the data this view provides."""
        raise NotImplementedError

    def setup(
        self,
        root_folder: str,
        parameters: dict,
        objs: Sequence[Any],
        start_index: int | None = None,
        end_index: int | None = None,
    ) -> None:
        """Keep ``objs[start_index:end_index + 1]`` (the whole list by default)."""
        self.root_folder = root_folder
        self.parameters = parameters
        self.start_index = start_index if start_index is not None else 0
        self.end_index = end_index if end_index is not None else len(objs) - 1
        self.objs = objs[self.start_index : self.end_index + 1]

    def get(self, output: str, index: int) -> Any:
        """The value of ``output`` for entry ``index`` of ``self.objs`` (dict or value object)."""
        raise NotImplementedError

    def get_output_mapping(self, output: str) -> str:
        """The entry field behind ``output`` (the output name unless mapped)."""
        return self.output_member_map.get(output, output)


#: alias name -> (backbeat module, names to export or None for all public names);
#: ``None`` target = empty synthetic package
ALIASES: dict[str, tuple[str, tuple[str, ...] | None] | None] = {
    "beat": None,
    "beat.backend": None,
    "beat.backend.python": None,
    "beat.backend.python.database": ("backbeat.runtime.compat", ("View",)),
    "beat.backend.python.inputs": ("backbeat.runtime.inputs", None),
    "beat.backend.python.outputs": ("backbeat.runtime.outputs", None),
    "beat.backend.python.data_loaders": ("backbeat.runtime.dataloaders", None),
    "beat.backend.python.dataformat": ("backbeat.data.values", None),
    "beat.backend.python.baseformat": ("backbeat.data.values", None),
}

# BEAT spellings of helpers some user code reaches for
_EXTRA_NAMES: dict[str, dict[str, str]] = {
    "beat.backend.python.data_loaders": {"mixDataIndices": "mix_data_indices"},
}


class BeatAliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the ``beat.backend.python`` aliases (and nothing else)."""

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in ALIASES:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=ALIASES[fullname] is None)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # default module creation

    def exec_module(self, module: types.ModuleType) -> None:
        alias = ALIASES[module.__name__]
        module.__dict__["__backbeat_alias__"] = True
        if alias is None:
            module.__doc__ = f"backbeat alias package `{module.__name__}'"
            return
        target_name, names = alias
        try:
            target = importlib.import_module(target_name)
        except ImportError as exc:
            raise ImportError(
                f"`{module.__name__}' is not available in backbeat ({target_name} cannot be imported: {exc})",
                name=module.__name__,
            ) from exc
        if names is None:
            names = tuple(
                getattr(target, "__all__", None) or (n for n in vars(target) if not n.startswith("_"))
            )
        for name in names:
            setattr(module, name, getattr(target, name))
        for beat_name, ours in _EXTRA_NAMES.get(module.__name__, {}).items():
            setattr(module, beat_name, getattr(target, ours))
        module.__doc__ = f"backbeat alias of `{target_name}' for code written for BEAT"


_FINDER: BeatAliasFinder | None = None


def aliases_installed() -> bool:
    return _FINDER is not None and _FINDER in sys.meta_path


def install_beat_aliases() -> None:
    """Make ``import beat.backend.python.<module>`` resolve to backbeat (idempotent).

    Call this only in backbeat's own worker processes, never in a user's interpreter.
    """
    global _FINDER
    if aliases_installed():
        return
    _FINDER = BeatAliasFinder()
    sys.meta_path.insert(0, _FINDER)


def uninstall_beat_aliases() -> None:
    """Remove the finder and forget every aliased module it created."""
    global _FINDER
    if _FINDER is not None and _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    _FINDER = None
    for name in list(sys.modules):
        if name in ALIASES and getattr(sys.modules[name], "__backbeat_alias__", False):
            del sys.modules[name]
