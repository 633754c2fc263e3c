"""Helpers shared by the benchmark scripts in this folder.

Nothing here is specific to one benchmark: machine description, timing with
repeats, peak-memory sampling (this process and, on a ``distributed``
cluster, every worker), page-cache control, the synthetic input volume, and
writing results as JSON plus a Markdown table.

Scripts import it as ``import _common`` after putting this folder on
``sys.path`` (see :func:`setup_path`); call :func:`pickle_by_value` once so
that functions defined here can be shipped to distributed workers whatever
their ``sys.path``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import shutil
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
DEFAULT_WORKDIR = RESULTS_DIR / "work"

#: Packages whose versions every benchmark records.
DEFAULT_PACKAGES = ("isoview-dask", "numpy", "dask", "distributed", "zarr", "numcodecs", "pyklb", "tifffile",
                    "scipy", "psutil")

MB = 1e6
MiB = 2**20


# --------------------------------------------------------------------------
# Import plumbing
# --------------------------------------------------------------------------


def setup_path() -> None:
    """Make ``import _common`` work however a script was started."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))


def pickle_by_value() -> None:
    """Ship this module's functions to distributed workers by value, not by import."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


# --------------------------------------------------------------------------
# Machine and environment
# --------------------------------------------------------------------------


def package_versions(names: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, None when missing."""
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def load() -> list[float]:
    """1, 5 and 15 minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def machine_info(packages: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, Any]:
    """Cores, memory, load, OS, Python and package versions."""
    import psutil

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    vm = psutil.virtual_memory()
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "cpu_model": _cpu_model(),
        "memory_total_gib": round(vm.total / 2**30, 2),
        "memory_available_gib": round(vm.available / 2**30, 2),
        "loadavg": load(),
        "versions": package_versions(packages),
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------


def process_rss() -> int:
    """Resident set size of the calling process, bytes (runs on workers too)."""
    import psutil

    return psutil.Process().memory_info().rss


def process_cpu_seconds() -> tuple[float, float]:
    """(user + system, system) CPU seconds used so far by the calling process, all threads (runs on
    workers too). System time is mostly page faults and I/O copies: on the benchmark VM fresh pages
    are expensive (benchmarks/README.md, "Page faults on this VM")."""
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system, t.system


class PeakMemory:
    """Sample resident memory in a background thread while a block runs, and count CPU time.

    Always samples this process; with ``client`` (a ``distributed.Client``)
    also every worker, through ``client.run``. Use as a context manager::

        with PeakMemory(client) as mem:
            work()
        mem.result()  # {'client_peak_mb': ..., 'worker_peak_mb': ..., 'cpu_s': ...}

    ``worker_peak_mb`` is the largest RSS any single worker reached,
    ``workers_total_peak_mb`` the largest sum over workers in one sample. A
    sample every ``interval`` seconds can miss short spikes; the numbers are
    lower bounds. ``client_cpu_s`` / ``workers_cpu_s`` are the CPU seconds
    this process (which also hosts a local scheduler and the sampler) and
    all workers used inside the block; ``cpu_s`` is their sum and
    ``system_cpu_s`` the system (kernel) part of it. On a shared, loaded
    machine CPU seconds vary much less than wall time.
    """

    def __init__(self, client=None, interval: float = 0.2):
        self.client = client
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.client_base = self.client_peak = 0
        self.worker_base: dict[str, int] = {}
        self.worker_peak: dict[str, int] = {}
        self.workers_total_peak = 0
        self.samples = 0
        self.errors = 0
        self.client_cpu = 0.0
        self.workers_cpu: float | None = None
        self.system_cpu = 0.0

    def _sample(self) -> None:
        rss = process_rss()
        self.client_peak = max(self.client_peak, rss)
        if self.client is not None:
            try:
                per_worker = self.client.run(process_rss)
            except Exception:  # a worker restarting, the client closing, ...
                self.errors += 1
            else:
                for addr, value in per_worker.items():
                    self.worker_peak[addr] = max(self.worker_peak.get(addr, 0), int(value))
                self.workers_total_peak = max(self.workers_total_peak, sum(int(v) for v in per_worker.values()))
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _workers_cpu(self) -> dict[str, tuple[float, float]]:
        return {a: (float(v[0]), float(v[1])) for a, v in self.client.run(process_cpu_seconds).items()}

    def __enter__(self) -> "PeakMemory":
        self.client_base = process_rss()
        if self.client is not None:
            self.worker_base = {a: int(v) for a, v in self.client.run(process_rss).items()}
            self._workers_cpu0 = self._workers_cpu()
        self._client_cpu0 = process_cpu_seconds()
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        total, system = process_cpu_seconds()
        self.client_cpu = total - self._client_cpu0[0]
        self.system_cpu = system - self._client_cpu0[1]
        if self.client is not None:
            try:
                after = self._workers_cpu()
                zero = (0.0, 0.0)
                self.workers_cpu = sum(v[0] - self._workers_cpu0.get(a, zero)[0] for a, v in after.items())
                self.system_cpu += sum(v[1] - self._workers_cpu0.get(a, zero)[1] for a, v in after.items())
            except Exception:
                self.errors += 1
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "client_base_mb": round(self.client_base / MB, 1),
            "client_peak_mb": round(self.client_peak / MB, 1),
            "samples": self.samples,
            "client_cpu_s": round(self.client_cpu, 3),
            "cpu_s": round(self.client_cpu + (self.workers_cpu or 0.0), 3),
            "system_cpu_s": round(self.system_cpu, 3),
        }
        if self.client is not None:
            out["worker_base_mb"] = round(max(self.worker_base.values(), default=0) / MB, 1)
            out["worker_peak_mb"] = round(max(self.worker_peak.values(), default=0) / MB, 1)
            out["workers_total_peak_mb"] = round(self.workers_total_peak / MB, 1)
            if self.workers_cpu is not None:
                out["workers_cpu_s"] = round(self.workers_cpu, 3)
            if self.errors:
                out["sample_errors"] = self.errors
        return out


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


@dataclass
class Run:
    """One timed call: wall time, memory, load, the call's return value."""

    seconds: float
    memory: dict[str, Any]
    load: list[float]
    value: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def timed(fn: Callable[[], Any], *, client=None, interval: float = 0.2) -> Run:
    """Call ``fn()`` once, measuring wall time and peak memory."""
    with PeakMemory(client, interval) as mem:
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
    return Run(seconds, mem.result(), load(), value)


def repeat(fn: Callable[[], Any], repeats: int, *, setup: Callable[[], Any] | None = None,
           after: Callable[[Run], Any] | None = None, client=None, interval: float = 0.2) -> list[Run]:
    """Time ``fn`` ``repeats`` times; ``setup()`` runs untimed before each call,
    ``after(run)`` untimed after each (its return value lands in ``run.extra``)."""
    runs = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        run = timed(fn, client=client, interval=interval)
        if after is not None:
            extra = after(run)
            if isinstance(extra, dict):
                run.extra.update(extra)
        runs.append(run)
    return runs


def median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: Sequence[Run], nbytes: int | None = None) -> dict[str, Any]:
    """Median seconds (and MB/s of ``nbytes``), all seconds, the largest peaks, loads."""
    seconds = [r.seconds for r in runs]
    med = median(seconds)
    out: dict[str, Any] = {"seconds": [round(s, 4) for s in seconds], "median_s": round(med, 4) if med else med}
    if nbytes is not None and med:
        out["mb_per_s"] = round(nbytes / MB / med, 1)
        out["mb_per_s_all"] = [round(nbytes / MB / s, 1) for s in seconds]
    peaks: dict[str, float] = {}
    for r in runs:
        for key, value in r.memory.items():
            if key.endswith("_mb"):
                peaks[key] = max(peaks.get(key, 0.0), value)
    out["memory"] = peaks
    cpu = [r.memory.get("cpu_s") for r in runs]
    if any(c is not None for c in cpu):
        out["cpu_s"] = cpu
        out["median_cpu_s"] = round(median(cpu), 3)
        if nbytes is not None and out["median_cpu_s"]:
            out["mb_per_cpu_s"] = round(nbytes / MB / out["median_cpu_s"], 1)
    out["load"] = [r.load for r in runs]
    out["max_load_1min"] = max(r.load[0] for r in runs)
    extras = [r.extra for r in runs if r.extra]
    if extras:
        out["extra"] = extras
    return out


# --------------------------------------------------------------------------
# Files and the page cache
# --------------------------------------------------------------------------


def path_size(path: str | os.PathLike) -> int:
    """Bytes of a file, or of all files under a directory (apparent sizes)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def count_files(path: str | os.PathLike) -> int:
    path = Path(path)
    if path.is_file():
        return 1
    return sum(len(files) for _root, _dirs, files in os.walk(path))


def remove(path: str | os.PathLike) -> None:
    """Delete a file or directory tree if present."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def adopt_orphans() -> set[int]:
    """Make this process the reaper of its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``).

    A command's descendants that outlive their parent (a local cluster's fork
    server) are then reparented here instead of to init, and
    :func:`reap_orphans` waits for them, so their CPU time joins
    ``RUSAGE_CHILDREN`` like a directly waited-for child's. Returns this
    process's children now (they are not the command's); where the platform
    has no such call the CPU figures may miss those processes.
    """
    import ctypes

    import psutil

    try:
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass
    return {child.pid for child in psutil.Process().children()}


def reap_orphans(before: set[int], timeout: float = 30.0) -> int:
    """Wait (up to ``timeout`` s) for the children this process gained since :func:`adopt_orphans`
    returned ``before`` (a finished command's orphans), then stop adopting orphans, so a test runner
    that ran a benchmark in-process collects no other command's; returns how many were reaped."""
    import ctypes

    import psutil

    reaped = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        orphans = [child.pid for child in psutil.Process().children() if child.pid not in before]
        if not orphans:
            break
        for pid in orphans:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            reaped += bool(done)
        time.sleep(0.05)
    try:
        ctypes.CDLL(None).prctl(36, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    return reaped


def timed_sync() -> float:
    """Flush all dirty pages to disk (``os.sync``); return the seconds it took."""
    t0 = time.perf_counter()
    os.sync()
    return time.perf_counter() - t0


def can_drop_caches() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches() -> bool:
    """Sync, then ask the kernel to drop the page cache; False when not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def warm_file(path: str | os.PathLike, block: int = 16 * MiB) -> float:
    """Read a file (or every file under a directory) once so it sits in the page cache; seconds taken."""
    t0 = time.perf_counter()
    path = Path(path)
    files = [path] if path.is_file() else [Path(r) / n for r, _d, fs in os.walk(path) for n in fs]
    buf = bytearray(block)
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.perf_counter() - t0


# --------------------------------------------------------------------------
# Synthetic input
# --------------------------------------------------------------------------


def synthetic_input(workdir: str | os.PathLike, shape: Sequence[int], camera: int = 0,
                    regenerate: bool = False) -> tuple[Path, Any]:
    """A synthetic full-frame raw ``.stack`` of ``shape`` (Z, Y, X) for one camera.

    Generated once with :func:`isoview_dask.synthetic.generate_dataset`
    (preset ``'full'``, realistic noise and compressibility, no truth
    volumes) under ``workdir/synthetic-ZxYxX`` and reused afterwards.

    Returns
    -------
    (path of the .stack, SyntheticTruth)
    """
    from isoview_dask.synthetic import generate_dataset, load_truth

    z, y, x = (int(v) for v in shape)
    root = Path(workdir) / f"synthetic-{z}x{y}x{x}"
    truth = None
    if root.exists() and not regenerate:
        try:
            truth = load_truth(root)
            path = truth.stack_path(camera)
            if tuple(truth.shape) != (z, y, x) or not path.is_file() or path.stat().st_size != 2 * z * y * x:
                truth = None
        except Exception:  # incomplete or foreign folder: make a new one
            truth = None
    if truth is None:
        t0 = time.perf_counter()
        print(f"generating synthetic input {z}x{y}x{x} (camera {camera}) in {root} ...", file=sys.stderr, flush=True)
        overrides: dict[str, Any] = {"cameras": (camera,), "write_truth_volumes": False}
        if (y, x) == (2048, 2048):
            overrides["planes"] = z
        else:
            overrides["shape"] = (z, y, x)
        truth = generate_dataset(root, preset="full", overwrite=True, **overrides)
        print(f"  generated in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    else:
        print(f"reusing synthetic input {root}", file=sys.stderr, flush=True)
    return truth.stack_path(camera), truth


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser, *, default_repeats: int = 3,
                         quick_repeats: int = 1) -> argparse.ArgumentParser:
    """``--workdir``, ``--results``, ``--repeats``, ``--quick`` for every benchmark.

    Call :func:`resolve_repeats` on the parsed arguments: ``--repeats``
    defaults to ``default_repeats``, or ``quick_repeats`` with ``--quick``.
    """
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="scratch folder for inputs and outputs; a synthetic input already there is reused "
                             "(default: %(default)s)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR,
                        help="where the JSON and Markdown results go (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed repeats per measurement, the median is reported (default: {default_repeats}, "
                             f"{quick_repeats} with --quick)")
    parser.add_argument("--quick", action="store_true", help="small input and fewer repeats: a smoke run")
    parser.set_defaults(_default_repeats=default_repeats, _quick_repeats=quick_repeats)
    return parser


def resolve_repeats(args: argparse.Namespace) -> int:
    """Fill in ``args.repeats`` from the defaults of :func:`add_common_arguments`."""
    if args.repeats is None:
        args.repeats = args._quick_repeats if args.quick else args._default_repeats
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    return args.repeats


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return repr(obj)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON (atomically: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, default=_json_default)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: numbers rounded, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]],
                   align: dict[str, str] | None = None) -> str:
    """A GitHub Markdown table.

    Parameters
    ----------
    rows : list of dict
        One dict per row; missing keys print as an en dash. Values that are
        not strings are formatted with :func:`fmt`.
    columns : list of (key, header)
    align : {key: 'l' | 'r'}, optional
        Column alignment; numbers default to right, everything else left.
    """
    align = dict(align or {})
    cells = [[v if isinstance(v, str) else fmt(v) for v in (row.get(k) for k, _ in columns)] for row in rows]
    headers = [h for _, h in columns]
    for i, (key, _) in enumerate(columns):
        if key not in align:
            numeric = any(isinstance(row.get(key), (int, float)) and not isinstance(row.get(key), bool)
                          for row in rows)
            align[key] = "r" if numeric else "l"
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]

    def line(values):
        out = []
        for (key, _), v, w in zip(columns, values, widths):
            out.append(v.rjust(w) if align[key] == "r" else v.ljust(w))
        return "| " + " | ".join(out) + " |"

    rule = "|" + "|".join((("-" * (w + 1) + ":") if align[k] == "r" else (":" + "-" * (w + 1)))
                          for (k, _), w in zip(columns, widths)) + "|"
    return "\n".join([line(headers), rule] + [line(c) for c in cells])


def write_markdown(path: str | os.PathLike, title: str, table: str, notes: Sequence[str] = ()) -> Path:
    """Write a Markdown file: a title, the table, then bullet notes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"# {title}\n\n{table}\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def publish(path: str | os.PathLike, title: str, table: str, notes: Sequence[str] = ()) -> int:
    """End a benchmark: write its Markdown (:func:`write_markdown`), print the table, return exit code 0."""
    write_markdown(path, title, table, notes)
    print(table)
    return 0


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark so far, MB.

    Read from ``VmHWM`` in ``/proc/self/status``, which starts afresh at
    ``exec``. (``ru_maxrss`` does not: a child started by ``subprocess``
    inherits the high-water mark of the process that forked it, so a small
    child of a large parent would report the parent's peak.) Elsewhere than
    Linux, ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) * 1024 / 1e6, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6, 1)
