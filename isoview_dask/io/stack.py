"""Raw ``.stack`` files: headerless little-endian uint16, C order (Z, Y, X).

The frame size (Y, X) comes from the acquisition XML; the depth is the file
size divided by the plane size. A file that is not a whole number of planes
is a truncated acquisition: it is refused unless the caller explicitly asks
to use the whole planes only. Reading is lazy: each dask task memory-maps the
file read-only and copies out its planes, so nothing is read before compute
and only a task's own planes are ever touched.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import InputNotFoundError, StackSizeError
from .atomic import atomic_output
from .chunking import plane_chunks

if TYPE_CHECKING:  # dask.array is imported where used: checking a file's size needs none of it
    import dask.array as da

log = logging.getLogger(__name__)

STACK_DTYPE = np.dtype("<u2")


def stack_depth(path: str | os.PathLike, frame_shape: Sequence[int], *, expected_planes: int | None = None,
                allow_truncated: bool = False) -> int:
    """Number of planes in a ``.stack`` file, after checking its size.

    Parameters
    ----------
    path : path
        The ``.stack`` file.
    frame_shape : (Y, X)
        Plane shape in pixels, from the XML.
    expected_planes : int, optional
        Depth declared by the XML; a file with fewer whole planes is
        truncated, one with more does not belong to this XML.
    allow_truncated : bool
        Use the whole planes of a truncated file (with a warning) instead of
        raising.

    Raises
    ------
    InputNotFoundError, StackSizeError
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: stack file does not exist")
    height, width = (int(v) for v in frame_shape)
    plane_bytes = height * width * STACK_DTYPE.itemsize
    size = path.stat().st_size
    planes, rest = divmod(size, plane_bytes)
    problem = None
    if size == 0:
        raise StackSizeError(f"{path}: file is empty")
    if rest:
        problem = (f"{path}: {size} bytes is not a whole number of {height}x{width} uint16 planes "
                   f"({planes} planes + {rest} bytes): truncated acquisition or wrong frame size")
    elif expected_planes is not None and planes < expected_planes:
        problem = f"{path}: has {planes} planes but its XML declares {expected_planes}: truncated acquisition"
    if expected_planes is not None and planes > expected_planes:
        raise StackSizeError(
            f"{path}: has {planes} whole planes of {height}x{width} but its XML declares {expected_planes}; "
            "the XML does not describe this file")
    if problem:
        if not allow_truncated or planes == 0:
            raise StackSizeError(problem + ("" if planes == 0 else "; pass allow_truncated=True to use the whole planes only"))
        log.warning("%s; using the %d whole planes", problem, planes)
    return int(planes)


class _StackPlanes:
    """Array-like view of a ``.stack`` file that memory-maps on each access.

    Pickles as a path and a shape, so a dask graph of it is small and every
    worker opens the file itself, read-only.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int]):
        self.path = str(path)
        self.shape = shape
        self.dtype = STACK_DTYPE
        self.ndim = 3

    def __getitem__(self, key):
        window = self._window(key)
        if window is not None:
            return self._read_window(*window)
        mm = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape)
        try:
            return np.array(mm[key], dtype=self.dtype.newbyteorder("="))
        finally:
            del mm

    def _window(self, key):
        """(z0, z1, y0, y1, x0, x1) for a key of three step-1 slices (what dask asks for), else None."""
        if not (isinstance(key, tuple) and len(key) == 3 and all(isinstance(k, slice) for k in key)):
            return None
        if self.dtype != self.dtype.newbyteorder("="):  # big-endian host: let numpy swap bytes
            return None
        bounds = []
        for k, n in zip(key, self.shape):
            start, stop, step = k.indices(n)
            if step != 1 or stop <= start:
                return None
            bounds += [start, stop]
        return bounds

    def _read_window(self, z0, z1, y0, y1, x0, x1) -> np.ndarray:
        """Read a (z, y, x) window with ``os.preadv``: each plane's band of rows in one call.

        A band of full-width rows is one contiguous range of the file; it is
        read straight into the output when the window spans the frame's
        width, else into a scratch band whose columns are copied out. Much
        faster than faulting the pages of a memory map in one at a time.
        """
        height, width = self.shape[1:]
        itemsize = self.dtype.itemsize
        out = np.empty((z1 - z0, y1 - y0, x1 - x0), dtype=self.dtype.newbyteorder("="))
        full_width = x0 == 0 and x1 == width
        band = None if full_width else np.empty((y1 - y0, width), dtype=out.dtype)
        nbytes = (y1 - y0) * width * itemsize
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, z in enumerate(range(z0, z1)):
                target = out[i] if full_width else band
                offset = ((z * height) + y0) * width * itemsize
                got = os.preadv(fd, [memoryview(target).cast("B")], offset)
                if got != nbytes:
                    raise OSError(f"{self.path}: short read at plane {z} ({got} of {nbytes} bytes): "
                                  "the file changed size while being read")
                if not full_width:
                    out[i] = band[:, x0:x1]
        finally:
            os.close(fd)
        return out


def open_stack(path: str | os.PathLike, frame_shape: Sequence[int], *, planes: int | None = None,
               chunks: Sequence[int] | None = None, expected_planes: int | None = None,
               allow_truncated: bool = False) -> da.Array:
    """Open a ``.stack`` file lazily as a dask array (Z, Y, X) of uint16.

    Parameters
    ----------
    path : path
        The ``.stack`` file (never modified).
    frame_shape : (Y, X)
        Plane shape in pixels (from the XML).
    planes : int, optional
        Planes per dask chunk; default about 64 MiB per chunk.
    chunks : (Z, Y, X), optional
        Explicit chunk shape, overriding ``planes``.
    expected_planes, allow_truncated
        See :func:`stack_depth`.

    Returns
    -------
    dask.array.Array
        Shape (Z, Y, X), dtype uint16, chunked by planes.
    """
    path = Path(path)
    depth = stack_depth(path, frame_shape, expected_planes=expected_planes, allow_truncated=allow_truncated)
    shape = (depth, int(frame_shape[0]), int(frame_shape[1]))
    chunks = tuple(chunks) if chunks is not None else plane_chunks(shape, STACK_DTYPE.itemsize, planes)
    source = _StackPlanes(path, shape)
    import dask.array as da
    return da.from_array(source, chunks=chunks, name=f"stack-{_token(path)}", asarray=False,
                         meta=np.empty((0, 0, 0), dtype=np.uint16), inline_array=True)


def _token(path: Path) -> str:
    st = path.stat()
    from dask.base import tokenize
    return tokenize(str(path.resolve()), st.st_size, st.st_mtime_ns)


def write_stack(array, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a (Z, Y, X) uint16 volume as a headerless ``.stack`` file, atomically.

    Parameters
    ----------
    array : numpy or dask array, (Z, Y, X) uint16
        Written plane-chunk by plane-chunk; memory is bounded by one chunk.
    path : path
        Destination; must not exist unless ``overwrite``.
    """
    if array.ndim != 3 or np.dtype(array.dtype) != np.uint16:
        raise ValueError(f"{path}: a .stack holds a 3-D uint16 volume, got {array.ndim}-D {array.dtype}")
    import dask.array as da
    arr = da.asarray(array)
    arr = arr.rechunk({1: -1, 2: -1})
    with atomic_output(path, overwrite) as tmp:
        out = np.memmap(tmp, dtype=STACK_DTYPE, mode="w+", shape=arr.shape)
        del out
        target = _MemmapTarget(tmp, arr.shape)
        da.store(arr, target, lock=False)
    return Path(path)


class _MemmapTarget:
    """``da.store`` target writing into a memory-mapped file, opened per task."""

    def __init__(self, path: Path, shape):
        self.path, self.shape = str(path), tuple(shape)

    def __setitem__(self, key, value):
        mm = np.memmap(self.path, dtype=STACK_DTYPE, mode="r+", shape=self.shape)
        mm[key] = value
        mm.flush()
        del mm
