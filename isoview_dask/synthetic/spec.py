"""What to generate: :class:`SyntheticSpec`, validated and with its derived fields resolved."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from ..metadata import CAMERA_PIXEL_UM
from .cameras import PAIRS, VW90_ORIENTATIONS, pair_key
from .optics import FWHM_PER_SIGMA
from .specimen import NUCLEUS_ZONE, body_semi_axes

__all__ = ["DERIVED", "SyntheticSpec", "check_fields", "is_number"]


def is_number(value: Any) -> bool:
    """True for a finite int or float (numpy scalars included), False for bools and everything else."""
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
        Write ``ideal``, ``clean`` and ``body_mask`` per camera and timepoint
        (and, with any of the four-view fields below set, the ideal
        isotropic image per timepoint).
    specimen, first_timepoint : int
        ``SPM``/``SPC`` number and the ``TM`` number of timepoint index 0.
    wavelength_nm, exposure_time_ms, timepoint_interval_s
        XML metadata.

    Four views (isotropic reconstruction)
    -------------------------------------
    Every default leaves the data as without these fields.

    axial_psf_fwhm_um : float, optional
        FWHM (µm) of the PSF along each camera's plane (detection) axis; the
        lateral PSF stays ``psf_sigma_px``. None (default): no axial blur.
        See "Axial PSF" in :mod:`isoview_dask.synthetic.optics`.
    beads : int
        Number of sub-resolution fluorescent beads (Gaussian sigma 0.1 µm)
        in the medium: outside the body, inside the field every camera sees
        with a margin from its edges. See :mod:`isoview_dask.synthetic.specimen`.
    bead_brightness : float, optional
        A bead's peak photons in an image blurred by the lateral PSF alone
        (the ideal isotropic image, before gain); default 3 x
        ``photon_scale`` (three times the brightest nucleus).
    vw90_motion : (a_z, a_y, a_x, t_z, t_y, t_x)
        Rigid motion of the specimen seen by cameras 2 and 3 (rotations in
        degrees about the specimen axes through its centre, within +-45;
        translation in µm, within a quarter of the smallest field): they
        image specimen point s at ``R s + t``, ``R = R_z R_y R_x``. See
        :mod:`isoview_dask.synthetic.cameras`.
    vw90_orientation : 'reflection' or 'rotation'
        Camera 2's column direction: 'reflection' (default) columns along
        +z, so that camera 0's axes map to camera 2's by a reflection;
        'rotation' columns along -z (a proper rotation).
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
    axial_psf_fwhm_um: float | None = None
    beads: int = 0
    bead_brightness: float | None = None
    vw90_motion: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    vw90_orientation: str = "reflection"
    #: Names of the fields that were left as None and derived here (re-derived by :meth:`replace`).
    derived: frozenset = field(default=frozenset(), init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("derived", frozenset(name for name in DERIVED if getattr(self, name) is None))

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
            ok = is_number(value) and (value > lo if lo_open else value >= lo) and value <= hi
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
                    offsets[pair_key(key)] = (dy, dx)
            except (TypeError, ValueError, AttributeError):
                fail("offsets", "a mapping {(0, 1): (dy, dx), (2, 3): (dy, dx)}")
            if any(not (math.isfinite(v) and abs(v) <= limit) for o in offsets.values() for v in o):
                fail("offsets", f"finite offsets within +-{limit:g} px (a quarter of the frame)")
        set_("offsets", offsets)
        rotations = {}
        if self.rotations_deg is not None:
            try:
                for key, value in dict(self.rotations_deg).items():
                    rotations[pair_key(key)] = float(value)
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
                if is_number(value):
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

        # four views
        number("axial_psf_fwhm_um", 0.0, 100.0, lo_open=True, optional=True)
        integer("beads", 0)
        if self.beads > 10_000:
            fail("beads", "at most 10000 beads")
        if self.bead_brightness is None:
            set_("bead_brightness", 3.0 * self.photon_scale)
        number("bead_brightness", 0.0, 1e7, lo_open=True)
        try:
            motion = tuple(float(v) for v in self.vw90_motion)
            if len(motion) != 6 or isinstance(self.vw90_motion, (str, bytes)):
                raise ValueError
        except (TypeError, ValueError):
            fail("vw90_motion", "six numbers (a_z, a_y, a_x in degrees, t_z, t_y, t_x in µm)")
        reach = min(Z * self.z_step_um, Y * self.pixel_size_um, X * self.pixel_size_um) / 4.0
        if not all(math.isfinite(v) for v in motion) or any(abs(v) > 45.0 for v in motion[:3]) \
                or any(abs(v) > reach for v in motion[3:]):
            fail("vw90_motion", f"finite angles within +-45 degrees and translations within +-{reach:.3g} µm "
                                "(a quarter of the smallest field)")
        set_("vw90_motion", motion)
        if self.vw90_orientation not in VW90_ORIENTATIONS:
            fail("vw90_orientation", " or ".join(repr(v) for v in VW90_ORIENTATIONS))

        # the lattice must stay finite
        semi = body_semi_axes(shape, self.pixel_size_um, self.z_step_um)
        n_est = 4.19 * np.prod(semi * NUCLEUS_ZONE) / self.nucleus_spacing_um**3
        if n_est > 5e7:
            fail("nucleus_spacing_um", f"a spacing giving fewer than 5e7 nuclei (about {n_est:.3g})")
        if 3 * s_hi > semi.min():
            fail("nucleus_sigma_um", f"sigmas well below the body's smallest semi-axis ({semi.min():.3g} µm)")

    # ------------------------------------------------------------------ presets
    @classmethod
    def _preset(cls, base: dict, overrides: Mapping[str, Any]) -> "SyntheticSpec":
        check_fields(overrides)
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
    def isotropic(cls, **overrides: Any) -> "SyntheticSpec":
        """Four views for the isotropic reconstruction: 24 planes of 96 x 96, z step 5 pixels (tests, demos).

        Pixel 0.406 µm, z step 2.03 µm, lateral PSF FWHM 0.77 µm (no growth
        with depth), axial PSF FWHM 3.35 µm, 20 beads, and the specimen moved
        for cameras 2/3 by 2.0, 1.0 and -1.5 degrees about z, y and x and
        (1.5, -1.0, 2.0) µm. Both views see the whole body: the planes cover
        48.7 µm, the frames 39.0 µm, the body's largest extent 28 µm.
        """
        return cls._preset(dict(shape=(24, 96, 96), pixel_size_um=0.406, z_step_um=2.03,
                                psf_sigma_px=0.77 / FWHM_PER_SIGMA / 0.406, blur_growth_px=0.0,
                                axial_psf_fwhm_um=3.35, beads=20, vw90_motion=(2.0, 1.0, -1.5, 1.5, -1.0, 2.0),
                                nucleus_spacing_um=7.0), overrides)

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
        check_fields(data)
        return cls(**dict(data))

    def replace(self, **overrides: Any) -> "SyntheticSpec":
        """A copy with some fields changed (validated again).

        Fields that were derived (left as None: ``z_step_um``, ``n_dead``,
        ``channel_of_camera``, ``pixel_size_um``, ``magnification`` or
        ``bead_brightness``) are
        derived again from the new values unless given. Prefer this to
        :func:`dataclasses.replace`, which would keep the old derived values.
        """
        check_fields(overrides)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        values.update({name: None for name in self.derived})
        values.update(overrides)
        return type(self)(**values)

    @property
    def voxel_size_um(self) -> tuple[float, float, float]:
        """(plane spacing, row spacing, column spacing) in µm of every camera's raw frame."""
        return (float(self.z_step_um), float(self.pixel_size_um), float(self.pixel_size_um))

    @property
    def uses_four_view_features(self) -> bool:
        """True when any of the four-view fields (axial PSF, beads, VW90 motion or orientation) is not its default."""
        return (self.axial_psf_fwhm_um is not None or self.beads > 0 or any(self.vw90_motion)
                or self.vw90_orientation != "reflection")

    @property
    def axial_psf_sigma_um(self) -> float | None:
        """Sigma (µm) of the axial PSF, or None."""
        return None if self.axial_psf_fwhm_um is None else self.axial_psf_fwhm_um / FWHM_PER_SIGMA

    @property
    def psf_sigma_um(self) -> float:
        """Sigma (µm) of the lateral PSF of in-focus planes (``psf_sigma_px * pixel_size_um``)."""
        return float(self.psf_sigma_px) * float(self.pixel_size_um)

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


DERIVED = ("channel_of_camera", "pixel_size_um", "magnification", "z_step_um", "n_dead", "bead_brightness")


def check_fields(names: Iterable[str]) -> None:
    """Raise ValueError naming any of ``names`` that is not a :class:`SyntheticSpec` field."""
    known = {f.name for f in dataclasses.fields(SyntheticSpec) if f.init}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"SyntheticSpec: unknown field(s) {', '.join(unknown)}")
