"""Everyday asset verbs: ``create`` (from a prototype), ``version``, ``fork``, ``rm``, ``diff``.

Prototypes are backbeat's own declarations in ``backbeat/prototypes/<kind>.json`` (plus the
code file for kinds with code); ``__USER__`` and ``__NAME__`` in them become the new asset's
user (``user`` for databases and protocol templates) and name.  Experiments have no prototype
(as in BEAT): fork an existing one.

Which kinds can be versioned and forked follows BEAT's ``Selector``: every kind but
experiments has versions; algorithms, dataformats, experiments, libraries, toolchains,
plotters and plotter parameters can be forked.  Both record the origin in BEAT's bookkeeping
file ``<prefix>/.beat/selected.json`` (``{"fork": {kind: {dst: src}}, "version": {…}}``).

``rm`` keeps BEAT's ``~`` backups: each removed file is renamed to ``<file>~`` (replacing an
older backup), so a removal can be undone by hand; ``purge=True`` deletes the files and their
backups and then the folders left empty.  No verb ever overwrites an existing asset.
"""

from __future__ import annotations

import difflib
import glob
import os
import shutil
from pathlib import Path
from typing import Any

import simplejson

from backbeat.core import jsonio
from backbeat.core.errors import AssetNotFoundError, BackbeatError, UsageError
from backbeat.core.names import KINDS, experiment_toolchain, kind_of, parse_name
from backbeat.declarations.catalog import Catalog, not_found
from backbeat.declarations.prefix import AssetFiles, Prefix

PROTOTYPES = Path(__file__).parent / "prototypes"
VERSIONABLE = ("algorithm", "dataformat", "database", "library", "toolchain", "plotter", "plotterparameter",
               "protocoltemplate")
FORKABLE = ("algorithm", "dataformat", "experiment", "library", "toolchain", "plotter", "plotterparameter")


def _prefix(prefix: str | os.PathLike) -> Prefix:
    root = Path(prefix)
    if not root.is_dir():
        raise UsageError(f"prefix folder `{root}' does not exist")
    return Prefix(root)


def _files(files: AssetFiles) -> list[Path]:
    """The existing files of an asset: declaration, code (any language), documentation."""
    out = [files.json]
    if KINDS[files.kind].has_code:
        decl, _problems = jsonio.load(files.json)
        lang = decl.get("language") if isinstance(decl, dict) else None
        code = files.code(lang)
        if code is not None:
            out.append(code)
    out.append(files.rst)
    return [p for p in out if p.is_file()]


def _require(pfx: Prefix, kind: str, name: str) -> tuple[str, str, AssetFiles]:
    k, n = parse_name(kind, name)
    files = pfx.locate(k, n)
    if not files.json.is_file():
        raise not_found(pfx, k, n)
    return k, n, files


def _refuse_existing(pfx: Prefix, kind: str, name: str) -> AssetFiles:
    files = pfx.locate(kind, name)
    if files.json.exists():
        raise BackbeatError(f"{KINDS[kind].label} `{name}' already exists ({files.json}); remove it first")
    return files


def _tokens(kind: str, name: str) -> dict[str, str]:
    parts = name.split("/")
    if kind in ("database", "protocoltemplate"):
        return {"__USER__": "user", "__NAME__": parts[0]}
    return {"__USER__": parts[0], "__NAME__": parts[1]}


# -- bookkeeping -------------------------------------------------------------------------------
def selected_path(pfx: Prefix) -> Path:
    return pfx.root / ".beat" / "selected.json"


def _selected(pfx: Prefix) -> dict:
    path = selected_path(pfx)
    data: Any = {}
    if path.is_file():
        data, problems = jsonio.load(path)
        if problems or not isinstance(data, dict):
            raise BackbeatError(f"bookkeeping file `{path}' is not a JSON object "
                                f"({problems[0].message if problems else type(data).__name__}); fix or delete it")
    for section, kinds in (("version", VERSIONABLE), ("fork", FORKABLE)):
        if not isinstance(data.get(section), dict):
            data[section] = {}
        for k in kinds:
            if not isinstance(data[section].get(k), dict):
                data[section][k] = {}
    return data


def _record(pfx: Prefix, section: str | None, kind: str, dst: str, src: str | None) -> None:
    data = _selected(pfx)
    for sec in ("version", "fork"):
        data[sec].get(kind, {}).pop(dst, None)
    if section is not None:
        data[section][kind][dst] = src
    path = selected_path(pfx)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(simplejson.dumps(data, indent=4, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def origins(prefix: str | os.PathLike, kind: str, name: str) -> dict:
    """Where an asset came from: ``{"version_of": src | None, "forked_from": src | None}``."""
    pfx = _prefix(prefix)
    k, n = parse_name(kind, name)
    data = _selected(pfx)
    return {"version_of": data["version"].get(k, {}).get(n), "forked_from": data["fork"].get(k, {}).get(n)}


# -- verbs -------------------------------------------------------------------------------------
def _copy(src: AssetFiles, dst: AssetFiles) -> list[str]:
    written = []
    dst.json.parent.mkdir(parents=True, exist_ok=True)
    for path in _files(src):
        target = dst.base.with_name(dst.base.name + path.name[len(src.base.name):])
        shutil.copyfile(path, target)
        written.append(str(target))
    return written


def create(prefix: str | os.PathLike, kind: str, name: str) -> list[str]:
    """Write the kind's prototype under ``name``; return the files written."""
    pfx = _prefix(prefix)
    k, n = parse_name(kind, name)
    if k == "experiment":
        raise UsageError("experiments have no prototype: fork an existing experiment "
                         "(backbeat experiments fork SRC DST) or write its declaration")
    files = _refuse_existing(pfx, k, n)
    files.json.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for proto in sorted(PROTOTYPES.glob(f"{k}.*")):
        text = proto.read_text(encoding="utf-8")
        for token, value in _tokens(k, n).items():
            text = text.replace(token, value)
        target = files.base.with_name(files.base.name + proto.suffix)
        target.write_text(text, encoding="utf-8")
        written.append(str(target))
    return written


def version(prefix: str | os.PathLike, kind: str, name: str) -> dict:
    """Copy ``…/<v>`` to ``…/<v+1>`` and record it; return ``{"name", "files"}``."""
    pfx = _prefix(prefix)
    k, n, src = _require(pfx, kind, name)
    if k not in VERSIONABLE:
        raise UsageError(f"{KINDS[k].folder} have no versions (fork the experiment instead)")
    head, _, v = n.rpartition("/")
    new = f"{head}/{int(v) + 1}"
    dst = _refuse_existing(pfx, k, new)
    written = _copy(src, dst)
    _record(pfx, "version", k, new, n)
    return {"name": new, "files": written}


def fork(prefix: str | os.PathLike, kind: str, src_name: str, dst_name: str) -> dict:
    """Copy an asset under a new name and record the fork; return ``{"name", "files"}``."""
    pfx = _prefix(prefix)
    k, src_n, src = _require(pfx, kind, src_name)
    if k not in FORKABLE:
        raise UsageError(f"{KINDS[k].folder} cannot be forked (create a new version instead)")
    _k, dst_n = parse_name(k, dst_name)
    if dst_n == src_n:
        raise BackbeatError(f"cannot fork `{src_n}' onto itself")
    if k == "experiment" and not pfx.exists("toolchain", experiment_toolchain(dst_n)):
        missing = not_found(pfx, "toolchain", experiment_toolchain(dst_n))
        raise AssetNotFoundError(f"cannot fork to `{dst_n}': its name says it runs on toolchain "
                                 f"`{experiment_toolchain(dst_n)}', which does not exist ({missing})")
    dst = _refuse_existing(pfx, k, dst_n)
    written = _copy(src, dst)
    _record(pfx, "fork", k, dst_n, src_n)
    return {"name": dst_n, "files": written}


#: the kinds whose declarations can name an asset of each kind
REFERRERS = {"dataformat": ("dataformat", "algorithm", "protocoltemplate", "database", "plotter"),
             "library": ("library", "algorithm", "plotter"), "algorithm": ("experiment",),
             "protocoltemplate": ("database",), "database": ("experiment",), "toolchain": ("experiment",),
             "plotter": ("plotterparameter",), "plotterparameter": (), "experiment": ()}


def _strings(doc: Any, out: set[str]) -> set[str]:
    """Every string of a JSON document, keys included (names appear as both)."""
    if isinstance(doc, str):
        out.add(doc)
    elif isinstance(doc, dict):
        for key, value in doc.items():
            out.add(key)
            _strings(value, out)
    elif isinstance(doc, list):
        for value in doc:
            _strings(value, out)
    return out


def users(prefix: str | os.PathLike, kind: str, name: str) -> list[str]:
    """``KIND/NAME`` of the assets of the prefix whose declarations refer to this asset.

    Experiments refer to their toolchain by their own name; everything else by a name written in
    the declaration (any string or key equal to the name, in a kind that can refer to this one).
    Declarations that do not parse are skipped.
    """
    pfx = _prefix(prefix)
    k, n = parse_name(kind, name)
    found = []
    for other in REFERRERS[k]:
        for other_name in pfx.list(other):
            if other == k and other_name == n:
                continue
            if k == "toolchain":
                if experiment_toolchain(other_name) == n:
                    found.append(f"{KINDS[other].folder}/{other_name}")
                continue
            decl, problems = jsonio.load(pfx.locate(other, other_name).json)
            if not problems and n in _strings(decl, set()):
                found.append(f"{KINDS[other].folder}/{other_name}")
    return found


def rm(prefix: str | os.PathLike, kind: str, name: str, purge: bool = False) -> dict:
    """Remove an asset (files renamed to ``<file>~`` backups unless ``purge``); return what was done."""
    pfx = _prefix(prefix)
    k, n, files = _require(pfx, kind, name)
    removed, backups = [], []
    for path in _files(files):
        backup = path.with_name(path.name + "~")
        if purge:
            path.unlink()
            backup.unlink(missing_ok=True)
        else:
            os.replace(path, backup)
            backups.append(str(backup))
        removed.append(str(path))
    if purge:
        for p in files.base.parent.glob(glob.escape(files.base.name) + ".*~"):
            p.unlink(missing_ok=True)
        folder, top = files.base.parent, pfx.root / KINDS[k].folder
        while folder != top and top in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
    _record(pfx, None, k, n, None)
    return {"name": n, "removed": removed, "backups": backups}


# -- diff --------------------------------------------------------------------------------------
def remove(prefix: str | os.PathLike, kind: str, names: list[str], purge: bool = False,
           force: bool = False) -> list[dict]:
    """Remove assets: ``[{"name", "removed", "backups", "used_by"}]``.

    ``used_by`` lists the other assets of the prefix that refer to the removed one (assets removed
    by the same call excepted).  Every name must exist before anything is removed.  With ``purge``
    (no backups), an asset still used is refused unless ``force``.
    """
    pfx = _prefix(prefix)
    k = kind_of(kind).name
    canonical = [parse_name(k, n)[1] for n in names]
    for n in canonical:
        if not pfx.exists(k, n):
            raise not_found(pfx, k, n)
    batch = {f"{KINDS[k].folder}/{n}" for n in canonical}
    used = {n: [u for u in users(prefix, k, n) if u not in batch] for n in canonical}
    blocked = {n: u for n, u in used.items() if u}
    if purge and blocked and not force:
        lines = "; ".join(f"`{n}' by {', '.join(u)}" for n, u in blocked.items())
        raise BackbeatError(f"refusing to purge {KINDS[k].folder} still in use: {lines} (remove without "
                            "--purge to keep backups, or add --force)")
    return [dict(rm(prefix, k, n, purge=purge), used_by=used[n]) for n in canonical]


def _json_changes(a: Any, b: Any, where: str = "") -> list[dict]:
    from backbeat.core.errors import pointer

    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            at = where + pointer(key)
            if key not in b:
                out.append({"pointer": at, "change": "removed", "old": a[key]})
            elif key not in a:
                out.append({"pointer": at, "change": "added", "new": b[key]})
            else:
                out += _json_changes(a[key], b[key], at)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [c for i, (x, y) in enumerate(zip(a, b, strict=True)) for c in _json_changes(x, y, where + pointer(i))]
    if a == b and type(a) is type(b):
        return []
    return [{"pointer": where or "/", "change": "changed", "old": a, "new": b}]


def _lines(path: Path | None) -> list[str]:
    if path is None or not path.is_file():
        return []
    try:
        return path.read_text(encoding="utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return [f"(binary file, {path.stat().st_size} bytes)\n"]


def diff(prefix: str | os.PathLike, kind: str, name: str, other: str) -> dict:
    """Differences between two assets of a kind (``other``: a name, or just a version number).

    Returns ``{"a", "b", "identical", "changes": [{pointer, change, old?, new?}], "text"}`` where
    ``text`` is a unified diff of the declarations (pretty, sorted keys) and of the code files.
    """
    pfx = _prefix(prefix)
    k, a_name, a_files = _require(pfx, kind, name)
    if other.isdigit() and "/" in a_name and kind_of(k).name != "experiment":
        other = f"{a_name.rpartition('/')[0]}/{other}"
    _k, b_name, b_files = _require(pfx, k, other)
    docs = []
    for files in (a_files, b_files):
        decl, problems = jsonio.load(files.json)
        if problems:
            raise BackbeatError(str(problems[0]))
        docs.append(decl)
    changes = _json_changes(docs[0], docs[1])
    text_a = simplejson.dumps(docs[0], indent=4, sort_keys=True).splitlines(keepends=True)
    text_b = simplejson.dumps(docs[1], indent=4, sort_keys=True).splitlines(keepends=True)
    label = KINDS[k].folder
    text = list(difflib.unified_diff([t if t.endswith("\n") else t + "\n" for t in text_a],
                                     [t if t.endswith("\n") else t + "\n" for t in text_b],
                                     f"{label}/{a_name}.json", f"{label}/{b_name}.json"))
    code_changed = False
    if KINDS[k].has_code:
        codes = [files.code(doc.get("language") if isinstance(doc, dict) else None)
                 for files, doc in zip((a_files, b_files), docs, strict=True)]
        code_diff = list(difflib.unified_diff(
            _lines(codes[0]), _lines(codes[1]),
            f"{label}/{a_name}{codes[0].suffix if codes[0] else ''}",
            f"{label}/{b_name}{codes[1].suffix if codes[1] else ''}"))
        code_changed = bool(code_diff)
        text += code_diff
    return {"kind": KINDS[k].folder, "a": a_name, "b": b_name, "identical": not changes and not code_changed,
            "changes": changes, "code_changed": code_changed, "text": "".join(text)}


def check_created(prefix: str | os.PathLike, kind: str, name: str) -> list[str]:
    """Messages of the problems of a (freshly created) asset, for the CLI's hint."""
    k, n = parse_name(kind, name)
    asset = Catalog(prefix).get(k, n)
    return [p.message for p in asset.problems]
