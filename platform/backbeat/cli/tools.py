"""Everyday commands of the CLI: drawings, asset verbs, cache housekeeping, configuration.

* ``toolchains draw NAME``, ``experiments draw NAME [--report RUN.json]`` (:mod:`backbeat.graph`);
* per kind ``create``, ``version``, ``fork``, ``rm``, ``diff`` (:mod:`backbeat.api`);
* ``experiments caches NAME [--list|--delete|--verify]`` and ``cache gc`` (:mod:`backbeat.api`:
  they plan experiments), ``cache info|view|verify|clear`` (:mod:`backbeat.cache.tools`);
* ``config show`` (:mod:`backbeat.core.config`).

Registered into :mod:`backbeat.cli` through its command table.  Modules doing the work are
imported inside the handlers, so registering costs nothing at start-up.
"""

from __future__ import annotations

import argparse
import json
import sys

from backbeat import api
from backbeat.cli import output
from backbeat.core.errors import BackbeatError


def _size(n: int) -> str:
    """Bytes for people.

    >>> _size(512), _size(2048), _size(5 * 1024 ** 3)
    ('512 B', '2.0 KiB', '5.0 GiB')
    """
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _write_or_print(dot_text: str, output: str | None) -> int:
    if output is None:
        sys.stdout.write(dot_text)
    else:
        print(f"wrote {api.render_drawing(dot_text, output)}", file=sys.stderr)
    return 0


# -- graphs ------------------------------------------------------------------------------------
def cmd_toolchain_draw(args: argparse.Namespace) -> int:
    return _write_or_print(api.draw_toolchain(args.prefix, args.name), args.output)


def _report(path: str | None) -> dict | None:
    if path is None:
        return None
    from pathlib import Path

    from backbeat.core import jsonio

    data, problems = jsonio.load(Path(path))
    if problems:
        raise BackbeatError(f"--report: {problems[0].message} ({path})")
    if not isinstance(data, dict) or not isinstance(data.get("blocks"), dict):
        raise BackbeatError(f"--report: `{path}' is not a run report (backbeat experiments run --json)")
    return data


def cmd_experiment_draw(args: argparse.Namespace) -> int:
    dot_text, note = api.draw_experiment(args.prefix, args.cache, args.name, _report(args.report))
    if note:
        print(f"note: {note}", file=sys.stderr)
    return _write_or_print(dot_text, args.output)


# -- asset verbs -------------------------------------------------------------------------------
def cmd_create(args: argparse.Namespace) -> int:
    for name in args.names:
        out = api.create(args.prefix, args.kind, name)
        for path in out["files"]:
            print(path)
        if out["notes"]:
            print(f"note: {args.kind}/{name} refers to assets to create or edit before it is valid:",
                  file=sys.stderr)
            for message in out["notes"]:
                print(f"  {message}", file=sys.stderr)
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    out = api.version(args.prefix, args.kind, args.name)
    if args.json:
        output.print_json(out)
    else:
        print(out["name"])
    return 0


def cmd_fork(args: argparse.Namespace) -> int:
    out = api.fork(args.prefix, args.kind, args.src, args.dst)
    if args.json:
        output.print_json(out)
    else:
        print(out["name"])
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    done = api.remove(args.prefix, args.kind, args.names, purge=args.purge, force=args.force)
    for d in done:
        if d["used_by"]:
            print(f"warning: {args.kind}/{d['name']} is still used by {', '.join(d['used_by'])}"
                  + ("" if args.purge else f" (restore it from its backups: {', '.join(d['backups'])})"),
                  file=sys.stderr)
    if args.json:
        output.print_json(done)
    else:
        for d in done:
            print(f"removed {args.kind}/{d['name']}" + (" (backups: " + ", ".join(d["backups"]) + ")"
                                                        if d["backups"] else ""))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    out = api.diff(args.prefix, args.kind, args.name, args.other)
    if args.json:
        output.print_json({k: v for k, v in out.items() if k != "text"})
    elif out["identical"]:
        print(f"{args.kind}/{out['a']} and {args.kind}/{out['b']} are identical")
    else:
        sys.stdout.write(out["text"])
    return 0


# -- caches ------------------------------------------------------------------------------------
def cmd_experiment_caches(args: argparse.Namespace) -> int:
    records = api.experiment_caches(args.prefix, args.cache, args.name)
    status = 0
    if args.verify:
        for r in records:
            r["status"] = api.cache_verify_file(args.cache, r["path"]) if r["exists"] else None
            if r["status"] and r["status"]["status"] != "ok":
                status = 1
    freed = (api.cache_delete(args.cache, [r["path"] for r in records if r["exists"]])
             if args.delete else None)
    if args.json:
        out = {"experiment": args.name, "outputs": records}
        if freed is not None:
            out["bytes_freed"] = freed
        output.print_json(out)
        return status
    for r in records:
        if args.list and not r["exists"]:
            continue
        line = f"{r['block']}.{r['output']}: {r['path']}"
        if args.list:
            line += f"  ({_size(r['bytes'])})"
        elif args.verify:
            line += "  " + (r["status"]["status"] if r["status"] else "missing")
            if r["status"] and r["status"]["message"]:
                line += f" - {r['status']['message']}"
        elif args.delete:
            line += "  deleted" if r["exists"] else "  (not in the cache)"
        else:
            line += "" if r["exists"] else "  (not in the cache)"
        print(line)
    if freed is not None:
        print(f"{_size(freed)} freed", file=sys.stderr)
    return status


def cmd_cache_info(args: argparse.Namespace) -> int:
    out = api.cache_info(args.cache, args.paths or None)
    if args.json:
        output.print_json(out)
    elif args.paths:
        for f in out["files"]:
            print(f["path"])
            for k, v in f.items():
                if k != "path":
                    print(f"  {k}: {_size(v) if k == 'bytes' else v}")
    else:
        print(f"cache {out['cache']}: {out['entries']} file(s), {_size(out['bytes'])}")
        print(f"  {out['outputs']} output(s), {out['indexes']} view index(es), "
              f"{out['temporaries']} temporary file(s), {out['other_entries']} other")
        if out["unrecognised_files"]:
            print(f"  {len(out['unrecognised_files'])} file(s) not shaped like cache entries (never touched)")
    return 0


def cmd_cache_view(args: argparse.Namespace) -> int:
    from backbeat.core import jsonio

    for record in api.cache_view(args.cache, args.path, args.start, args.end):
        if args.json:
            print(jsonio.simplejson.dumps(record, ensure_ascii=False))
        elif "entry" in record:
            print(f"entry {record['entry']}: {jsonio.simplejson.dumps(record['data'], ensure_ascii=False)}")
        else:
            print(f"FROM {record['start']} TO {record['end']}")
            for key, value in record["data"].items():
                print(f"  {key}: {jsonio.simplejson.dumps(value, ensure_ascii=False)}")
    return 0


def cmd_cache_verify(args: argparse.Namespace) -> int:
    results = api.cache_verify(args.cache, args.paths or None, delete=args.delete)
    bad = [r for r in results if r["status"] == "corrupt"]
    if args.json:
        output.print_json(results)
    else:
        for r in results:
            if r["status"] != "ok" or args.verbose:
                extra = " (deleted)" if r.get("deleted") else ""
                print(f"{r['path']}: {r['status']}{extra}" + (f" - {r['message']}" if r["message"] else ""))
        print(f"{len(results)} file(s) verified, {len(bad)} corrupt", file=sys.stderr)
    return 1 if bad else 0


def _print_removal(out: dict, as_json: bool, what: str) -> None:
    if as_json:
        output.print_json(out)
        return
    verb = "would free" if out["dry_run"] else "freed"
    if out["dry_run"]:
        for p in out["removed"]:
            print(p)
    for s in out.get("skipped_experiments", []):
        print(f"note: experiment {s['experiment']}: {s['reason']}", file=sys.stderr)
    if out["unrecognised_files"]:
        print(f"note: {len(out['unrecognised_files'])} file(s) not shaped like cache entries were left alone",
              file=sys.stderr)
    kept = f", {out['kept']} kept" if "kept" in out else ""
    print(f"{what}: {len(out['removed'])} file(s){kept}, {verb} {_size(out['bytes_freed'])}")


def cmd_cache_gc(args: argparse.Namespace) -> int:
    _print_removal(api.cache_gc(args.prefix, args.cache, dry_run=args.dry_run), args.json, "cache gc")
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    _print_removal(api.cache_clear(args.cache, dry_run=args.dry_run), args.json, "cache clear")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from backbeat.core import config

    cfg = config.active() or config.load()
    out = dict(cfg.to_json(), prefix=args.prefix, cache=args.cache)
    if args.json:
        output.print_json(out)
    else:
        print(f"prefix: {out['prefix']}")
        print(f"cache: {out['cache']}")
        for db, root in out["databases"].items():
            print(f"database/{db}: {root}")
        for pattern, target in out["environments"].items():
            print(f"environments/{pattern}: {target}")
        if out["sandbox"] is not None:
            print(f"sandbox: {json.dumps(out['sandbox'])}")
        print("files: " + (", ".join(out["files"]) or "(none)"))
    return 0


def _nonnegative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`{text}' is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _group(sub: argparse._SubParsersAction, name: str, text: str) -> argparse._SubParsersAction:
    p = sub.add_parser(name, help=text)
    p.set_defaults(handler=None, parser=p)
    return p.add_subparsers(dest="verb", metavar="COMMAND")


def register(sub: argparse._SubParsersAction, kinds: dict) -> None:
    from backbeat.api import FORKABLE, VERSIONABLE
    from backbeat.core.names import FOLDERS

    for folder, ksub in kinds.items():
        kind = FOLDERS[folder].name
        if kind != "experiment":
            p = ksub.add_parser("create", help=f"create {folder} from backbeat's prototype")
            p.add_argument("names", nargs="+", metavar="NAME")
            p.set_defaults(handler=cmd_create)
        if kind in VERSIONABLE:
            p = ksub.add_parser("version", help="copy NAME to the next version (recorded in .beat/selected.json)")
            p.add_argument("name", metavar="NAME")
            p.add_argument("--json", action="store_true", help="print JSON")
            p.set_defaults(handler=cmd_version)
        if kind in FORKABLE:
            p = ksub.add_parser("fork", help="copy SRC to DST (recorded in .beat/selected.json)")
            p.add_argument("src", metavar="SRC")
            p.add_argument("dst", metavar="DST")
            p.add_argument("--json", action="store_true", help="print JSON")
            p.set_defaults(handler=cmd_fork)
        p = ksub.add_parser("rm", help="remove assets (files kept as `~' backups unless --purge)")
        p.add_argument("names", nargs="+", metavar="NAME")
        p.add_argument("--purge", action="store_true", help="delete the files and their backups")
        p.add_argument("--force", action="store_true", help="with --purge: also assets other assets still use")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(handler=cmd_rm)
        p = ksub.add_parser("diff", help="differences between two assets (OTHER: a name or a version number)")
        p.add_argument("name", metavar="NAME")
        p.add_argument("other", metavar="OTHER")
        p.add_argument("--json", action="store_true", help="print the changes as JSON pointers")
        p.set_defaults(handler=cmd_diff)

    for folder, handler in (("toolchains", cmd_toolchain_draw), ("experiments", cmd_experiment_draw)):
        p = kinds[folder].add_parser("draw", help="draw as Graphviz DOT (or .svg/.png with Graphviz installed)")
        p.add_argument("name", metavar="NAME")
        p.add_argument("-o", "--output", default=None, metavar="FILE",
                       help="FILE.dot, FILE.svg or FILE.png (default: DOT on stdout)")
        if folder == "experiments":
            p.add_argument("--report", default=None, metavar="RUN.json",
                           help="a saved `experiments run --json' report: colour its failed blocks")
        p.set_defaults(handler=handler)

    p = kinds["experiments"].add_parser("caches", help="the cache files of an experiment's blocks")
    p.add_argument("name", metavar="NAME")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--list", action="store_true", help="list the files present, with sizes")
    act.add_argument("--delete", action="store_true", help="delete the files present")
    act.add_argument("--verify", action="store_true", help="verify the content digest of each file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_experiment_caches)

    csub = _group(sub, "cache", "inspect and clean the cache folder")
    p = csub.add_parser("info", help="summary of the cache, or details of the named files (paths or keys)")
    p.add_argument("paths", nargs="*", metavar="PATH|KEY")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_cache_info)
    p = csub.add_parser("view", help="print the data units of an output (or the entries of an index)")
    p.add_argument("path", metavar="PATH|KEY")
    p.add_argument("--start", type=_nonnegative, default=None, metavar="N", help="first data index to print")
    p.add_argument("--end", type=_nonnegative, default=None, metavar="N", help="last data index to print")
    p.add_argument("--json", action="store_true", help="one JSON object per unit")
    p.set_defaults(handler=cmd_cache_view)
    p = csub.add_parser("verify", help="verify content digests (all files, or the named ones)")
    p.add_argument("paths", nargs="*", metavar="PATH|KEY")
    p.add_argument("--delete", action="store_true", help="delete the corrupt files")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the files that are fine")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_cache_verify)
    p = csub.add_parser("gc", help="delete what no experiment of the prefix needs")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_cache_gc)
    p = csub.add_parser("clear", help="delete every cache entry")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_cache_clear)

    gsub = _group(sub, "config", "the .backbeatrc configuration")
    p = gsub.add_parser("show", help="the effective prefix, cache and database root folders, and the files read")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_config_show)

