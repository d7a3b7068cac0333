"""Databases: semantic checks (spec §3.5) and the protocol → set → outputs/view table.

v1 databases declare their sets inline; v2 databases name a protocol template
(``name/version``) for the sets and outputs and only give the view class per set.
Checks, in BEAT's order: view code file present, protocol names unique, per protocol
set names unique, every output dataformat usable, view names without ``.`` or ``/``
(for v2, BEAT applies that check to the keys of ``views``).  Two fixes over BEAT: a v2
protocol whose template is missing or invalid is a Problem (BEAT raises
``RuntimeError``), and so is a template set without a view in the database (BEAT
accepts it and fails when the set is used).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from backbeat.core.errors import InvalidAssetError, InvalidNameError, Problem, pointer
from backbeat.core.names import parse_name
from backbeat.declarations import usercode
from backbeat.declarations.algorithm import check_code, check_static, dataformat_problem

if TYPE_CHECKING:
    from backbeat.declarations.catalog import Asset, Catalog


def schema_version(decl: dict) -> int:
    return decl.get("schema_version", 1)


def _template_sets(catalog: Catalog, template: Any) -> tuple[list | None, str | None]:
    """(sets, None) for a valid template, else (None, reason)."""
    try:
        kind, template = parse_name("protocoltemplate", template)
    except InvalidNameError as exc:
        return None, str(exc)
    tpl = catalog.get(kind, template)
    if not tpl.valid:
        return None, f"protocol template `{template}' is invalid: " + "; ".join(p.message for p in tpl.problems)
    sets = tpl.declaration.get("sets")
    return (sets if isinstance(sets, list) else []), None


def _view_problem(asset: Asset, view: Any, at: str) -> list[Problem]:
    if isinstance(view, str) and ("." in view or "/" in view):
        return [asset.problem(
            f"dataset views are required to sit inside the database root folder, but `{view}' is either in a "
            "subdirectory or points to a python module, what is unsupported by this version", at)]
    return []


def check(asset: Asset, catalog: Catalog) -> list[Problem]:
    """Semantic checks of a schema-valid database (spec §3.5)."""
    decl = asset.declaration
    if not isinstance(decl, dict):
        return [asset.problem("a database declaration must be a JSON object")]
    problems = check_code(asset, "Database view")
    if problems:
        return problems
    protocols = decl.get("protocols")
    protocols = [(i, p) for i, p in enumerate(protocols) if isinstance(p, dict)] if isinstance(protocols, list) else []
    v1 = schema_version(decl) == 1

    names = [p.get("name") for _, p in protocols]
    for (i, _p), name in zip(protocols, names, strict=True):
        if names.count(name) > 1:
            problems.append(asset.problem(f"found different protocols with the same name: {names}",
                                          pointer("protocols", i, "name")))
            break

    for i, proto in protocols:
        pname = proto.get("name")
        if v1:
            sets = proto.get("sets")
            sets = sets if isinstance(sets, list) else []
            where = ("protocols", i, "sets")
        else:
            sets, reason = _template_sets(catalog, proto.get("template"))
            if sets is None:
                problems.append(asset.problem(f"cannot load the sets of protocol `{pname}': {reason}",
                                              pointer("protocols", i, "template")))
                continue
            where = ("protocols", i, "template")
        set_names = [s.get("name") for s in sets if isinstance(s, dict)]
        if len(set(map(str, set_names))) != len(set_names):
            problems.append(asset.problem(
                f"found different sets with the same name at protocol `{pname}': {set_names}",
                pointer(*where)))
        for j, set_ in enumerate(sets):
            if not isinstance(set_, dict):
                continue
            outputs = set_.get("outputs")
            for output, df in (outputs.items() if isinstance(outputs, dict) else []):
                at = (*where, j, "outputs", output) if v1 else where
                problems += dataformat_problem(
                    asset, catalog, df,
                    f"found error validating data format `{df}' for output `{output}' on set "
                    f"`{set_.get('name')}' of protocol `{pname}'", *at)
            if v1:
                problems += _view_problem(asset, set_.get("view"), pointer(*where, j, "view"))
        if not v1:
            views = proto.get("views")
            views = views if isinstance(views, dict) else {}
            for key in views:
                problems += _view_problem(asset, key, pointer("protocols", i, "views", key))
            for name in set_names:
                if isinstance(name, str) and name not in views:
                    problems.append(asset.problem(
                        f"protocol `{pname}' declares no view for set `{name}' of its template "
                        f"`{proto.get('template')}'", pointer("protocols", i, "views")))
    problems += check_static(asset, [(view, usercode.VIEW_METHODS, "database view") for view in _view_classes(decl)])
    problems += _root_folder_warning(asset, decl, catalog)
    return problems


def _view_classes(decl: dict) -> list[str]:
    """The view class names a database declares (each once, in order)."""
    found: dict[str, None] = {}
    for proto in decl.get("protocols") or []:
        if not isinstance(proto, dict):
            continue
        if schema_version(decl) == 1:
            entries = [s for s in proto.get("sets") or [] if isinstance(s, dict)]
        else:
            views = proto.get("views")
            entries = [v for v in (views.values() if isinstance(views, dict) else []) if isinstance(v, dict)]
        for entry in entries:
            view = entry.get("view")
            if isinstance(view, str) and view.isidentifier():
                found[view] = None
    return list(found)


def _root_folder_warning(asset: Asset, decl: dict, catalog: Catalog) -> list[Problem]:
    """A warning when the (configured or declared) root folder of the raw data does not exist.

    Not an error: views that generate their data never read it, the data may live on another
    machine, and BEAT accepts it.  Views that read it will fail when indexing.
    """
    declared = decl.get("root_folder")
    if not isinstance(declared, str):
        return []
    root = catalog.roots.get(asset.name, declared)
    if os.path.isdir(root):
        return []
    where = "configured" if root != declared else "declared"
    return [asset.warning(f"the {where} root folder `{root}' does not exist: a view reading its raw data from "
                          f"there will fail to index (set `database/{asset.name}' in .backbeatrc to the folder "
                          "holding the data)", pointer("root_folder"))]


def sets(catalog: Catalog, asset: Asset) -> dict[str, dict[str, dict]]:
    """``{protocol: {set: {"outputs", "view", "parameters", "template"}}}`` of a valid database.

    ``template`` is the protocol template name for v2 databases and None for v1.  For v2,
    ``view``/``parameters`` come from the database's ``views``.
    """
    decl = asset.require_valid().declaration
    v1 = schema_version(decl) == 1
    table: dict[str, dict[str, dict]] = {}
    for proto in decl["protocols"]:
        entry: dict[str, dict] = {}
        if v1:
            for set_ in proto["sets"]:
                entry[set_["name"]] = {
                    "outputs": dict(set_["outputs"]),
                    "view": set_["view"],
                    "parameters": dict(set_.get("parameters") or {}),
                    "template": None,
                }
        else:
            template_sets, reason = _template_sets(catalog, proto["template"])
            if template_sets is None:
                raise InvalidAssetError(asset.label, [asset.problem(str(reason), pointer("protocols"))])
            views = proto.get("views") or {}
            for set_ in template_sets:
                view = views[set_["name"]]
                entry[set_["name"]] = {
                    "outputs": dict(set_["outputs"]),
                    "view": view["view"],
                    "parameters": dict(view.get("parameters") or {}),
                    "template": proto["template"],
                }
        table[proto["name"]] = entry
    return table
