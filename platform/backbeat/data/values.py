"""Typed values with BEAT's ``baseformat`` semantics (spec §5.1).

A dataformat arrives as ``(name, expanded)``: ``expanded`` is the fully resolved declaration
(``#extends`` merged, references replaced by their expanded dicts, ``#`` keys removed; arrays are
``[d1, ..., dn, elem]`` with ``0`` for a variable dimension).  :func:`value_type` turns it into a
class (memoised per ``(name, declaration)``) whose instances behave like BEAT's objects:

* ``T(**kw)``: unsafe casting, missing attributes set to defaults;
* ``from_dict(d, casting="safe", add_defaults=False)``: exact attribute set required unless
  ``add_defaults``; BEAT's error texts (``missing attributes (...)``, ``unexpected attribute (...)``,
  ``cannot safely cast attribute ...``) raised as :class:`~backbeat.errors.DataError` subclasses that are
  also ``AttributeError`` / ``TypeError`` like BEAT's, so algorithm code catching those still works;
* scalar casting is checked with ``numpy.can_cast(numpy.array(v).dtype, dtype, casting)`` and *skipped
  when the value is falsy* (BEAT quirk: a Python ``0`` may be assigned to a ``uint64``);
* attribute assignment re-validates with safe casting; ``as_dict`` (arrays become lists, scalars stay
  numpy scalars), ``isclose``, ``copy``, ``==`` (exact, NaN equal to NaN);
* ``pack``/``unpack`` (and ``pack_into``/``unpack_from``): BEAT's binary encoding (spec §5.2).

Scalars are numpy scalars, strings are ``str``, arrays are numpy arrays (``object`` arrays of ``str``
or of nested instances).  Each field gets a pre-compiled setter closure so construction stays cheap.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from functools import lru_cache
from typing import Any, cast

import numpy as np

from backbeat.core.errors import DataError
from backbeat.data.casting import (
    BASETYPES,
    NUMERIC,
    FormatAttributeError,
    FormatTypeError,
    ObjectArray,
    array_setter,
    dtype_of,
    object_array,
    object_setter,
    scalar_setter,
    string_setter,
)
from backbeat.declarations.algorithm import analysis_format

__all__ = ["BASETYPES", "NUMERIC", "BaseValue", "FormatAttributeError", "FormatTypeError", "ObjectArray",
           "analysis_format", "as_value", "canonical", "dtype_of", "nested_type", "object_array", "value_type"]

def canonical(expanded: dict) -> str:
    """Canonical JSON text of an expanded declaration (sorted keys, compact)."""
    return json.dumps(expanded, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


class BaseValue:
    """Base of every generated value class (see module docstring)."""

    _name: str = ""
    _format: dict = {}
    _fields: tuple[str, ...] = ()
    _fieldset: frozenset[str] = frozenset()
    _setters: dict[str, Callable[[Any, str, bool], Any]] = {}
    _kinds: dict[str, tuple] = {}
    _ndims: dict[str, int] = {}

    def __init__(self, **kwargs: Any) -> None:
        self.from_dict(kwargs, casting="unsafe", add_defaults=True)

    @classmethod
    def _build(cls, data: Any, casting: str, add_defaults: bool) -> BaseValue:
        obj = cls.__new__(cls)
        obj.from_dict(data, casting=casting, add_defaults=add_defaults)
        return obj

    @classmethod
    def _raw(cls, attrs: dict) -> BaseValue:
        """Instance from already typed attributes, without checks (used by batches)."""
        obj = cls.__new__(cls)
        obj.__dict__.update(attrs)
        return obj

    def from_dict(self, data: Any = None, casting: str = "safe", add_defaults: bool = False) -> BaseValue:
        if data is None:
            data = {}
        elif isinstance(data, BaseValue):
            data = data.__dict__
        elif not isinstance(data, dict):
            try:
                data = dict(data)
            except (TypeError, ValueError):
                raise FormatTypeError(
                    f"dataformat `{self._name}' needs a dict of attributes, not {type(data).__name__}"
                ) from None
        user = data.keys() - {"__type__"}
        declared = self._fieldset
        if not add_defaults:
            if user != declared:
                missing = declared - user
                if missing:
                    raise FormatAttributeError(
                        f"missing attributes ({', '.join(sorted(missing))}) for dataformat `{self._name}' "
                        f"which require `{', '.join(self._fields)}'"
                    )
                raise FormatAttributeError(
                    f"unexpected attribute ({', '.join(sorted(user - declared))}) for dataformat "
                    f"`{self._name}' which require `{', '.join(self._fields)}'"
                )
        elif not user <= declared:
            raise FormatAttributeError(
                f"unexpected attribute ({', '.join(sorted(user - declared))}) for dataformat "
                f"`{self._name}' which require `{', '.join(self._fields)}'"
            )
        d = self.__dict__
        get = data.get
        for key, setter in self._setters.items():
            d[key] = setter(get(key), casting, add_defaults)
        return self

    def __setattr__(self, key: str, value: Any) -> None:
        setter = self._setters.get(key)
        if setter is None:
            raise FormatAttributeError(f"dataformat `{self._name}' has no attribute `{key}'")
        self.__dict__[key] = setter(value, "safe", False)

    def as_dict(self) -> dict:
        out = {}
        for key in self._fields:
            v = self.__dict__[key]
            kind = self._kinds[key][0]
            if kind == "array":
                if isinstance(v, ObjectArray):
                    out[key] = _nested_dicts(v)
                else:
                    out[key] = v.tolist()
            elif kind == "object":
                out[key] = v.as_dict()
            else:
                out[key] = v
        return out

    def isclose(self, other: Any, *args: Any, **kwargs: Any) -> bool:
        if not isinstance(other, self.__class__):
            return False
        for key in self._fields:
            kind, elem = self._kinds[key]
            this, that = self.__dict__[key], other.__dict__[key]
            if kind == "array":
                if isinstance(elem, np.dtype):
                    if this.shape != that.shape or not np.allclose(this, that, *args, **kwargs):
                        return False
                elif elem is str:
                    if this.shape != that.shape or not np.all(this == that):
                        return False
                elif this.shape != that.shape or not all(
                    a.isclose(b, *args, **kwargs) for a, b in zip(this.flat, that.flat, strict=False)
                ):
                    return False
            elif kind == "scalar":
                if not np.isclose(this, that, *args, **kwargs):
                    return False
            elif kind == "string":
                if this != that:
                    return False
            elif not this.isclose(that, *args, **kwargs):
                return False
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, self.__class__):
            return NotImplemented
        for key in self._fields:
            kind, elem = self._kinds[key]
            this, that = self.__dict__[key], other.__dict__[key]
            if kind == "array":
                if this.shape != that.shape:
                    return False
                if isinstance(elem, np.dtype):
                    nan = elem.kind in "fc"
                    if not np.array_equal(this, that, equal_nan=nan):
                        return False
                elif not all(a == b for a, b in zip(this.flat, that.flat, strict=False)):
                    return False
            elif kind == "scalar":
                if not (this == that or (this != this and that != that)):
                    return False
            elif this != that:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> BaseValue:
        return self.__class__(**self.as_dict())

    # BEAT's binary encoding (spec §5.2): sorted fields, little-endian, no padding -----------------
    def pack_into(self, fd: Any) -> None:
        for key in self._fields:
            kind, elem = self._kinds[key]
            v = self.__dict__[key]
            if kind == "scalar":
                fd.write(np.asarray(v, dtype=elem.newbyteorder("<")).tobytes())
            elif kind == "string":
                _pack_str(v, fd)
            elif kind == "object":
                v.pack_into(fd)
            else:
                fd.write(np.asarray(v.shape, dtype="<u8").tobytes())
                if isinstance(elem, np.dtype):
                    fd.write(np.ascontiguousarray(v, dtype=elem.newbyteorder("<")).tobytes())
                elif elem is str:
                    for x in v.flat:
                        _pack_str(x, fd)
                else:
                    for x in v.flat:
                        x.pack_into(fd)

    def pack(self) -> bytes:
        buf = io.BytesIO()
        self.pack_into(buf)
        return buf.getvalue()

    def unpack_from(self, fd: Any) -> BaseValue:
        d = self.__dict__
        for key in self._fields:
            kind, elem = self._kinds[key]
            if kind == "scalar":
                d[key] = np.frombuffer(_read(fd, elem.itemsize), dtype=elem.newbyteorder("<"))[0].astype(elem)[()]
            elif kind == "string":
                d[key] = _unpack_str(fd)
            elif kind == "object":
                d[key] = elem.__new__(elem).unpack_from(fd)
            else:
                ndim = self._ndims[key]
                shape = tuple(int(x) for x in np.frombuffer(_read(fd, 8 * ndim), dtype="<u8"))
                count = int(np.prod(shape, dtype=np.int64))
                if isinstance(elem, np.dtype):
                    raw = _read(fd, count * elem.itemsize)
                    d[key] = np.frombuffer(raw, dtype=elem.newbyteorder("<")).astype(elem).reshape(shape)
                elif elem is str:
                    arr = np.empty(count, dtype=object)
                    arr[:] = [_unpack_str(fd) for _ in range(count)]
                    d[key] = arr.reshape(shape)
                else:
                    d[key] = object_array(elem, shape, [elem.__new__(elem).unpack_from(fd) for _ in range(count)])
        return self

    def unpack(self, data: bytes) -> BaseValue:
        return self.unpack_from(io.BytesIO(data))

    def __str__(self) -> str:
        return str(self.as_dict())

    def __repr__(self) -> str:
        return f"<{self._name} {self.as_dict()!r}>"


def _read(fd: Any, n: int) -> bytes:
    data = fd.read(n)
    if len(data) != n:
        raise DataError(f"truncated binary data: expected {n} bytes, got {len(data)}")
    return data


def _pack_str(s: str, fd: Any) -> None:
    raw = s.encode("utf-8")
    fd.write(len(raw).to_bytes(8, "little"))
    fd.write(raw)


def _unpack_str(fd: Any) -> str:
    n = int.from_bytes(_read(fd, 8), "little")
    try:
        return _read(fd, n).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"invalid UTF-8 string in binary data: {exc}") from None


def _nested_dicts(arr: np.ndarray) -> Any:
    if arr.ndim == 0:
        item: Any = arr[()]  # a 0-d object array holds one value
        return item.as_dict()
    if arr.ndim == 1:
        return [x.as_dict() for x in arr]
    return [_nested_dicts(sub) for sub in arr]


def _class_name(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


_NESTED: dict[str, type[BaseValue]] = {}


def nested_type(name: str, spec: dict) -> type[BaseValue]:
    """Nested formats are shared by declaration (a referenced format gives one class, as in BEAT)."""
    canon = canonical(spec)
    cls = _NESTED.get(canon)
    if cls is None:
        cls = _NESTED[canon] = _make_type(name, canon)
    return cls


def _elem_type(name: str, elem: Any) -> Any:
    if isinstance(elem, dict):
        return nested_type(name, elem)
    if elem == "string":
        return str
    if elem in NUMERIC:
        return dtype_of(elem)
    raise DataError(f"dataformat `{name}': unknown type `{elem}'")


@lru_cache(maxsize=1024)
def _make_type(name: str, canon: str) -> type[BaseValue]:
    expanded = json.loads(canon)
    if not isinstance(expanded, dict):
        raise DataError(f"dataformat `{name}': an expanded declaration must be an object")
    setters: dict[str, Callable] = {}
    kinds: dict[str, tuple] = {}
    ndims: dict[str, int] = {}
    fields = tuple(sorted(k for k in expanded if not k.startswith("#")))
    for key in fields:
        spec = expanded[key]
        sub = f"{name}.{key}"
        if isinstance(spec, list):
            if len(spec) < 2 or len(spec) > 6 or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in spec[:-1]
            ):
                raise DataError(f"dataformat `{name}': invalid array declaration for `{key}': {spec!r}")
            elem = _elem_type(sub, spec[-1])
            setters[key] = array_setter(name, key, tuple(spec[:-1]), elem)
            ndims[key] = len(spec) - 1
            kinds[key] = ("array", elem)
        elif isinstance(spec, dict):
            cls = nested_type(sub, spec)
            setters[key] = object_setter(cls)
            kinds[key] = ("object", cls)
        elif spec == "string":
            setters[key] = string_setter
            kinds[key] = ("string", str)
        elif spec in NUMERIC:
            dt = dtype_of(spec)
            setters[key] = scalar_setter(name, key, dt)
            kinds[key] = ("scalar", dt)
        else:
            raise DataError(f"dataformat `{name}': unknown type `{spec}' for `{key}'")
    attrs = {
        "_name": name,
        "_format": expanded,
        "_fields": fields,
        "_fieldset": frozenset(fields),
        "_setters": setters,
        "_kinds": kinds,
        "_ndims": ndims,
        "__module__": __name__,
    }
    return cast("type[BaseValue]", type(_class_name(name), (BaseValue,), attrs))


def value_type(name: str, expanded: dict) -> type[BaseValue]:
    """The value class of dataformat ``name`` with expanded declaration ``expanded`` (memoised)."""
    canon = canonical(expanded)
    cls = _make_type(name, canon)
    _NESTED.setdefault(canon, cls)
    return cls


def as_value(cls: type[BaseValue], data: Any) -> BaseValue:
    """``data`` as an instance of ``cls``: instances pass through, dicts use safe casting, no defaults."""
    if isinstance(data, cls):
        return data
    return cls._build(data, "safe", False)
