"""The standard streams of a process forked from another: rebuilt over its descriptors 0, 1 and 2.

A zygote's children (their output goes to their job's log) and the processes a warm template
forks (a run's zygote, a served command adopting its client's streams) must not write through
the stream objects of the process they were forked from, which may stand for other descriptors.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any


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
