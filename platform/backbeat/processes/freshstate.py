"""What a child of the zygote starts with: fresh entropy, its own standard streams, default signals.

A forked child inherits its parent's random number generators and ``sys`` streams.  Each child
must draw its own numbers (an unseeded algorithm must not look deterministic) and write to its
own fds 1 and 2 (its log pipe).  The zygote prepares what it can before each fork, where it is
cheap (:func:`seed_numpy`, :func:`prepare_std_streams`): doing it in each child cost every
block process ~0.5 ms of CPU and ~250 copied pages (``docs/performance.md``, "After wave 6
(perf-f)"); :func:`fresh_random_state` and :func:`fresh_std_streams` do it all in the child
(a child forked from elsewhere: the multiprocessing fallback, a template's zygote; a command
served by a template adopts its client's streams through it too).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (see reset_signals)
import io
import os
import signal
import sys
from typing import Any

#: the signals a child gets back at their default disposition (plain ints: see reset_signals)
_DEFAULTED = tuple(int(s) for s in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                                    signal.SIGUSR2, signal.SIGALRM))
_SIGINT, _SIGPIPE = int(signal.SIGINT), int(signal.SIGPIPE)


def reset_signals() -> None:
    """Give a forked child the signal dispositions of a fresh Python process.  Through ``_signal``,
    the C module: ``signal.signal`` and ``signal.pthread_sigmask`` convert what they return into
    enum members (nine calls: ~0.5 ms and ~60 copied pages of a fresh child)."""
    try:
        _signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    for sig in _DEFAULTED:
        _signal.signal(sig, _signal.SIG_DFL)
    _signal.signal(_SIGINT, _signal.default_int_handler)
    _signal.signal(_SIGPIPE, _signal.SIG_IGN)  # as Python itself sets it
    if hasattr(_signal, "pthread_sigmask"):
        _signal.pthread_sigmask(_signal.SIG_SETMASK, ())


def fresh_random_state() -> None:
    """Give the child fresh entropy, as a new interpreter would have.

    A forked child inherits the zygote's random number generators: without this, every
    block using numpy's (or Python's) global generator unseeded would draw the same
    numbers, and an unseeded — non-deterministic — algorithm would look deterministic.
    """
    import random

    random.seed()
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()


#: the words of a Mersenne Twister's state (numpy's global generator: MT19937)
_MT_WORDS = 624


def seed_numpy() -> None:
    """In the zygote, just before a fork: a fresh state for numpy's global generator, which the
    child inherits — its 624 words straight from the OS (more entropy than the 128 bits a new
    interpreter seeds it with), set with ``set_state``.  Seeding it in each child instead
    (``numpy.random.seed()``) cost every block process ~0.5 ms and ~100 pages copied; here, where
    each fork has just shared every page again, ``seed(<128 bits>)`` cost 0.7 ms and ~100 faults
    (an exception caught and five ufunc calls inside numpy's legacy seeding), ``set_state`` 0.45 ms
    and ~60 (``docs/performance.md``, "Wave 8 (perf-l)").  The words are given as a list of ints:
    numpy copies the key word by word (``key[i]``), and indexing an array made a numpy scalar of
    each (~0.1 ms a fork more: "Wave 13 (perf-cmd)")."""
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.set_state(("MT19937", memoryview(os.urandom(4 * _MT_WORDS)).cast("I").tolist(), _MT_WORDS))


#: ``sys.stdin``/``stdout``/``stderr`` for the zygote's children, made by :func:`prepare_std_streams`
_STREAMS: tuple[Any, Any, Any] | None = None


def prepare_std_streams() -> bool:
    """In the zygote, once: the standard stream objects of its children (over fds 0, 1 and 2, which
    each child points at /dev/null and its log pipe), made here once instead of in each child
    (~90 pages copied there).  The zygote never uses them: their buffers are empty when it forks."""
    global _STREAMS
    if _STREAMS is None:
        try:
            _STREAMS = (open(0, closefd=False), open(1, "w", closefd=False, buffering=1),  # noqa: SIM115
                        open(2, "w", closefd=False, buffering=1))  # noqa: SIM115
        except (OSError, ValueError):  # (a closed fd 0 in the zygote...) each child makes its own
            return False
    return True


def child_std_streams() -> None:
    """stdin from /dev/null; ``sys.stdin``/``stdout``/``stderr`` over fds 0, 1 and 2: those the
    zygote prepared (:func:`prepare_std_streams`), else new ones (:func:`fresh_std_streams`)."""
    if _STREAMS is None:
        fresh_std_streams()
        return
    null = os.open(os.devnull, os.O_RDONLY)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    sys.stdin, sys.stdout, sys.stderr = _STREAMS


def fresh_std_streams(stdin: bool = False, line_buffered: bool = True) -> None:
    """``sys.stdin``/``sys.stdout``/``sys.stderr`` rebuilt over fds 0, 1 and 2, with the encoding
    and error handler of the ones they replace (those Python chose at start-up from the locale);
    stdin from /dev/null unless ``stdin``.  ``line_buffered`` False: as Python builds them at
    start-up (stdout line-buffered on a terminal only, stderr always; written through with ``-u``), the
    originals ``sys.__stdout__``… too.

    The caller may have replaced them (e.g. pytest's capture) with objects over fds that
    the child has just closed; a command served by a template adopts its client's fds.
    """
    if not stdin:
        null = os.open(os.devnull, os.O_RDONLY)
        if null != 0:
            os.dup2(null, 0)
            os.close(null)
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        old = getattr(sys, f"__{name}__", None) or getattr(sys, name)
        encoding, errors = getattr(old, "encoding", None), getattr(old, "errors", None)
        stream: Any
        if fd == 0:
            stream = open(0, closefd=False, encoding=encoding, errors=errors, newline="\n")  # noqa: SIM115
        elif line_buffered:
            stream = open(fd, "w", buffering=1, closefd=False, encoding=encoding, errors=errors,  # noqa: SIM115
                          newline="\n")
        else:  # (``-u``, PYTHONUNBUFFERED: written through, as the replaced one)
            raw = io.FileIO(fd, "w", closefd=False)
            plain = bool(getattr(old, "write_through", False))
            stream = io.TextIOWrapper(raw if plain else io.BufferedWriter(raw), encoding, errors, "\n",
                                      line_buffering=not plain and (fd == 2 or raw.isatty()), write_through=plain)
        setattr(sys, name, stream)
        if not line_buffered:
            setattr(sys, f"__{name}__", stream)
