"""Run records (isoview_dask.provenance): what every stage records, and reruns that reproduce its
outputs bit for bit in a new folder, from the API and from ``isoview-dask rerun``."""

import datetime
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from isoview_dask.cli import main
from isoview_dask.config import ProcessingConfig
from isoview_dask.errors import IsoviewError
from isoview_dask.io import open_volume
from isoview_dask.pipeline import convert_dataset, correct_dataset, fuse_dataset, output_path
from isoview_dask.pipeline.timelapse import process_timelapse
from isoview_dask.provenance import (DEPENDENCIES, INDEX_NAME, RUNS_DIR, _append_line, list_runs, load_record,
                                     rerun)
from isoview_dask.synthetic import generate_dataset

#: JSON entries that differ between two runs by nature: durations and speeds, and a hash of the input
#: records' paths (fusion); every other number must match exactly.
VOLATILE = {"timings", "mb_per_s", "fingerprint", "seconds"}
CONFIG = ProcessingConfig(input={"cameras": [0, 1]}, fusion={"camera_pairs": [[0, 1]], "diagnostics": False})


def _normalized(value, roots):
    if isinstance(value, dict):
        return {k: _normalized(v, roots) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normalized(v, roots) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(str(root), "<root>")
        return value
    return value


def assert_identical_outputs(got: Path, want: Path, roots=(), tiffs=True):
    """Same files (run records aside); zarr, TIFF and every other file byte-identical, arrays equal;
    JSON equal up to timings and paths."""
    def files(root):
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and RUNS_DIR not in p.parts)
    listed = files(got)
    assert listed == files(want)
    assert any(".zarr" in str(p) for p in listed) and (any(p.suffix == ".tif" for p in listed) or not tiffs)
    roots = (*roots, got, want)
    for rel in listed:
        a, b = got / rel, want / rel
        if rel.suffix == ".json" and ".zarr" not in str(rel):
            assert _normalized(json.loads(a.read_text()), roots) == _normalized(json.loads(b.read_text()), roots), rel
        else:
            assert a.read_bytes() == b.read_bytes(), f"{rel} differs"
    for rel in sorted({Path(*p.parts[:p.parts.index(next(x for x in p.parts if x.endswith(".zarr"))) + 1])
                       for p in listed if ".zarr" in str(p)}):
        np.testing.assert_array_equal(open_volume(got / rel).compute(), open_volume(want / rel).compute())


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    root = tmp_path_factory.mktemp("provenance")
    truth = generate_dataset(root / "syn", preset="tiny", seed=11, cameras=(0, 1))
    out = root / "A"
    corrected = correct_dataset(truth.raw_dir, out, CONFIG, progress=False)
    fused = fuse_dataset(out, out, CONFIG, progress=False)
    assert len(corrected.written) == 2 and len(fused.written) == 1
    return truth, out


def _records(out):
    return [json.loads(p.read_text()) for p in list_runs(out)]


def test_every_stage_appends_a_complete_record(recording):
    truth, out = recording
    correct, fuse = _records(out)[:2]
    assert [correct["stage"], fuse["stage"]] == ["correct", "fuse"]
    assert correct["config"] == fuse["config"] == CONFIG.to_dict()
    assert ProcessingConfig.from_dict(correct["config"]) == CONFIG
    assert correct["arguments"] == {"source": str(truth.raw_dir.resolve()), "out": str(out.resolve())}
    assert fuse["arguments"] == {"source": str(out.resolve()), "out": str(out.resolve())}
    assert set(DEPENDENCIES) | {"python"} <= set(correct["versions"])
    for name in ("isoview-dask", "numpy", "dask", "distributed", "zarr", "numcodecs", "scipy", "scikit-image",
                 "tifffile", "pyklb"):
        assert correct["versions"][name], name
    # inputs: every raw file used (both cameras' stacks, dark frames, XML), with size and mtime
    names = {Path(i["path"]).name for i in correct["inputs"]}
    assert {"SPC00_TM00000_ANG000_CM0_CHN00_PH0.stack", "SPC00_TM00000_ANG000_CM1_CHN00_PH0.stack",
            "Background_0.tif", "Background_1.tif", "ch0.xml"} == names
    for entry in correct["inputs"]:
        st = Path(entry["path"]).stat()
        assert (entry["size"], entry["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    # the fusion's inputs are the correction records it read, with their content fingerprints
    assert sorted(Path(i["path"]).name for i in fuse["inputs"]) == [
        "SPM00_TM000000_CM00_CHN00.correction.json", "SPM00_TM000000_CM01_CHN00.correction.json"]
    assert all(len(i["fingerprint"]) == 16 for i in fuse["inputs"])
    assert correct["summary"]["stage"] == "correct" and correct["totals"] == {"written": 2, "skipped": 0, "failed": 0}
    assert correct["summary"]["input_bytes"] > 0 and correct["summary"]["mb_per_s"] > 0
    started, finished = (datetime.datetime.fromisoformat(correct[k].replace("Z", "+00:00"))
                         for k in ("started", "finished"))
    assert started <= finished and (finished - started).total_seconds() == pytest.approx(correct["seconds"], abs=1e-3)
    assert correct["host"] and correct["python"] and correct["platform"]
    assert correct["command_line"] is None and correct["rerun_of"] is None and correct["reproducible"]
    assert correct["scheduler"]["kind"] == "local"
    index = [json.loads(line) for line in (out / RUNS_DIR / INDEX_NAME).read_text().splitlines()]
    assert [i["record"] for i in index[:2]] == [p.name for p in list_runs(out)[:2]]


def test_rerun_into_a_new_folder_is_bit_identical(recording, tmp_path, capsys):
    truth, out = recording
    new = tmp_path / "B"
    # the correction from the API, the fusion from the command line (reading the new corrected volumes)
    done = rerun(out, index=0, out=new, progress=False)
    assert done.stage == "correct" and len(done.summaries["correct"].written) == 2 and not done.changed_inputs
    record = list_runs(out)[1]
    assert main(["rerun", str(record), "--out", str(new), "--input", str(new), "--no-cluster"]) == 0
    assert "fuse: 1 written" in capsys.readouterr().out
    assert_identical_outputs(new, out)
    records = _records(new)
    assert [r["stage"] for r in records] == ["correct", "fuse"]
    assert records[0]["rerun_of"]["record"] == str(list_runs(out)[0])
    assert records[1]["command_line"][:2] == ["isoview-dask", "rerun"]
    assert records[1]["config"] == CONFIG.to_dict()


def test_rerun_into_the_recorded_folder_resumes(recording, tmp_path):
    truth, out = recording
    copy = tmp_path / "moved"
    shutil.copytree(out, copy)  # a moved output tree: its records rerun into it, not into the original
    before = list_runs(copy)
    done = rerun(copy, index=0, progress=False)
    assert done.out == copy.resolve() and len(done.summaries["correct"].skipped) == 2
    assert list_runs(copy) == before  # a run that found everything complete leaves no record
    done = rerun(copy, index=0, overwrite=True, progress=False)
    assert len(done.summaries["correct"].written) == 2
    assert len(list_runs(copy)) == len(before) + 1 and len(list_runs(out)) == len(before)
    assert_identical_outputs(copy, out)


def test_changed_inputs_are_reported_and_strict_refuses(recording, tmp_path):
    truth, out = recording
    data, path = load_record(out, 0)
    data["inputs"][0]["mtime_ns"] -= 10**9  # as if the raw file had been touched since
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    with pytest.raises(IsoviewError, match="changed since the recorded run"):
        rerun(edited, out=tmp_path / "C", strict=True, progress=False)
    assert not (tmp_path / "C").exists()
    done = rerun(edited, out=tmp_path / "C", progress=False, overwrite=True)
    assert done.changed_inputs == [data["inputs"][0]["path"]]
    with pytest.raises(IsoviewError, match="run index 7 out of range"):
        load_record(out, 7)
    with pytest.raises(IsoviewError, match="not a run record"):
        load_record(output_path(out, 0, 0, 0, 0, "correction", "json"))


def test_fixed_parameters_make_a_run_not_reproducible(recording, tmp_path):
    truth, out = recording
    fixed = {"sampling_offset_yx_px": truth.offset((0, 1)), "sampling_rotation_deg": 0.0, "transition_plane": 7.0}
    fuse_dataset(out, tmp_path, CONFIG, progress=False, fixed_parameters=lambda *key: fixed)
    record = _records(tmp_path)[0]
    assert record["reproducible"] is False and "fixed_parameters" in record["not_reproducible_because"]
    with pytest.raises(IsoviewError, match="cannot be redone"):
        rerun(tmp_path, strict=True, progress=False)


def test_a_timelapse_leaves_one_record_and_reruns_identically(tmp_path):
    truth = generate_dataset(tmp_path / "syn", preset="tiny", seed=5, cameras=(0, 1), timepoints=2)
    config = ProcessingConfig(fusion={"camera_pairs": [[0, 1]], "diagnostics": False,
                                      "generate_lookup_table": False})  # no plot: faster
    process_timelapse(truth.raw_dir, tmp_path / "A", config, progress=False)
    records = _records(tmp_path / "A")
    assert [r["stage"] for r in records] == ["timelapse"]  # its correction, estimates and fusion are one plan
    assert set(records[0]["summary"]) == {"correct", "estimate", "smooth", "fuse"}
    assert records[0]["totals"] == {"written": 4 + 2 + 1 + 2, "skipped": 0, "failed": 0}
    assert main(["rerun", str(tmp_path / "A"), "--out", str(tmp_path / "B"), "--no-cluster"]) == 0
    assert_identical_outputs(tmp_path / "B", tmp_path / "A")


def test_convert_records_its_arguments_and_reruns(tmp_path):
    truth = generate_dataset(tmp_path / "syn", preset="tiny", seed=2, cameras=(2,))
    convert_dataset(truth.raw_dir, tmp_path / "A", codec="zstd", level=5, chunks=(4, 32, 32), shards=(8, 64, 64),
                    cameras=[2], progress=False)
    record = _records(tmp_path / "A")[0]
    assert record["config"] is None and record["arguments"]["codec"] == "zstd"
    assert record["arguments"]["chunks"] == [4, 32, 32] and record["arguments"]["cameras"] == [2]
    rerun(tmp_path / "A", out=tmp_path / "B", progress=False)
    assert_identical_outputs(tmp_path / "B", tmp_path / "A", roots=(truth.raw_dir,), tiffs=False)


def test_cli_run_records_its_command_line(tmp_path):
    truth = generate_dataset(tmp_path / "syn", preset="tiny", seed=3, cameras=(0,))
    argv = ["correct", str(truth.raw_dir), "--out", str(tmp_path / "o"), "--correction-segment-threshold", "0.3",
            "--no-cluster"]
    assert main(argv) == 0
    record = _records(tmp_path / "o")[0]
    assert record["command_line"] == ["isoview-dask", *argv]
    assert record["config"]["correction"]["segment_threshold"] == 0.3
    assert main(["rerun", str(tmp_path / "o"), "--list"]) == 0


def test_index_lines_are_appended_whole_under_concurrency(tmp_path):
    path = tmp_path / INDEX_NAME
    lines = [json.dumps({"record": f"r{i}", "pad": "x" * 5000}) + "\n" for i in range(64)]
    threads = [threading.Thread(target=lambda chunk=lines[i::8]: [_append_line(path, s) for s in chunk])
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [json.loads(line)["record"] for line in path.read_text().splitlines()]
    assert sorted(got) == sorted(f"r{i}" for i in range(64))
    assert not [p for p in tmp_path.iterdir() if p.name != INDEX_NAME]
    assert os.stat(path).st_size == sum(len(s) for s in lines)
