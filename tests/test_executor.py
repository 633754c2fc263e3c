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


#: An in-process worker measures the whole test process's memory against its limit: after the suite's
#: earlier files the pytest process can hold more than the 80 % of 1 GiB at which the worker pauses, and
#: every task sent to it (the module's dataset generation included) would then wait forever. The limit
#: stays (the job budget is computed from it); the worker's own memory management is off.
IN_PROCESS_MEMORY = {f"distributed.worker.memory.{key}": False for key in ("target", "spill", "pause", "terminate")}


@pytest.fixture(scope="module")
def threads_client():
    import dask
    with dask.config.set(IN_PROCESS_MEMORY), \
            client_context(n_workers=1, threads_per_worker=2, processes=False, memory_limit="1GiB",
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


def test_a_job_waiting_for_a_planning_step_waits_for_everything_it_planned(threads_client):
    """A step's key finishes with the last job it planned, through nested steps; a step planning nothing
    finishes at once."""
    rec = Recorder()
    summaries = {"s": StageSummary("s")}

    def inner():
        return [rec.job("n1", seconds=0.3)]

    def outer():
        return [rec.job("c1", seconds=0.2), Job("inner", "s", expand=inner), rec.job("c2", seconds=0.05)]

    def barrier():
        assert {"a", "c1", "c2", "n1"} <= set(rec.order) and rec.active == 0  # everything before has finished
        return [rec.job("after", seconds=0)]

    jobs = [rec.job("a", seconds=0.05), Job("outer", "s", deps=("a",), expand=outer),
            Job("empty", "s", expand=lambda: []),
            Job("barrier", "s", deps=("outer", "empty"), expand=barrier), rec.job("d", seconds=0)]
    run_jobs(jobs, summaries, progress=False, max_jobs=4)
    assert rec.order.index("after") > rec.order.index("n1")
    assert rec.order.index("d") < rec.order.index("n1")  # a job not waiting for the barrier runs before it
    assert summaries["s"].written == ["a", "c1", "n1", "c2", "after", "d"]


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


@pytest.mark.parametrize("whole_job_bytes", [None, 0], ids=["small-jobs-whole", "graphs-only"])
def test_concurrent_run_equals_the_serial_run(recording, serial_run, tmp_path, whole_job_bytes):
    """Both ways a job runs on a cluster write the serial run's bytes: whole, as one task per view or
    pair (small volumes, the default here), and as graphs of chunk tasks (large volumes; forced by
    ``isoview-dask.whole-job-bytes: 0``)."""
    import contextlib

    import dask
    from distributed import get_task_stream
    out = tmp_path / "out"
    setting = (dask.config.set({"isoview-dask.whole-job-bytes": whole_job_bytes})
               if whole_job_bytes is not None else contextlib.nullcontext())
    with client_context(n_workers=2, threads_per_worker=1, memory_limit="1GiB", quiet=True) as client:
        with setting, get_task_stream(client) as stream:
            summaries = process_dataset(recording.raw_dir, out, progress=False, **FLAGS)
    assert len(summaries["correct"].written) == 12 and len(summaries["fuse"].written) == 6
    assert summaries["fuse"].written == sorted(summaries["fuse"].written)  # reported in plan order
    prefixes = [str(t["key"]).split("-")[0] for t in stream.data]
    if whole_job_bytes is None:
        assert prefixes.count("correct_view") == 12 and prefixes.count("fuse_pair") == 6
        assert len(prefixes) == 18  # nothing else reached the scheduler
    else:
        assert "correct_view" not in prefixes and "fuse_pair" not in prefixes and len(prefixes) > 100
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
    """A run stopped after some jobs (here: the sixth view's correction raising KeyboardInterrupt in the
    client while others run on the workers, whole or as graphs) resumes on rerun."""
    from isoview_dask.pipeline import correct as correct_module
    out = tmp_path / "out"
    original = correct_module.job_work
    calls = []

    def interrupted(nbytes, function, view, *args, **kwargs):
        calls.append(view)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return original(nbytes, function, view, *args, **kwargs)

    with client_context(n_workers=2, threads_per_worker=1, memory_limit="1GiB", quiet=True):
        correct_module.job_work = interrupted
        try:
            with pytest.raises(KeyboardInterrupt):
                process_dataset(recording.raw_dir, out, progress=False, **FLAGS)
        finally:
            correct_module.job_work = original
        again = process_dataset(recording.raw_dir, out, progress=False, **FLAGS)
    assert again["correct"].skipped and len(again["correct"].skipped) + len(again["correct"].written) == 12
    assert len(again["fuse"].written) + len(again["fuse"].skipped) == 6 and not again["fuse"].failed
    assert_same_outputs(out, serial_run)


# --------------------------------------------------------------------------
# Small jobs as one task
# --------------------------------------------------------------------------


def _inside_a_task(values):
    """Runs on a worker: no client is visible, and graphs compute right here."""
    import dask.array as da

    from isoview_dask.cluster import compute, current_client
    assert current_client() is None
    return compute(da.from_array(values, chunks=2).sum(), progress=False)[0]


def test_corrections_and_fusions_tell_job_work_their_plane_bytes(recording, serial_run, tmp_path, monkeypatch):
    """The whole-job memory estimate of a correction or a fusion follows one raw plane of its inputs:
    each job hands job_work its raw bytes and the bytes of one plane of all its input volumes."""
    import isoview_dask.pipeline.correct as correct_module
    import isoview_dask.pipeline.fuse as fuse_module
    from isoview_dask.config import ProcessingConfig
    from isoview_dask.dataset import open_dataset
    from isoview_dask.pipeline.correct import correction_jobs, selected_views
    from isoview_dask.pipeline.fuse import find_corrected, fusion_jobs
    seen = []

    def recording_job_work(module):
        original = module.job_work

        def job_work(nbytes, function, *args, plane_bytes=None, **kwargs):
            seen.append((module.__name__.rsplit(".", 1)[-1], nbytes, plane_bytes))
            return original(nbytes, function, *args, plane_bytes=plane_bytes, **kwargs)
        monkeypatch.setattr(module, "job_work", job_work)

    recording_job_work(correct_module)
    recording_job_work(fuse_module)
    config = ProcessingConfig.from_flags(**FLAGS, output_overwrite=True)
    views = [v for v in selected_views(open_dataset(recording.raw_dir), config) if v.timepoint == 0]
    plane = 96 * 96 * 2  # the recording's frames, uint16
    assert [job.run().status for job in correction_jobs(views[:1], tmp_path, config)] == ["written"]
    corrected = find_corrected(serial_run, specimen=0, timepoint=0)
    assert [job.run().status for job in fusion_jobs(corrected, tmp_path, config)] == ["written", "written"]
    assert seen == [("correct", 32 * plane, plane), ("fuse", 64 * plane, 2 * plane), ("fuse", 64 * plane, 2 * plane)]


def _sum_on_the_cluster(values):
    import dask.array as da

    from isoview_dask.cluster import compute
    return compute(da.from_array(values, chunks=2).sum(), progress=False)[0]


def test_whole_job_limits_follow_the_config_and_each_worker_threads_share_of_memory(threads_client):
    import dask

    from isoview_dask.cluster import WHOLE_JOB_BYTES, whole_job_limits
    assert whole_job_limits(None) == (0, 0.0)
    # one worker of 1 GiB with two threads: each thread's whole job gets half
    assert whole_job_limits(threads_client) == (WHOLE_JOB_BYTES, 2**29)
    with dask.config.set({"isoview-dask.whole-job-bytes": 0}):
        assert whole_job_limits(threads_client) == (0, 0.0)
    with dask.config.set({"isoview-dask.whole-job-bytes": 2**20}):
        assert whole_job_limits(threads_client) == (2**20, 2**29)


def test_whole_job_memory_of_a_streaming_job_stops_growing_with_the_depth():
    from isoview_dask.cluster import (WHOLE_JOB_BASE_BYTES, WHOLE_JOB_MEMORY_FACTOR, WHOLE_JOB_STREAM_FACTOR,
                                      WHOLE_JOB_STREAM_PLANES, whole_job_memory)
    plane = 2048 * 2048 * 2  # one full frame of uint16
    assert whole_job_memory(10 * 2**20) == WHOLE_JOB_MEMORY_FACTOR * 10 * 2**20  # unknown: proportional
    assert whole_job_memory(10 * 2**20, 0) == whole_job_memory(10 * 2**20)
    assert whole_job_memory(4 * plane, plane) == WHOLE_JOB_MEMORY_FACTOR * 4 * plane  # small: as before
    shallow = whole_job_memory(16 * plane, plane)
    assert shallow == WHOLE_JOB_BASE_BYTES + WHOLE_JOB_STREAM_FACTOR * 16 * plane
    deep = whole_job_memory(WHOLE_JOB_STREAM_PLANES * plane, plane)
    assert shallow < deep == whole_job_memory(4096 * plane, plane)  # 64 or 4096 planes: the same slabs
    # a 2048 x 2048 x 256 view's correction and a pair's fusion fit a 4 GiB single-threaded worker
    assert whole_job_memory(256 * plane, plane) <= 4 * 2**30
    assert whole_job_memory(512 * plane, 2 * plane) <= 4 * 2**30
    assert whole_job_memory(256 * plane) > 4 * 2**30  # which the proportional estimate would not allow


def test_run_as_task_is_one_task_whose_graphs_run_inside_it(threads_client):
    import numpy as np
    from distributed import get_task_stream

    from isoview_dask.cluster import run_as_task
    from isoview_dask.pipeline.executor import job_work
    values = np.arange(10)
    with get_task_stream(threads_client) as stream:
        assert run_as_task(_inside_a_task, values) == 45
    assert [str(t["key"]).split("-")[0] for t in stream.data] == ["_inside_a_task"]
    # job_work outside run_jobs (no limit set): the graphs go to the cluster, chunk by chunk.
    with get_task_stream(threads_client) as stream:
        assert job_work(values.nbytes, _sum_on_the_cluster, values) == 45
    assert len(stream.data) > 1


def _fail_once_more(log_path):
    with open(log_path, "a") as fh:
        fh.write("called\n")
    raise ValueError("bad input")


def test_run_as_task_retries_like_a_task_then_raises_the_jobs_own_error(threads_client, tmp_path):
    import dask

    from isoview_dask.cluster import run_as_task
    calls = tmp_path / "calls"
    with dask.config.set({"isoview-dask.retries": 1}):
        with pytest.raises(ValueError, match="bad input"):
            run_as_task(_fail_once_more, calls)
    assert calls.read_text().count("called") == 2


def _where_it_ran():
    from isoview_dask.cluster import current_client
    return "whole" if current_client() is None else "graphs"


def test_large_jobs_run_whole_only_when_enough_jobs_keep_every_worker_busy(threads_client):
    from isoview_dask.pipeline.executor import WHOLE_JOB_ALWAYS_BYTES, job_work
    seen = {}

    def job(key, nbytes, plane_bytes=2**20):
        def run():
            seen[key] = job_work(nbytes, _where_it_ran, plane_bytes=plane_bytes)
            return JobResult("written", key)
        return Job(key, "s", run, nbytes=nbytes)

    # 65 MiB streamed in 1 MiB planes: estimated 448 MiB, within a thread's half of the 1 GiB worker
    large = WHOLE_JOB_ALWAYS_BYTES + 2**20
    run_jobs([job("alone", large)], {"s": StageSummary("s")}, progress=False)
    run_jobs([job("small alone", 2**20)], {"s": StageSummary("s")}, progress=False)
    run_jobs([job(f"many{i}", large) for i in range(4)], {"s": StageSummary("s")}, progress=False, max_jobs=4)
    run_jobs([job(f"unknown{i}", large, plane_bytes=None) for i in range(4)], {"s": StageSummary("s")},
             progress=False, max_jobs=4)
    assert seen["alone"] == "graphs" and seen["small alone"] == "whole"
    assert seen["many0"] == seen["many1"] == "whole"  # 4 jobs for 2 worker threads
    # without plane sizes the estimate is 8 x 65 MiB: more than a thread's 512 MiB
    assert seen["unknown0"] == seen["unknown1"] == "graphs"
    assert job_work(2**20, _where_it_ran) == "graphs"  # outside a run: never whole


def _log_and_return_level():
    import logging
    logging.getLogger("isoview_dask.pipeline").info("inside the task")
    return logging.getLogger("isoview_dask").getEffectiveLevel()


def test_run_as_task_logs_at_the_clients_level(threads_client, caplog):
    import logging

    from isoview_dask.cluster import run_as_task
    with caplog.at_level(logging.INFO, logger="isoview_dask"):
        assert run_as_task(_log_and_return_level) == logging.INFO
    assert "inside the task" in caplog.text


def _scheduler_seen_twice(seconds):
    import time

    import dask
    first = dask.config.get("scheduler", None)
    time.sleep(seconds)
    return first, dask.config.get("scheduler", None)


def test_whole_job_tasks_in_one_worker_keep_their_scheduler_while_others_end(threads_client):
    """Two whole-job tasks in one worker's two threads: the short one ending must not take the long
    one's synchronous scheduler away (dask's config is process-wide)."""
    from concurrent.futures import ThreadPoolExecutor

    import dask

    from isoview_dask.cluster import run_as_task
    import time
    with ThreadPoolExecutor(2) as pool:
        short = pool.submit(run_as_task, _scheduler_seen_twice, 0.3)
        time.sleep(0.1)
        long = pool.submit(run_as_task, _scheduler_seen_twice, 1.0)
        assert short.result() == ("synchronous", "synchronous")
        assert long.result() == ("synchronous", "synchronous")
    assert dask.config.get("scheduler", None) != "synchronous"  # restored once both ended


def test_the_progress_rate_counts_the_raw_input_once(capsys):
    """In a whole run the fusions read what the corrections wrote: the bar's "MB/s raw" counts only the
    stages that read raw data (here 2 x 1 MB in about 0.2 s, not the 2 x 1 GB the fusions report)."""
    import re

    def job(key, stage, nbytes, deps=()):
        def run():
            time.sleep(0.05)
            return JobResult("written", key, input_bytes=nbytes)
        return Job(key, stage, run, nbytes=nbytes, deps=deps)

    jobs = [job("c0", "correct", 10**6), job("c1", "correct", 10**6),
            job("f0", "fuse", 10**9, deps=("c0", "c1")), job("f1", "fuse", 10**9, deps=("c0", "c1"))]
    summaries = {"correct": StageSummary("correct"), "fuse": StageSummary("fuse")}
    run_jobs(jobs, summaries, progress=True, rate_stages=("correct",))
    rates = [float(v) for v in re.findall(r"([\d.]+) MB/s raw", capsys.readouterr().err)]
    assert rates and 0 < rates[-1] < 100, rates
    assert summaries["fuse"].input_bytes == 2 * 10**9  # the stage summaries keep every stage's input
    run_jobs([job("g0", "fuse", 10**9)], {"fuse": StageSummary("fuse")}, progress=True)
    assert re.search(r"[\d.]+ MB/s in", capsys.readouterr().err)


@pytest.mark.parametrize("estimate", [3, 9, None])
def test_the_progress_total_ends_exact_whatever_the_estimate(capsys, estimate):
    """The bar's total starts from the caller's estimate (or what is read), grows when more jobs are known,
    and is exact once the plan is read and every planning step has expanded: the last line reads 7/7."""
    import re

    def job(key, stage="s", deps=()):
        return Job(key, stage, lambda: JobResult("written", key), deps=deps)

    def plan():
        yield from (job("a"), job("b"))
        yield Job("step", "s", deps=("a", "b"), expand=lambda: [job(f"x{i}") for i in range(4)])
        yield job("c")

    run_jobs(plan(), {"s": StageSummary("s")}, progress=True, total=estimate)
    counts = re.findall(r"(\d+)/(\d+) \[", capsys.readouterr().err.replace("\r", "\n"))
    assert counts[-1] == ("7", "7"), counts
