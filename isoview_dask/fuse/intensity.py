"""Intensity matching of two opposing cameras before blending.

The two cameras of a pair differ in gain (counts per photon) and each is
dimmed by scattering on its far side. Comparing them over the whole
specimen would mix the gain with that depth-dependent attenuation, so the
comparison is made where the two see the same tissue through the same
depth: on the transition surface (the middle of the specimen along z,
:mod:`isoview_dask.fuse.surface`), in the overlap of both foreground
masks. The ratio found there is the gain ratio; the dimmer camera is
scaled up by it so that the blend shows no seam. Two illumination channels
of one camera are matched the same way along x
(:func:`channel_intensity_factor`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dask
import numpy as np

from ..correct.arrays import as_dask, require_ndim
from .surface import coordinate_depths, fitted_surface, surface_image
from .transforms import apply_inplane_transform_numpy, inverse_transform

#: Surface pixels needed in the overlap for a meaningful ratio.
MIN_OVERLAP_PIXELS = 16


@dataclass(frozen=True)
class IntensityResult:
    """Outcome of :func:`intensity_factor`.

    Attributes
    ----------
    factor : float
        Multiplier (>= 1) for the dimmer camera.
    scaled_camera : {'reference', 'moving'}
        Which camera is multiplied by ``factor``.
    ratio : float
        Brightness of the moving camera over the reference camera
        (``moving / reference``; the gain ratio ``gain_moving / gain_ref``
        when the two differ only in gain).
    overlap_pixels : int
        Surface pixels the ratio was computed from.
    """

    factor: float
    scaled_camera: str
    ratio: float
    overlap_pixels: int = 0

    @classmethod
    def from_ratio(cls, ratio: float, overlap_pixels: int = 0) -> "IntensityResult":
        """The correction for a given ``moving / reference`` brightness ratio."""
        ratio = float(ratio)
        if not (math.isfinite(ratio) and ratio > 0):
            raise ValueError(f"ratio must be a positive finite number, got {ratio!r}")
        if ratio < 1.0:
            return cls(1.0 / ratio, "moving", ratio, overlap_pixels)
        return cls(ratio, "reference", ratio, overlap_pixels)

    def summary(self) -> dict:
        """Plain-value form for a JSON record."""
        return {"factor": self.factor, "scaled_camera": self.scaled_camera, "ratio": self.ratio,
                "overlap_pixels": self.overlap_pixels}


def intensity_factor(reference, moving_aligned, mask_ref, mask_mov, percentile: float | None = None, *,
                     transition_yx=None, slab_planes: float = 1.0, moving_transform=None) -> IntensityResult:
    """Brightness ratio of two aligned cameras and the factor that equalises them.

    Parameters
    ----------
    reference, moving_aligned : dask or numpy array, shape (Z, Y, X)
        Background-corrected reference camera and the opposing camera in
        its frame (flipped and aligned; NaN or 0 where not recorded).
    mask_ref, mask_mov : dask or numpy array of bool, shape (Z, Y, X)
        Foreground masks in the same frame (the moving one aligned like
        ``moving_aligned``, e.g. with ``order=0``).
    percentile : float, optional
        None (default): the ratio of the sums of the two cameras over the
        overlap. A number in (0, 100]: the ratio of that percentile of the
        two cameras' values in the overlap (less sensitive to a few bright
        voxels present in one camera only, slightly more to noise).
    transition_yx : float or array_like, shape (Y, X), optional
        The surface to compare on (plane index per pixel). Default: the
        middle of the specimen, a smooth fit to the two masks' coordinate
        masks (:func:`~isoview_dask.fuse.surface.fitted_surface`).
    slab_planes : float
        Half-width (planes, >= 1) of the slab around the surface
        (:func:`~isoview_dask.fuse.surface_image`).
    moving_transform : (offset_yx, rotation_deg), optional
        Given, ``moving_aligned`` and ``mask_mov`` are the moving camera and
        its mask *before* the in-plane transform (after the flips only), and
        this is the transform of :func:`~isoview_dask.fuse.apply_inplane_transform`
        that aligns them. The surface is then carried into the moving
        camera's frame, its slab image taken there, and the two (Y, X)
        images resampled onto the reference grid: the same comparison
        without resampling a single plane of the volume.

    Returns
    -------
    IntensityResult
        ``ratio = moving / reference``; the dimmer camera is scaled up.

    Raises
    ------
    ValueError
        If fewer than 16 surface pixels lie in the overlap of both masks
        with positive values in both cameras.

    Notes
    -----
    Each camera is attenuated on its far side, exponentially with depth,
    so a ratio over the whole overlap depends on where the overlap lies.
    On the surface halfway through the specimen both look through the same
    depth and the attenuation cancels; the slab's weights are symmetric
    about it so what remains cancels to first order. The volumes are
    reduced lazily to four (Y, X) images (two cameras, two masks) over
    the planes the surface passes through; only those are computed.
    """
    reference, moving_aligned = as_dask(reference), as_dask(moving_aligned)
    require_ndim(reference, 3, "reference")
    for name, array in (("moving_aligned", moving_aligned), ("mask_ref", mask_ref), ("mask_mov", mask_mov)):
        if array is None or tuple(array.shape) != tuple(reference.shape):
            raise ValueError(f"{name} must be a {tuple(reference.shape)} (Z, Y, X) array, got "
                             f"{None if array is None else tuple(array.shape)}")
    if percentile is not None and not 0 < percentile <= 100:
        raise ValueError(f"percentile must lie in (0, 100] or be None, got {percentile!r}")
    n_planes = reference.shape[0]
    if transition_yx is None:
        surface = fitted_surface(*coordinate_depths(mask_ref, mask_mov), n_planes)
    else:
        surface = np.asarray(transition_yx, dtype=np.float64)
    if moving_transform is None:
        surface_mov = surface
    else:
        offset, rotation = moving_transform
        surface_mov = _carried_surface(surface, offset, rotation)
    images = [surface_image(reference, surface, slab_planes), surface_image(moving_aligned, surface_mov, slab_planes),
              surface_image(as_dask(mask_ref), surface, slab_planes),
              surface_image(as_dask(mask_mov), surface_mov, slab_planes)]
    ref_s, mov_s, fg_ref, fg_mov = dask.compute(*images)
    if moving_transform is not None:
        mov_s = apply_inplane_transform_numpy(mov_s, offset, rotation, order=1, cval=np.nan)
        fg_mov = apply_inplane_transform_numpy(fg_mov, offset, rotation, order=0, cval=0.0)
    overlap = (fg_ref >= 0.5) & (fg_mov >= 0.5) & np.isfinite(ref_s) & np.isfinite(mov_s)
    overlap &= (ref_s > 0) & (mov_s > 0)
    count = int(overlap.sum())
    if count < MIN_OVERLAP_PIXELS:
        raise ValueError(f"only {count} pixels of the transition surface lie in both cameras' foreground "
                         f"(need {MIN_OVERLAP_PIXELS}); check the masks and the alignment")
    ref_values = ref_s[overlap].astype(np.float64)
    mov_values = mov_s[overlap].astype(np.float64)
    if percentile is None:
        ratio = mov_values.sum() / ref_values.sum()
    else:
        ratio = np.percentile(mov_values, percentile) / np.percentile(ref_values, percentile)
    return IntensityResult.from_ratio(ratio, count)


def channel_intensity_factor(view_a, view_b, mask_a, mask_b, transition_zy, percentile: float | None = None, *,
                             slab_columns: float = 1.0) -> IntensityResult:
    """Brightness ratio of two illumination channels of one camera, compared on their transition.

    Parameters
    ----------
    view_a, view_b : dask or numpy array, shape (Z, Y, X)
        The channel lit from the low-x side and the one lit from the
        high-x side (background-corrected, one frame).
    mask_a, mask_b : dask or numpy array of bool, shape (Z, Y, X)
        Their foreground masks.
    transition_zy : float or array_like, shape (Z, Y)
        Transition column per plane and row (fractional column index),
        e.g. ``transition_plane_map(xz_a, xz_b, X)``.
    percentile : float, optional
        As for :func:`intensity_factor`.
    slab_columns : float
        Half-width (columns, >= 1) of the slab around the transition.

    Returns
    -------
    IntensityResult
        ``ratio = b / a``; ``scaled_camera`` 'reference' means channel a is
        scaled up, 'moving' channel b.

    Notes
    -----
    The same comparison as :func:`intensity_factor` with x in the role of
    z: the volumes are viewed as (X, Z, Y) (a transpose, no copy), so the
    transition columns are a surface over (Z, Y). At the middle of the
    specimen along x both light sheets have crossed the same depth of
    tissue, so their attenuation cancels and what remains is the ratio of
    the two illumination powers.
    """
    arrays = [as_dask(v) for v in (view_a, view_b, mask_a, mask_b)]
    require_ndim(arrays[0], 3, "view_a")
    columns = np.asarray(transition_zy, dtype=np.float64)
    if columns.ndim == 2 and columns.shape != tuple(arrays[0].shape[:2]):
        raise ValueError(f"transition_zy must be a number or a {tuple(arrays[0].shape[:2])} (Z, Y) map, got shape "
                         f"{columns.shape}")
    turned = [a.transpose(2, 0, 1) for a in arrays]
    try:
        return intensity_factor(*turned, percentile, transition_yx=columns, slab_planes=slab_columns)
    except ValueError as exc:
        raise ValueError(f"illumination channels: {exc}".replace("both cameras'", "both channels'")) from exc


def _carried_surface(surface, offset_yx, rotation_deg) -> np.ndarray:
    """The surface ``s(q)`` of the reference grid expressed on the moving camera's grid.

    The moving pixel ``p`` that reference pixel ``q`` samples gets ``s(q)``;
    pixels no reference pixel samples take the nearest value (the surface is
    smooth), so the result is finite everywhere.
    """
    from scipy import ndimage

    from .transforms import affine_offset, inplane_matrix

    back_offset, back_rotation = inverse_transform(offset_yx, rotation_deg)
    surface = np.asarray(surface, dtype=np.float64)
    matrix = inplane_matrix(back_rotation)
    shift = affine_offset(surface.shape, back_offset, matrix, (0.0, 0.0))
    return ndimage.affine_transform(surface, matrix, offset=shift, order=1, mode="nearest")
