"""Tests of the synthetic IsoView generator: files, conventions and the physics of the ground truth."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from isoview_dask.errors import InputNotFoundError, OutputExistsError
from isoview_dask.metadata import read_push_config
from isoview_dask.synthetic import (
    SyntheticSpec,
    camera_affine,
    flip_lr,
    generate_dataset,
    load_truth,
    register_opposing,
    synthetic_volume,
)

TINY_SHAPE = (16, 64, 64)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """Tiny dataset, four cameras, both layouts, one timepoint."""
    out = tmp_path_factory.mktemp("synth") / "tiny"
    return generate_dataset(out, preset="tiny", layout="both")


@pytest.fixture(scope="module")
def timelapse(tmp_path_factory):
    """Cameras 0/1 over six timepoints with an outlier at index 3."""
    out = tmp_path_factory.mktemp("synth") / "timelapse"
    return generate_dataset(out, preset="tiny", cameras=(0, 1), timepoints=6, outlier_timepoint=3, seed=5,
                            drift_px_per_timepoint=0.15)


def _stack_bytes(truth, camera, timepoint=0, layout=None):
    return truth.stack_path(camera, timepoint, layout).read_bytes()


def _interior(shape, margin):
    m = np.zeros(shape, bool)
    m[..., margin:-margin, margin:-margin] = True
    return m


def _register_error(truth, a, b, offset, rotation, kind="clean", timepoint=0, margin=10):
    ref = getattr(truth, kind)(a, timepoint).astype(np.float64)
    moved = register_opposing(flip_lr(getattr(truth, kind)(b, timepoint).astype(np.float64)), offset, rotation)
    m = _interior(ref.shape, margin)
    r, g = ref[m], moved[m]
    rms = float(np.sqrt(np.mean((r - g) ** 2)) / np.sqrt(np.mean(r**2)))
    corr = float(np.corrcoef(r, g)[0, 1])
    return rms, corr


# ----------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_any_slab_size(tmp_path, ds):
    spec = ds.spec
    again = generate_dataset(tmp_path / "again", spec, slab_planes=3)       # different chunking
    for cam in spec.cameras:
        assert _stack_bytes(again, cam) == _stack_bytes(ds, cam)
        np.testing.assert_array_equal(again.ideal(cam), ds.ideal(cam))
        np.testing.assert_array_equal(again.dark_frame(cam), ds.dark_frame(cam))
    assert again.data["cameras"] == ds.data["cameras"]


def test_different_seed_different_data(tmp_path, ds):
    other = generate_dataset(tmp_path / "other", ds.spec.replace(seed=1, layout="keller"))
    for cam in ds.cameras:
        assert _stack_bytes(other, cam) != _stack_bytes(ds, cam)
    assert other.offset((0, 1)) != ds.offset((0, 1))


def test_lazy_volume_matches_written_stack(ds):
    for cam in (0, 3):
        lazy = synthetic_volume(ds.spec, cam, 0, "raw", slab_planes=5)
        assert lazy.chunks[0] == (5, 5, 5, 1)
        np.testing.assert_array_equal(lazy.compute(), ds.raw(cam))
        np.testing.assert_array_equal(synthetic_volume(ds.spec, cam, 0, "clean").compute(), ds.clean(cam))


def test_spec_round_trip(ds):
    spec = ds.spec
    assert SyntheticSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.shape == TINY_SHAPE
    assert spec.voxel_size_um == ds.voxel_size_um


# ----------------------------------------------------------------------------------------------- files


def test_keller_and_flat_files(ds):
    Z, Y, X = ds.shape
    keller = ds.raw_dir / "SPM00"
    flat = ds.flat_dir
    channel = {0: 0, 1: 0, 2: 1, 3: 1}
    for cam in range(4):
        name = f"SPC00_TM00000_ANG000_CM{cam}_CHN{channel[cam]:02d}_PH0.stack"
        k = keller / "TM00000" / "ANG000" / name
        f = flat / name
        assert k.stat().st_size == f.stat().st_size == 2 * Z * Y * X
        assert k.read_bytes() == f.read_bytes()
        assert ds.stack_path(cam) == k and ds.stack_path(cam, layout="flat") == f
        for folder in (keller, flat):
            bg = tifffile.imread(folder / f"Background_{cam}.tif")
            assert bg.dtype == np.uint16 and bg.shape == (Y, X)
            np.testing.assert_array_equal(bg, np.rint(ds.dark_frame(cam)).astype(np.uint16))
    assert sorted(p.name for p in (keller / "TM00000").iterdir()) == ["ANG000", "ch0.xml", "ch1.xml"]
    assert sorted(p.name for p in flat.glob("*.xml")) == ["ch0_spec00.xml", "ch1_spec00.xml"]
    assert sorted(p.name for p in ds.root.iterdir()) == ["raw", "raw_flat", "truth"]


def test_flat_only_layout(tmp_path):
    truth = generate_dataset(tmp_path / "flat", preset="tiny", cameras=(2,), layout="flat",
                             write_truth_volumes=False)
    assert truth.raw_dir is None
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == ["raw_flat", "truth"]
    assert sorted(p.name for p in truth.flat_dir.iterdir()) == [
        "Background_2.tif", "SPC00_TM00000_ANG000_CM2_CHN01_PH0.stack", "ch1_spec00.xml"]
    with pytest.raises(InputNotFoundError, match="truth volumes were not written"):
        truth.ideal(2)


def test_xml_metadata(ds):
    Z, Y, X = ds.shape
    for path, cams in ((ds.raw_dir / "SPM00" / "TM00000" / "ch0.xml", (0, 1)),
                       (ds.raw_dir / "SPM00" / "TM00000" / "ch1.xml", (2, 3)),
                       (ds.flat_dir / "ch1_spec00.xml", (2, 3))):
        meta = read_push_config(path)
        assert meta.camera_indices == cams
        assert meta.frame_dimensions == ((Y, X, Z), (Y, X, Z))
        for pos, cam in enumerate(cams):
            assert meta.frame_for_camera(cam, pos) == (Y, X, Z)
        assert meta.z_step_um == pytest.approx(ds.voxel_size_um[0], rel=1e-12)
        assert meta.pixel_size_um == pytest.approx(0.40625, rel=1e-12)
        assert meta.time_point == 0
        assert meta.wavelength_nm == 488
        for key in ("exposure_time", "specimen_XYZT", "timestamp", "stack_direction", "detection_objective"):
            assert key in meta.attributes
    # the default z step makes the plane axis as long as a frame row
    assert Z * ds.voxel_size_um[0] == pytest.approx(X * ds.voxel_size_um[2])


def test_custom_magnification_round_trips(tmp_path):
    truth = generate_dataset(tmp_path / "mag", preset="tiny", cameras=(0,), magnification=20.0,
                             write_truth_volumes=False, n_dead=0)
    meta = read_push_config(truth.raw_dir / "SPM00" / "TM00000" / "ch0.xml")
    assert meta.pixel_size_um == pytest.approx(6.5 / 20, rel=1e-12)
    assert truth.voxel_size_um[1] == pytest.approx(0.325)
    assert truth.dead_pixels(0).size == 0


def test_truth_json_contents(ds):
    data = json.loads((ds.root / "truth" / "truth.json").read_text())
    assert "R(theta)" in data["conventions"]["opposing"]
    assert set(data["cameras"]) == {"0", "1", "2", "3"}
    assert [p["cameras"] for p in data["pairs"]] == [[0, 1], [2, 3]]
    for pair in ((0, 1), (2, 3)):
        dy, dx = ds.offset(pair)
        assert abs(dy) <= 4 and abs(dx) <= 4          # tiny frame: +-min(8, 64/16) px
        assert 0.1 < abs(dy) % 1 < 0.9 and 0.1 < abs(dx) % 1 < 0.9
        assert 0.2 <= abs(ds.rotation_deg(pair)) <= 0.8
        assert ds.gain_ratio(pair) == pytest.approx(ds.gain(pair[1]) / ds.gain(pair[0]))
    assert all(0.8 <= ds.gain(c) <= 1.3 for c in range(4))
    assert len({ds.gain(c) for c in range(4)}) == 4
    assert ds.outlier_timepoint is None


def test_output_exists(tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    with pytest.raises(OutputExistsError):
        generate_dataset(out, preset="tiny", cameras=(0,))
    assert list(out.iterdir()) == []
    truth = generate_dataset(out, preset="tiny", cameras=(0,), overwrite=True, write_truth_volumes=False)
    assert truth.stack_path(0).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["exists"]     # no partial leftovers


def test_load_truth_missing(tmp_path):
    with pytest.raises(InputNotFoundError):
        load_truth(tmp_path)


# ----------------------------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("pair", [(0, 1), (2, 3)])
def test_opposing_convention(ds, pair):
    a, b = pair
    offset, theta = ds.offset(pair), ds.rotation_deg(pair)
    rms, corr = _register_error(ds, a, b, offset, theta)
    assert corr > 0.999 and rms < 0.015
    wrong_shift, _ = _register_error(ds, a, b, (-offset[0], -offset[1]), theta)
    wrong_angle, _ = _register_error(ds, a, b, offset, -theta)
    nudged, _ = _register_error(ds, a, b, (offset[0], offset[1] + 0.1), theta)   # truth is exact to < 0.1 px
    assert nudged > 1.5 * rms
    no_flip_ref = ds.clean(a).astype(float)
    unflipped = register_opposing(ds.clean(b).astype(float), offset, theta)
    m = _interior(no_flip_ref.shape, 10)
    no_flip_corr = np.corrcoef(no_flip_ref[m], unflipped[m])[0, 1]
    assert wrong_shift > 10 * rms
    assert wrong_angle > 2 * rms
    assert no_flip_corr < 0.9
    # the body masks agree too (up to pixels on the boundary)
    mask_b = register_opposing(flip_lr(ds.body_mask(b).astype(np.float32)), offset, theta) > 0.5
    mask_a = ds.body_mask(a)
    assert np.mean(mask_a[m] != mask_b[m]) < 0.01


def test_camera_affines_follow_documented_formulas(ds):
    Z, Y, X = ds.shape
    dz, p, _ = ds.voxel_size_um
    k, y, x = 3.0, 10.0, 50.0
    cz, cy, cx = (Z - 1) / 2, (Y - 1) / 2, (X - 1) / 2
    v = np.array([k, y, x, 1.0])
    np.testing.assert_allclose(ds.camera_affine(0) @ v, [(k - cz) * dz, (y - cy) * p, (x - cx) * p, 1])
    np.testing.assert_allclose(ds.camera_affine(2) @ v, [(x - cx) * p, (y - cy) * p, (k - cz) * dz, 1])
    for a, b in ((0, 1), (2, 3)):
        # raw_b (k, y, x) is F_b at p = (y, X-1-x); it shows the point seen by camera a at q with p = R(q-c)+c+t
        t = np.array(ds.offset((a, b)))
        th = math.radians(ds.rotation_deg((a, b)))
        R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        c = np.array([cy, cx])
        q = np.array([20.3, 41.7])
        pf = R @ (q - c) + c + t
        raw_b = np.array([k, pf[0], X - 1 - pf[1], 1.0])
        np.testing.assert_allclose(ds.camera_affine(b) @ raw_b, ds.camera_affine(a) @ [k, q[0], q[1], 1],
                                   atol=1e-9)
        np.testing.assert_allclose(camera_affine(ds.spec, b), ds.camera_affine(b))


def test_orthogonal_views_see_the_same_specimen(ds):
    # camera 2 voxel (k, y, x) and camera 0 show the same point: check on the body mask (exact analytic edge)
    m0 = ds.body_mask(0)
    m2 = ds.body_mask(2)
    A0inv = np.linalg.inv(ds.camera_affine(0))
    kk, yy, xx = np.nonzero(np.ones(m2.shape, bool))
    pts = ds.camera_affine(2) @ np.stack([kk, yy, xx, np.ones_like(kk)]).astype(float)
    idx = A0inv @ pts
    sampled = ndimage.map_coordinates(m0.astype(np.float32), idx[:3], order=1, mode="constant") > 0.5
    agree = np.mean(sampled.reshape(m2.shape) == m2)
    assert agree > 0.97
    assert 0.1 < m2.mean() < 0.3


# ----------------------------------------------------------------------------------------------- noise model


def test_noise_model_and_dark(ds):
    for cam in (0, 1):
        raw = ds.raw(cam).astype(np.float64)
        dark = ds.dark_frame(cam).astype(np.float64)
        ideal = ds.ideal(cam).astype(np.float64)
        dead = np.broadcast_to(ds.dead_pixel_mask(cam), raw.shape)
        signal = raw - dark
        bright = (ideal > 200) & ~dead
        assert bright.sum() > 1000
        assert signal[bright].mean() == pytest.approx(ideal[bright].mean(), rel=0.01)
        # Poisson x gain plus read noise: variance = gain * ideal + read_noise^2
        gain, read = ds.gain(cam), ds.spec.read_noise
        z = (signal - ideal)[bright] / np.sqrt(gain * ideal[bright] + read**2)
        assert abs(z.mean()) < 0.05 and z.std() == pytest.approx(1.0, abs=0.05)
        empty = (ideal < 1e-3) & ~dead
        assert empty.sum() > 10000
        assert abs(signal[empty].mean()) < 0.1
        assert signal[empty].std() == pytest.approx(read, rel=0.05)
        # fixed pattern: column stripes and a ~100 count offset
        stats = ds.data["cameras"][str(cam)]["dark"]
        assert stats["mean"] == pytest.approx(100, abs=2)
        assert stats["column_std"] > 1.5
        assert np.all(dark == np.rint(dark))


def test_dead_pixels(ds):
    Z, Y, X = ds.shape
    n = max(12, round(4e-4 * Y * X))
    for cam in range(4):
        dead = ds.dead_pixels(cam)
        assert len(dead) == n
        assert set(dead.dtype.names) >= {"y", "x", "kind"}
        kinds = list(dead["kind"])
        assert kinds.count("hot") == n // 2 and kinds.count("stuck") == n - n // 2
        ys, xs = dead["y"].astype(int), dead["x"].astype(int)
        assert ys.min() >= 2 and xs.min() >= 2 and ys.max() <= Y - 3 and xs.max() <= X - 3
        cheb = np.maximum(abs(ys[:, None] - ys[None, :]), abs(xs[:, None] - xs[None, :]))
        np.fill_diagonal(cheb, 99)
        assert cheb.min() >= 3
        assert ds.dead_pixel_mask(cam).sum() == n
        raw = ds.raw(cam).astype(np.float64)
        mean, std = raw.mean(0), raw.std(0)
        neighbours = ndimage.median_filter(mean, size=3)
        for y, x, kind, value in dead:
            if kind == "stuck":
                assert std[y, x] == 0 and mean[y, x] == value
            else:
                assert 1500 <= value <= 4000
                assert mean[y, x] == pytest.approx(value, rel=0.03)
                assert std[y, x] > 0.01 * value
                assert mean[y, x] > neighbours[y, x] + 500
    assert not np.array_equal(ds.dead_pixel_mask(0), ds.dead_pixel_mask(1))


# ----------------------------------------------------------------------------------------------- depth


def _sharpness(plane):
    """High-frequency energy fraction of a plane (Laplacian energy over total energy)."""
    plane = plane.astype(np.float64)
    return (ndimage.laplace(plane) ** 2).sum() / max((plane**2).sum(), 1e-12)


@pytest.mark.parametrize("pair", [(0, 1), (2, 3)])
def test_near_half_sharp_far_half_blurred_and_dimmer(ds, pair):
    Z = ds.shape[0]
    a, b = pair
    near_a, near_b = slice(0, Z // 2), slice(Z - Z // 2, Z)
    sig_a, sig_b = ds.blur_sigma_px(a), ds.blur_sigma_px(b)
    assert np.all(sig_a[near_a] == 0) and np.all(sig_a[near_b] > 0) and np.all(np.diff(sig_a[near_b]) > 0)
    np.testing.assert_allclose(sig_b, sig_a[::-1])
    ideal = {c: ds.ideal(c) / ds.gain(c) for c in pair}            # expected photons
    clean = {c: ds.clean(c) for c in pair}
    for cam, front, back in ((a, near_a, near_b), (b, near_b, near_a)):
        # the fraction of the emitted light that reaches the camera is larger on its own side
        kept_front = ideal[cam][front].sum() / clean[cam][front].sum()
        kept_back = ideal[cam][back].sum() / clean[cam][back].sum()
        assert kept_front > 0.7 and kept_back < 0.75 * kept_front
    # the same plane (same specimen content) seen by both cameras: the near camera is sharper and brighter
    checked = 0
    for k in range(Z):
        if min(sig_a[k], sig_b[k]) > 0 or max(sig_a[k], sig_b[k]) < 1.0 or clean[a][k].sum() < 1e4:
            continue
        sharp_cam, blurred_cam = (a, b) if sig_a[k] == 0 else (b, a)
        assert _sharpness(ideal[sharp_cam][k]) > 1.5 * _sharpness(ideal[blurred_cam][k])
        assert ideal[sharp_cam][k].sum() > 1.2 * ideal[blurred_cam][k].sum()
        checked += 1
    assert checked >= 6


def test_ideal_is_gain_times_clean_without_optics(tmp_path):
    truth = generate_dataset(tmp_path / "noop", preset="tiny", cameras=(0, 1), blur_growth_px=0.0,
                             attenuation_length_um=1e12, n_dead=0)
    for cam in (0, 1):
        np.testing.assert_allclose(truth.ideal(cam), truth.gain(cam) * truth.clean(cam), rtol=1e-5, atol=1e-4)
    # after registration, the moving camera's signal is the reference's scaled by the gain ratio
    ideal_a = truth.ideal(0).astype(np.float64)
    moved = register_opposing(flip_lr(truth.ideal(1).astype(np.float64)), truth.offset((0, 1)),
                              truth.rotation_deg((0, 1)))
    m = _interior(ideal_a.shape, 10)
    assert moved[m].sum() / ideal_a[m].sum() == pytest.approx(truth.gain_ratio((0, 1)), rel=0.005)


def test_gain_ratio_visible_in_overlap(ds):
    # with depth effects on, the two sides average out: the overlap sum ratio still tracks the gain ratio
    for a, b in ((0, 1), (2, 3)):
        ideal_a = ds.ideal(a).astype(np.float64)
        moved = register_opposing(flip_lr(ds.ideal(b).astype(np.float64)), ds.offset((a, b)),
                                  ds.rotation_deg((a, b)))
        m = _interior(ideal_a.shape, 10)
        assert moved[m].sum() / ideal_a[m].sum() == pytest.approx(ds.gain_ratio((a, b)), rel=0.10)


# ----------------------------------------------------------------------------------------------- illumination sides


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    """Cameras 0 and 3, each recording channel 0 lit from low x and channel 1 from high x."""
    out = tmp_path_factory.mktemp("synth") / "sides"
    return generate_dataset(out, preset="tiny", cameras=(0, 3), seed=2, illumination_channels=(0, 1),
                            illumination_balance=0.7, layout="both")


def test_illumination_sides_files_and_truth(sides):
    assert sides.illumination_channels == (0, 1) and sides.illumination_balance() == 0.7
    for cam in (0, 3):
        assert sides.channels_of_camera(cam) == (0, 1)
        for layout in ("keller", "flat"):
            names = {sides.stack_path(cam, 0, layout, channel=ch).name for ch in (0, 1)}
            assert names == {f"SPC00_TM00000_ANG000_CM{cam}_CHN{ch:02d}_PH0.stack" for ch in (0, 1)}
        a, b = sides.raw(cam, channel=0), sides.raw(cam, channel=1)
        assert not np.array_equal(a, b)                      # each channel has its own image and noise
        np.testing.assert_array_equal(synthetic_volume(sides.spec, cam, 0, "raw", channel=1).compute(), b)
    for ch in (0, 1):
        assert read_push_config(sides.raw_dir / "SPM00" / "TM00000" / f"ch{ch}.xml").camera_indices == (0, 3)
    with pytest.raises(ValueError, match="channel"):
        sides.ideal(0)
    with pytest.raises(ValueError, match="channel"):
        sides.ideal(0, 0, channel=2)


def test_illumination_sides_brightness(sides):
    """Channel 0 keeps more of the light at low x, channel 1 at high x, in the ratio of their powers."""
    X = sides.shape[2]
    quarter = slice(None, X // 4), slice(X - X // 4, None)
    clean = sides.clean(0).astype(np.float64)
    ideal = {ch: sides.ideal(0, 0, ch) / sides.gain(0) for ch in (0, 1)}
    kept = {ch: [ideal[ch][..., q].sum() / clean[..., q].sum() for q in quarter] for ch in (0, 1)}
    assert kept[0][0] > 2 * kept[0][1] and kept[1][1] > 2 * kept[1][0]
    # mirror symmetry of the light paths, up to the power ratio (the body is symmetric, its content not)
    assert kept[1][1] / kept[0][0] == pytest.approx(0.7, rel=0.15)


def _one_effect(**overrides):
    """Camera 0's clean volume and its two channels' ideal photons with detection optics switched off."""
    spec = SyntheticSpec.tiny(cameras=(0,), seed=2, illumination_channels=(0, 1), blur_growth_px=0.0,
                              attenuation_length_um=1e12, **overrides)
    from isoview_dask.synthetic.specimen import model_for   # the drawn gain (truth.json is not written here)
    gain = model_for(spec).gains[0]
    clean = synthetic_volume(spec, 0, 0, "clean").compute().astype(np.float64)
    ideal = {ch: synthetic_volume(spec, 0, 0, "ideal", channel=ch).compute() / gain for ch in (0, 1)}
    return clean, ideal


def test_illumination_blur_only_on_the_far_half():
    """Blur alone: each channel is exactly the clean signal on the half its light reaches first."""
    clean, ideal = _one_effect(illumination_attenuation_um=1e12, illumination_blur_px=2.0)
    half = clean.shape[2] // 2
    np.testing.assert_allclose(ideal[0][..., :half - 4], clean[..., :half - 4], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ideal[1][..., half + 4:], clean[..., half + 4:], rtol=1e-4, atol=1e-3)
    for far, ch in ((slice(half + 8, None), 0), (slice(None, half - 8), 1)):
        planes = [k for k in range(clean.shape[0]) if clean[k][:, far].sum() > 1e4]
        kept = [_sharpness(ideal[ch][k][:, far]) / _sharpness(clean[k][:, far]) for k in planes]
        assert len(planes) >= 6 and max(kept) < 0.9 and np.median(kept) < 0.75, kept   # measured: 0.45-0.86
    np.testing.assert_allclose(ideal[0].sum(), clean.sum(), rtol=0.01)       # blur moves light, keeps it


def test_illumination_attenuation_follows_the_light_path():
    """Attenuation alone: the kept fraction falls with the path length from the lit side, mirror-like."""
    clean, ideal = _one_effect(illumination_blur_px=0.0)
    body = clean > 0.2 * clean.max()
    kept = {ch: np.where(body, ideal[ch] / np.where(body, clean, 1.0), np.nan) for ch in (0, 1)}
    columns = body.any(axis=(0, 1))
    profile = {ch: np.full(clean.shape[2], np.nan) for ch in (0, 1)}
    for ch in (0, 1):
        profile[ch][columns] = np.nanmean(kept[ch][..., columns], axis=(0, 1))
    inside = np.flatnonzero(np.isfinite(profile[0]) & np.isfinite(profile[1]))
    assert len(inside) > 20
    assert np.all(np.diff(profile[0][inside]) < 0) and np.all(np.diff(profile[1][inside]) > 0)
    assert profile[0][inside[0]] > 0.8 and profile[1][inside[-1]] > 0.8
    assert np.nanmax(kept[0]) <= 1 + 1e-5 and np.nanmax(kept[1]) <= 1 + 1e-5


# ----------------------------------------------------------------------------------------------- time


def test_drift_follows_spec(timelapse):
    spec = timelapse.spec
    n = np.arange(spec.timepoints)
    for pair in ((0, 1), (2, 3)):
        entry = next(p for p in timelapse.data["pairs"] if p["cameras"] == list(pair))
        d = entry["drift"]
        wobble = np.sin(2 * np.pi * n / d["period_timepoints"] + d["phase_rad"]) - math.sin(d["phase_rad"])
        expect = (np.array(timelapse.offset(pair, 0))[None, :] + n[:, None] * np.array(d["velocity_px"])
                  + wobble[:, None] * np.array(d["amplitude_px"]))
        np.testing.assert_allclose(timelapse.offsets(pair), expect, atol=1e-12)
        assert np.hypot(*d["velocity_px"]) == pytest.approx(0.15)
        steps = np.hypot(*np.diff(timelapse.offsets(pair), axis=0).T)
        assert np.all((steps > 0.02) & (steps < 0.5))
        np.testing.assert_allclose(np.diff(timelapse.rotations_deg(pair)), d["omega_deg"])
        assert abs(d["omega_deg"]) == pytest.approx(spec.rotation_drift_deg_per_timepoint)
    # the data follow the drift: the late timepoint registers with its own offset, not with the first one
    late = spec.timepoints - 1
    assert np.hypot(*np.subtract(timelapse.offset((0, 1), late), timelapse.offset((0, 1), 0))) > 0.3
    own, _ = _register_error(timelapse, 0, 1, timelapse.offset((0, 1), late), timelapse.rotation_deg((0, 1), late),
                             timepoint=late)
    stale, _ = _register_error(timelapse, 0, 1, timelapse.offset((0, 1), 0), timelapse.rotation_deg((0, 1), 0),
                               timepoint=late)
    assert own < 0.7 * stale


def test_outlier_timepoint(timelapse):
    t_out = timelapse.outlier_timepoint
    assert t_out == 3
    assert timelapse.data["outlier"]["cameras"] == [1]
    # the true offset stays on the smooth drift curve
    off = timelapse.offsets((0, 1))
    assert np.abs(off[t_out] - (off[t_out - 1] + off[t_out + 1]) / 2).max() < 0.05
    # camera 1 is dimmer, noisier and shows debris outside the body; camera 0 is unaffected
    dark1 = timelapse.dark_frame(1)
    body = timelapse.body_mask(1, 0)
    sig = {t: (timelapse.raw(1, t) - dark1)[body].mean() for t in (t_out - 1, t_out)}
    assert sig[t_out] < 0.5 * sig[t_out - 1]
    deb = timelapse.data["cameras"]["1"]["debris"]
    y, x = int(round(deb["y"])), int(round(deb["x"]))
    assert not timelapse.body_mask(1, t_out)[:, y, x].any()
    raw_out = timelapse.raw(1, t_out).astype(float)
    assert raw_out[:, y, x].mean() - dark1[y, x] > 2 * timelapse.ideal(1, t_out - 1).max()
    assert timelapse.ideal(1, t_out)[:, y, x].min() > 1000
    assert np.allclose(timelapse.clean(1, t_out)[:, y, x], 0)
    empty = timelapse.ideal(1, t_out) < 1e-3
    assert (raw_out - dark1)[empty].std() > 10
    s0 = {t: (timelapse.raw(0, t) - timelapse.dark_frame(0))[timelapse.body_mask(0, t)].mean() for t in (2, 3)}
    assert s0[3] == pytest.approx(s0[2], rel=0.05)
    # a naive estimate (integer cross-correlation of max projections) works elsewhere but fails here
    def naive(t):
        a = (timelapse.raw(0, t) - timelapse.dark_frame(0)).max(0)
        b = flip_lr(timelapse.raw(1, t) - timelapse.dark_frame(1)).max(0)
        cc = np.fft.ifft2(np.conj(np.fft.fft2(a)) * np.fft.fft2(b)).real
        s = np.array(np.unravel_index(np.argmax(cc), cc.shape), float)
        s = np.where(s > np.array(cc.shape) / 2, s - cc.shape, s)
        return np.hypot(*(s - timelapse.offset((0, 1), t)))
    errors = [naive(t) for t in range(timelapse.timepoints)]
    assert max(e for t, e in enumerate(errors) if t != t_out) < 1.5
    assert errors[t_out] > 5
    # the clean truth of the outlier still obeys the convention with the true offset
    rms, corr = _register_error(timelapse, 0, 1, timelapse.offset((0, 1), t_out),
                                timelapse.rotation_deg((0, 1), t_out), timepoint=t_out)
    assert corr > 0.995


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("field, value", [
    ("shape", (16, 64)),
    ("shape", (1, 64, 64)),
    ("shape", (16, 8, 64)),
    ("timepoints", 0),
    ("cameras", (0, 4)),
    ("cameras", ()),
    ("channel_of_camera", {0: 0}),
    ("pixel_size_um", -1.0),
    ("z_step_um", 0.0),
    ("seed", -3),
    ("offsets", {(0, 1): (100.0, 0.0)}),
    ("offsets", {(0, 2): (1.0, 0.0)}),
    ("rotations_deg", {(0, 1): float("nan")}),
    ("gains", {0: 0.0}),
    ("photon_scale", 0),
    ("read_noise", -1.0),
    ("dark_level", 70000.0),
    ("attenuation_length_um", -5.0),
    ("n_dead", 100000),
    ("outlier_timepoint", 1),
    ("layout", "nested"),
    ("nucleus_sigma_um", (2.0, 1.0)),
    ("write_truth_volumes", "yes"),
    ("illumination_channels", (1, 1)),
    ("illumination_channels", (0, 1, 2)),
    ("illumination_balance", 0.0),
    ("illumination_blur_px", -1.0),
])
def test_invalid_spec_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticSpec.tiny(**{field: value})


def test_inconsistent_magnification_and_unknown_fields(tmp_path):
    with pytest.raises(ValueError, match="pixel_size_um"):
        SyntheticSpec(pixel_size_um=0.5, magnification=16)
    with pytest.raises(ValueError, match="bogus"):
        generate_dataset(tmp_path / "x", preset="tiny", bogus=1)
    with pytest.raises(ValueError, match="preset"):
        generate_dataset(tmp_path / "x", preset="huge")
    with pytest.raises(ValueError, match="slab_planes"):
        generate_dataset(tmp_path / "x", preset="tiny", slab_planes=0)
    assert not (tmp_path / "x").exists()


def test_replace_rederives_defaults():
    spec = SyntheticSpec.tiny(cameras=(0,))
    assert spec.channel_of_camera == {0: 0} and spec.z_step_um == pytest.approx(0.40625 * 64 / 16)
    bigger = spec.replace(cameras=(0, 1, 2, 3), shape=(32, 128, 128))
    assert bigger.channel_of_camera == {0: 0, 1: 0, 2: 1, 3: 1}
    assert bigger.z_step_um == pytest.approx(1.625) and bigger.n_dead == 12
    assert spec.replace(magnification=20).pixel_size_um == pytest.approx(0.325)
    explicit = SyntheticSpec.tiny(z_step_um=2.0).replace(shape=(12, 64, 64))
    assert explicit.z_step_um == 2.0


def test_presets():
    assert SyntheticSpec().shape == (32, 128, 128)
    assert SyntheticSpec().voxel_size_um == pytest.approx((1.625, 0.40625, 0.40625))
    assert SyntheticSpec.small().shape == (64, 256, 256)
    full = SyntheticSpec.full_frame(planes=48)
    assert full.shape == (48, 2048, 2048) and not full.write_truth_volumes
    assert full.n_dead == round(4e-4 * 2048 * 2048)
