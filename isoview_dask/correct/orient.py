"""Per-camera view orientation: 90-degree rotations, mirror flips and crops.

The MATLAB pipeline let each camera be rotated, flipped and cropped right
after reading; these are pure, lazy index operations on the last two axes
(Y, X), so they apply equally to a (Z, Y, X) volume and to a (Y, X) dark
frame or mask.
"""

from __future__ import annotations

from typing import Sequence

import dask.array as da
import numpy as np


def orient(image, rotation: int = 0, flip_h: bool = False, flip_v: bool = False,
           crop: Sequence[int] | None = None):
    """Rotate, flip and crop an image or volume in its last two axes (Y, X).

    Parameters
    ----------
    image : numpy or dask array, shape (..., Y, X)
    rotation : {0, 90, 180, 270}
        Counter-clockwise rotation in degrees as displayed (row 0 at the top),
        i.e. ``numpy.rot90`` with ``k = rotation / 90`` over axes (Y, X).
    flip_h : bool
        Mirror left-right (reverse X), applied after the rotation.
    flip_v : bool
        Mirror up-down (reverse Y), applied after the rotation.
    crop : (y0, y1, x0, x1), optional
        Keep rows y0:y1 and columns x0:x1 (pixels, after rotation and flips).

    Returns
    -------
    Same type as ``image``; lazy for dask input.
    """
    if rotation % 90 or not 0 <= rotation < 360:
        raise ValueError(f"rotation must be 0, 90, 180 or 270 degrees, got {rotation}")
    xp = da if isinstance(image, da.Array) else np
    out = xp.rot90(image, k=rotation // 90, axes=(-2, -1)) if rotation else image
    if flip_h:
        out = out[..., ::-1]
    if flip_v:
        out = out[..., ::-1, :]
    if crop is not None:
        y0, y1, x0, x1 = (int(v) for v in crop)
        height, width = out.shape[-2:]
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise ValueError(f"crop {tuple(crop)} does not fit a {height}x{width} frame")
        out = out[..., y0:y1, x0:x1]
    return out
