"""The fusion stage (the MATLAB clusterMF) wired to files.

For every timepoint and opposing camera pair (0+1, 2+3 by default) whose
corrected volumes are complete (their ``.correction.json`` records exist),
bring the second camera into the first one's orientation, register it
(sub-pixel offset and rotation on a mid-specimen slab), match intensities in
the overlap of both foreground masks, blend the two along z, and write the
fused volume (sharded zarr), a parameters JSON beside it (the contract other
tools read), and diagnostic PNGs. Estimation uses reductions (coordinate
masks, slab images); the blend is one blockwise graph written shard by shard.

Illumination channels (``fusion.channel_pairs``, the channel half of the
MATLAB ``blendingRange = [channel, camera]``): where each camera records one
label twice, as channel ``a`` lit from the low-x side of its frame and channel
``b`` from the high-x side, the two channels of every camera are blended
along x first (:class:`ChannelFusedView`): the transition column per (z, y)
comes from the two channels' xz coordinate masks, channel b is matched in
brightness to channel a on that transition, the weights ramp over the
channel blending range, and the foreground mask is the union of the two.
The channel-fused cameras are never written on their own when they belong
to a camera pair: they enter the camera fusion above lazily (each task
blends the two channels' blocks before aligning and blending the cameras),
so no intermediate volume is stored. Outputs name both channels::

    SPM00_TM000000_CM00_CM01_CHN00_CHN01.fusedStack.zarr   camera pair 0+1, channels 0 and 1
    SPM00_TM000000_CM00_CHN00_CHN01.fusedStack.zarr        camera 0 in no camera pair: its channels alone

with a parameters JSON beside each (``channels``, ``channel_blending_range``
and, per camera, ``channel_fusion``: transition-column statistics, the
channel intensity factor). Channels of a pair are fused only as that pair,
not one by one. A camera that belongs to no configured camera pair (e.g.
``fusion.camera_pairs = []``) is channel-fused on its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .. import __version__
from ..config import ProcessingConfig
from ..correct import coordinate_masks
from ..errors import IsoviewError, RegistrationError
from ..fuse import (IntensityResult, SheetRegistration, apply_inplane_transform, apply_inplane_transform_numpy,
                    apply_sheet_transform, apply_sheet_transform_numpy, blend, blend_by_sharpness, blend_channels,
                    channel_intensity_factor, fuse_views, geometric_transition, intensity_factor, registration_task,
                    sheet_registration_task, transition_plane_map, view_transform)
from ..fuse.transforms import inverse_transform
from ..io import open_volume, volume_format
from ..io.zarr import STORED, CodecSpec, prepare_zarr
from .executor import Job, JobResult, job_errors, job_work, run_jobs
from .common import (MASK_KIND, StageSummary, completed, fingerprint, output_path, relative_outputs,
                     scan_records, segmentation_mask_path, write_json)

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
        """Path of this view's output ``kind`` (``""``: the corrected volume); the segmentation mask
        (``"segmentationMask"``) is found in either layout (:func:`~.common.segmentation_mask_path`)."""
        fmt = fmt or self.record.get("output_format", "zarr")
        if kind == MASK_KIND:
            return segmentation_mask_path(self.root, self.specimen, self.timepoint, self.camera, self.channel, fmt)
        return output_path(self.root, self.specimen, self.timepoint, self.camera, self.channel, kind, fmt)

    @property
    def voxel_size_um(self):
        return self.record.get("voxel_size_um_zyx")

    @property
    def channels(self) -> tuple[int, ...]:
        return (self.channel,)

    @property
    def name(self) -> str:
        return str(self.path())

    @property
    def volume_stored(self) -> bool:
        """Whether the corrected volume is on disk (else it is recomputed from the raw input)."""
        return bool(self.record.get("volume_stored", True))

    def inputs(self) -> list[str]:
        """The corrected volume this view reads (its raw file when the volume was not stored)."""
        return [str(self.path()) if self.volume_stored else self.record["raw_input"]["path"]]

    def fingerprint_inputs(self) -> list[dict]:
        return [{"record": str(self.record_path), "fingerprint": self.record.get("fingerprint")}]

    def prepare(self, config: ProcessingConfig | None = None, *, progress: bool = True) -> "CorrectedView":
        """Nothing to estimate for a corrected view (see :meth:`ChannelFusedView.prepare`)."""
        return self

    def open_arrays(self, *, slabs: bool = False):
        """The corrected volume and its foreground mask (bool), lazily, (Z, Y, X).

        ``slabs``: for estimates that read a few planes, zarr volumes are
        opened in blocks of one inner chunk along z (:data:`~isoview_dask.io.zarr.STORED`),
        so that a slab behind a flip or a cast reads its planes' chunks, not whole shards.
        A volume the correction did not store (``output.store_corrected = false``) is
        recomputed from the raw file (:func:`~isoview_dask.pipeline.correct.corrected_from_raw`)
        in the mask's blocks, as part of the caller's graph.
        """
        if not self.record.get("segmented", True):
            raise MissingInputError(f"{self.record_path}: was corrected without segmentation; fusion needs masks")
        paths = self.path(), self.path(MASK_KIND)
        # (the mask of a zarr image is a label image inside it: ``<image>.zarr/labels/<name>``, no suffix)
        chunks = [STORED if slabs and volume_format(p) == "zarr" else None for p in paths]
        mask = open_volume(paths[1], chunks=chunks[1])
        if self.volume_stored:
            volume = open_volume(paths[0], chunks=chunks[0])
        else:  # in the mask's blocks: the stored volume's chunking
            from .correct import corrected_from_raw
            volume = corrected_from_raw(self.record, chunks=tuple(c[0] for c in mask.chunks))
        return volume, mask.astype(bool)


@dataclass
class ChannelEstimate:
    """What channel fusion estimates for one camera's two illumination channels.

    Attributes
    ----------
    channels : (a, b)
        The channel lit from low x and the one lit from high x.
    transition_zy : ndarray (Z, Y) or float
        Transition column per plane and row (fractional column index), or
        one column for the whole volume (``fusion.type = 'geometric'``).
    intensity : IntensityResult or None
        ``ratio = b / a``; 'reference' scales channel a, 'moving' channel b
        (measured after the sheet registration).
    mean_column : (float, float)
        Mean foreground column of each channel (NaN without foreground). The
        channel lit from low x sees more of the specimen there, so a's mean
        is expected to be the smaller; ``orientation_consistent`` says so.
    timings : dict
    sheet : SheetRegistration
        Channel b's light-sheet offset and tilt onto channel a
        (:mod:`isoview_dask.fuse.sheets`); method 'off' when not registered.
    voxel_size_um : (z, y, x) or None
        Gives the physical tilt in :meth:`summary`.
    """

    channels: tuple[int, int]
    transition_zy: object
    intensity: IntensityResult | None
    mean_column: tuple[float, float]
    timings: dict
    sheet: SheetRegistration = field(default_factory=SheetRegistration)
    voxel_size_um: tuple | None = None

    @property
    def orientation_consistent(self) -> bool | None:
        a, b = self.mean_column
        return None if not (np.isfinite(a) and np.isfinite(b)) else bool(a <= b)

    def summary(self) -> dict:
        columns = np.atleast_1d(np.asarray(self.transition_zy, dtype=np.float64))
        finite = columns[np.isfinite(columns)]
        intensity = self.intensity
        return {
            "channels": list(self.channels),
            "transition_column": {"min": float(finite.min()), "median": float(np.median(finite)),
                                  "max": float(finite.max())} if finite.size else None,
            "intensity_ratio_b_over_a": intensity.ratio if intensity else None,
            "intensity_factor": intensity.factor if intensity else 1.0,
            "intensity_scaled_channel": (self.channels[0] if intensity.scaled_camera == "reference"
                                         else self.channels[1]) if intensity else None,
            "mean_foreground_column": [None if not np.isfinite(v) else float(v) for v in self.mean_column],
            "orientation_consistent": self.orientation_consistent,
            **self.sheet.summary(self.voxel_size_um),
        }


def estimate_channels(view_a: CorrectedView, view_b: CorrectedView, config: ProcessingConfig | None = None, *,
                      progress: bool = True, sheet: SheetRegistration | None = None) -> ChannelEstimate:
    """Estimate the transition column map and intensity ratio of one camera's two illumination channels.

    Parameters
    ----------
    view_a, view_b : CorrectedView
        The same camera and timepoint; ``view_a`` is the channel lit from
        the low-x side of the frame.
    config : ProcessingConfig, optional
        ``fusion``: ``type`` ('adaptive': a (Z, Y) map of columns;
        'geometric': one column; 'average': the mean of the channels, the
        map is still reported), the transition-map options shared with the
        camera fusion (``mask_fusion_mode``, ``mask_padding``,
        ``mask_min_object_size``, ``median_filter_range``,
        ``transition_smoothing_px``, ``precise_gauss``) and
        ``intensity_correction``; the sheet registration
        (``channel_registration``, ``channel_search_planes``,
        ``channel_max_rotation_deg``, ``channel_registration_columns``,
        ``channel_min_confidence``).
    sheet : SheetRegistration, optional
        Use this sheet registration instead of fitting one (e.g. the
        time-smoothed values of a two-pass run).

    Returns
    -------
    ChannelEstimate

    Notes
    -----
    Only reductions are computed: the two xz coordinate masks (mean
    foreground column per (z, y)), the mean of a few columns around the
    transition for the sheet registration and, for the intensity ratio, a
    slab one column either side of the transition. When channel b's sheet
    is moved, its column map moves with it (nearest plane) before the
    transition map is formed.
    """
    from ..cluster import compute

    config = config or ProcessingConfig()
    fc = config.fusion
    t0 = time.perf_counter()
    volume_a, mask_a = view_a.open_arrays()
    volume_b, mask_b = view_b.open_arrays()
    if volume_a.shape != volume_b.shape:
        raise IsoviewError(f"{view_a.name} and {view_b.name}: shapes {volume_a.shape} and {volume_b.shape} differ; "
                           "two illumination channels of one camera must record the same planes and frame")
    n_columns = volume_a.shape[2]
    label = f"TM{view_a.timepoint:06d} CM{view_a.camera:02d} CHN{view_a.channel:02d}+CHN{view_b.channel:02d}"
    # the correction stage saved each channel's column map (xzMask.tif); compute only what is missing
    saved = [_saved_column_map(view_a), _saved_column_map(view_b)]
    missing = [coordinate_masks(m)[1] for m, done in zip((mask_a, mask_b), saved) if done is None]
    computed = iter(compute(*missing, progress=progress, label=f"{label}: column maps",
                                   estimate=True) if missing else ())
    xz_a, xz_b = (done if done is not None else next(computed) for done in saved)

    if fc.channel_transition_column is not None and not fc.channel_transition_column <= n_columns - 1:
        raise IsoviewError(f"fusion.channel_transition_column {fc.channel_transition_column:g} lies beyond the "
                           f"last column ({n_columns - 1}) of {view_a.name}")

    def transition_map(xz_b):  # the camera fusion's transition map, with x for z: (Z, Y) maps of mean column
        if fc.channel_transition_column is not None:  # given by the user
            return float(fc.channel_transition_column)
        if fc.type == "geometric":
            return geometric_transition(xz_a, xz_b, n_columns)
        return transition_plane_map(xz_a, xz_b, n_columns, median_filter_range=fc.median_filter_range,
                                    smoothing_sigma=fc.transition_smoothing_px, rim_px=fc.mask_padding,
                                    mask_mode=fc.mask_fusion_mode, min_object_fraction=fc.mask_min_object_size,
                                    precise=fc.precise_gauss)

    transition = transition_map(xz_b)
    t1 = time.perf_counter()
    if sheet is None and fc.channel_registration:
        z_um, y_um, _ = view_a.voxel_size_um
        task = sheet_registration_task(volume_a, volume_b, transition, weight=np.isfinite(xz_a) & np.isfinite(xz_b),
                                       half_width=fc.channel_registration_columns,
                                       search_planes=fc.channel_search_planes,
                                       max_rotation_deg=fc.channel_max_rotation_deg,
                                       spacing_ratio=z_um / y_um, min_confidence=fc.channel_min_confidence)
        sheet = compute(task, progress=progress, label=f"{label}: sheet registration", estimate=True)[0]
        if sheet.method == "fallback":
            log.warning("%s: channel sheet registration not applied (confidence %.2f%s); channel b is not moved",
                        label, sheet.confidence, f", {sheet.details['rejected']}" if sheet.details.get("rejected")
                        else "")
    sheet = sheet or SheetRegistration()
    sheet_s = time.perf_counter() - t1
    if not sheet.is_identity:  # b's column map and volume move with its sheet
        xz_b = apply_sheet_transform_numpy(xz_b[:, :, None], sheet.offset_z_planes, sheet.rotation_deg, order=0,
                                           cval=np.nan, dtype=np.float64)[:, :, 0]
        transition = transition_map(xz_b)
        volume_b, mask_b = _sheet_aligned(volume_b, mask_b, sheet)
    if not fc.intensity_correction:
        intensity = None
    elif fc.channel_intensity_ratio is not None:  # given by the user
        intensity = IntensityResult.from_ratio(fc.channel_intensity_ratio)
    else:
        intensity = channel_intensity_factor(volume_a, volume_b, mask_a, mask_b, transition)
    mean_column = tuple(float(np.nanmean(m)) if np.isfinite(m).any() else float("nan") for m in (xz_a, xz_b))
    estimate = ChannelEstimate((view_a.channel, view_b.channel), transition, intensity, mean_column,
                               {"channel_estimation_s": time.perf_counter() - t0, "sheet_registration_s": sheet_s},
                               sheet, tuple(view_a.voxel_size_um))
    if estimate.orientation_consistent is False:
        log.warning("%s: channel %d's foreground lies at higher x (mean column %.1f) than channel %d's (%.1f); "
                    "fusion.channel_pairs lists the channel lit from low x first: check the order",
                    label, view_a.channel, mean_column[0], view_b.channel, mean_column[1])
    return estimate


@dataclass(frozen=True)
class ChannelFusedView:
    """One camera's two illumination channels blended along x: a view the camera fusion can use.

    It stands wherever a :class:`CorrectedView` does (same ``specimen``,
    ``timepoint``, ``camera``; ``channel`` is channel a, ``channels`` both).
    :meth:`prepare` estimates the channel fusion (:func:`estimate_channels`);
    :meth:`open_arrays` then gives the blended volume and the union of the
    two masks, lazily.
    """

    view_a: CorrectedView
    view_b: CorrectedView
    estimate: ChannelEstimate | None = None
    #: The channel pair as configured (names the outputs); default (a, b). It differs from
    #: (view_a.channel, view_b.channel) for a camera lit the other way round (fusion.channel_swapped_cameras).
    pair: tuple[int, int] | None = None

    def __post_init__(self):
        a, b = self.view_a, self.view_b
        if (a.specimen, a.timepoint, a.camera) != (b.specimen, b.timepoint, b.camera) or a.channel == b.channel:
            raise ValueError("a channel fusion needs two different channels of one camera, specimen and timepoint; "
                             f"got {a.name} and {b.name}")

    specimen = property(lambda self: self.view_a.specimen)
    timepoint = property(lambda self: self.view_a.timepoint)
    camera = property(lambda self: self.view_a.camera)
    channel = property(lambda self: self.channels[0])
    voxel_size_um = property(lambda self: self.view_a.voxel_size_um)

    @property
    def channels(self) -> tuple[int, int]:
        """The channel pair as configured (output names); ``(view_a.channel, view_b.channel)`` is low x first."""
        return tuple(self.pair) if self.pair else (self.view_a.channel, self.view_b.channel)

    @property
    def name(self) -> str:
        return f"{self.view_a.name} + {self.view_b.name}"

    def inputs(self) -> list[str]:
        return self.view_a.inputs() + self.view_b.inputs()

    def fingerprint_inputs(self) -> list[dict]:
        return self.view_a.fingerprint_inputs() + self.view_b.fingerprint_inputs()

    def prepare(self, config: ProcessingConfig | None = None, *, progress: bool = True,
                sheet: SheetRegistration | None = None) -> "ChannelFusedView":
        """This view with its channel estimate (estimated now unless it already has one).

        ``sheet`` fixes the sheet registration (see :func:`estimate_channels`).
        """
        if self.estimate is not None:
            return self
        return replace(self, estimate=estimate_channels(self.view_a, self.view_b, config, progress=progress,
                                                        sheet=sheet))

    def open_arrays(self, fc=None):
        """The channel-fused volume (the corrected dtype) and its mask (a OR b), lazily, (Z, Y, X).

        ``fc`` (a :class:`~isoview_dask.config.FusionConfig`; default the
        defaults) gives the channel blending range, ``type`` and profile.
        """
        if self.estimate is None:
            raise IsoviewError(f"{self.name}: the channel fusion is not estimated yet (call prepare first)")
        fc = fc or ProcessingConfig().fusion
        volume_a, mask_a = self.view_a.open_arrays()
        volume_b, mask_b = _sheet_aligned(*self.view_b.open_arrays(), self.estimate.sheet)
        fused = channel_blend(volume_a, volume_b, self.estimate, fc.blending_range[0], fc.type,
                              fc.blending_profile, sharpness_sigma_px=fc.sharpness_sigma_px)
        return fused, mask_a | mask_b


def _sheet_aligned(volume_b, mask_b, sheet: SheetRegistration):
    """Channel b's volume (float32, NaN where its sheet moved out of the stack) and mask, on channel a's sheet."""
    if sheet.is_identity:
        return volume_b, mask_b
    return (apply_sheet_transform(volume_b, sheet.offset_z_planes, sheet.rotation_deg, order=1, cval=np.nan),
            apply_sheet_transform(mask_b, sheet.offset_z_planes, sheet.rotation_deg, order=0, cval=False,
                                  dtype=bool))


def channel_blend(volume_a, volume_b, estimate: ChannelEstimate, blending_range: float, method: str = "adaptive",
                  profile: str = "sigmoid", *, sharpness_sigma_px: float = 4.0):
    """Blend two illumination channels with an estimate's transition and intensity (lazy, blockwise).

    'adaptive' and 'geometric' are :func:`~isoview_dask.fuse.blend_channels`
    along x (the estimate's (Z, Y) map or single column); 'average' is the
    mean of the two (matched) channels; 'sharpness' weighs them by local
    sharpness (:func:`~isoview_dask.fuse.blend_by_sharpness`). The result
    keeps ``volume_a``'s dtype.
    """
    if method == "sharpness":
        return blend_by_sharpness(volume_a, volume_b, sigma_px=sharpness_sigma_px, intensity=estimate.intensity,
                                  dtype=volume_a.dtype)
    if method == "average":
        return blend(volume_a, volume_b, None, 0.0, "average", estimate.intensity, profile=profile,
                     dtype=volume_a.dtype)
    return blend_channels(volume_a, volume_b, blending_range, "x", estimate.transition_zy, profile=profile,
                          intensity=estimate.intensity, dtype=volume_a.dtype)


def find_corrected(root: str | Path, *, specimen: int | None = None,
                   timepoint: int | None = None) -> dict[tuple[int, int, int, int], CorrectedView]:
    """Complete corrected views under ``root``, keyed by (specimen, timepoint, camera, channel).

    ``specimen`` and ``timepoint`` (both or neither) restrict the scan to one timepoint's folder.
    """
    root = Path(root)
    if not root.is_dir():
        from ..errors import InputNotFoundError
        raise InputNotFoundError(f"{root}: corrected-output folder does not exist")
    folders = f"SPM{specimen:02d}/TM{timepoint:06d}" if timepoint is not None else "SPM*/TM*"
    return {(s, t, cams[0], ch): CorrectedView(s, t, cams[0], ch, record_path=path, record=record)
            for (s, t, cams, ch), (path, record) in scan_records(root, "correction.json", folders=folders).items()
            if len(cams) == 1}


def _saved_depth_map(view) -> np.ndarray | None:
    """The xy coordinate mask the correction stage wrote for ``view`` (float32 (Y, X)), or None.

    Only for a plain corrected camera whose record lists the file: a channel-fused camera's
    mask is the union of two, so its map is computed.
    """
    return _saved_map(view, "xyMask")


def _saved_column_map(view) -> np.ndarray | None:
    """The xz coordinate mask (mean foreground column per (z, y), float32 (Z, Y)) the correction wrote, or None."""
    return _saved_map(view, "xzMask")


def _saved_map(view, kind: str) -> np.ndarray | None:
    """A coordinate mask ``<stem>.<kind>.tif`` of a plain corrected view, if listed, readable and of the right shape.

    These equal :func:`~isoview_dask.correct.coordinate_masks` of the saved
    segmentation mask (the correction stage computes both from it), so reading
    them spares a pass over the mask.
    """
    if not isinstance(view, CorrectedView):
        return None
    path = view.path(kind, "tif")
    listed = {Path(p).name for p in view.record.get("outputs", [])}
    shape = view.record.get("shape_zyx")
    if path.name not in listed or not path.is_file() or not shape:
        return None
    import tifffile
    try:
        values = np.asarray(tifffile.imread(path), dtype=np.float32)
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); computing the map from the mask instead", path, exc)
        return None
    expected = tuple(shape[1:]) if kind == "xyMask" else (shape[0], shape[1])
    return values if values.shape == expected else None


def _open_arrays(view, fc, slabs: bool = False):
    if isinstance(view, ChannelFusedView):
        return view.open_arrays(fc)
    return view.open_arrays(slabs=slabs)


def _open_pair(ref, mov, fc=None, slabs: bool = False):
    """Reference and moving volumes and masks (corrected views, or channel-fused ones once prepared)."""
    reference, mask_ref = _open_arrays(ref, fc, slabs)
    moving, mask_mov = _open_arrays(mov, fc, slabs)
    if reference.shape != moving.shape:
        raise IsoviewError(f"{ref.name} and {mov.name}: shapes {reference.shape} and {moving.shape} differ; "
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
    rejected: str | None = None

    def summary(self) -> dict:
        finite = self.transition_yx[np.isfinite(self.transition_yx)]
        return {
            "sampling_offset_yx_px": [float(v) for v in self.offset_yx],
            "sampling_rotation_deg": float(self.rotation_deg),
            "registration_confidence": float(self.confidence),
            "registration_rejected": self.rejected,
            "intensity_ratio_moving_over_reference": self.intensity.ratio if self.intensity else None,
            "transition_plane": {"min": float(finite.min()), "median": float(np.median(finite)),
                                 "max": float(finite.max())} if finite.size else None,
        }


def prepared_pair(ref, mov, fc, slabs: bool = False):
    reference, moving, mask_ref, mask_mov = _open_pair(ref, mov, fc, slabs)
    flips = dict(flip_h=fc.flip_h, flip_v=fc.flip_v, rotation=fc.rotation, flip_z=fc.flip_z)
    moving_f, mask_mov_f = view_transform(moving, **flips), view_transform(mask_mov, **flips)
    if moving_f.shape != reference.shape:
        raise IsoviewError(f"{mov.name}: after rotation by {fc.rotation} degrees its frame "
                           f"{moving_f.shape[1:]} no longer matches {reference.shape[1:]}")
    return reference, moving_f, mask_ref, mask_mov_f


def aligned_moving(moving_f, mask_mov_f, offset, rotation):
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
    ``ref`` and ``mov`` may be :class:`ChannelFusedView` s (estimated here
    if they are not yet).
    """
    from ..cluster import compute

    config = config or ProcessingConfig()
    fc = config.fusion
    fixed = dict(fixed or {})
    if fc.intensity_ratio is not None:  # given by the user: never estimated
        fixed.setdefault("intensity_ratio_moving_over_reference", fc.intensity_ratio)
    if fc.transition_plane is not None:
        fixed.setdefault("transition_plane", fc.transition_plane)
    t0 = time.perf_counter()
    ref, mov = ref.prepare(config, progress=progress), mov.prepare(config, progress=progress)
    reference, moving_f, mask_ref, mask_mov_f = prepared_pair(ref, mov, fc, slabs=True)
    if fc.transition_plane is not None and not fc.transition_plane <= reference.shape[0] - 1:
        raise IsoviewError(f"fusion.transition_plane {fc.transition_plane:g} lies beyond the last plane "
                           f"({reference.shape[0] - 1}) of {ref.name}")
    n_planes = reference.shape[0]
    need_depths = "sampling_offset_yx_px" not in fixed or not ("transition_yx" in fixed
                                                               or "transition_plane" in fixed)
    if need_depths:
        # The correction stage saved each camera's depth map (xyMask.tif): equal to the one
        # reduced from its full mask, read in an instant. Otherwise one pass over both masks
        # serves the registration surface and the transition map.
        saved = _saved_depth_map(ref), _saved_depth_map(mov)
    if need_depths and saved[0] is not None and saved[1] is not None:
        flips = dict(flip_h=fc.flip_h, flip_v=fc.flip_v, rotation=fc.rotation)
        depth_ref, depth_mov_f = saved[0], np.ascontiguousarray(view_transform(saved[1], **flips))
        if fc.flip_z:  # reversed planes: plane k becomes n - 1 - k
            depth_mov_f = (n_planes - 1) - depth_mov_f
    elif need_depths:
        depth_ref, depth_mov_f = compute(coordinate_masks(mask_ref)[0], coordinate_masks(mask_mov_f)[0],
                                         progress=progress, label=f"{_label(ref, mov)}: depth maps",
                                         estimate=True)
    if "sampling_offset_yx_px" in fixed:
        offset = tuple(float(v) for v in fixed["sampling_offset_yx_px"])
        rotation = float(fixed.get("sampling_rotation_deg", 0.0))
        confidence, method = float(fixed.get("registration_confidence", float("nan"))), "fixed"
        rejected = None
    else:
        # the surface images and the image registration run as cluster tasks
        task = registration_task(reference, moving_f, mask_ref=mask_ref, mask_mov=mask_mov_f,
                                 xy_coordinate_mask=(depth_ref, depth_mov_f), search_px=fc.search_px,
                                 max_rotation_deg=fc.max_rotation_deg, slab_planes=fc.registration_slab_planes)
        registration = compute(task, progress=progress, label=f"{_label(ref, mov)}: registration",
                               estimate=True)[0]
        offset, rotation = registration.offset_yx, registration.rotation_deg
        confidence, method = registration.confidence, registration.method
        rejected = registration.details.get("rejected")
        if rejected and not fc.strict_registration:
            log.warning("%s: registration rejected (%s); the clamped estimate is used",
                        _label(ref, mov), rejected)
    timings = {"registration_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    if "transition_yx" in fixed:
        transition = np.asarray(fixed["transition_yx"], dtype=np.float64)
    elif "transition_plane" in fixed:
        transition = np.full(reference.shape[1:], float(fixed["transition_plane"]))
    else:
        # Every plane moves alike, so the aligned mask's depth map is the moving depth map
        # resampled (nearest neighbour, as the mask itself would be): no volume is resampled.
        depth_mov = apply_inplane_transform_numpy(depth_mov_f, offset, rotation, order=0, cval=np.nan)
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
    return PairEstimate(tuple(offset), float(rotation), float(confidence), method, intensity, transition, timings,
                        rejected)


def fused_volume(reference, moving_f, estimate: PairEstimate, fc):
    """The lazy fused volume of a prepared pair (moving camera flipped, not yet aligned), as ``fc.type`` says.

    'adaptive', 'geometric', 'average': :func:`~isoview_dask.fuse.fuse_views`
    (alignment and the transition-plane blend in one pass); 'sharpness':
    the aligned moving camera and :func:`~isoview_dask.fuse.blend_by_sharpness`.
    The result keeps the reference's dtype. With ``fc.front_camera =
    'moving'`` (the moving camera's near side is at low z) the blend runs on
    both volumes with their planes reversed and the result is reversed back.
    """
    if fc.front_camera == "moving" and fc.type in ("adaptive", "geometric"):
        n_planes = reference.shape[0]
        reversed_estimate = replace(estimate, transition_yx=(n_planes - 1) - np.asarray(estimate.transition_yx))
        return fused_volume(reference[::-1], moving_f[::-1], reversed_estimate,
                            replace(fc, front_camera="reference"))[::-1]
    if fc.type == "sharpness":
        aligned = apply_inplane_transform(moving_f, estimate.offset_yx, estimate.rotation_deg, order=1, cval=np.nan)
        return blend_by_sharpness(reference, aligned, sigma_px=fc.sharpness_sigma_px, intensity=estimate.intensity,
                                  dtype=reference.dtype)
    return fuse_views(reference, moving_f, estimate.offset_yx, estimate.rotation_deg, estimate.transition_yx,
                      fc.blending_range[1], fc.type, estimate.intensity, profile=fc.blending_profile,
                      dtype=reference.dtype, slab_planes=fc.slab_size_cameras or None)


def _prepare_view(view, config: ProcessingConfig, progress: bool, fixed: dict | None):
    """``view.prepare``; a channel-fused camera takes its sheet registration from ``fixed`` when there."""
    if not isinstance(view, ChannelFusedView):
        return view.prepare(config, progress=progress)
    entry = ((fixed or {}).get("channel_registration") or {}).get(str(view.camera))
    sheet = None
    if entry is not None:
        n_rows = int((view.view_a.record.get("shape_zyx") or view.view_a.open_arrays()[0].shape)[1])
        sheet = SheetRegistration.fixed(entry["offset_z_planes"], entry["rotation_deg"], n_rows)
    return view.prepare(config, progress=progress, sheet=sheet)


def fuse_pair(ref: CorrectedView, mov: CorrectedView, out: str | Path, config: ProcessingConfig | None = None,
              *, progress: bool = True, fixed: dict | None = None) -> dict:
    """Register, intensity-match and blend one opposing camera pair; write outputs.

    Parameters
    ----------
    ref, mov : CorrectedView or ChannelFusedView
        The reference camera (its near side is low z) and the opposing one;
        as channel-fused views, each camera's two illumination channels are
        blended along x first (in the same graph).
    out : path
        Output root; ``<out>/SPM##/TM######/SPM##_TM######_CM<a>_CM<b>_CHN##.fusedStack.zarr``
        (``..._CHN<a>_CHN<b>.fusedStack.zarr`` for channel-fused views).
    fixed : dict, optional
        Parameters to use instead of estimating them (see :func:`estimate_pair`);
        ``channel_registration`` ({camera: {offset_z_planes, rotation_deg}})
        fixes the sheet registration of channel-fused cameras.

    Returns
    -------
    dict
        The parameters record (also written beside the fused volume). With
        channel-fused views it also holds ``channels``,
        ``channel_blending_range`` and ``channel_fusion`` (one entry per
        camera; see :meth:`ChannelEstimate.summary`); otherwise those two are
        null and ``channels`` is ``[channel]``.
    """
    config = config or ProcessingConfig()
    fc, oc = config.fusion, config.output
    t0 = time.perf_counter()
    ref, mov = (_prepare_view(view, config, progress, fixed) for view in (ref, mov))
    estimate = estimate_pair(ref, mov, config, progress=progress, fixed=fixed)
    if estimate.rejected and fc.strict_registration:
        raise RegistrationError(f"{_label(ref, mov)}: registration rejected ({estimate.rejected}); nothing "
                                "written (fusion.strict_registration). Widen fusion.search_px / "
                                "fusion.max_rotation_deg, or fuse the time-lapse in two passes")
    timings = {**_channel_timings(ref, mov), **estimate.timings}
    reference, moving_f, _, _ = prepared_pair(ref, mov, fc)
    n_planes = reference.shape[0]
    transition, intensity = estimate.transition_yx, estimate.intensity

    # Apply big: alignment and blend in one blockwise pass written shard by shard, plus
    # projections for the figures.
    t2 = time.perf_counter()
    blending_range = fc.blending_range[1]
    fused = fused_volume(reference, moving_f, estimate, fc)
    target = output_path(out, ref.specimen, ref.timepoint, [ref.camera, mov.camera], list(ref.channels),
                         "fusedStack")
    draw = figures_drawn(fc, ref.timepoint)
    extra = ({"reference_xy": reference.max(axis=0), "moving_xy": moving_f.max(axis=0)}
             if draw and "registration" in fc.figures else {})
    images = _write_fused(fused, target, ref.voxel_size_um, oc, extra, progress,
                          f"{_label(ref, mov)}: fusing and writing",
                          channel_label=fused_channel_label(config, (ref.camera, mov.camera)))
    if extra:  # the overlay shows the moving projection moved as its planes were
        images["aligned_xy"] = apply_inplane_transform_numpy(images["moving_xy"], estimate.offset_yx,
                                                             estimate.rotation_deg, order=1, cval=0.0)
    timings["blend_write_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0

    applied_offset, applied_rotation = _content_transform(estimate.offset_yx, estimate.rotation_deg)
    params = {
        "package_version": __version__,
        "reference_camera": ref.camera, "moving_camera": mov.camera, "channel": ref.channel,
        "channels": list(ref.channels),
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
        **channel_fields(fc, ref, mov),
        "shape_zyx": list(reference.shape),
        "voxel_size_um_zyx": ref.voxel_size_um,
        "inputs": ref.inputs() + mov.inputs(),
        "timings": timings,
        "input_bytes": int(reference.nbytes * len(ref.inputs() + mov.inputs())),
    }
    outputs = [target]
    if draw:
        from .diagnostics import channel_figures, fusion_figures
        outputs += draw_figures(fusion_figures, target.with_suffix(""), images, transition, n_planes, blending_range,
                         fc.blending_profile, params, fc.figures)
        channel_views = [v for v in (ref, mov) if isinstance(v, ChannelFusedView)]
        if channel_views:
            outputs += draw_figures(channel_figures, target.with_suffix(""), [(v.camera, v.estimate) for v in channel_views],
                             reference.shape[2], fc.blending_range[0], fc.blending_profile, fc.type, None,
                             fc.figures)
    params["outputs"] = relative_outputs(target.with_suffix(".json"), outputs)
    params["fingerprint"] = _fingerprint(ref, mov, config, fixed)
    write_json(target.with_suffix(".json"), params)
    return params


def figures_drawn(fc, timepoint: int) -> bool:
    """Whether the fusion of ``timepoint`` draws its diagnostic PNGs (``fusion.diagnostics`` and
    ``fusion.figures_every``: timepoints 0, N, 2N, ...)."""
    return bool(fc.diagnostics) and int(timepoint) % int(fc.figures_every) == 0


def draw_figures(function, *args) -> list[Path]:
    """Run a figure-drawing function of :mod:`.diagnostics` as one cluster task (here without a client).

    Drawing is CPU-bound Python: on the client it would hold the GIL that the
    scheduler of a local cluster and the other jobs' graph building share.
    """
    import dask

    from ..cluster import compute
    return list(compute(dask.delayed(function, pure=False)(*args), progress=False)[0])


def fused_channel_label(config: ProcessingConfig, cameras: Sequence[int]) -> str:
    """The viewer label of a pair-fused volume, e.g. ``"VW00 fused CM00+CM01"``.

    The pair is VW00 or VW90 as the isotropic stage takes them
    (``isotropic.views``, else the first two of ``fusion.camera_pairs``);
    another pair is ``"fused CM02+CM03"``.
    """
    names = "+".join(f"CM{c:02d}" for c in cameras)
    views = config.isotropic.views if config.isotropic.views is not None else config.fusion.camera_pairs[:2]
    for role, pair in zip(("VW00", "VW90"), views):
        if sorted(pair) == sorted(cameras):
            return f"{role} fused {names}"
    return f"fused {names}"


def _write_fused(fused, target: Path, voxel_size_um, oc, extra: dict, progress: bool, label: str,
                 channel_label: str | None = None) -> dict:
    """Write a fused volume as sharded zarr (atomically) and return its xy/xz max projections and ``extra``.

    ``channel_label``: the viewer label of its ``omero`` channel (default from the file name).
    """
    from ..cluster import compute

    pending = prepare_zarr(fused, target, codec=CodecSpec.parse(oc.codec, oc.level, oc.shuffle), chunks=oc.chunks,
                           shards=oc.shards or (), voxel_size_zyx=voxel_size_um, overwrite=True,
                           pyramid_levels=oc.pyramid_levels, name=target.stem, label=channel_label)
    small = {"fused_xy": fused.max(axis=0), "fused_xz": fused.max(axis=1), **extra}
    keys = list(small)
    try:
        results = compute(pending.delayed, *[small[k] for k in keys], progress=progress, label=label)
    except BaseException:
        pending.abort()
        raise
    pending.commit()
    return dict(zip(keys, results[1:]))


def _channel_timings(*views) -> dict:
    seconds = sum(v.estimate.timings["channel_estimation_s"] for v in views if isinstance(v, ChannelFusedView))
    return {"channel_estimation_s": seconds} if any(isinstance(v, ChannelFusedView) for v in views) else {}


def channel_fields(fc, *views) -> dict:
    """Parameters-JSON fields of the channel fusion (null when the views are single channels)."""
    fused = [v for v in views if isinstance(v, ChannelFusedView)]
    if not fused:
        return {"channel_blending_range": None, "channel_fusion": None}
    return {"channel_blending_range": fc.blending_range[0],
            "channel_fusion": [{"camera": v.camera, **v.estimate.summary()} for v in fused]}


def fuse_channels(view: ChannelFusedView, out: str | Path, config: ProcessingConfig | None = None, *,
                  progress: bool = True) -> dict:
    """Blend one camera's two illumination channels along x and write the result (no camera pair).

    The volume keeps the corrected dtype. With ``fusion.diagnostics``, the
    figures ``.channelTransition.png`` (transition column map, channel
    weights along x) and ``.projections.png`` are drawn beside it.

    Parameters
    ----------
    view : ChannelFusedView
        The camera's two channels (estimated here if not yet).
    out : path
        Output root; ``<out>/SPM##/TM######/SPM##_TM######_CM<c>_CHN<a>_CHN<b>.fusedStack.zarr``.

    Returns
    -------
    dict
        The parameters record (also written beside the volume): camera,
        channels, ``channel_blending_range``, ``channel_fusion`` (transition
        columns, intensity factor), ``blending_profile``, ``shape_zyx``,
        inputs, timings, outputs and fingerprint.
    """
    config = config or ProcessingConfig()
    fc, oc = config.fusion, config.output
    t0 = time.perf_counter()
    view = view.prepare(config, progress=progress)
    fused, _ = view.open_arrays(fc)
    target = output_path(out, view.specimen, view.timepoint, view.camera, list(view.channels), "fusedStack")
    t1 = time.perf_counter()
    images = _write_fused(fused, target, view.voxel_size_um, oc, {}, progress,
                 f"TM{view.timepoint:06d} CM{view.camera:02d} CHN{view.channels[0]:02d}+CHN{view.channels[1]:02d}: "
                 "fusing and writing",
                 channel_label=f"CM{view.camera:02d} fused " + "+".join(f"CHN{c:02d}" for c in view.channels))
    timings = {**_channel_timings(view), "blend_write_s": time.perf_counter() - t1,
               "total_s": time.perf_counter() - t0}
    outputs = [target]
    if figures_drawn(fc, view.timepoint):
        from .diagnostics import channel_figures
        outputs += draw_figures(channel_figures, target.with_suffix(""), [(view.camera, view.estimate)], fused.shape[2],
                         fc.blending_range[0], fc.blending_profile, fc.type, images, fc.figures)
    params = {
        "package_version": __version__,
        "camera": view.camera, "channel": view.channel, "channels": list(view.channels),
        "timepoint": view.timepoint, "specimen": view.specimen,
        "blending_method": fc.type,
        "blending_profile": fc.blending_profile,
        **channel_fields(fc, view),
        "shape_zyx": list(fused.shape),
        "voxel_size_um_zyx": view.voxel_size_um,
        "inputs": view.inputs(),
        "timings": timings,
        "input_bytes": int(2 * fused.nbytes),
        "outputs": relative_outputs(target.with_suffix(".json"), outputs),
        "fingerprint": _fingerprint(view, None, config),
    }
    write_json(target.with_suffix(".json"), params)
    return params


def _label(ref, mov) -> str:
    channels = "+".join(f"CHN{c:02d}" for c in ref.channels)
    return f"TM{ref.timepoint:06d} CM{ref.camera:02d}+CM{mov.camera:02d} {channels}"


def _fingerprint(ref, mov, config: ProcessingConfig, fixed: dict | None = None) -> str:
    inputs = [entry for v in (ref, mov) if v is not None for entry in v.fingerprint_inputs()]
    from ..config import TEMPORAL_FIELDS
    import hashlib
    # Temporal options shape which parameters are fixed, not how a fusion runs with them.
    fusion = {k: v for k, v in config.fusion.to_dict().items() if k not in TEMPORAL_FIELDS}
    if not fusion.get("channel_pairs"):
        fusion.pop("channel_pairs", None)  # off: the fingerprints of earlier outputs stay valid
    # The figures never change a fused volume; only whether this timepoint's are drawn (its outputs) counts.
    # (Left out where they are: the fingerprints of outputs with every timepoint's figures stay valid.)
    fusion.pop("figures_every", None)
    if fusion.get("diagnostics") and not figures_drawn(config.fusion, ref.timepoint):
        fusion["figures_drawn"] = False
    # Whether the corrected volumes were stored changes nothing in a fused volume (bit-identical).
    output = {k: v for k, v in config.output.to_dict().items() if k not in ("overwrite", "store_corrected")}
    parameters = {"fusion": fusion,
                  "output": output,
                  "fixed": {k: (hashlib.sha256(np.ascontiguousarray(v, dtype=np.float64).tobytes()).hexdigest()
                                if k == "transition_yx" else v)
                            for k, v in sorted((fixed or {}).items())}}
    return fingerprint(inputs, parameters)


@dataclass(frozen=True)
class ChannelJob:
    """One output of the channel-pair fusion: a camera pair of channel-fused cameras, or one camera alone.

    ``views`` holds the :class:`ChannelFusedView` of each camera (reference
    first), or is empty when a camera lacks one of the channels (``missing``
    says which).
    """

    specimen: int
    timepoint: int
    cameras: tuple[int, ...]
    channels: tuple[int, int]
    views: tuple = ()
    missing: str = ""


def channel_jobs(views: dict, config: ProcessingConfig):
    """The :class:`ChannelJob` s of ``fusion.channel_pairs`` over corrected ``views``, as :func:`fuse_dataset` runs them.

    For each selected (specimen, timepoint, channel pair): every camera pair
    with at least one of its cameras recorded, then every recorded camera in
    no camera pair.
    """
    sel, fc = config.input, config.fusion
    paired_cameras = {c for pair in fc.camera_pairs for c in pair}
    groups = sorted({(s, t, pair) for s, t, _, ch in views for pair in fc.channel_pairs
                     if ch in pair and (sel.specimens is None or s in sel.specimens)
                     and (sel.timepoints is None or t in sel.timepoints)
                     and (sel.channels is None or set(pair) & set(sel.channels))})
    for specimen, timepoint, (ch_a, ch_b) in groups:
        recorded = sorted({c for s, t, c, ch in views
                           if (s, t) == (specimen, timepoint) and ch in (ch_a, ch_b)
                           and (sel.cameras is None or c in sel.cameras)})
        jobs = [(a, b) for a, b in fc.camera_pairs if a in recorded or b in recorded]
        jobs += [(c,) for c in recorded if c not in paired_cameras]
        for cameras in jobs:
            missing = [f"camera {c} channel {ch}" for c in cameras for ch in (ch_a, ch_b)
                       if (specimen, timepoint, c, ch) not in views]
            if missing:
                yield ChannelJob(specimen, timepoint, cameras, (ch_a, ch_b),
                                 missing=f"{', '.join(missing)}: no complete corrected volume for timepoint "
                                         f"{timepoint}; channel fusion needs channels {ch_a} and {ch_b} of "
                                         f"camera(s) {', '.join(map(str, cameras))}")
                continue
            yield ChannelJob(specimen, timepoint, cameras, (ch_a, ch_b), tuple(
                ChannelFusedView(*(views[(specimen, timepoint, c, ch)] for ch in
                                   ((ch_b, ch_a) if c in fc.channel_swapped_cameras else (ch_a, ch_b))),
                                 pair=(ch_a, ch_b))
                for c in cameras))


def _channel_pair_jobs(views: dict, out: Path, config: ProcessingConfig, fixed_parameters=None) -> Iterator[Job]:
    """The channel-pair jobs of :func:`fusion_jobs`: camera pairs of channel-fused cameras, and lone cameras.

    ``fixed_parameters(specimen, timepoint, (a, b), (channel c, channel d))`` may fix a camera pair's
    registration, intensity and transition (time-smoothed values); the channel estimates are per timepoint.
    """
    for job in channel_jobs(views, config):
        target = output_path(out, job.specimen, job.timepoint, list(job.cameras), list(job.channels), "fusedStack")
        if job.missing:
            yield _missing_job(target, job.missing)
            continue
        fused = job.views
        parts = [part for view in fused for part in (view.view_a, view.view_b)]
        nbytes, plane_bytes = _raw_bytes(*parts), raw_plane_bytes(*parts)
        if len(fused) == 2:
            fixed = (fixed_parameters(job.specimen, job.timepoint, job.cameras, job.channels)
                     if fixed_parameters else None)
            yield fusion_job(target, _fingerprint(fused[0], fused[1], config, fixed), config,
                             partial(fuse_pair, fused[0], fused[1], out, config, progress=False, fixed=fixed), nbytes,
                             plane_bytes)
        else:
            yield fusion_job(target, _fingerprint(fused[0], None, config), config,
                             partial(fuse_channels, fused[0], out, config, progress=False), nbytes, plane_bytes)


def _raw_bytes(*views: CorrectedView) -> int:
    """Raw input bytes behind corrected views (from their records), for admission and throughput."""
    return int(sum(int(v.record.get("input_bytes") or 0) for v in views))


def raw_plane_bytes(*views: CorrectedView) -> int | None:
    """Raw bytes of one plane of all ``views`` together (from their records), or None if a record lacks them.

    A job reading these views streams plane slabs: its memory, run whole, follows this, not the
    volumes' depth (:func:`~isoview_dask.cluster.whole_job_memory`).
    """
    total = 0
    for view in views:
        shape, nbytes = view.record.get("shape_zyx"), int(view.record.get("input_bytes") or 0)
        if not shape or not nbytes or int(shape[0]) <= 0:
            return None
        total += nbytes // int(shape[0])
    return total


def _missing_job(target: Path, why: str) -> Job:
    def run() -> JobResult:
        log.error("%s: %s", target, why)
        return JobResult("failed", str(target), message=why)
    return Job(str(target), "fuse", run)


def fusion_job(target: Path, expected_fingerprint: str, config: ProcessingConfig, work, nbytes: int = 0,
               plane_bytes: int | None = None) -> Job:
    """The job writing fused volume ``target``: skipped if complete with this fingerprint, else ``work()``.

    ``work`` returns the parameters record; a failure becomes the job's
    result, never an exception, so the others go on. ``nbytes`` and
    ``plane_bytes`` (raw bytes of all inputs, and of one plane of them)
    decide whether it runs whole (:func:`~isoview_dask.pipeline.executor.job_work`).
    """
    def complete() -> bool:
        return not config.output.overwrite and completed(target.with_suffix(".json"), expected_fingerprint)

    def run() -> JobResult:
        if complete():
            return JobResult("skipped", str(target))
        try:
            params = job_work(nbytes, work, label=f"fusion {target.name}", plane_bytes=plane_bytes)
        except job_errors() as exc:
            log.error("fusion of %s failed: %s", target, exc)
            return JobResult("failed", str(target), message=str(exc))
        rejected = params.get("registration_rejected")
        return JobResult("written", str(target), input_bytes=params["input_bytes"],
                         warning=f"registration rejected: {rejected}" if rejected else "")
    return Job(str(target), "fuse", run, nbytes=nbytes, complete=complete)


def single_channel_groups(views, config: ProcessingConfig) -> list[tuple[int, int, int]]:
    """Sorted (specimen, timepoint, channel) of ``views`` that ``config.input`` selects, fused channel by channel.

    Channels of a ``fusion.channel_pairs`` pair are left out: they are fused together (:func:`channel_jobs`).
    """
    sel = config.input
    paired_channels = {ch for pair in config.fusion.channel_pairs for ch in pair}
    return sorted({(s, t, ch) for s, t, _, ch in views
                   if (sel.specimens is None or s in sel.specimens)
                   and (sel.timepoints is None or t in sel.timepoints)
                   and (sel.channels is None or ch in sel.channels) and ch not in paired_channels})


def fusion_jobs(views: dict, out: str | Path, config: ProcessingConfig, fixed_parameters=None) -> Iterator[Job]:
    """Every fusion job over the complete corrected ``views`` (as :func:`find_corrected` returns them).

    Channel-pair outputs first (``fusion.channel_pairs``), then every
    selected (specimen, timepoint, channel) and camera pair; see
    :func:`fuse_dataset` for what is formed and :func:`fusion_job` for one job.
    """
    out = Path(out)
    groups = single_channel_groups(views, config)
    if config.fusion.channel_pairs:
        yield from _channel_pair_jobs(views, out, config, fixed_parameters)
    for specimen, timepoint, channel in groups:
        for a, b in config.fusion.camera_pairs:
            ref, mov = views.get((specimen, timepoint, a, channel)), views.get((specimen, timepoint, b, channel))
            if ref is None and mov is None:
                continue
            target = output_path(out, specimen, timepoint, [a, b], channel, "fusedStack")
            if ref is None or mov is None:
                yield _missing_job(target, f"camera {a if ref is None else b} has no complete corrected volume "
                                           f"for timepoint {timepoint}, channel {channel}")
                continue
            fixed = fixed_parameters(specimen, timepoint, (a, b), channel) if fixed_parameters else None
            yield fusion_job(target, _fingerprint(ref, mov, config, fixed), config,
                             partial(fuse_pair, ref, mov, out, config, progress=False, fixed=fixed),
                             _raw_bytes(ref, mov), raw_plane_bytes(ref, mov))


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
        ``fusion`` and ``output`` sections are used; ``input.timepoints``,
        ``input.specimens`` and ``input.channels`` select (a channel pair is
        selected by either of its channels); ``flags`` override (e.g.
        ``fusion_type="average"``).
    fixed_parameters : callable, optional
        ``fixed_parameters(specimen, timepoint, (a, b), channel)`` returns a dict
        of parameters to use instead of estimating them (see
        :func:`estimate_pair`), or None: how time-smoothed values enter.
        For a camera pair of channel-fused cameras (``fusion.channel_pairs``)
        ``channel`` is the tuple (c, d); the channel estimates themselves
        (transition columns, channel intensity) are always per timepoint.

    Returns
    -------
    StageSummary
        Fused volumes written, skipped (complete with the same inputs and
        parameters) and failed (a pair with a missing camera, a camera
        without one of a channel pair's channels, a failed registration...);
        one failure never stops the others.

    Notes
    -----
    With ``fusion.channel_pairs``, the channels of a pair are not fused one
    by one: for each camera pair whose two cameras recorded both channels,
    the two channel-fused cameras are fused (``..._CM<a>_CM<b>_CHN<c>_CHN<d>``),
    and each camera in no camera pair is channel-fused alone
    (``..._CM<a>_CHN<c>_CHN<d>``, see :func:`fuse_channels`). There,
    ``input.cameras`` also restricts which cameras take part.
    """
    config = ProcessingConfig.from_flags(config, **flags) if flags else (config or ProcessingConfig())
    out = Path(out) if out is not None else Path(corrected)
    views = find_corrected(corrected)
    summary = StageSummary("fuse")
    run_jobs(fusion_jobs(views, out, config, fixed_parameters), {"fuse": summary}, progress=progress, label="fuse",
             total=len(views) // 2)  # about a fusion per two camera views; exact once planned
    from ..provenance import record_run  # run record (isoview_dask.provenance)
    record_run("fuse", out, summary, config=config, source=corrected, fixed_parameters=fixed_parameters)
    return summary
