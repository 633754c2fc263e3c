"""Register and fuse two light-sheet views with multiview-stitcher, timing every step.

Runs under the interpreter of the separate environment that
``benchmarks/mvs.py`` builds (multiview-stitcher plus itk-elastix); it never
imports ``isoview_dask``. ``benchmarks/mvs.py`` (:func:`run_mvs`) writes the
input, starts this script as a child process and reads the results back.

Input: one ``.npz`` with ``vw00``/``voxel00``, ``vw90``/``voxel90`` (float32
Z,Y,X volumes and their voxel sizes in µm, z, y, x), ``initial`` (4x4, µm:
``s90 = initial[:3, :3] @ s00 + initial[:3, 3]``, where voxel (k, i, j) of a
view lies at ``s = (k, i, j) * voxel``), ``out_voxel`` and ``out_shape`` (the
output grid, in VW00's frame, voxel (k, i, j) at ``(k, i, j) * out_voxel``),
``psf00``/``psf90`` (each view's PSF already on the output grid, centred) and
``iterations``.

How our geometry maps onto multiview-stitcher's. A view there is a
spatial image whose voxel (k, i, j) lies at ``origin + (k, i, j) * spacing``
(its own physical frame, here origin 0 and ``spacing = voxel``), plus, per
*transform key*, an affine ``A`` (4x4, homogeneous, z-y-x order) taking that
frame into the shared world frame: ``world = A @ s``. Its fusion samples a
view at ``inv(A) @ world`` (``fusion.fuse_np`` hands ``inv(param)`` to
``transformation.transform_sim``), which confirms the direction. We use
VW00's frame as the world, so

* VW00: ``A00 = I``;
* VW90: ``A90 = inv(initial)`` (``s00 = inv(initial) @ s90``).

``registration.register`` returns, per view, a correction ``C`` applied in
world space after the starting transform, and stores ``C @ A`` under the new
transform key. The estimated transform in our convention is therefore
``inv(A90_reg) @ A00_reg``. The reference view (0) normally stays at the
identity; to keep the output grid in VW00's frame even when it does not, both
views are re-anchored by ``inv(A00_reg)`` before fusion.

Steps, each timed (wall seconds, this process's CPU seconds over all
threads, and its peak RSS so far): ``imports`` (multiview-stitcher, dask,
and ITK's lazily loaded elastix module), ``build`` (spatial images and
msims), ``prereg`` (optional phase-correlation pre-registration),
``register`` (elastix, VW90 onto VW00 held fixed), ``deconvolve``
(``fusion.fuse`` with ``fusion.multi_view_deconvolution``; skipped with
``--no-deconvolve``) and ``average`` (``fusion.fuse`` with its default
``weighted_average_fusion``; skipped with ``--no-average``).

Output: ``<out>.npz`` (``deconvolved``, ``average``: float32 ``out_shape``, each when computed;
``transform``: the estimated 4x4 in the input's convention; ``initial``;
``params_registered``: the per-view world affines) and ``<out>.json``
(timings, versions, settings, registration quality).

    python mvs_runner.py input.npz output-prefix [--threads 1] [--transform-types translation,rigid] ...
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
import time

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import package_versions, peak_rss_mb  # noqa: E402

SPATIAL_DIMS = ("z", "y", "x")
#: The one channel every view has (multiview-stitcher always adds a channel axis).
CHANNEL = "signal"
#: Distributions whose versions the result records.
VERSIONED = ("multiview-stitcher", "itk-elastix", "itk", "numpy", "scipy", "dask", "dask-image", "xarray",
             "scikit-image", "zarr")


class Steps:
    """Wall and CPU seconds of named blocks (CPU: ``time.process_time``, every thread of this process), and
    the process's peak RSS at each block's end (a high-water mark: it covers every block before too)."""

    def __init__(self):
        self.timings: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        print(f"[mvs] {name} ...", file=sys.stderr, flush=True)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        yield
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        self.timings[name] = {"wall_s": round(wall, 4), "cpu_s": round(cpu, 4), "peak_rss_mb": peak_rss_mb()}
        print(f"[mvs] {name}: {wall:.2f} s wall, {cpu:.2f} CPU-s", file=sys.stderr, flush=True)


def versions() -> dict[str, str | None]:
    """Installed versions of the distributions the result records."""
    return package_versions(VERSIONED)


def parse_binning(text: str | None) -> dict[str, int] | None:
    """``"1,2,2"`` -> ``{"z": 1, "y": 2, "x": 2}``; a single number applies to every axis."""
    if not text:
        return None
    values = [int(v) for v in text.split(",")]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise SystemExit("--registration-binning takes one or three integers (z,y,x)")
    return dict(zip(SPATIAL_DIMS, values))


def plain_affine(xaffine) -> np.ndarray:
    """A 4x4 numpy affine from multiview-stitcher's xarray form (first timepoint if it has a ``t`` axis)."""
    if "t" in xaffine.dims:
        xaffine = xaffine.isel(t=0)
    return np.asarray(xaffine.transpose("x_in", "x_out").data, dtype=np.float64)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="input .npz")
    parser.add_argument("output", help="output prefix: <output>.npz and <output>.json are written")
    parser.add_argument("--threads", type=int, default=1, help="dask threads and ITK threads (default 1)")
    parser.add_argument("--transform-types", default="translation,rigid",
                        help="elastix stages, in order (default %(default)s: its documented default)")
    parser.add_argument("--metric", default=None,
                        help="elastix metric, e.g. AdvancedNormalizedCorrelation (default: elastix's default "
                             "for the transform, AdvancedMattesMutualInformation)")
    parser.add_argument("--resolutions", type=int, default=2, help="elastix pyramid levels (default 2)")
    parser.add_argument("--elastix-iterations", type=int, default=None,
                        help="elastix optimizer iterations per level (default: elastix's own)")
    parser.add_argument("--registration-binning", default=None,
                        help="multiview-stitcher's registration_binning, z,y,x (default: its heuristic)")
    parser.add_argument("--prereg", action="store_true",
                        help="pre-register by phase correlation (translation) before elastix")
    parser.add_argument("--no-register", action="store_true",
                        help="skip registration: fuse with the initial transform")
    parser.add_argument("--psf-type", default="EFFICIENT_BAYESIAN",
                        help="multi_view_deconvolution psf_type (default %(default)s)")
    parser.add_argument("--chunk", default=None,
                        help="output chunk size, z,y,x (default: the whole output grid, one chunk)")
    parser.add_argument("--halo", type=int, default=None,
                        help="overlap_in_pixels around each output chunk for the deconvolution "
                             "(default: the largest PSF half-width)")
    parser.add_argument("--no-average", action="store_true", help="skip the weighted-average fusion")
    parser.add_argument("--no-deconvolve", action="store_true",
                        help="skip the deconvolution (e.g. to measure the average's peak memory on its own)")
    args = parser.parse_args(argv)

    threads = max(1, int(args.threads))
    steps = Steps()

    with steps("imports"):
        import dask
        import xarray as xr  # noqa: F401  (imported here so its import time is not in 'build')

        from multiview_stitcher import fusion, msi_utils, param_utils, registration
        from multiview_stitcher import spatial_image_utils as si_utils

        itk = None
        if not args.no_register:
            import itk

            # itk loads its modules on first use; do it here, not inside the registration's time.
            itk.ParameterObject.New()
            itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)

    data = np.load(args.input)
    vw00 = np.ascontiguousarray(data["vw00"], dtype=np.float32)
    vw90 = np.ascontiguousarray(data["vw90"], dtype=np.float32)
    voxel00 = [float(v) for v in data["voxel00"]]
    voxel90 = [float(v) for v in data["voxel90"]]
    initial = np.asarray(data["initial"], dtype=np.float64)
    out_voxel = float(data["out_voxel"])
    out_shape = tuple(int(v) for v in data["out_shape"])
    psf00 = np.asarray(data["psf00"], dtype=np.float32)
    psf90 = np.asarray(data["psf90"], dtype=np.float32)
    iterations = int(data["iterations"])

    chunk = tuple(int(v) for v in args.chunk.split(",")) if args.chunk else out_shape
    halo = args.halo if args.halo is not None else max(max(psf00.shape), max(psf90.shape)) // 2
    binning = parse_binning(args.registration_binning)
    transform_types = [t.strip() for t in args.transform_types.split(",") if t.strip()]
    last_type = transform_types[-1].lower()
    pairwise_kwargs = {"transform_types": transform_types, "number_of_resolutions": args.resolutions,
                       "number_of_threads": threads}
    if args.metric:
        pairwise_kwargs["metric"] = args.metric
    if args.elastix_iterations is not None:
        pairwise_kwargs["number_of_iterations"] = args.elastix_iterations
    groupwise_kwargs = {"transform": last_type, "reference_view": 0}
    register_kwargs = {"reg_channel": CHANNEL, "pre_registration_pruning_method": None,
                       "registration_binning": binning}

    dask.config.set(scheduler="threads", num_workers=threads)
    info: dict = {}

    with steps("build"):
        sims = []
        for array, voxel, affine in ((vw00, voxel00, np.eye(4)), (vw90, voxel90, np.linalg.inv(initial))):
            sims.append(si_utils.get_sim_from_array(
                array, dims=list(SPATIAL_DIMS), scale=dict(zip(SPATIAL_DIMS, voxel)),
                translation=dict.fromkeys(SPATIAL_DIMS, 0.0),
                affine=param_utils.affine_to_xaffine(affine), transform_key="initial", c_coords=[CHANNEL]))
        msims = [msi_utils.get_msim_from_sim(sim, scale_factors=[]) for sim in sims]

    start_key = "initial"
    if args.prereg and not args.no_register:
        with steps("prereg"):
            registration.register(
                msims, transform_key="initial", new_transform_key="prereg",
                pairwise_reg_func=registration.phase_correlation_registration,
                groupwise_resolution_kwargs={"transform": "translation", "reference_view": 0},
                **register_kwargs)
        start_key = "prereg"

    if args.no_register:
        fuse_key = "initial"
    else:
        with steps("register"):
            result = registration.register(
                msims, transform_key=start_key, new_transform_key="registered",
                pairwise_reg_func=registration.registration_ITKElastix,
                pairwise_reg_func_kwargs=dict(pairwise_kwargs),  # it adds origins etc. to the dict it gets
                groupwise_resolution_kwargs=groupwise_kwargs,
                return_dict=True, **register_kwargs)
        qualities = result["pairwise_registration"]["metrics"]["qualities"]
        info["registration_quality"] = {f"{a}-{b}": np.asarray(q, dtype=float).ravel().tolist()
                                       for (a, b), q in qualities.items()}
        fuse_key = "registered"

    sims = [msi_utils.get_sim_from_msim(msim) for msim in msims]
    world = [plain_affine(si_utils.get_affine_from_sim(sim, transform_key=fuse_key)) for sim in sims]
    info["reference_affine_before_reanchoring"] = world[0]
    anchor = np.linalg.inv(world[0])
    anchored = [anchor @ a for a in world]
    for sim, affine in zip(sims, anchored):
        si_utils.set_sim_affine(sim, param_utils.affine_to_xaffine(affine), transform_key="vw00")
    transform = np.linalg.inv(anchored[1]) @ anchored[0]
    if "prereg" in (si_utils.get_tranform_keys_from_sim(sims[0]) or []):
        prereg = [plain_affine(si_utils.get_affine_from_sim(sim, transform_key="prereg")) for sim in sims]
        info["prereg_transform"] = np.linalg.inv(prereg[1]) @ prereg[0]

    grid = {"spacing": dict.fromkeys(SPATIAL_DIMS, out_voxel), "origin": dict.fromkeys(SPATIAL_DIMS, 0.0),
            "shape": dict(zip(SPATIAL_DIMS, out_shape))}
    fuse_kwargs = {"transform_key": "vw00", "output_stack_properties": grid,
                   "output_chunksize": dict(zip(SPATIAL_DIMS, chunk))}

    def squeeze(fused) -> np.ndarray:
        array = np.asarray(fused.data.compute() if hasattr(fused.data, "compute") else fused.data)
        array = array.reshape(array.shape[-3:])
        if array.shape != out_shape:
            raise RuntimeError(f"fused shape {array.shape} != out_shape {out_shape}")
        return array.astype(np.float32, copy=False)

    deconv_kwargs = {"psfs": [psf00, psf90], "n_iterations": iterations, "psf_type": args.psf_type}
    deconvolved = None
    if not args.no_deconvolve:
        with steps("deconvolve"):
            deconvolved = squeeze(fusion.fuse(
                images=sims, fusion_func=fusion.multi_view_deconvolution, fusion_func_kwargs=deconv_kwargs,
                overlap_in_pixels=halo, **fuse_kwargs))

    average = None
    if not args.no_average:
        with steps("average"):
            average = squeeze(fusion.fuse(images=sims, fusion_func=fusion.weighted_average_fusion, **fuse_kwargs))

    arrays = {"transform": transform, "initial": initial, "params_registered": np.stack(anchored)}
    if deconvolved is not None:
        arrays["deconvolved"] = deconvolved
    if average is not None:
        arrays["average"] = average
    np.savez(args.output + ".npz", **arrays)

    settings = {
        "threads": threads, "iterations": iterations, "out_shape": out_shape, "out_voxel": out_voxel,
        "voxel00": voxel00, "voxel90": voxel90, "vw00_shape": vw00.shape, "vw90_shape": vw90.shape,
        "psf00_shape": psf00.shape, "psf90_shape": psf90.shape,
        "registration": None if args.no_register else {
            "function": "multiview_stitcher.registration.register",
            "pairwise_reg_func": "registration.registration_ITKElastix",
            "pairwise_reg_func_kwargs": pairwise_kwargs, "groupwise_resolution_method": "global_optimization",
            "groupwise_resolution_kwargs": groupwise_kwargs, "transform_key": start_key,
            "prereg_phase_correlation": bool(args.prereg), **register_kwargs},
        "deconvolution": None if args.no_deconvolve else {
            "function": "multiview_stitcher.fusion.fuse",
            "fusion_func": "fusion.multi_view_deconvolution",
            "fusion_func_kwargs": {"n_iterations": iterations, "psf_type": args.psf_type, "psfs": "psf00, psf90"},
            "output_chunksize": chunk, "overlap_in_pixels": halo,
            "blending_widths": "library default (0.1.62: z 3, y 10, x 10 µm, in each view's own axes)",
        },
        "average": None if args.no_average else {"function": "multiview_stitcher.fusion.fuse",
                                                 "fusion_func": "fusion.weighted_average_fusion",
                                                 "output_chunksize": chunk},
    }
    report = {"timings": steps.timings, "versions": versions(), "python": platform.python_version(),
              "settings": settings, "info": info, "transform": transform,
              "environment": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                            "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                                                            "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")}}
    with open(args.output + ".json", "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=1, default=_jsonable)
        fh.write("\n")
    return 0


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    return repr(obj)


if __name__ == "__main__":
    sys.exit(main())
