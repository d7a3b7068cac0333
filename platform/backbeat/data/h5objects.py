"""The HDF5 objects of a cache file, made through h5py's low-level API (:mod:`backbeat.data.cachewriter`).

Property lists, types and the scalar space are made once per process and reused for every file;
groups and datasets are made without HDF5's object timestamps (a file's bytes depend on its data
only, not on when it was written: two runs of one experiment write the same bytes), and the root
group keeps its attributes in its object header.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from backbeat.data.batch import I64

CHUNK_CACHE = 4 << 20  # per dataset: a partly written chunk stays cached until the next batch fills it
#: the root group's attributes stay in its object header up to this many (HDF5's default is 8, and
#: a file has 9: dense storage would add a fractal heap and two B-trees to every file)
COMPACT_ATTRIBUTES = 16

_PLISTS: tuple[Any, Any] | None = None  # (file creation, file access) property lists, made once


def file_plists() -> tuple[Any, Any]:
    """The property lists of a new cache file: what ``h5py.File(path, "w", libver="latest",
    rdcc_nbytes=CHUNK_CACHE, rdcc_w0=1.0)`` sets (times not tracked), attributes compact."""
    global _PLISTS
    if _PLISTS is None:
        fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
        fcpl.set_obj_track_times(False)
        fcpl.set_attr_phase_change(COMPACT_ATTRIBUTES, COMPACT_ATTRIBUTES - 1)
        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
        fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)  # closing the file closes what is still open in it
        mdc, slots, _nbytes, _w0 = fapl.get_cache()
        fapl.set_cache(mdc, slots, CHUNK_CACHE, 1.0)
        _PLISTS = (fcpl, fapl)
    return _PLISTS


_LAYOUTS: dict[int, Any] = {}  # dataset creation property lists by layout, made once


def layout_plist(layout: int) -> Any:
    dcpl = _LAYOUTS.get(layout)
    if dcpl is None:
        dcpl = _LAYOUTS[layout] = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(layout)
        dcpl.set_obj_track_times(False)  # (a file's bytes depend on its data, not on when it was written)
    return dcpl


_GCPL: list[Any] = []  # the group creation property list, made once


def group(fid: Any, name: str) -> Any:
    """Create group ``name`` in the file ``fid`` with no timestamps (the file creation list's setting
    covers the root group only: groups made by default, or by h5py as intermediates, carry the times
    they were made in their headers, and two runs would write different bytes)."""
    if not _GCPL:
        gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
        gcpl.set_obj_track_times(False)
        _GCPL.append(gcpl)
    return h5py.h5g.create(fid, name.encode(), gcpl=_GCPL[0])


_TYPES: dict[tuple[Any, bool], Any] = {}  # (numpy dtype, text?) -> HDF5 type (h5py's, made once)
_SCALAR: list[Any] = []  # the scalar dataspace, made once
_STRING = h5py.string_dtype("utf-8")


def h5type(dtype: np.dtype, string: bool = False) -> Any:
    """The HDF5 type of a numeric ``dtype``, or with ``string`` of variable-length UTF-8 text (an
    object dtype compares equal to any other: the two are kept apart)."""
    key = (dtype, string)
    tid = _TYPES.get(key)
    if tid is None:
        tid = _TYPES[key] = h5py.h5t.py_create(dtype, logical=True)
    return tid


def attribute(obj: Any, name: str, value: str | int) -> None:
    """Write a scalar attribute as ``obj.attrs[name] = value`` would (a str: variable-length UTF-8;
    an int: int64)."""
    text = isinstance(value, str)
    data = np.array(value, dtype=_STRING if text else I64)
    if not _SCALAR:
        _SCALAR.append(h5py.h5s.create(h5py.h5s.SCALAR))
    h5py.h5a.create(obj, name.encode(), h5type(data.dtype, text), _SCALAR[0]).write(data)
