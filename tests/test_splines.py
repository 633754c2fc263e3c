"""The compiled cubic B-spline plane resampler against scipy's affine_transform (its numpy twin)."""

import numpy as np
import pytest
from scipy import ndimage

from isoview_dask.fuse.splines import affine_bspline_plane


def _image(shape, seed=0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 1.5).astype(np.float32)


@pytest.mark.parametrize("shape", [(64, 96), (37, 23), (1, 40), (5, 5)])
@pytest.mark.parametrize("angle, shift", [(0.0, (0.0, 0.0)), (1.7, (2.3, -4.6)), (-30.0, (-80.5, 61.25)),
                                          (0.4, (0.5, 0.5))])
def test_equals_scipy_affine_transform(shape, angle, shift):
    """Inside, near and far outside the frame (mirror extension): scipy's values to float64 rounding
    (1e-6 of the image's range after the cast to float32; bit-identical in practice)."""
    coefficients = ndimage.spline_filter(_image(shape), order=3, mode="mirror")
    theta = np.deg2rad(angle)
    matrix = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    expected = ndimage.affine_transform(coefficients, matrix, offset=shift, order=3, mode="mirror",
                                        prefilter=False, output=np.float32)
    ours = affine_bspline_plane(coefficients, matrix, shift)
    assert ours.dtype == np.float32 and ours.shape == shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6 * max(1e-12, float(np.ptp(expected))))


def test_other_output_shape_and_preallocated_output():
    coefficients = ndimage.spline_filter(_image((40, 50), 1), order=3, mode="mirror")
    matrix = np.array([[1.0, 0.1], [-0.05, 0.9]])
    expected = ndimage.affine_transform(coefficients, matrix, offset=(1.0, 2.0), output_shape=(30, 70), order=3,
                                        mode="mirror", prefilter=False, output=np.float64)
    out = np.empty((30, 70))
    assert affine_bspline_plane(coefficients, matrix, (1.0, 2.0), output=out) is out
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_interpolates_the_samples_at_integer_positions():
    """Not a tautology against scipy: at integer shifts the spline returns the image's own samples."""
    image = _image((20, 30), 2).astype(np.float64)
    coefficients = ndimage.spline_filter(image, order=3, mode="mirror")
    shifted = affine_bspline_plane(coefficients, np.eye(2), (2.0, 3.0), output=np.empty((18, 27)))
    np.testing.assert_allclose(shifted, image[2:, 3:], atol=1e-9)


def test_where_skips_pixels_and_keeps_the_others_bit_for_bit():
    coefficients = ndimage.spline_filter(_image((48, 64), 3), order=3, mode="mirror")
    matrix = np.array([[0.999, -0.04], [0.04, 0.999]])
    where = np.random.default_rng(4).random((48, 64)) > 0.6
    full = affine_bspline_plane(coefficients, matrix, (1.5, -2.25))
    sparse = affine_bspline_plane(coefficients, matrix, (1.5, -2.25), where=where)
    np.testing.assert_array_equal(sparse[where], full[where])
    assert np.all(sparse[~where] == 0) and np.any(full[~where] != 0)
    with pytest.raises(ValueError, match="where has shape"):
        affine_bspline_plane(coefficients, matrix, (0, 0), where=where[:, :10])
