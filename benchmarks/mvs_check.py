"""Check multiview-stitcher (through ``mvs.run_mvs``) on two synthetic views with a known answer.

The specimen is isotropic: a few dozen Gaussian blobs (sigma 1-2 µm) and a few
point-like beads (sigma 0.1 µm) in a cube of ``--size``^3 voxels of 0.406 µm.
Everything is a sum of Gaussians, so every image below is evaluated in closed
form (a Gaussian blob blurred by a Gaussian PSF is a Gaussian), with no
resampling error in the truth.

* VW00: the specimen blurred by a Gaussian PSF of FWHM 0.77 µm laterally and
  3.35 µm along z, sampled every 5th plane along z: voxel (2.03, 0.406, 0.406).
* VW90: the specimen moved by a rigid motion (``--angle`` degrees about the
  x axis, around the cube's centre, then ``--shift`` µm), blurred with the
  axial FWHM along y, sampled every 5th row along y, then laid out with the
  specimen's y as axis 0 and its z, reversed, as axis 1 (a proper rotation):
  voxel (2.03, 0.406, 0.406).
* ``initial``: that axis change alone, without the motion; the truth is the
  axis change after the motion.
* PSFs handed over on the output grid: VW00's with the axial width along z,
  VW90's along y (the 1.5 degree tilt ignored).

Reported: the registration's error (distance between the estimated and the
true transform's images of the output cube's 8 corners, µm; the same for
``initial``; the residual rotation angle), the Pearson correlation of the
deconvolution and of the weighted average with the reference (the specimen
blurred isotropically by the lateral PSF) over the whole grid and over the
interior (6 voxels in from each face), a single-view baseline (the specimen
blurred by VW00's PSF, fully sampled), step timings and the child process
tree's wall, CPU and peak RSS.

    python benchmarks/mvs_check.py                         # 64^3, 5 iterations, 1 thread
    python benchmarks/mvs_check.py --prereg --registration-binning 1,2,2
    python benchmarks/mvs_check.py --no-register --name mvs-check-initial   # fusion without registration

Results: ``<results>/mvs-check.json`` (``--name`` to change), arrays under
``<workdir>``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import mvs  # noqa: E402

FWHM = 2 * math.sqrt(2 * math.log(2))
LATERAL_FWHM, AXIAL_FWHM = 0.77, 3.35
VOXEL, STEP = 0.406, 5


def rotation_x(degrees: float) -> np.ndarray:
    """Rotation about the x axis, in (z, y, x) coordinates."""
    a = math.radians(degrees)
    return np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])


def homogeneous(matrix: np.ndarray, offset) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = matrix
    out[:3, 3] = offset
    return out


def specimen(size: int, blobs: int, beads: int, seed: int) -> dict[str, np.ndarray]:
    """Centres (µm), sigmas (µm) and integrated intensities of the Gaussian components."""
    rng = np.random.default_rng(seed)
    extent = (size - 1) * VOXEL
    margin = min(4.0, extent / 6)
    n = blobs + beads
    centres = rng.uniform(margin, extent - margin, size=(n, 3))
    sigmas = np.concatenate([rng.uniform(1.0, 2.0, blobs), np.full(beads, 0.1)])
    peaks = np.concatenate([rng.uniform(0.5, 1.0, blobs), np.full(beads, 1.0)])
    masses = peaks * (2 * math.pi * sigmas**2) ** 1.5
    # Beads: as bright as the blobs once blurred by the lateral PSF, not at their (huge) unblurred peak.
    lateral = LATERAL_FWHM / FWHM
    masses[blobs:] = 2.0 * (2 * math.pi * (0.1**2 + lateral**2)) ** 1.5
    return {"centres": centres, "sigmas": sigmas, "masses": masses}


def render(components: dict[str, np.ndarray], axes: list[np.ndarray], blur: tuple[float, float, float],
           centres: np.ndarray | None = None) -> np.ndarray:
    """Sum of the components blurred by an axis-aligned Gaussian of ``blur`` (sigmas, µm, z, y, x),
    sampled at the outer product of the coordinates ``axes`` (µm)."""
    centres = components["centres"] if centres is None else centres
    out = np.zeros([len(a) for a in axes], dtype=np.float64)
    for c, s, m in zip(centres, components["sigmas"], components["masses"]):
        factors = []
        for axis, coords in enumerate(axes):
            var = s**2 + blur[axis] ** 2
            factors.append(np.exp(-((coords - c[axis]) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var))
        out += m * factors[0][:, None, None] * factors[1][None, :, None] * factors[2][None, None, :]
    return out


def gaussian_psf(sigmas_px) -> np.ndarray:
    """A centred, normalised Gaussian on the output grid, half-width ceil(3 sigma) per axis."""
    half = [max(1, math.ceil(3 * s)) for s in sigmas_px]
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    psf = np.exp(-sum(g**2 / (2 * s**2) for g, s in zip(grids, sigmas_px)))
    return (psf / psf.sum()).astype(np.float32)


def make_inputs(size: int = 64, iterations: int = 5, angle: float = 1.5, shift=(1.0, -1.5, 2.0), blobs: int = 40,
                beads: int = 6, seed: int = 0) -> tuple[dict, dict]:
    """The input dict for :func:`mvs.run_mvs` and the truth (true transform, reference volume, baseline)."""
    lateral, axial = LATERAL_FWHM / FWHM, AXIAL_FWHM / FWHM
    comp = specimen(size, blobs, beads, seed)
    full = np.arange(size) * VOXEL
    coarse = np.arange(0, size, STEP) * VOXEL
    extent = (size - 1) * VOXEL

    vw00 = render(comp, [coarse, full, full], (axial, lateral, lateral))

    centre = np.full(3, extent / 2)
    motion = homogeneous(rotation_x(angle), centre - rotation_x(angle) @ centre + np.asarray(shift, float))
    moved = comp["centres"] @ motion[:3, :3].T + motion[:3, 3]
    # Sampled in the moved frame q (z, y, x): every 5th row along y, axial blur along y.
    grid90 = render(comp, [full, coarse, full], (lateral, axial, lateral), centres=moved)
    # VW90 axes: (q_y, reversed q_z, q_x), i.e. s90 = (q_y, extent - q_z, q_x).
    vw90 = np.ascontiguousarray(grid90[::-1].transpose(1, 0, 2))
    axes_change = homogeneous(np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), [0.0, extent, 0.0])

    inputs = {
        "vw00": vw00.astype(np.float32), "voxel00": np.array([STEP * VOXEL, VOXEL, VOXEL]),
        "vw90": vw90.astype(np.float32), "voxel90": np.array([STEP * VOXEL, VOXEL, VOXEL]),
        "initial": axes_change, "out_voxel": VOXEL, "out_shape": np.array([size] * 3),
        "psf00": gaussian_psf((axial / VOXEL, lateral / VOXEL, lateral / VOXEL)),
        "psf90": gaussian_psf((lateral / VOXEL, axial / VOXEL, lateral / VOXEL)),
        "iterations": int(iterations),
    }
    truth = {
        "transform": axes_change @ motion,
        "reference": render(comp, [full] * 3, (lateral,) * 3).astype(np.float32),
        "single_view": render(comp, [full] * 3, (axial, lateral, lateral)).astype(np.float32),
    }
    return inputs, truth


def corner_errors(estimate: np.ndarray, truth: np.ndarray, extent: float) -> np.ndarray:
    corners = np.array([[z, y, x, 1.0] for z in (0, extent) for y in (0, extent) for x in (0, extent)])
    return np.linalg.norm((corners @ estimate.T)[:, :3] - (corners @ truth.T)[:, :3], axis=1)


def rotation_error_deg(estimate: np.ndarray, truth: np.ndarray) -> float:
    residual = estimate[:3, :3] @ truth[:3, :3].T
    return math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(residual) - 1) / 2))))


def correlation(a: np.ndarray, b: np.ndarray, margin: int = 0) -> float:
    if margin:
        region = (slice(margin, -margin),) * 3
        a, b = a[region], b[region]
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=_common.DEFAULT_WORKDIR)
    parser.add_argument("--results", type=Path, default=_common.RESULTS_DIR)
    parser.add_argument("--name", default="mvs-check")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--angle", type=float, default=1.5, help="degrees about x (default %(default)s)")
    parser.add_argument("--shift", default="1.0,-1.5,2.0", help="µm, z,y,x (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prereg", action="store_true", help="phase-correlation pre-registration first")
    parser.add_argument("--registration-binning", default=None, help="z,y,x")
    parser.add_argument("--transform-types", default=None, help="elastix stages (default: the runner's)")
    parser.add_argument("--no-register", action="store_true",
                        help="fuse with the initial transform (a control: how much registration matters)")
    parser.add_argument("--metric", default=None)
    parser.add_argument("--resolutions", type=int, default=None)
    parser.add_argument("--elastix-iterations", type=int, default=None)
    args = parser.parse_args(argv)

    shift = [float(v) for v in args.shift.split(",")]
    inputs, truth = make_inputs(args.size, args.iterations, args.angle, shift, seed=args.seed)
    options = {"prereg": args.prereg, "registration_binning": args.registration_binning,
               "transform_types": args.transform_types, "metric": args.metric, "resolutions": args.resolutions,
               "elastix_iterations": args.elastix_iterations, "no_register": args.no_register}
    result = mvs.run_mvs(inputs, args.workdir, threads=args.threads, name=args.name, **options)

    extent = (args.size - 1) * VOXEL
    est, true, initial = result["transform"], truth["transform"], inputs["initial"]
    err = corner_errors(est, true, extent)
    err0 = corner_errors(initial, true, extent)
    ref = truth["reference"]
    quality = {
        "registration": {
            "corner_error_um_max": float(err.max()), "corner_error_um_mean": float(err.mean()),
            "initial_corner_error_um_max": float(err0.max()), "initial_corner_error_um_mean": float(err0.mean()),
            "rotation_error_deg": rotation_error_deg(est, true),
            "initial_rotation_error_deg": rotation_error_deg(initial, true),
            "translation_error_um": float(np.linalg.norm(est[:3, 3] - true[:3, 3])),
        },
        "correlation_with_reference": {
            "deconvolved": correlation(result["deconvolved"], ref),
            "average": correlation(result["average"], ref),
            "single_view_baseline": correlation(truth["single_view"], ref),
            "deconvolved_interior": correlation(result["deconvolved"], ref, 6),
            "average_interior": correlation(result["average"], ref, 6),
            "single_view_baseline_interior": correlation(truth["single_view"], ref, 6),
        },
    }
    np.savez(args.workdir / f"{args.name}-truth.npz", reference=ref, transform=true)
    out = {"check": "multiview-stitcher on a synthetic pair", "machine": _common.machine_info(("numpy", "scipy")),
           "settings": {**{k: str(v) for k, v in vars(args).items()}, "options": options},
           **quality, "estimated_transform": est, "true_transform": true, "initial": initial,
           "timings": result["timings"], "child": result["child"], "runner": result["report"]}
    _common.write_json(args.results / f"{args.name}.json", out)

    r, c = quality["registration"], quality["correlation_with_reference"]
    print(f"multiview-stitcher {result['report']['versions']['multiview-stitcher']}, "
          f"itk-elastix {result['report']['versions']['itk-elastix']}, {args.size}^3, {args.iterations} iterations, "
          f"{args.threads} thread(s)")
    print(f"registration: corner error max {r['corner_error_um_max']:.3f} µm, mean {r['corner_error_um_mean']:.3f} "
          f"(initial: max {r['initial_corner_error_um_max']:.3f}, mean {r['initial_corner_error_um_mean']:.3f}); "
          f"rotation error {r['rotation_error_deg']:.3f} deg (initial {r['initial_rotation_error_deg']:.3f})")
    print(f"correlation with reference: deconvolved {c['deconvolved']:.4f} (interior {c['deconvolved_interior']:.4f}), "
          f"average {c['average']:.4f} ({c['average_interior']:.4f}), "
          f"single-view baseline {c['single_view_baseline']:.4f} ({c['single_view_baseline_interior']:.4f})")
    for step, t in result["timings"].items():
        print(f"  {step:>10}: {t['wall_s']:8.2f} s wall, {t['cpu_s']:8.2f} CPU-s")
    ch = result["child"]
    print(f"  child process tree: {ch['wall_s']:.1f} s wall, {ch['cpu_s']:.1f} CPU-s, "
          f"peak RSS {ch['peak_tree_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
