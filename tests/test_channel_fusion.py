"""Illumination-channel fusion as a stage (``fusion.channel_pairs``), measured against synthetic truth.

Each synthetic camera records one label twice (``illumination_channels=(0, 1)``): channel 0 lit from
the low-x side of its frame, channel 1 from the high-x side, each dimmed and blurred on its far half,
channel 1 with 0.8 of channel 0's illumination power. The stage blends the two along x (channel
blending range) and then, for a camera pair, fuses the two channel-fused cameras along z.
"""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from isoview_dask.cli import main
from isoview_dask.config import ConfigError, ProcessingConfig
from isoview_dask.fuse import apply_sheet_transform_numpy, blend_channels_numpy, fuse_views_numpy, view_transform
from isoview_dask.io import open_volume
from isoview_dask.pipeline import (ChannelFusedView, correct_dataset, estimate_channels, estimate_pair,
                                   find_corrected, fuse_dataset, output_path)
from isoview_dask.synthetic import generate_dataset

BALANCE = 0.8
CHANNELS = dict(fusion_channel_pairs=[[0, 1]], fusion_diagnostics=False)
ALONE = dict(CHANNELS, fusion_camera_pairs=[])


def _corrected(root, seed, cameras):
    truth = generate_dataset(root / "syn", preset="tiny", seed=seed, cameras=cameras, illumination_channels=(0, 1),
                             illumination_balance=BALANCE)
    assert len(correct_dataset(truth.raw_dir, root / "out", progress=False).written) == 2 * len(cameras)
    return truth, root / "out"


@pytest.fixture(scope="module", params=[1, 2], ids=["seed1", "seed2"])
def lone(request, tmp_path_factory):
    """Camera 0 alone with both channels, channel-fused with the defaults (channel range 20)."""
    truth, out = _corrected(tmp_path_factory.mktemp(f"lone{request.param}"), request.param, (0,))
    summary = fuse_dataset(out, out.parent / "fused", progress=False, **ALONE)
    assert len(summary.written) == 1 and not summary.failed
    return truth, out, out.parent / "fused"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Cameras 0 and 1, both channels each: the camera pair of channel-fused cameras."""
    truth, out = _corrected(tmp_path_factory.mktemp("pair"), 3, (0, 1))
    summary = fuse_dataset(out, out.parent / "fused", progress=False, **CHANNELS)
    assert summary.written == [str(output_path(out.parent / "fused", 0, 0, [0, 1], [0, 1], "fusedStack"))]
    return truth, out, out.parent / "fused"


def _volume(root, cameras, channels):
    return open_volume(output_path(root, 0, 0, cameras, channels, "fusedStack")).compute()


def _params(root, cameras, channels=(0, 1)):
    return json.loads(output_path(root, 0, 0, cameras, list(channels), "fusedStack", "json").read_text())


def _channel(corrected, camera, channel):
    return open_volume(output_path(corrected, 0, 0, camera, channel)).compute()


def _estimate(corrected, camera=0, **flags):
    views = find_corrected(corrected)
    config = ProcessingConfig.from_flags(**{**ALONE, **flags})
    return estimate_channels(views[(0, 0, camera, 0)], views[(0, 0, camera, 1)], config, progress=False)


def _sheet_aligned(b, sheet):
    """Channel b moved onto channel a's sheet as the stage does (numpy twin), unchanged for no motion."""
    if sheet.is_identity:
        return b
    return apply_sheet_transform_numpy(b, sheet.offset_z_planes, sheet.rotation_deg, order=1)


def _correlation(volume, truth, camera=0):
    body = truth.body_mask(camera)
    return float(np.corrcoef(volume[body].astype(np.float64), truth.clean(camera)[body])[0, 1])


# ------------------------------------------------------------------------------------------ quality against truth

def _detail(volume):
    """Fine structure of a volume: minus its in-plane Gaussian blur (sigma 2 px), so that slow
    brightness gradients (the attenuation) drop out and what is compared is sharpness."""
    volume = volume.astype(np.float64)
    return volume - ndimage.gaussian_filter(volume, (0, 2, 2))


def test_fused_camera_correlates_with_truth_better_than_either_channel(lone):
    truth, corrected, fused = lone
    channels = {ch: _channel(corrected, 0, ch) for ch in (0, 1)}
    combined = _volume(fused, 0, [0, 1])
    body, clean = truth.body_mask(0), _detail(truth.clean(0))
    scores = {ch: _correlation(v, truth) for ch, v in channels.items()}
    # measured (channel 0, channel 1 -> fused): seed 1: 0.49, 0.44 -> 0.59; seed 2: 0.49, 0.42 -> 0.52. Both
    # channels are dimmest in the middle column, so the fused volume keeps a dip there: a modest gain.
    assert _correlation(combined, truth) > max(scores.values()), (_correlation(combined, truth), scores)
    detail = {key: np.corrcoef(_detail(v)[body], clean[body])[0, 1] for key, v in {**channels, "fused": combined}.items()}
    # fine structure: seed 1: 0.61, 0.59 -> 0.68; seed 2: 0.63, 0.61 -> 0.69
    assert detail["fused"] > max(detail[0], detail[1]) + 0.03, detail
    # outer quarters in x: the channel lit from that side has the finer detail, and the fused volume keeps it
    # (measured, detail correlation lit/other/fused: low x 0.74/0.49/0.74, high x 0.62/0.45/0.62 for seed 1)
    quarter = truth.shape[2] // 4
    for lit, side in ((0, slice(None, quarter)), (1, slice(-quarter, None))):
        inside = body[..., side]

        def score(volume):
            return np.corrcoef(_detail(volume)[..., side][inside], clean[..., side][inside])[0, 1]
        assert score(channels[lit]) > score(channels[1 - lit]) + 0.1
        assert score(combined) > score(channels[lit]) - 0.02


def test_parameters_record_the_channel_fusion(lone):
    truth, corrected, fused = lone
    params = _params(fused, 0)
    assert params["camera"] == 0 and params["channels"] == [0, 1] and params["channel_blending_range"] == 20.0
    (entry,) = params["channel_fusion"]
    assert entry["camera"] == 0 and entry["channels"] == [0, 1]
    # matched on the transition column, where both sheets crossed the same tissue: the power ratio
    assert entry["intensity_ratio_b_over_a"] == pytest.approx(truth.illumination_balance(), rel=0.1)
    assert entry["intensity_scaled_channel"] == 1
    middle = (truth.shape[2] - 1) / 2
    assert abs(entry["transition_column"]["median"] - middle) < 3
    assert entry["orientation_consistent"] is True
    assert len(params["inputs"]) == 2 and params["outputs"] == [output_path(fused, 0, 0, 0, [0, 1],
                                                                            "fusedStack").name]


def _ratio_profile(volume, truth, transition):
    """Fused over clean intensity, summed over the body, in 1-column bins of x - transition(z, y)."""
    clean, body = truth.clean(0).astype(np.float64), truth.body_mask(0)
    offset = np.arange(volume.shape[2])[None, None, :] - np.asarray(transition)[:, :, None]
    bins = np.arange(-12, 12)
    profile = []
    for low in bins:
        inside = body & (offset >= low) & (offset < low + 1)
        profile.append(volume[inside].astype(np.float64).sum() / clean[inside].sum())
    return bins, np.array(profile)


def _seam_step(volume, truth, transition):
    """(step at the transition beyond the local trend, the same statistic's spread elsewhere), relative.

    The step between the bins either side of the transition, minus the mean of the steps next to it
    (the profile's own slope), divided by the profile's level there; the noise is the standard
    deviation of that statistic at every other bin.
    """
    bins, profile = _ratio_profile(volume, truth, transition)
    steps = np.diff(profile)
    excess = (steps[1:-1] - (steps[:-2] + steps[2:]) / 2) / profile[1:-2]
    centre = int(np.flatnonzero(bins == -1)[0]) - 1   # the step from bin [-1, 0) to bin [0, 1)
    others = np.delete(excess, [centre - 1, centre, centre + 1])
    return float(excess[centre]), float(np.std(others))


def test_no_step_at_the_transition(tmp_path):
    """A hard switch (channel range 0) shows any brightness mismatch as a step at the transition column."""
    truth, corrected = _corrected(tmp_path, 1, (0,))
    transition = _estimate(corrected).transition_zy
    results = {}
    for matched in (True, False):
        target = tmp_path / str(matched)
        fuse_dataset(corrected, target, progress=False, fusion_blending_range=[0, 10],
                     fusion_intensity_correction=matched, **ALONE)
        results[matched] = _seam_step(_volume(target, 0, [0, 1]), truth, transition)
    step, noise = results[True]
    assert abs(step) < 3 * noise, results          # measured (seed 1): step 0.000, noise 0.007
    step_unmatched, noise_unmatched = results[False]
    assert step_unmatched < -5 * noise_unmatched    # measured -0.21: the dimmer channel 1 steps down


def test_channel_blending_range_changes_only_voxels_near_the_transition(lone, tmp_path):
    truth, corrected, default = lone
    transition = _estimate(corrected).transition_zy
    distance = np.arange(truth.shape[2])[None, None, :] - transition[:, :, None]
    results = {20.0: _volume(default, 0, [0, 1])}
    fuse_dataset(corrected, tmp_path, progress=False, fusion_blending_range=[4, 10], **ALONE)
    results[4.0] = _volume(tmp_path, 0, [0, 1])
    assert _params(tmp_path, 0)["channel_blending_range"] == 4.0
    far = np.abs(distance) >= 10.0                   # outside both ramps: one channel alone
    np.testing.assert_array_equal(results[4.0][far], results[20.0][far])
    differ = results[4.0] != results[20.0]
    assert differ[~far].sum() > 0.1 * (~far & truth.body_mask(0)).sum()
    narrow = np.abs(distance) < 2.0                  # within the narrow ramp as well
    assert not (differ & far).any() and differ[~narrow].any()


def test_stage_equals_blend_channels_numpy(lone):
    truth, corrected, fused = lone
    estimate = _estimate(corrected)
    a, b = _channel(corrected, 0, 0), _sheet_aligned(_channel(corrected, 0, 1), estimate.sheet)
    expected = blend_channels_numpy(a, b, 20.0, "x", estimate.transition_zy, intensity=estimate.intensity,
                                    dtype=a.dtype)
    np.testing.assert_array_equal(_volume(fused, 0, [0, 1]), expected)
    assert _params(fused, 0)["channel_fusion"][0] == {"camera": 0, **json.loads(json.dumps(estimate.summary()))}


# ------------------------------------------------------------------------------------------ camera pairs

def test_camera_pair_of_channel_fused_cameras(pair):
    truth, corrected, fused = pair
    params = _params(fused, [0, 1])
    assert params["channels"] == [0, 1] and params["channel"] == 0 and params["channel_blending_range"] == 20.0
    assert [e["camera"] for e in params["channel_fusion"]] == [0, 1]
    for entry in params["channel_fusion"]:
        assert entry["intensity_ratio_b_over_a"] == pytest.approx(BALANCE, rel=0.1)
    assert len(params["inputs"]) == 4
    # the camera fusion itself still finds the pair's true geometry and gain ratio
    dy, dx = truth.offset((0, 1))
    assert np.allclose(params["sampling_offset_yx_px"], [dy, dx], atol=0.25)
    assert params["intensity_ratio_moving_over_reference"] == pytest.approx(truth.gain_ratio((0, 1)), rel=0.08)
    volume = _volume(fused, [0, 1], [0, 1])
    alone = max(_correlation(_channel(corrected, 0, ch), truth) for ch in (0, 1))
    assert _correlation(volume, truth) > alone + 0.05


def test_camera_pair_equals_its_numpy_reference(pair):
    """The lazy graph (channel blends inside the camera fusion) gives what the in-memory steps give."""
    truth, corrected, fused = pair
    config = ProcessingConfig.from_flags(**CHANNELS)
    views = find_corrected(corrected)
    ref, mov = (ChannelFusedView(views[(0, 0, c, 0)], views[(0, 0, c, 1)]).prepare(config, progress=False)
                for c in (0, 1))
    estimate = estimate_pair(ref, mov, config, progress=False)
    cameras = []
    for view in (ref, mov):
        a, b = _channel(corrected, view.camera, 0), _sheet_aligned(_channel(corrected, view.camera, 1),
                                                                   view.estimate.sheet)
        cameras.append(blend_channels_numpy(a, b, 20.0, "x", view.estimate.transition_zy,
                                            intensity=view.estimate.intensity, dtype=a.dtype))
    moving = np.asarray(view_transform(cameras[1], flip_h=True))
    expected = fuse_views_numpy(cameras[0], moving, estimate.offset_yx, estimate.rotation_deg,
                                estimate.transition_yx, 10.0, "adaptive", estimate.intensity, dtype=cameras[0].dtype)
    np.testing.assert_array_equal(_volume(fused, [0, 1], [0, 1]), expected)


def test_missing_channel_is_a_failure_and_the_others_continue(pair, tmp_path):
    truth, corrected, _ = pair
    partial = tmp_path / "corrected"
    shutil.copytree(corrected, partial)
    output_path(partial, 0, 0, 1, 1, "correction", "json").unlink()   # camera 1 lost channel 1
    summary = fuse_dataset(partial, tmp_path / "pair", progress=False, **CHANNELS)
    target = str(output_path(tmp_path / "pair", 0, 0, [0, 1], [0, 1], "fusedStack"))
    assert summary.written == [] and list(summary.failed) == [target]
    assert "camera 1 channel 1" in summary.failed[target]
    summary = fuse_dataset(partial, tmp_path / "alone", progress=False, **ALONE)
    assert summary.written == [str(output_path(tmp_path / "alone", 0, 0, 0, [0, 1], "fusedStack"))]
    assert list(summary.failed) == [str(output_path(tmp_path / "alone", 0, 0, 1, [0, 1], "fusedStack"))]


def test_resume_skips_and_a_changed_range_refuses(pair, tmp_path):
    truth, corrected, fused = pair
    again = fuse_dataset(corrected, fused, progress=False, **CHANNELS)
    assert again.written == [] and len(again.skipped) == 1
    changed = fuse_dataset(corrected, fused.parent / "other", progress=False, fusion_blending_range=[8, 10],
                           **CHANNELS)
    assert len(changed.written) == 1
    # channels of a pair are fused as that pair only, never one by one
    names = sorted(p.name for p in (fused / "SPM00" / "TM000000").glob("*.fusedStack.zarr"))
    assert names == ["SPM00_TM000000_CM00_CM01_CHN00_CHN01.fusedStack.zarr"]


def test_swapped_channel_order_is_flagged(lone, caplog):
    truth, corrected, _ = lone
    views = find_corrected(corrected)
    config = ProcessingConfig.from_flags(**ALONE)
    swapped = estimate_channels(views[(0, 0, 0, 1)], views[(0, 0, 0, 0)], config, progress=False)
    assert swapped.orientation_consistent is False
    assert "lists the channel lit from low x first" in caplog.text


def test_cli_fuses_a_lone_camera(lone, tmp_path):
    truth, corrected, default = lone
    code = main(["fuse", str(corrected), "--out", str(tmp_path), "--no-cluster", "--fusion-channel-pairs", "0,1",
                 "--fusion-camera-pairs", "", "--fusion-diagnostics", "false"])
    assert code == 0
    np.testing.assert_array_equal(_volume(tmp_path, 0, [0, 1]), _volume(default, 0, [0, 1]))


def test_channel_pairs_are_validated():
    with pytest.raises(ConfigError, match="two different channels"):
        ProcessingConfig.from_flags(fusion_channel_pairs=[[1, 1]])
    with pytest.raises(ConfigError, match="more than one pair"):
        ProcessingConfig.from_flags(fusion_channel_pairs="0,1:1,2")
    assert ProcessingConfig.from_flags(fusion_channel_pairs="0,1:2,3").fusion.channel_pairs == ((0, 1), (2, 3))


# ------------------------------------------------------------------------------------------ reading back, API

def test_reader_lists_channel_fused_outputs(pair, lone):
    from isoview_dask.reader import IsoviewArray, View
    _, _, fused = pair
    rec = IsoviewArray(fused, "fused")
    assert [v.label for v in rec.views] == ["CM00_CM01_CHN00_CHN01"] and rec.shape[:2] == (1, 1)
    np.testing.assert_array_equal(rec.data[0, 0].compute(), _volume(fused, [0, 1], [0, 1]))
    for choice in ("CM00_CM01_CHN00_CHN01", ((0, 1), (0, 1)), 0, View((0, 1), 0, (0, 1))):
        assert IsoviewArray(fused, "fused", view=choice).ndim == 4
    assert rec.path(0).name == "SPM00_TM000000_CM00_CM01_CHN00_CHN01.fusedStack.zarr"
    _, corrected, lone_fused = lone
    alone = IsoviewArray(lone_fused, "fused", view="CM00_CHN00_CHN01")
    np.testing.assert_array_equal(alone.data[0].compute(), _volume(lone_fused, 0, [0, 1]))
    # the corrected recording still lists each channel of each camera, and no fused view
    assert [v.label for v in IsoviewArray(corrected, "corrected").views] == ["CM00_CHN00", "CM00_CHN01"]


def test_api_fuse_gives_the_stage_outputs_lazily_and_written(pair, tmp_path):
    from isoview_dask import fuse
    _, corrected, fused = pair
    key = (0, 0, (0, 1), (0, 1))
    lazy = fuse(None, corrected, **CHANNELS)
    assert list(lazy) == [key] and not lazy.failed
    np.testing.assert_array_equal(lazy[key].fused.compute(), _volume(fused, [0, 1], [0, 1]))
    assert [e["camera"] for e in lazy[key].parameters["channel_fusion"]] == [0, 1]
    assert lazy[key].transition_yx.shape == lazy[key].fused.shape[1:]
    written = fuse(None, corrected, tmp_path, **CHANNELS)
    assert list(written) == [key] and written[key].parameters["channels"] == [0, 1]
    np.testing.assert_array_equal(np.asarray(written[key].fused), _volume(fused, [0, 1], [0, 1]))
    again = lazy.write(tmp_path / "again", progress=False)   # the lazy estimates, as fixed parameters
    assert list(again) == [key] and len(again.summary.written) == 1
    assert "sampling_offset_yx_px" in again[key].parameters["parameters_fixed"]
    np.testing.assert_array_equal(np.asarray(again[key].fused), _volume(fused, [0, 1], [0, 1]))
    reused = fuse(None, corrected, estimate_params=False, parameters=lazy, **CHANNELS)
    np.testing.assert_array_equal(reused[key].fused.compute(), _volume(fused, [0, 1], [0, 1]))
    assert fuse(None, corrected, estimate_params=False, parameters={}, **CHANNELS).failed == {
        key: "no parameters given for this pair"}


def test_api_fuse_lone_camera(lone):
    from isoview_dask import fuse
    _, corrected, fused = lone
    key = (0, 0, (0,), (0, 1))
    result = fuse(None, corrected, **ALONE)
    assert list(result) == [key]
    np.testing.assert_array_equal(result[key].fused.compute(), _volume(fused, 0, [0, 1]))
    assert result[key].estimate.intensity.ratio == pytest.approx(BALANCE, rel=0.1)
    assert result[key].parameters["channel_blending_range"] == 20.0


@pytest.fixture(scope="module")
def timelapse(tmp_path_factory):
    """Six timepoints of a drifting camera pair, two illumination channels each, fused in two passes."""
    from isoview_dask.pipeline import process_timelapse
    root = tmp_path_factory.mktemp("channel-timelapse")
    truth = generate_dataset(root / "syn", preset="tiny", seed=4, cameras=(0, 1), timepoints=6,
                             illumination_channels=(0, 1), illumination_balance=BALANCE)
    summaries = process_timelapse(truth.raw_dir, root / "out", progress=False, **CHANNELS)
    return truth, root / "out", summaries


def test_timelapse_smooths_camera_pairs_of_channel_fused_cameras(timelapse):
    from isoview_dask.pipeline.timelapse import load_estimates, lookup_table_path
    truth, out, summaries = timelapse
    counts = {name: (len(s.written), len(s.skipped), len(s.failed)) for name, s in summaries.items()}
    # 2 cameras x 2 channels x 6 timepoints corrected; one estimate, one fused volume per timepoint, one table
    assert counts == {"correct": (24, 0, 0), "estimate": (6, 0, 0), "smooth": (1, 0, 0), "fuse": (6, 0, 0)}
    assert list(load_estimates(out)) == [(0, (0, 1), (0, 1))]   # no single-channel pairs of paired channels
    lut = json.loads(lookup_table_path(out, 0, (0, 1), (0, 1), "lookUpTable.json").read_text())
    assert lut["channel"] == [0, 1] and len(lut["timepoints"]) == 6
    assert lookup_table_path(out, 0, (0, 1), (0, 1), "lookUpTable.csv").is_file()
    for t, row in enumerate(lut["timepoints"]):
        assert np.abs(np.array(row["sampling_offset_yx_px"]) - truth.offset((0, 1), t)).max() <= 0.25
        params = _params(out, [0, 1]) if t == 0 else json.loads(
            output_path(out, 0, t, [0, 1], [0, 1], "fusedStack", "json").read_text())
        # the fusion used the smoothed camera-pair values; the channel estimates stay per timepoint
        assert {"sampling_offset_yx_px", "transition_yx"} <= set(params["parameters_fixed"])
        np.testing.assert_allclose(params["sampling_offset_yx_px"], row["sampling_offset_yx_px"])
        assert [e["camera"] for e in params["channel_fusion"]] == [0, 1]
    # a rerun skips everything
    from isoview_dask.pipeline import estimate_timepoints, smooth_and_fuse
    assert len(estimate_timepoints(out, out, progress=False, **CHANNELS).skipped) == 6
    smooth, fused = smooth_and_fuse(out, out, progress=False, **CHANNELS)
    assert (len(smooth.skipped), len(fused.skipped), fused.written) == (1, 6, [])


def test_parameter_table_lists_channel_pairs(timelapse):
    from isoview_dask.pipeline.timelapse import format_table, parameter_table
    truth, out, _ = timelapse
    rows = [r for r in parameter_table(out) if r["channel"] == "0+1"]
    assert [r["timepoint"] for r in rows] == list(range(6))
    assert all(r["fixed"] and r["sampling_dy"] is not None and r["used_sampling_dy"] is not None for r in rows)
    assert "0+1" in format_table(rows)


def test_diagnostic_figures_of_channel_fusion(pair, lone, tmp_path):
    """With diagnostics on, both outputs list a channel-transition figure; the lone camera its projections too."""
    import matplotlib.image as mpimg
    _, corrected_pair, _ = pair
    _, corrected_lone, _ = lone
    shown = dict(CHANNELS, fusion_diagnostics=True)
    fuse_dataset(corrected_pair, tmp_path / "pair", progress=False, **shown)
    fuse_dataset(corrected_lone, tmp_path / "lone", progress=False, **dict(shown, fusion_camera_pairs=[]))
    expected = {("pair", (0, 1)): {"registration", "transitionPlane", "blendingWeights", "projections",
                                   "channelTransition"},
                ("lone", (0,)): {"channelTransition", "projections"}}
    for (where, cameras), kinds in expected.items():
        params = _params(tmp_path / where, list(cameras))
        listed = {Path(p).name for p in params["outputs"]}
        stem = output_path(tmp_path / where, 0, 0, list(cameras), [0, 1], "fusedStack").with_suffix("")
        for kind in kinds:
            png = Path(f"{stem}.{kind}.png")
            assert png.name in listed
            image = mpimg.imread(png)
            assert image.ndim == 3 and image.shape[0] > 100 and image[..., :3].std() > 0.01
    # the pair's channel figure has one row per camera: taller than the lone camera's
    heights = {where: mpimg.imread(f"{output_path(tmp_path / where, 0, 0, list(c), [0, 1], 'fusedStack').with_suffix('')}"
                                   ".channelTransition.png").shape[0] for where, c in expected}
    assert heights["pair"] > 1.5 * heights["lone"]


def test_saved_column_maps_equal_the_masks_own(lone):
    """Channel estimation reads each channel's xzMask.tif from the correction stage instead of reducing the
    mask again: the file equals the mask's own column map, and without the files the estimate is the same."""
    from isoview_dask.correct import coordinate_masks
    from isoview_dask.pipeline.fuse import _saved_column_map
    _, corrected, _ = lone
    views = find_corrected(corrected)
    for channel in (0, 1):
        view = views[(0, 0, 0, channel)]
        saved = _saved_column_map(view)
        assert saved is not None and saved.shape == view.open_arrays()[0].shape[:2]
        np.testing.assert_array_equal(saved, coordinate_masks(view.open_arrays()[1])[1].compute())
    # a record that does not list the file (an older output): the maps are computed from the masks
    unlisted = [replace(views[(0, 0, 0, ch)], record={**views[(0, 0, 0, ch)].record, "outputs": [
        o for o in views[(0, 0, 0, ch)].record["outputs"] if not o.endswith(".xzMask.tif")]}) for ch in (0, 1)]
    assert _saved_column_map(unlisted[0]) is None
    config = ProcessingConfig.from_flags(**ALONE)
    with_files, without = _estimate(corrected), estimate_channels(*unlisted, config, progress=False)
    np.testing.assert_array_equal(with_files.transition_zy, without.transition_zy)
    assert with_files.intensity.ratio == without.intensity.ratio
