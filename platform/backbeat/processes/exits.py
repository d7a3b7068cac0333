"""How a child process ended (:class:`Exit`), and the limits it ran under (:class:`Limits`).

Exit classification: ``ok``, ``exit`` (code), ``signal`` (name), ``timeout`` (killed after
``timeout_s``), ``memory`` (the child exited with :data:`EXIT_MEMORY` after a ``MemoryError``,
or the kernel's out-of-memory killer killed it: ``oom`` then says how much memory there was,
:func:`memory_ceiling`), ``lost`` (its fork server died, and the child with it).

The kernel's OOM killer sends a plain SIGKILL; a SIGKILL that backbeat did not send, to a
child that ended while the kernel's count of OOM kills (:func:`oom_kills`) went up, is taken
for one.
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
    #: killed by the kernel's OOM killer: ``{"limit": bytes, "scope": "cgroup" | "machine"}``
    oom: dict | None = None
    #: when its time limit started counting, in seconds of ``wall_s`` (0: at its start; a limit set
    #: later, ``set_timeout``: a streamed consumer's, from its producer's end)
    timed_from_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.kind == "ok"

    def describe(self, limit_s: float | None = None) -> str:
        """How it ended, in words; ``limit_s``: the time limit it ran under (named when exceeded)."""
        if self.kind == "ok":
            return "exited normally"
        if self.kind == "exit":
            return f"exited with code {self.code}"
        if self.kind == "signal":
            return f"killed by signal {self.signal}"
        if self.kind == "timeout":
            limit = f" of {limit_s:g} s" if limit_s else ""
            if self.timed_from_s >= 0.05:  # (both figures from the same clock: they add up; never 'from 0.0 s')
                limit += f", counted from {self.timed_from_s:.1f} s after it started"
            return f"killed after exceeding its time limit{limit} (it ran {self.wall_s:.1f} s)"
        if self.kind == "lost":
            return f"lost with its fork server (killed by {self.signal})"
        if self.oom is not None:
            return "killed by the kernel's out-of-memory killer"
        return "ran out of memory (over its memory limit)"


def classify_status(status: int, reason: str | None = None, wall_s: float = 0.0,
                    rusage: dict | None = None, oom: dict | None = None, timed_from_s: float = 0.0) -> Exit:
    """Turn a raw ``waitpid`` status (plus the server's ``reason``) into an :class:`Exit`."""
    ru = rusage or {}
    if reason == "timeout":
        return Exit("timeout", signal="SIGKILL", wall_s=wall_s, rusage=ru, timed_from_s=timed_from_s)
    if reason == "oom":
        return Exit("memory", signal="SIGKILL", wall_s=wall_s, rusage=ru, oom=oom or {})
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


def oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has killed since boot (None if not known)."""
    try:  # (read whole and searched: the zygote asks once per fork; a loop over its ~180 lines cost 0.25 ms)
        with open("/proc/vmstat", "rb", buffering=0) as f:
            text = b"\n" + f.read(1 << 16)
    except OSError:
        return None
    at = text.find(b"\noom_kill ") + len(b"\noom_kill ")
    end = text.find(b"\n", at)
    if at < len(b"\noom_kill ") or end < 0:
        return None
    try:
        return int(text[at:end])
    except ValueError:
        return None


def memory_ceiling() -> dict:
    """The memory this process may use: ``{"limit": bytes, "scope": "cgroup"}`` (the smallest limit
    of its memory cgroup and their parents, cgroup v1 or v2) or ``{"limit": MemTotal, "scope": "machine"}``."""
    total = 0
    try:
        with open("/proc/meminfo") as f:
            total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        pass
    limits = []
    try:
        with open("/proc/self/cgroup") as f:
            groups = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        groups = []
    for _hid, controllers, path in groups:
        if "memory" in controllers.split(","):
            candidates = [("/sys/fs/cgroup/memory", "memory.limit_in_bytes")]
        elif controllers == "":
            candidates = [("/sys/fs/cgroup", "memory.max"), ("/sys/fs/cgroup/unified", "memory.max")]
        else:
            continue
        for root, name in candidates:
            folder = path
            while True:
                try:
                    with open(f"{root}{folder.rstrip('/')}/{name}") as f:
                        text = f.read().strip()
                    if text.isdigit():
                        limits.append(int(text))
                except OSError:
                    pass
                if folder in ("/", ""):
                    break
                folder = folder.rsplit("/", 1)[0] or "/"
    cgroup = min((n for n in limits if n > 0), default=None)
    if cgroup is not None and (not total or cgroup < total):
        return {"limit": cgroup, "scope": "cgroup"}
    return {"limit": total, "scope": "machine"}
