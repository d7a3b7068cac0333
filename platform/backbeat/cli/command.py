"""``backbeat`` command line: argument parsing and printing over :mod:`backbeat.api`.

Exit codes: 0 success, 1 invalid input or failed run, 2 usage error, 128 + signal when
stopped by SIGINT (130), SIGTERM (143) or SIGHUP (129).  A :class:`~backbeat.errors.BackbeatError`
becomes one clear message on stderr; an unexpected exception too (set ``BACKBEAT_DEBUG=1`` to
see its traceback).

The three signals are handled alike (:func:`stopping`): the first raises
:class:`~backbeat.core.errors.Interrupted` in the main thread, so every block process is
stopped, temporaries are removed and the interrupted run is recorded on the way out; further
ones are ignored while that happens.  A signal ignored when the command starts (``nohup``, a
background job's SIGINT) stays ignored.  Commands that start block processes (``experiments
run|plot|sweep|audit``, ``databases index|view``, ``plotters plot``, ``audit``) also adopt the
orphans of their descendants (:func:`backbeat.api.adopt_orphans`), so nothing a block starts
outlives them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gettext
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from backbeat import __version__, api
from backbeat.cli import assets, attest, audit, environments, plot, reports, run, tools
from backbeat.core.errors import BackbeatError, Interrupted

#: The command modules, each adding its commands with ``register(subparsers, kinds)``;
#: ``assets`` comes first: it creates the per-kind groups (``kinds``) the others extend.
COMMANDS = (assets.register, run.register, tools.register, audit.register, attest.register, plot.register,
            reports.register, environments.register)


def _memoised_messages() -> None:
    """argparse translates its few messages (``show this help message and exit``…) for every
    parser it builds, and gettext searches the locale folders on each call (~370 searches, 20-30
    ms for backbeat's parser); the translation of a message does not change during a run."""
    if getattr(argparse, "_", None) is gettext.gettext:
        argparse._ = functools.lru_cache(maxsize=None)(gettext.gettext)  # type: ignore[attr-defined]


class _Unused:
    """Stands for the parser of a command the command line does not name: whatever registering
    it asks of it is accepted and dropped."""

    def __getattr__(self, name: str) -> Callable[..., _Unused]:
        return lambda *args, **kwargs: self


class _Only:
    """The top-level commands, restricted to the one the command line names (building the
    parsers of all ~110 sub-commands costs ~15 ms, on every command)."""

    def __init__(self, sub: argparse._SubParsersAction, name: str) -> None:
        self.sub, self.name = sub, name

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser | _Unused:
        return self.sub.add_parser(name, **kwargs) if name == self.name else _Unused()


def _named(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first argument that is neither an option nor the value of
    ``-p``/``-c``; None when it asks for the top-level help or version (``--version``: "")."""
    args = iter(argv)
    for arg in args:
        if arg in ("-h", "--help", "--version"):
            return "" if arg == "--version" else None
        if arg in ("-p", "--prefix", "-c", "--cache"):
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser; given ``argv``, only the command it names is built (all of them
    when it names none or an unknown one: the help and the error list them)."""
    _memoised_messages()
    parser = argparse.ArgumentParser(
        prog="backbeat", description="Declarative, reproducible experiments on BEAT prefixes."
    )
    parser.add_argument("--version", action="version", version=f"backbeat {__version__}")
    parser.add_argument("-p", "--prefix", default=None, help="prefix folder (default: ./prefix)")
    parser.add_argument("-c", "--cache", default=None, help="cache folder (default: <prefix>/cache)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    name = _named(argv) if argv is not None else None
    if name == "":  # ``--version``: argparse prints it as it meets it, no command is needed (~15 ms)
        return parser
    target = cast(argparse._SubParsersAction, _Only(sub, name)) if name else sub
    kinds: dict[str, argparse._SubParsersAction] = {}
    for register in COMMANDS:
        register(target, kinds)
    if name and name not in sub.choices:
        return build_parser()
    return parser


def warm() -> None:
    """Build the whole parser once: argparse's messages and patterns are then cached (a warm
    template does it once for all the commands it serves)."""
    build_parser()


#: the signals that stop a command (as Ctrl-C does)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def stopping() -> Iterator[None]:
    """While the command runs, SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (once)."""
    stopped = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopped
        if stopped:  # already stopping: let the cleanup finish
            return
        stopped = True
        raise Interrupted(signum)

    previous = {}
    for sig in STOP_SIGNALS:
        try:
            if signal.getsignal(sig) != signal.SIG_IGN:
                previous[sig] = signal.signal(sig, stop)
        except ValueError:  # not the main thread: signals stay as they are
            break
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupted(exc: KeyboardInterrupt) -> int:
    stop = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
    record = (stop.report or {}).get("provenance")
    print(f"backbeat: interrupted by {stop.signal_name}" + (f"; the interrupted run is recorded in {record}"
                                                             if record else ""), file=sys.stderr)
    return stop.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    with stopping():
        try:
            return _main(argv)
        except KeyboardInterrupt as exc:  # (a signal during argument parsing or configuration)
            return _interrupted(exc)


def _main(argv: Sequence[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "handler", None) is None:
        args.parser.print_help(sys.stderr)
        return 2
    from backbeat.core import config

    try:
        cfg = config.load()
    except BackbeatError as exc:
        print(f"backbeat: error: {exc}", file=sys.stderr)
        return exc.exit_code
    config.activate(cfg)
    args.prefix, args.cache = config.resolve(cfg, args.prefix, args.cache)
    if os.path.exists(args.cache) and not os.path.isdir(args.cache):
        print(f"backbeat: error: cache folder `{args.cache}' exists and is not a folder", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except BackbeatError as exc:
        print(f"backbeat: error: {exc}", file=sys.stderr)
        user = getattr(exc, "traceback", None)  # user code failed (e.g. a database view): its own frames
        if isinstance(user, str) and user:
            print("  " + user.rstrip().replace("\n", "\n  "), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except BrokenPipeError:
        return 1
    except Exception as exc:  # never show a raw traceback to users
        if os.environ.get("BACKBEAT_DEBUG"):
            raise
        print(f"backbeat: internal error: {type(exc).__name__}: {exc} (set BACKBEAT_DEBUG=1 for details)",
              file=sys.stderr)
        return 3


def entry() -> None:
    """The command in this process (the client's fallback, or a template's child serving it)."""
    try:
        code = main()
    finally:  # (``--help``, ``--version``: SystemExit)
        with contextlib.suppress(Exception):  # (never fails the command)
            api.warm_template()  # (run here: the next commands of this context are served)
    leave(code)


def leave(code: int) -> None:
    """Exit with ``code`` without tearing down every module (20-40 ms after a run that loaded
    numpy, h5py or zmq): once the output is flushed and the exit handlers have run, nothing is
    left to do.  With other threads alive (a library's), the ordinary exit waits for them."""
    import threading

    from backbeat.core.exiting import run_exit_handlers

    if threading.active_count() > 1:
        sys.exit(code)
    try:
        code = run_exit_handlers(code)
    except BaseException:  # noqa: BLE001 - leave the ordinary way: it reports what went wrong
        sys.exit(code)
    os._exit(code)

