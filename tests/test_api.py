"""The Python API: ``from isoview_dask import ProcessingConfig, process_dataset, fuse, blend_views, temporal,
viz``; a light import, estimates without writing, lazy fused volumes equal to the written ones, given
parameters, blending two views, and the notebook figures."""

import json
import subprocess
import sys

import dask.array as da
import numpy as np
import pytest

from isoview_dask import ProcessingConfig, blend_views, fuse, process_dataset, temporal, viz
from isoview_dask.io import open_volume
from isoview_dask.pipeline import output_path
from isoview_dask.provenance import list_runs
from isoview_dask.synthetic import generate_dataset

KEY = (0, 0, (0, 1), 0)
FLAGS = dict(input_cameras=[0, 1], fusion_camera_pairs=[[0, 1]])


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    truth = generate_dataset(root / "syn", preset="tiny", seed=8, cameras=(0, 1))
    config_path = ProcessingConfig(fusion={"diagnostics": False}).save(root / "isoview.toml")
    out = root / "out"
    summaries = process_dataset(config_path, truth.raw_dir, out, fusion=True, progress=False, **FLAGS)
    assert {k: len(s.written) for k, s in summaries.items()} == {"correct": 2, "fuse": 1}
    return truth, config_path, out


def _snapshot(root):
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_import_is_light_and_names_resolve():
    code = ("import sys, isoview_dask\n"
            "heavy = [m for m in ('numpy', 'dask', 'zarr', 'scipy', 'matplotlib') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "from isoview_dask import ProcessingConfig, process_dataset, fuse, blend_views, temporal, viz\n"
            "import isoview_dask.fuse as algorithms\n"
            "assert algorithms is fuse and callable(fuse) and fuse.blend.__module__ == 'isoview_dask.fuse.blending'\n"
            "assert temporal.rloess and viz.projections and ProcessingConfig().fusion.type == 'adaptive'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    # the subpackage stays the subpackage after any import order, and stays callable
    import isoview_dask
    import isoview_dask.pipeline  # noqa: F401  (imports isoview_dask.fuse itself)
    assert isoview_dask.fuse is fuse and callable(isoview_dask.fuse)
    assert temporal is sys.modules["isoview_dask.temporal"]


def test_process_dataset_takes_a_config_path_and_flags(processed):
    truth, config_path, out = processed
    params = json.loads(output_path(out, 0, 0, [0, 1], 0, "fusedStack", "json").read_text())
    assert params["sampling_offset_yx_px"] == pytest.approx(truth.offset((0, 1)), abs=0.1)
    assert not output_path(out, 0, 0, [0, 1], 0, "fusedStack.registration", "png").exists()  # from the file
    assert [json.loads(p.read_text())["stage"] for p in list_runs(out)] == ["correct", "fuse"]
    with pytest.raises(TypeError, match="input"):
        process_dataset(config_path)


def test_estimates_only_write_nothing(processed):
    truth, config_path, out = processed
    before = _snapshot(out)
    result = fuse(config_path, out, estimate_params=True, apply_fusion=False, **FLAGS)
    assert _snapshot(out) == before
    assert list(result) == [KEY] and not result.arrays and result[KEY].fused is None
    estimate = result.estimates[KEY]
    written = json.loads(output_path(out, 0, 0, [0, 1], 0, "fusedStack", "json").read_text())
    assert list(estimate.offset_yx) == written["sampling_offset_yx_px"]  # same numbers as the fusion stage
    assert result.parameters[KEY]["registration_confidence"] == written["registration_confidence"]
    assert estimate.transition_yx.shape == truth.raw(0).shape[1:]
    assert "estimates only" in repr(result)


def test_lazy_fusion_equals_the_written_volume(processed, tmp_path):
    truth, config_path, out = processed
    before = _snapshot(out)
    result = fuse(config_path, out, **FLAGS)
    assert _snapshot(out) == before
    pair = result[KEY]
    assert isinstance(pair.fused, da.Array) and isinstance(pair.moving_aligned, da.Array)
    written = open_volume(output_path(out, 0, 0, [0, 1], 0, "fusedStack")).compute()
    np.testing.assert_array_equal(result.compute()[KEY], written)
    held = result.persist()
    assert held[KEY].fused is not pair.fused
    np.testing.assert_array_equal(held[KEY].fused.compute(), written)
    again = result.write(tmp_path / "fused", progress=False)  # these estimates, as fixed parameters
    assert len(again.summary.written) == 1 and isinstance(again[KEY].fused, da.Array)
    np.testing.assert_array_equal(again[KEY].fused.compute(), written)
    assert "sampling_offset_yx_px" in again[KEY].parameters["parameters_fixed"]


def test_given_parameters_replace_estimation(processed, tmp_path):
    truth, config_path, out = processed
    estimated = fuse(config_path, out, apply_fusion=False, **FLAGS)
    reused = fuse(config_path, out, estimate_params=False, parameters=estimated, **FLAGS)
    written = open_volume(output_path(out, 0, 0, [0, 1], 0, "fusedStack")).compute()
    np.testing.assert_array_equal(reused[KEY].fused.compute(), written)
    shift = {"sampling_offset_yx_px": [0.0, 0.0], "sampling_rotation_deg": 0.0, "transition_plane": 5.0}
    unregistered = fuse(config_path, out, estimate_params=False, parameters=shift, **FLAGS)
    assert unregistered[KEY].parameters["sampling_offset_yx_px"] == [0.0, 0.0]
    assert unregistered[KEY].parameters["transition_plane"]["median"] == 5.0
    assert not np.array_equal(unregistered[KEY].fused.compute(), written)
    by_callable = fuse(config_path, out, tmp_path / "o", estimate_params=False, parameters=lambda *key: shift,
                       **FLAGS)
    assert by_callable.summary.written and by_callable[KEY].parameters["parameters_fixed"]
    with pytest.raises(ValueError, match="needs parameters"):
        fuse(config_path, out, estimate_params=False)
    with pytest.raises(TypeError, match="corrected"):
        fuse(config_path)


def test_fuse_with_out_is_the_fusion_stage(processed, tmp_path):
    truth, config_path, out = processed
    result = fuse(config_path, out, tmp_path, **FLAGS)
    assert len(result.summary.written) == 1 and result[KEY].parameters["parameters_fixed"] == []
    np.testing.assert_array_equal(result[KEY].fused.compute(),
                                  open_volume(output_path(out, 0, 0, [0, 1], 0, "fusedStack")).compute())
    assert json.loads(list_runs(tmp_path)[0].read_text())["stage"] == "fuse"


def test_blend_views_wraps_the_blockwise_blend():
    from isoview_dask.fuse import IntensityResult, blend
    rng = np.random.default_rng(0)
    reference = rng.uniform(100, 200, (12, 16, 20)).astype(np.float32)
    moving = rng.uniform(100, 200, (12, 16, 20)).astype(np.float32)
    moving[:, :, :3] = np.nan  # not recorded by the moving camera
    transition = np.full((16, 20), 5.5)
    got = blend_views(reference, moving, transition, blending_range=4, intensity=0.8)
    assert isinstance(got, da.Array)
    want = blend(reference, moving, transition, 4, "adaptive", IntensityResult.from_ratio(0.8))
    np.testing.assert_array_equal(got.compute(), want.compute())
    # defaults from a configuration: its camera blending range, method and profile
    cfg = {"fusion": {"type": "geometric", "blending_range": [20, 0], "blending_profile": "linear"}}
    hard = blend_views(reference, moving, transition, config=cfg).compute()
    np.testing.assert_array_equal(hard[:6, :, 3:], reference[:6, :, 3:])
    np.testing.assert_array_equal(hard[6:, :, 3:], moving[6:, :, 3:])
    np.testing.assert_array_equal(hard[:, :, :3], reference[:, :, :3])


def test_temporal_is_the_module():
    import isoview_dask.temporal
    assert temporal is isoview_dask.temporal
    assert temporal.static_value([1.0, 2.0, 3.0], 3) == pytest.approx(2.0)


def test_viz_figures(processed):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    truth, config_path, out = processed
    pair = fuse(config_path, out, **FLAGS)[KEY]
    figures = [viz.projections(output_path(out, 0, 0, [0, 1], 0, "fusedStack"), scale=pair.voxel_size_um),
               viz.overlay(pair.reference, np.nan_to_num(pair.moving_aligned.max(axis=0).compute())),
               viz.transition_map(pair.transition_yx), viz.blending_profile(7.0, 16, 10),
               viz.fusion_summary(pair)]
    rows = [{"specimen": 0, "timepoint": t, "reference_camera": 0, "moving_camera": 1, "channel": 0,
             "sampling_dy": 1.0 + 0.1 * t, "sampling_dx": -1.0, "sampling_rotation_deg": 0.2,
             "intensity_ratio": 1.1, "confidence": 0.9, "transition_median": 7.0,
             "used_sampling_dy": 1.0 + 0.1 * t, "used_sampling_dx": -1.0, "dropped": t == 2,
             "outlier": False} for t in range(5)]
    figures.append(viz.parameters_over_time(rows))
    assert [len(f.axes) for f in figures] == [3, 1, 2, 1, 5, 6]
    for fig in figures:
        plt.close(fig)
    with pytest.raises(ValueError, match="no parameters"):
        viz.parameters_over_time(rows, pair=(2, 3))
    with pytest.raises(ValueError, match="axes"):
        viz.projections(np.zeros((2, 3, 4)), axes=("xy", "zz"))


def test_isoview_processor_runs_as_the_original_port_documents(processed, tmp_path):
    """``IsoviewProcessor(config).run()``: corrects input_dir into <input_dir>.corrected by default, the same
    volumes as process_dataset wrote; a rerun skips them; run(fusion=True) fuses too."""
    from isoview_dask import IsoviewProcessor
    import shutil
    truth, config_path, out = processed
    raw = tmp_path / "recording"
    shutil.copytree(truth.raw_dir, raw)
    config = ProcessingConfig(input_dir=raw, cameras=[0, 1], fusion_camera_pairs=[(0, 1)],
                              fusion_diagnostics=False)
    processor = IsoviewProcessor(config)
    assert processor.output_dir == tmp_path / "recording.corrected"
    summaries = processor.run(progress=False)
    assert list(summaries) == ["correct"] and len(summaries["correct"].written) == 2
    ours = open_volume(output_path(processor.output_dir, 0, 0, 1, 0, "", "zarr")).compute()
    reference = open_volume(output_path(out, 0, 0, 1, 0, "", "zarr")).compute()
    np.testing.assert_array_equal(ours, reference)
    again = processor.run(fusion=True, progress=False)
    assert len(again["correct"].skipped) == 2 and len(again["fuse"].written) == 1
    with pytest.raises(TypeError, match="input_dir"):
        IsoviewProcessor(ProcessingConfig())
