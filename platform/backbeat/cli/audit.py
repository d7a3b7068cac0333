"""Provenance commands of the CLI: ``experiments provenance|status|audit`` and ``audit RECORD.json``.

Registered into :mod:`backbeat.cli` through its extension list; the work is done by
:mod:`backbeat.provenance` (records, PROV-JSON) and :mod:`backbeat.audit` (status, audit);
this module parses and prints.  ``status`` always exits 0; ``audit`` exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import sys

from backbeat import api
from backbeat.cli import output
from backbeat.core.errors import ExecutionError
from backbeat.core.names import parse_name


def _indent(text: str, pad: str = "      ") -> str:
    return pad + text.replace("\n", "\n" + pad)


def cmd_provenance(args: argparse.Namespace) -> int:
    _k, name = parse_name("experiment", args.name)
    rec: dict | None
    if args.run is not None:  # run N of `experiments history' (1 = the last)
        rec = api.provenance_record(args.cache, name, args.run)
    else:
        rec = api.provenance(args.cache, name)  # the last run, whatever its status
    if rec is None:
        raise ExecutionError(f"no provenance record of experiment `{name}' in cache `{args.cache}': run it first")
    if args.prov:
        output.print_json(api.prov_json(rec, args.cache))
        return 0
    if args.json:
        output.print_json(rec)
        return 0
    env = rec["environment"]
    print(f"experiment {rec['experiment']}: run of {rec['created']} ({rec['status']})")
    print(f"  backbeat {env['backbeat']}, Python {env['python']}, {env['platform']}")
    print("  packages: " + ", ".join(f"{p} {v}" for p, v in env["packages"].items() if v))
    print("assets:")
    for label, a in rec["assets"].items():
        print(f"  {label}  {a['hash']}")
    print("databases:")
    for db, m in rec["databases"].items():
        if "files" in m:  # a record of an older format
            print(f"  {db}: {len(m['files'])} file(s) under {m['folder']} ({m['source']})")
            continue
        print(f"  {db}: root folder {m.get('root_folder') or '(none)'}")
    manifests = api.data_manifests(args.cache, rec)
    print("datasets (data read by their views):")
    for ds_name, ds in rec["datasets"].items():
        summary = ds.get("data_summary") or {}
        print(f"  {ds_name} ({ds['database']} {ds['protocol']}/{ds['set']}): {summary.get('files', '?')} file(s), "
              f"{summary.get('bytes', '?')} bytes, data manifest {ds.get('data')}")
        for path, f in sorted((manifests.get(ds.get("data") or "") or {}).get("files", {}).items())[:20]:
            print(f"    {path}  {f.get('size')} bytes  sha256 {f.get('sha256')}")
    print("blocks:")
    for name in rec["order"]:
        b = rec["blocks"][name]
        wall = (b.get("statistics") or {}).get("wall_s")
        print(f"  {name} ({b['algorithm']}): {b['status']}" + (f", {wall:.3f} s" if wall is not None else "")
              + f"\n    key {b['key']}")
        rt = b.get("runtime")
        if rt:
            env = rt.get("environment") or {}
            pkgs = ", ".join(f"{p} {v}" for p, v in (rt.get("packages") or {}).items() if v)
            print(f"    environment {env.get('name')}/{env.get('version')}: {rt.get('interpreter')} (Python "
                  f"{rt.get('python')}; {pkgs})" + (", sandboxed" if rt.get("sandbox") else ""))
        for o, out in b["outputs"].items():
            print(f"    output {o}: digest {out['digest']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    st = api.status(args.prefix, args.cache, args.name)
    if args.json:
        output.print_json(st)
        return 0
    if st["record"] is None:
        print(f"{st['experiment']}: {st['note']}")
    else:
        print(f"{st['experiment']}: compared with the recorded run of {st['record']['created']} "
              f"({st['record']['status']})")
    for name, b in st["blocks"].items():
        state = "STALE" if b["state"] == "stale" else b["state"]
        print(f"  {name}: {state} - {b['reason']}")
        for change in b["changes"]:
            print(_indent(change))
    if st["assets"] or st["data_files"]:
        print("changed since the recorded run:")
        for a in st["assets"]:
            print(f"  {a['asset']}: {a['what']}")
            for d in a["diff"]:
                print(f"      {d}")
        for f in st["data_files"]:
            print(f"  {f['message']}")
    return 0


def _print_audit(res: dict) -> None:
    if res["ok"]:
        print(f"{res['experiment']}: audit OK (record of {res['record']['created']})")
    else:
        print(f"{res['experiment']}: audit FAILED, {len(res['mismatches'])} mismatch(es) "
              f"(record of {res['record']['created']})")
        for m in res["mismatches"]:
            print(f"  [{m['kind']}] " + m["message"].replace("\n", "\n  "))
    rerun = res.get("rerun")
    if rerun is not None:
        first = rerun.get("first_divergence")
        if first:
            print(f"first diverging block on re-run: {first['block']} - {first['message']}")
        else:
            print("re-run: every output identical to the record")
    for note in res["notes"]:
        print(f"note: {note}", file=sys.stderr)


def cmd_audit(args: argparse.Namespace) -> int:
    api.adopt_orphans()
    res = api.audit(args.prefix, args.cache, args.name, rerun=args.rerun)
    if args.json:
        output.print_json(res)
    else:
        _print_audit(res)
    return 0 if res["ok"] else 1


def cmd_audit_record(args: argparse.Namespace) -> int:
    api.adopt_orphans()
    rec = api.read_record(args.record)
    res = api.audit(args.prefix, args.cache, record=rec, rerun=args.rerun)
    if args.json:
        output.print_json(res)
    else:
        _print_audit(res)
    return 0 if res["ok"] else 1


def register(sub: argparse._SubParsersAction, kinds: dict) -> None:
    exp = kinds["experiments"]
    p = exp.add_parser("provenance", help="show the provenance record of the last run (or of run N)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--run", type=int, default=None, metavar="N",
                   help="the record of run N as numbered by `experiments history' (1 = the last run)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the record as JSON")
    fmt.add_argument("--prov", action="store_true", help="export the record as W3C PROV-JSON")
    p.set_defaults(handler=cmd_provenance)
    p = exp.add_parser("status", help="each block as cached / will run / stale, and what changed")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_status)
    p = exp.add_parser("audit", help="check the last run against the files on disk (exit 1 on mismatch)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--rerun", action="store_true", help="re-execute into a scratch cache and compare outputs")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_audit)
    p = sub.add_parser("audit", help="check a provenance record (from anyone) against this prefix")
    p.add_argument("record", metavar="RECORD.json")
    p.add_argument("--rerun", action="store_true", help="re-execute into a scratch cache and compare outputs")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_audit_record)

