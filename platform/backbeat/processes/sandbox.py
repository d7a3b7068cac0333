"""The sandbox: fork servers (and so every block process, indexing job and database provider)
started inside bubblewrap (``bwrap``), see ``docs/security.md``.

One ``bwrap`` per fork server, not per block: the zygote starts in the sandbox (in the
environment's interpreter), so its children — forked in a few milliseconds — are in it too.
What a process in the sandbox sees and may do (:meth:`Sandbox.command`):

* a file system made of bind mounts only: the system's programs and libraries (``/usr``, and the
  ``/bin``, ``/lib*``, ``/sbin`` links), a few files of ``/etc`` the dynamic loader and the C
  library need, the interpreter's own folders, backbeat's package — all read-only; the
  ``read_only`` folders (the prefix, the cache, the databases' root folders); the ``writable``
  folders (the run's private folder of sockets, the staging folder its blocks write their outputs
  to, see :mod:`backbeat.execution.sandboxing`); a private ``/tmp`` (tmpfs), ``/proc`` and a
  minimal ``/dev``.  Nothing else exists: no home folder, no other users' files, no ``/etc/shadow``;
* no network (its own network namespace, with only a loopback interface nothing outside reaches);
* its own PID namespace, whose first process (PID 1) is the zygote: no process outside is visible
  or can be signalled, and the zygote cannot be killed from inside (the kernel protects a
  namespace's init from its own processes); when the fork server closes, every process left in
  the sandbox is killed with it; the sandbox dies with its parent (``--die-with-parent``);
* no capability, a new session (no terminal to inject keystrokes into), its own IPC and UTS
  namespaces; environment variables filtered (:func:`environment`): no secrets of the user's
  session (tokens, credentials) reach user code;
* default limits for blocks (:data:`DEFAULT_TIMEOUT_S`, :data:`DEFAULT_MEMORY_BYTES`, :func:`limits`)
  unless the run sets its own (the database provider lives as long as the run).

:func:`require` fails with a clear message where ``bwrap`` is missing or cannot create namespaces.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from dataclasses import dataclass

from backbeat.core.errors import UsageError
from backbeat.processes.exits import Limits
from backbeat.processes.outcome import SANDBOXED, Outcome

BWRAP = "bwrap"
#: time and memory limits of a block in the sandbox when the run sets none
DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_MEMORY_BYTES = 8 << 30
#: files of /etc the dynamic loader, the C library and Python read (bound read-only when present)
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "host.conf",
             "alternatives", "mime.types")
#: environment variables passed into the sandbox (every other one is dropped), and prefixes of such names
ENV_KEEP = ("PATH", "LANG", "LANGUAGE", "TZ", "TERM", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE",
            "PYTHONUNBUFFERED", "PYTHONWARNINGS", "PYTHONFAULTHANDLER")
ENV_KEEP_PREFIXES = ("LC_", "OPENBLAS_", "OMP_", "MKL_", "BLIS_", "NUMEXPR_", "HDF5_")


class SandboxUnavailable(UsageError):
    """The sandbox was asked for but cannot work on this machine."""


def bwrap_path() -> str | None:
    return shutil.which(BWRAP)


_CHECKED: dict[str, str | None] = {}


def require() -> str:
    """The ``bwrap`` executable, checked to work here; :class:`SandboxUnavailable` says why not."""
    path = bwrap_path()
    if path is None:
        raise SandboxUnavailable(
            "the sandbox needs bubblewrap, and `bwrap' is not on the PATH: install it (Debian/Ubuntu: "
            "`apt-get install bubblewrap'; Fedora: `dnf install bubblewrap'), or run without --sandbox")
    if path not in _CHECKED:
        try:
            proc = subprocess.run([path, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
                                  capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            _CHECKED[path] = None if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            _CHECKED[path] = str(exc)
    if _CHECKED[path] is not None:
        raise SandboxUnavailable(
            f"the sandbox needs bubblewrap (`{path}') to create namespaces, and it cannot here: {_CHECKED[path]} "
            f"(unprivileged user namespaces may be disabled: sysctl kernel.unprivileged_userns_clone=1 or "
            f"user.max_user_namespaces > 0)")
    return path


def environment(base: dict[str, str] | None = None, pythonpath: str | None = None) -> dict[str, str]:
    """The environment variables a sandboxed process gets: :data:`ENV_KEEP` and :data:`ENV_KEEP_PREFIXES`
    from ``base``, ``PYTHONPATH`` (backbeat's runtime), ``HOME`` and ``TMPDIR`` in its private ``/tmp``."""
    src = dict(os.environ if base is None else base)
    env = {k: v for k, v in src.items() if k in ENV_KEEP or k.startswith(ENV_KEEP_PREFIXES)}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(HOME="/tmp", TMPDIR="/tmp", PYTHONDONTWRITEBYTECODE="1")
    env[SANDBOXED] = "1"  # (a read-only file system is then the sandbox's denial, not the machine's failure)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def _existing(paths: list[str]) -> list[str]:
    """Absolute, resolved, existing, without duplicates or paths inside another one of the list."""
    found: list[str] = []
    for p in paths:
        if not p:
            continue
        real = os.path.realpath(p)
        if os.path.exists(real) and real not in found:
            found.append(real)
    found.sort(key=len)
    out: list[str] = []
    for p in found:
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


def interpreter_paths(info: dict) -> list[str]:
    """The folders an interpreter needs (from :func:`backbeat.processes.interpreter.describe`):
    its prefixes, its executable's folder (and where its links lead) and its module search path."""
    paths = [info.get("prefix", ""), info.get("base_prefix", "")]
    exe = info.get("executable") or ""
    if exe:
        paths += [os.path.dirname(exe), os.path.dirname(os.path.realpath(exe))]
    for p in info.get("path", []):
        # a zip or an egg on the path: bind the folder holding it
        paths.append(p if os.path.isdir(p) else os.path.dirname(p))
    # never a whole system or home folder (e.g. a .pth file naming one): only what lies inside them
    broad = {"/", "/usr", "/tmp", "/home", "/root", "/etc", "/var", os.path.expanduser("~")}
    return [p for p in paths if p and os.path.realpath(p) not in broad and not p.startswith("/usr/")]


@dataclass(frozen=True)
class Sandbox:
    """What one sandboxed fork server may read and write besides the system and its interpreter."""

    read_only: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()

    def command(self, python: str, info: dict, runtime_path: str | None = None) -> list[str]:
        """The ``bwrap`` argv (to which the interpreter's argv is appended) for ``python``, described
        by ``info`` (:func:`backbeat.processes.interpreter.describe`)."""
        argv = [require(), "--unshare-all", "--die-with-parent", "--as-pid-1", "--new-session",
                "--cap-drop", "ALL", "--ro-bind", "/usr", "/usr"]
        for link in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(link):
                argv += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                argv += ["--ro-bind", link, link]
        for name in ETC_FILES:
            argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        own = interpreter_paths(info) + [os.path.dirname(python), os.path.dirname(os.path.realpath(python))]
        if runtime_path is not None:
            from backbeat.processes.environments import package_dir

            own += [runtime_path, package_dir()]
        writable = _existing(list(self.writable))
        read_only = [p for p in _existing(own + list(self.read_only)) if p != "/usr" and not p.startswith("/usr/")]
        # read-only first, then the writable folders (later mounts cover earlier ones)
        for p in read_only:
            argv += ["--ro-bind", p, p]
        for p in writable:
            argv += ["--bind", p, p]
        argv += ["--chdir", "/tmp"]
        return argv


def limits(given: Limits | None) -> Limits:
    """A sandboxed job's limits: those given, :data:`DEFAULT_TIMEOUT_S` and :data:`DEFAULT_MEMORY_BYTES`
    where none is given."""
    given = given or Limits()
    return Limits(given.timeout_s if given.timeout_s is not None else DEFAULT_TIMEOUT_S,
                  given.memory_bytes if given.memory_bytes is not None else DEFAULT_MEMORY_BYTES)


def explain(outcome: Outcome) -> Outcome:
    """A failed sandboxed job's outcome, saying what the sandbox denied when its error is a denial."""
    if outcome.ok or outcome.kind != "user":
        return outcome
    text = f"{outcome.message}\n{outcome.traceback or ''}"
    hints = (
        ("Read-only file system", "the sandbox makes the prefix and the cache read-only"),
        ("Network is unreachable", "the sandbox has no network"),
        ("Temporary failure in name resolution", "the sandbox has no network"),
        ("Connection refused", "the sandbox has no network: its loopback interface is its own"),
        ("No such process", "no process outside the sandbox is visible from it"),
        ("No such file or directory", "the sandbox shows only the prefix, the cache, the databases' folders and "
                                      "the interpreter"),
        ("Operation not permitted", "not permitted in the sandbox"),
        ("Permission denied", "not permitted in the sandbox"),
    )
    for needle, hint in hints:
        if needle in text:
            return dataclasses.replace(outcome, message=f"{outcome.message} [denied by the sandbox: {hint}]")
    return outcome
