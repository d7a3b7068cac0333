"""The zygote compiles the code of the blocks it forks, once (runtime.codeloader.learn)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))

FORKED = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from backbeat.execution.state import PRELOAD
    from backbeat.processes.workerpool import ForkServer

    folder, specs = sys.argv[2], json.loads(sys.argv[3])
    with ForkServer(preload=PRELOAD, mode="fork") as server:
        outs = []
        for k, (spec, then) in enumerate(specs):
            out = os.path.join(folder, f"out{k}")
            h = server.spawn("_workerpool_targets:load_user_code", {"spec": {"code": spec}, "out": out})
            h.wait(60)
            assert h.exit.ok, h.exit
            outs.append(json.load(open(out)))
            for path, text in then.items():  # (once this block is forked: the zygote has learnt from it)
                with open(path, "w") as f:
                    f.write(text)
    print(json.dumps(outs))
""")

SOURCE = "COUNT = 0\n\ndef value():\n    global COUNT\n    COUNT += 1\n    return ('{}', COUNT)\n"


def _code(path: str, sha: str, filename: str) -> dict:
    return {"main": {"path": path, "sha256": sha, "filename": filename, "uses": {}}, "libraries": {}}


def test_children_run_the_code_the_zygote_compiled_from_the_hashed_bytes(tmp_path):
    """A block forked after another of the same code runs the code object the zygote compiled from
    the snapshot's bytes of the planned sha256 — in a fresh module (its globals start anew), even if
    the snapshot was changed meanwhile (exactly the hashed bytes run); a snapshot whose bytes are
    not the planned ones is never learnt and still refused.  Real fork server, fresh interpreter."""
    good, bad = SOURCE.format("hashed"), SOURCE.format("changed")
    snap = tmp_path / "snapshot.py"
    snap.write_text(good)
    sha = hashlib.sha256(good.encode()).hexdigest()
    other = tmp_path / "other.py"
    other.write_text(bad)  # its planned bytes are `good`'s: refused, and never learnt
    specs = [
        (_code(str(snap), sha, "/prefix/algorithms/a/1.py"), {str(snap): bad}),
        (_code(str(snap), sha, "/prefix/algorithms/a/1.py"), {}),
        (_code(str(snap), sha, "/prefix/algorithms/a/1.py"), {}),
        (_code(str(other), sha, "/prefix/algorithms/b/1.py"), {}),
        (_code(str(other), sha, "/prefix/algorithms/b/1.py"), {}),
    ]
    done = subprocess.run([sys.executable, "-c", FORKED, HERE, str(tmp_path), json.dumps(specs)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    first, second, third, fourth, fifth = json.loads(done.stdout)
    assert first == second == third == {"value": ["hashed", 1], "file": "/prefix/algorithms/a/1.py"}
    assert "does not hold the bytes that were hashed" in fourth["refused"] and fifth == fourth


def test_user_code_is_compiled_with_its_own_future_imports_only(tmp_path):
    """backbeat's modules use ``from __future__ import annotations``; an algorithm must not inherit
    it (BEAT runs it as plain Python: annotations are evaluated, not kept as strings)."""
    from backbeat.runtime.codeloader import load_module
    from backbeat.runtime.spec import CodeSpec

    source = "def f(x: int) -> int:\n    return x\n\nANNOTATIONS = f.__annotations__\n"
    snap = tmp_path / "algo.py"
    snap.write_text(source)
    code = CodeSpec.from_json(_code(str(snap), hashlib.sha256(source.encode()).hexdigest(), "/p/algorithms/a/1.py"))
    module = load_module("test/future/1", code.main)
    assert module.ANNOTATIONS == {"x": int, "return": int}
