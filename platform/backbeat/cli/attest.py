"""Attestation commands: ``experiments export`` and ``attest verify|import`` (``docs/attestations.md``).

Registered into :mod:`backbeat.cli` through its extension list; the work is done by
:mod:`backbeat.attestation` through :mod:`backbeat.api`; this module parses and prints.
``attest verify`` exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import sys

from backbeat import api
from backbeat.cli import output


def _notes(notes: list[str]) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> int:
    res = api.export_experiment(args.prefix, args.cache, args.name, args.output, with_data=args.with_data)
    if args.json:
        output.print_json(res)
    else:
        print(f"attestation {res['attestation']}")
        print(f"  {res['file']}: experiment {res['experiment']}, {res['members']} members, {res['bytes']} bytes"
              + (", with its raw data" if res["with_data"] else ""))
    _notes(res["notes"])
    return 0


def _print_verification(res: dict) -> None:
    what = f"{res['experiment'] or '?'}, run of {res['record']['created'] or '?'}"
    checked = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in res["checked"].items())
    if res["ok"]:
        print(f"attestation {res['attestation']} ({what}): OK")
    else:
        print(f"attestation {res['attestation']} ({what}): FAILED, {len(res['mismatches'])} mismatch(es)")
        for m in res["mismatches"]:
            print(f"  [{m['kind']}] " + m["message"].replace("\n", "\n  "))
    print(f"  checked: {checked}")
    rerun = res.get("rerun")
    if rerun is not None:
        first = rerun.get("first_divergence")
        if first:
            print(f"first diverging block on re-run: {first['block']} ({first['cause']}) - {first['message']}")
        else:
            print("re-run: every block's outputs identical to the attested ones")
        for block, diffs in rerun["environments"].items():
            print(f"  environment of {block} differs from the attested run: {'; '.join(diffs)}")
    _notes(res["notes"])


def cmd_verify(args: argparse.Namespace) -> int:
    res = api.verify_attestation(args.archive, data=args.data, rerun=args.rerun, expect=args.expect,
                                 sandbox=args.sandbox)
    if args.json:
        output.print_json(res)
        _notes(res["notes"])
    else:
        _print_verification(res)
    return 0 if res["ok"] else 1


def cmd_import(args: argparse.Namespace) -> int:
    res = api.import_attestation(args.archive, args.prefix)
    if args.json:
        output.print_json(res)
    else:
        print(f"attestation {res['attestation']} ({res['experiment']}) imported into {res['prefix']}: "
              f"{len(res['added'])} asset(s) added, {len(res['identical'])} already there"
              + (f", {len(res['data_files'])} data file(s)" if res["data_files"] else ""))
        for label in res["added"]:
            print(f"  added {label}")
    _notes(res["notes"])
    return 0


def register(sub: argparse._SubParsersAction, kinds: dict) -> None:
    exp = kinds["experiments"]
    p = exp.add_parser("export", help="write an attestation: the last run's assets, hashes, data manifests, "
                                      "results and provenance in one archive")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the archive to write (a tar file)")
    p.add_argument("--with-data", action="store_true", help="include the raw data files the views read")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_export)
    attest = sub.add_parser("attest", help="verify or import an attestation archive")
    attest.set_defaults(parser=attest, handler=None)
    verbs = attest.add_subparsers(dest="verb", metavar="VERB")
    p = verbs.add_parser("verify", help="check an attestation by hash (exit 1 on any mismatch)")
    p.add_argument("archive", metavar="FILE")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="the raw data, laid out as DIR/<database>/<version>/root|code/… (default: the archive's)")
    p.add_argument("--rerun", action="store_true", help="run the experiment again and compare every block's outputs")
    p.add_argument("--expect", metavar="NAME", default=None, help="the attestation name (digest) it must have")
    box = p.add_mutually_exclusive_group()
    box.add_argument("--sandbox", dest="sandbox", action="store_true", default=None,
                     help="re-run every block in the sandbox (docs/security.md; default: as .backbeatrc says)")
    box.add_argument("--no-sandbox", dest="sandbox", action="store_false", help="re-run without the sandbox")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_verify)
    p = verbs.add_parser("import", help="add an attestation's assets to the prefix (conflicts refused)")
    p.add_argument("archive", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_import)
