"""The isotropic volume against synthetic truth, and the blockwise graph against one whole-volume block."""

import dask
import dask.array
import numpy as np
import pytest

from isoview_dask.isotropic import (PSFModel, ReconstructionOptions, bead_fwhm, correlation, output_grid,
                                    reconstruct, resample_view, view_psfs)
from isoview_dask.isotropic.backend import gpu_available, resolve_device
from isoview_dask.isotropic.resample import resample_block, source_window
from isoview_dask.synthetic.fourview import FourViewSpec, fourview


@pytest.fixture
def case(fourview_case):
    """A rendered truth, its registration (both shared with the registration tests), and the true-motion mean."""
    _, truth, registration = fourview_case
    grid = output_grid(truth.vw00.shape, truth.voxel00)
    with dask.config.set(scheduler="threads"):
        mean = ((resample_view(truth.vw00, truth.voxel00, grid)
                 + resample_view(truth.vw90, truth.voxel90, grid, truth.transform)) / 2).compute()
    return truth, registration, grid, mean


def _run(truth, registration, grid, method, **options):
    kernels = view_psfs(PSFModel(fwhm_um=truth.spec.psf_fwhm_um), registration.transform, grid.voxel_um,
                        target_fwhm_um=truth.spec.psf_fwhm_um[0])
    with dask.config.set(scheduler="threads"):
        return reconstruct(truth.vw00, truth.voxel00, truth.vw90, truth.voxel90, grid, registration.transform,
                           kernels, scale90=registration.scale90,
                           options=ReconstructionOptions(method=method, **options)).compute()


def _bead_ratio(volume, truth, grid):
    fwhm = np.nanmedian(bead_fwhm(volume, truth.beads_um / grid.voxel_um), axis=0)
    return float(fwhm.max() / fwhm.min()), fwhm


def test_deconvolution_beats_the_true_motion_mean_and_is_isotropic(case):
    truth, registration, grid, mean = case
    result = _run(truth, registration, grid, "deconvolution")
    r_mean = correlation(mean, truth.ideal)
    r_result = correlation(result, truth.ideal)
    assert r_result >= r_mean + 0.05, (r_result, r_mean)
    ratio, fwhm = _bead_ratio(result, truth, grid)
    assert ratio <= 1.45, fwhm
    mean_ratio, _ = _bead_ratio(mean, truth, grid)
    assert mean_ratio > 2.0  # the baseline really is anisotropic: the test can fail
    # no bright ring at the specimen's edge: just outside the body, no brighter than the ideal image there
    points = np.indices(grid.shape).reshape(3, -1).T * grid.voxel_um
    radius = np.sqrt(np.sum(((points - truth.body_centre_um) / truth.body_axes_um) ** 2, axis=1)).reshape(grid.shape)
    shell = (radius > 1.0) & (radius < 1.15)
    assert result[shell].mean() <= truth.ideal[shell].mean() * 1.15 + 0.01 * truth.ideal.max()


def test_average_is_the_true_motion_mean_quality(case):
    truth, registration, grid, mean = case
    result = _run(truth, registration, grid, "average")
    assert abs(correlation(result, truth.ideal) - correlation(mean, truth.ideal)) <= 0.01


@pytest.mark.parametrize("method", ["deconvolution", "average"])
def test_blockwise_equals_one_whole_volume_block(method):
    """Chunk borders leave no trace beyond a stated tolerance: max 0.5 % of the peak, RMS 0.1 % of the spread."""
    truth = fourview(FourViewSpec(shape=(61, 64, 64), nuclei=150, beads=6, seed=3))
    grid = output_grid(truth.vw00.shape, truth.voxel00)
    kernels = view_psfs(PSFModel(fwhm_um=truth.spec.psf_fwhm_um), truth.transform, grid.voxel_um,
                        target_fwhm_um=0.77)
    options = ReconstructionOptions(method=method, iterations=8)
    with dask.config.set(scheduler="threads"):
        whole = reconstruct(truth.vw00, truth.voxel00, truth.vw90, truth.voxel90, grid, truth.transform, kernels,
                            options=options, block=grid.shape).compute()
        assert whole.shape == grid.shape
        for block in [(16, 32, 32), (32, 64, 24), (61, 20, 64)]:
            graph = reconstruct(truth.vw00, truth.voxel00, truth.vw90, truth.voxel90, grid, truth.transform,
                                kernels, options=options, block=block)
            assert graph.chunks[0][0] == block[0] and graph.chunks[2][0] == block[2]
            blockwise = graph.compute()
            difference = np.abs(blockwise - whole)
            assert difference.max() <= 5e-3 * whole.max(), block
            assert np.sqrt(np.mean(difference ** 2)) <= 1e-3 * whole.std(), block


def test_resample_view_blockwise_equals_whole_volume():
    truth = fourview(FourViewSpec(shape=(41, 48, 48), nuclei=60, beads=0, seed=8))
    grid = output_grid(truth.vw00.shape, truth.voxel00)
    from isoview_dask.isotropic.geometry import index_map
    matrix, offset = index_map(truth.transform, grid.voxel_zyx, truth.voxel90)
    whole = resample_block(truth.vw90, matrix, offset, grid.shape)
    for chunks in [(8, 16, 16), (41, 7, 48), (20, 48, 5)]:
        with dask.config.set(scheduler="threads"):
            blockwise = resample_view(truth.vw90, truth.voxel90, grid, truth.transform, chunks=chunks).compute()
        assert np.abs(blockwise - whole).max() <= 1e-4 * np.abs(whole).max()
    window, block_offset = source_window(matrix, offset, (0, 0, 0), (8, 8, 8), truth.vw90.shape)
    window_voxels = np.prod([s.stop - s.start for s in window])
    assert window_voxels < 0.5 * truth.vw90.size  # an 8^3 corner block reads a corner of the view


def test_options_are_validated():
    with pytest.raises(ValueError, match="unknown isotropic method"):
        ReconstructionOptions(method="wiener")
    with pytest.raises(ValueError, match="update"):
        ReconstructionOptions(update="fast")
    with pytest.raises(ValueError, match="block"):
        ReconstructionOptions(block=(4, 64, 64))
    with pytest.raises(ValueError, match="unknown isotropic device"):
        resolve_device("tpu")
    if not gpu_available():
        with pytest.raises(RuntimeError, match="CuPy"):
            resolve_device("gpu")
        assert resolve_device("auto") == "cpu"


@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
def test_gpu_equals_cpu():
    truth = fourview(FourViewSpec(shape=(41, 48, 48), nuclei=60, beads=0, seed=9))
    grid = output_grid(truth.vw00.shape, truth.voxel00)
    kernels = view_psfs(PSFModel(fwhm_um=truth.spec.psf_fwhm_um), truth.transform, grid.voxel_um, target_fwhm_um=0.77)
    results = {}
    for device in ("cpu", "gpu"):
        with dask.config.set(scheduler="threads"):
            results[device] = reconstruct(truth.vw00, truth.voxel00, truth.vw90, truth.voxel90, grid,
                                          truth.transform, kernels,
                                          options=ReconstructionOptions(device=device)).compute()
    assert np.abs(results["gpu"] - results["cpu"]).max() <= 1e-3 * results["cpu"].max()


@pytest.mark.parametrize("scales, offsets, shape", [((0.2, 1.0, 1.0), (0.3, 0.0, 0.0), (96, 48, 40)),
                                                    ((0.2, 0.5, 2.0), (0.3, 1.2, -0.4), (90, 100, 20))])
def test_separable_cubic_equals_scipy(scales, offsets, shape):
    """The axis-by-axis path used for VW00 gives scipy's cubic B-spline result (mode nearest), edges included."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    source = ndimage.gaussian_filter(rng.random((20, 48, 40)).astype(np.float32), 1.0)
    ours = resample_block(source, np.diag(scales), np.array(offsets), shape)
    reference = ndimage.affine_transform(source, np.array(scales), offset=offsets, output_shape=shape, order=3,
                                         mode="nearest")
    assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max()


def test_coarse_grid_bins_the_views_first_and_keeps_positions():
    """On a grid 2x coarser than the pixel, block means come first; a linear ramp lands where it should."""
    from isoview_dask.isotropic.reconstruct import prebinned

    voxel = (2.03, 0.406, 0.406)
    k, i, j = np.indices((10, 40, 40)).astype(np.float32)
    ramp = 1 + 0.1 * k * voxel[0] + 0.05 * i * voxel[1] + 0.02 * j * voxel[2]
    view = dask.array.from_array(ramp, chunks=(5, 15, 15))
    binned, binned_voxel, _ = prebinned(view, voxel, np.eye(4), 0.812)
    assert binned.shape == (10, 20, 20) and binned_voxel == pytest.approx((2.03, 0.812, 0.812))
    grid = output_grid(ramp.shape, voxel, voxel_um=0.812)
    kernels = (np.ones((1, 1, 1), np.float32),) * 2
    with dask.config.set(scheduler="threads"):
        result = reconstruct(view, voxel, view, voxel, grid, np.eye(4), kernels,
                             options=ReconstructionOptions(method="average"), block=(16, 16, 16)).compute()
    g = np.indices(grid.shape) * grid.voxel_um
    expected = 1 + 0.1 * g[0] + 0.05 * g[1] + 0.02 * g[2]
    # away from the faces, where the spline's edge extension bends a ramp (about two source planes and pixels),
    # within 0.1 % of the ramp's range: a half-pixel slip of the binned positions would be 0.4 %
    inner = (slice(6, -6), slice(3, -3), slice(3, -3))
    assert np.abs(result[inner] - expected[inner]).max() < 1e-3 * np.ptp(expected)
