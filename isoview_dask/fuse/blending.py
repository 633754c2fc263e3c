"""Blending of two aligned views into one volume (the MATLAB ``clusterMF`` blend).

Camera fusion blends the reference camera and the aligned opposing camera
along the detection axis z: the reference camera (near side = low plane
index) contributes in front of a *transition plane*, the moving camera
behind it, with weights that ramp smoothly over ``blending_range`` planes
and always sum to one. The transition plane is either adaptive, one value
per pixel (y, x) taken from the two cameras' xy coordinate masks
(:func:`transition_plane_map`), or geometric, one plane for the whole volume
(:func:`geometric_transition`). Channel fusion (:func:`blend_channels`)
applies the same ramp along x to two illumination sides recorded by one
camera.

The per-pixel parameters are small (Y, X) arrays estimated in memory; the
blending itself is elementwise and runs blockwise with ``dask.array.blockwise``,
each volume block receiving the matching tile of the transition map, so the
result does not depend on the chunking (:func:`blend_numpy` is the plain
in-memory reference).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np
from scipy import ndimage

from ..correct.arrays import as_dask, require_ndim

if TYPE_CHECKING:  # pragma: no cover
    from .intensity import IntensityResult

#: Steepness of the sigmoid ramp: a logistic evaluated over [-k/2, k/2] across the blending range.
SIGMOID_STEEPNESS = 8.0
PROFILES = ("sigmoid", "linear")
METHODS = ("adaptive", "geometric", "average")


# --------------------------------------------------------------------------------------------- transition


def transition_plane_map(xy_mask_ref, xy_mask_mov_aligned=None, n_planes: int | None = None, *,
                         margin: float = 2.0, rim_px: int = 4, median_filter_range: int = 9,
                         smoothing_sigma: float = 4.0, fill: str = "nearest", mask_mode: str = "overlap",
                         min_object_fraction: float = 0.0, precise: bool = True) -> np.ndarray:
    """Adaptive transition plane per pixel from the two cameras' xy coordinate masks.

    Parameters
    ----------
    xy_mask_ref, xy_mask_mov_aligned : numpy or dask array, shape (Y, X)
        Mean z index (planes, 0-based) of the foreground per pixel, NaN
        where a camera has no foreground (see
        :func:`isoview_dask.correct.coordinate_masks`). The moving camera's
        map must already be in the reference frame (flipped and aligned,
        e.g. ``apply_inplane_transform_numpy(view_transform(xy_mov,
        flip_h=True), offset, rotation, order=0, cval=numpy.nan)``); it may
        be None to use the reference alone. The same function serves the
        xz masks of channel fusion: pass (Z, Y) maps of mean x and the
        number of columns as ``n_planes``.
    n_planes : int
        Number of planes Z of the volume (the map's values lie in
        ``[0, n_planes - 1]``).
    margin : float
        Values within ``margin`` planes of either end of the volume are
        discarded as unreliable (a specimen cut by the volume's end has a
        biased mean depth).
    rim_px : int
        Values within ``rim_px`` pixels of the edge of the valid region are
        discarded too: at the specimen's rim the foreground columns are
        short and their mean depth is noisy, and the filling would carry
        such values far out.
    median_filter_range : int
        Side (pixels) of the median filter applied after hole filling;
        1 disables it.
    smoothing_sigma : float
        Sigma (pixels) of the final Gaussian smoothing; 0 disables it.
    fill : {'nearest', 'geometric'}
        How pixels without a valid value are filled before filtering: with
        the value of the nearest valid pixel (default; continuous across
        the specimen's edge) or with the geometric plane (the median of all
        valid values).
    mask_mode : {'overlap', 'union', 'reference', 'moving'}
        Which pixels carry a depth (the MATLAB ``maskFusionMode``):
        'overlap' where both cameras have foreground (their average);
        'union' also where only one has (its own value there); 'reference'
        or 'moving' one camera's map alone.
    min_object_fraction : float
        Valid regions smaller than this fraction of the frame are dropped
        before filling (the MATLAB ``bwareaopen`` step against specks).
    precise : bool
        True (the MATLAB ``preciseGauss``): the smoothing kernel reaches 4
        sigma. False: it is truncated at 2 sigma (and renormalised), about
        half the work on a large map, a slightly narrower smoothing.

    Returns
    -------
    numpy.ndarray, float64, shape (Y, X)
        Transition plane (fractional plane index) for every pixel, defined
        everywhere: where neither camera has foreground the fill rule
        applies, and with no valid value at all the map is the middle plane
        ``(n_planes - 1) / 2``.

    Notes
    -----
    Where both cameras have foreground the map is the average of their
    mean depths: the middle of the specimen along z, where the two
    cameras see equally well (each camera's own mean is biased toward its
    near side, where it detects more). Pixels where only one camera has
    foreground are filled like the empty ones, unless no pixel has both
    (a single map, or a camera that saw nothing): then the single values
    are used.
    """
    if n_planes is None or int(n_planes) < 1:
        raise ValueError(f"n_planes must be a positive number of planes, got {n_planes!r}")
    if fill not in ("nearest", "geometric"):
        raise ValueError(f"fill must be 'nearest' or 'geometric', got {fill!r}")
    if median_filter_range < 1 or smoothing_sigma < 0 or rim_px < 0:
        raise ValueError("median_filter_range must be >= 1, smoothing_sigma and rim_px >= 0, got "
                         f"{median_filter_range}, {smoothing_sigma} and {rim_px}")
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
    if not 0.0 <= min_object_fraction < 1.0:
        raise ValueError(f"min_object_fraction must lie in [0, 1), got {min_object_fraction}")
    if mask_mode == "moving" and xy_mask_mov_aligned is not None:
        combined = _within_margin(xy_mask_mov_aligned, n_planes, margin)
    elif mask_mode in ("reference", "moving"):
        combined = _within_margin(xy_mask_ref, n_planes, margin)
    else:
        combined = combined_depth(xy_mask_ref, xy_mask_mov_aligned, n_planes, margin,
                                   union=mask_mode == "union")
    valid = np.isfinite(combined)
    if min_object_fraction > 0:
        from skimage.morphology import remove_small_objects
        valid = remove_small_objects(valid, max_size=int(min_object_fraction * valid.size))
    valid = without_rim(valid, rim_px)
    if not valid.any():
        return np.full(combined.shape, (n_planes - 1) / 2.0)
    if fill == "nearest":
        nearest = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
        filled = combined[tuple(nearest)]
    else:
        filled = np.where(valid, combined, np.median(combined[valid]))
    if median_filter_range > 1:
        filled = ndimage.median_filter(filled, size=int(median_filter_range), mode="nearest")
    if smoothing_sigma > 0:
        filled = ndimage.gaussian_filter(filled, smoothing_sigma, mode="nearest", truncate=4.0 if precise else 2.0)
    return np.clip(filled, 0.0, n_planes - 1.0)


def geometric_transition(xy_mask_ref=None, xy_mask_mov_aligned=None, n_planes: int | None = None, *,
                         margin: float = 2.0) -> float:
    """One transition plane for the whole volume.

    Parameters
    ----------
    xy_mask_ref, xy_mask_mov_aligned : numpy or dask array, shape (Y, X), optional
        Coordinate masks as for :func:`transition_plane_map`.
    n_planes : int
        Number of planes Z.
    margin : float
        As for :func:`transition_plane_map`.

    Returns
    -------
    float
        The median over pixels of the averaged, cleaned coordinate masks
        (fractional plane index); the middle plane ``(n_planes - 1) / 2``
        when no mask is given or no pixel has a valid value.
    """
    if n_planes is None or int(n_planes) < 1:
        raise ValueError(f"n_planes must be a positive number of planes, got {n_planes!r}")
    middle = (n_planes - 1) / 2.0
    if xy_mask_ref is None and xy_mask_mov_aligned is None:
        return middle
    if xy_mask_ref is None:
        xy_mask_ref, xy_mask_mov_aligned = xy_mask_mov_aligned, None
    combined = combined_depth(xy_mask_ref, xy_mask_mov_aligned, n_planes, margin)
    valid = np.isfinite(combined)
    return float(np.median(combined[valid])) if valid.any() else middle


MASK_MODES = ("overlap", "union", "reference", "moving")


def combined_depth(map_a, map_b, n_planes: int, margin: float, union: bool = False) -> np.ndarray:
    """Average of two depth maps where both are valid, NaN elsewhere.

    A value within ``margin`` of either end of the volume is invalid, in
    each map and in the average. If no pixel has both, the single valid
    values are used instead; with ``union`` they are used wherever only one
    map is valid.
    """
    a = _within_margin(map_a, n_planes, margin)
    require_ndim(a, 2, "coordinate mask")
    if map_b is None:
        return a
    b = _within_margin(map_b, n_planes, margin)
    if b.shape != a.shape:
        raise ValueError(f"coordinate masks must have the same shape, got {a.shape} and {b.shape}")
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not (fa & fb).any():
        return np.where(fa, a, b)
    if union:
        return _within_margin(np.where(fa & fb, 0.5 * (a + b), np.where(fa, a, b)), n_planes, margin)
    # one camera's own mean depth is biased to its near side: leave such pixels to the filling
    return _within_margin(np.where(fa & fb, 0.5 * (a + b), np.nan), n_planes, margin)


def without_rim(valid: np.ndarray, rim_px: int) -> np.ndarray:
    """``valid`` eroded by ``rim_px`` pixels (unchanged if nothing would be left)."""
    if rim_px <= 0:
        return valid
    core = ndimage.binary_erosion(valid, iterations=int(rim_px))
    return core if core.any() else valid


def _within_margin(depth_map, n_planes: int, margin: float) -> np.ndarray:
    """A float64 copy of ``depth_map`` with values within ``margin`` of the volume's ends set to NaN."""
    values = np.array(depth_map, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        values[(values < margin) | (values > n_planes - 1 - margin)] = np.nan
    return values


# --------------------------------------------------------------------------------------------- weights


def check_ramp(blending_range: float, profile: str) -> None:
    if not (math.isfinite(blending_range) and blending_range >= 0):
        raise ValueError(f"blending_range must be a finite number of planes >= 0, got {blending_range!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")


def front_weight(distance, blending_range: float, profile: str) -> np.ndarray:
    """Weight of the view in front of the transition, given ``distance = index - transition``.

    1 for ``distance <= -range/2``, 0 for ``distance >= range/2``, 0.5 at the
    transition, and ``w(-d) = 1 - w(d)``. With a range of 0 it is a step:
    1 up to and including the transition, 0 beyond it.
    """
    distance = np.asarray(distance, dtype=np.float64)
    if blending_range == 0:
        return (distance <= 0).astype(np.float64)
    u = np.clip(distance / blending_range, -0.5, 0.5)
    if profile == "linear":
        return 0.5 - u
    k = SIGMOID_STEEPNESS
    low, high = _logistic(-k / 2), _logistic(k / 2)
    return (_logistic(-k * u) - low) / (high - low)


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-x))


def blending_weights(transition_yx, n_planes: int, blending_range: float, profile: str = "sigmoid") -> np.ndarray:
    """Weight of the reference camera per voxel (in memory; for small volumes and tests).

    Parameters
    ----------
    transition_yx : float or array_like, shape (Y, X)
        Transition plane (fractional plane index), one value or per pixel.
    n_planes : int
        Number of planes Z.
    blending_range : float
        Width (planes) of the ramp, centred on the transition; 0 gives a
        hard switch.
    profile : {'sigmoid', 'linear'}
        Shape of the ramp. 'sigmoid' is a logistic curve rescaled to reach
        exactly 1 and 0 at the ends of the range.

    Returns
    -------
    numpy.ndarray, float64, shape (Z,) + shape of ``transition_yx``
        ``w[z, y, x]``: 1 in front of the transition (low z: the reference
        camera's near side), 0 behind it. The moving camera's weight is
        ``1 - w``, so the two sum to one exactly wherever both recorded.
    """
    check_ramp(blending_range, profile)
    transition = np.asarray(transition_yx, dtype=np.float64)
    z = np.arange(int(n_planes), dtype=np.float64).reshape((-1,) + (1,) * transition.ndim)
    return front_weight(z - transition, blending_range, profile)


# --------------------------------------------------------------------------------------------- blending


def blend_gains(intensity: "IntensityResult | None") -> tuple[float, float]:
    """Multipliers (front view, back view) from an intensity correction."""
    if intensity is None:
        return 1.0, 1.0
    if intensity.scaled_camera == "reference":
        return float(intensity.factor), 1.0
    if intensity.scaled_camera == "moving":
        return 1.0, float(intensity.factor)
    raise ValueError(f"intensity.scaled_camera must be 'reference' or 'moving', got {intensity.scaled_camera!r}")


def _mix(front: np.ndarray, back: np.ndarray, weight: np.ndarray, gains, out_dtype) -> np.ndarray:
    """``w * front + (1 - w) * back``, with NaN (not recorded) taken from the other view.

    Computed in float32 (half the memory of a block in float64), or in
    float64 when an input or the output is float64.
    """
    wide = np.float64 in (front.dtype, back.dtype, np.dtype(out_dtype))
    work = np.float64 if wide else np.float32
    may_be_nan = front.dtype.kind == "f" or back.dtype.kind == "f"
    front = front.astype(work) * work(gains[0])
    back = back.astype(work) * work(gains[1])
    weight = np.broadcast_to(np.asarray(weight, dtype=work), np.broadcast_shapes(front.shape, back.shape))
    if may_be_nan:
        has_front, has_back = np.isfinite(front), np.isfinite(back)
        if not (has_front.all() and has_back.all()):
            weight = np.where(has_front & has_back, weight, np.where(has_front, work(1), work(0)))
            front = np.where(has_front, front, work(0))
            back = np.where(has_back, back, work(0))
    fused = weight * front + (work(1) - weight) * back
    return cast_to(fused, out_dtype)


def cast_to(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)


def resolve_transition(method: str, transition_yx, frame_shape, n_planes: int):
    """The transition as a (Y, X) float64 map with NaNs replaced (or None for 'average')."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "average":
        return None
    if transition_yx is None:
        if method == "adaptive":
            raise ValueError("method='adaptive' needs a (Y, X) transition_yx map (see transition_plane_map)")
        transition_yx = (n_planes - 1) / 2.0
    transition = np.asarray(transition_yx, dtype=np.float64)
    if transition.ndim not in (0, 2) or (transition.ndim == 2 and transition.shape != tuple(frame_shape)):
        raise ValueError(f"transition_yx must be a number or a {tuple(frame_shape)} (Y, X) map, "
                         f"got shape {transition.shape}")
    finite = np.isfinite(transition)
    fallback = float(np.median(transition[finite])) if finite.any() else (n_planes - 1) / 2.0
    if method == "geometric":
        return np.full(frame_shape, fallback)
    if transition.ndim == 0:
        return np.full(frame_shape, fallback)
    return np.where(finite, transition, fallback)


def _blend_block(reference, moving, z_index, transition, blending_range, profile, gains, out_dtype):
    """Fuse one block: ``z_index`` (planes) and ``transition`` (its (y, x) tile) locate it."""
    if transition is None:
        weight = np.float64(0.5)
    else:
        weight = front_weight(z_index[:, None, None] - transition[None], blending_range, profile)
    return _mix(reference, moving, weight, gains, out_dtype)


def check_pair(reference, moving, name_a: str, name_b: str) -> None:
    require_ndim(reference, 3, name_a)
    if tuple(moving.shape) != tuple(reference.shape):
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got "
                         f"{tuple(reference.shape)} and {tuple(moving.shape)}")


def output_dtype(dtype, reference) -> np.dtype:
    return np.dtype(reference.dtype if dtype is None else dtype)


def blend(reference, moving_aligned, transition_yx=None, blending_range: float = 10.0, method: str = "adaptive",
          intensity: "IntensityResult | None" = None, *, profile: str = "sigmoid", dtype=np.float32) -> da.Array:
    """Fuse the reference camera and the aligned opposing camera along z, blockwise.

    Parameters
    ----------
    reference : dask or numpy array, shape (Z, Y, X)
        Reference camera (near side = low z), background-corrected.
    moving_aligned : dask or numpy array, shape (Z, Y, X)
        Opposing camera in the reference frame (after
        :func:`view_transform` and :func:`apply_inplane_transform`). NaN
        marks voxels it did not record; there the reference takes full
        weight (and vice versa), so the frame edges of a shifted camera
        leave no half-bright seam.
    transition_yx : float or array_like, shape (Y, X)
        Transition plane per pixel (fractional plane index), from
        :func:`transition_plane_map`; a number for one plane everywhere.
        NaN entries fall back to the geometric plane (the median of the
        finite entries, or the middle plane).
    blending_range : float
        Width (planes) of the weight ramp centred on the transition; 0 picks
        exactly one camera per voxel.
    method : {'adaptive', 'geometric', 'average'}
        'adaptive': the per-pixel map; 'geometric': one plane for all
        pixels (``transition_yx`` if a number, else the median of the map,
        else the middle plane); 'average': the mean of the two cameras.
    intensity : IntensityResult, optional
        Scales the dimmer camera by ``intensity.factor`` before blending.
    profile : {'sigmoid', 'linear'}
        Shape of the ramp (see :func:`blending_weights`).
    dtype : numpy dtype or None
        Output dtype (float32 by default; None keeps the reference's dtype;
        integer dtypes are rounded and clipped to their range).

    Returns
    -------
    dask.array.Array, shape (Z, Y, X)
        ``w * reference + (1 - w) * moving`` with ``w`` from
        :func:`blending_weights`, computed per block in float32 (float64
        when an input or ``dtype`` is float64).

    Notes
    -----
    ``dask.array.blockwise`` over the volumes (chunks unified between the
    two), the plane indices (z) and the transition map (y, x); each task
    fuses one block and needs only its tile of the map, so the result
    equals :func:`blend_numpy` whatever the chunking.
    """
    reference, moving_aligned = as_dask(reference), as_dask(moving_aligned)
    check_pair(reference, moving_aligned, "reference", "moving_aligned")
    check_ramp(blending_range, profile)
    n_planes, frame = reference.shape[0], reference.shape[1:]
    transition = resolve_transition(method, transition_yx, frame, n_planes)
    gains = blend_gains(intensity)
    dtype = output_dtype(dtype, reference)
    z_index = da.arange(n_planes, chunks=(reference.chunks[0],), dtype=np.float64)
    if transition is None:
        tiles, tile_index = None, None
    else:
        tiles, tile_index = da.from_array(transition, chunks=reference.chunks[1:]), "yx"
    return da.blockwise(_blend_block, "zyx", reference, "zyx", moving_aligned, "zyx", z_index, "z",
                        tiles, tile_index, blending_range=float(blending_range), profile=profile, gains=gains,
                        out_dtype=dtype, dtype=dtype, meta=np.empty((0, 0, 0), dtype))


def blend_numpy(reference, moving_aligned, transition_yx=None, blending_range: float = 10.0,
                method: str = "adaptive", intensity: "IntensityResult | None" = None, *,
                profile: str = "sigmoid", dtype=np.float32) -> np.ndarray:
    """In-memory reference of :func:`blend` (same parameters, numpy result)."""
    reference, moving_aligned = np.asarray(reference), np.asarray(moving_aligned)
    check_pair(reference, moving_aligned, "reference", "moving_aligned")
    check_ramp(blending_range, profile)
    n_planes, frame = reference.shape[0], reference.shape[1:]
    transition = resolve_transition(method, transition_yx, frame, n_planes)
    return _blend_block(reference, moving_aligned, np.arange(n_planes, dtype=np.float64), transition,
                        float(blending_range), profile, blend_gains(intensity), output_dtype(dtype, reference))


# --------------------------------------------------------------------------------------------- channels


def _channel_transition(transition, shape) -> np.ndarray:
    """Transition column per (z, y) as a (Z, Y) float64 map (NaN -> median -> centre)."""
    n_planes, height, width = shape
    centre = (width - 1) / 2.0
    if transition is None:
        return np.full((n_planes, height), centre)
    values = np.asarray(transition, dtype=np.float64)
    if values.ndim == 0:
        return np.full((n_planes, height), float(values) if np.isfinite(values) else centre)
    if values.shape != (n_planes, height):
        raise ValueError(f"transition must be a number or a ({n_planes}, {height}) (Z, Y) map of columns, "
                         f"got shape {values.shape}")
    finite = np.isfinite(values)
    fallback = float(np.median(values[finite])) if finite.any() else centre
    return np.where(finite, values, fallback)


def _channel_block(view_a, view_b, x_index, transition, blending_range, profile, gains, out_dtype):
    """Fuse one block along x: ``x_index`` locates its columns, ``transition`` is its (z, y) tile.

    Plane by plane, so the float64 weights and float32 temporaries are a few
    planes' worth, not several copies of a whole (shard-sized) block.
    """
    out = np.empty(np.broadcast_shapes(view_a.shape, view_b.shape), dtype=out_dtype)
    for k in range(out.shape[0]):
        weight = front_weight(x_index[None, :] - transition[k, :, None], blending_range, profile)
        out[k] = _mix(view_a[k], view_b[k], weight, gains, out_dtype)
    return out


def _prepare_channels(view_a, view_b, blending_range, axis, profile, intensity):
    if axis not in ("x", "z"):
        raise ValueError(f"axis must be 'x' or 'z', got {axis!r}")
    check_pair(view_a, view_b, "view_a", "view_b")
    check_ramp(blending_range, profile)
    return blend_gains(intensity)


def blend_channels(view_a, view_b, blending_range: float = 20.0, axis: str = "x", transition=None, *,
                   profile: str = "sigmoid", intensity: "IntensityResult | None" = None,
                   dtype=np.float32) -> da.Array:
    """Fuse two illumination channels (or two channel-fused views), blockwise.

    Parameters
    ----------
    view_a, view_b : dask or numpy array, shape (Z, Y, X)
        The two views, already in one frame. Along x, ``view_a`` is the one
        illuminated from the low-x side (it contributes at low x); along z,
        ``view_a`` contributes at low z.
    blending_range : float
        Width of the ramp in columns (x) or planes (z); the channel range of
        the MATLAB ``blendingRange = [channel, camera]``.
    axis : {'x', 'z'}
        'x': SiMView-style fusion of two illumination sides of one camera
        along the illumination axis. 'z': fusion of two pair-fused views
        along the detection axis, identical to :func:`blend` with
        ``method='adaptive'`` (a (Y, X) map) or ``'geometric'`` (a number).
    transition : None, float or array_like
        Along x: None for the centre column ``(X - 1) / 2``, a number for one
        column everywhere, or a (Z, Y) map of columns, e.g. the foreground
        centre per row, ``transition_plane_map(xz_a, xz_b, X)`` from the two
        views' xz coordinate masks. Along z: as ``transition_yx`` of
        :func:`blend` (None for the middle plane). NaN entries fall back to
        the median of the map.
    profile, intensity, dtype
        As for :func:`blend` (``intensity`` scales ``view_a`` for
        'reference', ``view_b`` for 'moving').

    Returns
    -------
    dask.array.Array, shape (Z, Y, X)
        ``w * view_a + (1 - w) * view_b``, ``w`` ramping from 1 to 0 across
        the transition along the chosen axis.
    """
    view_a, view_b = as_dask(view_a), as_dask(view_b)
    gains = _prepare_channels(view_a, view_b, blending_range, axis, profile, intensity)
    if axis == "z":
        method = "geometric" if transition is None or np.ndim(transition) == 0 else "adaptive"
        return blend(view_a, view_b, transition, blending_range, method, intensity, profile=profile, dtype=dtype)
    columns = _channel_transition(transition, view_a.shape)
    dtype = output_dtype(dtype, view_a)
    x_index = da.arange(view_a.shape[2], chunks=(view_a.chunks[2],), dtype=np.float64)
    tiles = da.from_array(columns, chunks=view_a.chunks[:2])
    return da.blockwise(_channel_block, "zyx", view_a, "zyx", view_b, "zyx", x_index, "x", tiles, "zy",
                        blending_range=float(blending_range), profile=profile, gains=gains,
                        out_dtype=dtype, dtype=dtype, meta=np.empty((0, 0, 0), dtype))


def blend_channels_numpy(view_a, view_b, blending_range: float = 20.0, axis: str = "x", transition=None, *,
                         profile: str = "sigmoid", intensity: "IntensityResult | None" = None,
                         dtype=np.float32) -> np.ndarray:
    """In-memory reference of :func:`blend_channels` (same parameters, numpy result)."""
    view_a, view_b = np.asarray(view_a), np.asarray(view_b)
    gains = _prepare_channels(view_a, view_b, blending_range, axis, profile, intensity)
    if axis == "z":
        method = "geometric" if transition is None or np.ndim(transition) == 0 else "adaptive"
        return blend_numpy(view_a, view_b, transition, blending_range, method, intensity, profile=profile,
                           dtype=dtype)
    columns = _channel_transition(transition, view_a.shape)
    return _channel_block(view_a, view_b, np.arange(view_a.shape[2], dtype=np.float64), columns,
                          float(blending_range), profile, gains, output_dtype(dtype, view_a))


# --------------------------------------------------------------------------------------------- content-based

#: Pre-smoothing (px) before the gradients of the sharpness measure: single-pixel noise is not detail.
SHARPNESS_PRE_SIGMA = 1.0
#: Regulariser of the sharpness weights: where neither view has detail, both weigh one half.
_SHARPNESS_EPS = 1e-6


def _tenengrad(volume, sigma_px: float, ndi):
    """Local sharpness: in-plane Sobel gradient energy, smoothed over ``sigma_px`` (and one plane in z).

    ``ndi`` is :mod:`scipy.ndimage` for numpy input or :mod:`dask_image.ndfilters` for dask input:
    the same filters with the same modes, so the blockwise result equals the in-memory one.
    """
    pre = ndi.gaussian_filter(volume, (0.0, SHARPNESS_PRE_SIGMA, SHARPNESS_PRE_SIGMA), mode="reflect")
    energy = ndi.sobel(pre, axis=1, mode="reflect") ** 2 + ndi.sobel(pre, axis=2, mode="reflect") ** 2
    return ndi.gaussian_filter(energy, (1.0, float(sigma_px), float(sigma_px)), mode="reflect")


def _sharpness_weight(sharp_front, sharp_back, power: float):
    front, back = sharp_front ** power, sharp_back ** power
    return (front + _SHARPNESS_EPS) / (front + back + 2 * _SHARPNESS_EPS)


def _sharpness_inputs(reference, moving_aligned, gains):
    """Both views in float32 with their gains; the moving one's unrecorded (NaN) voxels filled from the
    reference for the sharpness measure only (a NaN border would read as a sharp edge)."""
    front = reference.astype(np.float32) * np.float32(gains[0])
    back = moving_aligned.astype(np.float32) * np.float32(gains[1])
    filled = back if moving_aligned.dtype.kind != "f" else da.where(da.isnan(back), front, back) \
        if isinstance(back, da.Array) else np.where(np.isnan(back), front, back)
    return front, filled


def blend_by_sharpness(reference, moving_aligned, *, sigma_px: float = 4.0, power: float = 1.0,
                       intensity: "IntensityResult | None" = None, dtype=np.float32) -> da.Array:
    """Content-based fusion: each voxel weighted by the views' local sharpness (Tenengrad).

    An alternative to a transition plane (and to MATLAB's wavelet fusion,
    ``fusionType`` 2): wherever one view shows more detail than the other,
    it dominates, whatever the geometry.

    Parameters
    ----------
    reference, moving_aligned : dask or numpy array, shape (Z, Y, X)
        Two aligned views (e.g. the reference camera and the opposing one
        after :func:`~isoview_dask.fuse.apply_inplane_transform`, NaN where
        it did not record, or two illumination channels of one camera).
    sigma_px : float
        Gaussian sigma (px) over which the in-plane gradient energy is
        averaged (along z: one plane). Larger: smoother weights.
    power : float
        Weights ``S_a^p / (S_a^p + S_b^p)``; larger ``p`` picks the sharper
        view more decisively.
    intensity : IntensityResult, optional
        Scales the dimmer view first (as :func:`blend`), before sharpness is
        measured.
    dtype : numpy dtype or None
        Output dtype (None keeps the reference's).

    Returns
    -------
    dask.array.Array, shape (Z, Y, X)
        ``w * reference + (1 - w) * moving``, ``w`` the reference's share of
        the local gradient energy (Sobel in y and x after a 1 px Gaussian,
        smoothed by ``sigma_px``), 1/2 where neither has detail; NaN voxels
        take the other view.

    Notes
    -----
    ``dask_image.ndfilters`` (``map_overlap`` with halos as deep as the
    filters reach, scipy's 'reflect' mode at the stack's edges) and an
    elementwise mix, so the result equals :func:`blend_by_sharpness_numpy`
    whatever the chunking; a task holds a block, its halo and a few float32
    copies.
    """
    from dask_image import ndfilters

    reference, moving_aligned = as_dask(reference), as_dask(moving_aligned)
    check_pair(reference, moving_aligned, "reference", "moving_aligned")
    if not (sigma_px >= 0 and power > 0):
        raise ValueError(f"sigma_px must be >= 0 and power > 0, got {sigma_px}, {power}")
    moving_aligned = moving_aligned.rechunk(reference.chunks)
    gains = blend_gains(intensity)
    dtype = output_dtype(dtype, reference)
    front, filled = _sharpness_inputs(reference, moving_aligned, gains)
    weight = _sharpness_weight(_tenengrad(front, sigma_px, ndfilters), _tenengrad(filled, sigma_px, ndfilters),
                               float(power)).rechunk(reference.chunks)  # the filters may merge thin chunks
    return da.map_blocks(_mix, reference, moving_aligned, weight, gains=gains, out_dtype=dtype, dtype=dtype,
                         meta=np.empty((0, 0, 0), dtype))


def blend_by_sharpness_numpy(reference, moving_aligned, *, sigma_px: float = 4.0, power: float = 1.0,
                             intensity: "IntensityResult | None" = None, dtype=np.float32) -> np.ndarray:
    """In-memory reference of :func:`blend_by_sharpness` (same parameters, numpy result)."""
    reference, moving_aligned = np.asarray(reference), np.asarray(moving_aligned)
    check_pair(reference, moving_aligned, "reference", "moving_aligned")
    gains = blend_gains(intensity)
    front, filled = _sharpness_inputs(reference, moving_aligned, gains)
    weight = _sharpness_weight(_tenengrad(front, sigma_px, ndimage), _tenengrad(filled, sigma_px, ndimage),
                               float(power))
    return _mix(reference, moving_aligned, weight, gains, output_dtype(dtype, reference))
