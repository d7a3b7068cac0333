"""How a child process ended (:class:`Exit`), and the limits it ran under (:class:`Limits`).

Exit classification: ``ok``, ``exit`` (code), ``signal`` (name), ``timeout`` (killed after
``timeout_s``), ``memory`` (the child exited with :data:`EXIT_MEMORY` after a ``MemoryError``).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

#: Exit code a child uses to say "MemoryError" (a user ``sys.exit(251)`` looks the same).
EXIT_MEMORY = 251
#: Exit code of a child whose target could not be imported (bad ``module:function``).
EXIT_BOOT = 252


@dataclass(frozen=True)
class Limits:
    """Per-job limits: wall-clock ``timeout_s`` and address-space ``memory_bytes``.

    ``memory_bytes`` is applied as ``RLIMIT_AS`` on the whole child, which starts with the
    zygote's address space (~160 MB with numpy+h5py+zmq), so it must be well above that.
    """

    timeout_s: float | None = None
    memory_bytes: int | None = None

    def to_json(self) -> dict:
        return {"timeout_s": self.timeout_s, "memory_bytes": self.memory_bytes}


@dataclass(frozen=True)
class Exit:
    """How a child ended.  ``kind`` is ``ok``, ``exit``, ``signal``, ``timeout`` or ``memory``."""

    kind: str
    code: int | None = None
    signal: str | None = None
    wall_s: float = 0.0
    rusage: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    def describe(self) -> str:
        if self.kind == "ok":
            return "exited normally"
        if self.kind == "exit":
            return f"exited with code {self.code}"
        if self.kind == "signal":
            return f"killed by signal {self.signal}"
        if self.kind == "timeout":
            return f"killed after exceeding its time limit ({self.wall_s:.1f} s)"
        return "ran out of memory (over its memory limit)"


def classify_status(status: int, reason: str | None = None, wall_s: float = 0.0,
                    rusage: dict | None = None) -> Exit:
    """Turn a raw ``waitpid`` status (plus the server's ``reason``) into an :class:`Exit`."""
    ru = rusage or {}
    if reason == "timeout":
        return Exit("timeout", signal="SIGKILL", wall_s=wall_s, rusage=ru)
    if os.WIFSIGNALED(status):
        num = os.WTERMSIG(status)
        return Exit("signal", signal=signame(num), wall_s=wall_s, rusage=ru)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    return from_code(code, wall_s, ru)


def from_code(code: int, wall_s: float, ru: dict) -> Exit:
    """The :class:`Exit` of a child that exited with ``code``."""
    if code == 0:
        return Exit("ok", code=0, wall_s=wall_s, rusage=ru)
    if code == EXIT_MEMORY:
        return Exit("memory", code=code, wall_s=wall_s, rusage=ru)
    return Exit("exit", code=code, wall_s=wall_s, rusage=ru)


def signame(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"SIG{num}"
