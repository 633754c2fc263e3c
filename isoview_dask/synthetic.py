"""Synthetic IsoView recordings with exact ground truth.

The generator writes a complete raw recording (``.stack`` files, ``push_config``
XML, dark frames) in the Keller and/or flat layout, plus the ground truth the
rest of the package is tested against: camera-pair offsets and rotations,
gains, dead pixels, dark frames and, optionally, noise-free volumes.

The specimen
------------
The specimen lives in physical coordinates (z, y, x) in µm with its centre at
the origin, which is also the centre of every camera's field. It is defined
analytically, so any camera can sample it exactly at any sub-pixel position:

* an ellipsoidal body with semi-axes (az, ay, ax); its intensity is
  ``body_level * photon_scale`` times a smooth edge profile of the ellipsoidal
  radius r (1 for r <= 1 - w, 0.5 on the surface r = 1, 0 for r >= 1 + w) times
  a gentle texture ``1 + texture_amplitude * mean_j cos(k_j . s + phi_j)``;
* nuclei on a randomly oriented, jittered cubic lattice (spacing
  ``nucleus_spacing_um``) inside r < 0.85: Gaussian blobs ``a * exp(-|s - c|^2 / (2 sigma^2))`` with sigma
  drawn from ``nucleus_sigma_um`` and truncated to zero beyond a radius of
  4 sigma (a sphere, so every camera sees exactly the same function).

The body is sized from the smaller physical field: with
``L = min(X * pixel_size_um, Z * z_step_um)`` (the extent shared by the z
axis of cameras 0/1 and the x axis of cameras 2/3) the semi-axes are
``(0.30 L, 0.36 Y * pixel_size_um, 0.34 L)``.

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
* Cameras 1 and 3 face 0 and 2 and record the same planes (plane k of
  camera 1 is plane k of camera 0); their near half is the high plane index.

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

Image formation
---------------
Per camera, plane and pixel (all in that camera's raw frame):

1. ``clean`` = the specimen sampled at the pixel centre (photons, sharp,
   unattenuated, no gain).
2. Attenuation ``exp(-depth / attenuation_length_um)``, where ``depth`` is the
   path length inside the ellipsoid between the point and the ellipsoid's
   entry surface on the camera's side (0 in front of the body, the full chord
   behind it).
3. A 2D Gaussian blur (zero outside the frame) with
   ``sigma_px = psf_sigma_px + blur_growth_px * clip(d / a, 0, 1.5)``, where d
   is the plane's distance beyond the body centre away from the camera and a
   the body semi-axis along the detection axis. The near half is sharp.
4. Expected photons ``E = blur(clean * attenuation)``; ``ideal = gain * E``.
5. ``raw = clip(rint(dark + gain * Poisson(E) + N(0, read_noise)), 0, 65535)``
   as uint16, then dead pixels: hot pixels read ``level * (1 + 0.03 N(0, 1))``
   whatever the signal, stuck pixels read a constant.

The dark frame is integer-valued (``Background_<camera>.tif`` holds it
exactly): ``dark_level`` + column stripes + per-pixel pattern.

Illumination sides (optional)
-----------------------------
With ``illumination_channels = (a, b)`` every camera records the specimen
twice per timepoint, as two channels of one label, under light sheets
entering from the two sides of its frame's x axis (columns): channel ``a``
from the low-x side, channel ``b`` from the high-x side. Let ``u`` be the
specimen direction of increasing column of the camera's raw frame and
``v = u`` for channel a, ``v = -u`` for channel b (the direction the light
travels). Step 2 above gains a factor and step 3 becomes a mix:

2'. ``emitted = clean * exp(-depth / attenuation_length_um)
    * exp(-depth_v / illumination_attenuation_um) * balance``, where
    ``depth_v`` is the path length inside the ellipsoid from its entry
    surface along ``v`` to the point (0 before the body, the whole chord
    beyond it), and ``balance`` is 1 for channel a and
    ``illumination_balance`` for channel b.
3'. ``E = (1 - f) blur_sigma(emitted) + f blur_s2(emitted)`` with
    ``s2 = sqrt(sigma^2 + illumination_blur_px^2)`` and the blurred fraction
    ``f = clip((s . v) / a_v, 0, 1)``: 0 on the half of the body the light
    reaches first (that channel is sharp there), growing linearly to 1 at
    the far surface; ``s`` is the point (µm, body centre at the origin)
    and ``a_v`` the body's semi-axis along ``v``.

Channel b's light sheet may also be misaligned with channel a's
(``sheet_offset_planes``, ``sheet_tilt_deg``, per camera, in its raw frame):
channel b's plane k at row y then images what channel a's plane
``k + d(y)`` images, ``d(y) = offset + tan(tilt) (y - (Y - 1) / 2)`` planes
(the sheet is shifted along the detection axis and tilted about the x
axis; the camera's pixel grid is the same). The motion that brings channel
b's content onto channel a is ``z -> z + d(y)``. Nuclei are evaluated at
the sheet's depth at their own row (their in-plane section is not sheared
within one nucleus).

So channel a is bright and sharp at low x and dim and blurred at high x,
channel b the reverse; at the body's middle column they see the specimen
equally (up to ``balance``). ``clean`` and ``body_mask`` are the same for
both channels; ``ideal`` is per channel. Each channel has its own noise
(seeded by (timepoint, camera, plane, side)); the dark frame and dead pixels
are the camera's. Without ``illumination_channels`` nothing of this applies
and the bytes are those of earlier versions.

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
``ideal`` includes the dimming and the debris (it is the expected image);
``clean`` and ``body_mask`` never do.

Ground truth on disk
--------------------
``<out>/truth/truth.json`` holds the spec, these conventions, voxel sizes,
per-pair per-timepoint offsets and rotations, gains and pair gain ratios,
dark-frame statistics, dead-pixel lists, the body geometry, each camera's
index-to-specimen affine per timepoint, and the outlier. ``<out>/truth/
volumes.zarr`` is a zarr v3 group (default codecs) with ``dark/CM<n>``
(float32 (Y, X)) always and, when ``write_truth_volumes``,
``TM<nnnnn>/CM<n>/{ideal,clean,body_mask}`` (float32, float32, bool; (Z, Y,
X) in the camera's raw frame, chunked by planes); with illumination sides
``ideal`` is per channel, ``TM<nnnnn>/CM<n>/CHN<cc>/ideal``. :func:`load_truth`
reads it all back.

Reproducibility
---------------
Every random quantity comes from a generator seeded by ``seed`` and what it
is for (the noise of one plane is seeded by (timepoint, camera, plane)), so
the same spec gives identical bytes whatever the slab size, scheduler or
number of workers.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from .errors import InputNotFoundError, IsoviewError
from .io.atomic import atomic_output
from .metadata import CAMERA_PIXEL_UM, write_push_config

log = logging.getLogger(__name__)

__all__ = [
    "CONVENTIONS",
    "PAIRS",
    "SyntheticSpec",
    "SyntheticTruth",
    "camera_affine",
    "flip_lr",
    "generate_dataset",
    "load_truth",
    "register_opposing",
    "synthetic_volume",
]

#: Opposing camera pairs as (reference, moving).
PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3))
_PAIR_OF = {0: (0, 1), 1: (0, 1), 2: (2, 3), 3: (2, 3)}
#: Specimen axis (0 = z, 1 = y, 2 = x) each camera looks along.
_DETECTION_AXIS = {0: 0, 1: 0, 2: 2, 3: 2}
#: +1: the camera sits on the negative side of its detection axis (near = low plane index).
_NEAR_SIGN = {0: 1, 1: -1, 2: 1, 3: -1}

#: Nuclei are exactly zero beyond this many sigmas (3D radius).
NUCLEUS_TRUNCATE = 4.0
#: Hot pixels fluctuate by this fraction of their level (standard deviation).
HOT_PIXEL_NOISE = 0.03
_BODY_FILL = (0.30, 0.36, 0.34)
_NUCLEUS_ZONE = 0.85
_EDGE_UM = 1.0
_TEXTURE_WAVES = 4
_TEXTURE_WAVELENGTH_UM = (5.0, 20.0)
_NUCLEUS_AMPLITUDE = (0.6, 1.0)
_DEBRIS_CORNER = 0.12
_DEBRIS_SIGMA = 0.025
_BLUR_CLIP = 1.5

# seed-stream identifiers
_S_OFFSET, _S_ROTATION, _S_GAIN, _S_DRIFT, _S_SPECIMEN, _S_DARK, _S_DEAD, _S_NOISE, _S_DEBRIS = range(1, 10)

TRUTH_VERSION = 1

CONVENTIONS: dict[str, str] = {
    "axes": "Arrays are (Z, Y, X) = (plane, row, column) in each camera's raw frame; pixel centres at integer "
            "indices; specimen coordinates are (z, y, x) in µm with the body centre at the origin.",
    "camera_0": "raw (k, y, x) -> specimen z = (k-cz)*dz, y = (y-cy)*p, x = (x-cx)*p; near side = low z.",
    "camera_2": "raw (k, y, x) -> specimen x = (k-cz)*dz, y = (y-cy)*p, z = (x-cx)*p; near side = low x.",
    "opposing": "Let F_b[..., x] = raw_b[..., X-1-x] (camera b flipped left-right). The specimen point imaged at "
                "pixel q = (y, x) of reference camera a (same plane) appears in F_b at p = R(theta)(q - c) + c + t, "
                "c = ((Y-1)/2, (X-1)/2), t = (dy, dx) in pixels, R(theta) = [[cos, -sin], [sin, cos]] on (y, x) "
                "column vectors, theta in degrees. Registering b onto a = sampling F_b at p(q). Pairs (a, b): "
                "(0, 1), (2, 3).",
    "camera_affine": "camera_to_specimen[camera][t] is a 4x4 matrix M with (z, y, x, 1)_um = M @ (k, y, x, 1).",
    "gain": "counts = gain * photons; gain_ratio of pair (a, b) = gain_b / gain_a.",
    "raw": "raw = clip(rint(dark + gain*Poisson(E) + N(0, read_noise)), 0, 65535) with dead pixels applied; "
           "E = blur_sigma(plane)(clean * exp(-depth/attenuation_length)).",
    "ideal": "ideal = gain * E (expected raw minus dark, float32), dead pixels NOT applied; includes the outlier "
             "dimming and debris.",
    "clean": "clean = sharp, unattenuated specimen sampled at the pixel centres (photons, no gain).",
    "body_mask": "body_mask = ellipsoidal radius <= 1 at the pixel centre.",
    "drift": "offset(n) = offset0 + v*n + A*(sin(2*pi*n/T + phi) - sin(phi)); rotation(n) = rotation0 + omega*n; "
             "n = 0-based timepoint index.",
    "dead_pixels": "hot: level*(1 + 0.03*N(0,1)) every plane, independent of the signal; stuck: constant value.",
    "timepoint_index": "Accessors take the 0-based index n; file names use TM number first_timepoint + n.",
    "illumination": "With illumination_channels (a, b): channel a is lit from the low-x (low column) side of each "
                    "camera's raw frame, b from the high-x side; each is attenuated (path length inside the body "
                    "from the light's entry surface) and progressively blurred on its far half in x; b's sheet may "
                    "be misaligned (illumination.sheet_misalignment): b's content at (z, y) lands on a's at "
                    "z + offset_z_planes + tan(rotation_deg) * (y - (Y-1)/2); ideal is per "
                    "channel (truth.ideal(camera, t, channel)), clean and body_mask are shared.",
}


# --------------------------------------------------------------------------------------------- spec


def _pair_key(key: Any) -> tuple[int, int]:
    if isinstance(key, str):
        parts = [s for s in key.replace("-", ",").replace("_", ",").split(",") if s.strip()]
        key = tuple(int(s) for s in parts)
    key = tuple(int(k) for k in key)
    if key not in PAIRS:
        raise ValueError(f"unknown camera pair {key!r}; expected one of {PAIRS}")
    return key  # type: ignore[return-value]


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Fields left as ``None`` are resolved from the seed or the shape.

    Geometry
    --------
    shape : (Z, Y, X)
        Planes and frame size of every camera.
    timepoints : int
        Number of timepoints.
    cameras : tuple of int
        Cameras to write (subset of 0-3).
    channel_of_camera : {camera: channel}, optional
        Default ``{0: 0, 1: 0, 2: 1, 3: 1}``.
    pixel_size_um, magnification : float, optional
        Lateral pixel size in the specimen and detection magnification,
        related by ``pixel = 6.5 µm / magnification``. Give either (or both,
        consistently); default 16x, 0.40625 µm.
    z_step_um : float, optional
        Plane spacing; default ``pixel_size_um * X / Z``.
    offsets : {(a, b): (dy, dx)}, optional
        Pair offsets (px) at timepoint 0. Missing pairs are drawn from the seed
        within ``+-min(max_offset_px, min(Y, X) / 16)`` with fractional parts in
        [0.15, 0.85].
    rotations_deg : {(a, b): theta}, optional
        Pair rotations at timepoint 0; missing ones drawn with
        ``0.2 <= |theta| <= max_rotation_deg``.

    Photometry
    ----------
    gains : {camera: gain}, optional
        counts per photon; missing cameras drawn uniformly from ``gain_range``.
    photon_scale : float
        Photons of the brightest nuclei (amplitudes are 0.6-1.0 of it).
    body_level, texture_amplitude : float
        Body interior level (fraction of ``photon_scale``) and its texture depth.
    nucleus_spacing_um, nucleus_sigma_um
        Nucleus lattice spacing and sigma range (µm).
    read_noise : float
        Gaussian read noise (counts, standard deviation).
    dark_level, dark_column_sigma, dark_pixel_sigma : float
        Dark frame: offset, column-stripe and per-pixel fixed-pattern spread.
    attenuation_length_um : float, optional
        Default 1.5 x the body semi-axis along each camera's detection axis.
    psf_sigma_px, blur_growth_px : float
        Blur of in-focus planes, and extra blur at the body's far surface.
    n_dead : int, optional
        Dead pixels per camera; default ``max(12, round(4e-4 Y X))``.
    hot_fraction : float
        Fraction of dead pixels that are hot (the rest are stuck).

    Time
    ----
    drift_px_per_timepoint, drift_amplitude_px, drift_period_timepoints
        Linear drift speed and sinusoidal wobble of each pair offset.
    rotation_drift_deg_per_timepoint : float
        Rotation drift speed.
    outlier_timepoint : int, optional
        0-based index of the corrupted timepoint (None: none).
    outlier_dim, outlier_noise, debris_level
        Signal factor, extra noise (counts) and debris photons (x ``photon_scale``)
        of the corrupted moving-camera images.

    Illumination sides
    ------------------
    illumination_channels : (a, b), optional
        None (default): each camera records one channel (``channel_of_camera``).
        Given: every camera records the same label twice, as channel ``a``
        lit from the low-x side of its raw frame (low column index) and as
        channel ``b`` lit from the high-x side (SiMView-style two-sided
        illumination); ``channel_of_camera`` must then be left unset (it
        becomes ``a`` for every camera). See "Illumination sides" in the
        module docstring for the image model.
    illumination_attenuation_um : float, optional
        Attenuation length of the light sheet inside the body; default the
        body's semi-axis along the frame's x direction.
    illumination_blur_px : float
        Extra blur (Gaussian sigma, px, added in quadrature) on a channel's
        far side in x.
    illumination_balance : float
        Photons of channel ``b`` relative to channel ``a`` (unequal laser
        powers); the brightness ratio an intensity correction should find.
    sheet_offset_planes, sheet_tilt_deg : float or {camera: float}
        Misalignment of channel b's light sheet with channel a's in each
        camera's raw frame (one value for every camera, or per camera;
        missing cameras 0): channel b's plane k at row y images channel a's
        plane ``k + offset + tan(tilt) * (y - (Y - 1) / 2)``. Offsets within
        +-Z/4 planes, tilts within +-10 degrees (counted in voxel units,
        planes per row); nonzero values need ``illumination_channels``.

    Files
    -----
    layout : 'keller', 'flat' or 'both'
    write_truth_volumes : bool
        Write ``ideal``, ``clean`` and ``body_mask`` per camera and timepoint.
    specimen, first_timepoint : int
        ``SPM``/``SPC`` number and the ``TM`` number of timepoint index 0.
    wavelength_nm, exposure_time_ms, timepoint_interval_s
        XML metadata.
    """

    shape: tuple[int, int, int] = (32, 128, 128)
    timepoints: int = 1
    cameras: tuple[int, ...] = (0, 1, 2, 3)
    channel_of_camera: Mapping[int, int] | None = None
    pixel_size_um: float | None = None
    z_step_um: float | None = None
    magnification: float | None = None
    seed: int = 0
    offsets: Mapping[tuple[int, int], tuple[float, float]] | None = None
    rotations_deg: Mapping[tuple[int, int], float] | None = None
    max_offset_px: float = 8.0
    max_rotation_deg: float = 0.8
    gains: Mapping[int, float] | None = None
    gain_range: tuple[float, float] = (0.8, 1.3)
    photon_scale: float = 2000.0
    body_level: float = 0.25
    texture_amplitude: float = 0.3
    nucleus_spacing_um: float = 8.0
    nucleus_sigma_um: tuple[float, float] = (1.0, 2.0)
    read_noise: float = 2.0
    dark_level: float = 100.0
    dark_column_sigma: float = 3.0
    dark_pixel_sigma: float = 1.5
    attenuation_length_um: float | None = None
    psf_sigma_px: float = 0.0
    blur_growth_px: float = 3.0
    n_dead: int | None = None
    hot_fraction: float = 0.5
    drift_px_per_timepoint: float = 0.1
    drift_amplitude_px: float = 0.3
    drift_period_timepoints: float = 24.0
    rotation_drift_deg_per_timepoint: float = 0.005
    outlier_timepoint: int | None = None
    outlier_dim: float = 0.1
    outlier_noise: float = 40.0
    debris_level: float = 3.0
    illumination_channels: tuple[int, int] | None = None
    illumination_attenuation_um: float | None = None
    illumination_blur_px: float = 2.0
    illumination_balance: float = 1.0
    sheet_offset_planes: float | Mapping[int, float] = 0.0
    sheet_tilt_deg: float | Mapping[int, float] = 0.0
    layout: str = "keller"
    write_truth_volumes: bool = True
    specimen: int = 0
    first_timepoint: int = 0
    wavelength_nm: float = 488.0
    exposure_time_ms: float = 10.0
    timepoint_interval_s: float = 30.0
    #: Names of the fields that were left as None and derived here (re-derived by :meth:`replace`).
    derived: frozenset = field(default=frozenset(), init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("derived", frozenset(name for name in _DERIVED if getattr(self, name) is None))

        def fail(name: str, expected: str) -> None:
            raise ValueError(f"SyntheticSpec.{name}: expected {expected}, got {getattr(self, name)!r}")

        def integer(name: str, minimum: int) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                fail(name, f"an integer >= {minimum}")
            set_(name, int(value))
            return int(value)

        def number(name: str, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
                   optional: bool = False) -> float | None:
            value = getattr(self, name)
            if value is None and optional:
                return None
            ok = _is_number(value) and (value > lo if lo_open else value >= lo) and value <= hi
            if not ok:
                bound = f"{'>' if lo_open else '>='} {lo}" if lo != -math.inf else ""
                if hi != math.inf:
                    bound += f"{' and ' if bound else ''}<= {hi}"
                fail(name, f"a finite number {bound}".strip())
            set_(name, float(value))
            return float(value)

        def number_range(name: str, lo: float, lo_open: bool = True) -> tuple[float, float]:
            value = getattr(self, name)
            try:
                a, b = (float(v) for v in value)
            except (TypeError, ValueError):
                fail(name, "a pair (low, high)")
            if not (math.isfinite(a) and math.isfinite(b) and (a > lo if lo_open else a >= lo) and b >= a):
                fail(name, f"a pair low <= high with low {'>' if lo_open else '>='} {lo}")
            set_(name, (a, b))
            return a, b

        # shape
        try:
            shape = tuple(int(s) for s in self.shape)
            if any(float(s) != int(s) for s in self.shape):
                raise ValueError
        except (TypeError, ValueError):
            fail("shape", "three integers (Z, Y, X)")
        if len(shape) != 3 or shape[0] < 2 or shape[1] < 24 or shape[2] < 24:
            fail("shape", "(Z, Y, X) with Z >= 2 planes and Y, X >= 24 pixels")
        if shape[1] * shape[2] * 2 >= 2**63 or max(shape) > 100_000:
            fail("shape", "a frame size below 100000 pixels per axis")
        set_("shape", shape)
        Z, Y, X = shape
        integer("timepoints", 1)
        integer("seed", 0)
        integer("specimen", 0)
        integer("first_timepoint", 0)
        if self.specimen > 99:
            fail("specimen", "an integer 0-99")
        if self.first_timepoint + self.timepoints > 100_000:
            fail("first_timepoint", "timepoint numbers below 100000 (TM#####)")

        # cameras and channels
        try:
            cams = tuple(int(c) for c in self.cameras)
        except (TypeError, ValueError):
            fail("cameras", "a sequence of camera numbers 0-3")
        if not cams or len(set(cams)) != len(cams) or any(c not in (0, 1, 2, 3) for c in cams):
            fail("cameras", "distinct camera numbers from 0-3, at least one")
        set_("cameras", tuple(sorted(cams)))
        sides = self.illumination_channels
        if sides is not None:
            try:
                sides = tuple(int(v) for v in sides)
                if any(float(v) != int(v) for v in self.illumination_channels) or len(sides) != 2:
                    raise ValueError
            except (TypeError, ValueError):
                fail("illumination_channels", "two channel numbers (lit from low x, lit from high x) or None")
            if sides[0] == sides[1] or any(v < 0 or v > 99 for v in sides):
                fail("illumination_channels", "two different channel numbers 0-99")
            set_("illumination_channels", sides)
        default_channels = {0: 0, 1: 0, 2: 1, 3: 1}
        if sides is not None:
            given = None if self.channel_of_camera is None else dict(self.channel_of_camera)
            chans = {c: sides[0] for c in self.cameras}
            if given is not None and {int(k): v for k, v in given.items()} != chans:
                fail("channel_of_camera", "left unset with illumination_channels (every camera records both "
                                          "channels)")
        elif self.channel_of_camera is None:
            chans = {c: default_channels[c] for c in self.cameras}
        else:
            try:
                chans = {int(k): int(v) for k, v in dict(self.channel_of_camera).items()}
            except (TypeError, ValueError, AttributeError):
                fail("channel_of_camera", "a mapping camera -> channel number")
            missing = [c for c in self.cameras if c not in chans]
            if missing or any(v < 0 or v > 99 for v in chans.values()):
                fail("channel_of_camera", f"a channel 0-99 for every camera {self.cameras}")
            chans = {c: chans[c] for c in self.cameras}
        set_("channel_of_camera", chans)

        # voxel size
        pixel = number("pixel_size_um", 0.0, lo_open=True, optional=True)
        mag = number("magnification", 0.0, lo_open=True, optional=True)
        if pixel is None and mag is None:
            mag = 16.0
        if pixel is None:
            pixel = CAMERA_PIXEL_UM / mag
        elif mag is None:
            mag = CAMERA_PIXEL_UM / pixel
        elif abs(pixel * mag - CAMERA_PIXEL_UM) > 1e-9 * CAMERA_PIXEL_UM:
            raise ValueError(
                f"SyntheticSpec.pixel_size_um: {pixel} does not match magnification {mag} "
                f"(pixel size = {CAMERA_PIXEL_UM} µm / magnification = {CAMERA_PIXEL_UM / mag})"
            )
        if mag > 1000:
            fail("magnification", "at most 1000")
        set_("pixel_size_um", float(pixel))
        set_("magnification", float(mag))
        if number("z_step_um", 0.0, lo_open=True, optional=True) is None:
            set_("z_step_um", float(pixel) * X / Z)

        # pair geometry
        limit = min(Y, X) / 4.0
        number("max_offset_px", 0.0, limit, lo_open=True)
        number("max_rotation_deg", 0.0, 10.0, lo_open=True)
        offsets = {}
        if self.offsets is not None:
            try:
                items = dict(self.offsets).items()
                for key, value in items:
                    dy, dx = (float(v) for v in value)
                    offsets[_pair_key(key)] = (dy, dx)
            except (TypeError, ValueError, AttributeError):
                fail("offsets", "a mapping {(0, 1): (dy, dx), (2, 3): (dy, dx)}")
            if any(not (math.isfinite(v) and abs(v) <= limit) for o in offsets.values() for v in o):
                fail("offsets", f"finite offsets within +-{limit:g} px (a quarter of the frame)")
        set_("offsets", offsets)
        rotations = {}
        if self.rotations_deg is not None:
            try:
                for key, value in dict(self.rotations_deg).items():
                    rotations[_pair_key(key)] = float(value)
            except (TypeError, ValueError, AttributeError):
                fail("rotations_deg", "a mapping {(0, 1): degrees, (2, 3): degrees}")
            if any(not (math.isfinite(v) and abs(v) <= 10.0) for v in rotations.values()):
                fail("rotations_deg", "finite angles within +-10 degrees")
        set_("rotations_deg", rotations)

        # photometry
        lo, hi = number_range("gain_range", 0.0)
        if hi > 100:
            fail("gain_range", "gains at most 100")
        gains = {}
        if self.gains is not None:
            try:
                gains = {int(k): float(v) for k, v in dict(self.gains).items()}
            except (TypeError, ValueError, AttributeError):
                fail("gains", "a mapping camera -> gain")
            if any(k not in (0, 1, 2, 3) or not (math.isfinite(v) and 0 < v <= 100) for k, v in gains.items()):
                fail("gains", "gains 0 < g <= 100 for cameras 0-3")
        set_("gains", gains)
        number("photon_scale", 0.0, 1e5, lo_open=True)
        number("body_level", 0.0, 10.0)
        number("texture_amplitude", 0.0, 0.9)
        number("nucleus_spacing_um", 0.0, lo_open=True)
        s_lo, s_hi = number_range("nucleus_sigma_um", 0.0)
        number("read_noise", 0.0, 1e4)
        number("dark_level", 0.0, 60000.0)
        number("dark_column_sigma", 0.0, 1000.0)
        number("dark_pixel_sigma", 0.0, 1000.0)
        number("attenuation_length_um", 0.0, lo_open=True, optional=True)
        number("psf_sigma_px", 0.0, 50.0)
        number("blur_growth_px", 0.0, 50.0)
        if self.n_dead is None:
            set_("n_dead", max(12, int(round(4e-4 * Y * X))))
        integer("n_dead", 0)
        capacity = ((Y - 4) // 3) * ((X - 4) // 3) // 8
        if self.n_dead > capacity:
            fail("n_dead", f"at most {capacity} isolated dead pixels for a {Y}x{X} frame")
        number("hot_fraction", 0.0, 1.0)

        # time
        number("drift_px_per_timepoint", 0.0, 10.0)
        number("drift_amplitude_px", 0.0, 10.0)
        number("drift_period_timepoints", 0.0, lo_open=True)
        number("rotation_drift_deg_per_timepoint", 0.0, 1.0)
        if self.outlier_timepoint is not None:
            integer("outlier_timepoint", 0)
            if self.outlier_timepoint >= self.timepoints:
                fail("outlier_timepoint", f"an index 0-{self.timepoints - 1} (0-based) or None")
        number("outlier_dim", 0.0, 1.0)
        number("outlier_noise", 0.0, 1e4)
        number("debris_level", 0.0, 30.0)
        number("illumination_attenuation_um", 0.0, lo_open=True, optional=True)
        number("illumination_blur_px", 0.0, 50.0)
        number("illumination_balance", 0.0, 10.0, lo_open=True)
        for name, limit in (("sheet_offset_planes", Z / 4.0), ("sheet_tilt_deg", 10.0)):
            value = getattr(self, name)
            try:
                if _is_number(value):
                    per_camera = {c: float(value) for c in range(4)}
                else:
                    given = {int(k): float(v) for k, v in dict(value).items()}
                    if any(k not in (0, 1, 2, 3) for k in given):
                        raise ValueError
                    per_camera = {c: given.get(c, 0.0) for c in range(4)}
            except (TypeError, ValueError, AttributeError):
                fail(name, "a number or a mapping camera (0-3) -> number")
            if any(not (math.isfinite(v) and abs(v) <= limit) for v in per_camera.values()):
                fail(name, f"finite values within +-{limit:g}")
            if sides is None and any(per_camera.values()):
                fail(name, "0 without illumination_channels (it misaligns channel b's light sheet)")
            set_(name, per_camera)

        # files
        if self.layout not in ("keller", "flat", "both"):
            fail("layout", "'keller', 'flat' or 'both'")
        if not isinstance(self.write_truth_volumes, (bool, np.bool_)):
            fail("write_truth_volumes", "True or False")
        set_("write_truth_volumes", bool(self.write_truth_volumes))
        number("wavelength_nm", 0.0, lo_open=True)
        number("exposure_time_ms", 0.0, lo_open=True)
        number("timepoint_interval_s", 0.0, lo_open=True)

        # the lattice must stay finite
        L = min(X * self.pixel_size_um, Z * self.z_step_um)
        semi = np.array([_BODY_FILL[0] * L, _BODY_FILL[1] * Y * self.pixel_size_um, _BODY_FILL[2] * L])
        n_est = 4.19 * np.prod(semi * _NUCLEUS_ZONE) / self.nucleus_spacing_um**3
        if n_est > 5e7:
            fail("nucleus_spacing_um", f"a spacing giving fewer than 5e7 nuclei (about {n_est:.3g})")
        if 3 * s_hi > semi.min():
            fail("nucleus_sigma_um", f"sigmas well below the body's smallest semi-axis ({semi.min():.3g} µm)")

    # ------------------------------------------------------------------ presets
    @classmethod
    def _preset(cls, base: dict, overrides: Mapping[str, Any]) -> "SyntheticSpec":
        _check_fields(overrides)
        return cls(**{**base, **overrides})

    @classmethod
    def tiny(cls, **overrides: Any) -> "SyntheticSpec":
        """16 planes of 64 x 64 per camera; generation well under a second (tests)."""
        return cls._preset(dict(shape=(16, 64, 64), nucleus_spacing_um=5.0), overrides)

    @classmethod
    def small(cls, **overrides: Any) -> "SyntheticSpec":
        """64 planes of 256 x 256 per camera (demo)."""
        return cls._preset(dict(shape=(64, 256, 256), nucleus_spacing_um=7.0), overrides)

    @classmethod
    def full_frame(cls, planes: int = 64, **overrides: Any) -> "SyntheticSpec":
        """Full 2048 x 2048 frames (benchmarks); no truth volumes unless asked for."""
        return cls._preset(dict(shape=(planes, 2048, 2048), nucleus_spacing_um=10.0, write_truth_volumes=False),
                           overrides)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        """Plain-JSON form with derived fields filled in (tuple keys become ``"a,b"`` strings)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            if f.name in ("offsets", "rotations_deg"):
                value = {f"{a},{b}": (list(v) if isinstance(v, tuple) else v) for (a, b), v in value.items()}
            elif f.name in ("channel_of_camera", "gains", "sheet_offset_planes", "sheet_tilt_deg"):
                value = {str(k): v for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SyntheticSpec":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        _check_fields(data)
        return cls(**dict(data))

    def replace(self, **overrides: Any) -> "SyntheticSpec":
        """A copy with some fields changed (validated again).

        Fields that were derived (left as None: ``z_step_um``, ``n_dead``,
        ``channel_of_camera``, ``pixel_size_um`` or ``magnification``) are
        derived again from the new values unless given. Prefer this to
        :func:`dataclasses.replace`, which would keep the old derived values.
        """
        _check_fields(overrides)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        values.update({name: None for name in self.derived})
        values.update(overrides)
        return type(self)(**values)

    @property
    def voxel_size_um(self) -> tuple[float, float, float]:
        """(plane spacing, row spacing, column spacing) in µm of every camera's raw frame."""
        return (float(self.z_step_um), float(self.pixel_size_um), float(self.pixel_size_um))

    @property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        """Opposing pairs with both cameras present."""
        return tuple(p for p in PAIRS if p[0] in self.cameras and p[1] in self.cameras)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(sorted({ch for c in self.cameras for ch in self.channels_of_camera(c)}))

    def channels_of_camera(self, camera: int) -> tuple[int, ...]:
        """Channels a camera records: ``illumination_channels``, or its one channel."""
        if self.illumination_channels is not None:
            return tuple(self.illumination_channels)
        return (self.channel_of_camera[camera],)

    def cameras_of_channel(self, channel: int) -> tuple[int, ...]:
        return tuple(c for c in self.cameras if channel in self.channels_of_camera(c))

    def illumination_side(self, channel: int | None) -> int | None:
        """0 for the channel lit from low x, 1 for high x, None without illumination sides.

        Raises ValueError for a channel that is not one of ``illumination_channels``.
        """
        if self.illumination_channels is None:
            return None
        if channel not in self.illumination_channels:
            raise ValueError(f"channel {channel!r}: this dataset's cameras record channels "
                             f"{list(self.illumination_channels)} (illumination sides); name one of them")
        return self.illumination_channels.index(channel)

    def _key(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


_DERIVED = ("channel_of_camera", "pixel_size_um", "magnification", "z_step_um", "n_dead")


def _check_fields(names: Iterable[str]) -> None:
    known = {f.name for f in dataclasses.fields(SyntheticSpec) if f.init}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"SyntheticSpec: unknown field(s) {', '.join(unknown)}")


# --------------------------------------------------------------------------------------------- helpers


def _rng(*keys: int) -> np.random.Generator:
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence([int(k) for k in keys])))


def _rotation(theta_deg: float) -> np.ndarray:
    t = math.radians(theta_deg)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def _union(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _clip_window(win, Y, X):
    if win is None:
        return None
    y0, y1, x0, x1 = max(0, win[0]), min(Y, win[1]), max(0, win[2]), min(X, win[3])
    return None if y0 >= y1 or x0 >= x1 else (y0, y1, x0, x1)


def _reference_affine(ref: int, shape, pixel: float, dz: float) -> np.ndarray:
    Z, Y, X = shape
    cz, cy, cx = (Z - 1) / 2, (Y - 1) / 2, (X - 1) / 2
    A = np.zeros((4, 4))
    A[3, 3] = 1.0
    plane_axis = 0 if ref == 0 else 2   # specimen axis along the plane index
    col_axis = 2 if ref == 0 else 0     # specimen axis along frame columns
    A[plane_axis, 0], A[plane_axis, 3] = dz, -cz * dz
    A[1, 1], A[1, 3] = pixel, -cy * pixel
    A[col_axis, 2], A[col_axis, 3] = pixel, -cx * pixel
    return A


def _moving_to_reference(Y: int, X: int, offset, theta_deg: float) -> np.ndarray:
    """4x4 map of raw indices (k, y, x, 1) of a moving camera to reference indices (k, qy, qx, 1)."""
    c = np.array([(Y - 1) / 2, (X - 1) / 2])
    t = np.asarray(offset, dtype=float)
    Rt = _rotation(theta_deg).T
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
    R = _rotation(rotation_deg)
    shift = c + np.asarray(offset, dtype=float) - R @ c
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    planes = arr.reshape(-1, Y, X)
    out = np.empty(planes.shape, dtype=dtype)
    for i, plane in enumerate(planes):
        ndimage.affine_transform(plane.astype(dtype, copy=False), R, offset=shift, order=order, mode=mode,
                                 cval=cval, output=out[i])
    return out.reshape(arr.shape)


# --------------------------------------------------------------------------------------------- model


class _Model:
    """Everything a spec resolves to; renders planes of any camera."""

    def __init__(self, spec: SyntheticSpec):
        self.spec = spec
        s = spec
        self.shape = Z, Y, X = s.shape
        self.Z, self.Y, self.X = Z, Y, X
        self.p = float(s.pixel_size_um)
        self.dz = float(s.z_step_um)
        L = min(X * self.p, Z * self.dz)
        self.semi = np.array([_BODY_FILL[0] * L, _BODY_FILL[1] * Y * self.p, _BODY_FILL[2] * L])
        self.edge_w = _EDGE_UM / float(self.semi.min())
        self.level = s.body_level * s.photon_scale
        self.T = s.timepoints

        # pair geometry (always drawn for both pairs so a subset of cameras changes nothing)
        cap = min(s.max_offset_px, min(Y, X) / 16.0)
        self.offset0: dict[tuple[int, int], np.ndarray] = {}
        self.rotation0: dict[tuple[int, int], float] = {}
        self.offsets: dict[tuple[int, int], np.ndarray] = {}
        self.rotations: dict[tuple[int, int], np.ndarray] = {}
        self.drift: dict[tuple[int, int], dict] = {}
        n = np.arange(self.T, dtype=float)
        for i, pair in enumerate(PAIRS):
            r = _rng(s.seed, _S_OFFSET, i)
            whole = np.floor(r.uniform(0, max(cap - 0.85, 0.0) + 1e-9, 2))
            drawn = (whole + r.uniform(0.15, 0.85, 2)) * r.choice([-1.0, 1.0], 2)
            drawn = np.clip(drawn, -cap, cap)
            self.offset0[pair] = np.array(s.offsets.get(pair, tuple(drawn)), dtype=float)
            r = _rng(s.seed, _S_ROTATION, i)
            lo = min(0.2, s.max_rotation_deg)
            drawn_rot = float(r.uniform(lo, s.max_rotation_deg) * r.choice([-1.0, 1.0]))
            self.rotation0[pair] = float(s.rotations_deg.get(pair, drawn_rot))
            r = _rng(s.seed, _S_DRIFT, i)
            a1, a2 = r.uniform(0, 2 * np.pi, 2)
            v = s.drift_px_per_timepoint * np.array([math.sin(a1), math.cos(a1)])
            amp = s.drift_amplitude_px * np.array([math.sin(a2), math.cos(a2)])
            phase = float(r.uniform(0, 2 * np.pi))
            omega = s.rotation_drift_deg_per_timepoint * float(r.choice([-1.0, 1.0]))
            wobble = np.sin(2 * np.pi * n / s.drift_period_timepoints + phase) - math.sin(phase)
            self.offsets[pair] = self.offset0[pair][None, :] + n[:, None] * v[None, :] + wobble[:, None] * amp[None, :]
            self.rotations[pair] = self.rotation0[pair] + omega * n
            self.drift[pair] = {"velocity_px": v.tolist(), "amplitude_px": amp.tolist(), "phase_rad": phase,
                                "period_timepoints": s.drift_period_timepoints, "omega_deg": omega}
        self.gains = {}
        for cam in range(4):
            drawn = float(_rng(s.seed, _S_GAIN, cam).uniform(*s.gain_range))
            self.gains[cam] = float(s.gains.get(cam, drawn))
        self.att_len = {}
        for cam in range(4):
            axis = _DETECTION_AXIS[cam]
            self.att_len[cam] = float(s.attenuation_length_um or 1.5 * self.semi[axis])
        self.ill_len = {}
        for cam in range(4):
            u = self._column_direction(cam)
            self.ill_len[cam] = float(s.illumination_attenuation_um or 1.0 / np.sqrt(np.sum((u / self.semi) ** 2)))
        self.blur_sigma = {}
        for cam in range(4):
            axis = _DETECTION_AXIS[cam]
            depth = _NEAR_SIGN[cam] * (np.arange(Z) - (Z - 1) / 2) * self.dz
            self.blur_sigma[cam] = s.psf_sigma_px + s.blur_growth_px * np.clip(depth / self.semi[axis], 0, _BLUR_CLIP)

        # specimen
        r = _rng(s.seed, _S_SPECIMEN)
        dirs = r.normal(size=(_TEXTURE_WAVES, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lam = r.uniform(*_TEXTURE_WAVELENGTH_UM, _TEXTURE_WAVES)
        self.wave_k = dirs * (2 * np.pi / lam)[:, None]
        self.wave_phase = r.uniform(0, 2 * np.pi, _TEXTURE_WAVES)
        spacing = s.nucleus_spacing_um
        zone = np.full(3, _NUCLEUS_ZONE * self.semi.max())   # a cube that still covers the body once rotated
        start = -zone - r.uniform(0, spacing, 3)
        axes = [np.arange(start[d], zone[d] + spacing, spacing) for d in range(3)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        grid = grid + r.uniform(-0.3 * spacing, 0.3 * spacing, grid.shape)
        q, rr = np.linalg.qr(r.normal(size=(3, 3)))      # random orientation of the lattice
        grid = grid @ (q * np.sign(np.diag(rr))).T
        sig = r.uniform(*s.nucleus_sigma_um, len(grid))
        amp = r.uniform(*_NUCLEUS_AMPLITUDE, len(grid)) * s.photon_scale
        keep = np.sum((grid / self.semi) ** 2, axis=1) < _NUCLEUS_ZONE**2
        self.nuc_centre = grid[keep]
        self.nuc_sigma = sig[keep]
        self.nuc_amp = amp[keep]

        self._dark: dict[int, np.ndarray] = {}
        self._dead: dict[int, dict] = {}
        self._nuc_cache: dict[tuple[int, int], tuple] = {}

    # ------------------------------------------------------------------ geometry
    def _column_direction(self, camera: int, t: int = 0) -> np.ndarray:
        """Unit specimen direction of increasing column index in a camera's raw frame."""
        ex = self.affine(camera, t)[:3, 2]
        return ex / np.linalg.norm(ex)

    def affine(self, camera: int, t: int) -> np.ndarray:
        a, b = _PAIR_OF[camera]
        A = _reference_affine(a, self.shape, self.p, self.dz)
        if camera == b:
            A = A @ _moving_to_reference(self.Y, self.X, self.offsets[(a, b)][t], float(self.rotations[(a, b)][t]))
        return A

    def sheet_shift(self, camera: int, side: int | None) -> tuple[float, float] | None:
        """(offset planes, planes per row) of channel b's sheet in ``camera``'s frame; None when aligned."""
        if side != 1:
            return None
        offset = self.spec.sheet_offset_planes[camera]
        slope = math.tan(math.radians(self.spec.sheet_tilt_deg[camera]))
        return None if offset == 0 and slope == 0 else (offset, slope)

    def is_outlier(self, camera: int, t: int) -> bool:
        return self.spec.outlier_timepoint == t and camera in (1, 3)

    def debris(self, camera: int) -> tuple[float, float, float, float]:
        """(y, x, sigma_px, photons) of the debris blob in a moving camera's raw frame."""
        r = _rng(self.spec.seed, _S_DEBRIS, camera)
        fy, fx = r.choice([_DEBRIS_CORNER, 1 - _DEBRIS_CORNER], 2)
        return ((self.Y - 1) * fy, (self.X - 1) * fx, _DEBRIS_SIGMA * min(self.Y, self.X),
                self.spec.debris_level * self.spec.photon_scale)

    # ------------------------------------------------------------------ camera artefacts
    def dark(self, camera: int) -> np.ndarray:
        if camera not in self._dark:
            s = self.spec
            r = _rng(s.seed, _S_DARK, camera)
            cols = r.standard_normal(self.X) * s.dark_column_sigma
            pix = r.standard_normal((self.Y, self.X)) * s.dark_pixel_sigma
            d = np.clip(np.rint(s.dark_level + cols[None, :] + pix), 0, 65535)
            self._dark[camera] = d.astype(np.float32)
        return self._dark[camera]

    def dead(self, camera: int) -> dict:
        if camera not in self._dead:
            s, Y, X = self.spec, self.Y, self.X
            n = s.n_dead
            r = _rng(s.seed, _S_DEAD, camera)
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
            dark = self.dark(camera)
            sy, sx = np.array(ys[n_hot:], int), np.array(xs[n_hot:], int)
            stuck = np.where(low, dark[sy, sx] + r.integers(-3, 4, n_stuck), r.integers(300, 1200, n_stuck))
            value[n_hot:] = np.clip(stuck, 0, 65535)
            self._dead[camera] = {"y": np.array(ys, int), "x": np.array(xs, int), "kind": kind,
                                  "value": value, "n_hot": n_hot}
        return self._dead[camera]

    # ------------------------------------------------------------------ specimen sampling
    def _nuclei(self, camera: int, t: int):
        key = (camera, t if camera in (1, 3) else 0)
        if key not in self._nuc_cache:
            if len(self._nuc_cache) > 8:
                self._nuc_cache.pop(next(iter(self._nuc_cache)))
            Ainv = np.linalg.inv(self.affine(camera, t))
            idx = Ainv[:3, :3] @ self.nuc_centre.T + Ainv[:3, 3:4]
            order = np.argsort(idx[0], kind="stable")
            self._nuc_cache[key] = (idx[0][order], idx[1][order], idx[2][order], self.nuc_sigma[order],
                                    self.nuc_amp[order])
        return self._nuc_cache[key]

    def _nuclei_in_plane(self, camera: int, t: int, k: int, shift: tuple[float, float] | None = None):
        kn, yn, xn, sig, amp = self._nuclei(camera, t)
        reach = NUCLEUS_TRUNCATE * self.spec.nucleus_sigma_um[1] / self.dz
        k_lo = k_hi = k
        if shift is not None:  # the sheet's depth varies with the row: k + offset + slope (y - yc)
            half = abs(shift[1]) * (self.Y - 1) / 2
            k_lo, k_hi = k + shift[0] - half, k + shift[0] + half
        lo, hi = np.searchsorted(kn, k_lo - reach, "left"), np.searchsorted(kn, k_hi + reach, "right")
        if lo >= hi:
            return None
        depth = k if shift is None else k + shift[0] + shift[1] * (yn[lo:hi] - (self.Y - 1) / 2)
        dd = (depth - kn[lo:hi]) * self.dz
        s = sig[lo:hi]
        rho2 = (NUCLEUS_TRUNCATE * s) ** 2 - dd**2
        keep = rho2 > 0
        if not keep.any():
            return None
        s = s[keep]
        return {
            "y": yn[lo:hi][keep], "x": xn[lo:hi][keep],
            "amp": amp[lo:hi][keep] * np.exp(-dd[keep] ** 2 / (2 * s**2)),
            "s_px": s / self.p, "rho_px": np.sqrt(rho2[keep]) / self.p,
        }

    def _body_window(self, o, ey, ex):
        """Bounding box (y0, y1, x0, x1) of the plane's section through r <= 1 + w, or None."""
        rho2 = (1 + self.edge_w) ** 2
        J = np.stack([ey / self.semi, ex / self.semi], axis=1)
        oo = o / self.semi
        M = J.T @ J
        u0 = -np.linalg.solve(M, J.T @ oo)
        m0 = float(np.sum((oo + J @ u0) ** 2))
        if m0 >= rho2:
            return None
        half = np.sqrt((rho2 - m0) * np.diag(np.linalg.inv(M)))
        return (int(math.floor(u0[0] - half[0])) - 1, int(math.ceil(u0[0] + half[0])) + 2,
                int(math.floor(u0[1] - half[1])) - 1, int(math.ceil(u0[1] + half[1])) + 2)

    def render_plane(self, camera: int, t: int, k: int, kinds: Iterable[str],
                     side: int | None = None) -> dict[str, np.ndarray]:
        """Render one plane; ``side`` 0/1 is the illumination side (channel a/b), None without sides."""
        kinds = set(kinds)
        s, Y, X = self.spec, self.Y, self.X
        A = self.affine(camera, t)
        o, ey, ex, ez = A[:3, 0] * k + A[:3, 3], A[:3, 1], A[:3, 2], A[:3, 0]
        shift = self.sheet_shift(camera, side)
        nuc = self._nuclei_in_plane(camera, t, k, shift)
        if shift is None:
            win = self._body_window(o, ey, ex)
        else:  # a tilted sheet: the union of the sections at depths spanning its rows
            half = abs(shift[1]) * (Y - 1) / 2
            win = None
            for depth in np.linspace(shift[0] - half, shift[0] + half, 9):
                win = _union(win, self._body_window(o + ez * depth, ey, ex))
            if win is not None:
                win = (win[0] - 2, win[1] + 2, win[2] - 2, win[3] + 2)
        if nuc is not None:
            ny, nx, rho = nuc["y"], nuc["x"], nuc["rho_px"]
            nwin = (int(np.floor((ny - rho).min())) - 1, int(np.ceil((ny + rho).max())) + 2,
                    int(np.floor((nx - rho).min())) - 1, int(np.ceil((nx + rho).max())) + 2)
            win = _union(win, nwin)
        sigma = float(self.blur_sigma[camera][k])
        pad = int(math.ceil(4.0 * sigma)) + 1 if sigma > 0.01 else 0
        if side is not None:
            pad = int(math.ceil(4.0 * math.hypot(sigma, s.illumination_blur_px))) + 1
        if win is not None:
            win = (win[0] - pad, win[1] + pad, win[2] - pad, win[3] + pad)
        win = _clip_window(win, Y, X)

        out: dict[str, np.ndarray] = {}
        E = np.zeros((Y, X), np.float32)
        clean_full = np.zeros((Y, X), np.float32) if "clean" in kinds else None
        mask_full = np.zeros((Y, X), bool) if "body_mask" in kinds else None
        if win is not None:
            y0, y1, x0, x1 = win
            yy = np.arange(y0, y1, dtype=float)
            xx = np.arange(x0, x1, dtype=float)
            # planes moved per row by channel b's sheet misalignment (zero for an aligned sheet)
            rows_depth = np.zeros_like(yy) if shift is None else shift[0] + shift[1] * (yy - (Y - 1) / 2)
            coords = [((o[d] + ey[d] * yy + ez[d] * rows_depth)[:, None] + (ex[d] * xx)[None, :]).astype(np.float32)
                      for d in range(3)]
            r2 = np.zeros((y1 - y0, x1 - x0), np.float32)
            for d in range(3):
                r2 += (coords[d] / np.float32(self.semi[d])) ** 2
            # body: smooth edge x texture
            u = np.clip((np.sqrt(r2) - 1) / np.float32(self.edge_w), -1, 1)
            clean = (np.float32(0.5 * self.level) * (1 - np.sin(np.float32(np.pi / 2) * u))).astype(np.float32)
            if s.texture_amplitude > 0:
                tex = np.zeros_like(clean)
                for kv, ph in zip(self.wave_k, self.wave_phase):
                    py = (kv @ o + ph + (kv @ ey) * yy + (kv @ ez) * rows_depth).astype(np.float32)
                    px = ((kv @ ex) * xx).astype(np.float32)
                    tex += np.cos(py[:, None] + px[None, :])
                clean *= 1 + np.float32(s.texture_amplitude / len(self.wave_k)) * tex
            if nuc is not None:
                clean += _scatter_gaussians(y0, x0, y1 - y0, x1 - x0, nuc)
            if mask_full is not None:
                mask_full[y0:y1, x0:x1] = r2 <= 1
            if clean_full is not None:
                clean_full[y0:y1, x0:x1] = clean
            # attenuation along the detection axis from the entry surface on the camera's side
            axis, sign = _DETECTION_AXIS[camera], _NEAR_SIGN[camera]
            h2 = np.ones_like(r2)
            for d in range(3):
                if d != axis:
                    h2 -= (coords[d] / np.float32(self.semi[d])) ** 2
            half_chord = np.float32(self.semi[axis]) * np.sqrt(np.maximum(h2, 0))
            depth = np.clip(sign * coords[axis] + half_chord, 0, 2 * half_chord)
            emitted = clean * np.exp(-depth / np.float32(self.att_len[camera]))
            if side is not None:
                emitted = self._illuminated(emitted, coords, r2, camera, t, side, sigma)
            elif sigma > 0.01:
                emitted = ndimage.gaussian_filter(emitted, sigma, mode="constant", truncate=4.0)
            E[y0:y1, x0:x1] = emitted
        active = win
        outlier = self.is_outlier(camera, t)
        if outlier:
            E *= np.float32(s.outlier_dim)
            dy_, dx_, ds, dphot = self.debris(camera)
            h = int(math.ceil(4 * ds))
            dwin = _clip_window((int(dy_) - h, int(dy_) + h + 2, int(dx_) - h, int(dx_) + h + 2), Y, X)
            if dwin is not None and dphot > 0:
                a0, a1, b0, b1 = dwin
                gy = np.exp(-((np.arange(a0, a1) - dy_) ** 2) / (2 * ds**2))
                gx = np.exp(-((np.arange(b0, b1) - dx_) ** 2) / (2 * ds**2))
                E[a0:a1, b0:b1] += (dphot * gy[:, None] * gx[None, :]).astype(np.float32)
                active = _union(active, dwin)
        gain = self.gains[camera]
        if "ideal" in kinds:
            out["ideal"] = E * np.float32(gain)
        if clean_full is not None:
            out["clean"] = clean_full
        if mask_full is not None:
            out["body_mask"] = mask_full
        if "raw" in kinds:
            out["raw"] = self._noisy(camera, t, k, E, active, outlier, side)
        return out

    def _illuminated(self, emitted, coords, r2, camera: int, t: int, side: int, sigma: float) -> np.ndarray:
        """One illumination side's image of a window: attenuation along the light and a growing blur.

        ``emitted`` is the detection-attenuated signal on the window, ``coords`` its specimen
        coordinates (µm) and ``r2`` the squared ellipsoidal radius (see the module docstring, 2' and 3').
        """
        s = self.spec
        travel = self._column_direction(camera, t) * (1.0 if side == 0 else -1.0)
        scaled = travel / self.semi
        a = float(np.sum(scaled**2))
        b = sum(coords[d] * np.float32(scaled[d] / self.semi[d]) for d in range(3))
        disc = np.maximum(b * b - np.float32(a) * (r2 - 1), 0)
        root = np.sqrt(disc)
        entry = (-b - root) / np.float32(a)          # position of the entry surface along the light, µm
        chord = 2 * root / np.float32(a)
        depth = np.where(disc > 0, np.clip(-entry, 0, chord), 0).astype(np.float32)
        lit = emitted * np.exp(-depth / np.float32(self.ill_len[camera]))
        if side == 1:
            lit = lit * np.float32(s.illumination_balance)
        along = sum(coords[d] * np.float32(travel[d]) for d in range(3)) * np.float32(math.sqrt(a))
        far = np.clip(along, 0, 1).astype(np.float32)
        sharp = ndimage.gaussian_filter(lit, sigma, mode="constant", truncate=4.0) if sigma > 0.01 else lit
        wide = math.hypot(sigma, s.illumination_blur_px)
        blurred = ndimage.gaussian_filter(lit, wide, mode="constant", truncate=4.0) if wide > 0.01 else lit
        return ((1 - far) * sharp + far * blurred).astype(np.float32)

    def _noisy(self, camera: int, t: int, k: int, E: np.ndarray, active, outlier: bool,
               side: int | None = None) -> np.ndarray:
        s, Y, X = self.spec, self.Y, self.X
        tm = s.first_timepoint + t
        r = _rng(s.seed, _S_NOISE, tm, camera, k) if side is None else _rng(s.seed, _S_NOISE, tm, camera, k, 1 + side)
        gain = np.float32(self.gains[camera])
        photons = None
        if active is not None:
            y0, y1, x0, x1 = active
            photons = r.poisson(E[y0:y1, x0:x1].astype(np.float64)).astype(np.float32)
        raw = r.standard_normal((Y, X), dtype=np.float32)
        raw *= np.float32(s.read_noise)
        raw += self.dark(camera)
        if photons is not None:
            raw[y0:y1, x0:x1] += gain * photons
        if outlier and s.outlier_noise > 0:
            raw += np.float32(s.outlier_noise) * r.standard_normal((Y, X), dtype=np.float32)
        dead = self.dead(camera)
        n_hot = dead["n_hot"]
        if n_hot:
            level = dead["value"][:n_hot]
            raw[dead["y"][:n_hot], dead["x"][:n_hot]] = level * (1 + HOT_PIXEL_NOISE * r.standard_normal(n_hot))
        np.rint(raw, out=raw)
        np.clip(raw, 0, 65535, out=raw)
        raw16 = raw.astype(np.uint16)
        raw16[dead["y"][n_hot:], dead["x"][n_hot:]] = dead["value"][n_hot:].astype(np.uint16)
        return raw16

    def render_slab(self, camera: int, t: int, k0: int, k1: int, kinds: Sequence[str],
                    side: int | None = None) -> dict[str, np.ndarray]:
        dtypes = {"raw": np.uint16, "ideal": np.float32, "clean": np.float32, "body_mask": bool}
        out = {kind: np.empty((k1 - k0, self.Y, self.X), dtypes[kind]) for kind in kinds}
        for i, k in enumerate(range(k0, k1)):
            plane = self.render_plane(camera, t, k, kinds, side)
            for kind in kinds:
                out[kind][i] = plane[kind]
        return out


def _scatter_gaussians(y0: int, x0: int, h: int, w: int, nuc: dict) -> np.ndarray:
    """Sum of truncated 2D Gaussians (disc of radius rho_px) on the window [y0, y0+h) x [x0, x0+w)."""
    acc = np.zeros(h * w)
    order = np.argsort(nuc["rho_px"], kind="stable")
    batch = 1024
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        yn, xn, s, amp, rho = nuc["y"][idx], nuc["x"][idx], nuc["s_px"][idx], nuc["amp"][idx], nuc["rho_px"][idx]
        H = int(math.ceil(rho.max()))
        offs = np.arange(-H, H + 1)
        rows = np.rint(yn).astype(np.int64)[:, None] + offs
        cols = np.rint(xn).astype(np.int64)[:, None] + offs
        dy2 = (rows - yn[:, None]) ** 2
        dx2 = (cols - xn[:, None]) ** 2
        inv = 1.0 / (2 * s**2)
        gy = np.exp(-dy2 * inv[:, None]) * ((rows >= y0) & (rows < y0 + h))
        gx = np.exp(-dx2 * inv[:, None]) * ((cols >= x0) & (cols < x0 + w))
        weight = amp[:, None, None] * gy[:, :, None] * gx[:, None, :]
        weight *= (dy2[:, :, None] + dx2[:, None, :]) <= (rho**2)[:, None, None]
        flat = (np.clip(rows - y0, 0, h - 1) * w)[:, :, None] + np.clip(cols - x0, 0, w - 1)[:, None, :]
        acc += np.bincount(flat.ravel(), weight.ravel(), minlength=h * w)
    return acc.reshape(h, w).astype(np.float32)


_MODELS: dict[str, _Model] = {}


def _model_for(spec: SyntheticSpec) -> _Model:
    key = spec._key()
    model = _MODELS.get(key)
    if model is None:
        if len(_MODELS) >= 4:
            _MODELS.pop(next(iter(_MODELS)))
        model = _MODELS[key] = _Model(spec)
    return model


# --------------------------------------------------------------------------------------------- lazy volumes


def camera_affine(spec: SyntheticSpec, camera: int, timepoint: int = 0) -> np.ndarray:
    """4x4 matrix M with ``(z, y, x, 1)_um = M @ (k, y, x, 1)`` for a camera's raw voxel (k, y, x)."""
    _check_camera(spec, camera, any_camera=True)
    _check_timepoint(spec, timepoint)
    return _model_for(spec).affine(camera, timepoint)


def _check_camera(spec: SyntheticSpec, camera: int, any_camera: bool = False) -> None:
    allowed = (0, 1, 2, 3) if any_camera else spec.cameras
    if camera not in allowed:
        raise ValueError(f"camera {camera!r} is not one of {tuple(allowed)}")


def _check_timepoint(spec: SyntheticSpec, t: int) -> None:
    if not (isinstance(t, (int, np.integer)) and 0 <= t < spec.timepoints):
        raise ValueError(f"timepoint {t!r}: expected a 0-based index below {spec.timepoints}")


def _render_block(spec: SyntheticSpec, camera: int, t: int, kind: str, side=None, block_info=None):
    k0, k1 = block_info[None]["array-location"][0]
    return _model_for(spec).render_slab(camera, t, k0, k1, (kind,), side)[kind]


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
    _check_camera(spec, camera, any_camera=True)
    _check_timepoint(spec, timepoint)
    dtypes = {"raw": np.uint16, "ideal": np.float32, "clean": np.float32, "body_mask": np.bool_}
    if kind not in dtypes:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(dtypes)}")
    side = _side_for(spec, channel, kind)
    Z, Y, X = spec.shape
    chunks = (_slabs(Z, slab_planes), (Y,), (X,))
    suffix = "" if side is None else f"-side{side}"
    return da.map_blocks(_render_block, spec, camera, timepoint, kind, side, chunks=chunks, dtype=dtypes[kind],
                         meta=np.empty((0, 0, 0), dtypes[kind]),
                         name=f"synthetic-{kind}-cm{camera}-t{timepoint}{suffix}-" + _short_hash(spec._key()))


def _side_for(spec: SyntheticSpec, channel: int | None, kind: str) -> int | None:
    """Illumination side of ``channel`` for a kind that depends on it (None when it does not)."""
    if spec.illumination_channels is None or kind in ("clean", "body_mask"):
        return None
    if channel is None:
        raise ValueError(f"this dataset's cameras record channels {list(spec.illumination_channels)} "
                         f"(illumination sides): give channel= for kind {kind!r}")
    return spec.illumination_side(channel)


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _slabs(Z: int, slab_planes: int) -> tuple[int, ...]:
    if not isinstance(slab_planes, (int, np.integer)) or slab_planes < 1:
        raise ValueError(f"slab_planes: expected a positive integer, got {slab_planes!r}")
    n = min(int(slab_planes), Z)
    return tuple([n] * (Z // n) + ([Z % n] if Z % n else []))


# --------------------------------------------------------------------------------------------- writing


def _stack_name(spec: SyntheticSpec, tm: int, camera: int, channel: int | None = None) -> str:
    ch = spec.channel_of_camera[camera] if channel is None else channel
    return f"SPC{spec.specimen:02d}_TM{tm:05d}_ANG000_CM{camera}_CHN{ch:02d}_PH0.stack"


def _keller_dir(spec: SyntheticSpec) -> str:
    return f"SPM{spec.specimen:02d}"


def _timestamp(spec: SyntheticSpec, t: int) -> str:
    when = _dt.datetime(2024, 1, 1, 9, 0, 0) + _dt.timedelta(seconds=t * spec.timepoint_interval_s)
    hour = when.hour % 12 or 12
    return (f"{hour}:{when.minute:02d}:{when.second:02d}.{when.microsecond // 1000:03d} "
            f"{'AM' if when.hour < 12 else 'PM'} {when.month}/{when.day}/{when.year}")


def _xml_attributes(spec: SyntheticSpec, channel: int, t: int) -> dict[str, str]:
    Z, Y, X = spec.shape
    cams = spec.cameras_of_channel(channel)
    tm = spec.first_timepoint + t
    objective = f"Nikon {spec.magnification:.12g}x/0.8 W"
    return {
        "data_header": "isoview_dask_synthetic",
        "specimen_name": f"synthetic_seed{spec.seed}",
        "timestamp": _timestamp(spec, t),
        "time_point": str(tm),
        "specimen_XYZT": f"X=0.000_Y=0.000_Z=0.000_T={t * spec.timepoint_interval_s:.1f}",
        "angle": "0.0",
        "camera_index": ",".join(str(c) for c in cams),
        "camera_type": ",".join("C11440-22C" for _ in cams),
        "wavelength": f"{spec.wavelength_nm:g}",
        "exposure_time": f"{spec.exposure_time_ms:g}",
        "detection_objective": ",".join(objective for _ in cams),
        "dimensions": ",".join(f"{X}x{Y}x{Z}" for _ in cams),
        "z_step": repr(float(spec.z_step_um)),
        "stack_direction": "+z",
        "planes": f"1-{Z}",
    }


def _resolve_spec(spec: SyntheticSpec | None, preset: str | None, overrides: dict) -> SyntheticSpec:
    if spec is not None and preset is not None:
        raise ValueError("give either spec or preset, not both")
    if spec is not None:
        if not isinstance(spec, SyntheticSpec):
            raise TypeError(f"spec: expected a SyntheticSpec, got {type(spec).__name__}")
        return spec.replace(**overrides) if overrides else spec
    preset = preset or "default"
    overrides = dict(overrides)
    if preset == "tiny":
        return SyntheticSpec.tiny(**overrides)
    if preset == "small":
        return SyntheticSpec.small(**overrides)
    if preset in ("full", "full_frame"):
        return SyntheticSpec.full_frame(**overrides)
    if preset == "default":
        _check_fields(overrides)
        return SyntheticSpec(**overrides)
    raise ValueError(f"preset {preset!r}: expected 'tiny', 'small' or 'full'")


def _zarr_chunk_planes(slab_planes: int, Y: int, X: int) -> int:
    for c in range(slab_planes, 0, -1):
        if slab_planes % c == 0 and c * Y * X * 4 <= 16 * 2**20:
            return c
    return 1


def _write_slab(spec_dict: dict, camera: int, t: int, k0: int, k1: int, stack_paths: list[str],
                volume_paths: dict[str, str], side: int | None = None) -> tuple[int, int, int]:
    """Render planes [k0, k1) of one camera (one illumination side) and write them (runs in a dask task)."""
    import zarr

    spec = SyntheticSpec.from_dict(spec_dict)
    model = _model_for(spec)
    kinds = ["raw", *volume_paths]
    slab = model.render_slab(camera, t, k0, k1, kinds, side)
    for path in stack_paths:
        mm = np.memmap(path, dtype="<u2", mode="r+", shape=spec.shape)
        mm[k0:k1] = slab["raw"]
        mm.flush()
        del mm
    for kind, path in volume_paths.items():
        arr = zarr.open_array(path, mode="r+")
        arr[k0:k1] = slab[kind]
    return camera, t, k0


def _default_scheduler(spec: SyntheticSpec) -> str | None:
    import dask

    if dask.config.get("scheduler", None) is not None:   # e.g. a distributed Client set as default
        return None
    voxels = int(np.prod(spec.shape)) * len(spec.cameras) * spec.timepoints
    return "processes" if voxels >= 64_000_000 and _cpu_count() > 1 else "sync"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def generate_dataset(out: str | os.PathLike, spec: SyntheticSpec | None = None, overwrite: bool = False, *,
                     preset: str | None = None, slab_planes: int = 8, scheduler: str | None = None,
                     num_workers: int | None = None, **overrides: Any) -> "SyntheticTruth":
    """Write a synthetic IsoView recording and its ground truth under ``out``.

    Parameters
    ----------
    out : path
        Output folder (created atomically: nothing appears under this name
        until everything is written).
    spec : SyntheticSpec, optional
        What to generate; default ``SyntheticSpec()`` or the ``preset``.
    overwrite : bool
        Replace an existing ``out``; otherwise :class:`OutputExistsError`.
    preset : 'tiny', 'small' or 'full', optional
        Start from :meth:`SyntheticSpec.tiny`, ``small`` or ``full_frame``
        (``planes=`` passes through for 'full').
    slab_planes : int
        Planes per task; changes memory use and parallelism, never the bytes.
    scheduler : str, optional
        Dask scheduler. Default: the active default (e.g. a distributed
        client) if one is set, else 'processes' for large datasets (the
        rendering holds the GIL, so threads do not help; call from an
        ``if __name__ == "__main__":`` block) and 'sync' for small ones.
    num_workers : int, optional
        Workers for the 'processes'/'threads' schedulers.
    **overrides
        Any :class:`SyntheticSpec` field, e.g. ``shape=(32, 128, 128)``,
        ``timepoints=3``, ``layout='both'``.

    Returns
    -------
    SyntheticTruth
        The ground truth, as :func:`load_truth` would read it.

    Memory is bounded by a few slabs per worker: each task renders one slab
    plane by plane and writes it straight into the ``.stack`` files (numpy
    memmaps) and the truth zarr arrays.
    """
    import dask
    import tifffile
    import zarr

    planes = overrides.pop("planes", None)
    if planes is not None:
        if preset not in ("full", "full_frame"):
            raise ValueError("planes= only applies to preset='full'")
        overrides["planes"] = planes
    spec = _resolve_spec(spec, preset, overrides)
    slabs = _slabs(spec.shape[0], slab_planes)
    out = Path(out)
    Z, Y, X = spec.shape
    model = _model_for(spec)
    started = time.perf_counter()
    log.info("synthetic dataset %s: %d camera(s) x %d timepoint(s) of %s, layout %s", out, len(spec.cameras),
             spec.timepoints, "x".join(map(str, spec.shape)), spec.layout)

    with atomic_output(out, overwrite) as tmp:
        tmp.mkdir(parents=True)
        spm = _keller_dir(spec)
        keller = tmp / "raw" / spm if spec.layout in ("keller", "both") else None
        flat = tmp / "raw_flat" if spec.layout in ("flat", "both") else None
        truth_dir = tmp / "truth"
        truth_dir.mkdir()
        group_path = truth_dir / "volumes.zarr"
        group = zarr.open_group(str(group_path), mode="w")
        dark_group = group.create_group("dark")
        for cam in spec.cameras:
            dark = model.dark(cam)
            arr = dark_group.create_array(f"CM{cam}", shape=(Y, X), chunks=(Y, X), dtype="float32")
            arr[...] = dark
            for folder in (keller, flat):
                if folder is not None:
                    folder.mkdir(parents=True, exist_ok=True)
                    tifffile.imwrite(folder / f"Background_{cam}.tif", dark.astype(np.uint16))
        # metadata
        for t in range(spec.timepoints):
            tm = spec.first_timepoint + t
            for ch in spec.channels:
                attrs = _xml_attributes(spec, ch, t)
                if keller is not None:
                    write_push_config(keller / f"TM{tm:05d}" / f"ch{ch}.xml", attrs)
                if flat is not None and t == 0:
                    write_push_config(flat / f"ch{ch}_spec{spec.specimen:02d}.xml", attrs)
        # empty (sparse) stack files and truth arrays, then one task per slab
        zplanes = _zarr_chunk_planes(slabs[0], Y, X)
        nbytes = 2 * Z * Y * X
        tasks = {}
        for t in range(spec.timepoints):
            tm = spec.first_timepoint + t
            tasks[t] = []
            for cam, channel in ((c, ch) for c in spec.cameras for ch in spec.channels_of_camera(c)):
                side = spec.illumination_side(channel)
                paths = []
                if keller is not None:
                    paths.append(keller / f"TM{tm:05d}" / "ANG000" / _stack_name(spec, tm, cam, channel))
                if flat is not None:
                    paths.append(flat / _stack_name(spec, tm, cam, channel))
                for path in paths:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "wb") as fh:
                        fh.truncate(nbytes)
                volumes = {}
                if spec.write_truth_volumes:
                    cam_group = group.require_group(f"TM{tm:05d}").require_group(f"CM{cam}")
                    for kind, dtype in (("ideal", "float32"), ("clean", "float32"), ("body_mask", "bool")):
                        if side == 1 and kind != "ideal":
                            continue  # each side has its own ideal; clean and mask are written once (side 0)
                        key = _truth_key(kind, side, channel)
                        parent = cam_group.require_group(key.rpartition("/")[0]) if "/" in key else cam_group
                        parent.create_array(key.rpartition("/")[2], shape=(Z, Y, X), chunks=(zplanes, Y, X),
                                            dtype=dtype)
                        volumes[kind] = str(group_path / f"TM{tm:05d}" / f"CM{cam}" / key)
                suffix = "" if side is None else f"-ch{channel}"
                k0 = 0
                for n in slabs:
                    tasks[t].append(dask.delayed(_write_slab, pure=False)(
                        spec.to_dict(), cam, t, k0, k0 + n, [str(p) for p in paths], volumes, side,
                        dask_key_name=f"synthetic-slab-{tm}-{cam}{suffix}-{k0}-"
                                      f"{_short_hash(spec._key() + str(out))}"))
                    k0 += n
        sched = scheduler if scheduler is not None else _default_scheduler(spec)
        compute_kw: dict[str, Any] = {}
        pool = None
        if sched is not None:
            compute_kw["scheduler"] = sched
        if sched == "processes":
            # one pool for all timepoints (spawned: the parent already runs zarr's I/O thread)
            import concurrent.futures
            import multiprocessing

            pool = concurrent.futures.ProcessPoolExecutor(max_workers=num_workers or _cpu_count(),
                                                          mp_context=multiprocessing.get_context("spawn"))
            compute_kw["pool"] = pool
        elif num_workers is not None and sched == "threads":
            compute_kw["num_workers"] = num_workers
        try:
            for t in range(spec.timepoints):
                t0 = time.perf_counter()
                dask.compute(*tasks[t], **compute_kw)
                log.info("timepoint %d/%d rendered (%d camera(s), %.1f s, scheduler %s)", t + 1, spec.timepoints,
                         len(spec.cameras), time.perf_counter() - t0, sched or "default")
        finally:
            if pool is not None:
                pool.shutdown()
        truth = _truth_dict(spec, model, keller is not None, flat is not None)
        with open(truth_dir / "truth.json", "w", encoding="utf-8") as fh:
            json.dump(truth, fh, indent=1)
            fh.write("\n")
    log.info("synthetic dataset written to %s in %.1f s", out, time.perf_counter() - started)
    return load_truth(out)


def _truth_key(kind: str, side: int | None, channel: int | None) -> str:
    """Name of a truth array in a camera's group: ``ideal`` is per channel with illumination sides."""
    return f"CHN{channel:02d}/{kind}" if side is not None and kind == "ideal" else kind


def _truth_dict(spec: SyntheticSpec, model: _Model, keller: bool, flat: bool) -> dict:
    pairs = []
    for a, b in PAIRS:
        pairs.append({
            "cameras": [a, b], "reference": a, "moving": b,
            "present": a in spec.cameras and b in spec.cameras,
            "offset_px": model.offsets[(a, b)].tolist(),
            "rotation_deg": model.rotations[(a, b)].tolist(),
            "gain_ratio": model.gains[b] / model.gains[a],
            "drift": model.drift[(a, b)],
        })
    cameras = {}
    for cam in spec.cameras:
        dark = model.dark(cam)
        dead = model.dead(cam)
        cameras[str(cam)] = {
            "channel": spec.channel_of_camera[cam],
            "channels": list(spec.channels_of_camera(cam)),
            "gain": model.gains[cam],
            "role": "reference" if cam in (0, 2) else "moving",
            "detection_axis": "zyx"[_DETECTION_AXIS[cam]],
            "near_side": "low plane index" if _NEAR_SIGN[cam] > 0 else "high plane index",
            "attenuation_length_um": model.att_len[cam],
            "illumination_attenuation_length_um": model.ill_len[cam] if spec.illumination_channels else None,
            "blur_sigma_px": model.blur_sigma[cam].tolist(),
            "dark": {"mean": float(dark.mean()), "std": float(dark.std()), "min": float(dark.min()),
                     "max": float(dark.max()), "column_std": float(dark.mean(axis=0).std())},
            "dead_pixels": [{"y": int(y), "x": int(x), "kind": str(k), "value": float(v)}
                            for y, x, k, v in zip(dead["y"], dead["x"], dead["kind"], dead["value"])],
            "camera_to_specimen": [model.affine(cam, t).tolist() for t in range(spec.timepoints)],
        }
        if cam in (1, 3) and spec.outlier_timepoint is not None:
            dy_, dx_, ds, dphot = model.debris(cam)
            cameras[str(cam)]["debris"] = {"y": dy_, "x": dx_, "sigma_px": ds, "photons": dphot}
    return {
        "format": "isoview-dask synthetic truth",
        "version": TRUTH_VERSION,
        "conventions": CONVENTIONS,
        "spec": spec.to_dict(),
        "shape_zyx": list(spec.shape),
        "timepoints": spec.timepoints,
        "timepoint_numbers": [spec.first_timepoint + t for t in range(spec.timepoints)],
        "voxel_size_um": list(spec.voxel_size_um),
        "z_to_xy_ratio": spec.z_step_um / spec.pixel_size_um,
        "magnification": spec.magnification,
        "cameras": cameras,
        "pairs": pairs,
        "dark_level": spec.dark_level,
        "read_noise": spec.read_noise,
        "body": {"centre_um": [0.0, 0.0, 0.0], "semi_axes_um": model.semi.tolist(),
                 "edge_halfwidth_radius": model.edge_w, "level_photons": model.level,
                 "n_nuclei": int(len(model.nuc_centre))},
        "illumination": None if spec.illumination_channels is None else {
            "channels": list(spec.illumination_channels),
            "low_x_channel": spec.illumination_channels[0], "high_x_channel": spec.illumination_channels[1],
            "sharp_side": {str(spec.illumination_channels[0]): "low x", str(spec.illumination_channels[1]): "high x"},
            "extra_blur_px": spec.illumination_blur_px, "balance_b_over_a": spec.illumination_balance,
            "sheet_misalignment": {str(c): {"offset_z_planes": spec.sheet_offset_planes[c],
                                            "rotation_deg": spec.sheet_tilt_deg[c]} for c in spec.cameras}},
        "outlier": {"timepoint": spec.outlier_timepoint, "cameras": [c for c in (1, 3) if c in spec.cameras],
                    "dim": spec.outlier_dim, "extra_noise": spec.outlier_noise},
        "files": {"raw_dir": "raw" if keller else None, "flat_dir": "raw_flat" if flat else None,
                  "volumes": "truth/volumes.zarr", "truth_volumes_written": spec.write_truth_volumes},
    }


# --------------------------------------------------------------------------------------------- reading truth


@dataclass
class SyntheticTruth:
    """Ground truth of a generated dataset (see :func:`load_truth`).

    Timepoint arguments are 0-based indices into the dataset; cameras are
    camera numbers; pairs are ``(reference, moving)`` tuples such as (0, 1).
    """

    root: Path
    data: dict = field(repr=False)

    # ------------------------------------------------------------ basics
    @property
    def spec(self) -> SyntheticSpec:
        return SyntheticSpec.from_dict(self.data["spec"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data["shape_zyx"])  # type: ignore[return-value]

    @property
    def timepoints(self) -> int:
        return int(self.data["timepoints"])

    @property
    def cameras(self) -> tuple[int, ...]:
        return tuple(sorted(int(c) for c in self.data["cameras"]))

    @property
    def voxel_size_um(self) -> tuple[float, float, float]:
        """(z_step, pixel, pixel) in µm of every camera's raw frame."""
        return tuple(self.data["voxel_size_um"])  # type: ignore[return-value]

    @property
    def raw_dir(self) -> Path | None:
        """Keller-layout root (holding ``SPM00``), or None."""
        d = self.data["files"]["raw_dir"]
        return None if d is None else self.root / d

    @property
    def flat_dir(self) -> Path | None:
        d = self.data["files"]["flat_dir"]
        return None if d is None else self.root / d

    @property
    def outlier_timepoint(self) -> int | None:
        return self.data["outlier"]["timepoint"]

    @property
    def body_semi_axes_um(self) -> tuple[float, float, float]:
        return tuple(self.data["body"]["semi_axes_um"])  # type: ignore[return-value]

    @property
    def body_centre_um(self) -> tuple[float, float, float]:
        return tuple(self.data["body"]["centre_um"])  # type: ignore[return-value]

    @property
    def conventions(self) -> dict[str, str]:
        return dict(self.data["conventions"])

    def _camera(self, camera: int) -> dict:
        try:
            return self.data["cameras"][str(int(camera))]
        except KeyError:
            raise ValueError(f"camera {camera!r} is not in this dataset (cameras {self.cameras})") from None

    def _pair(self, pair) -> dict:
        key = _pair_key(pair)
        return next(p for p in self.data["pairs"] if tuple(p["cameras"]) == key)

    def _t(self, timepoint: int) -> int:
        if not (isinstance(timepoint, (int, np.integer)) and 0 <= timepoint < self.timepoints):
            raise ValueError(f"timepoint {timepoint!r}: expected a 0-based index below {self.timepoints}")
        return int(timepoint)

    # ------------------------------------------------------------ pair geometry and photometry
    def offset(self, pair, timepoint: int = 0) -> tuple[float, float]:
        """True (dy, dx) of a pair in pixels (see the convention)."""
        return tuple(self._pair(pair)["offset_px"][self._t(timepoint)])  # type: ignore[return-value]

    def rotation_deg(self, pair, timepoint: int = 0) -> float:
        return float(self._pair(pair)["rotation_deg"][self._t(timepoint)])

    def offsets(self, pair) -> np.ndarray:
        """(T, 2) true offsets of a pair over time."""
        return np.array(self._pair(pair)["offset_px"], dtype=float)

    def rotations_deg(self, pair) -> np.ndarray:
        return np.array(self._pair(pair)["rotation_deg"], dtype=float)

    def gain(self, camera: int) -> float:
        return float(self._camera(camera)["gain"])

    def gain_ratio(self, pair) -> float:
        """gain_b / gain_a for pair (a, b)."""
        return float(self._pair(pair)["gain_ratio"])

    def channel(self, camera: int) -> int:
        """The camera's channel (with illumination sides: the low-x one, see :meth:`channels_of_camera`)."""
        return int(self._camera(camera)["channel"])

    def channels_of_camera(self, camera: int) -> tuple[int, ...]:
        """Channels a camera recorded (two with illumination sides)."""
        entry = self._camera(camera)
        return tuple(entry.get("channels", [entry["channel"]]))

    @property
    def illumination_channels(self) -> tuple[int, int] | None:
        """(channel lit from low x, channel lit from high x), or None (one channel per camera)."""
        sides = self.data.get("illumination")
        return None if sides is None else tuple(sides["channels"])  # type: ignore[return-value]

    def illumination_balance(self) -> float:
        """Photons of the high-x channel over the low-x one (the ratio intensity matching should find)."""
        sides = self.data.get("illumination")
        return 1.0 if sides is None else float(sides["balance_b_over_a"])

    def sheet_misalignment(self, camera: int) -> tuple[float, float]:
        """(offset_z_planes, rotation_deg) of channel b's sheet in ``camera``'s raw frame ((0, 0) when aligned).

        Channel b's content at (z, y) lands on channel a's at
        ``z + offset_z_planes + tan(rotation_deg) * (y - (Y - 1) / 2)``.
        """
        sides = self.data.get("illumination") or {}
        entry = (sides.get("sheet_misalignment") or {}).get(str(camera))
        return (0.0, 0.0) if entry is None else (float(entry["offset_z_planes"]), float(entry["rotation_deg"]))

    def camera_affine(self, camera: int, timepoint: int = 0) -> np.ndarray:
        """4x4 map of raw voxel (k, y, x, 1) to specimen (z, y, x, 1) in µm."""
        return np.array(self._camera(camera)["camera_to_specimen"][self._t(timepoint)])

    def blur_sigma_px(self, camera: int) -> np.ndarray:
        return np.array(self._camera(camera)["blur_sigma_px"])

    # ------------------------------------------------------------ camera artefacts
    def dead_pixels(self, camera: int) -> np.ndarray:
        """Structured array with fields y, x (int32), kind ('hot' or 'stuck') and value (float64)."""
        rows = self._camera(camera)["dead_pixels"]
        dtype = np.dtype([("y", np.int32), ("x", np.int32), ("kind", "U5"), ("value", np.float64)])
        return np.array([(r["y"], r["x"], r["kind"], r["value"]) for r in rows], dtype=dtype)

    def dead_pixel_mask(self, camera: int) -> np.ndarray:
        d = self.dead_pixels(camera)
        mask = np.zeros(self.shape[1:], bool)
        mask[d["y"], d["x"]] = True
        return mask

    def dark_frame(self, camera: int) -> np.ndarray:
        """The camera's dark frame, float32 (Y, X) (integer-valued)."""
        self._camera(camera)
        return self._array(f"dark/CM{int(camera)}")

    # ------------------------------------------------------------ volumes
    def _array(self, key: str) -> np.ndarray:
        import zarr

        path = self.root / self.data["files"]["volumes"]
        try:
            arr = zarr.open_array(str(path / key), mode="r")
        except (FileNotFoundError, KeyError, ValueError) as exc:
            raise InputNotFoundError(f"{path / key}: truth array missing ({exc})") from exc
        return np.asarray(arr[...])

    def _volume(self, kind: str, camera: int, timepoint: int, channel: int | None = None) -> np.ndarray:
        self._camera(camera)
        t = self._t(timepoint)
        side = _side_for(self.spec, channel, kind)
        if not self.data["files"]["truth_volumes_written"]:
            raise InputNotFoundError(
                f"{self.root}: truth volumes were not written (write_truth_volumes=False); "
                "use isoview_dask.synthetic.synthetic_volume(truth.spec, ...) to render them"
            )
        tm = self.data["timepoint_numbers"][t]
        return self._array(f"TM{tm:05d}/CM{int(camera)}/{_truth_key(kind, side, channel)}")

    def ideal(self, camera: int, timepoint: int = 0, channel: int | None = None) -> np.ndarray:
        """Expected raw minus dark (float32, (Z, Y, X), camera's raw frame).

        With illumination sides each channel has its own; ``channel`` is then required.
        """
        return self._volume("ideal", camera, timepoint, channel)

    def clean(self, camera: int, timepoint: int = 0) -> np.ndarray:
        """Sharp, unattenuated specimen in photons (float32, (Z, Y, X), camera's raw frame)."""
        return self._volume("clean", camera, timepoint)

    def body_mask(self, camera: int, timepoint: int = 0) -> np.ndarray:
        """The ellipsoidal body (bool, (Z, Y, X), camera's raw frame)."""
        return self._volume("body_mask", camera, timepoint)

    # ------------------------------------------------------------ files
    def stack_path(self, camera: int, timepoint: int = 0, layout: str | None = None,
                   channel: int | None = None) -> Path:
        """Path of a camera's ``.stack`` ('keller' or 'flat'; default: whichever exists, Keller first).

        ``channel`` picks one of the two channels of a camera with illumination sides.
        """
        spec = self.spec
        self._camera(camera)
        tm = self.data["timepoint_numbers"][self._t(timepoint)]
        if _side_for(spec, channel, "raw") is None:
            channel = None
        name = _stack_name(spec, tm, camera, channel)
        layout = layout or ("keller" if self.raw_dir is not None else "flat")
        if layout == "keller" and self.raw_dir is not None:
            return self.raw_dir / _keller_dir(spec) / f"TM{tm:05d}" / "ANG000" / name
        if layout == "flat" and self.flat_dir is not None:
            return self.flat_dir / name
        raise ValueError(f"layout {layout!r} was not written for {self.root}")

    def raw(self, camera: int, timepoint: int = 0, layout: str | None = None,
            channel: int | None = None) -> np.ndarray:
        """Read a camera's raw stack into memory (uint16 (Z, Y, X)); ``channel`` as for :meth:`stack_path`."""
        path = self.stack_path(camera, timepoint, layout, channel)
        return np.fromfile(path, dtype="<u2").reshape(self.shape)


def load_truth(out: str | os.PathLike) -> SyntheticTruth:
    """Read the ground truth of a dataset written by :func:`generate_dataset`."""
    root = Path(out)
    path = root / "truth" / "truth.json"
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no synthetic ground truth here (expected truth/truth.json)")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if data.get("format") != "isoview-dask synthetic truth":
        raise IsoviewError(f"{path}: not an isoview-dask synthetic truth file")
    return SyntheticTruth(root=root, data=data)
