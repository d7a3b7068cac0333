"""What a Python interpreter is: its executable, version and key package versions.

Runs *inside* the interpreter described (a fork server's zygote reports it when ready,
``python -m backbeat.processes.interpreter [--check]`` prints it for ``environments
list|check``), so it imports nothing but the standard library: it must load in an
environment that lacks backbeat's own requirements, to say which are missing.

:data:`RUNTIME_REQUIREMENTS` are the distributions backbeat's block runtime needs in an
environment (with their minimum versions); :data:`RUNTIME_MODULES` what a block process,
an indexing job and the database provider import; :data:`REPORTED` the packages whose
versions a provenance record keeps for each block.
"""

from __future__ import annotations

import json
import platform
import sys
from typing import Any

#: distribution -> minimum version the block runtime needs (pyproject's dependencies it imports)
RUNTIME_REQUIREMENTS = {"numpy": "2", "h5py": "3.10", "pyzmq": "25", "simplejson": "3.19"}
#: what block processes, indexing jobs and the database provider import
RUNTIME_MODULES = ("numpy", "h5py", "zmq", "simplejson", "backbeat.processes.control",
                   "backbeat.runtime.blockrun", "backbeat.runtime.dbprovider")
#: packages whose versions are reported (those not installed are left out)
REPORTED = (*RUNTIME_REQUIREMENTS, "scipy", "scikit-learn", "pandas", "torch", "matplotlib")


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        out.append(int(digits))
        if len(digits) != len(part):
            break
    return tuple(out)


def missing_requirements(packages: dict[str, str | None]) -> list[str]:
    """The runtime requirements absent or too old in ``packages`` (``["h5py>=3.10", …]``).

    >>> missing_requirements({"numpy": "1.26.4", "h5py": "3.11.0", "pyzmq": None, "simplejson": "3.19.1"})
    ['numpy>=2', 'pyzmq>=25']
    """
    out = []
    for dist, minimum in RUNTIME_REQUIREMENTS.items():
        have = packages.get(dist)
        if have is None or _version_tuple(have) < _version_tuple(minimum):
            out.append(f"{dist}>={minimum}")
    return out


def describe(check: bool = False) -> dict[str, Any]:
    """This interpreter: ``executable``, ``prefix``, ``python``, ``implementation``, ``packages``
    (version or None), its module search ``path``; with ``check``, ``errors``: each runtime module
    that does not import, with why."""
    from importlib import metadata

    packages: dict[str, str | None] = {}
    for name in REPORTED:
        try:
            packages[name] = metadata.version(name)
        except Exception:  # noqa: BLE001 - absent or broken metadata: not installed as far as we can tell
            packages[name] = None
    out: dict[str, Any] = {
        "executable": sys.executable, "prefix": sys.prefix, "base_prefix": sys.base_prefix,
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "packages": {k: v for k, v in packages.items() if v is not None or k in RUNTIME_REQUIREMENTS},
        "path": [p for p in sys.path if p],
    }
    if check:
        errors = {}
        for module in RUNTIME_MODULES:
            try:
                __import__(module)
            except BaseException as exc:  # noqa: BLE001 - every failure is what the check reports
                errors[module] = f"{type(exc).__name__}: {exc}"
        out["errors"] = errors
    return out


def runtime(info: dict[str, Any]) -> dict[str, Any]:
    """What a provenance record keeps of an interpreter's description (no search path)."""
    return {k: info[k] for k in ("executable", "python", "implementation", "packages") if k in info}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    sys.stdout.write(json.dumps(describe(check="--check" in args)) + "\n")


if __name__ == "__main__":
    main()
