"""The ``backbeat`` command line: argument parsing and printing over :mod:`backbeat.api`.

Lives here: :mod:`~backbeat.cli.main` (the parser, the command table ``COMMANDS``, exit
codes), one module per command family (``assets``, ``run``, ``tools``, ``audit``, ``plot``,
``reports``, ``environments``),
and :mod:`~backbeat.cli.output` (printing helpers, argument types).
May import: :mod:`backbeat.api` and the ``core`` layer; nothing else (every verb goes through the API).
"""

from __future__ import annotations

from backbeat.cli.main import entry, main

__all__ = ["entry", "main"]
