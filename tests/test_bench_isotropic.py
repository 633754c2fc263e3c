"""benchmarks/isotropic.py, our side only, at its --quick size: the script runs and its JSON keeps its fields."""

from __future__ import annotations

import json

import pytest
from conftest import run_benchmark_script



@pytest.fixture(scope="module")
def record(tmp_path_factory):
    pytest.importorskip("psutil")
    out = tmp_path_factory.mktemp("bench-isotropic")
    run_benchmark_script("isotropic", ["--quick", "--no-mvs", "--workdir", str(out / "work"), "--results", str(out)])
    assert (out / "isotropic-quick.md").is_file()
    return json.loads((out / "isotropic-quick.json").read_text())


def _rows(record, tool, step):
    return [r for r in record["rows"] if r["tool"] == tool and r["step"] == step]


def test_json_has_every_measure(record):
    assert record["benchmark"] == "isotropic" and record["mvs_iterations"] == []
    assert record["input_mb"] > 0 and record["output_voxels"] == 56 ** 3
    registrations = _rows(record, "isoview-dask", "registration")
    assert len(registrations) == 2
    for row in registrations:
        assert row["wall_s"] > 0 and row["cpu_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["error_rms_um"] < 0.5  # the coarse transform alone is off by microns
    for step in ("average", "deconvolution"):
        (row,) = _rows(record, "isoview-dask", step)
        for field in ("wall_s", "cpu_s", "peak_rss_mb", "mvoxel_per_s", "mb_per_s_per_core", "r_ideal",
                      "bead_fwhm_ratio"):
            assert row[field] is not None and row[field] > 0, (step, field)
        assert 0 <= row["above_imports_mb"] < row["peak_rss_mb"]  # 0 when the imports' own peak is not passed
        assert len(row["bead_fwhm_vox"]) == 3 and row["threads"] == 1
    assert {r["method"] for r in _rows(record, "baseline", "baseline")} == {
        "ideal image (reference)", "VW00 upsampled", "mean of both, true motion"}


def test_deconvolution_beats_the_upsampled_view(record):
    (deconvolution,) = _rows(record, "isoview-dask", "deconvolution")
    (upsampled,) = [r for r in _rows(record, "baseline", "baseline") if r["method"] == "VW00 upsampled"]
    assert deconvolution["r_ideal"] > upsampled["r_ideal"] + 0.01
    # and it is far more isotropic: the upsampled view's beads are long along z
    assert deconvolution["bead_fwhm_ratio"] < 1.5 < upsampled["bead_fwhm_ratio"]
