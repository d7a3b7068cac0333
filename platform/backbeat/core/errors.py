"""One exception hierarchy for backbeat, and the structured :class:`Problem`.

Validation never raises for bad declarations: it *collects* :class:`Problem` records
(asset, file, JSON pointer, message).  Exceptions are for conditions that stop an
operation (a name outside the grammar, an asset that does not exist, a corrupted cache
file, a failed block).  Every exception here derives from :class:`BackbeatError`, which
the CLI turns into a clear message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import errno
import re
import signal
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One error (or, with ``severity="warning"``, one non-fatal remark) about a declaration.

    ``pointer`` is an RFC 6901 JSON pointer into the declaration (``""`` = whole
    document); ``asset`` is ``"<kind>/<name>"``; ``file`` the file it was read from, and
    ``line`` the line in it when the file is code (a syntax error in an algorithm).  A warning never makes an asset invalid (``"normalise": "false"`` for a boolean is
    accepted, as BEAT does, and said to mean true).
    """

    message: str
    pointer: str = ""
    file: str | None = None
    asset: str | None = None
    severity: str = "error"  # "error" or "warning"
    line: int | None = None

    @property
    def is_warning(self) -> bool:
        return self.severity == "warning"

    @property
    def where(self) -> str:
        """``file: /pointer`` (declarations) or ``file:line`` (code)."""
        where = self.file or self.asset or "?"
        if self.line is not None:
            return f"{where}:{self.line}"
        if self.pointer or not self.file or self.file.endswith(".json"):
            return f"{where}: {self.pointer or '/'}"
        return where

    @property
    def brief(self) -> str:
        """The message, with ``(file:line)`` for a problem in code (to quote it in another asset's problem)."""
        return f"{self.message} ({self.file}:{self.line})" if self.line is not None else self.message

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def to_json(self) -> dict:
        """``{asset, file, pointer, message}``, plus ``line`` for problems in code."""
        out: dict[str, object] = {"asset": self.asset, "file": self.file, "pointer": self.pointer,
                                  "message": self.message}
        if self.line is not None:
            out["line"] = self.line
        return out


def pointer(*parts: object) -> str:
    """Build an RFC 6901 JSON pointer from path parts.

    >>> pointer("blocks", 0, "a/b~c")
    '/blocks/0/a~1b~0c'
    >>> pointer()
    ''
    """
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


class BackbeatError(Exception):
    """Base of every error backbeat raises on purpose."""

    exit_code = 1


class UsageError(BackbeatError):
    """The command line or an API call was used wrongly."""

    exit_code = 2


class InvalidNameError(BackbeatError):
    """An asset name does not match its kind's grammar (checked before any file access)."""

    exit_code = 2


class AssetNotFoundError(BackbeatError):
    """A named asset does not exist in the prefix."""


@dataclass
class InvalidAssetError(BackbeatError):
    """An asset was needed but is invalid; carries every problem found."""

    asset: str
    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.asset} is invalid:"] + [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class DataError(BackbeatError):
    """A value does not fit its dataformat, or data on disk or wire is malformed."""


class IntegrityError(DataError):
    """A cache file's content digest does not match, or a file is incomplete."""


class WireError(DataError):
    """A ZeroMQ message is malformed, truncated or of the wrong dataformat."""


class ExecutionError(BackbeatError):
    """An experiment could not be planned or run."""


class UserCodeError(ExecutionError):
    """User code failed in another process (e.g. a database view in the provider).

    Carries that process's message and traceback (already relative to the prefix) so the
    block reading from it reports the user's error, not backbeat's frames.
    """

    error_kind = "user"

    def __init__(self, message: str, traceback: str = ""):
        super().__init__(message)
        self.message = message
        self.traceback = traceback


@dataclass
class BlockError(ExecutionError):
    """A block failed; ``kind`` is e.g. ``"user"``, ``"exit"``, ``"signal"``, ``"timeout"``."""

    block: str
    kind: str
    message: str
    traceback: str | None = None

    def __str__(self) -> str:
        text = f"block `{self.block}' failed ({self.kind}): {self.message}"
        if self.traceback:
            text += "\n" + self.traceback
        return text


class EnvironmentFailure(ExecutionError):
    """The machine failed the operation, not its input: a full disk, a read-only cache, too many
    open files…  Reported as a ``system`` error with a message saying what and where (never as
    the user's error, never with a traceback)."""

    error_kind = "system"


class Interrupted(KeyboardInterrupt):
    """The command was stopped by a signal (SIGINT, SIGTERM or SIGHUP); it exits with 128 + signal.

    Raised in the main thread by the command line's signal handlers, so that every ``finally``
    on the way up stops processes and removes temporaries, as for Ctrl-C.  What was done before
    the signal travels with it: ``report``, the run report of the interrupted run (set by the
    executor, once recorded), and ``done``, the output of a command running several
    experiments (``experiments run A B``).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.report: dict | None = None
        self.done: dict | None = None

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


#: errno values that say the environment failed (not the input): what the message calls them
ENVIRONMENTAL = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EIO: "input/output error",
                 errno.EMFILE: "too many open files", errno.ENFILE: "too many open files in the system"}
_H5_FILE = re.compile(r"filename = '([^']*)'")
_TEMPORARY = re.compile(r"\.tmp-\d+-[0-9a-f]+$")


def environmental(exc: BaseException | None) -> OSError | None:
    """The environmental ``OSError`` behind ``exc`` (itself, its cause or context), or None."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENTAL:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def describe_environmental(err: OSError, path: object = None, doing: str = "writing",
                           cache: str | None = None) -> str:
    """A one-line account of an environmental failure: ``disk full writing `PATH'``,
    ``read-only file system (writing `PATH')``.

    The path is ``path`` if given, else the one the error names (HDF5 names it in its message);
    a writer's temporary is named by the file it was to become.  With ``cache`` (its location),
    a read-only file system is said to be the cache's: ``cache `C' is read-only (writing `PATH')``.
    """
    what = ENVIRONMENTAL.get(err.errno or 0, err.strerror or str(err) or "system error")
    if err.errno == errno.EROFS and cache is not None:
        what = f"cache `{cache}' is read-only"
    where = path if path is not None else err.filename
    if where is None:
        m = _H5_FILE.search(str(err))
        where = m.group(1) if m else None
    if where is None:
        return what
    where = _TEMPORARY.sub("", str(where))
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{what} {doing} `{where}'"
    return f"{what} ({doing} `{where}')"
