"""The analytic specimen and the model that renders it through any camera.

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

Beads (optional)
----------------
``beads`` sub-resolution fluorescent beads lie in the medium: Gaussian points
``A exp(-|s - c|^2 / (2 s_b^2))``, ``s_b = 0.1 µm`` (:data:`BEAD_SIGMA_UM`). A
bead's centre c is drawn uniformly (seeded by ``seed``) and kept if it lies

* outside the body by at least 2 µm beyond its smooth edge: outside the
  ellipsoid of semi-axes ``semi (1 + w) + 2 µm``;
* inside every camera's field at timepoint 0 (cameras 2/3 with the motion),
  at least ``max(3 µm, 3 S_a, 4 S_l)`` from the first and last plane and
  from the frame's edges, with ``S_a``, ``S_l`` the bead's axial and
  in-focus lateral image sigmas (below; ``sigma_l = sigma_p``);
* at least ``max(4 µm, 2 FWHM_a, 4 S_l)`` from every other bead
  (``FWHM_a`` the axial PSF's FWHM, 0 without one).

Candidates are drawn until all are placed; if 200 batches of 256 in a row
add none, the spec is refused (too many beads for the medium).

A bead is far smaller than the PSF, so it is not sampled and blurred
numerically but imaged analytically: blurred by the lateral PSF (sigma
``sigma_l`` µm, that of the plane: ``blur_sigma_px * pixel_size_um``) and the
axial PSF (``sigma_a``), it is a Gaussian of sigma
``S_l = sqrt(s_b^2 + sigma_l^2)`` across the plane and
``S_a = sqrt(s_b^2 + sigma_a^2)`` along the plane axis, of peak
``B (s_b^2 + sigma_p^2)^(3/2) / (S_a S_l^2)``, where ``B`` is
``bead_brightness`` and ``sigma_p = psf_sigma_px * pixel_size_um`` the
in-focus lateral PSF: ``B`` is the bead's peak when blurred by
``sigma_p`` in all three axes (the ideal isotropic image), and the bead's
total photons do not depend on the PSF. The detection attenuation and the
light-sheet factors (illumination sides) are those at the bead's centre.
``clean`` holds the bead sharp, of peak
``A = B ((s_b^2 + sigma_p^2) / s_b^2)^(3/2)``, sampled at the voxel centres
(far brighter than anything else: 40 x B for a 0.33 µm PSF).

The model
---------
:class:`Model` resolves a spec into everything drawn from its seed (pair
geometry, gains, the specimen, dark frames, dead pixels) and renders any
plane of any camera: it samples the specimen at the plane's pixel centres
(:mod:`.cameras` gives the geometry) and applies the optics
(:mod:`.optics`) and the camera (:mod:`.cameras`). :func:`model_for` keeps
a few models cached per process.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from scipy import ndimage

from ..errors import IsoviewError
from .cameras import (NEAR_SIGN, PAIR_OF, add_debris, clip_window, dark_frame, dead_pixels, debris, draw_gains,
                      draw_pair_geometry, motion_matrix, moving_to_reference, noisy_plane, reference_affine, union)
from .optics import (FWHM_PER_SIGMA, MIN_SIGMA_PX, attenuation_lengths, axial_nodes, blur_plane, blur_sigmas,
                     detection_attenuation, illumination_lengths, illumination_light, mix_blur)
from .seeds import S_BEADS, S_SPECIMEN, rng

if TYPE_CHECKING:
    from .spec import SyntheticSpec

__all__ = [
    "BEAD_SIGMA_UM",
    "BODY_FILL",
    "NUCLEUS_TRUNCATE",
    "NUCLEUS_ZONE",
    "Model",
    "body_semi_axes",
    "isotropic_planes",
    "model_for",
    "scatter_gaussians",
]

#: Nuclei are exactly zero beyond this many sigmas (3D radius).
NUCLEUS_TRUNCATE = 4.0
#: Body semi-axes as fractions of (L, Y * pixel, L), L the smaller of the two physical fields.
BODY_FILL = (0.30, 0.36, 0.34)
#: Nuclei lie inside this ellipsoidal radius.
NUCLEUS_ZONE = 0.85
#: Half-width (µm) of the body's smooth edge.
EDGE_UM = 1.0
TEXTURE_WAVES = 4
TEXTURE_WAVELENGTH_UM = (5.0, 20.0)
#: Nucleus amplitudes as fractions of ``photon_scale``.
NUCLEUS_AMPLITUDE = (0.6, 1.0)
#: Sigma (µm) of a fluorescent bead.
BEAD_SIGMA_UM = 0.1
#: Beads are this far (µm) at least outside the body's smooth edge ...
BEAD_BODY_CLEARANCE_UM = 2.0
#: ... at least this far from the fields' edges ...
BEAD_EDGE_MARGIN_UM = 3.0
#: ... and at least this far from each other.
BEAD_MIN_SEPARATION_UM = 4.0
#: Beads are drawn to zero beyond this many sigmas of their image.
BEAD_TRUNCATE = 5.0


def isotropic_planes(shape, pixel_size_um: float, z_step_um: float) -> int:
    """Planes of the isotropic grid: ``floor((Z - 1) * z_step_um / pixel_size_um) + 1``."""
    return int(math.floor((shape[0] - 1) * z_step_um / pixel_size_um + 1e-9)) + 1


def body_semi_axes(shape, pixel_size_um: float, z_step_um: float) -> np.ndarray:
    """Semi-axes (az, ay, ax) of the ellipsoidal body in µm for a camera shape (Z, Y, X)."""
    Z, Y, X = shape
    L = min(X * pixel_size_um, Z * z_step_um)
    return np.array([BODY_FILL[0] * L, BODY_FILL[1] * Y * pixel_size_um, BODY_FILL[2] * L])


class Model:
    """Everything a spec resolves to; renders planes of any camera."""

    def __init__(self, spec: "SyntheticSpec"):
        self.spec = spec
        s = spec
        self.shape = Z, Y, X = s.shape
        self.Z, self.Y, self.X = Z, Y, X
        self.p = float(s.pixel_size_um)
        self.dz = float(s.z_step_um)
        self.semi = body_semi_axes(self.shape, self.p, self.dz)
        self.edge_w = EDGE_UM / float(self.semi.min())
        self.level = s.body_level * s.photon_scale
        self.T = s.timepoints

        # cameras (the motion first: the affines of cameras 2/3 include it)
        self.motion = motion_matrix(s.vw90_motion)
        self.motion_inv = np.linalg.inv(self.motion) if any(s.vw90_motion) else None
        self.rotated = any(s.vw90_motion[:3])
        pairs = draw_pair_geometry(s)
        self.offset0: dict[tuple[int, int], np.ndarray] = pairs["offset0"]
        self.rotation0: dict[tuple[int, int], float] = pairs["rotation0"]
        self.offsets: dict[tuple[int, int], np.ndarray] = pairs["offsets"]
        self.rotations: dict[tuple[int, int], np.ndarray] = pairs["rotations"]
        self.drift: dict[tuple[int, int], dict] = pairs["drift"]
        self.gains = draw_gains(s)
        # optics
        self.att_len = attenuation_lengths(s, self.semi)
        self.ill_len = illumination_lengths(s, self.semi, {cam: self.column_direction(cam) for cam in range(4)})
        self.blur_sigma = blur_sigmas(s, self.semi, self.dz)
        self.axial_offsets, self.axial_weights = axial_nodes(s.axial_psf_fwhm_um,
                                                             min(s.nucleus_sigma_um[0], EDGE_UM))

        # specimen
        r = rng(s.seed, S_SPECIMEN)
        dirs = r.normal(size=(TEXTURE_WAVES, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        lam = r.uniform(*TEXTURE_WAVELENGTH_UM, TEXTURE_WAVES)
        self.wave_k = dirs * (2 * np.pi / lam)[:, None]
        self.wave_phase = r.uniform(0, 2 * np.pi, TEXTURE_WAVES)
        spacing = s.nucleus_spacing_um
        zone = np.full(3, NUCLEUS_ZONE * self.semi.max())   # a cube that still covers the body once rotated
        start = -zone - r.uniform(0, spacing, 3)
        axes = [np.arange(start[d], zone[d] + spacing, spacing) for d in range(3)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        grid = grid + r.uniform(-0.3 * spacing, 0.3 * spacing, grid.shape)
        q, rr = np.linalg.qr(r.normal(size=(3, 3)))      # random orientation of the lattice
        grid = grid @ (q * np.sign(np.diag(rr))).T
        sig = r.uniform(*s.nucleus_sigma_um, len(grid))
        amp = r.uniform(*NUCLEUS_AMPLITUDE, len(grid)) * s.photon_scale
        keep = np.sum((grid / self.semi) ** 2, axis=1) < NUCLEUS_ZONE**2
        self.nuc_centre = grid[keep]
        self.nuc_sigma = sig[keep]
        self.nuc_amp = amp[keep]

        self._dark: dict[int, np.ndarray] = {}
        self._dead: dict[int, dict] = {}
        self._nuc_cache: dict[tuple, tuple] = {}
        self._bead_cache: dict[tuple, np.ndarray] = {}

        # beads and the isotropic grid
        self.psf_sigma_um = s.psf_sigma_px * self.p
        self.axial_sigma_um = 0.0 if s.axial_psf_fwhm_um is None else s.axial_psf_fwhm_um / FWHM_PER_SIGMA
        self.bead_sigma_iso = math.sqrt(BEAD_SIGMA_UM**2 + self.psf_sigma_um**2)
        self.bead_sigma_axial = math.sqrt(BEAD_SIGMA_UM**2 + self.axial_sigma_um**2)
        self.bead_total = s.bead_brightness * (2 * math.pi) ** 1.5 * self.bead_sigma_iso**3
        self.bead_centre = self._draw_beads()
        self.iso_planes = isotropic_planes(self.shape, self.p, self.dz)

    # ------------------------------------------------------------------ geometry
    def column_direction(self, camera: int, t: int = 0) -> np.ndarray:
        """Unit specimen direction of increasing column index in a camera's raw frame."""
        ex = self.affine(camera, t)[:3, 2]
        return ex / np.linalg.norm(ex)

    def lab_affine(self, camera: int, t: int) -> np.ndarray:
        """4x4 map of a camera's raw index (k, y, x, 1) to its position (z, y, x, 1) µm in the microscope.

        That is where the unmoved specimen point lies; cameras 2/3 see the
        specimen moved by ``vw90_motion`` (see :meth:`affine`).
        """
        a, b = PAIR_OF[camera]
        A = reference_affine(a, self.shape, self.p, self.dz, self.spec.vw90_orientation)
        if camera == b:
            A = A @ moving_to_reference(self.Y, self.X, self.offsets[(a, b)][t], float(self.rotations[(a, b)][t]))
        return A

    def affine(self, camera: int, t: int) -> np.ndarray:
        """4x4 map of a camera's raw index (k, y, x, 1) to the specimen point (z, y, x, 1) µm it images.

        ``inv(M) @ lab_affine`` for cameras 2/3 with a motion ``M``, else :meth:`lab_affine`.
        """
        A = self.lab_affine(camera, t)
        if camera in (2, 3) and self.motion_inv is not None:
            A = self.motion_inv @ A
        return A

    def detection_away(self, camera: int, t: int) -> np.ndarray | None:
        """Unit specimen direction away from a camera along its detection axis, if the specimen is rotated for it.

        None when that direction is a specimen axis (the attenuation then uses
        the axis-aligned formula).
        """
        if camera not in (2, 3) or not self.rotated:
            return None
        axis = self.affine(camera, t)[:3, 0]
        return NEAR_SIGN[camera] * axis / np.linalg.norm(axis)

    def isotropic_affine(self) -> np.ndarray:
        """4x4 map of the isotropic grid's index (j, i, c, 1) to specimen (z, y, x, 1) µm.

        Rows and columns are camera 0's; plane j lies at ``z = j p - cz dz``,
        i.e. at ``j * pixel_size_um`` in VW00's physical frame.
        """
        A = reference_affine(0, self.shape, self.p, self.dz)
        A[0, 0] = self.p
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
        return debris(self.spec, camera)

    # ------------------------------------------------------------------ camera artefacts (cached)
    def dark(self, camera: int) -> np.ndarray:
        if camera not in self._dark:
            self._dark[camera] = dark_frame(self.spec, camera)
        return self._dark[camera]

    def dead(self, camera: int) -> dict:
        if camera not in self._dead:
            self._dead[camera] = dead_pixels(self.spec, camera, self.dark(camera))
        return self._dead[camera]

    # ------------------------------------------------------------------ specimen sampling
    def _nuclei(self, camera: int | str, t: int):
        """Nuclei in a camera's index coordinates (camera 'iso': the isotropic grid), sorted by plane."""
        key = (camera, t if camera in (1, 3) else 0)
        if key not in self._nuc_cache:
            if len(self._nuc_cache) > 8:
                self._nuc_cache.pop(next(iter(self._nuc_cache)))
            Ainv = np.linalg.inv(self.isotropic_affine() if camera == "iso" else self.affine(camera, t))
            idx = Ainv[:3, :3] @ self.nuc_centre.T + Ainv[:3, 3:4]
            order = np.argsort(idx[0], kind="stable")
            self._nuc_cache[key] = (idx[0][order], idx[1][order], idx[2][order], self.nuc_sigma[order],
                                    self.nuc_amp[order])
        return self._nuc_cache[key]

    def _nuclei_in_plane(self, camera: int | str, t: int, k: float, shift: tuple[float, float] | None = None):
        """The nuclei cut by plane k (fractional planes allowed): their in-plane positions, sigmas and amplitudes."""
        kn, yn, xn, sig, amp = self._nuclei(camera, t)
        spacing = self.p if camera == "iso" else self.dz
        reach = NUCLEUS_TRUNCATE * self.spec.nucleus_sigma_um[1] / spacing
        k_lo = k_hi = k
        if shift is not None:  # the sheet's depth varies with the row: k + offset + slope (y - yc)
            half = abs(shift[1]) * (self.Y - 1) / 2
            k_lo, k_hi = k + shift[0] - half, k + shift[0] + half
        lo, hi = np.searchsorted(kn, k_lo - reach, "left"), np.searchsorted(kn, k_hi + reach, "right")
        if lo >= hi:
            return None
        depth = k if shift is None else k + shift[0] + shift[1] * (yn[lo:hi] - (self.Y - 1) / 2)
        dd = (depth - kn[lo:hi]) * spacing
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

    def _sample(self, o, ey, ex, ez, yy, xx, rows_depth, nuc, y0: int, x0: int):
        """The specimen on a window: (specimen coordinates (z, y, x) µm, squared ellipsoidal radius, clean photons).

        ``o`` is the specimen position of pixel (0, 0) of the plane, ``ey``,
        ``ex``, ``ez`` the specimen steps of one row, column and plane,
        ``yy``, ``xx`` the window's rows and columns and ``rows_depth`` the
        planes each row is displaced by (a misaligned sheet; else zeros).
        """
        s = self.spec
        coords = [((o[d] + ey[d] * yy + ez[d] * rows_depth)[:, None] + (ex[d] * xx)[None, :]).astype(np.float32)
                  for d in range(3)]
        r2 = np.zeros((len(yy), len(xx)), np.float32)
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
            clean += scatter_gaussians(y0, x0, len(yy), len(xx), nuc)
        return coords, r2, clean

    # ------------------------------------------------------------------ rendering
    def _plane_window(self, o, ey, ex, ez, shift, nuc):
        """Window (y0, y1, x0, x1) holding the plane's section through the body and its nuclei, or None."""
        if shift is None:
            win = self._body_window(o, ey, ex)
        else:  # a tilted sheet: the union of the sections at depths spanning its rows
            half = abs(shift[1]) * (self.Y - 1) / 2
            win = None
            for depth in np.linspace(shift[0] - half, shift[0] + half, 9):
                win = union(win, self._body_window(o + ez * depth, ey, ex))
            if win is not None:
                win = (win[0] - 2, win[1] + 2, win[2] - 2, win[3] + 2)
        if nuc is not None:
            ny, nx, rho = nuc["y"], nuc["x"], nuc["rho_px"]
            nwin = (int(np.floor((ny - rho).min())) - 1, int(np.ceil((ny + rho).max())) + 2,
                    int(np.floor((nx - rho).min())) - 1, int(np.ceil((nx + rho).max())) + 2)
            win = union(win, nwin)
        return win

    def render_plane(self, camera: int, t: int, k: int, kinds: Iterable[str],
                     side: int | None = None) -> dict[str, np.ndarray]:
        """Render one plane; ``side`` 0/1 is the illumination side (channel a/b), None without sides.

        With an axial PSF the emitted signal is integrated over the axial
        quadrature nodes (planes ``k + offset / dz``) before the 2D blur;
        without one there is a single node, the plane itself.
        """
        kinds = set(kinds)
        s, Y, X = self.spec, self.Y, self.X
        A = self.affine(camera, t)
        ey, ex, ez = A[:3, 1], A[:3, 2], A[:3, 0]
        shift = self.sheet_shift(camera, side)
        single = len(self.axial_offsets) == 1
        middle = len(self.axial_offsets) // 2
        nodes = []          # (plane origin, nuclei, weight) per quadrature node; the middle one is the plane itself
        win = None
        for n, (offset, weight) in enumerate(zip(self.axial_offsets, self.axial_weights)):
            kk = k if n == middle else k + offset / self.dz
            o = A[:3, 0] * kk + A[:3, 3]
            nuc = self._nuclei_in_plane(camera, t, kk, shift)
            win = union(win, self._plane_window(o, ey, ex, ez, shift, nuc))
            nodes.append((o, nuc, None if single else np.float32(weight)))
        sigma = float(self.blur_sigma[camera][k])
        pad = int(math.ceil(4.0 * sigma)) + 1 if sigma > MIN_SIGMA_PX else 0
        if side is not None:
            pad = int(math.ceil(4.0 * math.hypot(sigma, s.illumination_blur_px))) + 1
        if win is not None:
            win = (win[0] - pad, win[1] + pad, win[2] - pad, win[3] + pad)
        win = clip_window(win, Y, X)

        out: dict[str, np.ndarray] = {}
        E = np.zeros((Y, X), np.float32)
        clean_full = np.zeros((Y, X), np.float32) if "clean" in kinds else None
        mask_full = np.zeros((Y, X), bool) if "body_mask" in kinds else None
        travel = None if side is None else self.column_direction(camera, t) * (1.0 if side == 0 else -1.0)
        away = self.detection_away(camera, t)
        if win is not None:
            y0, y1, x0, x1 = win
            yy = np.arange(y0, y1, dtype=float)
            xx = np.arange(x0, x1, dtype=float)
            # planes moved per row by channel b's sheet misalignment (zero for an aligned sheet)
            rows_depth = np.zeros_like(yy) if shift is None else shift[0] + shift[1] * (yy - (Y - 1) / 2)
            acc = far = None
            for n, (o, nuc, weight) in enumerate(nodes):
                coords, r2, clean = self._sample(o, ey, ex, ez, yy, xx, rows_depth, nuc, y0, x0)
                if n == middle:
                    if mask_full is not None:
                        mask_full[y0:y1, x0:x1] = r2 <= 1
                    if clean_full is not None:
                        clean_full[y0:y1, x0:x1] = clean
                emitted = clean * detection_attenuation(coords, r2, self.semi, camera, self.att_len[camera], away)
                if side is not None:
                    emitted, node_far = illumination_light(emitted, coords, r2, self.semi, travel,
                                                           self.ill_len[camera], s.illumination_balance, side)
                    if n == middle:
                        far = node_far
                if weight is None:
                    acc = emitted
                elif acc is None:
                    acc = weight * emitted
                else:
                    acc += weight * emitted
            if side is not None:
                acc = mix_blur(acc, far, sigma, s.illumination_blur_px)
            else:
                acc = blur_plane(acc, sigma)
            E[y0:y1, x0:x1] = acc
        active = win
        if len(self.bead_centre):
            active = union(active, self._add_beads(E, clean_full, camera, t, k, side, shift, sigma, travel, away))
        outlier = self.is_outlier(camera, t)
        if outlier:
            E *= np.float32(s.outlier_dim)
            active = union(active, add_debris(E, self.debris(camera)))
        gain = self.gains[camera]
        if "ideal" in kinds:
            out["ideal"] = E * np.float32(gain)
        if clean_full is not None:
            out["clean"] = clean_full
        if mask_full is not None:
            out["body_mask"] = mask_full
        if "raw" in kinds:
            out["raw"] = noisy_plane(s, camera, t, k, E, active, outlier, side, gain, self.dark(camera),
                                     self.dead(camera))
        return out

    # ------------------------------------------------------------------ beads
    def _draw_beads(self) -> np.ndarray:
        """Bead centres (n, 3), specimen µm (see "Beads" in the module docstring)."""
        s = self.spec
        n = s.beads
        if n == 0:
            return np.zeros((0, 3))
        S_l = self.bead_sigma_iso          # in-focus lateral image sigma
        margin = max(BEAD_EDGE_MARGIN_UM, 3.0 * self.bead_sigma_axial, 4.0 * S_l)
        separation = max(BEAD_MIN_SEPARATION_UM, 2.0 * self.axial_sigma_um * FWHM_PER_SIGMA, 4.0 * S_l)
        outer = self.semi * (1 + self.edge_w) + BEAD_BODY_CLEARANCE_UM
        inv = [np.linalg.inv(self.affine(c, 0)) for c in range(4)]
        step = np.array([self.dz, self.p, self.p])
        lo = margin / step
        hi = np.array(self.shape, float) - 1 - margin / step
        half = np.array([(self.Z - 1) * self.dz, (self.Y - 1) * self.p, (self.X - 1) * self.p]) / 2
        r = rng(s.seed, S_BEADS)
        found = np.zeros((n, 3))
        count = stale = 0
        while count < n and stale < 200:        # give up after 200 batches that add nothing
            cand = r.uniform(-half, half, (256, 3))
            ok = np.sum((cand / outer) ** 2, axis=1) >= 1
            for Ainv in inv:
                idx = cand @ Ainv[:3, :3].T + Ainv[:3, 3]
                ok &= np.all((idx >= lo) & (idx <= hi), axis=1)
            stale += 1
            for c in cand[ok]:
                if count == 0 or np.min(np.sum((found[:count] - c) ** 2, axis=1)) >= separation**2:
                    found[count] = c
                    count += 1
                    stale = 0
                    if count == n:
                        break
        if count < n:
            raise IsoviewError(f"could not place {n} beads (placed {count}) in the medium of a "
                               f"{'x'.join(map(str, self.shape))} field at least {margin:.3g} µm from its edges, "
                               f"{BEAD_BODY_CLEARANCE_UM:g} µm outside the body and {separation:.3g} µm apart; "
                               "ask for fewer beads or a larger field")
        return found

    def _beads(self, camera: int | str, t: int) -> np.ndarray:
        """Bead centres (n, 3) in a camera's index coordinates (camera 'iso': the isotropic grid)."""
        key = (camera, t if camera in (1, 3) else 0)
        if key not in self._bead_cache:
            if len(self._bead_cache) > 8:
                self._bead_cache.pop(next(iter(self._bead_cache)))
            A = self.isotropic_affine() if camera == "iso" else self.affine(camera, t)
            Ainv = np.linalg.inv(A)
            self._bead_cache[key] = self.bead_centre @ Ainv[:3, :3].T + Ainv[:3, 3]
        return self._bead_cache[key]

    def _add_beads(self, E, clean, camera: int, t: int, k: int, side, shift, sigma: float, travel, away):
        """Add the beads near plane k to the expected photons ``E`` (and ``clean``); returns the window touched."""
        s = self.spec
        idx = self._beads(camera, t)
        depth = np.full(len(idx), float(k))
        if shift is not None:       # a misaligned sheet images plane k + offset + slope (y - yc) at row y
            depth = depth + shift[0] + shift[1] * (idx[:, 1] - (self.Y - 1) / 2)
        dd = (depth - idx[:, 0]) * self.dz        # µm along the plane axis
        near = np.flatnonzero(np.abs(dd) <= BEAD_TRUNCATE * self.bead_sigma_axial)
        if not len(near):
            return None
        # attenuation (and light sheet) at the bead centres
        pts = self.bead_centre[near].T.astype(np.float32)[:, None, :]      # (3, 1, m)
        coords = [pts[d] for d in range(3)]
        r2 = sum((coords[d] / np.float32(self.semi[d])) ** 2 for d in range(3))
        factor = detection_attenuation(coords, r2, self.semi, camera, self.att_len[camera], away)
        far = np.zeros_like(factor)
        if side is not None:
            factor, far = illumination_light(factor, coords, r2, self.semi, travel, self.ill_len[camera],
                                             s.illumination_balance, side)
        factor, far = factor.astype(np.float64).ravel(), far.astype(np.float64).ravel()
        # lateral image sigmas (µm): the plane's blur, and the far side's with illumination sides
        lateral = [math.hypot(BEAD_SIGMA_UM, sigma * self.p)]
        if side is not None:
            lateral.append(math.hypot(BEAD_SIGMA_UM, math.hypot(sigma, s.illumination_blur_px) * self.p))
        reach = int(math.ceil(BEAD_TRUNCATE * max(lateral) / self.p)) + 1
        sharp_reach = int(math.ceil(BEAD_TRUNCATE * BEAD_SIGMA_UM / self.p)) + 1
        sharp_peak = self.bead_total / ((2 * math.pi) ** 1.5 * BEAD_SIGMA_UM**3)
        touched = None
        for j, b in enumerate(near):
            kb, yb, xb = idx[b]
            axial = math.exp(-dd[b] ** 2 / (2 * self.bead_sigma_axial**2)) / (math.sqrt(2 * math.pi)
                                                                              * self.bead_sigma_axial)
            win = clip_window((int(round(yb)) - reach, int(round(yb)) + reach + 1,
                               int(round(xb)) - reach, int(round(xb)) + reach + 1), self.Y, self.X)
            if win is not None:
                y0, y1, x0, x1 = win
                ry2 = ((np.arange(y0, y1) - yb) * self.p) ** 2
                rx2 = ((np.arange(x0, x1) - xb) * self.p) ** 2
                weights = (1.0,) if side is None else (1.0 - far[j], far[j])
                img = 0.0
                for S, w in zip(lateral, weights):
                    img = img + w * np.exp(-(ry2[:, None] + rx2[None, :]) / (2 * S**2)) / (2 * math.pi * S**2)
                E[y0:y1, x0:x1] += (self.bead_total * factor[j] * axial * img).astype(np.float32)
                touched = union(touched, win)
            if clean is not None and abs(dd[b]) <= BEAD_TRUNCATE * BEAD_SIGMA_UM:
                cwin = clip_window((int(round(yb)) - sharp_reach, int(round(yb)) + sharp_reach + 1,
                                    int(round(xb)) - sharp_reach, int(round(xb)) + sharp_reach + 1), self.Y, self.X)
                if cwin is not None:
                    y0, y1, x0, x1 = cwin
                    r2s = (((np.arange(y0, y1) - yb) * self.p) ** 2)[:, None] + \
                        (((np.arange(x0, x1) - xb) * self.p) ** 2)[None, :] + dd[b] ** 2
                    clean[y0:y1, x0:x1] += (sharp_peak * np.exp(-r2s / (2 * BEAD_SIGMA_UM**2))).astype(np.float32)
        return touched

    # ------------------------------------------------------------------ the ideal isotropic image
    def render_isotropic(self, j0: int, j1: int) -> np.ndarray:
        """Planes [j0, j1) of the ideal isotropic image (float32 (j1 - j0, Y, X), camera 0's ideal units).

        The unmoved specimen sampled on the isotropic grid (:meth:`isotropic_affine`),
        blurred by the in-focus lateral PSF in all three axes (a Gaussian of
        sigma ``psf_sigma_px`` voxels, zero outside the volume, truncated at
        4 sigma), beads imaged analytically (peak ``bead_brightness``),
        times camera 0's gain. No attenuation, growth of the blur with
        depth, axial PSF, noise or dead pixels. Each plane depends only on its
        index: planes within the blur's reach on both sides are rendered
        too and dropped.
        """
        sigma = float(self.spec.psf_sigma_px)
        halo = int(4.0 * sigma + 0.5) if sigma > MIN_SIGMA_PX else 0
        a, b = max(0, j0 - halo), min(self.iso_planes, j1 + halo)
        A = self.isotropic_affine()
        ey, ex, ez = A[:3, 1], A[:3, 2], A[:3, 0]
        vol = np.zeros((b - a, self.Y, self.X), np.float32)
        for j in range(a, b):
            o = A[:3, 0] * j + A[:3, 3]
            nuc = self._nuclei_in_plane("iso", 0, j)
            win = clip_window(self._plane_window(o, ey, ex, ez, None, nuc), self.Y, self.X)
            if win is not None:
                y0, y1, x0, x1 = win
                yy = np.arange(y0, y1, dtype=float)
                xx = np.arange(x0, x1, dtype=float)
                vol[j - a, y0:y1, x0:x1] = self._sample(o, ey, ex, ez, yy, xx, np.zeros_like(yy), nuc, y0, x0)[2]
        if sigma > MIN_SIGMA_PX:
            vol = ndimage.gaussian_filter(vol, sigma, mode="constant", truncate=4.0)
        vol = vol[j0 - a:j1 - a]
        S = self.bead_sigma_iso / self.p                   # voxels
        reach = int(math.ceil(BEAD_TRUNCATE * S)) + 1
        for c in self._beads("iso", 0):
            lo = [max(int(round(v)) - reach, 0) for v in c]
            hi = [min(int(round(v)) + reach + 1, n) for v, n in zip(c, (self.iso_planes, self.Y, self.X))]
            lo[0], hi[0] = max(lo[0], j0), min(hi[0], j1)
            if any(h <= l for l, h in zip(lo, hi)):
                continue
            g = [np.exp(-(np.arange(l, h) - v) ** 2 / (2 * S**2)) for l, h, v in zip(lo, hi, c)]
            block = self.spec.bead_brightness * g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
            vol[lo[0] - j0:hi[0] - j0, lo[1]:hi[1], lo[2]:hi[2]] += block.astype(np.float32)
        return vol * np.float32(self.gains[0])

    def render_slab(self, camera: int, t: int, k0: int, k1: int, kinds: Sequence[str],
                    side: int | None = None) -> dict[str, np.ndarray]:
        """Planes [k0, k1) of one camera, one array (k1 - k0, Y, X) per kind."""
        dtypes = {"raw": np.uint16, "ideal": np.float32, "clean": np.float32, "body_mask": bool}
        out = {kind: np.empty((k1 - k0, self.Y, self.X), dtypes[kind]) for kind in kinds}
        for i, k in enumerate(range(k0, k1)):
            plane = self.render_plane(camera, t, k, kinds, side)
            for kind in kinds:
                out[kind][i] = plane[kind]
        return out


def scatter_gaussians(y0: int, x0: int, h: int, w: int, nuc: dict) -> np.ndarray:
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


_MODELS: dict[str, Model] = {}


def model_for(spec: "SyntheticSpec") -> Model:
    """The (cached, per process) model of a spec."""
    key = spec._key()
    model = _MODELS.get(key)
    if model is None:
        if len(_MODELS) >= 4:
            _MODELS.pop(next(iter(_MODELS)))
        model = _MODELS[key] = Model(spec)
    return model
