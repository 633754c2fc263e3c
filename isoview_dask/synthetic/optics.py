"""Optics of the synthetic recording: attenuation, blur and the two illumination sides.

Image formation
---------------
Per camera, plane and pixel (all in that camera's raw frame):

1. ``clean`` = the specimen sampled at the pixel centre (photons, sharp,
   unattenuated, no gain; see :mod:`.specimen`).
2. Attenuation ``exp(-depth / attenuation_length_um)``, where ``depth`` is the
   path length inside the ellipsoid between the point and the ellipsoid's
   entry surface on the camera's side (0 in front of the body, the full chord
   behind it).
3. A 2D Gaussian blur (zero outside the frame) with
   ``sigma_px = psf_sigma_px + blur_growth_px * clip(d / a, 0, 1.5)``, where d
   is the plane's distance beyond the body centre away from the camera and a
   the body semi-axis along the detection axis. The near half is sharp.
4. Expected photons ``E = blur(clean * attenuation)``; ``ideal = gain * E``.
5. ``raw``: noise, dark frame and dead pixels (see :mod:`.cameras`).

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

Axial PSF (optional)
--------------------
With ``axial_psf_fwhm_um`` every camera's image is also blurred along its own
plane (detection) axis by a normalised Gaussian of that FWHM
(``sigma_a = FWHM / 2.3548``); the lateral PSF stays ``psf_sigma_px`` (plus the
depth-dependent growth). Steps 1-2 (2', with illumination sides) are then
integrated along the plane axis before the 2D blur::

    emitted_k = sum_m w_m emitted(plane k + delta_m / dz),

with ``n`` nodes ``delta_m = m h`` (``m = -(n-1)/2 ... (n-1)/2``, odd
``n >= 7``) spanning +-3.5 sigma_a and weights ``w_m`` proportional to
``exp(-delta_m^2 / (2 sigma_a^2))``, normalised to 1 (:func:`axial_nodes`).
The spacing ``h`` is at most 0.8 times the finest feature of the specimen
(the smallest nucleus sigma, or the body's 1 µm edge half-width if smaller);
15 nodes for sigma_a = 1.42 µm (FWHM 3.35 µm) and 1 µm nuclei. Against the
exact convolution, in one dimension along the axis, the error of this rule is
below 2e-4 of the peak for a Gaussian nucleus of the finest sigma, below 2e-3
of the body level across the body's edge profile and below 2e-4 of the
texture's amplitude (checked for sigma_a from 0.1 to 5 µm; features crossed
obliquely are wider and come out better).
Each node is an exact evaluation of the analytic specimen, so every plane
depends on its own index only (the bytes do not depend on the slab size).
With illumination sides the blurred fraction ``f`` of 3' is that of the plane
itself (node 0). Fluorescent beads (points much smaller than the PSF) are not
integrated this way but rendered analytically (see :mod:`.specimen`).
Without ``axial_psf_fwhm_um`` there is one node and the bytes are those of
earlier versions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping

import numpy as np
from scipy import ndimage

from .cameras import DETECTION_AXIS, NEAR_SIGN

if TYPE_CHECKING:
    from .spec import SyntheticSpec

__all__ = [
    "AXIAL_SPAN_SIGMAS",
    "BLUR_CLIP",
    "FWHM_PER_SIGMA",
    "MIN_SIGMA_PX",
    "attenuation_lengths",
    "axial_nodes",
    "blur_plane",
    "blur_sigmas",
    "detection_attenuation",
    "illuminated",
    "illumination_light",
    "illumination_lengths",
    "mix_blur",
    "path_inside",
]

#: The depth-dependent blur stops growing this many semi-axes beyond the body centre.
BLUR_CLIP = 1.5
#: Blurs below this sigma (px) are skipped.
MIN_SIGMA_PX = 0.01
#: FWHM of a Gaussian in units of its sigma (2 sqrt(2 ln 2)).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: The axial quadrature nodes span +-this many sigmas.
AXIAL_SPAN_SIGMAS = 3.5
#: Node spacing at most this fraction of the specimen's finest feature (µm).
AXIAL_NODE_FRACTION = 0.8


def axial_nodes(fwhm_um: float | None, finest_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature of the axial PSF: offsets (µm) along the plane axis and their weights (sum 1).

    Parameters
    ----------
    fwhm_um : float or None
        FWHM of the axial Gaussian, µm. None: one node at 0 with weight 1.
    finest_um : float
        Scale of the specimen's finest feature along the axis (µm); the
        node spacing is at most ``0.8 * finest_um``.

    Returns
    -------
    offsets_um, weights : float64 arrays (n,)
        ``n`` odd; the middle offset is exactly 0.
    """
    if fwhm_um is None:
        return np.zeros(1), np.ones(1)
    sigma = fwhm_um / FWHM_PER_SIGMA
    half = int(math.ceil(AXIAL_SPAN_SIGMAS * sigma / (AXIAL_NODE_FRACTION * finest_um)))
    half = max(half, 3)
    h = AXIAL_SPAN_SIGMAS * sigma / half
    offsets = h * (np.arange(2 * half + 1) - half)
    weights = np.exp(-offsets**2 / (2 * sigma**2))
    return offsets, weights / weights.sum()


def attenuation_lengths(spec: "SyntheticSpec", semi: np.ndarray) -> dict[int, float]:
    """Detection attenuation length (µm) of every camera: the spec's, or 1.5 semi-axes along its detection axis."""
    return {cam: float(spec.attenuation_length_um or 1.5 * semi[DETECTION_AXIS[cam]]) for cam in range(4)}


def illumination_lengths(spec: "SyntheticSpec", semi: np.ndarray,
                         column_direction: Mapping[int, np.ndarray]) -> dict[int, float]:
    """Light-sheet attenuation length (µm) per camera: the spec's, or the body's semi-axis along the columns."""
    out = {}
    for cam in range(4):
        u = column_direction[cam]
        out[cam] = float(spec.illumination_attenuation_um or 1.0 / np.sqrt(np.sum((u / semi) ** 2)))
    return out


def blur_sigmas(spec: "SyntheticSpec", semi: np.ndarray, dz: float) -> dict[int, np.ndarray]:
    """Lateral blur sigma (px) of every plane of every camera (step 3 of the image formation)."""
    Z = spec.shape[0]
    out = {}
    for cam in range(4):
        axis = DETECTION_AXIS[cam]
        depth = NEAR_SIGN[cam] * (np.arange(Z) - (Z - 1) / 2) * dz
        out[cam] = spec.psf_sigma_px + spec.blur_growth_px * np.clip(depth / semi[axis], 0, BLUR_CLIP)
    return out


def path_inside(coords, r2: np.ndarray, semi: np.ndarray, travel: np.ndarray) -> np.ndarray:
    """Path length (µm, float32) inside the body from its entry surface to each point, along ``travel``.

    ``travel`` is a unit specimen direction; the path is 0 for points the ray
    reaches before the body, the whole chord for points beyond it.
    ``coords`` are the specimen coordinates (z, y, x; µm) of a window and
    ``r2`` its squared ellipsoidal radius.
    """
    scaled = travel / semi
    a = float(np.sum(scaled**2))
    b = sum(coords[d] * np.float32(scaled[d] / semi[d]) for d in range(3))
    disc = np.maximum(b * b - np.float32(a) * (r2 - 1), 0)
    root = np.sqrt(disc)
    entry = (-b - root) / np.float32(a)          # position of the entry surface along the ray, µm
    chord = 2 * root / np.float32(a)
    return np.where(disc > 0, np.clip(-entry, 0, chord), 0).astype(np.float32)


def detection_attenuation(coords, r2: np.ndarray, semi: np.ndarray, camera: int, length_um: float,
                          away: np.ndarray | None = None) -> np.ndarray:
    """Factor ``exp(-depth / length)`` of the light emitted towards a camera (float32, like ``r2``).

    ``coords`` are the specimen coordinates (z, y, x; µm) of a window and ``r2``
    its squared ellipsoidal radius; ``depth`` is the path inside the body from
    the point to the body's surface on the camera's side.

    ``away`` is the unit specimen direction pointing away from the camera
    along its detection axis when that is not a specimen axis (a rotated
    specimen, ``vw90_motion``); None: the camera's own axis
    (``DETECTION_AXIS``, ``NEAR_SIGN``).
    """
    if away is not None:
        return np.exp(-path_inside(coords, r2, semi, away) / np.float32(length_um))
    axis, sign = DETECTION_AXIS[camera], NEAR_SIGN[camera]
    h2 = np.ones_like(r2)
    for d in range(3):
        if d != axis:
            h2 -= (coords[d] / np.float32(semi[d])) ** 2
    half_chord = np.float32(semi[axis]) * np.sqrt(np.maximum(h2, 0))
    depth = np.clip(sign * coords[axis] + half_chord, 0, 2 * half_chord)
    return np.exp(-depth / np.float32(length_um))


def blur_plane(image: np.ndarray, sigma: float) -> np.ndarray:
    """2D Gaussian blur (sigma in px, zero outside, truncated at 4 sigma); tiny sigmas return ``image``."""
    if sigma > MIN_SIGMA_PX:
        return ndimage.gaussian_filter(image, sigma, mode="constant", truncate=4.0)
    return image


def illumination_light(emitted: np.ndarray, coords, r2: np.ndarray, semi: np.ndarray, travel: np.ndarray,
                       length_um: float, balance: float, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The light-sheet attenuation and power of one illumination side (2' in the module docstring).

    Parameters
    ----------
    emitted : float32 array (h, w)
        The detection-attenuated signal on the window.
    coords : three float32 arrays (h, w)
        Specimen coordinates (z, y, x) of the window, µm.
    r2 : float32 array (h, w)
        Squared ellipsoidal radius.
    semi : (3,) array
        Body semi-axes (z, y, x), µm.
    travel : (3,) array
        Unit specimen direction the light travels.
    length_um, balance : float
        Light-sheet attenuation length and the channel's relative power.
    side : 0 or 1
        Channel a (0) or b (1); ``balance`` applies to b only.

    Returns
    -------
    lit : float32 array (h, w)
        The signal the sheet excites.
    far : float32 array (h, w)
        The blurred fraction ``f`` of 3' (0 on the half the light reaches first).
    """
    depth = path_inside(coords, r2, semi, travel)
    lit = emitted * np.exp(-depth / np.float32(length_um))
    if side == 1:
        lit = lit * np.float32(balance)
    scaled = travel / semi
    a = float(np.sum(scaled**2))
    along = sum(coords[d] * np.float32(travel[d]) for d in range(3)) * np.float32(math.sqrt(a))
    far = np.clip(along, 0, 1).astype(np.float32)
    return lit, far


def mix_blur(lit: np.ndarray, far: np.ndarray, sigma: float, extra_blur_px: float) -> np.ndarray:
    """``(1 - far) blur_sigma(lit) + far blur_s2(lit)``, ``s2 = hypot(sigma, extra_blur_px)`` (3')."""
    sharp = blur_plane(lit, sigma)
    wide = math.hypot(sigma, extra_blur_px)
    blurred = blur_plane(lit, wide)
    return ((1 - far) * sharp + far * blurred).astype(np.float32)


def illuminated(emitted: np.ndarray, coords, r2: np.ndarray, semi: np.ndarray, travel: np.ndarray,
                length_um: float, balance: float, side: int, sigma: float, extra_blur_px: float) -> np.ndarray:
    """One illumination side's image of a window: attenuation along the light and a growing blur.

    :func:`illumination_light` then :func:`mix_blur` (parameters as there;
    ``sigma`` and ``extra_blur_px`` are the plane's detection blur and the
    extra blur of the far side, px). See 2' and 3' in the module docstring.
    """
    lit, far = illumination_light(emitted, coords, r2, semi, travel, length_um, balance, side)
    return mix_blur(lit, far, sigma, extra_blur_px)
