"""The compression study (isoview_dask.bench) on tiny volumes: outputs, ratios, verification, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isoview_dask import bench
from isoview_dask.cli import main as cli_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = "synthetic:8x128x128"


def _rows(record):
    return {row["key"]: row for row in record["rows"]}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One small study shared by the assertions below: 1 run, threaded scheduler."""
    out = tmp_path_factory.mktemp("study")
    pytest.importorskip("matplotlib")
    record = bench.run_compression_study(
        TINY, out, codecs=["klb-pyklb", "klb-dask", "tiff", "blosc-zstd-5", "gzip-6", "none"], repeats=1,
        plane_reads=2, workers=0, log=lambda msg: None)
    return out, record


def test_study_writes_json_markdown_and_plots(study):
    out, record = study
    for name in ("compression.json", "compression.md", "compression-ratio-vs-write.png",
                 "compression-ratio-vs-read.png"):
        assert (out / name).is_file(), name
    for name in ("compression-ratio-vs-write.png", "compression-ratio-vs-read.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    saved = json.loads((out / "compression.json").read_text())
    assert saved["failed"] == [] and len(saved["rows"]) == len(record["rows"]) == 9
    assert saved["input"]["shape"] == [8, 128, 128]
    md = (out / "compression.md").read_text()
    assert "| format" in md and "write GB/s" in md and "plane read ms" in md
    assert "KLB (pyklb, in-process)" in md and "| FAILED" not in md
    # every output was removed after its row, only the cached input stays
    assert not any((out / "work" / "outputs").iterdir())


def test_study_ratios_and_numbers(study):
    _out, record = study
    rows = _rows(record)
    for key, row in rows.items():
        assert row["verified"], (key, row.get("error"))
        assert row["n_runs"] == 1
        assert row["write_gb_per_s"] > 0 and row["read_gb_per_s"] > 0 and row["plane_read_ms"] > 0
        assert row["size_bytes"] > 0
    for key in ("klb-pyklb", "klb-dask", "zarr-blosc-zstd-5-sharded", "zarr-blosc-zstd-5-unsharded",
                "zarr-gzip-6-sharded", "zarr-gzip-6-unsharded"):
        assert rows[key]["ratio"] > 1.5, key  # noisy camera data still compresses well over 1.5x
    for key in ("zarr-none-sharded", "zarr-none-unsharded", "tiff"):
        assert rows[key]["ratio"] == pytest.approx(1.0, abs=0.03), key  # only headers and metadata on top


def test_build_cases_default_and_selection():
    cases = bench.build_cases()
    keys = [c.key for c in cases]
    assert keys[:3] == ["klb-pyklb", "klb-dask", "tiff"]
    assert len(cases) == 3 + 2 * len(bench.ZARR_CODECS) and len(set(keys)) == len(keys)
    assert [c.key for c in bench.build_cases("lz4hc:9,none", sharded=False)] == [
        "zarr-blosc-lz4hc-9-unsharded", "zarr-none-unsharded"]
    two = bench.build_cases(["zstd-3"], sharded=True, chunks=[(8, 64, 64), (4, 32, 32)])
    assert [c.chunks for c in two] == [(8, 64, 64), (4, 32, 32)]
    with pytest.raises(bench.StudyError):
        bench.build_cases(["no-such-codec"])


def _flip_first_voxel(array):
    data = np.array(array)  # computes a dask array
    data[0, 0, 0] ^= 1
    return data


def test_corrupt_zarr_write_is_not_counted(tmp_path, monkeypatch):
    """A writer that changes one voxel: the study must report a verification failure, not numbers."""
    from isoview_dask.io import zarr as zarr_io

    original = zarr_io.write_zarr

    def corrupting(array, path, **kwargs):
        return original(_flip_first_voxel(array), path, **kwargs)

    monkeypatch.setattr(zarr_io, "write_zarr", corrupting)
    record = bench.run_compression_study(TINY, tmp_path / "out", codecs=["tiff", "blosc-lz4-3", "none"],
                                         repeats=2, plane_reads=1, workers=0, plots=False, log=lambda m: None)
    rows = _rows(record)
    assert rows["tiff"]["verified"]  # the untouched writer still counts
    bad = [k for k in rows if k.startswith("zarr-")]
    assert sorted(record["failed"]) == sorted(bad) and len(bad) == 4
    for key in bad:
        row = rows[key]
        assert not row["verified"] and "verification failed" in row["error"]
        assert "chunk" in row["error"]
        assert "ratio" not in row and "write_gb_per_s" not in row and row["n_runs"] == 1
    md = (tmp_path / "out" / "compression.md").read_text()
    assert md.count("| FAILED") == 4


def test_corrupt_pyklb_write_is_not_counted(tmp_path, monkeypatch):
    """The in-process pyklb row is verified as well (whole array compared with the input)."""
    from isoview_dask.io import klb as klb_io

    original = klb_io.write_klb

    def corrupting(array, path, **kwargs):
        return original(_flip_first_voxel(array), path, **kwargs)

    monkeypatch.setattr(klb_io, "write_klb", corrupting)
    record = bench.run_compression_study(TINY, tmp_path / "out", codecs=["klb"], repeats=1, plane_reads=1,
                                         workers=0, plots=False, log=lambda m: None)
    rows = _rows(record)
    assert sorted(record["failed"]) == ["klb-dask", "klb-pyklb"]
    assert "differ" in rows["klb-pyklb"]["error"] and "differ" in rows["klb-dask"]["error"]


def test_stack_input_needs_frame(tmp_path):
    data = (np.arange(4 * 32 * 48, dtype=np.uint16) % 97).reshape(4, 32, 48)
    stack = tmp_path / "volume.stack"
    data.tofile(stack)
    with pytest.raises(bench.StudyError, match="--frame"):
        bench.prepare_input(stack, tmp_path / "work")
    inp = bench.prepare_input(stack, tmp_path / "work", frame=(32, 48))
    assert inp.shape == (4, 32, 48) and inp.stack_path == stack
    np.testing.assert_array_equal(inp.plane(3), data[3])


def test_recording_inputs(tmp_path):
    """A recording folder (camera chosen) and a bare .stack inside a recording (frame from its XML)."""
    from isoview_dask.synthetic import generate_dataset

    truth = generate_dataset(tmp_path / "rec", preset="tiny")
    inp = bench.prepare_input(truth.raw_dir, tmp_path / "work", camera=2)
    assert inp.kind == "recording" and inp.shape == tuple(truth.shape)
    assert inp.stack_path == truth.stack_path(2) and inp.details["view"]["camera"] == 2
    stack = bench.prepare_input(truth.stack_path(1), tmp_path / "work")
    assert stack.kind == "stack" and stack.shape == tuple(truth.shape)
    np.testing.assert_array_equal(stack.plane(5), truth.raw(1)[5])
    with pytest.raises(bench.StudyError, match="camera 7"):
        bench.prepare_input(truth.raw_dir, tmp_path / "work", camera=7)


def test_tiff_input_is_copied_to_a_raw_file(tmp_path):
    from isoview_dask.io.tiff import write_tiff

    data = (np.arange(6 * 32 * 48, dtype=np.uint16) * 7).reshape(6, 32, 48)
    write_tiff(data, tmp_path / "volume.tif")
    inp = bench.prepare_input(tmp_path / "volume.tif", tmp_path / "work")
    assert inp.kind == "tif" and inp.shape == (6, 32, 48) and inp.stack_path.suffix == ".stack"
    np.testing.assert_array_equal(inp.open().compute(), data)


def test_cli_bench_compression_on_one_worker(tmp_path, capsys):
    """The command line, on a real local cluster of one worker."""
    out = tmp_path / "cli"
    status = cli_main(["bench", "compression", TINY, "--codecs", "blosc-lz4-3,none", "--shards", "--repeats", "1",
                       "--plane-reads", "1", "--workers", "1", "--out", str(out), "--no-plots"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "| zarr" in printed and "blosc-lz4" in printed
    record = json.loads((out / "compression.json").read_text())
    assert [r["key"] for r in record["rows"]] == ["zarr-blosc-lz4-3-sharded", "zarr-none-sharded"]
    assert record["settings"]["workers"] == 1 and record["failed"] == []


def test_cli_bad_input_is_a_user_error(tmp_path, capsys):
    status = cli_main(["bench", "compression", str(tmp_path / "missing.klb"), "--out", str(tmp_path / "o"),
                       "--workers", "0"])
    assert status == 2
    assert "does not exist" in capsys.readouterr().err


def test_time_budget_limits_repeats_cheapest_first(tmp_path):
    """Every configuration runs once whatever the budget; repeats stop when the budget would be passed
    (the rows and the notes say so); with no budget every configuration gets all its runs."""
    codecs = ["tiff", "blosc-lz4-3", "none"]
    tight = bench.run_compression_study(TINY, tmp_path / "tight", codecs=codecs, repeats=3, plane_reads=1,
                                        workers=0, plots=False, budget_seconds=1e-6, log=lambda m: None)
    assert all(r["verified"] and r["n_runs"] == 1 for r in tight["rows"])
    assert tight["repeats_cut_by_budget"] == sorted(r["key"] for r in tight["rows"])
    assert "budget" in (tmp_path / "tight" / "compression.md").read_text()
    free = bench.run_compression_study(TINY, tmp_path / "free", codecs=codecs, repeats=3, plane_reads=1,
                                       workers=0, plots=False, budget_seconds=0, log=lambda m: None)
    assert all(r["verified"] and r["n_runs"] == 3 for r in free["rows"])
    assert free["repeats_cut_by_budget"] == []


def test_slow_configurations_are_measured_on_the_first_planes(tmp_path, monkeypatch):
    """A configuration predicted too slow for the whole volume is written, read and verified on fewer
    planes (whole inner-chunk slabs spread through the volume); the row, the table and the notes say how
    many."""
    monkeypatch.setattr(bench, "_probe_seconds_per_byte",
                        lambda case, sample, workdir: 1e-3 if case.codec_text.startswith("gzip") else 0.0)
    record = bench.run_compression_study("synthetic:32x128x128", tmp_path / "out", codecs=["gzip-6", "blosc-lz4-3"],
                                         sharded=True, repeats=1, plane_reads=1, workers=0, plots=False,
                                         subset_seconds=1e-3 * (2 * 32 * 128 * 128) / 2,  # half the prediction
                                         log=lambda m: None)
    rows = _rows(record)
    depth = record["input"]["shape"][0]
    slow, fast = rows["zarr-gzip-6-sharded"], rows["zarr-blosc-lz4-3-sharded"]
    assert slow["verified"] and fast["verified"]
    assert fast["planes_measured"] == depth
    assert slow["planes_measured"] == 16  # half the planes: two 8-plane slabs, each in the middle of its half
    source = np.fromfile(record["input"]["stack_path"], dtype="<u2").reshape(record["input"]["shape"])
    subset = sorted((tmp_path / "out" / "work").glob("*-2x8planes.stack"))
    assert len(subset) == 1
    np.testing.assert_array_equal(np.fromfile(subset[0], dtype="<u2").reshape(16, 128, 128),
                                  np.concatenate([source[8:16], source[24:32]]))
    assert slow["raw_bytes_measured"] == slow["planes_measured"] * record["input"]["raw_bytes"] // depth
    md = (tmp_path / "out" / "compression.md").read_text()
    assert "planes" in md.splitlines()[2]  # the table's header
    assert f"zarr-gzip-6-sharded ({slow['planes_measured']})" in md
