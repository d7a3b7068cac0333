"""Value objects made again from ones nothing refers to any more: :func:`objects`.

A consumer makes one value object per data unit (BEAT's API: ``inputs["in"].data`` is an object of
the input's dataformat, which the algorithm may keep, change, write).  Making it and freeing it again
once the algorithm is done with it is most of what a window of scalar units costs a block
(docs/performance.md, wave 13): a source that hands out its units window after window may instead
give :func:`objects` the values of a window whose units the algorithm is done with (``spare``).
They are used again **only if nothing but that list refers to any of them** — no other reference
(the reference count, as this interpreter counts it: calibrated when this module is imported; if
it does not behave as expected nothing is ever reused), no weak reference, and each exactly of the
class wanted — i.e. only objects that no code can reach any more, so nothing observable changes:
an object the algorithm kept (in a list, an attribute, a closure, a cycle) or watches (a weak
reference) is never touched, and the whole window is made anew.  The caller then sets every field of
each object (as for a new one).  What an unreachable object carried besides its fields (an
attribute forced into its ``__dict__`` past the format's checks) is not cleared.
"""

from __future__ import annotations

import sys
from itertools import repeat
from typing import Any
from weakref import getweakrefcount


def _most_refs(pool: list) -> int:
    """The largest reference count among ``pool``'s objects, seen from here (the list's reference
    and the iteration's own included)."""
    return max(map(sys.getrefcount, pool), default=0)


class _Probe:
    pass


def _calibrate() -> int | None:
    """What :func:`_most_refs` says of objects only a list refers to; None unless one more reference
    to any of them shows (then objects are never reused)."""
    probe = [_Probe() for _ in range(3)]
    alone = _most_refs(probe)
    for k in range(3):
        held = probe[k]
        if _most_refs(probe) != alone + 1:
            return None
        del held
    return alone if _most_refs(probe) == alone else None


#: the count of :func:`_most_refs` for objects only their list refers to (None: never reuse)
ALONE = _calibrate()


def unreachable(pool: list, cls: type) -> bool:
    """Whether every object of ``pool`` is exactly a ``cls`` that only ``pool`` refers to (strongly
    or weakly)."""
    return (ALONE is not None and bool(pool) and _most_refs(pool) == ALONE
            and set(map(type, pool)) == {cls} and not any(map(getweakrefcount, pool)))


def objects(cls: Any, n: int, spare: list | None = None) -> list:
    """``n`` objects of ``cls`` (made by ``cls.__new__``, no field set): those of ``spare`` first when
    nothing else can reach any of them (:func:`unreachable`).  ``spare`` is emptied either way: the
    caller gives it up."""
    if spare:
        if unreachable(spare, cls):
            out = spare[:n]
            del spare[:]
            if len(out) < n:
                out += map(cls.__new__, repeat(cls, n - len(out)))
            return out
        del spare[:]
    return list(map(cls.__new__, repeat(cls, n)))

