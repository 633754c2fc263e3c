"""Synthetic IsoView recordings with exact ground truth.

The generator writes a complete raw recording (``.stack`` files, ``push_config``
XML, dark frames) in the Keller and/or flat layout, plus the ground truth the
rest of the package is tested against: camera-pair offsets and rotations,
gains, dead pixels, dark frames and, optionally, noise-free volumes.

Arrays are (Z, Y, X) = (plane, row, column) in each camera's raw frame, pixel
centres at integer indices; the specimen lives in physical coordinates
(z, y, x) in µm with the body centre at the origin.

The parts, one module each (their docstrings give the exact conventions):

* :mod:`.specimen` -- the analytic specimen (ellipsoidal body, texture,
  nuclei, fluorescent beads) and :class:`~.specimen.Model`, which renders any plane of any
  camera from a spec;
* :mod:`.optics` -- image formation: detection attenuation, the lateral blur
  and its growth with depth, the axial PSF, and the two illumination sides;
* :mod:`.cameras` -- camera geometry (index-to-specimen affines), the exact
  opposing-camera convention (:func:`register_opposing`, :func:`flip_lr`),
  pair drift, the orientation of cameras 2/3 and the specimen's motion
  between the two views, noise, dead pixels, dark frames and the outlier
  timepoint;
* :mod:`.spec` -- :class:`SyntheticSpec`, what to generate;
* :mod:`.volumes` -- lazy dask volumes (:func:`synthetic_volume`,
  :func:`synthetic_isotropic_volume`), the cameras' affines
  (:func:`camera_affine`) and the VW00 -> VW90 transform of the isotropic
  reconstruction (:func:`isotropic_transform`, with its exact convention);
* :mod:`.layout` -- the recording on disk (:func:`generate_dataset`), the
  ground truth files and reading them back (:func:`load_truth`,
  :class:`SyntheticTruth`).

Reproducibility
---------------
Every random quantity comes from a generator seeded by ``seed`` and what it
is for (the noise of one plane is seeded by (timepoint, camera, plane)), so
the same spec gives identical bytes whatever the slab size, scheduler or
number of workers.
"""

from .cameras import HOT_PIXEL_NOISE, PAIRS, flip_lr, register_opposing
from .layout import CONVENTIONS, TRUTH_VERSION, SyntheticTruth, generate_dataset, load_truth
from .spec import SyntheticSpec
from .specimen import NUCLEUS_TRUNCATE
from .volumes import camera_affine, isotropic_transform, synthetic_isotropic_volume, synthetic_volume

__all__ = [
    "CONVENTIONS",
    "PAIRS",
    "SyntheticSpec",
    "SyntheticTruth",
    "camera_affine",
    "flip_lr",
    "generate_dataset",
    "isotropic_transform",
    "load_truth",
    "register_opposing",
    "synthetic_isotropic_volume",
    "synthetic_volume",
]
