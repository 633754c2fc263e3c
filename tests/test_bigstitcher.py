"""BigStitcher export: the SpimData2 XML parses back to what was written, and its registrations put the
orthogonal view where the reference view is (checked on the synthetic recording's images and truth)."""

import shutil

import numpy as np
import pytest
from scipy import ndimage

from isoview_dask.bigstitcher import XML_NAME, read_bigstitcher, write_bigstitcher
from isoview_dask.cli import main
from isoview_dask.errors import IsoviewError, OutputExistsError
from isoview_dask.io import open_volume
from isoview_dask.pipeline import output_path, process_dataset
from isoview_dask.synthetic import generate_dataset


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    root = tmp_path_factory.mktemp("bigstitcher")
    truth = generate_dataset(root / "syn", shape=(24, 64, 64), seed=2, timepoints=2)
    summaries = process_dataset(truth.raw_dir, root / "out", progress=False, fusion_diagnostics=False)
    assert len(summaries["fuse"].written) == 4
    return truth, root / "out"


@pytest.fixture(scope="module")
def exported(processed):
    truth, out = processed
    path = write_bigstitcher(out)
    return truth, out, path, read_bigstitcher(path)


def _setup(content, angle):
    return next(i for i, s in content["setups"].items() if s["attributes"]["angle"] == angle)


def test_xml_lists_every_fused_view_with_its_grid(exported):
    truth, out, path, content = exported
    assert path == out / XML_NAME
    assert content["timepoints"] == [0, 1] and not content["missing"]
    assert sorted(s["attributes"]["angle"] for s in content["setups"].values()) == [0, 90]
    for (t, setup), image in content["images"].items():
        assert image.is_dir() and (image / "zarr.json").is_file()
        volume = open_volume(image)
        assert content["setups"][setup]["size_xyz"] == list(volume.shape[::-1])
        z, y, x = truth.voxel_size_um
        assert content["setups"][setup]["voxel_size_xyz"] == pytest.approx([x, y, z])
    zero = content["images"][(1, _setup(content, 0))]
    assert zero == output_path(out, 0, 1, [0, 1], 0, "fusedStack")


def test_reference_view_registration_is_the_camera_geometry(exported):
    """Setup 0's model equals the generator's camera-0 affine (specimen µm, in x-pixel units, x y z order)."""
    truth, out, _, content = exported
    model = content["models"][(0, _setup(content, 0))]
    pixel = truth.voxel_size_um[2]
    P = np.eye(4)[[2, 1, 0, 3]]
    expected = P @ truth.camera_affine(0, 0) @ P
    expected[:3] /= pixel
    np.testing.assert_allclose(model, expected, atol=1e-9)


def test_orthogonal_view_lands_on_the_reference_view(exported):
    """Each voxel of the 0+1 view, mapped through both registrations into the 2+3 view, samples the same
    specimen: the two fused volumes then correlate inside the body; without the 90 degree turn they do not."""
    truth, out, _, content = exported
    a, b = _setup(content, 0), _setup(content, 90)
    view0 = open_volume(content["images"][(0, a)]).compute().astype(np.float64)
    view90 = open_volume(content["images"][(0, b)]).compute().astype(np.float64)
    k, y, x = np.meshgrid(*[np.arange(n) for n in view0.shape], indexing="ij")
    voxels = np.stack([x.ravel(), y.ravel(), k.ravel(), np.ones(x.size)])
    body = truth.body_mask(0).ravel()

    def agreement(model_b):
        xb, yb, kb, _ = np.linalg.inv(model_b) @ content["models"][(0, a)] @ voxels
        sampled = ndimage.map_coordinates(view90, [kb, yb, xb], order=1, cval=np.nan)
        ok = body & np.isfinite(sampled)
        return float(np.corrcoef(view0.ravel()[ok], sampled[ok])[0, 1])

    registered = agreement(content["models"][(0, b)])
    unturned = agreement(content["models"][(0, a)])  # as if the orthogonal view had the reference's axes
    assert registered > 0.6 and registered > unturned + 0.2, (registered, unturned)


def test_missing_views_overwrite_and_corrected_cameras(processed, tmp_path):
    truth, out = processed
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    output_path(copy, 0, 1, [2, 3], 1, "fusedStack", "json").unlink()  # that fusion never completed
    path = write_bigstitcher(copy, overwrite=True)  # the copy holds the first export's XML
    content = read_bigstitcher(path)
    assert content["missing"] == {(1, _setup(content, 90))}
    with pytest.raises(OutputExistsError, match="already exists"):
        write_bigstitcher(copy)
    every = read_bigstitcher(write_bigstitcher(copy, corrected=True, overwrite=True))
    assert len(every["setups"]) == 2 + 4
    names = {s["name"] for s in every["setups"].values()}
    assert "SPM00_CM01_CHN00" in names and "SPM00_CM00_CM01_CHN00" in names


def test_cli_and_errors(processed, tmp_path, capsys):
    truth, out = processed
    target = tmp_path / "copy.xml"
    assert main(["bigstitcher", str(out), "--xml", str(target)]) == 0
    assert "2 view setup(s) x 2 timepoint(s), 4 volume(s)" in capsys.readouterr().out
    elsewhere = read_bigstitcher(target)  # image paths relative to the XML's own folder
    assert elsewhere["timepoints"] == [0, 1] and all(p.is_dir() for p in elsewhere["images"].values())
    assert main(["bigstitcher", str(tmp_path / "nowhere")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IsoviewError, match="no complete fused"):
        write_bigstitcher(empty)
    (tmp_path / "bad.xml").write_text("<SpimData")
    with pytest.raises(IsoviewError, match="not a readable SpimData"):
        read_bigstitcher(tmp_path / "bad.xml")


def test_a_view_of_unknown_voxel_size_is_refused_not_exported_at_1um(tmp_path, caplog):
    """Cameras 2/3 scan along y, but their XML names no step at all: their corrected and fused outputs
    record no voxel size, and the export leaves that view out with a warning instead of writing 1 µm."""
    truth = generate_dataset(tmp_path / "syn", preset="tiny", seed=4, timepoints=1)
    xml = next(truth.raw_dir.rglob("ch1.xml"))
    xml.write_text(xml.read_text().replace('z_step="', 'z_step_unused="').replace('"+z"', '"+y"'))
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        process_dataset(truth.raw_dir, out, progress=False, fusion_diagnostics=False)
    assert any("no voxel size" in r.getMessage() and "y_step or z_step" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="isoview_dask.bigstitcher"):
        content = read_bigstitcher(write_bigstitcher(out, corrected=True))
    names = {s["name"] for s in content["setups"].values()}
    assert names == {"SPM00_CM00_CM01_CHN00", "SPM00_CM00_CHN00", "SPM00_CM01_CHN00"}, names
    assert all(s["voxel_size_xyz"] != [1.0, 1.0, 1.0] for s in content["setups"].values())
    refused = [r.getMessage() for r in caplog.records if "not exported, its voxel size is unknown" in r.getMessage()]
    assert len(refused) == 3 and any("y_step or z_step" in m for m in refused), refused
