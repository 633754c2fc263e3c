"""Scaling benchmark: a many-timepoint recording through ``run``, on 1 and 2 workers and with little memory.

A synthetic IsoView recording (default 16 timepoints x 4 cameras x 384 x 128
x 128, 403 MB of raw uint16 per 8 timepoints) is corrected and fused end to
end by :func:`isoview_dask.pipeline.process_dataset` (the ``isoview-dask run``
command) on a local ``distributed`` cluster of single-threaded worker
processes. Each configuration starts from an empty output folder, with the
raw files in the page cache. Reported per configuration:

- wall seconds and MB/s of raw input;
- CPU seconds per GB of raw input: this process (client and the local
  scheduler) plus every worker, user + system;
- worker utilisation: the summed compute time of all tasks (the dashboard's
  task stream) / (wall x worker threads);
- available parallelism: tasks runnable or processing in the scheduler
  (queued, processing on a worker, or waiting for a worker), sampled every
  0.2 s; median and 10th percentile: how many worker threads the run could
  keep busy; the largest sample: how many it could feed at its widest;
- peak worker memory (RSS, sampled) against the memory limit.

Configurations: ``--workers`` (default 1,2) at ``--memory-limit`` (default
4GiB) on the many-timepoint recording, and with ``--low-memory`` one "memory limit below one
volume" run: 2 workers at ``--low-memory-limit`` (default 512MiB) on a
recording of large frames (default 1 timepoint x 4 cameras x 320 x 1024 x
1024, 671 MB per camera volume), written in 16 x 512 x 512 shards
(``--low-memory-shards``: small workers want small tasks): every volume is
larger than a worker may hold, so it only completes if memory is bounded
by chunks.

Results: ``<results>/scaling.json`` and ``scaling.md`` (``scaling-quick.*``
with ``--quick``: 4 timepoints x 4 x 128 x 128 x 128, and 1 x 4 x 256 x 1024 x
1024 at 512MiB).

    python benchmarks/scaling.py --quick
    python benchmarks/scaling.py                      # ~5 minutes on 2 cores
    python benchmarks/scaling.py --timepoints 8 --workers 2 --low-memory
    python benchmarks/scaling.py --timepoints 8 --workers 2 --from-raw   # corrected volumes not stored
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

SAMPLE_S = 0.2


def runnable_tasks(dask_scheduler) -> int:
    """Tasks queued, processing on a worker, or waiting for a worker (runs on the scheduler)."""
    processing = sum(len(ws.processing) for ws in dask_scheduler.workers.values())
    return int(len(dask_scheduler.queued) + processing + len(dask_scheduler.unrunnable))


class ParallelismSampler:
    """Sample :func:`runnable_tasks` in a thread while a block runs."""

    def __init__(self, client, interval: float = SAMPLE_S):
        self.client, self.interval, self.samples = client, interval, []
        self._stop = threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(self.client.run_on_scheduler(runnable_tasks))
            except Exception:  # the cluster closing under us
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def result(self) -> dict:
        s = sorted(self.samples)
        if not s:
            return {"median": None, "p10": None, "max": None, "samples": 0}
        return {"median": statistics.median(s), "p10": s[int(0.1 * (len(s) - 1))], "max": s[-1],
                "samples": len(s)}


def generate(workdir: Path, shape, timepoints: int, seed: int) -> Path:
    from isoview_dask.synthetic import generate_dataset
    root = workdir / f"scaling-{timepoints}tp-{'x'.join(map(str, shape))}"
    raw = root / "raw"
    if not raw.is_dir():
        print(f"generating {timepoints} timepoint(s) x 4 cameras x {'x'.join(map(str, shape))} in {root} ...",
              file=sys.stderr, flush=True)
        generate_dataset(root, shape=shape, timepoints=timepoints, seed=seed, write_truth_volumes=False)
    return raw


def measure(raw: Path, out: Path, workers: int, memory_limit: str, max_jobs: int | None = None, **flags) -> dict:
    import contextlib

    import dask
    from distributed import get_task_stream

    from isoview_dask.cluster import client_context
    from isoview_dask.dataset import open_dataset
    from isoview_dask.pipeline import process_dataset
    from isoview_dask.pipeline.executor import MAX_JOBS_CONFIG_KEY

    nbytes = open_dataset(raw).nbytes
    for path in sorted(raw.rglob("*")):
        if path.is_file():
            _common.warm_file(path)
    _common.remove(out)
    with client_context(n_workers=workers, threads_per_worker=1, memory_limit=memory_limit, quiet=True) as client:
        threads = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values())
        with _common.PeakMemory(client) as mem, ParallelismSampler(client) as sampler, \
                get_task_stream(client) as stream:
            t0 = time.perf_counter()
            with (dask.config.set({MAX_JOBS_CONFIG_KEY: max_jobs}) if max_jobs else contextlib.nullcontext()):
                summaries = process_dataset(raw, out, progress=False, **flags)
            wall = time.perf_counter() - t0
        tasks = [t for t in stream.data]
    failed = sum(len(s.failed) for s in summaries.values())
    busy = sum(s["stop"] - s["start"] for t in tasks for s in t["startstops"] if s["action"] == "compute")
    memory = mem.result()
    return {"workers": workers, "memory_limit": memory_limit, "max_jobs": max_jobs or "default", "input_mb": nbytes / _common.MB,
            "views": len(summaries["correct"].written), "fused": len(summaries["fuse"].written), "failed": failed,
            "wall_s": wall, "mb_per_s": nbytes / _common.MB / wall,
            "cpu_s": memory.get("cpu_s"), "cpu_s_per_gb": memory.get("cpu_s", 0) / (nbytes / 1e9),
            "client_cpu_s": memory.get("client_cpu_s"), "workers_cpu_s": memory.get("workers_cpu_s"),
            "system_cpu_s": memory.get("system_cpu_s"),
            "task_s": busy, "utilisation": busy / (wall * threads), "tasks": len(tasks),
            "parallelism": sampler.result(), "worker_peak_mb": memory.get("worker_peak_mb")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser, default_repeats=1)
    parser.add_argument("--timepoints", type=int, default=16)
    parser.add_argument("--shape", default="384,128,128", help="camera volume Z,Y,X of the many-timepoint recording")
    parser.add_argument("--workers", default="1,2", help="worker counts (default 1,2)")
    parser.add_argument("--memory-limit", default="4GiB")
    parser.add_argument("--low-memory-shape", default="320,1024,1024")
    parser.add_argument("--low-memory-limit", default="512MiB")
    parser.add_argument("--low-memory-shards", default="16,512,512",
                        help="zarr shard Z,Y,X of the low-memory run: small workers want small tasks")
    parser.add_argument("--max-jobs", type=int, default=0,
                        help="also run 2 workers with this many jobs in flight (isoview-dask.max-jobs) instead of "
                             "the default 3 per worker thread: the parallelism the plan exposes to a wider cluster, "
                             "with worker memory still bounded by the budget")
    parser.add_argument("--from-raw", action="store_true",
                        help="also run 2 workers with output.store_corrected = false: corrected volumes are not "
                             "written, fusion recomputes them from the raw files")
    parser.add_argument("--low-memory", action="store_true",
                        help="also run the memory-limit-below-one-volume configuration (see the module docstring; "
                             "the --quick size completes in about 2.5 minutes, the full size took over 20)")
    args = parser.parse_args(argv)
    _common.pickle_by_value()
    shape = tuple(int(v) for v in args.shape.split(","))
    low_shape = tuple(int(v) for v in args.low_memory_shape.split(","))
    timepoints, low_limit = args.timepoints, args.low_memory_limit
    if args.quick:
        shape, timepoints, low_shape = (128, 128, 128), 4, (256, 1024, 1024)
    name = "scaling-quick" if args.quick else "scaling"
    raw = generate(args.workdir, shape, timepoints, seed=3)
    rows = []
    for n in sorted({int(v) for v in args.workers.split(",") if v.strip()}):
        print(f"{n} worker(s) ...", file=sys.stderr, flush=True)
        rows.append({"recording": f"{timepoints} TP x 4 x {'x'.join(map(str, shape))}",
                     **measure(raw, args.workdir / "scaling-out", n, args.memory_limit)})
        print(f"  {rows[-1]['wall_s']:.1f} s, {rows[-1]['mb_per_s']:.1f} MB/s", file=sys.stderr, flush=True)
    if args.max_jobs:
        print(f"2 workers, {args.max_jobs} jobs in flight ...", file=sys.stderr, flush=True)
        rows.append({"recording": f"{timepoints} TP x 4 x {'x'.join(map(str, shape))}",
                     **measure(raw, args.workdir / "scaling-out", 2, args.memory_limit, max_jobs=args.max_jobs)})
    if args.from_raw:
        print("2 workers, corrected volumes not stored ...", file=sys.stderr, flush=True)
        rows.append({"recording": f"{timepoints} TP x 4 x {'x'.join(map(str, shape))}", "corrected": "recomputed",
                     **measure(raw, args.workdir / "scaling-out", 2, args.memory_limit,
                               output_store_corrected=False)})
    if args.low_memory:
        low_raw = generate(args.workdir, low_shape, 1, seed=4)
        volume_mb = 2 * low_shape[0] * low_shape[1] * low_shape[2] / _common.MB
        print(f"2 workers at {low_limit}, {volume_mb:.0f} MB per volume ...", file=sys.stderr, flush=True)
        rows.append({"recording": f"1 TP x 4 x {'x'.join(map(str, low_shape))} ({volume_mb:.0f} MB per volume)",
                     **measure(low_raw, args.workdir / "scaling-out-low", 2, low_limit,
                               output_shards=tuple(int(v) for v in args.low_memory_shards.split(",")))})
    cells = [{"corrected": "stored", **r, "parallelism_median": r["parallelism"]["median"], "parallelism_p10": r["parallelism"]["p10"],
              "parallelism_max": r["parallelism"]["max"],
              "system_share": (r["system_cpu_s"] or 0) / r["cpu_s"] if r.get("cpu_s") else None} for r in rows]
    columns = [("recording", "recording"), ("workers", "workers"), ("memory_limit", "memory/worker"),
               ("max_jobs", "jobs in flight"), ("corrected", "corrected volumes"),
               ("input_mb", "raw MB"), ("wall_s", "wall s"), ("mb_per_s", "MB/s"), ("cpu_s_per_gb", "CPU-s/GB"),
               ("system_share", "system share"),
               ("utilisation", "utilisation"), ("parallelism_median", "runnable median"),
               ("parallelism_p10", "runnable p10"), ("parallelism_max", "runnable max"),
               ("worker_peak_mb", "worker peak MB"), ("failed", "failed")]
    table = _common.markdown_table(cells, columns)
    machine = _common.machine_info()
    _common.write_json(args.results / f"{name}.json", {"benchmark": "scaling", "machine": machine,
                                                       "settings": {k: str(v) for k, v in vars(args).items()},
                                                       "rows": rows})
    notes = ["`isoview-dask run` (process_dataset): correction and fusion, default options, empty output, "
             "raw input in the page cache; one run per row. Corrected volumes 'recomputed': "
             "`--output-store-corrected false`, fusion recomputes them from the raw files.",
             "CPU-s/GB: this process (client + local scheduler) and all workers, user + system, per GB of raw input; "
             "system share: the kernel's part of it (page faults, file copies).",
             "utilisation: task compute time / (wall x worker threads). runnable: tasks queued, processing or "
             f"waiting for a worker in the scheduler, sampled every {SAMPLE_S} s (median, 10th percentile, and the "
             "largest: the most worker threads the run could have kept busy at once).",
             f"machine: {machine['cpu_usable']} usable cores, load average at the end {machine['loadavg']}."]
    return _common.publish(args.results / f"{name}.md", "Scaling: many views in flight", table, notes)


if __name__ == "__main__":
    sys.exit(main())
