"""Running a command as a measured process tree (shared by the benchmark scripts).

:func:`run` starts a command, waits for it (with a time cap) and returns a :class:`Measured`:
wall time, exit status, output, and optionally the peak memory of the whole process tree,
sampled from ``/proc`` while it runs:

* the tree is every descendant of this process (minus ``exclude``).  Block processes that
  leave their parent's tree (double fork, a new session reparented to init) are kept in it by
  making this process a *child subreaper* (:func:`become_subreaper`, Linux ``prctl``): orphans
  are reparented here instead of to init;
* memory is the summed **PSS** (proportional set size: a page shared by n processes counts
  1/n in each, so forked children sharing numpy are not counted n times) from
  ``/proc/PID/smaps_rollup``, plus the summed RSS and the number of processes, peak of each
  over the samples;
* leftovers (processes of the tree still alive when the command has exited) are killed by
  their pid and counted: a clean tool leaves none.  backbeat's warm templates
  (:mod:`backbeat.processes.template`), which outlive runs by design, are not leftovers; their
  own CPU time is counted in ``others_cores``, that of the commands they serve (their reaped
  children) in the command's (:func:`served_cpu`).

Also: the CPU time other users of the machine took during the run (``others_cores``: busy
time from ``/proc/stat`` minus the CPU time of this process and its tree, per second of wall
time), the bytes a
cache folder holds (:func:`folder_bytes`), and the machine's parallel capacity right now
(:func:`capacity`).  Linux only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
CLK_TCK = os.sysconf("SC_CLK_TCK")


def become_subreaper() -> bool:
    """Make orphaned descendants reparent to this process (so they stay in the measured tree)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int) -> list[int]:
    """The children of ``pid`` (forked by any of its threads), from ``/proc/PID/task/*/children``."""
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids.extend(int(k) for k in f.read().split())
        except OSError:
            pass
    return kids


def tree(roots: set[int] | list[int], exclude: set[int] | frozenset[int] = frozenset()) -> set[int]:
    """``roots`` and their live descendants, skipping the subtrees of ``exclude`` — the one walk of
    the process tree of the benchmarks (``timeline.py`` samples with it too): read from the roots'
    ``children`` files, not a scan of every process of ``/proc`` (which, every few milliseconds on
    a busy machine, would take a core of its own)."""
    found, todo = set(roots), list(roots)
    while todo:
        for kid in children(todo.pop()):
            if kid not in found and kid not in exclude:
                found.add(kid)
                todo.append(kid)
    return found


def descendants(root: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """Every live descendant of ``root`` (not ``root``), skipping the subtrees of ``exclude``."""
    return sorted(tree({root}, exclude) - {root})


def memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of a process in KiB; (0, 0) if it is gone or a zombie."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith(b"Rss:"):
                    rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pss, rss


def _busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


def _cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Measured:
    """One run of a command."""

    command: list[str]
    wall_s: float
    returncode: int | None  # None: killed at the time cap
    stdout: str = ""
    stderr: str = ""
    cpu_s: float = 0.0  # CPU time of the whole tree (reaped processes)
    others_cores: float = 0.0  # cores busy with other work during the run, on average
    peak_pss_mb: float | None = None
    peak_rss_mb: float | None = None
    peak_processes: int | None = None
    samples: int = 0
    leftovers: int = 0
    started: float = 0.0  # time.perf_counter() just before the command was started
    extra: dict = field(default_factory=dict)

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self) -> str:
        """A one-line reason why the run failed ('' if it did not)."""
        if self.timed_out:
            return f"stopped at the time cap ({self.wall_s:.0f} s)"
        if self.returncode != 0:
            lines = [ln for ln in (self.stderr or self.stdout).strip().splitlines() if ln.strip()]
            return f"exit {self.returncode}: {lines[-1].strip()[:160] if lines else 'no output'}"
        return ""


def served(templates_: set[int]) -> set[int]:
    """The commands the templates ``templates_`` serve now (their children)."""
    return {pid for t in templates_ for pid in children(t)}


def served_commands(cwd: str, templates_: set[int], before: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """The commands the templates ``templates_`` serve for a client working in ``cwd`` (a served
    command works in its client's folder), except those in ``before``: the processes of a served
    run are these commands' trees, which are not the client's descendants."""
    found = []
    for pid in sorted(served(templates_)):
        if pid not in before:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/cwd") == cwd:
                    found.append(pid)
    return found


class _Sampler(threading.Thread):
    """Samples the memory of this process's tree and of the commands templates serve for it
    (working in ``cwd``; a warm template started before this process is not its descendant),
    the templates themselves left out: a served run's memory is its own processes' wherever
    its template was started."""

    def __init__(self, root: int, exclude: set[int], interval: float, cwd: str):
        super().__init__(daemon=True)
        self.root, self.exclude, self.interval, self.cwd = root, exclude, interval, cwd
        self.stop = threading.Event()
        self.pss = self.rss = 0  # KiB
        self.procs = self.samples = 0
        self.warm = templates()
        self.before = served(self.warm)  # (commands served before the run)

    def run(self) -> None:
        while not self.stop.is_set():
            if self.samples % 25 == 24:  # (a template the run itself started)
                self.warm = templates()
            pids = tree({self.root}, self.exclude | self.warm) - {self.root}
            pids |= tree(served_commands(self.cwd, self.warm, self.before), self.exclude)
            pss = rss = 0
            for pid in pids:
                p, r = memory_kb(pid)
                pss += p
                rss += r
            self.pss, self.rss = max(self.pss, pss), max(self.rss, rss)
            self.procs = max(self.procs, len(pids))
            self.samples += 1
            self.stop.wait(self.interval)


def _reap(exclude: set[int]) -> None:
    """Reap zombies reparented to this (subreaper) process."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid in exclude:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)


#: what a backbeat template process runs (``backbeat.processes.templateserver``; before, ``.template``):
#: it outlives runs by design
TEMPLATE_MARKS = (b"backbeat.processes.templateserver import serve", b"backbeat.processes.template import serve")


def templates() -> set[int]:
    """The pids of backbeat's warm templates (never counted as leftovers of a run)."""
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    line = f.read()
                    if any(mark in line for mark in TEMPLATE_MARKS):
                        found.add(int(entry.name))
    return found


def served_cpu(pids: set[int]) -> float:
    """CPU seconds of the reaped children of templates ``pids``: the commands they served (and
    those commands' zygotes and blocks), which are not this process's children."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / CLK_TCK


def _state(pid: int) -> str:
    """A process's state letter (``Z``: ended, not reaped yet); "" if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _served_settled(warm: set[int], cwd: str, before: set[int], patience: float) -> tuple[float, bool]:
    """Wait (at most ``patience`` seconds) until the commands templates ``warm`` serve for this run
    (their children since it started, working in ``cwd``, or ended already) are reaped: a served command
    answers its client before its last work (the syncing of its large outputs,
    :func:`backbeat.core.exiting.after_answer`), and its tree's CPU reaches the template's ``cutime``
    only when the template reaps it — read before that, the run's CPU was counted as other programs'
    (the "others" column of served 1M rows, 1-2 cores).  When that happened (``perf_counter``), and
    whether the patience ran out; the run's wall time is still its client's."""
    deadline = time.perf_counter() + patience
    ours: set[int] = set()
    while warm:
        kids = served(warm) - before  # (a template's children include those ended, not reaped yet)
        for pid in kids - ours:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/cwd") == cwd:
                    ours.add(pid)
                    continue
            if _state(pid) == "Z":  # (an ended command has no folder to read: a zombie of the run's time)
                ours.add(pid)
        ours &= kids  # (reaped: no longer a template's child, whatever took its pid since)
        if not ours:
            break
        if time.perf_counter() >= deadline:
            return time.perf_counter(), True
        time.sleep(0.01)
    return time.perf_counter(), False


def kill_tree(exclude: set[int]) -> int:
    """SIGKILL every descendant of this process outside ``exclude``; how many there were."""
    me = os.getpid()
    pids = descendants(me, exclude)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.05 if pids else 0)
    _reap(exclude)
    return len(pids)


def run(command: list[str], *, cwd: str | Path | None = None, env: dict | None = None,
        timeout: float | None = None, memory: bool = False, interval: float = 0.02,
        exclude: set[int] | None = None) -> Measured:
    """Run ``command`` to completion (or to ``timeout`` seconds, then kill its tree).

    With ``memory``, the tree's PSS is sampled every ``interval`` seconds while it runs
    (this costs CPU, so time such runs separately from the timed ones).  Never raises for a
    failing command: the failure is in the result.
    """
    exclude = set(exclude or ())
    me = os.getpid()
    cpu0, self0, busy0 = _cpu(resource.RUSAGE_CHILDREN), _cpu(resource.RUSAGE_SELF), _busy_seconds()
    warm = templates()
    served0 = served_cpu(warm)
    before = served(warm)  # (commands served before the run: not this run's)
    folder = os.path.realpath(cwd or os.getcwd())
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    except OSError as exc:
        return Measured(command, 0.0, 127, "", f"cannot start {command[0]}: {exc}")
    sampler = _Sampler(me, exclude, interval, folder) if memory else None
    if sampler is not None:
        sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        code = None
        proc.kill()  # then the rest of its tree, below
        out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if sampler is not None:
        sampler.stop.set()
        sampler.join()
    leftovers = kill_tree(exclude | templates())
    settled, unsettled = _served_settled(warm, folder, before, 60.0 if timeout is None else timeout)
    cpu = _cpu(resource.RUSAGE_CHILDREN) - cpu0 + served_cpu(warm) - served0  # (a served command: its template's child)
    mine = cpu + _cpu(resource.RUSAGE_SELF) - self0  # the tree, and this process (its sampler)
    span = settled - t0  # (the run's CPU counted until its served tree is reaped: the others' too)
    others = max(0.0, (_busy_seconds() - busy0) - mine) / span if span > 0 else 0.0
    result = Measured(command, wall, code, out, err, cpu, others, leftovers=leftovers, started=t0)
    if unsettled:  # (a served command of the run still alive after the patience: its CPU not all counted)
        result.extra["served_unsettled"] = True
    if sampler is not None:
        result.peak_pss_mb, result.peak_rss_mb = sampler.pss / 1024, sampler.rss / 1024
        result.peak_processes, result.samples = sampler.procs, sampler.samples
    return result


def folder_bytes(path: str | Path) -> dict[str, int]:
    """Bytes under ``path``: ``apparent`` (file sizes), ``disk`` (allocated blocks), ``files``,
    and apparent bytes per category (``by_kind``: file suffix, or the top folder for
    ``provenance``/``.locks``)."""
    total = disk = files = 0
    by_kind: dict[str, int] = {}
    root = Path(path)
    if not root.exists():
        return {"apparent": 0, "disk": 0, "files": 0, "by_kind": {}}  # type: ignore[dict-item]
    for dirpath, _dirs, names in os.walk(root):
        rel = Path(dirpath).relative_to(root).parts
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
            disk += st.st_blocks * 512
            files += 1
            if rel and rel[0] in ("provenance", ".locks"):
                kind = rel[0]
            else:
                parts = name.split(".")
                kind = "." + ".".join(p for p in parts[1:] if not p.isdigit()) if len(parts) > 1 else "(none)"
            by_kind[kind] = by_kind.get(kind, 0) + st.st_size
    return {"apparent": total, "disk": disk, "files": files, "by_kind": by_kind}  # type: ignore[dict-item]


SPIN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass"


def capacity(seconds: float = 0.5) -> float:
    """Cores this machine gives right now: 2 x (time of one spinning process) / (two at once)."""

    def spin(n: int) -> float:
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", SPIN.format(s=seconds)]) for _ in range(n)]
        for proc in procs:
            proc.wait()
        return time.perf_counter() - t0

    return 2 * min(spin(1) for _ in range(2)) / min(spin(2) for _ in range(2))


def machine(measure_capacity: bool = True) -> dict:
    """Cores, load averages and (unless told not to: it takes ~2 s) parallel capacity now."""
    return {"cores": os.cpu_count(), "loadavg": list(os.getloadavg()),
            "capacity": round(capacity(), 2) if measure_capacity else None}


def backbeat_version(python: str) -> str:
    """``backbeat X.Y.Z (commit abc1234) on Python 3.x.y`` as installed for ``python`` (the commit if it is
    a git checkout)."""
    code = ("import backbeat, os, platform, subprocess; d = os.path.dirname(backbeat.__file__); "
            "c = subprocess.run(['git', '-C', d, 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True); "
            "print(backbeat.__version__, platform.python_version(), c.stdout.strip())")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False).stdout.split()
    if len(out) < 2:
        return "backbeat (version unknown)"
    return f"backbeat {out[0]}" + (f" (commit {out[2]})" if len(out) > 2 else "") + f" on Python {out[1]}"


def command_version(command: list[str]) -> str:
    """What ``COMMAND --version`` says (``backbeat X.Y.Z``), detailed as :func:`backbeat_version`
    when the command's interpreter can be told (a Python, or the one its ``#!`` line names) and its
    backbeat says the same version: the version line of the backbeat that is measured."""
    try:
        said = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        said = None
    short = said.stdout.strip().splitlines()[0] if said is not None and said.returncode == 0 and said.stdout.strip() else ""
    if not short.startswith("backbeat "):
        return f"backbeat (version unknown: `{' '.join(command)} --version' failed)"
    python = _interpreter_of(command[0])
    detailed = backbeat_version(python) if python else ""
    return detailed if detailed.startswith(short + " ") else short


def _interpreter_of(program: str) -> str | None:
    """The Python ``program`` is (its name says so) or runs (its ``#!`` line); None if neither."""
    path = shutil.which(program) or program
    if os.path.basename(path).startswith("python"):
        return path
    try:
        with open(path, "rb") as f:
            line = f.readline(512)
    except OSError:
        return None
    words = line[2:].decode(errors="replace").split() if line.startswith(b"#!") else []
    if words and os.path.basename(words[0]) == "env":
        words = words[1:]
    return words[0] if words and os.path.basename(words[0]).startswith("python") else None


def spread(values: list[float]) -> dict:
    """Median, min, max and count of some measurements (empty: all None)."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}
