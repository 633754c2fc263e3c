"""Every zarr output is OME-NGFF 0.5 as ome-zarr-models reads it, and pyramid levels overlay in space."""

import json

import numpy as np
import pytest
import zarr

from isoview_dask.pipeline import convert_dataset, process_dataset
from isoview_dask.synthetic import generate_dataset

ome_models = pytest.importorskip("ome_zarr_models.v05", reason="ome-zarr-models (the [test] extra) is not installed")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ngff")
    truth = generate_dataset(root / "syn", preset="tiny", seed=5, illumination_channels=(0, 1), cameras=(0, 1))
    process_dataset(truth.raw_dir, root / "out", progress=False, fusion_diagnostics=False,
                    fusion_channel_pairs=[[0, 1]], output_pyramid_levels=2)
    convert_dataset(truth.raw_dir, root / "converted", pyramid_levels=1, progress=False)
    return [p for p in sorted(root.rglob("*.zarr")) if "truth" not in p.parts]


def test_every_zarr_output_validates_as_an_ome_ngff_0_5_image(outputs):
    kinds = {p.name.split(".", 1)[1] for p in outputs}
    assert {"zarr", "fusedStack.zarr"} <= kinds
    assert "segmentationMask.zarr" not in kinds  # masks are label images of their camera volume now
    for path in outputs:
        image = ome_models.Image.from_zarr(zarr.open_group(path, mode="r"))  # raises when invalid
        multiscale = image.attributes.ome.multiscales[0]
        assert [axis.name for axis in multiscale.axes] == ["z", "y", "x"]
        assert all(axis.unit == "micrometer" for axis in multiscale.axes)


def test_segmentation_masks_are_ome_ngff_labels_of_their_camera_volume(outputs):
    """``<stem>.zarr/labels/segmentationMask``: listed by the ``labels`` group, ``image-label`` metadata
    pointing back at the image, same grid and scale as the image, 0/1 values; valid for ome-zarr-models
    (as part of the image, labels included, and alone)."""
    from isoview_dask.io import open_volume
    corrected = [p for p in outputs if p.name.count(".") == 1 and "converted" not in p.parts]
    assert len(corrected) == 4
    for path in corrected:
        image = ome_models.Image.from_zarr(zarr.open_group(path, mode="r"))
        assert image.labels is not None and image.labels.attributes.ome.labels == ["segmentationMask"]
        label = ome_models.ImageLabel.from_zarr(zarr.open_group(path / "labels" / "segmentationMask", mode="r"))
        meta = label.ome_attributes.image_label
        assert meta.source.image == "../../" and [c.label_value for c in meta.colors] == [1]
        scale = [t.scale for t in label.ome_attributes.multiscales[0].datasets[0].coordinateTransformations][0]
        assert scale == image.attributes.ome.multiscales[0].datasets[0].coordinateTransformations[0].scale
        mask = open_volume(path / "labels" / "segmentationMask").compute()
        assert mask.shape == open_volume(path).shape and set(np.unique(mask)) == {0, 1}
        assert not (path.parent / path.name.replace(".zarr", ".segmentationMask.zarr")).exists()


def test_ome_zarr_py_finds_the_labels(outputs):
    reader_module = pytest.importorskip("ome_zarr.reader", reason="ome-zarr-py is not installed")
    from ome_zarr.io import parse_url
    path = next(p for p in outputs if p.name.endswith("CM00_CHN00.zarr") and "converted" not in p.parts)
    nodes = list(reader_module.Reader(parse_url(str(path)))())
    assert any(reader_module.Label in [type(s) for s in node.specs] for node in nodes)


def test_pyramid_levels_carry_their_translation(outputs):
    """Level l (a mean over f voxels per axis) is scaled by f and shifted by voxel * (f - 1) / 2, so the
    centre of its first voxel is the centre of the level-0 voxels it averages."""
    fused = next(p for p in outputs if p.name.endswith("fusedStack.zarr"))
    datasets = json.loads((fused / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]["datasets"]
    assert len(datasets) == 3
    base = np.array(datasets[0]["coordinateTransformations"][0]["scale"])
    assert len(datasets[0]["coordinateTransformations"]) == 1  # level 0: the scale alone
    for level in datasets[1:]:
        scale, translation = level["coordinateTransformations"]
        assert (scale["type"], translation["type"]) == ("scale", "translation")
        factor = np.array(scale["scale"]) / base
        np.testing.assert_allclose(translation["translation"], base * (factor - 1) / 2)
        assert (factor[1:] > 1).all()


def test_every_image_carries_an_omero_channel_with_a_window_inside_its_data(outputs):
    """The display window written with each image lies within its voxels' range, at its percentiles."""
    from ome_zarr_models.common.omero import Omero

    from isoview_dask.io.zarr import WINDOW_PERCENTILES, open_zarr
    labels = {}
    for path in outputs:
        ome = zarr.open_group(path, mode="r").attrs["ome"]
        if "image-label" in ome:
            assert "omero" not in ome
            continue
        channel = Omero.model_validate(ome["omero"]).channels[0]
        stage = "converted" if "converted" in path.parts else "out"
        labels[stage, path.name.split("_CHN")[0].split("_", 2)[2] + "." + path.name.split(".", 1)[1]] = channel.label
        data = open_zarr(path).compute()
        window = channel.window
        assert (window.min, window.max) == (data.min(), data.max())
        assert window.min <= window.start < window.end <= window.max
        np.testing.assert_array_equal([window.start, window.end], np.percentile(data, WINDOW_PERCENTILES))
    assert labels["out", "CM01.zarr"] == "CM01 corrected"
    assert labels["out", "CM00_CM01.fusedStack.zarr"] == "VW00 fused CM00+CM01"
    assert labels["converted", "CM00.zarr"] == "CM00 raw"
