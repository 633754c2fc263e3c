"""A compact Python API over the pipeline, for scripts and notebooks.

::

    from isoview_dask import ProcessingConfig, process_dataset, fuse, blend_views, temporal, viz

    cfg = ProcessingConfig.load("isoview.toml")               # or a dict, or a path, or None
    process_dataset(cfg, "raw/", "out/")                      # correction (fusion=True: and fusion)
    estimates = fuse(cfg, "out/", apply_fusion=False)         # per-pair estimates, nothing written
    result = fuse(cfg, "out/")                                # lazy fused volumes (dask arrays)
    volume = result.compute()[(0, 0, (0, 1), 0)]              # or result.persist(), result.write("fused/")
    fuse(cfg, "out/", "fused/")                               # estimate, fuse and write (the fuse stage)
    viz.fusion_summary(result[(0, 0, (0, 1), 0)])

Every function takes the configuration first, as a :class:`ProcessingConfig`,
a mapping of sections, a TOML/JSON path or None (defaults); flat flags
(``fusion_type="average"``) override it. Writing goes through the pipeline's
stage functions, so outputs, completion records and run records
(:mod:`isoview_dask.provenance`) are those of the command line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .config import ProcessingConfig

log = logging.getLogger(__name__)

__all__ = ["FusionResult", "IsoviewProcessor", "PairFusion", "blend_views", "fuse", "load_config",
           "process_dataset"]

#: A fused pair: (specimen, timepoint, (reference camera, moving camera), channel). With
#: ``fusion.channel_pairs``, a channel-fused output: (specimen, timepoint, (a, b) or (camera,),
#: (channel c, channel d)).
PairKey = tuple[int, int, tuple[int, ...], int | tuple[int, int]]


def load_config(config=None, **flags) -> ProcessingConfig:
    """A :class:`ProcessingConfig` from a config, a mapping, a TOML/JSON path or None; ``flags`` override."""
    if config is None:
        base = ProcessingConfig()
    elif isinstance(config, ProcessingConfig):
        base = config
    elif isinstance(config, Mapping):
        base = ProcessingConfig.from_dict(config)
    elif isinstance(config, (str, os.PathLike)):
        base = ProcessingConfig.load(config)
    else:
        raise TypeError(f"config: expected a ProcessingConfig, a mapping, a path or None, got {type(config).__name__}")
    return ProcessingConfig.from_flags(base, **flags) if flags else base


def _cluster_context(cluster):
    import contextlib
    if cluster is None:
        return contextlib.nullcontext()
    from .cluster import ClusterSpec, client_context
    if isinstance(cluster, str):
        cluster = ClusterSpec(cluster=cluster)
    elif isinstance(cluster, Mapping):
        cluster = ClusterSpec(**cluster)
    return client_context(cluster)


def process_dataset(config=None, input=None, out=None, *, fusion: bool = False, two_pass: bool = False,
                    cluster=None, progress: bool = True, **flags) -> dict:
    """Correct a raw recording, and fuse it when asked (the ``correct`` / ``run`` / ``timelapse`` commands).

    Parameters
    ----------
    config : ProcessingConfig, mapping, path or None
        The configuration; ``flags`` (e.g. ``input_cameras=[0, 1]``) override it.
    input : path or Dataset
        The raw recording (default the config's ``input_dir``).
    out : path
        Output root (corrected and fused volumes go under ``<out>/SPM##/TM######/``; default the
        config's ``output_dir``).
    fusion : bool
        Also fuse the opposing camera pairs (one pass per timepoint).
    two_pass : bool
        Fuse in two passes with time-smoothed parameters (implies ``fusion``).
    cluster : ClusterSpec, mapping, str or None
        Run on this cluster (e.g. ``"local"``); None: the active client, or
        dask's threaded scheduler.

    Returns
    -------
    dict of stage name -> StageSummary
        ``correct``, and ``fuse`` (``estimate``, ``smooth``, ``fuse`` with ``two_pass``); with fusion and
        ``isotropic_enable=True`` also ``isotropic_registration`` and ``isotropic`` (and
        ``isotropic_smooth`` with ``two_pass``): the isotropic reconstruction of every timepoint
        (:func:`isoview_dask.pipeline.isotropic.isotropic_dataset` runs it alone on fused outputs).
    """
    cfg = load_config(config, **flags)
    input = input if input is not None else cfg.input_dir
    out = out if out is not None else cfg.output_dir
    if input is None or out is None:
        raise TypeError("process_dataset needs the raw recording (input, or the config's input_dir) and the "
                        "output root (out, or output_dir)")
    from .pipeline import process_dataset as run_dataset
    from .pipeline.timelapse import process_timelapse
    with _cluster_context(cluster):
        if two_pass:
            return process_timelapse(input, out, cfg, progress=progress)
        return run_dataset(input, out, cfg, fuse=fusion, progress=progress)


class IsoviewProcessor:
    """The original port's main processor class, over :func:`process_dataset`.

    Scripts of the single-machine port build one from a configuration and
    call :meth:`run`::

        config = ProcessingConfig(input_dir="raw/", timepoints=[0, 1], cameras=[0, 1, 2, 3])
        IsoviewProcessor(config).run()                    # corrected volumes in raw.corrected/

    Here the work runs as dask graphs (on ``cluster``, the active client, or
    dask's threaded scheduler), and the outputs, completion records and run
    records are those of ``isoview-dask correct`` (``run`` with ``fusion``).

    Parameters
    ----------
    config : ProcessingConfig, mapping, path or None
        The configuration, with at least ``input_dir`` (the raw recording).
        Without an ``output_dir``, the outputs go beside the recording into
        ``<input_dir>.corrected`` (the original port's folder).
    cluster : ClusterSpec, mapping, str or None
        Where :meth:`run` computes (e.g. ``"local"``).
    **flags
        Flat options overriding ``config`` (``input_timepoints=[0]``,
        ``fusion_type="average"``...).

    Attributes
    ----------
    config : ProcessingConfig
        The resolved configuration.
    input_dir, output_dir : Path
        The raw recording and the output root.
    """

    def __init__(self, config=None, *, cluster=None, **flags):
        self.config = load_config(config, **flags)
        if self.config.input_dir is None:
            raise TypeError("IsoviewProcessor needs the raw recording: input_dir in the configuration")
        self.input_dir = Path(self.config.input_dir)
        self.output_dir = (Path(self.config.output_dir) if self.config.output_dir is not None
                           else self.input_dir.with_name(self.input_dir.name + ".corrected"))
        self.cluster = cluster

    def run(self, *, fusion: bool = False, progress: bool = True) -> dict:
        """Correct every selected camera view (and with ``fusion`` fuse the camera pairs); resumable.

        Parameters
        ----------
        fusion : bool
            Also fuse the opposing camera pairs (the original port's ``multi_fuse`` step).
        progress : bool
            Show the progress bar.

        Returns
        -------
        dict of stage name -> StageSummary
            As :func:`process_dataset` returns it.
        """
        return process_dataset(self.config, self.input_dir, self.output_dir, fusion=fusion,
                               cluster=self.cluster, progress=progress)

    def __repr__(self) -> str:
        return f"IsoviewProcessor(input_dir={str(self.input_dir)!r}, output_dir={str(self.output_dir)!r})"


# ------------------------------------------------------------------------------------------- fusion

@dataclass
class PairFusion:
    """One opposing camera pair (or one channel-fused camera): its estimates and, lazily, its volumes.

    Attributes
    ----------
    key : (specimen, timepoint, (a, b), channel)
        With ``fusion.channel_pairs``: (specimen, timepoint, (a, b) or
        (camera,), (channel c, channel d)).
    estimate : PairEstimate, ChannelEstimate or None
        Registration, intensity and transition-plane map (None when read back
        from written outputs; see ``parameters``). A lone channel-fused camera
        has its :class:`~isoview_dask.pipeline.fuse.ChannelEstimate`; a camera
        pair of channel-fused cameras has the pair's estimate, and the channel
        estimates are in ``parameters["channel_fusion"]``.
    parameters : dict
        The small values: the estimate's summary, or the written parameters JSON.
    fused : dask array (Z, Y, X) or None
        The fused volume, lazy (None with ``apply_fusion=False``).
    reference, moving_aligned : dask arrays or None
        The reference camera and the moving one in its frame (NaN where it
        recorded nothing), lazy: for overlays and checks.
    mask_reference, mask_moving_aligned : dask arrays of bool or None
    voxel_size_um : (z, y, x) or None
    """

    key: PairKey
    estimate: Any = None
    parameters: dict = field(default_factory=dict)
    fused: Any = None
    reference: Any = None
    moving_aligned: Any = None
    mask_reference: Any = None
    mask_moving_aligned: Any = None
    voxel_size_um: Any = None

    @property
    def transition_yx(self) -> np.ndarray | None:
        return getattr(self.estimate, "transition_yx", None)


class FusionResult(Mapping):
    """What :func:`fuse` returns: a mapping of pair key -> :class:`PairFusion`, lazy until computed.

    ``failed`` maps pairs that could not be fused to the reason; ``summary``
    is the stage summary when the result was written.
    """

    def __init__(self, pairs: dict, config: ProcessingConfig, corrected: Path, failed: dict | None = None,
                 summary=None):
        self._pairs = dict(pairs)
        self.config = config
        self.corrected = corrected
        self.failed = dict(failed or {})
        self.summary = summary

    def __getitem__(self, key) -> PairFusion:
        return self._pairs[key]

    def __iter__(self) -> Iterator[PairKey]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        state = "written" if self.summary is not None else (
            "lazy" if any(p.fused is not None for p in self.values()) else "estimates only")
        return f"<FusionResult {len(self)} pair(s), {len(self.failed)} failed, {state}>"

    @property
    def estimates(self) -> dict:
        """Pair key -> PairEstimate."""
        return {k: p.estimate for k, p in self.items()}

    @property
    def parameters(self) -> dict:
        """Pair key -> small parameter dict."""
        return {k: p.parameters for k, p in self.items()}

    @property
    def arrays(self) -> dict:
        """Pair key -> lazy fused volume."""
        return {k: p.fused for k, p in self.items() if p.fused is not None}

    def compute(self, progress: bool = False) -> dict:
        """Compute every fused volume (together, on the active cluster); pair key -> numpy array."""
        from .cluster import compute
        keys = list(self.arrays)
        return dict(zip(keys, compute(*[self.arrays[k] for k in keys], progress=progress, label="fusing")))

    def persist(self) -> "FusionResult":
        """A copy whose fused volumes are held in (cluster) memory: later computations start from them."""
        import dask
        keys = list(self.arrays)
        held = dict(zip(keys, dask.persist(*[self.arrays[k] for k in keys])))
        pairs = {k: replace(p, fused=held.get(k, p.fused)) for k, p in self.items()}
        return FusionResult(pairs, self.config, self.corrected, self.failed, self.summary)

    def fixed_parameters(self) -> Callable:
        """This result's estimates as ``fuse_dataset(fixed_parameters=...)``."""
        # camera pairs (a lone channel-fused camera has no registration to fix)
        table = {k: p.estimate for k, p in self.items() if hasattr(p.estimate, "offset_yx")}

        def lookup(specimen, timepoint, pair, channel):
            estimate = table.get((specimen, timepoint, tuple(pair), channel))
            return None if estimate is None else _fixed_from_estimate(estimate)
        return lookup

    def write(self, out=None, *, progress: bool = True) -> "FusionResult":
        """Write the fused volumes (the fusion stage with these estimates as fixed parameters).

        Returns the result read back from the written outputs (``summary`` set).
        """
        from .pipeline import fuse_dataset
        out = Path(out) if out is not None else self.corrected
        config = self.config
        if self:  # only the pairs this result holds (pairs it lacks would be estimated afresh)
            keys = list(self)
            channels = {c for k in keys for c in (k[3] if isinstance(k[3], tuple) else (k[3],))}
            config = config.replace(input_specimens=sorted({k[0] for k in keys}),
                                    input_timepoints=sorted({k[1] for k in keys}),
                                    input_channels=sorted(channels),
                                    input_cameras=sorted({c for k in keys for c in k[2]}),
                                    fusion_camera_pairs=sorted({tuple(k[2]) for k in keys if len(k[2]) == 2}))
        summary = fuse_dataset(self.corrected, out, config, progress=progress, fixed_parameters=self.fixed_parameters())
        return _read_written(self.corrected, out, config, summary, self.failed)


def _fixed_from_estimate(estimate) -> dict:
    fixed = {"sampling_offset_yx_px": [float(v) for v in estimate.offset_yx],
             "sampling_rotation_deg": float(estimate.rotation_deg),
             "registration_confidence": float(estimate.confidence),
             "transition_yx": np.asarray(estimate.transition_yx, dtype=np.float64)}
    if estimate.intensity is not None:
        fixed["intensity_ratio_moving_over_reference"] = float(estimate.intensity.ratio)
    return fixed


def _fixed_for(parameters, key: PairKey) -> dict | None:
    """Fixed parameters of one pair from what the caller gave ``fuse(parameters=...)``."""
    if parameters is None:
        return None
    if callable(parameters) and not isinstance(parameters, Mapping):
        s, t, pair, ch = key
        return parameters(s, t, pair, ch)
    if isinstance(parameters, Mapping) and parameters and all(isinstance(k, str) for k in parameters):
        return dict(parameters)  # the same values for every pair
    entry = parameters.get(key) if isinstance(parameters, Mapping) else None
    if entry is None:
        return None
    if isinstance(entry, PairFusion):
        entry = entry.estimate if entry.estimate is not None else entry.parameters
    if hasattr(entry, "transition_yx") and hasattr(entry, "offset_yx"):
        return _fixed_from_estimate(entry)
    return dict(entry)


def _corrected_from_config(cfg: ProcessingConfig) -> Path:
    """The config's ``input_dir`` or ``output_dir``, the first that holds complete corrected volumes."""
    from .pipeline import find_corrected
    folders = [Path(p) for p in (cfg.input_dir, cfg.output_dir) if p]
    for folder in folders:
        if folder.is_dir() and find_corrected(folder):
            return folder
    if not folders:
        raise TypeError("fuse needs the corrected-output root: corrected=..., or input_dir/output_dir in the config")
    from .errors import InputNotFoundError
    raise InputNotFoundError(f"no complete corrected volumes in {' or '.join(map(str, folders))}: correct the "
                             "recording first (isoview_dask.process_dataset(config), or 'isoview-dask correct')")


def _pairs(corrected, config: ProcessingConfig):
    """(key, reference view, moving view) of every single-channel camera pair, as fuse_dataset forms them."""
    from .pipeline.fuse import find_corrected
    from .pipeline.timelapse import pair_groups
    for specimen, timepoint, channel, pair, ref, mov in pair_groups(find_corrected(corrected), config):
        yield (specimen, timepoint, tuple(pair), channel), ref, mov


def _channel_jobs(corrected, config: ProcessingConfig):
    """(key, ChannelJob) of every ``fusion.channel_pairs`` output, as fuse_dataset forms them."""
    from .pipeline.fuse import channel_jobs, find_corrected
    if not config.fusion.channel_pairs:
        return
    for job in channel_jobs(find_corrected(corrected), config):
        yield (job.specimen, job.timepoint, job.cameras, job.channels), job


def _read_written(corrected, out, config, summary, failed) -> FusionResult:
    import json

    from .io import open_volume
    from .pipeline import output_path
    pairs, failed = {}, dict(failed or {})
    keys = [key for key, _, _ in _pairs(corrected, config)] + [key for key, _ in _channel_jobs(corrected, config)]
    for key in keys:
        s, t, cameras, ch = key
        target = output_path(out, s, t, list(cameras), list(ch) if isinstance(ch, tuple) else ch, "fusedStack")
        if str(target) in summary.failed:
            failed[key] = summary.failed[str(target)]
        elif target.with_suffix(".json").is_file() and target.exists():
            params = json.loads(target.with_suffix(".json").read_text())
            pairs[key] = PairFusion(key, None, params, open_volume(target),
                                    voxel_size_um=params.get("voxel_size_um_zyx"))
    return FusionResult(pairs, config, Path(corrected), failed, summary)


def _with_volumes(entry: PairFusion, views, cfg: ProcessingConfig) -> PairFusion:
    """``entry`` with its lazy fused volume and, for a camera pair ``views = (ref, mov)``, the aligned views and masks.

    One (channel-fused) view: the blended channels are the output, and ``reference``.
    """
    fc = cfg.fusion
    if len(views) == 1:
        fused, mask = views[0].open_arrays(fc)
        return replace(entry, fused=fused, reference=fused, mask_reference=mask)
    ref, mov = views
    from .pipeline.fuse import aligned_moving, prepared_pair, fused_volume
    estimate = entry.estimate
    reference, moving_f, mask_ref, mask_mov_f = prepared_pair(ref, mov, fc)
    moving_a, mask_mov_a = aligned_moving(moving_f, mask_mov_f, estimate.offset_yx, estimate.rotation_deg)
    fused = fused_volume(reference, moving_f, estimate, fc)
    return replace(entry, fused=fused, reference=reference, moving_aligned=moving_a,
                   mask_reference=mask_ref, mask_moving_aligned=mask_mov_a)


def fuse(config=None, corrected=None, out=None, *, estimate_params: bool = True, apply_fusion: bool = True,
         parameters=None, progress: bool = False, **flags) -> FusionResult:
    """Fuse the opposing camera pairs of corrected volumes: estimate, apply, or both.

    Parameters
    ----------
    config : ProcessingConfig, mapping, path or None
        ``fusion`` options (and ``input`` selection); ``flags`` override.
    corrected : path, optional
        Output root of the correction stage. Default: the config's
        ``input_dir``, or else its ``output_dir``, whichever holds complete
        corrected volumes (the original port's ``fuse(config, ...)``).
    out : path, optional
        With ``apply_fusion``: write the fused volumes there (the fusion
        stage: parameters JSON, diagnostics, completion and run records)
        and return them read back lazily. Without (and no ``output_dir`` in
        the config when ``corrected`` came from it): nothing is written.
    estimate_params : bool
        Estimate registration, intensity factor and transition planes.
        False: take them from ``parameters``.
    apply_fusion : bool
        Build the fused volumes. False (with ``estimate_params``): return the
        per-pair estimates only; no volume is computed or written.
    parameters : FusionResult, mapping or callable, optional
        With ``estimate_params=False``: a previous result (or its
        ``estimates``), ``{pair key: PairEstimate or dict}``, one dict for
        every pair, or ``f(specimen, timepoint, pair, channel) -> dict``;
        dict keys as :func:`isoview_dask.pipeline.fuse.estimate_pair`'s ``fixed``.

    Returns
    -------
    FusionResult
        Pair key ``(specimen, timepoint, (a, b), channel)`` -> :class:`PairFusion`.
        Unless written, fused volumes are lazy dask arrays: ``.compute()``,
        ``.persist()`` or ``.write(out)`` them.
    """
    if not estimate_params and parameters is None:
        raise ValueError("estimate_params=False needs parameters=... (e.g. an earlier fuse(...) result)")
    if not estimate_params and not apply_fusion:
        raise ValueError("nothing to do: estimate_params and apply_fusion are both False")
    cfg = load_config(config, **flags)
    if corrected is None:
        corrected = _corrected_from_config(cfg)
        if out is None and apply_fusion:
            out = cfg.output_dir
    if not cfg.fusion_enable:
        log.warning("fusion_enable is False in the configuration: nothing is fused")
        return FusionResult({}, cfg, Path(corrected), {})
    corrected = Path(corrected)
    if apply_fusion and out is not None:
        from .pipeline import fuse_dataset

        def lookup(specimen, timepoint, pair, channel):
            return _fixed_for(parameters, (specimen, timepoint, tuple(pair), channel))
        summary = fuse_dataset(corrected, out, cfg, progress=progress,
                               fixed_parameters=None if estimate_params else lookup)
        return _read_written(corrected, Path(out), cfg, summary, {})

    from .errors import IsoviewError
    from .pipeline.fuse import channel_fields, estimate_pair
    fc = cfg.fusion
    pairs, failed = {}, {}
    for key, ref, mov in _pairs(corrected, cfg):
        if ref is None or mov is None:
            failed[key] = f"camera {key[2][0] if ref is None else key[2][1]} has no complete corrected volume"
            continue
        fixed = None if estimate_params else _fixed_for(parameters, key)
        if not estimate_params and fixed is None:
            failed[key] = "no parameters given for this pair"
            continue
        try:
            estimate = estimate_pair(ref, mov, cfg, progress=progress, fixed=fixed)
        except (IsoviewError, ValueError, OSError) as exc:
            failed[key] = str(exc)
            continue
        entry = PairFusion(key, estimate, estimate.summary(), voxel_size_um=ref.voxel_size_um)
        pairs[key] = _with_volumes(entry, (ref, mov), cfg) if apply_fusion else entry
    for key, job in _channel_jobs(corrected, cfg):
        if job.missing:
            failed[key] = job.missing
            continue
        fixed = None if estimate_params or len(job.cameras) != 2 else _fixed_for(parameters, key)
        if not estimate_params and len(job.cameras) == 2 and fixed is None:
            failed[key] = "no parameters given for this pair"
            continue
        try:
            views = [v.prepare(cfg, progress=progress) for v in job.views]
            if len(views) == 2:
                estimate = estimate_pair(views[0], views[1], cfg, progress=progress, fixed=fixed)
                summary = {**estimate.summary(), **channel_fields(fc, *views)}
            else:
                estimate = views[0].estimate
                summary = channel_fields(fc, views[0])
        except (IsoviewError, ValueError, OSError) as exc:
            failed[key] = str(exc)
            continue
        entry = PairFusion(key, estimate, summary, voxel_size_um=views[0].voxel_size_um)
        pairs[key] = _with_volumes(entry, views, cfg) if apply_fusion else entry
    return FusionResult(pairs, cfg, corrected, failed)


def blend_views(reference, moving_aligned, transition=None, *, config=None, blending_range: float | None = None,
                method: str | None = None, intensity=None, profile: str | None = None, dtype=np.float32):
    """Blend two aligned views along z, blockwise (a thin wrapper of :func:`isoview_dask.fuse.blend`).

    Parameters
    ----------
    reference, moving_aligned : dask or numpy arrays (Z, Y, X)
        The reference camera and the opposing one in its frame (NaN where not recorded).
    transition : number or (Y, X) array, optional
        Transition plane(s); None with ``method='geometric'`` is the middle plane.
    config : ProcessingConfig, mapping, path or None
        Defaults for ``blending_range`` (its camera value), ``method``
        (``fusion.type``; 'sharpness' ignores the transition) and ``profile``
        (``fusion.blending_profile``).
    intensity : IntensityResult or float, optional
        A float is the ``moving / reference`` brightness ratio; the dimmer view is scaled.

    Returns
    -------
    dask.array.Array (Z, Y, X), lazy.
    """
    from .fuse import IntensityResult, blend, blend_by_sharpness
    fc = load_config(config).fusion
    if intensity is not None and not isinstance(intensity, IntensityResult):
        intensity = IntensityResult.from_ratio(float(intensity))
    if (fc.type if method is None else method) == "sharpness":  # content-based: no transition
        return blend_by_sharpness(reference, moving_aligned, sigma_px=fc.sharpness_sigma_px, intensity=intensity,
                                  dtype=dtype)
    return blend(reference, moving_aligned, transition,
                 fc.blending_range[1] if blending_range is None else blending_range,
                 fc.type if method is None else method, intensity,
                 profile=fc.blending_profile if profile is None else profile, dtype=dtype)
