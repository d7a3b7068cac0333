"""Cache housekeeping that needs no plan: ``backbeat cache info|view|verify|clear``, deleting entries.

The cache folder holds *cache entries* (see :mod:`backbeat.cache.store`) plus the bookkeeping
folders ``.locks/`` and ``provenance/``.  Only cache entries are ever deleted; anything else
found in the folder is reported and left alone (so a mistyped ``--cache`` cannot wipe an
unrelated folder); the bookkeeping folders are never touched (a running experiment may hold a
lock; run records are history); a temporary whose writer is alive is kept.

Verbs that need the keys of experiments (``experiments caches``, ``cache gc``, cache states
of a drawing) plan them, so they live above planning: :mod:`backbeat.execution.inventory`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from backbeat.cache.backends import open_store
from backbeat.cache.store import INDEX, OUTPUT, CacheStore
from backbeat.core.errors import BackbeatError


def file_info(store: CacheStore, path: Path) -> dict:
    """What one cache file holds (``.h5``: dataformat, units, range, key, digest; ``.db``: entries)."""
    info: dict[str, Any] = {"path": str(path), "bytes": store.size(path)}
    if path.suffix == OUTPUT:
        from backbeat.data.cachefile import CacheReader

        with CacheReader(path, verify=False) as r:
            info.update(type="output", dataformat=r.dataformat, units=r.units, start=r.start, end=r.end,
                        key=r.key, digest=r.digest)
    elif path.suffix == INDEX:
        from backbeat.data.dbindex import index_digest, read_index

        info.update(type="index", entries=len(read_index(path)), digest=index_digest(path))
    else:
        info.update(type="other")
    return info


def info(cache: CacheStore | str | os.PathLike, refs: list[str] | None = None) -> dict:
    """A summary of the cache, or the details of the named files."""
    store = open_store(cache)
    if refs:
        return {"cache": store.location, "files": [file_info(store, store.resolve(r)) for r in refs]}
    entries, other = store.scan()
    summary: dict[str, Any] = {"cache": store.location, "entries": len(entries),
                               "bytes": sum(store.size(p) for p in entries)}
    for label, suffix in (("outputs", OUTPUT), ("indexes", INDEX)):
        summary[label] = sum(p.suffix == suffix for p in entries)
    summary["temporaries"] = sum(store.is_temporary(p) for p in entries)
    summary["other_entries"] = len(entries) - summary["outputs"] - summary["indexes"] - summary["temporaries"]
    summary["unrecognised_files"] = [str(p) for p in other]
    return summary


def view(cache: CacheStore | str | os.PathLike, ref: str, start: int | None = None,
         end: int | None = None) -> Iterator[dict]:
    """Units of an output file (``{"start", "end", "data"}``) or entries of an index file."""
    from backbeat.core import jsonio

    path = open_store(cache).resolve(ref)
    if path.suffix == INDEX:
        from backbeat.data.dbindex import read_index

        for i, entry in enumerate(read_index(path)):
            if (start is None or i >= start) and (end is None or i <= end):
                yield {"entry": i, "data": jsonio.plain(entry._asdict())}
        return
    if path.suffix != OUTPUT:
        raise BackbeatError(f"`{path}' is not a backbeat cache file (.h5 output or .db index)")
    from backbeat.data.cachefile import CacheReader

    with CacheReader(path, verify=True, key=open_store(cache).key_of(path)) as r:
        for batch in r.iter_batches():
            for value, s, e in zip(batch.to_values(), batch.starts.tolist(), batch.ends.tolist(), strict=True):
                if (start is not None and e < start) or (end is not None and s > end):
                    continue
                yield {"start": int(s), "end": int(e), "data": jsonio.plain(value.as_dict())}


def verify_file(path: Path, cache: CacheStore | str | os.PathLike | None = None) -> dict:
    """``{"path", "status": ok|corrupt|skipped, "message"}`` for one cache file."""
    return open_store(cache if cache is not None else path.parent).verify_file(path)


def verify_cache(cache: CacheStore | str | os.PathLike, refs: list[str] | None = None,
                 delete: bool = False) -> list[dict]:
    """Verify the digest of every output (and the syntax of every index); optionally delete bad files."""
    store = open_store(cache)
    if refs:
        paths = [store.resolve(r) for r in refs]
    else:
        paths = [p for p in store.scan()[0] if p.suffix in (OUTPUT, INDEX) and not store.is_temporary(p)]
    results = [store.verify_file(p) for p in paths]
    if delete:
        bad = [Path(r["path"]) for r in results if r["status"] == "corrupt"]
        store.delete([p for p in bad if store.is_entry(p)])
        for r in results:
            if r["status"] == "corrupt":
                r["deleted"] = store.is_entry(Path(r["path"]))
    return results


def delete_entries(cache: CacheStore | str | os.PathLike, paths: list[Path]) -> int:
    """Delete cache entries; return the bytes freed."""
    return open_store(cache).delete(paths)


def remove_unneeded(cache: CacheStore | str | os.PathLike, needed: Callable[[], set[Path]] | None,
                    dry_run: bool = False) -> dict:
    """Delete every entry not ``needed()`` (every entry with None), live temporaries excepted."""
    store = open_store(cache)
    entries, other = store.scan()
    keep = needed() if needed is not None else None
    garbage = [p for p in entries if (keep is None or p not in keep) and not store.live_temporary(p)]
    size = sum(store.size(p) for p in garbage)
    if not dry_run:
        size = store.delete(garbage)
    out = {"cache": store.location, "dry_run": dry_run}
    if keep is not None:
        out["kept"] = len(entries) - len(garbage)
    out.update(removed=[str(p) for p in garbage], bytes_freed=size, unrecognised_files=[str(p) for p in other])
    return out


def remove_blobs(cache: CacheStore | str | os.PathLike, keep_code: set[str], keep_manifests: set[str],
                 dry_run: bool = False) -> dict:
    """Delete code snapshots and data manifests (:mod:`backbeat.cache.blobs`) not in the keep sets."""
    store = open_store(cache)
    removed: list[str] = []
    freed = 0
    for area, keep in ((store.code, keep_code), (store.manifests, keep_manifests)):
        for digest in area.digests():
            if digest in keep:
                continue
            path = area.path(digest)
            removed.append(str(path))
            freed += store.size(path)
            if not dry_run:
                path.unlink(missing_ok=True)
    return {"removed": removed, "bytes_freed": freed}


def clear(cache: CacheStore | str | os.PathLike, dry_run: bool = False) -> dict:
    """Delete every cache entry (not the bookkeeping folders, live temporaries or unrecognised files)."""
    return remove_unneeded(cache, None, dry_run)
