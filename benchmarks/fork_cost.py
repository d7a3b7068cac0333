"""What a forked block process costs: CPU and copied pages of a child of a warm parent.

A block process is a child of the fork server's zygote, which has imported numpy, zmq, h5py and
the block runtime (and run :mod:`backbeat.runtime.rehearsal`).  This script makes such a parent
(importing what the zygote preloads: ``backbeat.execution.state.PRELOAD``), then forks ``--n``
children per step, each doing one step and leaving through ``os._exit``, and prints what the
operating system counted for them (``RUSAGE_CHILDREN``): user and system CPU time and minor page
faults (copy-on-write of the parent's pages, first touches of new ones) per child.

Steps: ``nothing`` (the child of a fork, alone); ``setup`` (the zygote's child set-up:
:func:`backbeat.processes.zygote.child_setup`); ``writer`` (a 10-unit cache file written and
committed with :class:`~backbeat.data.cachewriter.CacheWriter`, fsync included); ``writer-nofsync``;
``writer-images`` (the same file written from the template of its structure, :mod:`backbeat.data.h5image`).
Run it with ``PYTHONPATH`` naming another checkout's ``platform`` to compare two versions.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Callable

FMT = {"value": "float64"}


def _steps(folder: str) -> dict[str, Callable[[], None]]:
    from backbeat.data import cachewriter
    from backbeat.processes import zygote

    def writer(**kw: str) -> None:
        w = cachewriter.CacheWriter(os.path.join(folder, f"{os.getpid()}.h5"), "bench/scalar/1", FMT,
                                    key="0" * 64, start=0, end=9, **kw)
        for i in range(10):
            w.write({"value": i * 0.001})
        w.close()

    def writer_nofsync() -> None:
        os.fsync = lambda fd: None  # (this child only)
        writer()

    fresh = sys.modules.get("backbeat.processes.freshstate")
    seeded = {"seeded": True} if fresh is not None and hasattr(fresh, "seed_numpy") else {}

    def setup() -> None:  # (its output on stderr, fds above 2 closed: in the child only)
        zygote.child_setup({}, None, **seeded)

    def writer_images() -> None:  # (from the template the warm-up's first child made: data.h5image)
        writer(images=os.path.join(folder, "images"))

    return {"nothing": lambda: None, "setup": setup, "writer": writer, "writer-nofsync": writer_nofsync,
            "writer-images": writer_images}


def _before_fork() -> Callable[[], None]:
    """What the zygote does before each fork (this version's: see processes/zygote.py)."""
    fresh = sys.modules.get("backbeat.processes.freshstate")  # (not in older versions)
    prepare = getattr(fresh, "prepare_std_streams", None)
    seed = getattr(fresh, "seed_numpy", None)

    def before() -> None:
        if prepare is not None:
            prepare()
        if seed is not None:
            seed()
    return before


def measure(step: Callable[[], None], n: int) -> dict[str, float]:
    """Fork ``n`` children running ``step``; their mean user/system ms and minor faults."""
    before_fork = _before_fork()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(n):
        before_fork()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                step()
            except BaseException:  # noqa: BLE001 - reported by the exit code
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if status:
            raise SystemExit(f"a child failed (status {status})")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"user_ms": (after.ru_utime - before.ru_utime) / n * 1e3,
            "sys_ms": (after.ru_stime - before.ru_stime) / n * 1e3,
            "faults": (after.ru_minflt - before.ru_minflt) / n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="children per step (default 60)")
    parser.add_argument("--steps", default="nothing,setup,writer,writer-nofsync", help="comma-separated steps")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    from backbeat.execution.state import PRELOAD

    for name in PRELOAD:
        importlib.import_module(name)
    import gc

    from backbeat.processes import zygote

    zygote._fresh_random_state()  # as the zygote does once it has imported numpy
    gc.freeze()  # as the zygote does
    folder = tempfile.mkdtemp(prefix="bb-forkcost-")
    try:
        steps = _steps(folder)
        chosen = [s for s in args.steps.split(",") if s]
        unknown = [s for s in chosen if s not in steps]
        if unknown:
            parser.error(f"unknown steps: {', '.join(unknown)}")
        results = {}
        for name in chosen:
            measure(steps[name], max(1, args.n // 10))  # (warm-up)
            results[name] = measure(steps[name], args.n)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    import backbeat

    if args.json:
        print(json.dumps({"backbeat": os.path.dirname(backbeat.__file__), "n": args.n, "steps": results}))
        return 0
    print(f"backbeat from {os.path.dirname(backbeat.__file__)}; {args.n} children per step; per child:")
    print(f"{'step':16s} {'user ms':>8s} {'sys ms':>8s} {'faults':>8s}")
    for name, r in results.items():
        print(f"{name:16s} {r['user_ms']:8.2f} {r['sys_ms']:8.2f} {r['faults']:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
