"""``output.store_corrected = false``: the correction writes masks, projections and statistics but not
the corrected volumes, and fusion recomputes each corrected volume from the raw file in its own graph.
The fused outputs must be those of a run that stored the corrected volumes, bit for bit."""

import json
import os
import shutil

import numpy as np
import pytest

from isoview_dask.config import ProcessingConfig
from isoview_dask.io import open_volume
from isoview_dask.pipeline import fuse_dataset, output_path, process_dataset
from isoview_dask.pipeline.correct import corrected_from_raw
from isoview_dask.pipeline.fuse import MissingInputError
from isoview_dask.synthetic import generate_dataset

CAMERAS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("from_raw")
    truth = generate_dataset(root / "syn", shape=(24, 64, 64), seed=11, timepoints=1)
    # orientation options on two cameras, so that the recomputation must redo them
    config = ProcessingConfig(correction={"camera": {1: {"flip_h": True}, 3: {"rotation": 180}}})
    stored = process_dataset(truth.raw_dir, root / "stored", config, progress=False, fusion_diagnostics=False)
    raw_copy = root / "raw"  # the unstored run's own raw files, which the test may later move
    shutil.copytree(truth.raw_dir, raw_copy)
    config = config.replace(output_store_corrected=False)
    here = os.getcwd()
    os.chdir(root)  # relative paths: the records must still find the raw files from anywhere
    try:
        unstored = process_dataset("raw", "unstored", config, progress=False, fusion_diagnostics=False, fuse=False)
    finally:
        os.chdir(here)
    unstored["fuse"] = fuse_dataset(root / "unstored", root / "unstored", config, progress=False,
                                    fusion_diagnostics=False)
    return root, config, stored, unstored


def _record(out, camera):
    return json.loads(output_path(out, 0, 0, camera, 0 if camera < 2 else 1, "correction", "json").read_text())


def test_nothing_fails_and_only_the_corrected_volumes_are_missing(runs):
    root, _, stored, unstored = runs
    for summaries in (stored, unstored):
        assert not summaries["correct"].failed and not summaries["fuse"].failed
        assert len(summaries["fuse"].written) == 2
    for camera in CAMERAS:
        channel = 0 if camera < 2 else 1
        assert output_path(root / "stored", 0, 0, camera, channel, "", "zarr").is_dir()
        assert not output_path(root / "unstored", 0, 0, camera, channel, "", "zarr").exists()
        assert output_path(root / "unstored", 0, 0, camera, channel, "segmentationMask", "zarr").is_dir()
        record = _record(root / "unstored", camera)
        assert record["volume_stored"] is False
        assert record["raw_input"]["path"].startswith(str((root / "raw").resolve()) + os.sep)


@pytest.mark.parametrize("camera", CAMERAS)
def test_the_recomputed_volume_is_the_stored_one(runs, camera):
    """Dead-pixel repair, dark frame, flips and rotation are redone exactly, in any chunking."""
    root, _, _, _ = runs
    channel = 0 if camera < 2 else 1
    expected = open_volume(output_path(root / "stored", 0, 0, camera, channel, "", "zarr")).compute()
    record = _record(root / "unstored", camera)
    assert record["dead_pixels"]["count"] > 0
    for chunks in (None, (5, 24, 40)):
        recomputed = corrected_from_raw(record, chunks=chunks)
        assert recomputed.dtype == expected.dtype
        assert np.array_equal(recomputed.compute(), expected)


def test_fused_volumes_and_parameters_are_identical(runs):
    root, _, stored, unstored = runs
    assert sorted(os.path.relpath(p, root / "stored") for p in stored["fuse"].written) == \
        sorted(os.path.relpath(p, root / "unstored") for p in unstored["fuse"].written)
    for written in stored["fuse"].written:
        other = root / "unstored" / os.path.relpath(written, root / "stored")
        assert np.array_equal(open_volume(written).compute(), open_volume(other).compute())
        a = json.loads(open(str(written).replace(".zarr", ".json")).read())
        b = json.loads(open(str(other).replace(".zarr", ".json")).read())
        for key in ("offset_yx_px", "rotation_deg", "registration_confidence",
                    "intensity_ratio_moving_over_reference"):
            assert a.get(key) == b.get(key), key
        assert b["inputs"] and all(path.endswith(".stack") for path in b["inputs"])


def test_a_rerun_skips_and_a_missing_or_changed_raw_file_fails_clearly(runs, tmp_path):
    root, config, _, _ = runs
    # the first run was given relative paths, from another folder: the records still match
    again = process_dataset(root / "raw", root / "unstored", config, progress=False, fusion_diagnostics=False)
    assert not again["correct"].written and not again["fuse"].written
    assert len(again["fuse"].skipped) == 2

    record = _record(root / "unstored", 1)
    raw = record["raw_input"]["path"]
    moved = tmp_path / "moved.stack"
    shutil.move(raw, moved)
    try:
        with pytest.raises(MissingInputError, match="missing"):
            corrected_from_raw(record)
        summary = fuse_dataset(root / "unstored", tmp_path / "fused", config, progress=False,
                               fusion_diagnostics=False)
        assert len(summary.failed) == 1 and "missing" in next(iter(summary.failed.values()))
        assert len(summary.written) == 1  # the other pair is not held up
        assert not list((tmp_path / "fused").rglob("*CM00_CM01*.zarr"))
    finally:
        shutil.move(moved, raw)
    os.utime(raw, ns=(0, 0))  # same size, another modification time: not the file the correction read
    with pytest.raises(MissingInputError, match="changed since the correction"):
        corrected_from_raw(record)


def test_the_reader_says_why_there_are_no_corrected_volumes(runs):
    from isoview_dask.errors import InputNotFoundError
    from isoview_dask.reader import IsoviewArray
    root, _, _, _ = runs
    for args in ((root / "unstored", "corrected"), (root / "unstored" / "SPM00" / "TM000000",)):
        with pytest.raises(InputNotFoundError, match="did not store their volumes"):
            IsoviewArray(*args)
    assert IsoviewArray(root / "unstored", "fused").shape[0] == 1  # the fused volumes read as always


@pytest.mark.parametrize("fmt", ["klb", "tif"])
def test_other_output_formats(tmp_path, fmt):
    """KLB and TIFF outputs: no corrected volume file, fused volumes equal to a run that stored them."""
    truth = generate_dataset(tmp_path / "syn", shape=(24, 64, 64), seed=2, timepoints=1)
    fused = {}
    for store in (True, False):
        summaries = process_dataset(truth.raw_dir, tmp_path / str(store), progress=False, output_format=fmt,
                                    output_store_corrected=store, fusion_diagnostics=False,
                                    fusion_camera_pairs=[[0, 1]], input_cameras=[0, 1], input_channels=[0])
        assert len(summaries["fuse"].written) == 1 and not summaries["fuse"].failed
        fused[store] = open_volume(summaries["fuse"].written[0]).compute()
        assert output_path(tmp_path / str(store), 0, 0, 0, 0, "", fmt).exists() == store
    assert np.array_equal(fused[True], fused[False])


def test_bigstitcher_export_lists_the_fused_volumes_and_says_why_no_cameras(runs, tmp_path, caplog):
    import logging

    from isoview_dask.bigstitcher import exported_views
    root, _, _, _ = runs
    with caplog.at_level(logging.WARNING, logger="isoview_dask.bigstitcher"):
        views = exported_views(root / "unstored", corrected=True)
    assert len(views) == 2 and all(len(v.cameras) == 2 for v in views)  # the fused pairs only
    assert sum("did not store its volume" in r.getMessage() for r in caplog.records) == 4
