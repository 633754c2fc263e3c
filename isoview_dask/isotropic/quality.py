"""Measures of a reconstruction: correlation with a reference, bead widths, anisotropy.

Used by the stage's diagnostics (bead FWHM when beads are present), by the
tests against synthetic truth and by ``benchmarks/isotropic.py``.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import OptimizeWarning, curve_fit

__all__ = ["bead_fwhm", "correlation", "find_beads", "profile_fwhm"]

_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of two equally shaped volumes (optionally within a mask)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if mask is not None:
        a, b = a[mask], b[mask]
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def profile_fwhm(profile: np.ndarray) -> float:
    """FWHM (samples) of a 1-D peak at the profile's centre: a Gaussian-plus-offset fit."""
    x = np.arange(len(profile), dtype=float) - len(profile) // 2
    offset0 = float(np.min(profile))
    amplitude0 = float(profile[len(profile) // 2] - offset0)
    if amplitude0 <= 0:
        return float("nan")

    def model(x, amplitude, centre, sigma, offset):
        return amplitude * np.exp(-0.5 * ((x - centre) / sigma) ** 2) + offset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        try:
            (amplitude, centre, sigma, offset), _ = curve_fit(
                model, x, profile, p0=(amplitude0, 0.0, 1.5, offset0), maxfev=4000)
        except (RuntimeError, ValueError):
            return float("nan")
    if amplitude <= 0 or abs(centre) > 2 or not np.isfinite(sigma):
        return float("nan")
    return float(abs(sigma) * _FWHM)


def bead_fwhm(volume: np.ndarray, positions_voxels: np.ndarray, half_width: int = 12) -> np.ndarray:
    """FWHM (voxels) of beads along z, y and x.

    Each bead is located at the brightest voxel within 2 voxels of its given
    position; a Gaussian plus offset is fitted to the 1-D profiles through that
    voxel along each axis (``2 * half_width + 1`` samples).

    Parameters
    ----------
    volume : numpy.ndarray
        (Z, Y, X) volume.
    positions_voxels : numpy.ndarray
        (N, 3) approximate bead centres, voxel indices.
    half_width : int
        Half-length of each profile, voxels.

    Returns
    -------
    numpy.ndarray
        (N, 3) FWHM along (z, y, x), voxels; NaN where a bead is too near the border or the fit fails.
    """
    volume = np.asarray(volume, np.float64)
    out = np.full((len(positions_voxels), 3), np.nan)
    for n, position in enumerate(np.asarray(positions_voxels)):
        centre = np.rint(position).astype(int)
        lo = np.maximum(centre - 2, 0)
        hi = np.minimum(centre + 3, volume.shape)
        if np.any(hi <= lo):
            continue
        patch = volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        peak = lo + np.array(np.unravel_index(np.argmax(patch), patch.shape))
        for axis in range(3):
            a, b = peak[axis] - half_width, peak[axis] + half_width + 1
            if a < 0 or b > volume.shape[axis]:
                continue
            index = list(peak)
            index[axis] = slice(a, b)
            out[n, axis] = profile_fwhm(volume[tuple(index)])
    return out


def find_beads(volume: np.ndarray, count: int = 50, min_distance: int = 8, threshold: float = 0.5) -> np.ndarray:
    """Bright isolated point-like spots: local maxima above ``threshold`` x the volume's maximum.

    Returns
    -------
    numpy.ndarray
        (N, 3) voxel positions (Z, Y, X), brightest first, at most ``count``.
    """
    volume = np.asarray(volume, np.float32)
    maxima = ndimage.maximum_filter(volume, size=2 * min_distance + 1, mode="constant") == volume
    maxima &= volume >= threshold * float(volume.max())
    positions = np.argwhere(maxima)
    order = np.argsort(volume[tuple(positions.T)])[::-1]
    return positions[order][:count]
