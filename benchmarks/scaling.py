"""Scaling benchmark: correction MB/s on 1 and on 2 workers, same data.

One synthetic full-frame camera (default 64 x 2048 x 2048, 512 MiB of
uint16) is corrected end to end (``correct_view``: statistics pass, dead
pixels, dark frame, segmentation, projections, sharded blosc-zstd zarr) on a
local ``distributed`` cluster of N single-threaded worker processes, for each
N in ``--workers`` (default 1,2). The input is read once into the page cache
before every timed run, and the output folder is emptied, so every run sees
the same conditions. Reported: median seconds and MB/s of raw input, the
speed-up over the smallest cluster and the parallel efficiency
(speed-up / workers), peak worker memory and the load average (another
process competing for the cores shows up there, and in the numbers).

After the timed runs on the largest cluster, one more (untimed) run is
recorded with ``distributed.performance_report``: the dashboard's task
stream, worker profile and bandwidth plots as one HTML file
(``<results>/scaling-task-stream.html``, open it in a browser).

Results: ``<results>/scaling.json`` and ``scaling.md`` (``scaling-quick.*``
with ``--quick``, a 32 x 1024 x 1024 input and one repeat).

    python benchmarks/scaling.py --quick          # smoke run, ~1 min
    python benchmarks/scaling.py                  # 64 x 2048 x 2048, 2 repeats
    python benchmarks/scaling.py --workers 1,2,4 --planes 128
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

QUICK_SHAPE = (32, 1024, 1024)


def result_name(quick: bool) -> str:
    return "scaling-quick" if quick else "scaling"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser, default_repeats=2)
    parser.add_argument("--planes", type=int, default=64, help="planes of the 2048 x 2048 camera stack")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--memory-limit", default="4GiB", help="memory limit per worker (default 4GiB)")
    parser.add_argument("--no-report", action="store_true", help="skip the performance-report run")
    args = parser.parse_args(argv)
    repeats = _common.resolve_repeats(args)
    counts = sorted({int(v) for v in args.workers.split(",") if v.strip()})
    shape = QUICK_SHAPE if args.quick else (args.planes, 2048, 2048)
    _common.pickle_by_value()

    from distributed import performance_report

    from isoview_dask.cluster import client_context
    from isoview_dask.config import ProcessingConfig
    from isoview_dask.dataset import open_dataset
    from isoview_dask.pipeline.correct import correct_view

    stack, truth = _common.synthetic_input(args.workdir, shape)
    view = open_dataset(truth.raw_dir).views[0]
    out = args.workdir / "scaling-out"
    name = result_name(args.quick)
    report_path = args.results / f"{name}-task-stream.html"
    config = ProcessingConfig()

    def setup():
        _common.remove(out)
        _common.warm_file(stack)

    def run():
        return correct_view(view, out, config, progress=False)

    rows = []
    for n in counts:
        print(f"{n} worker(s): {repeats} run(s) of {'x'.join(map(str, shape))} ...", file=sys.stderr, flush=True)
        with client_context(n_workers=n, threads_per_worker=1, memory_limit=args.memory_limit, quiet=True) as client:
            setup()
            run()  # warm-up: worker imports, first-use compilation; not timed
            runs = _common.repeat(run, repeats, setup=setup, client=client)
            summary = _common.summarize(runs, view.nbytes)
            if n == counts[-1] and not args.no_report:
                setup()
                args.results.mkdir(parents=True, exist_ok=True)
                with performance_report(filename=str(report_path)):
                    run()
        row = {"workers": n, "threads": 1, "input_mb": view.nbytes / _common.MB, "median_s": summary["median_s"],
               "mb_per_s": summary["mb_per_s"], "mb_per_s_all": summary["mb_per_s_all"],
               "worker_peak_mb": summary["memory"].get("worker_peak_mb"),
               "load_1min": max(load[0] for load in summary["load"]), "summary": summary}
        rows.append(row)
        print(f"  {row['mb_per_s']:.1f} MB/s (runs: {row['mb_per_s_all']}), load {row['load_1min']}",
              file=sys.stderr, flush=True)
    base = rows[0]
    for row in rows:
        row["speedup"] = round(row["mb_per_s"] / base["mb_per_s"], 2)
        row["efficiency"] = round(row["speedup"] / (row["workers"] / base["workers"]), 2)
    columns = [("workers", "workers"), ("threads", "threads/worker"), ("input_mb", "input MB"),
               ("median_s", "median s"), ("mb_per_s", "MB/s"), ("speedup", "speed-up"),
               ("efficiency", "efficiency"), ("worker_peak_mb", "worker peak MB"), ("load_1min", "load (1 min)")]
    cells = [{**row, "speedup": f"{row['speedup']:.2f}", "efficiency": f"{row['efficiency']:.2f}"} for row in rows]
    table = _common.markdown_table(cells, columns, align={"speedup": "r", "efficiency": "r"})
    machine = _common.machine_info()
    payload = {"benchmark": "scaling", "machine": machine, "shape_zyx": shape,
               "settings": {**vars(args), "repeats": repeats, "workers": counts},
               "performance_report": None if args.no_report else str(report_path), "rows": rows}
    _common.write_json(args.results / f"{name}.json", payload)
    notes = [f"correct_view on one synthetic {'x'.join(map(str, shape))} camera; MB/s of raw uint16 input, "
             f"median of {repeats} run(s) after one untimed warm-up, input in the page cache.",
             f"machine: {machine['cpu_usable']} usable cores, load average at the end {machine['loadavg']} "
             "(a load above the core count means other processes competed for the CPUs).",
             "speed-up is relative to the first row; efficiency = speed-up / worker ratio."]
    if not args.no_report:
        notes.append(f"task stream of one run on {counts[-1]} workers: {report_path.name}")
    _common.write_markdown(args.results / f"{name}.md", "Scaling: correction on 1 vs 2 workers", table, notes)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
