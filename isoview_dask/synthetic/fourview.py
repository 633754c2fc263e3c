"""Two orthogonal pair-fused views (VW00, VW90) of one analytic specimen, with the exact answer.

This is the ground truth of the isotropic reconstruction, made in memory in a
few seconds: the specimen (a smooth ellipsoidal body, Gaussian nuclei and
sub-resolution beads in the medium) is defined analytically in VW00's
physical frame (µm, (z, y, x), origin at VW00's voxel 0), and every image is
rendered exactly, not by warping a grid:

* a Gaussian object of covariance ``S`` imaged through a Gaussian PSF of
  covariance ``P`` is the Gaussian of covariance ``S + P`` with the same
  integral, so nuclei and beads are rendered as such in each view's own
  frame;
* the body's edge is an error-function profile across the surface whose
  width adds the PSF's variance along the surface normal (exact for a flat
  surface; the body is large against the PSF).

VW00 samples the specimen every ``z_factor`` output voxels along z and is
blurred by the axial PSF along z. VW90 sees the specimen *moved* by a rigid
motion ``m(s) = R (s - c) + c + t`` (rotation about the specimen centre
``c``, then translation), through an orientation (signed axis permutation
``O``) whose scan axis is a lateral axis of VW00, sampled every
``z_factor`` voxels along its own z and blurred along it. The transform the
registration must find is ``T = O m`` (see
:mod:`isoview_dask.isotropic.geometry` for the convention). The ideal
isotropic image is the unmoved specimen blurred by the lateral PSF in all
three axes, on the output grid (voxel = the lateral pixel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation
from scipy.special import erfc

from ..isotropic.geometry import orientation_matrix

__all__ = ["FourViewSpec", "FourViewTruth", "fourview"]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class FourViewSpec:
    """What :func:`fourview` renders.

    Attributes
    ----------
    shape : tuple of int
        The ideal isotropic grid (Z, Y, X), voxels; ``shape[0] - 1`` and the
        scan-axis extent of VW90 should be multiples of ``z_factor``.
    pixel_um : float
        Lateral pixel = isotropic voxel, µm.
    z_factor : int
        Plane spacing of both views in pixels (z step = ``z_factor * pixel_um``).
    psf_fwhm_um : tuple of float
        Lateral and axial FWHM of the Gaussian PSF, µm.
    orientation : str
        VW90's orientation (a name of :data:`~isoview_dask.isotropic.geometry.ORIENTATIONS`).
    rotation_deg : tuple of float
        Motion of the specimen between the views: rotation angles about z, y, x (degrees, applied in that order
        as intrinsic rotations about the specimen centre).
    translation_um : tuple of float
        Motion: translation (z, y, x), µm.
    nuclei, beads : int
        Number of nuclei (inside the body) and of beads (in the medium).
    body_level, bead_level : float
        Brightness of the body, and of a bead's peak in the ideal image (a nucleus peaks at 0.6-1).
    photons : float
        Expected photons at a nucleus peak (sets the Poisson noise); 0 for noise-free views.
    read_noise : float
        Gaussian read noise, photons.
    seed : int
    """

    shape: tuple[int, int, int] = (96, 96, 96)
    pixel_um: float = 0.406
    z_factor: int = 5
    psf_fwhm_um: tuple[float, float] = (0.77, 3.35)
    orientation: str = "+y,+z,+x"
    rotation_deg: tuple[float, float, float] = (2.0, -1.0, 1.0)
    translation_um: tuple[float, float, float] = (1.2, -2.0, 1.5)
    nuclei: int = 400
    beads: int = 16
    photons: float = 1000.0
    read_noise: float = 2.0
    body_level: float = 0.03
    bead_level: float = 2.0
    seed: int = 0

    @property
    def z_step_um(self) -> float:
        return self.z_factor * self.pixel_um

    @property
    def sigma_um(self) -> tuple[float, float]:
        """Lateral and axial PSF sigma, µm."""
        return tuple(f / FWHM_PER_SIGMA for f in self.psf_fwhm_um)


@dataclass
class FourViewTruth:
    """The rendered views and what they should give.

    Attributes
    ----------
    vw00, vw90 : numpy.ndarray
        float32 views (Z, Y, X) in their own frames, in photons.
    voxel00, voxel90 : tuple of float
        Their voxel sizes (Z, Y, X), µm.
    ideal : numpy.ndarray
        float32 ideal isotropic image on the output grid (VW00's frame, voxel ``pixel_um``).
    transform : numpy.ndarray
        4 x 4 true transform VW00 -> VW90, physical µm.
    beads_um : numpy.ndarray
        (N, 3) bead centres in VW00's frame, µm.
    mean_true : numpy.ndarray
        The mean of both views resampled onto the output grid with the true transform (cubic splines).
    """

    spec: FourViewSpec
    vw00: np.ndarray
    vw90: np.ndarray
    voxel00: tuple[float, float, float]
    voxel90: tuple[float, float, float]
    ideal: np.ndarray
    transform: np.ndarray
    beads_um: np.ndarray
    body_centre_um: np.ndarray
    body_axes_um: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def specimen_points_um(self) -> np.ndarray:
        """Points spread over the body (VW00 frame, µm): where registration accuracy is judged."""
        rng = np.random.default_rng(12345)
        u = rng.normal(size=(2000, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        r = rng.uniform(0, 1, size=(2000, 1)) ** (1 / 3)
        return self.body_centre_um + u * r * self.body_axes_um


def _gaussian_into(out: np.ndarray, voxel: np.ndarray, mean: np.ndarray, cov: np.ndarray, peak: float) -> None:
    """Add ``peak * exp(-d' C^-1 d / 2)`` sampled on ``out``'s grid (voxel (i) at i * voxel µm)."""
    std = np.sqrt(np.diag(cov))
    lo = np.maximum(np.floor((mean - 4.5 * std) / voxel).astype(int), 0)
    hi = np.minimum(np.ceil((mean + 4.5 * std) / voxel).astype(int) + 1, out.shape)
    if np.any(hi <= lo):
        return
    axes = [np.arange(a, b) * v - m for a, b, v, m in zip(lo, hi, voxel, mean)]
    d = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    q = np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += (peak * np.exp(-0.5 * q)).astype(out.dtype)


class _Specimen:
    def __init__(self, spec: FourViewSpec):
        rng = np.random.default_rng([spec.seed, 31])
        extent = (np.asarray(spec.shape) - 1) * spec.pixel_um
        self.centre = extent / 2 + rng.uniform(-0.03, 0.03, 3) * extent
        self.axes = extent * np.array([0.30, 0.30, 0.32]) * rng.uniform(0.92, 1.05, 3)
        self.edge_um = 1.0
        nuclei = []
        while len(nuclei) < spec.nuclei:  # inside a cube around the body: accepted with probability ~0.5
            u = rng.uniform(-0.85, 0.85, 3)
            if np.sum(u ** 2) < 0.85 ** 2:
                nuclei.append(self.centre + u * self.axes)
        self.nuclei = np.array(nuclei).reshape(-1, 3)
        self.nucleus_sigma = rng.uniform(0.25, 0.6, len(self.nuclei))
        self.nucleus_peak = rng.uniform(0.6, 1.0, len(self.nuclei))
        beads = []
        margin = 3.0
        for _ in range(200 * spec.beads):
            if len(beads) == spec.beads:
                break
            p = rng.uniform(margin + 0.12 * extent, extent - margin - 0.12 * extent)
            u = (p - self.centre) / self.axes
            if np.sum(u ** 2) > 1.25 ** 2 and all(np.linalg.norm(p - b) > 4.0 for b in beads):
                beads.append(p)
        if len(beads) < spec.beads:
            raise ValueError(f"cannot place {spec.beads} beads in the medium of a {spec.shape} volume: "
                             f"make the volume larger or ask for fewer beads")
        self.beads = np.array(beads).reshape(-1, 3)
        self.bead_sigma = 0.1

    def render(self, spec: FourViewSpec, shape, voxel, to_frame: np.ndarray, psf_cov: np.ndarray) -> np.ndarray:
        """The specimen seen in a frame ``s_frame = to_frame @ s + t`` (4 x 4), blurred by ``psf_cov`` (frame µm)."""
        linear, shift = to_frame[:3, :3], to_frame[:3, 3]
        voxel = np.asarray(voxel, float)
        out = np.zeros(shape, np.float32)
        # body: erf edge across the surface, its width widened by the PSF along the normal
        grids = np.meshgrid(*[np.arange(n) * v for n, v in zip(shape, voxel)], indexing="ij")
        frame_points = np.stack(grids, axis=-1)
        inverse = np.linalg.inv(linear)
        s = (frame_points - shift) @ inverse.T - self.centre
        u = s / self.axes
        r = np.sqrt(np.sum(u ** 2, axis=-1))
        grad = u / self.axes / np.maximum(r, 1e-6)[..., None]  # gradient of r in specimen µm
        grad_norm = np.maximum(np.linalg.norm(grad, axis=-1), 1e-9)
        normal_specimen = grad / grad_norm[..., None]
        normal_frame = normal_specimen @ linear.T
        sigma_n2 = np.einsum("...i,ij,...j->...", normal_frame, psf_cov, normal_frame)
        distance = (r - 1.0) / grad_norm
        width = np.sqrt(self.edge_um ** 2 + sigma_n2)
        out += (spec.body_level * 0.5 * erfc(distance / (math.sqrt(2) * width))).astype(np.float32)
        del grids, frame_points, s, u, r, grad, normal_specimen, normal_frame, sigma_n2, distance, width
        for centre, sigma, peak in zip(self.nuclei, self.nucleus_sigma, self.nucleus_peak):
            _add_blob(out, voxel, linear, shift, centre, sigma, peak, psf_cov)
        # a bead's brightness is its peak in the ideal image (object blurred by the lateral PSF)
        sigma_lateral2 = spec.sigma_um[0] ** 2
        bead_peak = spec.bead_level * math.sqrt(((self.bead_sigma ** 2 + sigma_lateral2) / self.bead_sigma ** 2) ** 3)
        for centre in self.beads:
            _add_blob(out, voxel, linear, shift, centre, self.bead_sigma, bead_peak, psf_cov)
        return out


def _add_blob(out, voxel, linear, shift, centre, sigma, peak, psf_cov):
    cov_object = linear @ (sigma ** 2 * np.eye(3)) @ linear.T
    cov = cov_object + psf_cov
    scale = math.sqrt(np.linalg.det(cov_object) / np.linalg.det(cov))
    _gaussian_into(out, voxel, linear @ centre + shift, cov, peak * scale)


def fourview(spec: FourViewSpec | None = None) -> FourViewTruth:
    """Render VW00, VW90 and the ideal isotropic image of one synthetic specimen.

    Parameters
    ----------
    spec : FourViewSpec, optional

    Returns
    -------
    FourViewTruth
    """
    spec = spec or FourViewSpec()
    specimen = _Specimen(spec)
    p, f = spec.pixel_um, spec.z_factor
    extent = (np.asarray(spec.shape) - 1) * p
    sigma_lat, sigma_ax = spec.sigma_um
    psf_view = np.diag([sigma_ax ** 2, sigma_lat ** 2, sigma_lat ** 2])
    rng = np.random.default_rng([spec.seed, 77])

    ideal = specimen.render(spec, spec.shape, (p, p, p), np.eye(4), sigma_lat ** 2 * np.eye(3))

    voxel00 = (f * p, p, p)
    shape00 = (int(math.floor(extent[0] / (f * p) + 1e-9)) + 1, spec.shape[1], spec.shape[2])
    vw00 = specimen.render(spec, shape00, voxel00, np.eye(4), psf_view)

    orientation = orientation_matrix(spec.orientation)
    motion = np.eye(4)
    rotation = Rotation.from_euler("ZYX", spec.rotation_deg, degrees=True).as_matrix()
    motion[:3, :3] = rotation
    motion[:3, 3] = specimen.centre - rotation @ specimen.centre + np.asarray(spec.translation_um)
    corners = np.array(np.meshgrid(*[[0, e] for e in extent], indexing="ij")).reshape(3, -1).T
    turned = corners @ orientation.T
    oriented = np.eye(4)
    oriented[:3, :3] = orientation
    oriented[:3, 3] = -turned.min(axis=0)
    extent90 = turned.max(axis=0) - turned.min(axis=0)
    voxel90 = (f * p, p, p)
    shape90 = tuple(int(math.floor(e / v + 1e-9)) + 1 for e, v in zip(extent90, voxel90))
    transform = oriented @ motion
    vw90 = specimen.render(spec, shape90, voxel90, transform, psf_view)

    if spec.photons > 0:
        scale = spec.photons
        vw00 = (rng.poisson(np.clip(vw00, 0, None) * scale) + rng.normal(0, spec.read_noise, vw00.shape)) / scale
        vw90 = (rng.poisson(np.clip(vw90, 0, None) * scale) + rng.normal(0, spec.read_noise, vw90.shape)) / scale
    return FourViewTruth(spec=spec, vw00=np.asarray(vw00, np.float32), vw90=np.asarray(vw90, np.float32),
                         voxel00=voxel00, voxel90=voxel90, ideal=ideal, transform=transform,
                         beads_um=specimen.beads.copy(), body_centre_um=specimen.centre.copy(),
                         body_axes_um=specimen.axes.copy())
