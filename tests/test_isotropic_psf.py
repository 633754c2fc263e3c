"""PSFs of the two views in the isotropic output frame."""

import numpy as np
import pytest
import tifffile

from isoview_dask.errors import InputNotFoundError
from isoview_dask.isotropic.geometry import compose, orientation_transform
from isoview_dask.isotropic.psf import (PSFError, PSFModel, gaussian_covariance, gaussian_kernel, load_psf,
                                        residual_covariance, view_psfs, warp_psf, warped_covariance)


def _rotation(deg, axis):
    a = np.radians(deg)
    out = np.eye(4)
    i, j = [k for k in range(3) if k != axis]
    out[[i, i, j, j], [i, j, i, j]] = [np.cos(a), -np.sin(a), np.sin(a), np.cos(a)]
    return out


@pytest.mark.parametrize("orientation", ["+y,+z,+x", "+x,-y,+z"])
def test_warped_psf_equals_psf_of_warped_geometry(orientation):
    """Resampling the view's PSF volume through the transform gives the Gaussian of the warped covariance."""
    transform = compose(_rotation(2.0, 0), _rotation(-1.0, 2), orientation_transform(orientation, (40,) * 3, (40,) * 3))
    covariance = gaussian_covariance(0.77, 3.35)
    view_voxel = (0.2, 0.1, 0.1)  # the measured PSF is sampled finely, as a bead image would be
    half = np.ceil(5 * np.sqrt(np.diag(covariance)) / np.array(view_voxel)).astype(int)
    axes = [np.arange(-h, h + 1) * v for h, v in zip(half, view_voxel)]
    d = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    view_kernel = np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, np.linalg.inv(covariance), d))
    warped = warp_psf(view_kernel, view_voxel, transform, 0.406)
    exact = gaussian_kernel(warped_covariance(covariance, transform), 0.406)
    # compare on the common centred box
    box = tuple(slice((a - b) // 2, (a - b) // 2 + b) if a >= b else slice(None) for a, b in zip(warped.shape, exact.shape))
    inner = tuple(slice((b - a) // 2, (b - a) // 2 + a) if b > a else slice(None) for a, b in zip(warped.shape, exact.shape))
    diff = np.abs(warped[box] - exact[inner]).max()
    assert diff < 0.02 * exact.max()
    # the long axis went where the orientation sends VW90's z
    long_axis = int(np.argmax(exact.shape))
    assert long_axis == int(np.argmax(np.abs(transform[0, :3])))


def test_kernels_are_centred_odd_and_normalised():
    psf00, psf90 = view_psfs(PSFModel(fwhm_um=(0.77, 3.35)), orientation_transform("+y,+z,+x", (40,) * 3, (40,) * 3),
                             0.406)
    for kernel in (psf00, psf90):
        assert all(n % 2 == 1 for n in kernel.shape)
        assert kernel.sum() == pytest.approx(1.0, abs=1e-5)
        assert np.unravel_index(np.argmax(kernel), kernel.shape) == tuple(n // 2 for n in kernel.shape)
    assert psf00.shape[0] > 3 * psf00.shape[1]   # VW00 is long along z
    assert psf90.shape[1] > 3 * psf90.shape[0]   # VW90 (scan axis = VW00's y) is long along y


def test_residual_covariance_removes_the_target_blur():
    covariance = gaussian_covariance(0.77, 3.35)
    residual = residual_covariance(covariance, 0.77, 0.406)
    sigma_lateral2 = covariance[1, 1]
    assert residual[0, 0] == pytest.approx(covariance[0, 0] - sigma_lateral2)
    assert residual[1, 1] == pytest.approx((0.25 * 0.406) ** 2)  # floored, never negative


def test_load_psf_recentres_and_reports_bad_files(tmp_path):
    covariance = gaussian_covariance(0.8, 3.0)
    kernel = gaussian_kernel(covariance, 0.2, threshold=0.0)
    shifted = np.roll(kernel, (3, -2, 1), axis=(0, 1, 2)) * 1000 + 5
    path = tmp_path / "psf.tif"
    tifffile.imwrite(path, shifted.astype(np.float32))
    model = load_psf(path, (0.2, 0.2, 0.2))
    centre = tuple(n // 2 for n in model.volume.shape)
    assert np.unravel_index(np.argmax(model.volume), model.volume.shape) == centre
    assert model.volume.sum() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(InputNotFoundError, match="does not exist"):
        load_psf(tmp_path / "missing.tif", (0.2, 0.2, 0.2))
    tifffile.imwrite(tmp_path / "flat.tif", np.ones((8, 8), np.float32))
    with pytest.raises(PSFError, match="3-D"):
        load_psf(tmp_path / "flat.tif", (0.2, 0.2, 0.2))


@pytest.mark.parametrize("seed", [0, 1])
def test_psf_measured_on_beads_matches_the_truth(seed):
    """Both views' beads give the lateral and axial FWHM of the truth (0.77 / 3.35 µm, beads 0.1 µm sigma)."""
    from isoview_dask.isotropic.beads import estimate_psf_fwhm
    from isoview_dask.synthetic.fourview import FourViewSpec, fourview

    truth = fourview(FourViewSpec(seed=seed))
    bead = 2.3548 * 0.1
    expected = (np.hypot(0.77, bead), np.hypot(3.35, bead))
    for view, voxel in ((truth.vw00, truth.voxel00), (truth.vw90, truth.voxel90)):
        estimate = estimate_psf_fwhm(view, voxel)
        assert estimate is not None and estimate.beads >= 10
        assert estimate.fwhm_um[0] == pytest.approx(expected[0], rel=0.06)
        assert estimate.fwhm_um[1] == pytest.approx(expected[1], rel=0.06)


def test_no_beads_gives_none():
    from isoview_dask.isotropic.beads import estimate_psf_fwhm
    from isoview_dask.synthetic.fourview import FourViewSpec, fourview

    truth = fourview(FourViewSpec(seed=3, beads=0, nuclei=0))
    assert estimate_psf_fwhm(truth.vw00, truth.voxel00) is None
