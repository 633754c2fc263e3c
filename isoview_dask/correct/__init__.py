"""Per-camera correction (the MATLAB ``clusterPT`` step) as pure functions.

Every function takes dask (or numpy) arrays in (Z, Y, X) order and plain
values, and returns lazy dask arrays or small results; nothing here reads
or writes files. Global statistics (dead-pixel thresholds, background
level, segmentation level) are estimated by small separate functions and
passed to the blockwise ones ("estimate small, apply big")::

    mean_yx, std_yx = dask.compute(*pixel_statistics(raw))
    dead = dead_pixel_mask(mean_yx, std_yx)
    fixed = correct_dead_pixels(raw, dead.mask)
    clean = subtract_background(fixed, dark_frame)   # or estimate_background_level(fixed)
    smoothed = smooth(clean, 2.0, spacing_ratio=z_step_um / pixel_size_um)
    mask = foreground_mask(smoothed, threshold_level(smoothed).level)
    xy_coordinate_mask, xz_coordinate_mask = coordinate_masks(mask)
    projections = max_projections(clean)
"""

from .background import estimate_background_level, subtract_background
from .deadpixels import (
    DeadPixelResult,
    correct_dead_pixels,
    dead_pixel_mask,
    knee_threshold,
    pixel_statistics,
)
from .projections import max_projections
from .segmentation import (
    ThresholdResult,
    coordinate_masks,
    downsample_lateral,
    foreground_mask,
    intensity_histogram,
    smooth,
    threshold_from_histogram,
    threshold_level,
    upsample_lateral,
)

__all__ = [
    "DeadPixelResult",
    "ThresholdResult",
    "coordinate_masks",
    "correct_dead_pixels",
    "dead_pixel_mask",
    "downsample_lateral",
    "intensity_histogram",
    "threshold_from_histogram",
    "upsample_lateral",
    "estimate_background_level",
    "foreground_mask",
    "knee_threshold",
    "max_projections",
    "pixel_statistics",
    "smooth",
    "subtract_background",
    "threshold_level",
]
