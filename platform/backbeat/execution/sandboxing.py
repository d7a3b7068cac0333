"""Sandboxed runs: what their fork servers may see, and how their outputs enter the cache.

In the sandbox (:mod:`backbeat.processes.sandbox`) the prefix and the cache are read-only, so a
block cannot write its outputs where an unsandboxed one would.  :class:`Staging` gives each
process of the run its own folder under ``<cache>/.staging/<run>/open/`` (the one folder of the
cache that is writable in the sandbox) and rewrites its spec's output paths (cache entries,
slot files, view indexes) to point there.  Once the process has ended well, the executor
*publishes* what it wrote (:meth:`Staging.publish`): each expected file is first moved out of the
sandbox's reach (to ``<run>/checked/``, so nothing running in the sandbox can change it any
more), then checked — a regular file with no other link; a cache file must verify against its
content digest, be stored under the expected key, and hold the digest its block reported; a
view index must match its digest file and the digest its job reported — and only then renamed
to its entry in the cache.  Anything else a process leaves there is ignored and removed with the
run's staging folder — but for what the executor reads itself, moved out of the sandbox's reach
first (:meth:`Staging.take`: the files an indexing job's view read), and the database provider's
journals of files its views opened beyond their data manifests, added to theirs in the cache
when the run ends (:meth:`Staging.journals`).  A file that fails a check fails its job (``system``), and nothing of it
enters the cache.

:func:`sandbox_for` makes the :class:`~backbeat.processes.sandbox.Sandbox` of a run: read-only
prefix, cache and database root folders, writable staging folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from backbeat.cache.store import CacheStore
from backbeat.core import durable
from backbeat.core.errors import IntegrityError
from backbeat.planning.model import Plan
from backbeat.processes.sandbox import Sandbox

if TYPE_CHECKING:
    from backbeat.runtime.spec import BlockSpec, DatasetSpec

STAGING = ".staging"
#: at most this much of what the sandboxed provider journaled is added to a journal in the cache
JOURNAL_LIMIT = 16 << 20


class Staging:
    """The staging folder of one sandboxed run (see the module docstring)."""

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self.root = store.staging_folder()
        self.open = self.root / "open"
        self.checked = self.root / "checked"
        self.open.mkdir()
        self.checked.mkdir()
        self._staged: dict[str, dict[str, tuple[str, str]]] = {}  # process -> {name: (final path, kind)}
        self._folders: dict[str, Path] = {}
        self._journals: dict[str, str] = {}  # the provider's journal here -> its journal in the cache

    def _folder(self, pid: str) -> Path:
        if pid not in self._folders:
            folder = self.open / str(len(self._folders))
            folder.mkdir()
            self._folders[pid] = folder
            self._staged[pid] = {}
        return self._folders[pid]

    def block(self, pid: str, spec: BlockSpec) -> BlockSpec:
        """``spec`` writing its outputs (or slot files) into process ``pid``'s staging folder."""
        folder = self._folder(pid)
        outputs = {}
        for name, out in spec.outputs.items():
            staged = f"{name}.h5"
            self._staged[pid][staged] = (out.path, out.key)
            outputs[name] = dataclasses.replace(out, path=str(folder / staged))
        return dataclasses.replace(spec, outputs=outputs)

    def index(self, pid: str, spec: DatasetSpec) -> DatasetSpec:
        """``spec`` writing its view index, and the record of the files its view read
        (``deps.json``, see :meth:`take`), into process ``pid``'s staging folder."""
        folder = self._folder(pid)
        self._staged[pid]["index.db"] = (spec.index_path, "")
        return dataclasses.replace(spec, index_path=str(folder / "index.db"),
                                   deps=str(folder / "deps.json") if spec.deps else None)

    def take(self, pid: str, name: str) -> Path:
        """A file process ``pid`` wrote that the executor reads itself (not an entry of the
        cache), moved out of the sandbox's reach first: where it is now; :class:`IntegrityError`
        if it is missing or not a file of its own."""
        folder = self._folders.get(pid)
        if folder is None:
            raise IntegrityError(f"`{pid}' has no staging folder")
        out = self.checked / f"{len(os.listdir(self.checked))}-{name}"
        try:
            st = os.stat(folder / name, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise IntegrityError(f"`{pid}' left `{name}' as something else than a file of its own")
            os.rename(folder / name, out)
        except FileNotFoundError:
            raise IntegrityError(f"`{pid}' did not write `{name}'") from None
        return out

    def publish(self, pid: str, reported: dict[str, str] | None = None) -> None:
        """Check and commit what process ``pid`` wrote; :class:`IntegrityError` when a file fails.

        ``reported``: the digests the process said it wrote (``{staged name: digest}``; for an
        index, ``{"index.db": digest}``).
        """
        folder = self._folders.get(pid)
        if folder is None:
            return
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise IntegrityError(f"the staging folder of `{pid}' was tampered with: {exc}") from None
        try:
            moved = []
            for name in self._staged[pid]:
                out = self.checked / f"{len(os.listdir(self.checked))}-{name}"
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                        raise IntegrityError(f"`{pid}' left `{name}' as something else than a file of its own")
                    os.rename(name, out, src_dir_fd=fd)  # out of the sandbox's reach before it is checked
                    if name == "index.db":
                        st = os.stat(f"{name}.sha256", dir_fd=fd, follow_symlinks=False)
                        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                            raise IntegrityError(f"`{pid}' left `{name}.sha256' as something else than a file "
                                                 f"of its own")
                        os.rename(f"{name}.sha256", f"{out}.sha256", src_dir_fd=fd)
                except FileNotFoundError:
                    raise IntegrityError(f"`{pid}' did not write its output `{name}'") from None
                moved.append((name, out))
            for name, out in moved:
                self._check(pid, name, out, (reported or {}).get(name))
            for name, out in moved:
                final, _key = self._staged[pid][name]
                if name == "index.db":
                    os.replace(f"{out}.sha256", f"{final}.sha256")
                elif not durable.mark_unsynced(out):  # (its untrusted writer synced it, or not: the run does)
                    durable.fsync_path(out)
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.replace(out, final)
                _fsync_dir(final)
        finally:
            os.close(fd)

    def _check(self, pid: str, name: str, path: Path, reported: str | None) -> None:
        final, key = self._staged[pid][name]
        if name == "index.db":
            from backbeat.data.dbindex import verified_digest

            digest = verified_digest(path)
            if digest is None or (reported is not None and digest != reported):
                raise IntegrityError(f"the view index written by `{pid}' does not match its digest")
            return
        from backbeat.data.cachereader import CacheReader

        with CacheReader(path, verify=True) as reader:
            if reader.key != key:
                raise IntegrityError(f"`{pid}' wrote output `{name}' under key {reader.key[:12]}, not "
                                     f"{key[:12]}")
            if reported is not None and reader.digest != reported:
                raise IntegrityError(f"output `{name}' of `{pid}' holds content {reader.digest[:12]}, not the "
                                     f"{reported[:12]} its block wrote")

    def journals(self, specs: dict[str, DatasetSpec]) -> dict[str, DatasetSpec]:
        """The database provider's ``specs``, appending the files their views open beyond their
        data manifests (:class:`backbeat.runtime.dependencies.DataGuard`) to journals of the
        staging folder, added to theirs in the cache when the run ends (:meth:`close`)."""
        out = {}
        for name, spec in specs.items():
            if spec.deps is None:
                out[name] = spec
                continue
            staged = self.open / f"journal-{len(self._journals)}.jsonl"
            self._journals[str(staged)] = spec.deps
            out[name] = dataclasses.replace(spec, deps=str(staged))
        return out

    def _append_journals(self) -> None:
        for staged, journal in self._journals.items():
            try:
                fd = os.open(staged, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue  # (nothing learnt)
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and 0 < st.st_size <= JOURNAL_LIMIT:
                    data = os.read(fd, JOURNAL_LIMIT)
                    lines = data.decode("utf-8", "replace").splitlines(keepends=True)
                    with open(journal, "a", encoding="utf-8") as f:
                        f.write("".join(line for line in lines if line.endswith("\n")))
            except OSError:
                pass  # a read-only cache: nothing can be learnt for the next run
            finally:
                os.close(fd)
        self._journals.clear()

    def publish_job(self, ids: list[str], reported: list[dict[str, str]]) -> str | None:
        """:meth:`publish` each process of a job (``reported``: the digests each said it wrote);
        if one does not hold, discard them all and say why."""
        for pid, digests in zip(ids, reported, strict=True):
            try:
                self.publish(pid, digests)
            except (IntegrityError, OSError) as exc:
                for p in ids:
                    self.discard(p)
                return f"the sandbox refused the outputs of `{pid}': {exc}"
        return None

    def discard(self, pid: str) -> None:
        """Forget what process ``pid`` wrote (it failed)."""
        folder = self._folders.get(pid)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        self._append_journals()
        shutil.rmtree(self.root, ignore_errors=True)


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def reported_digests(statistics: dict) -> dict[str, str]:
    """The digests a block process said it wrote (``{staged name: digest}``), taken out of its statistics."""
    digests = statistics.pop("digests", None)
    if not isinstance(digests, dict):
        return {}
    return {f"{n}.h5": d for n, d in digests.items() if isinstance(d, str)}


def sandbox_for(prefix: Path, store: CacheStore, plan: Plan, staging: Staging) -> Sandbox:
    """The sandbox of a run: prefix, cache and database root folders read-only, staging writable."""
    roots = sorted({ds.root_folder for ds in plan.datasets.values() if ds.root_folder})
    return Sandbox(read_only=(str(prefix.resolve()), str(store.root), *roots), writable=(str(staging.open),))
