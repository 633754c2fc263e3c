"""Every option of the MATLAB table (``config.matlab_table()``) changes the result the documented way.

Tiny synthetic recordings (16 x 64 x 64 per camera). :data:`COVERAGE` maps each MATLAB-table flag to
the tests that would catch its breakage (here, or in another test file where the effect is already
tested in depth); ``test_every_matlab_flag_is_covered`` fails when a flag is added to the table without
one. The channel half of ``blendingRange`` is used by the illumination-channel fusion
(``fusion_channel_pairs``), tested on a recording whose cameras each record two illumination sides.
"""

import copy
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from isoview_dask import fuse
from isoview_dask.config import ProcessingConfig, matlab_table
from isoview_dask.correct import coordinate_masks
from isoview_dask.fuse import blend_numpy, transition_plane_map
from isoview_dask.io import open_volume
from isoview_dask.pipeline import correct_dataset, fuse_dataset, output_path, segmentation_mask_path
from isoview_dask.pipeline.timelapse import (estimate_timepoints, load_estimates, lookup_table_path,
                                             smooth_and_fuse, smooth_parameters)
from isoview_dask.synthetic import generate_dataset
from isoview_dask.temporal import rloess, sliding_mean, sliding_median

TESTS = Path(__file__).resolve().parent

#: MATLAB-table flag -> tests that show its effect ("file.py::name" for tests in other files).
COVERAGE = {
    "input_specimens": ["test_input_selection"],
    "input_timepoints": ["test_input_selection", "test_timelapse.py::test_outlier_fused_as_well_as_its_neighbours"],
    "input_cameras": ["test_input_selection", "test_pipeline_correct.py::test_formats_hold_identical_values"],
    "input_channels": ["test_input_selection", "test_camera_pairs_and_channels_restrict_the_fusions"],
    "correction_precise_gauss": ["test_precise_gauss_changes_the_mask_slightly"],
    "fusion_type": ["test_fusion_type", "test_multifuse_options.py::test_matlab_fusion_type_numbers_are_aliases",
                    "test_multifuse_options.py::test_sharpness_fusion_against_truth"],
    "fusion_blending_range": ["test_blending_range_zero_is_a_hard_switch",
                              "test_blending_range_mixes_only_near_the_transition",
                              "test_channel_blending_range",
                              "test_channel_fusion.py::test_channel_blending_range_changes_only_voxels_near_the_transition"],
    "fusion_camera_pairs": ["test_camera_pairs_and_channels_restrict_the_fusions"],
    "fusion_flip_h": ["test_view_orientation_flags"],
    "fusion_flip_v": ["test_view_orientation_flags"],
    "fusion_rotation": ["test_view_orientation_flags"],
    "fusion_mask_fusion_mode": ["test_mask_fusion_mode", "test_fuse_options.py::test_mask_modes"],
    "fusion_mask_padding": ["test_mask_padding", "test_fuse_options.py::test_padding_trims_the_rim_toward_the_centre"],
    "fusion_mask_min_object_size": ["test_mask_min_object_size",
                                    "test_fuse_options.py::test_small_objects_are_removed"],
    "fusion_median_filter_range": ["test_median_filter_range_smooths_the_transition_map"],
    "fusion_precise_gauss": ["test_fusion_precise_gauss_truncates_the_map_smoothing"],
    "fusion_slab_size_cameras": ["test_slab_size_sets_the_task_depth_not_the_result"],
    "fusion_temporal_smoothing": ["test_temporal_smoothing_and_window"],
    "fusion_smoothing_window": ["test_temporal_smoothing_and_window",
                                "test_timelapse.py::test_changed_smoothing_refits_without_reestimating"],
    "fusion_static": ["test_static_and_no_lookup_table_files",
                      "test_timelapse.py::test_static_gives_the_robust_centre"],
    "fusion_generate_lookup_table": ["test_static_and_no_lookup_table_files",
                                     "test_timelapse.py::test_lookup_table_files_and_plot"],
    "fusion_front_camera": ["test_multifuse_options.py::test_front_camera_moving_when_the_reference_sees_the_far_side"],
    "fusion_channel_swapped_cameras": ["test_multifuse_options.py::test_swapped_channel_sides_per_camera"],
    "fusion_lut_averaging": ["test_lut_averaging_windows"],
    "fusion_lut_averaging_method": ["test_lut_averaging_windows"],
}

KEY = (0, 0, (0, 1), 0)
PAIR01 = dict(fusion_camera_pairs=[[0, 1]], input_channels=[0], fusion_diagnostics=False)


def test_every_matlab_flag_is_covered():
    flags = re.findall(r"^\| `[^`]+` \| `([a-z_]+)` \|", matlab_table(), flags=re.MULTILINE)
    assert len(flags) >= 21 and set(flags) == set(COVERAGE)
    for flag, tests in COVERAGE.items():
        for name in tests:
            module, _, test = name.rpartition("::")
            text = (TESTS / module).read_text() if module else Path(__file__).read_text()
            assert f"def {test or name}(" in text, f"{flag}: no test {name}"


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """Four cameras corrected with the defaults, and pair 0+1 fused with the defaults."""
    root = tmp_path_factory.mktemp("flags")
    truth = generate_dataset(root / "syn", preset="tiny", seed=4)
    assert len(correct_dataset(truth.raw_dir, root / "out", progress=False).written) == 4
    assert len(fuse_dataset(root / "out", root / "fused", progress=False, **PAIR01).written) == 1
    return truth, root / "out", root / "fused"


def _fused(root, pair=(0, 1), channel=0):
    return open_volume(output_path(root, 0, 0, list(pair), channel, "fusedStack")).compute()


def _params(root, pair=(0, 1), channel=0):
    return json.loads(output_path(root, 0, 0, list(pair), channel, "fusedStack", "json").read_text())


def _pair(corrected, **flags):
    """The pipeline's own estimate of pair 0+1 and its lazy inputs, via the API (nothing written)."""
    return fuse(None, corrected, **{**PAIR01, **flags})[KEY]


def _views(pair):
    reference = np.asarray(pair.reference.compute())
    moving = np.asarray(pair.moving_aligned.compute())
    return reference, moving


def _one_camera(reference, moving, intensity, front: bool):
    """What the fused volume holds where only one camera has weight (range 0, transition beyond the ends)."""
    plane = reference.shape[0] + 10.0 if front else -10.0
    return blend_numpy(reference, moving, plane, 0.0, "adaptive", intensity, dtype=reference.dtype)


# ------------------------------------------------------------------------------------------ input selection

@pytest.fixture(scope="module")
def two_specimens(tmp_path_factory):
    """Specimens 0 and 1, two timepoints each, four cameras (two channels)."""
    root = tmp_path_factory.mktemp("specimens")
    first = generate_dataset(root / "a", preset="tiny", seed=1, timepoints=2)
    second = generate_dataset(root / "b", preset="tiny", seed=2, timepoints=2, specimen=1)
    shutil.copytree(second.raw_dir / "SPM01", first.raw_dir / "SPM01")
    return first.raw_dir


def _corrected_views(out):
    pattern = re.compile(r"SPM(\d+)_TM(\d+)_CM(\d+)_CHN(\d+)\.correction\.json$")
    return {tuple(int(g) for g in pattern.search(p.name).groups()) for p in out.rglob("*.correction.json")}


@pytest.mark.parametrize("flags, expected", [
    ({"input_specimens": [1], "input_timepoints": [0], "input_cameras": [0]}, {(1, 0, 0, 0)}),
    ({"input_specimens": [0], "input_timepoints": [1], "input_cameras": [0]}, {(0, 1, 0, 0)}),
    ({"input_specimens": [0], "input_timepoints": [0], "input_cameras": [3]}, {(0, 0, 3, 1)}),
    ({"input_specimens": [0], "input_timepoints": [0], "input_channels": [1]}, {(0, 0, 2, 1), (0, 0, 3, 1)}),
], ids=["specimens", "timepoints", "cameras", "channels"])
def test_input_selection(two_specimens, tmp_path, flags, expected):
    """Each selection flag alone decides which views are processed (the others pin the rest to one value)."""
    summary = correct_dataset(two_specimens, tmp_path, progress=False, **flags)
    assert _corrected_views(tmp_path) == expected and len(summary.written) == len(expected)


def test_camera_pairs_and_channels_restrict_the_fusions(four, tmp_path):
    truth, out, _ = four
    fused = fuse_dataset(out, tmp_path / "pairs", progress=False, fusion_camera_pairs=[[2, 3]],
                         fusion_diagnostics=False)
    assert [Path(p).name for p in fused.written] == ["SPM00_TM000000_CM02_CM03_CHN01.fusedStack.zarr"]
    fused = fuse_dataset(out, tmp_path / "channels", progress=False, input_channels=[0], fusion_diagnostics=False)
    assert [Path(p).name for p in fused.written] == ["SPM00_TM000000_CM00_CM01_CHN00.fusedStack.zarr"]
    # the pair's order says which camera is the reference (its near side is low z)
    reversed_pair = fuse(None, out, apply_fusion=False, fusion_camera_pairs=[[1, 0]], input_channels=[0])
    assert list(reversed_pair) == [(0, 0, (1, 0), 0)]


# ------------------------------------------------------------------------------------------ correction

def test_precise_gauss_changes_the_mask_slightly(four, tmp_path):
    """preciseGauss=false truncates the segmentation kernel: a few mask voxels at the boundary change,
    the overlap stays near perfect, the corrected volume itself is untouched."""
    truth, out, _ = four
    correct_dataset(truth.raw_dir, tmp_path, progress=False, input_cameras=[0], correction_precise_gauss=False)
    precise = open_volume(segmentation_mask_path(out, 0, 0, 0, 0)).compute().astype(bool)
    fast = open_volume(segmentation_mask_path(tmp_path, 0, 0, 0, 0)).compute().astype(bool)
    changed = int((precise != fast).sum())
    dice = 2 * (precise & fast).sum() / (precise.sum() + fast.sum())
    assert 0 < changed < 0.01 * precise.sum() and dice > 0.99
    body = truth.body_mask(0)
    dice_truth = [2 * (m & body).sum() / (m.sum() + body.sum()) for m in (precise, fast)]
    assert abs(dice_truth[0] - dice_truth[1]) < 0.01
    np.testing.assert_array_equal(open_volume(output_path(out, 0, 0, 0, 0)).compute(),
                                  open_volume(output_path(tmp_path, 0, 0, 0, 0)).compute())


# ------------------------------------------------------------------------------------------ blending

@pytest.mark.parametrize("method", ["adaptive", "geometric", "average"])
def test_fusion_type(four, tmp_path, method):
    """adaptive: a transition plane per pixel; geometric: one plane for the whole volume; average: the mean."""
    truth, out, default = four
    fuse_dataset(out, tmp_path, progress=False, fusion_type=method, **PAIR01)
    fused, params = _fused(tmp_path), _params(tmp_path)
    pair = _pair(out, fusion_type=method)
    reference, moving = _views(pair)
    intensity, transition = pair.estimate.intensity, pair.transition_yx
    assert params["blending_method"] == method
    tp = params["transition_plane"]
    if method == "adaptive":
        np.testing.assert_array_equal(fused, _fused(default))
        assert tp["min"] < tp["max"] and np.ptp(transition) > 0.5
        np.testing.assert_array_equal(fused, blend_numpy(reference, moving, transition, 10.0, "adaptive", intensity,
                                                         dtype=reference.dtype))
        one_plane = blend_numpy(reference, moving, float(np.median(transition)), 10.0, "geometric", intensity,
                                dtype=reference.dtype)
        assert not np.array_equal(fused, one_plane)
    elif method == "geometric":
        assert tp["min"] == tp["median"] == tp["max"] and np.ptp(transition) == 0
        np.testing.assert_array_equal(fused, blend_numpy(reference, moving, tp["median"], 10.0, "geometric",
                                                         intensity, dtype=reference.dtype))
        assert not np.array_equal(fused, _fused(default))
    else:
        front = _one_camera(reference, moving, intensity, True).astype(np.float64)
        back = _one_camera(reference, moving, intensity, False).astype(np.float64)
        np.testing.assert_allclose(fused, (front + back) / 2, atol=1.0)  # each rounded once
        assert not np.array_equal(fused, _fused(default))


def test_blending_range_zero_is_a_hard_switch(four, tmp_path):
    truth, out, default = four
    fuse_dataset(out, tmp_path, progress=False, fusion_blending_range=[20, 0], **PAIR01)
    assert _params(tmp_path)["blending_range"] == 0.0
    fused = _fused(tmp_path)
    pair = _pair(out)
    reference, moving = _views(pair)
    front = _one_camera(reference, moving, pair.estimate.intensity, True)
    back = _one_camera(reference, moving, pair.estimate.intensity, False)
    z = np.arange(fused.shape[0])[:, None, None]
    # each voxel comes from exactly one camera: the reference up to its pixel's transition plane
    np.testing.assert_array_equal(fused, np.where(z <= pair.transition_yx[None], front, back))
    assert not np.array_equal(fused, _fused(default))


def test_blending_range_mixes_only_near_the_transition(four, tmp_path):
    truth, out, default = four
    results = {}
    for width in (4.0, 12.0):
        fuse_dataset(out, tmp_path / str(width), progress=False, fusion_blending_range=[20, width], **PAIR01)
        results[width] = _fused(tmp_path / str(width))
    pair = _pair(out)
    reference, moving = _views(pair)
    front = _one_camera(reference, moving, pair.estimate.intensity, True)
    back = _one_camera(reference, moving, pair.estimate.intensity, False)
    distance = np.arange(reference.shape[0])[:, None, None] - pair.transition_yx[None]
    differ = front != back
    for width, fused in results.items():
        far = np.abs(distance) >= width / 2
        np.testing.assert_array_equal(fused[far & (distance < 0)], front[far & (distance < 0)])
        np.testing.assert_array_equal(fused[far & (distance > 0)], back[far & (distance > 0)])
        mixed = differ & (fused != front) & (fused != back)
        assert mixed.any() and not (mixed & far).any()
    wide, narrow = (np.count_nonzero(differ & (results[w] != front) & (results[w] != back)) for w in (12.0, 4.0))
    assert wide > narrow


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    """Cameras 0 and 1, each recording channel 0 lit from low x and channel 1 lit from high x, corrected."""
    root = tmp_path_factory.mktemp("sides")
    truth = generate_dataset(root / "syn", preset="tiny", seed=4, cameras=(0, 1), illumination_channels=(0, 1),
                             illumination_balance=0.8)
    assert len(correct_dataset(truth.raw_dir, root / "out", progress=False).written) == 4
    return truth, root / "out"


def test_channel_blending_range(sides, tmp_path):
    """The channel range shapes the x blend of the two illumination channels inside the camera fusion;
    the camera range is untouched by it and the registration nearly so. Measured: mean change 3.9
    counts within 10 columns of the channel transitions, 0.01 elsewhere."""
    truth, out = sides
    flags = dict(fusion_channel_pairs=[[0, 1]], fusion_camera_pairs=[[0, 1]], fusion_diagnostics=False)
    fused, params = {}, {}
    for width in (2.0, 20.0):
        fuse_dataset(out, tmp_path / str(width), progress=False, fusion_blending_range=[width, 10], **flags)
        fused[width] = _fused(tmp_path / str(width), channel=[0, 1])
        params[width] = _params(tmp_path / str(width), channel=[0, 1])
    assert params[2.0]["channel_blending_range"] == 2.0 and params[20.0]["channel_blending_range"] == 20.0
    assert params[2.0]["blending_range"] == params[20.0]["blending_range"] == 10.0
    assert params[2.0]["sampling_offset_yx_px"] == pytest.approx(params[20.0]["sampling_offset_yx_px"], abs=0.05)
    change = np.abs(fused[2.0].astype(np.float64) - fused[20.0].astype(np.float64))
    assert (change > 0).mean() > 0.05
    # the change sits at the channel transitions (camera 0's, and camera 1's mirrored and shifted onto it);
    # elsewhere only the camera-pair estimates move a little (they are made on the channel-fused cameras)
    width = fused[2.0].shape[2]
    columns = [entry["transition_column"]["median"] for entry in params[20.0]["channel_fusion"]]
    centres = [columns[0], width - 1 - columns[1] + params[20.0]["sampling_offset_yx_px"][1]]
    x = np.arange(width)
    near = np.min([np.abs(x - c) for c in centres], axis=0) < 10.0
    assert change[..., near].mean() > 5 * change[..., ~near].mean()


# ------------------------------------------------------------------------------------------ orientation

def _rewrite(path, transform):
    node = zarr.open(str(path), mode="r+")
    array = node if isinstance(node, zarr.Array) else node["0"]
    array[...] = transform(array[...])


@pytest.mark.parametrize("flags, transform", [
    ({"fusion_flip_h": False}, lambda v: v[..., ::-1]),
    ({"fusion_flip_v": True}, lambda v: v[:, ::-1, :]),
    ({"fusion_rotation": 90}, lambda v: np.rot90(v, k=-1, axes=(1, 2))),
], ids=["flip_h", "flip_v", "rotation"])
def test_view_orientation_flags(four, tmp_path, flags, transform):
    """Camera 1 stored in another orientation: the default flags no longer register it; the flag that
    undoes the difference gives back the default fusion bit for bit."""
    truth, out, default = four
    changed = tmp_path / "out"
    shutil.copytree(out, changed)
    for path in (output_path(changed, 0, 0, 1, 0), segmentation_mask_path(changed, 0, 0, 1, 0)):
        _rewrite(path, transform)
    xy_mask = output_path(changed, 0, 0, 1, 0, "xyMask", "tif")  # the depth map fusion reads, in step
    tifffile.imwrite(xy_mask, np.ascontiguousarray(transform(tifffile.imread(xy_mask)[None])[0]))
    unfixed = fuse(None, changed, apply_fusion=False, **PAIR01)[KEY].parameters
    assert unfixed["registration_confidence"] < 0.5 or \
        np.abs(np.subtract(unfixed["sampling_offset_yx_px"], truth.offset((0, 1)))).max() > 5
    fuse_dataset(changed, tmp_path / "fused", progress=False, **flags, **PAIR01)
    params = _params(tmp_path / "fused")
    assert params["registration_confidence"] > 0.9
    assert params["sampling_offset_yx_px"] == _params(default)["sampling_offset_yx_px"]
    np.testing.assert_array_equal(_fused(tmp_path / "fused"), _fused(default))
    # and on the data as recorded, the flag breaks the registration the defaults get right
    if "fusion_flip_h" in flags or "fusion_flip_v" in flags:
        assert fuse(None, out, apply_fusion=False, **flags, **PAIR01)[KEY].parameters[
            "registration_confidence"] < 0.5


# ------------------------------------------------------------------------------------------ transition map

@pytest.fixture(scope="module")
def depths(four):
    """The two cameras' mean foreground depth per pixel (the moving one aligned), as fusion computes them."""
    truth, out, _ = four
    pair = _pair(out)
    ref, mov = (np.asarray(coordinate_masks(m)[0].compute())
                for m in (pair.mask_reference, pair.mask_moving_aligned))
    return ref, mov, pair.reference.shape[0]


def _map(depths, **kw):
    ref, mov, n = depths
    options = dict(median_filter_range=9, smoothing_sigma=4.0, rim_px=4, mask_mode="overlap", min_object_fraction=0.0)
    return transition_plane_map(ref, mov, n, **{**options, **kw})


def _estimate(corrected, **flags):
    return fuse(None, corrected, apply_fusion=False, **PAIR01, **flags)[KEY].transition_yx


def test_mask_fusion_mode(four, depths):
    """overlap: both cameras' foreground; union: either; reference / moving: one camera's alone. Each
    camera's mean depth is biased toward its near side (reference: low z), so the one-camera maps lie
    on either side of the overlap's."""
    truth, out, _ = four
    maps = {}
    for mode in ("overlap", "union", "reference", "moving"):
        maps[mode] = _estimate(out, fusion_mask_fusion_mode=mode)
        np.testing.assert_array_equal(maps[mode], _map(depths, mask_mode=mode))
    np.testing.assert_array_equal(maps["reference"], _map((depths[0], None, depths[2]), mask_mode="reference"))
    median = {k: float(np.median(v)) for k, v in maps.items()}
    assert median["reference"] < median["overlap"] < median["moving"]
    assert not np.array_equal(maps["union"], maps["overlap"])


def test_mask_padding(four, depths):
    """padding trims the noisy rim of the foreground region before the map is filled: a narrower range."""
    truth, out, _ = four
    maps = {p: _estimate(out, fusion_mask_padding=p) for p in (0, 10)}
    for p, m in maps.items():
        np.testing.assert_array_equal(m, _map(depths, rim_px=p))
    assert np.ptp(maps[10]) < np.ptp(maps[0])


def test_median_filter_range_smooths_the_transition_map(four, depths):
    truth, out, _ = four

    def roughness(m):
        return float(np.abs(np.diff(m, axis=0)).mean() + np.abs(np.diff(m, axis=1)).mean())
    maps = {r: _estimate(out, fusion_median_filter_range=r, fusion_transition_smoothing_px=0) for r in (1, 5, 15)}
    for r, m in maps.items():
        np.testing.assert_array_equal(m, _map(depths, median_filter_range=r, smoothing_sigma=0.0))
    assert roughness(maps[1]) > 1.5 * roughness(maps[5]) > 1.5 * roughness(maps[15]) * 0.9


def test_fusion_precise_gauss_truncates_the_map_smoothing(four, depths):
    """preciseGauss off: the map's Gaussian stops at 2 sigma; close to the exact map but not equal."""
    truth, out, _ = four
    exact, fast = (_estimate(out, fusion_precise_gauss=p) for p in (True, False))
    np.testing.assert_array_equal(exact, _map(depths))
    unsmoothed = _map(depths, smoothing_sigma=0.0)
    from scipy import ndimage
    np.testing.assert_allclose(fast, ndimage.gaussian_filter(unsmoothed, 4.0, mode="nearest", truncate=2.0),
                               atol=1e-12)
    assert not np.array_equal(fast, exact)
    assert np.abs(fast - exact).max() < 0.5  # planes: a slightly narrower smoothing, nothing more


def test_slab_size_sets_the_task_depth_not_the_result(four, tmp_path):
    """slabSize: planes per fusion task. The lazy fused volume gets that z-chunking (more, smaller tasks:
    bounded memory); the written result is bit-identical to the default's."""
    truth, out, default = four
    depth = open_volume(output_path(out, 0, 0, 0, 0)).shape[0]
    for slab in (3, 7):
        lazy = fuse(None, out, apply_fusion=True, fusion_slab_size_cameras=slab, **PAIR01)[KEY].fused
        assert set(lazy.chunks[0][:-1]) == {slab} and sum(lazy.chunks[0]) == depth
        fuse_dataset(out, tmp_path / str(slab), progress=False, fusion_slab_size_cameras=slab, **PAIR01)
        np.testing.assert_array_equal(_fused(tmp_path / str(slab)), _fused(default))
    assert _params(tmp_path / "3")["blending_range"] == _params(default)["blending_range"]


def test_mask_min_object_size(four, tmp_path):
    """bwareaopen: a speck of foreground (here 6 x 6 px, 0.9 % of the frame) is dropped before the map is
    filled, so the map there follows the specimen instead of the speck's depth."""
    truth, out, _ = four
    specked = tmp_path / "out"
    shutil.copytree(out, specked)

    def add_speck(mask):
        mask = mask.copy()
        assert not mask[:, :6, :6].any()
        mask[3:5, :6, :6] = 1  # mean depth 3.5 planes
        return mask
    _rewrite(segmentation_mask_path(specked, 0, 0, 0, 0), add_speck)
    # the depth map the correction saved (and fusion reads) follows the edited mask, as it would have
    edited = open_volume(segmentation_mask_path(specked, 0, 0, 0, 0)).astype(bool)
    tifffile.imwrite(output_path(specked, 0, 0, 0, 0, "xyMask", "tif"), coordinate_masks(edited)[0].compute())
    plain = dict(fusion_mask_fusion_mode="reference", fusion_median_filter_range=1,
                 fusion_transition_smoothing_px=0, fusion_mask_padding=0)
    kept = _estimate(specked, fusion_mask_min_object_size=0.0, **plain)
    dropped = _estimate(specked, fusion_mask_min_object_size=0.01, **plain)
    np.testing.assert_allclose(kept[:6, :6], 3.5)
    assert np.all(dropped[:6, :6] > 5)
    body = np.isfinite(np.asarray(coordinate_masks(open_volume(segmentation_mask_path(out, 0, 0, 0, 0))
                                                   .astype(bool))[0].compute()))
    np.testing.assert_array_equal(kept[body], dropped[body])  # the specimen's own values are untouched


# ------------------------------------------------------------------------------------------ time-lapse

T = 6


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Pass-1 estimates of a drifting six-timepoint recording (one camera pair)."""
    root = tmp_path_factory.mktemp("series")
    truth = generate_dataset(root / "syn", preset="tiny", seed=3, timepoints=T, cameras=(0, 1))
    out = root / "out"
    correct_dataset(truth.raw_dir, out, progress=False)
    assert len(estimate_timepoints(out, progress=False, fusion_camera_pairs=[[0, 1]]).written) == T
    records = load_estimates(out)[(0, (0, 1), 0)]
    return truth, out, records


def _smoothed(records, **flags):
    return smooth_parameters(records, ProcessingConfig.from_flags(**flags))


def test_temporal_smoothing_and_window(series):
    """smoothing off: the per-timepoint estimates are used as they are, a wrong one too; on: MATLAB's
    rloess over the window, whose robustness weights give the wrong one its neighbours' trend."""
    truth, out, records = series
    records = copy.deepcopy(records)
    records[2]["sampling_offset_yx_px"][0] += 3.0  # a registration 3 px off (confidence still high)
    true_dy = truth.offsets((0, 1))[:, 0]
    raw = _smoothed(records).raw
    off = _smoothed(records, fusion_temporal_smoothing=False).used
    for name in ("dy", "dx", "rotation_deg", "intensity_factor_moving"):
        np.testing.assert_array_equal(off[name], raw[name])
    assert abs(off["dy"][2] - true_dy[2]) > 2.9
    used = {w: _smoothed(records, fusion_smoothing_window=w).used["dy"] for w in (1, 5, 20)}
    for w, u in used.items():
        np.testing.assert_allclose(u, rloess(raw["dy"], w), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(used[1], raw["dy"])  # a window of one timepoint smooths nothing
    assert np.abs(used[20] - true_dy).max() < 0.1  # the whole series: the wrong value is rejected
    assert np.abs(used[5] - true_dy).max() > 1  # five points per fit cannot reject it here


def test_lut_averaging_windows(series):
    """averagingRange: sliding windows after rloess, per group (offsets, angles, factors); averagingMode:
    their statistic."""
    truth, out, records = series
    base = _smoothed(records).used
    mean = _smoothed(records, fusion_lut_averaging=[2, 0, 1]).used
    median = _smoothed(records, fusion_lut_averaging=[2, 0, 1], fusion_lut_averaging_method="median").used
    np.testing.assert_allclose(mean["dy"], sliding_mean(base["dy"], 2), atol=1e-12)
    np.testing.assert_allclose(median["dx"], sliding_median(base["dx"], 2), atol=1e-12)
    np.testing.assert_allclose(mean["intensity_factor_moving"], sliding_mean(base["intensity_factor_moving"], 1),
                               atol=1e-12)
    np.testing.assert_array_equal(mean["rotation_deg"], base["rotation_deg"])  # its window is 0
    assert not np.allclose(mean["dy"], base["dy"]) and not np.allclose(mean["dy"], median["dy"])


def test_static_and_no_lookup_table_files(series, tmp_path):
    """static: one value per parameter for every timepoint (the mean of the smoothed series), and the
    fused volumes use it; generateLUT=false: the lookup table's JSON only, no CSV and no plot."""
    truth, out, records = series
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    lut, fused = smooth_and_fuse(copy, progress=False, fusion_static=True, fusion_generate_lookup_table=False,
                                 input_timepoints=[0], **PAIR01)
    assert len(lut.written) == 1 and len(fused.written) == 1
    table = json.loads(lookup_table_path(copy, 0, (0, 1), 0, "lookUpTable.json").read_text())
    assert table["settings"]["static"] is True and table["outputs"] == []
    assert not lookup_table_path(copy, 0, (0, 1), 0, "lookUpTable.csv").exists()
    assert not lookup_table_path(copy, 0, (0, 1), 0, "parameters.png").exists()
    rows = table["timepoints"]
    assert len(rows) == T and all(r["sampling_offset_yx_px"] == rows[0]["sampling_offset_yx_px"] for r in rows)
    assert len({r["sampling_rotation_deg"] for r in rows}) == 1
    estimated = np.array([r["estimated"]["dy"] for r in rows])
    assert np.ptp(estimated) > 0.1  # the series itself drifts
    assert rows[0]["sampling_offset_yx_px"][0] == pytest.approx(rloess(estimated, 20).mean(), abs=1e-9)
    assert _params(copy)["sampling_offset_yx_px"] == rows[0]["sampling_offset_yx_px"]
