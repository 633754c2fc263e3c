"""Exact value counts of 8- and 16-bit blocks in one pass, without temporaries.

``numpy.bincount`` first converts a uint16 block to a platform-integer copy
four times its size (a 50 MB block becomes a 200 MB temporary, freshly
faulted in on every call); the numba loop here counts in place into a
65,536-bin table. Used by the zarr writer's per-block histograms (the
``omero`` display window) and by anything else that needs the exact
histogram of a camera volume.
"""

from __future__ import annotations

import numba
import numpy as np

#: Integer dtypes :func:`value_counts` counts exactly (bool is counted as uint8).
COUNTABLE = tuple(np.dtype(t) for t in (np.bool_, np.uint8, np.int8, np.uint16, np.int16))


#: Count tables filled side by side: runs of equal values (a camera's background) then increment
#: different tables in turn instead of waiting on one counter, twice as fast as a single table.
_TABLES = 4


@numba.njit(cache=True, nogil=True)
def _count_into(flat, low, counts):
    """Add each value's occurrences to ``counts`` (``_TABLES`` x bins): element i to table i % _TABLES."""
    n = flat.size
    whole = n - n % 4
    for i in range(0, whole, 4):
        counts[0, np.int64(flat[i]) - low] += 1
        counts[1, np.int64(flat[i + 1]) - low] += 1
        counts[2, np.int64(flat[i + 2]) - low] += 1
        counts[3, np.int64(flat[i + 3]) - low] += 1
    for i in range(whole, n):
        counts[0, np.int64(flat[i]) - low] += 1


def value_counts(block: np.ndarray) -> tuple[np.ndarray, int]:
    """Exact counts of every value of an 8- or 16-bit integer (or bool) array.

    Parameters
    ----------
    block : numpy.ndarray
        Any shape; dtype one of :data:`COUNTABLE`. A non-contiguous array is
        copied once.

    Returns
    -------
    counts : numpy.ndarray of int64
        ``counts[k]`` voxels have the value ``k + low``; one bin per value
        the dtype can hold (256 or 65,536).
    low : int
        The dtype's smallest value (0 for unsigned types and bool).
    """
    dtype = np.dtype(block.dtype)
    if dtype not in COUNTABLE:
        raise TypeError(f"value_counts counts 8- and 16-bit integers and bool, not {dtype}")
    flat = np.ravel(block)
    if dtype == np.bool_:
        flat, dtype = flat.view(np.uint8), np.dtype(np.uint8)
    info = np.iinfo(dtype)
    tables = np.zeros((_TABLES, int(info.max) - int(info.min) + 1), dtype=np.int64)
    _count_into(flat, int(info.min), tables)
    return tables.sum(axis=0), int(info.min)
