"""fuse_views: alignment and blending in one blockwise pass, against its in-memory reference."""

import dask.array as da
import numpy as np
import pytest

from isoview_dask.fuse import (IntensityResult, apply_inplane_transform_numpy, blend_numpy, fuse_views,
                               fuse_views_numpy)

SHAPE = (13, 70, 90)
CHUNKINGS = [SHAPE, (4, 20, 30), (5, 33, 17), (3, 70, 41)]
IDS = ["one", "many", "uneven", "slabs"]


def assert_equal_to_rounding(got, expected):
    """Equal whatever the chunking, to float32 rounding: OpenCV's warp computes a block's source
    coordinates from its own origin in single precision, so float32 results may differ in the last
    bits (relative 1e-6 at most) and integer results by one count where a value sits on a .5."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if got.dtype.kind == "f":
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0, equal_nan=True)
    else:
        difference = np.abs(got.astype(np.int64) - expected.astype(np.int64))
        assert difference.max() <= 1 and np.count_nonzero(difference) <= 1e-4 * difference.size


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(7)
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    reference = (1000 + 800 * np.sin(y / 7.0) * np.cos(x / 9.0) + rng.normal(0, 30, SHAPE)).clip(0)
    moving = (900 + 700 * np.cos(y / 5.0 + x / 11.0) + rng.normal(0, 30, SHAPE)).clip(0)
    transition = 5.0 + 3.0 * np.sin(np.arange(SHAPE[1] * SHAPE[2]).reshape(SHAPE[1:]) / 97.0)
    return reference.astype(np.uint16), moving.astype(np.uint16), transition


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=IDS)
@pytest.mark.parametrize("method", ["adaptive", "geometric", "average"])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_fuse_views_equals_numpy_over_chunkings(pair, chunks, method, dtype):
    reference, moving, transition = pair
    intensity = IntensityResult.from_ratio(0.83)
    args = ((4.3, -6.6), 0.9, transition, 4.0, method, intensity)
    expected = fuse_views_numpy(reference, moving, *args, dtype=dtype)
    lazy = fuse_views(da.from_array(reference, chunks=chunks), da.from_array(moving, chunks=chunks), *args,
                      dtype=dtype)
    assert lazy.dtype == np.dtype(dtype)
    assert_equal_to_rounding(lazy.compute(), expected)


def test_fuse_views_is_transform_then_blend(pair):
    """The reference is literally apply_inplane_transform_numpy followed by blend_numpy; and frame edges the
    shifted camera never saw take the reference camera alone (no half-bright seam)."""
    reference, moving, transition = pair
    aligned = apply_inplane_transform_numpy(moving, (0.0, 12.5), 0.0, cval=np.nan)
    expected = blend_numpy(reference, aligned, transition, 6.0, dtype=np.float32)
    got = fuse_views(reference, moving, (0.0, 12.5), 0.0, transition, 6.0).compute()
    np.testing.assert_array_equal(got, expected)
    # the last 12 columns sample beyond the moving frame: reference only, even behind the transition
    np.testing.assert_array_equal(got[-1, :, -12:], reference[-1, :, -12:].astype(np.float32))


@pytest.mark.parametrize("slab", [1, 4, 13, 20])
def test_slab_planes_rechunk_z_only(pair, slab):
    reference, moving, transition = pair
    lazy = fuse_views(da.from_array(reference, chunks=(5, 35, 45)), moving, (1.5, 2.5), 0.3, transition, 3.0,
                      slab_planes=slab)
    assert lazy.chunks[0][0] == min(slab, SHAPE[0]) and sum(lazy.chunks[0]) == SHAPE[0]
    assert_equal_to_rounding(lazy.compute(), fuse_views_numpy(reference, moving, (1.5, 2.5), 0.3, transition, 3.0))


def test_front_planes_skip_the_moving_camera(pair):
    """Planes entirely in front of the transition are the (scaled) reference alone: a NaN-filled moving
    camera changes nothing there, and fills only its own side elsewhere."""
    reference, moving, _ = pair
    poisoned = np.full(SHAPE, np.nan, np.float32)
    got = fuse_views(reference, poisoned, (0.0, 0.0), 0.0, 9.0, 2.0, dtype=np.float32).compute()
    np.testing.assert_array_equal(got, reference.astype(np.float32))


def test_bad_arguments(pair):
    reference, moving, transition = pair
    with pytest.raises(ValueError, match="same shape"):
        fuse_views(reference, moving[:-1], (0, 0), 0.0, transition)
    with pytest.raises(ValueError, match="slab_planes"):
        fuse_views(reference, moving, (0, 0), 0.0, transition, slab_planes=-2)
    with pytest.raises(ValueError, match="offset_yx"):
        fuse_views(reference, moving, (np.nan, 0), 0.0, transition)
