"""The attestation archive: a plain tar file of JSON documents and files, named by a digest.

Layout (``docs/attestations.md``)::

    manifest.json        {"format", "experiment", "created", "backbeat", "with_data",
                          "members": {name: {"sha256", "size"}}}   (canonical JSON)
    manifest.sha256      "<sha256 of manifest.json>  manifest.json\\n"  (``sha256sum -c`` reads it)
    attestation.json     what the archive attests (:mod:`backbeat.attestation.description`)
    provenance.json      the provenance record of the run
    prefix/…             declarations, code and documentation, as laid out in a prefix
    data-manifests/<digest>.json   the data manifests of the datasets
    results/<analyzer>.h5, .json   the analyzers' results (HDF5 cache file, records as JSON)
    data/<database>/<version>/root|code/…   the raw data files the views read (``--with-data``)

The sha256 of ``manifest.json`` is the attestation's **name**: it covers every member's
digest, so one hex string identifies everything in the archive.

Writing (:class:`Writer`) hashes every member first, then writes the manifest and the members
in that order (each file read again and checked: a file changing meanwhile is an error), with
fixed owners, modes and times, so the same content gives the same bytes.

Reading (:func:`extract`) treats the archive as untrusted: it is read as a stream; the
manifest must come first and be small; every member must be a regular file whose name is a
relative path inside the layout above (no absolute path, ``..``, link, device, duplicate,
unlisted member — and tarfile's own ``data`` filter agrees), of the size the manifest says,
written without following links into a fresh folder; its sha256 is compared with the
manifest's.  Structural problems raise :class:`~backbeat.core.errors.DataError` naming the
member; content mismatches are collected (:attr:`Extracted.problems`).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbeat.core import hashing, jsonio
from backbeat.core.errors import DataError

FORMAT = "backbeat-attestation-1"
MANIFEST = "manifest.json"
NAME_FILE = "manifest.sha256"
#: top-level members and folders an archive may hold
DOCUMENTS = ("attestation.json", "provenance.json")
FOLDERS = ("prefix", "data-manifests", "results", "data")

MAX_MANIFEST = 64 << 20  # bytes of manifest.json
MAX_JSON = 256 << 20  # bytes of any JSON member read into memory
MAX_MEMBERS = 500_000
MAX_NAME = 1024
SIZE_SLACK = 64 << 20  # a member this much bigger than the manifest says is still read (to report on it)
_HEX = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def unsafe_name(name: str) -> str | None:
    """Why ``name`` may not be a member of an attestation archive (None when it may).

    >>> unsafe_name("prefix/algorithms/user/x/1.py") is None
    True
    >>> unsafe_name("../etc/passwd")
    "has an empty, `.' or `..' component"
    """
    if not name or len(name) > MAX_NAME:
        return "is empty or too long"
    if any(ord(c) < 32 or c in "\\\x7f" for c in name):
        return "holds a control character or a backslash"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "has an empty, `.' or `..' component"
    if name in DOCUMENTS or (parts[0] in FOLDERS and len(parts) > 1):
        return None
    return f"is outside the layout of an attestation ({', '.join(DOCUMENTS)}, {'/, '.join(FOLDERS)}/)"


# -- writing ------------------------------------------------------------------------------------
@dataclass
class Member:
    name: str
    sha256: str
    size: int
    data: bytes | None = None  # in memory, or
    source: Path | None = None  # a file read again when written


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, 0o644, 0, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _Hashing(io.RawIOBase):
    """A file read through, hashed as it goes (what tarfile copies is what is checked)."""

    def __init__(self, f: Any) -> None:
        self.f, self.h = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        return data


def file_digest(path: Path) -> tuple[str, int]:
    """``(sha256, size)`` of a file."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class Writer:
    """Collects members, then writes the archive with its manifest first."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}

    def _add(self, member: Member) -> Member:
        why = unsafe_name(member.name)
        if why is not None or member.name in self.members:
            raise DataError(f"attestation member `{member.name}' {why or 'is added twice'}")
        self.members[member.name] = member
        return member

    def add_bytes(self, name: str, data: bytes) -> Member:
        return self._add(Member(name, hashlib.sha256(data).hexdigest(), len(data), data=data))

    def add_json(self, name: str, doc: Any) -> Member:
        return self.add_bytes(name, jsonio.dumps(doc).encode("utf-8") + b"\n")

    def add_file(self, name: str, path: Path, sha256: str | None = None, what: str = "file") -> Member:
        """Add ``path`` as ``name``; ``sha256``: the content it must have (else DataError naming it)."""
        try:
            digest, size = file_digest(path)
        except OSError as exc:
            raise DataError(f"{what} `{path}' cannot be read: {exc.strerror or exc}") from None
        if sha256 is not None and digest != sha256:
            raise DataError(f"{what} `{path}' has sha256 {digest[:12]}, not the recorded {sha256[:12]}: it changed "
                            f"since the recorded run (run the experiment again before exporting it)")
        return self._add(Member(name, digest, size, source=path))

    def manifest(self, head: dict) -> bytes:
        members = {n: {"sha256": m.sha256, "size": m.size} for n, m in sorted(self.members.items())}
        return hashing.canonical({**head, "format": FORMAT, "members": members})

    def write(self, path: Path, head: dict) -> tuple[str, int]:
        """Write the archive to ``path`` (atomically); ``(its name, its size in bytes)``."""
        manifest = self.manifest(head)
        name = hashlib.sha256(manifest).hexdigest()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(_info(MANIFEST, len(manifest)), io.BytesIO(manifest))
                line = f"{name}  {MANIFEST}\n".encode()
                tar.addfile(_info(NAME_FILE, len(line)), io.BytesIO(line))
                for m in sorted(self.members.values(), key=lambda m: m.name):
                    if m.data is not None:
                        tar.addfile(_info(m.name, m.size), io.BytesIO(m.data))
                        continue
                    assert m.source is not None
                    with open(m.source, "rb") as f:
                        reader = _Hashing(f)
                        tar.addfile(_info(m.name, m.size), reader)  # type: ignore[arg-type]
                    if reader.h.hexdigest() != m.sha256:
                        raise DataError(f"file `{m.source}' changed while it was being exported: export again")
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DataError(f"cannot write the attestation `{path}': {exc.strerror or exc}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return name, path.stat().st_size


# -- reading ------------------------------------------------------------------------------------
@dataclass
class Extracted:
    """An archive read into ``folder``: its name (sha256 of its manifest), the name it claims
    (``manifest.sha256``), its manifest, and what does not match (``[{kind, subject, message}]``)."""

    archive: Path
    folder: Path
    name: str
    claimed: str | None
    manifest: dict
    problems: list[dict] = field(default_factory=list)
    bad: set[str] = field(default_factory=set)  # members whose content is not the manifest's

    @property
    def intact(self) -> bool:
        return not self.problems

    def path(self, member: str) -> Path:
        return self.folder.joinpath(*member.split("/"))

    def has(self, member: str) -> bool:
        return member in self.manifest["members"] and self.path(member).is_file()

    def json(self, member: str) -> Any:
        """A JSON member, parsed (DataError naming it when absent, too big or not JSON)."""
        path = self.path(member)
        try:
            if path.stat().st_size > MAX_JSON:
                raise DataError(f"attestation member `{member}' is too big to be read ({path.stat().st_size} bytes)")
            return jsonio.parse(path.read_bytes())
        except OSError:
            raise DataError(f"attestation `{self.archive}' has no member `{member}'") from None
        except jsonio.JSONProblem as exc:
            raise DataError(f"attestation member `{member}' is not valid JSON: {exc}") from None


def _check_manifest(archive: Path, doc: Any) -> dict:
    where = f"attestation `{archive}': {MANIFEST}"
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"{where} is not a manifest of format {FORMAT}")
    members = doc.get("members")
    if not isinstance(members, dict) or len(members) > MAX_MEMBERS:
        raise DataError(f"{where}: `members' must be an object of at most {MAX_MEMBERS} members")
    for name, m in members.items():
        why = unsafe_name(name)
        if why is not None:
            raise DataError(f"{where}: member `{name}' {why}")
        if (not isinstance(m, dict) or not isinstance(m.get("sha256"), str) or not _HEX.match(m["sha256"])
                or isinstance(m.get("size"), bool) or not isinstance(m.get("size"), int) or m["size"] < 0):
            raise DataError(f"{where}: member `{name}' needs a `sha256' (64 hex digits) and a `size' (bytes)")
    return doc


def _read_small(tar: tarfile.TarFile, info: tarfile.TarInfo, limit: int, archive: Path) -> bytes:
    if not info.isreg() or info.size > limit:
        raise DataError(f"attestation `{archive}': member `{info.name}' is not a regular file of at most {limit} bytes")
    f = tar.extractfile(info)
    assert f is not None
    return f.read()


def _refuse_type(info: tarfile.TarInfo, folder: Path, archive: Path) -> None:
    kind = ("a symbolic link" if info.issym() else "a hard link" if info.islnk() else "a folder" if info.isdir()
            else "a device or fifo" if (info.isdev()) else None if info.isreg() else "not a regular file")
    if kind is not None:
        raise DataError(f"attestation `{archive}': member `{info.name}' is {kind}: refused (an attestation holds "
                        f"regular files only)")
    why = unsafe_name(info.name)
    if why is not None:
        raise DataError(f"attestation `{archive}': member `{info.name}' {why}: refused")
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:  # Python >= 3.12 (and recent 3.8-3.11 releases): the standard checks too
        try:
            data_filter(info, str(folder))
        except tarfile.FilterError as exc:
            raise DataError(f"attestation `{archive}': member `{info.name}' refused: {exc}") from None


def _write_member(tar: tarfile.TarFile, info: tarfile.TarInfo, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    h = hashlib.sha256()
    src = tar.extractfile(info)
    assert src is not None
    with os.fdopen(fd, "wb") as out:
        left = info.size
        while left > 0:
            chunk = src.read(min(_CHUNK, left))
            if not chunk:
                raise EOFError("unexpected end of data")
            h.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def extract(archive: str | os.PathLike, folder: str | os.PathLike) -> Extracted:
    """Read ``archive`` into the empty folder ``folder`` (see the module docstring)."""
    archive, folder = Path(archive), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    current = MANIFEST
    try:
        with tarfile.open(archive, "r|*") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST:
                raise DataError(f"attestation `{archive}': its first member must be {MANIFEST} (it is "
                                f"{first.name if first else 'empty'}): not an attestation archive")
            raw = _read_small(tar, first, MAX_MANIFEST, archive)
            try:
                manifest = _check_manifest(archive, jsonio.parse(raw))
            except jsonio.JSONProblem as exc:
                raise DataError(f"attestation `{archive}': {MANIFEST} is not valid JSON: {exc}") from None
            out = Extracted(archive, folder, hashlib.sha256(raw).hexdigest(), None, manifest)
            members: dict[str, dict] = manifest["members"]
            total = sum(m["size"] for m in members.values()) + SIZE_SLACK
            free = shutil.disk_usage(folder).free
            if total > free:
                raise DataError(f"attestation `{archive}' holds {total} bytes; only {free} are free in `{folder}'")
            seen: set[str] = set()
            for info in tar:  # (from the first member again)
                if info is first:
                    continue
                current = info.name
                if info.name == NAME_FILE and out.claimed is None and not seen:
                    text = _read_small(tar, info, 1024, archive).decode("utf-8", "replace")
                    out.claimed = text.split()[0] if text.split() else ""
                    continue
                _refuse_type(info, folder, archive)
                if info.name in seen:
                    raise DataError(f"attestation `{archive}': member `{info.name}' appears twice: refused")
                seen.add(info.name)
                m = members.get(info.name)
                if m is None:
                    raise DataError(f"attestation `{archive}': member `{info.name}' is not listed in {MANIFEST} "
                                    f"(added after the attestation was made): refused")
                if info.size > m["size"] + SIZE_SLACK:  # (a bounded difference is extracted, to say more)
                    out.bad.add(info.name)
                    out.problems.append(_problem(info.name, f"member {info.name}: {info.size} bytes, the manifest "
                                                            f"says {m['size']} (modified)"))
                    continue
                digest = _write_member(tar, info, out.path(info.name))
                if digest != m["sha256"] or info.size != m["size"]:
                    out.bad.add(info.name)
                    sizes = f", {info.size} bytes instead of {m['size']}" if info.size != m["size"] else ""
                    out.problems.append(_problem(info.name, f"member {info.name}: sha256 {digest[:12]} differs from "
                                                            f"the manifest's {m['sha256'][:12]}{sizes} (modified)"))
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"attestation `{archive}' cannot be read (at member `{current}'): {exc}") from None
    except OSError as exc:
        raise DataError(f"attestation `{archive}' cannot be read (at member `{current}'): "
                        f"{exc.strerror or exc}") from None
    for name in sorted(set(members) - seen):
        out.bad.add(name)
        out.problems.append(_problem(name, f"member {name}: listed in the manifest, missing from the archive"))
    if out.claimed is None:
        out.problems.append(_problem(NAME_FILE, f"{NAME_FILE} is missing: the archive does not say its name"))
    elif out.claimed != out.name:
        out.problems.insert(0, _problem(MANIFEST, f"{MANIFEST}: its sha256 {out.name[:12]} is not the attestation "
                                                  f"name {out.claimed[:12]} of {NAME_FILE} (the manifest was "
                                                  f"modified)"))
    return out


def _problem(member: str, message: str) -> dict:
    return {"kind": "member", "subject": member, "message": message}
