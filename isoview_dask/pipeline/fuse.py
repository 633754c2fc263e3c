"""The fusion stage (the MATLAB clusterMF) wired to files.

For every timepoint and opposing camera pair (0+1, 2+3 by default) whose
corrected volumes are complete (their ``.correction.json`` records exist),
bring the second camera into the first one's orientation, register it
(sub-pixel offset and rotation on a mid-specimen slab), match intensities in
the overlap of both foreground masks, blend the two along z, and write the
fused volume (sharded zarr), a parameters JSON beside it (the contract other
tools read), and diagnostic PNGs. Estimation uses reductions (coordinate
masks, slab images); the blend is one blockwise graph written shard by shard.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import ProcessingConfig
from ..correct import coordinate_masks
from ..errors import IsoviewError
from ..fuse import (apply_inplane_transform, apply_inplane_transform_numpy, fuse_views, geometric_transition, intensity_factor,
                    register_pair, transition_plane_map, view_transform)
from ..fuse.transforms import inverse_transform
from ..io import open_volume
from ..io.zarr import CodecSpec, prepare_zarr
from .common import (StageSummary, completed, fingerprint, output_path, relative_outputs, scan_records,
                     write_json)

log = logging.getLogger(__name__)

RECORD_KIND = "correction"


class MissingInputError(IsoviewError, FileNotFoundError):
    """A corrected volume a fusion needs is absent or incomplete."""


@dataclass(frozen=True)
class CorrectedView:
    """One complete corrected camera volume (from its completion record)."""

    specimen: int
    timepoint: int
    camera: int
    channel: int
    record_path: Path
    record: dict

    @property
    def root(self) -> Path:
        return self.record_path.parents[2]

    def path(self, kind: str = "", fmt: str | None = None) -> Path:
        fmt = fmt or self.record.get("output_format", "zarr")
        return output_path(self.root, self.specimen, self.timepoint, self.camera, self.channel, kind, fmt)

    @property
    def voxel_size_um(self):
        return self.record.get("voxel_size_um_zyx")


def find_corrected(root: str | Path) -> dict[tuple[int, int, int, int], CorrectedView]:
    """Complete corrected views under ``root``, keyed by (specimen, timepoint, camera, channel)."""
    root = Path(root)
    if not root.is_dir():
        from ..errors import InputNotFoundError
        raise InputNotFoundError(f"{root}: corrected-output folder does not exist")
    return {(s, t, cams[0], ch): CorrectedView(s, t, cams[0], ch, record_path=path, record=record)
            for (s, t, cams, ch), (path, record) in scan_records(root, "correction.json").items()
            if len(cams) == 1}


def _open_pair(ref: CorrectedView, mov: CorrectedView):
    for view in (ref, mov):
        if not view.record.get("segmented", True):
            raise MissingInputError(f"{view.record_path}: was corrected without segmentation; fusion needs masks")
    reference = open_volume(ref.path())
    moving = open_volume(mov.path())
    mask_ref = open_volume(ref.path("segmentationMask")).astype(bool)
    mask_mov = open_volume(mov.path("segmentationMask")).astype(bool)
    if reference.shape != moving.shape:
        raise IsoviewError(f"{ref.path()} and {mov.path()}: shapes {reference.shape} and {moving.shape} differ; "
                           "opposing cameras must record the same planes and frame")
    return reference, moving, mask_ref, mask_mov


def _content_transform(offset_yx, rotation_deg: float) -> tuple[list[float], float]:
    """Express the sampling convention as the motion applied to the moving camera's content.

    Sampling F at p = R(θ)(q - c) + c + t moves content at p to
    q = R(-θ)(p - c) + c - R(-θ) t: a rotation by -θ and a displacement -R(-θ) t.
    """
    displacement, phi = inverse_transform(offset_yx, rotation_deg)
    return [float(displacement[0]), float(displacement[1])], phi


@dataclass
class PairEstimate:
    """Everything fusion estimates for one pair before blending (small values and one 2-D map).

    Attributes
    ----------
    offset_yx, rotation_deg : sampling convention of :mod:`isoview_dask.fuse.transforms`
    confidence : float
        Registration confidence in [0, 1].
    intensity : IntensityResult or None
    transition_yx : ndarray (Y, X)
        Transition plane per pixel (z index).
    timings : dict
    """

    offset_yx: tuple[float, float]
    rotation_deg: float
    confidence: float
    method: str
    intensity: object
    transition_yx: np.ndarray
    timings: dict

    def summary(self) -> dict:
        finite = self.transition_yx[np.isfinite(self.transition_yx)]
        return {
            "sampling_offset_yx_px": [float(v) for v in self.offset_yx],
            "sampling_rotation_deg": float(self.rotation_deg),
            "registration_confidence": float(self.confidence),
            "intensity_ratio_moving_over_reference": self.intensity.ratio if self.intensity else None,
            "transition_plane": {"min": float(finite.min()), "median": float(np.median(finite)),
                                 "max": float(finite.max())} if finite.size else None,
        }


def _prepared(ref: CorrectedView, mov: CorrectedView, fc):
    reference, moving, mask_ref, mask_mov = _open_pair(ref, mov)
    flips = dict(flip_h=fc.flip_h, flip_v=fc.flip_v, rotation=fc.rotation, flip_z=fc.flip_z)
    moving_f, mask_mov_f = view_transform(moving, **flips), view_transform(mask_mov, **flips)
    if moving_f.shape != reference.shape:
        raise IsoviewError(f"{mov.path()}: after rotation by {fc.rotation} degrees its frame "
                           f"{moving_f.shape[1:]} no longer matches {reference.shape[1:]}")
    return reference, moving_f, mask_ref, mask_mov_f


def _aligned(moving_f, mask_mov_f, offset, rotation):
    """The moving camera and its mask resampled onto the reference grid (lazy; for the API and tests)."""
    moving_a = apply_inplane_transform(moving_f, offset, rotation, cval=np.nan)
    mask_mov_a = apply_inplane_transform(mask_mov_f.astype(np.float32), offset, rotation, order=0) > 0.5
    return moving_a, mask_mov_a


def estimate_pair(ref: CorrectedView, mov: CorrectedView, config: ProcessingConfig | None = None, *,
                  progress: bool = True, fixed: dict | None = None) -> PairEstimate:
    """Estimate the registration, intensity factor and transition-plane map of one pair.

    Only reductions are computed (a mid-specimen slab, coordinate masks).
    ``fixed`` may supply any of ``sampling_offset_yx_px`` with
    ``sampling_rotation_deg``, ``intensity_ratio_moving_over_reference`` and
    ``transition_yx`` (a (Y, X) map) or ``transition_plane`` (one plane);
    those are used instead of being estimated (time-smoothed parameters).
    """
    from ..cluster import compute
    from ..fuse import IntensityResult

    config = config or ProcessingConfig()
    fc = config.fusion
    fixed = fixed or {}
    t0 = time.perf_counter()
    reference, moving_f, mask_ref, mask_mov_f = _prepared(ref, mov, fc)
    n_planes = reference.shape[0]
    if "sampling_offset_yx_px" in fixed:
        offset = tuple(float(v) for v in fixed["sampling_offset_yx_px"])
        rotation = float(fixed.get("sampling_rotation_deg", 0.0))
        confidence, method = float(fixed.get("registration_confidence", float("nan"))), "fixed"
    else:
        registration = register_pair(reference, moving_f, mask_ref=mask_ref, mask_mov=mask_mov_f,
                                     search_px=fc.search_px, max_rotation_deg=fc.max_rotation_deg,
                                     slab_planes=fc.registration_slab_planes)
        offset, rotation = registration.offset_yx, registration.rotation_deg
        confidence, method = registration.confidence, registration.method
    timings = {"registration_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    if "transition_yx" in fixed:
        transition = np.asarray(fixed["transition_yx"], dtype=np.float64)
    elif "transition_plane" in fixed:
        transition = np.full(reference.shape[1:], float(fixed["transition_plane"]))
    else:
        depth_ref, depth_mov = compute(coordinate_masks(mask_ref)[0], coordinate_masks(mask_mov_f)[0],
                                       progress=progress, label=f"{_label(ref, mov)}: depth maps")
        # Every plane moves alike, so the aligned mask's depth map is the moving depth map
        # resampled (nearest neighbour, as the mask itself would be): no volume is resampled.
        depth_mov = apply_inplane_transform_numpy(depth_mov, offset, rotation, order=0, cval=np.nan)
        transition = transition_plane_map(depth_ref, depth_mov, n_planes,
                                          median_filter_range=fc.median_filter_range,
                                          smoothing_sigma=fc.transition_smoothing_px, rim_px=fc.mask_padding,
                                          mask_mode=fc.mask_fusion_mode,
                                          min_object_fraction=fc.mask_min_object_size, precise=fc.precise_gauss)
        if fc.type == "geometric":
            transition = np.full(transition.shape, geometric_transition(depth_ref, depth_mov, n_planes))
    if not fc.intensity_correction:
        intensity = None
    elif fixed.get("intensity_ratio_moving_over_reference") is not None:
        intensity = IntensityResult.from_ratio(float(fixed["intensity_ratio_moving_over_reference"]))
    else:
        intensity = intensity_factor(reference, moving_f, mask_ref, mask_mov_f, transition_yx=transition,
                                     moving_transform=(offset, rotation))
    timings["estimation_s"] = time.perf_counter() - t1
    return PairEstimate(tuple(offset), float(rotation), float(confidence), method, intensity, transition, timings)


def fuse_pair(ref: CorrectedView, mov: CorrectedView, out: str | Path, config: ProcessingConfig | None = None,
              *, progress: bool = True, fixed: dict | None = None) -> dict:
    """Register, intensity-match and blend one opposing camera pair; write outputs.

    Parameters
    ----------
    ref, mov : CorrectedView
        The reference camera (its near side is low z) and the opposing one.
    out : path
        Output root; ``<out>/SPM##/TM######/SPM##_TM######_CM<a>_CM<b>_CHN##.fusedStack.zarr``.
    fixed : dict, optional
        Parameters to use instead of estimating them (see :func:`estimate_pair`).

    Returns
    -------
    dict
        The parameters record (also written beside the fused volume).
    """
    from ..cluster import compute

    config = config or ProcessingConfig()
    fc, oc = config.fusion, config.output
    t0 = time.perf_counter()
    estimate = estimate_pair(ref, mov, config, progress=progress, fixed=fixed)
    timings = dict(estimate.timings)
    reference, moving_f, _, _ = _prepared(ref, mov, fc)
    n_planes = reference.shape[0]
    transition, intensity = estimate.transition_yx, estimate.intensity

    # Apply big: alignment and blend in one blockwise pass written shard by shard, plus
    # projections for the figures.
    t2 = time.perf_counter()
    blending_range = fc.blending_range[1]
    fused = fuse_views(reference, moving_f, estimate.offset_yx, estimate.rotation_deg, transition, blending_range,
                       fc.type, intensity, profile=fc.blending_profile, dtype=reference.dtype,
                       slab_planes=fc.slab_size_cameras or None)
    target = output_path(out, ref.specimen, ref.timepoint, [ref.camera, mov.camera], ref.channel, "fusedStack")
    pending = prepare_zarr(fused, target, codec=CodecSpec.parse(oc.codec, oc.level, oc.shuffle), chunks=oc.chunks,
                           shards=oc.shards or (), voxel_size_zyx=ref.voxel_size_um, overwrite=True,
                           pyramid_levels=oc.pyramid_levels, name=target.stem)
    small = {"fused_xy": fused.max(axis=0), "fused_xz": fused.max(axis=1)}
    if fc.diagnostics:
        small.update(reference_xy=reference.max(axis=0), moving_xy=moving_f.max(axis=0))
    keys = list(small)
    try:
        results = compute(pending.delayed, *[small[k] for k in keys], progress=progress,
                          label=f"{_label(ref, mov)}: fusing and writing")
    except BaseException:
        pending.abort()
        raise
    pending.commit()
    images = dict(zip(keys, results[1:]))
    if fc.diagnostics:  # the overlay shows the moving projection moved as its planes were
        images["aligned_xy"] = apply_inplane_transform_numpy(images["moving_xy"], estimate.offset_yx,
                                                             estimate.rotation_deg, order=1, cval=0.0)
    timings["blend_write_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0

    applied_offset, applied_rotation = _content_transform(estimate.offset_yx, estimate.rotation_deg)
    params = {
        "package_version": __version__,
        "reference_camera": ref.camera, "moving_camera": mov.camera, "channel": ref.channel,
        "timepoint": ref.timepoint, "specimen": ref.specimen,
        "view_transform": {"flip_h": fc.flip_h, "flip_v": fc.flip_v, "rotation": fc.rotation,
                           "flip_z": fc.flip_z},
        "offset_yx_px": applied_offset,
        "rotation_deg": applied_rotation,
        "transform_convention": "after its flips, the moving camera's content at (y, x) moves to "
                                "R(rotation_deg)((y, x) - c) + c + offset_yx_px, c the frame centre, "
                                "R = [[cos, -sin], [sin, cos]] on (y, x); positive dy moves content to larger y",
        **estimate.summary(),
        "registration_method": estimate.method,
        "parameters_fixed": sorted(fixed) if fixed else [],
        "intensity_factor": intensity.factor if intensity else 1.0,
        "intensity_scaled_camera": (ref.camera if intensity.scaled_camera == "reference" else mov.camera)
        if intensity else None,
        "blending_method": fc.type,
        "blending_range": blending_range,
        "blending_profile": fc.blending_profile,
        "shape_zyx": list(reference.shape),
        "voxel_size_um_zyx": ref.voxel_size_um,
        "inputs": [str(ref.path()), str(mov.path())],
        "timings": timings,
        "input_bytes": int(2 * reference.nbytes),
    }
    outputs = [target]
    if fc.diagnostics:
        from .diagnostics import fusion_figures
        outputs += fusion_figures(target.with_suffix(""), images, transition, n_planes, blending_range,
                                  fc.blending_profile, params)
    params["outputs"] = relative_outputs(target.with_suffix(".json"), outputs)
    params["fingerprint"] = _fingerprint(ref, mov, config, fixed)
    write_json(target.with_suffix(".json"), params)
    return params


def _label(ref: CorrectedView, mov: CorrectedView) -> str:
    return f"TM{ref.timepoint:06d} CM{ref.camera:02d}+CM{mov.camera:02d} CHN{ref.channel:02d}"


def _fingerprint(ref: CorrectedView, mov: CorrectedView, config: ProcessingConfig, fixed: dict | None = None) -> str:
    inputs = [{"record": str(v.record_path), "fingerprint": v.record.get("fingerprint")} for v in (ref, mov)]
    from .timelapse import TEMPORAL_FIELDS
    import hashlib
    # Temporal options shape which parameters are fixed, not how a fusion runs with them.
    fusion = {k: v for k, v in config.fusion.to_dict().items() if k not in TEMPORAL_FIELDS}
    parameters = {"fusion": fusion,
                  "output": {k: v for k, v in config.output.to_dict().items() if k != "overwrite"},
                  "fixed": {k: (hashlib.sha256(np.ascontiguousarray(v, dtype=np.float64).tobytes()).hexdigest()
                                if k == "transition_yx" else v)
                            for k, v in sorted((fixed or {}).items())}}
    return fingerprint(inputs, parameters)


def fuse_dataset(corrected: str | Path, out: str | Path | None = None, config: ProcessingConfig | None = None,
                 *, progress: bool = True, fixed_parameters=None, **flags) -> StageSummary:
    """Fuse every opposing camera pair of every timepoint whose corrected volumes are complete.

    Parameters
    ----------
    corrected : path
        Output root of the correction stage.
    out : path, optional
        Where fused volumes go (default: beside the corrected ones).
    config : ProcessingConfig, optional
        ``fusion`` and ``output`` sections are used; ``input.timepoints`` and
        ``input.specimens`` select; ``flags`` override (e.g. ``fusion_type="average"``).
    fixed_parameters : callable, optional
        ``fixed_parameters(specimen, timepoint, (a, b), channel)`` returns a dict
        of parameters to use instead of estimating them (see
        :func:`estimate_pair`), or None: how time-smoothed values enter.

    Returns
    -------
    StageSummary
        Fused volumes written, skipped (complete with the same inputs and
        parameters) and failed (a pair with a missing camera, a failed
        registration...); one failure never stops the others.
    """
    config = ProcessingConfig.from_flags(config, **flags) if flags else (config or ProcessingConfig())
    out = Path(out) if out is not None else Path(corrected)
    views = find_corrected(corrected)
    summary = StageSummary("fuse")
    start = time.perf_counter()
    sel = config.input
    groups = sorted({(s, t, ch) for s, t, _, ch in views
                     if (sel.specimens is None or s in sel.specimens)
                     and (sel.timepoints is None or t in sel.timepoints)
                     and (sel.channels is None or ch in sel.channels)})
    for specimen, timepoint, channel in groups:
        for a, b in config.fusion.camera_pairs:
            ref, mov = views.get((specimen, timepoint, a, channel)), views.get((specimen, timepoint, b, channel))
            if ref is None and mov is None:
                continue
            target = output_path(out, specimen, timepoint, [a, b], channel, "fusedStack")
            if ref is None or mov is None:
                missing = a if ref is None else b
                summary.failed[str(target)] = (f"camera {missing} has no complete corrected volume for timepoint "
                                               f"{timepoint}, channel {channel}")
                log.error("%s: %s", target, summary.failed[str(target)])
                continue
            record = target.with_suffix(".json")
            fixed = fixed_parameters(specimen, timepoint, (a, b), channel) if fixed_parameters else None
            if not config.output.overwrite and completed(record, _fingerprint(ref, mov, config, fixed)):
                summary.skipped.append(str(target))
                continue
            try:
                params = fuse_pair(ref, mov, out, config, progress=progress, fixed=fixed)
            except (IsoviewError, ValueError, OSError) as exc:
                summary.failed[str(target)] = str(exc)
                log.error("fusion of %s failed: %s", target, exc)
                continue
            summary.written.append(str(target))
            summary.input_bytes += params["input_bytes"]
    summary.seconds = time.perf_counter() - start
    from ..provenance import record_run  # run record (isoview_dask.provenance)
    record_run("fuse", out, summary, config=config, source=corrected, fixed_parameters=fixed_parameters)
    return summary
