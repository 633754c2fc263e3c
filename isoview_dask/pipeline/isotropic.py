"""The isotropic four-view reconstruction wired to files: VW00 + VW90 -> one isotropic volume per timepoint.

VW00 and VW90 are the pair-fused volumes of two orthogonal camera pairs
(``isotropic.views``; default the first two of ``fusion.camera_pairs``: 0+1
and 2+3). For every (specimen, timepoint, channel combination) whose two
fused views are complete, the stage runs two jobs in the executor's plan
(:mod:`isoview_dask.pipeline.executor`):

1. **registration** (:func:`registration_job`): VW90 registered onto VW00 in
   3-D (:func:`isoview_dask.isotropic.register_views`), starting from the
   previous timepoint's transform when there is one; the record
   ``<stem>.isotropicRegistration.json`` holds the fit, the transform used
   and the fallback taken when the fit was not trusted;
2. **reconstruction** (:func:`reconstruction_job`): both views deconvolved
   (or averaged) blockwise on an isotropic grid in VW00's frame
   (:func:`isoview_dask.isotropic.reconstruct`) and written, with a
   parameters JSON and diagnostic PNGs::

    <out>/SPM00/TM000000/SPM00_TM000000_CM00_CM01_CM02_CM03_CHN00_CHN01.isotropic.zarr
    <out>/SPM00/TM000000/SPM00_TM000000_CM00_CM01_CM02_CM03_CHN00_CHN01.isotropic.json
    <out>/SPM00/TM000000/SPM00_TM000000_CM00_CM01_CM02_CM03_CHN00_CHN01.isotropic.{slices,checkerboard,beads}.png
    <out>/SPM00/TM000000/SPM00_TM000000_CM00_CM01_CM02_CM03_CHN00_CHN01.isotropicRegistration.json

The registration of timepoint t waits for t's fusions and for the
registration of the timepoint before it (its transform is the start); the
reconstructions wait only for their own registration, so they run in
parallel while the registrations follow each other. In a time-lapse
(:func:`smooth_registrations`) every registration is done first, the
transforms are smoothed over time like the pair parameters (rloess over
``fusion.smoothing_window``, or one static value with ``fusion.static``) and
written to a lookup table ``<out>/SPM00/SPM00_CM00_CM01_CM02_CM03_CHN00_CHN01.isotropicLookUpTable.json``
(+ ``.csv``), and every timepoint is reconstructed with its smoothed transform.

Outputs are written under temporary names and renamed when complete; the
JSON beside each output is written last and is its completion record, with
a fingerprint of the inputs (the fused views' records), the options and the
transform: a rerun skips complete outputs and redoes the rest.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .. import __version__
from ..config import ConfigError, ProcessingConfig
from ..errors import InputNotFoundError, IsoviewError
from .common import (StageSummary, channel_label, completed, fingerprint, output_path, relative_outputs,
                     scan_records, timepoint_dir, volume_stem, write_json, write_text)
from .executor import Job, JobResult, job_errors, job_work, run_jobs

log = logging.getLogger(__name__)

__all__ = ["FusedView", "IsotropicTarget", "KIND", "LUT_KIND", "MissingFusedViewError", "REGISTRATION_KIND",
           "find_fused", "isotropic_dataset", "isotropic_steps", "isotropic_targets", "read_registration",
           "reconstruct_target", "reconstruction_job", "register_target", "registration_job",
           "smooth_registrations", "smooth_transforms", "transform_parameters"]

#: Kind (file-name part) of the isotropic volume and its JSON record.
KIND = "isotropic"
#: Kind of the registration record.
REGISTRATION_KIND = "isotropicRegistration"
#: Kind of the time-lapse lookup table (under ``<out>/SPM##/``).
LUT_KIND = "isotropicLookUpTable"
#: Stage names of the two job kinds (the summaries they report to).
STAGE = "isotropic"
REGISTRATION_STAGE = "isotropic_registration"
#: Lateral and axial FWHM (µm) of each view's Gaussian PSF when neither the configuration nor the XML gives them.
DEFAULT_PSF_FWHM_UM = (0.77, 3.35)
#: Lateral FWHM of a widefield detection PSF: this x wavelength / NA.
LATERAL_FWHM_PER_WAVELENGTH_NA = 0.51
#: XML attributes (µm) that give the light-sheet thickness (FWHM), i.e. the axial PSF of a view.
SHEET_ATTRIBUTES = ("light_sheet_fwhm_um", "light_sheet_thickness_um", "sheet_thickness_um", "sheet_thickness")
#: uint16 output: the sampled maximum of the views times this maps to 65535 (the result may exceed the views'
#: maximum: deconvolution concentrates each point's light).
UINT16_HEADROOM = {"deconvolution": 4.0, "average": 1.25}
#: Planes of each view sampled for the uint16 scale.
UINT16_SAMPLE_PLANES = 8
#: At most this many output voxels in a block's core (the default block of the reconstruction options).
BLOCK_VOXELS = 64 * 128 * 128
#: Memory budget of one reconstruction task (bytes) without a cluster; on a cluster at most a quarter of a
#: worker thread's share of its memory limit.
TASK_MEMORY_BYTES = 1 << 30
#: Dask blocks (Z, Y, X) the fused views are read in (zarr): about 2 MB of float32, so that a block's source
#: window costs about its own size, not whole shards.
READ_CHUNKS = (8, 256, 256)
#: Bead measurements: at most this many beads, profiles of this half-length (output voxels).
MAX_BEADS = 20
BEAD_HALF_WIDTH = 12


class MissingFusedViewError(IsoviewError, FileNotFoundError):
    """A fused view the isotropic stage needs is absent or incomplete."""


# ------------------------------------------------------------------------------------------ inputs

@dataclass(frozen=True)
class FusedView:
    """One complete pair-fused volume (from its ``.fusedStack.json`` completion record)."""

    specimen: int
    timepoint: int
    cameras: tuple[int, ...]
    channels: tuple[int, ...]
    record_path: Path
    record: dict

    @property
    def path(self) -> Path:
        """The fused volume (``<stem>.fusedStack.zarr``; the fusion stage writes zarr)."""
        name = self.record_path.name
        return self.record_path.with_name(name[:-len(".json")] + ".zarr")

    @property
    def voxel_size_um(self) -> tuple[float, float, float]:
        """Voxel size (Z, Y, X) of the view in its own frame, µm."""
        voxel = self.record.get("voxel_size_um_zyx")
        if not voxel:
            raise IsoviewError(f"{self.record_path}: no voxel_size_um_zyx; the isotropic stage needs the voxel size")
        return tuple(float(v) for v in voxel)

    def open(self):
        """The fused volume as a lazy dask array (Z, Y, X)."""
        from ..io import open_volume, volume_format
        if not self.path.exists():
            raise MissingFusedViewError(f"{self.path}: fused volume missing (its record {self.record_path.name} "
                                        "exists); run 'isoview-dask fuse' again")
        if volume_format(self.path) == "zarr":
            # small dask blocks: a reconstruction block reads a window of a few planes, and a getitem loads
            # whole dask blocks (whole shards would be up to 32 x 1024 x 1024 voxels per window read)
            return open_volume(self.path, chunks=READ_CHUNKS)
        return open_volume(self.path)

    def identity(self) -> dict:
        """What the view is and its content fingerprint (moved or copied trees still resume)."""
        return {"cameras": list(self.cameras), "channels": list(self.channels),
                "fingerprint": self.record.get("fingerprint")}


def find_fused(root: str | Path, *, specimen: int | None = None,
               timepoint: int | None = None) -> dict[tuple, FusedView]:
    """Complete camera-pair fused views under ``root``, keyed by (specimen, timepoint, (a, b), channels tuple).

    ``specimen`` and ``timepoint`` (both or neither) restrict the scan to one timepoint's folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputNotFoundError(f"{root}: fused-output folder does not exist")
    folders = f"SPM{specimen:02d}/TM{timepoint:06d}" if timepoint is not None else "SPM*/TM*"
    found = {}
    for (s, t, cams, ch), (path, record) in scan_records(root, "fusedStack.json", folders=folders).items():
        if len(cams) != 2:
            continue
        channels = tuple(ch) if isinstance(ch, tuple) else (int(ch),)
        found[(s, t, tuple(cams), channels)] = FusedView(s, t, tuple(cams), channels, path, record)
    return found


def isotropic_views(config: ProcessingConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """The camera pairs of VW00 and VW90: ``isotropic.views``, else the first two of ``fusion.camera_pairs``."""
    views = config.isotropic.views
    if views is None:
        pairs = config.fusion.camera_pairs
        if len(pairs) < 2:
            raise ConfigError(f"isotropic.views: not set, and fusion.camera_pairs {[list(p) for p in pairs]} has "
                              "fewer than two camera pairs to take VW00 and VW90 from")
        views = pairs[:2]
    return tuple(views[0]), tuple(views[1])


@dataclass(frozen=True)
class IsotropicTarget:
    """One isotropic output: a (specimen, timepoint) and the two fused views it combines.

    ``vw00`` / ``vw90`` are None when that fused view is missing; ``missing`` then says which file is
    expected and what to run.
    """

    specimen: int
    timepoint: int
    views: tuple[tuple[int, int], tuple[int, int]]
    channels: tuple[int, ...]
    vw00: FusedView | None = None
    vw90: FusedView | None = None
    missing: str = ""

    @property
    def cameras(self) -> tuple[int, ...]:
        return self.views[0] + self.views[1]

    @property
    def chain(self) -> tuple:
        """The time series this output belongs to (registrations start from their predecessor in it)."""
        return (self.specimen, self.cameras, self.channels)

    @property
    def label(self) -> str:
        return (f"SPM{self.specimen:02d} TM{self.timepoint:06d} "
                f"CM{'+'.join(f'{c:02d}' for c in self.cameras)} {channel_label(self.channels)}")

    def path(self, out: str | Path, kind: str = KIND, fmt: str = "zarr") -> Path:
        return output_path(out, self.specimen, self.timepoint, list(self.cameras), list(self.channels), kind, fmt)

    def nbytes(self) -> int:
        """Bytes of the two fused views (what a job reads, at least once)."""
        return int(sum(v.open().nbytes for v in (self.vw00, self.vw90) if v is not None))


def _pair_channels(first: dict, second: dict) -> list[tuple]:
    """Channel keys of VW00 and VW90 fused views paired into combinations (None where one has no partner).

    The same channel(s) go together; otherwise (the usual IsoView recording: cameras 0/1 on one channel,
    2/3 on another) the views are paired in channel order.
    """
    pairs = [(k, k) for k in sorted(set(first) & set(second))]
    rest_a = sorted(set(first) - set(second))
    rest_b = sorted(set(second) - set(first))
    pairs += list(zip(rest_a, rest_b))
    pairs += [(k, None) for k in rest_a[len(rest_b):]] + [(None, k) for k in rest_b[len(rest_a):]]
    return sorted(pairs, key=lambda p: tuple(c for k in p if k is not None for c in k))


def isotropic_targets(fused: dict, out: str | Path, config: ProcessingConfig) -> list[IsotropicTarget]:
    """The isotropic outputs over complete fused views, sorted by (specimen, timepoint, channels).

    Parameters
    ----------
    fused : dict
        As :func:`find_fused` returns them.
    out : path
        Output root (only for the names in messages).
    config : ProcessingConfig
        ``isotropic.views`` (or ``fusion.camera_pairs``) and the ``input`` selection (specimens,
        timepoints, channels: a combination is selected by any of its channels).

    Returns
    -------
    list of IsotropicTarget
        A timepoint with only one of the two views gives a target whose ``missing`` names the
        expected file of the other.
    """
    views = isotropic_views(config)
    sel = config.input
    targets = []
    for specimen, timepoint in sorted({(s, t) for s, t, _, _ in fused}):
        if (sel.specimens is not None and specimen not in sel.specimens) or \
                (sel.timepoints is not None and timepoint not in sel.timepoints):
            continue
        sides = [{ch: v for (s, t, cams, ch), v in fused.items() if (s, t, cams) == (specimen, timepoint, pair)}
                 for pair in views]
        for key00, key90 in _pair_channels(*sides):
            channels = tuple(sorted({c for k in (key00, key90) if k is not None for c in k}))
            if sel.channels is not None and not set(channels) & set(sel.channels):
                continue
            vw00, vw90 = (side.get(k) if k is not None else None for side, k in zip(sides, (key00, key90)))
            missing = ""
            if vw00 is None or vw90 is None:
                role, pair = ("VW00", views[0]) if vw00 is None else ("VW90", views[1])
                expected = output_path(out, specimen, timepoint, list(pair), 0, "fusedStack").name
                expected = re.sub(r"_CHN\d+\.", "_CHN*.", expected)
                missing = (f"no complete fused view for {role} (cameras {pair[0]}+{pair[1]}): expected "
                           f"{timepoint_dir(out, specimen, timepoint) / expected} with its .fusedStack.json; "
                           "run 'isoview-dask fuse' first")
            targets.append(IsotropicTarget(specimen, timepoint, views, channels, vw00, vw90, missing))
    return targets


# ------------------------------------------------------------------------------------------ the PSF

def _objective_na(text: str | None) -> float | None:
    """The numerical aperture in an objective description such as ``Nikon 16x/0.8 W`` or ``NA 1.0``."""
    if not text:
        return None
    first = text.split(",")[0]
    m = re.search(r"/\s*(\d*\.?\d+)", first) or re.search(r"NA\s*=?\s*(\d*\.?\d+)", first, re.IGNORECASE)
    if not m:
        return None
    value = float(m.group(1))
    return value if 0 < value < 2 else None


def psf_from_metadata(view: FusedView) -> tuple[tuple[float, float] | None, str]:
    """Lateral and axial PSF FWHM (µm) from the recording's XML, or None; and where they came from.

    The lateral FWHM is ``0.51 x wavelength / NA`` (the recorded wavelength and the detection
    objective's numerical aperture); the axial one is a recorded light-sheet thickness
    (:data:`SHEET_ATTRIBUTES`), else :data:`DEFAULT_PSF_FWHM_UM`'s. The XML is found through the
    correction record of the view's reference camera.
    """
    from ..metadata import read_push_config
    root = view.record_path.parents[2]
    record_path = output_path(root, view.specimen, view.timepoint, view.cameras[0], view.channels[0], "correction",
                              "json")
    try:
        xml = json.loads(record_path.read_text()).get("view", {}).get("xml")
        metadata = read_push_config(xml) if xml else None
    except (OSError, ValueError, IsoviewError):
        metadata = None
    if metadata is None:
        return None, "default"
    wavelength = metadata.wavelength_nm
    na = _objective_na(metadata.attributes.get("detection_objective"))
    if not wavelength or not na:
        return None, "default"
    diffraction = LATERAL_FWHM_PER_WAVELENGTH_NA * wavelength / 1000.0 / na
    # an image sampled at pixel p shows no spot narrower than about 2 p: the diffraction limit alone would ask
    # the deconvolution for detail the camera never recorded
    sampling = 2.0 * min(view.voxel_size_um[1:])
    lateral = max(diffraction, sampling)
    axial, axial_source = DEFAULT_PSF_FWHM_UM[1], "default"
    for name in SHEET_ATTRIBUTES:
        value = metadata.attributes.get(name)
        try:
            if value is not None and float(value) > 0:
                axial, axial_source = float(value), f"{name} {float(value):g} µm"
                break
        except ValueError:
            continue
    return (lateral, axial), (f"xml {metadata.path}: lateral max({LATERAL_FWHM_PER_WAVELENGTH_NA} x "
                              f"{wavelength:g} nm / NA {na:g}, 2 pixels = {sampling:g} µm); axial {axial_source}")


def psf_settings(config: ProcessingConfig, target: IsotropicTarget):
    """The PSF model of both views, the Gaussian FWHM the registration blurs with, and their source.

    Returns
    -------
    model : PSFModel
    fwhm_um : (lateral, axial)
    source : str
    """
    from ..isotropic import PSFModel, load_psf
    ic = config.isotropic
    if ic.psf_fwhm_um is not None:
        fwhm, source = tuple(ic.psf_fwhm_um), "config (isotropic.psf_fwhm_um)"
    else:
        fwhm, source = psf_from_metadata(target.vw00)
        if fwhm is None:
            fwhm, source = DEFAULT_PSF_FWHM_UM, f"default {DEFAULT_PSF_FWHM_UM} (no NA and wavelength in the XML)"
    if ic.psf == "beads":
        measured = psf_from_beads(target)
        if measured is not None:
            return PSFModel(fwhm_um=measured[0], source=measured[1]), measured[0], measured[1]
        log.warning("isotropic %s: fewer than 5 beads found for the PSF; using %s", target.label, source)
        source = f"{source} (too few beads for isotropic.psf = beads)"
    elif ic.psf is not None:
        return load_psf(ic.psf, ic.psf_voxel_um), fwhm, f"measured PSF {ic.psf}"
    return PSFModel(fwhm_um=fwhm, source=source), fwhm, source


def psf_from_beads(target: IsotropicTarget) -> tuple[tuple[float, float], str] | None:
    """The Gaussian FWHM (lateral, axial; µm) measured on the beads of both fused views, and its description.

    Each view gives its own estimate (:func:`isoview_dask.isotropic.beads.estimate_psf_fwhm`); they are
    averaged weighted by their bead counts. None when neither view shows enough beads.
    """
    from ..isotropic.beads import estimate_psf_fwhm
    estimates = []
    for name, view in (("VW00", target.vw00), ("VW90", target.vw90)):
        estimate = estimate_psf_fwhm(view.open(), view.voxel_size_um)
        if estimate is not None:
            estimates.append((name, estimate))
    if not estimates:
        return None
    weights = np.array([e.beads for _, e in estimates], float)
    fwhm = tuple(float(v) for v in np.average([e.fwhm_um for _, e in estimates], axis=0, weights=weights))
    parts = "; ".join(f"{name}: {e.fwhm_um[0]:.3f} / {e.fwhm_um[1]:.3f} µm from {e.beads} beads"
                      for name, e in estimates)
    return fwhm, f"beads ({parts})"


# ------------------------------------------------------------------------------------------ registration

def read_registration(path: Path) -> dict | None:
    """A registration record, or None when it is absent or unreadable."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if "transform_vw00_to_vw90_um" in record else None


def previous_registration(out: str | Path, target: IsotropicTarget) -> tuple[int, dict] | None:
    """The registration record of the nearest earlier timepoint of the same series, if any.

    Looks in ``<out>/SPM##/TM*`` (one folder listing), nearest first.
    """
    folder = Path(out) / f"SPM{target.specimen:02d}"
    if not folder.is_dir():
        return None
    earlier = sorted((int(p.name[2:]) for p in folder.glob("TM*") if p.name[2:].isdigit()
                      and int(p.name[2:]) < target.timepoint), reverse=True)
    for timepoint in earlier:
        path = output_path(out, target.specimen, timepoint, list(target.cameras), list(target.channels),
                           REGISTRATION_KIND, "json")
        record = read_registration(path) if path.is_file() else None
        if record is not None:
            return timepoint, record
    return None


def _registration_options(config: ProcessingConfig) -> dict:
    ic = config.isotropic
    return {"orientation": ic.orientation, "fit": ic.fit, "min_confidence": ic.min_confidence,
            "registration_voxel_um": ic.registration_voxel_um, "psf_fwhm_um": ic.psf_fwhm_um,
            "psf": ic.psf, "psf_voxel_um": ic.psf_voxel_um}


def _registration_fingerprint(target: IsotropicTarget, config: ProcessingConfig, initial) -> str:
    inputs = [target.vw00.identity(), target.vw90.identity()]
    initial = None if initial is None else np.round(np.asarray(initial, float), 9).tolist()
    return fingerprint(inputs, {"registration": _registration_options(config), "initial": initial})


def register_target(target: IsotropicTarget, out: str | Path, config: ProcessingConfig,
                    previous: tuple[int, dict] | None = None) -> dict:
    """Register VW90 onto VW00 for one target and write ``<stem>.isotropicRegistration.json``.

    Parameters
    ----------
    target : IsotropicTarget
        With both views.
    out : path
        Output root.
    config : ProcessingConfig
        ``isotropic``: ``orientation``, ``fit``, ``min_confidence``, ``registration_voxel_um`` and the PSF.
    previous : (timepoint, record), optional
        The previous timepoint's registration: its transform is the start (no orientation search),
        and it is the fallback when this fit is not trusted.

    Returns
    -------
    dict
        The record written: ``registration`` (the fit, :meth:`ViewRegistration.to_dict`),
        ``transform_vw00_to_vw90_um`` (the transform used), ``transform_source`` ('registered',
        'previous timepoint' or 'translation-only'), ``fallback`` (why the fit was not used, or None),
        ``initial_from_timepoint``, ``scale90``, the views, the PSF FWHM used, timings, fingerprint.
    """
    from ..isotropic import register_views
    ic = config.isotropic
    t0 = time.perf_counter()
    vw00, vw90 = target.vw00.open(), target.vw90.open()
    _, fwhm, psf_source = psf_settings(config, target)
    initial = None if previous is None else np.asarray(previous[1]["transform_vw00_to_vw90_um"], float)
    registration = register_views(vw00, target.vw00.voxel_size_um, vw90, target.vw90.voxel_size_um,
                                  psf_fwhm_um=fwhm, orientation=ic.orientation, initial=initial, fit=ic.fit,
                                  voxel_um=ic.registration_voxel_um, min_confidence=ic.min_confidence)
    used, source, fallback = registration.transform, "registered", None
    scale90 = float(registration.scale90)
    trusted = registration.fallback is None and registration.confidence >= ic.min_confidence
    if not trusted:
        why = registration.fallback or (f"confidence {registration.confidence:.3f} < isotropic.min_confidence "
                                        f"{ic.min_confidence}")
        if previous is not None:
            used = np.asarray(previous[1]["transform_vw00_to_vw90_um"], float)
            scale90 = float(previous[1].get("scale90", scale90))
            source = "previous timepoint"
            fallback = f"{why}; used the transform of timepoint {previous[0]}"
        else:
            source = "translation-only"
            fallback = f"{why}; no earlier timepoint: used the translation-only transform"
        log.warning("%s: isotropic registration not trusted: %s", target.label, fallback)
    record_path = target.path(out, REGISTRATION_KIND, "json")
    record = {
        "package_version": __version__,
        "specimen": target.specimen, "timepoint": target.timepoint,
        "cameras": list(target.cameras), "channels": list(target.channels),
        "views": _views_record(target, record_path),
        "registration": registration.to_dict(),
        "transform_vw00_to_vw90_um": np.asarray(used, float).tolist(),
        "transform_convention": "s90 = T[:3, :3] @ s00 + T[:3, 3]: a point s00 (z, y, x) µm of VW00's frame (its "
                                "voxel (k, i, j) at (k, i, j) * voxel) is the point s90 of VW90's frame",
        "transform_source": source,
        "fallback": fallback,
        "initial_from_timepoint": None if previous is None else previous[0],
        "scale90": scale90,
        "psf_fwhm_um": list(fwhm), "psf_source": psf_source,
        "options": _registration_options(config),
        "timings": {"registration_s": time.perf_counter() - t0},
        "input_bytes": int(vw00.nbytes + vw90.nbytes),
        "outputs": [],
        "fingerprint": _registration_fingerprint(target, config, initial),
    }
    write_json(record_path, record)
    return record


def _views_record(target: IsotropicTarget, record_path: Path) -> dict:
    out = {}
    for role, view in (("vw00", target.vw00), ("vw90", target.vw90)):
        volume = view.open()
        out[role] = {"cameras": list(view.cameras), "channels": list(view.channels),
                     "path": relative_outputs(record_path, [view.path])[0],
                     "shape_zyx": list(volume.shape), "dtype": str(volume.dtype),
                     "voxel_size_um_zyx": list(view.voxel_size_um), "fingerprint": view.record.get("fingerprint")}
    return out


def _failed_job(key: str, stage: str, why: str) -> Job:
    def run() -> JobResult:
        log.error("%s: %s", key, why)
        return JobResult("failed", key, message=why)
    return Job(key, stage, run)


def registration_job(target: IsotropicTarget, out: str | Path, config: ProcessingConfig) -> Job:
    """The job registering one target: skipped when its record is complete with the same inputs, options
    and start (the previous timepoint's transform), else :func:`register_target`."""
    out = Path(out)
    key = str(target.path(out, REGISTRATION_KIND, "json"))
    if target.missing:
        return _failed_job(key, REGISTRATION_STAGE, target.missing)

    nbytes = _planned_bytes(target)

    def up_to_date(previous) -> bool:
        initial = None if previous is None else previous[1]["transform_vw00_to_vw90_um"]
        return not config.output.overwrite and completed(Path(key), _registration_fingerprint(target, config,
                                                                                                 initial))

    def complete() -> bool:
        try:
            return up_to_date(previous_registration(out, target))
        except job_errors():
            return False

    def run() -> JobResult:
        try:
            previous = previous_registration(out, target)
            if up_to_date(previous):
                return JobResult("skipped", key)
            record = job_work(nbytes, register_target, target, out, config, previous,
                              label=f"isotropic registration {Path(key).name}")
        except job_errors() as exc:
            log.error("isotropic registration of %s failed: %s", target.label, exc)
            return JobResult("failed", key, message=str(exc))
        return JobResult("written", key, input_bytes=record["input_bytes"], warning=record["fallback"] or "")
    return Job(key, REGISTRATION_STAGE, run, nbytes=nbytes, complete=complete)


def _planned_bytes(target: IsotropicTarget) -> int:
    """The bytes a job of ``target`` reads, for the executor's admission (0 when the views cannot be opened:
    the job itself then fails with the reason)."""
    try:
        return target.nbytes()
    except (IsoviewError, OSError, ValueError):
        return 0


# ------------------------------------------------------------------------------------------ reconstruction

def _divisors(n: int) -> list[int]:
    return sorted({d for k in range(1, int(math.isqrt(n)) + 1) if n % k == 0 for d in (k, n // k)})


def _block_candidates(unit: int | None, size: int) -> list[int]:
    """Block sizes along one axis, largest first: divisors of the shard's size (aligned), or any split of the axis."""
    if unit:
        return sorted(_divisors(int(unit)), reverse=True)
    return sorted({-(-size // k) for k in range(1, size + 1)}, reverse=True)


def choose_block(grid, shard, halo, sources, budget: int, requested=None,
                 max_voxels: int = BLOCK_VOXELS) -> tuple[int, int, int]:
    """The reconstruction block (output voxels, Z, Y, X): aligned with the output's shards and within budget.

    Parameters
    ----------
    grid : IsotropicGrid
    shard : (Z, Y, X) or None
        The output's shard (or write unit); each block size divides it, so no write task needs part of
        a block. None: no alignment (KLB, TIFF).
    halo : (Z, Y, X)
        The block's halo (voxels).
    sources : list
        See :func:`~isoview_dask.isotropic.reconstruct.task_memory_bytes`.
    budget : int
        Bytes one task may take.
    requested : (Z, Y, X), optional
        ``isotropic.block``: each size is rounded down to the nearest allowed one (a divisor of the shard).
    max_voxels : int
        At most this many voxels in the core.

    Notes
    -----
    Starting from the whole shard, the largest axis is cut to its next smaller allowed size until the
    task's memory (:func:`~isoview_dask.isotropic.reconstruct.task_memory_bytes`: block arrays and source
    windows) fits ``budget`` and the core has
    at most ``max_voxels``. The windows count: on a coarse output grid a small block reads a large part
    of the views.
    """
    from ..isotropic.reconstruct import task_memory_bytes

    units = list(shard) if shard else [None] * 3
    candidates = [_block_candidates(u, n) for u, n in zip(units, grid.shape)]
    if requested is not None:
        block = [next((c for c in cands if c <= int(r)), cands[-1]) for cands, r in zip(candidates, requested)]
        return tuple(int(b) for b in block)
    index = [0, 0, 0]

    def current():
        return [cands[i] for cands, i in zip(candidates, index)]

    while True:
        block = current()
        clipped = [min(b, n) for b, n in zip(block, grid.shape)]
        if int(np.prod(clipped)) <= max_voxels and task_memory_bytes(block, grid, halo, sources) <= budget:
            return tuple(int(b) for b in block)
        shrinkable = [a for a in range(3) if index[a] + 1 < len(candidates[a])]
        if not shrinkable:
            log.warning("isotropic block %s: above the task memory budget %.3g GB even at its smallest",
                        tuple(block), budget / 1e9)
            return tuple(int(b) for b in block)
        axis = max(shrinkable, key=lambda a: (min(block[a], grid.shape[a]), -a))
        index[axis] += 1


def _task_budget() -> int:
    """Bytes one reconstruction task may take: :data:`TASK_MEMORY_BYTES`, and on a cluster at most a quarter of
    a worker thread's share of the smallest worker memory limit."""
    from ..cluster import current_client
    client = current_client()
    budget = TASK_MEMORY_BYTES
    if client is not None:
        workers = client.scheduler_info()["workers"].values()
        shares = [int(w.get("memory_limit") or 0) / max(1, int(w.get("nthreads", 1))) for w in workers]
        if shares and all(shares):
            budget = min(budget, int(min(shares) / 4))
    return budget


def _output_unit(grid, config: ProcessingConfig):
    """The output's inner chunk and shard for the grid (zarr), or (None, None) for KLB / TIFF."""
    oc = config.output
    if oc.format != "zarr":
        return None, None
    from ..io.chunking import fit_chunks, write_chunks
    inner, shard = fit_chunks(grid.shape, oc.chunks, oc.shards or ())
    return inner, (shard or write_chunks(inner, None, grid.shape, 4))


def _uint16_scale(vw00, vw90, scale90: float, method: str) -> tuple[float, float]:
    """uint16 scale (stored = value x scale) from a few planes of each view; returns (scale, sampled maximum)."""
    from ..cluster import compute

    def planes(view):
        index = np.unique(np.linspace(0, view.shape[0] - 1, min(UINT16_SAMPLE_PLANES, view.shape[0]))
                          .round().astype(int))
        return view[index].max()

    m00, m90 = compute(planes(vw00), planes(vw90), progress=False, estimate=True)
    peak = max(float(m00), float(m90) * float(scale90))
    return (65535.0 / (UINT16_HEADROOM[method] * peak) if peak > 0 else 1.0), peak


def _figures_drawn(config: ProcessingConfig, timepoint: int) -> bool:
    """Whether the reconstruction of ``timepoint`` draws its figures (``isotropic.figures`` and
    ``fusion.figures_every``: timepoints 0, N, 2N, ...)."""
    return bool(config.isotropic.figures) and int(timepoint) % int(config.fusion.figures_every) == 0


def _reconstruction_fingerprint(target: IsotropicTarget, config: ProcessingConfig, transform, scale90) -> str:
    inputs = [target.vw00.identity(), target.vw90.identity()]
    isotropic = {k: v for k, v in config.isotropic.to_dict().items() if k != "enable"}
    output = {k: v for k, v in config.output.to_dict().items() if k not in ("overwrite", "store_corrected")}
    # the figures change no volume: only whether this timepoint's are drawn (its outputs) counts
    figures = {"figures_drawn": _figures_drawn(config, target.timepoint)} if config.isotropic.figures else {}
    return fingerprint(inputs, {"isotropic": isotropic, "output": output, **figures,
                                "transform": np.round(np.asarray(transform, float), 9).tolist(),
                                "scale90": round(float(scale90), 9)})


def _centre_planes(view, voxel, grid, transform, centre, scale: float = 1.0) -> dict:
    """The xy, xz and yz planes through ``centre`` of a view resampled onto the grid (lazy; thin blocks, so
    only the source each plane needs is read)."""
    from ..isotropic import resample_view
    z, y, x = centre
    big = 512
    return {"xy": resample_view(view, voxel, grid, transform, chunks=(1, big, big), scale=scale)[z],
            "xz": resample_view(view, voxel, grid, transform, chunks=(big, 1, big), scale=scale)[:, y],
            "yz": resample_view(view, voxel, grid, transform, chunks=(big, big, 1), scale=scale)[:, :, x]}


def _measure_beads(result_path: Path, xy_max: np.ndarray, z_index: np.ndarray, view_patches, voxel_um: float,
                   lateral_fwhm_um: float, value_scale: float) -> list[dict]:
    """Beads in the result (bright isolated spots of its max projection) and their FWHM in VW00, VW90 and the result.

    ``view_patches(regions)`` gives, for each of 'vw00' and 'vw90', the numpy patches of that view
    resampled on the grid over the given regions (one computation for all). Spots wider than 3 x the
    lateral PSF FWHM (nuclei, not beads) are left out.
    """
    from ..io import open_volume
    from ..isotropic import bead_fwhm, find_beads
    result = open_volume(result_path)
    found = find_beads(xy_max[None].astype(np.float32), count=MAX_BEADS, min_distance=BEAD_HALF_WIDTH // 2)
    h = BEAD_HALF_WIDTH + 2
    kept = []
    for _, y, x in found:
        centre = np.array([int(z_index[y, x]), y, x])
        lo = np.maximum(centre - h, 0)
        hi = np.minimum(centre + h + 1, result.shape)
        region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        local = (centre - lo)[None]
        width = bead_fwhm(np.asarray(result[region], np.float64) / value_scale, local, BEAD_HALF_WIDTH)[0] * voxel_um
        if np.all(np.isfinite(width)) and np.nanmean(width[1:]) <= 3 * lateral_fwhm_um:
            kept.append((centre, region, local, width))
    if not kept:
        return []
    patches = view_patches([region for _, region, _, _ in kept])
    beads = []
    for n, (centre, region, local, width) in enumerate(kept):
        widths = {"result": width}
        for role in ("vw00", "vw90"):
            widths[role] = bead_fwhm(patches[role][n], local, BEAD_HALF_WIDTH)[0] * voxel_um
        beads.append({"position_um": (centre * voxel_um).tolist(),
                      "fwhm_um": {k: [None if not np.isfinite(v) else float(v) for v in w]
                                  for k, w in widths.items()}})
    return beads


def reconstruct_target(target: IsotropicTarget, out: str | Path, config: ProcessingConfig, registration: dict,
                       transform, scale90: float, transform_source: str, *, progress: bool = False) -> dict:
    """Reconstruct one isotropic volume, write it, its figures and its JSON record.

    Parameters
    ----------
    target : IsotropicTarget
    out : path
        Output root.
    config : ProcessingConfig
        ``isotropic`` (method, PSF, grid, block, dtype, figures) and ``output`` (format, codec, chunks,
        shards, pyramid levels).
    registration : dict
        The target's registration record (:func:`register_target`).
    transform : 4 x 4
        The VW00 -> VW90 transform to use (the registration's, or a time-smoothed one).
    scale90 : float
        VW90 -> VW00 intensity factor.
    transform_source : str
        Where ``transform`` came from (for the record).

    Returns
    -------
    dict
        The record (also written as ``<stem>.isotropic.json``); see the module docstring of
        :mod:`isoview_dask.pipeline.isotropic` and the README for its fields.
    """
    from ..cluster import compute
    from ..io import open_volume, write_volume
    from ..isotropic import (ReconstructionOptions, output_grid, reconstruct, view_psfs)
    from ..isotropic.geometry import index_map
    from ..isotropic.reconstruct import block_halo, prebinned, task_memory_bytes
    from ..io.zarr import CodecSpec, prepare_zarr

    from ..isotropic.backend import resolve_device
    ic, oc = config.isotropic, config.output
    t0 = time.perf_counter()
    try:
        device = resolve_device(ic.device)
    except RuntimeError as exc:  # a GPU asked for where there is none: this output fails, with the reason
        raise IsoviewError(str(exc)) from None
    transform = np.asarray(transform, float)
    vw00, vw90 = target.vw00.open(), target.vw90.open()
    voxel00, voxel90 = target.vw00.voxel_size_um, target.vw90.voxel_size_um
    grid = output_grid(vw00.shape, voxel00, ic.voxel_um)
    if ic.psf == "beads" and registration.get("psf_fwhm_um"):
        # measured once, by the registration (a pass over both views): reused, not measured again
        from ..isotropic import PSFModel
        fwhm, psf_source = tuple(registration["psf_fwhm_um"]), registration.get("psf_source", "beads")
        model = PSFModel(fwhm_um=fwhm, source=psf_source)
    else:
        model, fwhm, psf_source = psf_settings(config, target)
    target_fwhm = None
    if model.volume is None:
        target_fwhm = fwhm[0] if ic.target_fwhm_um is None else (ic.target_fwhm_um or None)
    kernels = view_psfs(model, transform, grid.voxel_um, target_fwhm_um=target_fwhm)
    options = ReconstructionOptions(method=ic.method, iterations=ic.iterations, update=ic.update,
                                    regularization=ic.regularization, weight_sigma_um=ic.weight_sigma_um,
                                    halo_factor=ic.halo_factor, device=ic.device)
    halo = block_halo(kernels, grid.voxel_um, options)
    inner, unit = _output_unit(grid, config)
    sources = []
    for view, voxel, view_transform in ((vw00, voxel00, np.eye(4)), (vw90, voxel90, transform)):
        binned, binned_voxel, binned_transform = prebinned(view, voxel, view_transform, grid.voxel_um)
        sources.append((*index_map(binned_transform, grid.voxel_zyx, binned_voxel), binned.shape,
                        binned.dtype.itemsize))
    budget = _task_budget()
    block = choose_block(grid, unit, halo, sources, budget, requested=ic.block)
    if min(block) >= 8:
        options = replace(options, block=block)
    t_setup = time.perf_counter()
    result = reconstruct(vw00, voxel00, vw90, voxel90, grid, transform, kernels, scale90=scale90, options=options,
                         block=block)
    value_scale, peak, clipped_fraction = 1.0, None, None
    if ic.dtype == "uint16":
        value_scale, peak = _uint16_scale(vw00, vw90, scale90, ic.method)
        scaled = result * np.float32(value_scale)
        clipped = (scaled > 65535.0).sum()
        written = _to_uint16(scaled)
    else:
        clipped, written = None, result
    fmt = oc.format
    target_path = target.path(out, KIND, fmt)
    record_path = target.path(out, KIND, "json")
    draw = _figures_drawn(config, target.timepoint)
    want_beads = draw and "beads" in ic.figures
    voxel = grid.voxel_zyx
    reductions = {}
    if want_beads:
        reductions = {"xy_max": result.max(axis=0), "z_index": result.argmax(axis=0)}
    if clipped is not None:
        reductions["clipped"] = clipped
    attributes = {"isotropic": {"transform_vw00_to_vw90_um": transform.tolist(), "grid": grid.to_dict(),
                                "dtype": ic.dtype, "uint16_scale": value_scale if ic.dtype == "uint16" else None}}
    if fmt == "zarr":
        pending = prepare_zarr(written, target_path, codec=CodecSpec.parse(oc.codec, oc.level, oc.shuffle),
                               chunks=oc.chunks, shards=oc.shards or (), voxel_size_zyx=voxel, overwrite=True,
                               pyramid_levels=oc.pyramid_levels, name=target_path.stem, attributes=attributes)
        keys = list(reductions)
        try:
            values = compute(pending.delayed, *[reductions[k] for k in keys], progress=progress,
                             label=f"{target.label}: isotropic reconstruction")
        except BaseException:
            pending.abort()
            raise
        pending.commit()
        reduced = dict(zip(keys, values[1:]))
    else:  # KLB / TIFF writers compute the volume themselves; the reductions read the written file back
        write_volume(written, target_path, voxel_size_zyx=voxel, overwrite=True,
                     codec="bzip2" if fmt == "klb" else None)
        back = open_volume(target_path).astype(np.float32) / np.float32(value_scale)
        keys = list(reductions)
        swapped = {"xy_max": back.max(axis=0), "z_index": back.argmax(axis=0),
                   "clipped": (open_volume(target_path) >= 65535).sum()}
        reduced = dict(zip(keys, compute(*[swapped[k] for k in keys], progress=False))) if keys else {}
    if "clipped" in reduced:
        clipped_fraction = float(reduced["clipped"]) / float(grid.size)
        if clipped_fraction > 1e-4:
            log.warning("%s: %.3g %% of the uint16 output clipped at 65535 (scale %.4g)", target.label,
                        100 * clipped_fraction, value_scale)
    t_write = time.perf_counter()

    params = {
        "package_version": __version__,
        "specimen": target.specimen, "timepoint": target.timepoint,
        "cameras": list(target.cameras), "channels": list(target.channels),
        "views": registration.get("views") or _views_record(target, record_path),
        "registration": registration.get("registration"),
        "registration_record": relative_outputs(record_path, [target.path(out, REGISTRATION_KIND, "json")])[0],
        "registration_fallback": registration.get("fallback"),
        "transform_vw00_to_vw90_um": transform.tolist(),
        "transform_source": transform_source,
        "scale90": float(scale90),
        "grid": {**grid.to_dict(), "axes": "zyx", "frame": "VW00: output voxel (j, i, l) at (j, i, l) * voxel_um µm, "
                                                        "VW00's voxel (k, i, j) at (k, i, j) * its voxel size"},
        "psf": {**model.to_dict(), "fwhm_um": list(fwhm), "source": psf_source,
                "target_fwhm_um": target_fwhm,
                "kernel_shapes_zyx": {"vw00": list(kernels[0].shape), "vw90": list(kernels[1].shape)}},
        "options": options.to_dict(),
        "block_zyx": list(block), "halo_zyx": list(halo),
        "output_chunks_zyx": list(inner) if inner else None, "output_shard_zyx": list(unit) if unit else None,
        "task_memory_bytes": int(task_memory_bytes(block, grid, halo, sources)), "task_memory_budget_bytes": int(budget),
        "device": device,
        "dtype": ic.dtype,
        "uint16_scale": value_scale if ic.dtype == "uint16" else None,
        "uint16_meaning": "value = stored / uint16_scale" if ic.dtype == "uint16" else None,
        "uint16_sampled_peak": peak,
        "uint16_headroom": UINT16_HEADROOM[ic.method] if ic.dtype == "uint16" else None,
        "clipped_fraction": clipped_fraction,
        "shape_zyx": list(grid.shape),
        "voxel_size_um_zyx": list(voxel),
        "inputs": [str(target.vw00.path), str(target.vw90.path)],
        "input_bytes": int(vw00.nbytes + vw90.nbytes),
    }
    outputs = [target_path]
    beads = None
    if draw:
        t_fig = time.perf_counter()
        centre = tuple(int(n) // 2 for n in grid.shape)
        planes = {"vw00": _centre_planes(vw00, voxel00, grid, None, centre),
                  "vw90": _centre_planes(vw90, voxel90, grid, transform, centre, scale=scale90)}
        stored = open_volume(target_path)
        planes["result"] = {"xy": stored[centre[0]], "xz": stored[:, centre[1]], "yz": stored[:, :, centre[2]]}
        keys = [(role, plane) for role in planes for plane in planes[role]]
        values = compute(*[planes[r][p] for r, p in keys], progress=False)
        slices: dict = {}
        for (role, plane), value in zip(keys, values):
            value = np.asarray(value, np.float32)
            slices.setdefault(role, {})[plane] = value / np.float32(value_scale) if role == "result" else value
        if want_beads:

            def view_patches(regions):
                from ..isotropic import resample_view
                side = 2 * (BEAD_HALF_WIDTH + 2) + 1
                resampled = {"vw00": resample_view(vw00, voxel00, grid, chunks=(side,) * 3),
                             "vw90": resample_view(vw90, voxel90, grid, transform, chunks=(side,) * 3,
                                                   scale=scale90)}
                values = compute(*[resampled[role][region] for role in ("vw00", "vw90") for region in regions],
                                 progress=False)
                return {"vw00": [np.asarray(v, np.float64) for v in values[:len(regions)]],
                        "vw90": [np.asarray(v, np.float64) for v in values[len(regions):]]}

            beads = _measure_beads(target_path, reduced["xy_max"].astype(np.float32) / np.float32(value_scale),
                                   reduced["z_index"], view_patches, grid.voxel_um, fwhm[0], value_scale)
            params["beads"] = {"found": len(beads), "beads": beads}
        from .diagnostics import isotropic_figures
        from .fuse import draw_figures
        outputs += draw_figures(isotropic_figures, target_path.with_suffix(""), slices, grid.voxel_um, centre, params,
                         beads, tuple(ic.figures))
        params.setdefault("timings", {})["figures_s"] = time.perf_counter() - t_fig
    params["timings"] = {"registration_s": (registration.get("timings") or {}).get("registration_s"),
                         "setup_s": t_setup - t0, "reconstruct_write_s": t_write - t_setup,
                         **{k: v for k, v in (params.get("timings") or {}).items()},
                         "total_s": time.perf_counter() - t0}
    params["outputs"] = relative_outputs(record_path, outputs)
    params["fingerprint"] = _reconstruction_fingerprint(target, config, transform, scale90)
    write_json(record_path, params)
    return params


def _to_uint16(scaled):
    """A float dask array rounded and clipped to uint16 (lazy)."""
    import dask.array as da
    return da.clip(da.round(scaled), 0, 65535).astype(np.uint16)


def reconstruction_job(target: IsotropicTarget, out: str | Path, config: ProcessingConfig,
                       fixed: dict | None = None) -> Job:
    """The job reconstructing one target from its registration record (or ``fixed``: a smoothed transform).

    Skipped when ``<stem>.isotropic.json`` is complete with the same inputs, options and transform; it
    fails (without stopping the others) when the registration record is missing.
    """
    out = Path(out)
    key = str(target.path(out, KIND, config.output.format))
    if target.missing:
        return _failed_job(key, STAGE, target.missing)
    nbytes = _planned_bytes(target)
    record_path = target.path(out, REGISTRATION_KIND, "json")

    def used(registration: dict):
        """The transform, intensity factor and their source this reconstruction uses."""
        if fixed is not None:
            return fixed["transform"], fixed["scale90"], fixed["source"]
        return (registration["transform_vw00_to_vw90_um"], registration.get("scale90", 1.0),
                registration.get("transform_source", "registered"))

    def complete() -> bool:
        registration = read_registration(record_path)
        if registration is None or config.output.overwrite:
            return False
        transform, scale90, _ = used(registration)
        try:
            return completed(target.path(out, KIND, "json"),
                             _reconstruction_fingerprint(target, config, transform, scale90))
        except job_errors():
            return False

    def run() -> JobResult:
        registration = read_registration(record_path)
        if registration is None:
            why = (f"{record_path}: no isotropic registration record (its registration failed, see above, or was "
                   "not run)")
            log.error("%s", why)
            return JobResult("failed", key, message=why)
        transform, scale90, source = used(registration)
        try:
            fp = _reconstruction_fingerprint(target, config, transform, scale90)
            if not config.output.overwrite and completed(target.path(out, KIND, "json"), fp):
                return JobResult("skipped", key)
            params = job_work(nbytes, reconstruct_target, target, out, config, registration, transform,
                              scale90, source, label=f"isotropic reconstruction {Path(key).name}")
        except job_errors() as exc:
            log.error("isotropic reconstruction of %s failed: %s", target.label, exc)
            return JobResult("failed", key, message=str(exc))
        warning = f"registration fallback: {registration['fallback']}" if registration.get("fallback") else ""
        if params.get("clipped_fraction"):
            warning = "; ".join(w for w in (warning, f"{100 * params['clipped_fraction']:.3g} % clipped in uint16")
                                if w)
        return JobResult("written", key, input_bytes=params["input_bytes"], warning=warning)
    return Job(key, STAGE, run, nbytes=nbytes, complete=complete)


# ------------------------------------------------------------------------------------------ planning

def _timepoint_targets(root: Path, out: Path, specimen: int, timepoint: int,
                       config: ProcessingConfig) -> list[IsotropicTarget]:
    if not root.is_dir():
        return []
    return isotropic_targets(find_fused(root, specimen=specimen, timepoint=timepoint), out, config)


def _registration_step(root: Path, out: Path, specimen: int, timepoint: int, config: ProcessingConfig) -> list[Job]:
    return [registration_job(t, out, config) for t in _timepoint_targets(root, out, specimen, timepoint, config)]


def _reconstruction_step(root: Path, out: Path, specimen: int, timepoint: int,
                         config: ProcessingConfig) -> list[Job]:
    return [reconstruction_job(t, out, config) for t in _timepoint_targets(root, out, specimen, timepoint, config)]


def registration_step_key(specimen: int, timepoint: int) -> str:
    return f"plan isotropic registrations of SPM{specimen:02d} TM{timepoint:06d}"


def isotropic_steps(root: str | Path, out: str | Path, config: ProcessingConfig, specimen: int, timepoint: int,
                    after: Iterable[str] = (), previous_step: str | None = None,
                    reconstruct: bool = True) -> list[Job]:
    """The planning steps of one timepoint's isotropic jobs, for a plan of the executor.

    Parameters
    ----------
    root : path
        Where the fused views are (their records are read when the step expands).
    out : path
        Output root.
    after : keys
        What the registrations wait for (e.g. the step planning this timepoint's fusions).
    previous_step : str, optional
        The previous timepoint's registration step: this timepoint's registrations start from its
        transforms, so they wait for it.
    reconstruct : bool
        Also the step planning the reconstructions (each waits for its timepoint's registrations only);
        False when a later step plans them with smoothed transforms.

    Returns
    -------
    list of Job
        The registration step (key :func:`registration_step_key`) and, with ``reconstruct``, the
        reconstruction step.
    """
    root, out = Path(root), Path(out)
    key = registration_step_key(specimen, timepoint)
    deps = tuple(after) + ((previous_step,) if previous_step else ())
    steps = [Job(key, REGISTRATION_STAGE, deps=deps,
                 expand=partial(_registration_step, root, out, specimen, timepoint, config))]
    if reconstruct:
        steps.append(Job(f"plan isotropic reconstructions of SPM{specimen:02d} TM{timepoint:06d}", STAGE,
                         deps=(key,), expand=partial(_reconstruction_step, root, out, specimen, timepoint, config)))
    return steps


def plan_isotropic(root: Path, out: Path, config: ProcessingConfig, timepoints: Iterable[tuple[int, int]],
                   lut_summary: StageSummary | None = None) -> Iterator[Job]:
    """The isotropic jobs of fused views that exist already: registrations chained per specimen, then
    either each timepoint's reconstructions or (``lut_summary`` given) one step that smooths the
    transforms over time and plans every reconstruction with them (:func:`smoothed_reconstructions`)."""
    previous: dict[int, str] = {}
    steps = []
    for specimen, timepoint in sorted(timepoints):
        jobs = isotropic_steps(root, out, config, specimen, timepoint, previous_step=previous.get(specimen),
                               reconstruct=lut_summary is None)
        previous[specimen] = jobs[0].key
        steps.append(jobs[0].key)
        yield from jobs
    if lut_summary is not None:
        yield smoothing_step(root, out, config, lut_summary, deps=tuple(steps))


def smoothing_step(root: Path, out: Path, config: ProcessingConfig, lut_summary: StageSummary,
                   deps: tuple[str, ...]) -> Job:
    """The step that waits for ``deps`` (every registration), smooths the transforms and plans the reconstructions."""
    return Job("smooth the isotropic transforms and plan the reconstructions", STAGE, deps=deps,
               expand=partial(smoothed_reconstructions, root, out, config, lut_summary))


def smoothed_reconstructions(root: Path, out: Path, config: ProcessingConfig,
                             lut_summary: StageSummary) -> list[Job]:
    """Reconstruction jobs of every selected target with its time-smoothed transform (:func:`smooth_registrations`)."""
    fixed = smooth_registrations(out, config, lut_summary)
    targets = isotropic_targets(find_fused(root), out, config) if Path(root).is_dir() else []
    return [reconstruction_job(t, out, config, fixed(t)) for t in targets]


def isotropic_dataset(fused: str | Path, out: str | Path | None = None, config: ProcessingConfig | None = None, *,
                      smooth: bool = False, progress: bool = True, **flags) -> dict[str, StageSummary]:
    """Register and reconstruct every selected timepoint of fused views as isotropic volumes (resumable).

    Parameters
    ----------
    fused : path
        Output root of the fusion stage.
    out : path, optional
        Where the isotropic outputs go (default: beside the fused views).
    config : ProcessingConfig, optional
        ``isotropic`` and ``output`` options; ``input`` selects specimens, timepoints and channels;
        ``flags`` override (e.g. ``isotropic_method="average"``).
    smooth : bool
        Smooth the transforms over time first (as ``timelapse`` does; ``fusion.smoothing_window``,
        ``fusion.static``) and reconstruct with the smoothed ones.

    Returns
    -------
    dict of stage name -> StageSummary
        ``isotropic_registration`` and ``isotropic`` (and ``isotropic_smooth`` with ``smooth``).

    Raises
    ------
    MissingFusedViewError
        No complete fused view at all under ``fused``.
    """
    config = ProcessingConfig.from_flags(config, **flags) if flags else (config or ProcessingConfig())
    fused = Path(fused)
    out = Path(out) if out is not None else fused
    found = find_fused(fused)
    if not found:
        raise MissingFusedViewError(f"{fused}: no complete fused views (*.fusedStack.json with their volumes); run "
                                    "'isoview-dask fuse' (or 'run') first")
    isotropic_views(config)  # a clear error now if there is no pair for VW90
    summaries = {REGISTRATION_STAGE: StageSummary(REGISTRATION_STAGE), STAGE: StageSummary(STAGE)}
    lut_summary = StageSummary("isotropic_smooth") if smooth else None
    timepoints = {(s, t) for s, t, _, _ in found}
    run_jobs(plan_isotropic(fused, out, config, timepoints, lut_summary), summaries, progress=progress,
             label="isotropic", total=2 * len(timepoints))
    if lut_summary is not None:
        summaries["isotropic_smooth"] = lut_summary
    from ..provenance import record_run  # run record (isoview_dask.provenance)
    record_run("isotropic", out, summaries, config=config, source=fused, arguments={"smooth": smooth})
    return summaries


# ------------------------------------------------------------------------------------------ time series

def transform_parameters(transform, orientation: str, centre00_um) -> dict:
    """A VW00 -> VW90 transform as smoothable parameters around its orientation.

    ``T(s) = O M s + t`` with ``O`` the orientation's signed permutation and ``M`` the fine correction
    (near the identity), factored as ``M = R S`` (``R`` a rotation, ``S`` symmetric: the identity for a
    rigid fit).

    Returns
    -------
    dict
        ``centre_um`` (3): where VW00's centre ``centre00_um`` lands in VW90's frame (Z, Y, X, µm);
        ``rotation_vector_deg`` (3): ``R`` as a rotation vector (axis x angle, degrees) in (Z, Y, X)
        components; ``stretch`` (9): ``S`` row by row.
    """
    from scipy.spatial.transform import Rotation

    from ..isotropic import orientation_matrix
    transform = np.asarray(transform, float)
    O = orientation_matrix(orientation)
    M = O.T @ transform[:3, :3]
    u, s, vt = np.linalg.svd(M)
    R = u @ vt
    if np.linalg.det(R) < 0:  # keep a proper rotation (M is near the identity; this is a safeguard)
        u[:, -1] *= -1
        R = u @ vt
    S = R.T @ M
    centre = transform[:3, :3] @ np.asarray(centre00_um, float) + transform[:3, 3]
    rotvec_xyz = Rotation.from_matrix(R[::-1, ::-1]).as_rotvec(degrees=True)  # scipy counts axes x, y, z
    return {"centre_um": centre.tolist(), "rotation_vector_deg": rotvec_xyz[::-1].tolist(),
            "stretch": S.ravel().tolist()}


def transform_from_parameters(orientation: str, centre00_um, centre_um, rotation_vector_deg, stretch) -> np.ndarray:
    """Inverse of :func:`transform_parameters`: the 4 x 4 VW00 -> VW90 transform."""
    from scipy.spatial.transform import Rotation

    from ..isotropic import orientation_matrix
    O = orientation_matrix(orientation)
    R = Rotation.from_rotvec(np.asarray(rotation_vector_deg, float)[::-1], degrees=True).as_matrix()[::-1, ::-1]
    S = np.asarray(stretch, float).reshape(3, 3)
    linear = O @ R @ S
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = np.asarray(centre_um, float) - linear @ np.asarray(centre00_um, float)
    return out


#: Smoothed series of the isotropic transform: name -> (parameter, component index).
TRANSFORM_SERIES = {**{f"centre_{a}_um": ("centre_um", i) for i, a in enumerate("zyx")},
                    **{f"rotation_{a}_deg": ("rotation_vector_deg", i) for i, a in enumerate("zyx")},
                    **{f"stretch_{i}{j}": ("stretch", 3 * i + j) for i in range(3) for j in range(3)},
                    "scale90": (None, None)}


def smooth_transforms(records: list[dict], config: ProcessingConfig) -> dict:
    """Smooth one series of registration records over time (pure).

    Each transform becomes :func:`transform_parameters` about VW00's centre (the rigid part: the
    centre's image and the rotation vector of the fine correction; the symmetric stretch of an affine
    fit), with ``scale90``. Timepoints whose fit was not trusted (a fallback), or whose orientation
    differs from the series' most common one, are left out (NaN) and get the smoothed values. Each
    series is :func:`isoview_dask.temporal.smooth_series` with the fusion's temporal options
    (``fusion.smoothing_window`` when ``fusion.temporal_smoothing``, ``fusion.static``).

    Returns
    -------
    dict
        ``timepoints``, ``orientation``, ``centre00_um``, ``estimated`` and ``used`` ({series name:
        array}), ``dropped`` (bool array), ``transforms`` (the used 4 x 4 per timepoint), ``settings``.
    """
    from collections import Counter

    from ..temporal import smooth_series
    if not records:
        raise ValueError("no isotropic registrations to smooth")
    fc = config.fusion
    records = sorted(records, key=lambda r: r["timepoint"])
    orientations = [r.get("registration", {}).get("orientation") for r in records]
    orientation = Counter(o for o in orientations if o).most_common(1)[0][0]
    shape = records[0]["views"]["vw00"]["shape_zyx"]
    voxel = records[0]["views"]["vw00"]["voxel_size_um_zyx"]
    centre00 = (np.asarray(shape, float) - 1) / 2 * np.asarray(voxel, float)
    estimated = {name: np.full(len(records), np.nan) for name in TRANSFORM_SERIES}
    dropped = np.zeros(len(records), bool)
    for i, record in enumerate(records):
        fitted = record.get("registration", {})
        if record.get("fallback") or fitted.get("orientation") != orientation:
            dropped[i] = True
            continue
        params = transform_parameters(fitted["transform_vw00_to_vw90_um"], orientation, centre00)
        for name, (key, index) in TRANSFORM_SERIES.items():
            estimated[name][i] = float(record.get("scale90", 1.0)) if key is None else params[key][index]
    if dropped.all():
        log.warning("every isotropic registration of the series was a fallback; smoothing their transforms")
        for i, record in enumerate(records):
            params = transform_parameters(record["transform_vw00_to_vw90_um"], orientation, centre00)
            for name, (key, index) in TRANSFORM_SERIES.items():
                estimated[name][i] = float(record.get("scale90", 1.0)) if key is None else params[key][index]
        dropped[:] = False
    span = fc.smoothing_window if fc.temporal_smoothing else None
    used = {name: smooth_series(values, span=span, static=fc.static) for name, values in estimated.items()}
    transforms = [transform_from_parameters(orientation, centre00,
                                            [used[f"centre_{a}_um"][i] for a in "zyx"],
                                            [used[f"rotation_{a}_deg"][i] for a in "zyx"],
                                            [used[f"stretch_{j}{k}"][i] for j in range(3) for k in range(3)])
                  for i in range(len(records))]
    settings = {"temporal_smoothing": fc.temporal_smoothing, "smoothing_window": fc.smoothing_window,
                "static": fc.static}
    return {"timepoints": [int(r["timepoint"]) for r in records], "orientation": orientation,
            "centre00_um": centre00.tolist(), "estimated": estimated, "used": used, "dropped": dropped,
            "transforms": transforms, "settings": settings}


def lut_path(out: str | Path, specimen: int, cameras, channels, suffix: str = "json") -> Path:
    """``<out>/SPM##/SPM##_CM##_CM##_CM##_CM##_CHN##[_CHN##].isotropicLookUpTable.<suffix>``."""
    name = volume_stem(specimen, 0, list(cameras), list(channels)).replace("_TM000000", "")
    return Path(out) / f"SPM{specimen:02d}" / f"{name}.{LUT_KIND}.{suffix}"


def _lut_csv(smoothed: dict) -> str:
    import csv
    import io
    names = list(TRANSFORM_SERIES)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["timepoint", *names, "dropped", *(f"estimated_{n}" for n in names)])
    for i, t in enumerate(smoothed["timepoints"]):
        writer.writerow([t, *(f"{smoothed['used'][n][i]:.9g}" for n in names), int(smoothed["dropped"][i]),
                         *(f"{smoothed['estimated'][n][i]:.9g}" for n in names)])
    return buf.getvalue()


def smooth_registrations(out: str | Path, config: ProcessingConfig, lut_summary: StageSummary):
    """Smooth every series of isotropic registrations under ``out``; write lookup tables (resumable).

    Returns
    -------
    callable
        ``fixed(target)``: ``{"transform", "scale90", "source"}`` for :func:`reconstruction_job`, or None
        where the target's timepoint has no registration (it is then reconstructed with its own).
    """
    out = Path(out)
    start = time.perf_counter()
    series: dict[tuple, list[dict]] = {}
    for (s, t, cams, ch), (path, record) in scan_records(out, f"{REGISTRATION_KIND}.json").items():
        channels = tuple(ch) if isinstance(ch, tuple) else (int(ch),)
        series.setdefault((s, tuple(cams), channels), []).append(record)
    tables = {}
    for (specimen, cameras, channels), records in sorted(series.items()):
        if config.input.specimens is not None and specimen not in config.input.specimens:
            continue
        smoothed = smooth_transforms(records, config)
        tables[(specimen, cameras, channels)] = smoothed
        record_path = lut_path(out, specimen, cameras, channels)
        fp = fingerprint([{"timepoint": r["timepoint"], "fingerprint": r.get("fingerprint")} for r in records],
                         {"temporal": smoothed["settings"]})
        if not config.output.overwrite and completed(record_path, fp):
            lut_summary.skipped.append(str(record_path))
            continue
        outputs = []
        if config.fusion.generate_lookup_table:
            outputs.append(write_text(lut_path(out, specimen, cameras, channels, "csv"), _lut_csv(smoothed)))
        write_json(record_path, {
            "package_version": __version__, "specimen": specimen, "cameras": list(cameras),
            "channels": list(channels), "orientation": smoothed["orientation"],
            "centre00_um": smoothed["centre00_um"], "settings": smoothed["settings"],
            "parameters": "centre_*_um: where VW00's centre lands in VW90's frame; rotation_*_deg: rotation vector "
                          "of the fine correction R in T = O R S (O the orientation), components (z, y, x); "
                          "stretch_ij: S (identity for rigid fits); scale90: VW90 -> VW00 intensity",
            "dropped_timepoints": [t for t, d in zip(smoothed["timepoints"], smoothed["dropped"]) if d],
            "timepoints": [{"timepoint": t, "dropped": bool(smoothed["dropped"][i]),
                            "transform_vw00_to_vw90_um": smoothed["transforms"][i].tolist(),
                            "used": {n: float(smoothed["used"][n][i]) for n in TRANSFORM_SERIES},
                            "estimated": {n: (None if not np.isfinite(smoothed["estimated"][n][i])
                                              else float(smoothed["estimated"][n][i])) for n in TRANSFORM_SERIES}}
                           for i, t in enumerate(smoothed["timepoints"])],
            "outputs": relative_outputs(record_path, outputs), "fingerprint": fp})
        lut_summary.written.append(str(record_path))
    lut_summary.seconds = time.perf_counter() - start
    fc = config.fusion
    mode = "static (fusion.static)" if fc.static else (f"smoothed over time (rloess span {fc.smoothing_window})"
                                                       if fc.temporal_smoothing else "not smoothed")

    def fixed(target: IsotropicTarget) -> dict | None:
        smoothed = tables.get(target.chain)
        if smoothed is None or target.timepoint not in smoothed["timepoints"]:
            return None
        i = smoothed["timepoints"].index(target.timepoint)
        return {"transform": smoothed["transforms"][i].tolist(), "scale90": float(smoothed["used"]["scale90"][i]),
                "source": mode}

    return fixed
