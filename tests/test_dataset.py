"""Dataset discovery and push_config XML: both layouts, per-camera shapes, bad input."""

import json

import numpy as np
import pytest

from isoview_dask.dataset import open_dataset
from isoview_dask.errors import DatasetError, InputNotFoundError, MetadataError, StackSizeError
from isoview_dask.metadata import read_push_config, write_push_config

from conftest import DEPTH, FRAMES, make_flat, make_keller, raw_name, write_raw_stack


def test_keller_layout(tmp_path):
    ds = open_dataset(make_keller(tmp_path / "rec"))
    assert ds.layout == "keller"
    assert ds.timepoints == [0, 1] and ds.cameras == [0, 1, 2, 3] and ds.channels == [0, 1]
    assert not ds.problems
    v = ds.view(1, 2)
    assert v.shape == (DEPTH, 24, 36)  # camera 2's own frame, not camera 0's
    assert ds.view(0, 0).shape == (DEPTH, 30, 40)
    assert v.voxel_size_um == pytest.approx((2.5, 6.5 / 16, 6.5 / 16))
    assert v.background_path.name == "Background_2.tif"
    assert v.open_background()[0, 0] == 102
    np.testing.assert_array_equal(v.open().compute()[2, 3], write_raw_stack(tmp_path / "x.stack", 2, 1)[2, 3])
    assert v.metadata.wavelength_nm == 489
    # a single SPM folder works too
    assert len(open_dataset(tmp_path / "rec" / "SPM00").views) == 8


def test_flat_layout_and_selection(tmp_path):
    ds = open_dataset(make_flat(tmp_path / "flat"))
    assert ds.layout == "flat" and ds.timepoints == [0, 1, 2] and ds.cameras == [0, 1]
    assert len(ds.select(timepoints=[1, 2], cameras=[1])) == 2
    assert ds.view(2, 1).open().compute()[0, 0, 0] == 1000 + 2
    assert all(v.background_path is None for v in ds.views)


def test_info_table_and_json(tmp_path):
    ds = open_dataset(make_keller(tmp_path / "rec", timepoints=(0,)))
    table = ds.summary_table()
    assert "6x24x36" in table and "keller layout, 4 volumes" in table
    d = json.loads(ds.to_json())
    assert d["cameras"] == [0, 1, 2, 3] and d["views"][2]["shape_zyx"] == [DEPTH, 24, 36]


def test_truncated_stack_is_reported_not_fatal(tmp_path):
    root = make_flat(tmp_path / "flat")
    bad = root / raw_name(1, 0, 0)
    bad.write_bytes(bad.read_bytes()[:-7])
    ds = open_dataset(root)
    assert [v.path.name for v in ds.problems] == [bad.name]
    with pytest.raises(StackSizeError, match=bad.name):
        ds.view(1, 0).open()
    assert ds.view(2, 0).open().shape == (DEPTH, 30, 40)
    # whole planes only, when asked for
    bad.write_bytes(bad.read_bytes()[: 2 * 30 * 40 * 4])
    assert open_dataset(root, allow_truncated=True).view(1, 0).open().shape == (4, 30, 40)


def test_stack_without_xml(tmp_path):
    root = make_flat(tmp_path / "flat")
    (root / "ch0_spec00.xml").unlink()
    ds = open_dataset(root)
    assert len(ds.problems) == len(ds.views)
    with pytest.raises(MetadataError, match=r"no metadata XML.*ch0\.xml"):
        ds.views[0].open()


def test_xml_without_dimensions_and_malformed(tmp_path):
    root = make_flat(tmp_path / "flat")
    write_push_config(root / "ch0_spec00.xml", {"z_step": 2.0})
    with pytest.raises(MetadataError, match="no 'dimensions'"):
        open_dataset(root).views[0].open()
    (root / "ch0_spec00.xml").write_text("<push_config><info dimensions='40x30x6'</push_config>")
    with pytest.raises(MetadataError, match=r"ch0_spec00\.xml: malformed XML"):
        open_dataset(root).views[0].open()


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(InputNotFoundError, match="nowhere"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no raw volumes"):
        open_dataset(tmp_path / "empty")


def test_push_config_parsing(tmp_path):
    path = write_push_config(tmp_path / "ch0.xml", {
        "dimensions": "2048x1024x543,2048x1024x500", "camera_index": "0, 1", "z_step": "2.031",
        "detection_objective": "Special Optics 16x/0.7", "time_point": "12"})
    meta = read_push_config(path)
    assert meta.frame_dimensions == ((1024, 2048, 543), (1024, 2048, 500))
    assert meta.frame_for_camera(1, 0) == (1024, 2048, 500)
    assert meta.z_step_um == pytest.approx(2.031) and meta.pixel_size_um == pytest.approx(0.40625)
    assert meta.time_point == 12 and meta.wavelength_nm is None
    write_push_config(tmp_path / "bad.xml", {"dimensions": "2048 by 2048"})
    with pytest.raises(MetadataError, match=r"bad\.xml.*'2048 by 2048'"):
        read_push_config(tmp_path / "bad.xml")
    (tmp_path / "noinfo.xml").write_text("<push_config/>")
    with pytest.raises(MetadataError, match="no <info> elements"):
        read_push_config(tmp_path / "noinfo.xml")
    with pytest.raises(InputNotFoundError):
        read_push_config(tmp_path / "absent.xml")


def _scan_xml(path, cameras, **steps):
    dims = ",".join(f"{FRAMES[c][1]}x{FRAMES[c][0]}x{DEPTH}" for c in cameras)
    write_push_config(path, {"dimensions": dims, "camera_index": ",".join(map(str, cameras)),
                             "detection_objective": "Nikon 16x/0.8 W", **steps})


def test_plane_spacing_comes_from_the_step_of_the_stack_direction(tmp_path):
    """A Y-scan camera whose XML names its step y_step gets that step as its plane spacing."""
    root = make_flat(tmp_path / "flat", timepoints=(0,))
    _scan_xml(root / "ch0_spec00.xml", [0, 1], stack_direction="+y,+y", y_step=1.5)
    view = open_dataset(root).view(timepoint=0, camera=1)
    assert view.voxel_size_um == pytest.approx((1.5, 6.5 / 16, 6.5 / 16))
    assert view.voxel_size_unknown is None and view.to_dict()["voxel_size_unknown"] is None
    meta = read_push_config(root / "ch0_spec00.xml")
    assert meta.stack_axes == ("y", "y") and meta.z_step_um == 1.5
    # per camera: camera 0 scans z (z_step), camera 1 scans y (y_step)
    _scan_xml(root / "ch0_spec00.xml", [0, 1], stack_direction="+z,-y", z_step=2.5, y_step=1.5)
    ds = open_dataset(root)
    assert ds.view(timepoint=0, camera=0).voxel_size_um[0] == 2.5
    assert ds.view(timepoint=0, camera=1).voxel_size_um[0] == 1.5


def test_an_unknown_voxel_size_is_a_warning_and_is_marked_in_the_record(tmp_path, caplog):
    root = make_flat(tmp_path / "flat", timepoints=(0, 1))
    _scan_xml(root / "ch0_spec00.xml", [0, 1], stack_direction="+y", z_step_of_nothing=1)
    with caplog.at_level("WARNING", logger="isoview_dask.dataset"):
        ds = open_dataset(root)
    warnings = [r.getMessage() for r in caplog.records if "no voxel size" in r.getMessage()]
    assert len(warnings) == 1 and "4 view(s)" in warnings[0] and "y_step or z_step" in warnings[0], warnings
    view = ds.view(timepoint=1, camera=0)
    assert view.ok and view.voxel_size_um is None
    record = json.loads(json.dumps(view.to_dict()))
    assert record["voxel_size_um_zyx"] is None and "y_step or z_step" in record["voxel_size_unknown"]
    assert view.from_dict(record).voxel_size_unknown == record["voxel_size_unknown"]
