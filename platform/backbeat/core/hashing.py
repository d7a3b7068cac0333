"""BEAT-compatible content hashes (spec §4), pure functions.

The exact algorithm is written down in ``docs/hashing.md``; keep both in step.

>>> sha("123456")
'8d969eef6ecad3c29a3a629280e686cf0c3f5d5a86aff3ca12020c923adc6c92'
>>> stringify({"b": 1, "a": "x y", "c": 0.5, "d": True})
'{"a":x y,"b":1,"c":0.5,"d":True}'
>>> to_path("73de0be62c5d2b203bbcbb2218d869ae283e6916217836a202d4bb2c1e183930", ".db")
'73/de/0b/e62c5d2b203bbcbb2218d869ae283e6916217836a202d4bb2c1e183930.db'
>>> dataset_hash("integers_db/1", "double", "double")
'73de0be62c5d2b203bbcbb2218d869ae283e6916217836a202d4bb2c1e183930'
>>> to_user_path("user")
'04/f8/user'
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import simplejson


def sha(text: str | bytes) -> str:
    """SHA-256 hex digest of ``text`` (UTF-8 encoded when a ``str``)."""
    if isinstance(text, str):
        text = text.encode("utf-8")
    return hashlib.sha256(text).hexdigest()


def stringify(d: dict) -> str:
    """BEAT's ``_stringify``: sorted ``"key":str(value)`` pairs, values *not* JSON-encoded."""
    return "{" + ",".join(f'"{k}":{d[k]}' for k in sorted(d)) + "}"


def hash_value(x: Any) -> str:
    """BEAT's ``hash``: a dict is stringified first, anything else hashed as text."""
    return sha(stringify(x) if isinstance(x, dict) else x)


def canonical_json(obj: Any) -> str:
    """simplejson ``sort_keys`` form BEAT hashes: ``", "``/``": "`` separators, ASCII only."""
    return simplejson.dumps(obj, sort_keys=True)


def hash_json(obj: Any, description_key: str | None) -> str:
    """``hashJSON``: drop the top-level description key, hash the canonical JSON."""
    if isinstance(obj, dict) and description_key in obj:
        obj = {k: v for k, v in obj.items() if k != description_key}
    return sha(canonical_json(obj))


def hash_file_contents(path: Path) -> str:
    """sha256 of the raw bytes of ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as fd:
        for chunk in iter(lambda: fd.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def listing_digest(folder: Path) -> str:
    """sha256 of a folder's listing: its entry names, sorted, one per line (what a view
    listing it sees; contents are the files' own business)."""
    return sha("\n".join(sorted(os.listdir(folder))))


def _lenient_parse(raw: bytes) -> Any:
    """Parse JSON as BEAT's hasher does: duplicate keys silently last-wins."""
    return simplejson.loads(raw.decode("utf-8"))


def hash_json_file(path: Path, description_key: str | None) -> str:
    """``hashJSONFile``: hash of the parsed content, or of the bytes if not JSON."""
    raw = path.read_bytes()
    try:
        return hash_json(_lenient_parse(raw), description_key)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return hashlib.sha256(raw).hexdigest()


def declared_language(path: Path) -> str:
    """The ``language`` of a declaration file as BEAT's storage finds it, else ``"unknown"``.

    BEAT parses leniently here (duplicate keys last-wins), so a declaration backbeat refuses for
    a duplicate key still has its code file hashed with it.
    """
    try:
        doc = _lenient_parse(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "unknown"
    language = doc.get("language", "unknown") if isinstance(doc, dict) else "unknown"
    return language if isinstance(language, str) else "unknown"


def code_asset_hash(declaration_hash: str, code_hash: str | None) -> str:
    """Hash of an asset with code (algorithm, library, database, plotter)."""
    if code_hash is None:
        return declaration_hash
    return hash_value({"declaration": declaration_hash, "code": code_hash})


def dataset_hash(database: str, protocol: str, set_name: str) -> str:
    """``hashDataset``: identifies a (database, protocol, set) view index."""
    return sha('{"database":"%s","protocol":"%s","set":"%s"}' % (database, protocol, set_name))


def block_output_hash(
    algorithm_hash: str, parameters: dict, environment: dict, input_hashes: dict, output: str
) -> str:
    """``hashBlockOutput`` (spec §4.4)."""
    return sha(
        '{"algorithm":"' + algorithm_hash + '","parameters":' + stringify(parameters)
        + ',"environment":' + stringify(environment) + ',"inputs":' + stringify(input_hashes)
        + ',"output":"' + output + '"}'
    )


def analyzer_hash(
    algorithm_name: str, algorithm_hash: str, parameters: dict, environment: dict, input_hashes: dict
) -> str:
    """``hashAnalyzer`` (spec §4.5)."""
    return sha(
        '{"algorithm_name":"%s","algorithm":"%s","parameters":%s,"environment":%s,"inputs":%s}'
        % (algorithm_name, algorithm_hash, stringify(parameters), stringify(environment), stringify(input_hashes))
    )


def to_path(h: str, suffix: str = ".data") -> str:
    """Cache path of a hash: ``h[0:2]/h[2:4]/h[4:6]/h[6:]`` + suffix."""
    return f"{h[0:2]}/{h[2:4]}/{h[4:6]}/{h[6:]}{suffix}"


def to_user_path(user: str) -> str:
    """Hashed-user folder: ``sha(user)[0:2]/sha(user)[2:4]/user``."""
    h = sha(user)
    return f"{h[0:2]}/{h[2:4]}/{user}"


# --------------------------------------------------------------------------------------
# backbeat cache keys (docs/hashing.md, "Cache keys").  Unlike BEAT's block hashes these
# cover everything that can change an output, with a canonical, typed, domain-separated
# pre-image.

#: the version of the key scheme (2: dataset keys cover the data files their view read)
KEY_SCHEME = "backbeat-key-2"


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8, no NaN/Infinity.

    >>> canonical({"b": [1, "é"], "a": None})
    b'{"a":null,"b":[1,"\\xc3\\xa9"]}'
    """
    return simplejson.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def typed_value(type_name: str, value: Any) -> list:
    """A parameter value as ``[type, text]`` so that ``1``, ``1.0``, ``"1"`` and ``True`` differ.

    Floats are written with ``repr`` of the value *after* casting to the declared type
    (``float32`` values are widened exactly to a Python float first).

    >>> typed_value("float64", 1)
    ['float64', '1.0']
    >>> typed_value("int32", 1)
    ['int32', '1']
    >>> typed_value("string", "1")
    ['string', '1']
    >>> typed_value("bool", True)
    ['bool', 'true']
    """
    if type_name == "bool":
        return [type_name, "true" if bool(value) else "false"]
    if type_name == "string":
        return [type_name, str(value)]
    if type_name.startswith("float"):
        return [type_name, repr(float(value))]
    if type_name.startswith("complex"):
        c = complex(value)
        return [type_name, f"{c.real!r},{c.imag!r}"]
    return [type_name, str(int(value))]


def key(domain: str, content: Any) -> str:
    """Domain-separated key: ``sha256(KEY_SCHEME "/" domain NUL canonical(content))``."""
    return hashlib.sha256(f"{KEY_SCHEME}/{domain}".encode() + b"\0" + canonical(content)).hexdigest()
