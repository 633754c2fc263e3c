"""Deterministic voxel subsamples of large volumes, for global statistics.

Percentiles of a whole camera volume (billions of voxels) are neither cheap
nor needed: a few million voxels spread over the volume pin a low percentile
down to a fraction of a count. This module draws such a sample with basic
slicing only (a few evenly spaced planes, a strided pixel lattice in each),
so the dask graph stays small, only the chunks holding the chosen planes are
read, and the same seed always gives the same sample.
"""

from __future__ import annotations

import math

import dask
import numpy as np

from .arrays import as_dask, require_ndim

#: Planes taken at most by :func:`sample_voxels` (evenly spaced in z).
DEFAULT_SAMPLE_PLANES = 16


def sample_voxels(
    volume,
    max_samples: int,
    seed: int = 0,
    n_planes: int = DEFAULT_SAMPLE_PLANES,
) -> np.ndarray:
    """Draw a deterministic subsample of a (Z, Y, X) volume, computed.

    Parameters
    ----------
    volume : dask or numpy array, shape (Z, Y, X)
        The volume to sample.
    max_samples : int
        Upper bound on the number of voxels returned. A volume with at most
        this many voxels is returned whole (so the statistic is exact).
    seed : int
        Seed of the per-plane lattice offsets.
    n_planes : int
        Number of evenly spaced planes to sample from (fewer if the volume
        has fewer planes).

    Returns
    -------
    numpy.ndarray, 1D
        The sampled voxel values, in the volume's dtype.

    Notes
    -----
    In each chosen plane the pixels on a lattice of stride ``s`` in y and x
    are taken, with an offset drawn per plane from ``seed``; the random
    offsets keep the lattice from locking onto a periodic fixed pattern of
    the sensor (column or row groups), while the strides keep the graph to
    one slice per plane.
    """
    volume = as_dask(volume)
    require_ndim(volume, 3, "volume")
    if max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    if volume.size <= max_samples:
        return np.asarray(volume.ravel().compute())

    depth, height, width = volume.shape
    planes = np.unique(np.linspace(0, depth - 1, min(depth, n_planes)).round().astype(int))
    per_plane = max(1, max_samples // len(planes))
    stride = max(1, math.isqrt(height * width // per_plane))
    while math.ceil(height / stride) * math.ceil(width / stride) > per_plane:
        stride += 1
    rng = np.random.default_rng(seed)
    offsets = rng.integers(0, stride, size=(len(planes), 2))
    pieces = [
        volume[int(z), min(int(oy), height - 1) :: stride, min(int(ox), width - 1) :: stride].ravel()
        for z, (oy, ox) in zip(planes, offsets)
    ]
    return np.concatenate(dask.compute(*pieces))
