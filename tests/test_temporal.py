"""Temporal smoothing: MATLAB's rloess conventions, static values, sliding windows, the MATLAB
lookup table (against tables written by the original software) and transition-map medians."""

import math
import os
from pathlib import Path

import numpy as np
import pytest

from isoview_dask.temporal import (MATLAB_LUT_COLUMNS, lookup_table, rloess, robust_weights, sliding_mean,
                                   sliding_median, smooth_series, static_value, temporal_median_maps)

SHARED = Path(os.environ.get("ISOVIEW_SHARED") or Path(__file__).resolve().parents[2] / "shared")
LUT_DIR = SHARED / "data" / "matlab-lut"


def _load_matlab():
    scipy_io = pytest.importorskip("scipy.io")
    names = ("transformations", "intensityCorrections", "lookUpTable")
    if not all((LUT_DIR / f"{n}.mat").is_file() for n in names):
        pytest.skip(f"MATLAB lookup-table data not found in {LUT_DIR} (set ISOVIEW_SHARED)")
    return [scipy_io.loadmat(LUT_DIR / f"{n}.mat")[n] for n in names]


def test_lookup_table_reproduces_matlab():
    transformations, intensity, expected = _load_matlab()
    table = lookup_table(transformations, intensity)  # MATLAB defaults: span 20, half-widths 10/10/5
    assert table.shape == expected.shape == (11, len(MATLAB_LUT_COLUMNS))
    deviation = np.abs(table - expected).max(axis=0)
    print("max |ours - MATLAB| per column:", dict(zip(MATLAB_LUT_COLUMNS, deviation.tolist())))
    assert deviation.max() < 1e-3
    np.testing.assert_array_equal(table[:, [4, 8, 13]], expected[:, [4, 8, 13]])  # flags exactly


def test_lookup_table_needs_five_robust_iterations():
    """The match is specific: 4 or 6 robustness iterations miss MATLAB by far more than rounding."""
    transformations, intensity, expected = _load_matlab()
    factors = intensity[:, 1]
    for iterations in (4, 6):
        ours = np.mean(rloess(factors, 20, iterations=iterations)[:6])
        assert abs(1 / ours - expected[0, 3]) > 1e-5
    assert abs(1 / np.mean(rloess(factors, 20)[:6]) - expected[0, 3]) < 1e-12


def test_span_conventions():
    rng = np.random.default_rng(1)
    y = np.cumsum(rng.normal(size=15))
    # longer than the series: the whole series (odd n), points as a fraction of n
    np.testing.assert_array_equal(rloess(y, 100), rloess(y, 15))
    np.testing.assert_array_equal(rloess(y, 0.4), rloess(y, math.ceil(0.4 * 15)))
    # evenly spaced data: an even span is rounded up to odd
    np.testing.assert_array_equal(rloess(y, 4), rloess(y, 5))
    # span 1: unchanged
    np.testing.assert_array_equal(rloess(y, 1), y)
    # an even-length series with a span beyond it uses span n + 1 (MATLAB's quirk), not n - 1
    y14 = y[:14]
    assert not np.allclose(rloess(y14, 20), rloess(y14, 13))
    np.testing.assert_array_equal(rloess(y14, 20), rloess(y14, 14))


def test_quadratics_are_reproduced_and_x_may_be_unsorted():
    x = np.arange(12.0)
    y = 0.5 - 0.2 * x + 0.03 * x ** 2
    np.testing.assert_allclose(rloess(y, 5), y, atol=1e-12)
    order = np.random.default_rng(0).permutation(12)
    np.testing.assert_allclose(rloess(y[order], 5, x=x[order]), y[order], atol=1e-12)


def test_outlier_rejected_and_gap_filled():
    rng = np.random.default_rng(2)
    t = np.arange(30.0)
    trend = 0.1 * t + 0.3 * np.sin(2 * np.pi * t / 24)
    y = trend + rng.normal(0, 0.02, t.size)
    y[12] += 25.0  # a failed estimate
    smooth, weights = rloess(y, 15, return_weights=True)
    assert weights[12] == 0.0
    assert abs(smooth[12] - trend[12]) < 0.1
    assert np.abs(smooth - trend).max() < 0.1
    # without robustness iterations (MATLAB 'loess') the spike drags the curve
    assert abs(rloess(y, 15, iterations=0)[12] - trend[12]) > 1.0
    # a missing value is filled from its neighbours
    gap = y.copy()
    gap[12] = np.nan
    filled = rloess(gap, 15)
    assert np.isfinite(filled).all() and abs(filled[12] - trend[12]) < 0.1
    np.testing.assert_array_equal(robust_weights(y, 15), weights)


def test_static_is_the_robust_centre():
    rng = np.random.default_rng(3)
    y = 2.0 + rng.normal(0, 0.01, 25)
    y[7] = 9.0
    value = static_value(y, 20)
    assert value == pytest.approx(np.mean(rloess(y, 20)), abs=1e-12)  # MATLAB: mean of the rloess column
    inliers = np.delete(y, 7)
    assert value == pytest.approx(np.mean(inliers), abs=0.01)
    assert np.mean(y) > 2.2  # the plain mean is dragged by the outlier
    used = smooth_series(y, span=20, static=True)
    assert np.ptp(used) == 0 and used[0] == pytest.approx(value, abs=1e-12)


def test_sliding_windows_are_clipped_at_the_ends():
    y = np.array([1.0, 2.0, 3.0, 10.0, 5.0])
    np.testing.assert_allclose(sliding_mean(y, 1), [1.5, 2.0, 5.0, 6.0, 7.5])
    np.testing.assert_allclose(sliding_median(y, 1), [1.5, 2.0, 3.0, 5.0, 7.5])
    np.testing.assert_allclose(sliding_mean(y, 0), y)
    np.testing.assert_allclose(sliding_mean(y, 10), np.full(5, y.mean()))
    np.testing.assert_allclose(sliding_mean([1.0, np.nan, 3.0], 1), [1.0, 2.0, 3.0])


def test_lookup_table_static_and_flags():
    n = 9
    t = np.arange(n, dtype=float)
    transformations = np.column_stack([t] + [np.linspace(0, 1, n) + k for k in range(7)])
    intensity = np.column_stack([t, np.full(n, 0.8), np.full(n, 2.0), np.full(n, 1.25), np.full(n, 1.0),
                                 np.full(n, 1.1), np.full(n, 2.0)])
    table = lookup_table(transformations, intensity, static=True)
    assert np.ptp(table[:, 1:], axis=0).max() < 1e-12  # every row the same
    np.testing.assert_allclose(table[0, 1], 0.5)  # mean of a straight line
    # 0.8 (flag 2) < 1 -> 1.25 with flag 1; 1.25 flag 1 -> 0.8 (flag 2) -> 1.25 flag 1; 1.1 stays flag 2
    np.testing.assert_allclose(table[0, [3, 4, 7, 8, 12, 13]], [1.25, 1, 1.25, 1, 1.1, 2])
    with pytest.raises(ValueError):
        lookup_table(transformations[:, :5], intensity)


def test_temporal_median_of_transition_maps():
    maps = [np.full((2, 3), v, float) for v in (10.0, 11.0, 40.0, 12.0, 13.0)]
    valid = [True, True, False, True, True]
    out = temporal_median_maps(maps, 0, valid)
    assert [m[0, 0] for m in out] == [10.0, 11.0, 11.5, 12.0, 13.0]  # the untrusted map gets its neighbours'
    out = temporal_median_maps(maps, 1, valid)
    assert [m[0, 0] for m in out] == [10.5, 10.5, 11.5, 12.5, 12.5]
    assert temporal_median_maps(maps, 1)[2][0, 0] == 12.0
