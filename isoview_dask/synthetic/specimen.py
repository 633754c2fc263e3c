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

from .cameras import (PAIR_OF, add_debris, clip_window, dark_frame, dead_pixels, debris, draw_gains,
                      draw_pair_geometry, moving_to_reference, noisy_plane, reference_affine, union)
from .optics import (MIN_SIGMA_PX, attenuation_lengths, blur_plane, blur_sigmas, detection_attenuation,
                     illuminated, illumination_lengths)
from .seeds import S_SPECIMEN, rng

if TYPE_CHECKING:
    from .spec import SyntheticSpec

__all__ = [
    "BODY_FILL",
    "NUCLEUS_TRUNCATE",
    "NUCLEUS_ZONE",
    "Model",
    "body_semi_axes",
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

        # cameras
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
        self._nuc_cache: dict[tuple[int, int], tuple] = {}

    # ------------------------------------------------------------------ geometry
    def column_direction(self, camera: int, t: int = 0) -> np.ndarray:
        """Unit specimen direction of increasing column index in a camera's raw frame."""
        ex = self.affine(camera, t)[:3, 2]
        return ex / np.linalg.norm(ex)

    def affine(self, camera: int, t: int) -> np.ndarray:
        """4x4 map of a camera's raw index (k, y, x, 1) to specimen (z, y, x, 1) µm at timepoint ``t``."""
        a, b = PAIR_OF[camera]
        A = reference_affine(a, self.shape, self.p, self.dz)
        if camera == b:
            A = A @ moving_to_reference(self.Y, self.X, self.offsets[(a, b)][t], float(self.rotations[(a, b)][t]))
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
                win = union(win, self._body_window(o + ez * depth, ey, ex))
            if win is not None:
                win = (win[0] - 2, win[1] + 2, win[2] - 2, win[3] + 2)
        if nuc is not None:
            ny, nx, rho = nuc["y"], nuc["x"], nuc["rho_px"]
            nwin = (int(np.floor((ny - rho).min())) - 1, int(np.ceil((ny + rho).max())) + 2,
                    int(np.floor((nx - rho).min())) - 1, int(np.ceil((nx + rho).max())) + 2)
            win = union(win, nwin)
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
        if win is not None:
            y0, y1, x0, x1 = win
            yy = np.arange(y0, y1, dtype=float)
            xx = np.arange(x0, x1, dtype=float)
            # planes moved per row by channel b's sheet misalignment (zero for an aligned sheet)
            rows_depth = np.zeros_like(yy) if shift is None else shift[0] + shift[1] * (yy - (Y - 1) / 2)
            coords, r2, clean = self._sample(o, ey, ex, ez, yy, xx, rows_depth, nuc, y0, x0)
            if mask_full is not None:
                mask_full[y0:y1, x0:x1] = r2 <= 1
            if clean_full is not None:
                clean_full[y0:y1, x0:x1] = clean
            emitted = clean * detection_attenuation(coords, r2, self.semi, camera, self.att_len[camera])
            if side is not None:
                travel = self.column_direction(camera, t) * (1.0 if side == 0 else -1.0)
                emitted = illuminated(emitted, coords, r2, self.semi, travel, self.ill_len[camera],
                                      s.illumination_balance, side, sigma, s.illumination_blur_px)
            else:
                emitted = blur_plane(emitted, sigma)
            E[y0:y1, x0:x1] = emitted
        active = win
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
