"""Reduction of a volume to a thin slab around the transition surface.

Both registration and intensity matching compare the two cameras where
they see the specimen equally well: at the middle of the specimen along
the detection axis, where each camera looks through the same depth of
tissue (equal attenuation, equal blur). That place is a surface
``z = s(y, x)`` (the transition plane map); the helpers here reduce a
(Z, Y, X) volume to one (Y, X) image on that surface, reading only the
planes the surface passes through.
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np

from ..correct import coordinate_masks
from ..correct.arrays import as_dask, require_ndim
from .blending import combined_depth, without_rim


#: Valid pixels (about) on which :func:`fitted_surface` fits its polynomial; larger maps are subsampled.
FIT_POINTS = 250_000


def surface_image(volume, surface_yx, half_width: float = 1.0) -> da.Array:
    """Average of a volume over a thin slab that follows a surface ``z = s(y, x)``.

    Parameters
    ----------
    volume : dask or numpy array, shape (Z, Y, X)
        A camera stack (or a boolean mask: the result is then the fraction
        of foreground in the slab).
    surface_yx : float or array_like, shape (Y, X)
        Surface height in planes (fractional plane index, finite).
    half_width : float
        Half-width of the slab in planes, at least 1. Each plane ``k``
        gets the triangular weight ``max(0, 1 - |k - s| / half_width)``;
        ``half_width = 1`` is the linear interpolation of the volume at the
        surface (the two planes either side of it).

    Returns
    -------
    dask.array.Array, float32, shape (Y, X)
        Weighted mean of the slab per pixel (lazy; a reduction over the
        planes between ``min(s) - half_width`` and ``max(s) + half_width``
        only).

    Notes
    -----
    The weights are symmetric about the surface, so where the surface is
    the middle of the specimen two opposing cameras are weighted at
    mirror-image depths. A thicker slab averages more noise away, but
    mixes depths one camera sees sharper or brighter than the other.
    """
    volume = as_dask(volume)
    require_ndim(volume, 3, "volume")
    if not (math.isfinite(half_width) and half_width >= 1.0):
        raise ValueError(f"half_width must be at least 1 plane, got {half_width!r}")
    n_planes, frame = volume.shape[0], volume.shape[1:]
    surface = np.broadcast_to(np.asarray(surface_yx, dtype=np.float64), frame)
    if not np.all(np.isfinite(surface)):
        raise ValueError("surface_yx must be finite everywhere (e.g. from fitted_surface or transition_plane_map)")
    surface = np.clip(surface, 0.0, n_planes - 1.0)
    first = max(0, int(math.floor(surface.min() - half_width)) + 1)
    last = min(n_planes, int(math.ceil(surface.max() + half_width)))
    first = min(first, last - 1)
    slab = volume[first:last]
    # One task per block gives the block's weighted sum and weight sum (2, Y, X): a handful of
    # graph layers instead of a dozen elementwise ones, which on small frames cost more to build
    # than to compute.
    height = da.from_array(surface.astype(np.float32)[None], chunks=((1,),) + slab.chunks[1:])
    sums = da.map_blocks(_slab_sums, slab, height, first=first, half_width=np.float32(half_width),
                         chunks=((2,) * slab.numblocks[0],) + slab.chunks[1:], dtype=np.float32,
                         meta=np.empty((0, 0, 0), np.float32))
    if slab.numblocks[0] > 1:
        sums = sums.reshape((slab.numblocks[0], 2) + slab.shape[1:]).sum(axis=0)
    return da.map_blocks(_ratio, sums, drop_axis=0, dtype=np.float32, meta=np.empty((0, 0), np.float32))


def _slab_sums(block, height, first: int, half_width: np.float32, block_info=None) -> np.ndarray:
    """(weighted sum, weight sum) over the planes of one block, with the triangular weights of
    :func:`surface_image` around ``height`` (1, Y, X); ``first`` is the slab's first plane."""
    start = first + block_info[0]["array-location"][0][0]
    depth = np.arange(start, start + block.shape[0], dtype=np.float32)[:, None, None]
    weight = np.maximum(np.float32(0), 1 - abs(depth - height) / half_width)
    return np.stack([(weight * block.astype(np.float32)).sum(axis=0), weight.sum(axis=0)])


def _ratio(sums: np.ndarray) -> np.ndarray:
    return (sums[0] / sums[1]).astype(np.float32)


def coordinate_depths(*masks) -> list:
    """Mean foreground depth per pixel of each mask (computed together; None for a missing mask).

    Parameters
    ----------
    *masks : dask or numpy array of bool, shape (Z, Y, X), or None

    Returns
    -------
    list of numpy.ndarray (float32, shape (Y, X), NaN where no foreground) or None
        The xy coordinate masks (:func:`isoview_dask.correct.coordinate_masks`).
    """
    present = [i for i, mask in enumerate(masks) if mask is not None]
    computed = iter(da.compute(*[coordinate_masks(masks[i])[0] for i in present]))
    return [next(computed) if mask is not None else None for mask in masks]


def fitted_surface(depth_ref=None, depth_mov=None, n_planes: int | None = None, *, degree: int = 2,
                   margin: float = 2.0, rim_px: int = 4) -> np.ndarray:
    """A smooth surface through the middle of the specimen: a robust polynomial fit of the depth maps.

    Parameters
    ----------
    depth_ref, depth_mov : array_like, shape (Y, X), optional
        xy coordinate masks (mean z of foreground per pixel; NaN where
        none), e.g. from :func:`coordinate_depths`. The moving camera's map
        need not be aligned: the fit only follows the specimen's overall
        tilt and curvature.
    n_planes : int
        Number of planes Z.
    degree : int
        Degree of the polynomial in y and x (0: one plane, 1: a tilted
        plane, 2: also curved).
    margin, rim_px
        Values near the volume's ends and at the rim of the specimen are
        left out, as in :func:`~isoview_dask.fuse.transition_plane_map`.

    Returns
    -------
    numpy.ndarray, float64, shape (Y, X)
        Surface height in planes, within ``[0, n_planes - 1]``; the middle
        plane everywhere when no map is given or none has valid values.

    Notes
    -----
    Where both maps are valid their average is fitted (else the single
    valid values, as in :func:`~isoview_dask.fuse.transition_plane_map`). The fit is least
    squares, repeated three times without the pixels whose residual
    exceeds three robust standard deviations (at least 0.5 plane).
    Registration and intensity matching compare the cameras on this
    surface. A smooth surface is used rather than the per-pixel map
    because on the test data the map's local errors of a few tenths of a
    plane, by mixing planes one or the other camera sees better in
    different parts of the frame, biased the estimated rotation by up to
    0.1 degree.
    """
    if n_planes is None or int(n_planes) < 1:
        raise ValueError(f"n_planes must be a positive number of planes, got {n_planes!r}")
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree!r}")
    maps = [m for m in (depth_ref, depth_mov) if m is not None]
    if not maps:
        return np.asarray((n_planes - 1) / 2.0)
    combined = combined_depth(maps[0], maps[1] if len(maps) > 1 else None, n_planes, margin)
    valid = without_rim(np.isfinite(combined), rim_px)
    height, width = combined.shape
    if not valid.any():
        return np.full((height, width), (n_planes - 1) / 2.0)
    rows, cols = np.mgrid[0:height, 0:width]
    u = (rows - (height - 1) / 2) / max(height / 2, 1)
    v = (cols - (width - 1) / 2) / max(width / 2, 1)
    terms = [u**i * v**j for i in range(degree + 1) for j in range(degree + 1 - i)]
    # A low-order surface needs no millions of points: large maps are fitted on a regular
    # sub-grid of at most about FIT_POINTS valid pixels (the surface is still evaluated everywhere).
    step = max(1, int(math.sqrt(int(valid.sum()) / FIT_POINTS)))
    if step > 1:
        valid = valid & (rows % step == 0) & (cols % step == 0)
    design = np.stack([t[valid] for t in terms], axis=1)
    target = combined[valid]
    keep = np.ones(target.size, bool)
    for _ in range(3):
        coefficients = np.linalg.lstsq(design[keep], target[keep], rcond=None)[0]
        residual = target - design @ coefficients
        scale = max(1.4826 * float(np.median(np.abs(residual[keep]))), 0.5)
        keep = np.abs(residual) <= 3 * scale
        if keep.sum() < design.shape[1]:
            break
    surface = sum(c * t for c, t in zip(coefficients, terms))
    return np.clip(surface, 0.0, n_planes - 1.0)


