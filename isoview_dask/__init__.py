"""isoview-dask: out-of-core processing of IsoView / SiMView light-sheet recordings.

Volumes are lazy dask arrays in (Z, Y, X) order throughout.

The Python API (imported on first use, so ``import isoview_dask`` stays fast)::

    from isoview_dask import ProcessingConfig, process_dataset, fuse, blend_views, temporal, viz

``fuse`` is the subpackage of fusion algorithms (:mod:`isoview_dask.fuse`)
and, when called, :func:`isoview_dask.api.fuse`: ``fuse(config, corrected,
...)`` estimates and fuses; ``fuse.blend``, ``fuse.register_pair``... are
the algorithms.
"""

__version__ = "0.1.0"

import sys as _sys
import types as _types
import warnings as _warnings

# bzip2 in zarr v3 comes from numcodecs; zarr warns on every open that other
# implementations may lack it. We choose it knowingly (KLB parity), so hush it.
_warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")

#: Lazily imported names: name -> (module, attribute or None for the module itself).
_LAZY = {
    "ProcessingConfig": ("isoview_dask.config", "ProcessingConfig"),
    "process_dataset": ("isoview_dask.api", "process_dataset"),
    "IsoviewProcessor": ("isoview_dask.api", "IsoviewProcessor"),
    "isotropic_dataset": ("isoview_dask.pipeline.isotropic", "isotropic_dataset"),
    "blend_views": ("isoview_dask.api", "blend_views"),
    "load_config": ("isoview_dask.api", "load_config"),
    "FusionResult": ("isoview_dask.api", "FusionResult"),
    "rerun": ("isoview_dask.provenance", "rerun"),
    "open_dataset": ("isoview_dask.dataset", "open_dataset"),
    "IsoviewArray": ("isoview_dask.reader", "IsoviewArray"),
    "temporal": ("isoview_dask.temporal", None),
    "viz": ("isoview_dask.viz", None),
    "provenance": ("isoview_dask.provenance", None),
    "api": ("isoview_dask.api", None),
}

__all__ = ["__version__", "fuse", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module_name, attribute = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attribute is None else getattr(module, attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _CallableFusePackage(_types.ModuleType):
    """The ``isoview_dask.fuse`` subpackage, callable as :func:`isoview_dask.api.fuse`."""

    def __call__(self, *args, **kwargs):
        from .api import fuse
        return fuse(*args, **kwargs)


class _Package(_types.ModuleType):
    """This package's module type: ``isoview_dask.fuse`` always resolves to the callable subpackage.

    The import system binds a subpackage to its parent's attribute, so a plain
    function named ``fuse`` here would be replaced by the subpackage as soon
    as anything imports :mod:`isoview_dask.fuse`; instead the subpackage itself
    is made callable.
    """

    @property
    def fuse(self):
        import importlib
        module = importlib.import_module(__name__ + ".fuse")
        if not isinstance(module, _CallableFusePackage):
            module.__class__ = _CallableFusePackage
        return module

    @fuse.setter
    def fuse(self, value):
        pass  # the import system binding the subpackage: the getter returns it anyway


_sys.modules[__name__].__class__ = _Package
