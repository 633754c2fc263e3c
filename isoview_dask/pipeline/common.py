"""Wiring algorithms to files: output names, per-volume graphs, atomic commits.

This is where paths live. Each stage builds one lazy graph per output volume
(read -> process -> sharded write into a temporary name), computes the graphs
together on the active cluster with a progress bar, and renames each output
when its graph has finished. The first stage is the plain conversion of raw
volumes into sharded zarr (or KLB/TIFF); later stages (correction, fusion)
reuse the same machinery.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Iterable, Sequence

from ..dataset import Dataset, open_dataset
from ..errors import IsoviewError, OutputExistsError
from ..io import write_volume
from ..io.zarr import CodecSpec, prepare_zarr

log = logging.getLogger(__name__)

SUFFIX = {"zarr": ".zarr", "klb": ".klb", "tif": ".tif"}


def volume_stem(specimen: int, timepoint: int, cameras: int | Sequence[int], channel: int | Sequence[int]) -> str:
    """MATLAB-compatible base name, e.g. ``SPM00_TM000000_CM00_CHN00`` or ``..._CM00_CM01_CHN00``.

    Several channels (an illumination-channel fusion) are all named:
    ``..._CM00_CM01_CHN00_CHN01``; a one-element list names one channel.
    """
    cams = [cameras] if isinstance(cameras, Integral) else list(cameras)
    chans = [channel] if isinstance(channel, Integral) else list(channel)
    cam_part = "_".join(f"CM{c:02d}" for c in cams)
    chan_part = "_".join(f"CHN{c:02d}" for c in chans)
    return f"SPM{specimen:02d}_TM{timepoint:06d}_{cam_part}_{chan_part}"


def timepoint_dir(out: str | Path, specimen: int, timepoint: int) -> Path:
    """``<out>/SPM##/TM######``: one folder per timepoint, as the MATLAB outputs."""
    return Path(out) / f"SPM{specimen:02d}" / f"TM{timepoint:06d}"


def output_path(out: str | Path, specimen: int, timepoint: int, cameras: int | Sequence[int],
                channel: int | Sequence[int], kind: str = "", fmt: str = "zarr") -> Path:
    """Path of one output volume or file.

    Parameters
    ----------
    kind : str
        ``""`` for the corrected volume, else e.g. ``"segmentationMask"``,
        ``"xyProjection"``, ``"fusedStack"``.
    fmt : {'zarr', 'klb', 'tif', 'json', ...}
        File format (suffix).
    """
    stem = volume_stem(specimen, timepoint, cameras, channel)
    name = f"{stem}.{kind}" if kind else stem
    return timepoint_dir(out, specimen, timepoint) / f"{name}{SUFFIX.get(fmt, '.' + fmt)}"


#: The kind (and label name) of a corrected volume's segmentation mask.
MASK_KIND = "segmentationMask"


def segmentation_mask_path(out: str | Path, specimen: int, timepoint: int, camera: int, channel: int,
                           fmt: str = "zarr") -> Path:
    """Where the segmentation mask of a corrected camera volume is.

    A zarr correction that stores its volume writes the mask as an OME-NGFF
    label image of it, ``<stem>.zarr/labels/segmentationMask``. Outputs of
    earlier versions, corrections that do not store their volume
    (``output.store_corrected = false``) and KLB/TIFF outputs have the mask
    beside the volume instead: ``<stem>.segmentationMask.<fmt>``. This
    returns the label image where it exists, else the separate file (which
    may not exist either).

    Returns
    -------
    pathlib.Path
    """
    return mask_of_image(output_path(out, specimen, timepoint, camera, channel, "", fmt))


def mask_of_image(image: str | Path) -> Path:
    """The segmentation mask of the corrected volume ``image`` (``<stem>.<fmt>``), in either layout
    (see :func:`segmentation_mask_path`): ``<image>/labels/segmentationMask`` where that exists, else
    ``<stem>.segmentationMask.<fmt>`` beside it."""
    from ..io.zarr import LABELS_GROUP
    image = Path(image)
    label = image / LABELS_GROUP / MASK_KIND
    if image.suffix == ".zarr" and label.is_dir():
        return label
    return image.with_name(f"{image.name[:-len(image.suffix)]}.{MASK_KIND}{image.suffix}")


@dataclass
class StageSummary:
    """What a stage did: volumes written, skipped and failed, bytes and time."""

    stage: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)
    input_bytes: int = 0
    seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.input_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def report(self, verbose: bool = False) -> str:
        """The stage's outcome as text: one summary line, then the outputs written, failed and warned about.

        Parameters
        ----------
        verbose : bool
            Also list every skipped output, one per line (the command line's
            ``-v``); by default the summary line only counts them, so that a
            rerun over 1000 complete outputs prints one line per stage.

        Returns
        -------
        str
        """
        why = " (complete)" if self.skipped and self.stage != "convert" else ""
        lines = [f"{self.stage}: {len(self.written)} written, {len(self.skipped)} skipped{why}, "
                 f"{len(self.failed)} failed; {self.input_bytes / 1e6:.1f} MB of input in {self.seconds:.1f} s "
                 f"({self.mb_per_s:.1f} MB/s)"]
        lines += [f"  wrote   {p}" for p in self.written]
        if verbose:
            lines += [f"  skipped {p} ({'exists' if self.stage == 'convert' else 'complete'})" for p in self.skipped]
        lines += [f"  FAILED  {p}: {why}" for p, why in self.failed.items()]
        lines += [f"  WARNING {p}: {why}" for p, why in self.warnings.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "written": self.written, "skipped": self.skipped, "failed": self.failed,
                "warnings": self.warnings, "input_bytes": self.input_bytes, "seconds": self.seconds, "mb_per_s": self.mb_per_s}


def convert_dataset(source: str | Path | Dataset, out: str | Path, *, fmt: str = "zarr",
                    codec: str | CodecSpec = "blosc-zstd", level: int | None = None,
                    chunks: Sequence[int] | None = None, shards: Sequence[int] | None = None,
                    pyramid_levels: int = 0, timepoints: Iterable[int] | None = None,
                    cameras: Iterable[int] | None = None, channels: Iterable[int] | None = None,
                    specimens: Iterable[int] | None = None, overwrite: bool = False, skip_existing: bool = False,
                    progress: bool = True) -> StageSummary:
    """Convert raw camera volumes to sharded zarr (or KLB/TIFF), one output per view.

    Parameters
    ----------
    source : path or Dataset
        A raw recording (either layout).
    out : path
        Output root; files go to ``<out>/SPM##/TM######/SPM##_TM######_CM##_CHN##.<fmt>``.
    fmt : {'zarr', 'klb', 'tif'}
    codec, level, chunks, shards, pyramid_levels
        zarr options (see :func:`isoview_dask.io.zarr.write_zarr`).
    overwrite : bool
        Replace existing outputs. Otherwise an output whose completion record
        (``<stem>.conversion.json`` beside it) matches this input and these
        options is skipped, so a rerun resumes; any other existing output is
        an error unless ``skip_existing`` (then it is left alone and reported).

    Returns
    -------
    StageSummary
        Unreadable views are reported as failed; the others are written.
    """
    from ..cluster import compute

    dataset = source if isinstance(source, Dataset) else open_dataset(source)
    if fmt not in SUFFIX:
        raise ValueError(f"unknown output format {fmt!r}; choose zarr, klb or tif")
    spec = CodecSpec.parse(codec, level) if fmt == "zarr" else None
    summary = StageSummary("convert")
    start = time.perf_counter()
    pending = []
    views = dataset.select(specimens=specimens, timepoints=timepoints, cameras=cameras, channels=channels)
    options = {"fmt": fmt, "codec": str(spec) if spec else None, "chunks": list(chunks) if chunks else None,
               "shards": list(shards) if shards is not None else None, "pyramid_levels": pyramid_levels}
    records = {}
    for view in views:
        target = output_path(out, view.specimen, view.timepoint, view.camera, view.channel, fmt=fmt)
        record_path = target.with_name(target.name[:-len(target.suffix)] + ".conversion.json")
        expected = fingerprint(file_fingerprint(view.path), options)
        if not overwrite and completed(record_path, expected):
            summary.skipped.append(str(target))
            continue
        if target.exists() and not overwrite:
            if skip_existing:
                summary.skipped.append(str(target))
                continue
            raise OutputExistsError(f"{target}: output already exists (written from another input or with other "
                                    "options); use overwrite (--overwrite) to replace it")
        records[str(target)] = (record_path, expected, view)
        try:
            volume = view.open()
        except IsoviewError as exc:
            summary.failed[str(view.path)] = str(exc)
            log.error("skipping %s: %s", view.path, exc)
            continue
        summary.input_bytes += view.nbytes
        if fmt == "zarr":
            pending.append(prepare_zarr(volume, target, codec=spec, chunks=chunks, shards=shards,
                                        voxel_size_zyx=view.voxel_size_um, pyramid_levels=pyramid_levels,
                                        overwrite=overwrite, name=target.stem, label=f"CM{view.camera:02d} raw",
                                        attributes={"source": str(view.path), "view": view.to_dict()}))
        else:
            write_volume(volume, target, voxel_size_zyx=view.voxel_size_um, overwrite=overwrite,
                         codec=None if fmt != "klb" else "bzip2")
            summary.written.append(str(target))
            _conversion_record(*records[str(target)], target)
    if pending:
        try:
            compute(*[p.delayed for p in pending], progress=progress, label=f"writing {len(pending)} volumes")
        except BaseException:
            for p in pending:
                p.abort()
            raise
        for p in pending:
            target = p.commit()
            summary.written.append(str(target))
            _conversion_record(*records[str(target)], target)
    summary.seconds = time.perf_counter() - start
    from ..provenance import record_run  # run record (isoview_dask.provenance)
    record_run("convert", out, summary, source=dataset, arguments=dict(
        fmt=fmt, codec=codec, level=level, chunks=chunks, shards=shards, pyramid_levels=pyramid_levels,
        timepoints=timepoints, cameras=cameras, channels=channels, specimens=specimens, overwrite=overwrite,
        skip_existing=skip_existing))
    return summary


def _conversion_record(record_path: Path, expected: str, view, target: Path) -> None:
    """The completion record of one converted volume (written after the volume is complete)."""
    write_json(record_path, {"source": str(view.path), "view": view.to_dict(), "fingerprint": expected,
                             "outputs": relative_outputs(record_path, [target])})


def write_text(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """Write a small text file (a record, a table) atomically: under a temporary name, then renamed."""
    from ..io.atomic import atomic_output
    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, payload: dict, overwrite: bool = True) -> Path:
    """Write a small JSON record atomically."""
    return write_text(path, json.dumps(payload, indent=2, default=str), overwrite)


def file_fingerprint(*paths: str | Path | None) -> list[dict]:
    """Absolute path, size and modification time of each existing input file (None entries skipped).

    Absolute, so that a rerun given the same files by another path spelling (relative, from another
    folder) finds its outputs complete.
    """
    out = []
    for p in paths:
        if p is None:
            continue
        path = Path(p).resolve()
        st = path.stat()
        out.append({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def fingerprint(inputs: list[dict], parameters: dict) -> str:
    """A short hash of inputs' fingerprints and the parameters that shape an output."""
    import hashlib
    text = json.dumps({"inputs": inputs, "parameters": parameters}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def relative_outputs(record_path: Path, outputs) -> list[str]:
    """Output paths as stored in a record: relative to the record's folder, so a copied or
    moved output tree stays self-consistent."""
    import os
    return [os.path.relpath(Path(p), Path(record_path).parent) for p in outputs]


def record_outputs(record_path: Path, record: dict) -> list[Path]:
    """A record's outputs as paths (relative entries resolved against the record's folder)."""
    return [Path(record_path).parent / p for p in record.get("outputs", [])]


def completed(record_path: Path, expected_fingerprint: str) -> bool:
    """True when a completion record exists, matches the fingerprint and all its outputs exist."""
    if not record_path.is_file():
        return False
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if record.get("fingerprint") != expected_fingerprint:
        return False
    return all(p.exists() for p in record_outputs(record_path, record))


_RECORD_NAME = r"^SPM(\d+)_TM(\d+)_((?:CM\d+_)+)((?:CHN\d+_)*CHN\d+)\."


def channel_label(channel) -> str:
    """``CHN00`` for one channel, ``CHN00_CHN01`` for the channels of an illumination-channel fusion."""
    channels = channel if isinstance(channel, (tuple, list)) else (channel,)
    return "_".join(f"CHN{int(c):02d}" for c in channels)


def as_channel(value):
    """A channel as keys hold it: an int, or a tuple for several (JSON gives lists)."""
    if isinstance(value, (tuple, list)):
        return tuple(int(c) for c in value) if len(value) > 1 else int(value[0])
    return int(value)


def scan_records(root: str | Path, kind: str, *, complete: bool = True,
                 folders: str = "SPM*/TM*") -> dict[tuple, tuple[Path, dict]]:
    """Every ``SPM##_TM######_CM##[_CM##]_CHN##[_CHN##].<kind>`` JSON record under ``root``.

    ``folders`` (a glob under ``root``) narrows the scan, e.g. to one
    timepoint's ``SPM00/TM000003``.

    Returns
    -------
    dict
        ``(specimen, timepoint, cameras, channel) -> (record path, record)``
        with ``cameras`` a tuple and ``channel`` an int, or a tuple of the
        channels of an illumination-channel fusion. Unreadable records are skipped with a
        warning, and with ``complete`` so are records whose outputs are missing.
    """
    import re
    pattern = re.compile(_RECORD_NAME + re.escape(kind) + "$")
    found = {}
    for path in sorted(Path(root).glob(f"{folders}/*.{kind}")):
        m = pattern.match(path.name)
        if not m:
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("unreadable record %s; ignoring it", path)
            continue
        if complete and not all(p.exists() for p in record_outputs(path, record)):
            log.warning("incomplete outputs for %s; ignoring them", path)
            continue
        cameras = tuple(int(c) for c in re.findall(r"CM(\d+)", m.group(3)))
        channels = tuple(int(c) for c in re.findall(r"CHN(\d+)", m.group(4)))
        found[(int(m.group(1)), int(m.group(2)), cameras, channels[0] if len(channels) == 1 else channels)] = \
            (path, record)
    return found
