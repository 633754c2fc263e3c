"""Time series of fusion parameters: robust smoothing, static values, lookup tables.

Registration offsets, rotations, intensity factors and transition planes
are estimated independently at every timepoint, so they jitter, and a
timepoint where estimation failed (debris, a dim stack) gives a wild value.
The functions here are pure, on 1-D numpy series indexed by timepoint:

* :func:`rloess` -- MATLAB's ``smooth(y, span, 'rloess')``, reproduced exactly
  (see below); NaN entries are treated as missing and filled in.
* :func:`static_value` -- one value for a whole series (MATLAB's static option).
* :func:`sliding_mean`, :func:`sliding_median` -- centred windows clipped at
  the ends of the series.
* :func:`smooth_series` -- the combination the time-lapse pass uses.
* :func:`lookup_table` -- the MATLAB lookup-table procedure on MATLAB's
  ``transformations`` / ``intensityCorrections`` tables.
* :func:`temporal_median_maps` -- median of per-timepoint transition-plane
  maps over neighbouring timepoints.

MATLAB's ``rloess`` conventions
-------------------------------
Why not ``statsmodels.nonparametric.lowess``: it fits local *lines* (MATLAB's
``rlowess``), has a different span and end handling and a different
robustness scale, so it cannot match ``rloess`` (local quadratics). The
procedure below follows MATLAB's documented algorithm and its conventions,
and matches a MATLAB-made lookup table to ~1e-15 (``tests/test_temporal.py``):

1. ``span`` below 1 is a fraction of the series length: ``ceil(span * n)``
   points. Then ``span = min(floor(span), n)``; a span of 1 returns ``y``.
2. Evenly spaced ``x`` without missing values (the usual case, x = timepoint
   index): the span is made odd, ``2 * floor(span / 2) + 1`` -- so a span
   equal to an even ``n`` becomes ``n + 1``. Every point inside gets a
   weighted quadratic fit over the ``span`` points centred on it with tricube
   weights ``(1 - (d / h)^3)^3``, ``h = (span - 1) / 2`` (the two outermost
   points have weight 0). The first and last ``h`` points, which lack a full
   centred window, are fitted on the ``span - 1`` points at that end of the
   series with distances scaled by ``span - j`` for the ``j``-th point (1-based)
   from that end.
3. Robustness: 5 iterations. Residuals ``r = y - fit`` give bisquare weights
   ``(1 - (r / 6s)^2)^2`` for ``|r| < 6s``, else 0, with ``s`` the median of
   ``|r|`` (no 0.6745 factor; floored at ``1e-8 * max|y| * eps``). Each point is
   refitted on its window -- ``span`` points, the window shifted inwards at
   the ends -- with tricube weights scaled by the largest distance in that
   window, times the bisquare weights. If a window holds a point of weight
   0, it is replaced by the ``span`` nearest points of positive weight (all
   points at the same distance as the farthest are included).
4. Unevenly spaced ``x`` or missing values: every fit (the first one too)
   uses the ``span`` nearest valid points, and the span is not made odd.
   Missing points get a value from their neighbours.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["MATLAB_LUT_COLUMNS", "ROBUST_ITERATIONS", "lookup_table", "rloess", "robust_weights", "sliding_mean",
           "sliding_median", "smooth_series", "static_value", "temporal_median_maps"]

#: Robustness iterations of MATLAB's ``rloess`` / ``rlowess``.
ROBUST_ITERATIONS = 5

_EPS = np.finfo(float).eps

#: Columns of MATLAB's ``lookUpTable`` (11 x 14 in the reference data set).
MATLAB_LUT_COLUMNS = ("t", "CM0 offset", "CM0 angle", "CM0 factor", "CM0 flag", "CM1 offset", "CM1 angle",
                      "CM1 factor", "CM1 flag", "dx", "dy", "angle", "factor", "flag")


def _weighted_quadratic(x1: np.ndarray, y1: np.ndarray, sqrt_w: np.ndarray, degree: int = 2) -> float:
    """Value at x = 0 of a least-squares polynomial fit with row weights ``sqrt_w**2``."""
    v = np.vander(x1, degree + 1, increasing=True) * sqrt_w[:, None]
    rhs = y1 * sqrt_w
    if v.shape[0] == v.shape[1]:
        # a square system may be singular: solve it as least squares, as MATLAB does
        v = np.vstack([v, np.zeros(v.shape[1])])
        rhs = np.append(rhs, 0.0)
    coef = np.linalg.lstsq(v, rhs, rcond=None)[0]
    return float(coef[0])


def _tricube_sqrt(d: np.ndarray) -> np.ndarray:
    """Square root of tricube weights of distances, scaled by the largest distance."""
    top = d.max() if d.size else 0.0
    if top > 0:
        d = d / top
    return (1.0 - d ** 3) ** 1.5


def _bisquare_sqrt(r: np.ndarray, tiny: float) -> np.ndarray:
    """Square root of bisquare robustness weights of residuals ``r`` (NaN residual: 0)."""
    ok = np.isfinite(r)
    s = max(1e8 * tiny, float(np.median(np.abs(r[ok]))) if ok.any() else 0.0)
    u = np.where(ok, r, np.inf) / (6.0 * s)
    return np.where(np.abs(u) < 1.0, np.abs(1.0 - u ** 2), 0.0)


def _nearest(k: int, i: int, x: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Indices of the ``k`` allowed points nearest x[i], ties at the k-th distance included."""
    if np.count_nonzero(allowed) <= k:
        return np.flatnonzero(allowed)
    d = np.abs(x - x[i])
    dk = np.sort(d[allowed])[k - 1]
    return np.flatnonzero((d <= dk) & allowed)


def _uniform_first_fit(y: np.ndarray, span: int) -> np.ndarray:
    """The non-robust fit for evenly spaced x (span odd): centred windows, special ends."""
    n = y.size
    half = (span - 1) // 2
    fit = y.copy()
    offsets = np.arange(-half, half + 1, dtype=float)
    w_centre = (1.0 - (np.abs(offsets) / half) ** 3) ** 1.5
    for i in range(half, n - half):
        fit[i] = _weighted_quadratic(offsets, y[i - half:i + half + 1], w_centre)
    pts = np.arange(1, span, dtype=float)  # 1-based positions 1 .. span-1 from an end
    for j in range(1, half + 1):
        x1 = pts - j
        w = (1.0 - (np.abs(x1) / (span - j)) ** 3) ** 1.5
        fit[j - 1] = _weighted_quadratic(x1, y[:span - 1], w)
        fit[n - j] = _weighted_quadratic(x1, y[::-1][:span - 1], w)
    return fit


def rloess(y: Sequence[float], span: float = 5, x: Sequence[float] | None = None, *,
           iterations: int = ROBUST_ITERATIONS, return_weights: bool = False):
    """Robust local quadratic regression, as MATLAB's ``smooth(x, y, span, 'rloess')``.

    Parameters
    ----------
    y : 1-D sequence
        The series; NaN marks a missing value (filled in from its neighbours).
    span : float
        Points per local fit (>= 1), or a fraction of the series (< 1).
        MATLAB's conventions apply (module docstring): a span longer than the
        series is the whole series, and for evenly spaced data it is made odd.
    x : 1-D sequence, optional
        Sample positions (default 0, 1, 2, ...); need not be sorted.
    iterations : int
        Robustness iterations (MATLAB: 5; 0 gives MATLAB's ``loess``).
    return_weights : bool
        Also return the bisquare robustness weights (0-1) of the final fit's
        residuals: 0 marks an outlier (|residual| >= 6 median |residual|),
        NaN a missing input.

    Returns
    -------
    ndarray, or (ndarray, ndarray) with ``return_weights``
    """
    y = np.asarray(y, dtype=float).ravel()
    n = y.size
    xs = np.arange(n, dtype=float) if x is None else np.asarray(x, dtype=float).ravel()
    if xs.size != n:
        raise ValueError(f"x has {xs.size} values, y has {n}")
    if not np.isfinite(span) or span <= 0:
        raise ValueError(f"span must be positive, got {span!r}")
    if n == 0:
        return (y.copy(), y.copy()) if return_weights else y.copy()
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], y[order]
    fit = _rloess_sorted(xs, ys, span, int(iterations))
    out = np.empty(n)
    out[order] = fit
    if not return_weights:
        return out
    missing = ~np.isfinite(ys)
    finite = ys[~missing]
    tiny = float(np.abs(finite).max()) * _EPS if finite.size else 0.0
    weights = np.where(missing, np.nan, _bisquare_sqrt(ys - fit, tiny) ** 2)
    w_out = np.empty(n)
    w_out[order] = weights
    return out, w_out


def _rloess_sorted(x: np.ndarray, y: np.ndarray, span: float, iterations: int) -> np.ndarray:
    n = y.size
    if span < 1:
        span = math.ceil(span * n)
    span = int(min(math.floor(span), n))
    missing = ~np.isfinite(y)
    if span <= 1 and not missing.any():
        return y.copy()
    span = max(span, 1)
    dx = np.diff(x)
    uniform = not missing.any() and bool(np.all(np.abs(np.diff(dx)) <= _EPS * max(abs(x[0]), abs(x[-1]))))
    finite = y[~missing]
    if finite.size == 0:
        return y.copy()
    tiny = float(np.abs(finite).max()) * _EPS
    idx_all = np.arange(n)
    if uniform:
        span = 2 * (span // 2) + 1
        fit = _uniform_first_fit(y, span)
        if iterations <= 0 or span <= 2:
            return fit
        half = span // 2
        lo = np.maximum(0, np.minimum(n - span, idx_all - half))
        hi = np.minimum(n - 1, np.maximum(span - 1, idx_all + half))
        x = idx_all.astype(float)
    else:
        fit = np.full(n, np.nan)
        lo = np.zeros(n, dtype=int)
        hi = np.zeros(n, dtype=int)
        for i in range(n):
            if i > 0 and x[i] == x[i - 1]:
                fit[i], lo[i], hi[i] = fit[i - 1], lo[i - 1], hi[i - 1]
                continue
            idx = _nearest(span, i, x, ~missing)
            lo[i], hi[i] = idx.min(), idx.max()
            x1 = x[idx] - x[i]
            w = _tricube_sqrt(np.abs(x1))
            if np.all(w < math.sqrt(_EPS)):
                w[:] = 1.0
            fit[i] = _weighted_quadratic(x1, y[idx], w)
        if iterations <= 0:
            return fit
    for _ in range(iterations):
        robust = _bisquare_sqrt(y - fit, tiny)
        new = fit.copy()
        for i in range(n):
            if i > 0 and x[i] == x[i - 1]:
                new[i] = new[i - 1]
                continue
            idx = np.arange(lo[i], hi[i] + 1)
            idx = idx[~missing[idx]]
            if np.any(robust[idx] <= 0):
                idx = _nearest(span, i, x, robust > 0)
            if idx.size == 0:
                continue
            x1 = x[idx] - x[i]
            w = _tricube_sqrt(np.abs(x1))
            if np.all(w < math.sqrt(_EPS)):
                w[:] = 1.0
            new[i] = _weighted_quadratic(x1, y[idx], w * robust[idx])
        fit = new
    return fit


def robust_weights(y: Sequence[float], span: float = 5) -> np.ndarray:
    """Bisquare weights (0-1) of ``y`` around its :func:`rloess` fit; 0 marks an outlier."""
    return rloess(y, span, return_weights=True)[1]


def static_value(y: Sequence[float], span: float = 20, *, smoothed: bool = True) -> float:
    """One value for a whole series: its robust centre.

    MATLAB's static option replaces every timepoint by the mean of the
    ``rloess``-smoothed column; that is what this returns (``smoothed=True``):
    the robustness weights keep outliers out of the smoothed series, so its
    mean is a robust centre. With ``smoothed=False`` the plain mean of the
    finite values is returned. NaN entries are ignored.
    """
    values = np.asarray(y, dtype=float)
    if not np.isfinite(values).any():
        return float("nan")
    if smoothed:
        values = rloess(values, span)
    return float(np.nanmean(values))


def _windows(n: int, half_width: int):
    half_width = int(half_width)
    if half_width < 0:
        raise ValueError(f"half_width must be >= 0, got {half_width}")
    for i in range(n):
        yield i, slice(max(0, i - half_width), min(n, i + half_width + 1))


def sliding_mean(y: Sequence[float], half_width: int) -> np.ndarray:
    """Mean over ``[i - half_width, i + half_width]`` clipped to the series (NaNs ignored)."""
    y = np.asarray(y, dtype=float)
    out = np.full(y.size, np.nan)
    for i, window in _windows(y.size, half_width):
        values = y[window][np.isfinite(y[window])]
        if values.size:
            out[i] = values.mean()
    return out


def sliding_median(y: Sequence[float], half_width: int) -> np.ndarray:
    """Median over ``[i - half_width, i + half_width]`` clipped to the series (NaNs ignored)."""
    y = np.asarray(y, dtype=float)
    out = np.full(y.size, np.nan)
    for i, window in _windows(y.size, half_width):
        values = y[window][np.isfinite(y[window])]
        if values.size:
            out[i] = np.median(values)
    return out


def smooth_series(y: Sequence[float], *, span: float | None = 20, averaging: int = 0, method: str = "mean",
                  static: bool = False) -> np.ndarray:
    """The time-lapse smoothing of one parameter: rloess, then an optional sliding window, or static.

    Parameters
    ----------
    y : 1-D sequence
        Per-timepoint values; NaN for timepoints left out (e.g. a failed registration).
    span : float or None
        rloess span in timepoints (None or <= 1: no rloess; NaNs are then
        filled by the sliding window or, failing that, by linear interpolation).
    averaging : int
        Half-width of a sliding window applied after rloess (0: none).
    method : {'mean', 'median'}
        Sliding-window statistic.
    static : bool
        Every timepoint gets the mean of the result (MATLAB's static option).
    """
    values = np.asarray(y, dtype=float)
    if method not in ("mean", "median"):
        raise ValueError(f"method must be 'mean' or 'median', got {method!r}")
    if not np.isfinite(values).any():
        return values.copy()
    out = rloess(values, span) if span and span > 1 else values.copy()
    if averaging:
        out = (sliding_mean if method == "mean" else sliding_median)(out, averaging)
    missing = ~np.isfinite(out)
    if missing.any():
        idx = np.arange(out.size)
        out[missing] = np.interp(idx[missing], idx[~missing], out[~missing])
    if static:
        out = np.full(out.size, float(np.mean(out)))
    return out


def _to_flag2(factor: np.ndarray, flag: np.ndarray) -> np.ndarray:
    """Factors as 'multiply the second stack' (flag 2): a flag-1 factor f becomes 1/f."""
    factor = np.asarray(factor, dtype=float)
    return np.where(np.asarray(flag) == 1, 1.0 / factor, factor)


def _from_flag2(factor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Factors below 1 written as their inverse with flag 1, others with flag 2."""
    factor = np.asarray(factor, dtype=float)
    below = factor < 1
    return np.where(below, 1.0 / factor, factor), np.where(below, 1.0, 2.0)


def lookup_table(transformations, intensity_corrections, *, span: float = 20,
                 averaging: Sequence[int] = (10, 10, 5), method: str = "mean", static: bool = False) -> np.ndarray:
    """MATLAB's lookup table from its per-timepoint transformation and intensity tables.

    Parameters
    ----------
    transformations : (T, 8) array
        ``t, CM0 offset, CM0 angle, CM1 offset, CM1 angle, dx, dy, angle``.
    intensity_corrections : (T, 7) array
        ``t, CM0 factor, CM0 flag, CM1 factor, CM1 flag, final factor, final flag``
        (flag 2: multiply the second stack by factor; flag 1: the first).
    span : float
        rloess span (MATLAB default 20).
    averaging : (offsets, angles, factors)
        Sliding-window half-widths applied after rloess (MATLAB default 10, 10, 5).
    method : {'mean', 'median'}
    static : bool
        Every row becomes the column mean.

    Returns
    -------
    (T, 14) array
        Columns :data:`MATLAB_LUT_COLUMNS`. Factors are normalised to flag 2,
        every column smoothed (rloess, then the sliding window, then static),
        and a factor below 1 written as its inverse with flag 1.
    """
    tr = np.asarray(transformations, dtype=float)
    ic = np.asarray(intensity_corrections, dtype=float)
    if tr.ndim != 2 or tr.shape[1] != 8:
        raise ValueError(f"transformations: expected (T, 8), got {tr.shape}")
    if ic.ndim != 2 or ic.shape[1] != 7 or ic.shape[0] != tr.shape[0]:
        raise ValueError(f"intensity_corrections: expected ({tr.shape[0]}, 7), got {ic.shape}")
    w_offset, w_angle, w_factor = (int(v) for v in averaging)

    def smooth(column, width):
        return smooth_series(column, span=span, averaging=width, method=method, static=static)

    def factor(col_factor, col_flag):
        return _from_flag2(smooth(_to_flag2(ic[:, col_factor], ic[:, col_flag]), w_factor))

    cm0_factor, cm0_flag = factor(1, 2)
    cm1_factor, cm1_flag = factor(3, 4)
    final_factor, final_flag = factor(5, 6)
    columns = [tr[:, 0],
               smooth(tr[:, 1], w_offset), smooth(tr[:, 2], w_angle), cm0_factor, cm0_flag,
               smooth(tr[:, 3], w_offset), smooth(tr[:, 4], w_angle), cm1_factor, cm1_flag,
               smooth(tr[:, 5], w_offset), smooth(tr[:, 6], w_offset), smooth(tr[:, 7], w_angle),
               final_factor, final_flag]
    return np.column_stack(columns)


def temporal_median_maps(maps: Mapping[int, np.ndarray] | Sequence[np.ndarray], half_width: int = 0,
                         valid: Sequence[bool] | None = None) -> list[np.ndarray]:
    """Median of per-timepoint 2-D maps (e.g. transition planes) over neighbouring timepoints.

    Parameters
    ----------
    maps : sequence of (Y, X) arrays, one per timepoint in order
    half_width : int
        Window ``[t - half_width, t + half_width]`` clipped to the series; 0
        keeps each valid map as it is.
    valid : sequence of bool, optional
        Maps not to trust (a failed registration): never used for others, and
        themselves replaced by the median of the nearest valid maps (the
        window widened until it holds at least one).

    Returns
    -------
    list of (Y, X) float arrays
    """
    stack = [np.asarray(m, dtype=float) for m in (maps.values() if isinstance(maps, Mapping) else maps)]
    n = len(stack)
    ok = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
    if ok.size != n:
        raise ValueError(f"valid has {ok.size} entries for {n} maps")
    if not ok.any():
        return [m.copy() for m in stack]
    out = []
    for t in range(n):
        width = int(half_width)
        while True:
            chosen = [stack[k] for k in range(max(0, t - width), min(n, t + width + 1)) if ok[k]]
            if chosen:
                break
            width += 1
        out.append(chosen[0].copy() if len(chosen) == 1 else np.nanmedian(np.stack(chosen), axis=0))
    return out
