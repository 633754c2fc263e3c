"""Conversion stage and the CLI: output names, values, existing outputs, bad views, cluster."""

import json

import numpy as np
import pytest

from isoview_dask.cli import main, parse_index_list, parse_shape
from isoview_dask.dataset import open_dataset
from isoview_dask.errors import OutputExistsError
from isoview_dask.io import open_volume
from isoview_dask.io.zarr import zarr_voxel_size
from isoview_dask.pipeline import convert_dataset, output_path, volume_stem

from conftest import raw_name


def test_output_names(tmp_path):
    assert volume_stem(0, 3, 1, 0) == "SPM00_TM000003_CM01_CHN00"
    assert output_path(tmp_path, 0, 3, [0, 1], 0, "fusedStack").name == "SPM00_TM000003_CM00_CM01_CHN00.fusedStack.zarr"
    assert output_path(tmp_path, 1, 12, 2, 1, "xyProjection", "tif") == \
        tmp_path / "SPM01" / "TM000012" / "SPM01_TM000012_CM02_CHN01.xyProjection.tif"


@pytest.mark.parametrize("fmt", ["zarr", "klb", "tif"])
def test_convert_values_every_format(keller_root, tmp_path, fmt):
    out = tmp_path / "out"
    summary = convert_dataset(keller_root, out, fmt=fmt, chunks=(2, 8, 8), shards=(4, 16, 16), progress=False)
    ds = open_dataset(keller_root)
    assert len(summary.written) == len(ds.views) == 8 and not summary.failed
    assert summary.input_bytes == ds.nbytes
    for view in ds.views:
        target = output_path(out, view.specimen, view.timepoint, view.camera, view.channel, fmt=fmt)
        np.testing.assert_array_equal(open_volume(target).compute(), view.open().compute())
    if fmt == "zarr":
        v = ds.views[0]
        target = output_path(out, v.specimen, v.timepoint, v.camera, v.channel)
        assert zarr_voxel_size(target) == pytest.approx(v.voxel_size_um)


def test_convert_existing_outputs(keller_root, tmp_path):
    """A rerun resumes: complete outputs of the same input and options are skipped, the rest written; an
    output written with other options is refused unless overwrite or skip_existing."""
    out = tmp_path / "out"
    convert_dataset(keller_root, out, timepoints=[0], cameras=[0], progress=False)
    summary = convert_dataset(keller_root, out, timepoints=[0], progress=False)
    assert len(summary.skipped) == 1 and len(summary.written) == 3
    assert len(convert_dataset(keller_root, out, timepoints=[0], progress=False).skipped) == 4
    with pytest.raises(OutputExistsError, match="SPM00_TM000000_CM00_CHN00.zarr.*other options"):
        convert_dataset(keller_root, out, timepoints=[0], codec="zstd", progress=False)
    summary = convert_dataset(keller_root, out, timepoints=[0], codec="zstd", skip_existing=True, progress=False)
    assert len(summary.skipped) == 4 and not summary.written
    summary = convert_dataset(keller_root, out, timepoints=[0], cameras=[0], codec="zstd", overwrite=True,
                              progress=False)
    assert len(summary.written) == 1
    assert len(convert_dataset(keller_root, out, timepoints=[0], cameras=[0], codec="zstd",
                               progress=False).skipped) == 1


def test_convert_resumes_after_an_incomplete_output(keller_root, tmp_path):
    """A volume whose completion record is missing (the run was killed after the rename) is not taken as
    complete: the rerun reports it; overwrite redoes it."""
    out = tmp_path / "out"
    convert_dataset(keller_root, out, timepoints=[0], cameras=[0], fmt="klb", progress=False)
    record = next(out.rglob("*.conversion.json"))
    record.unlink()
    with pytest.raises(OutputExistsError):
        convert_dataset(keller_root, out, timepoints=[0], cameras=[0], fmt="klb", progress=False)
    assert len(convert_dataset(keller_root, out, timepoints=[0], cameras=[0], fmt="klb", overwrite=True,
                               progress=False).written) == 1
    assert record.is_file()


def test_bad_view_is_reported_and_the_rest_written(flat_root, tmp_path):
    bad = flat_root / raw_name(1, 1, 0)
    bad.write_bytes(bad.read_bytes()[:-3])
    summary = convert_dataset(flat_root, tmp_path / "out", progress=False)
    assert list(summary.failed) == [str(bad)] and "not a whole number" in summary.failed[str(bad)]
    assert len(summary.written) == 5


def test_cli_info_table_json_and_errors(keller_root, tmp_path, capsys):
    assert main(["info", str(keller_root)]) == 0
    assert "SPC00_TM00001_ANG000_CM3_CHN01_PH0.stack" in capsys.readouterr().out
    assert main(["info", str(keller_root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["timepoints"] == [0, 1]
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "missing" in err and "does not exist" in err


def test_cli_convert_with_local_cluster(keller_root, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["convert", str(keller_root), "--out", str(out), "--timepoints", "1", "--cameras", "0-1",
                 "--codec", "blosc-lz4:3", "--chunks", "2,8,8", "--shards", "4,16,16", "--workers", "1",
                 "--threads", "2"])
    captured = capsys.readouterr()
    assert code == 0
    assert "Dask dashboard: http" in captured.err
    assert "2 written, 0 skipped, 0 failed" in captured.out
    assert main(["convert", str(keller_root), "--out", str(out), "--timepoints", "1", "--no-cluster"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(keller_root), "--out", str(out), "--codec", "snappy", "--no-cluster",
                 "--overwrite"]) == 2
    assert "unknown codec 'snappy'" in capsys.readouterr().err


def test_parsers():
    assert parse_index_list("0-2,5") == [0, 1, 2, 5]
    assert parse_index_list(None) is None
    assert parse_shape("8,256,256") == (8, 256, 256) and parse_shape("none") == ()


def test_cli_correct_flags_config_and_init(keller_root, tmp_path, capsys):
    from isoview_dask.config import ProcessingConfig
    cfg_path = tmp_path / "isoview.toml"
    assert main(["init", str(cfg_path)]) == 0
    assert ProcessingConfig.load(cfg_path) == ProcessingConfig()
    assert main(["init", str(cfg_path)]) == 2  # exists
    cfg_path.write_text(cfg_path.read_text().replace("segment = true", "segment = false"))
    out = tmp_path / "c"
    code = main(["correct", str(keller_root), "--out", str(out), "--config", str(cfg_path), "--cameras", "2",
                 "--timepoints", "0", "--output-projections", "false", "--no-cluster"])
    assert code == 0, capsys.readouterr()
    written = sorted(p.name for p in (out / "SPM00" / "TM000000").iterdir())
    assert written == ["SPM00_TM000000_CM02_CHN01.correction.json", "SPM00_TM000000_CM02_CHN01.deadPixelMask.tif",
                       "SPM00_TM000000_CM02_CHN01.zarr"]
    assert main(["correct", str(keller_root), "--out", str(out), "--correction-segment-threshold", "2",
                 "--no-cluster"]) == 2
    assert "correction.segment_threshold: 2.0 is above the maximum 1.0" in capsys.readouterr().err


def test_cli_synth_and_info_on_both_layouts(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", str(out), "--preset", "tiny", "--layout", "both", "--timepoints", "2", "--seed", "3"]) == 0
    capsys.readouterr()
    for folder, layout in (("raw", "keller"), ("raw_flat", "flat")):
        assert main(["info", str(out / folder), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["layout"] == layout and info["timepoints"] == [0, 1] and info["cameras"] == [0, 1, 2, 3]
        assert all(v["error"] is None and v["shape_zyx"] == [16, 64, 64] for v in info["views"])
    assert (out / "truth" / "truth.json").is_file()
    assert main(["synth", str(out), "--preset", "tiny"]) == 2  # exists
    assert "already exists" in capsys.readouterr().err


def test_cli_demo_end_to_end(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "demo"), "--preset", "tiny", "--no-cluster"]) == 0
    text = capsys.readouterr().out
    assert "convert: 4 written" in text and "correct: 4 written" in text
    corrected = list((tmp_path / "demo" / "corrected").rglob("*.correction.json"))
    converted = list((tmp_path / "demo" / "converted").rglob("*.zarr"))
    assert len(corrected) == 4 and len(converted) == 4
    # the demo shows that it worked: the pair registrations against the truth, and how to look at the result
    for pair in ("CM00+CM01", "CM02+CM03"):
        line = next(row for row in text.splitlines() if f"TM000000 {pair}: offset error" in row)
        error_px = float(line.split("offset error ")[1].split(" px")[0])
        assert error_px < 0.5, line
    assert f"napari --plugin isoview-dask {tmp_path / 'demo' / 'corrected'}" in text
