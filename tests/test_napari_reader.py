"""The napari reader's layer data (no napari, no display): names, scale, contrast, labels, time, placement."""

import json

import numpy as np
import pytest
from scipy import ndimage

from isoview_dask.fuse.transforms import view_transform
from isoview_dask.napari import get_reader, read_layers
from isoview_dask.napari._reader import flips_matrix
from isoview_dask.pipeline import process_dataset
from isoview_dask.synthetic import generate_dataset

VOXEL = (1.625, 0.40625, 0.40625)  # the tiny preset's z step and pixel, µm


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    root = tmp_path_factory.mktemp("napari")
    truth = generate_dataset(root / "syn", preset="tiny", timepoints=2)
    process_dataset(truth.raw_dir, root / "out", progress=False, isotropic_enable=True, isotropic_iterations=2)
    return root / "out"


@pytest.fixture(scope="module")
def layers(out):
    return {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in read_layers(out)}


def test_a_whole_output_is_one_layer_per_volume_with_a_time_axis(out, layers):
    assert list(layers) == ["CM00 corrected", "CM01 corrected", "CM02 corrected", "CM03 corrected",
                            "VW00 fused CM00+CM01", "VW90 fused CM02+CM03", "isotropic CM00+CM01+CM02+CM03",
                            "CM00 segmentation mask", "CM01 segmentation mask", "CM02 segmentation mask",
                            "CM03 segmentation mask"]
    for name, (data, kwargs, kind) in layers.items():
        assert data.ndim == 4 and data.shape[0] == 2, name  # (T, Z, Y, X), lazy
        assert kind == ("labels" if "mask" in name else "image")
        voxel = (0.40625,) * 3 if name.startswith("isotropic") else VOXEL
        assert kwargs["scale"] == pytest.approx((1.0,) + voxel), name
        assert np.asarray(kwargs["affine"]).shape == (5, 5)
    # the second timepoint is the second timepoint's file
    cm00 = layers["CM00 corrected"][0]
    from isoview_dask.io import open_volume
    second = open_volume(out / "SPM00" / "TM000001" / "SPM00_TM000001_CM00_CHN00.zarr")
    np.testing.assert_array_equal(cm00[1, 5].compute(), second[5].compute())
    # the same folder through the hook, and its SPM folder, give the same layers
    assert get_reader(str(out)) is read_layers and get_reader([str(out / "SPM00")]) is read_layers
    assert [k["name"] for _, k, _ in read_layers(out / "SPM00")] == list(layers)


def test_contrast_limits_come_from_the_recorded_window_inside_the_signal(layers):
    for name, (data, kwargs, kind) in layers.items():
        if kind != "image":
            continue
        low, high = kwargs["contrast_limits"]
        volume = np.asarray(data[0].compute(), dtype=float)
        peak = volume.max()
        assert 0 <= low < high <= peak, name
        assert high > 0.3 * peak, name  # not [0, 9] from a background plane
        assert kwargs["blending"] == "additive"
    colormaps = {name: layers[name][1]["colormap"] for name in ("CM00 corrected", "CM01 corrected",
                                                                "VW00 fused CM00+CM01", "VW90 fused CM02+CM03")}
    assert colormaps["CM00 corrected"] != colormaps["CM01 corrected"]
    assert colormaps["VW00 fused CM00+CM01"] != colormaps["VW90 fused CM02+CM03"]
    assert [n for n, (_, k, _) in layers.items() if k["visible"]] == ["VW00 fused CM00+CM01", "VW90 fused CM02+CM03"]


def test_masks_are_labels_of_their_camera(layers):
    for cam in range(4):
        mask, kwargs, kind = layers[f"CM{cam:02d} segmentation mask"]
        image = layers[f"CM{cam:02d} corrected"]
        assert kind == "labels" and np.issubdtype(mask.dtype, np.integer)
        assert mask.shape == image[0].shape and kwargs["scale"] == image[1]["scale"]
        np.testing.assert_allclose(kwargs["affine"], image[1]["affine"])
        values = set(np.unique(mask[0].compute()))
        assert values == {0, 1}


def test_single_timepoint_and_single_volumes_open(out):
    tm = out / "SPM00" / "TM000001"
    one = read_layers(tm)
    assert len(one) == 11 and all(d.ndim == 3 for d, _, _ in one)
    cm01 = read_layers(tm / "SPM00_TM000001_CM01_CHN00.zarr")
    assert [(k["name"], t) for _, k, t in cm01] == [("CM01 corrected", "image"), ("CM01 segmentation mask", "labels")]
    assert not np.allclose(cm01[0][1]["affine"], np.eye(4))  # still placed on CM00 by its registration
    label = tm / "SPM00_TM000001_CM01_CHN00.zarr" / "labels" / "segmentationMask"
    assert [t for _, _, t in read_layers(label)] == ["labels"]
    assert get_reader(str(tm / "SPM00_TM000001_CM01_CHN00.xyProjection.tif")) is None
    assert get_reader(str(out / "isoview-runs")) is None


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("flip_h,flip_v,flip_z", [(False, False, False), (True, False, False),
                                                  (False, True, True), (True, True, False)])
def test_flips_matrix_maps_a_flipped_index_to_the_voxel_it_shows(rotation, flip_h, flip_v, flip_z):
    volume = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    flipped = view_transform(volume, flip_h=flip_h, flip_v=flip_v, rotation=rotation, flip_z=flip_z)
    m = flips_matrix(volume.shape, flip_h=flip_h, flip_v=flip_v, rotation=rotation, flip_z=flip_z)
    for p in np.ndindex(flipped.shape):
        d = np.rint(m @ (*p, 1)).astype(int)[:3]
        assert flipped[p] == volume[tuple(d)]


def _resample_into(moving, m_kwargs, ref_shape, ref_kwargs):
    """``moving`` resampled onto the reference layer's voxel grid through both layers' world transforms."""
    def world(kwargs):  # 4 x 4: voxel index -> world (napari: affine(scale * index))
        affine = np.asarray(kwargs["affine"])[-4:, -4:]
        return affine @ np.diag(list(kwargs["scale"][-3:]) + [1.0])
    index_map = np.linalg.inv(world(m_kwargs)) @ world(ref_kwargs)  # reference voxel -> moving voxel
    return ndimage.affine_transform(moving, index_map[:3, :3], index_map[:3, 3], output_shape=ref_shape,
                                    order=1, cval=np.nan)


def _foreground_correlation(a, b, mask):
    """Correlation in the foreground of the middle half of the planes, each plane standardised.

    Opposing cameras see the specimen's near half brighter: over the whole depth their intensities
    differ plane by plane even where the images coincide, so each plane's voxels are compared as
    z-scores, in the planes both cameras see well.
    """
    n = a.shape[0]
    xs, ys = [], []
    for z in range(n // 4, n - n // 4):
        keep = mask[z] & np.isfinite(a[z]) & np.isfinite(b[z])
        if keep.sum() < 50:
            continue
        for values, out in ((a[z][keep], xs), (b[z][keep], ys)):
            out.append((values - values.mean()) / (values.std() + 1e-12))
    assert len(xs) >= 2
    return float(np.corrcoef(np.concatenate(xs), np.concatenate(ys))[0, 1])


def test_cm01_through_its_affine_overlays_cm00(out, layers):
    cm00, k00, _ = layers["CM00 corrected"]
    cm01, k01, _ = layers["CM01 corrected"]
    ref = np.asarray(cm00[0].compute(), dtype=float)
    moved = _resample_into(np.asarray(cm01[0].compute(), dtype=float), k01, ref.shape, k00)
    mask = np.asarray(layers["CM00 segmentation mask"][0][0].compute()) > 0
    r = _foreground_correlation(ref, moved, mask)
    unplaced = np.asarray(cm01[0].compute(), dtype=float)  # as stored: mirrored against CM00
    assert r > 0.9 and r > _foreground_correlation(ref, unplaced, mask) + 0.2
    # and the fused view lies where CM00 does (same grid, identity)
    np.testing.assert_allclose(layers["VW00 fused CM00+CM01"][1]["affine"], np.eye(5))


def test_vw90_is_placed_on_vw00_by_the_isotropic_registration(out, layers):
    record = json.loads(next((out / "SPM00" / "TM000000").glob("*.isotropic.json")).read_text())
    transform = np.asarray(record["transform_vw00_to_vw90_um"])
    affine = np.asarray(layers["VW90 fused CM02+CM03"][1]["affine"])[-4:, -4:]
    np.testing.assert_allclose(affine @ transform, np.eye(4), atol=1e-9)
    # CM03 goes through CM02's frame into VW00's
    cm03 = np.asarray(layers["CM03 corrected"][1]["affine"])[-4:, -4:]
    cm02 = np.asarray(layers["CM02 corrected"][1]["affine"])[-4:, -4:]
    np.testing.assert_allclose(cm02, affine)
    assert not np.allclose(cm03, cm02)
    # VW90 mapped into VW00's grid looks like VW00
    vw00, k00, _ = layers["VW00 fused CM00+CM01"]
    vw90, k90, _ = layers["VW90 fused CM02+CM03"]
    ref = np.asarray(vw00[0].compute(), dtype=float)
    stored = np.asarray(vw90[0].compute(), dtype=float)
    moved = _resample_into(stored, k90, ref.shape, k00)
    foreground = ref > np.percentile(ref, 60)
    r = _foreground_correlation(ref, moved, foreground)
    assert r > 0.9 and r > _foreground_correlation(ref, stored, foreground) + 0.2


def test_the_reader_does_not_import_napari(out):
    import subprocess
    import sys
    code = ("import sys; from isoview_dask.napari import read_layers; read_layers(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m == 'napari' or m.startswith(('napari.', 'qtpy', 'PyQt'))))")
    result = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_npe2_manifest_is_valid_and_names_the_reader():
    npe2 = pytest.importorskip("npe2", reason="npe2 (napari's plugin engine, the [napari] extra) is not installed")
    from importlib.resources import files
    manifest = npe2.PluginManifest.from_file(str(files("isoview_dask.napari") / "napari.yaml"))
    assert manifest.name == "isoview-dask"
    (reader,) = manifest.contributions.readers
    assert reader.accepts_directories
    (command,) = [c for c in manifest.contributions.commands if c.id == reader.command]
    module, _, function = command.python_name.partition(":")
    import importlib
    assert getattr(importlib.import_module(module), function) is get_reader
