"""Registration of the opposing camera onto the reference camera of a pair.

After the gross mirror geometry is undone (:func:`~isoview_dask.fuse.view_transform`),
the two cameras of a pair still differ by a small in-plane translation and
rotation (mechanical alignment). They are estimated on reduced data, never
on the full volumes: each camera is reduced to one (Y, X) image on the
transition surface, the middle of the specimen along z where both cameras
look through the same depth of tissue (equally blurred, equally dimmed).
A max projection over the whole depth would instead compare the sharp near
half of one camera with the blurred far half of the other, which biases the
estimate (see DESIGN "Camera-pair registration").

The estimate, on those two images:

1. Both are high-pass filtered (a difference of Gaussians, which also
   removes the background level) and normalised; each gets a weight, a
   taper at the frame's edges times its softened foreground mask.
2. Translation: an integer cross-correlation peak searched only within
   ``search_px``, then refined to ``1 / upsample`` pixel by
   :func:`skimage.registration.phase_cross_correlation` (unnormalised,
   which is the more robust to noise) between the reference and the
   moving image resampled with the current estimate. Both are multiplied
   by one common weight (the reference's times the resampled moving
   one), so that no structure is skewed differently in the two by a
   weight's slope, and the residual shift is small.
3. Rotation: the normalised cross-correlation of the same two weighted
   images, maximised over the angle by a grid search and a bounded
   scalar minimisation (Brent's method with golden-section steps).
4. Steps 2 and 3 alternate; large frames go through a coarse-to-fine
   pyramid of 2x2-binned images first so the rotation grid stays short.

Convention: see :mod:`isoview_dask.fuse.transforms`;
``apply_inplane_transform(moving_flipped, result.offset_yx, result.rotation_deg)``
aligns the moving camera to the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
from scipy import ndimage, optimize
from skimage.registration import phase_cross_correlation

from ..correct.arrays import as_dask
from .planefilters import dilate_plane, gaussian_plane
from .surface import coordinate_depths, fitted_surface, surface_image
from .splines import affine_bspline_plane
from .transforms import affine_plane, cubic_plane, inplane_matrix

METHOD = "phase-correlation translation + normalised-correlation rotation search on the transition surface"
#: Frames larger than this (pixels, either side) are first registered on binned copies.
COARSE_SIZE = 256
#: Grid step of the rotation search: the angle moving a pixel at the half-diagonal by this many pixels.
ROTATION_STEP_PX = 1.0
#: Largest image side (pixels) on which the rotation is searched; larger images are
#: used, binned 2 x 2 down to it, for the rotation, and at full size for the final
#: sub-pixel translation only.
FINE_SIZE = 1024
#: Dilation (pixels) and softening (sigma, pixels) of the foreground masks used as weights.
MASK_DILATION_PX = 3
MASK_SOFTENING_PX = 2.0


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of :func:`register_pair` / :func:`register_images`.

    Attributes
    ----------
    offset_yx : (float, float)
        Translation ``t = (dy, dx)`` in pixels of the moving (flipped)
        camera relative to the reference (the module's convention).
    rotation_deg : float
        Rotation ``theta`` in degrees about the frame centre.
    confidence : float
        In [0, 1]: the normalised cross-correlation of the two high-passed,
        aligned images over their overlap (clipped at 0). Near 1 for a
        clean match, near 0 for unrelated images; 0 when the estimate hit
        the search limits and was rejected.
    error : float
        Translation-invariant normalised RMS error of the final phase
        correlation (:func:`skimage.registration.phase_cross_correlation`),
        0 for identical images.
    method : str
        What was done, for the record.
    details : dict
        Plain values about the estimate: the search limits, whether a
        limit was hit (``rejected``), the pyramid levels, the surface.
    """

    offset_yx: tuple[float, float]
    rotation_deg: float
    confidence: float
    error: float
    method: str = METHOD
    details: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Plain-value form for a JSON record."""
        return {"offset_yx": list(self.offset_yx), "rotation_deg": self.rotation_deg,
                "confidence": self.confidence, "error": self.error, "method": self.method,
                "details": dict(self.details)}


# --------------------------------------------------------------------------------------------- public API


def register_pair(reference, moving_flipped, *, mask_ref=None, mask_mov=None, xy_coordinate_mask=None,
                  search_px: float = 30.0, max_rotation_deg: float = 2.0, upsample: int = 100,
                  slab_planes: float = 1.0, surface_degree: int = 2,
                  highpass_sigmas: tuple[float, float] = (1.0, 6.0), iterations: int = 2) -> RegistrationResult:
    """Sub-pixel translation and small rotation of the opposing camera, from reduced data.

    Computes :func:`registration_task` (same parameters) on the current
    dask scheduler and returns its result.

    Parameters
    ----------
    reference : dask or numpy array, shape (Z, Y, X)
        Reference camera, background-corrected (dark frame subtracted).
    moving_flipped : dask or numpy array, shape (Z, Y, X)
        Opposing camera after :func:`view_transform` (same plane indices).
    mask_ref, mask_mov : dask or numpy array of bool, shape (Z, Y, X), optional
        Foreground masks of the two (the moving one flipped like the
        camera). They weight the images (so background noise and debris
        outside the specimen do not count) and, without
        ``xy_coordinate_mask``, locate the middle of the specimen.
    xy_coordinate_mask : array_like, shape (Y, X), optional
        Mean z of the foreground per pixel (NaN where none), e.g. the
        average of both cameras' maps. Default: the two masks' maps (the
        moving one need not be aligned), or the middle plane without masks.
        The images are taken on a smooth surface fitted to it (see Notes).
        A pair ``(depth_ref, depth_mov)`` of the two masks' maps, already
        computed, is accepted too (their fit, without reading the masks).
    search_px : float
        Largest translation (pixels, per axis) searched for. An estimate
        beyond it is clamped to it and rejected (confidence 0).
    max_rotation_deg : float
        Largest rotation (degrees) searched for; 0 estimates translation
        only. An estimate at the limit is rejected (confidence 0).
    upsample : int
        Sub-pixel resolution of the translation: ``1 / upsample`` pixel.
    slab_planes : float
        Half-width (planes, >= 1) of the slab around the surface that is
        averaged into each image (:func:`surface_image`). 1 interpolates
        the volume at the surface; more planes average noise away but mix
        depths one camera sees better than the other.
    surface_degree : int
        Degree of the polynomial surface fitted to the depth map
        (:func:`~isoview_dask.fuse.surface.fitted_surface`); 0 is one plane.
    highpass_sigmas : (float, float)
        Sigmas (pixels) of the difference of Gaussians: the small one
        suppresses noise, the large one removes background and the
        specimen's overall shape.
    iterations : int
        Alternations of rotation and translation refinement at full
        resolution (>= 1).

    Returns
    -------
    RegistrationResult
        ``offset_yx`` (dy, dx) in pixels and ``rotation_deg`` such that
        ``apply_inplane_transform(moving_flipped, offset_yx, rotation_deg)``
        matches ``reference``.

    Notes
    -----
    The images are taken on the middle of the specimen along z, where the
    two cameras look through the same depth of tissue: a robust
    low-order polynomial fit (:func:`~isoview_dask.fuse.surface.fitted_surface`)
    to the average of the two cameras' mean foreground depths. It follows
    the specimen's tilt and curvature but not the per-pixel noise of the
    depth maps, which (mixing planes one or the other camera sees better
    in different parts of the frame) biased the rotation by up to 0.1
    degree on the test data.

    Only reductions are computed: the masks' coordinate means (one pass
    over each mask) and four (Y, X) images (two cameras, two masks) over
    the few planes the surface passes through. 2D inputs (Y, X) skip the
    reduction and are registered as they are.
    """
    task = registration_task(reference, moving_flipped, mask_ref=mask_ref, mask_mov=mask_mov,
                             xy_coordinate_mask=xy_coordinate_mask, search_px=search_px,
                             max_rotation_deg=max_rotation_deg, upsample=upsample, slab_planes=slab_planes,
                             surface_degree=surface_degree, highpass_sigmas=highpass_sigmas, iterations=iterations)
    return dask.compute(task)[0]


def registration_task(reference, moving_flipped, *, mask_ref=None, mask_mov=None, xy_coordinate_mask=None,
                      search_px: float = 30.0, max_rotation_deg: float = 2.0, upsample: int = 100,
                      slab_planes: float = 1.0, surface_degree: int = 2,
                      highpass_sigmas: tuple[float, float] = (1.0, 6.0), iterations: int = 2):
    """The registration of :func:`register_pair` as one lazy graph, for a scheduler to run.

    Parameters are those of :func:`register_pair`. The graph holds the
    reductions (the four transition-surface images) and, as one task fed
    by them, the image registration (:func:`register_images`): computed on
    a cluster, no pixel of it runs where the graph was built. Only the
    depth maps (when ``xy_coordinate_mask`` is not given) are computed
    here, because the surface fitted to them says which planes to read.

    Returns
    -------
    dask.delayed.Delayed
        Computes to a :class:`RegistrationResult`.
    """
    options = dict(search_px=search_px, max_rotation_deg=max_rotation_deg, upsample=upsample,
                   highpass_sigmas=highpass_sigmas, iterations=iterations)
    if reference.ndim == 2:
        _check_options(**options)
        return dask.delayed(register_images, pure=True)(reference, moving_flipped, mask_ref=mask_ref,
                                                        mask_mov=mask_mov, **options)
    _check_options(**options)
    reference, moving_flipped = as_dask(reference), as_dask(moving_flipped)
    if reference.ndim != 3 or tuple(moving_flipped.shape) != tuple(reference.shape):
        raise ValueError("reference and moving_flipped must be (Z, Y, X) arrays of the same shape, got "
                         f"{tuple(reference.shape)} and {tuple(moving_flipped.shape)}")
    for name, mask in (("mask_ref", mask_ref), ("mask_mov", mask_mov)):
        if mask is not None and tuple(mask.shape) != tuple(reference.shape):
            raise ValueError(f"{name} must have the volume's shape {tuple(reference.shape)}, "
                             f"got {tuple(mask.shape)}")
    n_planes = reference.shape[0]
    if xy_coordinate_mask is None:
        depth_maps = coordinate_depths(mask_ref, mask_mov)
    elif isinstance(xy_coordinate_mask, (tuple, list)) and len(xy_coordinate_mask) == 2:
        depth_maps = [None if m is None else np.asarray(m, dtype=np.float64) for m in xy_coordinate_mask]
    else:
        depth_maps = [np.asarray(xy_coordinate_mask, dtype=np.float64), None]
    surface = fitted_surface(*depth_maps, n_planes, degree=surface_degree)
    images = [None if v is None else surface_image(v, surface, slab_planes)
              for v in (reference, moving_flipped, mask_ref, mask_mov)]
    details = {"reduction": "transition-surface slab", "slab_planes": float(slab_planes),
               "surface_median_plane": float(np.median(surface)),
               "surface_range_planes": [float(np.min(surface)), float(np.max(surface))]}
    return dask.delayed(_register_surface_images, pure=True)(*images, options=options, details=details)


def _register_surface_images(ref_image, mov_image, fg_ref, fg_mov, *, options: dict,
                             details: dict) -> RegistrationResult:
    """Register the two surface images (masks as weights, where given) and note how they were made."""
    result = register_images(ref_image, mov_image, mask_ref=None if fg_ref is None else fg_ref >= 0.5,
                             mask_mov=None if fg_mov is None else fg_mov >= 0.5, **options)
    result.details.update(details)
    return result


def _check_options(*, search_px, max_rotation_deg, upsample, highpass_sigmas, iterations) -> None:
    """The parameter checks of :func:`register_images`, made before a graph is built."""
    if not (search_px >= 0 and math.isfinite(search_px)):
        raise ValueError(f"search_px must be a finite number >= 0, got {search_px!r}")
    if not (0 <= max_rotation_deg <= 45):
        raise ValueError(f"max_rotation_deg must lie in [0, 45], got {max_rotation_deg!r}")
    if int(upsample) < 1 or int(iterations) < 1:
        raise ValueError(f"upsample and iterations must be >= 1, got {upsample!r} and {iterations!r}")
    small, large = (float(s) for s in highpass_sigmas)
    if not 0 <= small < large:
        raise ValueError(f"highpass_sigmas must be (small, large) with 0 <= small < large, got {highpass_sigmas!r}")


def register_images(reference, moving, *, mask_ref=None, mask_mov=None, search_px: float = 30.0,
                    max_rotation_deg: float = 2.0, upsample: int = 100,
                    highpass_sigmas: tuple[float, float] = (1.0, 6.0), iterations: int = 2) -> RegistrationResult:
    """Register two (Y, X) images (e.g. transition-surface images or projections).

    Parameters
    ----------
    reference, moving : array_like, shape (Y, X)
        The reference image and the flipped moving camera's image.
    mask_ref, mask_mov : array_like of bool, shape (Y, X), optional
        Foreground of each (weights; an empty mask is ignored).
    search_px, max_rotation_deg, upsample, highpass_sigmas, iterations
        As for :func:`register_pair`.

    Returns
    -------
    RegistrationResult
        In the convention of :mod:`isoview_dask.fuse.transforms`.
    """
    # Single precision throughout: the images are high-passed to unit RMS, so float32 keeps ~1e-7
    # of their range, far below the 1 / upsample pixel resolution; its FFTs and OpenCV's linear
    # warps of the weights run 3-10x faster than in double precision.
    reference = np.asarray(reference, dtype=np.float32)
    moving = np.asarray(moving, dtype=np.float32)
    if reference.ndim != 2 or moving.shape != reference.shape:
        raise ValueError(f"reference and moving must be (Y, X) images of the same shape, got "
                         f"{reference.shape} and {moving.shape}")
    if min(reference.shape) < 16:
        raise ValueError(f"images must be at least 16 x 16 pixels, got {reference.shape}")
    _check_options(search_px=search_px, max_rotation_deg=max_rotation_deg, upsample=upsample,
                   highpass_sigmas=highpass_sigmas, iterations=iterations)
    small, large = (float(s) for s in highpass_sigmas)

    taper = int(math.ceil(2 * large))
    images = [*_prepare(reference, mask_ref, small, large, taper), *_prepare(moving, mask_mov, small, large, taper)]
    pyramid = [images]  # (reference, its weight, moving, its weight), finest first
    while max(images[0].shape) > COARSE_SIZE and min(images[0].shape) >= 64:
        images = [_bin2(image) for image in images]
        pyramid.append(images)

    estimate = _Estimate(search_px, max_rotation_deg, int(upsample))
    coarsest = len(pyramid) - 1
    # The rotation search (many resamplings) stops at the first level no larger than
    # FINE_SIZE; finer levels only refine the translation (a few resamplings each).
    fine = min(level for level in range(len(pyramid)) if max(pyramid[level][0].shape) <= FINE_SIZE) \
        if max(pyramid[-1][0].shape) <= FINE_SIZE else coarsest
    evaluations = 0
    for level in range(coarsest, -1, -1):
        if level < coarsest:
            evaluations += matcher.evaluations
        matcher = _Matcher(*pyramid[level], binned=level > 0)
        scale = 2.0**level
        if level == coarsest:
            estimate.start(matcher, scale)
        else:
            estimate.offset = estimate.offset * 2.0
            if level >= fine:
                estimate.refine(matcher, scale, rounds=1, span_steps=2.0)
        if level == fine:
            estimate.refine(matcher, scale, rounds=int(iterations), span_steps=1.0)
        elif level < fine:
            estimate._translate(matcher, scale)
    return estimate.result(matcher, len(pyramid), evaluations)


# --------------------------------------------------------------------------------------------- internals


def _prepare(image: np.ndarray, mask, small: float, large: float, taper: int) -> tuple[np.ndarray, np.ndarray]:
    """High-pass filtered image and its weight (edge taper times softened foreground mask), float32.

    Non-finite pixels (not recorded) are set to the image's median first
    and get weight 0. The high-pass image has unit RMS over the weight
    (zeros if featureless).
    """
    image = image.copy()
    finite = np.isfinite(image)
    if not finite.all():
        image[~finite] = np.median(image[finite]) if finite.any() else 0.0
    highpass = gaussian_plane(image, small) - gaussian_plane(image, large)
    weight = (_edge_taper(image.shape, taper) * finite).astype(np.float32)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} does not match the image shape {image.shape}")
        if mask.any():
            grown = dilate_plane(mask, MASK_DILATION_PX)
            weight = weight * gaussian_plane(grown.astype(np.float32), MASK_SOFTENING_PX)
    rms = math.sqrt(float(np.mean(np.square(highpass * weight), dtype=np.float64)))
    return (highpass / np.float32(rms) if rms > 0 else highpass), weight


def _edge_taper(shape, width: int) -> np.ndarray:
    """Raised-cosine ramp from 0 to 1 over ``width`` pixels at every frame edge (against FFT wrap-around)."""
    profiles = []
    for n in shape:
        k = max(1, min(width, n // 4))
        profile = np.ones(n)
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(k) + 0.5) / k)
        profile[:k] = ramp
        profile[n - k:] = ramp[::-1]
        profiles.append(profile)
    return profiles[0][:, None] * profiles[1][None, :]


def _bin2(image: np.ndarray) -> np.ndarray:
    """Mean of 2 x 2 blocks (an odd last row or column is dropped)."""
    h, w = (s // 2 * 2 for s in image.shape)
    return image[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def _rotation_step_deg(shape) -> float:
    """Angle that moves a pixel at the frame's half-diagonal by ROTATION_STEP_PX pixels."""
    half_diagonal = math.hypot((shape[0] - 1) / 2, (shape[1] - 1) / 2)
    return math.degrees(ROTATION_STEP_PX / half_diagonal)


class _Matcher:
    """Resamples the moving image for trial transforms and scores them against the reference.

    Both images are compared under one common weight, the product of the
    reference's weight and the resampled moving weight: a weight that
    differed between the two (each camera's own edge taper or mask) would
    skew structures on its slopes differently in the two images and bias
    the estimate.
    """

    def __init__(self, reference: np.ndarray, ref_weight: np.ndarray, moving: np.ndarray, mov_weight: np.ndarray,
                 binned: bool = False):
        self.binned = binned  # a level of the pyramid above the frame: smooth enough for cubic convolution
        self.reference = reference
        self.ref_weight = ref_weight
        self.moving = moving
        self.mov_weight = mov_weight
        self.shape = reference.shape
        self.coefficients = ndimage.spline_filter(moving, order=3, mode="mirror")  # float64: no slower
        # Pixels where the reference's weight is 0 have common weight 0 whatever the moving image is
        # there: the resampling skips them (about half of a frame around a specimen).
        self.support = ref_weight > 0
        self.centre = (np.asarray(self.shape, dtype=float) - 1.0) / 2.0
        self.evaluations = 0

    def warp(self, offset, rotation_deg: float, search: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The moving image sampled at ``R (q - c) + c + t`` and the common weight (0 outside the overlap).

        Both float32. The image is interpolated with cubic B-splines; for the
        trial angles of a rotation ``search`` on a binned level of the pyramid,
        by cubic convolution (:func:`~isoview_dask.fuse.transforms.cubic_plane`,
        20-30x faster, less accurate: the full-size level, where the result is
        refined, always uses B-splines; on small frames, which have no binned
        level, it moved rotations by a tenth of a degree). The weight is resampled linearly with ``cval`` 0, which also
        zeroes every pixel whose source lies outside the moving frame.
        """
        rotation = inplane_matrix(rotation_deg)
        shift = self.centre + np.asarray(offset, float) - rotation @ self.centre
        warped = cubic_plane(self.moving, rotation, shift, self.shape) if search and self.binned else None
        if warped is None:
            warped = affine_bspline_plane(self.coefficients, rotation, shift, self.shape, where=self.support)
        weight = affine_plane(self.mov_weight, rotation, shift, self.shape, order=1, cval=0.0)
        self.evaluations += 1
        return warped, weight * self.ref_weight

    def weighted_pair(self, offset, rotation_deg: float, search: bool = False
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reference and resampled moving image, both multiplied by the common weight, and the weight."""
        warped, weight = self.warp(offset, rotation_deg, search)
        return self.reference * weight, warped * weight, weight

    def correlation(self, offset, rotation_deg: float, search: bool = False) -> float:
        """Normalised cross-correlation of the weighted images over their overlap (``search``: see :meth:`warp`)."""
        a, b, weight = self.weighted_pair(offset, rotation_deg, search)
        inside = weight > 0
        if inside.sum() < 16:
            return 0.0
        a = a[inside]
        b = b[inside]
        a = a - np.float32(a.mean(dtype=np.float64))
        b = b - np.float32(b.mean(dtype=np.float64))
        # elementwise sums rather than np.dot: BLAS threads only add overhead at this size; sums
        # accumulate in double precision, so the angle search sees a smooth objective
        denominator = math.sqrt(float(np.sum(a * a, dtype=np.float64)) * float(np.sum(b * b, dtype=np.float64)))
        return float(np.sum(a * b, dtype=np.float64)) / denominator if denominator > 0 else 0.0

    def integer_shift(self, limit: int) -> tuple[np.ndarray, bool]:
        """Cross-correlation peak of the (separately weighted) images within ``|shift| <= limit`` per axis.

        Returns the integer shift ``s`` with ``reference(q) ~ moving(q - s)``
        and whether the peak lies on the border of the searched window
        (the true shift may lie beyond it).
        """
        spectrum = (np.fft.rfft2(self.reference * self.ref_weight)
                    * np.conj(np.fft.rfft2(self.moving * self.mov_weight)))
        correlation = np.fft.fftshift(np.fft.irfft2(spectrum, s=self.shape))
        centre = np.array(self.shape) // 2
        reach = np.minimum(int(limit), centre - 1)
        window = correlation[centre[0] - reach[0]:centre[0] + reach[0] + 1,
                             centre[1] - reach[1]:centre[1] + reach[1] + 1]
        peak = np.array(np.unravel_index(int(np.argmax(window)), window.shape)) - reach
        at_border = bool(np.any((np.abs(peak) == reach) & (reach > 0)))
        return peak.astype(float), at_border


class _Estimate:
    """The current (offset, rotation) and the steps that improve it."""

    def __init__(self, search_px: float, max_rotation_deg: float, upsample: int):
        self.search_px = float(search_px)
        self.max_rotation = float(max_rotation_deg)
        self.upsample = upsample
        self.offset = np.zeros(2)
        self.rotation = 0.0
        self.error = float("nan")
        self.at_search_border = False

    def start(self, matcher: _Matcher, scale: float) -> None:
        """Coarse start on the coarsest level: integer translation, then a grid over the angles."""
        limit = int(math.ceil(self.search_px / scale)) + 1
        shift, self.at_search_border = matcher.integer_shift(limit)
        self.offset = -shift
        self._translate(matcher, scale)
        if self.max_rotation > 0:
            step = _rotation_step_deg(matcher.shape)
            count = int(math.ceil(self.max_rotation / step))
            grid = np.linspace(-self.max_rotation, self.max_rotation, 2 * count + 1)
            scores = [matcher.correlation(self.offset, angle, search=True) for angle in grid]
            self.rotation = float(grid[int(np.argmax(scores))])
            self._rotate(matcher, grid[1] - grid[0] if len(grid) > 1 else step)
            self._translate(matcher, scale)

    def refine(self, matcher: _Matcher, scale: float, rounds: int, span_steps: float) -> None:
        """Alternate rotation (within ``span_steps`` grid steps of this level) and translation."""
        self._translate(matcher, scale)
        for _ in range(rounds):
            if self.max_rotation > 0:
                self._rotate(matcher, span_steps * _rotation_step_deg(matcher.shape))
            self._translate(matcher, scale)

    def _translate(self, matcher: _Matcher, scale: float, rounds: int = 3) -> None:
        """Refine the offset by phase correlation of the reference with the resampled moving image."""
        upsample = self.upsample if scale == 1.0 else max(4, self.upsample // int(scale))
        rotation = inplane_matrix(self.rotation)
        for _ in range(rounds):
            reference, warped, _ = matcher.weighted_pair(self.offset, self.rotation)
            residual, error, _ = phase_cross_correlation(reference, warped, upsample_factor=upsample,
                                                         normalization=None)
            # reference(q) ~ warped(q - s) = moving(R (q - c) + c + t - R s)
            self.offset = self.offset - rotation @ residual
            self.error = float(error)
            if np.max(np.abs(residual)) <= 1.0 / upsample:
                break

    def _rotate(self, matcher: _Matcher, span: float) -> None:
        """Maximise the correlation over the angle within ``rotation +- span`` (bounded Brent)."""
        low = max(-self.max_rotation, self.rotation - span)
        high = min(self.max_rotation, self.rotation + span)
        if high <= low:
            return
        tolerance = 0.02 * _rotation_step_deg(matcher.shape)
        found = optimize.minimize_scalar(lambda angle: -matcher.correlation(self.offset, angle, search=True),
                                         bounds=(low, high), method="bounded", options={"xatol": tolerance})
        self.rotation = float(found.x)

    def result(self, matcher: _Matcher, levels: int, earlier_evaluations: int) -> RegistrationResult:
        correlation = matcher.correlation(self.offset, self.rotation)
        rejected = []
        if self.at_search_border or np.any(np.abs(self.offset) > self.search_px):
            rejected.append(f"offset beyond the search range of {self.search_px:g} px")
        tolerance = 0.05 * _rotation_step_deg(matcher.shape)
        if self.max_rotation > 0 and abs(self.rotation) >= self.max_rotation - tolerance:
            rejected.append(f"rotation at the search limit of {self.max_rotation:g} degrees")
        offset = np.clip(self.offset, -self.search_px, self.search_px)
        confidence = 0.0 if rejected else min(1.0, max(0.0, correlation))
        details: dict[str, Any] = {
            "correlation": correlation,
            "search_px": self.search_px,
            "max_rotation_deg": self.max_rotation,
            "upsample": self.upsample,
            "pyramid_levels": levels,
            "evaluations": earlier_evaluations + matcher.evaluations + 1,
            "rejected": "; ".join(rejected) or None,
        }
        return RegistrationResult(offset_yx=(float(offset[0]), float(offset[1])),
                                  rotation_deg=float(self.rotation), confidence=float(confidence),
                                  error=self.error, method=METHOD, details=details)
