"""Value objects made again from ones nothing refers to any more: :func:`objects`.

A consumer makes one value object per data unit (BEAT's API: ``inputs["in"].data`` is an object of
the input's dataformat, which the algorithm may keep, change, write).  Making it and freeing it again
once the algorithm is done with it is most of what a window of scalar units costs a block
(docs/performance.md, wave 13): a source that hands out its units window after window may instead
give :func:`objects` the values of a window whose units the algorithm is done with (``spare``).
They are used again **only if nothing but that list refers to any of them** — no other reference
(the reference count, as this interpreter counts it: calibrated when this module is imported; if
it does not behave as expected nothing is ever reused), no weak reference, and each exactly of the
class wanted, and no reference to its attribute dictionary either (``vars(obj)`` kept by the algorithm
holds the dictionary, not the object: it would see the next unit's values) nor anything in it but the
format's fields (a memo forced into ``__dict__`` past the format's checks would travel to a later unit)
— i.e. only objects that no code can reach any more, so nothing observable changes: an object the
algorithm kept (in a list, an attribute, a closure, a cycle), whose dictionary it kept, or which it
watches (a weak reference) is never touched, and the whole window is made anew.  The caller then sets
every field of each object (as for a new one).  On an interpreter without the GIL (free-threaded)
reference counts seen from one thread prove nothing: objects are never reused there.
"""

from __future__ import annotations

import gc
import sys
from itertools import repeat
from operator import attrgetter
from typing import Any
from weakref import getweakrefcount

from backbeat.data.compiled import native


def _most_refs(pool: list) -> int:
    """The largest reference count among ``pool``'s objects, seen from here (the list's reference
    and the iteration's own included)."""
    return max(map(sys.getrefcount, pool), default=0)


class _Probe:
    x = 0  # (set on each probe: its dictionary holds one attribute, as a value's holds its fields)


_DICT = attrgetter("__dict__")


def _calibrate(dicts: bool = False) -> int | None:
    """What :func:`_most_refs` says of objects only a list refers to (with ``dicts``: of attribute
    dictionaries only their object and a list refer to); None unless one more reference to any of them
    shows (then objects are never reused)."""
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        return None
    owners = [_Probe() for _ in range(3)]
    for owner in owners:
        owner.x = 1
    del owner
    probe = list(map(_DICT, owners)) if dicts else owners  # (the owners stay: they hold their dicts)
    alone = _most_refs(probe)
    for k in range(3):
        held = probe[k]
        if _most_refs(probe) != alone + 1:
            return None
        del held
    return alone if _most_refs(probe) == alone else None


#: the count of :func:`_most_refs` for objects only their list refers to (None: never reuse)
ALONE = _calibrate()
#: the same for attribute dictionaries only their object (and a list) refer to
ALONE_DICT = _calibrate(dicts=True)


def unreachable(pool: list, cls: type) -> bool:
    """Whether every object of ``pool`` is exactly a ``cls`` that only ``pool`` refers to (strongly
    or weakly), nor its attribute dictionary.  With the compiled module: the same checks in one pass
    over the window (``_unitpath.unreachable``; six passes here cost ~0.3 µs a unit, wave 15)."""
    if ALONE is None or ALONE_DICT is None or not pool:
        return False
    if native is not None:
        alone = native.unreachable(pool, cls, _fields(cls))
        if alone is not None:  # (None: weak references it cannot see; the checks below)
            return bool(alone)
    return _unreachable(pool, cls)


def _unreachable(pool: list, cls: type) -> bool:
    """:func:`unreachable`'s checks in Python (the reference), the collector off meanwhile: making
    a dictionary may collect, and a finaliser run then could take a reference to an object already
    checked."""
    fields = set(_fields(cls))  # (before the checks: a class's attribute may run code)
    was = gc.isenabled()
    gc.disable()
    try:
        if _most_refs(pool) != ALONE or set(map(type, pool)) != {cls} or any(map(getweakrefcount, pool)):
            return False
        dicts = list(map(_DICT, pool))  # (nobody holds one, and none holds anything but the fields)
        return (_most_refs(dicts) == ALONE_DICT and all(type(k) is str for d in dicts for k in d)
                and all(d.keys() == fields for d in dicts))
    finally:
        if was:
            gc.enable()


def _fields(cls: type) -> tuple:
    """The format's field names, each once."""
    return tuple(dict.fromkeys(getattr(cls, "_fields", ())))


def objects(cls: Any, n: int, spare: list | None = None) -> list:
    """``n`` objects of ``cls`` (made by ``cls.__new__``, no field set): those of ``spare`` first when
    nothing else can reach any of them (:func:`unreachable`).  ``spare`` is emptied either way: the
    caller gives it up."""
    if spare:
        was = gc.isenabled()
        gc.disable()  # (until the list lets them go: a finaliser run by a collection could take one)
        try:
            out = spare[:n] if unreachable(spare, cls) else None
            del spare[:]
        finally:
            if was:
                gc.enable()
        if out is not None:
            if len(out) < n:
                out += _new(cls, n - len(out))
            return out
    return _new(cls, n)


def _new(cls: Any, n: int) -> list:
    """``[cls.__new__(cls) for _ in range(n)]`` (compiled: the type's own constructor called with no arguments)."""
    return native.make(cls, n, (), ()) if native is not None else list(map(cls.__new__, repeat(cls, n)))

