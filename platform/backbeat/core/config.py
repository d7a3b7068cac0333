"""The ``.backbeatrc`` configuration file: default prefix, cache and database root folders.

A configuration file is a JSON object read from ``~/.backbeatrc`` then from the nearest
``.backbeatrc`` in the working folder or one of its parents (its keys override the home folder's,
key by key), so that backbeat works from anywhere inside a project.  Keys:

* ``prefix`` — the prefix folder (relative paths are relative to the file's folder);
* ``cache`` — the cache folder (relative paths are relative to the prefix, as in BEAT);
* ``database/<name>/<version>`` — the root folder of that database's raw data, overriding the
  ``root_folder`` of its declaration (relative paths are relative to the file's folder);
* ``limits`` — per-experiment block limits, ``{PATTERN: {"timeout": seconds, "memory": MB}}``
  where PATTERN is an experiment name or a shell-style pattern (``*``, ``user/*``); for each
  limit the exact name wins, then the longest matching pattern.  They live here, not in the
  experiment, so that prefixes stay valid for BEAT; ``--timeout``/``--memory`` override them;
* ``compression`` — how block processes compress the cache files they write: ``none`` (the
  default), ``lzf``, ``gzip`` or ``gzip:0`` .. ``gzip:9`` (h5py's filters; content digests and
  cache keys do not depend on it).
* ``environments`` — the Python interpreter of each BEAT execution environment,
  ``{"<name>/<version>" or pattern: interpreter}``: a ``python`` executable, an environment folder
  (a venv or conda env: its ``bin/python``; relative paths are relative to the file's folder) or
  ``"default"`` (the interpreter running backbeat); see :mod:`backbeat.processes.environments`;
* ``sandbox`` — run blocks in the sandbox (:mod:`backbeat.processes.sandbox`): ``true``, ``false``
  or a list of experiment names and patterns; ``--sandbox``/``--no-sandbox`` override it.
* ``template`` — ``false``: commands run in their own process and every run forks its own fork
  server, instead of being served by the user's warm template (:mod:`backbeat.processes.template`;
  also ``BACKBEAT_TEMPLATE=off``).

BEAT's own keys (``platform``, ``user``, ``token``, ``editor``) are accepted and ignored, so a
``.beatrc`` can be copied as is; any other key, a value of the wrong type or a file that is not
a JSON object is an error naming the file.  Precedence: command-line option > ``BACKBEAT_PREFIX``
(prefix only) > nearest ``.backbeatrc`` > ``~/.backbeatrc`` > defaults (``<prefix>/cache``; for the
prefix, :func:`find_prefix`: a ``prefix/`` folder in the working folder or a parent, or the prefix
the working folder is in).

State: :data:`_ACTIVE` is the configuration applied by the CLI (:func:`activate`); the execution
layer reads its database root folders and hands them to planning (no file is read when nothing
was activated).
This module imports nothing heavy: the CLI loads it on every command.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path

from backbeat.core import jsonio
from backbeat.core.errors import BackbeatError, UsageError
from backbeat.core.names import KINDS, parse_name

FILENAME = ".backbeatrc"
IGNORED_KEYS = frozenset({"platform", "user", "token", "editor"})


class ConfigError(UsageError):
    """A configuration file is unreadable or malformed (exit code 1: invalid input)."""

    exit_code = 1


@dataclass
class Config:
    """The merged configuration; ``sources`` are the files read, home first."""

    prefix: str | None = None
    cache: str | None = None
    databases: dict[str, str] = field(default_factory=dict)
    limits: dict[str, dict[str, float]] = field(default_factory=dict)  # pattern -> {"timeout", "memory"}
    compression: str | None = None  # of the cache files blocks write (None: none)
    environments: dict[str, str] = field(default_factory=dict)  # pattern -> interpreter (path or "default")
    environment_files: dict[str, str] = field(default_factory=dict)  # pattern -> the file that set it
    sandbox: bool | list[str] | None = None  # None: not set
    template: bool | None = None  # runs' zygotes from a warm template (None: not set, i.e. yes)
    sources: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"prefix": self.prefix, "cache": self.cache, "databases": dict(sorted(self.databases.items())),
                "limits": {k: dict(v) for k, v in sorted(self.limits.items())}, "compression": self.compression,
                "environments": dict(sorted(self.environments.items())), "sandbox": self.sandbox,
                "files": list(self.sources)}


LIMIT_KEYS = {"timeout": "seconds", "memory": "megabytes"}
COMPRESSIONS = ("none", "lzf", "gzip", *(f"gzip:{level}" for level in range(10)))


def _apply_limits(cfg: Config, path: Path, value: object) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"configuration file `{path}': `limits' must be an object "
                          f"{{\"<experiment or pattern>\": {{\"timeout\": seconds, \"memory\": MB}}}}")
    for pattern, limits in value.items():
        if not pattern or not isinstance(limits, dict):
            raise ConfigError(f"configuration file `{path}': `limits/{pattern}' must be an object "
                              f"with `timeout' (seconds) and/or `memory' (MB)")
        for name, number in limits.items():
            if name not in LIMIT_KEYS:
                raise ConfigError(f"configuration file `{path}': `limits/{pattern}/{name}' is unknown "
                                  f"(known: timeout, memory)")
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not number > 0:
                raise ConfigError(f"configuration file `{path}': `limits/{pattern}/{name}' must be a positive "
                                  f"number of {LIMIT_KEYS[name]}, not {jsonio.dumps(number)}")
        cfg.limits.setdefault(pattern, {}).update({k: float(v) for k, v in limits.items()})


def _apply_environments(cfg: Config, path: Path, value: object) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"configuration file `{path}': `environments' must be an object "
                          f"{{\"<name>/<version> or pattern\": \"<python interpreter or environment folder>\"}}")
    for pattern, target in value.items():
        if not pattern or not isinstance(target, str) or not target:
            raise ConfigError(f"configuration file `{path}': `environments/{pattern}' must be a non-empty string: "
                              f"a python interpreter, an environment folder or \"default\"")
        cfg.environments[pattern] = target if target == "default" else os.path.normpath(
            path.parent / os.path.expanduser(target))
        cfg.environment_files[pattern] = str(path)


def _apply_sandbox(cfg: Config, path: Path, value: object) -> None:
    if not isinstance(value, bool) and not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
        raise ConfigError(f"configuration file `{path}': `sandbox' must be true, false or a list of experiment "
                          f"names and patterns, not {jsonio.dumps(value)}")
    cfg.sandbox = value


def sandbox_for(cfg: Config | None, experiment: str) -> bool:
    """Whether the configuration puts ``experiment``'s blocks in the sandbox.

    >>> sandbox_for(Config(sandbox=["u/*"]), "u/t/1/e"), sandbox_for(Config(sandbox=True), "v/t/1/e")
    (True, True)
    >>> sandbox_for(Config(sandbox=["u/*"]), "v/t/1/e"), sandbox_for(None, "v/t/1/e")
    (False, False)
    """
    if cfg is None or not cfg.sandbox:
        return False
    if cfg.sandbox is True:
        return True
    try:
        experiment = parse_name("experiment", experiment)[1]
    except BackbeatError:
        pass
    return any(p == experiment or fnmatch.fnmatchcase(experiment, p) for p in cfg.sandbox)


def limits_for(cfg: Config | None, experiment: str) -> tuple[float | None, int | None]:
    """The configured ``(timeout_s, memory_bytes)`` of an experiment (None: no limit).

    For each limit, the pattern naming the experiment exactly wins, then the longest matching one.
    Patterns are matched against the canonical name (``user/toolchain_user/toolchain/version/name``).

    >>> cfg = Config(limits={"*": {"timeout": 60, "memory": 512}, "u/*": {"timeout": 5}, "u/u/t/1/e": {"memory": 64}})
    >>> limits_for(cfg, "u/t/1/e")
    (5.0, 67108864)
    >>> limits_for(cfg, "v/v/t/1/e")
    (60.0, 536870912)
    >>> limits_for(Config(limits={"u/u/t/1/e": {"timeout": 2}}), "u/t/1/e")  # 4-part label
    (2.0, None)
    """
    try:  # patterns match the canonical 5-part name (a 4-part label gets its toolchain user)
        experiment = parse_name("experiment", experiment)[1]
    except BackbeatError:
        pass  # the run itself reports the invalid name
    found: dict[str, float] = {}
    if cfg is not None:
        matching = [p for p in cfg.limits if p == experiment or fnmatch.fnmatchcase(experiment, p)]
        for pattern in sorted(matching, key=lambda p: (p == experiment, len(p))):
            found.update(cfg.limits[pattern])
    timeout, memory = found.get("timeout"), found.get("memory")
    return (float(timeout) if timeout is not None else None,
            int(memory * 1024 * 1024) if memory is not None else None)


def _read(path: Path) -> dict:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"configuration file `{path}' cannot be read: {exc.strerror or exc}") from None
    try:
        data = jsonio.parse(raw)
    except jsonio.JSONProblem as exc:
        raise ConfigError(f"configuration file `{path}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file `{path}' must hold a JSON object, not {type(data).__name__}")
    return data


def _apply(cfg: Config, path: Path, data: dict) -> None:
    here = path.parent
    for key, value in data.items():
        if key in IGNORED_KEYS:
            continue
        if key in ("prefix", "cache") or key.startswith("database/"):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"configuration file `{path}': `{key}' must be a non-empty string (a folder)")
        if key == "prefix":
            cfg.prefix = os.path.normpath(here / os.path.expanduser(value))
        elif key == "cache":
            cfg.cache = os.path.expanduser(value)  # relative to the prefix, resolved by the caller
        elif key == "limits":
            _apply_limits(cfg, path, value)
        elif key == "compression":
            if value not in COMPRESSIONS:
                raise ConfigError(f"configuration file `{path}': `compression' must be one of none, lzf, gzip, "
                                  f"gzip:0 .. gzip:9, not {jsonio.dumps(value)}")
            cfg.compression = None if value == "none" else value
        elif key == "environments":
            _apply_environments(cfg, path, value)
        elif key == "sandbox":
            _apply_sandbox(cfg, path, value)
        elif key == "template":
            if not isinstance(value, bool):
                raise ConfigError(f"configuration file `{path}': `template' must be true or false")
            cfg.template = value
        elif key.startswith("database/"):
            name = key[len("database/"):]
            if not KINDS["database"].pattern.match(name):
                raise ConfigError(f"configuration file `{path}': `{key}' does not name a database "
                                  f"(expected database/<name>/<version>)")
            cfg.databases[name] = os.path.normpath(here / os.path.expanduser(value))
        else:
            known = ", ".join(["prefix", "cache", "database/<name>/<version>", "limits", "compression", "environments",
                               "sandbox", "template"])
            raise ConfigError(f"configuration file `{path}': unknown key `{key}' (known keys: {known})")


def _upwards(start: Path) -> list[Path]:
    """``start`` and each of its parents, nearest first."""
    start = start.absolute()
    return [start, *start.parents]


def nearest(cwd: str | os.PathLike | None = None) -> Path | None:
    """The ``.backbeatrc`` of the working folder or of its nearest parent that has one."""
    for folder in _upwards(Path(cwd) if cwd is not None else Path.cwd()):
        p = folder / FILENAME
        if p.is_file():
            return p
    return None


def files(cwd: str | os.PathLike | None = None, home: str | os.PathLike | None = None) -> list[Path]:
    """The configuration files that exist, lowest precedence first (home, then the nearest one)."""
    home_path = Path(home) if home is not None else Path(os.path.expanduser("~"))
    out: list[Path] = []
    for p in (home_path / FILENAME, nearest(cwd)):
        if p is not None and p.is_file() and all(not p.samefile(q) for q in out):
            out.append(p)
    return out


def is_prefix(folder: Path) -> bool:
    """True if ``folder`` holds at least one asset kind's folder (``dataformats``, ``algorithms``…)."""
    return folder.is_dir() and any((folder / kind.folder).is_dir() for kind in KINDS.values())


def find_prefix(cwd: str | os.PathLike | None = None) -> str:
    """The default prefix: ``prefix/`` in the working folder or a parent, or the prefix one is in.

    Going up from the working folder, the first folder that has a ``prefix`` subfolder holding
    asset folders gives it; a folder that itself holds asset folders (the working folder is the
    prefix or inside it) is the prefix.  Nothing found: ``prefix`` (reported missing as before).
    A prefix found in the working folder is given relative (``prefix``), any other absolute.
    """
    here = Path(cwd) if cwd is not None else Path.cwd()
    for folder in _upwards(here):
        for candidate in (folder / "prefix", folder):
            if is_prefix(candidate):
                return "prefix" if candidate == here.absolute() / "prefix" else str(candidate)
    return "prefix"


def load(cwd: str | os.PathLike | None = None, home: str | os.PathLike | None = None) -> Config:
    """Read and merge the configuration files (raises :class:`ConfigError` naming a bad file)."""
    cfg = Config()
    for path in files(cwd, home):
        _apply(cfg, path, _read(path))
        cfg.sources.append(str(path))
    return cfg


def resolve(cfg: Config, prefix_option: str | None, cache_option: str | None) -> tuple[str, str]:
    """The effective ``(prefix, cache)`` folders given the command-line options."""
    prefix = prefix_option or os.environ.get("BACKBEAT_PREFIX") or cfg.prefix or find_prefix()
    if cache_option:
        cache = Path(cache_option)
    elif cfg.cache:
        cache = Path(prefix) / cfg.cache  # an absolute configured cache replaces the prefix
    else:
        cache = Path(prefix) / "cache"
    return str(Path(prefix)), str(cache)


_ACTIVE: Config | None = None


def activate(cfg: Config | None) -> None:
    """Make ``cfg`` the configuration library code consults (None: none)."""
    global _ACTIVE
    _ACTIVE = cfg


def active() -> Config | None:
    return _ACTIVE

