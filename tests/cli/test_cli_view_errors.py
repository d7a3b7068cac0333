"""Mistakes in a database view are blamed on the view, through the CLI and real processes.

The view runs in the database-provider process; what it gets wrong must be reported with the
view's file and line (the line that returned the wrong value, or ``index`` for its entries),
the view, the database, the set and the output — not as an error of the algorithm reading
the data, and never with backbeat's own frames.  (BEAT lets such values through: the
algorithm then fails on them, e.g. ``AttributeError: 'str' object has no attribute 'value'``
in its ``process``; index entries without the field crash BEAT's own code.)
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import cli_batch

VIEW = '''import collections

import numpy
from beat.backend.python.database import View

Entry = collections.namedtuple("Entry", ["value"])
Other = collections.namedtuple("Other", ["number"])


class Stuck:
    def __deepcopy__(self, memo):
        raise RuntimeError("cannot be copied")


class Faulty(View):
    def index(self, root_folder, parameters):
        if parameters["mode"] == "entry":
            return [Other(i + 1) for i in range(4)]
        return [Entry(i + 1) for i in range(4)]

    def get(self, output, index):
        mode = self.parameters["mode"]
        value = self.objs[index].value
        if mode == "type" and index == 2:
            return "not a dict"
        if mode == "none":
            return None
        if mode == "cast":
            return {"value": "three"}
        if mode == "raise" and index == 1:
            raise KeyError("no such item")
        if mode == "stuck" and index == 1:
            return {"value": Stuck()}
        if mode == "generator" and index == 3:
            return (v for v in [value])
        if mode == "once" and index == 2 and not getattr(self, "asked", False):
            self.asked = True  # (asked again, it returns a value that can be copied)
            return {"value": Stuck()}
        return {"value": numpy.int32(value)}


class Mapped(Faulty):
    def __init__(self):
        super().__init__()
        self.output_member_map = {"value": "number"}
'''

AUTONOMOUS = '''import numpy


class Algorithm:
    def process(self, data_loaders, outputs):
        loader = data_loaders.loaderOf("value")
        for i in range(loader.count()):
            data, start, end = loader[i]
            outputs["out"].write({"value": numpy.int32(data["value"].value)}, end)
        return True
'''

MODES = {"type": "Faulty", "none": "Faulty", "entry": "Faulty", "mapped": "Mapped", "cast": "Faulty",
         "raise": "Faulty", "stuck": "Faulty", "generator": "Faulty", "once": "Faulty"}


def line_of(text: str) -> int:
    return next(n for n, line in enumerate(VIEW.splitlines(), 1) if text in line)


#: mode -> (what the message says after the view, set and output; the line blamed; its function)
EXPECTED = {
    "type": ("get(`value', 2) returned a str, not a dict with the attributes of `run/int32/1' (value)",
             line_of('return "not a dict"'), "get"),
    "none": ("get(`value', 0) returned None, not a dict with the attributes of `run/int32/1' (value)",
             line_of("return None"), "get"),
    "cast": ("get(`value', 0) returned a dict that does not fit `run/int32/1': cannot safely cast attribute "
             "`value'", line_of('return {"value": "three"}'), "get"),
    "entry": ("index entry 0 has no field `value' (its fields: number); index() must give every entry a field "
              "for each output of the set", line_of("def index"), "index"),
    "mapped": ("index entry 0 has no field `number' (its output_member_map maps `value' to `number') (its "
               "fields: value)", line_of("def index"), "index"),
    "raise": ("KeyError: 'no such item'", line_of('raise KeyError("no such item")'), "get"),
    # values that cannot be copied (frozen as get returns them): blamed on get, not on backbeat's copy
    "stuck": ("get(`value', 1) returned a dict that cannot be copied (copying a Stuck: RuntimeError: cannot "
              "be copied)", line_of('return {"value": Stuck()}'), "get"),
    "generator": ("get(`value', 3) returned a generator, not a dict with the attributes of `run/int32/1' (value)",
                  line_of("return (v for v in [value])"), "get"),
    # a value that cannot be copied, only the first time: asked again, get returns one that can be
    # (said of the window's entries, blamed on get, not raised with backbeat's frames)
    "once": ("get(`value', …) returned, for one of entries 0..3, a value that cannot be copied (copying a Stuck: "
             "RuntimeError: cannot be copied); asked again, it returned values that can be",
             line_of('return {"value": numpy.int32(value)}'), "get"),

}


def faulty_prefix(prefix: Path) -> None:
    """Database ``faulty/1`` (one protocol per mistake) and experiments reading it."""
    db = prefix / "databases/faulty"
    db.mkdir()
    (db / "1.py").write_text(VIEW)
    (db / "1.json").write_text(json.dumps({"schema_version": 2, "root_folder": "/nonexistent", "protocols": [
        {"name": m, "template": "run_sets/1", "views": {"items": {"view": v, "parameters": {"mode": m}}}}
        for m, v in MODES.items()]}))
    algo = json.loads((prefix / "algorithms/run/echo/1.json").read_text())
    algo.update(type="autonomous", parameters={})
    del algo["uses"]
    (prefix / "algorithms/run/copy").mkdir()
    (prefix / "algorithms/run/copy/1.json").write_text(json.dumps(algo))
    (prefix / "algorithms/run/copy/1.py").write_text(AUTONOMOUS)
    base = json.loads((prefix / "experiments/run/run/short/1/base.json").read_text())
    for mode in MODES:
        decl = dict(base, datasets={"items": {"database": "faulty/1", "protocol": mode, "set": "items"}})
        if mode == "type":  # read through an autonomous algorithm's data loader: still the view's fault
            decl["blocks"] = {"prep": {"algorithm": "run/copy/1", "inputs": {"value": "value"},
                                       "outputs": {"out": "out"}}}
        (prefix / f"experiments/run/run/short/1/{mode}.json").write_text(json.dumps(decl))


def test_view_mistakes_are_blamed_on_the_view(copy_prefix, tmp_path: Path):
    prefix = copy_prefix()
    faulty_prefix(prefix)
    opts = ["-p", str(prefix), "-c", str(tmp_path / "cache")]
    results = cli_batch([opts + ["experiments", "run", f"run/run/short/1/{mode}", "-q"] for mode in MODES]
                        + [opts + ["databases", "view", "faulty/1/cast/items"]], timeout=120)
    code, out, err = results.pop()  # the view read by `databases view': the same error, the same frame
    assert code == 1 and out == "" and err.startswith("backbeat: error: database view `Faulty' of faulty/1, set "
                                                      f"`cast/items', output `value': {EXPECTED['cast'][0]}")
    assert f'File "databases/faulty/1.py", line {EXPECTED["cast"][1]}, in get' in err
    for mode, (code, _out, err) in zip(MODES, results, strict=True):
        problem, line, function = EXPECTED[mode]
        view = MODES[mode]
        assert code == 1, (mode, err)
        first = err.splitlines()[0]
        assert first.startswith(f"block `prep' failed (user): database view `{view}' of faulty/1, set "
                                f"`{mode}/items', output `value': {problem}"), (mode, err)
        assert f'File "databases/faulty/1.py", line {line}, in {function}\n' in err, (mode, err)
        assert VIEW.splitlines()[line - 1].strip() in err  # the source line blamed is shown
        assert err.count('File "') == 1, (mode, err)  # the view's frame only: no backbeat, no algorithm
        assert "Error: the database provider" not in err and "WireError" not in err
