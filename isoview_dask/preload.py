"""What every worker of a local cluster imports as it starts (distributed's ``preload``).

A worker process otherwise imports the pipeline (zarr, scipy, scikit-image,
OpenCV: about 0.6 s on the 2-core test machine) and matplotlib for the
diagnostic figures (about 0.4 s) when its first job arrives, after the
cluster has started: start-up and imports in series. Named as a preload,
this module's :func:`dask_setup` runs while the worker starts, and
:func:`isoview_dask.cluster.start_client` imports the pipeline in the client
process meanwhile, so the two overlap.
"""

from __future__ import annotations

import importlib

#: Modules a job needs, imported by :func:`import_modules`; optional ones may be missing.
MODULES = ("isoview_dask.pipeline",)
OPTIONAL_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_agg")


def import_modules(optional: bool = True) -> None:
    """Import :data:`MODULES` and, with ``optional``, whichever of :data:`OPTIONAL_MODULES` are installed."""
    for name in MODULES:
        importlib.import_module(name)
    for name in OPTIONAL_MODULES if optional else ():
        try:
            importlib.import_module(name)
        except ImportError:  # matplotlib is the optional ``plot`` extra
            pass


def dask_setup(worker) -> None:
    """distributed's preload hook, called once in each worker process as it starts."""
    import_modules()
