"""TIFF volumes via tifffile: lazy plane-group reads, streaming writes.

A (Z, Y, X) volume is a multi-page TIFF, one page per plane. Reading is lazy:
each dask task opens the file read-only and decodes only its pages. Writing
streams plane groups from a dask array into the file (BigTIFF automatically
when the data approach the 4 GB limit of classic TIFF), so memory is bounded
by one chunk; the file appears under its final name only when complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import dask.array as da
import numpy as np
import tifffile

from ..errors import InputNotFoundError, IsoviewError
from .atomic import atomic_output
from .chunking import plane_chunks

#: Classic TIFF stores offsets in 32 bits; switch to BigTIFF well before 4 GiB.
BIGTIFF_THRESHOLD = 2**32 - 2**25


class TiffFormatError(IsoviewError, ValueError):
    """A TIFF file cannot be read as a (Z, Y, X) volume."""


def _volume_shape(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, pages = tuple(series.shape), np.dtype(series.dtype), len(series.pages)
    except (tifffile.TiffFileError, ValueError, IndexError) as exc:
        raise TiffFormatError(f"{path}: not a readable TIFF ({exc})") from exc
    return shape, dtype, pages


class _TiffPlanes:
    """Array-like view of a multi-page TIFF that decodes only the pages asked for."""

    def __init__(self, path: Path, shape: tuple[int, int, int], dtype: np.dtype):
        self.path, self.shape, self.dtype, self.ndim = str(path), shape, dtype, 3

    def __getitem__(self, key):
        zkey, rest = key[0], key[1:]
        planes = range(*zkey.indices(self.shape[0]))
        with tifffile.TiffFile(self.path) as tif:
            pages = tif.series[0].pages
            data = np.stack([pages[i].asarray() for i in planes]) if len(planes) else \
                np.empty((0,) + self.shape[1:], self.dtype)
        return data[(slice(None),) + tuple(rest)]


def open_tiff(path: str | os.PathLike, chunks: Sequence[int] | None = None) -> da.Array:
    """Open a TIFF lazily as a dask array.

    Parameters
    ----------
    path : path
        A single-page 2-D image (returned as (Y, X), read in one task) or a
        multi-page stack (returned as (Z, Y, X), chunked by whole planes).
    chunks : tuple, optional
        Dask chunk shape; default about 64 MiB of whole planes.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: TIFF file does not exist")
    shape, dtype, pages = _volume_shape(path)
    if len(shape) == 2 or pages <= 1:
        return da.from_delayed(_read_whole(path), shape=shape, dtype=dtype)
    if len(shape) != 3 or pages != shape[0]:
        # Hyperstacks with extra axes, or one page holding several planes: read whole.
        arr = da.from_delayed(_read_whole(path), shape=shape, dtype=dtype)
        return arr.reshape((-1,) + shape[-2:]) if len(shape) > 3 else arr
    chunks = tuple(chunks) if chunks is not None else plane_chunks(shape, dtype.itemsize)
    return da.from_array(_TiffPlanes(path, shape, dtype), chunks=chunks, asarray=False,
                         meta=np.empty((0, 0, 0), dtype=dtype), inline_array=True,
                         name=f"tiff-{_token(path)}")


def _token(path: Path) -> str:
    from dask.base import tokenize
    st = path.stat()
    return tokenize(str(path.resolve()), st.st_size, st.st_mtime_ns)


def _read_whole(path: Path):
    import dask
    return dask.delayed(tifffile.imread)(str(path))


def read_tiff(path: str | os.PathLike) -> np.ndarray:
    """Read a whole TIFF into memory (small images: dark frames, projections)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: TIFF file does not exist")
    try:
        return tifffile.imread(path)
    except (tifffile.TiffFileError, ValueError) as exc:
        raise TiffFormatError(f"{path}: not a readable TIFF ({exc})") from exc


def _planes(arr: da.Array) -> Iterator[np.ndarray]:
    for start in range(0, arr.shape[0], arr.chunks[0][0]):
        block = np.asarray(arr[start:start + arr.chunks[0][0]].compute())
        yield from block


def write_tiff(array, path: str | os.PathLike, *, voxel_size_zyx: Sequence[float] | None = None,
               overwrite: bool = False, compression: str | None = None, bigtiff: bool | None = None,
               pixel_size_um: Sequence[float] | None = None) -> Path:
    """Write a 2-D (Y, X) or 3-D (Z, Y, X) array as TIFF, atomically.

    Parameters
    ----------
    array : numpy or dask array
        The image; a dask volume is computed one chunk of planes at a time.
    path : path
        Destination; must not exist unless ``overwrite``.
    voxel_size_zyx : (z, y, x) in µm, optional
        Stored as ImageJ-style resolution and spacing.
    compression : str, optional
        tifffile compression name (e.g. ``"zlib"``); default uncompressed.
    bigtiff : bool, optional
        Force BigTIFF; default automatic for data over ~4 GB.
    pixel_size_um : (row, column) in µm, optional
        Of a 2-D image (a projection: xz has the z step down its rows and
        the x pixel across): written as an ImageJ TIFF whose resolution tags
        and ``unit=um`` give Fiji, napari and others its physical aspect.
        Taken only for the types ImageJ reads (uint8, uint16, float32);
        others keep the resolution tags alone.
    """
    arr = da.asarray(array) if not isinstance(array, np.ndarray) else array
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: TIFF writer takes (Y, X) or (Z, Y, X), got shape {arr.shape}")
    nbytes = int(np.prod(arr.shape)) * np.dtype(arr.dtype).itemsize
    big = bigtiff if bigtiff is not None else nbytes >= BIGTIFF_THRESHOLD
    kwargs = {}
    imagej = False
    if pixel_size_um is not None:
        if arr.ndim != 2:
            raise ValueError(f"{path}: pixel_size_um is for 2-D images; give a volume voxel_size_zyx")
        rows, columns = (float(v) for v in pixel_size_um)
        kwargs["resolution"] = (1.0 / columns, 1.0 / rows)
        imagej = np.dtype(arr.dtype) in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
        kwargs["metadata"] = {"axes": "YX", "unit": "um"}
        if not imagej:
            kwargs["resolutionunit"] = "MICROMETER"
    elif voxel_size_zyx is not None:
        dz, dy, dx = (float(v) for v in voxel_size_zyx)
        kwargs["resolution"] = (1.0 / dx, 1.0 / dy)
        kwargs["resolutionunit"] = "MICROMETER" if hasattr(tifffile, "RESUNIT") else None
        kwargs["metadata"] = {"axes": "ZYX" if arr.ndim == 3 else "YX", "spacing": dz, "unit": "um"}
    else:
        kwargs["metadata"] = {"axes": "ZYX" if arr.ndim == 3 else "YX"}
    if kwargs.get("resolutionunit") is None:
        kwargs.pop("resolutionunit", None)
    with atomic_output(path, overwrite) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=big, imagej=imagej) as writer:
            if isinstance(arr, np.ndarray) or arr.ndim == 2:
                writer.write(np.asarray(arr), compression=compression, **kwargs)
            else:
                arr = arr.rechunk({1: -1, 2: -1})
                writer.write(_planes(arr), shape=arr.shape, dtype=arr.dtype, compression=compression, **kwargs)
    return Path(path)
