"""``attest verify --rerun``: run an attested experiment again and compare every block's outputs.

The experiment runs (``--force``, local executor, in the sandbox with ``--sandbox`` or when
``.backbeatrc`` asks for it for this experiment, with its configured limits) from a copy of the
archive's prefix into a scratch cache, both in the verification's temporary folder, which is
removed afterwards.
Raw data comes from the folder :func:`backbeat.attestation.verify.data_source` chose (``--data
DIR`` or the archive's ``data/``): the files of ``data/<database>/root/`` are the database's
root folder (given to the run as a root folder override, as ``.backbeatrc`` would), those of
``code/`` are copied next to the view code in the prefix copy.  The verifier's own
configuration (limits, environments, sandbox) otherwise applies.

The run's record is then compared with the attested one in execution order: the view
indexes and data manifests each dataset was built from, and every block output's content
digest.  For the **first block whose outputs differ**, the cause is named:

* ``code`` — its key pre-image (algorithm, libraries, parameters) differs from the attested one;
* ``data`` — an input comes from a dataset whose data files (or view index) differ: the files are named;
* ``environment`` — its inputs are identical but it ran in another environment (Python,
  package versions, interpreter): the differences are listed;
* ``non-determinism`` — same code, inputs and environment, other outputs (e.g. unseeded randomness);
* ``failed`` — it did not run (its error is given).

Blocks after it whose inputs differ are reported as differing because of their inputs
(``upstream``).  Environment differences of blocks whose outputs are identical are listed in
``environments`` (and are not mismatches: the outputs were reproduced).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backbeat.attestation.archive import Extracted
from backbeat.attestation.description import database_data
from backbeat.attestation.environments import block_environments, differences
from backbeat.cache.store import CacheStore
from backbeat.core import config
from backbeat.core.errors import BackbeatError, DataError
from backbeat.declarations.catalog import Catalog
from backbeat.execution.local import LocalExecutor
from backbeat.planning.selection import Options
from backbeat.provenance import manifests, records

Bad = Callable[[str, str, str], None]


def _place_data(prefix: Path, record: dict, found: dict[str, dict], source: Path | None, work: Path) -> dict[str, str]:
    """Copy the ``code/`` data files next to the view code; ``{database: root folder}``."""
    catalog = Catalog(str(prefix))
    roots = {}
    for db, seen in database_data(record, found).items():
        base = source / db if source is not None else work / "no-data" / db
        roots[db] = str(base / "root")
        code = Path(manifests.folders(catalog, db, "")["code"])
        for label, f in sorted(seen["files"].items()):
            if not label.startswith("code/") or not f.get("sha256"):
                continue
            src, dst = base / label, manifests.label_path({"code": str(code)}, label)
            if not src.is_file():
                continue  # (reported by the data check; the view will fail or read otherwise)
            if dst.exists():
                raise DataError(f"data file {label} of database {db} would overwrite `{dst}' of the archive's prefix")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    return roots


def _run(prefix: Path, name: str, roots: dict[str, str], sandbox: bool | None,
         progress: Any) -> tuple[dict, dict | None, CacheStore, bool]:
    saved = config.active()
    base = saved or config.Config()
    timeout, memory = config.limits_for(saved, name)
    options = Options(force=True, timeout_s=timeout, memory_bytes=memory,
                      sandbox=config.sandbox_for(saved, name) if sandbox is None else sandbox)
    config.activate(dataclasses.replace(base, databases={**base.databases, **roots}))
    scratch = CacheStore.scratch()
    try:
        rep = LocalExecutor().run(prefix, scratch, name, options, progress)
    except BackbeatError:
        scratch.destroy()
        raise
    finally:
        config.activate(saved)
    return rep, records.latest(scratch, name), scratch, options.sandbox


def _dataset_changes(record: dict, new: dict, found: dict[str, dict], scratch: CacheStore) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ds_name, old in record["datasets"].items():
        nd = new.get("datasets", {}).get(ds_name) or {}
        why = []
        if nd.get("data") != old.get("data"):
            now = manifests.load_or_none(scratch, nd.get("data"))
            why += [c["message"] for c in manifests.diff(old["database"], found.get(old.get("data") or ""), now)] \
                or [f"the data its view read differs (manifest {str(nd.get('data'))[:12]}, attested "
                    f"{str(old.get('data'))[:12]})"]
        if nd.get("index_digest") != old.get("index_digest"):
            why.append(f"its rebuilt view index differs from the attested one ({str(old.get('index_digest'))[:12]} "
                       f"-> {str(nd.get('index_digest'))[:12]})")
        if why:
            out[ds_name] = why
    return out


def _code_changes(old: dict, new: dict) -> list[str]:
    a, b = old.get("pre_image") or {}, new.get("pre_image") or {}
    out = [f"{what} {str(a.get(k))[:60]} -> {str(b.get(k))[:60]}"
           for k, what in (("algorithm", "algorithm hash"), ("libraries", "libraries"), ("parameters", "parameters"))
           if a.get(k) != b.get(k)]
    if old.get("algorithm") != new.get("algorithm"):
        out.insert(0, f"algorithm {old.get('algorithm')} -> {new.get('algorithm')}")
    return out


def _classify(name: str, old: dict, new: dict, datasets: dict[str, list[str]], env: list[str],
              diverged: set[str]) -> tuple[str, str, list[str]]:
    """``(cause, explanation, inputs that differ)`` of a block whose outputs differ."""
    code = _code_changes(old, new)
    if code:
        return "code", "its code or parameters differ: " + "; ".join(code), []
    inputs, reasons, data = [], [], False
    for i, oi in (old.get("inputs") or {}).items():
        if oi.get("source") == "dataset" and oi.get("node") in datasets:
            inputs.append(i)
            data = True
            reasons.append(f"input {i} (dataset `{oi['node']}'): " + "; ".join(datasets[oi["node"]]))
        elif oi.get("source") != "dataset" and (oi.get("node") in diverged or
                                               (new.get("inputs") or {}).get(i, {}).get("digest") != oi.get("digest")):
            inputs.append(i)
            reasons.append(f"input {i} (from block `{oi.get('node')}') differs")
    if reasons:
        return "data" if data else "upstream", "; ".join(reasons), inputs
    if env:
        return "environment", "same code and inputs, another environment: " + "; ".join(env), []
    return "non-determinism", "same code, inputs and environment, other outputs: the block is non-deterministic", []


def rerun(ex: Extracted, record: dict, found: dict[str, dict], source: Path | None, work: Path, bad: Bad,
          sandbox: bool | None = None, progress: Any = None) -> dict:
    """Run the attested experiment again; compare (see the module docstring)."""
    name = record["experiment"]
    prefix = work / "rerun" / "prefix"
    shutil.copytree(ex.path("prefix"), prefix)
    out: dict[str, Any] = {"status": None, "sandbox": None, "datasets": {}, "blocks": {}, "environments": {}, "first_divergence": None}
    try:
        roots = _place_data(prefix, record, found, source, work)
        rep, new, scratch, out["sandbox"] = _run(prefix, name, roots, sandbox, progress)
    except BackbeatError as exc:
        out["status"] = "failed"
        out["first_divergence"] = {"block": None, "cause": "failed", "message": f"the re-run failed: {exc}"}
        bad("rerun", name, f"the re-run of `{name}' failed: {exc}")
        return out
    try:
        out["status"] = rep.get("status")
        new = new or {"datasets": {}, "blocks": {}}
        datasets = _dataset_changes(record, new, found, scratch)
    finally:
        scratch.destroy()
    for ds_name in record["datasets"]:
        out["datasets"][ds_name] = "different" if ds_name in datasets else "same"
    envs_old, envs_new = block_environments(record), block_environments(new) if new.get("order") else {}
    diverged: set[str] = set()
    for b in record["order"]:
        ob, nb = record["blocks"][b], new["blocks"].get(b)
        ran = nb is not None and nb.get("status") == "ran"
        # (a block that did not run on re-run has no environment of its own to compare: a record
        # gives the run's instead, which would read as differences that are none)
        env = differences(envs_old[b], envs_new.get(b, {})) if ran and b in envs_new else []
        if env:
            out["environments"][b] = env
        if not ran:
            err = ((nb or {}).get("error") or {}).get("message") or "it did not run"
            out["blocks"][b] = "failed"
            diverged.add(b)
            message = f"block `{b}' failed on re-run: {err}"
            bad("rerun", b, message)
            if out["first_divergence"] is None:
                out["first_divergence"] = {"block": b, "cause": "failed", "outputs": [], "inputs": [],
                                           "message": message}
            continue
        outputs = [o for o, oo in (ob.get("outputs") or {}).items()
                   if (nb.get("outputs") or {}).get(o, {}).get("digest") != oo.get("digest")]
        out["blocks"][b] = "different" if outputs else "same"
        if not outputs:
            continue
        diverged.add(b)
        cause, why, inputs = _classify(b, ob, nb, datasets, env, diverged - {b})
        if out["first_divergence"] is None:
            message = f"block `{b}': output(s) {', '.join(outputs)} differ from the attested ones ({cause}): {why}"
        else:  # downstream of the first: said briefly
            message = f"block `{b}': output(s) {', '.join(outputs)} differ" + (
                f" because input(s) {', '.join(inputs)} differ" if inputs else f" ({cause}: {why})")
        bad("rerun", b, message)
        if out["first_divergence"] is None:
            out["first_divergence"] = {"block": b, "cause": cause, "outputs": outputs, "inputs": inputs,
                                       "message": message}
    return out
