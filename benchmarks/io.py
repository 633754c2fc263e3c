"""Read and write throughput of every volume format, on 1 and 2 local workers.

Input: a synthetic full-frame raw ``.stack`` (default 64 x 2048 x 2048
uint16, 512 MiB) from :func:`isoview_dask.synthetic.generate_dataset`, with
realistic noise and therefore realistic compressibility; generated once under
``--workdir`` and reused.

For each configuration the script times, ``--repeats`` times each, and
reports the median:

* WRITE: the package's writer fed the *lazy* input (``open_stack``), so the
  time covers reading the input from the page cache (it is pre-read before
  every write), rechunking, encoding and writing into the page cache. The
  ``os.sync`` that follows each write is timed separately (JSON only).
  The pyklb row writes from a numpy array already in memory.
* READ: the package's reader (opening included) followed by a reduction to
  one number per chunk (its voxel count), so the chunk is decoded into
  memory but no arithmetic is done on it; the grand total is checked against
  the volume size. With ``--drop-caches`` the page cache is dropped before
  every read (cold reads), otherwise the file is in the page cache (warm).

Throughput is MB of raw uint16 voxels (2 * Z * Y * X / 1e6) per second, for
writes and reads alike. Before a configuration's numbers count its output is
read back and compared with the input chunk by chunk (equality computed in
the graph, one boolean per chunk); a mismatch is recorded and its read is not
timed.

Configurations: raw ``.stack``; TIFF; KLB written by our dask engine and read
by ``open_klb``; zarr v3 sharded (default shards) with each codec, plus
unsharded blosc-zstd-5; each on a local ``distributed`` cluster of 1 and of
2 worker processes (1 thread each). KLB through pyklb (``writefull`` /
``readfull``) and our in-memory ``read_klb`` run in this process only, with
one decoding thread per core.

Results: ``<results>/io.json`` and ``<results>/io.md`` (``io-quick.*`` with
``--quick``). Run
``python benchmarks/io.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# benchmarks/ is not a package: make "_common" importable however we are started.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
import _common as common  # noqa: E402

import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402

ZARR_CODECS = ("blosc-zstd-5", "blosc-zstd-9", "blosc-lz4-5", "blosc-lz4hc-9", "zstd-3", "gzip-6", "bzip2-9",
               "none")
QUICK_SHAPE = (16, 1024, 1024)


# --------------------------------------------------------------------------
# Functions that run inside dask tasks (module level: they pickle by value
# because this file runs as __main__)
# --------------------------------------------------------------------------


def _voxel_count(block: np.ndarray) -> np.ndarray:
    """One number per chunk: forces the chunk to be read and decoded, computes nothing on it."""
    return np.full((1,) * block.ndim, block.size, dtype=np.int64)


def _chunks_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    same = a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
    return np.full((1,) * a.ndim, same, dtype=bool)


def touch(arr: da.Array) -> int:
    """Read every chunk of ``arr`` (on the current scheduler); return the voxel count."""
    counts = da.map_blocks(_voxel_count, arr, dtype=np.int64, chunks=tuple((1,) * len(c) for c in arr.chunks))
    return int(counts.sum().compute())


def verify_against_stack(out: da.Array, stack_path: Path, shape: tuple[int, int, int]) -> dict[str, Any]:
    """Compare a lazily read output with the input ``.stack``, chunk by chunk, in the graph."""
    from isoview_dask.io.stack import open_stack

    if tuple(out.shape) != tuple(shape) or out.dtype != np.uint16:
        return {"ok": False, "problem": f"shape/dtype {out.shape} {out.dtype}, expected {shape} uint16"}
    ref = open_stack(stack_path, shape[1:], chunks=out.chunksize)
    if ref.chunks != out.chunks:
        ref = ref.rechunk(out.chunks)
    flags = da.map_blocks(_chunks_equal, ref, out, dtype=bool,
                          chunks=tuple((1,) * len(c) for c in out.chunks)).compute()
    bad = [list(map(int, idx)) for idx in np.argwhere(~flags)]
    return {"ok": not bad, "chunks_checked": int(flags.size), "bad_chunks": bad[:20]}


def arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Equality of two in-memory volumes, plane by plane (no full-size temporary)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return all(np.array_equal(pa, pb) for pa, pb in zip(a, b))


# --------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------


@dataclass
class Config:
    """One row of the matrix: how to write a volume and how to read it back."""

    key: str
    fmt: str
    codec: str
    sharded: bool | None
    suffix: str
    write: Callable[[Any, Path], Any]
    open: Callable[[Path], da.Array]
    write_via: str
    read_via: str


def distributed_configs(frame: tuple[int, int]) -> list[Config]:
    from isoview_dask.io.klb import open_klb, write_klb
    from isoview_dask.io.stack import open_stack, write_stack
    from isoview_dask.io.tiff import open_tiff, write_tiff
    from isoview_dask.io.zarr import CodecSpec, open_zarr, write_zarr

    configs = [
        Config("stack", "stack", "raw", None, ".stack",
               lambda src, p: write_stack(src, p), lambda p: open_stack(p, frame),
               "write_stack", "open_stack"),
        Config("tiff", "tiff", "raw", None, ".tif",
               lambda src, p: write_tiff(src, p), lambda p: open_tiff(p),
               "write_tiff", "open_tiff"),
        Config("klb-dask", "klb", "bzip2", None, ".klb",
               lambda src, p: write_klb(src, p, engine="dask", compression="bzip2"), lambda p: open_klb(p),
               "write_klb(engine='dask')", "open_klb"),
    ]
    for label in ZARR_CODECS:
        spec = CodecSpec.parse(label)
        configs.append(Config(
            f"zarr-{spec.label}", "zarr", spec.label, True, ".zarr",
            lambda src, p, spec=spec: write_zarr(src, p, codec=spec), lambda p: open_zarr(p),
            "write_zarr (default shards)", "open_zarr"))
    spec = CodecSpec.parse("blosc-zstd-5")
    configs.append(Config(
        "zarr-blosc-zstd-5-unsharded", "zarr", spec.label, False, ".zarr",
        lambda src, p: write_zarr(src, p, codec=spec, shards=()), lambda p: open_zarr(p),
        "write_zarr(shards=())", "open_zarr"))
    return configs


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


class Bench:
    def __init__(self, args, stack_path: Path, shape: tuple[int, int, int]):
        self.args = args
        self.stack_path = stack_path
        self.shape = shape
        self.raw_bytes = 2 * int(np.prod(shape))
        self.outdir = Path(args.workdir) / "io-out"
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.cold = bool(args.drop_caches)

    # -------------------------------------------------------------- helpers
    def _before_read(self) -> None:
        if self.cold:
            common.drop_caches()

    def _after_write(self, path: Path) -> Callable[[common.Run], dict]:
        def after(run: common.Run) -> dict:
            return {"sync_s": round(common.timed_sync(), 4), "size_bytes": common.path_size(path)}
        return after

    def _write_summary(self, runs: list[common.Run]) -> dict[str, Any]:
        out = common.summarize(runs, self.raw_bytes)
        synced = [r.seconds + r.extra.get("sync_s", 0.0) for r in runs]
        med = common.median(synced)
        out["with_sync_median_s"] = round(med, 4)
        out["with_sync_mb_per_s"] = round(self.raw_bytes / common.MB / med, 1)
        return out

    def _finish_row(self, row: dict[str, Any], path: Path | None, remove: bool = True) -> None:
        if path is not None and path.exists():
            row["size_bytes"] = common.path_size(path)
            row["files"] = common.count_files(path)
            row["ratio"] = round(self.raw_bytes / row["size_bytes"], 3) if row["size_bytes"] else None
            if remove and not self.args.keep:
                common.remove(path)
        self.rows.append(row)
        self._print_row(row)

    def _print_row(self, row: dict[str, Any]) -> None:
        w = (row.get("write") or {}).get("mb_per_s")
        r = (row.get("read") or {}).get("mb_per_s")
        status = "ok" if row.get("verified") else ("ERROR " + row["error"] if row.get("error") else "NOT VERIFIED")
        print(f"  {row['key']:<30} workers={row['workers']!s:<12} write {common.fmt(w):>8} MB/s  "
              f"read {common.fmt(r):>8} MB/s  ratio {common.fmt(row.get('ratio'), 2):>6}  {status}",
              file=sys.stderr, flush=True)

    # -------------------------------------------------------------- in-process KLB (pyklb, read_klb)
    def run_inprocess(self) -> None:
        import pyklb

        from isoview_dask.io.klb import read_klb, write_klb

        if not (self.selected("klb-pyklb") or self.selected("klb-read_klb")):
            return
        threads = os.cpu_count() or 1
        workers = f"in-process ({threads} thr)"
        print(f"in-process KLB ({threads} threads)", file=sys.stderr, flush=True)
        data = np.fromfile(self.stack_path, dtype="<u2").reshape(self.shape)
        path = self.outdir / "klb-pyklb.klb"
        common.remove(path)
        repeats = self.args.repeats
        cache = "cold" if self.cold else "warm"
        row: dict[str, Any] = {"key": "klb-pyklb", "format": "klb", "codec": "bzip2", "sharded": None,
                               "workers": workers, "write_via": "write_klb(engine='pyklb')",
                               "read_via": "pyklb.readfull", "read_cache": cache}
        row2: dict[str, Any] = {"key": "klb-read_klb", "format": "klb", "codec": "bzip2", "sharded": None,
                                "workers": workers, "write_via": None,
                                "read_via": "read_klb (the file written by pyklb)", "read_cache": cache}

        def timed_reads(target: dict, reader: Callable[[], np.ndarray], how: str) -> None:
            checks: list[bool] = []

            def check(run: common.Run) -> dict:
                ok = arrays_equal(np.asarray(run.value).reshape(self.shape), data)
                checks.append(ok)
                run.value = None  # free the volume before the next repeat
                return {"verified": ok}

            runs = common.repeat(reader, repeats, setup=self._before_read, after=check)
            target["verified"] = all(checks)
            target["verify"] = {"how": how}
            if target["verified"]:
                target["read"] = common.summarize(runs, self.raw_bytes)
            else:
                target["error"] = "the volume read differs from the input"

        try:
            wruns = common.repeat(lambda: write_klb(data, path, engine="pyklb", compression="bzip2"), repeats,
                                  setup=lambda: common.remove(path), after=self._after_write(path))
            row["write"] = self._write_summary(wruns)
            timed_reads(row, lambda: pyklb.readfull(str(path), numthreads=threads),
                        "pyklb.readfull result == input, every read repeat")
            if self.selected("klb-read_klb"):
                timed_reads(row2, lambda: read_klb(path, num_threads=threads),
                            "read_klb result == input, every read repeat")
        except Exception as exc:  # record and carry on with the rest of the matrix
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()
        del data
        self._finish_row(row, path, remove=False)
        if "verified" in row2:
            self._finish_row(row2, path, remove=False)
        if not self.args.keep:
            common.remove(path)

    # -------------------------------------------------------------- the distributed matrix
    def selected(self, key: str) -> bool:
        only = self.args.only
        return not only or any(s in key for s in only)

    def run_cluster(self, n_workers: int, configs: list[Config]) -> None:
        from isoview_dask.cluster import client_context
        from isoview_dask.io.stack import open_stack

        configs = [c for c in configs if self.selected(c.key)]
        if not configs:
            return
        print(f"cluster: {n_workers} worker(s) x 1 thread, memory limit {self.args.memory_limit}",
              file=sys.stderr, flush=True)
        with client_context(n_workers=n_workers, threads_per_worker=1, processes=True,
                            memory_limit=self.args.memory_limit, quiet=True) as client:
            client.wait_for_workers(n_workers)
            for cfg in configs:
                src = open_stack(self.stack_path, self.shape[1:])
                self.measure(cfg, src, client, n_workers)

    def measure(self, cfg: Config, src: da.Array, client, n_workers: int) -> None:
        path = self.outdir / f"{cfg.key}-w{n_workers}{cfg.suffix}"
        common.remove(path)
        repeats = self.args.repeats
        row: dict[str, Any] = {"key": cfg.key, "format": cfg.fmt, "codec": cfg.codec, "sharded": cfg.sharded,
                               "workers": n_workers, "write_via": cfg.write_via, "read_via": cfg.read_via,
                               "input_chunks": list(src.chunksize), "read_cache": "cold" if self.cold else "warm"}
        try:
            def setup() -> None:
                common.remove(path)
                common.warm_file(self.stack_path)

            wruns = common.repeat(lambda: cfg.write(src, path), repeats, setup=setup,
                                  after=self._after_write(path), client=client, interval=self.args.interval)
            row["write"] = self._write_summary(wruns)
            sizes = {r.extra["size_bytes"] for r in wruns}
            if len(sizes) > 1:
                row["size_varies"] = sorted(sizes)
            t0 = time.perf_counter()
            out = cfg.open(path)
            row["read_chunks"] = list(out.chunksize)
            row["read_tasks"] = int(np.prod(out.numblocks))
            check = verify_against_stack(out, self.stack_path, self.shape)
            check["seconds"] = round(time.perf_counter() - t0, 3)
            check["how"] = "per-chunk np.array_equal(output chunk, input .stack region) in the graph"
            row["verify"] = check
            row["verified"] = bool(check["ok"])
            if not row["verified"]:
                row["error"] = f"output differs from the input: {check}"
            else:
                rruns = common.repeat(lambda: touch(cfg.open(path)), repeats, setup=self._before_read,
                                      client=client, interval=self.args.interval)
                counts = [r.value for r in rruns]
                if any(c != int(np.prod(self.shape)) for c in counts):
                    row["verified"] = False
                    row["error"] = f"read touched {counts} voxels, expected {int(np.prod(self.shape))}"
                else:
                    row["read"] = common.summarize(rruns, self.raw_bytes)
        except Exception as exc:  # record and carry on with the rest of the matrix
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc()
        self._finish_row(row, path)


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _pair(row: dict[str, Any], key: str) -> str:
    w = ((row.get("write") or {}).get("memory") or {}).get(key)
    r = ((row.get("read") or {}).get("memory") or {}).get(key)
    if w is None and r is None:
        return "–"
    return f"{common.fmt(w, 0)} / {common.fmt(r, 0)}"


def _cpu_pair(row: dict[str, Any]) -> str:
    w = (row.get("write") or {}).get("median_cpu_s")
    r = (row.get("read") or {}).get("median_cpu_s")
    if w is None and r is None:
        return "–"
    return f"{common.fmt(w)} / {common.fmt(r)}"


def _max_load(row: dict[str, Any]) -> float | None:
    loads = []
    for part in (row.get("write") or {}, row.get("read") or {}):
        loads += [entry[0] for entry in part.get("load", [])]  # 1-minute load after each repeat
    return max(loads) if loads else None


def table(rows: list[dict[str, Any]]) -> str:
    cells = []
    for row in rows:
        sharded = {True: "yes", False: "no", None: "–"}[row.get("sharded")]
        counts = bool(row.get("verified"))  # numbers of an unverified output are not shown
        cells.append({
            "format": row["format"] + ("" if row["key"].startswith(("zarr", "stack", "tiff")) else
                                       f" ({row['key'].split('-', 1)[1]})"),
            "codec": row["codec"],
            "sharded": sharded,
            "workers": str(row["workers"]),
            "write": (row.get("write") or {}).get("mb_per_s") if counts else None,
            "read": (row.get("read") or {}).get("mb_per_s") if counts else None,
            "ratio": row.get("ratio"),
            "size": round(row["size_bytes"] / common.MB, 1) if row.get("size_bytes") else None,
            "worker_mem": _pair(row, "worker_peak_mb"),
            "client_mem": _pair(row, "client_peak_mb"),
            "cpu": _cpu_pair(row),
            "load": _max_load(row),
            "verified": "yes" if row.get("verified") else ("FAILED" if row.get("error") else "no"),
        })
    columns = [("format", "format"), ("codec", "codec"), ("sharded", "sharded"), ("workers", "workers"),
               ("write", "write MB/s"), ("read", "read MB/s"), ("ratio", "ratio"), ("size", "size MB"),
               ("worker_mem", "peak worker MB (w / r)"), ("client_mem", "peak client MB (w / r)"),
               ("cpu", "CPU s (w / r)"), ("load", "load"), ("verified", "verified")]
    for c in cells:  # ratio with two decimals
        if isinstance(c["ratio"], float):
            c["ratio"] = common.fmt(c["ratio"], 2)
    return common.markdown_table(cells, columns, align={"ratio": "r", "worker_mem": "r", "client_mem": "r",
                                                         "cpu": "r", "load": "r", "workers": "l"})


def notes(record: dict[str, Any]) -> list[str]:
    s, m = record["settings"], record["machine"]
    z, y, x = record["input"]["shape"]
    return [
        f"Input: synthetic full-frame `.stack`, {z} x {y} x {x} uint16 = {record['input']['raw_mb']:.0f} MB; "
        f"MB/s are MB of raw voxels per second for writes and reads; median of {s['repeats']} repeat(s).",
        f"Machine: {m['cpu_usable']} cores ({m['cpu_model']}), {m['memory_total_gib']} GiB; load average "
        f"{record['load_start']} at start, {record['load_end']} at end (other jobs may share the machine).",
        "Distributed rows: local cluster, worker processes with 1 thread each, memory limit "
        f"{s['memory_limit']} per worker; the scheduler and the client run in the benchmark process "
        "('client' memory). Peaks are RSS sampled every "
        f"{s['interval']} s (worker: the largest single worker).",
        "In-process rows (pyklb writefull/readfull, read_klb): no cluster, one decoding thread per core; "
        "the pyklb write starts from a numpy array already in memory, and the client memory includes that "
        f"{record['input']['raw_mb']:.0f} MB input array (and the returned array for reads).",
        "Writes start from the lazy input (`open_stack`, 8-plane chunks at 2048 x 2048) whose file is in the "
        "page cache; they end when the writer returns, with data in the page cache (the following `os.sync` "
        "is in the JSON as `with_sync_mb_per_s`).",
        f"Reads: {'cold (page cache dropped before every read)' if s['drop_caches'] else 'warm (the output is in the page cache)'}; "
        "opening is included; each chunk is decoded and reduced to its voxel count.",
        "CPU s: median CPU seconds of one write / read, workers plus this process (which hosts the scheduler "
        "and the memory sampler); much less sensitive to other jobs than wall time. load: the highest 1-minute "
        f"load average seen during the row ({m['cpu_usable']} cores; above that, other jobs competed for CPU).",
        "Every output was read back and compared with the input chunk by chunk before its numbers were kept "
        "(column 'verified').",
        "Zarr: default inner chunks (8, 256, 256) and shards (32, 1024, 1024); unsharded = one file per "
        "inner chunk. KLB: bzip2, blocks (8, 96, 96).",
    ]


def result_name(quick: bool) -> str:
    """``io`` (``io-quick`` for a smoke run, so it never replaces the real results)."""
    return "io-quick" if quick else "io"


def write_report(record: dict[str, Any], results_dir: Path, final: bool) -> str:
    md = table(record["results"])
    name = result_name(record["settings"]["quick"])
    common.write_json(results_dir / f"{name}.json", record)
    if final:
        common.write_markdown(results_dir / f"{name}.md", "I/O throughput (benchmarks/io.py)", md, notes(record))
    return md


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write and read throughput, compression ratio and peak memory of every volume format "
                    "(.stack, TIFF, KLB, zarr with each codec), on local distributed clusters of 1 and 2 workers. "
                    f"--quick uses a {'x'.join(map(str, QUICK_SHAPE))} input and one repeat.")
    common.add_common_arguments(parser)
    parser.add_argument("--planes", type=int, default=64, help="planes of the 2048 x 2048 synthetic input (default: %(default)s)")
    parser.add_argument("--workers", default="1,2", help="comma-separated cluster sizes, worker processes of 1 thread (default: %(default)s)")
    parser.add_argument("--memory-limit", default="4GiB", help="memory limit per worker (default: %(default)s)")
    parser.add_argument("--drop-caches", action="store_true",
                        help="drop the OS page cache before every read (cold reads; needs root)")
    parser.add_argument("--only", type=lambda s: [p for p in s.split(",") if p],
                        help="comma-separated substrings: run only configurations whose key contains one "
                             "(keys: stack, tiff, klb-dask, klb-pyklb, klb-read_klb, zarr-<codec>, "
                             "zarr-blosc-zstd-5-unsharded)")
    parser.add_argument("--no-inprocess", action="store_true", help="skip the in-process pyklb/read_klb rows")
    parser.add_argument("--keep", action="store_true", help="keep the written outputs in <workdir>/io-out")
    parser.add_argument("--interval", type=float, default=0.25, help="memory sampling interval, seconds (default: %(default)s)")
    parser.add_argument("--regenerate", action="store_true", help="regenerate the synthetic input")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only print the Markdown table of an earlier run's JSON (nothing is measured)")
    args = parser.parse_args(argv)
    common.resolve_repeats(args)
    args.worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    if args.drop_caches and not common.can_drop_caches():
        parser.error("--drop-caches: /proc/sys/vm/drop_caches is not writable (needs root)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        import json

        record = json.loads(args.render.read_text(encoding="utf-8"))
        print(table(record["results"]))
        print()
        print("\n".join(f"- {n}" for n in notes(record)) if "load_end" in record else "(unfinished run)")
        return 0
    common.pickle_by_value()
    started = time.perf_counter()
    shape = QUICK_SHAPE if args.quick else (args.planes, 2048, 2048)
    load_start = common.load()
    stack_path, truth = common.synthetic_input(args.workdir, shape, regenerate=args.regenerate)
    shape = tuple(int(v) for v in truth.shape)
    bench = Bench(args, stack_path, shape)
    record: dict[str, Any] = {
        "benchmark": "io",
        "started": common.now_iso(),
        "machine": common.machine_info(),
        "load_start": load_start,
        "settings": {"quick": args.quick, "repeats": args.repeats, "workers": args.worker_counts,
                     "threads_per_worker": 1, "memory_limit": args.memory_limit, "drop_caches": args.drop_caches,
                     "read_cache": "cold" if args.drop_caches else "warm", "only": args.only,
                     "interval": args.interval, "zarr_codecs": list(ZARR_CODECS)},
        "input": {"path": str(stack_path), "shape": list(shape), "dtype": "uint16", "raw_bytes": bench.raw_bytes,
                  "raw_mb": bench.raw_bytes / common.MB, "synthetic_seed": truth.spec.seed},
        "results": bench.rows,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    if not args.no_inprocess:
        bench.run_inprocess()
        write_report(record, args.results, final=False)
    configs = distributed_configs(shape[1:])
    for n in args.worker_counts:
        bench.run_cluster(n, configs)
        write_report(record, args.results, final=False)
    record["finished"] = common.now_iso()
    record["load_end"] = common.load()
    record["total_seconds"] = round(time.perf_counter() - started, 1)
    md = write_report(record, args.results, final=True)
    print(md)
    name = result_name(args.quick)
    print(f"\ntotal {record['total_seconds']:.0f} s; results in {args.results / (name + '.json')} and "
          f"{args.results / (name + '.md')}")
    failed = [r["key"] for r in bench.rows if not r.get("verified")]
    if failed:
        print(f"NOT VERIFIED / FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
