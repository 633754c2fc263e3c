"""Every blockwise or reduction function of ``isoview_dask.correct`` against its
plain numpy / scipy reference, over several chunkings: chunk borders must
leave no trace (exact equality for integer results, rtol 1e-5 for floats).
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi

from isoview_dask.correct import (
    coordinate_masks,
    correct_dead_pixels,
    estimate_background_level,
    foreground_mask,
    max_projections,
    pixel_statistics,
    smooth,
    subtract_background,
    threshold_level,
)

SHAPE = (32, 64, 64)
CHUNKINGS = {
    "one-chunk": SHAPE,
    "small": (3, 7, 11),
    "uneven": ((5, 11, 16), (40, 24), (17, 47)),
}


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """uint16 stack: smooth structure, noise, a zero corner (as after clipping)."""
    rng = np.random.default_rng(42)
    structure = ndi.gaussian_filter(rng.normal(0.0, 1.0, SHAPE), (2.0, 4.0, 4.0))
    data = 100.0 + 4000.0 * (structure - structure.min()) / np.ptp(structure)
    data += rng.normal(0.0, 30.0, SHAPE)
    data[:4, :6, :9] = 0.0
    return np.clip(np.rint(data), 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def dead_mask() -> np.ndarray:
    """Scattered defects plus the hard cases: frame corners and edges,
    adjacent pairs and a 3 x 3 cluster (whose centre has no live neighbour)."""
    rng = np.random.default_rng(3)
    mask = rng.random(SHAPE[1:]) < 0.03
    mask[0, 0] = mask[-1, -1] = mask[0, 30] = mask[50, -1] = True
    mask[20:23, 30:33] = True
    mask[39:41, 16:18] = True  # straddles chunk borders of the "small"/"uneven" chunkings
    return mask


@pytest.fixture(params=list(CHUNKINGS), ids=list(CHUNKINGS))
def chunks(request):
    return CHUNKINGS[request.param]


def reference_repair(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Plain loop: median of the live in-frame 3 x 3 neighbours, else of all in-frame ones."""
    out = volume.copy()
    height, width = mask.shape
    for y, x in np.argwhere(mask):
        window = [
            (j, i)
            for j in range(max(y - 1, 0), min(y + 2, height))
            for i in range(max(x - 1, 0), min(x + 2, width))
        ]
        live = [(j, i) for j, i in window if not mask[j, i]] or window
        rows, cols = zip(*live)
        median = np.median(volume[:, list(rows), list(cols)].astype(np.float64), axis=1)
        out[:, y, x] = np.clip(np.rint(median), 0, 65535).astype(volume.dtype)
    return out


def test_pixel_statistics(volume, chunks):
    mean_yx, std_yx = dask.compute(*pixel_statistics(da.from_array(volume, chunks=chunks)))
    as_float = volume.astype(np.float64)
    np.testing.assert_allclose(mean_yx, as_float.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(std_yx, as_float.std(axis=0), rtol=1e-5, atol=1e-9)


def test_correct_dead_pixels(volume, dead_mask, chunks):
    repaired = correct_dead_pixels(da.from_array(volume, chunks=chunks), dead_mask)
    assert repaired.chunks == da.from_array(volume, chunks=chunks).chunks
    result = repaired.compute()
    assert result.dtype == volume.dtype
    np.testing.assert_array_equal(result, reference_repair(volume, dead_mask))


def test_correct_dead_pixels_with_dask_mask(volume, dead_mask, chunks):
    lazy_mask = da.from_array(dead_mask, chunks=(13, 29))
    result = correct_dead_pixels(da.from_array(volume, chunks=chunks), lazy_mask).compute()
    np.testing.assert_array_equal(result, reference_repair(volume, dead_mask))


def test_correct_dead_pixels_subtracting_a_dark_frame_in_the_same_pass(volume, dead_mask, chunks):
    """dark=: the repaired stack less the dark frame (clipped at 0), against the plain loop, in every chunking
    (border-straddling defects and the cluster included); the dark frame exceeds some voxels."""
    rng = np.random.default_rng(5)
    dark = rng.integers(90, 130, SHAPE[1:]).astype(np.uint16)
    dark[10:12, 40:44] = 5000
    repaired = reference_repair(volume, dead_mask)
    expected = repaired - np.minimum(repaired, dark)
    result = correct_dead_pixels(da.from_array(volume, chunks=chunks), dead_mask, dark=dark).compute()
    assert result.dtype == volume.dtype
    np.testing.assert_array_equal(result, expected)
    no_defects = correct_dead_pixels(da.from_array(volume, chunks=chunks), np.zeros(SHAPE[1:], bool), dark=dark)
    np.testing.assert_array_equal(no_defects.compute(), volume - np.minimum(volume, dark))
    with pytest.raises(ValueError, match="dark must be"):
        correct_dead_pixels(da.from_array(volume, chunks=chunks), dead_mask, dark=dark.astype(np.float32))


@pytest.mark.parametrize("kind", ["scalar", "frame"])
def test_subtract_background(volume, chunks, kind):
    rng = np.random.default_rng(5)
    background = 250.5 if kind == "scalar" else rng.uniform(90.0, 400.0, SHAPE[1:])
    result = subtract_background(da.from_array(volume, chunks=chunks), background).compute()
    expected = np.rint(volume.astype(np.float32) - np.float32(background) if kind == "scalar"
                       else volume.astype(np.float32) - background.astype(np.float32))
    expected = np.clip(expected, 0, 65535).astype(np.uint16)
    assert result.dtype == np.uint16
    np.testing.assert_array_equal(result, expected)


def test_estimate_background_level(volume, chunks):
    lazy = da.from_array(volume, chunks=chunks)
    whole = estimate_background_level(lazy, percentile=5.0)
    assert whole == pytest.approx(np.percentile(volume[volume != 0], 5.0), rel=1e-12)
    # A subsample depends only on the seed, not on the chunking.
    sampled = estimate_background_level(lazy, percentile=5.0, max_samples=5_000, seed=1)
    assert sampled == estimate_background_level(volume, percentile=5.0, max_samples=5_000, seed=1)


@pytest.mark.parametrize("precise", [True, False], ids=["precise", "fast"])
def test_smooth(volume, chunks, precise):
    sigma_lateral, spacing_ratio = 2.0, 2.5
    result = smooth(
        da.from_array(volume, chunks=chunks), sigma_lateral, spacing_ratio=spacing_ratio, precise=precise
    ).compute()
    expected = ndi.gaussian_filter(
        volume.astype(np.float32),
        (sigma_lateral / spacing_ratio, sigma_lateral, sigma_lateral),
        mode="reflect",
        truncate=4.0 if precise else 2.0,
    )
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-3)


def test_threshold_level_and_mask(volume, chunks):
    smoothed = ndi.gaussian_filter(volume.astype(np.float32), 1.5)
    result = threshold_level(da.from_array(smoothed, chunks=chunks), t=0.4, min_percentile=1.0)
    min_intensity = np.percentile(smoothed, 1.0)
    mean_intensity = smoothed[smoothed > min_intensity].astype(np.float64).mean()
    assert result.min_intensity == pytest.approx(min_intensity, rel=1e-6)
    assert result.mean_intensity == pytest.approx(mean_intensity, rel=1e-6)
    assert result.level == pytest.approx(min_intensity + 0.4 * (mean_intensity - min_intensity), rel=1e-6)

    mask = foreground_mask(da.from_array(smoothed, chunks=chunks), result.level).compute()
    np.testing.assert_array_equal(mask, smoothed > result.level)


def test_coordinate_masks(volume, chunks):
    mask = volume > 2500
    mask[:, 10, :] = False  # a row without foreground: NaN in xz
    mask[:, :, 5] = False  # a column without foreground: NaN in xy
    xy, xz = dask.compute(*coordinate_masks(da.from_array(mask, chunks=chunks)))

    z = np.arange(SHAPE[0])[:, None, None]
    x = np.arange(SHAPE[2])[None, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        expected_xy = (mask * z).sum(axis=0) / mask.sum(axis=0)
        expected_xz = (mask * x).sum(axis=2) / mask.sum(axis=2)
    assert xy.dtype == xz.dtype == np.float32
    assert xy.shape == SHAPE[1:] and xz.shape == SHAPE[:2]
    assert np.isnan(xy[:, 5]).all() and np.isnan(xz[:, 10]).all()
    np.testing.assert_allclose(xy, expected_xy, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(xz, expected_xz, rtol=1e-6, equal_nan=True)


def test_max_projections(volume, chunks):
    projections = dask.compute(max_projections(da.from_array(volume, chunks=chunks)))[0]
    np.testing.assert_array_equal(projections["xy"], volume.max(axis=0))
    np.testing.assert_array_equal(projections["xz"], volume.max(axis=1))
    np.testing.assert_array_equal(projections["yz"], volume.max(axis=2))
    assert all(p.dtype == volume.dtype for p in projections.values())
