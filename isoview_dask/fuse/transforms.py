"""Geometric transforms that bring the opposing camera into the reference frame.

Two steps, both lazy and blockwise: :func:`view_transform` undoes the gross
mirror geometry of the opposing camera (flips, quarter turns; pure index
operations), and :func:`apply_inplane_transform` resamples the flipped
volume plane by plane onto the reference camera's pixel grid with the small
residual translation and rotation found by registration.

Convention (the same as :mod:`isoview_dask.synthetic`): with ``F`` the
flipped moving camera, ``c = ((Y-1)/2, (X-1)/2)`` the frame centre,
``t = (dy, dx)`` the offset in pixels and ``R(theta) = [[cos, -sin],
[sin, cos]]`` acting on (y, x) column vectors, the aligned image is
``A[k, q] = F[k, R(theta) (q - c) + c + t]`` for every reference pixel
``q = (y, x)`` of every plane ``k``.
"""

from __future__ import annotations

import math
from typing import Sequence

import dask.array as da
import numpy as np
from scipy import ndimage

from ..correct._arrays import as_dask, require_ndim
from ..correct.orient import orient

#: Extra halo (pixels) beyond the largest displacement, per interpolation order.
#: Orders above 1 use spline prefiltering, whose influence decays by a factor
#: of about 0.27 (cubic) per pixel, so 24 pixels make chunk borders invisible.
_INTERPOLATION_MARGIN = {0: 1, 1: 2}
_SPLINE_MARGIN = 24


def view_transform(volume, flip_h: bool = False, flip_v: bool = False, rotation: int = 0,
                   flip_z: bool = False):
    """Mirror and rotate a camera volume into its opposing camera's orientation.

    Parameters
    ----------
    volume : numpy or dask array, shape (Z, Y, X) or (Y, X)
        A camera stack, or a (Y, X) image of it (projection, coordinate mask).
    flip_h : bool
        Mirror left-right: ``out[..., x] = volume[..., X-1-x]``. This is the
        transform of camera 1 (3) onto camera 0 (2) in the IsoView geometry.
    flip_v : bool
        Mirror up-down (reverse Y).
    rotation : {0, 90, 180, 270}
        Counter-clockwise quarter turns in degrees as displayed (row 0 at
        the top), ``numpy.rot90`` over the last two axes; applied before
        the flips.
    flip_z : bool
        Reverse the plane order (3D input only).

    Returns
    -------
    Same type as ``volume``, lazy for dask input (only indexing, no copy).
    """
    if volume.ndim not in (2, 3):
        raise ValueError(f"volume must be a (Z, Y, X) or (Y, X) array, got shape {tuple(volume.shape)}")
    out = orient(volume, rotation=rotation, flip_h=flip_h, flip_v=flip_v)
    if flip_z:
        if volume.ndim != 3:
            raise ValueError("flip_z needs a (Z, Y, X) volume")
        out = out[::-1]
    return out


def inplane_matrix(rotation_deg: float) -> np.ndarray:
    """The 2 x 2 rotation ``R(theta)`` acting on (y, x) column vectors (theta in degrees)."""
    theta = math.radians(float(rotation_deg))
    return np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])


def inverse_transform(offset_yx, rotation_deg: float) -> tuple[tuple[float, float], float]:
    """The (offset, rotation) that undoes ``(offset_yx, rotation_deg)`` (the module's convention).

    Sampling ``F`` at ``p = R(theta)(q - c) + c + t`` is undone by sampling at
    ``q = R(-theta)(p - c) + c - R(-theta) t``: offset ``-R(-theta) t``,
    rotation ``-theta``. In the parameters record the pair is the motion
    applied to the moving camera's content.
    """
    back = inplane_matrix(-float(rotation_deg))
    displacement = -back @ np.asarray(offset_yx, dtype=float)
    return (float(displacement[0]), float(displacement[1])), -float(rotation_deg)


def max_displacement_px(frame_shape: Sequence[int], offset_yx, rotation_deg: float) -> float:
    """Largest distance (pixels) between a reference pixel and where it samples the moving frame.

    ``|p(q) - q| = |(R - I)(q - c) + t| <= |t| + 2 sin(|theta| / 2) * h``,
    with ``h`` the frame's half-diagonal (the farthest any pixel lies from
    the centre of rotation).
    """
    height, width = (int(s) for s in frame_shape)
    half_diagonal = math.hypot((height - 1) / 2, (width - 1) / 2)
    turn = 2.0 * math.sin(abs(math.radians(float(rotation_deg))) / 2.0)
    return float(np.hypot(*np.asarray(offset_yx, dtype=float))) + turn * half_diagonal


def _check_transform(offset_yx, rotation_deg: float, order: int) -> np.ndarray:
    offset = np.asarray(offset_yx, dtype=float)
    if offset.shape != (2,) or not np.all(np.isfinite(offset)):
        raise ValueError(f"offset_yx must be two finite numbers (dy, dx) in pixels, got {offset_yx!r}")
    if not math.isfinite(float(rotation_deg)):
        raise ValueError(f"rotation_deg must be finite, got {rotation_deg!r}")
    if order not in range(6):
        raise ValueError(f"order must be an integer 0-5 (spline order), got {order!r}")
    return offset


def _affine_offset(frame_shape, offset_yx, rotation, origin) -> np.ndarray:
    """``scipy.ndimage.affine_transform`` offset for a window whose pixel (0, 0) is global ``origin``.

    Output pixel ``u`` of the window is global ``q = u + origin``; its
    source ``p = R (q - c) + c + t`` is ``v = p - origin`` in the window,
    so ``v = R u + [R (origin - c) + c + t - origin]``.
    """
    centre = (np.asarray(frame_shape, dtype=float) - 1.0) / 2.0
    origin = np.asarray(origin, dtype=float)
    return rotation @ (origin - centre) + centre + np.asarray(offset_yx, float) - origin


def _resample_planes(block: np.ndarray, frame_shape, offset_yx, rotation_deg, origin, order, cval,
                     dtype) -> np.ndarray:
    """Resample every (Y, X) plane of ``block`` (a window at global ``origin``) with the pair convention."""
    rotation = inplane_matrix(rotation_deg)
    shift = _affine_offset(frame_shape, offset_yx, rotation, origin)
    work = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    planes = block.reshape((-1,) + block.shape[-2:])
    out = np.empty(planes.shape, dtype=work)
    for i, plane in enumerate(planes):
        ndimage.affine_transform(plane.astype(work, copy=False), rotation, offset=shift, order=order,
                                 mode="constant", cval=cval, output=out[i])
    return out.reshape(block.shape).astype(dtype, copy=False)


def apply_inplane_transform_numpy(volume, offset_yx, rotation_deg: float, order: int = 1,
                                  cval: float = 0.0, dtype=np.float32) -> np.ndarray:
    """In-memory reference of :func:`apply_inplane_transform` (any (..., Y, X) array).

    Same parameters and result; also serves small 2D images (projections,
    coordinate masks) during registration and blending.
    """
    volume = np.asarray(volume)
    if volume.ndim < 2:
        raise ValueError(f"volume must be an array (..., Y, X), got shape {volume.shape}")
    offset = _check_transform(offset_yx, rotation_deg, order)
    return _resample_planes(volume, volume.shape[-2:], offset, rotation_deg, (0.0, 0.0), order, cval,
                            np.dtype(dtype))


def apply_inplane_transform(volume, offset_yx, rotation_deg: float, order: int = 1, cval: float = 0.0,
                            dtype=np.float32) -> da.Array:
    """Resample the (flipped) moving camera onto the reference camera's grid, blockwise.

    Parameters
    ----------
    volume : dask or numpy array, shape (Z, Y, X)
        The moving camera after :func:`view_transform`, any numeric dtype.
    offset_yx : (dy, dx)
        Translation ``t`` in pixels (see the module's convention), e.g.
        :attr:`RegistrationResult.offset_yx`.
    rotation_deg : float
        Rotation ``theta`` in degrees about the frame centre.
    order : int
        Spline order of the interpolation (0 nearest, 1 linear, 3 cubic).
    cval : float
        Value of reference pixels whose source lies outside the moving
        frame. ``numpy.nan`` marks them as not recorded, which
        :func:`~isoview_dask.fuse.blend` then fills from the other camera.
    dtype : numpy dtype
        Output dtype (float32 by default; float64 for extra precision).

    Returns
    -------
    dask.array.Array, shape (Z, Y, X), ``dtype``
        ``out[k, q] = volume[k, R(theta)(q - c) + c + t]`` for every plane
        ``k`` and pixel ``q = (y, x)``.

    Notes
    -----
    ``map_overlap`` with no halo in z and a halo in y and x equal to the
    largest displacement of any pixel (:func:`max_displacement_px`) plus an
    interpolation margin (1-2 pixels for orders 0-1, 24 for spline
    orders), with ``boundary='none'``: every output pixel finds its whole
    interpolation neighbourhood inside its padded block, and blocks at the
    frame's edges end where the frame does, so the result equals
    :func:`apply_inplane_transform_numpy` whatever the chunking. Chunks
    narrower than the halo are merged first (the output keeps the merged
    chunking in y and x).
    """
    volume = as_dask(volume)
    require_ndim(volume, 3, "volume")
    offset = _check_transform(offset_yx, rotation_deg, order)
    dtype = np.dtype(dtype)
    frame = volume.shape[1:]
    margin = _INTERPOLATION_MARGIN.get(order, _SPLINE_MARGIN)
    halo = int(math.ceil(max_displacement_px(frame, offset, rotation_deg))) + margin
    chunks = [volume.chunks[0]] + [_merge_small_chunks(c, halo) for c in volume.chunks[1:]]
    volume = volume.rechunk(tuple(chunks))
    depth = {0: 0, 1: halo if len(chunks[1]) > 1 else 0, 2: halo if len(chunks[2]) > 1 else 0}
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in chunks]

    def resample_block(block, block_info=None):
        location = block_info[0]["chunk-location"]
        origin = [starts[axis][location[axis]] - (depth[axis] if location[axis] > 0 else 0)
                  for axis in (1, 2)]
        return _resample_planes(block, frame, offset, rotation_deg, origin, order, cval, dtype)

    return da.map_overlap(resample_block, volume, depth=depth, boundary="none", allow_rechunk=False,
                          dtype=dtype, meta=np.empty((0, 0, 0), dtype))


def _merge_small_chunks(chunks: Sequence[int], minimum: int) -> tuple[int, ...]:
    """Merge neighbouring chunks until every chunk has at least ``minimum`` elements.

    A single chunk is returned unchanged whatever its size (it needs no halo).
    """
    merged: list[int] = []
    for size in chunks:
        if merged and merged[-1] < minimum:
            merged[-1] += size
        else:
            merged.append(size)
    if len(merged) > 1 and merged[-1] < minimum:
        tail = merged.pop()
        merged[-1] += tail
    return tuple(merged)
