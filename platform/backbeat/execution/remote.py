"""Running one block job outside the executor's process (a Dask worker, a batch system).

``python -m backbeat.remote`` reads a job description (JSON) on standard input, runs the
block exactly as the local executor does — a fork server, a control socket, a database
provider if the block reads datasets, one block process — and prints one JSON line: the
outcome ``{"status": "ran"|"cached"|"failed", "kind", "message", "traceback", "statistics"}``.

It runs in a fresh interpreter so that forking never happens from a multi-threaded
process (Dask workers have threads).  The job takes the same ``fcntl`` lock on
``<cache>/.locks/<job key>`` as local runs, so a block is never computed twice at once,
and finds it ``cached`` if another worker or run committed it meanwhile.  The cache must
be on storage every worker shares.

Job description: ``{"key", "block": <executor.Run.block_payload>, "datasets": {name: spec},
"cache", "root", "timeout_s", "memory_bytes"}``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path


def _committed(block: dict) -> bool:
    return all(Path(o["path"]).is_file() for o in block["outputs"].values())


def run(job: dict) -> dict:
    """Run one block job (see module docstring); return its outcome."""
    from backbeat.data import cachefile
    from backbeat.processes.control import ControlServer, outcome
    from backbeat.processes.workerpool import ForkServer, Limits

    block = job["block"]
    lockdir = Path(job["cache"]) / ".locks"
    lockdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lockdir / job["key"], os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _committed(block) and not job.get("force"):
            return {"status": "cached"}
        # under the lock no writer of this job is alive, on any host sharing the cache: whatever
        # temporary files its outputs have were left by a writer that died (a lost worker)
        for o in block["outputs"].values():
            for tmp in Path(o["path"]).parent.glob(Path(o["path"]).name + ".tmp-*"):
                tmp.unlink(missing_ok=True)
        t0 = time.perf_counter()
        server = ForkServer().start()
        control = ControlServer()
        provider = None
        try:
            base = {"control": control.address, "root": job.get("root")}
            if block.get("database") is not None:
                address = f"ipc://{control.directory}/database"
                block = dict(block, database=address)
                provider = server.spawn("backbeat.processes.control:job_main", dict(
                    base, target="backbeat.runtime.dbprovider:serve", job="database-provider",
                    address=address, datasets=job["datasets"]))
            limits = Limits(job.get("timeout_s"), job.get("memory_bytes"))
            handle = server.spawn("backbeat.processes.control:job_main",
                                  dict(block, **base, target="backbeat.runtime.blockrun:run", job="block"), limits)
            messages = []
            while True:
                messages += [m for m in control.poll(50) if m.job == "block"]
                exit_ = handle.poll()
                if exit_ is not None:
                    messages += [m for m in control.poll(0) if m.job == "block"]
                    break
            out = outcome(exit_, messages)
        finally:
            if provider is not None:
                provider.kill()
            server.close()
            control.close()
        if out.ok and _committed(block):
            return {"status": "ran", "statistics": dict(out.statistics, wall_s=time.perf_counter() - t0)}
        for o in block["outputs"].values():
            cachefile.remove_stale_temporaries(o["path"])
        message = out.message if not out.ok else "the block completed but did not commit its outputs"
        return {"status": "failed", "kind": out.kind if not out.ok else "system", "message": message,
                "traceback": out.traceback}
    finally:
        os.close(fd)


def main() -> None:
    try:
        job = json.loads(sys.stdin.read())
        result = run(job)
    except Exception as exc:  # noqa: BLE001 - the caller gets a structured failure, never a traceback
        result = {"status": "failed", "kind": "system", "message": f"{type(exc).__name__}: {exc}",
                  "traceback": None}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
