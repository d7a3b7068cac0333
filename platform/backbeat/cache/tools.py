"""Cache housekeeping: ``backbeat cache info|view|verify|gc|clear`` and ``experiments caches``.

The cache folder holds *cache entries*: files at ``xx/yy/zz/<rest of a 64-hex key><suffix>``
(``.h5`` block outputs and analyzer results, ``.db`` view indexes, writers' ``.tmp-<pid>-*``
temporaries, and BEAT's ``.data``/``.index`` files if a BEAT cache is shared), plus the
bookkeeping folders ``.locks/`` and ``provenance/`` (run records, :mod:`backbeat.provenance`).
Only cache entries are ever deleted; anything else found in the folder is reported and left
alone (so a mistyped ``--cache`` cannot wipe an unrelated folder); the bookkeeping folders are
never touched (a running experiment may hold a lock; run records are history); a temporary
whose writer is alive is kept.

Cache keys are computed *without running user code*: an experiment's keys are known only when
every dataset it reads has its view index in the cache (:func:`keyed_plan`), as in
:func:`backbeat.executor.cached_results`.  ``gc`` keeps the outputs of every valid experiment of
the prefix whose keys are known, and the view index of every set of every valid database.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backbeat.core.errors import BackbeatError, DataError, ExecutionError
from backbeat.core.names import parse_name
from backbeat.data.dbindex import index_digest
from backbeat.declarations.catalog import Catalog

_HEX2 = re.compile(r"^[0-9a-f]{2}$")
_REST = re.compile(r"^[0-9a-f]{58}(\..*)?$")
_TMP = re.compile(r"\.tmp-(\d+)-")
BOOKKEEPING = (".locks", "provenance", ".progress")  # top-level folders of the cache never scanned nor deleted


def output_path(cache: Path, key: str) -> Path:
    from backbeat.core.hashing import to_path

    return cache / to_path(key, ".h5")


def index_path(cache: Path, key: str) -> Path:
    from backbeat.core.hashing import to_path

    return cache / to_path(key, ".db")




# -- cache entries ---------------------------------------------------------------------------------
def is_entry(cache: Path, path: Path) -> bool:
    """True if ``path`` (inside ``cache``) is shaped like a cache entry."""
    try:
        parts = path.relative_to(cache).parts
    except ValueError:
        return False
    return (len(parts) == 4 and all(_HEX2.match(p) for p in parts[:3]) and bool(_REST.match(parts[3])))


def _live_temporary(path: Path) -> bool:
    m = _TMP.search(path.name)
    if m is None:
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def scan(cache: Path) -> tuple[list[Path], list[Path]]:
    """``(cache entries, other files)`` under ``cache`` (sorted; :data:`BOOKKEEPING` folders excluded)."""
    if not cache.is_dir():
        raise BackbeatError(f"cache folder `{cache}' does not exist")
    entries, other = [], []
    for dirpath, dirs, files in os.walk(cache):
        here = Path(dirpath)
        if here == cache:
            dirs[:] = [d for d in dirs if d not in BOOKKEEPING]
        dirs.sort()
        for f in sorted(files):
            p = here / f
            (entries if is_entry(cache, p) else other).append(p)
    return entries, other


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _prune(cache: Path, paths: list[Path]) -> None:
    """Remove the hex folders (``xx/yy/zz``) left empty by deleted entries."""
    for folder in sorted({p.parent for p in paths}, key=lambda p: -len(p.parts)):
        for _ in range(3):
            if folder == cache or not _HEX2.match(folder.name):
                break
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent


def _delete(cache: Path, paths: list[Path]) -> int:
    freed = 0
    for p in paths:
        size = _size(p)
        try:
            p.unlink()
            freed += size
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BackbeatError(f"cannot delete `{p}': {exc.strerror or exc}") from None
    _prune(cache, paths)
    return freed


def resolve(cache: Path, ref: str) -> Path:
    """A cache file named by path (as given or relative to the cache) or by a 64-hex key."""
    p = Path(ref)
    for candidate in (p, cache / p):
        if candidate.is_file():
            return candidate
    if re.fullmatch(r"[0-9a-f]{64}", ref):
        for candidate in (output_path(cache, ref), index_path(cache, ref)):
            if candidate.is_file():
                return candidate
    raise BackbeatError(f"`{ref}' is neither a file nor the key of a file in cache `{cache}'")


# -- experiments -----------------------------------------------------------------------------------
def keyed_plan(prefix: str | os.PathLike, cache: str | os.PathLike, name: str, catalog: Catalog | None = None):
    """``(plan, missing datasets)``: the plan has its keys when no dataset index is missing."""
    from backbeat.planning.planner import assign_keys, plan

    p = plan(catalog or Catalog(prefix), name)
    missing = []
    for ds in p.datasets.values():
        path = index_path(Path(cache), ds.index_key)
        if path.is_file():
            ds.index_digest = index_digest(path)
        else:
            missing.append(ds.name)
    if not missing:
        assign_keys(p)
    return p, missing


def experiment_caches(prefix: str | os.PathLike, cache: str | os.PathLike, name: str) -> list[dict]:
    """One record per block output / analyzer result: block, output, key, path, exists, bytes."""
    _k, name = parse_name("experiment", name)
    p, missing = keyed_plan(prefix, cache, name)
    if missing:
        raise ExecutionError(f"the cache keys of experiment `{name}' are not known: dataset(s) "
                             f"{', '.join(sorted(missing))} were never indexed (run the experiment, or "
                             f"`backbeat databases index' its databases)")
    out = []
    for job in p.jobs:
        for o in job.outputs.values():
            path = output_path(Path(cache), o.key)
            out.append({"block": job.name, "kind": job.kind, "output": o.name, "key": o.key, "path": str(path),
                        "exists": path.is_file(), "bytes": _size(path)})
    return out


def delete_experiment_caches(cache: str | os.PathLike, records: list[dict]) -> int:
    """Delete the existing files of :func:`experiment_caches` records; return the bytes freed."""
    return _delete(Path(cache), [Path(r["path"]) for r in records if r["exists"]])


def states(prefix: str | os.PathLike, cache: str | os.PathLike, name: str,
           report: dict | None = None) -> tuple[Any, dict[str, str]]:
    """``(plan, {node: cached|run|failed|unknown})`` without running anything.

    ``report`` is a run report (``experiments run --json``) or provenance record; by default the
    latest provenance record of the experiment is used.  Its failed blocks whose key is the
    current one (or that carry no key) are ``failed``.
    """
    p, missing = keyed_plan(prefix, cache, name)
    if report is None:
        report = last_record(cache, p.experiment)
    out: dict[str, str] = {}
    for ds in p.datasets.values():
        out[ds.name] = "run" if ds.name in missing else "cached"
    for job in p.jobs:
        if missing:
            out[job.name] = "unknown"
        else:
            done = all(output_path(Path(cache), o.key).is_file() for o in job.outputs.values())
            out[job.name] = "cached" if done else "run"
    keys = {j.name: j.key for j in p.jobs}
    blocks = report.get("blocks") if isinstance(report, dict) else None
    if isinstance(blocks, dict):
        for block, entry in blocks.items():
            if block not in keys or not isinstance(entry, dict) or entry.get("status") != "failed":
                continue
            if out[block] != "cached" and (not entry.get("key") or not keys[block] or entry["key"] == keys[block]):
                out[block] = "failed"
    return p, out


def last_record(cache: str | os.PathLike, experiment: str) -> dict | None:
    """The latest stored provenance record of an experiment (None if none or unreadable)."""
    try:
        from backbeat.provenance import records as provenance

        records = provenance.history(cache, experiment)
    except (ImportError, BackbeatError, OSError):
        return None
    return records[0] if records else None


# -- whole cache -----------------------------------------------------------------------------------
def file_info(path: Path) -> dict:
    """What one cache file holds (``.h5``: dataformat, units, range, key, digest; ``.db``: entries)."""
    info: dict[str, Any] = {"path": str(path), "bytes": _size(path)}
    if path.suffix == ".h5":
        from backbeat.data.cachefile import CacheReader

        with CacheReader(path, verify=False) as r:
            info.update(type="output", dataformat=r.dataformat, units=r.units, start=r.start, end=r.end,
                        key=r.key, digest=r.digest)
    elif path.suffix == ".db":
        from backbeat.data.dbindex import read_index

        info.update(type="index", entries=len(read_index(path)), digest=index_digest(path))
    else:
        info.update(type="other")
    return info


def info(cache: str | os.PathLike, refs: list[str] | None = None) -> dict:
    """A summary of the cache, or the details of the named files."""
    root = Path(cache)
    if refs:
        return {"cache": str(root), "files": [file_info(resolve(root, r)) for r in refs]}
    entries, other = scan(root)
    kinds = {"outputs": ".h5", "indexes": ".db"}
    summary: dict[str, Any] = {"cache": str(root), "entries": len(entries),
                               "bytes": sum(_size(p) for p in entries)}
    for label, suffix in kinds.items():
        summary[label] = sum(p.suffix == suffix for p in entries)
    summary["temporaries"] = sum(bool(_TMP.search(p.name)) for p in entries)
    summary["other_entries"] = len(entries) - summary["outputs"] - summary["indexes"] - summary["temporaries"]
    summary["unrecognised_files"] = [str(p) for p in other]
    return summary


def view(cache: str | os.PathLike, ref: str, start: int | None = None, end: int | None = None) -> Iterator[dict]:
    """Units of an output file (``{"start", "end", "data"}``) or entries of an index file."""
    from backbeat.core import jsonio

    path = resolve(Path(cache), ref)
    if path.suffix == ".db":
        from backbeat.data.dbindex import read_index

        for i, entry in enumerate(read_index(path)):
            if (start is None or i >= start) and (end is None or i <= end):
                yield {"entry": i, "data": jsonio.plain(entry._asdict())}
        return
    if path.suffix != ".h5":
        raise BackbeatError(f"`{path}' is not a backbeat cache file (.h5 output or .db index)")
    from backbeat.data.cachefile import CacheReader

    with CacheReader(path, verify=True) as r:
        for batch in r.iter_batches():
            for value, s, e in zip(batch.to_values(), batch.starts.tolist(), batch.ends.tolist(), strict=True):
                if (start is not None and e < start) or (end is not None and s > end):
                    continue
                yield {"start": int(s), "end": int(e), "data": jsonio.plain(value.as_dict())}


def verify_file(path: Path) -> dict:
    from backbeat.data.cachefile import verify

    try:
        if path.suffix == ".h5":
            verify(path)
        elif path.suffix == ".db":
            from backbeat.data.dbindex import read_index

            read_index(path)
        else:
            return {"path": str(path), "status": "skipped", "message": "not a backbeat cache file"}
    except (DataError, OSError) as exc:
        return {"path": str(path), "status": "corrupt", "message": str(exc)}
    return {"path": str(path), "status": "ok", "message": ""}


def verify_cache(cache: str | os.PathLike, refs: list[str] | None = None, delete: bool = False) -> list[dict]:
    """Verify the digest of every output (and the syntax of every index); optionally delete bad files."""
    root = Path(cache)
    if refs:
        paths = [resolve(root, r) for r in refs]
    else:
        paths = [p for p in scan(root)[0] if p.suffix in (".h5", ".db") and not _TMP.search(p.name)]
    results = [verify_file(p) for p in paths]
    if delete:
        bad = [Path(r["path"]) for r in results if r["status"] == "corrupt"]
        _delete(root, [p for p in bad if is_entry(root, p)])
        for r in results:
            if r["status"] == "corrupt":
                r["deleted"] = is_entry(root, Path(r["path"]))
    return results


def needed(prefix: str | os.PathLike, cache: str | os.PathLike) -> tuple[set[Path], list[dict]]:
    """Files the prefix needs: ``(paths, skipped experiments with the reason)``."""
    from backbeat.declarations.database import sets as database_sets
    from backbeat.planning.planner import dataset

    root = Path(cache)
    if not Path(prefix).is_dir():
        raise BackbeatError(f"prefix folder `{prefix}' does not exist")
    catalog = Catalog(prefix)
    keep: set[Path] = set()
    for db in catalog.prefix.list("database"):
        asset = catalog.get("database", db)
        if not asset.valid:
            continue
        try:
            for protocol, protocol_sets in database_sets(catalog, asset).items():
                for set_name in protocol_sets:
                    ds = dataset(catalog, f"{protocol}/{set_name}", db, protocol, set_name)
                    keep.add(index_path(root, ds.index_key))
        except BackbeatError:
            continue
    skipped = []
    for name in catalog.prefix.list("experiment"):
        try:
            p, missing = keyed_plan(prefix, cache, name, catalog)
        except BackbeatError as exc:
            skipped.append({"experiment": name, "reason": str(exc).splitlines()[0]})
            continue
        keep |= {index_path(root, ds.index_key) for ds in p.datasets.values()}
        if missing:
            skipped.append({"experiment": name,
                            "reason": f"dataset(s) {', '.join(sorted(missing))} never indexed: no output kept"})
            continue
        outputs = {output_path(root, o.key) for j in p.jobs for o in j.outputs.values()}
        keep |= outputs | {Path(f"{path}.json") for path in outputs}  # + results' JSON summaries
    keep |= {Path(f"{path}.sha256") for path in keep if path.suffix == ".db"}  # + index digests
    return keep, skipped


def gc(prefix: str | os.PathLike, cache: str | os.PathLike, dry_run: bool = False) -> dict:
    """Delete cache entries no experiment of the prefix needs; report what is (or would be) freed."""
    root = Path(cache)
    entries, other = scan(root)
    keep, skipped = needed(prefix, cache)
    garbage = [p for p in entries if p not in keep and not _live_temporary(p)]
    size = sum(_size(p) for p in garbage)
    if not dry_run:
        size = _delete(root, garbage)
    return {"cache": str(root), "dry_run": dry_run, "kept": len(entries) - len(garbage),
            "removed": [str(p) for p in garbage], "bytes_freed": size, "skipped_experiments": skipped,
            "unrecognised_files": [str(p) for p in other]}


def clear(cache: str | os.PathLike, dry_run: bool = False) -> dict:
    """Delete every cache entry (not the bookkeeping folders, live temporaries or unrecognised files)."""
    root = Path(cache)
    entries, other = scan(root)
    garbage = [p for p in entries if not _live_temporary(p)]
    size = sum(_size(p) for p in garbage)
    if not dry_run:
        size = _delete(root, garbage)
    return {"cache": str(root), "dry_run": dry_run, "removed": [str(p) for p in garbage], "bytes_freed": size,
            "unrecognised_files": [str(p) for p in other]}
