"""Intensity matching on the transition surface, against a hand-built two-camera specimen."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from isoview_dask.fuse import IntensityResult, intensity_factor, surface_image

SHAPE = (30, 48, 56)  # (Z, Y, X)
ATTENUATION_PLANES = 8.0  # attenuation length in planes


@pytest.fixture(scope="module")
def two_cameras():
    """An ellipsoid with texture seen by two cameras attenuated from opposite sides (gain 0.7)."""
    rng = np.random.default_rng(5)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij")
    centre, semi = (14.5, 23.5, 27.5), (11.0, 19.0, 22.0)
    radius2 = sum(((c - m) / a) ** 2 for c, m, a in zip((z, y, x), centre, semi))
    body = radius2 <= 1
    texture = ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.5)
    signal = np.where(body, 1000 * (1 + 3 * texture), 0).clip(0)
    half_chord = semi[0] * np.sqrt(np.clip(1 - (radius2 - ((z - centre[0]) / semi[0]) ** 2), 0, None))
    depth_0 = np.clip(z - (centre[0] - half_chord), 0, 2 * half_chord)  # camera 0 looks from low z
    depth_1 = 2 * half_chord - depth_0
    reference = signal * np.exp(-depth_0 / ATTENUATION_PLANES)
    moving = 0.7 * signal * np.exp(-depth_1 / ATTENUATION_PLANES)
    noise = rng.normal(scale=5.0, size=(2,) + SHAPE)
    return (reference + noise[0]).astype(np.float32), (moving + noise[1]).astype(np.float32), body


def test_ratio_on_the_surface_is_the_gain_ratio(two_cameras):
    reference, moving, body = two_cameras
    result = intensity_factor(da.from_array(reference, chunks=(7, 20, 20)), moving, body, body)
    assert result.ratio == pytest.approx(0.7, rel=0.01)
    assert result.scaled_camera == "moving" and result.factor == pytest.approx(1 / result.ratio)
    assert result.overlap_pixels > 500


def test_percentile_statistic_and_explicit_surface(two_cameras):
    reference, moving, body = two_cameras
    by_percentile = intensity_factor(reference, moving, body, body, percentile=90)
    assert by_percentile.ratio == pytest.approx(0.7, rel=0.03)
    # away from the middle the attenuation no longer cancels: 4.5 planes in front of it the
    # reference camera looks through 9 planes less tissue than the moving one
    off_centre = intensity_factor(reference, moving, body, body, transition_yx=np.full(SHAPE[1:], 10.0))
    assert off_centre.ratio == pytest.approx(0.7 * np.exp(-9 / ATTENUATION_PLANES), rel=0.05)


def test_brighter_moving_camera_scales_the_reference(two_cameras):
    reference, moving, body = two_cameras
    swapped = intensity_factor(moving[::-1], reference[::-1], body[::-1], body[::-1])
    assert swapped.scaled_camera == "reference"
    assert swapped.ratio == pytest.approx(1 / 0.7, rel=0.01) and swapped.factor == swapped.ratio
    assert IntensityResult.from_ratio(1.0).factor == 1.0
    assert swapped.summary()["scaled_camera"] == "reference"


def test_surface_image_interpolates_between_planes():
    volume = np.broadcast_to(np.arange(10, dtype=np.float32)[:, None, None] * 2, (10, 4, 5))
    surface = np.full((4, 5), 3.25)
    np.testing.assert_allclose(surface_image(volume, surface).compute(), 6.5)
    np.testing.assert_allclose(surface_image(volume, surface, half_width=3.0).compute(), 6.5, rtol=1e-6)
    np.testing.assert_allclose(surface_image(volume, 0.0, half_width=2.0).compute(), 2 / 3, rtol=1e-6)
    with pytest.raises(ValueError):
        surface_image(volume, surface, half_width=0.5)


@pytest.mark.parametrize("chunks", [(40, 50, 60), (8, 50, 60), (8, 16, 25), (3, 50, 7)])
@pytest.mark.parametrize("half_width", [1.0, 2.5, 7.0])
def test_surface_image_is_the_weighted_slab_mean_in_any_chunking(chunks, half_width):
    """Against the definition, per pixel in float64: triangular weights around a varying surface, over
    blocks that split the slab along z, y and x (so a block's planes start anywhere)."""
    import dask.array as da
    rng = np.random.default_rng(3)
    volume = rng.integers(0, 4000, (40, 50, 60)).astype(np.uint16)
    surface = 20 + 5 * rng.random((50, 60))
    depth = np.arange(40, dtype=np.float64)[:, None, None]
    weight = np.maximum(0.0, 1 - np.abs(depth - surface.astype(np.float32)) / half_width)
    for data in (volume, volume > 2000):
        expected = (weight * data).sum(axis=0) / weight.sum(axis=0)
        got = surface_image(da.from_array(data, chunks=chunks), surface, half_width).compute()
        assert got.dtype == np.float32 and got.shape == (50, 60)
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6)


def test_refuses_without_overlap(two_cameras):
    reference, moving, body = two_cameras
    with pytest.raises(ValueError, match="foreground"):
        intensity_factor(reference, moving, body, np.zeros_like(body))
    with pytest.raises(ValueError, match="percentile"):
        intensity_factor(reference, moving, body, body, percentile=0)
    with pytest.raises(ValueError, match="mask_mov"):
        intensity_factor(reference, moving, body, body[:3])
