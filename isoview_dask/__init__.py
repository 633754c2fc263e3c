"""isoview-dask: out-of-core processing of IsoView / SiMView light-sheet recordings.

Volumes are lazy dask arrays in (Z, Y, X) order throughout.
"""

__version__ = "0.1.0"

import warnings as _warnings

# bzip2 in zarr v3 comes from numcodecs; zarr warns on every open that other
# implementations may lack it. We choose it knowingly (KLB parity), so hush it.
_warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")
