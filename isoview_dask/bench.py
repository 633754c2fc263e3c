"""The compression study: size, ratio and speed of every volume codec on one volume.

For one (Z, Y, X) uint16 volume, every configuration of the study is written,
read back in full, verified and read plane by plane, ``repeats`` times each;
medians are reported. Configurations (see :func:`build_cases`):

* ``klb-pyklb``: KLB bzip2 through ``pyklb`` (the baseline of the published
  study). It runs **in this process** (pyklb's own threads, one per core),
  from a numpy copy of the volume already in memory; it is the only row that
  does not run on the cluster.
* ``klb-dask``: the same format through this package's streaming KLB writer
  (blocks compressed in parallel dask tasks) and :func:`~isoview_dask.io.klb.open_klb`.
* ``tiff``: uncompressed multi-page TIFF.
* zarr v3 with each codec of ``codecs`` (bzip2, blosc-zstd, blosc-lz4,
  blosc-lz4hc, gzip, zstd, none at any level), sharded and/or unsharded, for
  each inner chunk shape.

Per configuration and run:

1. **write**: the package's writer is fed the lazy input (a raw ``.stack``
   file read through the page cache) and runs on the active dask cluster;
   the time ends when the writer returns, with the data in the page cache
   (no ``sync``).
2. **full read**: the package's reader, opening included, on the cluster;
   every chunk is decoded and reduced to its CRC-32 inside the graph.
3. **verification**: those per-chunk CRCs are compared with the CRCs of
   the input cut into the same chunks. A run whose output differs is not
   counted: the row is marked failed and its numbers dropped.
4. **plane reads**: ``plane_reads`` random planes (fewer once they have
   taken ``slow_seconds / 3``), each opened and read on its own in this
   process (dask's threaded scheduler: the latency a viewer sees); each
   plane is also compared with the input.

Throughput is GB (1e9 bytes) of raw voxels per second, in both directions;
ratio is raw bytes over bytes on disk (every file of the output). A
configuration whose first run (write + read) takes more than
``slow_seconds`` runs only once.

Use :func:`run_compression_study` from Python, ``isoview-dask bench
compression`` from the shell, or ``benchmarks/compression.py``. Results: a
JSON record, a Markdown table and two PNG plots (ratio against write speed
and against read speed) in the output folder.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import shutil
import statistics
import sys
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .errors import InputNotFoundError, IsoviewError

__all__ = [
    "BASELINES",
    "DEFAULT_CODECS",
    "Case",
    "StudyInput",
    "add_compression_arguments",
    "build_cases",
    "compression_command",
    "compression_table",
    "plot_compression",
    "prepare_input",
    "run_compression_study",
]

#: Baseline configurations, by key.
BASELINES = ("klb-pyklb", "klb-dask", "tiff")

#: Zarr codecs of the published study plus the levels around them.
ZARR_CODECS = ("bzip2-9", "blosc-zstd-2", "blosc-zstd-3", "blosc-zstd-5", "blosc-zstd-6", "blosc-zstd-9",
               "blosc-lz4-3", "blosc-lz4-6", "blosc-lz4-9", "blosc-lz4hc-6", "blosc-lz4hc-9",
               "gzip-6", "gzip-9", "none")

#: Everything the study measures by default: the baselines, then every zarr codec.
DEFAULT_CODECS = BASELINES + ZARR_CODECS

#: Inner zarr chunk shape measured by default (the package's default).
DEFAULT_CHUNKS = (8, 256, 256)

#: Shard shape of the sharded zarr rows (the package's default).
DEFAULT_SHARD_SHAPE = (32, 1024, 1024)

#: A configuration whose first run takes longer than this (seconds) runs once.
DEFAULT_SLOW_SECONDS = 15.0
#: Wall-clock budget (seconds) of a study's repeat rounds: every configuration
#: runs once whatever the budget; further runs happen while the study's
#: elapsed time plus the run's expected cost stays below it (0: no budget).
DEFAULT_BUDGET_SECONDS = 540.0
#: A configuration whose write + read of the whole volume is predicted (from
#: encoding and decoding one inner chunk) to take longer than this many seconds
#: is measured on fewer planes (inner-chunk slabs spread evenly), as many as
#: fit in this time (0: always the whole volume).
DEFAULT_SUBSET_SECONDS = 20.0

RESULT_NAME = "compression"
GB = 1e9
MB = 1e6


class StudyError(IsoviewError, ValueError):
    """Options of the compression study that cannot work together, or an input it cannot take."""


# --------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One configuration of the study: a format, a codec and its level, a layout.

    Attributes
    ----------
    key : str
        Unique name, e.g. ``klb-pyklb``, ``tiff``, ``zarr-blosc-zstd-5-sharded``.
    fmt : {'klb', 'tiff', 'zarr'}
    codec : str
        ``bzip2``, ``none``, ``blosc-zstd``...
    level : int or None
    sharded : bool or None
        Zarr only.
    engine : str
        Which writer and reader, as shown in the table.
    in_process : bool
        Runs in this process instead of on the cluster (pyklb).
    chunks, shards : tuple or None
        Zarr inner chunk and shard shape (``shards`` None when unsharded).
    """

    key: str
    fmt: str
    codec: str
    level: int | None
    sharded: bool | None
    engine: str
    in_process: bool = False
    chunks: tuple[int, int, int] | None = None
    shards: tuple[int, int, int] | None = None
    codec_text: str = ""

    @property
    def suffix(self) -> str:
        return {"klb": ".klb", "tiff": ".tif", "zarr": ".zarr"}[self.fmt]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "format": self.fmt, "codec": self.codec, "level": self.level,
                "sharded": self.sharded, "engine": self.engine, "in_process": self.in_process,
                "chunks": list(self.chunks) if self.chunks else None,
                "shards": list(self.shards) if self.shards else None}


def _klb_dask_level() -> int:
    from .io import klb as klb_io
    return int(getattr(klb_io, "_BZ2_LEVEL", 9))


def _split_names(values: Iterable[str] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for value in values:
        out.extend(v.strip() for v in str(value).split(",") if v.strip())
    return out


def build_cases(codecs: Iterable[str] | str | None = None, *, sharded: bool | None = None,
                chunks: Sequence[Sequence[int]] | None = None,
                shard_shape: Sequence[int] | None = None) -> list[Case]:
    """The configurations to measure, baselines first.

    Parameters
    ----------
    codecs : list of str, optional
        Baseline keys (``klb-pyklb``, ``klb-dask``, ``tiff``; ``klb`` means
        both KLB rows) and zarr codec labels (``blosc-zstd-5``,
        ``gzip:9``, ``lz4hc-9``, ``none``...), in any order, also
        comma-separated; default :data:`DEFAULT_CODECS`.
    sharded : bool, optional
        True: only sharded zarr; False: only unsharded; None: both.
    chunks : list of (Z, Y, X), optional
        Inner zarr chunk shapes, one set of zarr rows each; default
        :data:`DEFAULT_CHUNKS`.
    shard_shape : (Z, Y, X), optional
        Shard shape of the sharded rows; default :data:`DEFAULT_SHARD_SHAPE`.
    """
    from .io.zarr import CodecSpec

    names = _split_names(codecs) or list(DEFAULT_CODECS)
    chunk_list = [tuple(int(v) for v in c) for c in (chunks or [DEFAULT_CHUNKS])]
    for c in chunk_list:
        if len(c) != 3 or min(c) < 1:
            raise StudyError(f"chunk shape {c}: expected three positive sizes Z,Y,X")
    shard = tuple(int(v) for v in (shard_shape or DEFAULT_SHARD_SHAPE))
    if len(shard) != 3 or min(shard) < 1:
        raise StudyError(f"shard shape {shard}: expected three positive sizes Z,Y,X")
    layouts = [True, False] if sharded is None else [bool(sharded)]
    baselines: list[Case] = []
    zarr_cases: list[Case] = []
    seen: set[str] = set()

    def add(target: list[Case], case: Case) -> None:
        if case.key not in seen:
            seen.add(case.key)
            target.append(case)

    for name in names:
        low = name.lower()
        if low in ("klb", "klb-pyklb", "pyklb"):
            add(baselines, Case("klb-pyklb", "klb", "bzip2", 9, None, "pyklb, in-process", in_process=True))
        if low in ("klb", "klb-dask"):
            add(baselines, Case("klb-dask", "klb", "bzip2", _klb_dask_level(), None, "dask (write_klb engine='dask')"))
        if low in ("klb", "klb-pyklb", "pyklb", "klb-dask"):
            continue
        if low in ("tiff", "tif"):
            add(baselines, Case("tiff", "tiff", "none", None, None, "dask (write_tiff)"))
            continue
        try:
            spec = CodecSpec.parse(name)
        except IsoviewError as exc:
            raise StudyError(f"--codecs: {exc} (or one of {', '.join(BASELINES)})") from exc
        for chunk in chunk_list:
            for is_sharded in layouts:
                key = f"zarr-{spec.label}-{'sharded' if is_sharded else 'unsharded'}"
                if len(chunk_list) > 1:
                    key += "-" + "x".join(map(str, chunk))
                add(zarr_cases, Case(key, "zarr", spec.name, spec.level if spec.name != "none" else None,
                                     is_sharded, "dask (write_zarr)", chunks=chunk,
                                     shards=shard if is_sharded else None, codec_text=spec.label))
    order = {k: i for i, k in enumerate(BASELINES)}
    baselines.sort(key=lambda c: order[c.key])
    return baselines + zarr_cases


# --------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------


@dataclass
class StudyInput:
    """The volume under study, as a raw uint16 ``.stack`` the writers read from.

    Attributes
    ----------
    text : str
        What was asked for (a path or ``synthetic:ZxYxX``).
    kind : str
        ``synthetic``, ``stack``, ``recording``, ``klb``, ``tif`` or ``zarr``.
    stack_path : Path
        The raw file every write starts from (a copy in the work folder for
        compressed inputs, so that decoding the input is never timed).
    shape : (Z, Y, X)
    prepare_seconds : float
        Time spent generating or copying it (0 when reused).
    details : dict
        Where it came from (recording view, synthetic seed...).
    """

    text: str
    kind: str
    stack_path: Path
    shape: tuple[int, int, int]
    prepare_seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def frame(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    @property
    def nbytes(self) -> int:
        return 2 * math.prod(self.shape)

    def open(self, chunks: Sequence[int] | None = None):
        """The volume as a lazy dask array (whole planes per chunk unless ``chunks``)."""
        from .io.stack import open_stack
        return open_stack(self.stack_path, self.frame, chunks=chunks)

    def plane(self, z: int) -> np.ndarray:
        """One plane read straight from the raw file."""
        y, x = self.frame
        return np.fromfile(self.stack_path, dtype="<u2", count=y * x, offset=2 * y * x * int(z)).reshape(y, x)

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.text, "kind": self.kind, "stack_path": str(self.stack_path), "shape": list(self.shape),
                "dtype": "uint16", "raw_bytes": self.nbytes, "prepare_seconds": round(self.prepare_seconds, 2),
                **self.details}


_SYNTHETIC = re.compile(r"^synthetic:(\d+)[x,](\d+)[x,](\d+)$", re.IGNORECASE)


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"8,256,256"`` or ``"8x256x256"`` as a tuple of ints."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in str(text).replace("x", ",").split(",") if v.strip())
    except ValueError as exc:
        raise StudyError(f"{text!r}: expected sizes such as 8,256,256") from exc


def _file_token(path: Path) -> str:
    st = path.stat() if path.is_file() else None
    if st is None:  # a directory (zarr): newest entry
        newest = max((p.stat().st_mtime_ns for p in path.rglob("*")), default=0)
        text = f"{path.resolve()}|{newest}"
    else:
        text = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return f"{zlib.crc32(text.encode()):08x}"


def _stack_is_complete(path: Path, shape: Sequence[int]) -> bool:
    return path.is_file() and path.stat().st_size == 2 * math.prod(shape)


def _materialize(array, target: Path) -> None:
    """Write a lazy uint16 volume as a raw .stack (atomically) on the current scheduler."""
    from .io.stack import write_stack
    target.parent.mkdir(parents=True, exist_ok=True)
    write_stack(array, target, overwrite=True)


def _find_view(path: Path, camera: int | None, timepoint: int | None):
    """The recording view of a raw ``.stack`` file (searching parent folders) or of a recording folder."""
    from .dataset import open_dataset

    if path.is_dir():
        dataset = open_dataset(path)
        views = [v for v in dataset.views if v.ok and (camera is None or v.camera == camera)
                 and (timepoint is None or v.timepoint == timepoint)]
        if not views:
            raise StudyError(f"{path}: no readable camera view"
                             + (f" for camera {camera}" if camera is not None else "")
                             + (f" at timepoint {timepoint}" if timepoint is not None else ""))
        return views[0]
    target = path.resolve()
    folder = target.parent
    for _ in range(5):
        try:
            dataset = open_dataset(folder)
        except (IsoviewError, OSError, ValueError):
            dataset = None
        if dataset is not None:
            for view in dataset.views:
                if Path(view.path).resolve() == target and view.ok:
                    return view
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


def prepare_input(text: str | os.PathLike, workdir: str | os.PathLike, *, frame: Sequence[int] | None = None,
                  camera: int | None = None, timepoint: int | None = None, seed: int | None = None,
                  log: Callable[[str], None] | None = None) -> StudyInput:
    """Resolve the study's input to a raw uint16 ``.stack`` file.

    Parameters
    ----------
    text : str or path
        ``synthetic:ZxYxX`` (a synthetic camera volume from
        :mod:`isoview_dask.synthetic`, realistic noise, generated once under
        ``workdir`` and reused); a raw ``.stack`` (its frame from ``frame``
        or from the recording it belongs to); a recording folder (the first
        view, or the one chosen by ``camera``/``timepoint``); a ``.klb``,
        ``.tif`` or ``.zarr`` volume (copied to a raw file in ``workdir``
        once, so that decoding the input is never part of a write time).
    workdir : path
        Scratch folder for generated or copied inputs.
    frame : (Y, X), optional
        Frame of a bare ``.stack``.
    seed : int, optional
        Seed of the synthetic generator (default: the generator's).

    Computation runs on the current dask scheduler (a distributed client if
    one is active).
    """
    say = log or (lambda msg: None)
    workdir = Path(workdir)
    text = str(text)
    t0 = time.perf_counter()
    m = _SYNTHETIC.match(text.strip())
    if m:
        from .synthetic import SyntheticSpec, synthetic_volume

        shape = tuple(int(v) for v in m.groups())
        if min(shape) < 1:
            raise StudyError(f"{text}: every size must be positive")
        overrides: dict[str, Any] = {"shape": shape}
        if seed is not None:
            overrides["seed"] = int(seed)
        spec = SyntheticSpec.full_frame(**overrides)
        name = f"synthetic-{'x'.join(map(str, shape))}-seed{spec.seed}.stack"
        target = workdir / name
        details = {"synthetic_seed": spec.seed, "synthetic_preset": "full_frame"}
        if _stack_is_complete(target, shape):
            say(f"reusing synthetic input {target}")
            return StudyInput(text, "synthetic", target, shape, 0.0, details)
        say(f"generating synthetic input {'x'.join(map(str, shape))} in {target} ...")
        _materialize(synthetic_volume(spec, camera=0, kind="raw"), target)
        return StudyInput(text, "synthetic", target, shape, time.perf_counter() - t0, details)

    path = Path(text)
    if not path.exists():
        raise InputNotFoundError(f"{path}: input does not exist (give a volume, a recording folder or "
                                 f"synthetic:ZxYxX)")
    suffix = path.suffix.lower()
    if suffix == ".stack" or (path.is_dir() and suffix != ".zarr"):
        from .io.stack import stack_depth

        view = None if (frame and suffix == ".stack") else _find_view(path, camera, timepoint)
        if view is not None:
            stack, shape = Path(view.path), tuple(int(v) for v in view.shape)
            details = {"view": view.to_dict() if hasattr(view, "to_dict") else str(view)}
            if stack.suffix.lower() != ".stack":  # a recording stored as KLB/TIFF: copy it
                return _copy_input(text, "recording", stack, workdir, t0, say, details)
            return StudyInput(text, "recording" if path.is_dir() else "stack", stack, shape, 0.0,
                              {"view": {"camera": view.camera, "timepoint": view.timepoint,
                                        "channel": view.channel, "specimen": view.specimen}})
        if not frame:
            raise StudyError(f"{path}: a .stack has no header and no recording describes it; give --frame Y,X")
        frame = tuple(int(v) for v in frame)
        if len(frame) != 2 or min(frame) < 1:
            raise StudyError(f"--frame {frame}: expected Y,X")
        depth = stack_depth(path, frame)
        return StudyInput(text, "stack", path, (depth, frame[0], frame[1]))
    if suffix in (".klb", ".tif", ".tiff", ".zarr"):
        return _copy_input(text, suffix.lstrip(".").replace("tiff", "tif"), path, workdir, t0, say, {})
    raise StudyError(f"{path}: unknown input; expected a .stack, .klb, .tif, .zarr, a recording folder or "
                     f"synthetic:ZxYxX")


def _copy_input(text: str, kind: str, path: Path, workdir: Path, t0: float, say, details: dict) -> StudyInput:
    from .io import open_volume

    arr = open_volume(path)
    if arr.ndim != 3:
        raise StudyError(f"{path}: expected a (Z, Y, X) volume, got shape {arr.shape}")
    if np.dtype(arr.dtype) != np.uint16:
        raise StudyError(f"{path}: the study takes uint16 camera volumes, this one is {arr.dtype}")
    shape = tuple(int(v) for v in arr.shape)
    target = workdir / f"input-{path.stem}-{_file_token(path)}.stack"
    details = {**details, "source": str(path)}
    if _stack_is_complete(target, shape):
        say(f"reusing raw copy of the input {target}")
        return StudyInput(text, kind, target, shape, 0.0, details)
    say(f"copying {path} to a raw file {target} (the writes start from it) ...")
    _materialize(arr, target)
    return StudyInput(text, kind, target, shape, time.perf_counter() - t0, details)


# --------------------------------------------------------------------------
# Graph pieces (module level, so that distributed workers import them)
# --------------------------------------------------------------------------


def _chunk_crc(block: np.ndarray) -> np.ndarray:
    """CRC-32 of one chunk's little-endian bytes, as a one-element array (runs inside the graph)."""
    block = np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<"))
    return np.full((1,) * block.ndim, zlib.crc32(block), dtype=np.int64)


def chunk_crcs(arr) -> "Any":
    """A lazy array of one CRC-32 per chunk of ``arr`` (shape = number of chunks per axis)."""
    import dask.array as da
    return da.map_blocks(_chunk_crc, arr, dtype=np.int64, chunks=tuple((1,) * len(c) for c in arr.chunks))


def _process_cpu() -> float:
    return time.process_time()


def _warm_imports() -> bool:
    import zarr  # noqa: F401

    from .io import klb, stack, tiff, zarr as _z  # noqa: F401
    return True


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _path_size(path: Path) -> tuple[int, int]:
    """(bytes, files) of a file or of everything under a folder."""
    if path.is_file():
        return path.stat().st_size, 1
    total = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            total += os.stat(os.path.join(root, name)).st_size
            files += 1
    return total, files


def _warm_file(path: Path, block: int = 16 * 2**20) -> None:
    """Read a file once so that it sits in the page cache."""
    buf = bytearray(block)
    with open(path, "rb", buffering=0) as fh:
        while fh.readinto(buf):
            pass


def _median(values: Sequence[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux
        return []


def machine_info() -> dict[str, Any]:
    """Cores, memory, load average, CPU model, Python and package versions."""
    import importlib.metadata

    info: dict[str, Any] = {"hostname": platform.node(), "platform": platform.platform(),
                            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    try:
        info["cpu_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        info["cpu_usable"] = os.cpu_count()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            info["cpu_model"] = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), None)
    except OSError:  # pragma: no cover
        info["cpu_model"] = platform.processor() or None
    try:
        import psutil
        info["memory_total_gib"] = round(psutil.virtual_memory().total / 2**30, 2)
    except ImportError:  # pragma: no cover
        pass
    info["loadavg"] = _load()
    versions = {}
    for name in ("isoview-dask", "numpy", "dask", "distributed", "zarr", "numcodecs", "pyklb", "tifffile"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    info["versions"] = versions
    return info


def _probe_seconds_per_byte(case: "Case", sample: np.ndarray, workdir: Path) -> float:
    """Single-thread seconds per raw byte to encode and decode ``sample`` with the case's codec."""
    import tempfile

    if case.fmt == "tiff" or sample.size == 0:
        return 0.0
    t0 = time.perf_counter()
    if case.fmt == "klb":
        import pyklb
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            path = os.path.join(tmp, "probe.klb")
            pyklb.writefull(np.ascontiguousarray(sample), path, numthreads=1)
            pyklb.readfull(path, numthreads=1)
    else:
        import zarr
        from .io.zarr import CodecSpec
        spec = CodecSpec.parse(case.codec_text)
        arr = zarr.create_array(store=zarr.storage.MemoryStore(), shape=sample.shape, chunks=sample.shape,
                                dtype=sample.dtype, compressors=spec.zarr_compressors(sample.dtype.itemsize),
                                fill_value=0)
        arr[...] = sample
        arr[...]
    return (time.perf_counter() - t0) / sample.nbytes


def _subset_input(inp: "StudyInput", planes: int, depth: int, workdir: Path) -> "StudyInput":
    """``planes`` planes of the input, as ``depth``-plane slabs spread evenly through it, written as a
    raw file of their own (reused if present): a specimen that fills some planes more than others
    is sampled throughout, so the ratio stays that of the whole volume."""
    n_slabs = max(1, planes // depth)
    total_slabs = inp.shape[0] // depth
    # slab i of n at the middle of its n-th of the volume (one slab: the middle one)
    starts = [int((i + 0.5) * total_slabs / n_slabs) * depth for i in range(n_slabs)]
    shape = (n_slabs * depth,) + tuple(inp.shape[1:])
    target = workdir / f"{inp.stack_path.stem}-{n_slabs}x{depth}planes.stack"
    plane_bytes = 2 * inp.shape[1] * inp.shape[2]
    if not _stack_is_complete(target, shape):
        with open(inp.stack_path, "rb") as src, open(target, "wb") as dst:
            for start in starts:
                src.seek(start * plane_bytes)
                remaining = depth * plane_bytes
                while remaining:
                    block = src.read(min(remaining, 64 * 2**20))
                    if not block:
                        raise StudyError(f"{inp.stack_path}: shorter than its {inp.shape[0]} planes")
                    dst.write(block)
                    remaining -= len(block)
    return StudyInput(f"{inp.text} ({n_slabs} slabs of {depth} planes)", inp.kind, target, shape, 0.0,
                      {**inp.details, "subset_of": str(inp.stack_path), "subset_first_planes": starts})


class _Measurer:
    """Runs every case of a study on one input, with one client (or none)."""

    def __init__(self, inp: StudyInput, client, outdir: Path, *, repeats: int, slow_seconds: float,
                 plane_reads: int, seed: int, keep: bool, say: Callable[[str], None]):
        self.inp, self.client, self.outdir = inp, client, outdir
        self.repeats, self.slow_seconds, self.plane_reads = repeats, slow_seconds, plane_reads
        self.keep, self.say = keep, say
        self.rng = np.random.default_rng(seed)
        self.reference: dict[tuple, np.ndarray] = {}
        self._array: np.ndarray | None = None

    # ---------------------------------------------------------------- helpers
    def cpu(self) -> float:
        """CPU seconds used so far by this process and every worker."""
        total = time.process_time()
        if self.client is not None:
            total += sum(self.client.run(_process_cpu).values())
        return total

    def compute(self, collection):
        if self.client is not None:
            return self.client.compute(collection).result()
        return collection.compute(scheduler="threads")

    def reference_crcs(self, chunks: tuple) -> np.ndarray:
        """CRCs of the input cut into ``chunks`` (computed once per chunk grid, untimed)."""
        if chunks not in self.reference:
            ref = self.inp.open(chunks=tuple(c[0] for c in chunks))
            if ref.chunks != chunks:
                ref = ref.rechunk(chunks)
            self.reference[chunks] = np.asarray(self.compute(chunk_crcs(ref)))
        return self.reference[chunks]

    def in_memory(self) -> np.ndarray:
        if self._array is None:
            self._array = np.fromfile(self.inp.stack_path, dtype="<u2").reshape(self.inp.shape)
        return self._array

    def release(self) -> None:
        self._array = None

    # ---------------------------------------------------------------- per format
    def write(self, case: Case, path: Path) -> None:
        from .io import klb as klb_io
        from .io import tiff as tiff_io
        from .io import zarr as zarr_io

        if case.key == "klb-pyklb":
            klb_io.write_klb(self.in_memory(), path, engine="pyklb", compression="bzip2")
        elif case.fmt == "klb":
            klb_io.write_klb(self.inp.open(), path, engine="dask", compression="bzip2")
        elif case.fmt == "tiff":
            tiff_io.write_tiff(self.inp.open(), path)
        else:
            zarr_io.write_zarr(self.inp.open(), path, codec=case.codec_text, chunks=case.chunks,
                               shards=case.shards if case.sharded else ())

    def open(self, case: Case, path: Path):
        from .io import klb as klb_io
        from .io import tiff as tiff_io
        from .io import zarr as zarr_io

        if case.fmt == "klb":
            return klb_io.open_klb(path)
        if case.fmt == "tiff":
            return tiff_io.open_tiff(path)
        return zarr_io.open_zarr(path)

    def full_read(self, case: Case, path: Path) -> tuple[float, float, str | None]:
        """Timed read of the whole output: (seconds, CPU seconds, problem or None)."""
        shape = self.inp.shape
        if case.in_process:
            import pyklb

            cpu0 = self.cpu()
            t0 = time.perf_counter()
            data = pyklb.readfull(str(path), numthreads=os.cpu_count() or 1)
            seconds = time.perf_counter() - t0
            cpu = self.cpu() - cpu0
            data = np.asarray(data).reshape(shape) if data.size == math.prod(shape) else data
            src = self.in_memory()
            if data.shape != src.shape or data.dtype != src.dtype:
                return seconds, cpu, f"read back shape {data.shape} {data.dtype}, expected {src.shape} uint16"
            bad = [z for z in range(shape[0]) if not np.array_equal(data[z], src[z])]
            del data
            return seconds, cpu, (f"{len(bad)} plane(s) differ from the input, first z={bad[0]}" if bad else None)
        cpu0 = self.cpu()
        t0 = time.perf_counter()
        arr = self.open(case, path)
        if tuple(arr.shape) != tuple(shape) or np.dtype(arr.dtype) != np.uint16:
            return time.perf_counter() - t0, 0.0, f"read back shape {arr.shape} {arr.dtype}, expected {shape} uint16"
        crcs = np.asarray(self.compute(chunk_crcs(arr)))
        seconds = time.perf_counter() - t0
        cpu = self.cpu() - cpu0
        expected = self.reference_crcs(arr.chunks)
        bad = np.argwhere(crcs != expected)
        if len(bad):
            first = [int(v) for v in bad[0]]
            return seconds, cpu, (f"{len(bad)} of {crcs.size} chunk(s) differ from the input "
                                  f"(CRC-32 per chunk; first at chunk index {first})")
        return seconds, cpu, None

    def plane_read(self, case: Case, path: Path, z: int) -> tuple[float, str | None]:
        """Open and read one plane in this process: (seconds, problem or None)."""
        y, x = self.inp.frame
        t0 = time.perf_counter()
        if case.in_process:
            import pyklb
            plane = pyklb.readroi(str(path), [z, 0, 0], [z, y - 1, x - 1], numthreads=os.cpu_count() or 1)
        else:
            # a one-plane slice rather than an integer index: open_tiff's plane reader takes slices only
            plane = self.open(case, path)[z:z + 1].compute(scheduler="threads")
        seconds = time.perf_counter() - t0
        plane = np.asarray(plane).reshape(y, x)
        if not np.array_equal(plane, self.inp.plane(z)):
            return seconds, f"plane {z} read back differs from the input"
        return seconds, None

    # ---------------------------------------------------------------- one row
    def new_row(self, case: Case) -> dict[str, Any]:
        return {**case.to_dict(), "runs": [], "verified": False, "planes_measured": int(self.inp.shape[0]),
                "raw_bytes_measured": int(self.inp.nbytes)}

    def run_once(self, case: Case, row: dict[str, Any]) -> float:
        """One write + full read + plane reads of ``case``, appended to ``row["runs"]``; returns its seconds.

        A failed verification or an exception marks the row (``row["error"]``)
        and ends its runs; one failing configuration never stops the study.
        """
        path = self.outdir / f"{case.key}{case.suffix}"
        t_start = time.perf_counter()
        try:
            _remove(path)
            if not case.in_process:
                _warm_file(self.inp.stack_path)
            else:
                self.in_memory()
            load = _load()
            cpu0 = self.cpu()
            t0 = time.perf_counter()
            self.write(case, path)
            write_s = time.perf_counter() - t0
            write_cpu = self.cpu() - cpu0
            size, files = _path_size(path)
            read_s, read_cpu, problem = self.full_read(case, path)
            run: dict[str, Any] = {"write_s": round(write_s, 4), "write_cpu_s": round(write_cpu, 3),
                                   "size_bytes": size, "files": files, "read_s": round(read_s, 4),
                                   "read_cpu_s": round(read_cpu, 3), "load_1min": load[0] if load else None}
            if problem is None:
                planes = self.rng.integers(0, self.inp.shape[0], size=self.plane_reads)
                times = []
                for z in planes:
                    seconds, problem = self.plane_read(case, path, int(z))
                    times.append(round(seconds, 5))
                    if problem or sum(times) > self.slow_seconds / 3:  # slow formats: fewer planes
                        break
                run["plane_z"] = [int(z) for z in planes[:len(times)]]
                run["plane_s"] = times
            row["runs"].append(run)
            if problem is not None:
                row["error"] = f"verification failed: {problem}"
            elif len(row["runs"]) == 1 and self.repeats > 1 and write_s + read_s > self.slow_seconds:
                row["repeats_capped"] = (f"first run took {write_s + read_s:.1f} s (> {self.slow_seconds:g} s): "
                                         f"measured once")
        except Exception as exc:  # one failing configuration never stops the study
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()
        finally:
            if not self.keep:
                _remove(path)
        return time.perf_counter() - t_start

    def wants_more(self, row: dict[str, Any]) -> bool:
        return "error" not in row and "repeats_capped" not in row and len(row["runs"]) < self.repeats

    def finish(self, row: dict[str, Any]) -> dict[str, Any]:
        """Medians over the row's runs (in place); returns the row."""
        raw = self.inp.nbytes
        runs = row["runs"]
        row["n_runs"] = len(runs)
        if "error" in row or not runs:
            return row
        row["verified"] = True
        sizes = sorted({r["size_bytes"] for r in runs})
        if len(sizes) > 1:
            row["size_varies"] = sizes
        row["size_bytes"] = sizes[-1]
        row["files"] = runs[-1]["files"]
        row["ratio"] = round(raw / sizes[-1], 4) if sizes[-1] else None
        write_s = _median([r["write_s"] for r in runs])
        read_s = _median([r["read_s"] for r in runs])
        plane_s = _median([s for r in runs for s in r.get("plane_s", [])])
        row["write_median_s"] = round(write_s, 4)
        row["read_median_s"] = round(read_s, 4)
        row["write_gb_per_s"] = round(raw / GB / write_s, 4) if write_s else None
        row["read_gb_per_s"] = round(raw / GB / read_s, 4) if read_s else None
        row["plane_read_ms"] = round(plane_s * 1e3, 2) if plane_s is not None else None
        row["write_cpu_median_s"] = _median([r["write_cpu_s"] for r in runs])
        row["read_cpu_median_s"] = _median([r["read_cpu_s"] for r in runs])
        return row

    def measure(self, case: Case) -> dict[str, Any]:
        """Every run of one case (up to ``repeats``, fewer for a slow one), summarised."""
        row = self.new_row(case)
        self.run_once(case, row)
        while self.wants_more(row):
            self.run_once(case, row)
        return self.finish(row)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _format_label(row: dict[str, Any]) -> str:
    if row["format"] == "klb":
        return "KLB (pyklb, in-process)" if row.get("in_process") else "KLB (dask engine)"
    if row["format"] == "tiff":
        return "TIFF"
    return "zarr"


def _gb(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def compression_table(rows: Sequence[dict[str, Any]]) -> str:
    """The study's Markdown table: best ratio first, failed rows last."""
    def sort_key(row):
        return (not row.get("verified"), -(row.get("ratio") or 0.0), -(row.get("write_gb_per_s") or 0.0))

    several_chunks = len({tuple(r["chunks"]) for r in rows if r.get("chunks")}) > 1
    subsets = len({r.get("planes_measured") for r in rows}) > 1
    headers = ["format", "codec", "level", "sharded"] + (["chunks"] if several_chunks else []) + \
        ["ratio", "size MB", "write GB/s", "read GB/s", "plane read ms", "runs"] + \
        (["planes"] if subsets else []) + ["verified"]
    right = {"level", "ratio", "size MB", "write GB/s", "read GB/s", "plane read ms", "runs", "planes"}
    lines = []
    for row in sorted(rows, key=sort_key):
        ok = bool(row.get("verified"))
        sharded = {True: "yes", False: "no", None: "–"}[row.get("sharded")]
        cells = [_format_label(row), row["codec"], _fmt(row.get("level")), sharded]
        if several_chunks:
            cells.append("x".join(map(str, row["chunks"])) if row.get("chunks") else "–")
        cells += [_fmt(row.get("ratio")) if ok else "–",
                  _fmt(row["size_bytes"] / MB, 1) if ok and row.get("size_bytes") else "–",
                  _gb(row.get("write_gb_per_s")) if ok else "–",
                  _gb(row.get("read_gb_per_s")) if ok else "–",
                  _fmt(row.get("plane_read_ms"), 1) if ok else "–",
                  str(row.get("n_runs", 0))] + ([str(row.get("planes_measured", "–"))] if subsets else []) + \
                 ["yes" if ok else "FAILED"]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(headers)]

    def fmt_line(cells):
        return "| " + " | ".join(c.rjust(w) if h in right else c.ljust(w)
                                 for c, w, h in zip(cells, widths, headers)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if h in right else (":" + "-" * (w + 1))
                          for w, h in zip(widths, headers)) + "|"
    return "\n".join([fmt_line(headers), rule] + [fmt_line(c) for c in lines])


def _notes(record: dict[str, Any]) -> list[str]:
    s, m, inp = record["settings"], record["machine"], record["input"]
    z, y, x = inp["shape"]
    capped = [r["key"] for r in record["rows"] if r.get("repeats_capped")]
    cluster = (f"a local dask cluster of {s['workers']} worker process(es) x {s['threads_per_worker']} thread(s), "
               f"memory limit {s['memory_limit']} each" if s["workers"] else
               "dask's threaded scheduler in this process (no cluster)")
    notes = [
        f"Input: {inp['input']} ({inp['kind']}), {z} x {y} x {x} uint16 = {inp['raw_bytes'] / MB:,.0f} MB. "
        "GB/s are GB (1e9 bytes) of raw voxels per second; ratio = raw bytes / bytes of every file written.",
        f"Writes and full reads ran on {cluster}; the `KLB (pyklb, in-process)` row runs pyklb in the "
        f"benchmark process with {os.cpu_count()} threads, from a copy of the volume already in memory.",
        f"Each number is the median of up to {s['repeats']} runs (column `runs`); a configuration whose first "
        f"write + read took more than {s['slow_seconds']:g} s ran once"
        + (f" ({', '.join(capped)})." if capped else " (none did).")
        + (f" Repeats ran cheapest first within a {s['budget_seconds']:g} s budget for the whole study; the "
           f"budget cut runs of: {', '.join(record['repeats_cut_by_budget'])}."
           if record.get("repeats_cut_by_budget") else ""),
        *([f"Slow configurations (one inner chunk encoded and decoded here predicted more than "
           f"{s.get('subset_seconds', 0):g} s for the whole volume) were measured on fewer planes, slabs of one inner "
           "chunk's depth spread evenly through the volume, "
           "column `planes`: "
           + ", ".join(f"{r['key']} ({r['planes_measured']})" for r in record["rows"]
                       if r.get("planes_measured", z) < z)
           + ". Throughput is per raw byte, so their GB/s compare with the other rows; ratio and size are those "
             "of the planes measured."] if any(r.get("planes_measured", z) < z for r in record["rows"]) else []),
        "Write: from the raw input in the page cache until the writer returns (data in the page cache, no sync). "
        "Full read: opening the output and decoding every chunk on the cluster, each chunk reduced to its CRC-32 "
        "(pyklb row: `pyklb.readfull`).",
        "Verification: after every write the per-chunk CRC-32s of the full read were compared with those of the "
        "input cut into the same chunks (pyklb row: the array read compared plane by plane); every plane read "
        "was compared with the input too. A run that differs is not counted: the row shows FAILED.",
        f"Plane read: up to {s['plane_reads']} random planes per run (fewer once they took "
        f"{s['slow_seconds'] / 3:g} s), each opened and read alone in this process (dask threaded scheduler; "
        "pyklb row: `pyklb.readroi`), output in the page cache; the median in ms.",
        "zarr: v3 with OME-NGFF metadata, inner chunks " + ", ".join("x".join(map(str, c)) for c in s["chunks"])
        + f", shards {'x'.join(map(str, s['shard_shape']))} (clipped to the volume) or unsharded (one file per "
        "inner chunk); blosc codecs with bitshuffle. KLB: blocks 8 x 96 x 96; pyklb writes bzip2 blocks "
        "identical to level 9; the dask engine uses bzip2 level "
        f"{_klb_dask_level()}.",
        f"Machine: {m.get('cpu_usable')} cores ({m.get('cpu_model')}), {m.get('memory_total_gib')} GiB; "
        f"load average {record.get('load_start')} at the start, {record.get('load_end')} at the end (other jobs "
        "may share the machine; `write_cpu_s`/`read_cpu_s` in the JSON are CPU seconds, which vary less with load).",
        f"Total wall time of the study: {record.get('total_seconds', 0):.0f} s "
        f"(input preparation {inp.get('prepare_seconds', 0):.0f} s).",
    ]
    if record.get("failed"):
        notes.append("FAILED (not counted): " + "; ".join(f"{r['key']}: {r.get('error')}" for r in record["rows"]
                                                          if not r.get("verified")))
    return notes


def write_json(path: Path, data: Any) -> Path:
    """Indented JSON, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
        fh.write("\n")
    os.replace(tmp, path)
    return path


_FAMILY_COLOURS = {"klb": "#000000", "tiff": "#7f7f7f", "bzip2": "#8c564b", "blosc-zstd": "#1f77b4",
                   "blosc-lz4": "#2ca02c", "blosc-lz4hc": "#17becf", "gzip": "#d62728", "zstd": "#9467bd",
                   "blosc-zlib": "#e377c2", "blosc-blosclz": "#bcbd22", "none": "#ff7f0e"}


def _point_label(row: dict[str, Any]) -> str:
    if row["format"] == "klb":
        return "KLB pyklb" if row.get("in_process") else "KLB dask"
    if row["format"] == "tiff":
        return "TIFF"
    level = row.get("level")
    return row["codec"] + (f"-{level}" if level is not None else "") + ("" if row.get("sharded") else " (u)")


def _place_labels(ax, canvas, points) -> None:
    """Label scatter points, trying a few offsets per label so that labels do not overlap each other."""
    renderer = canvas.get_renderer()
    ax.set_xlim(ax.get_xlim())  # freeze the limits: the data are all drawn already
    ax.set_ylim(ax.get_ylim())
    from matplotlib.transforms import Bbox

    offsets = [(5, 3), (5, -10), (-5, 3), (-5, -10), (5, 12), (5, -19), (-5, 12), (-5, -19), (5, 21), (5, -28)]
    radius = 4.5 * ax.figure.dpi / 72  # markers (s=48: about 7 points across) are obstacles too
    placed = [Bbox.from_extents(px - radius, py - radius, px + radius, py + radius)
              for px, py in ax.transData.transform([(x, y) for x, y, _t, _c in points])] if points else []
    def overlap(box) -> float:
        total = 0.0
        for other in placed:
            w = min(box.x1, other.x1) - max(box.x0, other.x0)
            h = min(box.y1, other.y1) - max(box.y0, other.y0)
            if w > 0 and h > 0:
                total += w * h
        return total

    for x, y, text, colour in sorted(points, key=lambda p: (-p[1], p[0])):
        best = None  # (overlap, annotation, box): the first offset without overlap, else the least overlap
        for dx, dy in offsets:
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7, color=colour,
                              ha="left" if dx >= 0 else "right")
            box = ann.get_window_extent(renderer).expanded(1.04, 1.1)
            cost = overlap(box)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box)
            else:
                ann.remove()
            if cost == 0:
                break
        placed.append(best[2])


def plot_compression(rows: Sequence[dict[str, Any]], outdir: str | os.PathLike,
                     title: str = "") -> list[Path]:
    """Two PNGs: ratio against write speed and ratio against read speed (verified rows only).

    Returns the files written (none when matplotlib is missing).
    """
    try:
        # A Figure with its own Agg canvas: no pyplot, so the caller's backend (e.g. a notebook's inline
        # backend) is left alone.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        return []
    outdir = Path(outdir)
    good = [r for r in rows if r.get("verified") and r.get("ratio")]
    written = []
    for kind, key, label in (("write", "write_gb_per_s", "write speed (GB/s of raw voxels)"),
                             ("read", "read_gb_per_s", "full-read speed (GB/s of raw voxels)")):
        fig = Figure(figsize=(9, 6), dpi=110)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        points = []
        for row in good:
            speed = row.get(key)
            if not speed:
                continue
            family = row["format"] if row["format"] in ("klb", "tiff") else row["codec"]
            colour = _FAMILY_COLOURS.get(family, "#333333")
            if row["format"] != "zarr":
                marker, face = "s", colour
            else:
                marker, face = "o", (colour if row.get("sharded") else "none")
            ax.scatter([speed], [row["ratio"]], marker=marker, s=48, facecolors=face, edgecolors=colour,
                       linewidths=1.4, zorder=3)
            points.append((speed, row["ratio"], _point_label(row), colour))
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.12, y=0.08)
        _place_labels(ax, canvas, points)
        ax.set_xlabel(label + ", log scale")
        ax.set_ylabel("compression ratio (raw / on disk)")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"Compression ratio vs {kind} speed" + (f"\n{title}" if title else ""), fontsize=10)
        handles = [Line2D([], [], marker="o", linestyle="", color="#444", label="zarr sharded"),
                   Line2D([], [], marker="o", linestyle="", color="#444", markerfacecolor="none",
                          label="zarr unsharded (u)"),
                   Line2D([], [], marker="s", linestyle="", color="#444", label="KLB / TIFF")]
        ax.legend(handles=handles, loc="best", fontsize=8)
        fig.tight_layout()
        path = outdir / f"{RESULT_NAME}-ratio-vs-{kind}.png"
        fig.savefig(path)
        written.append(path)
    return written


def _write_outputs(record: dict[str, Any], outdir: Path, final: bool, plots: bool) -> dict[str, Path]:
    paths = {"json": write_json(outdir / f"{RESULT_NAME}.json", record)}
    if final:
        table = compression_table(record["rows"])
        text = "# Compression study (isoview-dask bench compression)\n\n" + table + "\n\n" + \
            "\n".join(f"- {n}" for n in _notes(record)) + "\n"
        md = outdir / f"{RESULT_NAME}.md"
        md.write_text(text, encoding="utf-8")
        paths["markdown"] = md
        if plots:
            z, y, x = record["input"]["shape"]
            title = f"{record['input']['input']}: {z} x {y} x {x} uint16, " + (
                f"{record['settings']['workers']} workers" if record["settings"]["workers"] else "threaded")
            for p in plot_compression(record["rows"], outdir, title):
                paths[p.stem] = p
    return paths


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def run_compression_study(input: str | os.PathLike, out: str | os.PathLike = "compression-study", *,
                          codecs: Iterable[str] | str | None = None, sharded: bool | None = None,
                          chunks: Sequence[Sequence[int]] | None = None, shard_shape: Sequence[int] | None = None,
                          repeats: int = 3, slow_seconds: float = DEFAULT_SLOW_SECONDS,
                          budget_seconds: float = DEFAULT_BUDGET_SECONDS,
                          subset_seconds: float = DEFAULT_SUBSET_SECONDS, plane_reads: int = 5,
                          workers: int = 2, threads_per_worker: int = 1, memory_limit: str | int = "4GiB",
                          workdir: str | os.PathLike | None = None, frame: Sequence[int] | None = None,
                          camera: int | None = None, timepoint: int | None = None, seed: int | None = None,
                          keep: bool = False, plots: bool = True, client=None,
                          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every configuration on one volume; write JSON, Markdown and PNGs to ``out``.

    Parameters
    ----------
    input : str or path
        See :func:`prepare_input` (``synthetic:ZxYxX``, a ``.stack`` with
        ``frame``, a recording folder, ``.klb``, ``.tif`` or ``.zarr``).
    out : path
        Results folder: ``compression.json``, ``compression.md``,
        ``compression-ratio-vs-write.png``, ``compression-ratio-vs-read.png``.
    codecs, sharded, chunks, shard_shape
        Which configurations, see :func:`build_cases`.
    repeats : int
        Runs per configuration (median reported); a configuration whose
        first run takes longer than ``slow_seconds`` runs once.
    budget_seconds : float
        Every configuration runs once; the repeat rounds (cheapest
        configurations first) stop adding runs once the study's elapsed time
        plus a run's expected cost would exceed this many seconds (0: no
        limit). Rows record their number of runs.
    subset_seconds : float
        A configuration predicted (from one inner chunk encoded and decoded
        in this process) to need longer than this for one write + read of
        the whole volume is measured on fewer planes (inner-chunk slabs spread
        evenly), as many as fit in this time; its row says how many (0:
        every configuration on the whole volume). Throughput is per byte,
        so such rows stay comparable.
    plane_reads : int
        Random single-plane reads per run (they stop early, after at least
        one, once they have taken ``slow_seconds / 3`` seconds).
    workers, threads_per_worker, memory_limit
        The local dask cluster started for the study (``workers=0``: no
        cluster, dask's threaded scheduler). Ignored when ``client`` is given.
    workdir : path, optional
        Scratch folder for the input copy and the outputs (default ``out/work``).
    keep : bool
        Keep the written outputs (otherwise each is removed after its row).
    client : distributed.Client, optional
        Use this client instead of starting a cluster.

    Returns
    -------
    dict
        The JSON record: ``settings``, ``machine``, ``input``, ``rows`` (one
        per configuration), ``failed`` (keys whose output did not verify or
        whose measurement raised), ``outputs`` and ``total_seconds``.
    """
    from .cluster import client_context

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if repeats < 1:
        raise StudyError(f"repeats must be at least 1, got {repeats}")
    if plane_reads < 1:
        raise StudyError(f"plane_reads must be at least 1, got {plane_reads}")
    cases = build_cases(codecs, sharded=sharded, chunks=chunks, shard_shape=shard_shape)
    if not cases:
        raise StudyError("nothing to measure: no configuration selected")
    if not _SYNTHETIC.match(str(input).strip()) and not Path(input).exists():
        # checked before any cluster starts; prepare_input says more about inputs that exist
        raise InputNotFoundError(f"{input}: input does not exist (give a volume, a recording folder or "
                                 f"synthetic:ZxYxX)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(workdir) if workdir is not None else out / "work"
    outputs_dir = workdir / "outputs"
    outputs_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "benchmark": "compression", "started": _now(), "load_start": _load(), "machine": machine_info(),
        "settings": {"codecs": [c.key for c in cases], "sharded": sharded,
                     "chunks": [list(c) for c in (chunks or [DEFAULT_CHUNKS])],
                     "shard_shape": list(shard_shape or DEFAULT_SHARD_SHAPE), "repeats": repeats,
                     "slow_seconds": slow_seconds, "budget_seconds": budget_seconds,
                     "subset_seconds": subset_seconds, "plane_reads": plane_reads,
                     "workers": (len(client.scheduler_info()["workers"]) if client is not None else int(workers)),
                     "threads_per_worker": threads_per_worker, "memory_limit": str(memory_limit),
                     "workdir": str(workdir), "seed": seed},
        "rows": [],
    }

    def body(active_client) -> None:
        if active_client is not None:
            active_client.run(_warm_imports)
        inp = prepare_input(input, workdir, frame=frame, camera=camera, timepoint=timepoint, seed=seed, log=say)
        record["input"] = inp.to_dict()
        say(f"compression study of {inp.text}: {'x'.join(map(str, inp.shape))} uint16 "
            f"({inp.nbytes / MB:,.0f} MB), {len(cases)} configurations, up to {repeats} run(s) each")
        options = dict(repeats=repeats, slow_seconds=slow_seconds, plane_reads=plane_reads,
                       seed=0 if seed is None else int(seed), keep=keep, say=say)
        measurer = _Measurer(inp, active_client, outputs_dir, **options)
        # Slow configurations (predicted from one inner chunk) are measured on fewer planes.
        measurers = {case.key: measurer for case in cases}
        if subset_seconds and subset_seconds > 0:
            depth = int(min(c.chunks[0] for c in cases if c.chunks) if any(c.chunks for c in cases) else 8)
            depth = max(1, min(depth, inp.shape[0]))
            sample = np.fromfile(inp.stack_path, dtype="<u2", count=depth * inp.shape[1] * inp.shape[2]
                                 ).reshape(depth, *inp.shape[1:])[:, :256, :256].copy()
            parallel = max(1, int(record["settings"]["workers"] or 1) * int(threads_per_worker or 1))
            subsets: dict[int, _Measurer] = {}
            _probe_seconds_per_byte(cases[0], sample, workdir)  # warm-up: imports, first allocations
            for case in cases:
                per_byte = min(_probe_seconds_per_byte(case, sample, workdir) for _ in range(2))
                lanes = (os.cpu_count() or 1) if case.in_process else parallel
                predicted = inp.nbytes * per_byte / lanes
                if predicted <= subset_seconds:
                    continue
                planes = int(inp.shape[0] * subset_seconds / predicted) // depth * depth
                planes = max(depth, min(planes, inp.shape[0]))
                if planes >= inp.shape[0]:
                    continue
                if planes not in subsets:
                    subsets[planes] = _Measurer(_subset_input(inp, planes, depth, workdir), active_client,
                                                outputs_dir, **options)
                measurers[case.key] = subsets[planes]
                say(f"{case.key}: predicted {predicted:.0f} s for the whole volume; measured on {planes} planes "
                    f"(evenly spread slabs of {depth})")
        # Round 1: every configuration once, in order. Later rounds repeat the cheapest
        # configurations first, as long as the time budget allows (each row says how many runs).
        rows, cost = [], {}
        for i, case in enumerate(cases, 1):
            row = measurers[case.key].new_row(case)
            cost[case.key] = measurers[case.key].run_once(case, row)
            if case.key == "klb-pyklb":
                measurers[case.key].release()
            rows.append(row)
            record["rows"] = [measurers[c.key].finish(dict(r)) for c, r in zip(cases, rows)]
            shown = record["rows"][-1]
            status = "ok" if shown.get("verified") else f"FAILED: {shown.get('error')}"
            say(f"[{i:2d}/{len(cases)}] {case.key:<34} ratio {_fmt(shown.get('ratio'))}  write "
                f"{_gb(shown.get('write_gb_per_s'))} GB/s  read {_gb(shown.get('read_gb_per_s'))} GB/s  plane "
                f"{_fmt(shown.get('plane_read_ms'), 1)} ms  ({cost[case.key]:.0f} s)  {status}")
            _write_outputs(record, out, final=False, plots=False)
        skipped = []
        for _ in range(repeats - 1):
            for case, row in sorted(zip(cases, rows), key=lambda cr: cost[cr[0].key]):
                if not measurers[case.key].wants_more(row):
                    continue
                if budget_seconds and time.perf_counter() - started + 1.2 * cost[case.key] > budget_seconds:
                    skipped.append(case.key)
                    continue
                cost[case.key] = measurers[case.key].run_once(case, row)
                if case.key == "klb-pyklb":
                    measurers[case.key].release()
        record["rows"] = [measurers[c.key].finish(row) for c, row in zip(cases, rows)]
        record["repeats_cut_by_budget"] = sorted(set(skipped))
        if skipped:
            say(f"time budget of {budget_seconds:g} s: fewer runs for {len(set(skipped))} configuration(s)")
        for used in {id(m): m for m in measurers.values()}.values():
            used.release()

    if client is not None:
        body(client)
    elif workers and workers > 0:
        with client_context(n_workers=int(workers), threads_per_worker=int(threads_per_worker), processes=True,
                            memory_limit=memory_limit, quiet=True) as active:
            active.wait_for_workers(int(workers))
            body(active)
    else:
        import dask
        with dask.config.set(scheduler="threads"):
            body(None)
    record["failed"] = [r["key"] for r in record["rows"] if not r.get("verified")]
    record["finished"] = _now()
    record["load_end"] = _load()
    record["total_seconds"] = round(time.perf_counter() - started, 1)
    paths = _write_outputs(record, out, final=True, plots=plots)
    record["outputs"] = {k: str(v) for k, v in paths.items()}
    write_json(out / f"{RESULT_NAME}.json", record)
    return record


def add_compression_arguments(parser: argparse.ArgumentParser, *, default_input: str | None = None,
                              default_out: str = "compression-study",
                              default_workdir: str | None = None) -> argparse.ArgumentParser:
    """The options of ``isoview-dask bench compression`` (shared with ``benchmarks/compression.py``).

    With ``default_input`` the input becomes optional.
    """
    parser.add_argument("input", nargs=None if default_input is None else "?", default=default_input,
                        help="synthetic:ZxYxX (e.g. synthetic:64x2048x2048), a raw .stack (with --frame or inside a "
                             "recording), a recording folder, or a .klb/.tif/.zarr volume"
                             + ("" if default_input is None else " (default: %(default)s)"))
    parser.add_argument("--codecs", nargs="+", metavar="NAME",
                        help="configurations, space or comma separated: klb-pyklb, klb-dask, tiff (klb = both "
                             "KLB rows) and zarr codecs such as blosc-zstd-5, lz4hc-9, gzip-6, bzip2-9, none "
                             f"(default: {' '.join(DEFAULT_CODECS)})")
    parser.add_argument("--shards", dest="sharded", action=argparse.BooleanOptionalAction, default=None,
                        help="zarr: only sharded (--shards) or only unsharded (--no-shards); default both")
    parser.add_argument("--chunks", nargs="+", metavar="Z,Y,X",
                        help=f"inner zarr chunk shape(s), one set of zarr rows each (default "
                             f"{','.join(map(str, DEFAULT_CHUNKS))})")
    parser.add_argument("--shard-shape", metavar="Z,Y,X",
                        help=f"shard shape of the sharded rows (default {','.join(map(str, DEFAULT_SHARD_SHAPE))})")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration, median reported "
                                                               "(default: %(default)s)")
    parser.add_argument("--slow-seconds", type=float, default=DEFAULT_SLOW_SECONDS,
                        help="a configuration whose first write + read takes longer runs only once "
                             "(default: %(default)s)")
    parser.add_argument("--budget-seconds", type=float, default=DEFAULT_BUDGET_SECONDS,
                        help="every configuration runs once; repeats (cheapest first) stop when the study "
                             "would pass this many seconds, 0: no limit (default: %(default)s)")
    parser.add_argument("--subset-seconds", type=float, default=DEFAULT_SUBSET_SECONDS,
                        help="a configuration predicted to need longer for the whole volume is measured on its "
                             "planes (inner-chunk slabs spread evenly), 0: never (default: %(default)s)")
    parser.add_argument("--plane-reads", type=int, default=5,
                        help="random single-plane reads per run, fewer once they took SLOW_SECONDS/3 "
                             "(default: %(default)s)")
    parser.add_argument("--out", default=default_out,
                        help="results folder: compression.json, .md and two PNGs (default: %(default)s)")
    parser.add_argument("--workdir", default=default_workdir,
                        help="scratch folder for the input copy and the outputs (default: "
                             + (default_workdir or "OUT/work") + ")")
    parser.add_argument("--frame", metavar="Y,X", help="frame size of a bare .stack")
    parser.add_argument("--camera", type=int, help="camera of a recording folder (default: the first view)")
    parser.add_argument("--timepoint", type=int, help="timepoint of a recording folder")
    parser.add_argument("--seed", type=int, help="seed of the synthetic input (default: the generator's)")
    parser.add_argument("--workers", type=int, default=2,
                        help="local dask worker processes (default: %(default)s; 0: no cluster, threads)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (default: %(default)s)")
    parser.add_argument("--memory-limit", default="4GiB", help="memory limit per worker (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the written outputs in WORKDIR/outputs")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    return parser


def compression_command(args: argparse.Namespace) -> int:
    """Run the study from parsed :func:`add_compression_arguments` options; print the table. Exit status."""
    chunks = [parse_shape(c) for c in _split_names(args.chunks)] if args.chunks else None
    record = run_compression_study(
        args.input, args.out, codecs=args.codecs, sharded=args.sharded, chunks=chunks,
        shard_shape=parse_shape(args.shard_shape), repeats=args.repeats, slow_seconds=args.slow_seconds,
        budget_seconds=args.budget_seconds, subset_seconds=args.subset_seconds,
        plane_reads=args.plane_reads, workers=args.workers, threads_per_worker=args.threads,
        memory_limit=args.memory_limit, workdir=args.workdir, frame=parse_shape(args.frame),
        camera=args.camera, timepoint=args.timepoint, seed=args.seed, keep=args.keep, plots=args.plots)
    print(compression_table(record["rows"]))
    print(f"\n{len(record['rows'])} configurations in {record['total_seconds']:.0f} s; results: "
          + ", ".join(record["outputs"].values()))
    if record["failed"]:
        print(f"NOT COUNTED (verification failed or error): {', '.join(record['failed'])}", file=sys.stderr)
        return 1
    return 0
