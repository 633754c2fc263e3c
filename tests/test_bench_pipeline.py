"""benchmarks/pipeline.py's run row reads process_dataset's stage summaries as one stage."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from isoview_dask.pipeline.common import StageSummary


def _pipeline_module():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "pipeline.py"
    spec = importlib.util.spec_from_file_location("bench_pipeline", script)
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved_path
    return module


def test_whole_run_counts_raw_input_once_and_every_output():
    whole_run = _pipeline_module().WholeRun
    correct = StageSummary("correct", written=["v0", "v1", "v2", "v3"], input_bytes=8_000)
    fuse = StageSummary("fuse", written=["p01", "p23"], input_bytes=8_000)  # corrected data, read again
    run = whole_run({"correct": correct, "fuse": fuse})
    assert run.written == ["v0", "v1", "v2", "v3", "p01", "p23"]
    assert run.input_bytes == 8_000  # MB/s counts each raw byte once, as the run's progress bar does
    assert not run.failed
    fuse.failed["p23"] = "registration rejected"
    run = whole_run({"correct": correct, "fuse": fuse})
    assert run.failed == ["p23"]
    assert "p23" in run.report()
