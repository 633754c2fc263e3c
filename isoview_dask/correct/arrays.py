"""Small input helpers shared by the correction modules."""

from __future__ import annotations

import dask.array as da
import numpy as np


def as_dask(array) -> da.Array:
    """Return ``array`` as a dask array (numpy input becomes a single chunk)."""
    if isinstance(array, da.Array):
        return array
    array = np.asarray(array)
    return da.from_array(array, chunks=array.shape)


#: Bytes of working array a plane-by-plane kernel takes on at each step (:func:`plane_batches`): within a
#: core's L2 cache.
PLANE_BATCH_BYTES = 256 * 1024


def plane_batches(n_planes: int, plane_bytes: int, target_bytes: int = PLANE_BATCH_BYTES) -> list[slice]:
    """Runs of consecutive planes (slices along Z) of about ``target_bytes`` of working array each.

    A kernel that goes plane by plane keeps its temporaries in cache on large
    frames, but on small ones (a 128 x 128 plane) numpy's fixed cost per call
    outweighs the arithmetic. Stepping through several small planes at once
    serves both: a large frame still goes one plane at a time.

    Parameters
    ----------
    n_planes : int
        Planes along Z.
    plane_bytes : int
        Bytes of the kernel's working array per plane.
    target_bytes : int
        Bytes per step (at least one plane).

    Returns
    -------
    list of slice
        Covering ``0 .. n_planes`` in order.
    """
    step = max(1, int(target_bytes) // max(1, int(plane_bytes)))
    return [slice(start, min(start + step, n_planes)) for start in range(0, n_planes, step)]


def require_ndim(array, ndim: int, name: str) -> None:
    """Raise ``ValueError`` unless ``array`` has ``ndim`` dimensions."""
    if array.ndim != ndim:
        axes = {2: "(Y, X)", 3: "(Z, Y, X)"}.get(ndim, f"{ndim}-D")
        raise ValueError(f"{name} must be a {axes} array, got shape {tuple(array.shape)}")
