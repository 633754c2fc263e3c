"""Alignment and blending of an opposing camera pair in one blockwise pass.

:func:`~isoview_dask.fuse.apply_inplane_transform` followed by
:func:`~isoview_dask.fuse.blend` is the clearest way to write a fusion, but
as a graph it materialises the aligned moving camera as float32 blocks and
then mixes whole blocks in float32/float64 (several copies of each block in
flight). :func:`fuse_views` does both steps in each output block's task,
plane by plane: the task holds the reference block, the moving camera's
window (the block plus a halo as wide as the largest displacement) and its
output block, and only one plane of temporaries. Planes entirely in front
of the transition (weight 1 for the reference camera) skip the
interpolation. The result equals ``blend(reference,
apply_inplane_transform(moving, ...), ...)`` whatever the chunking
(:func:`fuse_views_numpy` is that in-memory reference), to float32 rounding:
linear interpolation runs in OpenCV (:func:`~isoview_dask.fuse.transforms.affine_plane`),
which computes each block's source coordinates from the block's origin in
single precision (float32 results may differ in the last bits, integer
results by one count on a .5). One chunking always gives the same bits.
"""

from __future__ import annotations

import functools
import math

import dask.array as da
import numpy as np

from ..correct.arrays import as_dask
from .blending import blend_gains, blend_numpy, check_pair, check_ramp, output_dtype, resolve_transition
from .kernels import (MODE_FRONT, MODE_RAMP, PROFILE_CODES, SIGMOID, blend_plane, blend_plane_numpy, cast_parameters,
                      kernel_supports, plane_limits, plane_mode, work_dtype)
from .transforms import (INTERPOLATION_MARGIN, SPLINE_MARGIN, affine_offset, affine_plane, apply_inplane_transform_numpy,
                         check_transform, inplane_matrix, max_displacement_px, merge_small_chunks)


def _fuse_block(reference, window, z_index, y_index, x_index, transition, *, frame, offset, rotation_deg, order,
                halo, blending_range, profile, gains, out_dtype):
    """Fuse one output block; ``window`` is the moving camera's block plus its halo.

    Plane by plane: the moving camera's plane is resampled into one
    preallocated buffer (OpenCV), then :func:`~isoview_dask.fuse.kernels.blend_plane`
    weighs, mixes and casts in one pass into the output plane. Planes in
    front of the transition everywhere skip the resampling.
    """
    work = work_dtype(reference.dtype, window.dtype, out_dtype)
    out = np.empty(reference.shape, dtype=out_dtype)
    origin_out = np.array([y_index[0], x_index[0]], dtype=float)
    origin_win = np.array([max(0, y_index[0] - halo[0]), max(0, x_index[0] - halo[1])], dtype=float)
    rotation = inplane_matrix(rotation_deg)
    # Output pixel u is global q = u + origin_out; its source R(q - c) + c + t lies at
    # v = R u + shift in the window.
    shift = affine_offset(frame, offset, rotation, origin_out) + origin_out - origin_win
    front_only_below, back_only_above = plane_limits(transition, blending_range)
    plane_shape = reference.shape[1:]
    aligned = np.empty(plane_shape, dtype=work)

    def warp(i):
        return affine_plane(window[i].astype(work, copy=False), rotation, shift, plane_shape, order=order,
                            cval=np.nan, output=aligned)

    if not kernel_supports(reference.dtype, out_dtype):
        for i in range(reference.shape[0]):
            out[i] = blend_plane_numpy(reference[i], functools.partial(warp, i), transition, z_index[i],
                                       blending_range=blending_range, profile=profile, gains=gains, work=work,
                                       out_dtype=out_dtype, front_only_below=front_only_below,
                                       back_only_above=back_only_above)
        return out
    has_transition = transition is not None
    tile, tile_ready = np.zeros((1, 1)), False  # the transition is read only for planes across it
    integer_out, clip_low, clip_high, nan_value = cast_parameters(work, out_dtype)
    code, g_front, g_back = PROFILE_CODES[profile], work(gains[0]), work(gains[1])
    check_front = reference.dtype.kind == "f"
    contiguous_plane = None
    for i in range(reference.shape[0]):
        z = float(z_index[i])
        mode = plane_mode(has_transition, z, front_only_below, back_only_above)
        plane = reference[i]
        if not plane.flags.c_contiguous:  # a view into a larger array: the kernel vectorises only C order
            if contiguous_plane is None:
                contiguous_plane = np.empty(plane_shape, reference.dtype)
            np.copyto(contiguous_plane, plane)
            plane = contiguous_plane
        if mode == MODE_FRONT and blend_plane(plane, aligned, tile, z, blending_range, code, SIGMOID, mode, g_front,
                                              g_back, check_front, clip_low, clip_high, nan_value, integer_out,
                                              out[i]):
            continue
        if mode in (MODE_FRONT, MODE_RAMP):
            mode = MODE_RAMP
            if not tile_ready:
                tile, tile_ready = np.ascontiguousarray(transition, dtype=np.float64), True
        warp(i)
        blend_plane(plane, aligned, tile, z, blending_range, code, SIGMOID, mode, g_front, g_back, check_front,
                    clip_low, clip_high, nan_value, integer_out, out[i])
    return out


def fuse_views(reference, moving, offset_yx=(0.0, 0.0), rotation_deg: float = 0.0, transition_yx=None,
               blending_range: float = 10.0, method: str = "adaptive", intensity=None, *,
               profile: str = "sigmoid", order: int = 1, dtype=np.float32, slab_planes: int | None = None):
    """Align the opposing camera onto the reference grid and blend the two, one task per block.

    Parameters
    ----------
    reference : dask or numpy array, shape (Z, Y, X)
        Reference camera (near side = low z), background-corrected.
    moving : dask or numpy array, shape (Z, Y, X)
        The opposing camera after :func:`~isoview_dask.fuse.view_transform`
        (flips), not yet resampled.
    offset_yx, rotation_deg
        In-plane transform in the sampling convention of
        :mod:`isoview_dask.fuse.transforms` (pixels, degrees), as found by
        :func:`~isoview_dask.fuse.register_pair`.
    transition_yx, blending_range, method, intensity, profile, dtype
        As for :func:`~isoview_dask.fuse.blend`.
    order : int
        Spline order of the interpolation (1: linear).
    slab_planes : int, optional
        Planes per task (the MATLAB ``slabSize``): the reference's z-chunks
        are merged or split to this depth. Default: the reference's
        z-chunks (the output shard depth when read from a sharded zarr).

    Returns
    -------
    dask.array.Array, shape (Z, Y, X), ``dtype``
        Equal to ``blend(reference, apply_inplane_transform(moving, offset_yx,
        rotation_deg, order, cval=nan), transition_yx, ...)``.

    Notes
    -----
    The moving camera gets a halo in y and x (the largest displacement of
    any pixel plus an interpolation margin; none in z) through
    ``dask.array.overlap.overlap``; then one ``blockwise`` task per output
    block reads the reference block and the moving window and works plane
    by plane, so a task's memory is about three blocks of the input dtype
    plus a few planes of float32, whatever the volume's size.
    """
    reference, moving = as_dask(reference), as_dask(moving)
    check_pair(reference, moving, "reference", "moving")
    check_ramp(blending_range, profile)
    offset = check_transform(offset_yx, rotation_deg, order)
    n_planes, frame = reference.shape[0], tuple(reference.shape[1:])
    transition = resolve_transition(method, transition_yx, frame, n_planes)
    gains = blend_gains(intensity)
    dtype = output_dtype(dtype, reference)
    margin = INTERPOLATION_MARGIN.get(order, SPLINE_MARGIN)
    halo = int(math.ceil(max_displacement_px(frame, offset, rotation_deg))) + margin
    z_chunks = reference.chunks[0]
    if slab_planes:
        slab_planes = int(slab_planes)
        if slab_planes < 1:
            raise ValueError(f"slab_planes must be a positive number of planes, got {slab_planes!r}")
        z_chunks = tuple(min(slab_planes, n_planes - s) for s in range(0, n_planes, slab_planes))
    chunks = (z_chunks,) + tuple(merge_small_chunks(c, halo) for c in reference.chunks[1:])
    reference = reference.rechunk(chunks)
    moving = moving.rechunk(chunks)
    depth = {0: 0, 1: halo if len(chunks[1]) > 1 else 0, 2: halo if len(chunks[2]) > 1 else 0}
    window = da.overlap.overlap(moving, depth=depth, boundary="none") if depth[1] or depth[2] else moving
    indices = [da.arange(size, chunks=(c,), dtype=np.int64) for size, c in zip(reference.shape, chunks)]
    z_index = indices[0].astype(np.float64)
    if transition is None:
        tiles, tile_index = None, None
    else:
        tiles, tile_index = da.from_array(transition, chunks=chunks[1:]), "yx"
    return da.blockwise(_fuse_block, "zyx", reference, "zyx", window, "zyx", z_index, "z", indices[1], "y",
                        indices[2], "x", tiles, tile_index, align_arrays=False,
                        adjust_chunks={"z": chunks[0], "y": chunks[1], "x": chunks[2]},
                        frame=frame, offset=tuple(float(v) for v in offset), rotation_deg=float(rotation_deg),
                        order=int(order), halo=(depth[1], depth[2]), blending_range=float(blending_range),
                        profile=profile, gains=gains, out_dtype=dtype, dtype=dtype,
                        meta=np.empty((0, 0, 0), dtype))


def fuse_views_numpy(reference, moving, offset_yx=(0.0, 0.0), rotation_deg: float = 0.0, transition_yx=None,
                     blending_range: float = 10.0, method: str = "adaptive", intensity=None, *,
                     profile: str = "sigmoid", order: int = 1, dtype=np.float32) -> np.ndarray:
    """In-memory reference of :func:`fuse_views`: resample the whole moving volume, then blend."""
    reference = np.asarray(reference)
    moving = np.asarray(moving)
    work = np.float64 if np.float64 in (reference.dtype, moving.dtype, np.dtype(dtype)) else np.float32
    aligned = apply_inplane_transform_numpy(moving, offset_yx, rotation_deg, order=order, cval=np.nan, dtype=work)
    return blend_numpy(reference, aligned, transition_yx, blending_range, method, intensity, profile=profile,
                       dtype=dtype)
