"""The PSF measured on the beads of a recording: lateral and axial FWHM of one view.

Sub-resolution fluorescent beads in the medium image the PSF directly. A
view is searched for bright, isolated local maxima (a dask ``map_overlap``
over the whole volume, then only the few brightest candidates are read
back), a Gaussian plus offset is fitted to the profiles through each along
y, x and z (:func:`~isoview_dask.isotropic.quality.profile_fwhm`; along z the
samples are the planes themselves, so the fit needs about a FWHM of two
planes or more), and the point-like ones are kept: nuclei and other
structures are wider laterally than the narrowest spots. The result is the
median over the kept beads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import dask
import dask.array as da
import numpy as np
from scipy import ndimage

from .quality import profile_fwhm

__all__ = ["BeadPSF", "estimate_psf_fwhm"]

#: Candidates read back and fitted, brightest first.
MAX_CANDIDATES = 200
#: Kept beads: lateral FWHM within this factor of the narrowest quartile's median.
POINT_LIKE = 1.3
#: A bead's peak stands this many robust standard deviations (of its window) above the window's median.
MIN_SNR = 10.0


@dataclass(frozen=True)
class BeadPSF:
    """The PSF measured on beads.

    Attributes
    ----------
    fwhm_um : tuple of float
        Lateral and axial FWHM, µm (medians over the kept beads).
    spread_um : tuple of float
        Median absolute deviation of each, µm.
    beads : int
        Beads kept.
    candidates : int
        Spots fitted.
    """

    fwhm_um: tuple[float, float]
    spread_um: tuple[float, float]
    beads: int
    candidates: int

    def to_dict(self) -> dict:
        return {"fwhm_um": list(self.fwhm_um), "spread_um": list(self.spread_um), "beads": self.beads,
                "candidates": self.candidates}


def _maxima(block: np.ndarray, threshold: float, radius: Sequence[int]) -> np.ndarray:
    size = tuple(2 * r + 1 for r in radius)
    return (block >= threshold) & (ndimage.maximum_filter(block, size=size, mode="nearest") == block)


def estimate_psf_fwhm(view, voxel_zyx_um: Sequence[float], *, min_beads: int = 5,
                      threshold_percentile: float = 99.0) -> BeadPSF | None:
    """Lateral and axial PSF FWHM of a view from the beads it shows.

    Parameters
    ----------
    view : dask.array.Array or numpy.ndarray
        The view (Z, Y, X), background-subtracted; z is its detection (scan) axis.
    voxel_zyx_um : sequence of 3 float
        Its voxel size, µm.
    min_beads : int
        Fewer point-like spots than this give None.
    threshold_percentile : float
        Candidates are local maxima at or above this percentile of a subsample of the view.

    Returns
    -------
    BeadPSF or None
    """
    view = view if isinstance(view, da.Array) else da.from_array(np.asarray(view), chunks=(16, 256, 256))
    voxel = np.asarray(voxel_zyx_um, float)
    # profiles long enough for the blur expected along each axis (about 4 µm laterally, 12 µm axially)
    half = (max(3, math.ceil(6.0 / voxel[0])), max(5, math.ceil(2.5 / voxel[1])), max(5, math.ceil(2.5 / voxel[2])))
    step = tuple(max(1, n // 64) for n in view.shape)
    sample = np.asarray(view[::step[0], ::step[1], ::step[2]].compute(), np.float32)
    threshold = float(np.percentile(sample, threshold_percentile))
    if not threshold > 0:
        return None
    radius = (max(1, half[0] // 2), half[1], half[2])
    peaks = da.map_overlap(_maxima, view.astype(np.float32), depth=radius, boundary="none", dtype=bool,
                           threshold=threshold, radius=radius)
    positions = np.asarray(da.argwhere(peaks).compute())
    inside = np.all((positions >= half) & (positions < np.array(view.shape) - half), axis=1)
    positions = positions[inside]
    if len(positions) == 0:
        return None
    values = np.asarray(view.vindex[tuple(positions.T)].compute(), float)
    positions = positions[np.argsort(values)[::-1][:MAX_CANDIDATES]]
    windows = dask.compute(*[view[p[0] - half[0]:p[0] + half[0] + 1, p[1] - half[1]:p[1] + half[1] + 1,
                                  p[2] - half[2]:p[2] + half[2] + 1] for p in positions])
    fits = []
    for window in windows:
        window = np.asarray(window, np.float64)
        centre = tuple(h for h in half)
        background = np.median(window)
        noise = 1.4826 * np.median(np.abs(window - background)) + 1e-12
        if window[centre] - background < MIN_SNR * noise:
            continue  # a noise peak, not a bead
        fz = profile_fwhm(window[:, centre[1], centre[2]])
        fy = profile_fwhm(window[centre[0], :, centre[2]])
        fx = profile_fwhm(window[centre[0], centre[1], :])
        # a PSF spans more than one sample: narrower fits are noise spikes or hot pixels
        if all(np.isfinite((fz, fy, fx))) and min(fy, fx) >= 1.2 and fz >= 1.0:
            fits.append((fz * voxel[0], 0.5 * (fy * voxel[1] + fx * voxel[2])))
    if not fits:
        return None
    fits = np.array(fits)
    lateral = fits[:, 1]
    narrowest = np.median(np.sort(lateral)[:max(1, len(lateral) // 4)])
    kept = fits[lateral <= POINT_LIKE * narrowest]
    if len(kept) < min_beads:
        return None
    median = np.median(kept, axis=0)
    spread = np.median(np.abs(kept - median), axis=0)
    return BeadPSF(fwhm_um=(float(median[1]), float(median[0])), spread_um=(float(spread[1]), float(spread[0])),
                   beads=int(len(kept)), candidates=int(len(fits)))
