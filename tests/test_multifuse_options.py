"""The MATLAB multiFuse parameters beyond registration: given factors and planes, channel sides, fusion types.

Each option is checked on a synthetic recording: what it fixes is what the parameters JSON reports and what
the fused volume shows, and the content-based (sharpness) blend is measured against the clean truth.
"""

import json
import shutil

import dask.array as da
import numpy as np
import pytest

from isoview_dask.config import ConfigError, ProcessingConfig
from isoview_dask.fuse import blend_by_sharpness, blend_by_sharpness_numpy
from isoview_dask.fuse.intensity import IntensityResult
from isoview_dask.io import open_volume
from isoview_dask.pipeline import correct_dataset, fuse_dataset, output_path
from isoview_dask.synthetic import generate_dataset

QUIET = dict(fusion_diagnostics=False)
CHANNELS = dict(QUIET, fusion_channel_pairs=[[0, 1]], fusion_camera_pairs=[])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Cameras 0 and 1 (one channel), corrected."""
    root = tmp_path_factory.mktemp("pair")
    truth = generate_dataset(root / "syn", shape=(32, 128, 128), seed=6, cameras=(0, 1))
    correct_dataset(truth.raw_dir, root / "out", progress=False)
    return truth, root / "out"


@pytest.fixture(scope="module")
def channels(tmp_path_factory):
    """Camera 0 with two illumination channels, corrected."""
    root = tmp_path_factory.mktemp("channels")
    truth = generate_dataset(root / "syn", preset="tiny", seed=2, cameras=(0,), illumination_channels=(0, 1),
                             illumination_balance=0.8)
    correct_dataset(truth.raw_dir, root / "out", progress=False)
    return truth, root / "out"


def _params(root, cameras, channels):
    return json.loads(output_path(root, 0, 0, cameras, channels, "fusedStack", "json").read_text())


def _volume(root, cameras, channels):
    return open_volume(output_path(root, 0, 0, cameras, channels, "fusedStack")).compute()


def _pearson_in_body(volume, truth, camera=0):
    body = truth.body_mask(camera)
    return float(np.corrcoef(volume[body].astype(np.float64), truth.clean(camera)[body])[0, 1])


# ------------------------------------------------------------------------------------------ fusion types

@pytest.mark.parametrize("given, expected", [(0, "adaptive"), ("1", "geometric"), (2, "sharpness"),
                                             ("3", "average"), ("wavelet", "sharpness"),
                                             ("adaptive_blending", "adaptive"), ("average", "average")])
def test_matlab_fusion_type_numbers_are_aliases(given, expected):
    assert ProcessingConfig.from_flags(fusion_type=given).fusion.type == expected
    assert ProcessingConfig(fusion={"type": given}).fusion.type == expected


def test_unknown_fusion_type_is_refused():
    with pytest.raises(ConfigError, match="fusion.type"):
        ProcessingConfig.from_flags(fusion_type=7)


def test_sharpness_fusion_against_truth(pair, tmp_path):
    """Local-sharpness weights take each camera where it shows detail: closer to the clean specimen than the
    sharper camera alone (by 0.05) and than the geometry-based adaptive blend. (On these recordings the plain
    mean of the two cameras correlates best of all: it halves the noise, and the far side's blur is mild.)"""
    truth, out = pair
    scores = {}
    for method in ("adaptive", "sharpness", "average"):
        summary = fuse_dataset(out, tmp_path / method, progress=False, **QUIET, fusion_type=method,
                               fusion_camera_pairs=[[0, 1]])
        assert len(summary.written) == 1 and not summary.failed
        assert _params(tmp_path / method, [0, 1], 0)["blending_method"] == method
        scores[method] = _pearson_in_body(_volume(tmp_path / method, [0, 1], 0), truth)
    alone = _pearson_in_body(open_volume(output_path(out, 0, 0, 0, 0)).compute(), truth)
    assert scores["sharpness"] > alone + 0.05, (scores, alone)
    assert scores["sharpness"] > scores["adaptive"], scores
    assert scores["average"] > scores["adaptive"], scores  # the caveat above, kept honest


@pytest.mark.parametrize("chunks", [(5, 60, 50), (7, 13, 11), (20, 30, 25)])
def test_sharpness_blend_blockwise_equals_numpy(chunks):
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4000, (20, 60, 50)).astype(np.uint16)
    b = rng.normal(1000, 100, (20, 60, 50)).astype(np.float32)
    b[:, :5] = np.nan  # not recorded: taken from a
    intensity = IntensityResult.from_ratio(0.8)
    expected = blend_by_sharpness_numpy(a, b, intensity=intensity, dtype=np.uint16)
    got = blend_by_sharpness(da.from_array(a, chunks=chunks), da.from_array(b, chunks=chunks), intensity=intensity,
                             dtype=np.uint16).compute()
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(expected[:, :5], a[:, :5] * 1)  # NaN voxels: a alone (a is not scaled here)


def test_sharpness_weights_follow_detail():
    """A detailed view against a flat one: the fusion takes the detailed one where it has detail."""
    rng = np.random.default_rng(0)
    detailed = (1000 + 500 * (rng.random((8, 40, 40)) > 0.5)).astype(np.float32)
    flat = np.full(detailed.shape, 1250.0, np.float32)
    fused = blend_by_sharpness_numpy(detailed, flat, sigma_px=2.0)
    assert np.corrcoef(fused.ravel(), detailed.ravel())[0, 1] > 0.95


# ------------------------------------------------------------------------------------------ given values

def test_given_intensity_ratio_and_transition_plane_are_used(pair, tmp_path):
    truth, out = pair
    summary = fuse_dataset(out, tmp_path / "given", progress=False, **QUIET, fusion_intensity_ratio=1.7,
                           fusion_transition_plane=11.5)
    assert len(summary.written) == 1 and not summary.failed
    params = _params(tmp_path / "given", [0, 1], 0)
    assert params["intensity_ratio_moving_over_reference"] == pytest.approx(1.7)
    assert params["transition_plane"] == {"min": 11.5, "median": 11.5, "max": 11.5}
    estimated = fuse_dataset(out, tmp_path / "estimated", progress=False, **QUIET)
    assert not estimated.failed
    ratio = _params(tmp_path / "estimated", [0, 1], 0)["intensity_ratio_moving_over_reference"]
    assert ratio == pytest.approx(truth.gain_ratio((0, 1)), rel=0.1) and abs(ratio - 1.7) > 0.2


def test_given_transition_plane_beyond_the_stack_fails_clearly(pair, tmp_path):
    _, out = pair
    summary = fuse_dataset(out, tmp_path / "beyond", progress=False, **QUIET, fusion_transition_plane=40)
    assert len(summary.failed) == 1 and "beyond the last plane" in next(iter(summary.failed.values()))


def test_given_channel_ratio_and_column_are_used(channels, tmp_path):
    _, out = channels
    summary = fuse_dataset(out, tmp_path / "given", progress=False, **CHANNELS, fusion_channel_intensity_ratio=0.5,
                           fusion_channel_transition_column=30.0)
    assert len(summary.written) == 1 and not summary.failed
    entry = _params(tmp_path / "given", 0, [0, 1])["channel_fusion"][0]
    assert entry["intensity_ratio_b_over_a"] == pytest.approx(0.5)
    assert entry["transition_column"] == {"min": 30.0, "median": 30.0, "max": 30.0}


# ------------------------------------------------------------------------------------------ channel sides

def test_swapped_channel_sides_per_camera(channels, tmp_path):
    """A camera whose channels are lit the other way round (files swapped on disk): with
    ``channel_swapped_cameras`` the fusion equals the correctly lit recording's, named by the configured pair."""
    truth, out = channels
    reference = fuse_dataset(out, tmp_path / "reference", progress=False, **CHANNELS)
    assert not reference.failed
    raw = tmp_path / "raw"
    shutil.copytree(truth.raw_dir, raw)
    stacks = {p.name: p for p in raw.rglob("*CM0_CHN0*_PH0.stack")}
    first, second = (stacks[n] for n in sorted(stacks))
    tmp = first.with_suffix(".tmp")
    first.rename(tmp), second.rename(first), tmp.rename(second)
    correct_dataset(raw, tmp_path / "swapped", progress=False)
    summary = fuse_dataset(tmp_path / "swapped", tmp_path / "fused", progress=False, **CHANNELS,
                           fusion_channel_swapped_cameras=[0])
    assert len(summary.written) == 1 and not summary.failed
    np.testing.assert_array_equal(_volume(tmp_path / "fused", 0, [0, 1]), _volume(tmp_path / "reference", 0, [0, 1]))
    entry = _params(tmp_path / "fused", 0, [0, 1])["channel_fusion"][0]
    assert entry["channels"] == [1, 0] and entry["orientation_consistent"] is True  # channel 1 is lit from low x
    unflagged = fuse_dataset(tmp_path / "swapped", tmp_path / "unflagged", progress=False, **CHANNELS)
    assert _params(tmp_path / "unflagged", 0, [0, 1])["channel_fusion"][0]["orientation_consistent"] is False
    assert not unflagged.failed


# ------------------------------------------------------------------------------------------ front camera

def test_front_camera_moving_when_the_reference_sees_the_far_side(pair, tmp_path):
    """Camera 1 as the reference (its near side is at high z, the synthetic geometry's): with
    ``front_camera = 'moving'`` (MATLAB frontFlag 2) each camera keeps its sharp half, as the (0, 1) fusion
    does; with the default the blurred halves are kept."""
    truth, out = pair
    scores = {}
    for front in ("reference", 2):
        target = tmp_path / f"front-{front}"
        summary = fuse_dataset(out, target, progress=False, **QUIET, fusion_camera_pairs=[[1, 0]],
                               fusion_front_camera=front)
        assert len(summary.written) == 1 and not summary.failed
        scores[front] = _pearson_in_body(_volume(target, [1, 0], 0), truth, camera=1)
    normal = tmp_path / "normal"
    fuse_dataset(out, normal, progress=False, **QUIET, fusion_camera_pairs=[[0, 1]])
    reference_order = _pearson_in_body(_volume(normal, [0, 1], 0), truth, camera=0)
    assert scores[2] > scores["reference"] + 0.05, scores
    assert scores[2] == pytest.approx(reference_order, abs=0.03), (scores, reference_order)
