"""The names of a view index entry's files (no numpy: a cached run and the cache store name them).

``<entry>.db`` is the index (BEAT's JSON: :mod:`backbeat.data.dbindex`); beside it,
``.sha256`` holds its content digest, ``.table`` its columnar table
(:mod:`backbeat.data.indextable`) and ``.deps`` its identity record (the cache store's).
"""

from __future__ import annotations

import os
from pathlib import Path

DIGEST = ".sha256"
TABLE = ".table"
RECORD = ".deps"


def files(index: str | os.PathLike) -> list[Path]:
    """The index at ``index`` and the files beside it: its digest, table and identity record."""
    return [Path(index), *(Path(f"{os.fspath(index)}{suffix}") for suffix in (DIGEST, TABLE, RECORD))]
