"""A small cache file written from a byte template, without the HDF5 library (:mod:`backbeat.data.cachewriter`).

A small output's file (compact datasets, 9 root attributes, ``libver`` latest, no timestamps) has bytes
that depend on its content only: two files of one *structure* — the :func:`signature`: the arrays'
names, dtypes and shapes, the attributes' names and types, each long string's byte length (a short
one's value) and the HDF5 library's version — differ only in the bytes of their data and attribute
values and in the checksums (Jenkins' lookup3, :func:`lookup3`) of the object header chunks holding
them (``OHDR``/``OCHK``; the global heap ``GCOL`` holding the strings has none).  A :class:`Template`
is one such file with the offsets of its values and of those chunks: :meth:`Template.render` copies
it, writes the values at their offsets and recomputes the checksums of the chunks they are in —
~0.3 ms instead of ~5.6 ms of HDF5 in a freshly forked block process (``docs/performance.md``).

A template is made (:func:`make`) from two files h5py wrote for random contents of the signature
(each value random, so that its offset is found by searching for it: it must occur exactly once),
and used only once it rendered the *real* file h5py just wrote and the second random file
byte-for-byte (its self-check); else that signature is never templated by this process.  Templates
persist in a folder of the cache (:class:`Images`: a block process is a fresh fork, the next block
of a chain reads the template its predecessor made), each file checked by its sha256 and its
signature when read: a file that fails is ignored (h5py writes the file) — never trusted.
``BACKBEAT_H5IMAGE=off`` turns templates off (tests, A/B).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import h5py
import numpy as np

#: the environment variable that turns templates off ("off")
SWITCH = "BACKBEAT_H5IMAGE"
VERSION = 1  # of the template files (part of every signature)
SHORT = 16  # a string attribute shorter than this (bytes) is in the signature by value, a longer one by length
MAGIC = b"backbeat-h5image/1\n"
CLAIM_S = 60.0  # a claim to make a template older than this is stale (its maker was killed)
MOST = 64  # templates kept in a process, and in a cache's folder
SMALL = 4 << 10  # only files whose arrays hold up to this many bytes are templated (rendering re-hashes
# the metadata chunks holding them in Python: a larger compact array costs more than h5py's own write)
LARGEST = 1 << 20  # a template file larger than this is not read


def _fingerprint() -> str:
    """The digest of the code that decides a small file's bytes (this module, h5objects' property lists
    and types, the cache writer's layout choices): part of every signature, so that a template made by
    other code is never used, even at the same :data:`VERSION`."""
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    try:
        for name in ("h5image.py", "h5objects.py", "cachewriter.py"):
            with open(os.path.join(here, name), "rb") as f:
                digest.update(f.read())
    except OSError:  # (installed without its sources: nothing is templated, h5py writes every file)
        return ""
    return digest.hexdigest()[:16]


FINGERPRINT = _fingerprint()

Attrs = Sequence[tuple[str, "str | int"]]


def enabled() -> bool:
    return os.environ.get(SWITCH, "").lower() not in ("off", "0", "no", "false")


# lookup3 ---------------------------------------------------------------------------------------------
def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def lookup3(data: bytes | bytearray | memoryview, initval: int = 0,
            resume: tuple[int, int, int, int] | None = None) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` of ``data`` (the checksum of HDF5's metadata, its file
    format specification's "Jenkins' lookup3"); the bytes taken as little-endian 32-bit words.
    ``resume``: ``(blocks, a, b, c)``, the state after the first ``blocks`` 12-byte blocks of
    ``data`` (:func:`lookup3_state`): only the rest is hashed."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & 0xFFFFFFFF
    if n == 0:
        return c
    full = (n - 1) // 12  # the last block (1 to 12 bytes) is mixed by the final step
    first = 0
    if resume is not None:
        first, a, b, c = resume
        if not 0 <= first <= full:
            raise ValueError("a lookup3 state beyond the data")
    tail = bytes(data[full * 12:]) + bytes(12 - (n - full * 12))
    words = struct.unpack_from(f"<{(full - first) * 3}I", data, first * 12) + struct.unpack("<3I", tail)
    a, b, c = _mix(words, (full - first) * 3, a, b, c)
    k = (full - first) * 3
    m = 0xFFFFFFFF
    a = (a + words[k]) & m
    b = (b + words[k + 1]) & m
    c = (c + words[k + 2]) & m
    c ^= b; c = (c - _rot(b, 14)) & m  # noqa: E702
    a ^= c; a = (a - _rot(c, 11)) & m  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & m  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & m  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & m  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & m  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & m  # noqa: E702
    return c


def _mix(words: Sequence[int], count: int, a: int, b: int, c: int) -> tuple[int, int, int]:
    """lookup3's mixing of the first ``count`` words (whole blocks of 3) into the state ``a, b, c``."""
    m = 0xFFFFFFFF
    for i in range(0, count, 3):
        a = (a + words[i]) & m
        b = (b + words[i + 1]) & m
        c = (c + words[i + 2]) & m
        a = (a - c) & m; a ^= ((c << 4) | (c >> 28)) & m; c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= ((a << 6) | (a >> 26)) & m; a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= ((b << 8) | (b >> 24)) & m; b = (b + a) & m  # noqa: E702
        a = (a - c) & m; a ^= ((c << 16) | (c >> 16)) & m; c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= ((a << 19) | (a >> 13)) & m; a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= ((b << 4) | (b >> 28)) & m; b = (b + a) & m  # noqa: E702
    return a, b, c


def lookup3_state(data: bytes, blocks: int, initval: int = 0) -> tuple[int, int, int, int]:
    """The state of :func:`lookup3` over ``data`` after its first ``blocks`` 12-byte blocks (at most
    all but the last): ``lookup3(data', resume=state)`` of any ``data'`` of the same length that
    starts with the same ``12 * blocks`` bytes is ``lookup3(data')``."""
    n = len(data)
    blocks = max(0, min(blocks, (n - 1) // 12))
    a = b = c = (0xDEADBEEF + n + initval) & 0xFFFFFFFF
    a, b, c = _mix(struct.unpack_from(f"<{blocks * 3}I", data), blocks * 3, a, b, c)
    return blocks, a, b, c


def chunks(image: bytes) -> list[tuple[int, int]]:
    """The checksummed metadata of ``image``, ``(start, end)`` each (its checksum at ``end``): the
    superblock (v2/v3), the object header chunks (``OHDR``, and the ``OCHK`` its continuation messages
    point to); only those whose stored checksum is right (a false ``OHDR`` in data is not one)."""
    found: list[tuple[int, int]] = []

    def check(start: int, end: int) -> bool:
        ok = 0 <= start < end and end + 4 <= len(image) and \
            lookup3(image[start:end]) == struct.unpack_from("<I", image, end)[0]
        if ok:
            found.append((start, end))
        return ok

    def messages(start: int, end: int, order: bool) -> None:  # follows continuation messages
        pos, head = start, 6 if order else 4
        while pos + head <= end:
            kind, size = image[pos], struct.unpack_from("<H", image, pos + 1)[0]
            if kind == 0x10 and size >= 16 and pos + head + 16 <= end:
                addr, length = struct.unpack_from("<QQ", image, pos + head)
                if image[addr:addr + 4] == b"OCHK" and check(addr, addr + length - 4):
                    messages(addr + 4, addr + length - 4, order)
            pos += head + size

    if image[:8] == b"\x89HDF\r\n\x1a\n" and image[8] in (2, 3):
        check(0, 44)
    pos = image.find(b"OHDR")
    while pos >= 0:
        if pos + 7 <= len(image) and image[pos + 4] == 2:
            flags = image[pos + 5]
            q = pos + 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)
            width = 1 << (flags & 3)
            if q + width <= len(image):
                size = int.from_bytes(image[q:q + width], "little")
                if check(pos, q + width + size):
                    messages(q + width, q + width + size, bool(flags & 0x04))
        pos = image.find(b"OHDR", pos + 1)
    return found


# signatures and templates ----------------------------------------------------------------------------
def signature(names: Sequence[str], arrays: Sequence[np.ndarray], attrs: Attrs) -> str | None:
    """The structure of a small file (see module docstring) as a string; None when it cannot be
    templated (an array of 1 to 7 bytes: its random value would not be found for sure)."""
    parts: list[Any] = [VERSION, FINGERPRINT, h5py.version.version, h5py.version.hdf5_version]
    if not FINGERPRINT or sum(arr.nbytes for arr in arrays) > SMALL:
        return None
    for name, arr in zip(names, arrays, strict=True):
        if 0 < arr.nbytes < 8 or arr.dtype.hasobject or not arr.flags.c_contiguous:
            return None
        parts.append([name, str(arr.dtype.descr), list(arr.shape)])
    for name, value in attrs:
        if isinstance(value, str):
            raw = value.encode()
            if b"\x00" in raw:  # (h5py refuses these: never render one)
                return None
            parts.append([name, "s", len(raw)] if len(raw) >= SHORT else [name, "s=", value])
        else:
            parts.append([name, "i"])
    return json.dumps(parts, separators=(",", ":"))


def _values(arrays: Sequence[np.ndarray], attrs: Attrs) -> list[bytes]:
    """The bytes of each value of a file that goes at an offset of its template (signature order)."""
    out = [arr.tobytes() for arr in arrays if arr.nbytes]
    for _name, value in attrs:
        if isinstance(value, str):
            raw = value.encode()
            if len(raw) >= SHORT:
                out.append(raw)
        else:
            out.append(struct.pack("<q", value))
    return out


class Template:
    """A file of one signature, its values' offsets and the chunks to checksum again (see module docstring)."""

    def __init__(self, sig: str, image: bytes, fields: list[tuple[int, int]], dirty: list[tuple[int, ...]]) -> None:
        #: ``dirty``: the chunks holding values, ``(start, end, *state)``: their checksum at ``end``, and the
        #: lookup3 state (:func:`lookup3_state`) of their bytes before the first value (the same in every file)
        self.signature, self.image, self.fields, self.dirty = sig, image, fields, dirty

    def render(self, arrays: Sequence[np.ndarray], attrs: Attrs) -> bytearray:
        """The file of this signature holding ``arrays`` and ``attrs`` (ValueError if a value's size differs)."""
        buf = bytearray(self.image)
        values = _values(arrays, attrs)
        if len(values) != len(self.fields):
            raise ValueError("values do not match the template")
        for (offset, length), raw in zip(self.fields, values, strict=True):
            if len(raw) != length:
                raise ValueError("values do not match the template")
            buf[offset:offset + length] = raw
        view = memoryview(buf)
        for start, end, *state in self.dirty:
            struct.pack_into("<I", buf, end, lookup3(view[start:end], 0, tuple(state)))  # type: ignore[arg-type]
        view.release()
        return buf

    # a template's file: MAGIC, the sha256 of the rest, then a JSON line and the image
    def dumps(self) -> bytes:
        head = json.dumps({"signature": self.signature, "fields": self.fields, "dirty": self.dirty}).encode()
        rest = head + b"\n" + self.image
        return MAGIC + hashlib.sha256(rest).hexdigest().encode() + b"\n" + rest

    @classmethod
    def loads(cls, data: bytes, sig: str) -> Template | None:
        """The template in ``data`` if its digest and signature are right and its offsets within its
        image, else None."""
        if not data.startswith(MAGIC):
            return None
        digest, _, rest = data[len(MAGIC):].partition(b"\n")
        if hashlib.sha256(rest).hexdigest().encode() != digest:
            return None
        head, _, image = rest.partition(b"\n")
        try:
            obj = json.loads(head)
            fields = [(int(o), int(n)) for o, n in obj["fields"]]
            dirty: list[tuple[int, ...]] = [(int(s), int(e), int(k), int(a), int(b), int(c))
                                            for s, e, k, a, b, c in obj["dirty"]]
        except Exception:  # noqa: BLE001 - anything malformed (deep nesting included) is no template
            return None
        if obj.get("signature") != sig or any(o < 0 or n <= 0 or o + n > len(image) for o, n in fields) or \
                any(s < 0 or e <= s or e + 4 > len(image) or k < 0 or 12 * k >= e - s for s, e, k, *_ in dirty):
            return None
        return cls(sig, image, fields, dirty)


def _random_like(arrays: Sequence[np.ndarray], attrs: Attrs) -> tuple[list[np.ndarray], list[tuple[str, str | int]]]:
    """Random values of the same signature (strings: ASCII letters of the same byte length)."""
    rand = [np.frombuffer(os.urandom(a.nbytes), dtype=a.dtype).reshape(a.shape) if a.nbytes else a for a in arrays]
    out: list[tuple[str, str | int]] = []
    for name, value in attrs:
        if isinstance(value, str):
            n = len(value.encode())
            out.append((name, bytes(97 + b % 26 for b in os.urandom(n)).decode() if n >= SHORT else value))
        else:
            out.append((name, struct.unpack("<q", os.urandom(8))[0]))
    return rand, out


Writer = Callable[[str, Sequence[np.ndarray], Attrs], None]


def make(sig: str, write: Writer, scratch: str, arrays: Sequence[np.ndarray], attrs: Attrs,
         real: bytes) -> Template | None:
    """The template of ``sig``, made from two files ``write(path, arrays, attrs)`` (h5py) writes in
    ``scratch`` for random contents, and self-checked: it must render ``real`` (the file h5py wrote
    for ``arrays``, ``attrs``) and the second random file byte-for-byte; else None."""
    images = []
    contents = []
    for k in range(2):
        rand = _random_like(arrays, attrs)
        path = f"{scratch}.{k}"
        try:
            write(path, *rand)
            with open(path, "rb") as f:
                images.append(f.read())
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        contents.append(rand)
    image = images[0]
    fields = []
    for raw in _values(*contents[0]):
        at = image.find(raw)
        if at < 0 or image.find(raw, at + 1) >= 0:
            return None
        fields.append((at, len(raw)))
    regions = chunks(image)
    dirty: list[tuple[int, ...]] = []
    for s, e in regions:
        inside = [o for o, n in fields if o < e + 4 and s < o + n]
        if any(not (s <= o and o + n <= e) for o, n in fields if o < e + 4 and s < o + n):
            return None  # (a value across a chunk's end or its checksum)
        if inside:
            dirty.append((s, e, *lookup3_state(image[s:e], (min(inside) - s) // 12)))
    template = Template(sig, image, fields, dirty)
    try:
        if template.render(*contents[1]) != images[1] or template.render(arrays, attrs) != real:
            return None
    except ValueError:
        return None
    return template


def _read(path: str) -> bytes:
    """A template file's bytes (ValueError if larger than :data:`LARGEST`)."""
    with open(path, "rb") as f:
        data = f.read(LARGEST + 1)
    if len(data) > LARGEST:
        raise ValueError(f"{path}: larger than a template")
    return data


class Images:
    """The templates of one cache folder (``folder``): each a file named after its signature's sha256.
    In a process: the templates read or made, and the signatures never to template (see module docstring)."""

    _known: dict[tuple[str, str], Template | None] = {}
    _listed: dict[str, int] = {}  # folder -> its mtime when :meth:`preload` last listed it
    _read: set[tuple[str, str, int]] = set()  # (folder, file name, its mtime) read by :meth:`preload`

    def __init__(self, folder: str) -> None:
        self.folder = folder

    @classmethod
    def forget(cls, folder: str) -> None:
        """Forget the templates of ``folder`` (removed) in this process."""
        for key in [k for k in cls._known if k[0] == folder]:
            del cls._known[key]
        cls._read -= {k for k in cls._read if k[0] == folder}
        cls._listed.pop(folder, None)

    def _path(self, sig: str) -> str:
        return os.path.join(self.folder, hashlib.sha256(sig.encode()).hexdigest()[:40] + ".h5image")

    def preload(self) -> None:
        """Read the folder's templates not known yet (each checked as :meth:`find` does, and named after
        its own signature): the fork server's zygote does, for the block processes it forks next."""
        try:
            mtime = os.stat(self.folder).st_mtime_ns
            if self._listed.get(self.folder) == mtime:
                return
            self._listed[self.folder] = mtime
            names = [(e.name, e.stat().st_mtime_ns) for e in os.scandir(self.folder) if e.name.endswith(".h5image")]
        except OSError:
            return
        for name, mtime in names:
            if len(self._known) >= MOST:
                return
            if (self.folder, name, mtime) in self._read:  # (read before, good or not, and unchanged since)
                continue
            self._read.add((self.folder, name, mtime))
            try:
                data = _read(os.path.join(self.folder, name))
                sig = json.loads(data.split(b"\n", 3)[2])["signature"]
            except Exception:  # noqa: BLE001 - a file that is no template is left alone
                continue
            if not isinstance(sig, str) or (self.folder, sig) in self._known or \
                    os.path.basename(self._path(sig)) != name:
                continue
            template = Template.loads(data, sig)
            if template is not None:
                self._known[(self.folder, sig)] = template

    def find(self, sig: str) -> Template | None:
        """The template of ``sig``: this process's, else read from the folder and checked; None if none."""
        key = (self.folder, sig)
        if key in self._known:
            return self._known[key]
        try:
            data = _read(self._path(sig))
        except (OSError, ValueError):
            return None
        template = Template.loads(data, sig)
        if template is not None and len(self._known) < MOST:
            self._known[key] = template
        return template

    def learn(self, sig: str, write: Writer, arrays: Sequence[np.ndarray], attrs: Attrs, real: bytes) -> bool:
        """Make the template of ``sig`` (:func:`make`) and keep it in the folder, unless another process
        is making it (its claim file) or it failed its self-check here before; whether one was kept."""
        key = (self.folder, sig)
        if key in self._known or len(self._known) >= MOST:
            return False
        path = self._path(sig)
        claim, refused = path + ".claim", path + ".refused"
        if os.path.exists(refused):  # (its self-check failed in another process: h5py writes these files)
            self._known[key] = None
            return False
        try:
            os.makedirs(self.folder, exist_ok=True)
            if sum(n.endswith(".h5image") for n in os.listdir(self.folder)) >= MOST:
                return False  # (the folder is full: its size stays bounded)
            with contextlib.suppress(FileNotFoundError):
                if time.time() - os.stat(claim).st_mtime > CLAIM_S:  # (its maker was killed)
                    os.unlink(claim)
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            ours = os.fstat(fd).st_ino
            os.close(fd)
        except OSError:
            return False
        try:
            # (scratch files of this maker only: a stale claim taken over elsewhere never shares them)
            template = make(sig, write, f"{claim}.{os.getpid()}.{os.urandom(4).hex()}", arrays, attrs, real)
            self._known[key] = template
            if template is None:
                with open(refused, "wb"):
                    pass
                return False
            with open(claim, "wb") as f:  # (the claim becomes the template: a killed maker leaves only its claim)
                f.write(template.dumps())
            os.replace(claim, path)
            return True
        except Exception:  # noqa: BLE001 - a template is only an optimisation: the file is written already
            return False
        finally:
            with contextlib.suppress(OSError):
                if os.stat(claim).st_ino == ours:  # (not a claim another maker took over since)
                    os.unlink(claim)
