"""The correction stage (the MATLAB clusterPT) wired to files.

For every selected (timepoint, camera, channel) view: orient the camera,
detect dead pixels from per-pixel z statistics, replace them, subtract the
dark frame (or a percentile background), segment the specimen, and write the
corrected volume, the 3-D foreground mask, the xy/xz coordinate masks, the
dead-pixel mask, raw and corrected max projections, and a statistics JSON.
Two passes over the data, each a dask graph over chunks: (1) per-pixel
statistics and the histogram that gives the segmentation level, (2)
everything written at once. Segmentation runs at reduced lateral resolution
(``segment_downsample``), where the Gaussian smoothing is cheap.
The statistics JSON is written last and doubles as the completion record.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterable, Iterator

import dask.array as da
import numpy as np

from ..config import ProcessingConfig
from ..correct import (correct_dead_pixels, coordinate_masks, dead_pixel_mask, downsample_lateral,
                       estimate_background_level, foreground_mask, intensity_histogram, pixel_statistics, smooth,
                       subtract_background, threshold_from_histogram, upsample_lateral)
from ..correct.background import exact_dark_frame
from ..correct.orient import orient
from ..correct.singlepass import corrected_parts
from ..dataset import CameraView, Dataset, open_dataset
from ..errors import IsoviewError
from ..io import write_volume
from ..io.chunking import fit_chunks, write_chunks
from ..io.tiff import write_tiff
from ..io.atomic import remove_path
from ..io.zarr import CodecSpec, prepare_label, prepare_zarr
from .executor import Job, JobResult, job_errors, job_work, run_jobs
from .common import (MASK_KIND, StageSummary, completed, file_fingerprint, fingerprint, output_path,
                     relative_outputs, write_json)

log = logging.getLogger(__name__)

PROJECTION_AXES = {"xy": 0, "xz": 1, "yz": 2}


class EmptyVolumeError(IsoviewError, ValueError):
    """A camera volume holds no signal at all (every voxel zero)."""


def selected_views(dataset: Dataset, config: ProcessingConfig) -> list[CameraView]:
    """The views of ``dataset`` that ``config.input`` selects (an unknown camera, channel... raises)."""
    sel = config.input
    for name, wanted, present in (("camera", sel.cameras, dataset.cameras),
                                  ("channel", sel.channels, dataset.channels),
                                  ("timepoint", sel.timepoints, dataset.timepoints),
                                  ("specimen", sel.specimens, dataset.specimens)):
        missing = sorted(set(wanted or ()) - set(present))
        if missing:
            raise IsoviewError(f"{dataset.root}: no {name} {missing[0]} in this recording "
                               f"(it has {name}s {present})")
    views = dataset.select(specimens=sel.specimens, timepoints=sel.timepoints, cameras=sel.cameras,
                           channels=sel.channels)
    cams = set(sel.cameras or dataset.cameras)
    for tp in sorted({v.timepoint for v in views}):
        have = {v.camera for v in views if v.timepoint == tp}
        for cam in sorted(cams - have):
            log.warning("timepoint %d has no camera %d; continuing without it", tp, cam)
    return views


def _sample_planes(volume: da.Array, planes: int) -> da.Array:
    """At least ``planes`` planes of a volume, as whole chunks evenly spread (all for 0 or a shallow volume).

    Whole chunks, so that the statistics read only the chunks they use, and
    the same chunks as the segmentation histogram's (:func:`_sample_slabs`)
    when the counts agree: pass 1 then reads each sampled chunk once.
    """
    if planes <= 0 or volume.shape[0] <= planes:
        return volume
    depth = max(volume.chunks[0])
    return _sample_slabs(volume, -(-planes // depth))


def _dead_pixel_search(mean_yx: da.Array, std_yx: da.Array, **options) -> da.Array:
    """:func:`dead_pixel_mask` of the per-pixel statistics as one task of a dask *array*.

    Returns a one-element object array holding the result. An array, not a
    ``dask.delayed`` call, so that it is optimised in one graph with the
    other statistics: dask optimises each collection type on its own and
    renames what it fuses, so a Delayed beside arrays re-read every raw chunk
    both share (the statistics of a full frame read 1.5 volumes instead of the
    half they sample).
    """
    def search(mean, std):
        found = np.empty(1, dtype=object)
        found[0] = dead_pixel_mask(mean, std, **options)
        return found
    frame = (mean_yx.rechunk(-1), std_yx.rechunk(-1))
    return da.map_blocks(search, *frame, drop_axis=1, chunks=((1,),), dtype=object,
                         meta=np.empty((0,), dtype=object))


def _slab_list(volume: da.Array, slabs: int) -> list[da.Array]:
    """At most ``slabs`` evenly spread chunks of planes, each its own array (all the volume,
    as one, for 0 or a volume of few chunks)."""
    bounds = np.cumsum((0,) + volume.chunks[0])
    count = len(volume.chunks[0])
    if slabs <= 0 or count <= slabs:
        return [volume]
    chosen = np.unique(np.linspace(0, count - 1, slabs).round().astype(int))
    return [volume[bounds[i]:bounds[i + 1]] for i in chosen]


def _sample_slabs(volume: da.Array, slabs: int) -> da.Array:
    """:func:`_slab_list` joined along z."""
    parts = _slab_list(volume, slabs)
    return parts[0] if len(parts) == 1 else da.concatenate(parts, axis=0)


def _expansion_counts(small_shape, factor: int, full_shape) -> np.ndarray:
    """Full-resolution pixels per reduced pixel under :func:`upsample_lateral` (Y, X)."""
    counts = []
    for n_small, n_full in zip(small_shape, full_shape):
        per = np.full(n_small, factor, dtype=np.int64)
        per[-1] += n_full - n_small * factor  # rows/columns dropped by the reduction repeat the last one
        counts.append(per)
    return np.outer(counts[0], counts[1])


def _parameters(config: ProcessingConfig, camera: int) -> dict:
    output = {k: v for k, v in config.output.to_dict().items() if k != "overwrite"}
    if output.get("store_corrected", True):
        output.pop("store_corrected", None)  # the default: fingerprints of earlier outputs stay valid
    return {"correction": config.correction.to_dict(), "camera": config.camera_options(camera).to_dict(),
            "output": output}


def correct_view(view: CameraView, out: str | Path, config: ProcessingConfig | None = None,
                 *, progress: bool = True) -> dict:
    """Correct one camera view and write all its outputs; returns its statistics record.

    Parameters
    ----------
    view : CameraView
        The raw view (from :func:`isoview_dask.dataset.open_dataset`).
    out : path
        Output root; files go to ``<out>/SPM##/TM######/``.
    config : ProcessingConfig
        Correction and output options (default: all defaults).

    Returns
    -------
    dict
        The statistics record also written as ``<stem>.correction.json``.
    """
    from ..cluster import compute

    config = config or ProcessingConfig()
    cc, oc = config.correction, config.output
    opts = config.camera_options(view.camera)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def name(kind: str, fmt: str) -> Path:
        return output_path(out, view.specimen, view.timepoint, view.camera, view.channel, kind, fmt)

    orientation = {"rotation": opts.rotation, "flip_h": opts.flip_h, "flip_v": opts.flip_v,
                   "crop": list(opts.crop) if opts.crop else None}
    raw = oriented_raw(view, orientation)
    if oc.format == "zarr":
        # Work in the output's shard-aligned chunks from the start: every step is then
        # blockwise (only thin halos move between workers) and no rechunk precedes the write.
        inner, shards = fit_chunks(raw.shape, oc.chunks, oc.shards or ())
        raw = oriented_raw(view, orientation, write_chunks(inner, shards, raw.shape, raw.dtype.itemsize))
    voxel = view.voxel_size_um
    record: dict = {"view": view.to_dict(), "shape_zyx": list(raw.shape), "voxel_size_um_zyx": voxel,
                    "output_format": oc.format, "segmented": cc.segment, "orientation": orientation,
                    "volume_stored": oc.store_corrected}
    if not oc.store_corrected:  # fusion reads the raw file again: where it is, and how to tell it changed
        path, dark_path = (Path(p).resolve() if p else None for p in (view.path, view.background_path))
        record["raw_input"] = {"path": str(path), "background": str(dark_path) if dark_path else None,
                               "allow_truncated": view.allow_truncated, "files": file_fingerprint(path, dark_path)}

    # Background: the dark frame, or a low percentile of a small voxel sample.
    dark = view.open_background() if cc.use_dark_frame else None
    if dark is not None:
        background = orient(dark, opts.rotation, opts.flip_h, opts.flip_v, opts.crop)
        record["background"] = {"source": "dark_frame", "path": str(view.background_path),
                                "mean": float(background.mean()), "min": float(background.min()),
                                "max": float(background.max())}
    else:
        background = estimate_background_level(raw, cc.background_percentile)
        record["background"] = {"source": "percentile", "percentile": cc.background_percentile,
                                "level": background}
    ratio = voxel[0] / voxel[1] if voxel else 1.0
    factor = cc.segment_downsample

    def smooth_reduced(reduced):
        """The segmentation's smoothing of a laterally reduced, background-free volume."""
        return smooth(reduced, cc.segment_sigma_lateral / factor, cc.segment_sigma_axial, spacing_ratio=ratio / factor,
                      precise=cc.precise_gauss)

    def segmentation_input(volume):
        """Smoothed, laterally reduced copy of a background-free volume (cheap to recompute)."""
        return smooth_reduced(downsample_lateral(volume, factor))

    # Pass 1: per-pixel z statistics (dead pixels) and the histogram of the smoothed volume
    # (segmentation level), in one read. The few dead pixels do not move the histogram.
    sampled = _sample_planes(raw, cc.dead_pixel_sample_planes)
    lazy_stats = {"peak": sampled.max()}  # the whole volume's max only if this is 0
    if cc.dead_pixel_correction:
        # The dead-pixel search (a few CPU-seconds on a 2048 x 2048 frame) is a task of the same
        # graph, on a worker: the client, which also schedules every other job's tasks, only
        # receives the mask and its thresholds.
        lazy_stats["dead"] = _dead_pixel_search(*pixel_statistics(sampled), kernel=cc.dead_pixel_kernel,
                                                z_floor=cc.dead_pixel_min_zscore)
    if cc.segment:
        # Each sampled slab is smoothed on its own: a halo from the chunks beside it would
        # read them too, and the level comes from the histogram, not from any one voxel.
        slabs = _slab_list(subtract_background(raw, background), cc.segment_sample_slabs)
        smoothed = [segmentation_input(slab) for slab in slabs]
        lazy_stats["histogram"] = intensity_histogram(smoothed[0] if len(smoothed) == 1
                                                      else da.concatenate(smoothed, axis=0))
    stats = dict(zip(lazy_stats, compute(*lazy_stats.values(), progress=progress,
                                         label=f"{view.path.name}: statistics", estimate=True)))
    peak = stats["peak"]
    if int(peak) == 0:
        peak = compute(raw.max(), progress=False, estimate=True)[0]
    if int(peak) == 0:
        raise EmptyVolumeError(f"{view.path}: every voxel is zero; nothing to correct")
    if cc.dead_pixel_correction:
        dead = stats["dead"][0]
        dead_mask = dead.mask
        record["dead_pixels"] = {**dead.summary(), "positions_yx": np.argwhere(dead_mask).tolist()}
    else:
        dead_mask = np.zeros(raw.shape[1:], bool)
        record["dead_pixels"] = {"count": 0, "disabled": True}
    # One pass per raw block gives the corrected block, its projections and the block means the
    # segmentation starts from (correct.singlepass); None where it does not apply.
    parts = corrected_parts(raw, dead_mask if cc.dead_pixel_correction else None, background,
                            factor if cc.segment else 0)
    corrected = parts.corrected if parts is not None else \
        corrected_volume(raw, dead_mask if cc.dead_pixel_correction else None, background)
    timings["statistics_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    outputs: list[Path] = []
    pending = []
    lazy: dict = {}
    if cc.segment:
        threshold = threshold_from_histogram(stats["histogram"], cc.segment_threshold, cc.mask_percentile)
        record["segmentation"] = {"min_intensity": threshold.min_intensity,
                                  "mean_intensity": threshold.mean_intensity, "level": threshold.level,
                                  "threshold_fraction": cc.segment_threshold, "lateral_reduction": factor,
                                  "sigma_lateral_px": cc.segment_sigma_lateral,
                                  "sigma_axial_px": cc.segment_sigma_axial or cc.segment_sigma_lateral / ratio}
        smoothed_input = segmentation_input(corrected) if parts is None or parts.means is None else \
            smooth_reduced(parts.means)
        small_mask = foreground_mask(smoothed_input, threshold.level)
        # Expanded as uint8 (the written dtype): the full-resolution mask is then allocated once.
        mask = upsample_lateral(small_mask.astype(np.uint8), factor, raw.shape[1:]).rechunk(corrected.chunks)
        # The full mask repeats each reduced pixel factor x factor times, so its coordinate
        # masks follow from the reduced one's: cheaper than reducing the full mask.
        xy_small, xz_small = coordinate_masks(small_mask)
        xy_mask = upsample_lateral(xy_small[None], factor, raw.shape[1:])[0]
        xz_mask = da.repeat(xz_small * factor + (factor - 1) / 2.0, factor, axis=1)
        if xz_mask.shape[1] < raw.shape[1]:
            xz_mask = da.pad(xz_mask, ((0, 0), (0, raw.shape[1] - xz_mask.shape[1])), mode="edge")
        # Foreground voxels of the full mask: each reduced voxel stands for the full-resolution
        # pixels upsample_lateral gives it (factor x factor, more in the last row/column).
        lazy.update(xy_mask=xy_mask, xz_mask=xz_mask,
                    foreground=(small_mask.sum(axis=0) * _expansion_counts(small_mask.shape[1:], factor,
                                                                           raw.shape[1:])).sum())
    timings["segmentation_level_s"] = time.perf_counter() - t1

    # Pass 2: write volumes and compute every small output in one graph.
    t2 = time.perf_counter()
    overwrite = True  # the completion record, not file existence, decides what is done
    if oc.projections:
        for kind, axis in PROJECTION_AXES.items():
            lazy[f"{kind}Projection"] = corrected.max(axis=axis) if parts is None else parts.projections["corrected"][axis]
            lazy[f"{kind}ProjectionRaw"] = raw.max(axis=axis) if parts is None else parts.projections["raw"][axis]
    zarr_options = dict(codec=CodecSpec.parse(oc.codec, oc.level, oc.shuffle), chunks=oc.chunks,
                        shards=oc.shards or (), voxel_size_zyx=voxel, overwrite=overwrite,
                        pyramid_levels=oc.pyramid_levels)
    mask_options = {**zarr_options, "pyramid_levels": 0}
    label_of = None  # the image whose label image the mask is (zarr with the volume stored)
    if oc.format == "zarr":
        if oc.store_corrected:
            label_of = prepare_zarr(corrected, name("", "zarr"), name=name("", "zarr").stem, **zarr_options)
        if cc.segment and label_of is not None:  # first: committed inside the image before the image
            # as many levels as the image (viewers and validators pair them); a level's mean of 0/1 voxels,
            # rounded, is their majority
            pending.append(prepare_label(mask, label_of, MASK_KIND, **zarr_options))
        elif cc.segment:  # no image to hold it: a separate store, as before
            pending.append(prepare_zarr(mask, name(MASK_KIND, "zarr"), name=MASK_KIND,
                                        label=f"CM{view.camera:02d} segmentation mask", **mask_options))
        if label_of is not None:
            pending.append(label_of)
    keys = list(lazy)
    try:
        results = compute(*[p.delayed for p in pending], *[lazy[k] for k in keys], progress=progress,
                          label=f"{view.path.name}: correcting and writing")
    except BaseException:
        for p in pending:
            p.abort()
        raise
    small = dict(zip(keys, results[len(pending):]))
    for p in pending:
        committed = p.commit()
        if label_of is not None and p is not label_of:  # a label image: where it is once the image is
            committed = label_of.final / committed.relative_to(label_of.tmp)
        outputs.append(committed)
    if label_of is not None and cc.segment and name(MASK_KIND, "zarr").exists():
        remove_path(name(MASK_KIND, "zarr"))  # a separate mask of an earlier version: the label image replaces it
    if oc.format != "zarr":
        if oc.store_corrected:
            outputs.append(write_volume(corrected, name("", oc.format), voxel_size_zyx=voxel, overwrite=overwrite))
        if cc.segment:
            outputs.append(write_volume(mask, name("segmentationMask", oc.format),
                                        voxel_size_zyx=voxel, overwrite=overwrite))
    for kind in [k for k in keys if "Projection" in k]:
        outputs.append(write_tiff(np.asarray(small[kind]), name(kind, "tif"), overwrite=overwrite,
                                  pixel_size_um=projection_pixel_size(kind[:2], voxel)))
    if cc.segment:
        outputs.append(write_tiff(np.asarray(small["xy_mask"]), name("xyMask", "tif"), overwrite=overwrite))
        outputs.append(write_tiff(np.asarray(small["xz_mask"]), name("xzMask", "tif"), overwrite=overwrite))
        record["segmentation"]["foreground_fraction"] = float(small["foreground"]) / float(np.prod(raw.shape))
    outputs.append(write_tiff(dead_mask.astype(np.uint8), name("deadPixelMask", "tif"), overwrite=overwrite))
    timings["write_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    record["timings"] = timings
    record["input_bytes"] = view.nbytes
    record["mb_per_s"] = view.nbytes / 1e6 / timings["total_s"]
    record["outputs"] = relative_outputs(name("correction", "json"), outputs)
    record["fingerprint"] = _fingerprint(view, config)
    write_json(name("correction", "json"), record)
    return record


def projection_pixel_size(kind: str, voxel_size_zyx) -> tuple[float, float] | None:
    """The (row, column) pixel size in µm of a max projection of a (Z, Y, X) volume.

    Parameters
    ----------
    kind : {'xy', 'xz', 'yz'}
        The projection (:data:`PROJECTION_AXES`): xy is (Y, X), xz is (Z, X)
        (z step down, x pixel across), yz is (Z, Y).
    voxel_size_zyx : (z, y, x) in µm, or None

    Returns
    -------
    (float, float) or None
        None where the voxel size is unknown.
    """
    if voxel_size_zyx is None:
        return None
    kept = [v for axis, v in enumerate(voxel_size_zyx) if axis != PROJECTION_AXES[kind]]
    return float(kept[0]), float(kept[1])


def oriented_raw(view: CameraView, orientation: dict, chunks=None) -> da.Array:
    """The raw volume of ``view`` rotated, flipped and cropped, lazily (Z, Y, X).

    Parameters
    ----------
    orientation : dict
        ``rotation`` (degrees), ``flip_h``, ``flip_v``, ``crop`` ((y0, y1, x0, x1) or None),
        as :func:`~isoview_dask.correct.orient.orient` takes them.
    chunks : (Z, Y, X), optional
        Dask chunk shape of the result (planes, pixels); without rotation or
        crop the file is read in these blocks directly (no rechunk).
    """
    rotation, crop = orientation["rotation"], orientation["crop"]
    if chunks is None or rotation or crop:
        volume = orient(view.open(), rotation, orientation["flip_h"], orientation["flip_v"], crop)
        return volume if chunks is None else volume.rechunk(chunks)
    return orient(view.open(chunks=chunks), 0, orientation["flip_h"], orientation["flip_v"], None)


def corrected_volume(raw, dead_mask, background) -> da.Array:
    """The corrected volume: dead pixels repaired (``dead_mask`` (Y, X), or None for no repair), then the
    background (a level in counts, or a dark frame (Y, X)) subtracted; lazy, (Z, Y, X), ``raw``'s dtype.

    A background of whole counts is subtracted in the repair's own pass (one output array per block).
    """
    dark = exact_dark_frame(raw.dtype, raw.shape[1:], background)
    if dead_mask is not None and dark is not None:
        return correct_dead_pixels(raw, dead_mask, dark=dark)
    repaired = raw if dead_mask is None else correct_dead_pixels(raw, dead_mask)
    return subtract_background(repaired, background)


def corrected_from_raw(record: dict, chunks=None) -> da.Array:
    """The corrected volume of a correction that did not store it, recomputed lazily from the raw input.

    The values equal those the correction would have written, bit for bit:
    the same raw file, orientation, dead-pixel repair and background
    subtraction, from what the correction record (``<stem>.correction.json``)
    saved (``output.store_corrected = false``).

    Parameters
    ----------
    record : dict
        The correction record.
    chunks : (Z, Y, X), optional
        Dask chunk shape of the result.

    Returns
    -------
    dask.array.Array, uint16, shape (Z, Y, X)

    Raises
    ------
    MissingInputError
        The raw file (or dark frame) is gone, or its size or modification
        time differs from what the correction read.
    """
    from .fuse import MissingInputError
    source = record.get("raw_input")
    if not source:
        raise MissingInputError("this correction record neither stored its volume nor names its raw input")
    saved = source["files"]
    try:
        now = file_fingerprint(*[f["path"] for f in saved])
    except FileNotFoundError as exc:
        raise MissingInputError(f"{exc.filename}: raw input of an unstored corrected volume is missing; "
                                "restore it, or correct again with output.store_corrected = true") from None
    if now != saved:
        changed = [f["path"] for f, g in zip(saved, now) if f != g]
        raise MissingInputError(f"{', '.join(changed)}: changed since the correction read it (size or "
                                "modification time); correct the view again")
    view = CameraView.from_dict({**record["view"], "path": source["path"], "background": source["background"]},
                                allow_truncated=bool(source.get("allow_truncated")))
    orientation = record["orientation"]
    raw = oriented_raw(view, orientation, chunks)
    if list(raw.shape) != list(record["shape_zyx"]):
        raise MissingInputError(f"{view.path}: now reads as {list(raw.shape)}, the correction read "
                                f"{record['shape_zyx']}")
    if record["background"]["source"] == "dark_frame":
        background = orient(view.open_background(), orientation["rotation"], orientation["flip_h"],
                            orientation["flip_v"], orientation["crop"])
    else:
        background = record["background"]["level"]
    dead = record["dead_pixels"]
    dead_mask = None
    if not dead.get("disabled"):
        dead_mask = np.zeros(raw.shape[1:], bool)
        positions = np.asarray(dead.get("positions_yx") or [], dtype=np.intp).reshape(-1, 2)
        dead_mask[positions[:, 0], positions[:, 1]] = True
    return corrected_volume(raw, dead_mask, background)


def _fingerprint(view: CameraView, config: ProcessingConfig) -> str:
    return fingerprint(file_fingerprint(view.path, view.background_path), _parameters(config, view.camera))


def correction_record_path(view: CameraView, out: str | Path) -> Path:
    """The statistics JSON (completion record) of ``view``'s correction under ``out``."""
    return output_path(out, view.specimen, view.timepoint, view.camera, view.channel, "correction", "json")


def correction_job(view: CameraView, out: str | Path, config: ProcessingConfig) -> Job:
    """The :class:`~isoview_dask.pipeline.executor.Job` correcting ``view`` (skipped when complete).

    Its key is the record path (what fusion jobs wait for).
    """
    record_path = correction_record_path(view, out)

    def complete() -> bool:
        return bool(view.ok and not config.output.overwrite and completed(record_path, _fingerprint(view, config)))

    def run() -> JobResult:
        if complete():
            log.info("complete, skipping: %s", record_path)
            return JobResult("skipped", str(record_path))
        try:
            record = job_work(int(view.nbytes or 0), correct_view, view, out, config, progress=False,
                              label=f"correction of {view.path.name}", plane_bytes=_plane_bytes(view))
        except job_errors() as exc:
            log.error("correction of %s failed: %s", view.path, exc)
            return JobResult("failed", str(view.path), message=str(exc))
        return JobResult("written", str(record_path), input_bytes=record["input_bytes"])

    return Job(str(record_path), "correct", run, nbytes=int(view.nbytes or 0), complete=complete)


def _plane_bytes(view: CameraView) -> int | None:
    """Raw bytes of one plane of ``view`` (its graphs stream plane slabs), or None when its shape is unknown."""
    if not view.shape or not view.nbytes or int(view.shape[0]) <= 0:
        return None
    return int(view.nbytes) // int(view.shape[0])


def correction_jobs(views: Iterable[CameraView], out: str | Path, config: ProcessingConfig) -> Iterator[Job]:
    """One :func:`correction_job` per view, lazily, in the given order."""
    for view in views:
        yield correction_job(view, out, config)


def correct_dataset(source: str | Path | Dataset, out: str | Path, config: ProcessingConfig | None = None,
                    *, progress: bool = True, **flags) -> StageSummary:
    """Correct every selected camera view of a recording (resumable).

    Parameters
    ----------
    source : path or Dataset
        Raw recording in either layout.
    out : path
        Output root.
    config : ProcessingConfig, optional
        Options; ``flags`` (e.g. ``input_cameras=[0, 1]``,
        ``correction_segment_threshold=0.3``) override it.

    Returns
    -------
    StageSummary
        Views written, skipped (complete, same inputs and parameters) and
        failed (with the reason); a failing view never stops the others.
    """
    config = ProcessingConfig.from_flags(config, **flags) if flags else (config or ProcessingConfig())
    dataset = source if isinstance(source, Dataset) else open_dataset(
        source, allow_truncated=config.input.allow_truncated)
    views = selected_views(dataset, config)
    summary = StageSummary("correct")
    run_jobs(correction_jobs(views, out, config), {"correct": summary}, progress=progress, total=len(views),
             label="correct", rate_stages=("correct",))
    from ..provenance import record_run  # run record (isoview_dask.provenance)
    record_run("correct", out, summary, config=config, source=dataset)
    return summary
