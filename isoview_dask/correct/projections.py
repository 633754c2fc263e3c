"""Maximum-intensity projections of a stack, for quick looks and previews."""

from __future__ import annotations

import dask.array as da

from .arrays import as_dask, require_ndim


def max_projections(volume) -> dict[str, da.Array]:
    """Maximum projections of a (Z, Y, X) stack along each axis.

    Parameters
    ----------
    volume : dask or numpy array, shape (Z, Y, X)

    Returns
    -------
    dict of str to dask.array.Array, dtype of ``volume``
        ``"xy"``: maximum over z, shape (Y, X);
        ``"xz"``: maximum over y, shape (Z, X);
        ``"yz"``: maximum over x, shape (Z, Y).

    Notes
    -----
    Lazy dask reductions; compute them together
    (``dask.compute(projections)``) so the stack is read once.
    """
    volume = as_dask(volume)
    require_ndim(volume, 3, "volume")
    return {
        "xy": volume.max(axis=0),
        "xz": volume.max(axis=1),
        "yz": volume.max(axis=2),
    }
