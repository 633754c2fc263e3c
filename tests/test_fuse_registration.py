"""Registration on analytic images with a known transform (fast unit tests).

The accuracy on synthetic recordings processed from raw data is tested in
``test_fuse_accuracy.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from isoview_dask.fuse import (
    RegistrationResult,
    apply_inplane_transform_numpy,
    inplane_matrix,
    register_images,
    register_pair,
)


def blob_pair(shape, offset, rotation_deg, seed=0, n_blobs=None, noise=0.02):
    """Reference and flipped-moving images of the same Gaussian blobs, exactly in the pair convention.

    A blob at ``b`` in the reference appears at ``R (b - c) + c + t`` in the moving image.
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    n_blobs = n_blobs or int(height * width / 150)
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    spots = centre + (rng.uniform(-0.42, 0.42, (n_blobs, 2)) * np.array(shape))
    sigma = rng.uniform(1.2, 3.0, n_blobs)
    amplitude = rng.uniform(0.5, 1.0, n_blobs)
    moved = (inplane_matrix(rotation_deg) @ (spots - centre).T).T + centre + np.asarray(offset)
    yy, xx = np.mgrid[0:height, 0:width].astype(float)

    def render(points):
        image = np.zeros(shape)
        for (py, px), s, a in zip(points, sigma, amplitude):
            y0, y1 = int(max(py - 4 * s, 0)), int(min(py + 4 * s + 2, height))
            x0, x1 = int(max(px - 4 * s, 0)), int(min(px + 4 * s + 2, width))
            image[y0:y1, x0:x1] += a * np.exp(-((yy[y0:y1, x0:x1] - py) ** 2 + (xx[y0:y1, x0:x1] - px) ** 2)
                                              / (2 * s**2))
        return image + noise * rng.normal(size=shape) + 0.3  # a background level the high-pass removes

    return render(spots), render(moved)


@pytest.mark.parametrize("offset, rotation", [((7.35, -12.8), 0.6), ((-18.2, 3.45), -0.95), ((0.0, 0.0), 0.0)])
def test_recovers_offset_and_rotation(offset, rotation):
    reference, moving = blob_pair((128, 144), offset, rotation, seed=1)
    result = register_images(reference, moving)
    assert isinstance(result, RegistrationResult)
    assert np.abs(np.subtract(result.offset_yx, offset)).max() < 0.05
    assert abs(result.rotation_deg - rotation) < 0.05
    assert result.confidence > 0.9 and result.error < 0.5
    assert result.details["rejected"] is None
    aligned = apply_inplane_transform_numpy(moving, result.offset_yx, result.rotation_deg, order=3)
    inner = np.s_[25:-25, 25:-25]
    assert np.corrcoef(aligned[inner].ravel(), reference[inner].ravel())[0, 1] > 0.99


def test_pyramid_for_large_frames():
    reference, moving = blob_pair((300, 280), (-22.6, 15.3), 1.4, seed=2, noise=0.05)
    result = register_images(reference, moving)
    assert result.details["pyramid_levels"] == 2
    assert np.abs(np.subtract(result.offset_yx, (-22.6, 15.3))).max() < 0.05
    assert abs(result.rotation_deg - 1.4) < 0.05


@pytest.mark.parametrize("fine_size", [128, 64])
def test_rotation_searched_on_a_binned_level_only(monkeypatch, fine_size):
    """Frames above FINE_SIZE search the rotation on a binned level and refine only the translation at
    full size (how 2048 x 2048 frames are registered); the accuracy holds and fewer resamplings run."""
    from isoview_dask.fuse import registration
    reference, moving = blob_pair((300, 280), (-22.6, 15.3), 1.4, seed=2, noise=0.05)
    full = register_images(reference, moving)
    monkeypatch.setattr(registration, "FINE_SIZE", fine_size)
    binned = register_images(reference, moving)
    assert np.abs(np.subtract(binned.offset_yx, (-22.6, 15.3))).max() < 0.05
    assert abs(binned.rotation_deg - 1.4) < 0.05
    assert binned.details["evaluations"] < full.details["evaluations"]


def test_cubic_convolution_on_binned_levels_finds_what_b_splines_find(monkeypatch):
    """The rotation search's trial angles on binned levels are warped by cubic convolution (OpenCV), the
    translations and the full-size level by cubic B-splines: the result equals an all-B-spline search to
    a hundredth of a pixel and a thousandth of a degree."""
    from isoview_dask.fuse import registration
    reference, moving = blob_pair((300, 280), (-22.6, 15.3), 1.4, seed=2, noise=0.05)
    monkeypatch.setattr(registration, "FINE_SIZE", 64)  # search the rotation on binned levels
    fast = register_images(reference, moving)
    monkeypatch.setattr(registration, "cubic_plane", lambda *args: None)  # B-splines everywhere
    spline = register_images(reference, moving)
    assert np.abs(np.subtract(fast.offset_yx, spline.offset_yx)).max() < 0.01
    assert abs(fast.rotation_deg - spline.rotation_deg) < 1e-3
    assert np.abs(np.subtract(fast.offset_yx, (-22.6, 15.3))).max() < 0.05 and abs(fast.rotation_deg - 1.4) < 0.05


def test_masks_exclude_debris():
    reference, moving = blob_pair((128, 128), (5.2, -3.7), 0.4, seed=3)
    moving[100:126, 2:28] += 5 * np.hanning(26)[:, None] * np.hanning(26)[None, :]  # bright debris
    mask_mov = np.ones(moving.shape, bool)
    mask_mov[95:, :35] = False
    result = register_images(reference, moving, mask_mov=mask_mov)
    assert np.abs(np.subtract(result.offset_yx, (5.2, -3.7))).max() < 0.05
    assert abs(result.rotation_deg - 0.4) < 0.05


def test_unrelated_images_have_low_confidence():
    reference, _ = blob_pair((128, 128), (0, 0), 0, seed=4)
    _, other = blob_pair((128, 128), (0, 0), 0, seed=5)
    related = register_images(*blob_pair((128, 128), (3.3, 2.2), 0.3, seed=4))
    unrelated = register_images(reference, other)
    assert related.confidence > 0.9
    assert unrelated.confidence < 0.3


def test_offsets_beyond_the_search_range_are_rejected():
    reference, moving = blob_pair((128, 128), (14.4, -9.1), 0.2, seed=6)
    result = register_images(reference, moving, search_px=6)
    assert result.confidence == 0.0 and "search range" in result.details["rejected"]
    assert np.all(np.abs(result.offset_yx) <= 6)
    limited = register_images(reference, moving, max_rotation_deg=0.1)
    assert limited.confidence == 0.0 and "rotation" in limited.details["rejected"]
    translation_only = register_images(reference, moving, max_rotation_deg=0)
    assert translation_only.rotation_deg == 0.0
    assert np.abs(np.subtract(translation_only.offset_yx, (14.4, -9.1))).max() < 0.6


def test_register_pair_reduces_volumes_on_the_middle_planes():
    """Planes far from the middle differ between the cameras; the slab around it does not."""
    reference, moving = blob_pair((96, 112), (4.6, -6.3), -0.5, seed=7)
    rng = np.random.default_rng(8)
    n_planes = 21
    ref_volume = np.empty((n_planes, 96, 112))
    mov_volume = np.empty((n_planes, 96, 112))
    for k in range(n_planes):
        # unrelated clutter away from the middle plane 10, strongest at the ends
        clutter_ref, clutter_mov = (rng.uniform(0, 1, (96, 112)) for _ in range(2))
        weight = abs(k - 10) / 10
        ref_volume[k] = (1 - weight) * reference + weight * 3 * clutter_ref
        mov_volume[k] = (1 - weight) * moving + weight * 3 * clutter_mov
    result = register_pair(ref_volume, mov_volume, xy_coordinate_mask=np.full((96, 112), 10.0))
    assert np.abs(np.subtract(result.offset_yx, (4.6, -6.3))).max() < 0.05
    assert abs(result.rotation_deg + 0.5) < 0.05
    assert result.details["surface_median_plane"] == pytest.approx(10.0)
    assert result.summary()["offset_yx"] == list(result.offset_yx)
    as_images = register_pair(reference, moving)  # 2D input: registered as is
    assert np.allclose(as_images.offset_yx, result.offset_yx, atol=0.05)


def test_rejects_bad_arguments():
    image = np.zeros((32, 32))
    with pytest.raises(ValueError, match="same shape"):
        register_images(image, np.zeros((32, 30)))
    with pytest.raises(ValueError, match="highpass"):
        register_images(image, image, highpass_sigmas=(3.0, 2.0))
    with pytest.raises(ValueError, match="search_px"):
        register_images(image, image, search_px=-1)
    with pytest.raises(ValueError, match="mask_ref"):
        register_pair(np.zeros((4, 32, 32)), np.zeros((4, 32, 32)), mask_ref=np.zeros((4, 32, 30), bool))


# ------------------------------------------------------------------------------------ plane filters

@pytest.mark.parametrize("shape", [(256, 256), (130, 97), (20, 300), (7, 7)])
def test_plane_filters_equal_scipy(shape):
    """The OpenCV Gaussian and dilation the registration uses give scipy's results: same kernel radius,
    same mirrored borders (incl. frames narrower than the kernel), no growth from outside the frame."""
    from scipy import ndimage

    from isoview_dask.fuse.planefilters import dilate_plane, gaussian_plane
    rng = np.random.default_rng(5)
    image = (rng.random(shape) * 1000).astype(np.float32)
    image[:, :3] += 500  # a step at the border: a wrong border mode shows there
    for sigma in (0.5, 1.0, 1.7, 2.0, 6.0):
        expected = ndimage.gaussian_filter(image, sigma)
        got = gaussian_plane(image, sigma)
        assert got.dtype == np.float32 and got.shape == image.shape
        np.testing.assert_allclose(got, expected, atol=2e-3, rtol=0)
    mask = rng.random(shape) > 0.97
    mask[0, :] = True  # foreground on the frame's edge
    for iterations in (1, 3):
        np.testing.assert_array_equal(dilate_plane(mask, iterations), ndimage.binary_dilation(mask, iterations=iterations))
