"""The HDF5 objects of a cache file, made through h5py's low-level API (:mod:`backbeat.data.cachewriter`).

Property lists, types and the scalar space are made once per process and reused for every file;
groups and datasets are made without HDF5's object timestamps (a file's bytes depend on its data
only, not on when it was written: two runs of one experiment write the same bytes), and the root
group keeps its attributes in its object header.
"""

from __future__ import annotations

import functools
from typing import Any

import h5py
import numpy as np

from backbeat.data.batch import I64

CHUNK_CACHE = 4 << 20  # per dataset: a partly written chunk stays cached until the next batch fills it
#: the root group's attributes stay in its object header up to this many (HDF5's default is 8, and
#: a file has 9: dense storage would add a fractal heap and two B-trees to every file)
COMPACT_ATTRIBUTES = 16

@functools.cache
def file_plists() -> tuple[Any, Any]:
    """The property lists of a new cache file, ``(creation, access)``: what ``h5py.File(path, "w",
    libver="latest", rdcc_nbytes=CHUNK_CACHE, rdcc_w0=1.0)`` sets (times not tracked), attributes compact."""
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)
    fcpl.set_attr_phase_change(COMPACT_ATTRIBUTES, COMPACT_ATTRIBUTES - 1)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)  # closing the file closes what is still open in it
    mdc, slots, _nbytes, _w0 = fapl.get_cache()
    fapl.set_cache(mdc, slots, CHUNK_CACHE, 1.0)
    return fcpl, fapl


@functools.cache
def layout_plist(layout: int) -> Any:
    """The dataset creation property list of ``layout`` (compact, contiguous...), no timestamps."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(layout)
    dcpl.set_obj_track_times(False)  # (a file's bytes depend on its data, not on when it was written)
    return dcpl


@functools.cache
def _group_plist() -> Any:
    gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    gcpl.set_obj_track_times(False)
    return gcpl


def group(fid: Any, name: str) -> Any:
    """Create group ``name`` in the file ``fid`` with no timestamps (the file creation list's setting
    covers the root group only: groups made by default, or by h5py as intermediates, carry the times
    they were made in their headers, and two runs would write different bytes)."""
    return h5py.h5g.create(fid, name.encode(), gcpl=_group_plist())


_STRING = h5py.string_dtype("utf-8")


@functools.cache
def h5type(dtype: np.dtype, string: bool = False) -> Any:
    """The HDF5 type of a numeric ``dtype``, or with ``string`` of variable-length UTF-8 text (an
    object dtype compares equal to any other: the two are kept apart)."""
    return h5py.h5t.py_create(dtype, logical=True)


@functools.cache
def _scalar_space() -> Any:
    return h5py.h5s.create(h5py.h5s.SCALAR)


def attribute(obj: Any, name: str, value: str | int) -> None:
    """Write a scalar attribute as ``obj.attrs[name] = value`` would (a str: variable-length UTF-8;
    an int: int64)."""
    text = isinstance(value, str)
    data = np.array(value, dtype=_STRING if text else I64)
    h5py.h5a.create(obj, name.encode(), h5type(data.dtype, text), _scalar_space()).write(data)
