"""Side by side with the original single-machine port: ``isoview`` (PyPI) against ``isoview-dask run``.

Both tools process the same synthetic recording (default 1 timepoint x 4
cameras x 1024 x 256 x 256, 537 MB of raw uint16) from the page cache, end to
end: correction of every camera (dead pixels, background, segmentation masks,
projections) and fusion of both camera pairs, written as compressed zarr.
Each tool runs as a whole command in its own process tree, the way a user
starts it, so interpreter start-up, imports and (for isoview-dask) the local
cluster's start and stop are inside the time. The runs alternate tool by tool
within every repeat, so a drift of the machine's speed hits all of them alike.

The original port needs Python >= 3.12.7; it is installed from PyPI into its
own virtual environment under ``--workdir`` (made once, reused) with the
first interpreter found among ``--original-python``, ``python3.13``,
``python3.12`` and pyenv's versions. Its configuration is its own defaults
(``output_format="zarr"``), with ``workers`` set per row and one addition:
``camera_view_map={0: 0, 1: 0, 2: 90, 3: 90}`` (its documented default). It
otherwise derives each camera pair's view from the XML's ``stack_direction``
(Z-scan -> cameras 0/1, Y-scan -> cameras 2/3); the synthetic XML says ``+z``
for both pairs, so without the map it skips cameras 2 and 3 and fuses one
pair only.

Reported per tool and configuration: median wall seconds (and every repeat),
MB/s of raw input, CPU seconds (user + system of the whole process tree, from
the kernel's accounting of waited-for children), the peak of the process
tree's summed RSS (sampled every 0.2 s), and the speed-up of ``isoview-dask run`` over each original row.

Results: ``<results>/original.json`` and ``original.md`` (``original-quick.*``
with ``--quick``: 1 x 4 x 256 x 256 x 256, one repeat).

    python benchmarks/original.py                     # ~5 minutes on 2 cores
    python benchmarks/original.py --original-workers 1,2 --repeats 3
    python benchmarks/original.py --original-python /opt/python3.13/bin/python3
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

#: The script the original port runs: its two documented entry points, correction then fusion.
ORIGINAL_DRIVER = '''\
import sys
from pathlib import Path
from isoview import ProcessingConfig, correct_stack, multi_fuse

raw, workers = Path(sys.argv[1]), int(sys.argv[2])
options = dict(input_dir=raw, output_format="zarr", workers=workers, camera_view_map={0: 0, 1: 0, 2: 90, 3: 90})
correct_stack(ProcessingConfig(**options))
multi_fuse(ProcessingConfig(**options, overwrite=True))
'''


def find_original_python(explicit: str | None) -> Path:
    """An interpreter of Python >= 3.12.7 for the original port (which refuses older ones)."""
    candidates = [explicit] if explicit else []
    candidates += [shutil.which(name) for name in ("python3.13", "python3.12")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        candidates += [str(p / "bin" / "python3") for p in sorted(pyenv.iterdir(), reverse=True)]
    for candidate in candidates:
        if not candidate or not Path(candidate).exists():
            continue
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 12, 7))"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return Path(candidate)
        if explicit and candidate == explicit:
            raise SystemExit(f"--original-python {explicit}: the original port needs Python >= 3.12.7")
    raise SystemExit("no Python >= 3.12.7 found for the original port: pass --original-python PATH")


def original_environment(workdir: Path, version: str, python: str | None) -> Path:
    """The virtual environment holding ``isoview==version`` (made once under ``workdir``); its interpreter."""
    venv = workdir / f"isoview-{version}-venv"
    interpreter = venv / "bin" / "python"
    ok = interpreter.exists() and subprocess.run(
        [str(interpreter), "-c", f"import importlib.metadata as m, sys; sys.exit(m.version('isoview') != {version!r})"],
        capture_output=True).returncode == 0
    if not ok:
        base = find_original_python(python)
        print(f"installing isoview=={version} with {base} into {venv} ...", file=sys.stderr, flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(interpreter), "-m", "pip", "install", "--quiet", f"isoview=={version}"], check=True)
    return interpreter


def generate(workdir: Path, shape, timepoints: int, seed: int) -> Path:
    """A synthetic recording in both layouts (Keller for isoview-dask, flat for the original)."""
    from isoview_dask.synthetic import generate_dataset

    root = workdir / f"original-{timepoints}tp-{'x'.join(map(str, shape))}"
    if not (root / "raw").is_dir() or not (root / "raw_flat").is_dir():
        print(f"generating {timepoints} timepoint(s) x 4 cameras x {'x'.join(map(str, shape))} in {root} ...",
              file=sys.stderr, flush=True)
        _common.remove(root)
        generate_dataset(root, shape=shape, timepoints=timepoints, seed=seed, layout="both",
                         write_truth_volumes=False)
    return root


def _tree_rss(proc) -> int:
    """Summed RSS of a process and all its descendants, bytes (0 once it has ended)."""
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        members = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def timed_command(command: list[str], log: Path, interval: float = 0.2) -> dict:
    """Run ``command`` to completion: wall seconds, CPU seconds and peak summed RSS of its process tree."""
    before = _common.adopt_orphans()  # a local cluster's fork server outlives the command: its CPU counts too
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = 0
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc))
            time.sleep(interval)
    wall = time.perf_counter() - t0
    _common.reap_orphans(before)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {proc.returncode}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_tree_rss_mb": peak / _common.MB}


def count_outputs(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.rglob(pattern)) if folder.is_dir() else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser, default_repeats=3)
    parser.add_argument("--shape", default="1024,256,256", help="camera volume Z,Y,X (default %(default)s)")
    parser.add_argument("--timepoints", type=int, default=1)
    parser.add_argument("--original-version", default="0.5.2", help="isoview release on PyPI (default %(default)s)")
    parser.add_argument("--original-python", default=None, help="Python >= 3.12.7 for the original port")
    parser.add_argument("--original-workers", default="1,2",
                        help="the original's `workers` (processes over cameras), one row each (default %(default)s)")
    parser.add_argument("--run-args", default="",
                        help="extra arguments for `isoview-dask run`, e.g. '--workers 2' (default: none)")
    args = parser.parse_args(argv)
    repeats = _common.resolve_repeats(args)
    shape = (256, 256, 256) if args.quick else tuple(int(v) for v in args.shape.split(","))
    name = "original-quick" if args.quick else "original"
    args.workdir.mkdir(parents=True, exist_ok=True)
    original = original_environment(args.workdir, args.original_version, args.original_python)
    driver = args.workdir / "original_driver.py"
    driver.write_text(ORIGINAL_DRIVER)
    root = generate(args.workdir, shape, args.timepoints, seed=5)
    raw, flat = root / "raw", root / "raw_flat"
    nbytes = sum(p.stat().st_size for p in raw.rglob("*.stack"))
    for path in sorted(root.rglob("*.stack")):
        _common.warm_file(path)

    ours_out = root / "isoview-dask-out"
    original_outputs = [root / "raw_flat.corrected", root / "raw_flat.fused", root / "raw_flat.raw.projections",
                        root / "isoview_config.json"]
    configs = [("isoview-dask run", [sys.executable, "-m", "isoview_dask", "run", str(raw), "--out", str(ours_out),
                                     *args.run_args.split()], [ours_out])]
    for w in [int(v) for v in args.original_workers.split(",") if v.strip()]:
        configs.append((f"isoview {args.original_version}, workers={w}",
                        [str(original), str(driver), str(flat), str(w)], original_outputs))
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in configs}
    outputs: dict[str, dict] = {}
    for r in range(repeats):
        for index, (label, command, cleanup) in enumerate(configs):
            for path in cleanup:
                _common.remove(path)
            print(f"[{r + 1}/{repeats}] {label} ...", file=sys.stderr, flush=True)
            result = timed_command(command, args.workdir / f"{name}-{index}.log")
            runs[label].append(result)
            print(f"  {result['wall_s']:.1f} s, {result['cpu_s']:.1f} CPU-s", file=sys.stderr, flush=True)
            if label.startswith("isoview-dask"):
                outputs[label] = {"corrected": count_outputs(ours_out, "*_CHN??.zarr"),
                                  "fused": count_outputs(ours_out, "*.fusedStack.zarr")}
            else:
                outputs[label] = {"corrected": count_outputs(root / "raw_flat.corrected", "*_CH??.ome.zarr"),
                                  "fused": count_outputs(root / "raw_flat.fused", "*.ome.zarr")}

    rows = []
    for label, _, _ in configs:
        walls = [x["wall_s"] for x in runs[label]]
        wall = _common.median(walls)
        cpu = _common.median([x["cpu_s"] for x in runs[label]])
        rows.append({"tool": label, "wall_s": wall, "walls": ", ".join(f"{w:.1f}" for w in walls),
                     "mb_per_s": nbytes / _common.MB / wall, "cpu_s": cpu,
                     "cpu_s_per_gb": cpu / (nbytes / 1e9),
                     "peak_tree_rss_mb": max(x["peak_tree_rss_mb"] for x in runs[label]),
                     **outputs[label], "runs": runs[label]})
    ours = rows[0]["wall_s"]
    for row in rows:
        row["speedup"] = row["wall_s"] / ours
    columns = [("tool", "tool"), ("wall_s", "wall s (median)"), ("walls", "every run, s"), ("mb_per_s", "MB/s raw"),
               ("cpu_s", "CPU-s"), ("cpu_s_per_gb", "CPU-s/GB"), ("peak_tree_rss_mb", "peak RSS MB (all processes)"),
               ("corrected", "corrected views"), ("fused", "fused pairs"),
               ("speedup", "isoview-dask run is x faster")]
    table = _common.markdown_table(rows, columns)
    machine = _common.machine_info()
    _common.write_json(args.results / f"{name}.json", {
        "benchmark": "original", "machine": machine, "settings": {k: str(v) for k, v in vars(args).items()},
        "input_mb": nbytes / _common.MB, "shape": shape, "timepoints": args.timepoints, "rows": rows})
    notes = [f"{args.timepoints} timepoint(s) x 4 cameras x {'x'.join(map(str, shape))}, "
             f"{nbytes / _common.MB:.0f} MB of raw uint16, in the page cache; every tool starts from an empty output.",
             "Wall and CPU are of the whole command (interpreter, imports, cluster start and stop included); "
             "CPU-s is user + system of the process tree. The last column is the median wall of the row over "
             "that of `isoview-dask run`.",
             f"{repeats} repeat(s), the tools alternating within each; machine: {machine['cpu_usable']} usable "
             f"cores, load average at the end {machine['loadavg']}."]
    return _common.publish(args.results / f"{name}.md", "Against the original port", table, notes)


if __name__ == "__main__":
    sys.exit(main())
