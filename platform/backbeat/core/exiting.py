"""What the interpreter does as it exits, done by hand: for processes that leave through
``os._exit`` (a command, a served command's child) without tearing every module down."""

from __future__ import annotations

import atexit
import sys


def run_exit_handlers(code: int) -> int:
    """Run the exit handlers and flush the standard streams; the exit status (a closed pipe on
    output: ``code`` or 1).  Anything else a handler raises propagates."""
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        code = code or 1
    return code
