"""The CPU floor of this machine, per GB of raw uint16 input, beside what each pipeline stage costs.

Floor components, each on one thread, the median of ``--repeats`` timings of
CPU seconds (``time.process_time``) scaled to one GB (1e9 bytes) of raw uint16:

- ``read_readinto``: a raw ``.stack``-like file (``--size-mb``, written once and
  read once beforehand so it sits in the page cache) read with plain
  ``readinto`` calls into a preallocated, already touched buffer;
- ``read_memmap_copy``: the same file through ``numpy.memmap`` and one copy
  into that buffer;
- ``elementwise_uint16``: one pass ``np.subtract(a, dark, out=b)``, uint16 in
  and out (the dark frame one plane, broadcast);
- ``elementwise_float32``: one pass ``np.subtract(a, dark, out=f)``, uint16
  in, float32 out;
- ``reduction``: one reduction pass, the maximum over z (one projection);
- ``blend``: two views combined by a per-plane weight and cast back to
  uint16 (``np.subtract``, ``np.multiply``, ``np.add`` with ``out=``
  buffers, then the cast): per GB of the two input views;
- ``compress`` / ``decompress``: numcodecs ``Blosc`` at the project's default
  zarr codec (``output.codec`` blosc-zstd at its default level, bit shuffle;
  :class:`isoview_dask.io.codecs.CodecSpec`), one blosc thread, on the
  default inner chunk (8 x 256 x 256) of a realistic synthetic raw volume
  (:func:`isoview_dask.synthetic.synthetic_volume`, preset ``small``).

Two floor sums follow the rows of issue 33's table: correction = the cheaper read +
one elementwise pass + one reduction pass (block means and projections) +
compression; correction and fusion = that + decompression of the corrected
volumes + a warp of the moving camera (one float32 pass over half the raw
bytes) + blend + compression of the fused volumes (half the raw bytes).

Stage rows: one synthetic recording (default 1 timepoint x 4 cameras x 1024
x 256 x 256, 537 MB, as in issue 33) in the page cache, then ``isoview-dask correct`` and
``isoview-dask run`` (correction and fusion) each started as a child
process on a fresh output folder; CPU seconds are those of the whole
process tree (user + system, ``RUSAGE_CHILDREN``, the local cluster's
workers included), so interpreter start-up, imports and the cluster start
are in them. The same command on a tiny recording (4 x 16 x 64 x 64) gives
its fixed cost, and a second row per stage subtracts it. Each stage row
lists the ratio to its floor.

Results: ``<results>/floor.json`` and ``floor.md`` (``floor-quick.*`` with
``--quick``: 32 MB, one repeat, no stage rows unless ``--stages``).

    python benchmarks/floor.py            # about 1.5 minutes on 2 cores (plus generating 537 MB once)
    python benchmarks/floor.py --quick    # floor rows only, a few seconds
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

GB = 1e9
CHUNK = (8, 256, 256)
#: A recording small enough that a command's CPU time on it is its fixed cost (start-up, imports, cluster).
TINY_SHAPE = (16, 64, 64)


# --------------------------------------------------------------------------
# Floor measurements
# --------------------------------------------------------------------------


def cpu_per_gb(fn: Callable[[], Any], nbytes: int, repeats: int, min_s: float = 0.2) -> dict[str, Any]:
    """Median CPU seconds of ``fn()`` per GB of ``nbytes``; each timing loops ``fn`` until ``min_s`` of CPU."""
    fn()  # warm-up: first-touch faults, caches, lazy imports
    values = []
    for _ in range(repeats):
        calls, t0 = 0, time.process_time()
        while True:
            fn()
            calls += 1
            spent = time.process_time() - t0
            if spent >= min_s:
                break
        values.append(spent / calls / (nbytes / GB))
    return {"cpu_s_per_gb": _common.median(values), "all": [round(v, 4) for v in values], "bytes": nbytes}


def realistic_raw(target_bytes: int):
    """A uint16 volume of about ``target_bytes``: the synthetic ``small`` raw volume, repeated along z."""
    import numpy as np

    from isoview_dask.synthetic import SyntheticSpec, synthetic_volume

    base = np.asarray(synthetic_volume(SyntheticSpec.small(), camera=0, kind="raw").compute(), dtype=np.uint16)
    reps = max(1, math.ceil(target_bytes / base.nbytes))
    return base, np.concatenate([base] * reps, axis=0)[: max(CHUNK[0], target_bytes // (base[0].nbytes))]


def codec():
    """numcodecs Blosc at the project's default zarr codec, one thread."""
    from numcodecs import blosc

    from isoview_dask.config import OutputConfig
    from isoview_dask.io.codecs import CodecSpec

    out = OutputConfig()
    spec = CodecSpec.parse(out.codec, out.level, out.shuffle)
    if not spec.name.startswith("blosc-"):
        raise SystemExit(f"floor.py measures blosc codecs; the configured codec is {spec.label}")
    blosc.set_nthreads(1)
    shuffle = {"bitshuffle": blosc.BITSHUFFLE, "shuffle": blosc.SHUFFLE, "noshuffle": blosc.NOSHUFFLE}[spec.shuffle]
    return spec, blosc.Blosc(cname=spec.name.split("-", 1)[1], clevel=spec.level, shuffle=shuffle)


def measure_floor(workdir: Path, size_mb: int, repeats: int) -> dict[str, Any]:
    import numpy as np

    rows: dict[str, Any] = {}
    base, data = realistic_raw(size_mb * 10**6)
    nbytes = data.nbytes

    # read from the page cache
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "floor-read.stack"
    if not path.is_file() or path.stat().st_size != nbytes:
        data.tofile(path)
    _common.warm_file(path)
    buf = np.empty(nbytes, dtype=np.uint8)
    buf[:] = 1  # touch every page: the timing is the read, not page faults
    view = memoryview(buf)
    block = 16 * _common.MiB

    def read_into():
        with open(path, "rb", buffering=0) as fh:
            pos = 0
            while pos < nbytes:
                got = fh.readinto(view[pos:pos + block])
                if not got:
                    break
                pos += got

    def memmap_copy():
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        np.copyto(buf, mm)
        del mm

    rows["read_readinto"] = cpu_per_gb(read_into, nbytes, repeats)
    rows["read_memmap_copy"] = cpu_per_gb(memmap_copy, nbytes, repeats)
    del buf, view

    # elementwise and reduction passes
    dark = np.full(data.shape[1:], 100, dtype=np.uint16)
    dark_f = dark.astype(np.float32)
    out16 = np.empty_like(data)
    out32 = np.empty(data.shape, dtype=np.float32)
    out16[:] = 0
    out32[:] = 0
    rows["elementwise_uint16"] = cpu_per_gb(lambda: np.subtract(data, dark, out=out16), nbytes, repeats)
    rows["elementwise_float32"] = cpu_per_gb(lambda: np.subtract(data, dark_f, out=out32), nbytes, repeats)
    del out32
    rows["reduction"] = cpu_per_gb(lambda: np.max(data, axis=0), nbytes, repeats)

    # blend two views (the halves of the volume) with a weight per plane
    half = data.shape[0] // 2
    a, b = data[:half], data[half:2 * half]
    w = np.linspace(1.0, 0.0, half, dtype=np.float32)[:, None, None]
    tmp = np.empty(a.shape, dtype=np.float32)
    blended = np.empty(a.shape, dtype=np.uint16)
    tmp[:] = 0
    blended[:] = 0

    def blend():
        np.subtract(a, b, out=tmp, dtype=np.float32)
        np.multiply(tmp, w, out=tmp)
        np.add(tmp, b, out=tmp)
        np.add(tmp, 0.5, out=tmp)
        blended[...] = tmp  # cast (values stay within uint16: a convex combination)

    rows["blend"] = cpu_per_gb(blend, a.nbytes + b.nbytes, repeats)
    del tmp, blended, out16

    # compression at the configured codec, per inner chunk of the realistic volume
    spec, blosc_codec = codec()
    chunks = [np.ascontiguousarray(base[z:z + CHUNK[0], :CHUNK[1], :CHUNK[2]])
              for z in range(0, base.shape[0] - CHUNK[0] + 1, CHUNK[0])]
    chunk_bytes = sum(c.nbytes for c in chunks)
    encoded = [blosc_codec.encode(c) for c in chunks]
    ratio = chunk_bytes / sum(len(e) for e in encoded)
    rows["compress"] = cpu_per_gb(lambda: [blosc_codec.encode(c) for c in chunks], chunk_bytes, repeats)
    rows["decompress"] = cpu_per_gb(lambda: [blosc_codec.decode(e) for e in encoded], chunk_bytes, repeats)
    rows["compress"]["ratio"] = round(ratio, 3)
    rows["compress"]["codec"] = rows["decompress"]["codec"] = spec.label + "-" + spec.shuffle
    return rows


def floor_sums(f: dict[str, Any]) -> dict[str, float]:
    """The floors of correction alone and of correction and fusion, CPU-s per GB of raw input."""
    v = {k: r["cpu_s_per_gb"] for k, r in f.items()}
    read = min(v["read_readinto"], v["read_memmap_copy"])
    correction = read + v["elementwise_uint16"] + v["reduction"] + v["compress"]
    fusion = v["decompress"] + 0.5 * v["elementwise_float32"] + v["blend"] + 0.5 * v["compress"]
    return {"correction": correction, "fusion_part": fusion, "correction_and_fusion": correction + fusion}


# --------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------


def timed_command(command: list[str], log: Path) -> dict[str, Any]:
    """Run ``command`` to completion; wall seconds and CPU seconds (user, system) of its whole process tree."""
    before = _common.adopt_orphans()  # a local cluster's fork server outlives the command: its CPU counts too
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    _common.reap_orphans(before)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {proc.returncode}); see {log}")
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"wall_s": wall, "cpu_s": user + system, "system_cpu_s": system}


def measure_stages(workdir: Path, shape, timepoints: int, repeats: int) -> dict[str, Any]:
    from isoview_dask.dataset import open_dataset
    from isoview_dask.synthetic import generate_dataset

    def recording(shape, timepoints):
        root = workdir / f"floor-{timepoints}tp-{'x'.join(map(str, shape))}"
        if not (root / "raw").is_dir():
            print(f"generating {timepoints} timepoint(s) x 4 cameras x {'x'.join(map(str, shape))} ...",
                  file=sys.stderr, flush=True)
            generate_dataset(root, shape=shape, timepoints=timepoints, seed=7, write_truth_volumes=False)
        return root / "raw"

    raw, tiny = recording(shape, timepoints), recording(TINY_SHAPE, 1)
    nbytes = open_dataset(raw).nbytes
    exe = str(Path(sys.executable).with_name("isoview-dask"))
    if not os.path.exists(exe):
        exe = None
    stages: dict[str, Any] = {}
    def run(sub, folder):
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                _common.warm_file(path)
        out = workdir / "floor-out"
        _common.remove(out)
        cmd = [exe] if exe else [sys.executable, "-m", "isoview_dask"]
        r = timed_command(cmd + [sub, str(folder), "--out", str(out)], workdir / f"floor-{sub}.log")
        print(f"  {sub} {folder.parent.name}: {r['wall_s']:.1f} s, {r['cpu_s']:.1f} CPU-s", file=sys.stderr,
              flush=True)
        return r

    for name, sub in (("correction", "correct"), ("correction_and_fusion", "run")):
        runs, fixed = [], []
        for _ in range(repeats):
            fixed.append(run(sub, tiny))
            runs.append(run(sub, raw))
        cpu = _common.median([r["cpu_s"] for r in runs])
        fixed_cpu = _common.median([r["cpu_s"] for r in fixed])
        stages[name] = {"command": f"isoview-dask {sub}", "input_bytes": nbytes, "runs": runs,
                        "wall_s": _common.median([r["wall_s"] for r in runs]), "cpu_s": cpu,
                        "system_cpu_s": _common.median([r["system_cpu_s"] for r in runs]),
                        "cpu_s_per_gb": cpu / (nbytes / GB),
                        "fixed_runs": fixed, "fixed_cpu_s": fixed_cpu,
                        "fixed_wall_s": _common.median([r["wall_s"] for r in fixed]),
                        "marginal_cpu_s_per_gb": max(cpu - fixed_cpu, 0.0) / (nbytes / GB)}
    _common.remove(workdir / "floor-out")
    return stages


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

LABELS = {
    "read_readinto": "read from the page cache (readinto, preallocated buffer)",
    "read_memmap_copy": "read from the page cache (numpy.memmap + copy)",
    "elementwise_uint16": "one elementwise pass, uint16 -> uint16",
    "elementwise_float32": "one elementwise pass, uint16 -> float32",
    "reduction": "one reduction pass (max over z)",
    "blend": "blend two views (weights, combination, cast)",
    "compress": "compress",
    "decompress": "decompress",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser, default_repeats=3)
    parser.add_argument("--size-mb", type=int, default=256, help="bytes of raw data for the floor rows (default 256)")
    parser.add_argument("--shape", default="1024,256,256", help="camera volume Z,Y,X of the stage recording")
    parser.add_argument("--timepoints", type=int, default=1)
    parser.add_argument("--stage-repeats", type=int, default=1, help="runs of each stage (default 1)")
    parser.add_argument("--stages", action="store_true", help="with --quick: run the stages too")
    parser.add_argument("--no-stages", action="store_true", help="floor rows only")
    args = parser.parse_args(argv)
    repeats = _common.resolve_repeats(args)
    size_mb = 32 if args.quick else args.size_mb
    shape = tuple(int(v) for v in args.shape.split(","))
    run_stages = not args.no_stages and (args.stages or not args.quick)
    name = "floor-quick" if args.quick else "floor"

    floor = measure_floor(args.workdir, size_mb, repeats)
    sums = floor_sums(floor)
    stages = measure_stages(args.workdir, shape, args.timepoints, args.stage_repeats) if run_stages else {}

    rows = []
    for key, label in LABELS.items():
        r = floor[key]
        if key == "compress":
            label += f" ({r['codec']}, ratio {r['ratio']:.2f})"
        elif key == "decompress":
            label += f" ({r['codec']})"
        rows.append({"component": label, "cpu_s_per_gb": r["cpu_s_per_gb"]})
    for key, label in (("correction", "floor: correction"), ("correction_and_fusion", "floor: correction + fusion")):
        rows.append({"component": label, "cpu_s_per_gb": sums[key]})
    for key, r in stages.items():
        rows.append({"component": f"measured: {r['command']} ({r['input_bytes'] / 1e6:.0f} MB raw)",
                     "cpu_s_per_gb": r["cpu_s_per_gb"], "x_floor": r["cpu_s_per_gb"] / sums[key]})
        rows.append({"component": f"measured: {r['command']} less its fixed cost ({r['fixed_cpu_s']:.1f} CPU-s "
                                  f"on 4 x {'x'.join(map(str, TINY_SHAPE))})",
                     "cpu_s_per_gb": r["marginal_cpu_s_per_gb"], "x_floor": r["marginal_cpu_s_per_gb"] / sums[key]})
    for row in rows:
        row["cpu_s_per_gb"] = round(row["cpu_s_per_gb"], 3)
        if "x_floor" in row:
            row["x_floor"] = round(row["x_floor"], 2)
    cells = [{"component": r["component"], "cpu_s_per_gb": f"{r['cpu_s_per_gb']:.2f}",
              "x_floor": f"{r['x_floor']:.1f}x" if "x_floor" in r else ""} for r in rows]

    data = {"benchmark": "floor", "created": _common.now_iso(), "machine": _common.machine_info(),
            "size_mb": size_mb, "repeats": repeats, "floor": floor, "floor_sums": sums, "stages": stages,
            "stage_shape": list(shape), "timepoints": args.timepoints, "rows": rows}
    _common.write_json(args.results / f"{name}.json", data)
    table = _common.markdown_table(cells, [("component", "component"), ("cpu_s_per_gb", "CPU-s/GB"),
                                           ("x_floor", "times the floor")],
                                   align={"cpu_s_per_gb": "r", "x_floor": "r"})
    m = data["machine"]
    notes = [f"Machine: {m['cpu_usable']} cores ({m['cpu_model']}); load {m['loadavg']}.",
             f"Floor rows: one thread, median of {repeats} timing(s), {size_mb} MB of raw uint16 in memory / "
             "page cache; CPU-s per GB (1e9 bytes) of raw input.",
             "Floor sums: correction = the cheaper read + uint16 pass + reduction + compress; correction + fusion adds "
             "decompress + half a float32 pass (warp of the moving camera) + blend + half a compress (fused).",
             "Measured stages: whole process tree of the command (start-up, imports and local cluster included); "
             "'less its fixed cost' subtracts the CPU seconds of the same command on a tiny recording."]
    return _common.publish(args.results / f"{name}.md", "CPU floor per GB of raw input", table, notes)


if __name__ == "__main__":
    sys.exit(main())
