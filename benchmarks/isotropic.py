"""Isotropic reconstruction against multiview-stitcher: speed, memory and accuracy on a known answer.

Both tools get the same two orthogonal views (VW00, VW90) of one synthetic
specimen (:func:`isoview_dask.synthetic.fourview.fourview`), whose ideal
isotropic image, true VW00 -> VW90 transform and bead positions are known,
and reconstruct on the same output grid (VW00's frame, voxel = the lateral
pixel).

* **isoview-dask**: ``register_views`` (rigid, with its orientation search,
  and again from the rig's coarse transform), then ``reconstruct`` with
  ``method="average"`` and ``method="deconvolution"`` at each ``--iterations``,
  kernels from ``view_psfs(..., target_fwhm_um=lateral FWHM)`` (our default:
  deconvolve to the lateral resolution), at every ``--threads``.
* **multiview-stitcher** (``benchmarks/mvs.py``, its own environment):
  elastix registration (``translation,rigid``, its default stages) from the
  rig's coarse transform (``orientation_transform``), then
  ``multi_view_deconvolution`` (EFFICIENT_BAYESIAN) with the views' *full*
  PSFs (``view_psfs(..., target_fwhm_um=None)`` with the true transform:
  its deconvolution needs the real PSFs) at each ``--mvs-iterations``, and
  ``weighted_average_fusion`` in a separate run (so that its peak memory is
  its own).

Every measured step runs in a child process of its own, for both tools
alike (ours: this script with ``child``; theirs: ``mvs_runner.py``), under
``--threads`` threads (dask's thread pool and every BLAS/OpenMP/ITK pool).
Inside the child each step is timed (wall, CPU seconds of all threads) and
the child's peak RSS is read from the kernel's high-water mark
(``VmHWM``) at the step's end, so it also covers what ran before it in
that child: imports and input (both tools), and, for multiview-stitcher's
deconvolution and average, its registration. Within each repeat the tools
alternate; the tables show medians over repeats (and seeds).

Reported per row: wall and CPU seconds of the step, output Mvoxel/s, MB/s
per core (MB = 10^6 bytes of the two input views as float32, divided by the
wall time and the thread count), peak RSS, and against the truth: Pearson
correlation with the ideal image over the whole volume, and the bead FWHM
(voxels, median over the beads, along z, y and x, and the ratio of the
largest to the smallest of the three). The same for two baselines: VW00
alone upsampled onto the grid (cubic splines), and the mean of both views
resampled with the true transform. Registration rows give the RMS distance
(µm) between where the estimated and the true transform send points spread
over the specimen.

Results: ``<results>/isotropic.json`` and ``isotropic.md``
(``isotropic-quick.*`` with ``--quick``).

    python benchmarks/isotropic.py                       # 96^3, ours at 5,10,20 iterations and 1, 2 threads,
                                                         # mvs at 10 and 1 thread: ~10 minutes on 2 cores
    python benchmarks/isotropic.py --iterations 10 --threads 1 --repeats 1
    python benchmarks/isotropic.py --quick --no-mvs      # a smoke run of our side (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb  # noqa: E402

HERE = Path(__file__).resolve().parent
TOOL_OURS, TOOL_MVS, TOOL_BASELINE = "isoview-dask", "multiview-stitcher", "baseline"
#: Defaults of the options left out (``--quick``: a smoke run in seconds; 56^3 is about the smallest size whose
#: medium still holds a few beads).
DEFAULTS = {"shape": "96,96,96", "beads": None, "iterations": "5,10,20", "threads": "1,2", "mvs_iterations": "10"}
QUICK = {"shape": "56,56,56", "beads": 4, "iterations": "5", "threads": "1", "mvs_iterations": "5"}


# --------------------------------------------------------------------------
# The child process (our side): one step, timed, with the process's peak RSS
# --------------------------------------------------------------------------


class Steps:
    """Wall seconds, CPU seconds (all threads) and peak RSS so far at the end of named blocks."""

    def __init__(self):
        self.timings: dict[str, dict[str, float]] = {}

    def __call__(self, name: str):
        steps = self

        class _Block:
            def __enter__(self):
                self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                steps.timings[name] = {"wall_s": round(time.perf_counter() - self.wall0, 4),
                                       "cpu_s": round(time.process_time() - self.cpu0, 4),
                                       "peak_rss_mb": peak_rss_mb()}

        return _Block()


CHILD_TASKS = ("register-search", "register-initial", "average", "deconvolution")


def child_main(argv) -> int:
    """``child TASK input.npz output-prefix``: one step of our side, written to ``<prefix>.json/.npz``."""
    parser = argparse.ArgumentParser(prog="isotropic.py child")
    parser.add_argument("task", choices=CHILD_TASKS)
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args(argv)
    steps = Steps()
    with steps("imports"):
        import dask

        from isoview_dask.isotropic import (IsotropicGrid, PSFModel, ReconstructionOptions, reconstruct,
                                            register_views, view_psfs)
    with steps("load"):
        data = dict(np.load(args.input))
    vw00, vw90 = data["vw00"], data["vw90"]
    voxel00, voxel90 = tuple(data["voxel00"].tolist()), tuple(data["voxel90"].tolist())
    psf_fwhm = tuple(data["psf_fwhm_um"].tolist())
    report: dict = {"task": args.task, "threads": args.threads}
    arrays: dict = {}
    with dask.config.set(scheduler="threads", num_workers=args.threads):
        if args.task.startswith("register"):
            initial = data["initial"] if args.task == "register-initial" else None
            with steps("register"):
                reg = register_views(vw00, voxel00, vw90, voxel90, psf_fwhm_um=psf_fwhm, initial=initial)
            report["registration"] = reg.to_dict()
            arrays = {"transform": reg.transform, "scale90": np.float64(reg.scale90)}
        else:
            grid = IsotropicGrid(shape=tuple(int(v) for v in data["out_shape"]), voxel_um=float(data["out_voxel"]))
            options = ReconstructionOptions(method=args.task, iterations=args.iterations)
            with steps("reconstruct"):
                kernels = view_psfs(PSFModel(fwhm_um=psf_fwhm), data["transform"], grid.voxel_um,
                                    target_fwhm_um=psf_fwhm[0])
                volume = reconstruct(vw00, voxel00, vw90, voxel90, grid, data["transform"], kernels,
                                     scale90=float(data["scale90"]), options=options).compute()
            report["options"] = options.to_dict()
            report["kernel_shapes"] = [list(k.shape) for k in kernels]
            arrays = {"volume": np.asarray(volume, np.float32)}
    report["timings"] = steps.timings
    np.savez(args.output + ".npz", **arrays)
    with open(args.output + ".json", "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else repr(o))
    return 0


# --------------------------------------------------------------------------
# The parent: inputs, children, measures
# --------------------------------------------------------------------------


def run_ours(task: str, source: Path, workdir: Path, name: str, threads: int, iterations: int = 0) -> dict:
    """Run one step of our side in a child process; its timings, the child's totals and its output arrays."""
    import mvs
    import original

    prefix = workdir / name
    command = [sys.executable, str(Path(__file__).resolve()), "child", task, str(source), str(prefix),
               "--threads", str(threads), "--iterations", str(iterations)]
    log = workdir / f"{name}.log"
    with mvs.child_environment(threads):
        try:
            child = original.timed_command(command, log)
        except SystemExit as exc:
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(f"{exc}\n--- last lines of {log} ---\n{tail}") from None
    report = json.loads(Path(f"{prefix}.json").read_text())
    with np.load(f"{prefix}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return {"timings": report["timings"], "child": {k: round(v, 3) for k, v in child.items()}, "report": report,
            **arrays}


def quality(volume: np.ndarray, truth, grid, lateral_sigma_vox: float) -> dict:
    """Correlation with the ideal image (as is, and after a further lateral-PSF blur) and bead FWHM."""
    from scipy import ndimage

    from isoview_dask.isotropic import bead_fwhm, correlation

    volume = np.asarray(volume, np.float32)
    fwhm = bead_fwhm(volume, truth.beads_um / grid.voxel_um)
    fitted = ~np.isnan(fwhm).any(axis=1)
    medians = np.nanmedian(fwhm, axis=0) if fitted.any() else np.full(3, np.nan)
    ratio = float(np.max(medians) / np.min(medians)) if np.all(np.isfinite(medians)) else None
    return {"r_ideal": correlation(volume, truth.ideal),
            "r_ideal_after_lateral_blur": correlation(ndimage.gaussian_filter(volume, lateral_sigma_vox),
                                                      truth.ideal),
            "bead_fwhm_vox": [float(v) for v in medians], "bead_fwhm_ratio": ratio,
            "beads_fitted": int(fitted.sum()), "beads": int(len(fwhm))}


def registration_error(transform: np.ndarray, truth) -> dict:
    from isoview_dask.isotropic import displacement_rms, rotation_angle_deg

    return {"error_rms_um": displacement_rms(transform, truth.transform, truth.specimen_points_um),
            "rotation_error_deg": rotation_angle_deg(np.asarray(transform)[:3, :3]
                                                     @ np.linalg.inv(truth.transform[:3, :3]))}


def _ratio(value: float) -> str:
    return f"{value:.2f}" if value < 1 else f"{value:.1f}"


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


def row_key(tool, step, variant, iterations, threads) -> tuple:
    return (tool, step, variant, iterations, threads)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["child"]:
        return child_main(argv[1:])
    sys.path.insert(0, str(HERE))
    import _common
    import mvs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser, default_repeats=3)
    parser.add_argument("--shape", default=None,
                        help=f"ideal isotropic grid Z,Y,X (default {DEFAULTS['shape']}; {QUICK['shape']} with --quick)")
    parser.add_argument("--seeds", default="0", help="specimen seeds, comma-separated (default %(default)s)")
    parser.add_argument("--beads", type=int, default=None,
                        help=f"beads per specimen (default: FourViewSpec's; {QUICK['beads']} with --quick)")
    parser.add_argument("--iterations", default=None,
                        help=f"our Richardson-Lucy iteration counts (default {DEFAULTS['iterations']}; "
                             f"{QUICK['iterations']} with --quick)")
    parser.add_argument("--threads", default=None,
                        help=f"our thread counts (default {DEFAULTS['threads']}; {QUICK['threads']} with --quick)")
    parser.add_argument("--mvs-iterations", default=None,
                        help=f"multiview-stitcher's iteration counts, or 'same' for --iterations (default "
                             f"{DEFAULTS['mvs_iterations']}; {QUICK['mvs_iterations']} with --quick)")
    parser.add_argument("--mvs-threads", type=int, default=1, help="multiview-stitcher's threads (default 1)")
    parser.add_argument("--no-mvs", action="store_true", help="our side and the baselines only")
    args = parser.parse_args(argv)
    repeats = _common.resolve_repeats(args)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    shape, beads = tuple(parse_ints(args.shape)), args.beads
    iterations, threads = parse_ints(args.iterations), parse_ints(args.threads)
    mvs_iterations = [] if args.no_mvs else (
        iterations if args.mvs_iterations == "same" else parse_ints(args.mvs_iterations))
    seeds = parse_ints(args.seeds)
    name = "isotropic-quick" if args.quick else "isotropic"
    workdir = args.workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    if mvs_iterations:
        mvs.ensure_venv(args.workdir)

    import dask

    from isoview_dask.isotropic import orientation_transform, output_grid, resample_view
    from isoview_dask.synthetic.fourview import FourViewSpec, fourview

    runs: dict[tuple, list[dict]] = {}
    qualities: dict[tuple, list[dict]] = {}
    per_seed: list[dict] = []
    mvs_versions = None

    def record(key, run, q=None):
        runs.setdefault(key, []).append(run)
        if q is not None:
            qualities.setdefault(key, []).append(q)

    for seed in seeds:
        spec_kwargs = {"shape": shape, "seed": seed}
        if beads is not None:
            spec_kwargs["beads"] = beads
        spec = FourViewSpec(**spec_kwargs)
        print(f"seed {seed}: rendering {'x'.join(map(str, shape))} ...", file=sys.stderr, flush=True)
        truth = fourview(spec)
        grid = output_grid(truth.vw00.shape, truth.voxel00)
        extent00 = (np.array(truth.vw00.shape) - 1) * np.asarray(truth.voxel00)
        extent90 = (np.array(truth.vw90.shape) - 1) * np.asarray(truth.voxel90)
        initial = orientation_transform(spec.orientation, extent00, extent90)
        lateral_sigma_vox = spec.sigma_um[0] / grid.voxel_um
        input_mb = (truth.vw00.size + truth.vw90.size) * 4 / _common.MB
        seed_info = {"seed": seed, "vw00_shape": truth.vw00.shape, "vw90_shape": truth.vw90.shape,
                     "voxel00": truth.voxel00, "voxel90": truth.voxel90, "grid": grid.to_dict(),
                     "input_mb": input_mb, "true_transform": truth.transform, "initial": initial,
                     "initial_error": registration_error(initial, truth), "beads": len(truth.beads_um)}
        per_seed.append(seed_info)

        # baselines (not timed)
        with dask.config.set(scheduler="threads"):
            upsampled = resample_view(truth.vw00, truth.voxel00, grid).compute()
            mean_true = 0.5 * (upsampled + resample_view(truth.vw90, truth.voxel90, grid, truth.transform).compute())
        for variant, volume in (("ideal image (reference)", truth.ideal), ("VW00 upsampled", upsampled),
                                ("mean of both, true motion", mean_true)):
            qualities.setdefault(row_key(TOOL_BASELINE, "baseline", variant, None, None), []).append(
                quality(volume, truth, grid, lateral_sigma_vox))
        del upsampled, mean_true

        common = {"vw00": truth.vw00, "voxel00": np.asarray(truth.voxel00), "vw90": truth.vw90,
                  "voxel90": np.asarray(truth.voxel90), "initial": initial}
        ours_input = workdir / f"seed{seed}-input.npz"
        np.savez(ours_input, **common, psf_fwhm_um=np.asarray(spec.psf_fwhm_um), out_shape=np.asarray(grid.shape),
                 out_voxel=np.float64(grid.voxel_um))
        recon_input = workdir / f"seed{seed}-registered-input.npz"
        mvs_inputs = None
        if mvs_iterations:
            from isoview_dask.isotropic import PSFModel, view_psfs

            psf00, psf90 = view_psfs(PSFModel(fwhm_um=spec.psf_fwhm_um), truth.transform, grid.voxel_um,
                                     target_fwhm_um=None)
            mvs_inputs = {**common, "out_voxel": grid.voxel_um, "out_shape": np.asarray(grid.shape),
                          "psf00": psf00, "psf90": psf90}

        # one repeat: registrations first (ours gives the transform every reconstruction of ours uses), then
        # per iteration count our deconvolution at every thread count and multiview-stitcher's, then averages
        plan: list[tuple] = [(TOOL_OURS, "registration", "register-search", None, 1),
                             (TOOL_OURS, "registration", "register-initial", None, 1)]
        for it in sorted(set(iterations) | set(mvs_iterations)):
            if it in iterations:
                plan += [(TOOL_OURS, "deconvolution", "deconvolution", it, th) for th in threads]
            if it in mvs_iterations:
                plan.append((TOOL_MVS, "deconvolution", "deconvolution", it, args.mvs_threads))
        plan += [(TOOL_OURS, "average", "average", None, th) for th in threads]
        if mvs_iterations:
            plan.append((TOOL_MVS, "average", "average", None, args.mvs_threads))

        for r in range(repeats):
            for tool, step, task, it, th in plan:
                label = f"seed {seed} [{r + 1}/{repeats}] {tool} {task}" + (f" {it} it" if it else "") + f" {th} thr"
                print(label + " ...", file=sys.stderr, flush=True)
                first = r == 0
                if tool == TOOL_OURS:
                    tag = f"seed{seed}-ours-{task}" + (f"-{it}" if it else "") + f"-t{th}"
                    if step == "registration":
                        result = run_ours(task, ours_input, workdir, tag, th)
                        t = result["timings"]["register"]
                        variant = {"register-search": "orientation search, then rigid",
                                   "register-initial": "rigid from the coarse transform"}[task]
                        err = registration_error(result["transform"], truth)
                        record(row_key(tool, step, variant, None, th),
                               {**t, "child": result["child"], "imports": result["timings"]["imports"]},
                               {**err, "scale90": float(result["scale90"])} if first else None)
                        if task == "register-search" and first:
                            np.savez(recon_input, **common, psf_fwhm_um=np.asarray(spec.psf_fwhm_um),
                                     out_shape=np.asarray(grid.shape), out_voxel=np.float64(grid.voxel_um),
                                     transform=result["transform"], scale90=result["scale90"])
                            seed_info["ours_registration"] = result["report"]["registration"]
                    else:
                        result = run_ours(task, recon_input, workdir, tag, th, it or 0)
                        t = result["timings"]["reconstruct"]
                        record(row_key(tool, step, step, it, th),
                               {**t, "child": result["child"], "imports": result["timings"]["imports"]},
                               quality(result["volume"], truth, grid, lateral_sigma_vox) if first else None)
                else:
                    # run_mvs keeps its environment (venv-mvs) and files in the top work folder
                    tag = f"{name}-seed{seed}-mvs-{task}" + (f"-{it}" if it else "")
                    if step == "deconvolution":
                        result = mvs.run_mvs({**mvs_inputs, "iterations": it}, args.workdir, threads=th, name=tag,
                                             no_average=True)
                        volume, t = result["deconvolved"], result["timings"]["deconvolve"]
                    else:
                        result = mvs.run_mvs({**mvs_inputs, "iterations": 0}, args.workdir, threads=th, name=tag,
                                             no_deconvolve=True)
                        volume, t = result["average"], result["timings"]["average"]
                    mvs_versions = {k: result["report"]["versions"].get(k)
                                    for k in ("multiview-stitcher", "itk-elastix", "dask", "numpy")}
                    extra = {"child": result["child"], "imports": result["timings"]["imports"]}
                    record(row_key(tool, step, step, it, th), {**t, **extra},
                           quality(volume, truth, grid, lateral_sigma_vox) if first else None)
                    err = registration_error(result["transform"], truth)
                    record(row_key(tool, "registration", "elastix translation,rigid from the coarse transform",
                                   None, th), {**result["timings"]["register"], **extra},
                           err if first and step == "deconvolution" else None)
                    if first and step == "deconvolution":
                        seed_info.setdefault("mvs_transform", result["transform"])
                        seed_info.setdefault("mvs_settings", result["report"]["settings"])

    # ---- aggregate
    voxels = int(np.prod(per_seed[0]["grid"]["shape"]))
    input_mb = float(np.mean([s["input_mb"] for s in per_seed]))
    rows = []
    keys = list(runs) + [k for k in qualities if k not in runs]
    for key in keys:
        tool, step, variant, it, th = key
        row: dict = {"tool": tool, "step": step, "method": variant, "iterations": it, "threads": th}
        measured = runs.get(key, [])
        if measured:
            wall = _common.median([m["wall_s"] for m in measured])
            cpu = _common.median([m["cpu_s"] for m in measured])
            row.update({"wall_s": wall, "cpu_s": cpu, "walls": [m["wall_s"] for m in measured],
                        "peak_rss_mb": max(m["peak_rss_mb"] for m in measured),
                        "imports_rss_mb": max(m["imports"]["peak_rss_mb"] for m in measured),
                        "above_imports_mb": max(m["peak_rss_mb"] - m["imports"]["peak_rss_mb"] for m in measured),
                        "child_wall_s": _common.median([m["child"]["wall_s"] for m in measured]),
                        "child_peak_tree_rss_mb": max(m["child"]["peak_tree_rss_mb"] for m in measured),
                        "runs": measured})
            if step in ("deconvolution", "average"):
                row["mvoxel_per_s"] = voxels / 1e6 / wall
                row["mb_per_s_per_core"] = input_mb / wall / th
                row["mb_per_cpu_s"] = input_mb / cpu
        qs = qualities.get(key, [])
        if qs:
            row["quality_per_seed"] = qs
            for field in ("r_ideal", "r_ideal_after_lateral_blur", "bead_fwhm_ratio", "error_rms_um",
                          "rotation_error_deg"):
                values = [q[field] for q in qs if q.get(field) is not None]
                if values:
                    row[field] = float(np.mean(values))
            if "bead_fwhm_vox" in qs[0]:
                row["bead_fwhm_vox"] = np.nanmean([q["bead_fwhm_vox"] for q in qs], axis=0).tolist()
                row["bead_fwhm"] = "/".join(f"{v:.2f}" for v in row["bead_fwhm_vox"])
                if np.all(np.isfinite(row["bead_fwhm_vox"])):  # the ratio of the seeds' mean widths
                    row["bead_fwhm_ratio"] = max(row["bead_fwhm_vox"]) / min(row["bead_fwhm_vox"])
        rows.append(row)
    by_key = {(r["tool"], r["step"], r["iterations"], r["threads"]): r for r in rows}
    for row in rows:
        if row["tool"] == TOOL_OURS and row["step"] in ("deconvolution", "average") and "wall_s" in row:
            theirs = by_key.get((TOOL_MVS, row["step"], row["iterations"], args.mvs_threads))
            if theirs and "wall_s" in theirs:
                row["speedup_vs_mvs"] = theirs["wall_s"] / row["wall_s"]
                row["cpu_speedup_vs_mvs"] = theirs["cpu_s"] / row["cpu_s"]

    order = {TOOL_BASELINE: 2, TOOL_OURS: 0, TOOL_MVS: 1}
    recon = sorted([r for r in rows if r["step"] != "registration"],
                   key=lambda r: (r["step"] == "baseline", r["step"] != "average", r["iterations"] or 0,
                                  order[r["tool"]], r["threads"] or 0))
    registration = sorted([r for r in rows if r["step"] == "registration"], key=lambda r: order[r["tool"]])
    for r in recon:
        r["it"] = "–" if r["step"] == "baseline" or r["step"] == "average" else r["iterations"]
    return _finish(args, name, _common, rows, recon, registration, per_seed, repeats, voxels, input_mb, shape,
                   iterations, threads, mvs_iterations, mvs_versions)


def _finish(args, name, _common, rows, recon, registration, per_seed, repeats, voxels, input_mb, shape,
            iterations, threads, mvs_iterations, mvs_versions) -> int:
    for r in recon + registration:
        r["r_text"] = f"{r['r_ideal']:.4f}" if r.get("r_ideal") is not None else "–"
        r["ratio_text"] = f"{r['bead_fwhm_ratio']:.2f}" if r.get("bead_fwhm_ratio") is not None else "–"
        r["error_text"] = f"{r['error_rms_um']:.3f}" if r.get("error_rms_um") is not None else "–"
        r["speedup_text"] = (f"{_ratio(r['speedup_vs_mvs'])} ({_ratio(r['cpu_speedup_vs_mvs'])})"
                             if r.get("speedup_vs_mvs") else "–")
        r["wall_text"] = f"{r['wall_s']:.2f}" if r.get("wall_s") is not None else "–"
        r["cpu_text"] = f"{r['cpu_s']:.2f}" if r.get("cpu_s") is not None else "–"
        r["mvox_text"] = f"{r['mvoxel_per_s']:.3f}" if r.get("mvoxel_per_s") else "–"
        r["mbps_text"] = f"{r['mb_per_s_per_core']:.3f}" if r.get("mb_per_s_per_core") else "–"
    table = _common.markdown_table(recon, [
        ("tool", "tool"), ("method", "method"), ("it", "iter."), ("threads", "threads"), ("wall_text", "wall s"),
        ("cpu_text", "CPU-s"), ("mvox_text", "Mvoxel/s"), ("mbps_text", "MB/s per core"),
        ("peak_rss_mb", "peak RSS MB"), ("above_imports_mb", "above imports MB"), ("r_text", "r with ideal"),
        ("bead_fwhm", "bead FWHM z/y/x (vox)"), ("ratio_text", "max/min"),
        ("speedup_text", "x faster than mvs, wall (CPU)")],
        align={"wall_text": "r", "cpu_text": "r", "mvox_text": "r", "mbps_text": "r", "r_text": "r",
               "ratio_text": "r", "speedup_text": "r"})
    reg_table = _common.markdown_table(registration, [
        ("tool", "tool"), ("method", "registration"), ("threads", "threads"), ("wall_text", "wall s"),
        ("cpu_text", "CPU-s"), ("peak_rss_mb", "peak RSS MB"), ("above_imports_mb", "above imports MB"),
        ("error_text", "error RMS µm")],
        align={"wall_text": "r", "cpu_text": "r", "error_text": "r"})
    machine = _common.machine_info()
    settings = {k: str(v) for k, v in vars(args).items() if not k.startswith("_")}
    _common.write_json(args.results / f"{name}.json", {
        "benchmark": "isotropic", "date": _common.now_iso(), "machine": machine, "settings": settings,
        "shape": shape, "output_voxels": voxels, "input_mb": input_mb,
        "input_mb_definition": "10^6 bytes of VW00 and VW90 together as float32",
        "iterations": iterations, "threads": threads, "mvs_iterations": mvs_iterations, "mvs_threads":
        args.mvs_threads if mvs_iterations else None, "mvs_versions": mvs_versions, "repeats": repeats,
        "seeds": per_seed, "rows": rows})
    initial_error = float(np.mean([s["initial_error"]["error_rms_um"] for s in per_seed]))
    seed_text = ", ".join(str(s["seed"]) for s in per_seed)
    notes = [
        f"Synthetic specimen {'x'.join(map(str, shape))} (FourViewSpec, seed(s) {seed_text}): VW00 and VW90 "
        f"{'x'.join(map(str, per_seed[0]['vw00_shape']))} each, {input_mb:.2f} MB as float32 together (the MB of "
        f"MB/s); output grid {'x'.join(map(str, per_seed[0]['grid']['shape']))} ({voxels / 1e6:.3f} Mvoxel).",
        "wall s / CPU-s: the step alone, inside its child process (median of the repeats); peak RSS: the "
        "child's kernel high-water mark (VmHWM) at the step's end (it includes imports and input; for "
        "multiview-stitcher's deconvolution and average also its registration); above imports: that peak "
        "less the high-water mark right after the imports. MB/s per core = MB / wall s / threads. Last column: "
        "multiview-stitcher's wall (CPU) seconds over ours at the same iterations, its thread count against ours.",
        "Bead FWHM: voxels (1 voxel = the lateral pixel), median over the beads; max/min: largest over smallest "
        "of the three. r: Pearson correlation with the ideal image over the whole volume.",
        "Ours deconvolves to the lateral resolution (kernels = the part of each PSF beyond the lateral blur); "
        "multiview-stitcher gets the full PSFs (with the true transform), so it deconvolves towards a point, "
        "and its beads can come out narrower than the ideal image's. Correlation after a further blur by the "
        "lateral PSF: "
        + "; ".join(f"{r['tool']} {r['iterations']} it {r['r_ideal_after_lateral_blur']:.4f}"
                    for r in recon if r["step"] == "deconvolution" and r.get("r_ideal_after_lateral_blur")
                    and r["threads"] == 1) + ".",
        f"Registration error: RMS distance between the estimated and the true transform's images of points "
        f"spread over the specimen; the coarse transform alone is off by {initial_error:.2f} µm. Our "
        f"reconstructions use our registration (with the orientation search); multiview-stitcher's use its own "
        f"(elastix through registration.register, runner defaults: stages translation then rigid, elastix's "
        f"default metric, 2 resolutions, from the coarse transform; it runs in every multiview-stitcher child, so "
        f"its row pools all of them).",
        f"{repeats} repeat(s), the tools alternating within each; machine: {machine['cpu_usable']} usable cores, "
        f"load average at the end {machine['loadavg']}.",
    ]
    body = table + "\n\nRegistration (VW90 onto VW00):\n\n" + reg_table
    return _common.publish(args.results / f"{name}.md", "Isotropic reconstruction against multiview-stitcher",
                           body, notes)


if __name__ == "__main__":
    sys.exit(main())
