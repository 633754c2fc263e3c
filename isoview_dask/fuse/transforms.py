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

import functools
import math
from typing import Sequence

import dask.array as da
import numpy as np
from scipy import ndimage

from ..correct.arrays import as_dask, require_ndim
from ..correct.orient import orient

#: Extra halo (pixels) beyond the largest displacement, per interpolation order.
#: Orders above 1 use spline prefiltering, whose influence decays by a factor
#: of about 0.27 (cubic) per pixel, so 24 pixels make chunk borders invisible.
INTERPOLATION_MARGIN = {0: 1, 1: 2}
SPLINE_MARGIN = 24


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


def check_transform(offset_yx, rotation_deg: float, order: int) -> np.ndarray:
    offset = np.asarray(offset_yx, dtype=float)
    if offset.shape != (2,) or not np.all(np.isfinite(offset)):
        raise ValueError(f"offset_yx must be two finite numbers (dy, dx) in pixels, got {offset_yx!r}")
    if not math.isfinite(float(rotation_deg)):
        raise ValueError(f"rotation_deg must be finite, got {rotation_deg!r}")
    if order not in range(6):
        raise ValueError(f"order must be an integer 0-5 (spline order), got {order!r}")
    return offset


#: Frame sizes at or above this (pixels) go to scipy: OpenCV's warps take sizes below ``SHRT_MAX``.
_OPENCV_MAX_SIDE = 32767


@functools.cache
def _opencv_warp():
    """``cv2.warpAffine`` if OpenCV interpolates float images exactly (OpenCV >= 5), else None.

    OpenCV 4 rounds linear-interpolation weights to 1/32 pixel, which is
    coarser than a sub-pixel registration: probed once on a ramp shifted by
    1/3 pixel rather than trusted from the version number.
    """
    try:
        import cv2
    except ImportError:  # pragma: no cover - a declared dependency; scipy still works
        return None
    ramp = np.tile(np.arange(8, dtype=np.float32), (4, 1))
    probe = cv2.warpAffine(ramp, np.array([[1.0, 0.0, 1.0 / 3.0], [0.0, 1.0, 0.0]]), (4, 4),
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    if not np.allclose(probe[:, :3], ramp[:, :3] + np.float32(1.0 / 3.0), atol=1e-5):
        return None
    return cv2.warpAffine


def affine_plane(image: np.ndarray, matrix: np.ndarray, offset, output_shape, *, order: int = 1,
                 cval: float = 0.0, output: np.ndarray | None = None) -> np.ndarray:
    """Resample one (Y, X) image: ``out[q] = image[matrix @ q + offset]``, outside the image ``cval``.

    The semantics of ``scipy.ndimage.affine_transform(..., mode="constant")``
    (a source point outside ``[0, n - 1]`` in y or x gives ``cval``; no
    interpolation beyond the edges). Linear interpolation (``order=1``) of
    float32 images runs in OpenCV's ``warpAffine``, 10-20x faster than scipy
    and equal to it to float32 rounding (OpenCV keeps source coordinates in
    single precision: about 1e-4 of the local intensity step per pixel);
    float64 images (asked for precision) and other orders use scipy.

    Parameters
    ----------
    image : ndarray, (Y, X)
    matrix : ndarray, (2, 2)
        Acts on (y, x) column vectors of output pixel indices.
    offset : (oy, ox)
        Source position of output pixel (0, 0), pixels.
    output_shape : (Y, X)
    order : int
        Spline order (0-5) as in scipy.
    output : ndarray, optional
        Written in place when given (C-contiguous, ``output_shape``).

    Returns
    -------
    ndarray, ``output_shape``
        ``output`` if given, else a new array of ``image``'s dtype.
    """
    matrix = np.asarray(matrix, dtype=float)
    offset = np.asarray(offset, dtype=float)
    shape = tuple(int(n) for n in output_shape)
    warp = _opencv_warp() if order == 1 else None
    fill = not math.isnan(cval)
    if (warp is not None and image.ndim == 2 and image.dtype == np.float32
            and max(image.shape + shape) < _OPENCV_MAX_SIDE and min(image.shape + shape) > 0
            and (output is None or (output.dtype == image.dtype and output.flags.c_contiguous
                                    and output.shape == shape))
            and not (fill and np.isnan(image).any())):
        import cv2
        # OpenCV's inverse map works on (x, y) = (column, row). It interpolates between the
        # border value and the edge pixels for sources less than a pixel outside, where scipy
        # gives cval: a NaN border marks exactly those (and the ones further out) ...
        forward = np.array([[matrix[1, 1], matrix[1, 0], offset[1]], [matrix[0, 1], matrix[0, 0], offset[0]]])
        result = warp(np.ascontiguousarray(image), forward, (shape[1], shape[0]), dst=output,
                      flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                      borderValue=float("nan"))
        if output is not None and result is not output:  # pragma: no cover - OpenCV reallocated
            output[...] = result
            result = output
        if fill:  # ... which then take cval (the image itself has no NaN here)
            np.copyto(result, result.dtype.type(cval), where=np.isnan(result))
        return result
    return ndimage.affine_transform(image, matrix, offset=offset, output_shape=shape, order=order,
                                    mode="constant", cval=cval, output=output)


def cubic_plane(image: np.ndarray, matrix: np.ndarray, offset, output_shape) -> np.ndarray | None:
    """Fast cubic resampling of a float32 (Y, X) image: ``out[q] = image[matrix @ q + offset]``, or None.

    OpenCV's cubic convolution (``INTER_CUBIC``: Keys' kernel with a = -0.75)
    with mirrored edges (scipy's ``mode='mirror'``), 20-30x faster than
    scipy's cubic B-spline and about as accurate as linear interpolation on
    smooth images (the B-spline is far more accurate): for searches over many
    trial transforms whose result precise steps then refine. None when OpenCV
    cannot interpolate exactly (see :func:`affine_plane`) or the image is too
    large for it: the caller then uses scipy.
    """
    shape = tuple(int(n) for n in output_shape)
    warp = _opencv_warp()
    if (warp is None or image.ndim != 2 or image.dtype != np.float32
            or max(image.shape + shape) >= _OPENCV_MAX_SIDE or min(image.shape + shape) <= 0):
        return None
    import cv2
    forward = np.array([[matrix[1, 1], matrix[1, 0], offset[1]], [matrix[0, 1], matrix[0, 0], offset[0]]],
                       dtype=np.float64)
    return warp(np.ascontiguousarray(image), forward, (shape[1], shape[0]),
                flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101)


def affine_offset(frame_shape, offset_yx, rotation, origin) -> np.ndarray:
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
    shift = affine_offset(frame_shape, offset_yx, rotation, origin)
    work = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    planes = block.reshape((-1,) + block.shape[-2:])
    out = np.empty(planes.shape, dtype=work)
    for i, plane in enumerate(planes):
        affine_plane(plane.astype(work, copy=False), rotation, shift, out.shape[1:], order=order, cval=cval,
                     output=out[i])
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
    offset = check_transform(offset_yx, rotation_deg, order)
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
    :func:`apply_inplane_transform_numpy` whatever the chunking (for linear
    float32 resampling, to float32 rounding; see :func:`affine_plane`). Chunks
    narrower than the halo are merged first (the output keeps the merged
    chunking in y and x).
    """
    volume = as_dask(volume)
    require_ndim(volume, 3, "volume")
    offset = check_transform(offset_yx, rotation_deg, order)
    dtype = np.dtype(dtype)
    frame = volume.shape[1:]
    margin = INTERPOLATION_MARGIN.get(order, SPLINE_MARGIN)
    halo = int(math.ceil(max_displacement_px(frame, offset, rotation_deg))) + margin
    chunks = [volume.chunks[0]] + [merge_small_chunks(c, halo) for c in volume.chunks[1:]]
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


def merge_small_chunks(chunks: Sequence[int], minimum: int) -> tuple[int, ...]:
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


# --------------------------------------------------------------------------------------------- light sheets

#: Planes interpolated at once by the sheet transform (bounds a task's temporaries).
_SHEET_PLANES_PER_STEP = 8


def sheet_displacement(n_rows: int, offset_z_planes: float, rotation_deg: float) -> np.ndarray:
    """Plane displacement per row of a light-sheet transform, ``(Y,)`` float64 (planes).

    ``d(y) = offset_z_planes + tan(rotation_deg) * (y - (Y - 1) / 2)``: the
    content of row ``y`` moves from plane ``z`` to plane ``z + d(y)``. The
    angle is counted in voxel units (planes per row), as a sheet tilted
    about the x axis appears in the (Z, Y) index grid.
    """
    rows = np.arange(int(n_rows), dtype=np.float64) - (int(n_rows) - 1) / 2.0
    return float(offset_z_planes) + math.tan(math.radians(float(rotation_deg))) * rows


def _check_sheet(offset_z_planes, rotation_deg, order) -> None:
    if order not in (0, 1):
        raise ValueError(f"order must be 0 (nearest) or 1 (linear) along z, got {order!r}")
    if not (math.isfinite(float(offset_z_planes)) and math.isfinite(float(rotation_deg))
            and abs(float(rotation_deg)) < 45.0):
        raise ValueError(f"sheet transform: finite offset and |rotation| < 45 degrees expected, got "
                         f"{offset_z_planes!r}, {rotation_deg!r}")


def _shear_planes(block: np.ndarray, z_origin: int, n_planes: int, displacement: np.ndarray, order: int, cval,
                  dtype) -> np.ndarray:
    """Resample a (z, Y, X) block whose first plane is global plane ``z_origin`` along z.

    ``out[z, y] = block[z - d(y), y]`` (global plane indices), linear (order 1) or nearest (order 0);
    planes whose source lies outside ``[0, n_planes - 1]`` get ``cval``. Sources outside the block are
    clipped to it (only the halo planes, which the caller trims, can need them).
    """
    n, height = block.shape[0], block.shape[1]
    out = np.empty(block.shape, dtype=dtype)
    rows = np.arange(height)[None, :]
    for z0 in range(0, n, _SHEET_PLANES_PER_STEP):
        z = np.arange(z_origin + z0, z_origin + min(n, z0 + _SHEET_PLANES_PER_STEP), dtype=np.float64)
        src = z[:, None] - displacement[None, :]                                  # (planes, Y)
        valid = (src >= -1e-9) & (src <= n_planes - 1 + 1e-9)
        if order == 0:
            local = np.clip(np.floor(src + 0.5).astype(np.intp) - z_origin, 0, n - 1)
            values = block[local, rows].astype(dtype)
        else:
            below = np.floor(src)
            frac = (src - below).astype(np.float32)[:, :, None]
            lo = np.clip(below.astype(np.intp) - z_origin, 0, n - 1)
            hi = np.clip(lo + 1, 0, n - 1)
            v0 = block[lo, rows].astype(np.float32)
            v1 = block[hi, rows].astype(np.float32)
            values = (v0 + frac * (v1 - v0)).astype(dtype, copy=False)
        values[~valid] = cval
        out[z0:z0 + len(z)] = values
    return out


def apply_sheet_transform_numpy(volume, offset_z_planes: float, rotation_deg: float, order: int = 1,
                                cval: float = np.nan, dtype=np.float32) -> np.ndarray:
    """In-memory reference of :func:`apply_sheet_transform` (same parameters, numpy result)."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be (Z, Y, X), got shape {volume.shape}")
    _check_sheet(offset_z_planes, rotation_deg, order)
    displacement = sheet_displacement(volume.shape[1], offset_z_planes, rotation_deg)
    return _shear_planes(volume, 0, volume.shape[0], displacement, order, cval, np.dtype(dtype))


def apply_sheet_transform(volume, offset_z_planes: float, rotation_deg: float, order: int = 1,
                          cval: float = np.nan, dtype=np.float32):
    """Move a volume's content along z by a light-sheet offset and tilt, blockwise.

    Used to bring illumination channel b onto channel a of the same camera:
    the two light sheets are never coplanar, so b's plane k at row y images
    a's plane ``k + d(y)`` (:func:`sheet_displacement`).

    Parameters
    ----------
    volume : dask or numpy array, shape (Z, Y, X)
        Channel b (any numeric or boolean dtype).
    offset_z_planes : float
        Displacement at the middle row, planes.
    rotation_deg : float
        Tilt about the x axis, degrees, counted in voxel units (planes per row).
    order : {0, 1}
        Interpolation along z: 0 nearest (masks), 1 linear.
    cval : float
        Value of voxels whose source plane lies outside the stack; NaN (the
        default) marks them as not recorded, which the channel blend then
        fills from channel a.
    dtype : numpy dtype
        Output dtype (float32 by default; ``bool`` with ``order=0`` and
        ``cval=False`` for masks).

    Returns
    -------
    dask.array.Array, shape (Z, Y, X), ``dtype``
        ``out[z, y, x] = volume[z - d(y), y, x]``.

    Notes
    -----
    ``map_overlap`` with a halo in z of the largest displacement plus one
    plane and none in y and x, ``boundary='none'``: every output voxel finds
    both planes it interpolates between inside its padded block, so the
    result equals :func:`apply_sheet_transform_numpy` whatever the chunking.
    Chunks thinner than the halo are merged first.
    """
    volume = as_dask(volume)
    require_ndim(volume, 3, "volume")
    _check_sheet(offset_z_planes, rotation_deg, order)
    dtype = np.dtype(dtype)
    n_planes = volume.shape[0]
    displacement = sheet_displacement(volume.shape[1], offset_z_planes, rotation_deg)
    halo = int(math.ceil(float(np.abs(displacement).max()))) + 1
    z_chunks = merge_small_chunks(volume.chunks[0], halo)
    volume = volume.rechunk((z_chunks,) + volume.chunks[1:])
    depth = {0: halo if len(z_chunks) > 1 else 0, 1: 0, 2: 0}
    starts = np.concatenate([[0], np.cumsum(z_chunks)[:-1]])
    row_starts = np.concatenate([[0], np.cumsum(volume.chunks[1])[:-1]])

    def shear_block(block, block_info=None):
        location = block_info[0]["chunk-location"]
        y0 = int(row_starts[location[1]])
        z_origin = int(starts[location[0]]) - (depth[0] if location[0] > 0 else 0)
        rows = displacement[y0:y0 + block.shape[1]]
        return _shear_planes(block, z_origin, n_planes, rows, order, cval, dtype)

    return da.map_overlap(shear_block, volume, depth=depth, boundary="none", allow_rechunk=False,
                          dtype=dtype, meta=np.empty((0, 0, 0), dtype))
