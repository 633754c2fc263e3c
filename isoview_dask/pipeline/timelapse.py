"""Time-lapse fusion in two passes (the MATLAB time-fusion step, clusterTF-style), and the parameter table.

Pass 1 (:func:`estimate_timepoints`) estimates, for every timepoint (or every
Nth and the last, ``fusion.estimate_every``: :func:`estimated_timepoints`), camera
pair and channel, what fusion needs (registration, intensity ratio,
transition-plane map) with :func:`isoview_dask.pipeline.fuse.estimate_pair`,
and persists it under the timepoint folder::

    <out>/SPM##/TM######/<stem>.fusionEstimate.json                     values, fingerprint
    <out>/SPM##/TM######/<stem>.fusionEstimate.transitionPlane.npy      (Y, X) float32 map

Pass 2 (:func:`smooth_and_fuse`) reads those back per (specimen, pair,
channel) as time series, leaves out timepoints whose registration
confidence is below ``fusion.min_registration_confidence``, smooths every
series with MATLAB's ``rloess`` over ``fusion.smoothing_window`` timepoints
(or takes one static value), writes the lookup table -- timepoint ->
parameters used -- and a plot of every parameter over time::

    <out>/SPM##/SPM##_CM##_CM##_CHN##.lookUpTable.json   (and .csv, .parameters.png)

and then fuses every timepoint with those values as the ``fixed_parameters`` of
:func:`~isoview_dask.pipeline.fuse.fusion_jobs` (:func:`smooth_estimates` is the smoothing alone). The robustness weights of rloess
give an outlier (a timepoint with a failed estimate) no say in the smoothed
curve, so it receives its neighbours' trend.

Both passes are resumable: an estimate whose record matches its inputs and
the estimation options is not recomputed; a lookup table whose record
matches the estimates and the smoothing options is not rewritten; a fused
volume whose record matches its inputs and the fixed parameters is skipped.
:func:`process_timelapse` runs correction and both passes as one plan
(:func:`plan_timelapse`): a timepoint's estimates start as soon as its
cameras are corrected, beside the corrections of later timepoints, and
smoothing waits for the last estimate.

:func:`parameter_table` collects every estimated and used parameter and the
correction statistics into one table (``isoview-dask params OUT``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .. import __version__
from ..config import TEMPORAL_FIELDS, ProcessingConfig
from ..dataset import Dataset, open_dataset
from ..temporal import rloess, smooth_series
from .common import (StageSummary, as_channel, channel_label, completed, fingerprint, output_path, record_outputs,
                     relative_outputs, scan_records, write_json, write_text)
from .correct import selected_views
from .executor import Job, JobResult, job_errors, job_work, run_jobs
from .fuse import (ChannelFusedView, CorrectedView, channel_fields, estimate_pair, find_corrected, fusion_jobs,
                   raw_plane_bytes, single_channel_groups)
from .run import plan_timepoints

log = logging.getLogger(__name__)

__all__ = ["ESTIMATE_KIND", "SmoothedParameters", "estimate_timepoints", "format_table", "load_estimates",
           "lookup_table_path", "parameter_table", "plan_timelapse", "process_timelapse", "smooth_and_fuse",
           "smooth_estimates", "smooth_parameters", "estimated_timepoints"]

ESTIMATE_KIND = "fusionEstimate"
TRANSITION_KIND = "fusionEstimate.transitionPlane"

#: Fusion options estimation does not depend on.
_NOT_ESTIMATION = set(TEMPORAL_FIELDS) | {"diagnostics", "blending_range", "blending_profile", "camera_pairs"}

#: The smoothed series, with the sliding-window group (0 offsets, 1 angles, 2 factors) of each.
SERIES = {"dy": 0, "dx": 0, "rotation_deg": 1, "intensity_factor_moving": 2,
          "transition_min": 0, "transition_median": 0, "transition_max": 0}
REGISTRATION_SERIES = ("dy", "dx", "rotation_deg")
#: Light-sheet registration of channel-fused cameras (reference and moving camera): the group in
#: ``lut_averaging`` (offsets, angles) of each. Present only for camera pairs of channel-fused cameras.
SHEET_SERIES = {"sheet_offset_ref": 0, "sheet_rotation_ref": 1, "sheet_offset_mov": 0, "sheet_rotation_mov": 1}
#: A residual from the smoothed curve below this is never called an outlier, whatever rloess's
#: robustness weight (with very precise estimates 6 x MAD is a few hundredths of a pixel).
OUTLIER_FLOOR = {"dy": 0.5, "dx": 0.5, "rotation_deg": 0.1}
#: At most this many maps (evenly spread) give the static transition map.
STATIC_MAP_SAMPLES = 64


# ------------------------------------------------------------------------------------------ pass 1

def pair_groups(views: dict, config: ProcessingConfig, channel_pairs: bool = False):
    """(specimen, timepoint, channel, pair, ref, mov) of every camera pair to fuse (a view None when absent).

    With ``channel_pairs``, also the camera pairs of channel-fused cameras
    (``fusion.channel_pairs``): ``channel`` is then the tuple (a, b) and the
    views are :class:`ChannelFusedView` s (None where a camera lacks a channel).
    """
    # channels of a fusion.channel_pairs pair are fused together, per timepoint (see fuse_dataset)
    for specimen, timepoint, channel in single_channel_groups(views, config):
        for a, b in config.fusion.camera_pairs:
            ref, mov = views.get((specimen, timepoint, a, channel)), views.get((specimen, timepoint, b, channel))
            if ref is None and mov is None:
                continue
            yield specimen, timepoint, channel, (a, b), ref, mov
    if not channel_pairs:
        return
    from .fuse import channel_jobs
    for job in channel_jobs(views, config):
        if len(job.cameras) != 2:
            continue  # a lone camera has nothing to register or smooth
        pair = job.cameras
        if job.views:  # complete: as the fusion builds them (channel order per camera included)
            yield job.specimen, job.timepoint, job.channels, pair, job.views[0], job.views[1]
            continue

        def view(camera):
            a, b = (views.get((job.specimen, job.timepoint, camera, ch)) for ch in job.channels)
            return ChannelFusedView(a, b, pair=job.channels) if a is not None and b is not None else None
        yield job.specimen, job.timepoint, job.channels, pair, view(pair[0]), view(pair[1])


def _corrected_parts(view) -> list[CorrectedView]:
    return [view.view_a, view.view_b] if isinstance(view, ChannelFusedView) else [view]


def _estimate_fingerprint(ref, mov, config: ProcessingConfig) -> str:
    # views by identity and content, not by path: a moved or copied output tree still resumes
    inputs = [{"view": [v.specimen, v.timepoint, v.camera, v.channel], "fingerprint": v.record.get("fingerprint")}
              for view in (ref, mov) for v in _corrected_parts(view)]
    options = {k: v for k, v in config.fusion.to_dict().items() if k not in _NOT_ESTIMATION}
    return fingerprint(inputs, {"estimation": options})


def _save_npy(path: Path, array: np.ndarray) -> Path:
    from ..io.atomic import atomic_output
    with atomic_output(path, overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array, dtype=np.float32))
    return path


def estimated_timepoints(timepoints: Iterable[int], every: int = 1) -> list[int]:
    """The timepoints pass 1 estimates (``fusion.estimate_every``), ascending.

    Every ``every``-th of the sorted, distinct ``timepoints``, starting with
    the first, and always the last, so that every other timepoint lies
    between two estimated ones. ``every`` 1: all of them.
    """
    ordered = sorted({int(t) for t in timepoints})
    if every <= 1 or not ordered:
        return ordered
    chosen = ordered[::int(every)]
    if chosen[-1] != ordered[-1]:
        chosen.append(ordered[-1])
    return chosen


def _estimated_by_specimen(pairs: Iterable[tuple[int, int]], every: int) -> dict[int, set[int]]:
    """{specimen: timepoints to estimate} from (specimen, timepoint) pairs."""
    by_specimen: dict[int, set[int]] = {}
    for specimen, timepoint in pairs:
        by_specimen.setdefault(int(specimen), set()).add(int(timepoint))
    return {specimen: set(estimated_timepoints(tps, every)) for specimen, tps in by_specimen.items()}


def estimation_jobs(views: dict, out: Path, config: ProcessingConfig,
                    estimate: dict[int, set[int]] | None = None) -> Iterator[Job]:
    """One pass-1 job per (specimen, timepoint, channel, camera pair) of complete corrected ``views``.

    Each job estimates the pair (:func:`~isoview_dask.pipeline.fuse.estimate_pair`)
    and writes its ``.fusionEstimate.json`` record and transition map, or is
    skipped when that record is complete with the same inputs and options.
    ``estimate`` ({specimen: timepoints}, see :func:`estimated_timepoints`)
    limits the jobs to those timepoints; None: every timepoint of ``views``.
    """
    for specimen, timepoint, channel, (a, b), ref, mov in pair_groups(views, config, channel_pairs=True):
        if estimate is not None and timepoint not in estimate.get(specimen, ()):
            continue
        name_channel = list(channel) if isinstance(channel, tuple) else channel
        record_path = output_path(out, specimen, timepoint, [a, b], name_channel, ESTIMATE_KIND, "json")
        if ref is None or mov is None:
            missing = a if ref is None else b
            what = (f"channels {channel[0]} and {channel[1]}" if isinstance(channel, tuple)
                    else f"channel {channel}")
            why = f"camera {missing} has no complete corrected volume for timepoint {timepoint}, {what}"
            yield Job(str(record_path), "estimate", partial(JobResult, "failed", str(record_path), message=why))
            continue
        parts = _corrected_parts(ref) + _corrected_parts(mov)
        nbytes = int(sum(int(v.record.get("input_bytes") or 0) for v in parts))
        yield Job(str(record_path), "estimate",
                  partial(_estimate_one, specimen, timepoint, name_channel, (a, b), ref, mov, record_path, out,
                          config, nbytes, raw_plane_bytes(*parts)), nbytes=nbytes)


def _prepared_estimate(ref, mov, config: ProcessingConfig):
    """Prepared views (channel-fused when paired) and their pair estimate."""
    ref, mov = ref.prepare(config, progress=False), mov.prepare(config, progress=False)
    return ref, mov, estimate_pair(ref, mov, config, progress=False)


def _estimate_one(specimen, timepoint, name_channel, pair, ref, mov, record_path: Path, out: Path,
                  config: ProcessingConfig, nbytes: int = 0, plane_bytes: int | None = None) -> JobResult:
    a, b = pair
    fp = _estimate_fingerprint(ref, mov, config)
    if not config.output.overwrite and completed(record_path, fp):
        return JobResult("skipped", str(record_path))
    try:
        ref, mov, estimate = job_work(nbytes, _prepared_estimate, ref, mov, config,
                                      label=f"estimation {record_path.name}", plane_bytes=plane_bytes)
    except job_errors() as exc:
        log.error("estimation for %s failed: %s", record_path, exc)
        return JobResult("failed", str(record_path), message=str(exc))
    map_path = _save_npy(output_path(out, specimen, timepoint, [a, b], name_channel, TRANSITION_KIND, "npy"),
                         estimate.transition_yx)
    intensity = estimate.intensity
    parts = _corrected_parts(ref) + _corrected_parts(mov)
    record = {
        "package_version": __version__,
        "specimen": specimen, "timepoint": timepoint, "channel": name_channel,
        "reference_camera": a, "moving_camera": b,
        **estimate.summary(),
        **({k: v for k, v in channel_fields(config.fusion, ref, mov).items() if k == "channel_fusion"}
           if isinstance(name_channel, list) else {}),
        "registration_method": estimate.method,
        "intensity_factor": intensity.factor if intensity else 1.0,
        "intensity_scaled_camera": (a if intensity.scaled_camera == "reference" else b) if intensity else None,
        "shape_zyx": list(parts[0].record.get("shape_zyx", [])),
        "timings": estimate.timings,
        "inputs": [str(v.record_path) for v in parts],
        "outputs": relative_outputs(record_path, [map_path]),
        "fingerprint": fp,
    }
    write_json(record_path, record)
    return JobResult("written", str(record_path), input_bytes=int(len(parts) * np.prod(record["shape_zyx"] or [0]) * 2))


def estimate_timepoints(corrected: str | Path, out: str | Path | None = None,
                        config: ProcessingConfig | None = None, *, progress: bool = True, **flags) -> StageSummary:
    """Pass 1: estimate and persist the fusion parameters of every timepoint, pair and channel.

    Parameters
    ----------
    corrected : path
        Output root of the correction stage.
    out : path, optional
        Where the estimates go (default: beside the corrected volumes).
    config : ProcessingConfig, optional
        ``fusion`` options shape the estimates (``fusion.estimate_every``:
        only every Nth timepoint of each specimen and its last, see
        :func:`estimated_timepoints`); ``input`` selects; ``flags`` override
        (e.g. ``input_timepoints=[0, 1]``).

    Returns
    -------
    StageSummary
        Estimates written, skipped (complete, same inputs and estimation
        options) and failed.
    """
    config = ProcessingConfig.from_flags(config, **flags) if flags else (config or ProcessingConfig())
    out = Path(out) if out is not None else Path(corrected)
    views = find_corrected(corrected)
    summary = StageSummary("estimate")
    every = config.fusion.estimate_every
    estimate = (_estimated_by_specimen(((s, t) for s, t, _ in single_channel_groups(views, config)), every)
                if every > 1 else None)
    run_jobs(estimation_jobs(views, out, config, estimate), {"estimate": summary}, progress=progress,
             label="estimate", total=len(views) // (2 * every))  # about; exact once planned
    from ..provenance import record_run  # run record (isoview_dask.provenance)
    record_run("estimate", out, summary, config=config, source=corrected)
    return summary


# ------------------------------------------------------------------------------------------ pass 2

@dataclass
class SmoothedParameters:
    """The time series of one (specimen, pair, channel) and the values fusion uses.

    Attributes
    ----------
    timepoints : list of int
        TM numbers, ascending.
    raw : dict of name -> ndarray
        Per-timepoint estimates (``SERIES`` names; NaN where absent).
    used : dict of name -> ndarray
        The smoothed (or static) values.
    confidence : ndarray
        Registration confidence per timepoint.
    dropped : ndarray of bool
        Timepoints left out before smoothing (confidence below the threshold).
    outlier : ndarray of bool
        Dropped, or an outlier of a registration series (``flags``).
    flags : dict of name -> ndarray of bool
        Per registration series: zero robustness weight in rloess and a
        residual above :data:`OUTLIER_FLOOR`.
    records : list of dict
        The pass-1 records.
    """

    specimen: int
    pair: tuple[int, int]
    channel: int | tuple[int, int]
    timepoints: list[int]
    raw: dict[str, np.ndarray]
    used: dict[str, np.ndarray]
    confidence: np.ndarray
    dropped: np.ndarray
    outlier: np.ndarray
    flags: dict[str, np.ndarray] = field(default_factory=dict)
    records: list[dict] = field(repr=False, default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def stem(self) -> str:
        a, b = self.pair
        return f"SPM{self.specimen:02d}_CM{a:02d}_CM{b:02d}_{channel_label(self.channel)}"

    def index(self, timepoint: int) -> int:
        return self.timepoints.index(timepoint)

    def used_at(self, timepoint: int) -> dict:
        """Parameters used at one timepoint (the lookup-table row).

        A timepoint pass 1 did not estimate (``fusion.estimate_every``) gets
        every used value linearly interpolated in time between the estimated
        timepoints around it (the nearest one's beyond either end), the lower
        of their two registration confidences, and ``"interpolated": True``.
        """
        if timepoint not in self.timepoints:
            return self._interpolated(timepoint)
        i = self.index(timepoint)
        values = {name: float(series[i]) for name, series in self.used.items()}
        estimated = {name: _num(self.raw[name][i]) for name in (*SERIES, *SHEET_SERIES) if name in self.raw}
        return self._row(timepoint, values, float(self.confidence[i]), bool(self.dropped[i]),
                         bool(self.outlier[i]), estimated)

    def _interpolated(self, timepoint: int) -> dict:
        times = np.asarray(self.timepoints, dtype=np.float64)
        values = {}
        for name, series in self.used.items():
            known = np.isfinite(series)
            values[name] = float(np.interp(timepoint, times[known], series[known])) if known.any() else float("nan")
        right = int(np.searchsorted(times, timepoint))
        around = [k for k in (right - 1, right) if 0 <= k < len(times)]
        row = self._row(timepoint, values, float(min(self.confidence[k] for k in around)), False, False, {})
        row["interpolated"] = True
        return row

    def _row(self, timepoint: int, values: dict, confidence: float, dropped: bool, outlier: bool,
             estimated: dict) -> dict:
        factor = values["intensity_factor_moving"]
        ratio = 1.0 / factor if np.isfinite(factor) and factor > 0 else None
        row = {"timepoint": timepoint,
               "sampling_offset_yx_px": [values["dy"], values["dx"]],
               "sampling_rotation_deg": values["rotation_deg"],
               "intensity_ratio_moving_over_reference": ratio,
               "intensity_factor": (None if ratio is None else (1.0 / ratio if ratio < 1 else ratio)),
               "intensity_scaled_camera": (None if ratio is None else (self.pair[1] if ratio < 1 else self.pair[0])),
               "transition_plane": {k: values[f"transition_{k}"] for k in ("min", "median", "max")},
               "registration_confidence": confidence, "dropped": dropped, "outlier": outlier,
               "estimated": estimated}
        if "sheet_offset_ref" in values:
            row["channel_registration"] = {
                str(camera): {"offset_z_planes": values[f"sheet_offset_{role}"],
                              "rotation_deg": values[f"sheet_rotation_{role}"]}
                for role, camera in (("ref", self.pair[0]), ("mov", self.pair[1]))}
        return row


def _num(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def load_estimates(root: str | Path) -> dict[tuple[int, tuple[int, int], int], list[dict]]:
    """Pass-1 records under ``root`` by (specimen, pair, channel), each list sorted by timepoint.

    ``channel`` is a tuple for camera pairs of channel-fused cameras.
    """
    groups: dict = {}
    for (s, t, cams, ch), (path, record) in scan_records(root, f"{ESTIMATE_KIND}.json").items():
        if len(cams) != 2:
            continue
        record["_path"] = str(path)
        groups.setdefault((s, cams, ch), []).append(record)
    for records in groups.values():
        records.sort(key=lambda r: r["timepoint"])
    return groups


def _series_from_records(records: list[dict]) -> dict[str, np.ndarray]:
    def get(record, name):
        tp = record.get("transition_plane") or {}
        ratio = record.get("intensity_ratio_moving_over_reference")
        value = {"dy": record["sampling_offset_yx_px"][0], "dx": record["sampling_offset_yx_px"][1],
                 "rotation_deg": record["sampling_rotation_deg"],
                 "intensity_factor_moving": (1.0 / ratio) if ratio else None,
                 "transition_min": tp.get("min"), "transition_median": tp.get("median"),
                 "transition_max": tp.get("max")}[name]
        return np.nan if value is None else float(value)
    series = {name: np.array([get(r, name) for r in records], dtype=float) for name in SERIES}
    return {**series, **_sheet_series(records)}


def _sheet_series(records: list[dict]) -> dict[str, np.ndarray]:
    """Per-timepoint sheet fits of both cameras (NaN where rejected or below confidence); {} if never fitted.

    The fitted values count even where they were too small to apply ('negligible'): the series is the
    measurement, smoothing decides what is applied.
    """
    def entry(record, camera):
        for item in record.get("channel_fusion") or []:
            if item.get("camera") == camera:
                return item
        return {}

    out: dict[str, list[float]] = {name: [] for name in SHEET_SERIES}
    fitted = False
    for record in records:
        for role, camera in (("ref", record["reference_camera"]), ("mov", record["moving_camera"])):
            item = entry(record, camera)
            method = item.get("channel_registration_method")
            fitted |= method in ("estimated", "negligible", "fallback")
            good = method in ("estimated", "negligible")
            for name, key in (("offset", "estimated_offset_z_planes"), ("rotation", "estimated_rotation_deg")):
                value = item.get(key) if good else None
                out[f"sheet_{name}_{role}"].append(np.nan if value is None else float(value))
    return {name: np.array(values, dtype=float) for name, values in out.items()} if fitted else {}


def temporal_settings(config: ProcessingConfig) -> dict:
    """The options that shape pass 2 (recorded in the lookup table)."""
    fc = config.fusion
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in fc.to_dict().items() if k in TEMPORAL_FIELDS}


def smooth_parameters(records: list[dict], config: ProcessingConfig | None = None) -> SmoothedParameters:
    """Smooth the time series of one (specimen, pair, channel) from its pass-1 records (pure).

    A timepoint whose registration confidence is below
    ``fusion.min_registration_confidence`` is left out (NaN) and filled by the
    smoothing. Each series is smoothed by :func:`isoview_dask.temporal.smooth_series`
    (rloess over ``smoothing_window``, the ``lut_averaging`` windows, static).
    Intensity is smoothed as the factor applied to the moving camera (MATLAB's
    flag-2 normalisation).
    """
    config = config or ProcessingConfig()
    fc = config.fusion
    if not records:
        raise ValueError("no estimates to smooth")
    first = records[0]
    raw = _series_from_records(records)
    confidence = np.array([float(r.get("registration_confidence") or 0.0) for r in records])
    # a registration clamped at the search limit never counts, whatever its confidence says
    rejected = np.array([bool(r.get("registration_rejected")) for r in records])
    dropped = ~(confidence >= fc.min_registration_confidence) | rejected
    for name in SERIES:
        dropped |= ~np.isfinite(raw[name]) & (name in REGISTRATION_SERIES)
    if dropped.all():
        log.warning("SPM%02d CM%02d+CM%02d %s: every timepoint's registration confidence is below %.2f; "
                    "smoothing all of them anyway", first["specimen"], first["reference_camera"],
                    first["moving_camera"], channel_label(first["channel"]), fc.min_registration_confidence)
        dropped[:] = False
    span = fc.smoothing_window if fc.temporal_smoothing else None
    used, outlier, flags = {}, dropped.copy(), {}
    for name, group in SERIES.items():
        series = np.where(dropped, np.nan, raw[name])
        used[name] = smooth_series(series, span=span, averaging=fc.lut_averaging[group],
                                   method=fc.lut_averaging_method, static=fc.static)
        if span and span > 1 and name in REGISTRATION_SERIES and np.isfinite(series).sum() > 2:
            fit, weights = rloess(series, span, return_weights=True)
            far = np.abs(np.nan_to_num(series - fit)) > OUTLIER_FLOOR[name]
            flags[name] = (np.nan_to_num(weights, nan=1.0) <= 0) & far
            outlier |= flags[name]
    for name, group in SHEET_SERIES.items():  # the sheet fits have their own confidence (NaN where too low)
        if name in raw:
            smoothed = smooth_series(raw[name], span=span, averaging=fc.lut_averaging[group],
                                     method=fc.lut_averaging_method, static=fc.static)
            used[name] = np.nan_to_num(smoothed, nan=0.0)  # never fitted well: no motion
    return SmoothedParameters(first["specimen"], (first["reference_camera"], first["moving_camera"]),
                              as_channel(first["channel"]), [int(r["timepoint"]) for r in records], raw, used,
                              confidence,
                              dropped, outlier, flags, records, temporal_settings(config))


def lookup_table_path(out: str | Path, specimen: int, pair, channel, suffix: str = "json") -> Path:
    """``<out>/SPM##/SPM##_CM##_CM##_CHN##[_CHN##].<suffix>`` (channel: int, or a channel pair)."""
    a, b = pair
    return Path(out) / f"SPM{specimen:02d}" / f"SPM{specimen:02d}_CM{a:02d}_CM{b:02d}_{channel_label(channel)}.{suffix}"


LUT_CSV_COLUMNS = ("timepoint", "sampling_dy", "sampling_dx", "sampling_rotation_deg", "intensity_factor", "intensity_flag",
                   "transition_min", "transition_median", "transition_max", "registration_confidence", "dropped",
                   "outlier", "estimated_sampling_dy", "estimated_sampling_dx", "estimated_sampling_rotation_deg",
                   "estimated_intensity_factor", "estimated_transition_median")


def _lut_csv(params: SmoothedParameters, timepoints: list[int] | None = None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    sheets = "sheet_offset_ref" in params.used
    cameras = [f"CM{c:02d}" for c in params.pair]
    sheet_columns = [f"{what}_{camera}" for camera in cameras for what in ("sheet_offset_z_planes",
                                                                        "sheet_rotation_deg")]
    writer.writerow(list(LUT_CSV_COLUMNS) + (sheet_columns if sheets else []))
    for t in params.timepoints if timepoints is None else timepoints:
        row = params.used_at(t)
        ratio = row["intensity_ratio_moving_over_reference"]
        f = float(params.used["intensity_factor_moving"][params.index(t)]) if t in params.timepoints else \
            (1.0 / ratio if ratio else float("nan"))
        # MATLAB's convention: flag 2 multiplies the moving (second) stack, flag 1 the reference
        factor, flag = (1.0 / f, 1) if f < 1 else (f, 2)
        est = row["estimated"]
        writer.writerow([t, *row["sampling_offset_yx_px"], row["sampling_rotation_deg"], factor, flag,
                         *row["transition_plane"].values(), row["registration_confidence"], int(row["dropped"]),
                         int(row["outlier"]), est.get("dy"), est.get("dx"), est.get("rotation_deg"),
                         est.get("intensity_factor_moving"), est.get("transition_median"),
                         *([v for c in params.pair for v in row["channel_registration"][str(c)].values()]
                           if sheets else [])])
    return buf.getvalue()


def plot_parameters(params: SmoothedParameters, path: str | Path) -> Path | None:
    """PNG of every parameter over time: estimates (dots), used values (line), outliers (red)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is optional
        log.warning("matplotlib is not installed; no parameter plots")
        return None
    t = np.array(params.timepoints)
    panels = [("dy", "sampling offset dy (px)"), ("dx", "sampling offset dx (px)"),
              ("rotation_deg", "sampling rotation (deg)"), ("intensity_factor_moving", "intensity factor (moving)"),
              ("transition_median", "transition plane, median"), ("confidence", "registration confidence")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.0 * len(panels)), sharex=True)
    for ax, (name, label) in zip(axes, panels):
        raw = params.confidence if name == "confidence" else params.raw[name]
        flagged = params.dropped | params.flags.get(name, False)
        inlier = ~flagged & np.isfinite(raw)
        ax.plot(t[inlier], raw[inlier], "o", color="0.45", ms=3, label="estimated")
        if name == "confidence":
            ax.axhline(params.settings.get("min_registration_confidence", 0.0), color="tab:red", lw=0.8, ls="--",
                       label="threshold")
            shown = raw[np.isfinite(raw)]
        else:
            used = params.used[name]
            ax.plot(t, used, "-", color="tab:blue", lw=1.5, label="used")
            shown = np.concatenate([raw[inlier], used[np.isfinite(used)]])
            if name == "transition_median":
                lo, hi = params.raw["transition_min"], params.raw["transition_max"]
                ax.vlines(t[inlier], lo[inlier], hi[inlier], color="0.8", lw=3, label="estimated min-max",
                          zorder=0)
                shown = np.concatenate([shown, lo[inlier], hi[inlier]])
        if shown.size:
            lo_y, hi_y = float(np.nanmin(shown)), float(np.nanmax(shown))
            pad = max(0.15 * (hi_y - lo_y), 1e-3 * max(abs(lo_y), abs(hi_y), 1.0))
            lo_y, hi_y = lo_y - pad, hi_y + pad
            ax.set_ylim(lo_y, hi_y)
            bad = flagged & np.isfinite(raw)
            if bad.any():  # draw outliers at the edge when off the scale, with their value
                clipped = np.clip(raw[bad], lo_y, hi_y)
                ax.plot(t[bad], clipped, "x", color="tab:red", ms=7, mew=2, label="outlier / left out")
                for tb, vb, cb in zip(t[bad], raw[bad], clipped):
                    if vb != cb:
                        ax.annotate(f"{vb:.3g}", (tb, cb), textcoords="offset points", xytext=(4, -10 if
                                    cb == hi_y else 4), fontsize=7, color="tab:red")
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="best")
    axes[-1].set_xlabel("timepoint")
    s = params.settings
    mode = "static" if s.get("static") else (f"rloess span {s.get('smoothing_window')}"
                                             if s.get("temporal_smoothing") else "no smoothing")
    fig.suptitle(f"{params.stem}: parameters over time ({mode})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    from ..io.atomic import atomic_output
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


class _TransitionMaps:
    """Transition-plane maps used in pass 2, loaded from the pass-1 .npy files on demand."""

    def __init__(self, params: SmoothedParameters, config: ProcessingConfig):
        self.params = params
        self.half_width = config.fusion.transition_median_window
        self.static = config.fusion.static
        self.paths = [record_outputs(Path(r["_path"]), r)[0] for r in params.records]
        self.valid = ~params.dropped
        self._static_map = None

    def _load(self, i: int) -> np.ndarray:
        return np.load(self.paths[i]).astype(np.float64)

    def _median(self, indices) -> np.ndarray:
        maps = [self._load(k) for k in indices]
        return maps[0] if len(maps) == 1 else np.nanmedian(np.stack(maps), axis=0)

    def at(self, timepoint: int) -> np.ndarray:
        """The map fusion uses at ``timepoint``; one pass 1 did not estimate takes its nearest estimated
        timepoint's (the earlier on a tie)."""
        times = np.asarray(self.params.timepoints)
        i = self.params.index(timepoint) if timepoint in self.params.timepoints else \
            int(np.argmin(np.abs(times - timepoint)))
        n = len(self.paths)
        good = np.flatnonzero(self.valid)
        if good.size == 0:
            return self._load(i)
        if self.static:
            if self._static_map is None:
                chosen = good[np.unique(np.linspace(0, good.size - 1, min(good.size, STATIC_MAP_SAMPLES))
                                        .round().astype(int))]
                self._static_map = self._median(chosen)
            return self._static_map
        width = self.half_width
        while True:  # widen the window until it holds a trusted map (a dropped timepoint's own is not)
            chosen = [k for k in range(max(0, i - width), min(n, i + width + 1)) if self.valid[k]]
            if chosen:
                return self._median(chosen)
            width += 1


def _lut_fingerprint(params: SmoothedParameters, config: ProcessingConfig, interpolated: list[int] = ()) -> str:
    inputs = [{"timepoint": r["timepoint"], "fingerprint": r.get("fingerprint")} for r in params.records]
    if interpolated:
        inputs.append({"interpolated": list(interpolated)})
    return fingerprint(inputs, {"temporal": temporal_settings(config)})


def smooth_and_fuse(corrected: str | Path, out: str | Path | None = None, config: ProcessingConfig | None = None,
                    *, progress: bool = True, **flags) -> tuple[StageSummary, StageSummary]:
    """Pass 2: smooth the pass-1 time series, write lookup tables and plots, fuse every timepoint.

    Parameters
    ----------
    corrected : path
        Output root of the correction stage.
    out : path, optional
        Where pass 1 wrote its estimates and where fused volumes, lookup
        tables and plots go (default: beside the corrected volumes).

    Returns
    -------
    (StageSummary, StageSummary)
        The lookup tables (written or skipped) and the fusion.
    """
    config = ProcessingConfig.from_flags(config, **flags) if flags else (config or ProcessingConfig())
    out = Path(out) if out is not None else Path(corrected)
    lut_summary = StageSummary("smooth")
    views = find_corrected(corrected)
    fixed = smooth_estimates(out, config, lut_summary, timepoints=_timepoints_by_specimen(views))
    fused = StageSummary("fuse")
    run_jobs(fusion_jobs(views, out, config, fixed), {"fuse": fused}, progress=progress, label="fuse",
             total=len(views) // 2)
    from ..provenance import record_run  # run record (isoview_dask.provenance)
    record_run("smooth_and_fuse", out, {"smooth": lut_summary, "fuse": fused}, config=config, source=corrected)
    return lut_summary, fused


def _timepoints_by_specimen(views: dict) -> dict[int, set[int]]:
    """{specimen: timepoints} of corrected views keyed (specimen, timepoint, camera, channel)."""
    found: dict[int, set[int]] = {}
    for specimen, timepoint, *_ in views:
        found.setdefault(int(specimen), set()).add(int(timepoint))
    return found


def smooth_estimates(out: Path, config: ProcessingConfig, lut_summary: StageSummary,
                     timepoints: dict[int, set[int]] | None = None):
    """Smooth every pass-1 time series under ``out``; write lookup tables and plots (resumable).

    Parameters
    ----------
    out : path
        Where pass 1 wrote its estimates; the lookup tables go to ``<out>/SPM##/``.
    config : ProcessingConfig
        ``fusion`` options (the temporal ones); ``input`` selects specimens
        and channels (smoothing always sees every timepoint).
    lut_summary : StageSummary
        Filled in: lookup tables written or skipped, and the seconds taken.
    timepoints : dict, optional
        {specimen: timepoints to fuse}. With ``fusion.estimate_every`` above 1,
        those between the first and last estimated timepoints that pass 1 did
        not estimate get interpolated rows in the lookup table (JSON and CSV).

    Returns
    -------
    callable
        ``fixed(specimen, timepoint, (a, b), channel)``: the smoothed values to
        fuse with (see :func:`~isoview_dask.pipeline.fuse.fuse_dataset`'s
        ``fixed_parameters``), or None where a timepoint has no estimate.
    """
    out = Path(out)
    fc = config.fusion
    sel = config.input
    start = time.perf_counter()
    plans: dict[tuple[int, tuple[int, int], int], SmoothedParameters] = {}
    maps: dict = {}
    for (specimen, pair, channel), records in sorted(load_estimates(out).items()):
        channels = set(channel) if isinstance(channel, tuple) else {channel}
        if isinstance(channel, tuple) and channel not in fc.channel_pairs:
            continue  # estimated under other channel pairs
        if not isinstance(channel, tuple) and any(channel in cp for cp in fc.channel_pairs):
            continue  # a channel now fused with its pair
        if pair not in fc.camera_pairs or (sel.specimens is not None and specimen not in sel.specimens) or \
                (sel.channels is not None and not channels & set(sel.channels)):
            continue
        # smoothing always sees the whole series; input.timepoints only limits what is fused
        params = smooth_parameters(records, config)
        key = (specimen, pair, channel)
        plans[key], maps[key] = params, _TransitionMaps(params, config)
        record_path = lookup_table_path(out, specimen, pair, channel, "lookUpTable.json")
        interpolated = sorted(t for t in (timepoints or {}).get(specimen, ())
                              if fc.estimate_every > 1 and t not in params.timepoints
                              and params.timepoints[0] <= t <= params.timepoints[-1])
        rows = sorted([*params.timepoints, *interpolated])
        fp = _lut_fingerprint(params, config, interpolated)
        if not config.output.overwrite and completed(record_path, fp):
            lut_summary.skipped.append(str(record_path))
            continue
        outputs = []
        if fc.generate_lookup_table:
            outputs.append(write_text(lookup_table_path(out, specimen, pair, channel, "lookUpTable.csv"),
                                       _lut_csv(params, rows)))
            png = plot_parameters(params, lookup_table_path(out, specimen, pair, channel, "parameters.png"))
            if png is not None:
                outputs.append(png)
        record = {"package_version": __version__, "specimen": specimen, "reference_camera": pair[0],
                  "moving_camera": pair[1], "channel": list(channel) if isinstance(channel, tuple) else channel,
                  "settings": params.settings,
                  "dropped_timepoints": [t for t, d in zip(params.timepoints, params.dropped) if d],
                  "outlier_timepoints": [t for t, o in zip(params.timepoints, params.outlier) if o],
                  "timepoints": [params.used_at(t) for t in rows],
                  "outputs": relative_outputs(record_path, outputs), "fingerprint": fp}
        write_json(record_path, record)
        lut_summary.written.append(str(record_path))
    lut_summary.seconds = time.perf_counter() - start

    def fixed(specimen, timepoint, pair, channel):
        key = (specimen, tuple(pair), channel)
        params = plans.get(key)
        between = params is not None and fc.estimate_every > 1 and \
            min(params.timepoints) <= timepoint <= max(params.timepoints)
        if params is None or not (timepoint in params.timepoints or between):
            log.warning("no pass-1 estimate for SPM%02d TM%06d CM%02d+CM%02d %s: it is estimated on its own",
                        specimen, timepoint, pair[0], pair[1], channel_label(channel))
            return None
        row = params.used_at(timepoint)
        values = {"sampling_offset_yx_px": row["sampling_offset_yx_px"],
                  "sampling_rotation_deg": row["sampling_rotation_deg"],
                  "registration_confidence": row["registration_confidence"]}
        if fc.intensity_correction and row["intensity_ratio_moving_over_reference"] is not None:
            values["intensity_ratio_moving_over_reference"] = row["intensity_ratio_moving_over_reference"]
        if fc.type == "geometric":
            values["transition_plane"] = row["transition_plane"]["median"]
        else:
            values["transition_yx"] = maps[key].at(timepoint)
        if "channel_registration" in row and fc.channel_registration:
            values["channel_registration"] = row["channel_registration"]
        return values

    return fixed


def process_timelapse(raw: str | Path | Dataset, out: str | Path, config: ProcessingConfig | None = None, *,
                      progress: bool = True, **flags) -> dict[str, StageSummary]:
    """Correct a recording, then fuse it in two passes (estimate all; smooth, tabulate and fuse), as one plan.

    Pass 1 overlaps the correction: once a timepoint's cameras are corrected,
    its pair estimates run beside the corrections of the timepoints after it
    (:func:`plan_timelapse`). Smoothing needs every estimate, so it waits for
    all of them; then every timepoint is fused with the smoothed values. One
    progress bar covers the whole run. Outputs, records and resumption are
    those of :func:`~isoview_dask.pipeline.correct.correct_dataset`,
    :func:`estimate_timepoints` and :func:`smooth_and_fuse` run one after the
    other.

    With ``isotropic.enable``, the isotropic registrations follow each
    timepoint's fusions (each starting from the previous timepoint's
    transform), their transforms are smoothed over time with the same
    temporal options (:func:`~isoview_dask.pipeline.isotropic.smooth_registrations`:
    rloess, or ``fusion.static``) into a lookup table, and every timepoint is
    reconstructed with its smoothed transform.

    Returns the summaries by stage: ``correct``, ``estimate``, ``smooth``, ``fuse`` (and
    ``isotropic_registration``, ``isotropic_smooth``, ``isotropic``).
    """
    config = ProcessingConfig.from_flags(config, **flags) if flags else (config or ProcessingConfig())
    dataset = raw if isinstance(raw, Dataset) else open_dataset(raw, allow_truncated=config.input.allow_truncated)
    out = Path(out)
    isotropic = config.isotropic.enable
    names = ("correct", "estimate", "fuse") + (("isotropic_registration", "isotropic") if isotropic else ())
    jobs = {name: StageSummary(name) for name in names}
    smoothed = StageSummary("smooth")
    iso_smoothed = StageSummary("isotropic_smooth") if isotropic else None
    views = selected_views(dataset, config)
    # the bar's total: a correction per view and, about, an estimate and a fusion per two views
    run_jobs(plan_timelapse(views, out, config, smoothed, iso_smoothed), jobs, progress=progress,
             label="timelapse", total=len(views) + (4 if isotropic else 2) * (len(views) // 2),
             rate_stages=("correct",))
    summaries = {"correct": jobs["correct"], "estimate": jobs["estimate"], "smooth": smoothed, "fuse": jobs["fuse"]}
    if isotropic:
        summaries.update({"isotropic_registration": jobs["isotropic_registration"],
                          "isotropic_smooth": iso_smoothed, "isotropic": jobs["isotropic"]})
    from ..provenance import record_run  # run record (isoview_dask.provenance)
    record_run("timelapse", out, summaries, config=config, source=raw)
    return summaries


def plan_timelapse(views, out: Path, config: ProcessingConfig, lut_summary: StageSummary,
                   isotropic_summary: StageSummary | None = None) -> Iterator[Job]:
    """The jobs of a two-pass time-lapse run, in order.

    Each timepoint's corrections, then a step planning its pair estimates
    (:func:`estimation_jobs`); after the last timepoint, a step that waits for
    every estimate, smooths the series (:func:`smooth_estimates`, filling
    ``lut_summary``) and plans every fusion with the smoothed values. With
    ``isotropic_summary`` (``isotropic.enable``), that step also plans each
    timepoint's isotropic registration (after its fusions and the previous
    timepoint's registration) and a last step that smooths the isotropic
    transforms (filling ``isotropic_summary``) and plans every reconstruction.
    """
    steps: list[str] = []
    every = config.fusion.estimate_every
    estimate = _estimated_by_specimen(((v.specimen, v.timepoint) for v in views), every) if every > 1 else None

    def estimates(specimen: int, timepoint: int) -> Job:
        step = Job(f"plan estimates of SPM{specimen:02d} TM{timepoint:06d}", "estimate",
                   expand=partial(_timepoint_estimates, out, specimen, timepoint, config, estimate))
        steps.append(step.key)
        return step

    yield from plan_timepoints(views, out, config, estimates)
    yield Job("smooth the estimates and plan the fusions", "fuse", deps=tuple(steps),
              expand=partial(_smoothed_fusions, out, config, lut_summary, isotropic_summary))


def _timepoint_estimates(out: Path, specimen: int, timepoint: int, config: ProcessingConfig,
                         estimate: dict[int, set[int]] | None = None) -> list[Job]:
    return list(estimation_jobs(find_corrected(out, specimen=specimen, timepoint=timepoint), out, config, estimate))


def _smoothed_fusions(out: Path, config: ProcessingConfig, lut_summary: StageSummary,
                      isotropic_summary: StageSummary | None = None) -> list[Job]:
    views = find_corrected(out)
    fixed = smooth_estimates(out, config, lut_summary, timepoints=_timepoints_by_specimen(views))
    jobs = list(fusion_jobs(views, out, config, fixed))
    if isotropic_summary is None:
        return jobs
    # each timepoint's isotropic registration waits for that timepoint's fusions and the registration before it
    from .common import timepoint_dir
    from .isotropic import isotropic_steps, smoothing_step
    timepoints = sorted({(int(p.parent.parent.name[3:]), int(p.parent.name[2:]))
                         for p in (Path(job.key) for job in jobs)})
    previous: dict[int, str] = {}
    registrations = []
    for specimen, timepoint in timepoints:
        folder = timepoint_dir(out, specimen, timepoint)
        after = tuple(job.key for job in jobs if Path(job.key).parent == folder)
        step = isotropic_steps(out, out, config, specimen, timepoint, after=after,
                               previous_step=previous.get(specimen), reconstruct=False)[0]
        previous[specimen] = step.key
        registrations.append(step)
    return jobs + registrations + [smoothing_step(out, out, config, isotropic_summary,
                                                  deps=tuple(step.key for step in registrations))]


# ------------------------------------------------------------------------------------------ the table

TABLE_COLUMNS = (
    "specimen", "timepoint", "reference_camera", "moving_camera", "channel",
    # estimated at this timepoint (pass 1, or a one-pass fusion)
    "sampling_dy", "sampling_dx", "sampling_rotation_deg", "confidence", "registration_method", "intensity_ratio",
    "intensity_factor",
    "intensity_scaled_camera", "transition_min", "transition_median", "transition_max",
    # used by the fusion written (smoothed values after a two-pass run)
    "used_sampling_dy", "used_sampling_dx", "used_sampling_rotation_deg", "used_intensity_ratio",
    "used_transition_median", "fixed",
    "dropped", "outlier",
    # correction statistics of both cameras
    *(f"{side}_{name}" for side in ("ref", "mov") for name in (
        "background", "dead_pixels", "dead_std_threshold", "dead_mean_threshold", "segmentation_level",
        "segmentation_min", "segmentation_mean", "foreground_fraction")),
)


def _read_records(root: Path, suffix: str) -> dict[tuple, dict]:
    return {key: record for key, (_, record) in scan_records(root, suffix, complete=False).items()}


def _correction_columns(side: str, record: dict | None) -> dict:
    if record is None:
        return {}
    bg = record.get("background") or {}
    dead = record.get("dead_pixels") or {}
    seg = record.get("segmentation") or {}
    return {f"{side}_background": bg.get("mean", bg.get("level")),
            f"{side}_dead_pixels": dead.get("count"),
            f"{side}_dead_std_threshold": dead.get("std_threshold"),
            f"{side}_dead_mean_threshold": dead.get("mean_threshold"),
            f"{side}_segmentation_level": seg.get("level"),
            f"{side}_segmentation_min": seg.get("min_intensity"),
            f"{side}_segmentation_mean": seg.get("mean_intensity"),
            f"{side}_foreground_fraction": seg.get("foreground_fraction")}


def _estimate_columns(record: dict) -> dict:
    offset = record.get("sampling_offset_yx_px") or [None, None]
    tp = record.get("transition_plane") or {}
    return {"sampling_dy": offset[0], "sampling_dx": offset[1], "sampling_rotation_deg": record.get("sampling_rotation_deg"),
            "confidence": record.get("registration_confidence"),
            "registration_method": record.get("registration_method"),
            "intensity_ratio": record.get("intensity_ratio_moving_over_reference"),
            "intensity_factor": record.get("intensity_factor"),
            "intensity_scaled_camera": record.get("intensity_scaled_camera"),
            "transition_min": tp.get("min"), "transition_median": tp.get("median"), "transition_max": tp.get("max")}


def parameter_table(root: str | Path, pairs=((0, 1), (2, 3))) -> list[dict]:
    """Every parameter of a processed recording, one row per (specimen, timepoint, pair, channel).

    A camera pair of channel-fused cameras has ``channel`` "c+d" and no
    correction columns (each camera is two corrected volumes).

    Collects the pass-1 estimates (``*.fusionEstimate.json``), the fused
    volumes' parameter records (``*.fusedStack.json``: estimated values after
    a one-pass fusion, used values always), the lookup tables (dropped /
    outlier flags) and both cameras' correction records (background, dead
    pixels and their thresholds, segmentation levels, foreground fraction).
    Columns are :data:`TABLE_COLUMNS`; a value that does not exist is None.
    """
    root = Path(root)
    if not root.is_dir():
        from ..errors import InputNotFoundError
        raise InputNotFoundError(f"{root}: output folder does not exist")
    corrections = {(s, t, cams[0], ch): r for (s, t, cams, ch), r in _read_records(root, "correction.json").items()
                   if len(cams) == 1}
    estimates = {k: r for k, r in _read_records(root, f"{ESTIMATE_KIND}.json").items() if len(k[2]) == 2}
    fused = {k: r for k, r in _read_records(root, "fusedStack.json").items() if len(k[2]) == 2}
    luts = {}
    for path in sorted(root.glob("SPM*/SPM*_CM*_CM*_CHN*.lookUpTable.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for row in record.get("timepoints", []):
            luts[(record["specimen"], row["timepoint"], (record["reference_camera"], record["moving_camera"]),
                  as_channel(record["channel"]))] = row
    keys = set(estimates) | set(fused)
    for s, t, cam, ch in corrections:  # pairs with corrected volumes but no fusion yet
        for pair in pairs:
            if cam == pair[0] and (s, t, pair[1], ch) in corrections:
                keys.add((s, t, tuple(pair), ch))
    rows = []
    # a channel pair (c, d) of channel-fused cameras sorts after channel c and shows as "c+d"
    for s, t, pair, ch in sorted(keys, key=lambda k: k[:3] + (k[3] if isinstance(k[3], tuple) else (k[3],),)):
        row = dict.fromkeys(TABLE_COLUMNS)
        row.update(specimen=s, timepoint=t, reference_camera=pair[0], moving_camera=pair[1],
                   channel="+".join(map(str, ch)) if isinstance(ch, tuple) else ch)
        est, fus, lut = estimates.get((s, t, pair, ch)), fused.get((s, t, pair, ch)), luts.get((s, t, pair, ch))
        if est is not None:
            row.update(_estimate_columns(est))
        elif fus is not None and not fus.get("parameters_fixed"):
            row.update(_estimate_columns(fus))
        if fus is not None:
            used = _estimate_columns(fus)
            row.update(used_sampling_dy=used["sampling_dy"], used_sampling_dx=used["sampling_dx"],
                       used_sampling_rotation_deg=used["sampling_rotation_deg"],
                       used_intensity_ratio=used["intensity_ratio"], used_transition_median=used["transition_median"],
                       fixed=bool(fus.get("parameters_fixed")))
        if lut is not None:
            row.update(dropped=lut.get("dropped"), outlier=lut.get("outlier"))
        row.update(_correction_columns("ref", corrections.get((s, t, pair[0], ch))))
        row.update(_correction_columns("mov", corrections.get((s, t, pair[1], ch))))
        rows.append(row)
    return rows


def format_table(rows: list[dict], fmt: str = "text", columns=None) -> str:
    """The table as aligned text, CSV or JSON lines."""
    columns = list(columns or TABLE_COLUMNS)
    if fmt == "jsonl":
        return "".join(json.dumps({c: r.get(c) for c in columns}) + "\n" for r in rows)

    def cell(value):
        if value is None:
            return ""
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, float):
            return f"{value:.6g}"
        return str(value)

    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([cell(r.get(c)) for c in columns])
        return buf.getvalue()
    if fmt != "text":
        raise ValueError(f"fmt must be 'text', 'csv' or 'jsonl', got {fmt!r}")
    if not rows:
        return "(no parameters found)\n"
    # drop all-empty columns, and the method's long description (in the CSV / JSON forms)
    shown = [c for c in columns if c != "registration_method" and any(r.get(c) is not None for r in rows)]
    table = [shown] + [[cell(r.get(c)) for c in shown] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(shown))]
    return "".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) + "\n" for line in table)
