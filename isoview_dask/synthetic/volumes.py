"""Lazy volumes and the geometry of the views.

Any camera's raw, ideal, clean or body-mask volume as a dask array rendered
slab by slab (:func:`synthetic_volume`), the ideal isotropic image
(:func:`synthetic_isotropic_volume`), each camera's index-to-specimen affine
(:func:`camera_affine`) and the VW00 -> VW90 transform of the isotropic
reconstruction (:func:`isotropic_transform`).

Isotropic reconstruction: convention
------------------------------------
VW00 is the fusion of cameras 0 and 1 in camera 0's raw frame, VW90 that of
cameras 2 and 3 in camera 2's raw frame. A fused view's voxel index
(k, i, j) (plane, row, column of its reference camera's raw frame) lies at
the physical position ``s = (k * z_step_um, i * pixel_size_um, j *
pixel_size_um)`` µm in that view's own frame (no centring: index 0 at 0).
The 4x4 homogeneous matrix ``T`` maps VW00's frame to VW90's: the specimen
point that VW00 shows at ``s00`` is shown by VW90 at
``s90 = T[:3, :3] @ s00 + T[:3, 3]``. With ``S = diag(z_step_um,
pixel_size_um, pixel_size_um, 1)``, ``G_c`` camera c's index-to-microscope
affine (its geometry; :meth:`Model.lab_affine`) and ``M`` the motion of the
specimen for cameras 2/3 (``vw90_motion``; identity by default),
``T = S @ inv(G_2) @ M @ G_0 @ inv(S)``, which equals
``S @ inv(C_2) @ C_0 @ inv(S)`` with ``C_c`` = :func:`camera_affine` (the
index-to-specimen affines; ``C_2 = inv(M) @ G_2``). ``T[:3, :3]`` is
orthonormal: determinant -1 for ``vw90_orientation = 'reflection'``, +1 for
'rotation'. ``T`` is the same at every timepoint (the reference cameras do
not drift).

The ideal isotropic image is the unmoved specimen in VW00's frame sampled on
the isotropic grid: voxel (j, i, c) at ``(j, i, c) * pixel_size_um`` µm, so
plane j at ``z = j * pixel_size_um`` where VW00's plane k lies at
``k * z_step_um``, ``floor((Z - 1) * z_step_um / pixel_size_um) + 1``
planes, rows and columns those of camera 0; blurred by the in-focus lateral
PSF alone in all three axes (sigma ``psf_sigma_px * pixel_size_um`` µm, no
growth with depth, no axial PSF), with no attenuation, noise or dead pixels,
beads included (peak ``bead_brightness`` photons), times camera 0's gain (so
in the units of camera 0's ``ideal``; float32 (Zi, Y, X)).
"""

from __future__ import annotations

import numpy as np

from .spec import SyntheticSpec
from .specimen import model_for

__all__ = ["bead_positions_vw00_um", "camera_affine", "check_camera", "check_timepoint", "isotropic_transform",
           "short_hash", "side_for", "slab_sizes", "synthetic_isotropic_volume", "synthetic_volume",
           "view_scaling"]


def camera_affine(spec: SyntheticSpec, camera: int, timepoint: int = 0) -> np.ndarray:
    """4x4 matrix M with ``(z, y, x, 1)_um = M @ (k, y, x, 1)`` for a camera's raw voxel (k, y, x).

    (z, y, x) is the specimen point the voxel images: for cameras 2 and 3 it
    includes the specimen's motion ``vw90_motion`` (``inv(motion) @
    geometry``).
    """
    check_camera(spec, camera, any_camera=True)
    check_timepoint(spec, timepoint)
    return model_for(spec).affine(camera, timepoint)


def check_camera(spec: SyntheticSpec, camera: int, any_camera: bool = False) -> None:
    allowed = (0, 1, 2, 3) if any_camera else spec.cameras
    if camera not in allowed:
        raise ValueError(f"camera {camera!r} is not one of {tuple(allowed)}")


def check_timepoint(spec: SyntheticSpec, t: int) -> None:
    if not (isinstance(t, (int, np.integer)) and 0 <= t < spec.timepoints):
        raise ValueError(f"timepoint {t!r}: expected a 0-based index below {spec.timepoints}")


def render_block(spec: SyntheticSpec, camera: int, t: int, kind: str, side=None, block_info=None):
    k0, k1 = block_info[None]["array-location"][0]
    return model_for(spec).render_slab(camera, t, k0, k1, (kind,), side)[kind]


def synthetic_volume(spec: SyntheticSpec | None = None, camera: int = 0, timepoint: int = 0, kind: str = "raw",
                     slab_planes: int = 8, channel: int | None = None):
    """One camera's volume as a lazy dask array, rendered slab by slab (nothing is written).

    Parameters
    ----------
    spec : SyntheticSpec
        Default ``SyntheticSpec()``.
    camera, timepoint : int
        Camera 0-3 and 0-based timepoint index.
    kind : 'raw', 'ideal', 'clean' or 'body_mask'
        What to render; identical values to what :func:`generate_dataset` writes.
    slab_planes : int
        Planes per dask chunk (does not change the values).
    channel : int, optional
        With ``spec.illumination_channels``: which of the two channels
        ('raw' and 'ideal' differ between them; needed for those kinds).
    """
    import dask.array as da

    spec = spec or SyntheticSpec()
    check_camera(spec, camera, any_camera=True)
    check_timepoint(spec, timepoint)
    dtypes = {"raw": np.uint16, "ideal": np.float32, "clean": np.float32, "body_mask": np.bool_}
    if kind not in dtypes:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(dtypes)}")
    side = side_for(spec, channel, kind)
    Z, Y, X = spec.shape
    chunks = (slab_sizes(Z, slab_planes), (Y,), (X,))
    suffix = "" if side is None else f"-side{side}"
    return da.map_blocks(render_block, spec, camera, timepoint, kind, side, chunks=chunks, dtype=dtypes[kind],
                         meta=np.empty((0, 0, 0), dtypes[kind]),
                         name=f"synthetic-{kind}-cm{camera}-t{timepoint}{suffix}-" + short_hash(spec._key()))


def side_for(spec: SyntheticSpec, channel: int | None, kind: str) -> int | None:
    """Illumination side of ``channel`` for a kind that depends on it (None when it does not)."""
    if spec.illumination_channels is None or kind in ("clean", "body_mask"):
        return None
    if channel is None:
        raise ValueError(f"this dataset's cameras record channels {list(spec.illumination_channels)} "
                         f"(illumination sides): give channel= for kind {kind!r}")
    return spec.illumination_side(channel)


def short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:16]


def slab_sizes(Z: int, slab_planes: int) -> tuple[int, ...]:
    if not isinstance(slab_planes, (int, np.integer)) or slab_planes < 1:
        raise ValueError(f"slab_planes: expected a positive integer, got {slab_planes!r}")
    n = min(int(slab_planes), Z)
    return tuple([n] * (Z // n) + ([Z % n] if Z % n else []))


# --------------------------------------------------------------------------------------------- isotropic views


def view_scaling(spec: SyntheticSpec) -> np.ndarray:
    """``S = diag(z_step_um, pixel_size_um, pixel_size_um, 1)``: a view's voxel index to its physical frame (µm)."""
    return np.diag([float(spec.z_step_um), float(spec.pixel_size_um), float(spec.pixel_size_um), 1.0])


def isotropic_transform(spec: SyntheticSpec, timepoint: int = 0) -> np.ndarray:
    """4x4 ``T`` in physical µm with ``s90 = T[:3, :3] @ s00 + T[:3, 3]`` (see the module docstring).

    Parameters
    ----------
    spec : SyntheticSpec
    timepoint : int
        0-based index (``T`` is the same at every timepoint).

    Returns
    -------
    numpy.ndarray
        (4, 4) float64, mapping VW00's physical frame (z, y, x) µm to VW90's.
    """
    check_timepoint(spec, timepoint)
    model = model_for(spec)
    S = view_scaling(spec)
    G0, G2 = model.lab_affine(0, timepoint), model.lab_affine(2, timepoint)
    return S @ np.linalg.inv(G2) @ model.motion @ G0 @ np.linalg.inv(S)


def bead_positions_vw00_um(spec: SyntheticSpec) -> np.ndarray:
    """Bead centres (n, 3) in VW00's physical frame, (z, y, x) µm: ``S @ inv(C_0) @ (specimen position, 1)``."""
    model = model_for(spec)
    M = view_scaling(spec) @ np.linalg.inv(model.affine(0, 0))
    return model.bead_centre @ M[:3, :3].T + M[:3, 3]


def render_isotropic_block(spec: SyntheticSpec, block_info=None):
    j0, j1 = block_info[None]["array-location"][0]
    return model_for(spec).render_isotropic(j0, j1)


def synthetic_isotropic_volume(spec: SyntheticSpec | None = None, timepoint: int = 0, slab_planes: int = 32):
    """The ideal isotropic image as a lazy dask array (float32 (Zi, Y, X); see the module docstring).

    Parameters
    ----------
    spec : SyntheticSpec
        Default ``SyntheticSpec()``.
    timepoint : int
        0-based index (the image is the same at every timepoint).
    slab_planes : int
        Planes per dask chunk (does not change the values).
    """
    import dask.array as da

    spec = spec or SyntheticSpec()
    check_timepoint(spec, timepoint)
    model = model_for(spec)
    Z, Y, X = spec.shape
    chunks = (slab_sizes(model.iso_planes, slab_planes), (Y,), (X,))
    return da.map_blocks(render_isotropic_block, spec, chunks=chunks, dtype=np.float32,
                         meta=np.empty((0, 0, 0), np.float32),
                         name=f"synthetic-isotropic-t{timepoint}-" + short_hash(spec._key()))
