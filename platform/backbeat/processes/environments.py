"""Execution environments: the Python interpreter that runs the blocks of each BEAT environment.

BEAT runs every block in the environment its experiment declares (``globals.environment``,
or the block's own ``environment``: ``{"name", "version"}``) — a Docker image.  backbeat maps
each environment to a Python interpreter (a venv's or conda env's ``python``), and runs the
block in a fork server started in that interpreter (:class:`~backbeat.processes.workerpool.ForkServer`).

The mapping (:class:`Mapping`) is ``{"<name>/<version>" or pattern: interpreter}``, read from the
prefix's ``environments.json`` then from the ``environments`` key of the ``.backbeatrc`` files
(home, then nearest): a pattern set by a later source replaces the same pattern of an earlier
one — the prefix gives the project's defaults, the configuration files this machine's
interpreters.  An interpreter is a ``python`` executable, an environment folder (its
``bin/python``; relative paths are relative to the file that names it) or ``"default"``, the
interpreter running backbeat.  To find an environment's interpreter the exact key wins, then
the longest shell-style pattern matching ``name/version`` (``"Python */*"``, ``"*"``).

* No mapping at all: every environment runs in the running interpreter (as before environments
  existed).
* Otherwise an environment that no entry matches is an error, raised before anything runs,
  naming the experiment and the block (:func:`backbeat.execution.environments.assign`); map
  ``"*"`` to ``"default"`` to run every other environment in the running interpreter.

Another interpreter gets backbeat's block runtime on its path through ``PYTHONPATH``: a folder
holding only a link to this ``backbeat`` package (:func:`runtime_path`), so its own packages are
never shadowed by ours, and both sides speak the same protocol.  The interpreter must have
the runtime's requirements installed (:data:`~backbeat.processes.interpreter.RUNTIME_REQUIREMENTS`);
:func:`probe` asks it what it has (``backbeat environments check``).
"""

from __future__ import annotations

import atexit
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbeat.core import jsonio
from backbeat.core.config import Config, ConfigError
from backbeat.core.errors import ExecutionError

DEFAULT = "default"
#: the prefix's own mapping file (an object like ``.backbeatrc``'s ``environments``)
PREFIX_FILE = "environments.json"


def label(env: dict | None) -> str:
    """``name/version`` of an environment declaration (``{"name", "version"}``)."""
    env = env or {}
    return f"{env.get('name', '')}/{env.get('version', '')}"


def executable(target: str) -> str:
    """The ``python`` of an interpreter entry (an executable, an environment folder, ``default``)."""
    if target == DEFAULT:
        return sys.executable
    path = Path(target)
    if path.is_dir():
        for candidate in (path / "bin" / "python", path / "bin" / "python3", path / "python.exe"):
            if candidate.exists():
                return str(candidate)
        return str(path / "bin" / "python")
    return str(path)


@dataclass(frozen=True)
class Interpreter:
    """The interpreter chosen for an environment."""

    python: str  # its executable (sys.executable for the default)
    default: bool = True  # the interpreter running backbeat (blocks fork from this process)
    pattern: str | None = None  # the mapping entry that chose it (None: no mapping configured)
    source: str | None = None  # the file of that entry

    @property
    def key(self) -> str | None:
        """What tells fork servers apart: None for the running interpreter, else the executable."""
        return None if self.default else self.python


RUNNING = Interpreter(sys.executable)


def same_python(a: str, b: str) -> bool:
    """Whether two interpreter paths name one interpreter: equal, or two names of one executable in
    one folder (``venv/bin/python`` and ``venv/bin/python3``: what ``sys.executable`` is depends on
    how backbeat was started — its script or ``python -m``).  Other folders are other interpreters
    (two virtual environments' ``python`` resolve to one binary, with other packages).

    >>> same_python("/nowhere/bin/python", "/nowhere/bin/python")
    True
    >>> same_python("/nowhere/bin/python", "/nowhere/bin/python3")  # (neither exists: names only)
    False
    """
    if a == b:
        return True
    return (os.path.dirname(os.path.abspath(a)) == os.path.dirname(os.path.abspath(b))
            and os.path.exists(a) and os.path.realpath(a) == os.path.realpath(b))


@dataclass
class Mapping:
    """Environment patterns -> interpreters, with the file that set each."""

    entries: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, prefix: str | os.PathLike | None, cfg: Config | None) -> Mapping:
        """The prefix's ``environments.json`` overridden by the configuration's ``environments``."""
        out = cls()
        if prefix is not None:
            path = Path(prefix) / PREFIX_FILE
            if path.is_file():
                out._read_prefix_file(path)
        if cfg is not None:
            out.entries.update(cfg.environments)
            out.sources.update(cfg.environment_files)
        return out

    def _read_prefix_file(self, path: Path) -> None:
        try:
            data = jsonio.parse(path.read_bytes())
        except (OSError, jsonio.JSONProblem) as exc:
            raise ConfigError(f"environments file `{path}' cannot be read: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"environments file `{path}' must hold a JSON object "
                              f"{{\"<name>/<version> or pattern\": \"<python interpreter or environment folder>\"}}")
        for pattern, target in data.items():
            if not pattern or not isinstance(target, str) or not target:
                raise ConfigError(f"environments file `{path}': `{pattern}' must be a non-empty string: a python "
                                  f"interpreter, an environment folder or \"default\"")
            self.entries[pattern] = target if target == DEFAULT else os.path.normpath(
                path.parent / os.path.expanduser(target))
            self.sources[pattern] = str(path)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def match(self, env_label: str) -> str | None:
        """The entry (pattern) giving ``name/version``'s interpreter: the exact key, then the longest
        matching pattern; None when none matches.

        >>> Mapping({"*": "default", "Py */*": "/a", "Py 3/1": "/b"}).match("Py 3/1")
        'Py 3/1'
        >>> Mapping({"*": "default", "Py */*": "/a", "Py 3/1": "/b"}).match("Py 2/1")
        'Py */*'
        >>> Mapping({"Py */*": "/a"}).match("R/4") is None
        True
        """
        if env_label in self.entries:
            return env_label
        matching = [p for p in self.entries if fnmatch.fnmatchcase(env_label, p)]
        return max(matching, key=len) if matching else None

    def resolve(self, env: dict | None) -> Interpreter | None:
        """The interpreter of an environment declaration; None when no entry matches (an error the
        caller reports), the running interpreter when nothing is mapped at all."""
        if not self.entries:
            return RUNNING
        pattern = self.match(label(env))
        if pattern is None:
            return None
        target = self.entries[pattern]
        python = executable(target)
        return Interpreter(python, target == DEFAULT or _same_file(python, sys.executable), pattern,
                           self.sources.get(pattern))


def _same_file(a: str, b: str) -> bool:
    # a venv's python is a symbolic link to its base interpreter: compare the paths, not the files
    # they point to (a venv is another environment: other site-packages)
    return os.path.abspath(a) == os.path.abspath(b)


# -- backbeat's runtime in another interpreter -------------------------------------------------------
_RUNTIME: str | None = None


def package_dir() -> str:
    """The folder of this ``backbeat`` package."""
    import backbeat

    return str(Path(backbeat.__file__).resolve().parent)


def runtime_path() -> str:
    """A folder holding only a link to this ``backbeat`` package: the ``PYTHONPATH`` of another
    interpreter (made once per process, removed at exit)."""
    global _RUNTIME
    if _RUNTIME is None or not os.path.isdir(_RUNTIME):
        folder = tempfile.mkdtemp(prefix="bb-runtime-")
        os.symlink(package_dir(), os.path.join(folder, "backbeat"))
        _RUNTIME = folder
        atexit.register(shutil.rmtree, folder, True)
    return _RUNTIME


def runtime_env(base: dict[str, str] | None = None, path: str | None = None) -> dict[str, str]:
    """The environment variables of another interpreter running backbeat's runtime."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = path or runtime_path()
    env.pop("PYTHONHOME", None)
    return env


def probe(python: str, check: bool = False, timeout: float = 120.0) -> dict[str, Any]:
    """Ask an interpreter what it is (:func:`backbeat.processes.interpreter.describe`).

    Never raises for a broken interpreter: ``{"error": why}`` instead (not found, not executable,
    crashed, printed something else).
    """
    if not os.path.exists(python):
        return {"error": f"`{python}' does not exist"}
    if not os.access(python, os.X_OK) or os.path.isdir(python):
        return {"error": f"`{python}' is not an executable file"}
    argv = [python, "-m", "backbeat.processes.interpreter"] + (["--check"] if check else [])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=runtime_env(),
                              stdin=subprocess.DEVNULL, cwd="/")  # (`-m' puts the working folder on its path)
    except OSError as exc:
        return {"error": f"`{python}' cannot be started: {exc.strerror or exc}"}
    except subprocess.TimeoutExpired:
        return {"error": f"`{python}' did not answer within {timeout:.0f} s"}
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else None
    except ValueError:
        info = None
    if proc.returncode != 0 or not isinstance(info, dict):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"`{python}' cannot run backbeat's runtime (exit {proc.returncode}): {tail}"}
    return info


_INFO: dict[str, dict[str, Any]] = {}


def interpreter_info(python: str) -> dict[str, Any]:
    """:func:`probe` of an interpreter that must work (asked once per process);
    an :class:`ExecutionError` when it does not."""
    if python not in _INFO:
        info = probe(python)
        if "error" in info:
            raise ExecutionError(f"interpreter {info['error']}")
        _INFO[python] = info
    return _INFO[python]


def describe_interpreter(interpreter: Interpreter, check: bool = False) -> dict[str, Any]:
    """An interpreter's description, asked in-process for the running one (nothing to start)."""
    if interpreter.default and not check:
        from backbeat.processes.interpreter import describe

        return describe()
    return probe(interpreter.python, check)


def require(mapping: Mapping, env: dict | None, where: str) -> Interpreter:
    """The interpreter of ``env``, or an :class:`ExecutionError` saying ``where`` it is needed."""
    found = mapping.resolve(env)
    if found is None:
        files = sorted(set(mapping.sources.values()))
        raise ExecutionError(
            f"{where} runs in environment `{label(env)}', which no entry of the environment mapping matches "
            f"(mapped: {', '.join(sorted(mapping.entries))}; set in {', '.join(files)}): add "
            f"\"{label(env)}\": \"<python interpreter or environment folder>\" to `environments' in .backbeatrc, "
            f"or \"*\": \"default\" to run unmapped environments in the running interpreter")
    return found
