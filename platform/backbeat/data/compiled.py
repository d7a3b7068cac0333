"""The compiled per-unit path of a block, when built: :mod:`backbeat.data._unitpath` (C).

An identity block spends most of its CPU on BEAT's per-unit API run by the interpreter: the
driver's step (a dozen attribute stores on the input, its group and the listener, then the
``process`` call) and ``Output.write`` (docs/performance.md, waves 13 and 14).  The C module does
exactly what the Python code of :func:`backbeat.runtime.driver._drive_single` and of
:meth:`backbeat.runtime.outputs.Output._direct_write` (``write_plain``) do, with the per-step
attributes of :class:`~backbeat.runtime.inputs.Input`, :class:`~backbeat.runtime.inputs.InputGroup`,
:class:`~backbeat.runtime.outputs.SynchronizationListener` and :class:`~backbeat.runtime.outputs.Output`
kept in C slots (:data:`Slots`, their base): user code reads and sets them as before.

It is optional: ``pip install`` builds it when a C compiler is there (setup.py, ``optional=True``)
and the Python code runs otherwise, or when ``BACKBEAT_COMPILED=off`` (read once, at import: the
classes' base is chosen then).  The Python code is the reference: the tests run the data path
through both.
"""

from __future__ import annotations

import os
from collections import deque
from itertools import repeat
from typing import TYPE_CHECKING, Any

#: ``BACKBEAT_COMPILED=off`` (or 0, no, false): the pure-Python path even when the module is built
SWITCHED_OFF = os.environ.get("BACKBEAT_COMPILED", "").strip().lower() in ("off", "0", "no", "false")

native: Any = None
if not SWITCHED_OFF:
    try:
        from backbeat.data import _unitpath as native
    except ImportError:  # (not built: no compiler at install, or another interpreter's build)
        native = None

if TYPE_CHECKING:
    class Slots:
        """(For the type checker: the classes' attributes are declared in their own ``__init__``.)"""
elif native is not None:
    class Slots(native.Slots):
        """The C slots, copied and pickled with the instance's dictionary as a plain object's attributes are."""

        __slots__ = ()

        def __getstate__(self) -> dict:
            state = dict(getattr(self, "__dict__", {}))
            for name in native.Slots.__dict__:
                if not name.startswith("__") and hasattr(self, name):
                    state[name] = getattr(self, name)
            return state

        def __setstate__(self, state: dict) -> None:
            for name, value in state.items():
                object.__setattr__(self, name, value)
else:
    Slots = object


def _fill(objects: list, key: str, values: list) -> None:
    deque(map(object.__setattr__, objects, repeat(key), values), maxlen=0)


#: ``object.__setattr__(obj, key, value)`` over a window's value objects and their values for one field
#: (``data.batch``: the format's checked ``__setattr__`` bypassed; to the shorter list's end, as ``map``)
fill = native.fill if native is not None else _fill
