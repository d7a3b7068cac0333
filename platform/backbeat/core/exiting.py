"""What the interpreter does as it exits, done by hand: for processes that leave through
``os._exit`` (a command, a served command's child) without tearing every module down; and the
work a command may leave for after its answer.

*After the answer* (:func:`after_answer`): a command served by a warm template
(:mod:`backbeat.processes.templateserver`) tells its client its exit status, lets go of the
client's streams, then runs the work left for after its answer before its process ends — the
client (and whoever waits for it) no longer waits for it.  Only such a process accepts that work
(:func:`answer_later`); anywhere else :func:`after_answer` refuses it and the caller does the work
at once, as before.
"""

from __future__ import annotations

import atexit
import contextlib
import sys
from collections.abc import Callable

#: the work left for after the answer; None: this process does not run any (do it now)
_after: list[Callable[[], object]] | None = None


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


def answer_later() -> None:
    """This process runs the work left for after its answer (:func:`run_after_answer`)."""
    global _after
    _after = []


def forget() -> None:
    """A process forked from one that answers later runs no such work (it never answers)."""
    global _after
    _after = None


def answers_later() -> bool:
    """Whether this process answers before its last work (a command served by a warm template):
    what it leaves for after its answer does not delay its client."""
    return _after is not None


def after_answer(work: Callable[[], object]) -> bool:
    """Leave ``work`` for after the command's answer; False (nothing left) when this process
    runs none: the caller does it now."""
    if _after is None:
        return False
    _after.append(work)
    return True


def pending() -> bool:
    """Whether work was left for after the answer."""
    return bool(_after)


def run_after_answer() -> None:
    """Run the work left for after the answer, in order.  The client heard the answer already: a
    failure is only said on the standard error — a served command's is its template's log by
    then — (the work left there must leave things as safe as not doing it)."""
    while _after:
        work = _after.pop(0)
        try:
            work()
        except BaseException:  # noqa: BLE001 - said, never raised: the answer is given
            with contextlib.suppress(BaseException):
                import traceback

                traceback.print_exc()
