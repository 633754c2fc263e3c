"""isoview-dask: out-of-core processing of IsoView / SiMView light-sheet recordings.

Volumes are lazy dask arrays in (Z, Y, X) order throughout.
"""

__version__ = "0.1.0"
