"""Transition maps, blending weights and the blockwise blends against their numpy references."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from isoview_dask.fuse import (
    IntensityResult,
    blend,
    blend_channels,
    blend_channels_numpy,
    blend_numpy,
    blending_weights,
    geometric_transition,
    transition_plane_map,
)

SHAPE = (24, 40, 50)  # (Z, Y, X)
CHUNKINGS = [SHAPE, (5, 8, 9), ((10, 14), (3, 30, 7), (25, 1, 24))]  # one chunk, many small, uneven
IDS = ["one-chunk", "many-small", "uneven"]


@pytest.fixture(scope="module")
def views():
    rng = np.random.default_rng(11)
    reference = rng.uniform(50, 150, SHAPE).astype(np.float32)
    moving = rng.uniform(50, 150, SHAPE).astype(np.float32)
    moving[:, :, :4] = np.nan  # columns the shifted moving camera did not record
    yy, xx = np.mgrid[0:SHAPE[1], 0:SHAPE[2]]
    transition = 11.5 + 3 * np.sin(yy / 9.0) * np.cos(xx / 13.0)
    transition[5, 7] = np.nan  # undefined pixel: falls back to the geometric plane
    return reference, moving, transition


# --------------------------------------------------------------------------------------------- weights


@pytest.mark.parametrize("profile", ["sigmoid", "linear"])
def test_weights_ramp_from_one_to_zero_and_sum_to_one(profile):
    transition = np.array([[7.0, 7.5], [10.25, 3.0]])
    weights = blending_weights(transition, 20, 6.0, profile)
    assert weights.shape == (20, 2, 2)
    assert np.all(np.diff(weights, axis=0) <= 0)  # non-increasing along z
    z = np.arange(20)[:, None, None]
    assert np.all(weights[z <= transition - 3] == 1.0) and np.all(weights[z >= transition + 3] == 0.0)
    np.testing.assert_allclose(blending_weights(7.0, 20, 6.0, profile)[7], 0.5)
    # antisymmetric about the transition, so the moving camera's 1 - w is the mirrored ramp
    at = blending_weights(10.0, 21, 6.0, profile)
    np.testing.assert_allclose(at[::-1], 1 - at, atol=1e-12)


def test_sigmoid_is_smoother_than_linear_at_the_ends():
    sigmoid = blending_weights(10.0, 21, 10.0, "sigmoid")
    linear = blending_weights(10.0, 21, 10.0, "linear")
    assert sigmoid[6] > linear[6] and sigmoid[14] < linear[14]  # flatter near the ends of the ramp


def test_zero_range_picks_exactly_one_camera(views):
    reference, moving, transition = views
    moving = np.nan_to_num(moving, nan=-1.0)
    fused = blend_numpy(reference, moving, transition, 0, dtype=np.float32)
    from_reference = fused == reference
    from_moving = fused == moving
    assert np.all(from_reference ^ from_moving)
    z = np.arange(SHAPE[0])[:, None, None]
    filled = np.where(np.isnan(transition), np.nanmedian(transition), transition)
    assert np.array_equal(from_reference, np.broadcast_to(z <= filled, SHAPE))


def test_average_is_the_mean(views):
    reference, moving, transition = views
    fused = blend_numpy(reference, moving, transition, 5, method="average", dtype=np.float64)
    both = ~np.isnan(moving)
    np.testing.assert_allclose(fused[both], (reference[both].astype(np.float64) + moving[both]) / 2)
    np.testing.assert_array_equal(fused[~both], reference[~both])  # only one camera recorded


def test_weights_of_the_blend_sum_to_one(views):
    reference, _, transition = views
    ones = np.ones(SHAPE, np.float32)
    fused = blend_numpy(ones, ones, transition, 7.0, dtype=np.float64)
    np.testing.assert_allclose(fused, 1.0, rtol=0, atol=1e-12)


def test_missing_moving_data_takes_the_reference(views):
    reference, moving, transition = views
    fused = blend_numpy(reference, moving, transition, 4)
    np.testing.assert_array_equal(fused[:, :, :4], reference[:, :, :4])  # no half-bright seam
    assert np.isfinite(fused).all()


def test_intensity_scales_the_dimmer_camera():
    reference = np.full((10, 4, 4), 100.0, np.float32)
    moving = np.full((10, 4, 4), 80.0, np.float32)
    intensity = IntensityResult.from_ratio(0.8)
    assert intensity.scaled_camera == "moving" and intensity.factor == pytest.approx(1.25)
    fused = blend_numpy(reference, moving, 4.5, 4, intensity=intensity)
    np.testing.assert_allclose(fused, 100.0, rtol=1e-6)
    brighter = IntensityResult.from_ratio(1.25)
    assert brighter.scaled_camera == "reference"
    np.testing.assert_allclose(blend_numpy(moving, reference, 4.5, 4, intensity=brighter), 100.0, rtol=1e-6)


def test_geometric_uses_one_plane(views):
    reference, moving, transition = views
    geometric = blend_numpy(reference, moving, transition, 3, method="geometric")
    same = blend_numpy(reference, moving, float(np.nanmedian(transition)), 3, method="adaptive")
    np.testing.assert_array_equal(geometric, same)
    middle = blend_numpy(reference, moving, None, 3, method="geometric")
    np.testing.assert_array_equal(middle, blend_numpy(reference, moving, (SHAPE[0] - 1) / 2, 3,
                                                      method="geometric"))


def test_integer_output_is_rounded_and_clipped():
    reference = np.full((4, 3, 3), 65000, np.uint16)
    moving = np.full((4, 3, 3), 65000, np.uint16)
    fused = blend_numpy(reference, moving, 1.5, 0, intensity=IntensityResult.from_ratio(1.1), dtype=None)
    assert fused.dtype == np.uint16
    assert fused[0, 0, 0] == 65535 and fused[3, 0, 0] == 65000


# --------------------------------------------------------------------------------------------- blockwise


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=IDS)
@pytest.mark.parametrize("method", ["adaptive", "geometric", "average"])
def test_blend_blockwise_equals_numpy(views, chunks, method):
    reference, moving, transition = views
    intensity = IntensityResult.from_ratio(0.87)
    expected = blend_numpy(reference, moving, transition, 6.0, method, intensity)
    lazy = blend(da.from_array(reference, chunks=chunks), da.from_array(moving, chunks=chunks), transition, 6.0,
                 method, intensity)
    assert lazy.dtype == np.float32 and lazy.chunks == da.from_array(reference, chunks=chunks).chunks
    np.testing.assert_array_equal(lazy.compute(), expected)


def test_blend_accepts_differently_chunked_inputs(views):
    reference, moving, transition = views
    expected = blend_numpy(reference, moving, transition, 4.0, profile="linear")
    lazy = blend(da.from_array(reference, chunks=(6, 20, 25)), da.from_array(moving, chunks=(8, 13, 50)),
                 da.from_array(transition, chunks=(7, 7)), 4.0, profile="linear")
    np.testing.assert_array_equal(lazy.compute(), expected)


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=IDS)
@pytest.mark.parametrize("transition", ["centre", "number", "map"])
def test_blend_channels_blockwise_equals_numpy(views, chunks, transition):
    reference, moving, _ = views
    columns = {"centre": None, "number": 20.25,
               "map": 25 + 5 * np.cos(np.arange(SHAPE[0] * SHAPE[1]).reshape(SHAPE[:2]) / 17.0)}[transition]
    expected = blend_channels_numpy(reference, moving, 10.0, transition=columns)
    lazy = blend_channels(da.from_array(reference, chunks=chunks), da.from_array(moving, chunks=chunks), 10.0,
                          transition=columns)
    np.testing.assert_array_equal(lazy.compute(), expected)


def test_blend_channels_ramps_along_x():
    view_a = np.full((3, 4, 41), 10.0, np.float32)
    view_b = np.full((3, 4, 41), 30.0, np.float32)
    fused = blend_channels_numpy(view_a, view_b, 10.0, dtype=np.float64)
    assert np.all(fused[..., :15] == 10.0) and np.all(fused[..., 26:] == 30.0)
    assert fused[0, 0, 20] == pytest.approx(20.0)  # centre column (X - 1) / 2 = 20
    assert np.all(np.diff(fused[0, 0]) >= 0)
    along_z = blend_channels_numpy(view_a, view_b, 2.0, axis="z", transition=1.0, dtype=np.float64)
    np.testing.assert_array_equal(along_z, blend_numpy(view_a, view_b, 1.0, 2.0, method="geometric",
                                                       dtype=np.float64))


# --------------------------------------------------------------------------------------------- transition


def test_transition_map_averages_cleans_and_fills():
    n_planes = 40
    yy, xx = np.mgrid[0:30, 0:36]
    surface = 18 + 0.1 * yy - 0.05 * xx  # a tilted specimen middle
    near = surface - 6.0  # reference camera sees the near half: its mean depth is shallower
    far = surface + 6.0
    near[:5] = np.nan  # no foreground for the reference in the top rows
    far[-3:, -3:] = 39.5  # bogus value at the volume's end (removed by the margin)
    transition = transition_plane_map(near, far, n_planes, rim_px=0, median_filter_range=1, smoothing_sigma=0)
    inside = np.s_[5:-3, :]
    np.testing.assert_allclose(transition[inside], surface[inside], atol=1e-9)
    # one camera only (biased to its near side): filled from the nearest pixel both cameras saw
    np.testing.assert_allclose(transition[:5], np.broadcast_to(surface[5], (5, 36)), atol=1e-9)
    # the rim of the valid region is dropped and filled from further inside
    rimless = transition_plane_map(near, far, n_planes, rim_px=2, median_filter_range=1, smoothing_sigma=0)
    np.testing.assert_allclose(rimless[7:-5, 2:-2], surface[7:-5, 2:-2], atol=1e-9)
    np.testing.assert_allclose(rimless[:7, 2:-2], np.broadcast_to(surface[7, 2:-2], (7, 32)), atol=1e-9)
    assert np.all(np.isfinite(transition)) and np.all(np.abs(transition[-3:, -3:] - 39.5) > 5)
    smooth = transition_plane_map(near, far, n_planes)
    assert np.all(np.isfinite(smooth)) and np.abs(smooth - surface).max() < 1.5  # tilt over the filled rim
    alone = transition_plane_map(near, None, n_planes, rim_px=0, median_filter_range=1, smoothing_sigma=0)
    np.testing.assert_allclose(alone[5:], near[5:], atol=1e-9)


def test_transition_map_without_foreground_is_the_middle():
    empty = np.full((8, 9), np.nan)
    np.testing.assert_array_equal(transition_plane_map(empty, empty, 31), np.full((8, 9), 15.0))
    assert geometric_transition(empty, empty, 31) == 15.0
    assert geometric_transition(None, None, 31) == 15.0
    holes = np.full((8, 9), 12.0)
    holes[2:4, 2:4] = np.nan
    geometric = transition_plane_map(holes, None, 31, fill="geometric")
    np.testing.assert_allclose(geometric, 12.0)
    assert geometric_transition(holes, holes + 2.0, 31) == pytest.approx(13.0)


def test_blend_rejects_bad_arguments(views):
    reference, moving, transition = views
    with pytest.raises(ValueError, match="same shape"):
        blend(reference, moving[:, :10], transition, 4)
    with pytest.raises(ValueError, match="method"):
        blend(reference, moving, transition, 4, method="median")
    with pytest.raises(ValueError, match="adaptive"):
        blend(reference, moving, None, 4)
    with pytest.raises(ValueError, match="blending_range"):
        blend(reference, moving, transition, -1)
    with pytest.raises(ValueError, match="transition_yx"):
        blend(reference, moving, transition[:5], 4)
    with pytest.raises(ValueError, match="axis"):
        blend_channels(reference, moving, 4, axis="y")
