"""Many views in flight at once: the jobs of a run and the executor that runs them.

A stage (or a whole ``run``) is planned as a stream of :class:`Job` s: one
per camera-view correction, pair estimation or pair fusion, each naming the
jobs it waits for (a fusion waits for its cameras' corrections). The
planner is a generator, so a 1000-timepoint recording is never planned, nor
held, at once: :func:`run_jobs` pulls a few jobs ahead of what runs.

Each job runs in a client-side thread and submits its graphs to the cluster
through :func:`isoview_dask.cluster.compute` (``Client.compute``), with a
priority: earlier jobs above later ones, estimation reductions above writes
(:data:`~isoview_dask.cluster.ESTIMATE_PRIORITY`). So while view k writes its
shards, the statistics of views k+1, k+2... run in the gaps, and the
scheduler always holds runnable tasks from several views. Fault tolerance
(retries, a dead worker's tasks rerun) stays distributed's.

A job that fits a worker (its raw bytes and estimated memory within
:func:`~isoview_dask.cluster.whole_job_limits`) runs whole as one task
(:func:`job_work`): a worker computes its graphs itself, so the scheduler
and the client handle one task per view instead of dozens, and no chunk
moves between workers. Larger jobs submit their graphs, chunk by chunk.

Admission: a job enters only when the raw bytes of the jobs in flight plus
its own fit the memory budget (:data:`MEMORY_FRACTION` of the workers'
summed memory limits), and at most ``max_jobs`` run at once. One job is
always admitted, so a volume larger than the budget still runs (alone; its
graph streams chunk by chunk). Without a distributed client, jobs run one
at a time in this thread: the serial path, which gives the same outputs bit
for bit.

One progress bar covers the whole run: jobs done of planned, MB/s of raw
input (each raw byte once: a run's fusions re-read corrected data, which does
not count), time left.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import dask

from ..cluster import (current_client, job_priority, resume_computations, run_as_task, stop_computations,
                       whole_job_limits, whole_job_memory)
from .common import StageSummary

log = logging.getLogger(__name__)

#: Fraction of the workers' summed memory limits that the raw volumes of jobs in flight may take.
MEMORY_FRACTION = 0.5
#: Jobs in flight per worker thread when nothing else limits them (dask config ``isoview-dask.jobs-per-thread``).
JOBS_PER_THREAD = 3
#: dask config key: jobs in flight per worker thread (overrides :data:`JOBS_PER_THREAD`).
JOBS_PER_THREAD_CONFIG_KEY = "isoview-dask.jobs-per-thread"
#: dask config key: the most jobs in flight at once (overrides the default above).
MAX_JOBS_CONFIG_KEY = "isoview-dask.max-jobs"
#: After an interruption, seconds the running jobs get to finish before they are cancelled.
INTERRUPT_GRACE_S = 10.0
#: With fewer jobs waiting or running than worker threads, only jobs up to this many raw bytes run
#: whole (larger ones spread their chunks over the idle workers instead).
WHOLE_JOB_ALWAYS_BYTES = 64 * 2**20
#: Spacing of the priorities of consecutive jobs (each job's graphs may add small offsets below it).
PRIORITY_STEP = 10


_job = threading.local()


def job_work(nbytes: int, function: Callable, *args, label: str | None = None, plane_bytes: int | None = None,
             **kwargs):
    """A job's work, ``function(*args, **kwargs)``: whole as one cluster task when it fits a worker.

    Inside :func:`run_jobs`, a job reading at most the whole-job limit of raw
    bytes (``nbytes``; :func:`~isoview_dask.cluster.whole_job_limits`) whose
    estimated memory (:func:`~isoview_dask.cluster.whole_job_memory` of
    ``nbytes`` and ``plane_bytes``, the bytes of one plane of all its inputs
    when its graphs stream plane slabs) fits a worker thread's share of the
    memory limit runs as one task (:func:`~isoview_dask.cluster.run_as_task`):
    its graph's tasks would cost the client, the scheduler and the transfers
    between workers more than the work.
    While fewer jobs wait or run than the cluster has worker threads, only
    jobs up to :data:`WHOLE_JOB_ALWAYS_BYTES` run whole, so that the chunks
    of a few larger views still spread over every worker. Larger jobs (and any job outside a run, or without a client) run here,
    submitting their graphs chunk by chunk. The outputs are the same bit for bit.
    """
    limit, memory = getattr(_job, "whole_limits", (0, 0.0))
    if getattr(_job, "few_jobs", False):
        limit = min(limit, WHOLE_JOB_ALWAYS_BYTES)
    if 0 < nbytes <= limit and whole_job_memory(nbytes, plane_bytes) <= memory:
        return run_as_task(function, *args, label=label, **kwargs)
    return function(*args, **kwargs)


def job_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that fail one job (its view), not the run: our errors, bad values, I/O, and a task
    whose workers kept dying (``distributed.KilledWorker``, e.g. out of memory)."""
    from distributed import KilledWorker

    from ..errors import IsoviewError
    return (IsoviewError, ValueError, OSError, KilledWorker)


@dataclass
class JobResult:
    """What one job did: ``status`` 'written', 'skipped' or 'failed'; failure reason or warning text."""

    status: str
    name: str
    input_bytes: int = 0
    message: str = ""
    warning: str = ""


@dataclass
class Job:
    """One unit of work: a view correction, a pair estimation or a pair fusion.

    Attributes
    ----------
    key : str
        Unique name (the output's path); other jobs wait for it by this key.
    stage : str
        The :class:`~isoview_dask.pipeline.common.StageSummary` it reports to.
    run : callable
        ``run() -> JobResult``; it must not raise for a failure of its own
        view (return ``status='failed'``), only for interruptions.
    nbytes : int
        Raw input bytes it reads (admission and throughput).
    deps : tuple of str
        Keys of jobs that must have finished (whatever their outcome) first.
    expand : callable, optional
        A planning step instead of work: once ``deps`` have finished,
        ``expand()`` (run in the executor's thread; keep it cheap) returns the
        jobs to run in its place, e.g. one timepoint's fusions, which exist
        only once its corrections are complete. ``run`` is then unused. The
        step counts as finished, for jobs that wait for its key, once every
        job it planned has finished (and those that they planned): a later
        step can wait for a whole stage without knowing its jobs.
    complete : callable, optional
        ``complete() -> bool``: a cheap check (completion records only, no
        volume read) that the job's output is complete and up to date, so
        that ``run`` would only skip it. :func:`first_pending` uses it to
        tell, before any cluster starts, whether a run has anything to do;
        a job without it counts as having work.
    """

    key: str
    stage: str
    run: Callable[[], JobResult] | None = None
    nbytes: int = 0
    deps: tuple[str, ...] = ()
    expand: Callable[[], Iterable["Job"]] | None = None
    complete: Callable[[], bool] | None = None


def first_pending(jobs: Iterable[Job]) -> Job | None:
    """The first job of a plan that has work to do, or None when every output is complete.

    Walks the plan in order, expanding each planning step at once (valid
    when everything before it is complete, which is all this walk has seen
    when it reaches the step), and stops at the first job whose
    :attr:`Job.complete` is missing or says False. Nothing is computed and
    no cluster is needed: a rerun over a complete output folder can skip
    starting one.

    Parameters
    ----------
    jobs : iterable of Job
        A plan, as :func:`run_jobs` takes it.

    Returns
    -------
    Job or None
        The first job with work (a planning step's job, if that is where it
        is), or None if every job would be skipped.
    """
    for job in jobs:
        if job.expand is not None:
            pending = first_pending(job.expand())
            if pending is not None:
                return pending
        elif job.complete is None or not job.complete():
            return job
    return None


@dataclass
class _Slot:
    index: tuple  # plan order (a planning step's jobs: its index, then their number): the order of the results
    rank: int  # priority order: an expanded job takes its planning step's rank
    job: Job
    future: cf.Future | None = None


def cluster_capacity(client) -> tuple[int, float]:
    """Worker threads and summed memory limits (bytes; inf when unlimited) of the client's cluster."""
    info = client.scheduler_info()["workers"] if client is not None else {}
    threads = sum(int(w.get("nthreads", 1)) for w in info.values())
    limits = [int(w.get("memory_limit") or 0) for w in info.values()]
    memory = float(sum(limits)) if limits and all(limits) else float("inf")
    return max(1, threads), memory


def _limits(client, max_jobs: int | None, memory_budget: float | None) -> tuple[int, float]:
    if client is None:
        return 1, float("inf")
    threads, memory = cluster_capacity(client)
    if max_jobs is None:
        max_jobs = dask.config.get(MAX_JOBS_CONFIG_KEY, None)
    if max_jobs is None:
        per_thread = float(dask.config.get(JOBS_PER_THREAD_CONFIG_KEY, JOBS_PER_THREAD))
        max_jobs = max(2, int(per_thread * threads))
    if memory_budget is None:
        memory_budget = MEMORY_FRACTION * memory
    return max(1, int(max_jobs)), float(memory_budget)


class _Progress:
    """The run's single progress bar (tqdm): jobs done of planned, MB/s of input, ETA.

    With ``rate_stages``, only those stages' jobs count towards the MB/s, shown
    as "MB/s raw": in a whole run the fusions read the corrections' outputs, and
    counting both would report the raw data twice.
    """

    def __init__(self, enabled: bool, total: int | None, label: str, rate_stages=None):
        self.bar = None
        self.start = time.perf_counter()
        self.bytes = 0
        self.rate_stages = None if rate_stages is None else frozenset(rate_stages)
        self.unit = "MB/s raw" if self.rate_stages else "MB/s in"
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=label, unit="view", file=sys.stderr, dynamic_ncols=True,
                            smoothing=0.1)

    def planned(self, count: int, exact: bool = False) -> None:
        """``count`` jobs are known: the total grows to it (``exact``: it is the total)."""
        if self.bar is not None and (self.bar.total is None or count > self.bar.total or
                                     (exact and count != self.bar.total)):
            self.bar.total = count
            self.bar.refresh()

    def done(self, stage: str, result: JobResult) -> None:
        if self.rate_stages is None or stage in self.rate_stages:
            self.bytes += result.input_bytes
        if self.bar is not None:
            seconds = max(1e-9, time.perf_counter() - self.start)
            self.bar.set_postfix_str(f"{self.bytes / 1e6 / seconds:.1f} {self.unit}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_jobs(jobs: Iterable[Job], summaries: dict[str, StageSummary], *, progress: bool = True,
             total: int | None = None, label: str = "isoview-dask", max_jobs: int | None = None,
             memory_budget: float | None = None, rate_stages: Iterable[str] | None = None
             ) -> dict[str, StageSummary]:
    """Run planned jobs, many at once on a distributed client, and fill in the stage summaries.

    Parameters
    ----------
    jobs : iterable of Job
        In plan order (a job's dependencies come before it); read lazily.
    summaries : dict
        A :class:`StageSummary` per stage name; results are appended in plan
        order whatever the completion order, and ``seconds`` is set.
    total : int, optional
        Number of jobs expected, for the progress bar's total and time left
        (else counted as read). An estimate is fine: the total grows when
        more jobs are known, and becomes exact once the plan is read to its
        end with every planning step expanded.
    max_jobs : int, optional
        Jobs in flight at once (default: ``isoview-dask.max-jobs`` in dask's
        config, else :data:`JOBS_PER_THREAD` per worker thread; 1 without a
        distributed client).
    memory_budget : float, optional
        Bytes of raw input in flight at once (default :data:`MEMORY_FRACTION`
        of the workers' memory limits). At least one job always runs.
    rate_stages : iterable of str, optional
        Stages whose jobs read the raw data: only their input bytes make the
        progress bar's "MB/s raw" (default: every job's input, "MB/s in").

    Returns
    -------
    dict
        ``summaries``, filled in.
    """
    client = current_client()
    resume_computations()
    limit, budget = _limits(client, max_jobs, memory_budget)
    whole = whole_job_limits(client)
    threads = cluster_capacity(client)[0] if client is not None else 1
    start = time.perf_counter()
    bar = _Progress(progress, total, label, rate_stages)
    results: dict[tuple, tuple[str, JobResult]] = {}
    source: Iterator[Job] = iter(jobs)
    waiting: list[_Slot] = []
    running: dict[cf.Future, _Slot] = {}
    finished: set[str] = set()
    known: set[str] = set()
    # A planning step's key finishes with the last of the jobs it planned: step key -> keys still
    # open, and each planned job's step.
    open_children: dict[str, set[str]] = {}
    parent_step: dict[str, str] = {}
    planned = 0
    exhausted = False
    in_flight_bytes = 0

    def plan_ahead() -> None:
        nonlocal planned, exhausted
        read = False
        while not exhausted and len(waiting) < 2 * limit + 1:
            read = True
            try:
                job = next(source)
            except StopIteration:
                exhausted = True
                break
            if job.key in known:
                raise ValueError(f"job {job.key!r} planned twice")
            known.add(job.key)
            waiting.append(_Slot((planned,), planned, job))
            planned += 1
        if read:
            count_planned()

    def count_planned() -> None:
        if bar.bar is not None:
            steps = sum(s.job.expand is not None for s in waiting)
            bar.planned(len(results) + len(running) + len(waiting) - steps, exact=exhausted and not steps)

    def finish(key: str) -> None:
        """Mark ``key`` finished, and the planning steps whose last open job it was."""
        while key is not None:
            finished.add(key)
            step = parent_step.pop(key, None)
            if step is None:
                return
            open_children[step].discard(key)
            if open_children[step]:
                return
            del open_children[step]
            key = step

    def expand(slot: _Slot) -> None:
        position = waiting.index(slot)
        waiting.remove(slot)
        children = []
        for number, job in enumerate(slot.job.expand()):
            if job.key in known:
                raise ValueError(f"job {job.key!r} planned twice")
            known.add(job.key)
            children.append(_Slot(slot.index + (number,), slot.rank, job))
        step = slot.job.key
        for child in children:
            parent_step[child.job.key] = step
        open_children[step] = {child.job.key for child in children}
        if not children:
            del open_children[step]
            finish(step)
        waiting[position:position] = children
        count_planned()

    def ready(slot: _Slot) -> bool:
        return all(dep in finished or dep not in known for dep in slot.job.deps)

    def execute(slot: _Slot, few_jobs: bool) -> JobResult:
        _job.whole_limits, _job.few_jobs = whole, few_jobs
        try:
            with job_priority(-PRIORITY_STEP * slot.rank):
                return slot.job.run()
        finally:
            _job.whole_limits = (0, 0.0)

    def record(slot: _Slot, result: JobResult) -> None:
        finish(slot.job.key)
        results[slot.index] = (slot.job.stage, result)
        bar.done(slot.job.stage, result)

    pool = cf.ThreadPoolExecutor(max_workers=limit, thread_name_prefix="isoview-job") if client else None
    try:
        plan_ahead()
        while waiting or running:
            started = expanded = False
            for slot in list(waiting):
                if slot.job.expand is not None and ready(slot):
                    expand(slot)
                    expanded = True
                    break  # its jobs now stand where it stood: look again from the start
                if len(running) >= limit:
                    break
                if slot.job.expand is not None:
                    continue
                fits = not running or in_flight_bytes + slot.job.nbytes <= budget
                if not (fits and ready(slot)):
                    continue
                waiting.remove(slot)
                if pool is None:
                    record(slot, execute(slot, False))
                else:
                    slot.future = pool.submit(execute, slot, len(waiting) + len(running) + 1 < threads)
                    running[slot.future] = slot
                    in_flight_bytes += slot.job.nbytes
                started = True
                plan_ahead()
            if expanded:
                plan_ahead()
                continue
            if running:
                done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
                for future in done:
                    slot = running.pop(future)
                    in_flight_bytes -= slot.job.nbytes
                    record(slot, future.result())
                plan_ahead()
            elif started:
                continue
            elif waiting:
                # Nothing runs and nothing can start: a dependency that was never planned.
                slot = waiting.pop(0)
                record(slot, JobResult("failed", slot.job.key, message="its inputs were never planned"))
    except BaseException:
        # Interrupted (Ctrl-C, or a job raised something that is not its own failure): plan nothing
        # more; let the running jobs finish for a few seconds, then cancel their computations, so that
        # their threads end (even if the workers died with the interruption) and no thread of this run
        # still writes when a rerun starts. Cancelled outputs were being written under temporary
        # names: a rerun redoes them.
        if pool is not None:
            if running:
                log.warning("interrupted: giving %d running job(s) %g s to finish, then cancelling them",
                            len(running), INTERRUPT_GRACE_S)
                try:
                    cf.wait(list(running), timeout=INTERRUPT_GRACE_S)
                except KeyboardInterrupt:  # a second Ctrl-C: cancel now
                    pass
            stop_computations(client)
            pool.shutdown(wait=True, cancel_futures=True)
            pool = None
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True)
    seconds = time.perf_counter() - start
    for index in sorted(results):
        stage, result = results[index]
        summary = summaries[stage]
        if result.status == "written":
            summary.written.append(result.name)
            summary.input_bytes += result.input_bytes
        elif result.status == "skipped":
            summary.skipped.append(result.name)
        else:
            summary.failed[result.name] = result.message
        if result.warning:
            summary.warnings[result.name] = result.warning
    for summary in summaries.values():
        summary.seconds = seconds
    log.info("%d jobs in %.1f s (at most %d in flight, memory budget %.3g GB)", planned, seconds, limit,
             budget / 1e9)
    return summaries
