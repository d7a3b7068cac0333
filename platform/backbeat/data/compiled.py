"""The compiled per-unit path of a block, when built: :mod:`backbeat.data._unitpath` (C).

An identity block spends most of its CPU on BEAT's per-unit API run by the interpreter: the
driver's step (a dozen attribute stores on the input, its group and the listener, then the
``process`` call) and ``Output.write`` (docs/performance.md, waves 13 and 14).  The C module does
exactly what the Python code of :func:`backbeat.runtime.driver._drive_single` and of
:meth:`backbeat.runtime.outputs.Output._direct_write` (``write_plain``) do, with the per-step
attributes of :class:`~backbeat.runtime.inputs.Input`, :class:`~backbeat.runtime.inputs.InputGroup`,
:class:`~backbeat.runtime.outputs.SynchronizationListener` and :class:`~backbeat.runtime.outputs.Output`
kept in C slots (:data:`Slots`, their base): user code reads and sets them as before.
Since wave 15 it also checks whether a spare window's value objects can be made again
(:func:`backbeat.data.recycling.unreachable`: the same checks in one pass), makes new ones, and
packs a cache writer's ends and ``float64`` rows into their columns (:func:`int64s`,
:func:`float64s`; anything else is converted by numpy as before).  Since wave 16 ``InputList`` and
``OutputList`` subscript through ``dict``'s own C function (:func:`dict_subscript`), and a one-field
format's write reads its field and appends its row itself; it also makes a view
index's columns (:func:`types_of`, :func:`fields`, :func:`exact_numbers`: the indexing job's work
before its probe can start), and it does a
database provider's per-unit work: a view's index entries made (:data:`tuples`) and indexed
(:data:`Windowed`, :mod:`backbeat.data.entries`), and the scalar values of its ``get`` taken
(:data:`take`, :class:`backbeat.data.snapshot.ViewScalars`).

It is optional: ``pip install`` builds it when a C compiler is there (setup.py, ``optional=True``)
and the Python code runs otherwise, or when ``BACKBEAT_COMPILED=off`` (read once, at import: the
classes' base is chosen then).  The Python code is the reference: the tests run the data path
through both.

What differs, with the module built, for code that looks underneath BEAT's API: the per-step
attributes are not in ``vars(obj)`` (a ``__dict__`` entry of the same name is shadowed by the
slot), and ``__class__`` cannot be switched to or from a class without the slots; pickling and
copying keep every attribute (:class:`Slots`).  A build of other source than the ``_unitpath.c``
beside it (an editable install not rebuilt) is not used.
"""

from __future__ import annotations

import copyreg
import hashlib
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


def _stale(module: Any) -> bool:
    """Whether ``module`` was built from other C source than the one beside it (an editable install
    not rebuilt after the source changed): its build's sha256 of ``_unitpath.c`` (setup.py) against
    the file's.  Without the source (an installed wheel) the build is the package's own."""
    source = os.path.join(os.path.dirname(__file__), "_unitpath.c")
    try:
        with open(source, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return False
    return getattr(module, "SOURCE", "") != digest


if native is not None and _stale(native):
    native = None  # (the Python path: a stale build must not run other rules than the source's)

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

        def __reduce_ex__(self, protocol: Any) -> tuple:  # (every protocol, as a plain object's)
            return copyreg.__newobj__, (type(self),), self.__getstate__()  # type: ignore[attr-defined]
else:
    Slots = object


def _fill(objects: list, key: str, values: list) -> None:
    deque(map(object.__setattr__, objects, repeat(key), values), maxlen=0)


def int64s(items: list) -> Any:
    """``numpy.array(items, dtype="<i8")`` of a list of ints (a writer's ends): the compiled module packs
    a list of exact ints that fit in one pass (numpy discovers each item's type: ~45 ns an item)."""
    import numpy as np

    raw = native.pack(items, "q", None) if native is not None else None
    if raw is None:
        return np.array(items, dtype="<i8")
    return np.frombuffer(raw, dtype=np.int64).astype("<i8", copy=False)


def float64s(items: list, exact: type) -> Any:
    """``numpy.fromiter(items, dtype="<f8", count=len(items))`` of a list of floats or of ``exact``
    (``numpy.float64``) values: packed in one pass by the compiled module (numpy's ``fromiter`` converts
    each item through its generic setter: ~40 ns an item)."""
    import numpy as np

    raw = native.pack(items, "d", exact) if native is not None else None
    if raw is None:
        return np.fromiter(items, dtype="<f8", count=len(items))
    return np.frombuffer(raw, dtype=np.float64).astype("<f8", copy=False)


def dict_subscript(cls: type) -> type:
    """A class decorator for a ``dict`` subclass that does not override ``__getitem__`` (``InputList``,
    ``OutputList``: ``inputs["in"]`` at every unit): the compiled module gives it ``dict``'s C subscript
    as its mapping slot.  CPython gives such a class a generic slot that looks ``__getitem__`` up on the
    type and calls it — the same C function (``__missing__`` included), reached through a type lookup
    and a method call, ~50 ns a subscript.  Without the module the class is left as it is: the Python
    path is the reference, and it is the same function."""
    if native is not None:
        native.dict_subscript(cls)
    return cls
def types_of(items: Any) -> set[type]:
    """``set(map(type, items))``: in one pass of the compiled module when ``items`` is a list whose items
    are all exactly of the first one's class, a tuple subclass (a view index's namedtuples)."""
    if native is not None and type(items) is list and items and native.fields(items, type(items[0]), 0) == []:
        return {type(items[0])}
    return set(map(type, items))


def fields(entries: Any, kind: type, m: int) -> list[list] | None:
    """``[list(map(itemgetter(j), entries)) for j in range(m)]`` of a list of tuples all exactly of class
    ``kind`` with ``m`` items each, in one pass per field by the compiled module (a view index's columns:
    1M namedtuples ~10 ms against ~50 ms a field); None otherwise, or without the module."""
    if native is None or type(entries) is not list or not m:
        return None
    return native.fields(entries, kind, m)


def exact_numbers(values: list) -> tuple[str, Any] | None:
    """``("int", int64 array)`` of a non-empty list of values all exactly ``int`` that fit int64,
    ``("float", float64 array)`` of one all exactly ``float``, packed in one pass by the compiled
    module (a view index's column: :func:`backbeat.data.indextable.columns`, 1M values ~5 ms against
    ~80 ms for a pass over their types and numpy's over their values); None for anything else
    (bools, numpy scalars, subclasses, ints beyond int64, mixed types) or without the module."""
    import numpy as np

    if native is None or type(values) is not list or not values or type(values[0]) not in (int, float):
        return None
    kind = "int" if type(values[0]) is int else "float"
    raw = native.pack(values, "q" if kind == "int" else "d", None)
    return None if raw is None else (kind, np.frombuffer(raw, dtype=np.int64 if kind == "int" else np.float64))


#: (wave 16, a database provider's per-unit work) ``tuples(cls, columns)``: a view's index entries made
#: (``IndexTable.entries``); ``take(...)``: ``ViewScalars.take``'s loop over the view's ``get``; None
#: when not built (the Python code runs).  ``Windowed``: the base of ``Entries`` (empty if not built)
tuples: Any = native.tuples if native is not None else None
take: Any = native.take if native is not None else None
if TYPE_CHECKING or native is None:
    class Windowed:
        """(Not built: ``Entries``' window is in its own attributes, its ``__getitem__`` the Python code.)"""

        __slots__ = ()
else:
    Windowed = native.Windowed

#: ``object.__setattr__(obj, key, value)`` over a window's value objects and their values for one field
#: (``data.batch``: the format's checked ``__setattr__`` bypassed; to the shorter list's end, as ``map``)
fill = native.fill if native is not None else _fill
