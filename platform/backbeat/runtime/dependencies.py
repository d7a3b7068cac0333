"""The data files a database view opens, seen through Python's audit hooks (like a depfile).

A view is user code reading files under its database's root folder (and, for databases that
ship data with their code, under the database's folder in the prefix).  Which files it
reads decides what its outputs depend on, so an indexing job and the database provider
record them: :class:`OpenRecorder` installs one audit hook (:func:`sys.addaudithook`) in the
process and, while the view runs (:meth:`OpenRecorder.watch`), notes each file opened for
reading (``open`` events: ``open()``, ``io.open``, ``os.open``) and each folder listed
(``os.listdir``, ``os.scandir``: ``glob``, ``os.walk``, ``pathlib`` use them) under one of
its *folders*, with its ``stat`` signature at that moment (None for a file that did not
exist).  Paths are kept as ``<folder name>/<path relative to it>`` (``root/images/1.png``,
``code/data/iris.csv``), so what was read can be compared wherever the data lives.

Not seen (``docs/provenance.md``, "Limits"): files opened by C code without going through
Python (an HDF5 or image library opening files itself), memory maps of files opened
elsewhere, mere existence checks (``os.path.exists``, ``os.stat``), and files outside the
watched folders.  The database's own asset files and Python byte-code are not data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backbeat.core.errors import IntegrityError
from backbeat.core.hashing import listing_digest
from backbeat.core.statmemo import StatMemo

#: ``<version>.json|py|rst`` at the top of a database's folder: its asset files, hashed as the asset
_ASSET_FILE = re.compile(r"^\d+\.(json|py|rst)$")
_READ_FLAGS = (os.O_RDONLY, os.O_RDWR)

Stat = list[int] | None  # [size, mtime_ns, ctime_ns, inode], None: absent


def signature(path: str) -> Stat:
    """What :mod:`backbeat.core.statmemo` compares, as a list (None: no such file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class OpenRecorder:
    """Files and folders opened under ``folders`` (``{name: folder}``) while :meth:`watch` is on.

    ``seen``: ``{"<name>/<relative path>": {"kind": "file"|"folder", "phase", "stat"}}``, in
    the order first seen; ``fresh`` lists the entries added since :meth:`take_fresh`.
    """

    _active: OpenRecorder | None = None
    _installed = False

    def __init__(self, folders: dict[str, str]) -> None:
        self.bases: list[tuple[str, str, str]] = []  # (name, folder + "/", folder): as given, then resolved
        for name, folder in folders.items():
            if folder:
                given = os.path.abspath(os.path.expanduser(folder))
                for base in dict.fromkeys((given, os.path.realpath(given))):
                    self.bases.append((name, base + os.sep, folder))
        self.bases.sort(key=lambda b: -len(b[1]))  # the deepest folder first (the code folder may be under the root)
        self.seen: dict[str, dict] = {}
        self.fresh: list[str] = []
        self.phase = "index"
        self._busy = False

    # -- the hook ----------------------------------------------------------------------------
    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        rec = cls._active
        if rec is None or rec._busy:
            return
        if event == "open":
            path, mode, flags = args
            if mode is not None:
                if not isinstance(mode, str) or ("r" not in mode and "+" not in mode):
                    return
            elif not isinstance(flags, int) or (flags & os.O_ACCMODE) not in _READ_FLAGS:
                return
            rec._note(path, "file")
        elif event in ("os.listdir", "os.scandir"):
            rec._note(args[0] if args else None, "folder")

    def _note(self, path: Any, kind: str) -> None:
        if isinstance(path, int):
            return  # an already open descriptor: its opening was seen (or not ours)
        try:
            text = os.fsdecode(os.fspath(path)) if path is not None else "."
        except TypeError:
            return
        self._busy = True
        try:
            full = os.path.abspath(text)
            probe = full + os.sep if kind == "folder" else full
            for name, base, _folder in self.bases:
                if probe.startswith(base):
                    rel = full[len(base):]
                    if kind == "file" and self._ignored(name, rel):
                        return
                    label = f"{name}/{rel}" if rel else name
                    if label not in self.seen:
                        self.seen[label] = {"kind": kind, "phase": self.phase, "stat": signature(full)}
                        self.fresh.append(label)
                    return
        finally:
            self._busy = False

    @staticmethod
    def _ignored(name: str, rel: str) -> bool:
        parts = rel.split(os.sep)
        if "__pycache__" in parts or rel.endswith(".pyc"):
            return True
        return name == "code" and len(parts) == 1 and bool(_ASSET_FILE.match(parts[0]))

    # -- use -----------------------------------------------------------------------------------
    @contextmanager
    def watch(self, phase: str) -> Iterator[None]:
        """Record what is opened inside the block (the view's calls), as ``phase``."""
        if not OpenRecorder._installed:
            sys.addaudithook(OpenRecorder._hook)  # once per process: hooks cannot be removed
            OpenRecorder._installed = True
        previous, OpenRecorder._active = OpenRecorder._active, self
        self.phase = phase
        try:
            yield
        finally:
            OpenRecorder._active = previous

    def take_fresh(self) -> list[str]:
        """Entries first seen since the last call."""
        out, self.fresh = self.fresh, []
        return out

    def absolute(self, label: str) -> str:
        """The path on disk of a recorded entry."""
        name, _, rel = label.partition("/")
        for n, base, _folder in self.bases:
            if n == name:
                return os.path.join(base, rel) if rel else base.rstrip(os.sep)
        raise KeyError(label)


class DataGuard:
    """The database provider's check of what a view reads while serving blocks.

    The dataset's keys were computed from a data manifest (``spec.manifest``): before a
    window of data goes out, each file the view opened for it is checked — a file of the
    manifest whose content changed since (edited during the run) makes the window fail
    (:class:`~backbeat.core.errors.IntegrityError`): data that is not what the keys say is
    never served.  A file the manifest does not list (the view reads differently than when
    it was indexed) is appended to the journal ``spec.deps``; the next run adds it to the
    dataset's manifest, so its keys change and what was computed meanwhile is not reused.
    """

    def __init__(self, folders: dict[str, str], manifest: str | None, journal: str | None,
                 memo: str | None) -> None:
        self.recorder = OpenRecorder(folders)
        self.manifest_path = manifest
        self.journal = journal
        self.memo = StatMemo(memo)
        self._manifest: dict | None = None

    def watch(self) -> Any:
        return self.recorder.watch("get")

    def _load(self) -> dict:
        if self._manifest is None:
            if self.manifest_path is None:
                self._manifest = {"files": {}, "folders": {}}
            else:
                path = Path(self.manifest_path)
                raw = path.read_bytes()
                if hashlib.sha256(raw).hexdigest() != path.parent.name + path.name[: -len(".json")]:
                    raise IntegrityError(f"data manifest `{path}' does not hold the bytes it is named after")
                self._manifest = json.loads(raw)
        return self._manifest

    def check(self) -> None:
        """Check what the view opened since the last check (see the class docstring)."""
        fresh = self.recorder.take_fresh()
        if not fresh:
            return
        manifest = self._load()
        learnt = []
        try:
            for label in fresh:
                path = self.recorder.absolute(label)
                what = self.recorder.seen[label]
                entry = manifest["folders" if what["kind"] == "folder" else "files"].get(label)
                if entry is None:
                    learnt.append({"label": label, **what})
                    continue
                if signature(path) != what["stat"]:
                    raise IntegrityError(f"data file `{path}' changed while the view read it: its data is not "
                                         f"served; run the experiment again")
                if what["kind"] == "folder":
                    now = self.memo.digest(path, tag="listing", compute=listing_digest) if what["stat"] else None
                    recorded = entry.get("listing")
                else:
                    now = self.memo.digest(path) if what["stat"] and os.path.isfile(path) else None
                    recorded = entry.get("sha256")
                if now != recorded:
                    raise IntegrityError(
                        f"data file `{path}' changed after this run computed its cache keys (sha256 "
                        f"{str(recorded)[:12]} -> {str(now)[:12]}): its data is not served; run the experiment "
                        f"again")
        finally:
            self.memo.flush()
        if learnt and self.journal is not None:
            try:  # (one write: appends of several providers do not interleave)
                with open(self.journal, "a", encoding="utf-8") as f:
                    f.write("".join(json.dumps(e) + "\n" for e in learnt))
            except OSError:
                pass  # a read-only cache: nothing can be learnt for the next run
