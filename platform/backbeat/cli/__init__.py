"""The ``backbeat`` command line: argument parsing and printing over :mod:`backbeat.api`.

Lives here: :mod:`~backbeat.cli.client` (the ``backbeat`` entry point: a thin client of the
warm template, importing almost nothing), :mod:`~backbeat.cli.command` (the parser, the command
table ``COMMANDS``, exit codes, :func:`main`), one module per command family (``assets``,
``run``, ``tools``, ``audit``, ``plot``, ``reports``, ``environments``), and
:mod:`~backbeat.cli.output` (printing helpers, argument types).
May import: :mod:`backbeat.api` and the ``core`` layer; nothing else (every verb goes through the API).
This package's ``__init__`` stays light: it is on the client's path.
"""

from __future__ import annotations

from backbeat.cli.client import entry

TYPE_CHECKING = False  # (``typing`` and ``collections.abc`` cost ~15 ms: not on the client's path)
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["entry", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line in this process (:func:`backbeat.cli.command.main`); its exit code."""
    from backbeat.cli.command import main as run

    return run(argv)
