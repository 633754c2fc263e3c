"""``run``: correction and fusion of a recording as one plan, timepoint after timepoint.

The correction jobs of a timepoint come first, then a planning step that,
once they have finished, forms that timepoint's fusion jobs from the
complete corrected views (:func:`~isoview_dask.pipeline.fuse.fusion_jobs`).
With ``isotropic.enable``, two more steps follow per timepoint
(:func:`~isoview_dask.pipeline.isotropic.isotropic_steps`): the isotropic
registration, which waits for the timepoint's fusions and for the previous
timepoint's registration (its start), and the reconstruction, which waits
for its own registration only.
The executor (:mod:`isoview_dask.pipeline.executor`) keeps several
timepoints in flight, so fusions of timepoint t overlap corrections of t+1,
t+2...; outputs, completion records and resumption are those of
:func:`~isoview_dask.pipeline.correct.correct_dataset` followed by
:func:`~isoview_dask.pipeline.fuse.fuse_dataset` (and
:func:`~isoview_dask.pipeline.isotropic.isotropic_dataset`).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..config import ProcessingConfig
from ..dataset import CameraView, Dataset, open_dataset
from .common import StageSummary
from .correct import correction_job, selected_views
from .executor import Job, first_pending, run_jobs
from .fuse import find_corrected, fusion_jobs


def _timepoint_fusions(out: Path, specimen: int, timepoint: int, config: ProcessingConfig) -> list[Job]:
    if not out.is_dir():  # every correction so far failed before writing anything: nothing to fuse
        return []
    return list(fusion_jobs(find_corrected(out, specimen=specimen, timepoint=timepoint), out, config))


def plan_timepoints(views: list[CameraView], out: Path, config: ProcessingConfig,
                    then: Callable[[int, int], Job] | None = None,
                    more: Callable[[int, int, str], Iterable[Job]] | None = None) -> Iterator[Job]:
    """Correction jobs, timepoint by timepoint, each timepoint's followed by ``then(specimen, timepoint)``.

    ``then`` returns a job (typically a planning step) that waits for that
    timepoint's corrections; its ``deps`` are set here. ``more(specimen,
    timepoint, key)`` returns jobs planned right after it (``key``: the
    ``then`` job's), which set their own dependencies.
    """
    key = lambda v: (v.specimen, v.timepoint)  # noqa: E731
    for (specimen, timepoint), group in groupby(sorted(views, key=key), key=key):
        corrections = [correction_job(view, out, config) for view in group]
        yield from corrections
        if then is not None:
            step = replace(then(specimen, timepoint), deps=tuple(job.key for job in corrections))
            yield step
            if more is not None:
                yield from more(specimen, timepoint, step.key)


def plan_run(views: list[CameraView], out: Path, config: ProcessingConfig, *, fuse: bool = True) -> Iterator[Job]:
    """Correction jobs per timepoint, each timepoint followed by the step that plans its fusions (and, with
    ``isotropic.enable``, the steps that plan its isotropic registration and reconstruction)."""
    def fusions(specimen: int, timepoint: int) -> Job:
        return Job(f"plan fusions of SPM{specimen:02d} TM{timepoint:06d}", "fuse",
                   expand=partial(_timepoint_fusions, out, specimen, timepoint, config))

    previous: dict[int, str] = {}

    def isotropic(specimen: int, timepoint: int, fusion_step: str) -> list[Job]:
        from .isotropic import isotropic_steps
        steps = isotropic_steps(out, out, config, specimen, timepoint, after=(fusion_step,),
                                previous_step=previous.get(specimen))
        previous[specimen] = steps[0].key
        return steps

    return plan_timepoints(views, out, config, fusions if fuse else None,
                           isotropic if fuse and config.isotropic.enable else None)


def has_work(source: str | Path | Dataset, out: str | Path, config: ProcessingConfig | None = None, *,
             fuse: bool = True) -> bool:
    """Whether :func:`process_dataset` would write or fail anything, judged from completion records only.

    Plans the run and checks each job's completion record (corrections,
    then each timepoint's fusions) without computing anything, stopping at
    the first output that is missing, out of date or has no cheap check
    (the isotropic registrations and reconstructions have one too). The command line uses it to start no cluster for a
    rerun over a complete output folder.

    Parameters
    ----------
    source : path or Dataset
        Raw recording.
    out : path
        Output root.
    config : ProcessingConfig, optional
        The run's options.
    fuse : bool
        Whether the run fuses too.

    Returns
    -------
    bool
        False when every job of the run would be skipped as complete.
    """
    config = config or ProcessingConfig()
    dataset = source if isinstance(source, Dataset) else open_dataset(
        source, allow_truncated=config.input.allow_truncated)
    return first_pending(plan_run(selected_views(dataset, config), Path(out), config, fuse=fuse)) is not None


def process_dataset(source: str | Path | Dataset, out: str | Path, config: ProcessingConfig | None = None, *,
                    fuse: bool = True, progress: bool = True, **flags) -> dict[str, StageSummary]:
    """Correct every selected view and fuse every camera pair of a recording, many views at once (resumable).

    Parameters
    ----------
    source : path or Dataset
        Raw recording.
    out : path
        Output root of corrected and fused volumes (``<out>/SPM##/TM######/``).
    config : ProcessingConfig, optional
        Options; ``flags`` override them (e.g. ``input_timepoints=[0, 1]``).
    fuse : bool
        Also fuse (default); False corrects only.

    Returns
    -------
    dict of stage name -> StageSummary
        ``correct`` and, with ``fuse``, ``fuse``: as :func:`correct_dataset`
        and :func:`fuse_dataset` report them; with ``isotropic.enable`` also
        ``isotropic_registration`` and ``isotropic`` (as
        :func:`~isoview_dask.pipeline.isotropic.isotropic_dataset`).
    """
    config = ProcessingConfig.from_flags(config, **flags) if flags else (config or ProcessingConfig())
    dataset = source if isinstance(source, Dataset) else open_dataset(
        source, allow_truncated=config.input.allow_truncated)
    out = Path(out)
    views = selected_views(dataset, config)
    summaries = {"correct": StageSummary("correct")}
    isotropic = fuse and config.isotropic.enable
    if fuse:
        summaries["fuse"] = StageSummary("fuse")
    if isotropic:
        from .isotropic import REGISTRATION_STAGE, STAGE
        summaries.update({REGISTRATION_STAGE: StageSummary(REGISTRATION_STAGE), STAGE: StageSummary(STAGE)})
    # the bar's total: a correction per view and, about, a fusion per two views (the plan tells the rest)
    run_jobs(plan_run(views, out, config, fuse=fuse), summaries, progress=progress, label="run",
             total=len(views) + (len(views) // 2 if fuse else 0) + (len(views) // 2 if isotropic else 0),
             rate_stages=("correct",))
    from ..provenance import record_run  # run record (isoview_dask.provenance)
    record_run("correct", out, summaries["correct"], config=config, source=dataset)
    if fuse:
        record_run("fuse", out, summaries["fuse"], config=config, source=out)
    if isotropic:
        record_run("isotropic", out, {name: summaries[name] for name in (REGISTRATION_STAGE, STAGE)},
                   config=config, source=out, arguments={"smooth": False})
    return summaries
