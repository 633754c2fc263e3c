"""Two-pass time-lapse fusion on synthetic recordings with drift and one outlier timepoint:
smoothed parameters follow the true drift, the outlier gets its neighbours' trend and is fused as
well as they are, static values, lookup tables and plots, the parameter table, and resuming."""

import csv
import io
import json
import shutil

import numpy as np
import pytest
from scipy import ndimage

from isoview_dask.cli import main
from isoview_dask.config import ProcessingConfig
from isoview_dask.io import open_volume
from isoview_dask.pipeline import correct_dataset, fuse_dataset, output_path
from isoview_dask.pipeline.timelapse import (TABLE_COLUMNS, estimate_timepoints, estimated_timepoints,
                                             load_estimates, lookup_table_path, parameter_table, process_timelapse,
                                             smooth_and_fuse, smooth_parameters)
from isoview_dask.synthetic import generate_dataset
from isoview_dask.temporal import static_value

T, OUTLIER, PAIR = 20, 9, (0, 1)
# The outlier's moving camera records a bright debris blob (30 x the brightest nuclei) that wrecks its
# registration, while the specimen in it stays usable: the failure smoothing exists for.
DEBRIS_OUTLIER = dict(outlier_dim=1.0, outlier_noise=0.0, debris_level=30.0)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    root = tmp_path_factory.mktemp("timelapse")
    truth = generate_dataset(root / "syn", preset="tiny", timepoints=T, outlier_timepoint=OUTLIER, cameras=PAIR,
                             seed=3, **DEBRIS_OUTLIER)
    out = root / "out"
    summaries = process_timelapse(truth.raw_dir, out, progress=False)
    return truth, out, summaries


def _lut(out):
    return json.loads(lookup_table_path(out, 0, PAIR, 0, "lookUpTable.json").read_text())


def test_one_call_processes_every_timepoint(recording):
    truth, out, summaries = recording
    counts = {name: (len(s.written), len(s.skipped), len(s.failed)) for name, s in summaries.items()}
    assert counts == {"correct": (2 * T, 0, 0), "estimate": (T, 0, 0), "smooth": (1, 0, 0), "fuse": (T, 0, 0)}
    for t in range(T):
        assert output_path(out, 0, t, list(PAIR), 0, "fusedStack").is_dir()
        assert output_path(out, 0, t, list(PAIR), 0, "fusionEstimate.transitionPlane", "npy").is_file()


def test_smoothed_offsets_follow_the_drift(recording):
    truth, out, _ = recording
    rows = _lut(out)["timepoints"]
    used = np.array([r["sampling_offset_yx_px"] for r in rows])
    error = np.abs(used - truth.offsets(PAIR)).max(axis=1)
    rotation_error = np.abs([r["sampling_rotation_deg"] for r in rows] - truth.rotations_deg(PAIR))
    print(f"max |smoothed - true| offset {error.max():.3f} px (t={error.argmax()}), "
          f"rotation {rotation_error.max():.3f} deg")
    assert error.max() <= 0.25
    assert rotation_error.max() <= 0.1
    drift = np.abs(truth.offsets(PAIR)[-1] - truth.offsets(PAIR)[0]).max()
    assert drift > 1.0  # the series really drifts: a constant would not pass


def test_outlier_is_replaced_by_smoothed_values(recording):
    truth, out, _ = recording
    lut = _lut(out)
    assert lut["dropped_timepoints"] == [OUTLIER]
    assert OUTLIER in lut["outlier_timepoints"]
    row = lut["timepoints"][OUTLIER]
    estimated = np.array([row["estimated"]["dy"], row["estimated"]["dx"]])
    true = np.array(truth.offset(PAIR, OUTLIER))
    assert row["registration_confidence"] < 0.5 and np.abs(estimated - true).max() > 5  # naive estimate failed
    assert np.abs(np.array(row["sampling_offset_yx_px"]) - true).max() <= 0.25
    fused = json.loads(output_path(out, 0, OUTLIER, list(PAIR), 0, "fusedStack", "json").read_text())
    assert {"sampling_offset_yx_px", "sampling_rotation_deg", "intensity_ratio_moving_over_reference",
            "transition_yx"} <= set(fused["parameters_fixed"])
    np.testing.assert_allclose(fused["sampling_offset_yx_px"], row["sampling_offset_yx_px"])
    assert fused["intensity_ratio_moving_over_reference"] == pytest.approx(
        row["intensity_ratio_moving_over_reference"])
    assert fused["intensity_ratio_moving_over_reference"] == pytest.approx(truth.gain_ratio(PAIR), rel=0.05)


def _body_correlation(volume, truth, t):
    body = ndimage.binary_dilation(truth.body_mask(0, t), iterations=2)
    return float(np.corrcoef(volume[body].astype(np.float64), truth.clean(0, t)[body])[0, 1])


def _volume_correlation(volume, truth, t):
    inside = np.s_[:, 8:-8, 8:-8]
    return float(np.corrcoef(volume[inside].ravel().astype(np.float64), truth.clean(0, t)[inside].ravel())[0, 1])


def test_outlier_fused_as_well_as_its_neighbours(recording, tmp_path):
    truth, out, _ = recording
    near = [OUTLIER - 1, OUTLIER, OUTLIER + 1]
    naive = fuse_dataset(out, tmp_path / "naive", progress=False, input_timepoints=near, fusion_diagnostics=False)
    assert len(naive.written) == 3
    scores = {}
    for name, root in (("two-pass", out), ("naive", tmp_path / "naive")):
        volumes = {t: open_volume(output_path(root, 0, t, list(PAIR), 0, "fusedStack")).compute() for t in near}
        scores[name] = {t: (_body_correlation(v, truth, t), _volume_correlation(v, truth, t))
                        for t, v in volumes.items()}
    print("correlation with the truth (body, whole volume):",
          {k: {t: tuple(round(c, 4) for c in v) for t, v in s.items()} for k, s in scores.items()})
    body = {k: {t: v[0] for t, v in s.items()} for k, s in scores.items()}
    neighbours = (body["two-pass"][OUTLIER - 1] + body["two-pass"][OUTLIER + 1]) / 2
    assert abs(body["two-pass"][OUTLIER] - neighbours) <= 0.01
    assert body["naive"][OUTLIER] < neighbours - 0.1
    for t in (OUTLIER - 1, OUTLIER + 1):  # smoothing costs the good timepoints nothing
        assert body["two-pass"][t] == pytest.approx(body["naive"][t], abs=0.002)


def test_static_gives_the_robust_centre(recording):
    truth, out, _ = recording
    records = load_estimates(out)[(0, PAIR, 0)]
    config = ProcessingConfig(fusion={"static": True})
    params = smooth_parameters(records, config)
    for name in ("dy", "dx", "rotation_deg", "intensity_factor_moving", "transition_median"):
        used = params.used[name]
        assert np.ptp(used) == 0
        series = np.where(params.dropped, np.nan, params.raw[name])
        assert used[0] == pytest.approx(static_value(series, config.fusion.smoothing_window), abs=1e-12)
    # the failed registration does not move the centre: it is the mean of the true drift
    assert params.used["dy"][0] == pytest.approx(truth.offsets(PAIR)[:, 0].mean(), abs=0.1)
    assert params.used["dx"][0] == pytest.approx(truth.offsets(PAIR)[:, 1].mean(), abs=0.1)


def test_transition_maps_over_time(recording):
    from isoview_dask.pipeline.timelapse import _TransitionMaps
    truth, out, _ = recording
    records = load_estimates(out)[(0, PAIR, 0)]
    own = [np.load(output_path(out, 0, t, list(PAIR), 0, "fusionEstimate.transitionPlane", "npy")) for t in range(T)]
    params = smooth_parameters(records)
    maps = _TransitionMaps(params, ProcessingConfig())
    np.testing.assert_array_equal(maps.at(3), own[3])  # a trusted timepoint keeps its own map
    # the failed timepoint's map (from misaligned masks) is replaced by its neighbours' median
    np.testing.assert_allclose(maps.at(OUTLIER), np.median([own[OUTLIER - 1], own[OUTLIER + 1]], axis=0))
    windowed = _TransitionMaps(params, ProcessingConfig(fusion={"transition_median_window": 2}))
    np.testing.assert_allclose(windowed.at(OUTLIER + 1), np.median([own[t] for t in (8, 10, 11, 12)], axis=0))
    static = _TransitionMaps(smooth_parameters(records, ProcessingConfig(fusion={"static": True})),
                             ProcessingConfig(fusion={"static": True}))
    np.testing.assert_array_equal(static.at(0), static.at(T - 1))
    np.testing.assert_allclose(static.at(0), np.median([m for t, m in enumerate(own) if t != OUTLIER], axis=0))


def test_lookup_table_files_and_plot(recording):
    truth, out, _ = recording
    lut = _lut(out)
    assert lut["settings"]["smoothing_window"] == 20 and not lut["settings"]["static"]
    rows = list(csv.DictReader(io.StringIO(lookup_table_path(out, 0, PAIR, 0, "lookUpTable.csv").read_text())))
    assert [int(r["timepoint"]) for r in rows] == list(range(T))
    assert rows[OUTLIER]["dropped"] == "1" and rows[0]["dropped"] == "0"
    ratio = truth.gain_ratio(PAIR)  # moving / reference: flag 2 multiplies the moving camera by 1 / ratio
    assert float(rows[0]["intensity_factor"]) == pytest.approx(max(ratio, 1 / ratio), rel=0.05)
    assert rows[0]["intensity_flag"] == ("2" if ratio < 1 else "1")
    png = lookup_table_path(out, 0, PAIR, 0, "parameters.png")
    assert png.stat().st_size > 20_000 and png.read_bytes()[:4] == b"\x89PNG"


def _snapshot(root):
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_rerun_recomputes_nothing(recording, capsys):
    truth, out, _ = recording
    before = _snapshot(out)
    for command in (["timelapse", str(truth.raw_dir), "--out", str(out)],
                    ["run", str(truth.raw_dir), "--out", str(out), "--two-pass"]):
        assert main([*command, "--no-cluster"]) == 0
        text = capsys.readouterr().out
        for stage, n in (("correct", 2 * T), ("estimate", T), ("smooth", 1), ("fuse", T)):
            assert f"{stage}: 0 written, {n} skipped (complete), 0 failed" in text, text
    assert _snapshot(out) == before  # no file rewritten, none added


def test_changed_smoothing_refits_without_reestimating(recording, tmp_path):
    truth, out, _ = recording
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)  # pass-1 records resume in a moved tree
    assert len(estimate_timepoints(copy, progress=False).skipped) == T
    lut, fused = smooth_and_fuse(copy, progress=False, fusion_smoothing_window=7, input_timepoints=[0, OUTLIER])
    assert len(lut.written) == 1 and len(fused.written) == 2
    assert _lut(copy)["settings"]["smoothing_window"] == 7
    row = _lut(copy)["timepoints"][OUTLIER]
    assert np.abs(np.array(row["sampling_offset_yx_px"]) - truth.offset(PAIR, OUTLIER)).max() <= 0.25


def test_parameter_table_and_cli(recording, capsys):
    """The table's names say the convention: its sampling_* columns are the JSON's sampling_* fields, sign
    included; the JSON's offset_yx_px / rotation_deg (the content's motion) never appear under those names."""
    truth, out, _ = recording
    rows = parameter_table(out)
    assert len(rows) == T and set(rows[0]) == set(TABLE_COLUMNS)
    lut = _lut(out)["timepoints"]
    for t, row in enumerate(rows):
        assert (row["timepoint"], row["reference_camera"], row["moving_camera"], row["channel"]) == (t, 0, 1, 0)
        assert row["fixed"] is True and row["dropped"] == (t == OUTLIER)
        assert row["used_sampling_dy"] == pytest.approx(lut[t]["sampling_offset_yx_px"][0])
        assert row["transition_min"] <= row["transition_median"] <= row["transition_max"]
        for side in ("ref", "mov"):
            assert row[f"{side}_dead_pixels"] > 0 and row[f"{side}_background"] > 0
            assert row[f"{side}_segmentation_level"] > row[f"{side}_segmentation_min"]
    assert rows[OUTLIER]["confidence"] < 0.5 < rows[0]["confidence"]
    fused = json.loads(output_path(out, 0, 0, [0, 1], 0, "fusedStack", "json").read_text())
    assert rows[0]["used_sampling_rotation_deg"] == pytest.approx(fused["sampling_rotation_deg"])
    assert fused["rotation_deg"] == pytest.approx(-fused["sampling_rotation_deg"])  # the other convention
    assert not {"dy", "dx", "rotation_deg"} & set(TABLE_COLUMNS)
    assert main(["params", str(out), "--csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == T and float(table[3]["sampling_dy"]) == pytest.approx(rows[3]["sampling_dy"], rel=1e-5)
    assert main(["params", str(out)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert len(text) == T + 1 and "used_sampling_dy" in text[0] and "ref_dead_pixels" in text[0]
    assert main(["params", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[OUTLIER])["dropped"] is True


def test_default_outlier_registration_replaced(tmp_path):
    """The generator's default outlier (signal x 0.1, extra noise, debris) breaks the naive estimate;
    the smoothed parameters at that timepoint still follow the drift."""
    n, outlier = 8, 4
    truth = generate_dataset(tmp_path / "syn", preset="tiny", timepoints=n, outlier_timepoint=outlier,
                             cameras=PAIR, seed=5)
    correct_dataset(truth.raw_dir, tmp_path / "out", progress=False)
    assert len(estimate_timepoints(tmp_path / "out", progress=False).written) == n
    params = smooth_parameters(load_estimates(tmp_path / "out")[(0, PAIR, 0)])
    assert params.dropped.tolist() == [t == outlier for t in range(n)]
    naive = np.array([params.raw["dy"][outlier], params.raw["dx"][outlier]])
    assert np.abs(naive - truth.offset(PAIR, outlier)).max() > 5
    used = np.column_stack([params.used["dy"], params.used["dx"]])
    assert np.abs(used - truth.offsets(PAIR)).max() <= 0.25


def test_rejected_registration_takes_the_smoothed_value(recording):
    """A timepoint whose registration was clamped at the search limit is dropped even if its confidence
    looks fine, and gets the smoothed offset (near truth), not its own estimate."""
    truth, out, _ = recording
    records = [dict(r) for r in load_estimates(out)[(0, PAIR, 0)]]
    k = 4
    records[k]["registration_rejected"] = "offset beyond the search range of 6 px"
    records[k]["sampling_offset_yx_px"] = [6.0, -6.0]  # the clamped value, far from truth
    assert records[k]["registration_confidence"] > 0.5
    params = smooth_parameters(records)
    assert params.dropped[k] and params.dropped.sum() == 2  # it and the debris outlier
    assert abs(params.used["dy"][k] - truth.offsets(PAIR)[k, 0]) <= 0.25
    assert abs(params.used["dx"][k] - truth.offsets(PAIR)[k, 1]) <= 0.25


def test_one_plan_on_a_cluster_equals_the_stages_one_after_the_other(tmp_path):
    """``process_timelapse`` runs correction, estimates, smoothing and fusion as one plan (a timepoint's
    estimates wait only for its own corrections); on a 2-worker cluster it writes what the three stage
    functions, run one after the other without a cluster, write."""
    from isoview_dask.cluster import client_context
    from isoview_dask.dataset import open_dataset
    from isoview_dask.pipeline.correct import selected_views
    from isoview_dask.pipeline.timelapse import plan_timelapse
    from test_cluster import assert_same_outputs
    truth = generate_dataset(tmp_path / "syn", preset="tiny", shape=(24, 64, 64), timepoints=4, cameras=PAIR, seed=8)
    stages = tmp_path / "stages"
    assert len(correct_dataset(truth.raw_dir, stages, progress=False).written) == 8
    assert len(estimate_timepoints(stages, progress=False).written) == 4
    lut, fused = smooth_and_fuse(stages, progress=False)
    assert len(lut.written) == 1 and len(fused.written) == 4

    # The plan: each timepoint's estimate step waits for that timepoint's two corrections only.
    config = ProcessingConfig()
    jobs = list(plan_timelapse(selected_views(open_dataset(truth.raw_dir), config), tmp_path / "x", config,
                               None))
    steps = [j for j in jobs if j.stage == "estimate"]
    assert [len(j.deps) for j in steps] == [2] * 4
    assert all(f"TM{t:06d}" in dep for t, j in enumerate(steps) for dep in j.deps)
    assert jobs[-1].deps == tuple(j.key for j in steps)  # smoothing waits for every timepoint's estimates

    one_plan = tmp_path / "one-plan"
    with client_context(n_workers=2, threads_per_worker=1, memory_limit="1GiB", quiet=True):
        summaries = process_timelapse(truth.raw_dir, one_plan, progress=False)
    counts = {name: (len(s.written), len(s.failed)) for name, s in summaries.items()}
    assert counts == {"correct": (8, 0), "estimate": (4, 0), "smooth": (1, 0), "fuse": (4, 0)}
    assert_same_outputs(one_plan, stages, ignore=("fingerprint",))


def test_estimated_timepoints_take_every_nth_and_the_last():
    assert estimated_timepoints(range(20), 4) == [0, 4, 8, 12, 16, 19]
    assert estimated_timepoints(range(20), 5) == [0, 5, 10, 15, 19]
    assert estimated_timepoints([9, 2, 5, 2], 2) == [2, 9]  # sorted, distinct; the last always
    assert estimated_timepoints([3], 5) == [3]
    assert estimated_timepoints([4, 1, 7], 1) == [1, 4, 7]
    assert estimated_timepoints([], 3) == []


def test_estimating_every_fourth_timepoint_interpolates_the_others(recording, tmp_path):
    """fusion.estimate_every = 4: pass 1 estimates timepoints 0, 4, 8, 12, 16 and 19 only; every
    timepoint is still fused, the others with the smoothed values linearly interpolated between their
    estimated neighbours (exactly) and the nearest estimated transition map, which keeps them within
    0.3 px of the true drift."""
    from isoview_dask.pipeline.timelapse import _TransitionMaps
    truth, corrected, _ = recording
    config = ProcessingConfig(fusion={"estimate_every": 4})
    estimated = [0, 4, 8, 12, 16, 19]
    summary = estimate_timepoints(corrected, tmp_path, config, progress=False)
    assert len(summary.written) == len(estimated) and not summary.failed
    records = load_estimates(tmp_path)[(0, PAIR, 0)]
    assert [r["timepoint"] for r in records] == estimated
    _, fused = smooth_and_fuse(corrected, tmp_path, config, progress=False)
    assert len(fused.written) == T and not fused.failed
    params = smooth_parameters(records, config)
    lut = {r["timepoint"]: r for r in _lut(tmp_path)["timepoints"]}
    assert sorted(lut) == list(range(T))  # a row for every timepoint fused, the interpolated ones marked
    assert [t for t in range(T) if not lut[t].get("interpolated")] == estimated
    table = list(csv.DictReader(io.StringIO(lookup_table_path(tmp_path, 0, PAIR, 0, "lookUpTable.csv").read_text())))
    assert [int(r["timepoint"]) for r in table] == list(range(T))
    assert {t for t, r in enumerate(table) if r["estimated_sampling_dy"] == ""} == set(range(T)) - set(estimated)
    used = []
    for t in range(T):
        record = json.loads(output_path(tmp_path, 0, t, list(PAIR), 0, "fusedStack", "json").read_text())
        used.append(record["sampling_offset_yx_px"])
        np.testing.assert_allclose(record["sampling_offset_yx_px"], lut[t]["sampling_offset_yx_px"], atol=1e-9)
        if t in estimated:
            continue
        row = params.used_at(t)
        assert row["interpolated"] and row["estimated"] == {}
        before, after = max(e for e in estimated if e < t), min(e for e in estimated if e > t)
        w = (t - before) / (after - before)
        expected = (1 - w) * np.array(lut[before]["sampling_offset_yx_px"]) + w * np.array(
            lut[after]["sampling_offset_yx_px"])
        assert float(table[t]["sampling_dy"]) == pytest.approx(expected[0])
        np.testing.assert_allclose(row["sampling_offset_yx_px"], expected, atol=1e-9)
        np.testing.assert_allclose(record["sampling_offset_yx_px"], expected, atol=1e-9)
        assert record["parameters_fixed"]  # fused with the fixed values, not estimated on its own
        assert row["registration_confidence"] == min(lut[before]["registration_confidence"],
                                                     lut[after]["registration_confidence"])
    error = np.abs(np.array(used) - truth.offsets(PAIR)).max(axis=1)
    print(f"estimate_every 4: max |used - true| offset {error.max():.3f} px (t={error.argmax()})")
    assert error.max() <= 0.3
    maps = _TransitionMaps(params, config)
    own = {t: np.load(output_path(tmp_path, 0, t, list(PAIR), 0, "fusionEstimate.transitionPlane", "npy"))
           for t in estimated}
    np.testing.assert_array_equal(maps.at(5), own[4])
    np.testing.assert_array_equal(maps.at(6), own[4])  # a tie goes to the earlier timepoint
    np.testing.assert_array_equal(maps.at(7), own[8])
    np.testing.assert_array_equal(maps.at(18), own[19])
