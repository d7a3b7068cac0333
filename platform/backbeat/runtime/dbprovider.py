"""Database views: building their index, and the provider process serving their outputs.

A database's views are user code (``databases/<name>/<version>.py``, spec §2.5), so they
only ever run in child processes of the fork server:

* :func:`build_index` (a job on a :class:`~backbeat.runtime.spec.DatasetSpec`) loads the view,
  calls ``index(root_folder, parameters)`` and writes the entries to the index file
  atomically (:mod:`backbeat.data.dbindex`); the job's statistics carry the sha256 of the
  index content, which enters the cache keys.  It also sets the view up over the index's
  table (built in memory from the same columns as the stored one, while the files are
  written: :mod:`backbeat.runtime.probe`) and calls ``get`` for every data unit of every
  output, discarding the values, so that every data file the view reads is known before any
  key is computed: what the view opened
  (:class:`~backbeat.runtime.dependencies.OpenRecorder`) is written to ``spec.deps`` for the
  parent to turn into the dataset's data manifest.
* :func:`serve` (a job on a :class:`~backbeat.runtime.spec.ProviderSpec`) is the *database
  provider*: it binds a ROUTER socket on the address the executor chose (``ipc://`` in the
  run's private directory) and answers
  block processes.  For each (dataset, output) it sets the view up once over the stored
  index and groups consecutive entries with equal values into data units (BEAT's
  ``DatabaseOutputDataSource``); it calls the view's ``get`` one window of units at a
  time, when a block asks for that window (blocks ask for the next window before they
  consume the current one, so the provider and the block work at the same time).  What
  the view opens meanwhile is checked against the dataset's data manifest before the
  window goes out (:class:`~backbeat.runtime.dependencies.DataGuard`).

Protocol (multipart, the first frame a command):

* ``info <dataset> <output>`` → ``ok``, ``{"units": n}``, starts (int64 bytes), ends (int64 bytes)
* ``get <dataset> <output> <i> <j>`` → ``ok``, then the wire frames of units ``i..j-1``
* ``bye`` → ``ok`` and the provider exits
* any failure → ``error``, the failure as JSON (:meth:`backbeat.processes.outcome.Outcome.to_json`)
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections import namedtuple
from functools import partial
from typing import Any

import numpy as np
import zmq

from backbeat.core import durable
from backbeat.core.errors import DataError, UserCodeError, WireError
from backbeat.data import compiled, dbindex, indextable, wire
from backbeat.data.batch import Batch
from backbeat.data.snapshot import Uncopyable, ViewScalars, ViewValues, frozen
from backbeat.processes import control, zmqcontext
from backbeat.processes.outcome import Outcome, pointing_at, user_error
from backbeat.runtime.allocator import reuse_batch_memory
from backbeat.runtime.codeloader import load_module
from backbeat.runtime.compat import install_beat_aliases
from backbeat.runtime.dependencies import DataGuard, OpenRecorder
from backbeat.runtime.driver import collecting_less
from backbeat.runtime.probe import probe as probe_units
from backbeat.runtime.sources import BatchSource
from backbeat.runtime.spec import DatasetSpec, ProviderSpec


def load_view(spec: DatasetSpec) -> Any:
    """Instantiate the view class ``spec.view`` from the snapshot ``spec.code``."""
    install_beat_aliases()
    module = load_module(spec.database, spec.code)
    cls = getattr(module, spec.view, None)
    if cls is None:
        raise RuntimeError(f"database `{spec.database}' defines no view class `{spec.view}'")
    return cls()


def build_index(payload: dict) -> dict:
    """Job: run the view's ``index()`` and store it, then read every unit once (what the view
    opens is written to ``spec.deps``) while the files are written; returns ``{"digest": sha256
    of the index, "entries", "probe"}`` (``probe``: ``complete`` or why reading every unit
    stopped).  The collector runs less often meanwhile: ``index()`` makes an object or two per
    entry, all alive until the end, and each ``get`` a dict (examined again and again with
    CPython's default threshold: a third of ``index()``'s time for 100k entries, half for 1M).

    In a job process (:func:`backbeat.processes.control.job_main`, which reports ``done`` and
    leaves through ``os._exit``) what the job made (the view, its entries, the table) is kept,
    never freed: freeing 1M entries one object at a time cost 0.1-0.25 s between the probe's end
    and ``done``, which the keys wait for; the kernel frees the pages at once when it exits."""
    with collecting_less():
        return _build_index(DatasetSpec.from_json(payload["spec"]), _KEPT if control.client() is not None else None)


def _build_index(spec: DatasetSpec, keep: list | None = None) -> dict:
    recorder = OpenRecorder(spec.folders)
    view = load_view(spec)
    with recorder.watch("index"):
        entries = view.index(spec.root_folder, spec.parameters)
        if not isinstance(entries, (list, tuple)):
            entries = list(entries)
    types = compiled.types_of(entries)  # (one pass of C code for one namedtuple class)
    odd = {t for t in types if not (issubclass(t, dict) or hasattr(t, "_asdict"))}  # (by type)
    bad = next((o for o in entries if type(o) in odd and not hasattr(o, "_asdict")), None) if odd else None
    if bad is not None:  # BEAT stores each entry as a JSON object
        raise TypeError(f"view index entries must be namedtuples or dicts, not {type(bad).__name__}")
    n = len(entries)
    found = indextable.index_columns(entries, types)
    try:  # the table, in memory, to probe from while the files are written
        table = indextable.memory_table(spec.index_path, n, found[1]) if found is not None else None
    except DataError:  # (fields that are no attribute names: the provider will say so)
        table = None
    written: dict = {}
    committing: list = []  # (while the probe runs: the files made durable and renamed, in a thread)
    failed: list = []  # (what writing the files during the probe raised: the job fails, never probes half)

    def write(later: bool = False) -> None:  # BEAT's JSON file and its table, from the columns
        assert found is not None
        files = durable.Later() if later else None
        try:
            result = indextable.write_columns(spec.index_path, *found, n, later=files)
            if files is not None:  # (in a thread; here and now if none can be started, RLIMIT_AS)
                committing.append(files.commit_meanwhile())
        except BaseException as exc:
            if files is not None:  # (the temporaries written so far)
                files.discard()
                failed.append(exc)
            raise
        written.update(result)  # (only once the files are named, or being named by the thread joined below)

    if found is None:  # (entries of several shapes: simplejson writes them, the table is read back)
        written.update(indextable.write_index(spec.index_path, entries))
    elif table is None:  # (fields that are no attribute names: the files now, nothing to probe meanwhile)
        write()
    view_sees = entries if table is not None and found is not None and _as_read(entries, found[1], view) else None
    if keep is not None:
        keep += [view, view_sees, table, found]  # (a job process: never freed, see build_index)
    del entries  # (1M entries: ~150 MB the probe, reading the table, no longer needs — unless it probes over them)
    try:
        try:  # errors of get() are the blocks' to report, when they read the unit
            dataset = _Dataset(spec, recorder, indextable.Entries(table) if table is not None else None, view_sees)
            if keep is not None:  # (a job process: never freed, see build_index)
                keep.append(dataset)
            del view_sees
            probe = dataset.probe(partial(write, True) if not written else None)  # (the files written meanwhile)
        except Exception as exc:  # noqa: BLE001 - the files opened until then are recorded
            probe = f"stopped: {type(exc).__name__}: {exc}"
    finally:  # (the files durable and named, or removed, before the job reports or exits — even on a SystemExit)
        for done in committing:
            done()
    if failed:  # (the files could not be written: the probe did not run, or not to its end)
        raise failed[0]
    if not written:  # (the view could not be set up: it fails here)
        write()
    if spec.deps is not None:
        with open(spec.deps, "w", encoding="utf-8") as f:
            json.dump({"seen": recorder.seen, "probe": probe}, f)
    return {**written, "probe": probe}


def _as_read(entries: list | tuple, cols: dict[str, indextable.Column], view: Any) -> bool:
    """Whether the view's own ``entries`` are what it gets from the index's table, but for their
    class: a list of one plain namedtuple class (no methods of its own) whose fields are in the
    table's order, every value of a type the table gives back unchanged — and a view that keeps
    them as given (BEAT's ``setup``, not its own).  The probe then reads them instead of entries
    made again from the table (half its time, 1M entries): the same values, a view's ``get``
    sees a difference only by asking for its entries' class (what it then opens differently the
    provider finds beyond the manifest, and the next run's keys hold it: the journal)."""
    from backbeat.runtime.compat import View  # (loaded with the view: install_beat_aliases)

    kind = type(entries[0]) if entries and type(entries) is list else None
    return (kind is not None and kind.__bases__ == (tuple,) and getattr(type(view), "setup", None) is View.setup
            and getattr(kind, "_fields", None) == tuple(sorted(cols)) and not set(vars(kind)) - _NAMEDTUPLE - set(kind._fields)
            and all(c.native for c in cols.values()))


_NAMEDTUPLE = set(vars(namedtuple("Entry", ["a"]))) - {"a"}  # what namedtuple() gives a class (its fields aside)
_KEPT: list = []  # (in an indexing job's process and its probing copy: what they made, never freed)


class _Blame(Exception):
    """What a view gave back is wrong, with no exception in its code: the failure names the
    line of user code to blame (``filename``, ``lineno``, ``function``) and the ``problem``."""

    def __init__(self, problem: str, filename: str, lineno: int, function: str):
        super().__init__(problem)
        self.problem, self.filename, self.lineno, self.function = problem, filename, lineno, function


def _returning_line(fn: Any, *args: Any) -> tuple[str, int, str] | None:
    """``(file, line, function)`` of the line where ``fn(*args)`` returns (``fn`` called again,
    watched by a profile hook; its first line if it raises), or None if it is not Python code."""
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    if code is None:
        return None
    lines: list[int] = []

    def watch(frame: Any, event: str, _arg: Any) -> None:
        if event == "return" and frame.f_code is code:
            lines.append(frame.f_lineno)

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        fn(*args)
    except Exception:  # noqa: BLE001, S110 - only the line it returns from is wanted here
        pass
    finally:
        sys.setprofile(previous)
    return code.co_filename, lines[-1] if lines else code.co_firstlineno, code.co_name


def _described(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


class _Dataset:
    """One set-up view: the data units of its outputs, and their values window by window."""

    RECENT_BYTES = 16 << 20  # windows kept (at least the last one), for blocks or slots reading the same output

    def __init__(self, spec: DatasetSpec, recorder: OpenRecorder | None = None,
                 entries: indextable.Entries | None = None, view_sees: list | None = None):
        """``entries``: an indexing job's own (not written yet); ``view_sees``: the same entries, as
        the view's ``index()`` made them (:func:`_as_read`), given to its ``setup`` instead."""
        self.spec = spec
        self.guard: DataGuard | None = None
        if recorder is None:  # serving: check what the view opens against the data manifest
            self.guard = DataGuard(spec.folders, spec.manifest, spec.deps, spec.memo)
            recorder = self.guard.recorder
        self.recorder = recorder
        self.view = load_view(spec)
        # BEAT's Entry, a window at a time, from the table of the index the keys were computed from
        # (IntegrityError if that index is gone); an indexing job's own, before it is written
        objs = entries if entries is not None else indextable.load_entries(spec.index_path, spec.index_digest)
        with recorder.watch("get"):
            self.view.setup(spec.root_folder, spec.parameters, objs if view_sees is None else view_sees,
                            start_index=None, end_index=None)
        self.objs = getattr(self.view, "objs", None) or objs
        self._own = view_sees is not None
        if self._own:  # (BEAT's setup: all of them kept; units grouped from the table's columns)
            self.objs = objs
        self.units: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.recent: dict[tuple[str, int, int], Batch] = {}

    def output_units(self, output: str) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, ends)`` of the output's data units (consecutive equal entries grouped)."""
        if output not in self.units:
            mapping = getattr(self.view, "get_output_mapping", None)
            attr = mapping(output) if mapping else output
            if isinstance(self.objs, indextable.Entries):  # from the column, no entry made
                if attr not in self.objs.table.kinds:
                    raise self._no_field(output, attr)
                self.units[output] = self.objs.units(attr)
            else:
                try:
                    values = [getattr(o, attr) for o in self.objs]
                except AttributeError:
                    raise self._no_field(output, attr) from None
                self.units[output] = dbindex.group_units(values)
        return self.units[output]

    def _no_field(self, output: str, attr: str) -> _Blame:
        """Index entries without the field behind ``output``: blamed on the view's ``index``."""
        k, entry = next((k, o) for k, o in enumerate(self.objs) if not hasattr(o, attr))
        fields = ", ".join(getattr(entry, "_fields", ())) or "none"
        mapped = f" (its output_member_map maps `{output}' to `{attr}')" if attr != output else ""
        code = getattr(getattr(type(self.view), "index", None), "__code__", None)
        filename, line = (code.co_filename, code.co_firstlineno) if code is not None else (self.spec.code.filename, 1)
        return _Blame(f"index entry {k} has no field `{attr}'{mapped} (its fields: {fields}); index() must "
                      "give every entry a field for each output of the set", filename, line, "index")

    def window(self, output: str, i: int, j: int) -> Batch:
        """Units ``i .. j-1`` of ``output``: the view's ``get`` for each, as one batch."""
        key = (output, i, j)
        batch = self.recent.get(key)
        if batch is None:
            starts, ends = self.output_units(output)
            name, expanded = self.spec.outputs[output]
            get = self.view.get
            entries = starts[i:j].tolist()
            with self.recorder.watch("get"):  # each value as get returned it (it may refill one object)
                try:
                    if ViewValues.copies_arrays(name, expanded):  # (arrays: copied once, into the batch's columns)
                        values = ViewValues(name, expanded, j - i)
                        add = values.add
                        for s in entries:
                            add(get(output, s))
                        units, make = values.units, values.batch
                    elif ViewScalars.fits(name, expanded):  # (scalars: each unit's values taken, no copy)
                        scalars = ViewScalars(name, expanded)
                        scalars.take(get, output, entries)
                        units, make = scalars.units, scalars.batch
                    else:
                        taken = [frozen(get(output, s)) for s in entries]
                        units, make = taken.copy, partial(Batch.from_values, name, expanded, taken)
                except Uncopyable as exc:  # (a generator, a lock...): blamed on get, as a value not fitting
                    # (asked again, get may return only values that can be copied: what could not be is
                    # then said of the window's entries — never exc.cause raised, backbeat's frames in it)
                    raise self._uncopyable(output, entries) or self._uncopied(output, entries, exc) from None
            if self.guard is not None:
                self.guard.check()
            try:
                batch = make(starts[i:j], ends[i:j])
            except Exception as exc:  # noqa: BLE001 - a value the view returned: blamed on its get()
                raise self._bad_value(output, entries, units()) or exc from None
            self.recent[key] = batch
            while len(self.recent) > 1 and sum(b.nbytes for b in self.recent.values()) > self.RECENT_BYTES:
                del self.recent[next(iter(self.recent))]
        return batch

    def probe(self, meanwhile: Any = None) -> str:
        """Call ``get`` for every data unit of every output, values discarded (indexing):
        ``complete`` or why it stopped (:mod:`backbeat.runtime.probe`, on two cores, ``meanwhile``
        done while it runs)."""
        calls = [(output, self.output_units(output)[0]) for output in self.spec.outputs]  # (ints made a range at a time)
        kinds = self.objs.table.kinds if self._own else {}  # (a copy reads the job's list if its entries are small:
        small = len(kinds) <= 2 and set(kinds.values()) <= set(indextable.NUMERIC)  # ~40 MB at 1M, the table 2x CPU)
        return probe_units(self.view.get, calls, self.recorder, cores=self.spec.cores, meanwhile=meanwhile,
                           in_copy=self._table_in_copy if self._own and not small else None)

    def _table_in_copy(self) -> None:
        """In a probing copy (entries not small numeric tuples, :meth:`probe`): the view reads the table's
        entries, not the job's list (reading it writes every entry's reference count, so copies its pages:
        1M with a path, 3 fields, ~230 MB).  The list is kept, never freed (freeing writes them too)."""
        _KEPT.append(self.view.objs)
        self.view.objs = self.objs[0:len(self.objs)]

    def _bad_value(self, output: str, entries: list[int], values: list) -> _Blame | None:
        """The first value ``get`` returned that does not fit the output's dataformat, blamed on
        the line of ``get`` returning it (``get`` is called again for that entry, watched)."""
        name, expanded = self.spec.outputs[output]
        for entry, value in zip(entries, values, strict=True):
            try:
                Batch.from_values(name, expanded, [value], [entry], [entry])
                continue
            except Exception as exc:  # noqa: BLE001
                return self._blame(output, entry, value, f"does not fit `{name}': {exc}")
        return None

    def _uncopyable(self, output: str, entries: list[int]) -> _Blame | None:
        """The first value ``get`` returns that :func:`frozen` cannot copy (``get`` called again for
        each entry, a failure path), blamed as :meth:`_bad_value` does."""
        for entry in entries:
            value = self.view.get(output, entry)
            try:
                frozen(value)
                continue
            except Uncopyable as exc:
                return self._blame(output, entry, value, f"cannot be copied ({exc})")
        return None

    def _uncopied(self, output: str, entries: list[int], exc: Uncopyable) -> _Blame:
        """A value of ``entries`` could not be copied but, asked again, none is found: said of them all
        (not of one entry that may have returned a good value), blamed on ``get``."""
        span = f"{entries[0]}" if len(entries) == 1 else f"{entries[0]}..{entries[-1]}"
        where = _returning_line(self.view.get, output, entries[0]) or (self.spec.code.filename, 1, "get")
        return _Blame(f"get(`{output}', …) returned, for one of entries {span}, a value that cannot be copied "
                      f"({exc}); asked again, it returned values that can be", *where)

    def _blame(self, output: str, entry: int, value: Any, problem: str) -> _Blame:
        """``get(output, entry)`` returned ``value``, which ``problem``: blamed on the line returning it."""
        name, expanded = self.spec.outputs[output]
        attributes = ", ".join(a for a in expanded if not a.startswith("#"))
        if value is None or not (isinstance(value, dict) or hasattr(value, "as_dict")):
            what = f"{_described(value)}, not a dict with the attributes of `{name}' ({attributes})"
        else:
            what = f"{_described(value)} that {problem}"
        where = _returning_line(self.view.get, output, entry) or (self.spec.code.filename, 1, "get")
        return _Blame(f"get(`{output}', {entry}) returned {what}", *where)


def _error(exc: BaseException, root: str | None, context: str) -> list[bytes]:
    """The ``error`` reply; a failure of user code says which view, set and output (``context``)."""
    if isinstance(exc, _Blame):
        failure = pointing_at(exc.problem, exc.filename, exc.lineno, exc.function, root)
        failure = dataclasses.replace(failure, message=f"{context}: {exc.problem}")
    else:
        failure = user_error(exc, root)
        if failure.kind == "user" and context:
            failure = dataclasses.replace(failure, message=f"{context}: {failure.message}")
    return [b"error", json.dumps(failure.to_json()).encode()]


def serve(payload: dict) -> dict:
    """Job: the database provider (see module docstring); returns serving statistics."""
    reuse_batch_memory()  # (a window's batch and message, allocated and freed again and again)
    with collecting_less():  # (the values of a window are alive while it is made)
        return _serve(payload)


def _serve(payload: dict) -> dict:
    spec = ProviderSpec.from_json(payload["spec"])
    sock = zmqcontext.acquire().socket(zmq.ROUTER)
    sock.linger = 0
    sock.bind(spec.address)
    datasets: dict[str, _Dataset] = {}
    specs = spec.datasets
    root = payload.get("root")
    parent = os.getppid()
    served = 0
    try:
        while True:
            if not sock.poll(1000):
                if os.getppid() != parent:
                    break
                continue
            frames = sock.recv_multipart(copy=True)
            ident, cmd, args = frames[0], frames[2] if len(frames) > 2 else b"", frames[3:]
            reply: list = []
            context = ""
            try:
                if cmd == b"bye":
                    sock.send_multipart([ident, b"", b"ok"])
                    break
                ds_name, output = args[0].decode(), args[1].decode()
                if ds_name not in specs or output not in specs[ds_name].outputs:
                    raise WireError(f"unknown dataset output `{ds_name}.{output}'")
                context = f"{specs[ds_name].label}, output `{output}'"
                if ds_name not in datasets:
                    datasets[ds_name] = _Dataset(specs[ds_name])
                ds = datasets[ds_name]
                if cmd == b"info":
                    starts, ends = ds.output_units(output)
                    reply = [b"ok", json.dumps({"units": len(starts)}).encode(), starts.tobytes(), ends.tobytes()]
                elif cmd == b"get":
                    i, j = int(args[2]), int(args[3])
                    n = len(ds.output_units(output)[0])
                    if not 0 <= i <= j <= n:
                        raise WireError(f"units {i}..{j} requested from `{ds_name}.{output}', which has {n}")
                    reply = [b"ok", *wire.encode(ds.window(output, i, j))]
                    served += j - i
                else:
                    raise WireError(f"unknown database provider command {cmd!r}")
            except Exception as exc:  # noqa: BLE001 - reported to the block, which fails cleanly
                reply = _error(exc, root, context)
            sock.send_multipart([ident, b"", *reply], copy=False)
    finally:
        sock.close(0)
        zmqcontext.release()
    return {"units_served": served}


class DatabaseClient:
    """Block-side client of the database provider.

    One REQ socket; :meth:`request` sends a ``get`` ahead of need (the provider computes
    that window while the block consumes the previous one); its reply is taken when the
    window is fetched, or set aside if another request must go first.
    """

    def __init__(self, address: str, timeout_ms: int = 600_000):
        self._sock = zmqcontext.acquire().socket(zmq.REQ)
        self._sock.linger = 0
        self._sock.rcvtimeo = timeout_ms
        self._sock.connect(address)
        self._pending: tuple | None = None  # the request sent whose reply is not read yet
        self._early: dict[tuple, list] = {}  # replies read before they were needed

    def _recv(self) -> list:
        try:
            reply = self._sock.recv_multipart(copy=False)
        except zmq.Again:
            raise WireError("the database provider did not answer in time") from None
        self._pending = None
        return reply

    def _send(self, frames: tuple) -> None:
        if self._pending is not None:  # a prefetch is in flight: set its reply aside
            key = self._pending
            self._early[key] = self._recv()
            while len(self._early) > 4:  # bounded: a reply dropped here is simply asked again
                del self._early[next(iter(self._early))]
        self._sock.send_multipart(list(frames))
        self._pending = frames

    def request(self, *frames: bytes) -> None:
        """Send a request whose reply :meth:`_ask` will take later (nothing if one is in flight)."""
        if self._pending is None and frames not in self._early:
            self._send(frames)

    def _ask(self, *frames: bytes) -> list:
        if frames in self._early:
            reply = self._early.pop(frames)
        else:
            if self._pending != frames:
                self._send(frames)
            reply = self._recv()
        head = reply[0].bytes
        if head == b"error":
            try:
                failure = Outcome.from_json(json.loads(reply[1].bytes))
            except (IndexError, ValueError):
                failure = Outcome("system", "malformed error reply")
            if failure.kind == "user":  # (its message names the view, the set and the output)
                raise UserCodeError(failure.message, failure.traceback or "")
            raise WireError(f"the database provider failed: {failure.message}")
        if head != b"ok":
            raise WireError(f"unexpected reply from the database provider: {head[:40]!r}")
        return reply[1:]

    def source(self, dataset: str, output: str, fmt: str, expanded: dict, window: int = 4096) -> BatchSource:
        head, starts, ends = self._ask(b"info", dataset.encode(), output.encode())
        n = json.loads(head.bytes)["units"]
        s = np.frombuffer(starts.bytes, dtype=np.int64)
        e = np.frombuffer(ends.bytes, dtype=np.int64)
        if len(s) != n or len(e) != n:
            raise WireError(f"database provider sent {len(s)} unit starts for {n} units")

        def frames(i: int, j: int) -> tuple:
            return (b"get", dataset.encode(), output.encode(), str(i).encode(), str(j).encode())

        def fetch(i: int, j: int) -> Batch:
            return wire.decode(self._ask(*frames(i, j)), fmt, expanded, private=True)  # (the provider's)

        def prefetch(i: int, j: int) -> None:
            self.request(*frames(i, j))

        return BatchSource(s, e, fetch, window, prefetch)

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close(0)
            zmqcontext.release()
