"""What runs and what is read, on real files: code snapshots (the loader refuses bytes that were not
hashed, names the user's file), the recorder of the files a view opens, the provider's data guard."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import traceback
from pathlib import Path

import pytest

from backbeat.cache.blobs import Blobs
from backbeat.core.errors import IntegrityError
from backbeat.runtime.codeloader import load_code
from backbeat.runtime.dependencies import DataGuard, OpenRecorder
from backbeat.runtime.spec import CodeFile, CodeSpec


def test_code_runs_from_its_snapshot_named_as_the_user_knows_it(tmp_path):
    user_file = tmp_path / "prefix" / "algorithms" / "u" / "x" / "1.py"
    user_file.parent.mkdir(parents=True)
    hashed = b"def f():\n    return helper.k\n\n\ndef g():\n    raise ValueError('line 6')\n"
    user_file.write_bytes(b"# edited after it was hashed\n" + hashed)  # the prefix moved on
    blobs = Blobs(tmp_path / "cache" / "code")
    lib = CodeFile(str(blobs.path(blobs.put(b"k = 42\n"))), hashlib.sha256(b"k = 42\n").hexdigest(), "/p/lib.py")
    main = CodeFile(str(blobs.path(blobs.put(hashed))), hashlib.sha256(hashed).hexdigest(), str(user_file),
                    {"helper": "u/lib/1"})
    module = load_code("u/x/1", CodeSpec(main, {"u/lib/1": lib}))
    assert module.f() == 42 and module.__file__ == str(user_file)
    with pytest.raises(ValueError) as info:
        module.g()
    frame = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (frame.filename, frame.lineno, frame.line) == (str(user_file), 6, "raise ValueError('line 6')")
    Path(main.path).write_bytes(hashed + b"k = 0\n")  # a snapshot tampered with
    with pytest.raises(IntegrityError, match="does not hold the bytes that were hashed"):
        load_code("u/x/1", CodeSpec(main, {"u/lib/1": lib}))
    with pytest.raises(IntegrityError, match="does not hold the bytes it is named after"):
        blobs.get(main.sha256)


def test_recorder_sees_what_a_view_opens_under_its_folders(tmp_path):
    root, code = tmp_path / "root", tmp_path / "prefix" / "databases" / "db"
    (root / "images").mkdir(parents=True)
    code.mkdir(parents=True)
    for p in (root / "a.csv", root / "images" / "1.png", code / "1.py", code / "shipped.txt", tmp_path / "else"):
        p.write_text("x")
    rec = OpenRecorder({"root": str(root), "code": str(code)})
    open(tmp_path / "else").close()  # not watching: nothing recorded
    with rec.watch("index"):
        open(root / "a.csv").close()
        sorted(os.listdir(root / "images"))
        open(code / "1.py").close()  # the view's own code: an asset, not data
        open(code / "shipped.txt", "rb").close()
        open(tmp_path / "else").close()  # outside the folders
        open(root / "out.txt", "w").close()  # written, not read
        try:
            open(root / "missing.csv")
        except FileNotFoundError:
            pass
    with rec.watch("get"):
        os.close(os.open(root / "images" / "1.png", os.O_RDONLY))
        list(os.scandir(root))
    assert {k: (v["kind"], v["phase"], v["stat"] is not None) for k, v in rec.seen.items()} == {
        "root/a.csv": ("file", "index", True), "root/images": ("folder", "index", True),
        "code/shipped.txt": ("file", "index", True), "root/missing.csv": ("file", "index", False),
        "root/images/1.png": ("file", "get", True), "root": ("folder", "get", True)}
    assert rec.absolute("root/images/1.png") == str(root / "images" / "1.png")


def test_provider_guard_refuses_changed_data_and_learns_new_files(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_text("1")
    (root / "b.txt").write_text("2")
    manifest = {"format": "backbeat-data-manifest-1", "folders": {},
                "files": {"root/a.txt": {"sha256": hashlib.sha256(b"1").hexdigest(), "size": 1, "read_by": "get"}}}
    blobs = Blobs(tmp_path / "manifests", ".json")
    digest = blobs.put(json.dumps(manifest).encode())
    journal = tmp_path / "index.db.journal"
    guard = DataGuard({"root": str(root)}, str(blobs.path(digest)), str(journal), str(tmp_path / "memo.sqlite3"))
    with guard.watch():
        open(root / "a.txt").close()
        open(root / "b.txt").close()
    guard.check()  # a.txt is what the keys say; b.txt is new: learnt for the next run
    assert [json.loads(line)["label"] for line in journal.read_text().splitlines()] == ["root/b.txt"]
    (root / "a.txt").write_text("9")  # edited after the keys were computed
    guard = DataGuard({"root": str(root)}, str(blobs.path(digest)), str(journal), None)
    with guard.watch():
        open(root / "a.txt").close()
    with pytest.raises(IntegrityError, match="changed after this run computed its cache keys"):
        guard.check()


def test_indexing_records_what_index_and_get_read_and_the_provider_checks_the_index(tmp_path):
    """build_index runs index() then get() over every unit: both phases' files are recorded."""
    from backbeat.data import dbindex
    from backbeat.runtime import dbprovider
    from backbeat.runtime.spec import DatasetSpec

    root = tmp_path / "root"
    (root / "items").mkdir(parents=True)
    for i in range(3):
        (root / "items" / f"{i}.txt").write_text(str(i))
    view = (b"import collections, os\nimport numpy\nfrom beat.backend.python.database import View\n"
            b"Entry = collections.namedtuple('Entry', ['value'])\n"
            b"class V(View):\n"
            b"    def index(self, root_folder, parameters):\n"
            b"        return [Entry(n) for n in sorted(os.listdir(os.path.join(root_folder, 'items')))]\n"
            b"    def get(self, output, index):\n"
            b"        with open(os.path.join(self.root_folder, 'items', self.objs[index].value)) as f:\n"
            b"            return {'value': numpy.int32(int(f.read()))}\n")
    blobs = Blobs(tmp_path / "code")
    code = CodeFile(str(blobs.path(blobs.put(view))), hashlib.sha256(view).hexdigest(), str(tmp_path / "1.py"))
    deps = tmp_path / "deps.json"
    spec = DatasetSpec("t/1", code, "V", str(root), {}, str(tmp_path / "i.db"),
                       {"value": ("t/int/1", {"value": "int32"})}, folders={"root": str(root)}, deps=str(deps))
    stats = dbprovider.build_index({"spec": spec.to_json()})
    assert stats["entries"] == 3 and stats["probe"] == "complete"
    seen = json.loads(deps.read_text())["seen"]
    assert {k: v["phase"] for k, v in seen.items()} == {
        "root/items": "index", "root/items/0.txt": "get", "root/items/1.txt": "get", "root/items/2.txt": "get"}
    digest = dbindex.index_digest(spec.index_path)
    served = dbprovider._Dataset(dataclasses.replace(spec, deps=None, index_digest=digest))
    assert [int(v.value) for v in served.window("value", 0, 3).to_values()] == [0, 1, 2]
    with pytest.raises(IntegrityError, match="changed after this run computed its cache keys"):
        dbprovider._Dataset(dataclasses.replace(spec, deps=None, index_digest="0" * 64))
