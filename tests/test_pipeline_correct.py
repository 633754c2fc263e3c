"""Correction stage end to end against the synthetic ground truth, formats, resume, bad input."""

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from isoview_dask.config import ProcessingConfig
from isoview_dask.dataset import open_dataset
from isoview_dask.errors import IsoviewError
from isoview_dask.io import open_volume
from isoview_dask.pipeline import correct_dataset, output_path, segmentation_mask_path
from isoview_dask.synthetic import generate_dataset

SHAPE = (32, 128, 128)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    truth = generate_dataset(root, preset="tiny", shape=SHAPE, seed=7)
    return truth


@pytest.fixture(scope="module")
def corrected(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("corrected")
    summary = correct_dataset(synth.raw_dir, out, progress=False,
                              output_chunks=(8, 32, 32), output_shards=(16, 64, 64))
    assert not summary.failed and len(summary.written) == 4
    return out


def _path(out, camera, kind="", fmt="zarr"):
    if kind == "segmentationMask":  # the label image of the zarr volume, a separate file in other formats
        return segmentation_mask_path(out, 0, 0, camera, 0 if camera < 2 else 1, fmt)
    return output_path(out, 0, 0, camera, 0 if camera < 2 else 1, kind, fmt)


@pytest.mark.parametrize("camera", [0, 1, 2, 3])
def test_dead_pixels_recall_and_false_positives(synth, corrected, camera):
    truth = synth.dead_pixel_mask(camera)
    found = tifffile.imread(_path(corrected, camera, "deadPixelMask", "tif")).astype(bool)
    recall = (found & truth).sum() / truth.sum()
    false_positive_rate = (found & ~truth).sum() / truth.size
    assert recall >= 0.95
    assert false_positive_rate <= 1e-4


@pytest.mark.parametrize("camera", [0, 1])
def test_only_dead_pixels_change_and_they_match_the_clean_level(synth, corrected, camera):
    raw = synth.raw(camera).astype(np.float64)
    dark = synth.dark_frame(camera)
    out = open_volume(_path(corrected, camera)).compute().astype(np.float64)
    expected = np.clip(np.rint(raw - dark), 0, None)  # background subtraction alone
    dead = tifffile.imread(_path(corrected, camera, "deadPixelMask", "tif")).astype(bool)
    changed = np.any(out != expected, axis=0)
    assert not np.any(changed & ~dead), "a pixel that is not dead was changed"
    # at each dead pixel the z-averaged corrected value follows the noise-free local level
    ideal = synth.ideal(camera).astype(np.float64)
    local = ndi.uniform_filter(ideal, size=(1, 3, 3), mode="nearest")
    ys, xs = np.nonzero(synth.dead_pixel_mask(camera))
    got = out[:, ys, xs].mean(axis=0)
    want = local[:, ys, xs].mean(axis=0)
    bright = want > 50
    assert bright.sum() >= 1
    np.testing.assert_array_less(np.abs(got[bright] - want[bright]) / want[bright], 0.10)
    np.testing.assert_array_less(np.abs(got[~bright] - want[~bright]), 10.0)


@pytest.mark.parametrize("camera", [0, 3])
def test_background_is_removed(synth, corrected, camera):
    out = open_volume(_path(corrected, camera)).compute().astype(np.float64)
    body = synth.body_mask(camera)
    far_from_body = ~ndi.binary_dilation(body, iterations=6)
    ideal = synth.ideal(camera)
    empty = far_from_body & (ideal < 0.5) & ~synth.dead_pixel_mask(camera)[None]
    assert empty.sum() > 1000
    assert abs(out[empty].mean()) <= 2.0


@pytest.mark.parametrize("camera", [0, 1, 2, 3])
def test_segmentation_dice(synth, corrected, camera):
    mask = open_volume(_path(corrected, camera, "segmentationMask")).compute().astype(bool)
    body = synth.body_mask(camera)
    dice = 2 * (mask & body).sum() / (mask.sum() + body.sum())
    assert dice >= 0.85, dice


def test_statistics_record_and_small_outputs(synth, corrected):
    record = json.loads(_path(corrected, 1, "correction", "json").read_text())
    assert record["background"]["source"] == "dark_frame"
    assert record["dead_pixels"]["count"] == len(record["dead_pixels"]["positions_yx"])
    seg = record["segmentation"]
    assert seg["min_intensity"] < seg["level"] < seg["mean_intensity"]
    assert 0.02 < seg["foreground_fraction"] < 0.6
    mask = open_volume(_path(corrected, 1, "segmentationMask")).compute()  # counted from the reduced mask
    assert seg["foreground_fraction"] == pytest.approx(float(mask.astype(bool).mean()), rel=1e-12)
    assert set(record["timings"]) >= {"statistics_s", "segmentation_level_s", "write_s", "total_s"}
    xy = tifffile.imread(_path(corrected, 1, "xyMask", "tif"))
    xz = tifffile.imread(_path(corrected, 1, "xzMask", "tif"))
    assert xy.shape == SHAPE[1:] and np.nanmax(xy) < SHAPE[0] and xz.shape == (SHAPE[0], SHAPE[1])
    # the coordinate masks (derived from the reduced mask) equal those of the full mask written
    from isoview_dask.correct import coordinate_masks
    full_xy, full_xz = (np.asarray(a) for a in coordinate_masks(
        open_volume(_path(corrected, 1, "segmentationMask")).compute().astype(bool)))
    np.testing.assert_allclose(xy, full_xy, atol=1e-4)
    np.testing.assert_allclose(xz, full_xz, atol=1e-4)
    raw = synth.raw(1)
    np.testing.assert_array_equal(tifffile.imread(_path(corrected, 1, "xyProjectionRaw", "tif")), raw.max(0))
    out = open_volume(_path(corrected, 1)).compute()
    np.testing.assert_array_equal(tifffile.imread(_path(corrected, 1, "yzProjection", "tif")), out.max(2))


def test_formats_hold_identical_values(synth, corrected, tmp_path):
    for fmt in ("klb", "tif"):
        summary = correct_dataset(synth.raw_dir, tmp_path / fmt, progress=False, input_cameras=[2],
                                  output_format=fmt)
        assert len(summary.written) == 1
        for kind in ("", "segmentationMask"):
            a = open_volume(_path(corrected, 2, kind)).compute()
            b = open_volume(_path(tmp_path / fmt, 2, kind, fmt)).compute()
            np.testing.assert_array_equal(a, b)


def test_rerun_skips_complete_and_redoes_changed(synth, corrected, tmp_path):
    out = tmp_path / "o"
    first = correct_dataset(synth.raw_dir, out, progress=False, input_cameras=[0, 1])
    assert len(first.written) == 2
    again = correct_dataset(synth.raw_dir, out, progress=False, input_cameras=[0, 1])
    assert len(again.skipped) == 2 and not again.written
    # a killed run: one record missing -> only that view is redone
    _path(out, 1, "correction", "json").unlink()
    rerun = correct_dataset(synth.raw_dir, out, progress=False, input_cameras=[0, 1])
    assert len(rerun.skipped) == 1 and len(rerun.written) == 1
    # changed parameters -> redone
    changed = correct_dataset(synth.raw_dir, out, progress=False, input_cameras=[0, 1],
                              correction_segment_threshold=0.5)
    assert len(changed.written) == 2


def test_camera_orientation_options(synth, tmp_path):
    cfg = ProcessingConfig(input={"cameras": [1]},
                           correction={"camera": {1: {"flip_h": True, "crop": [10, 100, 20, 120]}}})
    correct_dataset(synth.raw_dir, tmp_path, cfg, progress=False)
    proj = tifffile.imread(_path(tmp_path, 1, "xyProjectionRaw", "tif"))
    np.testing.assert_array_equal(proj, synth.raw(1)[:, :, ::-1][:, 10:100, 20:120].max(0))


def test_bad_inputs_are_reported_and_others_complete(synth, tmp_path):
    import shutil
    raw = tmp_path / "raw"
    shutil.copytree(synth.raw_dir, raw)
    ds = open_dataset(raw)
    # camera 1: dark frame of the wrong shape; camera 2: all zeros
    tifffile.imwrite(ds.view(0, 1).background_path, np.zeros((10, 10), np.uint16))
    ds.view(0, 2).path.write_bytes(b"\x00" * ds.view(0, 2).path.stat().st_size)
    summary = correct_dataset(raw, tmp_path / "out", progress=False)
    assert len(summary.written) == 2
    failures = " | ".join(summary.failed.values())
    assert "Background_1.tif" in failures and "10x10" in failures
    assert "every voxel is zero" in failures
    with pytest.raises(IsoviewError, match="no camera 7"):
        correct_dataset(raw, tmp_path / "out2", progress=False, input_cameras=[7])


def test_records_survive_a_copied_output_tree(synth, corrected, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(corrected, copy)
    record = json.loads(_path(copy, 0, "correction", "json").read_text())
    assert all(not p.startswith("/") for p in record["outputs"])
    _path(copy, 0, "xyMask", "tif").unlink()  # missing in the copy, present in the original
    summary = correct_dataset(synth.raw_dir, copy, progress=False, output_chunks=(8, 32, 32),
                              output_shards=(16, 64, 64))
    assert len(summary.written) == 1 and len(summary.skipped) == 3


def test_the_statistics_read_each_sampled_raw_chunk_once(synth, tmp_path, monkeypatch):
    """Pass 1 samples a few z chunks for the dead-pixel statistics, the peak and the segmentation
    histogram; all three share one read of each chunk (a dask.delayed beside the arrays used to be
    optimised apart and re-read them). Pass 2 reads every chunk once more: at most two reads each."""
    from collections import Counter

    from isoview_dask.io import chunking, stack
    import isoview_dask.pipeline.correct as correct_module

    reads = Counter()
    original = stack._StackPlanes._read_window

    def counted(self, *window):
        reads[(str(self.path), window)] += 1
        return original(self, *window)

    monkeypatch.setattr(stack._StackPlanes, "_read_window", counted)
    # one shard per task: a 32-plane volume in four 8-plane chunks, two of them sampled
    monkeypatch.setattr(correct_module, "write_chunks",
                        lambda *args, **kwargs: chunking.write_chunks(*args, **{**kwargs, "target_bytes": 1}))
    config = ProcessingConfig.from_dict({"input": {"cameras": [0]},
                                         "correction": {"dead_pixel_sample_planes": 16, "segment_sample_slabs": 2},
                                         "output": {"chunks": [8, 64, 64], "shards": [8, 128, 128]}})
    summary = correct_dataset(synth.raw_dir, tmp_path / "out", config=config, progress=False)
    assert len(summary.written) == 1 and not summary.failed
    windows = [w for (name, w) in reads]
    assert len({w[0] for w in windows}) == 4  # four z chunks (pass 2 reads them all)
    assert max(reads.values()) <= 2, sorted(reads.items())
    assert sum(count == 2 for count in reads.values()) == 2  # the two sampled chunks


def test_default_shards_grow_on_small_frames_and_hold_the_same_values(tmp_path):
    """On 96 x 96 frames the default shard takes the whole 64-plane volume (one file) instead of
    32 x 96 x 96 cut from 32 x 1024 x 1024 (two files); the corrected volume and mask hold the same
    values as with explicit 16 x 64 x 64 shards (eight z-y-x shards per plane group), bit for bit."""
    import zarr

    truth = generate_dataset(tmp_path / "data", preset="tiny", shape=(64, 96, 96), seed=11)
    outputs = {}
    for name, shards in (("default", None), ("small", (16, 64, 64))):
        options = {"output_chunks": (8, 32, 32)} | ({"output_shards": shards} if shards else {})
        summary = correct_dataset(truth.raw_dir, tmp_path / name, progress=False, **options)
        assert not summary.failed and len(summary.written) == 4
        outputs[name] = tmp_path / name
    for camera in range(4):
        for kind in ("", "segmentationMask"):
            grown = zarr.open_array(_path(outputs["default"], camera, kind) / "0", mode="r")
            small = zarr.open_array(_path(outputs["small"], camera, kind) / "0", mode="r")
            assert grown.shards == (64, 96, 96) and small.shards == (16, 64, 64)
            np.testing.assert_array_equal(grown[...], small[...])
        shard_files = [p for p in (_path(outputs["default"], camera) / "0" / "c").rglob("*") if p.is_file()]
        assert len(shard_files) == 1


def test_projection_tiffs_carry_their_pixel_size_in_micrometres(synth, corrected):
    """ImageJ resolution tags and unit give each projection its µm per pixel: xz has the z step down
    its rows and the x pixel across, yz the z step and the y pixel."""
    record = json.loads(_path(corrected, 1, "correction", "json").read_text())
    dz, dy, dx = record["voxel_size_um_zyx"]
    assert dz > 1.5 * dx  # an anisotropic volume: a projection without tags looks squashed
    expected = {"xy": (dy, dx), "xz": (dz, dx), "yz": (dz, dy)}
    for kind, (row, column) in expected.items():
        for suffix in ("Projection", "ProjectionRaw"):
            with tifffile.TiffFile(_path(corrected, 1, kind + suffix, "tif")) as tif:
                assert tif.is_imagej and tif.imagej_metadata["unit"] == "um"
                page = tif.pages[0]
                x_per_um = page.tags["XResolution"].value
                y_per_um = page.tags["YResolution"].value
                assert x_per_um[1] / x_per_um[0] == pytest.approx(column, rel=1e-6)
                assert y_per_um[1] / y_per_um[0] == pytest.approx(row, rel=1e-6)


def test_masks_of_the_older_layout_still_read(synth, corrected, tmp_path):
    """Outputs of earlier versions keep the mask beside the volume (``<stem>.segmentationMask.zarr``, no
    ``labels`` group): the path helpers, both readers and the fusion's view find it there."""
    import shutil

    from isoview_dask.pipeline.fuse import find_corrected
    from isoview_dask.reader import IsoviewArray
    old = tmp_path / "old"
    shutil.copytree(corrected, old)
    expected = open_volume(_path(corrected, 1, "segmentationMask")).compute()
    image = _path(old, 1)
    separate = image.with_name(image.name.replace(".zarr", ".segmentationMask.zarr"))
    shutil.move(image / "labels" / "segmentationMask", separate)
    shutil.rmtree(image / "labels")
    record_path = _path(old, 1, "correction", "json")
    record = json.loads(record_path.read_text())
    record["outputs"] = [o.replace(f"{image.name}/labels/segmentationMask", separate.name) for o in record["outputs"]]
    record_path.write_text(json.dumps(record))
    assert _path(old, 1, "segmentationMask") == separate
    view = find_corrected(old)[(0, 0, 1, 0)]
    assert view.path("segmentationMask") == separate
    np.testing.assert_array_equal(view.open_arrays()[1].compute(), expected.astype(bool))
    np.testing.assert_array_equal(IsoviewArray(old, kind="corrected").mask(0, "CM01_CHN00").compute(),
                                  expected.astype(bool))
    np.testing.assert_array_equal(IsoviewArray(old / "SPM00" / "TM000000").get_labels(camera=1),
                                  expected.astype(bool))
    # the current layout reads the same
    assert find_corrected(corrected)[(0, 0, 1, 0)].path("segmentationMask").parent.name == "labels"


def test_slab_estimates_open_the_label_mask_in_inner_chunk_deep_blocks(synth, corrected):
    """The fusion's slab estimates read the mask behind a flip and a cast: opened shard-deep, a
    two-plane slab would decode the whole mask. The label image inside the volume's store (no
    ``.zarr`` suffix of its own) is opened one inner chunk deep, as the volume is."""
    from isoview_dask.pipeline.fuse import find_corrected
    view = find_corrected(corrected)[(0, 0, 1, 0)]
    volume, mask = view.open_arrays(slabs=True)
    assert view.path("segmentationMask").parent.name == "labels"
    assert set(volume.chunks[0]) == {8} and set(mask.chunks[0]) == {8}  # output_chunks (8, 32, 32)
    whole_volume, whole_mask = view.open_arrays()
    assert max(whole_mask.chunks[0]) > 8  # the default: whole shards
    np.testing.assert_array_equal(mask.compute(), whole_mask.compute())
