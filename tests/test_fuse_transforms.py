"""View transforms and the blockwise in-plane resampling of the opposing camera."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from isoview_dask.fuse import (
    apply_inplane_transform,
    apply_inplane_transform_numpy,
    max_displacement_px,
    view_transform,
)
from isoview_dask.synthetic import register_opposing

SHAPE = (5, 70, 90)  # (Z, Y, X)
CHUNKINGS = [SHAPE, (2, 16, 16), (3, (30, 25, 15), (40, 7, 43))]  # one chunk, many small, uneven


@pytest.fixture(scope="module")
def textured():
    """A smooth random texture (so interpolation errors stay small and comparable)."""
    rng = np.random.default_rng(3)
    return ndimage.gaussian_filter(rng.normal(size=SHAPE), (0, 2, 2)).astype(np.float32) * 10 + 50


def test_view_transform_flips_and_rotates():
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert np.array_equal(view_transform(volume, flip_h=True), volume[..., ::-1])
    assert np.array_equal(view_transform(volume, flip_v=True), volume[:, ::-1])
    assert np.array_equal(view_transform(volume, flip_z=True), volume[::-1])
    assert np.array_equal(view_transform(volume, rotation=90), np.rot90(volume, 1, axes=(1, 2)))
    lazy = view_transform(da.from_array(volume, chunks=(1, 2, 2)), flip_h=True, flip_z=True)
    assert isinstance(lazy, da.Array)
    assert np.array_equal(lazy.compute(), volume[::-1, :, ::-1])
    image = view_transform(volume[0], flip_h=True)  # 2D maps (coordinate masks) too
    assert np.array_equal(image, volume[0, :, ::-1])
    with pytest.raises(ValueError):
        view_transform(volume[0], flip_z=True)
    with pytest.raises(ValueError):
        view_transform(volume, rotation=45)


def test_integer_offset_follows_the_convention(textured):
    """out[q] = F[q + t] for a pure translation: an independent check of the sign convention."""
    dy, dx = 3, -5
    out = apply_inplane_transform_numpy(textured, (dy, dx), 0.0, order=1)
    Y, X = SHAPE[1:]
    assert np.allclose(out[:, 0:Y - dy, 5:X], textured[:, dy:Y, 0:X - 5], atol=1e-4)
    assert np.all(out[:, Y - dy:, :] == 0) and np.all(out[:, :, :5] == 0)  # outside the moving frame


def test_numpy_reference_matches_the_synthetic_convention(textured):
    """The generator's own resampler implements the same formula independently."""
    for order in (0, 1, 3):
        ours = apply_inplane_transform_numpy(textured, (3.3, -7.2), 1.7, order=order)
        theirs = register_opposing(textured, (3.3, -7.2), 1.7, order=order)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-3)


def test_rotation_is_about_the_frame_centre():
    """A point at the centre stays put; a point on the x axis moves along y by r sin(theta)."""
    frame = np.zeros((1, 101, 101), np.float32)
    frame[0, 50, 50] = 1.0
    out = apply_inplane_transform_numpy(frame, (0.0, 0.0), 10.0, order=1)
    assert out[0, 50, 50] == pytest.approx(1.0)
    # q = c + (0, 40) samples p = c + R (0, 40) = c + 40 (-sin, cos): put a blob there.
    theta = np.radians(10.0)
    frame[:] = 0
    py, px = 50 - 40 * np.sin(theta), 50 + 40 * np.cos(theta)
    yy, xx = np.mgrid[0:101, 0:101]
    frame[0] = np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * 2.0**2))
    out = apply_inplane_transform_numpy(frame, (0.0, 0.0), 10.0, order=3)
    peak = np.unravel_index(np.argmax(out[0]), out[0].shape)
    assert peak == (50, 90)


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=["one-chunk", "many-small", "uneven"])
@pytest.mark.parametrize("order", [0, 1, 3])
def test_blockwise_equals_numpy(textured, chunks, order):
    offset, rotation = (6.4, -11.7), -1.3
    expected = apply_inplane_transform_numpy(textured, offset, rotation, order=order)
    lazy = apply_inplane_transform(da.from_array(textured, chunks=chunks), offset, rotation, order=order)
    assert lazy.shape == SHAPE and lazy.dtype == np.float32
    np.testing.assert_allclose(lazy.compute(), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=["one-chunk", "many-small", "uneven"])
def test_blockwise_nan_outside_frame_and_float64(textured, chunks):
    expected = apply_inplane_transform_numpy(textured, (-4.5, 8.25), 0.6, cval=np.nan, dtype=np.float64)
    lazy = apply_inplane_transform(da.from_array(textured, chunks=chunks), (-4.5, 8.25), 0.6, cval=np.nan,
                                   dtype=np.float64)
    result = lazy.compute()
    assert result.dtype == np.float64
    assert np.array_equal(np.isnan(result), np.isnan(expected)) and np.isnan(expected).any()
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-9, equal_nan=True)


def test_identity_and_halo():
    volume = da.from_array(np.arange(4 * 40 * 40, dtype=np.uint16).reshape(4, 40, 40), chunks=(2, 8, 8))
    out = apply_inplane_transform(volume, (0.0, 0.0), 0.0, order=1)
    assert np.array_equal(out.compute(), volume.compute().astype(np.float32))
    # 20 px offset: the halo (22 px) exceeds the 8 px chunks, which are merged
    shifted = apply_inplane_transform(volume, (20.0, 0.0), 0.0, order=1)
    assert min(shifted.chunks[1]) >= 22 or len(shifted.chunks[1]) == 1
    np.testing.assert_array_equal(shifted.compute(), apply_inplane_transform_numpy(volume.compute(), (20, 0), 0))
    assert max_displacement_px((101, 101), (3.0, 4.0), 0.0) == pytest.approx(5.0)
    assert max_displacement_px((101, 101), (0.0, 0.0), 90.0) == pytest.approx(np.sqrt(2) * 50 * np.sqrt(2))


def test_rejects_bad_arguments(textured):
    with pytest.raises(ValueError, match="offset_yx"):
        apply_inplane_transform(textured, (1.0,), 0.0)
    with pytest.raises(ValueError, match="order"):
        apply_inplane_transform(textured, (1.0, 2.0), 0.0, order=7)
    with pytest.raises(ValueError, match="Z, Y, X"):
        apply_inplane_transform(textured[0], (1.0, 2.0), 0.0)


AFFINE_CASES = [  # (rotation degrees, offset (oy, ox)): sub-pixel, integer (sources exactly on the last
    # pixel), none, a quarter turn (most sources outside), and a larger one
    (1.7, (10.2, 5.1)), (0.0, (3.0, -2.0)), (0.0, (0.0, 0.0)), (90.0, (0.0, 0.0)), (-0.4, (-6.5, 12.25)),
]


@pytest.mark.parametrize("rotation_deg, offset", AFFINE_CASES)
@pytest.mark.parametrize("cval", [np.nan, 0.0, -3.0])
def test_affine_plane_matches_scipy(rotation_deg, offset, cval):
    """The OpenCV path gives scipy's constant-mode result: the same pixels outside, the same values inside."""
    from isoview_dask.fuse.transforms import _opencv_warp, affine_plane, inplane_matrix

    assert _opencv_warp() is not None, "opencv-python-headless >= 5 (exact float warps) should be installed"
    rng = np.random.default_rng(11)
    image = (rng.random((120, 137)) * 1000).astype(np.float32)
    matrix = inplane_matrix(rotation_deg)
    expected = ndimage.affine_transform(image, matrix, offset=offset, output_shape=(110, 130), order=1,
                                        mode="constant", cval=cval)
    got = affine_plane(image, matrix, offset, (110, 130), order=1, cval=cval)
    assert got.dtype == np.float32 and got.shape == (110, 130)
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-3, equal_nan=True)
    out = np.empty((110, 130), np.float32)
    assert affine_plane(image, matrix, offset, (110, 130), cval=cval, output=out) is out
    np.testing.assert_array_equal(out, got)


def test_affine_plane_keeps_scipy_where_opencv_differs():
    """float64 images, other orders and images holding NaN (with a finite cval) are scipy's, bit for bit."""
    from isoview_dask.fuse.transforms import affine_plane, inplane_matrix

    rng = np.random.default_rng(12)
    image = rng.random((60, 70)) * 100
    matrix, offset = inplane_matrix(0.8), (2.3, -1.1)
    for img, order in ((image, 1), (image.astype(np.float32), 0), (image.astype(np.float32), 3)):
        expected = ndimage.affine_transform(img, matrix, offset=offset, output_shape=(60, 70), order=order,
                                            mode="constant", cval=0.0)
        np.testing.assert_array_equal(affine_plane(img, matrix, offset, (60, 70), order=order), expected)
    holed = image.astype(np.float32)
    holed[30, 30] = np.nan
    expected = ndimage.affine_transform(holed, matrix, offset=offset, output_shape=(60, 70), order=1,
                                        mode="constant", cval=0.0)
    np.testing.assert_array_equal(affine_plane(holed, matrix, offset, (60, 70)), expected)


def test_cubic_plane_is_opencv_cubic_convolution_with_mirrored_edges():
    """cubic_plane: the identity reproduces the image; a rotation of a smooth image agrees with scipy's
    mirrored cubic B-spline to 1 % of its range (OpenCV's kernel, a = -0.75, is about as accurate as linear
    interpolation there), edges included; float64 is left to scipy (None)."""
    from scipy import ndimage

    from isoview_dask.fuse.transforms import cubic_plane, inplane_matrix
    image = ndimage.gaussian_filter(np.random.default_rng(4).standard_normal((120, 90)), 4.0).astype(np.float32)
    same = cubic_plane(image, np.eye(2), (0.0, 0.0), image.shape)
    np.testing.assert_allclose(same, image, atol=1e-6 * np.abs(image).max())
    rotation = inplane_matrix(1.7)
    centre = (np.array(image.shape) - 1) / 2
    offset = centre + np.array([1.3, -2.6]) - rotation @ centre
    fast = cubic_plane(image, rotation, offset, (100, 80))
    spline = ndimage.affine_transform(image.astype(np.float64), rotation, offset=offset, output_shape=(100, 80),
                                      order=3, mode="mirror")
    assert np.abs(fast - spline).max() < 1e-2 * np.ptp(image)
    shifted = cubic_plane(image, np.eye(2), (0.5, 0.0), image.shape)  # not a plain copy: it interpolates
    assert np.abs(shifted - image).max() > 1e-3 * np.ptp(image)
    assert cubic_plane(image.astype(np.float64), rotation, offset, (100, 80)) is None
