"""The four cameras: geometry, the opposing-camera convention and the camera artefacts.

Cameras
-------
All cameras have the same frame (Y, X) and the same number of planes Z. Pixel
centres are at integer indices. ``p = pixel_size_um``, ``dz = z_step_um``,
``cz, cy, cx = (Z-1)/2, (Y-1)/2, (X-1)/2``.

* Camera 0 (reference of pair 0/1): raw voxel (k, y, x) images the specimen
  point ``z = (k - cz) dz``, ``y = (y - cy) p``, ``x = (x - cx) p``. It looks
  along +z from the low-z side: its near half is low z (low plane index).
* Camera 2 (reference of pair 2/3): the plane axis is specimen x, frame rows
  are specimen y and frame columns specimen z: ``x = (k - cz) dz``,
  ``y = (y - cy) p``, ``z = (x - cx) p``. Its near half is low x (low plane
  index).
  This is ``vw90_orientation = "reflection"`` (the default): the map from
  camera 0's axes (plane, row, column) to camera 2's is an axis swap, a
  reflection (determinant -1). With ``vw90_orientation = "rotation"``
  camera 2's columns run the other way, ``z = -(x - cx) p``, and that map is
  a proper rotation (determinant +1).
* Cameras 1 and 3 face 0 and 2 and record the same planes (plane k of
  camera 1 is plane k of camera 0); their near half is the high plane index.
  Camera 3 follows camera 2's orientation through the opposing-camera
  convention below, which holds for both orientations.

The default ``z_step_um`` is ``pixel_size_um * X / Z`` so that the plane axis
covers the same physical length as a frame row (X p = Z dz). For the default
shape (32, 128, 128) that is a z/xy ratio of 4 (1.625 µm).

Opposing-camera convention (exact)
----------------------------------
Let ``F_b`` be camera b's raw frame flipped left-right,
``F_b[..., x] = raw_b[..., X-1-x]``. The specimen point imaged at pixel
``q = (y, x)`` of the reference camera a (same plane index) appears in
``F_b`` at::

    p = R(theta) (q - c) + c + t

with ``c = ((Y-1)/2, (X-1)/2)``, ``t = (dy, dx)`` the pair offset in pixels,
``R(theta) = [[cos, -sin], [sin, cos]]`` acting on (y, x) column vectors and
theta in degrees. Registering b onto a therefore means sampling ``F_b`` at
``p(q)`` for every q; :func:`register_opposing` does exactly that. Pairs are
(a, b) = (0, 1) and (2, 3). The data are produced by evaluating the analytic
specimen at the transformed coordinates (no grid is warped).

Motion of the specimen between the two views
--------------------------------------------
``vw90_motion = (a_z, a_y, a_x, t_z, t_y, t_x)`` (degrees, µm) moves the
specimen rigidly for cameras 2 and 3 only: the specimen point ``s`` (µm,
(z, y, x), body centre at the origin) appears to them at
``M(s) = R s + t``, ``R = R_z(a_z) R_y(a_y) R_x(a_x)`` (x rotation applied
first), rotations about the specimen axes through the origin, right-handed
in the (x, y, z) sense::

    R_x(a): y' = cos(a) y - sin(a) z,  z' = sin(a) y + cos(a) z
    R_y(a): z' = cos(a) z - sin(a) x,  x' = sin(a) z + cos(a) x
    R_z(a): x' = cos(a) x - sin(a) y,  y' = sin(a) x + cos(a) y

Cameras 0 and 1 see the specimen unmoved. The camera geometry above maps a
raw voxel to the position in the microscope (the "lab" position, where the
unmoved specimen point would be); the specimen point a voxel of camera 2 or
3 images is ``M^-1`` of it, and :func:`camera_affine`/``camera_to_specimen``
include that (``inv(M) @ G``, G the geometry). It models the specimen moving
in the ~325 ms between the two views of an IsoView recording. The detection
attenuation follows the camera's axis through the moved body; the growth of
the blur with depth still follows the plane index (measured from the
field's centre).

Noise, dead pixels and dark frames
----------------------------------
From the expected photons ``E`` of a plane (see :mod:`.optics`)::

    raw = clip(rint(dark + gain * Poisson(E) + N(0, read_noise)), 0, 65535)

as uint16, then dead pixels: hot pixels read ``level * (1 + 0.03 N(0, 1))``
whatever the signal, stuck pixels read a constant. The dark frame is
integer-valued (``Background_<camera>.tif`` holds it exactly):
``dark_level`` + column stripes + per-pixel pattern.

Time and the outlier timepoint
------------------------------
Pair offsets and rotations drift: ``t(n) = t0 + v n + A (sin(2 pi n / T +
phi) - sin(phi))`` and ``theta(n) = theta0 + omega n`` for timepoint index n
(0-based); v, A, phi and the sign of omega are drawn from the seed per pair.
At ``outlier_timepoint`` the moving camera of every pair (1 and 3) records a
corrupted image: the specimen signal scaled by ``outlier_dim``, a bright
debris blob outside the body (in that camera's frame only) and extra Gaussian
noise ``outlier_noise``. Its true offset and rotation still follow the drift.
The specimen itself does not move or change between timepoints; every
timepoint has fresh noise.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from ..errors import IsoviewError
from .seeds import S_DARK, S_DEAD, S_DEBRIS, S_DRIFT, S_GAIN, S_NOISE, S_OFFSET, S_ROTATION, rng

if TYPE_CHECKING:
    from .spec import SyntheticSpec

__all__ = [
    "DETECTION_AXIS",
    "HOT_PIXEL_NOISE",
    "NEAR_SIGN",
    "VW90_ORIENTATIONS",
    "PAIRS",
    "PAIR_OF",
    "add_debris",
    "clip_window",
    "dark_frame",
    "dead_pixels",
    "debris",
    "draw_gains",
    "draw_pair_geometry",
    "flip_lr",
    "motion_matrix",
    "moving_to_reference",
    "noisy_plane",
    "pair_key",
    "reference_affine",
    "register_opposing",
    "rotation_matrix",
    "rotation_zyx",
    "union",
]

#: Opposing camera pairs as (reference, moving).
PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3))
#: The pair each camera belongs to.
PAIR_OF = {0: (0, 1), 1: (0, 1), 2: (2, 3), 3: (2, 3)}
#: Specimen axis (0 = z, 1 = y, 2 = x) each camera looks along.
DETECTION_AXIS = {0: 0, 1: 0, 2: 2, 3: 2}
#: +1: the camera sits on the negative side of its detection axis (near = low plane index).
NEAR_SIGN = {0: 1, 1: -1, 2: 1, 3: -1}

#: Orientations of camera 2 (and 3) relative to camera 0: see the module docstring.
VW90_ORIENTATIONS = ("reflection", "rotation")

#: Hot pixels fluctuate by this fraction of their level (standard deviation).
HOT_PIXEL_NOISE = 0.03
#: Debris blob of an outlier image: centre at this fraction of the frame from a corner ...
DEBRIS_CORNER = 0.12
#: ... and sigma this fraction of the smaller frame side.
DEBRIS_SIGMA = 0.025


def pair_key(key: Any) -> tuple[int, int]:
    """A camera pair as ``(reference, moving)`` from a tuple or a string such as ``"0,1"`` or ``"2-3"``."""
    if isinstance(key, str):
        parts = [s for s in key.replace("-", ",").replace("_", ",").split(",") if s.strip()]
        key = tuple(int(s) for s in parts)
    key = tuple(int(k) for k in key)
    if key not in PAIRS:
        raise ValueError(f"unknown camera pair {key!r}; expected one of {PAIRS}")
    return key  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- windows


def union(a, b):
    """Bounding box of two windows ``(y0, y1, x0, x1)`` (either may be None)."""
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def clip_window(win, Y, X):
    """A window ``(y0, y1, x0, x1)`` clipped to a (Y, X) frame; None if nothing is left."""
    if win is None:
        return None
    y0, y1, x0, x1 = max(0, win[0]), min(Y, win[1]), max(0, win[2]), min(X, win[3])
    return None if y0 >= y1 or x0 >= x1 else (y0, y1, x0, x1)


# --------------------------------------------------------------------------------------------- geometry


def rotation_matrix(theta_deg: float) -> np.ndarray:
    """2x2 rotation ``[[cos, -sin], [sin, cos]]`` acting on (y, x) column vectors; angle in degrees."""
    t = math.radians(theta_deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def reference_affine(ref: int, shape, pixel: float, dz: float, orientation: str = "reflection") -> np.ndarray:
    """4x4 map of a reference camera's (0 or 2) raw index (k, y, x, 1) to (unmoved) specimen (z, y, x, 1), µm.

    ``orientation`` ('reflection' or 'rotation') applies to camera 2 only:
    'rotation' reverses its columns (``z = -(x - cx) p``).
    """
    Z, Y, X = shape
    cz, cy, cx = (Z - 1) / 2, (Y - 1) / 2, (X - 1) / 2
    A = np.zeros((4, 4))
    A[3, 3] = 1.0
    plane_axis = 0 if ref == 0 else 2   # specimen axis along the plane index
    col_axis = 2 if ref == 0 else 0     # specimen axis along frame columns
    A[plane_axis, 0], A[plane_axis, 3] = dz, -cz * dz
    A[1, 1], A[1, 3] = pixel, -cy * pixel
    if ref == 2 and orientation == "rotation":
        A[col_axis, 2], A[col_axis, 3] = -pixel, cx * pixel
    elif ref == 0 or orientation == "reflection":
        A[col_axis, 2], A[col_axis, 3] = pixel, -cx * pixel
    else:
        raise ValueError(f"orientation {orientation!r}: expected one of {VW90_ORIENTATIONS}")
    return A


def rotation_zyx(angles_deg) -> np.ndarray:
    """3x3 ``R = R_z(a_z) R_y(a_y) R_x(a_x)`` acting on (z, y, x) column vectors; angles (a_z, a_y, a_x) in degrees.

    Each factor is the right-handed rotation about that specimen axis (see
    the module docstring); the x rotation is applied first.
    """
    az, ay, ax = (math.radians(float(a)) for a in angles_deg)
    cz_, sz_ = math.cos(az), math.sin(az)
    cy_, sy_ = math.cos(ay), math.sin(ay)
    cx_, sx_ = math.cos(ax), math.sin(ax)
    # rows and columns ordered (z, y, x)
    Rz = np.array([[1.0, 0.0, 0.0], [0.0, cz_, sz_], [0.0, -sz_, cz_]])
    Ry = np.array([[cy_, 0.0, -sy_], [0.0, 1.0, 0.0], [sy_, 0.0, cy_]])
    Rx = np.array([[cx_, sx_, 0.0], [-sx_, cx_, 0.0], [0.0, 0.0, 1.0]])
    return Rz @ Ry @ Rx


def motion_matrix(motion) -> np.ndarray:
    """4x4 homogeneous ``M`` with ``M @ (s, 1) = (R s + t, 1)`` for ``motion = (a_z, a_y, a_x, t_z, t_y, t_x)``.

    Angles in degrees (see :func:`rotation_zyx`), translation in µm, all on
    (z, y, x) specimen coordinates.
    """
    motion = [float(v) for v in motion]
    M = np.eye(4)
    M[:3, :3] = rotation_zyx(motion[:3])
    M[:3, 3] = motion[3:]
    return M


def moving_to_reference(Y: int, X: int, offset, theta_deg: float) -> np.ndarray:
    """4x4 map of raw indices (k, y, x, 1) of a moving camera to reference indices (k, qy, qx, 1)."""
    c = np.array([(Y - 1) / 2, (X - 1) / 2])
    t = np.asarray(offset, dtype=float)
    Rt = rotation_matrix(theta_deg).T
    flip = np.diag([1.0, -1.0])          # p = flip @ (y, x) + (0, X-1)
    M = np.eye(4)
    M[1:3, 1:3] = Rt @ flip
    M[1:3, 3] = Rt @ (np.array([0.0, X - 1]) - c - t) + c
    return M


def flip_lr(array):
    """Mirror the last (x) axis: ``F[..., x] = raw[..., X-1-x]``."""
    return array[..., ::-1]


def register_opposing(frame_b_flipped, offset, rotation_deg: float, order: int = 1,
                      mode: str = "constant", cval: float = 0.0) -> np.ndarray:
    """Resample a flipped moving-camera image onto its reference camera's grid.

    Applies the pair convention: ``out[..., q] = F_b[..., R(theta)(q - c) + c + t]``
    for every pixel ``q = (y, x)``, with ``c`` the frame centre and
    ``t = offset = (dy, dx)``.

    Parameters
    ----------
    frame_b_flipped : array (..., Y, X)
        Camera b's plane or stack already flipped left-right (see :func:`flip_lr`).
    offset : (dy, dx)
        Pair offset in pixels.
    rotation_deg : float
        Pair rotation in degrees.
    order, mode, cval
        Interpolation as in :func:`scipy.ndimage.affine_transform`.

    Returns
    -------
    numpy.ndarray
        Same shape as the input, float64 (float32 for float32 input).
    """
    arr = np.asarray(frame_b_flipped)
    if arr.ndim < 2:
        raise ValueError(f"register_opposing: expected an array (..., Y, X), got shape {arr.shape}")
    Y, X = arr.shape[-2:]
    c = np.array([(Y - 1) / 2, (X - 1) / 2])
    R = rotation_matrix(rotation_deg)
    shift = c + np.asarray(offset, dtype=float) - R @ c
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    planes = arr.reshape(-1, Y, X)
    out = np.empty(planes.shape, dtype=dtype)
    for i, plane in enumerate(planes):
        ndimage.affine_transform(plane.astype(dtype, copy=False), R, offset=shift, order=order, mode=mode,
                                 cval=cval, output=out[i])
    return out.reshape(arr.shape)


def draw_pair_geometry(spec: "SyntheticSpec") -> dict[str, dict]:
    """Offsets (px) and rotations (degrees) of both pairs at every timepoint, with their drift.

    Both pairs are always drawn so that writing a subset of the cameras
    changes nothing. Returns a dict of dicts keyed by pair:
    ``offset0`` ((2,) at timepoint 0), ``rotation0`` (float), ``offsets``
    ((T, 2)), ``rotations`` ((T,)) and ``drift`` (the drawn parameters).
    """
    s = spec
    Z, Y, X = s.shape
    cap = min(s.max_offset_px, min(Y, X) / 16.0)
    out: dict[str, dict] = {"offset0": {}, "rotation0": {}, "offsets": {}, "rotations": {}, "drift": {}}
    n = np.arange(s.timepoints, dtype=float)
    for i, pair in enumerate(PAIRS):
        r = rng(s.seed, S_OFFSET, i)
        whole = np.floor(r.uniform(0, max(cap - 0.85, 0.0) + 1e-9, 2))
        drawn = (whole + r.uniform(0.15, 0.85, 2)) * r.choice([-1.0, 1.0], 2)
        drawn = np.clip(drawn, -cap, cap)
        offset0 = np.array(s.offsets.get(pair, tuple(drawn)), dtype=float)
        r = rng(s.seed, S_ROTATION, i)
        lo = min(0.2, s.max_rotation_deg)
        drawn_rot = float(r.uniform(lo, s.max_rotation_deg) * r.choice([-1.0, 1.0]))
        rotation0 = float(s.rotations_deg.get(pair, drawn_rot))
        r = rng(s.seed, S_DRIFT, i)
        a1, a2 = r.uniform(0, 2 * np.pi, 2)
        v = s.drift_px_per_timepoint * np.array([math.sin(a1), math.cos(a1)])
        amp = s.drift_amplitude_px * np.array([math.sin(a2), math.cos(a2)])
        phase = float(r.uniform(0, 2 * np.pi))
        omega = s.rotation_drift_deg_per_timepoint * float(r.choice([-1.0, 1.0]))
        wobble = np.sin(2 * np.pi * n / s.drift_period_timepoints + phase) - math.sin(phase)
        out["offset0"][pair] = offset0
        out["rotation0"][pair] = rotation0
        out["offsets"][pair] = offset0[None, :] + n[:, None] * v[None, :] + wobble[:, None] * amp[None, :]
        out["rotations"][pair] = rotation0 + omega * n
        out["drift"][pair] = {"velocity_px": v.tolist(), "amplitude_px": amp.tolist(), "phase_rad": phase,
                              "period_timepoints": s.drift_period_timepoints, "omega_deg": omega}
    return out


def draw_gains(spec: "SyntheticSpec") -> dict[int, float]:
    """Counts per photon of every camera 0-3 (given in the spec or drawn from ``gain_range``)."""
    gains = {}
    for cam in range(4):
        drawn = float(rng(spec.seed, S_GAIN, cam).uniform(*spec.gain_range))
        gains[cam] = float(spec.gains.get(cam, drawn))
    return gains


# --------------------------------------------------------------------------------------------- artefacts


def dark_frame(spec: "SyntheticSpec", camera: int) -> np.ndarray:
    """A camera's integer-valued dark frame (float32 (Y, X)): level + column stripes + pixel pattern."""
    s = spec
    Z, Y, X = s.shape
    r = rng(s.seed, S_DARK, camera)
    cols = r.standard_normal(X) * s.dark_column_sigma
    pix = r.standard_normal((Y, X)) * s.dark_pixel_sigma
    d = np.clip(np.rint(s.dark_level + cols[None, :] + pix), 0, 65535)
    return d.astype(np.float32)


def dead_pixels(spec: "SyntheticSpec", camera: int, dark: np.ndarray) -> dict:
    """A camera's isolated dead pixels: hot ones first, then stuck ones (some at the dark level).

    Returns a dict with ``y``, ``x`` (int arrays), ``kind`` ('hot'/'stuck'),
    ``value`` (hot: level in counts; stuck: the constant reading) and ``n_hot``.
    """
    s = spec
    Z, Y, X = s.shape
    n = s.n_dead
    r = rng(s.seed, S_DEAD, camera)
    taken = np.zeros((Y, X), bool)
    ys: list[int] = []
    xs: list[int] = []
    tries = 0
    while len(ys) < n and tries < 200 * n + 1000:
        cand = r.integers([2, 2], [Y - 2, X - 2], size=(2 * (n - len(ys)) + 16, 2))
        tries += len(cand)
        for y, x in cand:
            if taken[y, x]:
                continue
            ys.append(int(y))
            xs.append(int(x))
            taken[y - 2:y + 3, x - 2:x + 3] = True
            if len(ys) == n:
                break
    if len(ys) < n:  # pragma: no cover - prevented by the spec's capacity check
        raise IsoviewError(f"could not place {n} isolated dead pixels in a {Y}x{X} frame")
    n_hot = int(round(n * s.hot_fraction))
    kind = np.array(["hot"] * n_hot + ["stuck"] * (n - n_hot))
    value = np.empty(n)
    value[:n_hot] = r.uniform(1500, 4000, n_hot)
    n_stuck = n - n_hot
    low = np.arange(n_stuck) % 2 == 0
    sy, sx = np.array(ys[n_hot:], int), np.array(xs[n_hot:], int)
    stuck = np.where(low, dark[sy, sx] + r.integers(-3, 4, n_stuck), r.integers(300, 1200, n_stuck))
    value[n_hot:] = np.clip(stuck, 0, 65535)
    return {"y": np.array(ys, int), "x": np.array(xs, int), "kind": kind, "value": value, "n_hot": n_hot}


def debris(spec: "SyntheticSpec", camera: int) -> tuple[float, float, float, float]:
    """(y, x, sigma_px, photons) of the debris blob in a moving camera's raw frame (outlier images)."""
    Z, Y, X = spec.shape
    r = rng(spec.seed, S_DEBRIS, camera)
    fy, fx = r.choice([DEBRIS_CORNER, 1 - DEBRIS_CORNER], 2)
    return ((Y - 1) * fy, (X - 1) * fx, DEBRIS_SIGMA * min(Y, X), spec.debris_level * spec.photon_scale)


def add_debris(E: np.ndarray, blob: tuple[float, float, float, float]):
    """Add a debris blob ``(y, x, sigma_px, photons)`` to the expected photons ``E`` in place.

    Returns the window ``(y0, y1, x0, x1)`` it touched, or None.
    """
    Y, X = E.shape
    dy_, dx_, ds, dphot = blob
    h = int(math.ceil(4 * ds))
    dwin = clip_window((int(dy_) - h, int(dy_) + h + 2, int(dx_) - h, int(dx_) + h + 2), Y, X)
    if dwin is not None and dphot > 0:
        a0, a1, b0, b1 = dwin
        gy = np.exp(-((np.arange(a0, a1) - dy_) ** 2) / (2 * ds**2))
        gx = np.exp(-((np.arange(b0, b1) - dx_) ** 2) / (2 * ds**2))
        E[a0:a1, b0:b1] += (dphot * gy[:, None] * gx[None, :]).astype(np.float32)
        return dwin
    return None


def noisy_plane(spec: "SyntheticSpec", camera: int, t: int, k: int, E: np.ndarray, active, outlier: bool,
                side: int | None, gain: float, dark: np.ndarray, dead: dict) -> np.ndarray:
    """One raw plane (uint16 (Y, X)) from its expected photons ``E``.

    Photon noise is drawn only inside ``active`` (the window holding signal;
    E is zero elsewhere); the generator is seeded by (timepoint number,
    camera, plane[, side]).
    """
    s = spec
    Y, X = E.shape
    tm = s.first_timepoint + t
    r = rng(s.seed, S_NOISE, tm, camera, k) if side is None else rng(s.seed, S_NOISE, tm, camera, k, 1 + side)
    gain = np.float32(gain)
    photons = None
    if active is not None:
        y0, y1, x0, x1 = active
        photons = r.poisson(E[y0:y1, x0:x1].astype(np.float64)).astype(np.float32)
    raw = r.standard_normal((Y, X), dtype=np.float32)
    raw *= np.float32(s.read_noise)
    raw += dark
    if photons is not None:
        raw[y0:y1, x0:x1] += gain * photons
    if outlier and s.outlier_noise > 0:
        raw += np.float32(s.outlier_noise) * r.standard_normal((Y, X), dtype=np.float32)
    n_hot = dead["n_hot"]
    if n_hot:
        level = dead["value"][:n_hot]
        raw[dead["y"][:n_hot], dead["x"][:n_hot]] = level * (1 + HOT_PIXEL_NOISE * r.standard_normal(n_hot))
    np.rint(raw, out=raw)
    np.clip(raw, 0, 65535, out=raw)
    raw16 = raw.astype(np.uint16)
    raw16[dead["y"][n_hot:], dead["x"][n_hot:]] = dead["value"][n_hot:].astype(np.uint16)
    return raw16
