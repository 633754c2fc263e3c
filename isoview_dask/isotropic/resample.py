"""Resampling a view onto (a block of) the isotropic output grid, reading only the source it needs.

A view is sampled at ``source_index = matrix @ output_index + offset`` (see
:func:`isoview_dask.isotropic.geometry.index_map`) with cubic B-splines.
Outside its field the view is extended by its nearest edge value
(``mode="nearest"``), which keeps a block's result independent of how much
of the source it was given, and :func:`field_mask` says where that happened,
so that the reconstruction can ignore those voxels of the view.

Works on numpy arrays, and on CuPy arrays through :mod:`cupyx.scipy.ndimage`
when the caller passes CuPy inputs.
"""

from __future__ import annotations

import math
from typing import Sequence

import dask
import dask.array as da
import numpy as np

from .backend import array_module, ndimage_module
from .geometry import IsotropicGrid, index_map

__all__ = ["SPLINE_MARGIN", "field_mask", "resample_block", "resample_view", "source_window"]

#: Source voxels read beyond the interpolation footprint on every side: the cubic spline's prefilter is
#: global, and its influence decays as 0.268^d, so 8 voxels leave an error below 3e-5 of the signal.
SPLINE_MARGIN = 8


def source_window(matrix: np.ndarray, offset: np.ndarray, out_start: Sequence[int], out_shape: Sequence[int],
                  source_shape: Sequence[int], margin: int = SPLINE_MARGIN) -> tuple[tuple[slice, ...], np.ndarray]:
    """The part of a source volume that a block of the output grid needs.

    Parameters
    ----------
    matrix, offset : numpy.ndarray
        Output index -> source index map ((3, 3) and (3,)).
    out_start, out_shape : sequence of 3 int
        First output index and shape of the block (it may extend beyond the grid).
    source_shape : sequence of 3 int
        Shape (Z, Y, X) of the whole source volume.
    margin : int
        Extra source voxels on every side.

    Returns
    -------
    window : tuple of slice
        Source slices, never empty, clipped to the volume (a block outside the field reads the nearest edge).
    offset : numpy.ndarray
        The block's own offset: ``window_index = matrix @ block_index + offset``.
    """
    out_start = np.asarray(out_start, float)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in out_shape], indexing="ij")).reshape(3, -1).T + out_start
    mapped = corners @ np.asarray(matrix).T + np.asarray(offset)
    lo = np.floor(mapped.min(axis=0)).astype(int) - margin
    hi = np.ceil(mapped.max(axis=0)).astype(int) + margin + 1
    source_shape = np.asarray(source_shape)
    lo = np.clip(lo, 0, source_shape - 1)
    hi = np.clip(hi, lo + 1, source_shape)
    window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    block_offset = np.asarray(matrix) @ out_start + np.asarray(offset) - lo
    return window, block_offset


def resample_block(source, matrix: np.ndarray, offset: np.ndarray, out_shape: Sequence[int], order: int = 3):
    """Sample ``source`` at ``matrix @ index + offset`` for every index of an ``out_shape`` block.

    Parameters
    ----------
    source : numpy.ndarray or cupy.ndarray
        The source window (Z, Y, X).
    matrix, offset : numpy.ndarray
        Block index -> window index map.
    out_shape : sequence of 3 int
    order : int
        Spline order (3: cubic B-spline; 1: linear).

    Returns
    -------
    array of float32, ``out_shape``, on the source's device.
    """
    xp = array_module(source)
    ndi = ndimage_module(source)
    source = xp.asarray(source, dtype=xp.float32)
    matrix = np.asarray(matrix, float)
    if order == 3 and np.allclose(matrix, np.diag(np.diag(matrix)), atol=1e-12):
        return _separable_cubic(source, np.diag(matrix), np.asarray(offset, float), out_shape, xp, ndi)
    return ndi.affine_transform(source, xp.asarray(matrix) if xp is not np else matrix,
                                offset=tuple(float(o) for o in offset), output_shape=tuple(int(n) for n in out_shape),
                                order=order, mode="nearest", prefilter=order > 1, output=xp.float32)


#: Planes of edge values added before a separable spline prefilter (its influence decays as 0.268^d).
_EDGE_PAD = 12


def _separable_cubic(source, scales, offsets, out_shape, xp, ndi):
    """Cubic B-spline resampling axis by axis, for an axis-aligned map (VW00 onto the grid).

    One 4-tap pass per axis that needs one instead of 64 taps per voxel: with
    VW00 only z is resampled (y and x keep their pixels), which is several
    times faster than :func:`scipy.ndimage.affine_transform`. Beyond the
    source the result tends to the edge value, like ``mode="nearest"``.
    """
    out = source
    for axis, (scale, offset, size) in enumerate(zip(scales, offsets, out_shape)):
        coordinates = scale * np.arange(size) + offset
        if scale == 1.0 and offset == round(offset) and 0 <= offset and offset + size <= out.shape[axis]:
            out = out[(slice(None),) * axis + (slice(int(offset), int(offset) + size),)]
            continue
        pad = [(0, 0)] * 3
        pad[axis] = (_EDGE_PAD, _EDGE_PAD)
        padded = xp.pad(out, pad, mode="edge")
        coefficients = ndi.spline_filter1d(padded, order=3, axis=axis, mode="mirror", output=xp.float32)
        n = padded.shape[axis]
        position = np.clip(coordinates + _EDGE_PAD, 0, n - 1)
        base = np.floor(position).astype(int)
        t = (position - base).astype(np.float32)
        weights = [(1 - t) ** 3 / 6, (3 * t ** 3 - 6 * t ** 2 + 4) / 6, (-3 * t ** 3 + 3 * t ** 2 + 3 * t + 1) / 6,
                   t ** 3 / 6]
        shape = [1, 1, 1]
        shape[axis] = size
        result = None
        for k, weight in enumerate(weights):
            index = np.clip(base - 1 + k, 0, n - 1)
            term = xp.take(coefficients, xp.asarray(index), axis=axis) * xp.asarray(weight.reshape(shape))
            result = term if result is None else result + term
        out = result
    return xp.ascontiguousarray(out, dtype=xp.float32)


def field_mask(matrix: np.ndarray, offset: np.ndarray, out_start: Sequence[int], out_shape: Sequence[int],
               source_shape: Sequence[int], xp=np) -> "np.ndarray":
    """True where a block's voxels fall inside the source's field (within half a voxel of its first and last)."""
    axes = [np.arange(n, dtype=np.float64) + s for n, s in zip(out_shape, out_start)]
    inside = None
    matrix = np.asarray(matrix, float)
    for row in range(3):
        coordinate = (matrix[row, 0] * axes[0][:, None, None] + matrix[row, 1] * axes[1][None, :, None]
                      + matrix[row, 2] * axes[2][None, None, :] + offset[row])
        ok = (coordinate >= -0.5) & (coordinate <= source_shape[row] - 0.5)
        inside = ok if inside is None else inside & ok
    return xp.asarray(np.broadcast_to(inside, tuple(out_shape)))


def _resample_task(source, matrix, offset, out_shape, order):
    return resample_block(source, matrix, offset, out_shape, order)


def resample_view(view, voxel_zyx_um: Sequence[float], grid: IsotropicGrid, transform: np.ndarray | None = None, *,
                  chunks: Sequence[int] = (64, 256, 256), order: int = 3, scale: float = 1.0):
    """A view resampled onto the isotropic grid, lazily, block by block.

    Parameters
    ----------
    view : dask.array.Array or numpy.ndarray
        The view (Z, Y, X).
    voxel_zyx_um : sequence of 3 float
        Its voxel size, µm.
    grid : IsotropicGrid
    transform : numpy.ndarray, optional
        4 x 4 physical transform VW00 -> this view (default identity: the view is VW00).
    chunks : sequence of 3 int
        Output chunk shape.
    order : int
        Spline order.
    scale : float
        Intensity factor applied to the result.

    Returns
    -------
    dask.array.Array
        float32, ``grid.shape``; each chunk reads only the source window it needs.
    """
    view = view if isinstance(view, da.Array) else da.from_array(np.asarray(view), chunks=view.shape)
    transform = np.eye(4) if transform is None else np.asarray(transform, float)
    matrix, offset = index_map(transform, grid.voxel_zyx, voxel_zyx_um)
    chunks = tuple(min(int(c), n) for c, n in zip(chunks, grid.shape))
    starts = [range(0, n, c) for n, c in zip(grid.shape, chunks)]
    blocks = np.empty([len(s) for s in starts], dtype=object)
    for index in np.ndindex(blocks.shape):
        start = [starts[a][i] for a, i in enumerate(index)]
        shape = [min(c, n - s) for c, n, s in zip(chunks, grid.shape, start)]
        window, block_offset = source_window(matrix, offset, start, shape, view.shape, margin=SPLINE_MARGIN)
        task = dask.delayed(_resample_task, pure=True)(view[window], matrix, block_offset, shape, order)
        block = da.from_delayed(task, shape=tuple(shape), dtype=np.float32)
        blocks[index] = block * np.float32(scale) if scale != 1.0 else block
    return da.block(blocks.tolist())
