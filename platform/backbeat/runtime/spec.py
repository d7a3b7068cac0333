"""The contract between the executor and the processes it starts: typed job descriptions.

What a block process, an indexing job or a database provider needs crosses the process
boundary as JSON (never pickle) and is read back into these frozen dataclasses, so both
sides agree on one definition.  The parent builds them (:mod:`backbeat.execution.specs`);
:mod:`~backbeat.runtime.blockrun`, :mod:`~backbeat.runtime.dbprovider`,
:mod:`~backbeat.runtime.loopchannel`, :mod:`backbeat.execution.splitting` and
:mod:`backbeat.execution.remote` read them.  ``from_json(to_json(x)) == x`` for every type.

* :class:`BlockSpec` — one block process: the algorithm (name, type, cleaned parameter
  values, code: :class:`CodeSpec` of :class:`CodeFile` snapshots), its synchronisation
  channel, its inputs
  (:class:`InputSpec`: an upstream cache file, a dataset output served by the database
  provider, or a stream from a producer running at the same time), its outputs
  (:class:`OutputSpec`: the cache file to write, its key, the consumers it streams to), the
  expanded dataformats of all of them, the provider's address, the read window, and for a
  slot of a split block its ``range``, for one side of a loop its :class:`LoopSpec`.
* :class:`DatasetSpec` — one database view set: view code snapshot and class, parameters,
  root folder, index file, outputs with their dataformats, and what its data dependencies
  are checked against.
* :class:`ProviderSpec` — the database provider: its address and the datasets it serves.

Paths are absolute; cache files and code snapshots are named by the parent's cache store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backbeat.core.errors import WireError

INPUT_SOURCES = ("cache", "dataset", "stream")
LOOP_ROLES = ("processor", "evaluator")


def _get(obj: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(obj, dict) or not isinstance(obj.get(key), kind):
        raise WireError(f"malformed {what}: `{key}' missing or of the wrong type")
    return obj[key]


def _opt(obj: dict, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if obj.get(key) is None:
        return None
    return _get(obj, key, kind, what)


@dataclass(frozen=True)
class CodeFile:
    """One code file to run: a snapshot of the bytes hashed at planning, named as the user knows it.

    The loader (:mod:`backbeat.runtime.codeloader`) refuses bytes at ``path`` whose sha256 is
    not ``sha256``; ``filename`` (the file in the prefix the bytes were read from) is what
    tracebacks, ``__file__`` and the code objects' ``co_filename`` say.
    """

    path: str  # the snapshot (content-addressed, in the cache)
    sha256: str
    filename: str
    uses: dict[str, str] = field(default_factory=dict)  # alias -> library name

    def to_json(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "filename": self.filename, "uses": dict(self.uses)}

    @classmethod
    def from_json(cls, obj: Any) -> CodeFile:
        what = "code file spec"
        return cls(_get(obj, "path", str, what), _get(obj, "sha256", str, what), _get(obj, "filename", str, what),
                   dict(_get(obj, "uses", dict, what)))


@dataclass(frozen=True)
class CodeSpec:
    """User code to load: its code file and every library it needs (transitively), by name."""

    main: CodeFile
    libraries: dict[str, CodeFile] = field(default_factory=dict)

    @property
    def uses(self) -> dict[str, str]:
        return self.main.uses

    def to_json(self) -> dict:
        return {"main": self.main.to_json(), "libraries": {n: lib.to_json() for n, lib in self.libraries.items()}}

    @classmethod
    def from_json(cls, obj: Any) -> CodeSpec:
        libs = _get(obj, "libraries", dict, "code spec")
        return cls(CodeFile.from_json(_get(obj, "main", dict, "code spec")),
                   {n: CodeFile.from_json(v) for n, v in libs.items()})


@dataclass(frozen=True)
class InputSpec:
    """One input: ``source`` ``cache`` (``key``, ``path``, ``verify``), ``dataset`` (``dataset``,
    ``output``: served by the database provider) or ``stream`` (``address`` of the producer)."""

    channel: str
    dataformat: str
    source: str
    key: str = ""
    path: str | None = None
    verify: bool = True
    dataset: str | None = None
    output: str | None = None
    address: str | None = None

    def to_json(self) -> dict:
        return {"channel": self.channel, "dataformat": self.dataformat, "source": self.source, "key": self.key,
                "path": self.path, "verify": self.verify, "dataset": self.dataset, "output": self.output,
                "address": self.address}

    @classmethod
    def from_json(cls, obj: Any) -> InputSpec:
        what = "input spec"
        source = _get(obj, "source", str, what)
        if source not in INPUT_SOURCES:
            raise WireError(f"malformed input spec: unknown source `{source}'")
        return cls(_get(obj, "channel", str, what), _get(obj, "dataformat", str, what), source,
                   obj.get("key") or "", _opt(obj, "path", str, what), bool(obj.get("verify", True)),
                   _opt(obj, "dataset", str, what), _opt(obj, "output", str, what), _opt(obj, "address", str, what))


@dataclass(frozen=True)
class StreamTarget:
    """A consumer reading an output while it is written (:mod:`backbeat.runtime.streams`)."""

    address: str  # ipc address the producer binds
    cancel: str  # file the executor creates when the consumer has ended

    def to_json(self) -> dict:
        return {"address": self.address, "cancel": self.cancel}

    @classmethod
    def from_json(cls, obj: Any) -> StreamTarget:
        return cls(_get(obj, "address", str, "stream target"), _get(obj, "cancel", str, "stream target"))


@dataclass(frozen=True)
class OutputSpec:
    dataformat: str
    key: str
    path: str  # cache file to write (a slot file for a slot of a split block)
    streams: tuple[StreamTarget, ...] = ()

    def to_json(self) -> dict:
        return {"dataformat": self.dataformat, "key": self.key, "path": self.path,
                "streams": [s.to_json() for s in self.streams]}

    @classmethod
    def from_json(cls, obj: Any) -> OutputSpec:
        what = "output spec"
        return cls(_get(obj, "dataformat", str, what), _get(obj, "key", str, what), _get(obj, "path", str, what),
                   tuple(StreamTarget.from_json(s) for s in obj.get("streams") or ()))


@dataclass(frozen=True)
class LoopSpec:
    """One side of a loop node: its role, the loop channel's address, the request/answer formats."""

    role: str  # "processor" or "evaluator"
    address: str
    request: tuple[str, dict]  # (dataformat, expanded)
    answer: tuple[str, dict]

    def to_json(self) -> dict:
        return {"role": self.role, "address": self.address, "request": list(self.request),
                "answer": list(self.answer)}

    @classmethod
    def from_json(cls, obj: Any) -> LoopSpec:
        what = "loop spec"
        role = _get(obj, "role", str, what)
        if role not in LOOP_ROLES:
            raise WireError(f"malformed loop spec: unknown role `{role}'")
        request, answer = _get(obj, "request", list, what), _get(obj, "answer", list, what)
        return cls(role, _get(obj, "address", str, what), (request[0], request[1]), (answer[0], answer[1]))


@dataclass(frozen=True)
class BlockSpec:
    """Everything one block process needs (see the module docstring)."""

    name: str
    kind: str  # "block" or "analyzer"
    algorithm: str
    type: str  # algorithm type (declarations.algorithm)
    channel: str
    values: dict[str, Any]  # cleaned parameter values
    code: CodeSpec
    inputs: dict[str, InputSpec]
    outputs: dict[str, OutputSpec]
    formats: dict[str, dict]  # every dataformat read or written -> its expanded declaration
    database: str | None = None  # the database provider's address (set where the block starts)
    window: int = 4096  # units read at once
    range: tuple[int, int] | None = None  # a slot of a split block: its share of the channel
    slot: int | None = None
    loop: LoopSpec | None = None
    compression: str | None = None  # of the cache files written (data.cachewriter.compression_options)
    images: str | None = None  # the cache's folder of small files' templates (data.h5image)
    #: whether a large output starts its writeback as it is written (data.cachewriter.WRITEBACK_BYTES);
    #: False: its syncer writes it all, after a served command's answer (docs/execution.md §3b)
    writeback: bool = True

    @property
    def reads_datasets(self) -> bool:
        """Whether the block needs a database provider."""
        return any(i.source == "dataset" for i in self.inputs.values())

    def to_json(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "algorithm": self.algorithm, "type": self.type,
            "channel": self.channel, "values": self.values, "code": self.code.to_json(),
            "inputs": {n: i.to_json() for n, i in self.inputs.items()},
            "outputs": {n: o.to_json() for n, o in self.outputs.items()},
            "formats": self.formats, "database": self.database, "window": self.window,
            "range": list(self.range) if self.range is not None else None, "slot": self.slot,
            "loop": self.loop.to_json() if self.loop is not None else None, "compression": self.compression,
            **({"images": self.images} if self.images is not None else {}),
            **({} if self.writeback else {"writeback": False}),
        }

    @classmethod
    def from_json(cls, obj: Any) -> BlockSpec:
        what = "block spec"
        rng = _opt(obj, "range", list, what)
        loop = obj.get("loop")
        return cls(
            _get(obj, "name", str, what), _get(obj, "kind", str, what), _get(obj, "algorithm", str, what),
            _get(obj, "type", str, what), _get(obj, "channel", str, what), _get(obj, "values", dict, what),
            CodeSpec.from_json(obj.get("code")),
            {n: InputSpec.from_json(i) for n, i in _get(obj, "inputs", dict, what).items()},
            {n: OutputSpec.from_json(o) for n, o in _get(obj, "outputs", dict, what).items()},
            _get(obj, "formats", dict, what), _opt(obj, "database", str, what), int(obj.get("window") or 4096),
            (int(rng[0]), int(rng[1])) if rng is not None else None, _opt(obj, "slot", int, what),
            LoopSpec.from_json(loop) if loop is not None else None, _opt(obj, "compression", str, what),
            _opt(obj, "images", str, what), _opt(obj, "writeback", bool, what) is not False,
        )


@dataclass(frozen=True)
class DatasetSpec:
    """One (database, protocol, set) view, as an indexing job and the database provider load it.

    ``folders``: where the view's data lives (``{"root": root folder, "code": the database's
    folder in the prefix}``), watched for the files it opens (:mod:`backbeat.runtime.dependencies`).
    ``deps``: for an indexing job, the file it writes what the view opened to; for the
    provider, the journal it appends files the view opened beyond ``manifest`` to.
    ``manifest``, ``index_digest``: the data manifest and the index content the dataset's keys
    were computed from (the provider refuses an index or data files that changed since);
    ``memo``: the stat memo.  ``cores``: for an indexing job, how many cores it may use (its
    share of the run's ``-j`` slots; 0: as many as it may run on).
    """

    database: str
    code: CodeFile  # the database's view code
    view: str  # view class
    root_folder: str
    parameters: dict
    index_path: str
    outputs: dict[str, tuple[str, dict]]  # output -> (dataformat, expanded)
    protocol: str = ""  # (for messages)
    set: str = ""
    folders: dict[str, str] = field(default_factory=dict)
    deps: str | None = None
    manifest: str | None = None
    memo: str | None = None
    index_digest: str | None = None  # for the provider: the index content the keys were computed from
    cores: int = 0

    @property
    def label(self) -> str:
        """How errors name the view: ``database view `V' of db/1, set `protocol/set'``."""
        return f"database view `{self.view}' of {self.database}, set `{self.protocol}/{self.set}'"

    def to_json(self) -> dict:
        return {"database": self.database, "code": self.code.to_json(), "view": self.view,
                "root_folder": self.root_folder, "parameters": self.parameters, "index_path": self.index_path,
                "outputs": {o: list(f) for o, f in self.outputs.items()}, "protocol": self.protocol,
                "set": self.set, "folders": dict(self.folders), "deps": self.deps, "manifest": self.manifest,
                "memo": self.memo, "index_digest": self.index_digest, "cores": self.cores}

    @classmethod
    def from_json(cls, obj: Any) -> DatasetSpec:
        what = "dataset spec"
        outputs = _get(obj, "outputs", dict, what)
        return cls(_get(obj, "database", str, what), CodeFile.from_json(_get(obj, "code", dict, what)),
                   _get(obj, "view", str, what), _get(obj, "root_folder", str, what),
                   _get(obj, "parameters", dict, what), _get(obj, "index_path", str, what),
                   {o: (f[0], f[1]) for o, f in outputs.items()}, _opt(obj, "protocol", str, what) or "",
                   _opt(obj, "set", str, what) or "", dict(obj.get("folders") or {}),
                   _opt(obj, "deps", str, what), _opt(obj, "manifest", str, what), _opt(obj, "memo", str, what),
                   _opt(obj, "index_digest", str, what), _opt(obj, "cores", int, what) or 0)


@dataclass(frozen=True)
class ProviderSpec:
    """The database provider: the address it binds and the datasets it serves."""

    address: str
    datasets: dict[str, DatasetSpec]

    def to_json(self) -> dict:
        return {"address": self.address, "datasets": {n: d.to_json() for n, d in self.datasets.items()}}

    @classmethod
    def from_json(cls, obj: Any) -> ProviderSpec:
        what = "provider spec"
        return cls(_get(obj, "address", str, what),
                   {n: DatasetSpec.from_json(d) for n, d in _get(obj, "datasets", dict, what).items()})
