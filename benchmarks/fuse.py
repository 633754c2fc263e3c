"""Fusion-stage benchmark: MB/s of corrected input and peak worker memory.

A synthetic full-frame camera pair (default 256 x 2048 x 2048 each, 2 x 1 GiB
of uint16) is generated and corrected once (reused afterwards), then fused
(registration on a mid-specimen slab, intensity matching, adaptive blending,
blosc-zstd sharded zarr) on a local cluster of 2 single-threaded workers,
and again with a worker memory limit below one volume's size. Writes
``results/fuse.json`` and ``results/fuse.md``.

With ``--channels`` each camera records two illumination channels (light from
either side of x) and the pair is channel-fused first (``fusion.channel_pairs
= [[0, 1]]``): four corrected volumes in, results in ``results/fuse-channels.*``.

    python benchmarks/fuse.py             # 256 planes
    python benchmarks/fuse.py --channels  # 2 cameras x 2 illumination channels
    python benchmarks/fuse.py --quick     # 32 x 1024 x 1024 smoke run
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def corrected_pair(workdir: Path, shape, client, channels: bool = False) -> Path:
    """Generate and correct cameras 0 and 1 (both illumination channels with ``channels``) once; return the root."""
    from isoview_dask.pipeline import correct_dataset
    from isoview_dask.synthetic import generate_dataset

    z, y, x = shape
    root = workdir / (f"fuse-{z}x{y}x{x}" + ("-channels" if channels else ""))
    corrected = root / "corrected"
    n_volumes = 4 if channels else 2
    if len(list(corrected.glob("SPM*/TM*/*.correction.json"))) == n_volumes:
        print(f"reusing corrected pair in {corrected}", file=sys.stderr)
        return corrected
    shutil.rmtree(root, ignore_errors=True)
    extra = {"planes": z} if (y, x) == (2048, 2048) else {"shape": shape}
    if channels:
        extra["illumination_channels"] = (0, 1)
    truth = generate_dataset(root / "synthetic", preset="full", cameras=(0, 1), write_truth_volumes=False, **extra)
    summary = correct_dataset(truth.raw_dir, corrected, progress=False)
    if summary.failed or len(summary.written) != n_volumes:
        raise RuntimeError(f"correction for the benchmark failed: {summary.report()}")
    return corrected


def run_once(corrected: Path, out: Path, client, label: str, limit, channels: bool = False) -> dict:
    from isoview_dask.config import ProcessingConfig
    from isoview_dask.pipeline.fuse import ChannelFusedView, find_corrected, fuse_pair

    views = find_corrected(corrected)
    config = ProcessingConfig.from_flags(fusion_channel_pairs=[[0, 1]]) if channels else None
    if channels:
        ref, mov = (ChannelFusedView(views[(0, 0, c, 0)], views[(0, 0, c, 1)]) for c in (0, 1))
    else:
        ref, mov = views[(0, 0, 0, 0)], views[(0, 0, 1, 0)]
    shutil.rmtree(out, ignore_errors=True)
    run = _common.timed(lambda: fuse_pair(ref, mov, out, config, progress=False), client=client)
    params = run.value
    mb = params["input_bytes"] / _common.MB
    t = params["timings"]
    return {"run": label, "memory_limit": limit if isinstance(limit, str) else f"{limit / 2**20:.0f}MiB",
            "input_mb": mb, "seconds": run.seconds, "mb_per_s": mb / run.seconds,
            "channel_estimation_s": t.get("channel_estimation_s"),
            "registration_s": t["registration_s"], "estimation_s": t["estimation_s"],
            "blend_write_s": t["blend_write_s"], "blend_mb_per_s": mb / t["blend_write_s"],
            "confidence": params["registration_confidence"], **run.memory}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser, default_repeats=1)
    parser.add_argument("--planes", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GiB")
    parser.add_argument("--channels", action="store_true",
                        help="two illumination channels per camera, channel-fused before the camera fusion")
    parser.add_argument("--low-memory-limit", default=None,
                        help="constrained per-worker limit (default: 60%% of one volume, at least 1 GiB)")
    args = parser.parse_args(argv)
    repeats = _common.resolve_repeats(args)
    shape = (32, 1024, 1024) if args.quick else (args.planes, 2048, 2048)
    _common.pickle_by_value()
    from isoview_dask.cluster import client_context

    volume_bytes = 2 * shape[0] * shape[1] * shape[2]
    # a worker holds ~0.3 GiB before any task (interpreter, dask, malloc arenas): below 1 GiB the
    # constrained run measures that, not the fusion (the --quick volumes are only 64 MB)
    low = args.low_memory_limit or max(int(0.6 * volume_bytes), 2**30)
    low_label = "2 workers, limit < one volume" if low < volume_bytes else "2 workers, 1 GiB limit"
    rows = []
    with client_context(n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit,
                        quiet=True) as client:
        corrected = corrected_pair(args.workdir, shape, client, args.channels)
    for label, limit in (("2 workers", args.memory_limit), (low_label, low)):
        with client_context(n_workers=args.workers, threads_per_worker=1, memory_limit=limit, quiet=True) as client:
            for _ in range(repeats):
                row = run_once(corrected, args.workdir / "fuse-out", client, label, limit, args.channels)
                rows.append(row)
                print(f"{label}: {row['mb_per_s']:.1f} MB/s, worker peak {row.get('worker_peak_mb')} MB",
                      file=sys.stderr)
    columns = [("run", "run"), ("memory_limit", "worker limit"), ("input_mb", "input MB"), ("seconds", "total s"),
               ("mb_per_s", "MB/s"), *([("channel_estimation_s", "channel estimation s")] if args.channels else []),
               ("registration_s", "registration s"), ("estimation_s", "estimation s"),
               ("blend_mb_per_s", "blend+write MB/s"), ("worker_peak_mb", "worker peak MB"),
               ("confidence", "confidence")]
    table = _common.markdown_table(rows, columns)
    name = ("fuse-channels" if args.channels else "fuse") + ("-quick" if args.quick else "")
    _common.write_json(args.results / f"{name}.json", {"benchmark": name, "machine": _common.machine_info(),
                                                       "shape_zyx": shape, "settings": vars(args), "rows": rows})
    title = ("Fusion stage (one camera pair, two illumination channels per camera)" if args.channels
             else "Fusion stage (one camera pair)")
    return _common.publish(args.results / f"{name}.md", title, table, [
        "MB/s counts the corrected uint16 input of both cameras" + (" and both channels (4 volumes)."
                                                                     if args.channels else "."),
        *(["channel estimation: both cameras' xz coordinate masks (column maps) and channel intensity ratios; "
           "the channel blends run inside the camera fusion's blockwise pass."] if args.channels else []),
        "registration: mid-specimen slab reduction + sub-pixel search; estimation: depth maps, intensity factor; "
        "blend+write: the blockwise blend written as blosc-zstd sharded zarr."])


if __name__ == "__main__":
    sys.exit(main())
