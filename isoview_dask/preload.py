"""What every worker of a local cluster imports as it starts, and how it gets there cheaply.

A worker process otherwise imports the pipeline (zarr, scipy, scikit-image,
OpenCV, numba: about 1 s on the 2-core test machine) and matplotlib for the
diagnostic figures (about 0.4 s) when its first job arrives. Two things make
that cheap:

- **A fork server.** Local workers are forked from one server process
  (:data:`FORKSERVER_MODULES` imported there once, see
  :func:`isoview_dask.cluster.start_client`) instead of each starting a new
  interpreter that imports everything again: about 1.5 CPU-s less per run
  with two workers.
- **A preload.** Named as distributed's ``preload``, this module's
  :func:`dask_setup` runs while each worker starts: it imports whatever the
  fork server did not (a spawned worker: everything) and applies the
  allocator settings the nanny put in the worker's environment
  (:func:`apply_malloc_environment`), which a forked process, whose allocator
  started in the server, would otherwise not see.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os

log = logging.getLogger(__name__)

#: Modules a job needs, imported by :func:`import_modules`; optional ones may be missing.
MODULES = ("isoview_dask.pipeline",)
OPTIONAL_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_agg")
#: What the fork server of a local cluster imports once for all its workers.
FORKSERVER_MODULES = ("distributed", "isoview_dask.preload", *MODULES, *OPTIONAL_MODULES, "isoview_dask.warmup")
#: glibc ``mallopt`` parameters set from the environment variables of the same meaning (malloc.h).
MALLOPT_PARAMETERS = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_TOP_PAD_": -2, "MALLOC_MMAP_THRESHOLD_": -3,
                      "MALLOC_MMAP_MAX_": -4, "MALLOC_ARENA_MAX": -8}
#: What :func:`dask_setup` applied in this (worker) process: {variable: value}.
applied_malloc: dict[str, int] = {}


def import_modules(optional: bool = True) -> None:
    """Import :data:`MODULES` and, with ``optional``, whichever of :data:`OPTIONAL_MODULES` are installed."""
    for name in MODULES:
        importlib.import_module(name)
    for name in OPTIONAL_MODULES if optional else ():
        try:
            importlib.import_module(name)
        except ImportError:  # matplotlib is the optional ``plot`` extra
            pass


def apply_malloc_environment(environ=None) -> dict[str, int]:
    """Set glibc's allocator parameters from ``MALLOC_*`` variables of ``environ`` (default ``os.environ``).

    glibc reads these variables once, when a process starts; a worker forked
    from a server inherits the server's allocator instead. Calling
    ``mallopt`` with the same values makes the settings hold either way.

    Returns
    -------
    dict
        The variables applied (name: value); empty where there is no glibc.
    """
    environ = os.environ if environ is None else environ
    wanted = {name: int(environ[name]) for name in MALLOPT_PARAMETERS if str(environ.get(name, "")).isdigit()}
    if not wanted:
        return {}
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc's soname; find_library would run ldconfig
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): the variables did what they could
        return {}
    applied = {}
    for name, value in wanted.items():
        if mallopt(ctypes.c_int(MALLOPT_PARAMETERS[name]), ctypes.c_int(value)) == 1:
            applied[name] = value
        else:
            log.warning("mallopt refused %s=%d", name, value)
    return applied


#: glibc's own values of the parameters :func:`settle_malloc_environment` resets (bytes).
GLIBC_DEFAULTS = {"MALLOC_TRIM_THRESHOLD_": 128 * 1024, "MALLOC_MMAP_THRESHOLD_": 128 * 1024}


def settle_malloc_environment(intended: dict) -> dict[str, int]:
    """Make this worker's allocator what its nanny asked for (``intended``: the pre-spawn environment).

    A worker forked from a fork server started for other settings (a
    process's earlier cluster with larger workers) inherited that server's
    ``MALLOC_*`` variables and allocator: those the nanny did not ask for go
    back to glibc's defaults, and those it asked for are set.

    Returns
    -------
    dict
        The values applied with ``mallopt`` (name: value).
    """
    intended = {str(k): str(v) for k, v in (intended or {}).items()}
    reset = {}
    for name in MALLOPT_PARAMETERS:
        if name in intended:
            os.environ[name] = intended[name]
        elif os.environ.pop(name, None) is not None and name in GLIBC_DEFAULTS:
            reset[name] = str(GLIBC_DEFAULTS[name])
    return apply_malloc_environment({**reset, **{k: v for k, v in os.environ.items() if k in MALLOPT_PARAMETERS}})


def dask_setup(worker) -> None:
    """distributed's preload hook, called once in each worker process as it starts."""
    import dask

    applied_malloc.update(settle_malloc_environment(dask.config.get("distributed.nanny.pre-spawn-environ", {})))
    import_modules()


def warm_up() -> None:
    """Do once what every worker's first job would otherwise pay for: numba's start-up and the loading
    of the compiled kernels (about 0.25 CPU-s), and matplotlib's font loading (a first text drawn).

    Called in the fork server of a local cluster (:mod:`isoview_dask.warmup`), so its forks start warm.
    """
    try:
        _warm_up()
    except Exception as error:  # a warm-up is an optimisation: the workers still start without it
        log.warning("warm-up of the worker processes failed (%s); continuing without it", error)


def _warm_up() -> None:
    import numpy as np

    from .correct.singlepass import correct_block
    from .io.histogram import value_counts

    value_counts(np.zeros(4, np.uint16))
    value_counts(np.zeros(4, np.uint8))
    correct_block(np.zeros((1, 4, 4), np.uint16), 0, factor=4)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # the optional ``plot`` extra
        return
    figure = Figure(figsize=(1, 1), dpi=10)
    canvas = FigureCanvasAgg(figure)
    figure.text(0.5, 0.5, "warm")
    canvas.draw()
