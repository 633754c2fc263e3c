"""The job executor: dependencies, planning steps, admission by memory, and whole runs many views at once.

A run on a 2-worker cluster with many jobs in flight must write exactly what
the serial path (no client, one job at a time) writes: same files, same bytes,
same records apart from timings.
"""
import threading
import time

import pytest

from isoview_dask.cluster import client_context
from isoview_dask.pipeline import StageSummary, process_dataset
from isoview_dask.pipeline.executor import Job, JobResult, run_jobs
from isoview_dask.synthetic import generate_dataset

from test_cluster import assert_same_outputs as _same

#: Fusion fingerprints hash the paths of their input records: they differ between output folders.
FOLDER_DEPENDENT = ("fingerprint",)


def assert_same_outputs(got, want):
    _same(got, want, ignore=FOLDER_DEPENDENT)

FLAGS = dict(output_chunks=(8, 32, 32), output_shards=(16, 64, 64), fusion_search_px=10)


class Recorder:
    """Jobs that sleep a little and record what ran at the same time."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0
        self.order: list[str] = []

    def job(self, key, nbytes=0, deps=(), seconds=0.05, status="written"):
        def run():
            with self.lock:
                self.active += 1
                self.most = max(self.most, self.active)
                self.order.append(key)
            time.sleep(seconds)
            with self.lock:
                self.active -= 1
            return JobResult(status, key, input_bytes=nbytes, message="boom" if status == "failed" else "")
        return Job(key, "s", run, nbytes=nbytes, deps=tuple(deps))


@pytest.fixture(scope="module")
def threads_client():
    with client_context(n_workers=1, threads_per_worker=2, processes=False, memory_limit="1GiB",
                        quiet=True) as client:
        yield client


def test_serial_without_a_client_runs_in_plan_order_and_reports_in_plan_order():
    rec = Recorder()
    summary = StageSummary("s")
    jobs = [rec.job(f"j{i}", nbytes=10, seconds=0) for i in range(5)]
    jobs.insert(2, rec.job("bad", seconds=0, status="failed"))
    run_jobs(jobs, {"s": summary}, progress=False)
    assert rec.most == 1 and rec.order == [j.key for j in jobs]
    assert summary.written == [f"j{i}" for i in range(5)] and summary.failed == {"bad": "boom"}
    assert summary.input_bytes == 50


def test_memory_budget_bounds_jobs_in_flight_and_one_always_runs(threads_client):
    rec = Recorder()
    summary = StageSummary("s")
    run_jobs([rec.job(f"j{i}", nbytes=100, seconds=0.2) for i in range(6)], {"s": summary}, progress=False,
             max_jobs=6, memory_budget=250)
    assert rec.most == 2 and len(summary.written) == 6
    rec = Recorder()
    summary = StageSummary("s")
    # Every job is bigger than the budget: they still all run, one at a time.
    run_jobs([rec.job(f"j{i}", nbytes=1000, seconds=0.05) for i in range(4)], {"s": summary}, progress=False,
             max_jobs=6, memory_budget=250)
    assert rec.most == 1 and len(summary.written) == 4
    rec = Recorder()
    run_jobs([rec.job(f"j{i}", seconds=0.2) for i in range(6)], {"s": StageSummary("s")}, progress=False,
             max_jobs=3, memory_budget=1e12)
    assert rec.most == 3


def test_dependencies_wait_and_planning_steps_expand_in_place(threads_client):
    rec = Recorder()
    summaries = {"s": StageSummary("s")}
    planned = []

    def expand():
        assert {"a", "b"} <= set(rec.order)  # its dependencies have run
        return [rec.job("c1", seconds=0), rec.job("c2", seconds=0, deps=["c1"])]

    def plan():
        for job in (rec.job("a", seconds=0.3), rec.job("b", seconds=0.1),
                    Job("plan c", "s", deps=("a", "b"), expand=expand), rec.job("d", seconds=0)):
            planned.append(job.key)
            yield job

    run_jobs(plan(), summaries, progress=False, max_jobs=4)
    assert rec.order.index("c1") > rec.order.index("a") and rec.order.index("c2") > rec.order.index("c1")
    # Results in plan order, the planning step replaced by what it planned.
    assert summaries["s"].written == ["a", "b", "c1", "c2", "d"]


def test_the_plan_is_read_lazily(threads_client):
    """A long recording is never planned at once: the executor reads only a few jobs ahead."""
    rec = Recorder()
    read = []

    def plan():
        for i in range(200):
            read.append(i)
            yield rec.job(f"j{i}", seconds=0)
            if i == 5:
                assert len(read) - len(rec.order) <= 2 * 2 + 2  # at most a window ahead of what ran

    run_jobs(plan(), {"s": StageSummary("s")}, progress=False, max_jobs=2)
    assert len(rec.order) == 200


# --------------------------------------------------------------------------
# Whole runs: concurrent on a cluster == serial, bit for bit
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    root = tmp_path_factory.mktemp("executor-synth") / "data"
    return generate_dataset(root, preset="tiny", shape=(32, 96, 96), timepoints=3, seed=5)


@pytest.fixture(scope="module")
def serial_run(recording, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    summaries = process_dataset(recording.raw_dir, out, progress=False, **FLAGS)
    assert len(summaries["correct"].written) == 12 and len(summaries["fuse"].written) == 6
    assert not summaries["correct"].failed and not summaries["fuse"].failed
    return out


def test_concurrent_run_equals_the_serial_run(recording, serial_run, tmp_path):
    out = tmp_path / "out"
    with client_context(n_workers=2, threads_per_worker=1, memory_limit="1GiB", quiet=True):
        summaries = process_dataset(recording.raw_dir, out, progress=False, **FLAGS)
    assert len(summaries["correct"].written) == 12 and len(summaries["fuse"].written) == 6
    assert summaries["fuse"].written == sorted(summaries["fuse"].written)  # reported in plan order
    assert_same_outputs(out, serial_run)


def test_budget_below_one_volume_completes_with_every_view_queued(recording, serial_run, tmp_path):
    """Admission below one volume's bytes: one job at a time, all 18 jobs queued behind it, same outputs."""
    import dask
    out = tmp_path / "out"
    with client_context(n_workers=2, threads_per_worker=1, memory_limit="1GiB", quiet=True):
        with dask.config.set({"isoview-dask.max-jobs": 8}):
            from isoview_dask.pipeline import executor
            original = executor.MEMORY_FRACTION
            executor.MEMORY_FRACTION = 1e-9  # a budget of a few bytes
            try:
                summaries = process_dataset(recording.raw_dir, out, progress=False, **FLAGS)
            finally:
                executor.MEMORY_FRACTION = original
    assert len(summaries["correct"].written) == 12 and len(summaries["fuse"].written) == 6
    assert_same_outputs(out, serial_run)


def test_interrupted_concurrent_run_resumes(recording, serial_run, tmp_path):
    """A run stopped after some jobs (here: a view's correction raising KeyboardInterrupt) resumes on rerun."""
    from isoview_dask.pipeline import correct as correct_module
    out = tmp_path / "out"
    original = correct_module.correct_view
    calls = []

    def interrupted(view, *args, **kwargs):
        calls.append(view)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return original(view, *args, **kwargs)

    with client_context(n_workers=2, threads_per_worker=1, memory_limit="1GiB", quiet=True):
        correct_module.correct_view = interrupted
        try:
            with pytest.raises(KeyboardInterrupt):
                process_dataset(recording.raw_dir, out, progress=False, **FLAGS)
        finally:
            correct_module.correct_view = original
        again = process_dataset(recording.raw_dir, out, progress=False, **FLAGS)
    assert again["correct"].skipped and len(again["correct"].skipped) + len(again["correct"].written) == 12
    assert len(again["fuse"].written) + len(again["fuse"].skipped) == 6 and not again["fuse"].failed
    assert_same_outputs(out, serial_run)
