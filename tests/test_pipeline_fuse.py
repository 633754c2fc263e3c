"""Fusion stage end to end: registration and intensity against truth, the parameters contract,
fused quality, resume, missing inputs, methods, CLI."""

import json

import warnings

import numpy as np
import pytest

from isoview_dask.cli import main
from isoview_dask.io import open_volume
from isoview_dask.pipeline import correct_dataset, fuse_dataset, output_path
from isoview_dask.synthetic import generate_dataset

SHAPE = (32, 160, 160)


def _corrected(root, seed, offsets=None, rotations=None):
    extra = {}
    if offsets:
        extra["offsets"] = offsets
    if rotations:
        extra["rotations_deg"] = rotations
    truth = generate_dataset(root / "synthetic", preset="tiny", shape=SHAPE, seed=seed, **extra)
    summary = correct_dataset(truth.raw_dir, root / "out", progress=False, output_chunks=(8, 64, 64),
                              output_shards=(16, 128, 128))
    assert len(summary.written) == 4
    return truth, root / "out"


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    truth, out = _corrected(tmp_path_factory.mktemp("fuse"), seed=4, offsets={(0, 1): (17.3, -19.6)},
                            rotations={(0, 1): 0.9})
    summary = fuse_dataset(out, progress=False)
    assert len(summary.written) == 2 and not summary.failed
    return truth, out


def _params(out, pair, channel):
    return json.loads(output_path(out, 0, 0, list(pair), channel, "fusedStack", "json").read_text())


@pytest.mark.parametrize("pair, channel", [((0, 1), 0), ((2, 3), 1)])
def test_registration_and_intensity_against_truth(fused, pair, channel):
    truth, out = fused
    params = _params(out, pair, channel)
    dy, dx = truth.offset(pair)
    theta = truth.rotation_deg(pair)
    assert abs(params["sampling_offset_yx_px"][0] - dy) <= 0.1
    assert abs(params["sampling_offset_yx_px"][1] - dx) <= 0.1
    assert abs(params["sampling_rotation_deg"] - theta) <= 0.1
    assert params["registration_confidence"] > 0.8
    # the contract's content transform: rotation -theta, displacement -R(-theta) t
    phi = np.deg2rad(-theta)
    expected = -np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]]) @ np.array([dy, dx])
    np.testing.assert_allclose(params["offset_yx_px"], expected, atol=0.1)
    assert params["rotation_deg"] == pytest.approx(-theta, abs=0.1)
    ratio = truth.gain_ratio(pair)  # gain of the moving camera over the reference
    assert params["intensity_scaled_camera"] == (pair[1] if ratio < 1 else pair[0])
    assert params["intensity_factor"] == pytest.approx(1 / ratio if ratio < 1 else ratio, rel=0.05)
    for key in ("transition_plane", "blending_method", "blending_range", "package_version"):
        assert key in params
    tp = params["transition_plane"]
    assert 0 <= tp["min"] <= tp["median"] <= tp["max"] <= SHAPE[0] - 1
    for figure in ("registration", "transitionPlane", "blendingWeights", "projections"):
        assert output_path(out, 0, 0, list(pair), channel, f"fusedStack.{figure}", "png").stat().st_size > 1000


def _corr(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return np.corrcoef(a, b)[0, 1]


def test_fused_beats_single_cameras_and_has_no_seam(fused):
    from isoview_dask.synthetic import flip_lr, register_opposing
    truth, out = fused
    clean = truth.clean(0)
    fused_volume = open_volume(output_path(out, 0, 0, [0, 1], 0, "fusedStack")).compute().astype(np.float64)
    camera0 = open_volume(output_path(out, 0, 0, 0, 0)).compute().astype(np.float64)
    camera1 = open_volume(output_path(out, 0, 0, 1, 0)).compute().astype(np.float64)
    camera1 = register_opposing(flip_lr(camera1), truth.offset((0, 1)), truth.rotation_deg((0, 1)))
    inside = np.s_[:, 25:-25, 25:-25]  # away from the frame edges the moving camera did not record
    c_fused = _corr(fused_volume[inside], clean[inside])
    assert c_fused > _corr(camera0[inside], clean[inside]) + 0.01
    assert c_fused > _corr(camera1[inside], clean[inside]) + 0.01
    # mean intensity over the body along z: no step at the transition beyond plane-to-plane noise
    body = truth.body_mask(0)
    profile = np.array([fused_volume[z][body[z]].mean() if body[z].any() else np.nan for z in range(SHAPE[0])])
    ideal = truth.ideal(0)
    ideal_profile = np.array([ideal[z][body[z]].mean() if body[z].any() else np.nan for z in range(SHAPE[0])])
    relative = np.log(profile / ideal_profile)  # the blend's deviation from one camera's expected profile
    steps = np.abs(np.diff(relative))
    steps = steps[np.isfinite(steps)]
    transition = int(round(_params(out, (0, 1), 0)["transition_plane"]["median"]))
    near = steps[max(transition - 2, 0):transition + 2]
    assert near.max() <= 3 * np.median(steps) + 0.02


def test_rerun_skips_and_method_change_redoes(fused, tmp_path):
    truth, out = fused
    again = fuse_dataset(out, progress=False)
    assert len(again.skipped) == 2 and not again.written
    before = open_volume(output_path(out, 0, 0, [0, 1], 0, "fusedStack")).compute()
    changed = fuse_dataset(out, tmp_path / "average", progress=False, fusion_type="average",
                           input_channels=[0])
    assert len(changed.written) == 1
    average = open_volume(output_path(tmp_path / "average", 0, 0, [0, 1], 0, "fusedStack")).compute()
    assert not np.array_equal(before, average)
    assert _params(tmp_path / "average", (0, 1), 0)["blending_method"] == "average"


def test_missing_camera_is_reported(fused, tmp_path):
    import shutil
    truth, out = fused
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    output_path(copy, 0, 0, 3, 1, "correction", "json").unlink()
    summary = fuse_dataset(copy, progress=False, output_overwrite=True)
    assert len(summary.written) == 1
    assert "camera 3 has no complete corrected volume" in " ".join(summary.failed.values())


def test_cli_run_and_fuse(tmp_path, capsys):
    generate_dataset(tmp_path / "s", preset="tiny", seed=2)
    code = main(["run", str(tmp_path / "s" / "raw"), "--out", str(tmp_path / "o"), "--no-cluster",
                 "--fusion-type", "geometric", "--fusion-blending-range", "20,5", "--fusion-camera-pairs", "0,1"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "correct: 4 written" in text and "fuse: 1 written" in text
    params = _params(tmp_path / "o", (0, 1), 0)
    assert params["blending_method"] == "geometric" and params["blending_range"] == 5.0
    tp = params["transition_plane"]
    assert tp["min"] == tp["max"]  # geometric: one plane
    same = ["--fusion-type", "geometric", "--fusion-blending-range", "20,5", "--fusion-camera-pairs", "0,1"]
    assert main(["fuse", str(tmp_path / "o"), "--no-cluster", *same]) == 0
    assert "0 written, 1 skipped" in capsys.readouterr().out
    assert main(["fuse", str(tmp_path / "o"), "--no-cluster", "--fusion-camera-pairs", "0,1"]) == 0  # others
    assert "1 written, 0 skipped" in capsys.readouterr().out


def test_fixed_parameters_replace_estimates(fused, tmp_path):
    truth, out = fused
    fixed = {"sampling_offset_yx_px": truth.offset((0, 1)), "sampling_rotation_deg": truth.rotation_deg((0, 1)),
             "intensity_ratio_moving_over_reference": truth.gain_ratio((0, 1)), "transition_plane": 12.0}
    summary = fuse_dataset(out, tmp_path, progress=False, input_channels=[0],
                           fixed_parameters=lambda s, t, pair, ch: fixed if pair == (0, 1) else None)
    assert len(summary.written) == 1
    params = _params(tmp_path, (0, 1), 0)
    np.testing.assert_allclose(params["sampling_offset_yx_px"], truth.offset((0, 1)))
    assert params["sampling_rotation_deg"] == pytest.approx(truth.rotation_deg((0, 1)))
    assert params["transition_plane"] == {"min": 12.0, "median": 12.0, "max": 12.0}
    assert params["intensity_ratio_moving_over_reference"] == pytest.approx(truth.gain_ratio((0, 1)))
    assert params["registration_method"] == "fixed"
    estimated = _params(out, (0, 1), 0)
    assert estimated["registration_method"] != "fixed"


def test_saved_depth_maps_equal_the_masks_own(tmp_path):
    """Fusion reads each camera's depth map from the correction's xyMask.tif instead of reducing its
    full mask: the two are equal (the mask is the reduced mask repeated), flips and z-flip included."""
    import dask
    from isoview_dask.config import ProcessingConfig
    from isoview_dask.correct import coordinate_masks
    from isoview_dask.fuse import view_transform
    from isoview_dask.pipeline import correct_dataset
    from isoview_dask.pipeline.fuse import prepared_pair, _saved_depth_map, find_corrected
    from isoview_dask.synthetic import generate_dataset
    truth = generate_dataset(tmp_path / "syn", preset="tiny", seed=3, cameras=(0, 1))
    correct_dataset(truth.raw_dir, tmp_path / "out", progress=False)
    views = find_corrected(tmp_path / "out")
    ref, mov = views[(0, 0, 0, 0)], views[(0, 0, 1, 0)]
    for flips in ({}, {"fusion_flip_z": True, "fusion_flip_v": True}):
        fc = ProcessingConfig.from_flags(None, **flips).fusion
        _, _, mask_ref, mask_mov_f = prepared_pair(ref, mov, fc)
        computed = dask.compute(coordinate_masks(mask_ref)[0], coordinate_masks(mask_mov_f)[0])
        saved_mov = view_transform(_saved_depth_map(mov), flip_h=fc.flip_h, flip_v=fc.flip_v, rotation=fc.rotation)
        if fc.flip_z:
            saved_mov = (mask_ref.shape[0] - 1) - saved_mov
        np.testing.assert_array_equal(_saved_depth_map(ref), computed[0])
        np.testing.assert_array_equal(saved_mov, computed[1])


def test_registration_clamped_at_search_limit_is_flagged(fused, tmp_path):
    """True offset (17.3, -19.6) px against a 6 px search range: the pair is fused, but flagged as rejected
    in its parameters and as a warning in the summary; the unaffected fit has no flag."""
    truth, out = fused
    good = _params(out, (0, 1), 0)
    assert good["registration_rejected"] is None
    assert not fuse_dataset(out, progress=False).warnings  # resumed, nothing flagged
    narrow = tmp_path / "narrow"
    summary = fuse_dataset(out, narrow, progress=False, fusion_search_px=6)
    params = _params(narrow, (0, 1), 0)
    assert params["registration_confidence"] == 0.0
    assert "search range of 6 px" in params["registration_rejected"]
    assert max(abs(v) for v in params["sampling_offset_yx_px"]) <= 6.0  # clamped, far from truth
    assert abs(params["sampling_offset_yx_px"][1] - truth.offset((0, 1))[1]) > 10
    target = str(output_path(narrow, 0, 0, [0, 1], 0, "fusedStack"))
    assert target in summary.warnings and "registration rejected" in summary.warnings[target]
    assert "WARNING" in summary.report() and summary.to_dict()["warnings"] == summary.warnings


def test_strict_registration_fails_a_rejected_pair_and_writes_nothing(fused, tmp_path):
    """fusion.strict_registration with a 12 px search range: pair (0, 1) (true offset (17.3, -19.6) px) fails
    with the reason and leaves no output; pair (2, 3), within range, is written."""
    truth, out = fused
    strict = tmp_path / "strict"
    summary = fuse_dataset(out, strict, progress=False, fusion_search_px=12, fusion_strict_registration=True)
    target = output_path(strict, 0, 0, [0, 1], 0, "fusedStack")
    assert str(target) in summary.failed and "registration rejected" in summary.failed[str(target)]
    assert not target.exists() and not target.with_suffix(".json").exists()
    assert max(abs(v) for v in truth.offset((2, 3))) < 8  # the other pair is within 12 px: written
    assert str(output_path(strict, 0, 0, [2, 3], 1, "fusedStack")) in summary.written


def test_transition_figure_colours_span_at_least_the_blending_range():
    """A map varying by 0.4 plane is shown as nearly one colour (the blend is 10 planes wide); a map varying
    by 30 planes is shown whole."""
    from isoview_dask.pipeline.diagnostics import transition_colour_range
    flat = 20 + 0.4 * np.random.default_rng(0).random((32, 32))
    low, high = transition_colour_range(flat, 10.0, 64)
    assert high - low >= 10.0 and low < flat.min() and high > flat.max()
    steep = np.linspace(10, 40, 32 * 32).reshape(32, 32)
    low, high = transition_colour_range(steep, 10.0, 64)
    assert low <= 10 and high >= 40


def _block_nanmean(image, fy, fx, shape):
    return np.array([[np.nanmean(image[i * fy:(i + 1) * fy, j * fx:(j + 1) * fx]) for j in range(shape[1])]
                     for i in range(shape[0])])


@pytest.mark.parametrize("shape", [(2048, 2048), (1500, 700), (96, 2048), (200, 300)])
def test_display_image_is_the_block_mean_at_display_size(shape):
    """Images for the figures are reduced to at most DISPLAY_PX per side by block means: one factor for both
    axes (square pixels) or one per axis (aspect 'auto'); NaNs are left out of their block, and a block of
    NaNs stays NaN; a small image is unchanged."""
    from isoview_dask.pipeline.diagnostics import DISPLAY_PX, display_image
    image = np.random.default_rng(3).random(shape).astype(np.float32) * 100
    image[10:20, 30:33] = np.nan
    image[:16, -16:] = np.nan  # a whole block (any factor up to 16) of NaNs
    for keep_aspect in (True, False):
        shown = display_image(image, keep_aspect=keep_aspect)
        factors = [-(-n // DISPLAY_PX) for n in shape]
        if keep_aspect:
            factors = [max(factors)] * 2
        assert shown.shape == tuple(-(-n // f) for n, f in zip(shape, factors))
        assert max(shown.shape) <= DISPLAY_PX and shown.dtype == np.float32
        if factors == [1, 1]:
            np.testing.assert_array_equal(shown, image)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the all-NaN block
            expected = _block_nanmean(image.astype(np.float64), *factors, shown.shape)
        np.testing.assert_allclose(shown, expected, rtol=1e-5, equal_nan=True)
        assert np.isnan(shown[0, -1])


def test_full_frame_figures_draw_reduced_images(tmp_path, monkeypatch):
    """At full frames every image reaches matplotlib at display size (so drawing does not scale with the
    frame), and all four figures are still written."""
    import matplotlib.axes

    from isoview_dask.pipeline.diagnostics import DISPLAY_PX, FIGURES, clear_figure_templates, fusion_figures
    clear_figure_templates()  # a template of this thread would not call imshow again
    drawn = []
    original = matplotlib.axes.Axes.imshow

    def imshow(self, image, *args, **kwargs):
        drawn.append(np.shape(image))
        return original(self, image, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", imshow)
    rng = np.random.default_rng(0)
    frame = (1100, 1300)
    images = {k: rng.random(frame).astype(np.float32) for k in ("reference_xy", "moving_xy", "aligned_xy",
                                                                 "fused_xy")}
    images["fused_xz"] = rng.random((40, frame[1])).astype(np.float32)
    transition = 20 + rng.random(frame)
    params = {"offset_yx_px": [1.0, 2.0], "rotation_deg": 0.1, "registration_confidence": 0.9,
              "blending_method": "adaptive", "voxel_size_um_zyx": [2.0, 0.4, 0.4]}
    written = fusion_figures(tmp_path / "pair", images, transition, 40, 10.0, "sigmoid", params)
    assert sorted(p.name.split(".")[-2] for p in written) == sorted(FIGURES[:4])
    assert all(p.stat().st_size > 1000 for p in written)
    assert len(drawn) == 6 and all(max(s[:2]) <= DISPLAY_PX for s in drawn)
    assert (40, 434) in drawn  # the xz projection keeps its 40 planes


def _figure_inputs(seed: int, centre: float):
    """Projections, transition map and parameters of one made-up pair; ``centre`` moves the transition."""
    rng = np.random.default_rng(seed)
    frame = (60, 80)
    images = {k: rng.gamma(2.0, 50.0 * (seed + 1), frame).astype(np.float32)
              for k in ("reference_xy", "moving_xy", "aligned_xy", "fused_xy")}
    images["fused_xz"] = rng.gamma(2.0, 10.0, (40, frame[1])).astype(np.float32)
    transition = centre + (3 + 4 * seed) * rng.standard_normal(frame)
    params = {"offset_yx_px": [1.0 + seed, -2.0], "rotation_deg": 0.1 * seed, "registration_confidence": 0.5,
              "blending_method": "adaptive", "voxel_size_um_zyx": [2.0 + seed, 0.4, 0.4]}
    return images, transition, params


def test_figures_drawn_on_a_reused_template_equal_fresh_ones(tmp_path):
    """Each thread keeps its figures and only replaces their data: after drawing one pair, the next pair's
    PNGs are pixel for pixel those of a fresh figure (no colour limit, axis range, text or line of the
    first pair left over)."""
    from types import SimpleNamespace

    from PIL import Image

    from isoview_dask.pipeline.diagnostics import channel_figures, clear_figure_templates, fusion_figures

    def estimate(seed, centre):
        rng = np.random.default_rng(seed)
        return SimpleNamespace(channels=(0, 1), transition_zy=centre + 5 * seed * rng.random((40, 60)),
                               intensity=SimpleNamespace(ratio=1.0 + seed / 10))

    def draw(stem, seed, centre):
        images, transition, params = _figure_inputs(seed, centre)
        written = fusion_figures(stem, images, transition, 40, 6.0 + 30 * seed, "sigmoid", params)
        written += channel_figures(stem, [(0, estimate(seed, 20.0 + centre)), (1, estimate(seed + 1, 50.0))],
                                   80, 8.0 + 60 * seed, "sigmoid", "adaptive")
        return {p.name.split(".")[-2]: np.asarray(Image.open(p)) for p in written}

    clear_figure_templates()
    first = draw(tmp_path / "first", 0, 10.0)
    reused = draw(tmp_path / "reused", 1, 28.0)
    clear_figure_templates()
    fresh = draw(tmp_path / "fresh", 1, 28.0)
    assert sorted(reused) == sorted(fresh) == ["blendingWeights", "channelTransition", "projections",
                                               "registration", "transitionPlane"]
    for kind in fresh:
        assert reused[kind].shape == fresh[kind].shape
        assert np.array_equal(reused[kind], fresh[kind]), kind
        assert not np.array_equal(first[kind], fresh[kind]), kind  # the pairs do look different


def test_figures_drawn_over_a_cached_background_equal_whole_draws(tmp_path, monkeypatch):
    """Only the changing artists are drawn over a background drawn once (diagnostics.BLIT): the PNGs equal
    whole draws of the same figures, up to a few pixels where a line crosses an axis spine (drawn in the
    other order). A changing artist left in the background would differ in hundreds of pixels."""
    from PIL import Image

    from isoview_dask.pipeline import diagnostics

    def draw(stem, seed, centre):
        images, transition, params = _figure_inputs(seed, centre)
        written = diagnostics.fusion_figures(stem, images, transition, 40, 6.0 + 30 * seed, "sigmoid", params)
        return {p.name.split(".")[-2]: np.asarray(Image.open(p)).astype(int) for p in written}

    diagnostics.clear_figure_templates()
    draw(tmp_path / "first", 0, 10.0)
    blitted = draw(tmp_path / "blit", 1, 28.0)  # over the background the first pair drew
    monkeypatch.setattr(diagnostics, "BLIT", False)
    diagnostics.clear_figure_templates()
    whole = draw(tmp_path / "whole", 1, 28.0)
    assert sorted(blitted) == sorted(whole) == ["blendingWeights", "projections", "registration", "transitionPlane"]
    for kind in whole:
        differing = int((np.abs(blitted[kind] - whole[kind]).max(axis=2) > 0).sum())
        assert differing <= 4, (kind, differing)


def test_figures_every_nth_timepoint(tmp_path):
    """fusion.figures_every = 2: timepoints 0 and 2 get their PNGs (listed as outputs), timepoint 1 none;
    its fused volume is still written."""
    from isoview_dask.pipeline import process_dataset
    truth = generate_dataset(tmp_path / "syn", shape=(16, 64, 64), seed=6, timepoints=3)
    summaries = process_dataset(truth.raw_dir, tmp_path / "out", progress=False, fusion_figures_every=2,
                                fusion_camera_pairs=[[0, 1]], input_cameras=[0, 1], input_channels=[0])
    assert len(summaries["fuse"].written) == 3 and not summaries["fuse"].failed
    for t in range(3):
        drawn = sorted((tmp_path / "out" / "SPM00" / f"TM{t:06d}").glob("*.png"))
        params = json.loads(output_path(tmp_path / "out", 0, t, [0, 1], 0, "fusedStack", "json").read_text())
        listed = [o for o in params["outputs"] if o.endswith(".png")]
        assert len(drawn) == (4 if t != 1 else 0) == len(listed), t


def test_figures_are_chosen_one_by_one(fused, tmp_path):
    """fusion.figures: only the named diagnostic PNGs are drawn (and listed as outputs)."""
    _, out = fused
    target = tmp_path / "some"
    summary = fuse_dataset(out, target, progress=False, fusion_figures=["transitionPlane"],
                           fusion_camera_pairs=[[0, 1]], input_channels=[0])
    assert len(summary.written) == 1
    drawn = sorted(p.name.split(".")[-2] for p in target.rglob("*.png"))
    assert drawn == ["transitionPlane"]
    params = _params(target, (0, 1), 0)
    assert [o for o in params["outputs"] if o.endswith(".png")] == [
        "SPM00_TM000000_CM00_CM01_CHN00.fusedStack.transitionPlane.png"]
    with pytest.raises(Exception, match="fusion.figures"):
        fuse_dataset(out, tmp_path / "bad", progress=False, fusion_figures=["histogram"])


def test_figures_every_changes_only_the_fingerprints_of_timepoints_whose_figures_change():
    """fusion.figures_every never changes a fused volume: a timepoint drawn either way keeps its fingerprint
    (outputs made with every timepoint's figures stay complete); one that loses its figures does not."""
    from isoview_dask.config import ProcessingConfig
    from isoview_dask.pipeline.fuse import _fingerprint, figures_drawn

    class View:
        def __init__(self, timepoint):
            self.timepoint = timepoint

        def fingerprint_inputs(self):
            return [{"record": f"TM{self.timepoint}", "fingerprint": "x"}]

    every = {n: ProcessingConfig.from_flags(None, fusion_figures_every=n) for n in (1, 2, 10)}
    assert ProcessingConfig().fusion.figures_every == 10  # the default: timepoints 0, 10, 20, ...
    for t in (0, 10):
        assert len({_fingerprint(View(t), View(t), c) for c in every.values()}) == 1
    assert not figures_drawn(every[10].fusion, 3) and figures_drawn(every[1].fusion, 3)
    assert _fingerprint(View(3), View(3), every[1]) != _fingerprint(View(3), View(3), every[10])
    assert _fingerprint(View(3), View(3), every[2]) == _fingerprint(View(3), View(3), every[10])  # neither draws
    quiet = ProcessingConfig.from_flags(None, fusion_diagnostics=False)
    assert _fingerprint(View(3), View(3), quiet) == _fingerprint(
        View(3), View(3), ProcessingConfig.from_flags(None, fusion_diagnostics=False, fusion_figures_every=1))
