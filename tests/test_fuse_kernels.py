"""The numba plane-blend kernel of fuse_views against its numpy twin, by hand and through fuse_views."""

import dask.array as da
import numpy as np
import pytest

import isoview_dask.fuse.apply as apply_module
from isoview_dask.fuse import IntensityResult, fuse_views, fuse_views_numpy
from isoview_dask.fuse.blending import front_weight
from isoview_dask.fuse.kernels import (MODE_BACK, MODE_FRONT, MODE_HALF, MODE_RAMP, PROFILE_CODES, SIGMOID,
                                       blend_plane, blend_plane_numpy, cast_parameters, front_weight_value,
                                       kernel_supports, plane_limits, plane_mode, work_dtype)
from test_fuse_apply import assert_equal_to_rounding  # the same tolerance as fuse_views' own tests

PLANE = (37, 53)
GAINS = (0.83, 1.21)


def run_kernel(reference, aligned, transition, z, blending_range, profile, gains, out_dtype, limits):
    """One plane through the kernel as _fuse_block drives it (front-only attempt, then the full blend)."""
    work = aligned.dtype.type
    out = np.empty(reference.shape, out_dtype)
    tile = transition if transition is not None else np.zeros((1, 1))
    integer_out, low, high, nan_value = cast_parameters(work, out_dtype)
    mode = plane_mode(transition is not None, z, *limits)
    args = (tile, z, blending_range, PROFILE_CODES[profile], SIGMOID)
    tail = (work(gains[0]), work(gains[1]), reference.dtype.kind == "f", low, high, nan_value, integer_out, out)
    if mode == MODE_FRONT and blend_plane(reference, aligned, *args, mode, *tail):
        return out
    blend_plane(reference, aligned, *args, MODE_RAMP if mode == MODE_FRONT else mode, *tail)
    return out


def run_numpy(reference, aligned, transition, z, blending_range, profile, gains, out_dtype, limits):
    return blend_plane_numpy(reference, aligned, transition, z, blending_range=blending_range, profile=profile,
                             gains=gains, work=aligned.dtype.type, out_dtype=out_dtype, front_only_below=limits[0],
                             back_only_above=limits[1])


def assert_bits_equal(got, expected):
    """Bit for bit: float outputs compared as their integer bit patterns (signed zeros and NaNs too)."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if got.dtype.kind == "f":
        view = np.uint32 if got.dtype == np.float32 else np.uint64
        np.testing.assert_array_equal(got.view(view), expected.view(view))
    else:
        np.testing.assert_array_equal(got, expected)


def planes(reference_dtype, work, seed=0, missing=True):
    """A reference plane (a strided view, as dask hands out), an aligned plane with a NaN border and
    holes, and a transition map spanning planes 3..9."""
    rng = np.random.default_rng(seed)
    big = rng.normal(1000, 400, (PLANE[0] + 4, 2 * PLANE[1]))
    if np.dtype(reference_dtype).kind == "u":
        big = big.clip(0)
    reference = big.astype(reference_dtype)[2:-2, ::2]
    aligned = rng.normal(900, 500, PLANE).astype(work)
    transition = 6.0 + 3.0 * np.sin(np.arange(PLANE[0] * PLANE[1]).reshape(PLANE) / 23.0)
    if missing:
        aligned[:, -5:] = np.nan  # the moving camera's frame edge
        aligned[rng.random(PLANE) < 0.05] = np.nan
        if reference.dtype.kind == "f":
            reference[rng.random(PLANE) < 0.05] = np.nan
            reference[3, :4] = np.inf
            reference[:3, -5:] = np.nan  # both missing
    return reference, aligned, transition


# ------------------------------------------------------------------------------------------- weights


@pytest.mark.parametrize("profile", ["sigmoid", "linear"])
@pytest.mark.parametrize("blending_range", [0.0, 0.75, 4.0, 10.0])
def test_weight_value_equals_front_weight(profile, blending_range):
    """In float32 (the working precision of integer and float32 data) the weight is front_weight's,
    bit for bit. In float64 the sigmoid may differ by a few 1e-16 (absolute; the weight lies in [0, 1]):
    the kernel's exp is the C library's, numpy's a vectorised one (on AVX512 machines they differ in the
    last bit for a few % of arguments), and ``logistic - low`` amplifies that near weight 0. The linear
    ramp and the step have no exp: equal in float64 too."""
    distance = np.concatenate([np.linspace(-8, 8, 20001), [-blending_range / 2, blending_range / 2, 0.0, -0.0]])
    expected = front_weight(distance, blending_range, profile)
    got = np.array([front_weight_value(d, blending_range, PROFILE_CODES[profile], SIGMOID) for d in distance])
    np.testing.assert_array_equal(got.astype(np.float32), expected.astype(np.float32))
    if profile == "linear" or blending_range == 0:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    saturated = np.abs(distance) >= blending_range / 2
    np.testing.assert_array_equal(got[saturated & (distance < 0)], 1.0)
    if blending_range:
        np.testing.assert_array_equal(got[saturated & (distance > 0)], 0.0)


# ------------------------------------------------------------------------------------------- one plane


@pytest.mark.parametrize("profile", ["sigmoid", "linear"])
@pytest.mark.parametrize("blending_range", [0.0, 5.0])
@pytest.mark.parametrize("reference_dtype,out_dtype",
                         [(np.uint16, np.uint16), (np.uint16, np.float32), (np.float32, np.float32),
                          (np.float32, np.uint16), (np.float32, np.int16), (np.uint16, np.uint8)])
@pytest.mark.parametrize("with_transition", [True, False], ids=["transition", "average"])
def test_kernel_equals_numpy_twin_float32(profile, blending_range, reference_dtype, out_dtype, with_transition):
    """Float32 working precision: bit for bit on every plane of a volume (in front of, across and behind
    the transition), with NaN and inf in both views, gains != 1, integer rounding and clipping."""
    reference, aligned, transition = planes(reference_dtype, np.float32)
    if np.dtype(out_dtype) == np.int16:
        reference = reference * np.float32(40)  # beyond int16's range, both signs
        reference -= np.float32(30000)
    transition = transition if with_transition else None
    limits = plane_limits(transition, blending_range)
    for z in np.arange(14, dtype=np.float64):
        args = (reference, aligned, transition, z, blending_range, profile, GAINS, np.dtype(out_dtype), limits)
        assert_bits_equal(run_kernel(*args), run_numpy(*args))


@pytest.mark.parametrize("profile", ["sigmoid", "linear"])
@pytest.mark.parametrize("reference_dtype,out_dtype",
                         [(np.float64, np.float32), (np.float64, np.uint16), (np.uint16, np.float64)])
def test_kernel_equals_numpy_twin_float64(profile, reference_dtype, out_dtype):
    """Float64 working precision: bit for bit with the linear ramp; with the sigmoid the weight may
    differ in its last bit (the C library's exp against numpy's vectorised one, see above), so the
    blend agrees to 1e-15 of the views' magnitude, and an integer output to one count (a .5 tie)."""
    reference, aligned, transition = planes(reference_dtype, np.float64, seed=3)
    limits = plane_limits(transition, 5.0)
    for z in np.arange(14, dtype=np.float64):
        args = (reference, aligned, transition, z, 5.0, profile, GAINS, np.dtype(out_dtype), limits)
        got, expected = run_kernel(*args), run_numpy(*args)
        if profile == "linear":
            assert_bits_equal(got, expected)
        elif got.dtype.kind == "f":
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15 * 4000)
        else:
            assert np.abs(got.astype(np.int64) - expected).max() <= 1


def test_kernel_by_hand():
    """Known values, not a comparison with the twin: the ramp's weights, the gains, missing views,
    round half to even and clipping."""
    transition = np.full((1, 8), 10.0)
    reference = np.array([[100, 100, 100, 7, 7, 65535, 0, 100]], np.float32)
    aligned = np.array([[300, 300, np.nan, 300, np.nan, 65535, 0, 50]], np.float32)
    reference[0, [1, 3, 4]] = np.nan
    out = np.empty((1, 8), np.float32)

    def blend(z, profile, out, gains=(1.0, 1.0), mode=MODE_RAMP):
        integer_out, low, high, nan_value = cast_parameters(np.float32, out.dtype)
        blend_plane(reference, aligned, transition, z, 4.0, PROFILE_CODES[profile], SIGMOID, mode,
                    np.float32(gains[0]), np.float32(gains[1]), True, low, high, nan_value, integer_out, out)
        return out[0]

    # at the transition: the mean; reference missing: the moving camera; moving missing: the reference;
    # both missing: 0
    np.testing.assert_array_equal(blend(10.0, "sigmoid", out)[:6], [200, 300, 100, 300, 0, 65535])
    # a quarter of the range behind the transition: the linear ramp gives the reference 1/4
    assert blend(11.0, "linear", out)[0] == 250
    sigmoid = blend(11.0, "sigmoid", out)[0]
    assert 260 < sigmoid < 290  # the sigmoid is steeper: less of the reference than the linear ramp
    assert blend(8.0, "sigmoid", out)[0] == 100 and blend(12.0, "sigmoid", out)[0] == 300
    assert blend(10.0, "linear", out, gains=(2.0, 0.5))[0] == 175
    assert blend(3.0, "linear", out, mode=MODE_HALF)[0] == 200
    assert blend(3.0, "linear", out, mode=MODE_BACK)[0] == 300
    as_uint16 = blend(10.0, "linear", np.empty((1, 8), np.uint16), gains=(1.0, 0.25))
    # 0.5 * 100 + 0.5 * 75 = 87.5 -> 88; reference missing: 0.25 * 300 = 75; 40959.375 -> 40959
    np.testing.assert_array_equal(as_uint16, [88, 75, 100, 75, 0, 40959, 0, 56])
    halves = np.array([[0.5, 1.5, 2.5, 3.5, -0.5, -3.0, 1e9, np.nan]], np.float32)
    reference[...], aligned[...] = halves, halves
    np.testing.assert_array_equal(blend(10.0, "linear", np.empty((1, 8), np.uint16)), [0, 2, 2, 4, 0, 0, 65535, 0])


def test_a_wrong_profile_or_range_is_caught():
    """The comparison discriminates: the kernel run with the other profile (or another range) does not
    match the twin, so a kernel that mixed them up would fail the tests above."""
    reference, aligned, transition = planes(np.uint16, np.float32, missing=False)
    limits = plane_limits(transition, 5.0)
    expected = run_numpy(reference, aligned, transition, 6.0, 5.0, "sigmoid", GAINS, np.dtype(np.float32), limits)
    assert_bits_equal(run_kernel(reference, aligned, transition, 6.0, 5.0, "sigmoid", GAINS, np.float32, limits),
                      expected)
    wrong_profile = run_kernel(reference, aligned, transition, 6.0, 5.0, "linear", GAINS, np.float32, limits)
    wrong_range = run_kernel(reference, aligned, transition, 6.0, 4.0, "sigmoid", GAINS, np.float32, limits)
    swapped_gains = run_kernel(reference, aligned, transition, 6.0, 5.0, "sigmoid", GAINS[::-1], np.float32, limits)
    for wrong in (wrong_profile, wrong_range, swapped_gains):
        assert np.count_nonzero(wrong != expected) > 0.2 * expected.size


def test_front_plane_with_missing_reference_falls_back_to_the_blend():
    """A plane in front of the transition everywhere is the reference alone, unless the reference has a
    missing pixel: then that pixel takes the moving camera (the front-only pass reports it)."""
    reference, aligned, transition = planes(np.float32, np.float32, missing=False)
    limits = plane_limits(transition, 2.0)
    assert plane_mode(True, 1.0, *limits) == MODE_FRONT
    args = (aligned, transition, 1.0, 2.0, "sigmoid", (1.0, 1.0), np.dtype(np.float32), limits)
    np.testing.assert_array_equal(run_kernel(reference, *args), reference)
    reference[20, 30] = np.nan
    got = run_kernel(reference, *args)
    assert got[20, 30] == aligned[20, 30]
    assert_bits_equal(got, run_numpy(reference, *args))


def test_behind_plane_keeps_numpys_signed_zeros():
    """Behind the transition numpy takes the moving camera itself when every pixel is present, but
    0 * f + 1 * b when one is missing, which turns b = -0.0 into +0.0: the kernel gives the same bits."""
    reference, aligned, transition = planes(np.float32, np.float32, missing=False)
    aligned[5, :10] = -0.0
    reference[5, :10] = 500.0  # 0 * f = +0
    limits = plane_limits(transition, 2.0)
    assert plane_mode(True, 13.0, *limits) == MODE_BACK
    args = (transition, 13.0, 2.0, "sigmoid", (1.0, 1.0), np.dtype(np.float32), limits)
    all_present = run_kernel(reference, aligned, *args)
    assert np.signbit(all_present[5, :10]).all()
    assert_bits_equal(all_present, run_numpy(reference, aligned, *args))
    aligned[0, 0] = np.nan
    one_missing = run_kernel(reference, aligned, *args)
    assert not np.signbit(one_missing[5, :10]).any()
    assert_bits_equal(one_missing, run_numpy(reference, aligned, *args))


def test_supported_dtypes_and_work():
    assert kernel_supports(np.uint16, np.uint16) and kernel_supports(np.float64, np.float32)
    assert not kernel_supports(np.uint16, np.int32) and not kernel_supports(np.float16, np.float32)
    assert not kernel_supports(np.uint64, np.uint16) and kernel_supports(np.int32, np.uint8)
    assert work_dtype(np.uint16, np.uint16, np.float32) is np.float32
    assert work_dtype(np.uint16, np.float64, np.uint16) is np.float64
    assert plane_limits(None, 4.0) == (-np.inf, np.inf)
    assert plane_mode(False, 3.0, -np.inf, np.inf) == MODE_HALF


# ------------------------------------------------------------------------------------------- fuse_views

SHAPE = (20, 64, 80)
CHUNKINGS = [SHAPE, (8, 32, 32), (7, 27, 45)]


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(11)
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    reference = (1200 + 900 * np.sin(y / 6.0 + z / 5.0) * np.cos(x / 8.0) + rng.normal(0, 40, SHAPE)).clip(0)
    moving = (1000 + 700 * np.cos(y / 5.0 + x / 9.0 - z / 7.0) + rng.normal(0, 40, SHAPE)).clip(0)
    transition = 9.5 + 4.0 * np.sin(y[0] / 11.0) * np.cos(x[0] / 13.0)
    return reference.astype(np.uint16), moving.astype(np.uint16), transition



@pytest.mark.parametrize("chunks", CHUNKINGS, ids=["whole", "cubes", "uneven"])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
@pytest.mark.parametrize("profile", ["sigmoid", "linear"])
def test_fuse_views_equals_numpy(volumes, chunks, dtype, profile):
    reference, moving, transition = volumes
    args = ((3.7, -5.2), 1.4, transition, 6.0, "adaptive", IntensityResult.from_ratio(0.87))
    expected = fuse_views_numpy(reference, moving, *args, profile=profile, dtype=dtype)
    lazy = fuse_views(da.from_array(reference, chunks=chunks), da.from_array(moving, chunks=chunks), *args,
                      profile=profile, dtype=dtype)
    got = lazy.compute()
    assert_equal_to_rounding(got, expected)
    if chunks == SHAPE:  # one block: the same warp as the reference, so the same bits
        assert_bits_equal(got, expected)


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=["whole", "cubes", "uneven"])
@pytest.mark.parametrize("method", ["adaptive", "geometric", "average"])
@pytest.mark.parametrize("reference_dtype,dtype", [(np.uint16, np.uint16), (np.float32, np.float32)])
def test_fuse_views_kernel_equals_numpy_path(volumes, monkeypatch, chunks, method, reference_dtype, dtype):
    """fuse_views with the kernel against fuse_views with the numpy per-plane blend, same chunking (so the
    same warps): bit for bit, NaN in the reference included."""
    reference, moving, transition = volumes
    reference = reference.astype(reference_dtype)
    if reference.dtype.kind == "f":
        reference[4:, 10:14, 20:30] = np.nan
        reference[0, 0, :5] = np.nan  # a front-only plane with missing pixels
    args = ((2.2, 6.1), -0.8, transition, 4.0, method, IntensityResult.from_ratio(1.13))

    def fused():
        return fuse_views(da.from_array(reference, chunks=chunks), da.from_array(moving, chunks=chunks), *args,
                          dtype=dtype).compute(scheduler="synchronous")

    with_kernel = fused()
    monkeypatch.setattr(apply_module, "kernel_supports", lambda *dtypes: False)
    assert_bits_equal(with_kernel, fused())


def test_fuse_views_other_dtypes_use_numpy(volumes):
    """Outputs the kernel does not handle (int32 here) go through the numpy blend, same result."""
    reference, moving, transition = volumes
    args = ((1.0, 2.0), 0.5, transition, 4.0)
    got = fuse_views(da.from_array(reference, chunks=SHAPE), moving, *args, dtype=np.int32).compute()
    np.testing.assert_array_equal(got, fuse_views_numpy(reference, moving, *args, dtype=np.int32))
