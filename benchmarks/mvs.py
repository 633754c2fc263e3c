"""multiview-stitcher, run from our side: its own environment and one timed child process.

multiview-stitcher (PyPI ``multiview-stitcher``) registers views with elastix
(through ``itk-elastix``) and fuses them, among other ways, by multi-view
deconvolution. It is the reference our isotropic reconstruction is compared
with. It lives in its own virtual environment, ``<workdir>/venv-mvs``, made
once by :func:`ensure_venv`; :func:`run_mvs` hands it one input and runs
``mvs_runner.py`` (next to this file) under that environment's interpreter,
measuring the child's wall time, CPU time and peak memory the way
``original.py`` measures the original port. Nothing here imports
multiview-stitcher, and the runner never imports ``isoview_dask``.

    import mvs  # with benchmarks/ on sys.path
    python = mvs.ensure_venv(workdir)
    result = mvs.run_mvs({"vw00": ..., "voxel00": ..., ...}, workdir, threads=1)
    result["deconvolved"], result["average"], result["transform"], result["timings"], result["child"]

``benchmarks/mvs_check.py`` runs it on a small synthetic pair with a known
answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import original  # noqa: E402  (timed_command: wall, CPU and peak RSS of a child process tree)

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "mvs_runner.py"

#: The versions installed; bump them together after checking the runner still works.
MVS_VERSION = "0.1.62"
ITK_ELASTIX_VERSION = "0.25.4"
#: multiview-stitcher's ``requires-python``.
MIN_PYTHON = (3, 11)
REQUIREMENTS = (f"multiview-stitcher=={MVS_VERSION}", f"itk-elastix=={ITK_ELASTIX_VERSION}")

#: Input keys :func:`run_mvs` expects (see mvs_runner.py for their meaning).
INPUT_KEYS = ("vw00", "voxel00", "vw90", "voxel90", "initial", "out_voxel", "out_shape", "psf00", "psf90",
              "iterations")
#: Environment variables set to ``threads`` for the child.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def _python_ok(candidate: str | os.PathLike) -> bool:
    probe = subprocess.run([str(candidate), "-c", f"import sys, venv; sys.exit(sys.version_info[:2] < {MIN_PYTHON})"],
                           capture_output=True)
    return probe.returncode == 0


def find_python() -> Path:
    """The project's interpreter when new enough for multiview-stitcher, else a newer one on PATH or in pyenv."""
    candidates = [getattr(sys, "_base_executable", None), sys.executable]
    candidates += [shutil.which(f"python3.{minor}") for minor in (11, 12, 13)]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        candidates += [str(p / "bin" / "python3") for p in sorted(pyenv.iterdir())]
    for candidate in candidates:
        if candidate and Path(candidate).exists() and _python_ok(candidate):
            return Path(candidate)
    raise RuntimeError(f"no Python >= {'.'.join(map(str, MIN_PYTHON))} found for multiview-stitcher")


def ensure_venv(workdir: str | os.PathLike) -> Path:
    """``<workdir>/venv-mvs`` with the pinned multiview-stitcher and itk-elastix (made once); its interpreter.

    An existing environment is reused when both pinned versions import-check
    there; otherwise it is made anew. ``pip freeze`` of the result is written
    to ``<workdir>/venv-mvs/requirements-frozen.txt``.
    """
    venv = Path(workdir) / "venv-mvs"
    interpreter = venv / "bin" / "python"
    check = ("import importlib.metadata as m, sys; "
             f"sys.exit(m.version('multiview-stitcher') != {MVS_VERSION!r} "
             f"or m.version('itk-elastix') != {ITK_ELASTIX_VERSION!r})")
    frozen = venv / "requirements-frozen.txt"
    if interpreter.exists() and subprocess.run([str(interpreter), "-c", check], capture_output=True).returncode == 0:
        if not frozen.exists():
            _freeze(interpreter, frozen)
        return interpreter
    base = find_python()
    print(f"installing {' '.join(REQUIREMENTS)} with {base} into {venv} ...", file=sys.stderr, flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    subprocess.run([str(interpreter), "-m", "pip", "install", "--quiet", *REQUIREMENTS], check=True)
    _freeze(interpreter, frozen)
    return interpreter


def _freeze(interpreter: Path, path: Path) -> None:
    """Record every installed version (``pip freeze``) next to the environment."""
    frozen = subprocess.run([str(interpreter), "-m", "pip", "freeze"], capture_output=True, text=True, check=True)
    path.write_text(frozen.stdout)


def child_environment(threads: int):
    """Thread-count variables for the child (``original.timed_command`` passes this process's environment on)."""
    from isoview_dask.cluster import environment
    return environment({name: str(threads) for name in THREAD_VARIABLES})


def runner_arguments(options: dict[str, Any]) -> list[str]:
    """``{"transform_types": "rigid", "prereg": True}`` -> ``["--transform-types", "rigid", "--prereg"]``."""
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is None or value is False:
            continue
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def run_mvs(inputs: dict[str, Any], workdir: str | os.PathLike, threads: int = 1, name: str = "mvs",
            **options) -> dict[str, Any]:
    """Register and fuse one view pair with multiview-stitcher in its own environment.

    Parameters
    ----------
    inputs : dict
        The keys of :data:`INPUT_KEYS` (see ``mvs_runner.py``).
    workdir : path
        Holds ``venv-mvs`` (made on first use) and ``<name>-input.npz``,
        ``<name>-output.npz/.json`` and ``<name>.log``.
    threads : int
        Threads for dask, ITK/elastix and every BLAS/OpenMP/numba pool in the child.
    **options
        Runner flags, e.g. ``prereg=True``, ``registration_binning=(1, 2, 2)``,
        ``transform_types="rigid"``, ``metric="AdvancedNormalizedCorrelation"``,
        ``no_register=True``, ``chunk=(64, 64, 64)``, ``halo=8``.

    Returns
    -------
    dict
        ``deconvolved``, ``average`` (float32 arrays of ``out_shape``),
        ``transform`` (4x4, µm, the convention of ``inputs["initial"]``),
        ``params_registered``, ``timings`` (per step, wall and CPU seconds and
        the child's peak RSS so far, from inside the child), ``child`` (the whole child process tree:
        ``wall_s``, ``cpu_s`` (user + system), ``peak_tree_rss_mb``),
        ``report`` (the runner's JSON: versions, settings, registration quality).
    """
    import numpy as np

    missing = [k for k in INPUT_KEYS if k not in inputs]
    if missing:
        raise KeyError(f"run_mvs: inputs lack {missing}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    python = ensure_venv(workdir)
    source = workdir / f"{name}-input.npz"
    prefix = workdir / f"{name}-output"
    log = workdir / f"{name}.log"
    np.savez(source, **{k: np.asarray(inputs[k]) for k in INPUT_KEYS})
    out_npz, out_json = Path(f"{prefix}.npz"), Path(f"{prefix}.json")
    for path in (out_npz, out_json):
        _common.remove(path)
    command = [str(python), str(RUNNER), str(source), str(prefix), "--threads", str(threads),
               *runner_arguments(options)]
    with child_environment(threads):
        try:
            child = original.timed_command(command, log)
        except SystemExit as exc:  # timed_command's way of reporting a failed command
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise RuntimeError(f"{exc}\n--- last lines of {log} ---\n{tail}") from None
    child = {k: round(v, 3) for k, v in child.items()}
    report = json.loads(out_json.read_text())
    with np.load(out_npz) as data:
        arrays = {k: data[k] for k in data.files}
    return {**arrays, "timings": report["timings"], "child": child, "report": report, "threads": threads,
            "command": command, "log": str(log)}
