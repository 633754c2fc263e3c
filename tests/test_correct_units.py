"""Unit behaviour of ``isoview_dask.correct``: the knee, the dead-pixel test
on large statistic images, edge cases and input validation."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi

from isoview_dask.correct import (
    correct_dead_pixels,
    dead_pixel_mask,
    estimate_background_level,
    knee_threshold,
    pixel_statistics,
    smooth,
    subtract_background,
    threshold_level,
)


def test_knee_of_a_two_slope_curve_is_the_corner():
    gentle = np.linspace(0.0, 9.0, 91)  # slope 0.1 per rank
    steep = np.linspace(19.0, 100.0, 10)  # slope 9 per rank
    values = np.random.default_rng(0).permutation(np.concatenate([gentle, steep]))
    assert knee_threshold(values) == pytest.approx(9.0)


def test_knee_edge_cases():
    assert knee_threshold([5.0, 5.0, 5.0]) == 5.0
    assert knee_threshold([1.0, np.nan, 3.0]) == 3.0
    with pytest.raises(ValueError, match="finite"):
        knee_threshold([np.nan, np.inf])


def _statistic_images(rng, shape=(256, 256), planes=40):
    """Per-pixel mean and std of a stack, simulated directly: a dark level
    with a fixed pattern, a bright specimen with a sharp blurred edge and
    texture, and the sampling noise of a ``planes``-plane stack."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    specimen = ((yy - 120) / 90.0) ** 2 + ((xx - 140) / 70.0) ** 2 <= 1.0
    signal = ndi.gaussian_filter(specimen * (800.0 + 600.0 * np.sin(xx / 9.0) * np.cos(yy / 13.0)), 1.0)
    dark = 100.0 + rng.normal(0.0, 2.0, shape)
    sigma = np.sqrt(signal + 4.0)
    mean = dark + signal + rng.normal(0.0, 1.0, shape) * sigma / np.sqrt(planes)
    std = sigma * (1.0 + rng.normal(0.0, 1.0, shape) / np.sqrt(2 * (planes - 1)))
    return mean, std


def test_no_false_positives_on_a_large_clean_frame_and_defects_found():
    rng = np.random.default_rng(11)
    mean, std = _statistic_images(rng)
    clean = dead_pixel_mask(mean, std)
    assert clean.count == 0

    rows = rng.choice(256, 30, replace=False)
    cols = rng.choice(256, 30, replace=False)
    mean[rows[:15], cols[:15]] += rng.uniform(200.0, 1500.0, 15)  # hot
    std[rows[15:], cols[15:]] = 0.0  # stuck
    mean[rows[15:], cols[15:]] = rng.uniform(0.0, 3000.0, 15)
    found = dead_pixel_mask(mean, std)
    truth = np.zeros(mean.shape, bool)
    truth[rows, cols] = True
    assert np.array_equal(found.mask, truth)
    assert found.summary()["count"] == 30


def test_knee_alone_would_flag_clean_pixels():
    mean, std = _statistic_images(np.random.default_rng(12))
    knee_only = dead_pixel_mask(mean, std, z_floor=0.0)
    assert knee_only.count > 100  # the pitfall the statistical floor removes
    assert dead_pixel_mask(mean, std).count == 0


def test_dead_pixel_mask_validates_inputs():
    with pytest.raises(ValueError, match="same shape"):
        dead_pixel_mask(np.ones((8, 8)), np.ones((8, 9)))
    with pytest.raises(ValueError, match="kernel"):
        dead_pixel_mask(np.ones((8, 8)), np.ones((8, 8)), kernel=4)
    with pytest.raises(ValueError, match=r"\(Y, X\)"):
        dead_pixel_mask(np.ones((2, 8, 8)), np.ones((2, 8, 8)))


def test_repair_with_empty_mask_is_identity_and_shape_is_checked():
    volume = np.arange(2 * 5 * 6, dtype=np.uint16).reshape(2, 5, 6)
    np.testing.assert_array_equal(correct_dead_pixels(volume, np.zeros((5, 6), bool)).compute(), volume)
    with pytest.raises(ValueError, match="frame shape"):
        correct_dead_pixels(volume, np.zeros((6, 5), bool))


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.float32, np.int32])
def test_pixel_statistics_for_every_dtype(dtype):
    rng = np.random.default_rng(4)
    volume = rng.integers(-200 if dtype in (np.int16, np.int32) else 0, 250, (9, 5, 6)).astype(dtype)
    volume[:, 2, 3] = 17  # a stuck pixel: exactly zero spread
    mean_yx, std_yx = dask.compute(*pixel_statistics(da.from_array(volume, chunks=(4, 3, 4))))
    assert mean_yx.shape == std_yx.shape == (5, 6)
    assert mean_yx.dtype == std_yx.dtype == np.float64
    np.testing.assert_allclose(mean_yx, volume.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std_yx, volume.astype(np.float64).std(axis=0), rtol=1e-6, atol=1e-9)
    if np.issubdtype(dtype, np.integer) and np.dtype(dtype).itemsize <= 2:
        assert std_yx[2, 3] == 0.0


def test_subtract_background_float_input_and_validation():
    volume = da.from_array(np.full((2, 3, 4), 10.25, np.float32), chunks=(1, 3, 2))
    result = subtract_background(volume, 10.0).compute()
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, 0.25)
    assert (subtract_background(volume, 50.0).compute() == 0).all()
    with pytest.raises(ValueError, match="dark frame shape"):
        subtract_background(volume, np.zeros((4, 3)))


def test_background_level_of_an_empty_volume_is_zero():
    assert estimate_background_level(np.zeros((3, 4, 5), np.uint16)) == 0.0
    with pytest.raises(ValueError, match="percentile"):
        estimate_background_level(np.zeros((3, 4, 5), np.uint16), percentile=150.0)


def test_axial_sigma_follows_the_spacing_ratio():
    volume = np.random.default_rng(1).random((12, 16, 16)).astype(np.float32)
    from_ratio = smooth(volume, 2.0, spacing_ratio=4.0).compute()
    explicit = smooth(volume, 2.0, 0.5).compute()
    np.testing.assert_array_equal(from_ratio, explicit)
    with pytest.raises(ValueError, match="spacing_ratio"):
        smooth(volume, 2.0, spacing_ratio=0.0)


def test_threshold_of_a_flat_volume_is_its_value():
    result = threshold_level(np.full((4, 4, 4), 7.0, np.float32))
    assert result.min_intensity == result.mean_intensity == result.level == 7.0


@pytest.mark.parametrize("shape, factor", [((300, 16, 24), 4), ((37, 64, 50), 3), ((5, 700, 900), 2),
                                           ((1, 6, 6), 2)])
def test_lateral_downsample_of_integers_is_the_exact_mean(shape, factor):
    """Integer volumes are block-averaged exactly (the float64 mean, rounded once to float32), however many
    planes a step of the kernel takes (many small planes, a few large ones, a count not divisible)."""
    import dask.array as da
    from isoview_dask.correct import downsample_lateral

    volume = np.random.default_rng(2).integers(0, 65536, shape, dtype=np.uint16)
    height, width = shape[1] // factor * factor, shape[2] // factor * factor
    expected = volume[:, :height, :width].astype(np.float64).reshape(
        shape[0], height // factor, factor, width // factor, factor).mean(axis=(2, 4)).astype(np.float32)
    for chunks in [shape, (max(1, shape[0] // 3), shape[1], shape[2])]:
        got = downsample_lateral(da.from_array(volume, chunks=chunks), factor).compute()
        np.testing.assert_array_equal(got, expected)


def test_lateral_downsample_histogram_threshold_against_numpy():
    import dask.array as da
    from isoview_dask.correct import (downsample_lateral, intensity_histogram, threshold_from_histogram,
                                      upsample_lateral)

    rng = np.random.default_rng(11)
    volume = rng.gamma(2.0, 300.0, (9, 37, 41)).astype(np.float32)
    expected = volume[:, :36, :40].reshape(9, 18, 2, 20, 2).mean(axis=(2, 4))
    for chunks in [(9, 37, 41), (2, 7, 9), ((4, 5), (20, 17), (11, 30))]:
        arr = da.from_array(volume, chunks=chunks)
        np.testing.assert_allclose(downsample_lateral(arr, 2).compute(), expected, rtol=1e-6)
        hist = intensity_histogram(arr).compute()
        np.testing.assert_array_equal(
            hist, np.bincount(volume.astype(np.uint16).ravel(), minlength=65536))
    result = threshold_from_histogram(hist, t=0.4, min_percentile=1.0)
    exact_min = np.percentile(volume, 1.0)
    exact_mean = volume[volume > exact_min].mean()
    assert abs(result.min_intensity - exact_min) <= 1.0
    assert abs(result.mean_intensity - exact_mean) <= 1.0
    assert result.level == pytest.approx(result.min_intensity + 0.4 * (result.mean_intensity - result.min_intensity))
    small = expected > 600
    up = upsample_lateral(da.from_array(small, chunks=(3, 9, 10)), 2, (37, 41)).compute()
    assert up.shape == (9, 37, 41)
    np.testing.assert_array_equal(up[:, :36, :40], np.repeat(np.repeat(small, 2, 1), 2, 2))
    np.testing.assert_array_equal(up[:, 36, :40], up[:, 35, :40])  # dropped row repeats the last block


def test_integer_dark_frame_path_equals_float_path():
    import dask.array as da
    from isoview_dask.correct import subtract_background

    rng = np.random.default_rng(2)
    volume = rng.integers(0, 400, (5, 20, 30), dtype=np.uint16)
    dark = rng.integers(90, 110, (20, 30)).astype(np.float32)
    fast = subtract_background(da.from_array(volume, chunks=(2, 7, 30)), dark).compute()
    np.testing.assert_array_equal(fast, np.clip(volume.astype(np.int64) - dark.astype(np.int64), 0, None))
    slow = subtract_background(da.from_array(volume, chunks=(2, 7, 30)), dark + 0.25).compute()
    np.testing.assert_array_equal(slow, np.clip(np.rint(volume - (dark + 0.25)), 0, None).astype(np.uint16))


@pytest.mark.parametrize("shape", [(64, 96), (2, 2), (3, 17)])
@pytest.mark.parametrize("kernel", [3, 5])
def test_neighbour_ranks_equal_the_sorted_neighbours(shape, kernel):
    """The compiled 3 x 3 sorting network (and the numpy path of other kernels) give rows 1, n // 2 and
    -2 of the fully sorted neighbour stack, bit for bit, ties and mirrored edges included."""
    from isoview_dask.correct.deadpixels import _sorted_neighbours, neighbour_ranks
    if kernel // 2 >= min(shape):
        pytest.skip("frame smaller than the kernel's reach")
    image = np.log(np.random.default_rng(8).integers(1, 20, shape).astype(np.float32))
    ranked = _sorted_neighbours(image, kernel)
    for got, want in zip(neighbour_ranks(image, kernel), (ranked[1], ranked[ranked.shape[0] // 2], ranked[-2])):
        assert got.dtype == image.dtype
        np.testing.assert_array_equal(got, want)
