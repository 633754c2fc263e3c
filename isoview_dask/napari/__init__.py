"""napari plugin: open a processed recording as one coherent set of layers.

Installed with the ``[napari]`` extra (``pip install "isoview-dask[napari]"``),
napari finds the reader through the npe2 manifest ``napari.yaml`` of this
package. ``napari OUT``, drag and drop, or
``viewer.open(OUT, plugin="isoview-dask")`` then accept an output root, an
``SPM##`` folder, a ``TM######`` folder or one output volume.

The layer data are built by :func:`read_layers`, which does not import
napari, so it can be used (and tested) without it.
"""

from ._reader import camera_affine_px, find_volumes, get_reader, read_layers

__all__ = ["camera_affine_px", "find_volumes", "get_reader", "read_layers"]
