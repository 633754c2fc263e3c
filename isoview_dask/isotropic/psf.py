"""Point-spread functions of the two views, in the isotropic output frame.

Each view has its PSF in its own frame: sharp laterally, long along its own
detection (scan) axis. Deconvolving on VW00's isotropic grid needs each PSF
*in that grid*: warped by the linear part of the view's whole transform
(orientation, anisotropy, fine rotation), then trimmed and normalised.

* A Gaussian PSF is warped exactly: a blur of covariance ``C`` in the view's
  frame, seen through ``s_view = L s + t``, is a blur of covariance
  ``L^-1 C L^-T`` in the output frame (:func:`warped_covariance`).
* A measured PSF volume (a bead image, a TIFF with its voxel size) is
  resampled through the same map (:func:`warp_psf`), which for a Gaussian
  agrees with the exact result (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputNotFoundError, IsoviewError

__all__ = [
    "FWHM_PER_SIGMA",
    "PSF_TRIM",
    "PSFModel",
    "gaussian_covariance",
    "gaussian_kernel",
    "kernel_halo",
    "load_psf",
    "residual_covariance",
    "trim_psf",
    "view_psfs",
    "warp_psf",
    "warped_covariance",
]

#: FWHM of a Gaussian in units of its sigma.
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Kernel values below this fraction of the maximum are trimmed away (the kernel's bounding box shrinks to the
#: rest, kept centred and odd).
PSF_TRIM = 1e-4


class PSFError(IsoviewError, ValueError):
    """A PSF that cannot be used (empty, not 3-D, negative, wrong voxel size)."""


def gaussian_covariance(fwhm_lateral_um: float, fwhm_axial_um: float) -> np.ndarray:
    """The covariance (µm², (Z, Y, X)) of a Gaussian PSF in its view's own frame, axial along z."""
    if fwhm_lateral_um <= 0 or fwhm_axial_um <= 0:
        raise PSFError(f"PSF FWHM must be positive, got lateral {fwhm_lateral_um} and axial {fwhm_axial_um} µm")
    lateral = (fwhm_lateral_um / FWHM_PER_SIGMA) ** 2
    axial = (fwhm_axial_um / FWHM_PER_SIGMA) ** 2
    return np.diag([axial, lateral, lateral])


def warped_covariance(covariance_view: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """A view's PSF covariance expressed in the output (VW00) frame.

    Parameters
    ----------
    covariance_view : numpy.ndarray
        (3, 3) covariance in the view's physical frame, µm².
    transform : numpy.ndarray
        4 x 4 (or 3 x 3) map output frame -> view frame.
    """
    linear_inverse = np.linalg.inv(np.asarray(transform, float)[:3, :3])
    return linear_inverse @ np.asarray(covariance_view, float) @ linear_inverse.T


def trim_psf(kernel: np.ndarray, threshold: float = PSF_TRIM) -> np.ndarray:
    """Clip at 0, cut the border below ``threshold`` x max (staying centred and odd), normalise to sum 1."""
    kernel = np.clip(np.asarray(kernel, np.float64), 0, None)
    if kernel.ndim != 3 or kernel.max() <= 0:
        raise PSFError(f"a PSF must be a 3-D array with a positive maximum, got shape {kernel.shape}")
    keep = kernel >= threshold * kernel.max()
    centre = np.array(kernel.shape) // 2
    cut = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        used = np.nonzero(keep.any(axis=other))[0]
        half = int(max(centre[axis] - used.min(), used.max() - centre[axis]))
        cut.append(slice(centre[axis] - half, centre[axis] + half + 1))
    kernel = kernel[tuple(cut)]
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_kernel(covariance_um: np.ndarray, voxel_um: float, truncate: float = 4.5,
                    threshold: float = PSF_TRIM) -> np.ndarray:
    """A Gaussian PSF of any covariance sampled on a cubic grid, centred, trimmed and normalised.

    Parameters
    ----------
    covariance_um : numpy.ndarray
        (3, 3) covariance in the output frame, µm².
    voxel_um : float
        Grid voxel, µm.
    truncate : float
        Half-size of the sampled box in standard deviations per axis.
    threshold : float
        See :func:`trim_psf`.

    Returns
    -------
    numpy.ndarray
        float32 (odd, odd, odd), sum 1.
    """
    covariance_um = np.asarray(covariance_um, float)
    half = np.ceil(truncate * np.sqrt(np.diag(covariance_um)) / voxel_um).astype(int)
    axes = [np.arange(-h, h + 1) * voxel_um for h in half]
    d = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    q = np.einsum("...i,ij,...j->...", d, np.linalg.inv(covariance_um), d)
    return trim_psf(np.exp(-0.5 * q), threshold)


def warp_psf(kernel: np.ndarray, kernel_voxel_zyx_um: Sequence[float], transform: np.ndarray, voxel_um: float,
             threshold: float = PSF_TRIM) -> np.ndarray:
    """Resample a view's PSF volume into the output frame (cubic splines), then trim and normalise.

    Parameters
    ----------
    kernel : numpy.ndarray
        The PSF in the view's frame (Z, Y, X), its centre at the middle voxel.
    kernel_voxel_zyx_um : sequence of 3 float
        Its voxel size, µm.
    transform : numpy.ndarray
        4 x 4 (or 3 x 3) map output frame -> view frame; only its linear part matters.
    voxel_um : float
        Output voxel, µm.
    """
    kernel = np.asarray(kernel, np.float64)
    kernel_voxel = np.asarray(kernel_voxel_zyx_um, float)
    linear = np.asarray(transform, float)[:3, :3]
    centre = (np.array(kernel.shape) - 1) / 2
    # output box: the kernel's corners mapped back into the output frame
    half_view = centre * kernel_voxel
    corners = np.array(np.meshgrid(*[[-h, h] for h in half_view], indexing="ij")).reshape(3, -1).T
    reach = np.abs(corners @ np.linalg.inv(linear).T).max(axis=0)
    half = np.ceil(reach / voxel_um).astype(int)
    # output offset u (voxels) -> view index = L (u * voxel) / kernel_voxel + centre
    matrix = np.diag(1 / kernel_voxel) @ linear * voxel_um
    offset = centre - matrix @ half
    warped = ndimage.affine_transform(kernel, matrix, offset=offset, output_shape=tuple(2 * half + 1), order=3,
                                      mode="constant", cval=0.0)
    # a sampled density changes its integral with the voxel volume: normalising takes care of it
    return trim_psf(warped, threshold)


def kernel_halo(*kernels: np.ndarray) -> tuple[int, int, int]:
    """Per axis, the largest half-size of the kernels (voxels): the halo a block needs for one convolution."""
    return tuple(int(max(k.shape[axis] // 2 for k in kernels)) for axis in range(3))


@dataclass(frozen=True)
class PSFModel:
    """What each view's PSF is, in its own frame.

    Attributes
    ----------
    fwhm_um : tuple of float, optional
        Gaussian lateral and axial FWHM, µm.
    volume : numpy.ndarray, optional
        A measured PSF (Z, Y, X), centred, in the view's frame (used for both views).
    volume_voxel_um : tuple of float, optional
        The measured PSF's voxel size, µm.
    source : str
        Where it came from (for the record).
    """

    fwhm_um: tuple[float, float] | None = (0.77, 3.35)
    volume: np.ndarray | None = None
    volume_voxel_um: tuple[float, float, float] | None = None
    source: str = "gaussian"

    def to_dict(self) -> dict:
        out = {"source": self.source}
        if self.volume is None:
            out["fwhm_um"] = list(self.fwhm_um)
        else:
            out["shape"] = list(self.volume.shape)
            out["voxel_um"] = list(self.volume_voxel_um)
        return out


def load_psf(path: str | Path, voxel_zyx_um: Sequence[float]) -> PSFModel:
    """A measured PSF from a TIFF volume (Z, Y, X), recentred on its centroid and normalised.

    Raises
    ------
    InputNotFoundError
        No such file.
    PSFError
        Not a 3-D volume, or no positive signal.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"PSF file {path} does not exist")
    voxel = tuple(float(v) for v in voxel_zyx_um)
    if len(voxel) != 3 or min(voxel) <= 0:
        raise PSFError(f"PSF voxel size must be 3 positive numbers (z, y, x µm), got {voxel_zyx_um}")
    volume = np.asarray(tifffile.imread(path), np.float64)
    if volume.ndim != 3:
        raise PSFError(f"PSF {path} must be a 3-D (Z, Y, X) volume, got shape {volume.shape}")
    volume = volume - np.percentile(volume, 5)
    volume = np.clip(volume, 0, None)
    if volume.max() <= 0:
        raise PSFError(f"PSF {path} has no signal above its background")
    centroid = ndimage.center_of_mass(volume)
    centre = (np.array(volume.shape) - 1) / 2
    volume = ndimage.shift(volume, centre - np.array(centroid), order=3, mode="constant")
    return PSFModel(fwhm_um=None, volume=trim_psf(volume, 0.0), volume_voxel_um=voxel, source=str(path))


def residual_covariance(covariance_um: np.ndarray, target_fwhm_um: float, voxel_um: float) -> np.ndarray:
    """The blur left to undo when the result may keep an isotropic Gaussian of ``target_fwhm_um``.

    ``C - s^2 I`` (``s`` the target's sigma), its eigenvalues floored at
    (0.25 voxel)^2 so that it stays a proper, sampleable Gaussian.
    """
    target = (target_fwhm_um / FWHM_PER_SIGMA) ** 2
    values, vectors = np.linalg.eigh(np.asarray(covariance_um, float) - target * np.eye(3))
    values = np.maximum(values, (0.25 * voxel_um) ** 2)
    return vectors @ np.diag(values) @ vectors.T


def view_psfs(model: PSFModel, transform: np.ndarray, voxel_um: float, threshold: float = PSF_TRIM,
              target_fwhm_um: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Both views' PSFs on the output grid: VW00's (its frame is the output frame) and VW90's.

    Parameters
    ----------
    model : PSFModel
    transform : numpy.ndarray
        4 x 4 transform VW00 -> VW90 (physical µm).
    voxel_um : float
        Output voxel, µm.
    target_fwhm_um : float, optional
        Resolution the result keeps, isotropically (Gaussian PSFs only): each kernel is the part of the view's
        PSF beyond that blur (:func:`residual_covariance`). Deconvolving to the lateral resolution rather than
        to a point gives the isotropic image the microscope can resolve without amplifying noise beyond it.

    Returns
    -------
    psf00, psf90 : numpy.ndarray
        float32 kernels, centred, sum 1.
    """
    if model.volume is None:
        covariance = gaussian_covariance(*model.fwhm_um)
        covariances = [covariance, warped_covariance(covariance, transform)]
        if target_fwhm_um:
            covariances = [residual_covariance(c, target_fwhm_um, voxel_um) for c in covariances]
        return tuple(gaussian_kernel(c, voxel_um, threshold=threshold) for c in covariances)
    return (warp_psf(model.volume, model.volume_voxel_um, np.eye(4), voxel_um, threshold),
            warp_psf(model.volume, model.volume_voxel_um, transform, voxel_um, threshold))
