"""Isotropic four-view reconstruction: VW90 registered onto VW00 in 3-D and both deconvolved into one volume.

Pure functions of numpy / dask arrays (no paths, no clusters), wired to files
by :mod:`isoview_dask.pipeline.isotropic`:

* :mod:`.geometry` - output grid, orientations, transform conventions;
* :mod:`.registration` - orientation search, translation, fine rigid/affine fit;
* :mod:`.psf` - Gaussian or measured PSFs warped into the output frame;
* :mod:`.resample` - a view on (a block of) the output grid, reading only what it needs;
* :mod:`.deconvolution` - view weights, multi-view Richardson-Lucy, content-weighted average (one block);
* :mod:`.reconstruct` - the blockwise dask graph;
* :mod:`.quality` - correlation and bead FWHM;
* :mod:`.backend` - numpy or CuPy.
"""

from .geometry import (ORIENTATIONS, IsotropicGrid, displacement_rms, orientation_matrix, orientation_transform,
                       output_grid, rotation_angle_deg)
from .psf import PSFModel, load_psf, view_psfs
from .quality import bead_fwhm, correlation, find_beads
from .reconstruct import METHODS, ReconstructionOptions, reconstruct, task_memory_bytes
from .registration import ViewRegistration, register_views
from .resample import resample_view

__all__ = [
    "METHODS",
    "ORIENTATIONS",
    "IsotropicGrid",
    "PSFModel",
    "ReconstructionOptions",
    "ViewRegistration",
    "bead_fwhm",
    "correlation",
    "displacement_rms",
    "find_beads",
    "load_psf",
    "orientation_matrix",
    "orientation_transform",
    "output_grid",
    "reconstruct",
    "register_views",
    "resample_view",
    "rotation_angle_deg",
    "task_memory_bytes",
    "view_psfs",
]
