"""Analyzer results read back from the cache, through summaries bound to what they summarise.

A run prints its analyzers' results, so every run — a fully cached one too — reads them.
Reading an HDF5 result means importing h5py and verifying the file; instead, the records of
a result verified once are kept in a small JSON summary beside it (``<entry>.h5.json``,
format :data:`FORMAT`): ``{"format", "key", "digest", "records"}`` — the key and content
digest of the entry it summarises, and its records.

A summary is *bound* to its entry: when it is written, the stat memo remembers the sha256 of
the summary's bytes under the entry file's signature (size, times, inode).  A summary is
used only while both still hold — the entry unchanged since it was verified and the summary
byte for byte the one written then — and it names the key looked up; otherwise the records
are derived again from the verified entry, and a summary that said something else is
reported (:func:`check_result`).  ``backbeat cache verify`` and ``experiments audit`` always
derive the records again and compare (:func:`summary_problem`).  Summaries of the older
format (trusted on size and modification time alone) are never used: they are rebuilt.
An entry still marked unsynced is made durable before its summary is written
(:mod:`backbeat.core.durable`): no summary is bound to bytes a crash may lose.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from backbeat.core import durable, jsonio

if TYPE_CHECKING:
    from backbeat.cache.store import CacheStore

FORMAT = "backbeat-result-summary-2"
_TAG = "result-summary"


def summary_path(store: CacheStore, key: str) -> Path:
    return Path(f"{store.output_path(key)}.json")


def bound_records(store: CacheStore, key: str) -> list | None:
    """The records of result ``key`` from its summary, if the summary is bound to the entry
    as it is now (see the module docstring); None otherwise.  Opens no HDF5 file."""
    path = store.output_path(key)
    try:
        st = path.stat()
    except OSError:
        return None
    expected = store.memo.lookup(_TAG, path, st)
    if expected is None:
        return None
    try:
        raw = summary_path(store, key).read_bytes()
    except OSError:
        return None
    if hashlib.sha256(raw).hexdigest() != expected:
        return None
    try:
        data = jsonio.parse(raw)
    except jsonio.JSONProblem:
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != key:
        return None
    records = data.get("records")
    return records if isinstance(records, list) else None


def derive(store: CacheStore, key: str) -> tuple[list[dict], str, os.stat_result]:
    """``(records, digest, stat)`` of result ``key`` read from the entry, verified (identity and
    content); IntegrityError/OSError when it does not hold."""
    from backbeat.data import cachereader

    path = store.output_path(key)
    st = path.stat()
    with cachereader.CacheReader(str(path), verify=True, key=key) as reader:
        found = cachereader.records(reader), reader.digest
    if durable.is_unsynced(st):  # a summary binds only a synced entry (verified first): it is read without it
        st = store.durability.sync_verified(path, st)
    return (*found, st)


def _write(store: CacheStore, key: str, records: list, digest: str, st: os.stat_result) -> None:
    if durable.is_unsynced(st):  # (it could not be made durable: no summary trusts it)
        return
    raw = jsonio.dumps({"format": FORMAT, "key": key, "digest": digest, "records": records}).encode("utf-8")
    try:  # (not synced: a summary lost in a crash no longer matches the memo, and is derived again)
        durable.write_atomic(summary_path(store, key), raw, sync=False)
    except OSError:  # a read-only or full cache still gives results
        return
    store.memo.remember(_TAG, store.output_path(key), st, hashlib.sha256(raw).hexdigest())
    store.memo.remember("h5-identity", store.output_path(key), st, f"{key} {digest}")


def _previous(store: CacheStore, key: str) -> list | None:
    """The records an existing summary of the current format claims (None if none/unreadable)."""
    with contextlib.suppress(OSError, jsonio.JSONProblem):
        data = jsonio.parse(summary_path(store, key).read_bytes())
        if isinstance(data, dict) and data.get("format") == FORMAT:
            return data.get("records") if isinstance(data.get("records"), list) else []
    return None


def check_result(store: CacheStore, key: str) -> str | None:
    """Make sure result ``key`` has a summary bound to its verified entry.

    Returns None when all is well, or a message when a summary existed that did not match
    the entry (it is rebuilt).  IntegrityError/OSError when the entry itself does not hold.
    """
    if bound_records(store, key) is not None:
        return None
    previous = _previous(store, key)
    records, digest, st = derive(store, key)
    _write(store, key, records, digest, st)
    if previous is not None and previous != records:
        return (f"the result summary {summary_path(store, key).name} did not match its verified result file "
                f"(it was modified): rebuilt from the result file")
    return None


def read_result(store: CacheStore, key: str) -> list[dict]:
    """Records of one analyzer result entry: ``[{"start", "end", "data"}, …]``, from its bound
    summary, else from the verified entry (and the summary is written)."""
    records = bound_records(store, key)
    if records is not None:
        return records
    records, digest, st = derive(store, key)
    _write(store, key, records, digest, st)
    return records


def summary_problem(store: CacheStore, key: str) -> str | None:
    """What is wrong with the summary of result ``key`` compared with its verified entry (which
    must verify), or None.  Used by ``cache verify`` and ``audit``: no memo is trusted."""
    try:
        data = jsonio.parse(summary_path(store, key).read_bytes())
    except OSError:
        return None
    except jsonio.JSONProblem as exc:
        return f"result summary {summary_path(store, key)} is not valid JSON: {exc}"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None  # an older summary: never used, rebuilt when next read
    records, digest, _st = derive(store, key)
    if data.get("key") != key:
        return f"result summary {summary_path(store, key)} names key {str(data.get('key'))[:12]}, not {key[:12]}"
    if data.get("digest") != digest:
        return (f"result summary {summary_path(store, key)} summarises content {str(data.get('digest'))[:12]}, "
                f"the result file holds {digest[:12]}")
    if data.get("records") != records:
        return f"result summary {summary_path(store, key)} does not hold the records of its result file"
    return None
