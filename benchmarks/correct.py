"""Correction-stage benchmark: MB/s of raw input and peak worker memory per step.

One synthetic full-frame camera (default 256 x 2048 x 2048, 1 GiB of uint16)
is corrected end to end (dead pixels, dark frame, segmentation, projections,
blosc-zstd sharded zarr) on a local distributed cluster of 2 single-threaded
worker processes; then again with a worker memory limit below the stack's
size, which must still finish. Writes ``results/correct.json`` and
``results/correct.md``.

    python benchmarks/correct.py                 # 256 planes, 2 workers
    python benchmarks/correct.py --quick         # 32 x 1024 x 1024 smoke run
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def run_once(view, out: Path, client, label: str) -> dict:
    from isoview_dask.config import ProcessingConfig
    from isoview_dask.pipeline.correct import correct_view

    shutil.rmtree(out, ignore_errors=True)
    run = _common.timed(lambda: correct_view(view, out, ProcessingConfig(), progress=False), client=client)
    record = run.value
    timings = record["timings"]
    mb = view.nbytes / _common.MB
    row = {"run": label, "input_mb": mb, "seconds": run.seconds, "mb_per_s": mb / run.seconds,
           "statistics_s": timings["statistics_s"], "write_s": timings["write_s"],
           "statistics_mb_per_s": mb / timings["statistics_s"], "write_mb_per_s": mb / timings["write_s"],
           "dead_pixels": record["dead_pixels"]["count"],
           "foreground_fraction": record["segmentation"]["foreground_fraction"],
           "output_mb": _common.path_size(out) / _common.MB, **run.memory}
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser, default_repeats=1)
    parser.add_argument("--planes", type=int, default=256, help="planes of the 2048 x 2048 camera stack")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GiB", help="per-worker limit of the first run")
    parser.add_argument("--low-memory-limit", default=None,
                        help="per-worker limit of the constrained run (default: half the stack size, at least "
                             "400 MiB: a worker process alone needs ~150 MiB)")
    args = parser.parse_args(argv)
    repeats = _common.resolve_repeats(args)
    shape = (32, 1024, 1024) if args.quick else (args.planes, 2048, 2048)
    _common.pickle_by_value()

    from isoview_dask.cluster import client_context
    from isoview_dask.dataset import open_dataset

    stack, truth = _common.synthetic_input(args.workdir, shape)
    view = open_dataset(truth.raw_dir).views[0]
    low = args.low_memory_limit or max(int(0.5 * view.nbytes), 400 * 2**20)
    if not args.low_memory_limit and low >= view.nbytes:
        print(f"note: the stack ({view.nbytes / 2**20:.0f} MiB) is too small for a worker limit below its size",
              file=sys.stderr)
    rows = []
    for label, limit in (("2 workers", args.memory_limit), ("2 workers, limit < stack", low)):
        with client_context(n_workers=args.workers, threads_per_worker=1, memory_limit=limit, quiet=True) as client:
            for i in range(repeats):
                row = run_once(view, args.workdir / "correct-out", client, label)
                row["memory_limit"] = limit if isinstance(limit, str) else f"{limit / 2**20:.0f}MiB"
                rows.append(row)
                print(f"{label}: {row['mb_per_s']:.1f} MB/s, worker peak {row.get('worker_peak_mb')} MB",
                      file=sys.stderr)
    columns = [("run", "run"), ("memory_limit", "worker limit"), ("input_mb", "input MB"),
               ("seconds", "total s"), ("mb_per_s", "MB/s"), ("statistics_mb_per_s", "pass 1 MB/s"),
               ("write_mb_per_s", "pass 2 MB/s"), ("worker_peak_mb", "worker peak MB"),
               ("dead_pixels", "dead px"), ("output_mb", "output MB")]
    table = _common.markdown_table(rows, columns)
    payload = {"benchmark": "correct", "machine": _common.machine_info(), "shape_zyx": shape,
               "settings": vars(args), "rows": rows}
    name = "correct-quick" if args.quick else "correct"  # a smoke run never replaces the real results
    _common.write_json(args.results / f"{name}.json", payload)
    return _common.publish(args.results / f"{name}.md", "Correction stage", table, [
        "pass 1: per-pixel statistics (sampled planes) + segmentation histogram (sampled slabs);"
        " pass 2: dead-pixel repair, dark frame, segmentation, projections, blosc-zstd sharded zarr writes.",
        "MB/s counts raw uint16 input bytes."])


if __name__ == "__main__":
    sys.exit(main())
