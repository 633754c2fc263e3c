"""3-D registration of VW90 onto VW00: orientation, translation, then a fine rigid or affine fit.

Estimate small, apply big: every step works on reduced copies of the views
(block means computed as dask reductions), never on the full volumes.

1. **Orientation.** Both views are reduced to a coarse isotropic grid (at most
   :data:`COARSE_SIZE` voxels along any axis, never finer than either z step,
   so the two views' different axial blurs no longer matter). For every
   candidate signed axis permutation (:data:`~isoview_dask.isotropic.geometry.ORIENTATIONS`),
   VW90's coarse volume is turned into VW00's axes (an exact transpose and
   flips) and the best translation is found by masked normalised
   cross-correlation (:func:`skimage.registration.phase_cross_correlation`
   with masks, which handles the partial overlap); the score is the
   correlation coefficient over the overlap there. The best candidate wins,
   its margin over the runner-up is recorded, and ``orientation`` overrides
   the search.
2. **Translation** to a fraction of a voxel: upsampled phase correlation at
   the registration level (isotropic, ``registration_voxel_um``), both views
   resampled there and each blurred with the *other* view's PSF so that both
   carry the same total blur.
3. **Fine fit**, level by level: on the whole overlap at a voxel that keeps
   the level at most :data:`FINE_SIZE` voxels long, then on crops of that
   size around the specimen's centre, each level 4x finer, down to the
   lateral pixel. On each, Gauss-Newton least squares of the intensity difference
   between the two cross-blurred, high-passed images (shading broader than
   :data:`HIGHPASS_UM` removed) over the voxels where both have signal
   (rigid: 3 rotation + 3 translation parameters about the overlap's
   centre; affine: 12), with an intensity gain and offset solved alongside.
   VW90 is resampled through the current transform at every step.
4. **Confidence**: the correlation coefficient of the two cross-blurred images
   after the fit. Below ``min_confidence`` the fine fit is rejected and the
   translation-only (or the given initial) transform is kept, with the reason
   recorded in ``fallback``.

With ``initial`` (the previous timepoint's transform in a time series) the
orientation search is skipped and steps 2-3 start from it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import dask.array as da
import numpy as np
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from .geometry import (ORIENTATIONS, IsotropicGrid, compose, index_map, orientation_matrix, rotation_angle_deg)
from .psf import gaussian_covariance, gaussian_kernel, warped_covariance

log = logging.getLogger(__name__)

__all__ = ["COARSE_SIZE", "FITS", "ViewRegistration", "coarse_isotropic", "register_views"]

#: Largest coarse-grid size along any axis for the orientation search.
COARSE_SIZE = 64
#: Largest registration-level size along any axis (bounds the fine fit's memory and time: about 1 s per
#: Gauss-Newton step at 128^3). A full frame (about 1000 µm) is fitted at 8, 2, 0.5 and 0.406 µm. Crops cost
#: information on sparse specimens: on the on-disk synthetic recording (13 nuclei), a 64-voxel crop left
#: 0.39 degrees of error where its whole 120-voxel extent gives 0.2; on the dense four-view truth 64 was as
#: accurate as one level.
FINE_SIZE = 128
#: Shading broader than this (Gaussian sigma, µm) is removed before the translation and the fine fit. The two
#: views differ smoothly (each dims and blurs with depth along its own detection and illumination axes, body
#: edges look different along the two axial directions), and that difference biases an intensity fit: on the
#: on-disk synthetic recording's ideal camera volumes the rotation error is 3.0 degrees without it, 0.6 with
#: 3 µm, 0.01 with 1 µm; on the in-memory four-view truth 1 and 2 µm both stay below 0.075 degrees.
HIGHPASS_UM = 1.0
#: Fine-fit models.
FITS = ("rigid", "affine", "translation")


@dataclass
class ViewRegistration:
    """Where VW90 lies in VW00's frame, and how sure we are.

    Attributes
    ----------
    transform : numpy.ndarray
        4 x 4 physical transform VW00 -> VW90 (µm), see :mod:`~isoview_dask.isotropic.geometry`.
    orientation : str
        The chosen axis permutation.
    orientation_scores : dict
        Correlation of every candidate orientation at its best translation (coarse level).
    orientation_margin : float
        Best score minus the runner-up's.
    orientation_source : str
        ``"search"``, ``"config"`` or ``"initial"``.
    confidence : float
        Correlation coefficient of the cross-blurred views after the fit (0-1).
    scale90 : float
        Intensity factor that brings VW90 to VW00's brightness.
    fit : str
        ``"rigid"``, ``"affine"`` or ``"translation"``.
    fallback : str or None
        Why the fine fit was not used, if it was not.
    rotation_deg : float
        Angle of the fine correction's rotation (away from the pure orientation), degrees.
    iterations : int
        Gauss-Newton iterations of the fine fit (all levels).
    voxel_um : float
        The finest registration level's voxel, µm.
    levels : list of dict
        Per level: voxel (µm), confidence, and the VW00 crop (index ranges) of the levels after the first.
    """

    transform: np.ndarray
    orientation: str
    orientation_scores: dict = field(default_factory=dict)
    orientation_margin: float | None = None
    orientation_source: str = "search"
    confidence: float = 0.0
    scale90: float = 1.0
    fit: str = "rigid"
    fallback: str | None = None
    rotation_deg: float = 0.0
    iterations: int = 0
    voxel_um: float = 0.0
    levels: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "transform_vw00_to_vw90_um": np.asarray(self.transform).tolist(),
            "orientation": self.orientation,
            "orientation_scores": {k: round(float(v), 5) for k, v in self.orientation_scores.items()},
            "orientation_margin": self.orientation_margin,
            "orientation_source": self.orientation_source,
            "confidence": float(self.confidence),
            "scale90": float(self.scale90),
            "fit": self.fit,
            "fallback": self.fallback,
            "rotation_deg": float(self.rotation_deg),
            "iterations": int(self.iterations),
            "voxel_um": float(self.voxel_um),
            "levels": [{k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in level.items()}
                       for level in self.levels],
        }

    @classmethod
    def from_dict(cls, record: dict) -> "ViewRegistration":
        return cls(transform=np.asarray(record["transform_vw00_to_vw90_um"], float),
                   orientation=record["orientation"], orientation_scores=dict(record.get("orientation_scores", {})),
                   orientation_margin=record.get("orientation_margin"),
                   orientation_source=record.get("orientation_source", "search"),
                   confidence=float(record.get("confidence", 0.0)), scale90=float(record.get("scale90", 1.0)),
                   fit=record.get("fit", "rigid"), fallback=record.get("fallback"),
                   rotation_deg=float(record.get("rotation_deg", 0.0)),
                   iterations=int(record.get("iterations", 0)), voxel_um=float(record.get("voxel_um", 0.0)),
                   levels=list(record.get("levels", [])))


def coarse_isotropic(view, voxel_zyx_um: Sequence[float], voxel_um: float) -> np.ndarray:
    """A view on an isotropic grid of ``voxel_um``: block means (a dask reduction), then a cubic-spline zoom.

    Voxel ``r`` of the result lies at ``r * voxel_um`` µm in the view's frame
    (the block means' centres are accounted for).

    Returns
    -------
    numpy.ndarray
        float32 (Z, Y, X).
    """
    view = view if isinstance(view, da.Array) else da.from_array(np.asarray(view), chunks=view.shape)
    voxel = np.asarray(voxel_zyx_um, float)
    factors = np.maximum(np.floor(voxel_um / voxel + 1e-6).astype(int), 1)
    usable = [(n // f) * f for n, f in zip(view.shape, factors)]
    trimmed = view[tuple(slice(0, u) for u in usable)].astype(np.float32)
    binned = np.asarray(da.coarsen(np.mean, trimmed, {a: int(f) for a, f in enumerate(factors)}).compute(),
                        np.float32)
    binned_voxel = voxel * factors
    first = (factors - 1) / 2 * voxel  # physical position of binned voxel 0
    extent = (np.array(binned.shape) - 1) * binned_voxel + first
    shape = tuple(int(math.floor(e / voxel_um + 1e-9)) + 1 for e in extent)
    # result index r -> binned index (r * voxel_um - first) / binned_voxel
    matrix = voxel_um / binned_voxel
    offset = -first / binned_voxel
    return ndimage.affine_transform(binned, matrix, offset=offset, output_shape=shape, order=3, mode="nearest")


def _turn(coarse90: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """VW90's coarse volume in VW00's axes; returns it and ``f`` with ``q = P r + f`` (VW90 index from turned index)."""
    rows_for_col = [int(np.nonzero(matrix[:, c])[0][0]) for c in range(3)]
    turned = np.transpose(coarse90, rows_for_col)
    f = np.zeros(3)
    for col, row in enumerate(rows_for_col):
        if matrix[row, col] < 0:
            turned = np.flip(turned, axis=col)
            f[row] = coarse90.shape[row] - 1
    return np.ascontiguousarray(turned), f


def _pad_to(image: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    region = tuple(slice(0, n) for n in image.shape)
    out[region] = image
    mask[region] = True
    return out, mask


def _overlap_ncc(a: np.ndarray, b: np.ndarray, shift: np.ndarray) -> float:
    """Correlation coefficient of ``a[r]`` and ``b[r - shift]`` over their overlap (integer shift)."""
    shift = np.rint(shift).astype(int)
    sa, sb = [], []
    for n_a, n_b, s in zip(a.shape, b.shape, shift):
        lo = max(0, s)
        hi = min(n_a, n_b + s)
        if hi - lo < 2:
            return -1.0
        sa.append(slice(lo, hi))
        sb.append(slice(lo - s, hi - s))
    x = a[tuple(sa)].astype(np.float64).ravel()
    y = b[tuple(sb)].astype(np.float64).ravel()
    x -= x.mean()
    y -= y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / denominator) if denominator > 0 else -1.0


def _search_orientation(coarse00, coarse90, voxel_um, candidates) -> tuple[str, np.ndarray, dict]:
    scores, transforms = {}, {}
    for name in candidates:
        matrix = orientation_matrix(name)
        turned, f = _turn(coarse90, matrix)
        shape = tuple(max(a, b) for a, b in zip(coarse00.shape, turned.shape))  # masked NCC pads itself
        reference, reference_mask = _pad_to(coarse00, shape)
        moving, moving_mask = _pad_to(turned, shape)
        shift = phase_cross_correlation(reference, moving, reference_mask=reference_mask, moving_mask=moving_mask,
                                        overlap_ratio=0.3)[0]
        shift = np.asarray(shift, float)
        # shifts beyond half the padded size wrap around
        shift = np.where(shift > np.array(shape) / 2, shift - np.array(shape), shift)
        scores[name] = _overlap_ncc(coarse00, turned, shift)
        transform = np.eye(4)
        transform[:3, :3] = matrix
        transform[:3, 3] = voxel_um * (f - matrix @ shift)
        transforms[name] = transform
    best = max(scores, key=scores.get)
    return best, transforms[best], scores


def _blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    from scipy.signal import fftconvolve

    return fftconvolve(image, kernel, mode="same").astype(np.float32)


class _Level:
    """Both views at the registration level: VW00 resampled and cross-blurred, VW90 ready to resample."""

    def __init__(self, vw00, voxel00, vw90, voxel90, psf_fwhm_um, voxel_um: float, highpass_um: float | None = None,
                 crop00: tuple[slice, ...] | None = None, transform: np.ndarray | None = None):
        self.highpass_um = highpass_um
        self.voxel_um = voxel_um
        voxel00 = np.asarray(voxel00, float)
        voxel90 = np.asarray(voxel90, float)
        vw00 = vw00 if isinstance(vw00, da.Array) else da.from_array(np.asarray(vw00), chunks=vw00.shape)
        vw90 = vw90 if isinstance(vw90, da.Array) else da.from_array(np.asarray(vw90), chunks=vw90.shape)
        crop00 = crop00 or tuple(slice(0, n) for n in vw00.shape)
        # level index r lies at s00 = r * voxel_um + origin00 (µm, VW00's frame)
        self.origin00 = np.array([c.start for c in crop00], float) * voxel00
        self.fixed = coarse_isotropic(vw00[crop00], voxel00, voxel_um)
        self.fixed_shape = self.fixed.shape
        # VW90: only the window the crop maps to (through the current transform), with room for the fit
        window = tuple(slice(0, n) for n in vw90.shape)
        if transform is not None and any(c.stop - c.start < n for c, n in zip(crop00, vw00.shape)):
            extent = (np.array(self.fixed_shape) - 1) * voxel_um
            corners = np.array(np.meshgrid(*[[0, e] for e in extent], indexing="ij")).reshape(3, -1).T
            mapped = (corners + self.origin00) @ transform[:3, :3].T + transform[:3, 3]
            reach = 0.1 * extent.max() + 4 * voxel_um
            lo = np.floor((mapped.min(axis=0) - reach) / voxel90).astype(int)
            hi = np.ceil((mapped.max(axis=0) + reach) / voxel90).astype(int) + 1
            lo = np.clip(lo, 0, np.array(vw90.shape) - 1)
            hi = np.clip(hi, lo + 1, np.array(vw90.shape))
            window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        self.origin90 = np.array([w.start for w in window], float) * voxel90
        # VW90 reduced laterally (never below its own voxel) so that resampling it stays cheap
        factors = np.maximum(np.floor(voxel_um / voxel90 + 1e-6).astype(int), 1)
        self.source_voxel = voxel90 * factors
        self.source_first = (factors - 1) / 2 * voxel90
        part = vw90[window]
        usable = [max(f, (n // f) * f) for n, f in zip(part.shape, factors)]
        part = part[tuple(slice(0, u) for u in usable)].astype(np.float32)
        self.source = np.asarray(da.coarsen(np.mean, part, {a: int(f) for a, f in enumerate(factors)},
                                            trim_excess=True).compute(), np.float32)
        self.spline = ndimage.spline_filter(self.source, order=3, mode="nearest", output=np.float32)
        covariance = gaussian_covariance(*psf_fwhm_um)
        self.covariance_view = covariance
        # VW00 carries VW90's blur too (set per transform, see cross_blur)
        self.fixed_blurred = None
        self.kernel00 = gaussian_kernel(covariance, voxel_um)

    def coordinates(self) -> np.ndarray:
        """(N, 3) physical positions (µm, VW00's frame) of the level's voxels, in C order."""
        return np.indices(self.fixed_shape, dtype=np.float64).reshape(3, -1).T * self.voxel_um + self.origin00

    def cross_blur(self, transform):
        kernel90 = gaussian_kernel(warped_covariance(self.covariance_view, transform), self.voxel_um)
        self.fixed_smooth = _blur(self.fixed, kernel90)
        self.fixed_blurred = self._highpass(self.fixed_smooth)
        self.signal = self.fixed_smooth > np.percentile(self.fixed_smooth, 50)

    def _highpass(self, image: np.ndarray) -> np.ndarray:
        """Remove shading broader than ``highpass_um`` (at least 2 voxels of the level, which on a coarse level
        keeps the structures it can still resolve)."""
        if not self.highpass_um:
            return image
        sigma = max(self.highpass_um / self.voxel_um, 2.0)
        return (image - ndimage.gaussian_filter(image, sigma, mode="nearest")).astype(np.float32)

    def moving(self, transform, highpass: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """VW90 resampled onto the level through ``transform`` and blurred with VW00's PSF (high-passed unless
        ``highpass`` is false); and its field."""
        # level index r -> s00 = r * voxel + origin00 -> s90 -> reduced window index (s90 - origin90 - first) / voxel
        matrix = np.diag(1 / self.source_voxel) @ transform[:3, :3] * self.voxel_um
        offset = (transform[:3, :3] @ self.origin00 + transform[:3, 3] - self.origin90 - self.source_first) / \
            self.source_voxel
        image = ndimage.affine_transform(self.spline, matrix, offset=offset, output_shape=self.fixed_shape,
                                         order=3, mode="nearest", prefilter=False)
        coordinates = np.indices(self.fixed_shape, dtype=np.float32).reshape(3, -1)
        source = matrix @ coordinates + offset[:, None]
        inside = np.all((source >= -0.5) & (source <= np.array(self.source.shape)[:, None] - 0.5), axis=0)
        blurred = _blur(image, self.kernel00)
        return (self._highpass(blurred) if highpass else blurred), inside.reshape(self.fixed_shape)


def _ncc(a, b, mask) -> float:
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    d = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / d) if d > 0 else 0.0


def _refine_translation(level: _Level, transform: np.ndarray, upsample: int = 20) -> np.ndarray:
    moving, inside = level.moving(transform)
    window = inside.astype(np.float32)
    shift = phase_cross_correlation(level.fixed_blurred * window, moving * window, upsample_factor=upsample,
                                    normalization=None)[0]
    # fixed[r] ~ moving[r - shift]: the content at s00 sits where moving shows s00 - shift * voxel
    correction = np.eye(4)
    correction[:3, 3] = -np.asarray(shift, float) * level.voxel_um
    return transform @ correction


def _gauss_newton(level: _Level, transform: np.ndarray, fit: str, max_iterations: int = 30,
                  tolerance_um: float = 1e-3) -> tuple[np.ndarray, int, float]:
    """Intensity least squares of fixed ~ a * moving(T o U(p)) + b over the overlap; U rigid/affine about the centre."""
    coordinates = level.coordinates()
    fixed = level.fixed_blurred.ravel().astype(np.float64)
    signal = level.signal.ravel()
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        moving, inside = level.moving(transform)
        mask = inside.ravel() & signal
        if mask.sum() < 1000:
            break
        centre = coordinates[mask].mean(axis=0)
        x = coordinates[mask] - centre
        gradients = np.stack(np.gradient(moving.astype(np.float64), level.voxel_um), axis=-1).reshape(-1, 3)[mask]
        m = moving.ravel()[mask].astype(np.float64)
        f = fixed[mask]
        # gain and offset by least squares
        design = np.c_[m, np.ones_like(m)]
        gain, bias = np.linalg.lstsq(design, f, rcond=None)[0]
        residual = f - (gain * m + bias)
        g = gain * gradients
        if fit == "translation":
            jacobian = g
        elif fit == "rigid":
            jacobian = np.c_[g, np.cross(x, g)]  # d/d(omega) of g . (omega x x) = (x x g) . omega
        else:
            jacobian = np.c_[g, (g[:, :, None] * x[:, None, :]).reshape(len(x), 9)]
        step = np.linalg.lstsq(jacobian, residual, rcond=None)[0]
        update = np.eye(4)
        if fit == "rigid":
            omega = step[3:]
            angle = np.linalg.norm(omega)
            rotation = _rotation_matrix(omega / angle, angle) if angle > 0 else np.eye(3)
            update[:3, :3] = rotation
        elif fit == "affine":
            update[:3, :3] = np.eye(3) + step[3:].reshape(3, 3)
        update[:3, 3] = step[:3] + centre - update[:3, :3] @ centre
        transform = transform @ update
        reach = np.abs((np.c_[x, np.ones(len(x))] @ (update - np.eye(4)).T)[:, :3]).max()
        if reach < tolerance_um:
            break
    moving, inside = level.moving(transform)
    return transform, iterations, _ncc(level.fixed_blurred, moving, inside & level.signal)


def _rotation_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def _intensity_scale(level: _Level, transform: np.ndarray) -> float:
    moving, inside = level.moving(transform, highpass=False)
    fixed = level.fixed_smooth
    mask = inside & (fixed > np.percentile(fixed, 75))
    denominator = float(moving[mask].sum())
    return float(fixed[mask].sum() / denominator) if denominator > 0 else 1.0


def register_views(vw00, voxel00: Sequence[float], vw90, voxel90: Sequence[float], *,
                   psf_fwhm_um: Sequence[float] = (0.77, 3.35), orientation: str | None = None,
                   initial: np.ndarray | None = None, fit: str = "rigid", voxel_um: float | None = None,
                   min_confidence: float = 0.5, highpass_um: float | None = HIGHPASS_UM,
                   fine_size: int = FINE_SIZE) -> ViewRegistration:
    """Register VW90 onto VW00.

    Parameters
    ----------
    vw00, vw90 : dask.array.Array or numpy.ndarray
        The pair-fused views (Z, Y, X), each in its own frame.
    voxel00, voxel90 : sequence of 3 float
        Their voxel sizes (Z, Y, X), µm.
    psf_fwhm_um : sequence of 2 float
        Lateral and axial PSF FWHM, µm (used to cross-blur the views).
    orientation : str, optional
        Skip the search and use this orientation.
    initial : numpy.ndarray, optional
        4 x 4 start transform (e.g. the previous timepoint's); skips the orientation search.
    fit : str
        ``"rigid"``, ``"affine"`` or ``"translation"``.
    voxel_um : float, optional
        The finest registration-level voxel, µm. Default: the lateral pixel.
    fine_size : int
        Largest level size along any axis: a volume longer than ``fine_size`` finest voxels is first fitted
        whole on a coarser level, then on crops of ``fine_size`` voxels around the specimen's centre, each level
        4x finer, down to the finest voxel.
    min_confidence : float
        Fits whose correlation falls below this are rejected (see ``fallback``).
    highpass_um : float, optional
        Sigma (µm) of the shading removed before the fine steps (None or 0: none).

    Returns
    -------
    ViewRegistration
    """
    if fit not in FITS:
        raise ValueError(f"unknown isotropic registration fit {fit!r}: expected one of {FITS}")
    voxel00 = tuple(float(v) for v in voxel00)
    voxel90 = tuple(float(v) for v in voxel90)
    extent00 = (np.array(vw00.shape) - 1) * voxel00
    extent90 = (np.array(vw90.shape) - 1) * voxel90
    lateral = min(voxel00[1:])
    scores, margin = {}, None
    if initial is not None:
        transform = np.asarray(initial, float)
        source = "initial"
        name = _nearest_orientation(transform)
    else:
        coarse_voxel = max(voxel00[0], voxel90[0], float(max(extent00.max(), extent90.max())) / COARSE_SIZE)
        coarse00 = coarse_isotropic(vw00, voxel00, coarse_voxel)
        coarse90 = coarse_isotropic(vw90, voxel90, coarse_voxel)
        candidates = [orientation] if orientation else list(ORIENTATIONS)
        name, transform, scores = _search_orientation(coarse00, coarse90, coarse_voxel, candidates)
        ranked = sorted(scores.values(), reverse=True)
        margin = float(ranked[0] - ranked[1]) if len(ranked) > 1 else None
        source = "config" if orientation else "search"
        log.info("isotropic orientation %s (score %.3f, margin %s)", name, scores[name], margin)
    finest = lateral if voxel_um is None else float(voxel_um)
    level_voxel = max(finest, float(extent00.max()) / fine_size)
    level = _Level(vw00, voxel00, vw90, voxel90, psf_fwhm_um, level_voxel, highpass_um)
    level.cross_blur(transform)
    coarse_transform = transform
    for _ in range(2):
        transform = _refine_translation(level, transform)
    iterations, levels = 0, []
    fallback = None
    if fit == "translation":
        moving, inside = level.moving(transform)
        confidence = _ncc(level.fixed_blurred, moving, inside & level.signal)
        levels.append({"voxel_um": level_voxel, "confidence": confidence})
    else:
        fitted, iterations, confidence = _gauss_newton(level, transform, fit)
        level.cross_blur(fitted)
        fitted, more, confidence = _gauss_newton(level, fitted, fit, max_iterations=5)
        iterations += more
        levels.append({"voxel_um": level_voxel, "confidence": confidence})
        # finer levels on a crop of at most fine_size voxels around the specimen's centre: a large volume is
        # registered on its whole extent coarsely, then to the pixel where the specimen is
        while confidence >= min_confidence and level_voxel > 1.01 * finest:
            centre = _signal_centre(level)
            level_voxel = max(finest, level_voxel / 4)
            half = 0.5 * fine_size * level_voxel
            crop = tuple(slice(int(max(0, math.floor((c - half) / v))), int(min(n, math.ceil((c + half) / v) + 1)))
                         for c, v, n in zip(centre, voxel00, vw00.shape))
            level = _Level(vw00, voxel00, vw90, voxel90, psf_fwhm_um, level_voxel, highpass_um, crop, fitted)
            level.cross_blur(fitted)
            fitted, more, confidence = _gauss_newton(level, fitted, fit, max_iterations=10)
            iterations += more
            levels.append({"voxel_um": level_voxel, "confidence": confidence,
                           "crop_zyx": [[c.start, c.stop] for c in crop]})
        if confidence >= min_confidence:
            transform = fitted
        else:
            fallback = (f"fine {fit} fit rejected: correlation {confidence:.3f} < min_confidence {min_confidence}; "
                        f"kept the translation-only transform")
            log.warning("isotropic registration: %s", fallback)
    return ViewRegistration(
        transform=transform, orientation=name, orientation_scores=scores, orientation_margin=margin,
        orientation_source=source, confidence=confidence, scale90=_intensity_scale(level, transform), fit=fit,
        fallback=fallback, rotation_deg=rotation_angle_deg(np.linalg.inv(_pure(coarse_transform)) @ transform),
        iterations=iterations, voxel_um=level_voxel, levels=levels)


def _signal_centre(level: _Level) -> np.ndarray:
    """Physical centre (µm, VW00's frame) of a level's bright half, weighted by intensity."""
    weights = np.where(level.signal, level.fixed_smooth, 0).astype(np.float64)
    if weights.sum() <= 0:
        return level.origin00 + (np.array(level.fixed_shape) - 1) * level.voxel_um / 2
    return level.origin00 + np.array(ndimage.center_of_mass(weights)) * level.voxel_um


def _pure(transform: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = orientation_matrix(_nearest_orientation(transform))
    out[:3, 3] = transform[:3, 3]
    return out


def _nearest_orientation(transform: np.ndarray) -> str:
    linear = np.asarray(transform, float)[:3, :3]
    return max(ORIENTATIONS, key=lambda name: float(np.sum(ORIENTATIONS[name] * linear)))
