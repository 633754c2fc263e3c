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


def require_ndim(array, ndim: int, name: str) -> None:
    """Raise ``ValueError`` unless ``array`` has ``ndim`` dimensions."""
    if array.ndim != ndim:
        axes = {2: "(Y, X)", 3: "(Z, Y, X)"}.get(ndim, f"{ndim}-D")
        raise ValueError(f"{name} must be a {axes} array, got shape {tuple(array.shape)}")
