"""Writing a synthetic recording on disk, and reading its ground truth back.

Files
-----
:func:`generate_dataset` writes the raw recording the way the microscope
does: one ``.stack`` file (raw little-endian uint16, (Z, Y, X)) per camera,
channel and timepoint, a ``push_config`` XML per channel and timepoint, and
each camera's dark frame as ``Background_<camera>.tif``, in the Keller layout
(``raw/SPM<ss>/TM<nnnnn>/ANG000/...``), the flat layout (``raw_flat/``) or
both.

Ground truth on disk
--------------------
``<out>/truth/truth.json`` holds the spec, these conventions, voxel sizes,
per-pair per-timepoint offsets and rotations, gains and pair gain ratios,
dark-frame statistics, dead-pixel lists, the body geometry, each camera's
index-to-specimen affine per timepoint, and the outlier. ``<out>/truth/
volumes.zarr`` is a zarr v3 group (default codecs) with ``dark/CM<n>``
(float32 (Y, X)) always and, when ``write_truth_volumes``,
``TM<nnnnn>/CM<n>/{ideal,clean,body_mask}`` (float32, float32, bool; (Z, Y,
X) in the camera's raw frame, chunked by planes); with illumination sides
``ideal`` is per channel, ``TM<nnnnn>/CM<n>/CHN<cc>/ideal``. :func:`load_truth`
reads it all back as a :class:`SyntheticTruth`.
``ideal`` includes the outlier's dimming and debris (it is the expected
image); ``clean`` and ``body_mask`` never do.

Isotropic ground truth
----------------------
``truth.json`` also holds, under ``isotropic``, what an isotropic
reconstruction from the fused views VW00 (cameras 0+1, camera 0's raw frame)
and VW90 (cameras 2+3, camera 2's raw frame) should find:
``transform_vw00_to_vw90`` (a 4x4 matrix per timepoint, physical µm; the
convention is in :mod:`isoview_dask.synthetic.volumes`), the motion
(``vw90_motion``, its matrix), ``vw90_orientation``, ``voxel_um`` (the
isotropic voxel, ``pixel_size_um``), the PSFs, and under ``beads`` the bead
centres in specimen µm and in VW00's physical frame. When any of the
four-view fields of the spec is set (axial PSF, beads, motion, orientation
'rotation') and ``write_truth_volumes``, ``volumes.zarr`` holds the ideal
isotropic image per timepoint at ``TM<nnnnn>/isotropic/ideal`` (float32,
(Zi, Y, X)); :meth:`SyntheticTruth.isotropic_ideal` renders it otherwise.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputNotFoundError, IsoviewError
from ..io.atomic import atomic_output
from ..metadata import write_push_config
from .cameras import DETECTION_AXIS, NEAR_SIGN, PAIRS, pair_key
from .optics import FWHM_PER_SIGMA
from .specimen import BEAD_SIGMA_UM
from .spec import SyntheticSpec, check_fields
from .specimen import Model, model_for
from .volumes import (bead_positions_vw00_um, isotropic_transform, short_hash, side_for, slab_sizes,
                      synthetic_isotropic_volume, view_scaling)

log = logging.getLogger("isoview_dask.synthetic")

__all__ = ["CONVENTIONS", "TRUTH_VERSION", "SyntheticTruth", "generate_dataset", "load_truth"]

TRUTH_VERSION = 1

CONVENTIONS: dict[str, str] = {
    "axes": "Arrays are (Z, Y, X) = (plane, row, column) in each camera's raw frame; pixel centres at integer "
            "indices; specimen coordinates are (z, y, x) in µm with the body centre at the origin.",
    "camera_0": "raw (k, y, x) -> specimen z = (k-cz)*dz, y = (y-cy)*p, x = (x-cx)*p; near side = low z.",
    "camera_2": "raw (k, y, x) -> specimen x = (k-cz)*dz, y = (y-cy)*p, z = (x-cx)*p; near side = low x.",
    "opposing": "Let F_b[..., x] = raw_b[..., X-1-x] (camera b flipped left-right). The specimen point imaged at "
                "pixel q = (y, x) of reference camera a (same plane) appears in F_b at p = R(theta)(q - c) + c + t, "
                "c = ((Y-1)/2, (X-1)/2), t = (dy, dx) in pixels, R(theta) = [[cos, -sin], [sin, cos]] on (y, x) "
                "column vectors, theta in degrees. Registering b onto a = sampling F_b at p(q). Pairs (a, b): "
                "(0, 1), (2, 3).",
    "camera_affine": "camera_to_specimen[camera][t] is a 4x4 matrix M with (z, y, x, 1)_um = M @ (k, y, x, 1).",
    "gain": "counts = gain * photons; gain_ratio of pair (a, b) = gain_b / gain_a.",
    "raw": "raw = clip(rint(dark + gain*Poisson(E) + N(0, read_noise)), 0, 65535) with dead pixels applied; "
           "E = blur_sigma(plane)(clean * exp(-depth/attenuation_length)).",
    "ideal": "ideal = gain * E (expected raw minus dark, float32), dead pixels NOT applied; includes the outlier "
             "dimming and debris.",
    "clean": "clean = sharp, unattenuated specimen sampled at the pixel centres (photons, no gain).",
    "body_mask": "body_mask = ellipsoidal radius <= 1 at the pixel centre.",
    "drift": "offset(n) = offset0 + v*n + A*(sin(2*pi*n/T + phi) - sin(phi)); rotation(n) = rotation0 + omega*n; "
             "n = 0-based timepoint index.",
    "dead_pixels": "hot: level*(1 + 0.03*N(0,1)) every plane, independent of the signal; stuck: constant value.",
    "timepoint_index": "Accessors take the 0-based index n; file names use TM number first_timepoint + n.",
    "camera_2_rotation": "with vw90_orientation 'rotation': raw (k, y, x) -> specimen x = (k-cz)*dz, y = (y-cy)*p, "
                         "z = -(x-cx)*p (columns reversed; camera 3 follows through the opposing convention).",
    "vw90_motion": "Cameras 2 and 3 image specimen point s at M(s) = R s + t (microscope position), "
                   "R = Rz(a_z) Ry(a_y) Rx(a_x) about the specimen axes through the origin (right-handed in "
                   "(x, y, z); x first), "
                   "t = (t_z, t_y, t_x) µm; camera_to_specimen of cameras 2/3 includes inv(M).",
    "isotropic": "A fused view's voxel (k, i, j) lies at s = (k*z_step, i*pixel, j*pixel) µm in its own frame (VW00: "
                 "camera 0's raw frame, VW90: camera 2's). s90 = T[:3,:3] @ s00 + T[:3,3] with "
                 "T = transform_vw00_to_vw90[t] = S @ inv(G2) @ motion @ G0 @ inv(S) = S @ inv(C2) @ C0 @ inv(S), "
                 "S = diag(z_step, pixel, pixel, 1), G the cameras' geometry, C = camera_to_specimen. The ideal "
                 "isotropic image: the unmoved specimen on VW00's frame sampled every pixel_size_um in z, y and x "
                 "(plane j at z = j*pixel), blurred by the lateral PSF (sigma psf_sigma_px*pixel in all three axes), "
                 "no attenuation, no noise, beads included, times camera 0's gain.",
    "axial_psf": "With axial_psf_fwhm_um every camera's image is also blurred along its plane axis by a Gaussian of "
                 "that FWHM (quadrature of the analytic specimen; beads analytically).",
    "illumination": "With illumination_channels (a, b): channel a is lit from the low-x (low column) side of each "
                    "camera's raw frame, b from the high-x side; each is attenuated (path length inside the body "
                    "from the light's entry surface) and progressively blurred on its far half in x; b's sheet may "
                    "be misaligned (illumination.sheet_misalignment): b's content at (z, y) lands on a's at "
                    "z + offset_z_planes + tan(rotation_deg) * (y - (Y-1)/2); ideal is per "
                    "channel (truth.ideal(camera, t, channel)), clean and body_mask are shared.",
}


def _stack_name(spec: SyntheticSpec, tm: int, camera: int, channel: int | None = None) -> str:
    ch = spec.channel_of_camera[camera] if channel is None else channel
    return f"SPC{spec.specimen:02d}_TM{tm:05d}_ANG000_CM{camera}_CHN{ch:02d}_PH0.stack"


def _keller_dir(spec: SyntheticSpec) -> str:
    return f"SPM{spec.specimen:02d}"


def _timestamp(spec: SyntheticSpec, t: int) -> str:
    when = _dt.datetime(2024, 1, 1, 9, 0, 0) + _dt.timedelta(seconds=t * spec.timepoint_interval_s)
    hour = when.hour % 12 or 12
    return (f"{hour}:{when.minute:02d}:{when.second:02d}.{when.microsecond // 1000:03d} "
            f"{'AM' if when.hour < 12 else 'PM'} {when.month}/{when.day}/{when.year}")


def _xml_attributes(spec: SyntheticSpec, channel: int, t: int) -> dict[str, str]:
    Z, Y, X = spec.shape
    cams = spec.cameras_of_channel(channel)
    tm = spec.first_timepoint + t
    objective = f"Nikon {spec.magnification:.12g}x/0.8 W"
    return {
        "data_header": "isoview_dask_synthetic",
        "specimen_name": f"synthetic_seed{spec.seed}",
        "timestamp": _timestamp(spec, t),
        "time_point": str(tm),
        "specimen_XYZT": f"X=0.000_Y=0.000_Z=0.000_T={t * spec.timepoint_interval_s:.1f}",
        "angle": "0.0",
        "camera_index": ",".join(str(c) for c in cams),
        "camera_type": ",".join("C11440-22C" for _ in cams),
        "wavelength": f"{spec.wavelength_nm:g}",
        "exposure_time": f"{spec.exposure_time_ms:g}",
        "detection_objective": ",".join(objective for _ in cams),
        "dimensions": ",".join(f"{X}x{Y}x{Z}" for _ in cams),
        "z_step": repr(float(spec.z_step_um)),
        "stack_direction": "+z",
        "planes": f"1-{Z}",
    }


def _resolve_spec(spec: SyntheticSpec | None, preset: str | None, overrides: dict) -> SyntheticSpec:
    if spec is not None and preset is not None:
        raise ValueError("give either spec or preset, not both")
    if spec is not None:
        if not isinstance(spec, SyntheticSpec):
            raise TypeError(f"spec: expected a SyntheticSpec, got {type(spec).__name__}")
        return spec.replace(**overrides) if overrides else spec
    preset = preset or "default"
    overrides = dict(overrides)
    if preset == "tiny":
        return SyntheticSpec.tiny(**overrides)
    if preset == "small":
        return SyntheticSpec.small(**overrides)
    if preset in ("full", "full_frame"):
        return SyntheticSpec.full_frame(**overrides)
    if preset == "isotropic":
        return SyntheticSpec.isotropic(**overrides)
    if preset == "default":
        check_fields(overrides)
        return SyntheticSpec(**overrides)
    raise ValueError(f"preset {preset!r}: expected 'tiny', 'small', 'isotropic' or 'full'")


def _zarr_chunk_planes(slab_planes: int, Y: int, X: int) -> int:
    for c in range(slab_planes, 0, -1):
        if slab_planes % c == 0 and c * Y * X * 4 <= 16 * 2**20:
            return c
    return 1


def _write_slab(spec_dict: dict, camera: int, t: int, k0: int, k1: int, stack_paths: list[str],
                volume_paths: dict[str, str], side: int | None = None) -> tuple[int, int, int]:
    """Render planes [k0, k1) of one camera (one illumination side) and write them (runs in a dask task)."""
    import zarr

    spec = SyntheticSpec.from_dict(spec_dict)
    model = model_for(spec)
    kinds = ["raw", *volume_paths]
    slab = model.render_slab(camera, t, k0, k1, kinds, side)
    for path in stack_paths:
        mm = np.memmap(path, dtype="<u2", mode="r+", shape=spec.shape)
        mm[k0:k1] = slab["raw"]
        mm.flush()
        del mm
    for kind, path in volume_paths.items():
        arr = zarr.open_array(path, mode="r+")
        arr[k0:k1] = slab[kind]
    return camera, t, k0


def _write_isotropic_slab(spec_dict: dict, j0: int, j1: int, path: str) -> int:
    """Render planes [j0, j1) of the ideal isotropic image and write them (runs in a dask task)."""
    import zarr

    spec = SyntheticSpec.from_dict(spec_dict)
    arr = zarr.open_array(path, mode="r+")
    arr[j0:j1] = model_for(spec).render_isotropic(j0, j1)
    return j0


def _default_scheduler(spec: SyntheticSpec) -> str | None:
    import dask

    if dask.config.get("scheduler", None) is not None:   # e.g. a distributed Client set as default
        return None
    voxels = int(np.prod(spec.shape)) * len(spec.cameras) * spec.timepoints
    return "processes" if voxels >= 64_000_000 and _cpu_count() > 1 else "sync"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def generate_dataset(out: str | os.PathLike, spec: SyntheticSpec | None = None, overwrite: bool = False, *,
                     preset: str | None = None, slab_planes: int = 8, scheduler: str | None = None,
                     num_workers: int | None = None, **overrides: Any) -> "SyntheticTruth":
    """Write a synthetic IsoView recording and its ground truth under ``out``.

    Parameters
    ----------
    out : path
        Output folder (created atomically: nothing appears under this name
        until everything is written).
    spec : SyntheticSpec, optional
        What to generate; default ``SyntheticSpec()`` or the ``preset``.
    overwrite : bool
        Replace an existing ``out``; otherwise :class:`OutputExistsError`.
    preset : 'tiny', 'small', 'isotropic' or 'full', optional
        Start from :meth:`SyntheticSpec.tiny`, ``small``, ``isotropic`` or
        ``full_frame`` (``planes=`` passes through for 'full').
    slab_planes : int
        Planes per task; changes memory use and parallelism, never the bytes.
    scheduler : str, optional
        Dask scheduler. Default: the active default (e.g. a distributed
        client) if one is set, else 'processes' for large datasets (the
        rendering holds the GIL, so threads do not help; call from an
        ``if __name__ == "__main__":`` block) and 'sync' for small ones.
    num_workers : int, optional
        Workers for the 'processes'/'threads' schedulers.
    **overrides
        Any :class:`SyntheticSpec` field, e.g. ``shape=(32, 128, 128)``,
        ``timepoints=3``, ``layout='both'``.

    Returns
    -------
    SyntheticTruth
        The ground truth, as :func:`load_truth` would read it.

    Memory is bounded by a few slabs per worker: each task renders one slab
    plane by plane and writes it straight into the ``.stack`` files (numpy
    memmaps) and the truth zarr arrays.
    """
    import dask
    import tifffile
    import zarr

    planes = overrides.pop("planes", None)
    if planes is not None:
        if preset not in ("full", "full_frame"):
            raise ValueError("planes= only applies to preset='full'")
        overrides["planes"] = planes
    spec = _resolve_spec(spec, preset, overrides)
    slabs = slab_sizes(spec.shape[0], slab_planes)
    out = Path(out)
    Z, Y, X = spec.shape
    model = model_for(spec)
    started = time.perf_counter()
    log.info("synthetic dataset %s: %d camera(s) x %d timepoint(s) of %s, layout %s", out, len(spec.cameras),
             spec.timepoints, "x".join(map(str, spec.shape)), spec.layout)

    with atomic_output(out, overwrite) as tmp:
        tmp.mkdir(parents=True)
        spm = _keller_dir(spec)
        keller = tmp / "raw" / spm if spec.layout in ("keller", "both") else None
        flat = tmp / "raw_flat" if spec.layout in ("flat", "both") else None
        truth_dir = tmp / "truth"
        truth_dir.mkdir()
        group_path = truth_dir / "volumes.zarr"
        group = zarr.open_group(str(group_path), mode="w")
        dark_group = group.create_group("dark")
        for cam in spec.cameras:
            dark = model.dark(cam)
            arr = dark_group.create_array(f"CM{cam}", shape=(Y, X), chunks=(Y, X), dtype="float32")
            arr[...] = dark
            for folder in (keller, flat):
                if folder is not None:
                    folder.mkdir(parents=True, exist_ok=True)
                    tifffile.imwrite(folder / f"Background_{cam}.tif", dark.astype(np.uint16))
        # metadata
        for t in range(spec.timepoints):
            tm = spec.first_timepoint + t
            for ch in spec.channels:
                attrs = _xml_attributes(spec, ch, t)
                if keller is not None:
                    write_push_config(keller / f"TM{tm:05d}" / f"ch{ch}.xml", attrs)
                if flat is not None and t == 0:
                    write_push_config(flat / f"ch{ch}_spec{spec.specimen:02d}.xml", attrs)
        # empty (sparse) stack files and truth arrays, then one task per slab
        zplanes = _zarr_chunk_planes(slabs[0], Y, X)
        nbytes = 2 * Z * Y * X
        tasks = {}
        for t in range(spec.timepoints):
            tm = spec.first_timepoint + t
            tasks[t] = []
            for cam, channel in ((c, ch) for c in spec.cameras for ch in spec.channels_of_camera(c)):
                side = spec.illumination_side(channel)
                paths = []
                if keller is not None:
                    paths.append(keller / f"TM{tm:05d}" / "ANG000" / _stack_name(spec, tm, cam, channel))
                if flat is not None:
                    paths.append(flat / _stack_name(spec, tm, cam, channel))
                for path in paths:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "wb") as fh:
                        fh.truncate(nbytes)
                volumes = {}
                if spec.write_truth_volumes:
                    cam_group = group.require_group(f"TM{tm:05d}").require_group(f"CM{cam}")
                    for kind, dtype in (("ideal", "float32"), ("clean", "float32"), ("body_mask", "bool")):
                        if side == 1 and kind != "ideal":
                            continue  # each side has its own ideal; clean and mask are written once (side 0)
                        key = _truth_key(kind, side, channel)
                        parent = cam_group.require_group(key.rpartition("/")[0]) if "/" in key else cam_group
                        parent.create_array(key.rpartition("/")[2], shape=(Z, Y, X), chunks=(zplanes, Y, X),
                                            dtype=dtype)
                        volumes[kind] = str(group_path / f"TM{tm:05d}" / f"CM{cam}" / key)
                suffix = "" if side is None else f"-ch{channel}"
                k0 = 0
                for n in slabs:
                    tasks[t].append(dask.delayed(_write_slab, pure=False)(
                        spec.to_dict(), cam, t, k0, k0 + n, [str(p) for p in paths], volumes, side,
                        dask_key_name=f"synthetic-slab-{tm}-{cam}{suffix}-{k0}-"
                                      f"{short_hash(spec._key() + str(out))}"))
                    k0 += n
            if spec.write_truth_volumes and spec.uses_four_view_features:
                iso_slabs = slab_sizes(model.iso_planes, slabs[0] * max(1, int(round(spec.z_step_um
                                                                                     / spec.pixel_size_um))))
                iso_chunk = _zarr_chunk_planes(iso_slabs[0], Y, X)
                iso = group.require_group(f"TM{tm:05d}").require_group("isotropic")
                iso.create_array("ideal", shape=(model.iso_planes, Y, X), chunks=(iso_chunk, Y, X), dtype="float32")
                path = str(group_path / f"TM{tm:05d}" / "isotropic" / "ideal")
                j0 = 0
                for n in iso_slabs:
                    tasks[t].append(dask.delayed(_write_isotropic_slab, pure=False)(
                        spec.to_dict(), j0, j0 + n, path,
                        dask_key_name=f"synthetic-isotropic-{tm}-{j0}-{short_hash(spec._key() + str(out))}"))
                    j0 += n
        sched = scheduler if scheduler is not None else _default_scheduler(spec)
        compute_kw: dict[str, Any] = {}
        pool = None
        if sched is not None:
            compute_kw["scheduler"] = sched
        if sched == "processes":
            # one pool for all timepoints (spawned: the parent already runs zarr's I/O thread)
            import concurrent.futures
            import multiprocessing

            pool = concurrent.futures.ProcessPoolExecutor(max_workers=num_workers or _cpu_count(),
                                                          mp_context=multiprocessing.get_context("spawn"))
            compute_kw["pool"] = pool
        elif num_workers is not None and sched == "threads":
            compute_kw["num_workers"] = num_workers
        try:
            for t in range(spec.timepoints):
                t0 = time.perf_counter()
                dask.compute(*tasks[t], **compute_kw)
                log.info("timepoint %d/%d rendered (%d camera(s), %.1f s, scheduler %s)", t + 1, spec.timepoints,
                         len(spec.cameras), time.perf_counter() - t0, sched or "default")
        finally:
            if pool is not None:
                pool.shutdown()
        truth = _truth_dict(spec, model, keller is not None, flat is not None)
        with open(truth_dir / "truth.json", "w", encoding="utf-8") as fh:
            json.dump(truth, fh, indent=1)
            fh.write("\n")
    log.info("synthetic dataset written to %s in %.1f s", out, time.perf_counter() - started)
    return load_truth(out)


def _truth_key(kind: str, side: int | None, channel: int | None) -> str:
    """Name of a truth array in a camera's group: ``ideal`` is per channel with illumination sides."""
    return f"CHN{channel:02d}/{kind}" if side is not None and kind == "ideal" else kind


def _truth_dict(spec: SyntheticSpec, model: Model, keller: bool, flat: bool) -> dict:
    pairs = []
    for a, b in PAIRS:
        pairs.append({
            "cameras": [a, b], "reference": a, "moving": b,
            "present": a in spec.cameras and b in spec.cameras,
            "offset_px": model.offsets[(a, b)].tolist(),
            "rotation_deg": model.rotations[(a, b)].tolist(),
            "gain_ratio": model.gains[b] / model.gains[a],
            "drift": model.drift[(a, b)],
        })
    cameras = {}
    for cam in spec.cameras:
        dark = model.dark(cam)
        dead = model.dead(cam)
        cameras[str(cam)] = {
            "channel": spec.channel_of_camera[cam],
            "channels": list(spec.channels_of_camera(cam)),
            "gain": model.gains[cam],
            "role": "reference" if cam in (0, 2) else "moving",
            "detection_axis": "zyx"[DETECTION_AXIS[cam]],
            "near_side": "low plane index" if NEAR_SIGN[cam] > 0 else "high plane index",
            "attenuation_length_um": model.att_len[cam],
            "illumination_attenuation_length_um": model.ill_len[cam] if spec.illumination_channels else None,
            "blur_sigma_px": model.blur_sigma[cam].tolist(),
            "dark": {"mean": float(dark.mean()), "std": float(dark.std()), "min": float(dark.min()),
                     "max": float(dark.max()), "column_std": float(dark.mean(axis=0).std())},
            "dead_pixels": [{"y": int(y), "x": int(x), "kind": str(k), "value": float(v)}
                            for y, x, k, v in zip(dead["y"], dead["x"], dead["kind"], dead["value"])],
            "camera_to_specimen": [model.affine(cam, t).tolist() for t in range(spec.timepoints)],
        }
        if cam in (1, 3) and spec.outlier_timepoint is not None:
            dy_, dx_, ds, dphot = model.debris(cam)
            cameras[str(cam)]["debris"] = {"y": dy_, "x": dx_, "sigma_px": ds, "photons": dphot}
    return {
        "format": "isoview-dask synthetic truth",
        "version": TRUTH_VERSION,
        "conventions": CONVENTIONS,
        "spec": spec.to_dict(),
        "shape_zyx": list(spec.shape),
        "timepoints": spec.timepoints,
        "timepoint_numbers": [spec.first_timepoint + t for t in range(spec.timepoints)],
        "voxel_size_um": list(spec.voxel_size_um),
        "z_to_xy_ratio": spec.z_step_um / spec.pixel_size_um,
        "magnification": spec.magnification,
        "cameras": cameras,
        "pairs": pairs,
        "dark_level": spec.dark_level,
        "read_noise": spec.read_noise,
        "body": {"centre_um": [0.0, 0.0, 0.0], "semi_axes_um": model.semi.tolist(),
                 "edge_halfwidth_radius": model.edge_w, "level_photons": model.level,
                 "n_nuclei": int(len(model.nuc_centre))},
        "illumination": None if spec.illumination_channels is None else {
            "channels": list(spec.illumination_channels),
            "low_x_channel": spec.illumination_channels[0], "high_x_channel": spec.illumination_channels[1],
            "sharp_side": {str(spec.illumination_channels[0]): "low x", str(spec.illumination_channels[1]): "high x"},
            "extra_blur_px": spec.illumination_blur_px, "balance_b_over_a": spec.illumination_balance,
            "sheet_misalignment": {str(c): {"offset_z_planes": spec.sheet_offset_planes[c],
                                            "rotation_deg": spec.sheet_tilt_deg[c]} for c in spec.cameras}},
        "isotropic": _isotropic_truth(spec, model),
        "beads": {
            "count": int(len(model.bead_centre)), "sigma_um": BEAD_SIGMA_UM,
            "brightness_photons": spec.bead_brightness,
            "positions_um": model.bead_centre.tolist(),
            "positions_vw00_um": bead_positions_vw00_um(spec).tolist(),
        },
        "outlier": {"timepoint": spec.outlier_timepoint, "cameras": [c for c in (1, 3) if c in spec.cameras],
                    "dim": spec.outlier_dim, "extra_noise": spec.outlier_noise},
        "files": {"raw_dir": "raw" if keller else None, "flat_dir": "raw_flat" if flat else None,
                  "volumes": "truth/volumes.zarr", "truth_volumes_written": spec.write_truth_volumes},
    }


def _isotropic_truth(spec: SyntheticSpec, model: Model) -> dict:
    """The ``isotropic`` section of truth.json (see "Isotropic ground truth")."""
    motion = list(spec.vw90_motion)
    T = [isotropic_transform(spec, t) for t in range(spec.timepoints)]
    return {
        "views": {"VW00": {"cameras": [0, 1], "reference": 0}, "VW90": {"cameras": [2, 3], "reference": 2}},
        "view_voxel_um": list(spec.voxel_size_um),
        "view_scaling": view_scaling(spec).tolist(),
        "voxel_um": float(spec.pixel_size_um),
        "ideal_shape_zyx": [model.iso_planes, spec.shape[1], spec.shape[2]],
        "ideal_written": bool(spec.write_truth_volumes and spec.uses_four_view_features),
        "ideal_gain": model.gains[0],
        "vw90_orientation": spec.vw90_orientation,
        "vw90_motion": {"rotation_deg_zyx": motion[:3], "translation_um_zyx": motion[3:],
                        "rotation_order": "R = Rz(a_z) @ Ry(a_y) @ Rx(a_x)", "matrix": model.motion.tolist()},
        "transform_vw00_to_vw90": [m.tolist() for m in T],
        "transform_determinant": float(np.linalg.det(T[0][:3, :3])),
        "psf": {"lateral_sigma_um": model.psf_sigma_um,
                "lateral_fwhm_um": model.psf_sigma_um * FWHM_PER_SIGMA,
                "axial_fwhm_um": spec.axial_psf_fwhm_um,
                "axial_sigma_um": spec.axial_psf_sigma_um,
                "axial_quadrature_nodes": int(len(model.axial_offsets)),
                "lateral_growth_px": spec.blur_growth_px},
    }


# --------------------------------------------------------------------------------------------- reading truth


@dataclass
class SyntheticTruth:
    """Ground truth of a generated dataset (see :func:`load_truth`).

    Timepoint arguments are 0-based indices into the dataset; cameras are
    camera numbers; pairs are ``(reference, moving)`` tuples such as (0, 1).
    """

    root: Path
    data: dict = field(repr=False)

    # ------------------------------------------------------------ basics
    @property
    def spec(self) -> SyntheticSpec:
        return SyntheticSpec.from_dict(self.data["spec"])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data["shape_zyx"])  # type: ignore[return-value]

    @property
    def timepoints(self) -> int:
        return int(self.data["timepoints"])

    @property
    def cameras(self) -> tuple[int, ...]:
        return tuple(sorted(int(c) for c in self.data["cameras"]))

    @property
    def voxel_size_um(self) -> tuple[float, float, float]:
        """(z_step, pixel, pixel) in µm of every camera's raw frame."""
        return tuple(self.data["voxel_size_um"])  # type: ignore[return-value]

    @property
    def raw_dir(self) -> Path | None:
        """Keller-layout root (holding ``SPM00``), or None."""
        d = self.data["files"]["raw_dir"]
        return None if d is None else self.root / d

    @property
    def flat_dir(self) -> Path | None:
        d = self.data["files"]["flat_dir"]
        return None if d is None else self.root / d

    @property
    def outlier_timepoint(self) -> int | None:
        return self.data["outlier"]["timepoint"]

    @property
    def body_semi_axes_um(self) -> tuple[float, float, float]:
        return tuple(self.data["body"]["semi_axes_um"])  # type: ignore[return-value]

    @property
    def body_centre_um(self) -> tuple[float, float, float]:
        return tuple(self.data["body"]["centre_um"])  # type: ignore[return-value]

    @property
    def conventions(self) -> dict[str, str]:
        return dict(self.data["conventions"])

    def _camera(self, camera: int) -> dict:
        try:
            return self.data["cameras"][str(int(camera))]
        except KeyError:
            raise ValueError(f"camera {camera!r} is not in this dataset (cameras {self.cameras})") from None

    def _pair(self, pair) -> dict:
        key = pair_key(pair)
        return next(p for p in self.data["pairs"] if tuple(p["cameras"]) == key)

    def _t(self, timepoint: int) -> int:
        if not (isinstance(timepoint, (int, np.integer)) and 0 <= timepoint < self.timepoints):
            raise ValueError(f"timepoint {timepoint!r}: expected a 0-based index below {self.timepoints}")
        return int(timepoint)

    # ------------------------------------------------------------ pair geometry and photometry
    def offset(self, pair, timepoint: int = 0) -> tuple[float, float]:
        """True (dy, dx) of a pair in pixels (see the convention)."""
        return tuple(self._pair(pair)["offset_px"][self._t(timepoint)])  # type: ignore[return-value]

    def rotation_deg(self, pair, timepoint: int = 0) -> float:
        return float(self._pair(pair)["rotation_deg"][self._t(timepoint)])

    def offsets(self, pair) -> np.ndarray:
        """(T, 2) true offsets of a pair over time."""
        return np.array(self._pair(pair)["offset_px"], dtype=float)

    def rotations_deg(self, pair) -> np.ndarray:
        return np.array(self._pair(pair)["rotation_deg"], dtype=float)

    def gain(self, camera: int) -> float:
        return float(self._camera(camera)["gain"])

    def gain_ratio(self, pair) -> float:
        """gain_b / gain_a for pair (a, b)."""
        return float(self._pair(pair)["gain_ratio"])

    def channel(self, camera: int) -> int:
        """The camera's channel (with illumination sides: the low-x one, see :meth:`channels_of_camera`)."""
        return int(self._camera(camera)["channel"])

    def channels_of_camera(self, camera: int) -> tuple[int, ...]:
        """Channels a camera recorded (two with illumination sides)."""
        entry = self._camera(camera)
        return tuple(entry.get("channels", [entry["channel"]]))

    @property
    def illumination_channels(self) -> tuple[int, int] | None:
        """(channel lit from low x, channel lit from high x), or None (one channel per camera)."""
        sides = self.data.get("illumination")
        return None if sides is None else tuple(sides["channels"])  # type: ignore[return-value]

    def illumination_balance(self) -> float:
        """Photons of the high-x channel over the low-x one (the ratio intensity matching should find)."""
        sides = self.data.get("illumination")
        return 1.0 if sides is None else float(sides["balance_b_over_a"])

    def sheet_misalignment(self, camera: int) -> tuple[float, float]:
        """(offset_z_planes, rotation_deg) of channel b's sheet in ``camera``'s raw frame ((0, 0) when aligned).

        Channel b's content at (z, y) lands on channel a's at
        ``z + offset_z_planes + tan(rotation_deg) * (y - (Y - 1) / 2)``.
        """
        sides = self.data.get("illumination") or {}
        entry = (sides.get("sheet_misalignment") or {}).get(str(camera))
        return (0.0, 0.0) if entry is None else (float(entry["offset_z_planes"]), float(entry["rotation_deg"]))

    def camera_affine(self, camera: int, timepoint: int = 0) -> np.ndarray:
        """4x4 map of raw voxel (k, y, x, 1) to specimen (z, y, x, 1) in µm (cameras 2/3: including the motion)."""
        return np.array(self._camera(camera)["camera_to_specimen"][self._t(timepoint)])

    def blur_sigma_px(self, camera: int) -> np.ndarray:
        return np.array(self._camera(camera)["blur_sigma_px"])

    # ------------------------------------------------------------ camera artefacts
    def dead_pixels(self, camera: int) -> np.ndarray:
        """Structured array with fields y, x (int32), kind ('hot' or 'stuck') and value (float64)."""
        rows = self._camera(camera)["dead_pixels"]
        dtype = np.dtype([("y", np.int32), ("x", np.int32), ("kind", "U5"), ("value", np.float64)])
        return np.array([(r["y"], r["x"], r["kind"], r["value"]) for r in rows], dtype=dtype)

    def dead_pixel_mask(self, camera: int) -> np.ndarray:
        d = self.dead_pixels(camera)
        mask = np.zeros(self.shape[1:], bool)
        mask[d["y"], d["x"]] = True
        return mask

    def dark_frame(self, camera: int) -> np.ndarray:
        """The camera's dark frame, float32 (Y, X) (integer-valued)."""
        self._camera(camera)
        return self._array(f"dark/CM{int(camera)}")

    # ------------------------------------------------------------ volumes
    def _array(self, key: str) -> np.ndarray:
        import zarr

        path = self.root / self.data["files"]["volumes"]
        try:
            arr = zarr.open_array(str(path / key), mode="r")
        except (FileNotFoundError, KeyError, ValueError) as exc:
            raise InputNotFoundError(f"{path / key}: truth array missing ({exc})") from exc
        return np.asarray(arr[...])

    def _volume(self, kind: str, camera: int, timepoint: int, channel: int | None = None) -> np.ndarray:
        self._camera(camera)
        t = self._t(timepoint)
        side = side_for(self.spec, channel, kind)
        if not self.data["files"]["truth_volumes_written"]:
            raise InputNotFoundError(
                f"{self.root}: truth volumes were not written (write_truth_volumes=False); "
                "use isoview_dask.synthetic.synthetic_volume(truth.spec, ...) to render them"
            )
        tm = self.data["timepoint_numbers"][t]
        return self._array(f"TM{tm:05d}/CM{int(camera)}/{_truth_key(kind, side, channel)}")

    def ideal(self, camera: int, timepoint: int = 0, channel: int | None = None) -> np.ndarray:
        """Expected raw minus dark (float32, (Z, Y, X), camera's raw frame).

        With illumination sides each channel has its own; ``channel`` is then required.
        """
        return self._volume("ideal", camera, timepoint, channel)

    def clean(self, camera: int, timepoint: int = 0) -> np.ndarray:
        """Sharp, unattenuated specimen in photons (float32, (Z, Y, X), camera's raw frame)."""
        return self._volume("clean", camera, timepoint)

    def body_mask(self, camera: int, timepoint: int = 0) -> np.ndarray:
        """The ellipsoidal body (bool, (Z, Y, X), camera's raw frame)."""
        return self._volume("body_mask", camera, timepoint)

    # ------------------------------------------------------------ isotropic reconstruction
    def _isotropic(self) -> dict:
        section = self.data.get("isotropic")
        if section is None:
            raise IsoviewError(f"{self.root}: this truth predates the isotropic ground truth; generate it again")
        return section

    def isotropic_transform(self, timepoint: int = 0) -> np.ndarray:
        """4x4 ``T`` (physical µm) with ``s90 = T[:3, :3] @ s00 + T[:3, 3]`` (VW00's frame to VW90's).

        A fused view's voxel (k, i, j) lies at ``(k * z_step_um, i * pixel_size_um,
        j * pixel_size_um)`` in its own frame (VW00: camera 0's raw frame,
        VW90: camera 2's). See :mod:`isoview_dask.synthetic.volumes`.
        """
        return np.array(self._isotropic()["transform_vw00_to_vw90"][self._t(timepoint)], dtype=float)

    @property
    def isotropic_voxel_um(self) -> float:
        """Voxel edge (µm) of the ideal isotropic image: the lateral pixel size."""
        return float(self._isotropic()["voxel_um"])

    @property
    def vw90_motion(self) -> np.ndarray:
        """4x4 motion ``M`` of the specimen seen by cameras 2/3: point s appears at ``M @ (s, 1)``."""
        return np.array(self._isotropic()["vw90_motion"]["matrix"], dtype=float)

    @property
    def vw90_orientation(self) -> str:
        return str(self._isotropic()["vw90_orientation"])

    def isotropic_ideal(self, timepoint: int = 0) -> np.ndarray:
        """The ideal isotropic image (float32 (Zi, Y, X), VW00's frame sampled every pixel_size_um).

        The unmoved specimen blurred by the lateral PSF in all three axes,
        beads included, no attenuation or noise, times camera 0's gain (see
        :mod:`isoview_dask.synthetic.volumes`). Read from ``volumes.zarr``
        when it was written there, else rendered from the spec (identical
        values).
        """
        t = self._t(timepoint)
        if self._isotropic().get("ideal_written"):
            tm = self.data["timepoint_numbers"][t]
            return self._array(f"TM{tm:05d}/isotropic/ideal")
        return np.asarray(synthetic_isotropic_volume(self.spec, t).compute(scheduler="sync"))

    @property
    def bead_positions_um(self) -> np.ndarray:
        """Bead centres (n, 3), specimen (z, y, x) µm (body centre at the origin; as cameras 0/1 see them)."""
        beads = self.data.get("beads") or {}
        return np.array(beads.get("positions_um", []), dtype=float).reshape(-1, 3)

    @property
    def bead_positions_vw00_um(self) -> np.ndarray:
        """Bead centres (n, 3) in VW00's physical frame: ``(k * z_step, i * pixel, j * pixel)`` µm of camera 0."""
        beads = self.data.get("beads") or {}
        return np.array(beads.get("positions_vw00_um", []), dtype=float).reshape(-1, 3)

    def bead_positions_vw90_um(self, timepoint: int = 0) -> np.ndarray:
        """Bead centres (n, 3) in VW90's physical frame (camera 2's, the specimen moved): T applied to VW00's."""
        T = self.isotropic_transform(timepoint)
        return self.bead_positions_vw00_um @ T[:3, :3].T + T[:3, 3]

    # ------------------------------------------------------------ files
    def stack_path(self, camera: int, timepoint: int = 0, layout: str | None = None,
                   channel: int | None = None) -> Path:
        """Path of a camera's ``.stack`` ('keller' or 'flat'; default: whichever exists, Keller first).

        ``channel`` picks one of the two channels of a camera with illumination sides.
        """
        spec = self.spec
        self._camera(camera)
        tm = self.data["timepoint_numbers"][self._t(timepoint)]
        if side_for(spec, channel, "raw") is None:
            channel = None
        name = _stack_name(spec, tm, camera, channel)
        layout = layout or ("keller" if self.raw_dir is not None else "flat")
        if layout == "keller" and self.raw_dir is not None:
            return self.raw_dir / _keller_dir(spec) / f"TM{tm:05d}" / "ANG000" / name
        if layout == "flat" and self.flat_dir is not None:
            return self.flat_dir / name
        raise ValueError(f"layout {layout!r} was not written for {self.root}")

    def raw(self, camera: int, timepoint: int = 0, layout: str | None = None,
            channel: int | None = None) -> np.ndarray:
        """Read a camera's raw stack into memory (uint16 (Z, Y, X)); ``channel`` as for :meth:`stack_path`."""
        path = self.stack_path(camera, timepoint, layout, channel)
        return np.fromfile(path, dtype="<u2").reshape(self.shape)


def load_truth(out: str | os.PathLike) -> SyntheticTruth:
    """Read the ground truth of a dataset written by :func:`generate_dataset`."""
    root = Path(out)
    path = root / "truth" / "truth.json"
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no synthetic ground truth here (expected truth/truth.json)")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if data.get("format") != "isoview-dask synthetic truth":
        raise IsoviewError(f"{path}: not an isoview-dask synthetic truth file")
    return SyntheticTruth(root=root, data=data)
