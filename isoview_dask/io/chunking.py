"""The one chunking policy of the package.

Dask chunks of a volume are whole planes (or groups of planes) when read from
raw files, and are rechunked to the output's shard shape before any zarr
write, so that exactly one task writes each shard (two tasks writing into one
shard would silently lose data). Inner zarr chunks stay small for fast
random access; shards stay large for few files.
"""

from __future__ import annotations

import math
from typing import Sequence

#: Target size of one dask chunk when reading raw planes, bytes.
TARGET_CHUNK_BYTES = 64 * 2**20

#: Default inner zarr chunk (Z, Y, X): 1 MiB of uint16, fast random access.
DEFAULT_INNER_CHUNKS = (8, 256, 256)

#: Default zarr shard (Z, Y, X): 64 MiB of uint16, few files per volume.
DEFAULT_SHARDS = (32, 1024, 1024)


def planes_per_chunk(frame_shape: Sequence[int], itemsize: int, target_bytes: int = TARGET_CHUNK_BYTES) -> int:
    """Number of whole planes that fit in ``target_bytes`` (at least one).

    Parameters
    ----------
    frame_shape : (Y, X)
        Plane shape in pixels.
    itemsize : int
        Bytes per voxel.
    """
    plane_bytes = max(1, math.prod(frame_shape) * itemsize)
    return max(1, target_bytes // plane_bytes)


def plane_chunks(shape: Sequence[int], itemsize: int, planes: int | None = None) -> tuple[int, int, int]:
    """Dask chunk shape (Z, Y, X) of whole planes for a raw volume of ``shape``."""
    z, y, x = shape
    planes = planes or planes_per_chunk((y, x), itemsize)
    return (max(1, min(planes, z)), y, x)


def fit_chunks(shape: Sequence[int], inner: Sequence[int] | None, shards: Sequence[int] | None) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Clip inner chunk and shard shapes to a volume and make them compatible.

    Parameters
    ----------
    shape : (Z, Y, X)
        Volume shape.
    inner : (Z, Y, X) or None
        Requested inner chunk shape; None for :data:`DEFAULT_INNER_CHUNKS`.
    shards : (Z, Y, X) or None or ()
        Requested shard shape; None for :data:`DEFAULT_SHARDS`; an empty
        tuple for an unsharded array.

    Returns
    -------
    inner, shards
        Inner chunks no larger than the volume; shards no larger than the
        volume rounded up to whole inner chunks, each a multiple of the inner
        chunk (zarr requires it), or None for unsharded.
    """
    ndim = len(shape)
    inner = tuple(DEFAULT_INNER_CHUNKS[-ndim:] if inner is None else inner)
    if len(inner) != ndim or any(int(c) <= 0 for c in inner):
        raise ValueError(f"inner chunk shape {inner} does not fit a volume of shape {tuple(shape)}")
    inner = tuple(max(1, min(int(c), int(s))) for c, s in zip(inner, shape))
    if shards is not None and len(shards) == 0:
        return inner, None
    shards = tuple(DEFAULT_SHARDS[-ndim:] if shards is None else shards)
    if len(shards) != ndim or any(int(c) <= 0 for c in shards):
        raise ValueError(f"shard shape {shards} does not fit a volume of shape {tuple(shape)}")
    fitted = []
    for c, sh, s in zip(inner, shards, shape):
        whole = math.ceil(s / c) * c
        sh = min(int(sh), whole)
        fitted.append(max(c, (sh // c) * c))
    return inner, tuple(fitted)


def write_chunks(inner: Sequence[int], shards: Sequence[int] | None) -> tuple[int, ...]:
    """Dask chunk shape for writing: one shard per task (or one inner chunk, unsharded)."""
    return tuple(shards) if shards else tuple(inner)
