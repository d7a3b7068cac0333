"""The fork server's rehearsal (runtime.rehearsal): one small block run before any is forked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))

FORKED = textwrap.dedent("""
    import glob, json, os, sys, tempfile
    sys.path.insert(0, sys.argv[1])
    from backbeat.execution.state import PRELOAD
    from backbeat.processes.workerpool import ForkServer

    def folders(pids):  # (only this script's: other suites on the machine make and remove theirs meanwhile)
        found = set(glob.glob("/dev/shm/bb-rehearsal-*")) | set(glob.glob(os.path.join(tempfile.gettempdir(),
                                                                                        "bb-rehearsal-*")))
        return {f for f in found if int(os.path.basename(f).split("-")[2]) in pids}
    out = os.path.join(sys.argv[2], "report.json")
    learnt = os.path.join(sys.argv[2], "learnt")
    fmt = {"name": "test/learnt/1", "expanded": {"x": "int32", "s": "string"}}
    with ForkServer(preload=PRELOAD, mode="fork") as server:
        ours = {os.getpid(), server.zygote_pid}  # (the zygote rehearses, as it preloads)
        handle = server.spawn("_workerpool_targets:report_rehearsal", {"out": out})
        handle.wait(60)
        assert handle.exit.ok, handle.exit
        first = server.spawn("_workerpool_targets:ok", {"spec": {"formats": {fmt["name"]: fmt["expanded"]}}})
        first.wait(60)
        second = server.spawn("_workerpool_targets:report_learnt", dict(fmt, out=learnt))
        second.wait(60)
        assert first.exit.ok and second.exit.ok, (first.exit, second.exit)
    report = json.load(open(out))
    report["learnt"] = open(learnt).read()
    report["folders_left"] = sorted(folders(ours))
    print(json.dumps(report))
""")


def test_block_processes_inherit_the_rehearsal_and_it_leaves_nothing(tmp_path):
    """A block process forked by a fork server preloading the block runtime finds the rehearsal's
    work done (its dataformat's value class made before the fork; the code of a streamed chain
    block — control channel, streams, commit — quickened by the streamed rehearsal, CPython 3.11),
    and neither its algorithm's module nor its temporary folder nor a ZeroMQ context is left; the
    value classes of the dataformats of a job forked earlier are inherited (the zygote learnt
    them).  Real fork server, fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", FORKED, HERE, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"rehearsed": True, "algorithm_module_left": False, "folders_left": [],
                                       "learnt": "True", "not_quickened": [], "zmq_context": False}


ALONE = textwrap.dedent("""
    import json, linecache, os, sys
    from backbeat.data.cachereader import CacheReader
    from backbeat.runtime import rehearsal
    dead = os.path.join("/dev/shm" if os.access("/dev/shm", os.W_OK) else os.environ["TMPDIR"],
                        f"bb-rehearsal-999999999-left{os.getpid()}")  # (no such pid: pid_max is at most 4194304;
    # named after this process: another suite running this test at the same time makes its own)
    os.makedirs(dead)
    used = []
    folder = rehearsal._folder
    rehearsal._folder = lambda: used.append(folder()) or used[-1]
    stats = rehearsal.rehearse()
    block = rehearsal.spec(used[0])
    print(json.dumps({"steps": stats["steps"], "written": stats["written"], "committed": stats["committed"],
                      "left": os.path.exists(used[0]), "module": rehearsal.NAME.replace("/", "_") in sys.modules,
                      "lines": [f for f in linecache.cache if f.startswith(used[0])],
                      "out_key": block["outputs"]["out"]["key"], "dead_left": os.path.exists(dead)}))
    rehearsal._folder = lambda: (_ for _ in ()).throw(OSError(30, "Read-only file system"))
    import backbeat.runtime.preload  # a rehearsal that fails is ignored
    print("preloaded")
""")


def test_rehearsal_runs_one_identity_block_and_cleans_up(tmp_path):
    """:func:`rehearse` runs the whole block path (code snapshot checked, cache file read and
    written, committed with its digest) and removes what it made; a rehearsal that cannot run
    (no writable folder) does not stop the preload; the folders of rehearsals whose process died
    (killed while rehearsing) are removed."""
    done = subprocess.run([sys.executable, "-c", ALONE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    report = json.loads(first)
    assert report["steps"] == 10 and report["written"] == {"out": 10}
    assert list(report["committed"]) == [report["out_key"]] and len(report["committed"][report["out_key"]]) == 64
    assert (report["left"], report["module"], report["lines"], report["dead_left"]) == (False, False, [], False)
    assert second == "preloaded"


STREAMED = textwrap.dedent("""
    import json, linecache, os, sys, threading
    from backbeat.processes import zmqcontext
    from backbeat.runtime import loopback, rehearsal, streams
    used, made = [], []
    folder = rehearsal._folder
    rehearsal._folder = lambda: used.append(folder()) or used[-1]
    _streamed = rehearsal._streamed
    rehearsal._streamed = lambda f, i: made.append(sorted(os.listdir(f))) or _streamed(f, i)
    hub = loopback.Hub
    hubs = []
    loopback.Hub = lambda *a: hubs.append(hub(*a)) or hubs[-1]
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    os.setsid()  # (a session leader: a producer would lower its priority)
    rehearsal.rehearse_streamed(3)
    report = {"runs": len(made), "left": os.path.exists(used[0]), "threads": threading.active_count(),
              "context": zmqcontext._context is not None, "nice": os.getpriority(os.PRIO_PROCESS, 0) - nice,
              "module": rehearsal.NAME.replace("/", "_") in sys.modules, "hubs": len(hubs),
              "lines": [f for f in linecache.cache if f.startswith(used[0])]}
    sock = hub().socket(0)
    try:
        sock.recv()
    except loopback.LoopbackError:
        report["never_waits"] = True
    print(json.dumps(report))
""")


def test_the_streamed_rehearsal_runs_a_chain_block_without_a_socket_and_cleans_up(tmp_path):
    """:func:`rehearse_streamed` runs a streamed block (control channel, a producer's early end and
    commit, its own output streamed and acknowledged) ``times`` times over loopback sockets: no
    ZeroMQ context nor thread is left, nor its folder, module or code lines, and the priority of
    the process (a session leader here, as a template is) is unchanged; a loopback socket asked
    for a message no peer sent raises instead of waiting.  It fails (RuntimeError) if the block
    fails: ``done`` checks it ran."""
    done = subprocess.run([sys.executable, "-c", STREAMED], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"runs": 3, "left": False, "threads": 1, "context": False, "nice": 0,
                                       "module": False, "hubs": 3, "lines": [], "never_waits": True}
