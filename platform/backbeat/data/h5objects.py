"""The HDF5 objects of a cache file, made through h5py's low-level API (:mod:`backbeat.data.cachewriter`).

Property lists, types and the scalar space are made once per process and reused for every file;
groups and datasets are made without HDF5's object timestamps (a file's bytes depend on its data
only, not on when it was written: two runs of one experiment write the same bytes), and the root
group keeps its attributes in its object header.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import h5py
import numpy as np

from backbeat.data.batch import I64

CHUNK_CACHE = 4 << 20  # per dataset: a partly written chunk stays cached until the next batch fills it
#: the root group's attributes stay in its object header up to this many (HDF5's default is 8, and
#: a file has 9: dense storage would add a fractal heap and two B-trees to every file)
COMPACT_ATTRIBUTES = 16
COMPACT_BYTES = 8 << 10  # an array up to this size is stored in the file's metadata (compact layout)

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


def create(tmp: str) -> Any:
    """Create the HDF5 file ``tmp`` (h5py's low-level API: see module docstring)."""
    fcpl, fapl = file_plists()
    return h5py.h5f.create(os.fsencode(tmp), h5py.h5f.ACC_TRUNC, fcpl=fcpl, fapl=fapl)


def attributes(fid: Any, attrs: Any) -> None:
    """Write the root group's attributes ``attrs`` (``(name, value)`` each: :func:`attribute`)."""
    root = h5py.h5g.open(fid, b"/")
    for name, value in attrs:
        attribute(root, name, value)


def write_small(path: str, arrays: Any, attrs: Any, kw: dict[str, Any] | None = None, *, names: list[str]) -> None:
    """Write a small output's file ``path`` with h5py: ``arrays`` (one per name of ``names``) as datasets of
    their exact shapes — compact (in the file's metadata) when tiny, else contiguous, or one chunk when
    compressed (``kw``) — and the root's attributes ``attrs``; closed."""
    fid = create(path)
    file = None
    try:
        groups: dict[str, Any] = {}
        for name, arr in zip(names, arrays, strict=True):
            top, base = name.split("/")
            parent = groups.get(top)
            if parent is None:
                parent = groups[top] = group(fid, top)
            if arr.nbytes <= COMPACT_BYTES or not kw:
                dcpl = layout_plist(h5py.h5d.COMPACT if arr.nbytes <= COMPACT_BYTES else h5py.h5d.CONTIGUOUS)
                dsid = h5py.h5d.create(parent, base.encode(), h5type(arr.dtype),
                                       h5py.h5s.create_simple(arr.shape), dcpl=dcpl)
                if arr.size:
                    dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, arr)
            else:
                if file is None:
                    file = h5py.File(fid)
                h5py.Group(parent).create_dataset(base, data=arr, chunks=arr.shape, **kw)
        attributes(fid, attrs)
    finally:
        if file is not None:
            file.close()
        if fid.valid:
            fid.close()  # (CLOSE_STRONG: with every object still open in it)
