"""Lazy volumes: any camera's raw, ideal, clean or body-mask volume as a dask array, rendered slab by slab."""

from __future__ import annotations

import numpy as np

from .spec import SyntheticSpec
from .specimen import model_for

__all__ = ["camera_affine", "check_camera", "check_timepoint", "short_hash", "side_for", "slab_sizes",
           "synthetic_volume"]


def camera_affine(spec: SyntheticSpec, camera: int, timepoint: int = 0) -> np.ndarray:
    """4x4 matrix M with ``(z, y, x, 1)_um = M @ (k, y, x, 1)`` for a camera's raw voxel (k, y, x)."""
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
