"""The cache store: the one owner of the cache's layout, locks, temporaries, commits and checks.

Every part of backbeat that reads or writes the cache goes through a :class:`CacheStore`
(opened with :func:`backbeat.cache.backends.open_store`), never through paths of its own.

Layout (``file`` backend, BEAT-compatible paths): an *entry* is the file
``<root>/xx/yy/zz/<rest of a 64-hex key><suffix>`` (:meth:`CacheStore.name`):

* ``.h5`` — a block output or analyzer result (:mod:`backbeat.data.cachefile`), committed
  atomically: a writer fills ``<entry>.tmp-<pid>-<random>`` and renames it into place once
  complete (its content digest and key written), *marked unsynced* until it is durable;
  ``<entry>.slot<k>`` are the parts of a split block, assembled into the entry;
* ``.db`` — a view index (:mod:`backbeat.data.dbindex`), with ``<entry>.sha256`` beside it and
  ``<entry>.deps``: the index's identity and the data manifest of what its view opened
  (:meth:`CacheStore.index_record`), and its columnar form ``<entry>.table``
  (:mod:`backbeat.data.indextable`), made again whenever it is missing or stale;
* ``.h5.json`` — the JSON summary of a verified analyzer result (:mod:`backbeat.cache.results`);
* ``.log`` — the output (stdout and stderr) of the last process that computed a job,
  ``<job key>.log`` (``<job key>.<part>.log`` for one slot of a split block or one side of a
  loop; a view index's indexing job: ``<index key>.log``), at most ~1 MiB each
  (:meth:`CacheStore.log_path`, :mod:`backbeat.processes.logs`);
* ``<root>/.locks/<key>`` — the per-key lock files (:meth:`CacheStore.lock`; those no run holds
  are removed by :meth:`CacheStore.prune_locks`, ``cache gc``);
* ``<root>/.runs/`` — the journals of runs in progress (:mod:`backbeat.cache.journal`): what
  a run killed with ``kill -9`` may have left, cleaned by the next run;
* ``<root>/provenance/`` — run records (:mod:`backbeat.provenance.records`);
* ``<root>/code/``, ``<root>/manifests/`` — content-addressed code snapshots and data manifests
  (:mod:`backbeat.cache.blobs`);
* ``<root>/.memo/stat.sqlite3`` — the stat memo (:mod:`backbeat.core.statmemo`);
* ``<root>/.quarantine/`` — entries found not to be what their name says, moved aside
  (:meth:`CacheStore.quarantine`);
* ``<root>/.staging/<run>/`` — where the processes of a sandboxed run write, until their outputs
  are checked and moved to their entries (:meth:`CacheStore.staging_folder`,
  :mod:`backbeat.execution.sandboxing`).

Temporaries are recognised by one pattern (:data:`TEMPORARY`); a temporary whose writer
process is alive is never removed.  A job's entries are *committed* when every output
entry exists (:meth:`CacheStore.committed`): a file only appears at an entry's name once it
is complete.

Every read of an entry checks its identity — the key stored in the file equals the key it
was looked up by (:meth:`CacheStore.check_identity`, memoised by ``stat``) — and reads that
must be trusted verify its content digest too (:meth:`CacheStore.verify_output`).  An entry
failing either is moved to the quarantine and its producer re-run.  *Verified before trusted*:
an entry still marked unsynced (:mod:`backbeat.core.durable`) is verified by its digest, never
by its identity alone nor by the memo; a run makes its entries durable in the background
(:meth:`CacheStore.entrust`; ``docs/execution.md`` §3b).

The class is the interface the rest of backbeat uses; another backend subclasses it (see
``docs/architecture.md``, "Adding a cache backend").
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from backbeat.cache import locks
from backbeat.cache.blobs import Blobs
from backbeat.cache.durability import Durability
from backbeat.cache.locks import EntryLock
from backbeat.core import durable, hashing, jsonio, pids
from backbeat.core.errors import BackbeatError, DataError, IntegrityError
from backbeat.core.statmemo import StatMemo
from backbeat.data import indexfiles

OUTPUT = ".h5"
INDEX = ".db"
LOG = ".log"
#: a writer's temporary file: ``<entry>.tmp-<pid>-<random>`` (``[.sha256]`` for an index digest)
TEMPORARY = re.compile(r"\.tmp-(\d+)-")
#: top-level folders of the cache that hold no entries and are never scanned nor deleted
IMAGES = ".h5images"  # the templates of small cache files (data.h5image: made by blocks, checked when read)
BOOKKEEPING = (".locks", "provenance", ".progress", ".memo", ".quarantine", "code", "manifests", ".runs",
               ".staging", IMAGES)
_HEX2 = re.compile(r"^[0-9a-f]{2}$")
_KEY = re.compile(r"^[0-9a-f]{64}$")
_REST = re.compile(r"^[0-9a-f]{58}(\..*)?$")
#: format of a view index's identity record (``<entry>.deps``)
INDEX_RECORD = "backbeat-index-record-1"


class CacheStore:
    """A cache on a file system shared by everything that runs blocks (``file`` backend)."""

    scheme = "file"

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._memo: StatMemo | None = None
        self._paths: dict[tuple[str, str], Path] = {}  # (key, suffix) -> path: a Path costs ~10 µs to make
        #: what it knows of its entries' durability (:mod:`backbeat.cache.durability`)
        self.durability = Durability(lambda: self.memo)
        #: code snapshots (:mod:`backbeat.cache.blobs`)
        self.code = Blobs(self.root / "code")
        #: data manifests (:mod:`backbeat.provenance.manifests`)
        self.manifests = Blobs(self.root / "manifests", ".json")

    def __repr__(self) -> str:
        return f"CacheStore({str(self.root)!r})"

    @property
    def location(self) -> str:
        """What :func:`~backbeat.cache.backends.open_store` opens again (e.g. on a remote worker)."""
        return str(self.root)

    @property
    def canonical_location(self) -> str:
        """The location as run records keep it (an absolute path)."""
        return str(self.root.resolve())

    # -- layout ------------------------------------------------------------------------------
    @staticmethod
    def name(key: str, suffix: str) -> str:
        """An entry's name relative to the root (``xx/yy/zz/<rest>`` + suffix), as records show it."""
        return hashing.to_path(key, suffix)

    def path(self, key: str, suffix: str) -> Path:
        path = self._paths.get((key, suffix))  # (a Path costs ~10 µs: ~10 per block a run starts)
        if path is None:  # (at most 65,536 kept: a walk over a whole cache does not keep them all)
            self._paths = self._paths if len(self._paths) < 65536 else {}
            path = self._paths[key, suffix] = self.root / self.name(key, suffix)
        return path

    def output_path(self, key: str) -> Path:
        """The cache file of a block output or analyzer result."""
        return self.path(key, OUTPUT)

    def index_path(self, key: str) -> Path:
        """The view index file of a dataset."""
        return self.path(key, INDEX)

    def slot_path(self, key: str, slot: int) -> Path:
        """The file slot ``slot`` of a split block writes for output ``key``."""
        return Path(f"{self.output_path(key)}.slot{slot}")

    def log_path(self, key: str, part: str | None = None) -> Path:
        """The output log of the job (or view index) ``key``; ``part``: a slot (``slot0``…) or a
        loop side (``evaluator``, ``processor``)."""
        return self.path(key, f".{part}{LOG}" if part else LOG)

    @property
    def records_folder(self) -> Path:
        """Where run records are kept (:mod:`backbeat.provenance.records`)."""
        return self.root / "provenance"

    @property
    def memo(self) -> StatMemo:
        """The stat memo of this cache (one per store object; flushed by :meth:`flush`)."""
        if self._memo is None:
            self._memo = StatMemo(self.root / ".memo" / "stat.sqlite3")
        return self._memo

    def flush(self) -> None:
        """Persist what the memo learnt (the end of a run, status, audit)."""
        self.durability.settle()
        if self._memo is not None:
            self._memo.flush()

    def is_entry(self, path: Path) -> bool:
        """True if ``path`` (inside the root) is shaped like a cache entry."""
        try:
            parts = path.relative_to(self.root).parts
        except ValueError:
            return False
        return len(parts) == 4 and all(_HEX2.match(p) for p in parts[:3]) and bool(_REST.match(parts[3]))

    def scan(self) -> tuple[list[Path], list[Path]]:
        """``(cache entries, other files)`` under the root (sorted; :data:`BOOKKEEPING` excluded)."""
        if not self.root.is_dir():
            raise BackbeatError(f"cache folder `{self.root}' does not exist")
        entries: list[Path] = []
        other: list[Path] = []
        for dirpath, dirs, files in os.walk(self.root):
            here = Path(dirpath)
            if here == self.root:
                dirs[:] = [d for d in dirs if d not in BOOKKEEPING]
            dirs.sort()
            for f in sorted(files):
                p = here / f
                (entries if self.is_entry(p) else other).append(p)
        return entries, other

    def resolve(self, ref: str) -> Path:
        """A cache file named by path (as given or relative to the root) or by a 64-hex key."""
        p = Path(ref)
        for candidate in (p, self.root / p):
            if candidate.is_file():
                return candidate
        if _KEY.fullmatch(ref):
            for candidate in (self.output_path(ref), self.index_path(ref)):
                if candidate.is_file():
                    return candidate
        raise BackbeatError(f"`{ref}' is neither a file nor the key of a file in cache `{self.root}'")

    # -- locks -------------------------------------------------------------------------------
    def lock(self, key: str, wait: bool = True) -> EntryLock | None:
        """Take the exclusive lock of ``key``: wait for it, or (``wait=False``) None if it is held.

        Two runs (or a run and a remote worker) needing the same job never compute it at once:
        the second waits, then finds the entries committed (:mod:`backbeat.cache.locks`).
        """
        return locks.acquire(self.root / ".locks", key, wait)

    def prune_locks(self, dry_run: bool = False) -> int:
        """Remove the lock files nobody holds (one per job ever run piles up otherwise); their number."""
        return locks.prune(self.root / ".locks", dry_run)

    # -- temporaries -------------------------------------------------------------------------
    @staticmethod
    def is_temporary(path: Path) -> bool:
        return TEMPORARY.search(path.name) is not None

    @staticmethod
    def live_temporary(path: Path) -> bool:
        """Whether ``path`` is a temporary whose writer process is still alive."""
        m = TEMPORARY.search(path.name)
        if m is None:
            return False
        try:
            since = path.stat().st_mtime
        except OSError:
            return False
        return pids.alive(int(m.group(1)), since)

    def drop_temporaries(self, path: str | os.PathLike, locked: bool = False) -> list[Path]:
        """Remove the writers' temporaries of the entry (or slot file) at ``path``.

        Those of a live writer are kept — unless ``locked``: the caller holds the entry's
        lock, so no writer of it is alive on any host sharing the cache (a pid seen from here
        may name a process elsewhere).
        """
        target = Path(path)
        removed: list[Path] = []
        if not target.parent.is_dir():
            return removed
        prefix = target.name + ".tmp-"
        for tmp in target.parent.iterdir():
            if not tmp.name.startswith(prefix) or not self.is_temporary(tmp):
                continue
            if not locked and self.live_temporary(tmp):
                continue
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
        return removed

    def staging_folder(self) -> Path:
        """A new, private folder of the cache's file system for the outputs of a sandboxed run."""
        parent = self.root / ".staging"
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=parent))

    # -- commits -----------------------------------------------------------------------------
    def committed(self, keys: Iterable[str]) -> bool:
        """Whether every output entry of ``keys`` is committed (an empty key never is)."""
        keys = list(keys)
        return all(k and self.output_path(k).is_file() for k in keys)

    def drop_partial(self, keys: Iterable[str], slots: int = 0, committed: bool = False,
                     locked: bool = False) -> None:
        """Remove what an unfinished job left of its outputs ``keys``: writers' temporaries, the
        files of its first ``slots`` slots, and with ``committed`` the committed entries too."""
        for key in keys:
            final = self.output_path(key)
            self.drop_temporaries(final, locked)
            if committed:
                final.unlink(missing_ok=True)
            for k in range(slots):
                part = self.slot_path(key, k)
                self.drop_temporaries(part, locked)
                part.unlink(missing_ok=True)

    def discard(self, key: str) -> None:
        """Remove an output entry (found corrupted)."""
        self.output_path(key).unlink(missing_ok=True)

    def discard_index(self, key: str) -> None:
        """Remove a view index entry (its view failed to index), its digest, table and record."""
        for path in indexfiles.files(self.index_path(key)):
            path.unlink(missing_ok=True)

    # -- identity and verification ----------------------------------------------------------
    def identity(self, key: str) -> tuple[str, str]:
        """``(stored key, stored digest)`` of an output entry, from its attributes, memoised by
        ``stat`` (a cached run opens no HDF5 file); IntegrityError/OSError when unreadable.

        An entry marked as not yet durable (:mod:`backbeat.core.durable`; a warm template's
        command syncing it after its answer is waited for) is verified by its content digest
        instead — after a crash its attributes may have survived without its data — then made
        durable here, and only then remembered."""
        path = self.output_path(key)
        st = path.stat()
        if durable.is_unsynced(st) and durable.await_peers():
            st = path.stat()
        if durable.is_unsynced(st):
            return self.durability.verified_identity(path)
        value = self.memo.lookup("h5-identity", path, st)
        if value is None:
            from backbeat.data import cachereader

            stored, digest = cachereader.stored_identity(path)
            self.memo.remember("h5-identity", path, st, f"{stored} {digest}")
            return stored, digest
        stored, _, digest = value.partition(" ")
        return stored, digest

    def check_identity(self, key: str) -> str:
        """The stored digest of output entry ``key`` after checking that the file holds *this*
        key's output (IntegrityError otherwise)."""
        stored, digest = self.identity(key)
        if stored != key:
            from backbeat.data.cachefile import identity_message

            raise IntegrityError(identity_message(str(self.output_path(key)), stored, key))
        return digest

    def verify_output(self, key: str) -> str:
        """Verify an output entry: its identity and its content digest; return the digest.

        Raises :class:`~backbeat.core.errors.IntegrityError` (or ``OSError``) when it does not hold.
        An entry not yet durable is made durable once verified (:meth:`identity`).
        """
        from backbeat.data import cachereader

        path = self.output_path(key)
        st = path.stat()
        digest = cachereader.verify(str(path), key=key)
        if durable.is_unsynced(st):
            st = self.durability.sync_verified(path, st)
        self.memo.remember("h5-identity", path, st, f"{key} {digest}")  # (not if still unsynced)
        return digest

    def entrust(self, key: str, digest: str | None = None) -> None:
        """Output entry ``key`` was just committed (marked unsynced, content ``digest``): made
        durable in the background, then its identity remembered (``cache/durability.py``)."""
        self.durability.entrust(self.output_path(key), key, digest)

    def make_durable(self, keys: Iterable[str]) -> dict[str, OSError]:
        """Make output entries durable now (:func:`backbeat.core.durable.make_durable`)."""
        return durable.make_durable([self.output_path(k) for k in keys])

    def stored_digest(self, key: str) -> str:
        """The content digest recorded in an output entry (attributes only, not verified)."""
        return self.identity(key)[1]

    def index_digest(self, key: str) -> str | None:
        """sha256 of a view index entry's bytes (None if it is not in the cache)."""
        path = self.index_path(key)
        if not path.is_file():
            return None
        return self.memo.digest(path)

    def verified_index_digest(self, key: str) -> str | None:
        """The index's digest if its content matches the digest written beside it, else None."""
        path = self.index_path(key)
        try:
            recorded = Path(f"{path}.sha256").read_text().strip()
        except OSError:
            return None
        return recorded if self.index_digest(key) == recorded else None

    def index_record(self, key: str) -> dict | None:
        """The identity record of view index ``key`` (``<entry>.deps``), if it names this key and
        the index content beside it: ``{"key", "index_digest", "manifest"}`` (the digest of the
        data manifest of what the view opened).  None: absent, or not this index's."""
        try:
            rec = jsonio.parse(Path(f"{self.index_path(key)}.deps").read_bytes())
        except (OSError, jsonio.JSONProblem):
            return None
        if (not isinstance(rec, dict) or rec.get("format") != INDEX_RECORD or rec.get("key") != key
                or not isinstance(rec.get("manifest"), str)
                or rec.get("index_digest") != self.verified_index_digest(key)):
            return None
        return rec

    def set_index_record(self, key: str, index_digest: str, manifest: str) -> None:
        """Write the identity record of a view index just built (atomically)."""
        durable.write_atomic(f"{self.index_path(key)}.deps", jsonio.dumps(
            {"format": INDEX_RECORD, "key": key, "index_digest": index_digest, "manifest": manifest}), sync=False)

    def verify_file(self, path: Path) -> dict:
        """``{"path", "status": ok|corrupt|skipped, "message"}`` for one cache file.

        An output is verified against its content digest and its name (the key it holds
        must be the one its path spells); a result's summary against the result.
        """
        from backbeat.data.cachereader import verify

        try:
            if path.suffix == OUTPUT:
                key = self.key_of(path)
                verify(path, key=key)
                if key is not None and Path(f"{path}.json").is_file():
                    from backbeat.cache.results import summary_problem

                    problem = summary_problem(self, key)
                    if problem:  # the result file is sound: the summary beside it is not
                        return {"path": f"{path}.json", "status": "corrupt", "message": problem}
                if durable.is_unsynced(path.stat()):  # (intact now: read again, verified again, until durable)
                    return {"path": str(path), "status": "ok", "message": "intact, not yet durable (marked unsynced)"}
            elif path.suffix == INDEX:
                from backbeat.data.dbindex import read_index

                read_index(path)
                key = self.key_of(path)
                if Path(f"{path}.sha256").is_file() and key is not None and self.verified_index_digest(key) is None:
                    raise IntegrityError(f"view index `{path}' does not match the digest written beside it")
                if Path(f"{path}.deps").is_file() and key is not None and self.index_record(key) is None:
                    raise IntegrityError(f"view index `{path}': its record ({path.name}.deps) names another index "
                                         f"or content (copied or modified)")
            else:
                return {"path": str(path), "status": "skipped", "message": "not a backbeat cache file"}
        except (DataError, OSError) as exc:
            return {"path": str(path), "status": "corrupt", "message": str(exc)}
        return {"path": str(path), "status": "ok", "message": ""}

    def key_of(self, path: Path) -> str | None:
        """The key an entry's path spells (None for a file outside the layout): the key the
        file must hold."""
        if not self.is_entry(path):
            return None
        parts = path.relative_to(self.root).parts
        return "".join(parts[:3]) + parts[3][:58]

    def quarantine(self, path: Path, reason: str) -> Path | None:
        """Move a file that is not what its name says to ``.quarantine/`` (with a note why);
        where it went (None if it was already gone)."""
        import datetime

        folder = self.root / ".quarantine"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        try:
            name = path.relative_to(self.root).as_posix().replace("/", "")
        except ValueError:
            name = path.name
        target = folder / f"{stamp}-{name}"
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return None
        with contextlib.suppress(OSError):
            Path(f"{target}.why").write_text(reason + "\n")
        return target

    def reject(self, key: str, reason: str) -> str:
        """Quarantine output entry ``key`` (and its summary); a message saying so."""
        self.memo.forget("h5-identity", self.output_path(key))
        summary = Path(f"{self.output_path(key)}.json")
        try:
            if summary.is_file():
                self.quarantine(summary, reason)
            where = self.quarantine(self.output_path(key), reason)
        except OSError as exc:  # (a read-only cache: it stays, and is still not trusted)
            return f"{reason} (it could not be moved to the quarantine: {exc.strerror or exc})"
        return f"{reason} (moved to {where})" if where else reason

    # -- analyzer results --------------------------------------------------------------------
    def read_result(self, key: str) -> list[dict]:
        """Records of one analyzer result entry: ``[{"start", "end", "data"}, …]``
        (:func:`backbeat.cache.results.read_result`: a summary bound to the verified entry)."""
        from backbeat.cache.results import read_result

        return read_result(self, key)

    # -- housekeeping ------------------------------------------------------------------------
    @staticmethod
    def size(path: Path) -> int:
        try:
            return path.stat().st_size
        except OSError:
            return 0

    def delete(self, paths: list[Path]) -> int:
        """Delete entries (never anything else); remove the folders they leave empty; bytes freed."""
        freed = 0
        for p in paths:
            if not self.is_entry(p):
                raise BackbeatError(f"`{p}' is not an entry of cache `{self.root}': not deleted")
            size = self.size(p)
            try:
                p.unlink()
                freed += size
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise BackbeatError(f"cannot delete `{p}': {exc.strerror or exc}") from None
        for folder in sorted({p.parent for p in paths}, key=lambda p: -len(p.parts)):
            for _ in range(3):
                if folder == self.root or not _HEX2.match(folder.name):
                    break
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent
        return freed

    # -- scratch caches ----------------------------------------------------------------------
    @classmethod
    def scratch(cls) -> CacheStore:
        """A fresh, empty cache in a temporary folder (audits re-running an experiment, tests)."""
        return cls(tempfile.mkdtemp(prefix="backbeat-cache-"))

    def destroy(self) -> None:
        """Remove the whole cache (scratch caches only)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, CacheStore) and other.scheme == self.scheme and other.location == self.location

    def __hash__(self) -> int:
        return hash((self.scheme, self.location))
