"""Single-pass numba kernels for the per-plane blend of :func:`~isoview_dask.fuse.fuse_views`.

:func:`blend_plane` computes, for one plane (Y, X) of an output block, the
reference camera's weight, the weighted sum of the two cameras with their
gains and the cast to the output dtype in one pass over the pixels, written
into a preallocated output plane: no temporary planes. :func:`blend_plane_numpy`
is the numpy formulation it replaces (several whole-plane temporaries), kept
as the reference the kernel is tested against.

Semantics (both functions): with ``f = reference * gain_front`` and ``b =
aligned * gain_back`` in the working precision (float64 when the reference,
the moving camera or the output is float64, else float32), ``w`` the
reference's weight (:func:`~isoview_dask.fuse.blending.front_weight` of
``z - transition``, computed in float64 and rounded to the working
precision; 1/2 without a transition), each pixel is ``w * f + (1 - w) * b``;
where ``b`` is not finite (the moving camera did not record) it is ``f``,
where ``f`` is not finite (a float reference without data) it is ``b``,
where neither is, 0. Integer outputs are rounded half to even and clipped
to the dtype's range (:func:`~isoview_dask.fuse.blending.cast_to`).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .blending import SIGMOID_STEEPNESS, cast_to, front_weight

#: Integer codes of the weight profiles (``profile`` argument of the kernels).
PROFILE_CODES = {"sigmoid": 0, "linear": 1}
PROFILE_SIGMOID, PROFILE_LINEAR = 0, 1

#: What a plane needs (``mode`` argument of :func:`blend_plane`), see :func:`plane_mode`.
MODE_FRONT = 0  #: in front of the transition everywhere: the reference alone, the moving camera not read
MODE_HALF = 1  #: no transition ('average'): weight 1/2 everywhere
MODE_BACK = 2  #: behind the transition everywhere: weight 0
MODE_RAMP = 3  #: weight per pixel from the transition map

#: ``(steepness, low, high)`` of the sigmoid ramp for the kernels' ``sigmoid`` argument: the logistic
#: evaluated at the ends of the ramp by the same numpy expression as ``blending.front_weight``. An argument,
#: not a global the kernels read: numba's on-disk cache would keep a global's old value if it changed.
SIGMOID = (float(SIGMOID_STEEPNESS), float(1.0 / (1.0 + np.exp(-(-SIGMOID_STEEPNESS / 2)))),
           float(1.0 / (1.0 + np.exp(-(SIGMOID_STEEPNESS / 2)))))


# ------------------------------------------------------------------------------------------- numba kernels


@numba.njit(cache=True, nogil=True, error_model="numpy")
def front_weight_value(distance, blending_range, profile, sigmoid):
    """Weight of the reference camera at ``distance = z - transition`` (planes), float64.

    The scalar form of :func:`~isoview_dask.fuse.blending.front_weight`
    with the same operations in the same order: 1 for ``distance <=
    -range/2``, 0 for ``distance >= range/2``, a step (1 up to and
    including 0) for a range of 0.

    Parameters
    ----------
    distance : float
        Plane index minus the transition plane (planes, fractional).
    blending_range : float
        Width of the ramp (planes), >= 0.
    profile : int
        :data:`PROFILE_SIGMOID` or :data:`PROFILE_LINEAR`.
    sigmoid : (float, float, float)
        :data:`SIGMOID`.

    Returns
    -------
    float
        The weight in [0, 1] (float64). The sigmoid's exponential is the C
        library's; numpy's vectorised one (AVX512) may differ from it by one
        unit in the last place, so the weight may differ from
        ``front_weight``'s by a few 1e-16 (absolute); rounded to float32 the
        two agree (a disagreement needs a float64 value within 1e-16 of a
        float32 rounding tie: about one pixel in 1e8 or fewer).
    """
    if blending_range == 0:
        return 1.0 if distance <= 0 else 0.0
    u = distance / blending_range
    # numpy.clip(u, -0.5, 0.5); a NaN stays NaN
    if u < -0.5:
        u = -0.5
    elif u > 0.5:
        u = 0.5
    if profile == PROFILE_LINEAR:
        return 0.5 - u
    if u == -0.5:  # the ends of the ramp give exactly (high - low) / (high - low) and 0 / (high - low)
        return 1.0
    if u == 0.5:
        return 0.0
    steepness, low, high = sigmoid
    x = -steepness * u
    return (1.0 / (1.0 + math.exp(-x)) - low) / (high - low)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _cast_value(value, integer_out, clip_low, clip_high, nan_fill):
    """``cast_to`` of one value, still in the working precision: for an integer output rint (half to
    even), clipped to [clip_low, clip_high], NaN -> ``nan_fill``; else unchanged (the store rounds)."""
    if not integer_out:
        return value
    v = np.rint(value)
    v = clip_low if v < clip_low else v
    v = clip_high if v > clip_high else v
    return nan_fill if v != v else v


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _mix(f, b, w, has_front, has_back, one, zero):
    """``w * f + (1 - w) * b`` where both views are present; a missing view gets weight 0 and value 0
    (as numpy's plane-wide ``where`` in :func:`blend_plane_numpy`): f alone, b alone, or 0."""
    both = has_front & has_back
    w = w if both else (one if has_front else zero)
    f = f if has_front else zero
    b = b if has_back else zero
    return w * f + (one - w) * b


@numba.njit(cache=True, nogil=True, error_model="numpy")
def blend_plane(reference, aligned, transition, z, blending_range, profile, sigmoid, mode, gain_front, gain_back,
                check_front, clip_low, clip_high, nan_value, integer_out, out):
    """Blend one plane of the two cameras into ``out`` in a single pass.

    Parameters
    ----------
    reference : ndarray, (Y, X), integer or float
        The reference camera's plane. Any layout, but only a C-contiguous
        plane lets the compiler vectorise (a strided view is several times
        slower: copy it into a contiguous buffer first).
    aligned : ndarray, (Y, X), float32 or float64
        The moving camera's plane resampled onto the reference grid, NaN
        where it has no data. Its dtype is the working precision of all
        arithmetic. Not read in :data:`MODE_FRONT` (pass the buffer anyway,
        for its dtype).
    transition : ndarray, float64, (Y, X)
        Transition plane per pixel (fractional plane index); read only in
        :data:`MODE_RAMP` (pass any float64 2-D array otherwise).
    z : float
        This plane's index in the whole volume (planes).
    blending_range : float
        Width of the weight ramp (planes), >= 0.
    profile : int
        :data:`PROFILE_SIGMOID` or :data:`PROFILE_LINEAR`.
    sigmoid : (float, float, float)
        :data:`SIGMOID`.
    mode : int
        :data:`MODE_FRONT`, :data:`MODE_HALF`, :data:`MODE_BACK` or
        :data:`MODE_RAMP`, from :func:`plane_mode`.
    gain_front, gain_back : scalar of ``aligned``'s dtype
        Intensity multipliers of the reference and the moving camera.
    check_front : bool
        True for a float reference: a non-finite ``reference * gain_front``
        counts as missing. False for an integer reference (always present).
    clip_low, clip_high : scalar of ``aligned``'s dtype
        Range of an integer ``out`` (see :func:`cast_parameters`).
    nan_value : int
        What numpy's cast gives for NaN into an integer ``out``.
    integer_out : bool
        Whether ``out`` has an integer dtype (round half to even, clip).
    out : ndarray, (Y, X), C-contiguous
        Written in place.

    Returns
    -------
    bool
        True when the plane is written. False only in :data:`MODE_FRONT`
        when the reference has a non-finite pixel: then ``out`` is partly
        written and the plane must be blended again with the moving camera
        in :data:`MODE_RAMP`.
    """
    t = aligned.dtype.type
    one = t(1.0)
    zero = t(0.0)
    nan_fill = t(nan_value)
    n_y, n_x = out.shape
    if mode == MODE_FRONT:
        for y in range(n_y):
            finite = True
            for x in range(n_x):
                f = t(reference[y, x]) * gain_front
                finite &= not check_front or np.isfinite(f)
                out[y, x] = _cast_value(f, integer_out, clip_low, clip_high, nan_fill)
            if not finite:
                return False
        return True
    any_missing = False
    negative_zero_back = False
    if mode == MODE_RAMP:
        # Per row: the weights first (float64 arithmetic, the sigmoid's exp), then the mix, which
        # the compiler vectorises.
        weights = np.empty(n_x, dtype=aligned.dtype)
        for y in range(n_y):
            for x in range(n_x):
                weights[x] = t(front_weight_value(z - transition[y, x], blending_range, profile, sigmoid))
            for x in range(n_x):
                f = t(reference[y, x]) * gain_front
                b = aligned[y, x] * gain_back
                has_front = not check_front or np.isfinite(f)
                value = _mix(f, b, weights[x], has_front, np.isfinite(b), one, zero)
                out[y, x] = _cast_value(value, integer_out, clip_low, clip_high, nan_fill)
        return True
    w = zero if mode == MODE_BACK else t(0.5)
    for y in range(n_y):
        for x in range(n_x):
            f = t(reference[y, x]) * gain_front
            b = aligned[y, x] * gain_back
            has_front = not check_front or np.isfinite(f)
            has_back = np.isfinite(b)
            value = _mix(f, b, w, has_front, has_back, one, zero)
            if mode == MODE_BACK:
                # every pixel present: numpy takes the moving camera alone (b itself, bit for bit)
                both = has_front & has_back
                any_missing |= not both
                negative_zero_back |= both & (b == 0) & (math.copysign(one, b) < 0)
                value = b if both else value
            out[y, x] = _cast_value(value, integer_out, clip_low, clip_high, nan_fill)
    if mode == MODE_BACK and any_missing and negative_zero_back and not integer_out:
        # With a pixel missing in the plane numpy computes 0 * f + 1 * b everywhere, which turns a
        # present -0.0 into +0.0 when f >= +0: the same sign of zero here.
        for y in range(n_y):
            for x in range(n_x):
                f = t(reference[y, x]) * gain_front
                b = aligned[y, x] * gain_back
                if b == 0 and (not check_front or np.isfinite(f)):
                    out[y, x] = zero * f + one * b
    return True


# ------------------------------------------------------------------------------------------- python side


def kernel_supports(reference_dtype, out_dtype) -> bool:
    """Whether :func:`blend_plane` handles these dtypes (else use :func:`blend_plane_numpy`).

    References: integers of at most 32 bits (converted to the working
    precision in one rounding, as numpy does) or float32/float64. Outputs:
    float32, float64 or an integer of at most 16 bits (whose range float32
    represents exactly, so the clipping equals numpy's).
    """
    reference_dtype, out_dtype = np.dtype(reference_dtype), np.dtype(out_dtype)
    reference_ok = (reference_dtype.kind in "ui" and reference_dtype.itemsize <= 4) or reference_dtype in (
        np.float32, np.float64)
    out_ok = out_dtype in (np.float32, np.float64) or (out_dtype.kind in "ui" and out_dtype.itemsize <= 2)
    return bool(reference_ok and out_ok)


def work_dtype(*dtypes) -> type:
    """The working precision: float64 if any of ``dtypes`` is float64, else float32."""
    return np.float64 if np.float64 in tuple(np.dtype(d) for d in dtypes) else np.float32


def cast_parameters(work, out_dtype) -> tuple[bool, object, object, int]:
    """``(integer_out, clip_low, clip_high, nan_value)`` for :func:`blend_plane`.

    The clipping bounds are the integer dtype's range in the working
    precision ``work`` (as :func:`numpy.clip` converts them), ``nan_value``
    what numpy's cast of a NaN gives on this machine.
    """
    out_dtype = np.dtype(out_dtype)
    if out_dtype.kind not in "ui":
        return False, work(0), work(0), 0
    info = np.iinfo(out_dtype)
    with np.errstate(invalid="ignore"):
        nan_value = int(np.array(np.nan, dtype=work).astype(out_dtype))
    return True, work(info.min), work(info.max), nan_value


def plane_limits(transition, blending_range: float) -> tuple[float, float]:
    """``(front_only_below, back_only_above)`` of a block's transition tile (planes).

    The reference's weight is exactly 1 for planes ``z <= front_only_below``
    and exactly 0 for ``z >= back_only_above`` at every pixel of the tile
    (see :func:`~isoview_dask.fuse.blending.front_weight`); ``(-inf, inf)``
    without a transition.
    """
    if transition is None:
        return -math.inf, math.inf
    half = blending_range / 2
    front_only_below = float(np.min(transition)) - half
    back_only_above = float(np.max(transition)) + half
    if blending_range == 0:  # a hard switch gives 1 at distance 0: weight 0 needs z > max
        back_only_above = math.nextafter(back_only_above, math.inf)
    return front_only_below, back_only_above


def plane_mode(has_transition: bool, z: float, front_only_below: float, back_only_above: float) -> int:
    """The :func:`blend_plane` mode of plane ``z`` (see :func:`plane_limits`)."""
    if not has_transition:
        return MODE_HALF
    if z <= front_only_below:
        return MODE_FRONT
    if z >= back_only_above:
        return MODE_BACK
    return MODE_RAMP


def blend_plane_numpy(reference, aligned, transition, z, *, blending_range, profile, gains, work, out_dtype,
                      front_only_below=-math.inf, back_only_above=math.inf) -> np.ndarray:
    """The numpy formulation of one plane's blend: the reference for :func:`blend_plane`.

    Parameters
    ----------
    reference : ndarray, (Y, X)
        The reference camera's plane.
    aligned : ndarray (Y, X) of dtype ``work``, or a callable returning one
        The moving camera resampled onto the reference grid (NaN where it
        has no data). A callable is called only when the plane needs it
        (not for a plane in front of the transition everywhere).
    transition : ndarray, float64, (Y, X), or None
        Transition plane per pixel (fractional plane index); None: weight
        1/2 everywhere ('average').
    z : float
        The plane's index in the volume (planes).
    blending_range, profile, gains
        As for :func:`~isoview_dask.fuse.blend`; ``gains`` = (front, back).
    work : numpy float type
        Working precision (:func:`work_dtype`).
    out_dtype : numpy dtype
        Output dtype.
    front_only_below, back_only_above : float
        From :func:`plane_limits` of the block's transition tile.

    Returns
    -------
    ndarray, (Y, X), ``out_dtype``
    """
    g_front, g_back = work(gains[0]), work(gains[1])
    front = reference.astype(work) * g_front
    has_front = np.isfinite(front) if reference.dtype.kind == "f" else None
    if transition is not None and z <= front_only_below and (has_front is None or has_front.all()):
        return cast_to(front, out_dtype)
    if callable(aligned):
        aligned = aligned()
    back = aligned * g_back
    if transition is None:
        weight = work(0.5)
    elif z >= back_only_above:
        weight = work(0.0)
    else:
        weight = front_weight(z - transition, blending_range, profile).astype(work)
    has_back = np.isfinite(back)
    has_front_all = True if has_front is None else bool(has_front.all())
    if not (has_back.all() and has_front_all):
        hf = has_front if has_front is not None else np.ones(reference.shape, bool)
        weight = np.where(hf & has_back, weight, np.where(hf, work(1), work(0)))
        front = np.where(hf, front, work(0))
        back = np.where(has_back, back, work(0))
    elif np.ndim(weight) == 0 and weight == 0:  # behind the transition everywhere: 0 * front + 1 * back
        return cast_to(back, out_dtype)
    return cast_to(weight * front + (work(1) - weight) * back, out_dtype)
