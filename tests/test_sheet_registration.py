"""Light-sheet registration of illumination channels (SiMView), measured against synthetic truth.

Each synthetic camera records one label twice (``illumination_channels=(0, 1)``); channel 1's light sheet
is offset along z and tilted about x by a known amount per camera (``sheet_offset_planes``,
``sheet_tilt_deg``). The channel fusion fits that motion around the channel transition and moves channel
1 onto channel 0 before blending them along x.
"""

import json
import logging
import math

import dask.array as da
import numpy as np
import pytest

from isoview_dask.cli import main
from isoview_dask.fuse import (apply_sheet_transform, apply_sheet_transform_numpy, register_sheets,
                               sheet_displacement)
from isoview_dask.io import open_volume
from isoview_dask.pipeline import correct_dataset, fuse_dataset, output_path
from isoview_dask.synthetic import SyntheticSpec, generate_dataset, load_truth

SHAPE = (32, 128, 128)
#: seed -> (offset planes per camera, tilt degrees per camera); camera 1 of seed 3 is aligned (zero truth)
CASES = {1: ({0: 0.5, 1: -1.2}, {0: 0.2, 1: -0.9}),
         2: ({0: 3.0, 1: 1.8}, {0: 1.5, 1: 0.6}),
         3: ({0: -2.1, 1: 0.0}, {0: -0.5, 1: 0.0})}
LONE = dict(fusion_channel_pairs=[[0, 1]], fusion_camera_pairs=[], fusion_diagnostics=False)
OFFSET_TOL, ROTATION_TOL = 0.25, 0.15
#: The registered channel fusion correlates with the clean truth at least this much better (nonzero truth).
MARGIN = 0.02


@pytest.fixture(scope="module", params=sorted(CASES), ids=[f"seed{s}" for s in sorted(CASES)])
def fused(request, tmp_path_factory):
    """Cameras 0 and 1 with misaligned sheets, each channel-fused with and without sheet registration."""
    seed = request.param
    root = tmp_path_factory.mktemp(f"sheets{seed}")
    offsets, tilts = CASES[seed]
    truth = generate_dataset(root / "syn", shape=SHAPE, seed=seed, cameras=(0, 1), illumination_channels=(0, 1),
                             illumination_balance=0.8, sheet_offset_planes=offsets, sheet_tilt_deg=tilts)
    correct_dataset(truth.raw_dir, root / "out", progress=False)
    for registered in (True, False):
        summary = fuse_dataset(root / "out", root / f"fused-{registered}", progress=False, **LONE,
                               fusion_channel_registration=registered)
        assert len(summary.written) == 2 and not summary.failed
    return truth, root


def _params(root, camera, registered=True):
    path = output_path(root / f"fused-{registered}", 0, 0, camera, [0, 1], "fusedStack", "json")
    return json.loads(path.read_text())["channel_fusion"][0]


def _volume(root, camera, registered=True):
    return open_volume(output_path(root / f"fused-{registered}", 0, 0, camera, [0, 1], "fusedStack")).compute()


def _correlation(volume, truth, camera):
    body = truth.body_mask(camera)
    return float(np.corrcoef(volume[body].astype(np.float64), truth.clean(camera)[body])[0, 1])


# ------------------------------------------------------------------------------------------ against truth

@pytest.mark.parametrize("camera", [0, 1])
def test_recovered_offset_and_tilt_match_truth(fused, camera):
    truth, root = fused
    true_offset, true_rotation = truth.sheet_misalignment(camera)
    entry = _params(root, camera)
    offset = entry["estimated_offset_z_planes"]
    rotation = entry["estimated_rotation_deg"]
    assert abs(offset - true_offset) <= OFFSET_TOL and abs(rotation - true_rotation) <= ROTATION_TOL, entry
    assert entry["channel_registration_confidence"] > 0.8
    if true_offset or true_rotation:
        assert entry["channel_registration_method"] == "estimated"
        assert (entry["offset_z_planes"], entry["rotation_deg"]) == (offset, rotation)  # applied as estimated
    else:  # nothing to correct: the fit is within its precision of zero and nothing is resampled
        assert entry["channel_registration_method"] == "negligible"
        assert (entry["offset_z_planes"], entry["rotation_deg"]) == (0.0, 0.0)


@pytest.mark.parametrize("camera", [0, 1])
def test_registration_improves_the_channel_fusion_and_never_hurts(fused, camera):
    truth, root = fused
    with_registration = _volume(root, camera, True)
    without = _volume(root, camera, False)
    assert _params(root, camera, False)["channel_registration_method"] == "off"
    if truth.sheet_misalignment(camera) == (0.0, 0.0):
        np.testing.assert_array_equal(with_registration, without)
    else:
        assert _correlation(with_registration, truth, camera) > _correlation(without, truth, camera) + MARGIN


def test_parameters_record_the_sheet_motion_and_its_physical_tilt(fused):
    truth, root = fused
    entry = _params(root, 0)
    dz, dy, _ = truth.voxel_size_um
    assert entry["offset_z_um"] == pytest.approx(entry["offset_z_planes"] * dz)
    expected = math.degrees(math.atan(math.tan(math.radians(entry["rotation_deg"])) * dz / dy))
    assert entry["sheet_tilt_deg_physical"] == pytest.approx(expected)
    assert entry["channel_registration_rejected"] is None
    x0, x1 = entry["channel_registration_columns"]
    assert x1 - x0 == 17 and x0 <= SHAPE[2] / 2 <= x1  # around the middle column, where the channels meet


#: Recordings whose camera 0 sheet offset lies beyond a 1-plane search range (with a margin).
BEYOND_SEARCH = [seed for seed in sorted(CASES) if abs(CASES[seed][0][0]) >= 2]


@pytest.mark.parametrize("fused", BEYOND_SEARCH, indirect=True, ids=[f"seed{s}" for s in BEYOND_SEARCH])
def test_low_confidence_or_out_of_range_fit_falls_back_to_no_motion(fused, tmp_path, caplog):
    """A search range below the true offset: the fit lands on the limit, is rejected, b is not moved.

    Only the recordings whose offset exceeds the search range take part (they always do: no skip)."""
    truth, root = fused
    offset, _ = truth.sheet_misalignment(0)
    assert abs(offset) >= 2, "the fixture must put the true offset beyond the 1-plane search range"
    with caplog.at_level(logging.WARNING):
        fuse_dataset(root / "out", tmp_path / "narrow", progress=False, **LONE, fusion_channel_search_planes=1.0)
    entry = json.loads(output_path(tmp_path / "narrow", 0, 0, 0, [0, 1], "fusedStack", "json").read_text())
    entry = entry["channel_fusion"][0]
    assert entry["channel_registration_method"] == "fallback" and entry["channel_registration_confidence"] == 0
    assert "search limit" in entry["channel_registration_rejected"]
    assert (entry["offset_z_planes"], entry["rotation_deg"]) == (0.0, 0.0)
    assert "sheet registration not applied" in caplog.text


# ------------------------------------------------------------------------------------------ the transform

def test_sheet_displacement_convention():
    """Content at (z, y) moves to z + offset + tan(rotation) (y - (Y-1)/2)."""
    Z, Y, X = 20, 9, 3
    volume = np.zeros((Z, Y, X), np.float32)
    volume[8] = 1.0  # one bright plane
    offset, rotation = 1.5, 10.0
    moved = apply_sheet_transform_numpy(volume, offset, rotation)
    d = sheet_displacement(Y, offset, rotation)
    assert d[(Y - 1) // 2] == pytest.approx(offset)
    for y in range(Y):
        profile = np.nan_to_num(moved[:, y, 0])
        centre = float((profile * np.arange(Z)).sum() / profile.sum())
        assert centre == pytest.approx(8 + d[y], abs=1e-6)


@pytest.mark.parametrize("chunks", [(5, 64, 40), (13, 17, 7), (3, 8, 40)], ids=["z5", "z13y17x7", "z3y8"])
@pytest.mark.parametrize("offset, rotation", [(2.3, 1.2), (-0.7, -3.0)])
def test_blockwise_transform_equals_numpy_over_chunkings(chunks, offset, rotation):
    rng = np.random.default_rng(7)
    volume = rng.integers(0, 4000, (37, 64, 40)).astype(np.uint16)
    expected = apply_sheet_transform_numpy(volume, offset, rotation)
    got = apply_sheet_transform(da.from_array(volume, chunks=chunks), offset, rotation).compute()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(np.nan_to_num(got), np.nan_to_num(expected))
    assert np.isnan(expected).any()  # planes moved out of the stack are marked as not recorded
    mask = volume > 2000
    expected_mask = apply_sheet_transform_numpy(mask, offset, rotation, order=0, cval=False, dtype=bool)
    got_mask = apply_sheet_transform(da.from_array(mask, chunks=chunks), offset, rotation, order=0, cval=False,
                                     dtype=bool).compute()
    np.testing.assert_array_equal(got_mask, expected_mask)


def test_register_sheets_checks_its_input():
    with pytest.raises(ValueError, match="one shape"):
        register_sheets(np.zeros((10, 20)), np.zeros((10, 21)))
    with pytest.raises(ValueError, match="order"):
        apply_sheet_transform_numpy(np.zeros((4, 5, 6)), 1.0, 0.0, order=3)


# ------------------------------------------------------------------------------------------ synthetic and CLI

def test_synthetic_spec_sheet_fields():
    spec = SyntheticSpec.tiny(illumination_channels=(0, 1), sheet_offset_planes={1: 1.5}, sheet_tilt_deg=0.4)
    assert spec.sheet_offset_planes == {0: 0.0, 1: 1.5, 2: 0.0, 3: 0.0}
    assert spec.sheet_tilt_deg == {c: 0.4 for c in range(4)}
    assert SyntheticSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="without illumination_channels"):
        SyntheticSpec.tiny(sheet_offset_planes=1.0)
    with pytest.raises(ValueError, match="within"):
        SyntheticSpec.tiny(illumination_channels=(0, 1), sheet_tilt_deg=12.0)
    with pytest.raises(ValueError, match="mapping camera"):
        SyntheticSpec.tiny(illumination_channels=(0, 1), sheet_offset_planes={7: 1.0})


def test_synth_cli_writes_two_channels_per_camera_with_misaligned_sheets(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["synth", str(out), "--preset", "tiny", "--illumination-channels", "0,1",
                 "--illumination-balance", "0.7", "--sheet-offset", "0:1.5,1:-0.8", "--sheet-tilt", "0.6"]) == 0
    truth = load_truth(out)
    assert truth.illumination_channels == (0, 1) and truth.illumination_balance() == pytest.approx(0.7)
    assert truth.sheet_misalignment(0) == (1.5, 0.6) and truth.sheet_misalignment(1) == (-0.8, 0.6)
    stacks = sorted(p.name for p in (out / "raw").rglob("*CM0_*.stack"))
    assert stacks == ["SPC00_TM00000_ANG000_CM0_CHN00_PH0.stack", "SPC00_TM00000_ANG000_CM0_CHN01_PH0.stack"]
    assert main(["synth", str(tmp_path / "bad"), "--preset", "tiny", "--sheet-offset", "1"]) == 2
    assert "without illumination_channels" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------ time-lapse

@pytest.fixture(scope="module")
def timelapse(tmp_path_factory):
    """Five timepoints of a camera pair with misaligned sheets, fused in two passes with static parameters."""
    from isoview_dask.pipeline import process_timelapse
    root = tmp_path_factory.mktemp("sheet-timelapse")
    truth = generate_dataset(root / "syn", shape=SHAPE, seed=5, cameras=(0, 1), timepoints=5,
                             illumination_channels=(0, 1), sheet_offset_planes={0: 1.3, 1: -0.8},
                             sheet_tilt_deg={0: 0.7, 1: -0.4})
    summaries = process_timelapse(truth.raw_dir, root / "out", progress=False, fusion_channel_pairs=[[0, 1]],
                                  fusion_diagnostics=False, fusion_static=True)
    assert not any(s.failed for s in summaries.values())
    return truth, root / "out"


def test_timelapse_smooths_and_freezes_the_sheet_registration(timelapse):
    """Per-timepoint sheet fits enter the lookup table; static freezes them; pass 2 applies the table's values."""
    import csv
    from isoview_dask.pipeline.timelapse import lookup_table_path
    truth, out = timelapse
    lut = json.loads(lookup_table_path(out, 0, (0, 1), (0, 1), "lookUpTable.json").read_text())
    rows = lut["timepoints"]
    assert len(rows) == 5
    for camera in (0, 1):
        true_offset, true_rotation = truth.sheet_misalignment(camera)
        used = [(r["channel_registration"][str(camera)]["offset_z_planes"],
                 r["channel_registration"][str(camera)]["rotation_deg"]) for r in rows]
        assert len(set(used)) == 1  # static: one value for every timepoint
        offset, rotation = used[0]
        assert abs(offset - true_offset) <= OFFSET_TOL and abs(rotation - true_rotation) <= ROTATION_TOL
        role = "ref" if camera == 0 else "mov"
        estimated = [r["estimated"][f"sheet_offset_{role}"] for r in rows]
        assert len(set(estimated)) > 1  # the per-timepoint fits differ (fresh noise), the used value does not
        for t, row in enumerate(rows):
            params = json.loads(output_path(out, 0, t, [0, 1], [0, 1], "fusedStack", "json").read_text())
            entry = next(e for e in params["channel_fusion"] if e["camera"] == camera)
            assert entry["channel_registration_method"] == "fixed"
            assert (entry["offset_z_planes"], entry["rotation_deg"]) == pytest.approx(used[t])
            assert "channel_registration" in params["parameters_fixed"]
    with open(lookup_table_path(out, 0, (0, 1), (0, 1), "lookUpTable.csv")) as fh:
        table = list(csv.DictReader(fh))
    assert float(table[2]["sheet_offset_z_planes_CM00"]) == pytest.approx(rows[2]["channel_registration"]["0"]
                                                                         ["offset_z_planes"])
