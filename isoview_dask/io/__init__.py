"""Lazy readers and atomic writers, one module per file format.

:func:`open_volume` and :func:`write_volume` dispatch on the file suffix
(``.stack``, ``.klb``, ``.tif``/``.tiff``, ``.zarr``); every reader returns
a dask array in (Z, Y, X) order and reads nothing before compute.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import InputNotFoundError, IsoviewError

if TYPE_CHECKING:
    import dask.array as da

FORMATS = ("zarr", "klb", "tif", "stack")


class UnknownFormatError(IsoviewError, ValueError):
    """A path whose suffix names no supported volume format."""


def volume_format(path: str | os.PathLike) -> str:
    """The format name of a volume path from its suffix.

    A path without one inside a ``.zarr`` store (a label image,
    ``<image>.zarr/labels/<name>``) is zarr.
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix and any(parent.suffix.lower() == ".zarr" for parent in Path(path).parents):
        return "zarr"
    fmt = {"tiff": "tif"}.get(suffix, suffix)
    if fmt not in FORMATS:
        raise UnknownFormatError(f"{path}: unknown volume format {suffix!r}; expected one of {', '.join(FORMATS)}")
    return fmt


def volume_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """Shape (Z, Y, X) of a self-describing volume file (KLB, TIFF, zarr) without reading its data."""
    fmt = volume_format(path)
    if fmt == "klb":
        from .klb import read_klb_header
        return tuple(read_klb_header(path).shape_zyx)
    return tuple(open_volume(path).shape)


def open_volume(path: str | os.PathLike, *, frame_shape: Sequence[int] | None = None,
                expected_planes: int | None = None, chunks: Sequence[int] | None = None,
                planes: int | None = None, allow_truncated: bool = False) -> da.Array:
    """Open any supported volume lazily as a dask array (Z, Y, X).

    Parameters
    ----------
    path : path
        ``.stack`` (needs ``frame_shape``), ``.klb``, ``.tif``/``.tiff`` or ``.zarr``.
    frame_shape : (Y, X), optional
        Frame size of a headerless ``.stack``.
    expected_planes : int, optional
        Depth declared by the XML, checked for ``.stack`` files.
    chunks : (Z, Y, X), optional
        Dask chunks (for KLB, chunks are whole block groups chosen by the reader;
        for zarr also ``"stored"``, see :func:`~isoview_dask.io.zarr.open_zarr`).
    planes : int, optional
        Planes per chunk for ``.stack``.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: volume does not exist")
    fmt = volume_format(path)
    if fmt == "stack":
        if frame_shape is None:
            raise ValueError(f"{path}: a .stack has no header; give frame_shape=(Y, X) (from its XML)")
        from .stack import open_stack
        return open_stack(path, frame_shape, planes=planes, chunks=chunks, expected_planes=expected_planes,
                          allow_truncated=allow_truncated)
    if fmt == "klb":
        from .klb import open_klb
        return open_klb(path)
    if fmt == "tif":
        from .tiff import open_tiff
        return open_tiff(path, chunks=chunks)
    from .zarr import open_zarr
    return open_zarr(path, chunks=chunks)


def write_volume(array, path: str | os.PathLike, *, voxel_size_zyx: Sequence[float] | None = None,
                 overwrite: bool = False, codec: str | None = None, level: int | None = None,
                 chunks: Sequence[int] | None = None, shards: Sequence[int] | None = None,
                 pyramid_levels: int = 0, name: str | None = None, label: str | None = None,
                 color: str | None = None) -> Path:
    """Write a (Z, Y, X) volume in the format named by the path's suffix, atomically.

    ``codec``/``level``/``chunks``/``shards``/``pyramid_levels`` apply to zarr;
    ``codec`` may be ``bzip2``, ``zlib`` or ``none`` for KLB. So do ``name``
    (the multiscale's name, default the file stem), ``label`` and ``color``
    (the ``omero`` channel, whose display window zarr computes while writing;
    see :func:`~isoview_dask.io.zarr.write_zarr`).
    """
    fmt = volume_format(path)
    if fmt == "zarr":
        from .zarr import write_zarr
        return write_zarr(array, path, codec=codec or "blosc-zstd", level=level, chunks=chunks, shards=shards,
                          voxel_size_zyx=voxel_size_zyx, pyramid_levels=pyramid_levels, overwrite=overwrite,
                          name=Path(path).stem if name is None else name, label=label, color=color)
    if fmt == "klb":
        from .klb import write_klb
        return write_klb(array, path, voxel_size_zyx=voxel_size_zyx or (1.0, 1.0, 1.0),
                         compression=codec or "bzip2", overwrite=overwrite)
    if fmt == "tif":
        from .tiff import write_tiff
        return write_tiff(array, path, voxel_size_zyx=voxel_size_zyx, overwrite=overwrite)
    from .stack import write_stack
    return write_stack(array, path, overwrite=overwrite)
