"""Fusion of opposing cameras (the MATLAB ``clusterMF`` step) as pure functions.

Every function takes dask (or numpy) arrays in (Z, Y, X) order and plain
values and returns lazy dask arrays or small results; nothing here reads
or writes files. Parameters are estimated on small reductions and applied
blockwise to the full volumes ("estimate small, apply big"). For a pair of
corrected cameras with foreground masks (see :mod:`isoview_dask.correct`)::

    moving_flipped = view_transform(moving, flip_h=True)
    mask_mov_flipped = view_transform(mask_mov, flip_h=True)
    registration = register_pair(reference, moving_flipped, mask_ref=mask_ref, mask_mov=mask_mov_flipped)
    t, theta = registration.offset_yx, registration.rotation_deg
    moving_aligned = apply_inplane_transform(moving_flipped, t, theta, cval=numpy.nan)
    mask_mov_aligned = apply_inplane_transform(mask_mov_flipped.astype("float32"), t, theta, order=0) > 0.5
    xy_ref, xy_mov = dask.compute(coordinate_masks(mask_ref)[0], coordinate_masks(mask_mov_aligned)[0])
    transition = transition_plane_map(xy_ref, xy_mov, n_planes)
    intensity = intensity_factor(reference, moving_aligned, mask_ref, mask_mov_aligned)
    fused = blend(reference, moving_aligned, transition, blending_range=10, intensity=intensity)
"""

from .apply import fuse_views, fuse_views_numpy
from .blending import (
    blend,
    blend_by_sharpness,
    blend_by_sharpness_numpy,
    blend_channels,
    blend_channels_numpy,
    blend_numpy,
    blending_weights,
    geometric_transition,
    transition_plane_map,
)
from .intensity import IntensityResult, channel_intensity_factor, intensity_factor
from .registration import RegistrationResult, register_images, register_pair, registration_task
from .sheets import SheetRegistration, register_sheets, sheet_registration_task
from .surface import coordinate_depths, fitted_surface, surface_image
from .transforms import (
    apply_inplane_transform,
    apply_inplane_transform_numpy,
    apply_sheet_transform,
    apply_sheet_transform_numpy,
    sheet_displacement,
    inplane_matrix,
    max_displacement_px,
    view_transform,
)

__all__ = [
    "IntensityResult",
    "RegistrationResult",
    "SheetRegistration",
    "apply_inplane_transform",
    "apply_inplane_transform_numpy",
    "apply_sheet_transform",
    "apply_sheet_transform_numpy",
    "blend",
    "blend_by_sharpness",
    "blend_by_sharpness_numpy",
    "blend_channels",
    "blend_channels_numpy",
    "blend_numpy",
    "blending_weights",
    "channel_intensity_factor",
    "coordinate_depths",
    "fitted_surface",
    "fuse_views",
    "fuse_views_numpy",
    "geometric_transition",
    "inplane_matrix",
    "intensity_factor",
    "max_displacement_px",
    "register_images",
    "register_pair",
    "register_sheets",
    "registration_task",
    "sheet_displacement",
    "sheet_registration_task",
    "surface_image",
    "transition_plane_map",
    "view_transform",
]
