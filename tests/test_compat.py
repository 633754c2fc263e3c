"""Scripts written for the original ``isoview`` port run unchanged: its ProcessingConfig keywords,
``fuse(config, estimate_params=..., apply_fusion=...)`` and its timepoint-folder reader."""

import json

import numpy as np
import pytest

from isoview_dask import IsoviewArray, ProcessingConfig, fuse, process_dataset
from isoview_dask.config import ConfigError
from isoview_dask.io import open_volume
from isoview_dask.pipeline import correct_dataset, output_path, segmentation_mask_path
from isoview_dask.synthetic import generate_dataset


@pytest.fixture(scope="module")
def corrected(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat")
    truth = generate_dataset(root / "syn", preset="tiny", seed=7)
    assert len(correct_dataset(truth.raw_dir, root / "corrected", progress=False).written) == 4
    return truth, root


def _original_config(input_dir, output_dir):
    # the original README's example, keyword for keyword
    return ProcessingConfig(input_dir=str(input_dir), output_dir=str(output_dir), specimen=0, timepoints=[0],
                            cameras=[0, 1, 2, 3], channels=[0, 1], fusion_enable=True,
                            fusion_type="adaptive_blending", fusion_blending_range=(20, 4),
                            fusion_camera_pairs=[(0, 1), (2, 3)], fusion_flip_h=True, fusion_flip_v=False)


def test_original_example_writes_both_camera_pair_fusions(corrected):
    truth, root = corrected
    config = _original_config(root / "corrected", root / "fused")
    assert config.fusion.type == "adaptive" and config.fusion.blending_range == (20.0, 4.0)
    assert config.input.specimens == (0,) and config.input.cameras == (0, 1, 2, 3)
    result = fuse(config, estimate_params=True, apply_fusion=True)
    assert not result.failed and len(result) == 2
    for pair, channel in (((0, 1), 0), ((2, 3), 1)):
        target = output_path(root / "fused", 0, 0, list(pair), channel, "fusedStack")
        assert target.is_dir()
        params = json.loads(target.with_suffix(".json").read_text())
        assert params["blending_range"] == 4.0 and params["blending_method"] == "adaptive"
        assert np.allclose(params["sampling_offset_yx_px"], truth.offset(pair), atol=0.5)
    estimates = fuse(config, estimate_params=True, apply_fusion=False)  # estimates only, nothing computed
    assert len(estimates) == 2


def test_config_folders_are_found_where_the_corrected_volumes_are(corrected, tmp_path):
    truth, root = corrected
    # input_dir the raw recording, output_dir the corrected root: fuse reads and writes output_dir
    config = _original_config(truth.raw_dir, root / "corrected")
    result = fuse(config, estimate_params=True, apply_fusion=False)
    assert len(result) == 2 and not result.failed
    with pytest.raises(FileNotFoundError, match="no complete corrected volumes"):
        fuse(_original_config(truth.raw_dir, tmp_path / "empty"), estimate_params=True, apply_fusion=True)
    summaries = process_dataset(_original_config(truth.raw_dir, tmp_path / "run"), progress=False)
    assert len(summaries["correct"].written) == 4
    assert ProcessingConfig.from_flags(config, fusion_static=True).output_dir == config.output_dir


def test_unknown_keywords_get_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'fusion_blending_range'"):
        ProcessingConfig(fusion_blendng_range=(20, 4))
    with pytest.raises(ConfigError, match="did you mean 'input_dir'"):
        ProcessingConfig(inputdir="raw")
    with pytest.raises(ConfigError, match="did you mean 'segment_threshold'"):
        ProcessingConfig(correction={"segment_treshold": 0.3})


def test_original_reader_on_a_timepoint_folder(corrected):
    truth, root = corrected
    folder = root / "corrected" / "SPM00" / "TM000000"
    arr = IsoviewArray(str(folder))
    assert arr.views == ["CM00_CHN00", "CM01_CHN00", "CM02_CHN01", "CM03_CHN01"]
    Z, Y, X = truth.spec.shape
    assert arr.shape == (Z, 4, Y, X)
    assert arr.metadata["timepoint"] == 0 and arr.metadata["voxel_size_um"] == pytest.approx(truth.voxel_size_um)
    assert arr.metadata["corrections"]["CM01_CHN00"]["fingerprint"]
    camera1 = open_volume(output_path(root / "corrected", 0, 0, 1, 0)).compute()
    np.testing.assert_array_equal(arr[5, 1], camera1[5])
    np.testing.assert_array_equal(arr[5, "CM01_CHN00"], camera1[5])
    mask = arr.get_labels(timepoint=0, camera=1, label_type="segmentation")
    assert mask.dtype == bool and mask.shape == (Z, Y, X) and mask.any()
    np.testing.assert_array_equal(mask, open_volume(segmentation_mask_path(root / "corrected", 0, 0, 1, 0))
                                  .compute().astype(bool))
    projection = arr.get_projection(timepoint=0, camera=1, proj_type="xy")
    np.testing.assert_array_equal(projection, camera1.max(axis=0))
    assert arr.get_projection(camera=2, proj_type="xz").shape == (Z, X)
    with pytest.raises(Exception, match="holds timepoint 0"):
        arr.get_labels(timepoint=3, camera=1)
    # an output root still gives the whole recording
    assert IsoviewArray(root / "corrected", kind="corrected").data.ndim == 5
