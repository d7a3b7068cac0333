"""A client of a warm template (tests/integration/test_template.py): ``python _template_client.py MODE OUT``.

It starts a fork server that asks this context's template for its zygote, prints ``{"kind",
"zygote"}`` as a JSON line, then runs one job: ``report`` writes what the job's process sees
(working folder, umask, CPUs, an environment variable, a soft limit, its parent) to ``OUT``
(``python _template_client.py report OUT gone``: from a working folder removed meanwhile); ``hold``
starts a job that writes its pid to ``OUT`` and sleeps (the test kills this client meanwhile).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def report(payload: dict) -> None:
    mask = os.umask(0)
    with open(payload["out"], "w") as f:
        json.dump({"cwd": os.readlink("/proc/self/cwd"), "umask": mask, "cpus": sorted(os.sched_getaffinity(0)), "mark": os.environ.get("BB_TEMPLATE_MARK"),
                   "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "zygote": os.getppid(),
                   "stdout_is_stderr": os.path.samestat(os.fstat(1), os.fstat(2))}, f)


def hold(payload: dict) -> None:
    with open(payload["out"] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(payload["out"] + ".tmp", payload["out"])
    time.sleep(600)


def main(mode: str, out: str, where: str = "here") -> None:
    # as the installed command: the interpreter's folder first (a template serves nothing else);
    # this folder last, for the jobs' targets (after every folder the template imports from)
    sys.path[:] = [os.path.dirname(sys.executable), *sys.path[1:], os.path.dirname(os.path.abspath(__file__))]
    from backbeat.processes.workerpool import ForkServer

    if where == "gone":  # in a working folder removed meanwhile
        os.mkdir("gone")
        os.chdir("gone")
        os.rmdir(os.getcwd())
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.umask(0o027)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 999), hard))
    server = ForkServer(preload=("numpy", "zmq"), template=True).start()
    print(json.dumps({"kind": server.kind, "zygote": server.zygote_pid}), flush=True)
    handle = server.spawn(f"_template_client:{mode}", {"out": out})
    exit = handle.wait(60)
    print(json.dumps({"exit": exit.kind, "code": exit.code}), flush=True)
    server.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
