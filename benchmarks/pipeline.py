"""Whole-timepoint pipeline benchmark: MB/s and peak memory of each stage.

One synthetic IsoView timepoint with all four cameras (default 64 x 2048 x
2048 uint16 per camera, ``--planes`` to change; realistic noise) is generated
once under ``--workdir`` and reused. Then, on a local ``distributed``
cluster of ``--workers`` single-threaded worker processes:

1. correction of the four camera views (``correct_dataset``: dead pixels,
   dark frame, segmentation, projections, sharded blosc-zstd zarr);
2. fusion of camera pair 0/1 (``fuse_dataset`` restricted to that pair:
   registration, intensity matching, blending, zarr);
3. fusion of camera pair 2/3;
4. the whole run as ``isoview-dask run`` does it (``process_dataset``: the
   same corrections and both fusions in one run, the fusions of the two
   pairs side by side), into a fresh folder: the raw-to-fused figure a user
   sees. Stages 1-3 time each stage alone (a lone fusion spreads over every
   worker; in the run each pair's fusion is one job per worker).

Each stage is timed with peak resident memory sampled in the benchmark
process (which also hosts the scheduler) and in every worker; MB/s counts
the stage's uint16 input (raw volumes for correction, both corrected
volumes for a fusion). Writes ``<results>/pipeline.json``, ``pipeline.md``
and ``pipeline.png`` (``pipeline-quick.*`` with ``--quick``).

    python benchmarks/pipeline.py                 # 4 x 64 x 2048 x 2048
    python benchmarks/pipeline.py --planes 128
    python benchmarks/pipeline.py --quick         # 4 x 16 x 1024 x 1024 smoke run
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

QUICK_SHAPE = (16, 1024, 1024)


def synthetic_timepoint(workdir: Path, shape: tuple[int, int, int], regenerate: bool = False):
    """A four-camera synthetic recording of one timepoint, generated once; returns its truth object."""
    from isoview_dask.synthetic import generate_dataset, load_truth

    z, y, x = shape
    root = workdir / f"pipeline-{z}x{y}x{x}"
    if root.exists() and not regenerate:
        try:
            truth = load_truth(root)
            if tuple(truth.shape) == tuple(shape) and len(truth.cameras) == 4 and all(
                    truth.stack_path(c).is_file() for c in truth.cameras):
                print(f"reusing synthetic timepoint {root}", file=sys.stderr, flush=True)
                return truth, 0.0
        except Exception:  # incomplete or foreign folder: make a new one
            pass
    shutil.rmtree(root, ignore_errors=True)
    print(f"generating a synthetic timepoint, 4 cameras of {z}x{y}x{x}, in {root} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    extra: dict[str, Any] = {"planes": z} if (y, x) == (2048, 2048) else {"shape": shape}
    truth = generate_dataset(root, preset="full", write_truth_volumes=False, timepoints=1, **extra)
    seconds = time.perf_counter() - t0
    print(f"  generated in {seconds:.0f} s", file=sys.stderr, flush=True)
    return truth, seconds


class WholeRun:
    """The stage summaries of :func:`~isoview_dask.pipeline.process_dataset` read as one: raw input, every output."""

    def __init__(self, summaries: dict):
        self.summaries = summaries
        self.failed = [f for s in summaries.values() for f in s.failed]
        self.written = [w for s in summaries.values() for w in s.written]
        self.input_bytes = summaries["correct"].input_bytes

    def report(self) -> str:
        return "; ".join(s.report() for s in self.summaries.values())


def run_stage(label: str, fn, client, interval: float) -> dict[str, Any]:
    run = common.timed(fn, client=client, interval=interval)
    summary = run.value
    if summary.failed or not summary.written:
        raise RuntimeError(f"stage {label} failed: {summary.report()}")
    mb = summary.input_bytes / common.MB
    row = {"stage": label, "volumes": len(summary.written), "input_mb": round(mb, 1),
           "seconds": round(run.seconds, 2), "mb_per_s": round(mb / run.seconds, 1), "load_1min": run.load[0],
           **run.memory}
    print(f"{label}: {mb:,.0f} MB in {run.seconds:.1f} s = {row['mb_per_s']} MB/s, worker peak "
          f"{row.get('worker_peak_mb')} MB, client peak {row.get('client_peak_mb')} MB", file=sys.stderr, flush=True)
    return row


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = [r["stage"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    bars = ax1.bar(labels, [r["mb_per_s"] for r in rows], color=["#1f77b4"] + ["#2ca02c"] * (len(rows) - 1))
    ax1.bar_label(bars, fmt="%.1f", fontsize=8)
    ax1.set_ylabel("MB/s of uint16 input")
    ax1.set_title("throughput per stage", fontsize=10)
    width = 0.38
    xs = range(len(rows))
    b1 = ax2.bar([x - width / 2 for x in xs], [r.get("worker_peak_mb", 0) for r in rows], width,
                 label="largest worker")
    b2 = ax2.bar([x + width / 2 for x in xs], [r.get("client_peak_mb", 0) for r in rows], width,
                 label="benchmark process (client + scheduler)")
    ax2.bar_label(b1, fmt="%.0f", fontsize=7)
    ax2.bar_label(b2, fmt="%.0f", fontsize=7)
    ax2.set_xticks(list(xs), labels)
    ax2.set_ylabel("peak resident memory, MB")
    ax2.set_title("peak memory per stage", fontsize=10)
    ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    for ax in (ax1, ax2):
        ax.margins(y=0.12)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser, default_repeats=1)
    parser.add_argument("--planes", type=int, default=64, help="planes per camera of 2048 x 2048 (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, 1 thread each (default: %(default)s)")
    parser.add_argument("--memory-limit", default="4GiB", help="memory limit per worker (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=0.25, help="memory sampling interval, s (default: %(default)s)")
    parser.add_argument("--regenerate", action="store_true", help="regenerate the synthetic timepoint")
    parser.add_argument("--keep", action="store_true", help="keep the corrected and fused outputs")
    args = parser.parse_args(argv)
    repeats = common.resolve_repeats(args)
    shape = QUICK_SHAPE if args.quick else (args.planes, 2048, 2048)
    common.pickle_by_value()

    from isoview_dask.cluster import client_context
    from isoview_dask.pipeline import correct_dataset, fuse_dataset, process_dataset

    started = time.perf_counter()
    load_start = common.load()
    out = args.workdir / "pipeline-out"
    out_run = args.workdir / "pipeline-run-out"
    rows: list[dict[str, Any]] = []
    with client_context(n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit,
                        quiet=True) as client:
        client.wait_for_workers(args.workers)
        truth, generate_s = synthetic_timepoint(args.workdir, shape, args.regenerate)
        raw = truth.raw_dir
        for i in range(repeats):
            shutil.rmtree(out, ignore_errors=True)
            rows.append(run_stage("correction (4 cameras)",
                                  lambda: correct_dataset(raw, out, progress=False), client, args.interval))
            for a, b in ((0, 1), (2, 3)):
                rows.append(run_stage(f"fusion {a}+{b}",
                                      lambda a=a, b=b: fuse_dataset(out, out, progress=False,
                                                                    fusion_camera_pairs=[[a, b]]),
                                      client, args.interval))
            shutil.rmtree(out_run, ignore_errors=True)
            rows.append(run_stage("run (correction + fusions)",
                                  lambda: WholeRun(process_dataset(raw, out_run, progress=False)),
                                  client, args.interval))
            shutil.rmtree(out_run, ignore_errors=True)
            for r in rows[-4:]:
                r["repeat"] = i
    stage_rows = [r for r in rows if not r["stage"].startswith("run ")]
    run_rows = [r for r in rows if r["stage"].startswith("run ")]
    total_s = sum(r["seconds"] for r in stage_rows)
    total_in = rows[0]["input_mb"] if rows else 0.0
    run_s = common.median([r["seconds"] for r in run_rows])
    output_mb = common.path_size(out) / common.MB if out.exists() else None
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    z, y, x = shape
    name = "pipeline-quick" if args.quick else "pipeline"
    record = {
        "benchmark": "pipeline", "started": common.now_iso(), "machine": common.machine_info(),
        "load_start": load_start, "load_end": common.load(),
        "settings": {"shape_zyx_per_camera": list(shape), "cameras": 4, "workers": args.workers,
                     "threads_per_worker": 1, "memory_limit": args.memory_limit, "repeats": repeats,
                     "interval": args.interval},
        "input": {"raw_dir": str(raw), "raw_mb": round(4 * 2 * z * y * x / common.MB, 1),
                  "generate_seconds": round(generate_s, 1), "synthetic_seed": truth.spec.seed},
        "rows": rows, "stages_seconds": round(total_s, 1),
        "raw_mb_per_s_end_to_end": round(total_in / total_s, 1) if total_s else None,
        "run_seconds": round(run_s, 1) if run_s else None,
        "raw_mb_per_s_run": round(total_in / run_s, 1) if run_s else None,
        "output_mb": round(output_mb, 1) if output_mb is not None else None,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    columns = [("stage", "stage"), ("volumes", "volumes written"), ("input_mb", "input MB"), ("seconds", "s"),
               ("mb_per_s", "MB/s"), ("worker_peak_mb", "peak worker MB"),
               ("workers_total_peak_mb", "peak all workers MB"), ("client_peak_mb", "peak client MB"),
               ("cpu_s", "CPU s"), ("system_cpu_s", "of which system"), ("load_1min", "load")]
    table = common.markdown_table(rows, columns)
    m = record["machine"]
    notes = [
        f"One synthetic timepoint, 4 cameras of {z} x {y} x {x} uint16 ({record['input']['raw_mb']:,.0f} MB raw); "
        f"local cluster of {args.workers} worker processes x 1 thread, memory limit {args.memory_limit} each; "
        f"{repeats} repeat(s), each row one run.",
        "MB/s: the stage's uint16 input (4 raw volumes for correction; the two corrected volumes of the pair for a "
        "fusion) per second of wall time, outputs written as blosc-zstd sharded zarr with projections and "
        "diagnostics.",
        f"Stages one after another (correction, then each fusion alone): {record['stages_seconds']:.0f} s, "
        f"{record['raw_mb_per_s_end_to_end']} MB/s of raw input; outputs {record['output_mb']} MB.",
        f"The whole run (`isoview-dask run`: corrections and both fusions scheduled together; median of "
        f"{len(run_rows)}): {record['run_seconds']} s, {record['raw_mb_per_s_run']} MB/s of raw input, raw to fused.",
        f"Peaks: resident memory sampled every {args.interval} s in the benchmark process (client and scheduler) "
        "and every worker ('peak worker' = largest single worker, 'all workers' = largest sum); CPU s = CPU "
        "seconds of workers and client, of which system = kernel time (page faults, file copies).",
        f"Machine: {m['cpu_usable']} cores ({m['cpu_model']}), {m['memory_total_gib']} GiB; load average "
        f"{load_start} at start, {record['load_end']} at end (other jobs may share the machine).",
    ]
    common.write_json(args.results / f"{name}.json", record)
    common.write_markdown(args.results / f"{name}.md", "Pipeline stages, one timepoint (benchmarks/pipeline.py)",
                          table, notes)
    png = plot(rows, args.results / f"{name}.png",
               f"one timepoint: 4 cameras x {z} x {y} x {x}, {args.workers} workers")
    print(table)
    print(f"\ntotal {record['total_seconds']:.0f} s; results in {args.results / (name + '.json')}, "
          f"{args.results / (name + '.md')}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
