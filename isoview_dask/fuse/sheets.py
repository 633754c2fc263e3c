"""Registration of two illumination channels' light sheets (SiMView channel alignment).

One camera records the specimen twice, lit by light sheets entering from the
two sides of its frame's x axis (channels a and b). The two sheets are never
coplanar: channel b's sheet is shifted along the detection axis and tilted
about the illumination axis x, so b's plane ``k`` at row ``y`` images what
a's plane ``k + d(y)`` images, with

    d(y) = offset_z_planes + tan(rotation_deg) * (y - (Y - 1) / 2)

(:func:`~isoview_dask.fuse.transforms.sheet_displacement`; the angle is
counted in voxel units, planes per row). Registering b onto a means moving
b's content from ``z`` to ``z + d(y)``
(:func:`~isoview_dask.fuse.transforms.apply_sheet_transform`).

The fit uses reduced data only, as the MATLAB multiFuse does: the mean of a
few columns either side of the channel transition (where both channels see
the specimen about equally well), a (Z, Y) image per channel. Both images
are background-subtracted and band-pass filtered; the displacement is first
measured per band of rows (integer search of the correlation coefficient,
refined by a parabola), a robust line through those gives the start, and a
bounded Powell search maximises the correlation coefficient of the whole
image over (offset, rotation), with cubic interpolation along z.

The confidence is that correlation coefficient (0 when the estimate lies at
the search limits, which rejects it). Pure functions: numpy in, numpy out;
:func:`sheet_registration_task` wraps the column means of two dask volumes
and the fit as one lazy task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, optimize

from .transforms import sheet_displacement

#: A motion moving no row by this many planes is below the fit's precision and not applied.
NEGLIGIBLE_PLANES = 0.1
#: Row bands measured separately for the starting line.
DEFAULT_BANDS = 8
#: Smallest band-pass sigma along z (planes): z structure finer than this is noise.
_MIN_Z_SIGMA = 1.5
#: Fine smoothing (sigma, px and planes) of the band-pass filter's low end.
_FINE_SIGMA = 0.7


@dataclass
class SheetRegistration:
    """Light-sheet alignment of channel b onto channel a of one camera.

    Attributes
    ----------
    offset_z_planes, rotation_deg : float
        The motion applied to channel b's content (see the module
        docstring); 0 and 0 when the fit fell back to no motion.
    confidence : float
        Correlation coefficient of the band-passed channel images after the
        motion, 0-1; 0 for a rejected fit.
    method : str
        'estimated', 'fallback' (confidence below the threshold or rejected:
        no motion applied), 'negligible' (no row would move by
        ``NEGLIGIBLE_PLANES``: no motion applied), 'fixed' (given, e.g.
        time-smoothed) or 'off'.
    correlation_before : float
        The same correlation without motion.
    details : dict
        The fitted values before any fallback (``estimated_offset_z_planes``,
        ``estimated_rotation_deg``), the columns used, the band estimates,
        ``rejected`` (reason or None).
    """

    offset_z_planes: float = 0.0
    rotation_deg: float = 0.0
    confidence: float = float("nan")
    method: str = "off"
    correlation_before: float = float("nan")
    details: dict = field(default_factory=dict)

    @classmethod
    def fixed(cls, offset_z_planes: float, rotation_deg: float, n_rows: int) -> "SheetRegistration":
        """Given values (e.g. time-smoothed): method 'fixed', or 'negligible' (no motion) when no row of
        an ``n_rows`` frame would move by ``NEGLIGIBLE_PLANES``."""
        offset, rotation = float(offset_z_planes), float(rotation_deg)
        details = {"estimated_offset_z_planes": offset, "estimated_rotation_deg": rotation, "rejected": None}
        if np.abs(sheet_displacement(n_rows, offset, rotation)).max() < NEGLIGIBLE_PLANES:
            return cls(0.0, 0.0, float("nan"), "negligible", float("nan"), details)
        return cls(offset, rotation, float("nan"), "fixed", float("nan"), details)

    @property
    def is_identity(self) -> bool:
        return self.offset_z_planes == 0.0 and self.rotation_deg == 0.0

    def summary(self, voxel_size_um=None) -> dict:
        """Parameters-JSON fields. With ``voxel_size_um`` (z, y, x), also the physical tilt in degrees."""
        out = {"offset_z_planes": float(self.offset_z_planes), "rotation_deg": float(self.rotation_deg),
               "channel_registration_confidence": _finite_or_none(self.confidence),
               "channel_registration_method": self.method,
               "channel_registration_rejected": self.details.get("rejected"),
               "channel_correlation_before": _finite_or_none(self.correlation_before),
               "estimated_offset_z_planes": _finite_or_none(self.details.get("estimated_offset_z_planes")),
               "estimated_rotation_deg": _finite_or_none(self.details.get("estimated_rotation_deg")),
               "channel_registration_columns": self.details.get("columns")}
        if voxel_size_um is not None:
            dz, dy = float(voxel_size_um[0]), float(voxel_size_um[1])
            out["offset_z_um"] = float(self.offset_z_planes) * dz
            out["sheet_tilt_deg_physical"] = math.degrees(math.atan(
                math.tan(math.radians(float(self.rotation_deg))) * dz / dy))
        return out


def _finite_or_none(value):
    return None if value is None or not np.isfinite(value) else float(value)


def band_pass(image, highpass_px: float = 8.0, spacing_ratio: float = 1.0) -> np.ndarray:
    """Background-subtracted, band-passed (Z, Y) image, float64, zero mean where finite.

    ``highpass_px`` is the lateral sigma (px) of the removed low
    frequencies; along z it is ``highpass_px / spacing_ratio`` planes (the
    same physical width), at least 1.5 planes. The low end is a 0.7 px/plane
    Gaussian.
    """
    image = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(image)
    filled = np.where(finite, image, np.nanmedian(image) if finite.any() else 0.0)
    filled = filled - np.percentile(filled, 5)
    z_sigma = max(_MIN_Z_SIGMA, float(highpass_px) / max(float(spacing_ratio), 1e-6))
    fine = ndimage.gaussian_filter(filled, _FINE_SIGMA, mode="nearest")
    coarse = ndimage.gaussian_filter(filled, (z_sigma, float(highpass_px)), mode="nearest")
    out = fine - coarse
    out[~finite] = np.nan
    return out


def _shifted(image: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """``out[z, y] = image[z - d(y), y]`` by cubic interpolation along z; NaN outside the stack."""
    n_planes, n_rows = image.shape
    z = np.arange(n_planes, dtype=np.float64)[:, None] - displacement[None, :]
    rows = np.broadcast_to(np.arange(n_rows, dtype=np.float64)[None, :], z.shape)
    out = ndimage.map_coordinates(image, [z, rows], order=3, mode="nearest")
    out[(z < 0) | (z > n_planes - 1)] = np.nan
    return out


def _correlation(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if weight is not None:
        ok &= weight
    if ok.sum() < 16:
        return float("nan")
    x, y = a[ok], b[ok]
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return float(np.dot(x, y) / denominator) if denominator > 0 else float("nan")


def _band_shifts(a: np.ndarray, b: np.ndarray, weight, search: int, bands: int):
    """(row centre, displacement, peak correlation) per band of rows: integer search + parabola."""
    n_planes, n_rows = a.shape
    edges = np.linspace(0, n_rows, bands + 1).astype(int)
    found = []
    for r0, r1 in zip(edges[:-1], edges[1:]):
        if r1 - r0 < 2:
            continue
        scores = []
        for s in range(-search, search + 1):
            moved = np.full((n_planes, r1 - r0), np.nan)
            if s >= 0:
                moved[s:] = b[:n_planes - s, r0:r1]
            else:
                moved[:s] = b[-s:, r0:r1]
            scores.append(_correlation(a[:, r0:r1], moved, None if weight is None else weight[:, r0:r1]))
        scores = np.nan_to_num(np.array(scores), nan=-1.0)
        i = int(np.argmax(scores))
        shift = float(i - search)
        if 0 < i < len(scores) - 1:
            left, mid, right = scores[i - 1], scores[i], scores[i + 1]
            curvature = left - 2 * mid + right
            if curvature < 0:
                shift += float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
        found.append(((r0 + r1 - 1) / 2.0, shift, float(scores[i])))
    return found


def register_sheets(image_a, image_b, *, weight=None, search_planes: float = 5.0, max_rotation_deg: float = 3.0,
                    highpass_px: float = 8.0, spacing_ratio: float = 1.0, min_confidence: float = 0.2,
                    bands: int = DEFAULT_BANDS) -> SheetRegistration:
    """Fit the light-sheet offset and tilt bringing channel b onto channel a (numpy).

    Parameters
    ----------
    image_a, image_b : array_like, shape (Z, Y)
        Channel a and b of one camera, each the mean of the same few columns
        around the channel transition (:func:`sheet_columns`).
    weight : array_like of bool, shape (Z, Y), optional
        Where the specimen is (e.g. both channels' xz coordinate masks
        finite); the correlation is taken there only.
    search_planes : float
        Largest offset searched, planes; an estimate at it is rejected.
    max_rotation_deg : float
        Largest tilt searched (voxel units); an estimate at it is rejected.
    highpass_px, spacing_ratio : float
        Band-pass filter (:func:`band_pass`); ``spacing_ratio`` is the plane
        spacing over the pixel size.
    min_confidence : float
        Below this correlation (or when rejected) the result falls back to
        no motion (method 'fallback'), keeping the fitted values in
        ``details``. A fit moving no row by ``NEGLIGIBLE_PLANES`` is not
        applied either (method 'negligible'): resampling would only blur.
    bands : int
        Bands of rows measured separately for the starting line.

    Returns
    -------
    SheetRegistration
    """
    a = band_pass(image_a, highpass_px, spacing_ratio)
    b = band_pass(image_b, highpass_px, spacing_ratio)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"image_a and image_b must be (Z, Y) images of one shape, got {a.shape} and {b.shape}")
    if not (search_planes > 0 and 0 <= max_rotation_deg < 45):
        raise ValueError(f"search_planes must be > 0 and max_rotation_deg in [0, 45), got {search_planes}, "
                         f"{max_rotation_deg}")
    weight = None if weight is None else np.asarray(weight, dtype=bool)
    if weight is not None and not weight.any():
        weight = None
    n_planes, n_rows = a.shape
    centre = (n_rows - 1) / 2.0
    search = max(1, int(math.ceil(search_planes)))
    max_slope = math.tan(math.radians(max_rotation_deg))

    def score(params) -> float:
        d = sheet_displacement(n_rows, params[0], params[1])
        value = _correlation(a, _shifted(b, d), weight)
        return -1.0 if not np.isfinite(value) else value

    before = score((0.0, 0.0))
    found = _band_shifts(a, b, weight, min(search, n_planes - 2), max(1, int(bands)))
    good = [(y, s) for y, s, c in found if c > 0.05]
    if len(good) >= 3 and max_rotation_deg > 0:
        from scipy import stats  # here, not at import: scipy.stats costs every worker ~0.2 s to import

        ys, ss = np.array(good).T
        slope, intercept, _, _ = stats.theilslopes(ss, ys - centre)
    elif good:
        slope, intercept = 0.0, float(np.median([s for _, s in good]))
    else:
        slope, intercept = 0.0, 0.0
    start = (float(np.clip(intercept, -search_planes, search_planes)),
             float(np.clip(math.degrees(math.atan(np.clip(slope, -max_slope, max_slope))), -max_rotation_deg,
                           max_rotation_deg)))
    bounds = [(-search_planes, search_planes), (-max_rotation_deg, max_rotation_deg)]
    best = optimize.minimize(lambda p: -score(p), np.array(start), method="Powell", bounds=bounds,
                             options={"xtol": 1e-3, "ftol": 1e-7})
    offset, rotation = (float(v) for v in best.x)
    after = score((offset, rotation))
    if after < before:  # no motion correlates better: keep it
        offset, rotation, after = 0.0, 0.0, before
    rejected = []
    if abs(offset) >= search_planes - 1e-2:
        rejected.append(f"offset at the search limit of {search_planes:g} planes")
    if max_rotation_deg > 0 and abs(rotation) >= max_rotation_deg - 1e-2:
        rejected.append(f"rotation at the search limit of {max_rotation_deg:g} degrees")
    confidence = 0.0 if rejected else float(np.clip(after, 0.0, 1.0))
    details = {"estimated_offset_z_planes": offset, "estimated_rotation_deg": rotation,
               "rejected": "; ".join(rejected) or None, "start": list(start),
               "bands": [{"row": y, "offset_z_planes": s, "correlation": c} for y, s, c in found]}
    if rejected or confidence < min_confidence:
        return SheetRegistration(0.0, 0.0, confidence, "fallback", before, details)
    if np.abs(sheet_displacement(n_rows, offset, rotation)).max() < NEGLIGIBLE_PLANES:
        return SheetRegistration(0.0, 0.0, confidence, "negligible", before, details)
    return SheetRegistration(offset, rotation, confidence, "estimated", before, details)


def transition_columns(transition_zy, n_columns: int, half_width: int) -> tuple[int, int]:
    """Column range ``[x0, x1)`` of ``2 * half_width + 1`` columns around the median transition column."""
    values = np.asarray(transition_zy, dtype=np.float64)
    finite = values[np.isfinite(values)]
    centre = float(np.median(finite)) if finite.size else (n_columns - 1) / 2.0
    half = int(min(max(0, half_width), (n_columns - 1) // 2))
    x0 = int(np.clip(round(centre) - half, 0, n_columns - 2 * half - 1))
    return x0, x0 + 2 * half + 1


def sheet_columns(volume, columns: tuple[int, int]):
    """Mean of columns ``[x0, x1)`` of a (Z, Y, X) volume: a lazy (Z, Y) float32 image for dask input."""
    x0, x1 = columns
    return volume[:, :, x0:x1].astype(np.float32).mean(axis=2, dtype=np.float32)


def sheet_registration_task(volume_a, volume_b, transition_zy, *, weight=None, half_width: int = 8, **options):
    """The column means of two channel volumes and :func:`register_sheets` as one lazy task.

    ``volume_a``, ``volume_b`` are dask (Z, Y, X) arrays; ``transition_zy``
    the (Z, Y) transition column map (or one column). Only the reduction
    (2 * half_width + 1 columns, averaged) leaves the workers. Returns a
    :class:`dask.delayed.Delayed` of a :class:`SheetRegistration` whose
    ``details['columns']`` names the columns used.
    """
    import dask

    columns = transition_columns(transition_zy, volume_a.shape[2], half_width)

    def fit(image_a, image_b):
        result = register_sheets(image_a, image_b, weight=weight, **options)
        result.details["columns"] = list(columns)
        return result

    return dask.delayed(fit, pure=True)(sheet_columns(volume_a, columns), sheet_columns(volume_b, columns))
