"""Run records: what produced an output folder, and how to produce it again.

Every stage function (:func:`~isoview_dask.pipeline.convert_dataset`,
:func:`~isoview_dask.pipeline.correct_dataset`, :func:`~isoview_dask.pipeline.fuse_dataset`,
:func:`~isoview_dask.pipeline.timelapse.estimate_timepoints`,
:func:`~isoview_dask.pipeline.timelapse.smooth_and_fuse`,
:func:`~isoview_dask.pipeline.timelapse.process_timelapse`,
:func:`~isoview_dask.pipeline.isotropic.isotropic_dataset`) ends by calling
:func:`record_run`, which adds one record to the output root::

    <out>/isoview-runs/<started>-<stage>-<id>.json   the full record (one file per run)
    <out>/isoview-runs/index.jsonl                   one short line per run (appended)

A record holds the stage and its arguments (input and output folders as
absolute paths), the full resolved configuration (``config.to_dict()``),
the versions of the package, Python and the libraries that shape the
numbers, a fingerprint (path, size, mtime) of every input file the stage
used, the stage's summary (written / skipped / failed, MB, MB/s), start and
end times (UTC), the host, the dask scheduler in use, and the command line
when the run came from ``isoview-dask``. Records are written atomically
(temporary file, then rename) and the index line is appended in one write
under an advisory lock, so concurrent runs into the same root never
interleave or truncate each other's records.

Stage functions never call one another (``process_timelapse`` plans its
correction, estimates, fusion and isotropic reconstruction itself), so one
call leaves one record; ``process_dataset`` leaves one per stage it ran
(``correct``, ``fuse``, ``isotropic``), and a rerun of a fusion record whose
configuration enables the isotropic stage runs it after the fusion (two
records). The
command line is known when :func:`isoview_dask.cli.main` runs the stage
inside :func:`command_line`. A resumed run that finds every
output complete (nothing written, nothing failed) leaves no record and does
not touch the folder: the records of the runs that wrote those outputs
remain their provenance.

:func:`rerun` (``isoview-dask rerun RECORD`` or ``isoview-dask rerun OUT
--index N``) reads a record and calls the same stage with the same
configuration on the same input, into the same folder or a new one. Since
every stage is deterministic for a given input, configuration and library
versions, a rerun into a new folder reproduces the volumes, masks and
projections bit for bit (``tests/test_provenance.py``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import socket
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import InputNotFoundError, IsoviewError

log = logging.getLogger(__name__)

__all__ = ["RECORD_FORMAT", "RUNS_DIR", "Rerun", "dependency_versions", "list_runs", "load_record", "record_run",
           "rerun", "runs_table"]

#: Folder (under an output root) holding the run records.
RUNS_DIR = "isoview-runs"
INDEX_NAME = "index.jsonl"
RECORD_FORMAT = "isoview-dask run record"
RECORD_VERSION = 1

#: Distributions whose versions are recorded (distribution name -> module name).
DEPENDENCIES = {"isoview-dask": "isoview_dask", "numpy": "numpy", "dask": "dask", "distributed": "distributed",
                "zarr": "zarr", "numcodecs": "numcodecs", "scipy": "scipy", "scikit-image": "skimage",
                "tifffile": "tifffile", "pyklb": "pyklb", "dask-image": "dask_image", "matplotlib": "matplotlib"}
#: Optional ones: reported only when already imported (never imported just to read a version).
_OPTIONAL = {"matplotlib"}

_RERUN_OF: contextvars.ContextVar[dict | None] = contextvars.ContextVar("isoview_rerun_of", default=None)
_DISABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("isoview_provenance_disabled", default=False)
_COMMAND_LINE: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("isoview_command_line",
                                                                                 default=None)


# ------------------------------------------------------------------------------------------- recording

@contextlib.contextmanager
def disabled():
    """Write no run records inside this block (e.g. scratch runs)."""
    token = _DISABLED.set(True)
    try:
        yield
    finally:
        _DISABLED.reset(token)


@contextlib.contextmanager
def command_line(argv):
    """Run records written inside this block name ``isoview-dask <argv>`` as their command line."""
    token = _COMMAND_LINE.set(["isoview-dask", *argv])
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def _utc(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _module_version(dist: str, module: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
    mod = sys.modules.get(module)
    if mod is None and dist not in _OPTIONAL:
        try:
            import importlib
            mod = importlib.import_module(module)
        except Exception:  # noqa: BLE001 - a missing or broken library is recorded as None
            return None
    return None if mod is None else str(getattr(mod, "__version__", None) or "") or None


def dependency_versions() -> dict[str, str | None]:
    """Versions of Python, this package and the libraries that shape its numbers (None: absent)."""
    versions = {"python": platform.python_version()}
    for dist, module in DEPENDENCIES.items():
        versions[dist] = _module_version(dist, module)
    return versions


def _scheduler() -> dict:
    from .cluster import current_client
    client = current_client()
    if client is None:
        import dask
        return {"kind": "local", "scheduler": str(dask.config.get("scheduler", None) or "threads")}
    try:
        info = client.scheduler_info()
        workers = info.get("workers", {})
        return {"kind": "distributed", "address": client.scheduler.address, "workers": len(workers),
                "threads": sum(w.get("nthreads", 0) for w in workers.values())}
    except Exception:  # noqa: BLE001 - informational only
        return {"kind": "distributed"}


def _jsonable(value):
    """Arguments as JSON values (paths as text, tuples as lists, a CodecSpec as a tagged table)."""
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__dataclass__": type(value).__name__, **{k: _jsonable(v) for k, v in
                                                          dataclasses.asdict(value).items()}}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, range)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    return repr(value)


def _fingerprints(paths: Iterable) -> list[dict]:
    out, seen = [], set()
    for p in paths:
        if p is None or str(p) in seen:
            continue
        seen.add(str(p))
        path = Path(p)
        try:
            st = path.stat()
        except OSError:
            out.append({"path": str(path), "missing": True})
            continue
        out.append({"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _raw_inputs(source, selection: Mapping[str, Any] | None, allow_truncated: bool) -> list[dict]:
    """Fingerprints of the raw files, dark frames and XML files of the selected views."""
    from .dataset import Dataset, open_dataset
    dataset = source if isinstance(source, Dataset) else open_dataset(source, allow_truncated=allow_truncated)
    sel = {k: (None if v is None else list(v)) for k, v in (selection or {}).items()}
    paths = []
    for view in dataset.select(**sel):
        paths += [view.path, view.background_path, view.metadata.path if view.metadata else None]
    return _fingerprints(paths)


def _record_inputs(records: Iterable[tuple[Path, dict]]) -> list[dict]:
    """Fingerprints of completion records, with their content fingerprint (which hashes the raw inputs)."""
    out = []
    for path, record in records:
        entry = _fingerprints([path])[0]
        entry["fingerprint"] = record.get("fingerprint")
        out.append(entry)
    return out


def _corrected_inputs(corrected, config, estimates_root=None) -> list[dict]:
    """The correction records a fusion stage read (and, for pass 2, the pass-1 estimate records)."""
    from .pipeline.fuse import find_corrected
    sel = config.input
    cams = {c for pair in config.fusion.camera_pairs for c in pair}
    records = []
    for (s, t, c, ch), view in sorted(find_corrected(corrected).items()):
        if (sel.specimens is None or s in sel.specimens) and (sel.timepoints is None or t in sel.timepoints) \
                and (sel.channels is None or ch in sel.channels) and c in cams:
            records.append((view.record_path, view.record))
    if estimates_root is not None:
        from .pipeline.timelapse import load_estimates
        for group in load_estimates(estimates_root).values():
            records += [(Path(r["_path"]), r) for r in group]
    return _record_inputs(records)


def _fused_inputs(fused, config) -> list[dict]:
    """The fused-volume records an isotropic stage read (those of the selected timepoints)."""
    from .pipeline.isotropic import find_fused
    sel = config.input
    records = [(view.record_path, view.record) for (s, t, _, _), view in sorted(find_fused(fused).items())
               if (sel.specimens is None or s in sel.specimens) and (sel.timepoints is None or t in sel.timepoints)]
    return _record_inputs(records)


def _summaries(summary) -> dict:
    if hasattr(summary, "to_dict"):
        return summary.to_dict()
    if isinstance(summary, Mapping):
        return {name: _summaries(s) for name, s in summary.items()}
    if isinstance(summary, (list, tuple)):
        return {getattr(s, "stage", str(i)): _summaries(s) for i, s in enumerate(summary)}
    return _jsonable(summary)


def _totals(summary: dict) -> dict:
    """Counts over a stage summary or a table of them."""
    parts = [summary] if "written" in summary else [s for s in summary.values() if isinstance(s, dict)]
    return {"written": sum(len(p.get("written", [])) for p in parts),
            "skipped": sum(len(p.get("skipped", [])) for p in parts),
            "failed": sum(len(p.get("failed", {})) for p in parts)}


def record_run(stage: str, out, summary, *, config=None, source=None, arguments: Mapping[str, Any] | None = None,
               fixed_parameters=None) -> Path | None:
    """Add a run record to ``out`` (the hook every stage function calls as its last step).

    Parameters
    ----------
    stage : {'convert', 'correct', 'fuse', 'estimate', 'smooth_and_fuse', 'timelapse', 'isotropic'}
    out : path
        The output root the stage wrote to.
    summary : StageSummary, or a table / tuple of them
    config : ProcessingConfig, optional
        The resolved configuration (None for ``convert``, which takes plain arguments).
    source : path or Dataset
        The stage's input: a raw recording (convert, correct, timelapse) or a
        corrected-output root (fuse, estimate, smooth_and_fuse).
    arguments : dict, optional
        Further arguments needed to call the stage again (convert's options).
    fixed_parameters : callable, optional
        ``fuse_dataset``'s; a run given one cannot be redone from its record
        (the record says so).

    Returns
    -------
    Path or None
        The record written; None when the call is nested in another stage,
        recording is :func:`disabled`, the run wrote nothing and failed
        nothing (everything was complete: the folder is left untouched), or
        the record could not be written (logged: a finished run is never
        turned into a failure by its record).
    """
    if _DISABLED.get():
        return None
    totals = _totals(_summaries(summary))
    if not totals["written"] and not totals["failed"]:
        # a resumed run that found everything complete changed nothing: the records of the runs
        # that wrote those outputs stay their provenance, and the folder stays untouched
        log.debug("%s into %s wrote nothing: no run record", stage, out)
        return None
    try:
        return _write_record(stage, out, summary, config, source, arguments, fixed_parameters)
    except Exception as exc:  # noqa: BLE001
        log.error("could not write the run record of %s into %s: %s", stage, out, exc)
        return None


def _write_record(stage, out, summary, config, source, arguments, fixed_parameters) -> Path:
    import time

    from .dataset import Dataset
    finished = time.time()
    summaries = _summaries(summary)
    if "seconds" in summaries:
        seconds = float(summaries.get("seconds", 0.0))
    else:
        parts = [float(s.get("seconds", 0.0)) for s in summaries.values() if isinstance(s, dict)]
        # the stages of one plan each report the plan's whole time: count it once
        seconds = parts[0] if parts and len(set(parts)) == 1 else sum(parts)
    out = Path(out).resolve()
    source_path = Path(source.root if isinstance(source, Dataset) else source).resolve() if source is not None \
        else None
    args: dict[str, Any] = {"source": str(source_path) if source_path else None, "out": str(out)}
    args.update({k: _jsonable(v) for k, v in (arguments or {}).items()})
    selection = None
    if config is not None:
        sel = config.input
        selection = {"specimens": sel.specimens, "timepoints": sel.timepoints, "cameras": sel.cameras,
                     "channels": sel.channels}
    elif arguments:
        selection = {k: arguments.get(k) for k in ("specimens", "timepoints", "cameras", "channels")}
    if stage in ("convert", "correct", "timelapse"):
        allow = bool(config.input.allow_truncated) if config is not None else False
        inputs = _raw_inputs(source, selection, allow)
    elif stage == "isotropic":
        inputs = _fused_inputs(source_path, config)
    else:
        inputs = _corrected_inputs(source_path, config, estimates_root=out if stage == "smooth_and_fuse" else None)
    reproducible, why = True, None
    if fixed_parameters is not None:
        reproducible, why = False, "fixed_parameters (a Python callable) cannot be recorded"
    started = finished - seconds
    run_id = f"{_dt.datetime.fromtimestamp(started, _dt.timezone.utc):%Y%m%dT%H%M%S%fZ}-{stage}-{uuid.uuid4().hex[:8]}"
    record = {
        "format": RECORD_FORMAT, "format_version": RECORD_VERSION, "id": run_id,
        "stage": stage, "function": STAGE_CALLS[stage],
        "arguments": args,
        "config": config.to_dict() if config is not None else None,
        "reproducible": reproducible, "not_reproducible_because": why,
        "versions": dependency_versions(),
        "inputs": inputs,
        "inputs_digest": hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest(),
        "summary": summaries, "totals": _totals(summaries),
        "started": _utc(started), "finished": _utc(finished), "seconds": seconds,
        "host": socket.gethostname(), "platform": platform.platform(), "pid": os.getpid(),
        "python": sys.version, "executable": sys.executable,
        "command_line": _COMMAND_LINE.get(), "scheduler": _scheduler(),
        "rerun_of": _RERUN_OF.get(),
    }
    return _store(out, record)


def _store(out: Path, record: dict) -> Path:
    from .io.atomic import atomic_output
    folder = out / RUNS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['id']}.json"
    with atomic_output(path, overwrite=False) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    line = {"record": path.name, "stage": record["stage"], "started": record["started"],
            "finished": record["finished"], **record["totals"], "reproducible": record["reproducible"]}
    _append_line(folder / INDEX_NAME, json.dumps(line) + "\n")
    log.info("run record: %s", path)
    return path


def _append_line(path: Path, text: str) -> None:
    """Append one line in a single write under an advisory lock (safe against concurrent runs)."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX)
        except (ImportError, OSError):  # pragma: no cover - no flock (Windows, some network filesystems)
            pass
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock


# ------------------------------------------------------------------------------------------- reading

def list_runs(out) -> list[Path]:
    """Run records under an output root, oldest first (the order ``--index`` counts in)."""
    folder = Path(out) / RUNS_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))


def runs_table(out) -> str:
    """One line per recorded run: index, stage, start time, counts, record name."""
    lines = []
    for i, path in enumerate(list_runs(out)):
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            lines.append(f"{i:4d}  (unreadable) {path.name}")
            continue
        t = r.get("totals", {})
        lines.append(f"{i:4d}  {r.get('stage', '?'):15s} {r.get('started', '?')}  {t.get('written', 0)} written, "
                     f"{t.get('skipped', 0)} skipped, {t.get('failed', 0)} failed  {path.name}")
    return "\n".join(lines) if lines else f"{out}: no run records"


def load_record(record, index: int | None = None) -> tuple[dict, Path]:
    """A run record and its path, from a record file or an output root (``index``: 0 oldest, -1 newest)."""
    path = Path(record)
    if path.is_dir():
        runs = list_runs(path)
        if not runs:
            raise InputNotFoundError(f"{path}: no run records (expected {path / RUNS_DIR}/*.json)")
        i = -1 if index is None else int(index)
        if not -len(runs) <= i < len(runs):
            raise IsoviewError(f"{path}: run index {i} out of range ({len(runs)} records: 0..{len(runs) - 1}, "
                               "or -1 for the newest)")
        path = runs[i]
    elif not path.is_file():
        raise InputNotFoundError(f"{path}: run record does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise IsoviewError(f"{path}: not a run record ({exc})") from exc
    if data.get("format") != RECORD_FORMAT:
        raise IsoviewError(f"{path}: not a run record (no 'format': {RECORD_FORMAT!r})")
    return data, path


# ------------------------------------------------------------------------------------------- rerunning

#: The function each stage name calls.
STAGE_CALLS = {"convert": "isoview_dask.pipeline.common.convert_dataset",
               "correct": "isoview_dask.pipeline.correct.correct_dataset",
               "fuse": "isoview_dask.pipeline.fuse.fuse_dataset",
               "estimate": "isoview_dask.pipeline.timelapse.estimate_timepoints",
               "smooth_and_fuse": "isoview_dask.pipeline.timelapse.smooth_and_fuse",
               "timelapse": "isoview_dask.pipeline.timelapse.process_timelapse",
               "isotropic": "isoview_dask.pipeline.isotropic.isotropic_dataset"}


@dataclass
class Rerun:
    """What :func:`rerun` did."""

    record: Path
    stage: str
    source: Path
    out: Path
    summaries: dict = field(default_factory=dict)
    changed_inputs: list[str] = field(default_factory=list)
    version_changes: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(s.failed for s in self.summaries.values())

    def report(self) -> str:
        lines = [f"rerun of {self.record} ({self.stage}): {self.source} -> {self.out}"]
        lines += [f"  warning: input changed since the recorded run: {p}" for p in self.changed_inputs]
        lines += [f"  warning: {name} {old} then, {new} now" for name, (old, new) in self.version_changes.items()]
        lines += [s.report() for s in self.summaries.values()]
        return "\n".join(lines)


def _changed_inputs(recorded: list[dict]) -> list[str]:
    changed = []
    for entry in recorded:
        if entry.get("missing"):
            continue
        now = _fingerprints([entry["path"]])[0]
        if now.get("missing") or now["size"] != entry.get("size") or now["mtime_ns"] != entry.get("mtime_ns"):
            changed.append(entry["path"])
    return changed


def rerun(record, *, index: int | None = None, out=None, source=None, overwrite: bool = False,
          strict: bool = False, progress: bool = True) -> Rerun:
    """Run a recorded stage again: same stage, configuration and input; same or new output folder.

    Parameters
    ----------
    record : path
        A record file, or an output root (then ``index`` picks the record:
        0 the oldest, -1 the newest, the default).
    out : path, optional
        Output root (default: the recorded one; for a record found inside
        a moved output tree, that tree).
    source : path, optional
        Use this input instead of the recorded one (e.g. the corrected
        outputs of a correction rerun, to redo a whole chain in a new folder).
    overwrite : bool
        Redo outputs that are complete (otherwise a rerun into the recorded
        folder skips them, as any resumed run does).
    strict : bool
        Raise if an input file changed (size or modification time) since
        the recorded run, or the recorded run is not reproducible; otherwise
        warn and go on.

    Returns
    -------
    Rerun
        The stage summaries, and inputs or library versions that differ
        from the record. The rerun writes its own record, pointing back to
        this one (``rerun_of``).
    """
    from .config import ProcessingConfig
    data, path = load_record(record, index)
    stage = data["stage"]
    if stage not in STAGE_CALLS:
        raise IsoviewError(f"{path}: unknown stage {stage!r}")
    if not data.get("reproducible", True):
        message = f"{path}: the recorded run cannot be redone: {data.get('not_reproducible_because')}"
        if strict:
            raise IsoviewError(message)
        log.warning("%s; rerunning without it", message)
    args = dict(data.get("arguments") or {})
    recorded_out = Path(args.get("out"))
    # an output tree moved since: its record's folder is the truth about where it is now
    here = path.parent.parent if path.parent.name == RUNS_DIR else recorded_out
    moved = here.resolve() != recorded_out

    def relocate(p):
        return here if (p is not None and moved and Path(p) == recorded_out) else (Path(p) if p else None)

    src = Path(source).resolve() if source is not None else relocate(args.get("source"))
    target = Path(out).resolve() if out is not None else here
    if src is None:
        raise IsoviewError(f"{path}: the record names no input")
    changed = _changed_inputs(data.get("inputs", [])) if source is None else []
    if changed and strict:
        raise IsoviewError(f"{path}: {len(changed)} input file(s) changed since the recorded run, e.g. {changed[0]}")
    for p in changed[:20]:
        log.warning("input changed since the recorded run: %s", p)
    now = dependency_versions()
    version_changes = {k: (v, now.get(k)) for k, v in (data.get("versions") or {}).items() if now.get(k) != v}
    for name, (old, new) in version_changes.items():
        log.warning("%s was %s in the recorded run, is %s now: results may differ", name, old, new)

    config = ProcessingConfig.from_dict(data["config"]) if data.get("config") is not None else None
    if config is not None and overwrite:
        config = config.replace(output_overwrite=True)
    token = _RERUN_OF.set({"record": str(path), "id": data.get("id")})
    try:
        summaries = _call_stage(stage, src, target, config, args, overwrite, progress,
                                same_folder=target == here)
    finally:
        _RERUN_OF.reset(token)
    return Rerun(path, stage, src, target, summaries, changed, version_changes)


def _call_stage(stage, src, target, config, args, overwrite, progress, same_folder) -> dict:
    from .pipeline import convert_dataset, correct_dataset, fuse_dataset
    from .pipeline.timelapse import estimate_timepoints, process_timelapse, smooth_and_fuse
    if stage == "convert":
        options = {k: v for k, v in args.items() if k not in ("source", "out")}
        codec = options.get("codec")
        if isinstance(codec, dict) and codec.get("__dataclass__") == "CodecSpec":
            from .io.zarr import CodecSpec
            options["codec"] = CodecSpec(**{k: v for k, v in codec.items() if k != "__dataclass__"})
        if overwrite:
            options["overwrite"] = True
        return {"convert": convert_dataset(src, target, progress=progress, **options)}
    if stage == "correct":
        return {"correct": correct_dataset(src, target, config, progress=progress)}
    if stage == "isotropic":
        return _isotropic(src, target, config, progress, smooth=bool(args.get("smooth")))
    # a fusion rerun with isotropic.enable goes on to the isotropic stage, on what it fused (as 'run' does)
    isotropic = config is not None and config.isotropic.enable
    if stage == "fuse":
        summaries = {"fuse": fuse_dataset(src, target, config, progress=progress)}
        return {**summaries, **(_isotropic(target, target, config, progress) if isotropic else {})}
    if stage == "estimate":
        return {"estimate": estimate_timepoints(src, target, config, progress=progress)}
    if stage == "smooth_and_fuse":
        summaries = {}
        if not same_folder:  # pass 2 reads pass 1's estimates from its output folder: make them there first
            summaries["estimate"] = estimate_timepoints(src, target, config, progress=progress)
        summaries["smooth"], summaries["fuse"] = smooth_and_fuse(src, target, config, progress=progress)
        return {**summaries, **(_isotropic(target, target, config, progress, smooth=True) if isotropic else {})}
    return dict(process_timelapse(src, target, config, progress=progress))


def _isotropic(fused, out, config, progress, smooth: bool = False) -> dict:
    from .pipeline.isotropic import isotropic_dataset
    return dict(isotropic_dataset(fused, out, config, smooth=smooth, progress=progress))
