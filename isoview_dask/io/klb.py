"""KLB (Keller Lab Block) files: header parsing, lazy block-wise reading, writing.

A KLB file stores a 5-D image (t, c, z, y, x) cut into a regular grid of
blocks, each compressed on its own (bzip2, zlib or stored raw) and located by a
table of end offsets in the header; that makes it possible to decode any part
of a volume without touching the rest. :func:`open_klb` exposes a file as a
lazy :class:`dask.array.Array` whose chunks are groups of whole blocks, each
task reading only the byte ranges of its own blocks and decoding them with the
standard library (which releases the GIL); :func:`read_klb` loads a whole file
into memory; :func:`write_klb` writes atomically either through ``pyklb``
(in-memory arrays) or with a streaming writer that compresses blocks in
parallel dask tasks and never holds the whole volume in memory. Volumes are
returned in (Z, Y, X) order, or (T, C, Z, Y, X) when the file has several time
points or channels; ``matlab_orientation=True`` swaps Y and X for files made by
the MATLAB pipeline, which stored its (rows, columns, z) arrays unchanged.
"""

from __future__ import annotations

import bz2
import logging
import math
import os
import shutil
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np

from ..errors import CodecError, InputNotFoundError, KLBFormatError
from .atomic import atomic_output

if TYPE_CHECKING:
    import dask.array

log = logging.getLogger(__name__)

__all__ = [
    "KLBHeader",
    "KLBBlockLocation",
    "read_klb_header",
    "open_klb",
    "read_klb",
    "write_klb",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_BLOCK_SHAPE_ZYX",
]

#: Data type codes of the KLB header.
_DTYPE_BY_CODE: dict[int, np.dtype] = {
    code: np.dtype(name).newbyteorder("<")
    for code, name in enumerate(
        ["u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f4", "f8"]
    )
}
_CODE_BY_DTYPE: dict[str, int] = {dt.str: code for code, dt in _DTYPE_BY_CODE.items()}

#: Compression codes of the KLB header.
_COMPRESSION_BY_CODE = {0: "none", 1: "bzip2", 2: "zlib"}
_CODE_BY_COMPRESSION = {name: code for code, name in _COMPRESSION_BY_CODE.items()}

_METADATA_BYTES = 256
# Fixed part of the current header (version 2): version, xyzct, pixel size,
# data type, compression, metadata, block size.
_FIXED_V2 = struct.Struct("<B5I5fBB256s5I")
# Fixed part of the header of files written before February 2015: the same
# without the version byte and without the metadata.
_FIXED_OLD = struct.Struct("<5I5fBB5I")
assert _FIXED_V2.size == 319 and _FIXED_OLD.size == 62

#: Target size of one dask chunk of :func:`open_klb` (and of the streaming
#: writer's tasks), bytes.
DEFAULT_CHUNK_BYTES = 64 * 2**20

#: Block shape written by default, (z, y, x) voxels (the KLB library default
#: for 16-bit images: 96 x 96 x 8 in its x, y, z order).
DEFAULT_BLOCK_SHAPE_ZYX = (8, 96, 96)

# Arrays smaller than this go through pyklb when engine="auto".
_AUTO_PYKLB_MAX_BYTES = 2**30

_BZ2_LEVEL = 1  # the KLB library uses 100 kB bzip2 blocks too
_ZLIB_LEVEL = 6


class KLBBlockLocation(NamedTuple):
    """Where one block of a KLB file lives on disk and in the image.

    Attributes
    ----------
    index : int
        Block number (x-block fastest, then y, z, c, t).
    start, stop : int
        Byte range of the block's stored (possibly compressed) bytes, absolute
        offsets in the file; ``stop`` is exclusive.
    slices_tczyx : tuple of slice
        The voxels the block holds, in (t, c, z, y, x) order; border blocks are
        cropped to the image.
    """

    index: int
    start: int
    stop: int
    slices_tczyx: tuple[slice, ...]


@dataclass(frozen=True)
class KLBHeader:
    """Parsed header of a KLB file, in (t, c, z, y, x) order throughout.

    The file stores its sizes x first; this class reverses them so they match
    the axis order of the arrays returned by :func:`open_klb`.

    Attributes
    ----------
    shape_tczyx : tuple of int
        Image size: time points, channels, planes, rows, columns.
    block_shape_tczyx : tuple of int
        Size of one block (border blocks are cropped to the image).
    pixel_size_tczyx : tuple of float
        Sampling along each axis as stored: seconds for t, µm for z, y, x
        (the value for c carries no unit).
    dtype : numpy.dtype
        Voxel type (little-endian).
    compression : str
        ``'none'``, ``'bzip2'`` or ``'zlib'``.
    metadata : str
        Free text stored in the header, decoded up to the first NUL byte
        (empty for old-format files).
    block_end_offsets : numpy.ndarray of uint64
        For each block, the offset just past its last byte, counted from the
        end of the header.
    header_size : int
        Bytes before the first block: 319 + 8 x number of blocks (62 + 8 x
        number of blocks for the pre-2015 format).
    version : int or None
        Header version byte (2 for current files), None for the old format.
    """

    shape_tczyx: tuple[int, int, int, int, int]
    block_shape_tczyx: tuple[int, int, int, int, int]
    pixel_size_tczyx: tuple[float, float, float, float, float]
    dtype: np.dtype
    compression: str
    metadata: str
    block_end_offsets: np.ndarray
    header_size: int
    version: int | None

    # The offsets are an array, so equality and hashing are spelled out.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KLBHeader):
            return NotImplemented
        return self._scalars() == other._scalars() and np.array_equal(
            self.block_end_offsets, other.block_end_offsets
        )

    def __hash__(self) -> int:
        return hash((self._scalars(), self.block_end_offsets.tobytes()))

    def _scalars(self) -> tuple:
        return (
            self.shape_tczyx,
            self.block_shape_tczyx,
            self.pixel_size_tczyx,
            self.dtype,
            self.compression,
            self.metadata,
            self.header_size,
            self.version,
        )

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Image size (Z, Y, X) in voxels of one time point and channel."""
        return self.shape_tczyx[2:]  # type: ignore[return-value]

    @property
    def voxel_size_zyx(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in µm, as stored in the file."""
        return self.pixel_size_tczyx[2:]  # type: ignore[return-value]

    @property
    def block_grid_tczyx(self) -> tuple[int, int, int, int, int]:
        """Number of blocks along each of (t, c, z, y, x)."""
        return tuple(  # type: ignore[return-value]
            -(-n // b) for n, b in zip(self.shape_tczyx, self.block_shape_tczyx)
        )

    @property
    def n_blocks(self) -> int:
        """Total number of blocks in the file."""
        return math.prod(self.block_grid_tczyx)

    @property
    def data_size(self) -> int:
        """Bytes of block data following the header."""
        return int(self.block_end_offsets[-1]) if self.n_blocks else 0

    def block_location(self, index: int) -> KLBBlockLocation:
        """Byte range and voxel region of one block.

        Parameters
        ----------
        index : int
            Block number, 0 <= index < :attr:`n_blocks` (x-block fastest, then
            y, z, c, t).

        Returns
        -------
        KLBBlockLocation
            ``(index, start, stop, slices_tczyx)``: absolute byte offsets of the
            block in the file (``stop`` exclusive) and the (t, c, z, y, x)
            slices of the image it covers.
        """
        index = int(index)
        if not 0 <= index < self.n_blocks:
            raise IndexError(f"block {index} out of range: the file has {self.n_blocks} blocks")
        coords = np.unravel_index(index, self.block_grid_tczyx)
        slices = tuple(
            slice(int(g) * b, min((int(g) + 1) * b, n))
            for g, b, n in zip(coords, self.block_shape_tczyx, self.shape_tczyx)
        )
        start = int(self.block_end_offsets[index - 1]) if index else 0
        stop = int(self.block_end_offsets[index])
        return KLBBlockLocation(index, self.header_size + start, self.header_size + stop, slices)


# --------------------------------------------------------------------------
# Header
# --------------------------------------------------------------------------


def _parse_fixed(raw: bytes, old: bool) -> tuple[dict[str, Any], str | None]:
    """Decode the fixed part of a header; return fields and a problem or None."""
    if old:
        vals = _FIXED_OLD.unpack_from(raw)
        version = None
        xyzct, pix, dcode, ccode, meta, bxyzct = (
            vals[0:5], vals[5:10], vals[10], vals[11], b"", vals[12:17])
    else:
        vals = _FIXED_V2.unpack_from(raw)
        version = vals[0]
        xyzct, pix, dcode, ccode, meta, bxyzct = (
            vals[1:6], vals[6:11], vals[11], vals[12], vals[13], vals[14:19])
    fields = dict(
        shape_tczyx=tuple(int(v) for v in reversed(xyzct)),
        block_shape_tczyx=tuple(int(v) for v in reversed(bxyzct)),
        # shortest decimal that round-trips the stored float32 (0.4, not 0.4000000059604645)
        pixel_size_tczyx=tuple(float(str(np.float32(v))) for v in reversed(pix)),
        version=version,
        metadata=meta.split(b"\0", 1)[0].decode("utf-8", errors="replace"),
    )
    if dcode not in _DTYPE_BY_CODE:
        return fields, f"unknown data type code {dcode} (expected 0-9)"
    if ccode not in _COMPRESSION_BY_CODE:
        return fields, f"unknown compression code {ccode} (expected 0 none, 1 bzip2, 2 zlib)"
    if 0 in fields["shape_tczyx"]:
        return fields, f"image size (t, c, z, y, x) = {fields['shape_tczyx']} has a zero"
    if 0 in fields["block_shape_tczyx"]:
        return fields, f"block size (t, c, z, y, x) = {fields['block_shape_tczyx']} has a zero"
    fields["dtype"] = _DTYPE_BY_CODE[dcode]
    fields["compression"] = _COMPRESSION_BY_CODE[ccode]
    return fields, None


def _header_candidate(fd: int, file_size: int, old: bool) -> tuple[KLBHeader | None, str, bool]:
    """Try one header layout; return (header or None, problem, exact-size match)."""
    fixed = _FIXED_OLD if old else _FIXED_V2
    if file_size < fixed.size:
        return None, (
            f"file is {file_size} bytes long, shorter than a KLB header ({fixed.size} bytes)"
        ), False
    raw = os.pread(fd, fixed.size, 0)
    fields, problem = _parse_fixed(raw, old)
    if problem:
        return None, problem, False
    grid = [-(-n // b) for n, b in zip(fields["shape_tczyx"], fields["block_shape_tczyx"])]
    n_blocks = math.prod(grid)
    header_size = fixed.size + 8 * n_blocks
    if header_size > file_size:
        return None, (
            f"header announces {n_blocks} blocks, i.e. a {header_size}-byte header, "
            f"but the file is only {file_size} bytes long (truncated?)"
        ), False
    table = os.pread(fd, 8 * n_blocks, fixed.size)
    offsets = np.frombuffer(table, dtype="<u8").astype(np.uint64)
    offsets.setflags(write=False)
    if offsets[0] == 0 or (n_blocks > 1 and not bool(np.all(offsets[1:] > offsets[:-1]))):
        bad = 0 if offsets[0] == 0 else int(np.argmin(offsets[1:] > offsets[:-1])) + 1
        return None, f"block offset table is not strictly increasing (at block {bad})", False
    end = header_size + int(offsets[-1])
    if end > file_size:
        return None, (
            f"block data runs to byte {end}, past the end of the file "
            f"({file_size} bytes; truncated?)"
        ), False
    header = KLBHeader(block_end_offsets=offsets, header_size=header_size, **fields)
    return header, "", end == file_size


def read_klb_header(path: str | os.PathLike) -> KLBHeader:
    """Read and validate the header of a KLB file.

    Both the current header (version byte and 256 bytes of metadata) and the
    pre-2015 header without them are recognised; the layout whose block table
    exactly accounts for the file size wins.

    Parameters
    ----------
    path : str or path-like
        The ``.klb`` file. It is opened read-only.

    Returns
    -------
    KLBHeader
        Sizes in (t, c, z, y, x) order, voxel type, compression, metadata and
        the block offset table.

    Raises
    ------
    InputNotFoundError
        ``path`` does not exist.
    KLBFormatError
        The file is too short, has an unknown data type or compression code,
        a zero size, or a block offset table that is not increasing or points
        past the end of the file. The message names the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f"{path}: KLB file not found")
    if not path.is_file():
        raise KLBFormatError(f"{path}: not a regular file")
    fd = os.open(path, os.O_RDONLY)
    try:
        file_size = os.fstat(fd).st_size
        new, new_problem, new_exact = _header_candidate(fd, file_size, old=False)
        if new is not None and new_exact:
            return new
        old, _, old_exact = _header_candidate(fd, file_size, old=True)
    finally:
        os.close(fd)
    if old is not None and old_exact:
        log.debug("%s: pre-2015 KLB header (no version byte, no metadata)", path)
        return old
    if new is not None:  # consistent, with bytes after the last block
        log.warning("%s: %d trailing bytes after the last KLB block are ignored",
                    path, file_size - new.header_size - new.data_size)
        return new
    if old is not None and new_problem.startswith("file is"):
        return old
    raise KLBFormatError(f"{path}: not a valid KLB file: {new_problem}")


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def _decoder(compression: str):
    if compression == "bzip2":
        return bz2.decompress
    if compression == "zlib":
        return zlib.decompress
    return bytes


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.pread(fd, n - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _block_indices(header: KLBHeader, region: Sequence[slice]) -> np.ndarray:
    """Sorted indices of the blocks intersecting a (t, c, z, y, x) region."""
    ranges = [
        np.arange(s.start // b, -(-s.stop // b))
        for s, b in zip(region, header.block_shape_tczyx)
    ]
    mesh = np.meshgrid(*ranges, indexing="ij")
    return np.ravel_multi_index(mesh, header.block_grid_tczyx).ravel()


def _read_region(
    path: str,
    header: KLBHeader,
    region: Sequence[slice],
    num_threads: int = 1,
) -> np.ndarray:
    """Decode the (t, c, z, y, x) region (slices with step 1) into a new array."""
    out = np.empty(tuple(s.stop - s.start for s in region), dtype=header.dtype)
    if out.size == 0:
        return out
    indices = _block_indices(header, region)
    # Consecutive block numbers are stored back to back: read each run at once.
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    runs = np.split(indices, breaks)
    if num_threads > 1:  # cut long runs so that the threads share the work
        runs = [piece for run in runs for piece in np.array_split(run, -(-len(run) // 64))]
    decode = _decoder(header.compression)
    offsets = header.block_end_offsets
    itemsize = header.dtype.itemsize
    fd = os.open(path, os.O_RDONLY)

    def do_run(run: np.ndarray) -> None:
        first, last = int(run[0]), int(run[-1])
        run_start = int(offsets[first - 1]) if first else 0
        run_stop = int(offsets[last])
        data = _pread_exact(fd, run_stop - run_start, header.header_size + run_start)
        view = memoryview(data)
        for index in run:
            loc = header.block_location(index)
            base = header.header_size + run_start
            a, b = loc.start - base, loc.stop - base
            if b > len(data):
                raise KLBFormatError(
                    f"{path}: block {loc.index} (bytes {loc.start}-{loc.stop}) lies past the "
                    f"end of the file (file shrank or is truncated)"
                )
            bshape = tuple(s.stop - s.start for s in loc.slices_tczyx)
            expected = math.prod(bshape) * itemsize
            try:
                raw = decode(view[a:b])
            except (OSError, EOFError, ValueError, zlib.error) as exc:
                raise KLBFormatError(
                    f"{path}: block {loc.index} (bytes {loc.start}-{loc.stop}, "
                    f"{header.compression}) does not decode: {exc}"
                ) from exc
            if len(raw) != expected:
                raise KLBFormatError(
                    f"{path}: block {loc.index} (bytes {loc.start}-{loc.stop}) decodes to "
                    f"{len(raw)} bytes, expected {expected} for a {bshape} block of {header.dtype}"
                )
            block = np.frombuffer(raw, dtype=header.dtype).reshape(bshape)
            src, dst = [], []
            for s, r in zip(loc.slices_tczyx, region):
                lo, hi = max(s.start, r.start), min(s.stop, r.stop)
                src.append(slice(lo - s.start, hi - s.start))
                dst.append(slice(lo - r.start, hi - r.start))
            out[tuple(dst)] = block[tuple(src)]

    try:
        if num_threads > 1 and len(runs) > 1:
            with ThreadPoolExecutor(num_threads) as pool:
                for _ in pool.map(do_run, runs):
                    pass
        else:
            for run in runs:
                do_run(run)
    finally:
        os.close(fd)
    return out


class _KLBLazyArray:
    """Array-like view of a KLB file in (t, c, z, y, x) order, decoded on indexing.

    Holds only the path and the header, so it pickles cheaply for distributed
    workers; every ``__getitem__`` opens the file read-only and decodes just
    the blocks it needs.
    """

    def __init__(self, path: str, header: KLBHeader):
        self.path = path
        self.header = header
        self.shape = header.shape_tczyx
        self.dtype = header.dtype
        self.ndim = 5

    def __repr__(self) -> str:
        return f"_KLBLazyArray({self.path!r}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim:
            raise IndexError(f"too many indices for a {self.ndim}-D KLB array")
        region, post = [], []
        for k, n in zip(key, self.shape):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step == 1:
                    region.append(slice(start, max(start, stop)))
                    post.append(slice(None))
                else:
                    idx = range(start, stop, step)
                    if len(idx) == 0:
                        region.append(slice(0, 0))
                        post.append(slice(None))
                    else:
                        # Read the covering range, then subsample it.
                        lo, hi = min(idx[0], idx[-1]), max(idx[0], idx[-1]) + 1
                        region.append(slice(lo, hi))
                        post.append(slice(idx[0] - lo, None, step))
            elif isinstance(k, (int, np.integer)):
                i = int(k) + n if int(k) < 0 else int(k)
                if not 0 <= i < n:
                    raise IndexError(f"index {k} out of range for an axis of size {n}")
                region.append(slice(i, i + 1))
                post.append(0)
            else:
                raise TypeError(f"unsupported index {k!r} for a KLB array (use ints and slices)")
        out = _read_region(self.path, self.header, region)
        return out[tuple(post)]


def _as_zyx_triplet(value: Any, what: str) -> tuple:
    if value is None or isinstance(value, (int, np.integer)):
        return (value, value, value)
    value = tuple(value)
    if len(value) != 3:
        raise ValueError(f"{what} must be one value or three values (z, y, x), got {value!r}")
    return value


def _default_blocks_per_chunk(
    shape_tczyx: Sequence[int], block_tczyx: Sequence[int], itemsize: int, target_bytes: int
) -> tuple[int, int, int]:
    """Blocks per chunk along (z, y, x) giving chunks of at most ~target_bytes.

    Prefers whole planes (one block thick in z, or several z-blocks when the
    planes are small), then whole rows of blocks, then runs of blocks along x:
    consecutive blocks are contiguous on disk, so such a chunk is read with a
    single system call.
    """
    _, _, gz, gy, gx = (-(-n // b) for n, b in zip(shape_tczyx, block_tczyx))
    bt, bc, bz, by, bx = (min(b, n) for b, n in zip(block_tczyx, shape_tczyx))
    _, _, _, ny, nx = shape_tczyx
    item = itemsize * bt * bc
    slab = bz * ny * nx * item  # one block thick in z, the whole plane
    if slab <= target_bytes:
        return max(1, min(gz, target_bytes // slab)), gy, gx
    row = bz * by * nx * item  # one block thick in z and y, all of x
    if row <= target_bytes:
        return 1, max(1, min(gy, target_bytes // row)), gx
    return 1, 1, max(1, min(gx, target_bytes // (bz * by * bx * item)))


def open_klb(
    path: str | os.PathLike,
    blocks_per_chunk: int | Sequence[int | None] | None = None,
    squeeze: bool = True,
    matlab_orientation: bool = False,
) -> dask.array.Array:
    """Open a KLB file as a lazy dask array, decoded block by block.

    Only the header is read now. Each dask chunk is a group of whole KLB
    blocks; its task opens the file read-only, reads just the byte ranges of
    those blocks and decompresses them (bzip2/zlib from the standard library,
    which release the GIL, so the threaded scheduler decodes in parallel). The
    tasks hold only the path and the header, so the graph is small, builds
    quickly and pickles for distributed workers (which must see the same
    path).

    Parameters
    ----------
    path : str or path-like
        The ``.klb`` file; never modified.
    blocks_per_chunk : int or sequence of 3 (int or None), optional
        Number of KLB blocks per dask chunk along (z, y, x) of the returned
        array; one int applies to all three axes, None means all blocks along
        that axis. Along t and c a chunk always holds one block. By default
        chunks take one block in z and the whole plane, or several z-blocks
        for small planes, or fewer rows of blocks for very large planes, so
        that a chunk is at most about 64 MiB (:data:`DEFAULT_CHUNK_BYTES`).
    squeeze : bool
        Return (Z, Y, X) when the file has a single time point and channel.
    matlab_orientation : bool
        Swap Y and X, for files written by the MATLAB pipeline, whose in-plane
        axes are transposed relative to the raw ``.stack`` files.

    Returns
    -------
    dask.array.Array
        Shape (Z, Y, X) if ``squeeze`` and t == c == 1, else (T, C, Z, Y, X);
        dtype of the file. A block that fails to decode raises
        :class:`~isoview_dask.errors.KLBFormatError` (naming the file and the
        block) when computed.

    Raises
    ------
    InputNotFoundError, KLBFormatError
        As :func:`read_klb_header`.
    """
    import dask.array as da
    from dask.base import tokenize

    path = Path(path)
    header = read_klb_header(path)
    bpc = _as_zyx_triplet(blocks_per_chunk, "blocks_per_chunk")
    if matlab_orientation:
        bpc = (bpc[0], bpc[2], bpc[1])
    default = _default_blocks_per_chunk(
        header.shape_tczyx, header.block_shape_tczyx, header.dtype.itemsize, DEFAULT_CHUNK_BYTES
    )
    grid = header.block_grid_tczyx[2:]
    per_axis = []
    for k, d, g in zip(bpc, default, grid):
        if blocks_per_chunk is None:
            k = d
        elif k is None or k == -1:
            k = g
        elif int(k) < 1:
            raise ValueError(f"blocks_per_chunk must be positive, got {blocks_per_chunk!r}")
        per_axis.append(int(k))
    chunks = tuple(
        min(n, b * k)
        for n, b, k in zip(header.shape_tczyx, header.block_shape_tczyx, (1, 1, *per_axis))
    )
    st = path.stat()
    name = "open_klb-" + tokenize(str(path.resolve()), st.st_mtime_ns, st.st_size, chunks)
    lazy = _KLBLazyArray(str(path), header)
    arr = da.from_array(
        lazy,
        chunks=chunks,
        name=name,
        lock=False,
        asarray=False,
        fancy=False,
        meta=np.empty((0,) * 5, dtype=header.dtype),
    )
    if matlab_orientation:
        arr = arr.swapaxes(-1, -2)
    if squeeze and header.shape_tczyx[:2] == (1, 1):
        arr = arr[0, 0]
    return arr


def read_klb(
    path: str | os.PathLike,
    squeeze: bool = True,
    matlab_orientation: bool = False,
    num_threads: int | None = None,
) -> np.ndarray:
    """Read a whole KLB file into memory.

    Parameters
    ----------
    path : str or path-like
        The ``.klb`` file; never modified.
    squeeze : bool
        Return (Z, Y, X) when the file has a single time point and channel.
    matlab_orientation : bool
        Swap Y and X (files written by the MATLAB pipeline).
    num_threads : int, optional
        Threads decoding blocks in parallel; default: number of CPUs.

    Returns
    -------
    numpy.ndarray
        (Z, Y, X) or (T, C, Z, Y, X) voxels, dtype of the file.
    """
    path = Path(path)
    header = read_klb_header(path)
    region = [slice(0, n) for n in header.shape_tczyx]
    out = _read_region(str(path), header, region, num_threads=num_threads or os.cpu_count() or 1)
    if matlab_orientation:
        out = np.ascontiguousarray(out.swapaxes(-1, -2))
    if squeeze and header.shape_tczyx[:2] == (1, 1):
        out = out[0, 0]
    return out


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _pack_header(
    shape_tczyx: Sequence[int],
    block_tczyx: Sequence[int],
    pixel_tczyx: Sequence[float],
    dtype: np.dtype,
    compression: str,
    metadata: bytes,
    end_offsets: np.ndarray,
) -> bytes:
    fixed = _FIXED_V2.pack(
        2,
        *[int(v) for v in reversed(shape_tczyx)],
        *[float(v) for v in reversed(pixel_tczyx)],
        _CODE_BY_DTYPE[np.dtype(dtype).newbyteorder("<").str],
        _CODE_BY_COMPRESSION[compression],
        metadata.ljust(_METADATA_BYTES, b"\0"),
        *[int(v) for v in reversed(block_tczyx)],
    )
    return fixed + np.asarray(end_offsets, dtype="<u8").tobytes()


def _compress_block(data: np.ndarray, compression: str) -> bytes | memoryview:
    flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if compression == "bzip2":
        return bz2.compress(flat, _BZ2_LEVEL)
    if compression == "zlib":
        return zlib.compress(flat, _ZLIB_LEVEL)
    return memoryview(flat)


def _compress_chunk(
    chunk: np.ndarray,
    block_info: dict | None = None,
    *,
    shape_tczyx: tuple[int, ...],
    block_tczyx: tuple[int, ...],
    compression: str,
    pieces_dir: str,
) -> np.ndarray:
    """Compress the blocks of one chunk into a piece file (dask task).

    Returns a 5-D object array of one element holding (piece file, block
    indices, compressed sizes), blocks in increasing index order.
    """
    loc = block_info[0]["array-location"]
    chunk_id = "_".join(str(i) for i in block_info[0]["chunk-location"])
    grid = [-(-n // b) for n, b in zip(shape_tczyx, block_tczyx)]
    ranges = [range(lo // b, -(-hi // b)) for (lo, hi), b in zip(loc, block_tczyx)]
    piece = os.path.join(pieces_dir, f"{chunk_id}.bin")
    indices, sizes = [], []
    with open(piece, "wb") as f:
        for coords in np.ndindex(*(len(r) for r in ranges)):
            g = [r[i] for r, i in zip(ranges, coords)]
            sl = tuple(
                slice(gi * b - lo, min((gi + 1) * b, n) - lo)
                for gi, b, n, (lo, _) in zip(g, block_tczyx, shape_tczyx, loc)
            )
            data = _compress_block(chunk[sl], compression)
            f.write(data)
            indices.append(int(np.ravel_multi_index(g, grid)))
            sizes.append(len(data) if not isinstance(data, memoryview) else data.nbytes)
    out = np.empty((1,) * 5, dtype=object)
    out[(0,) * 5] = (piece, np.asarray(indices, np.int64), np.asarray(sizes, np.int64))
    return out


def _aligned_chunks(chunks: tuple[int, ...], n: int, b: int) -> tuple[int, ...]:
    """Chunk sizes close to ``chunks`` whose boundaries fall on block edges."""
    bounds = np.cumsum((0,) + tuple(chunks))
    snapped = {0, n}
    snapped.update(min(n, int(round(x / b)) * b) for x in bounds)
    edges = sorted(snapped)
    return tuple(int(e1 - e0) for e0, e1 in zip(edges[:-1], edges[1:]) if e1 > e0)


def _write_streaming(
    arr,
    tmp: Path,
    block_tczyx: tuple[int, ...],
    pixel_tczyx: tuple[float, ...],
    compression: str,
    metadata: bytes,
) -> None:
    """The dask engine: compress blocks in parallel tasks, then assemble."""
    import dask
    import dask.array as da

    shape = tuple(int(n) for n in arr.shape)
    dtype = arr.dtype
    if not isinstance(arr, da.Array):
        k = _default_blocks_per_chunk(shape, block_tczyx, dtype.itemsize, DEFAULT_CHUNK_BYTES)
        arr = da.from_array(arr, chunks=tuple(
            min(n, b * kk) for n, b, kk in zip(shape, block_tczyx, (1, 1, *k))))
    arr = arr.rechunk(
        tuple(_aligned_chunks(c, n, b) for c, n, b in zip(arr.chunks, shape, block_tczyx))
    )
    pieces_dir = tmp.with_name(tmp.name + ".blocks")
    pieces_dir.mkdir()
    try:
        results = da.map_blocks(
            _compress_chunk,
            arr,
            dtype=object,
            chunks=tuple((1,) * len(c) for c in arr.chunks),
            meta=np.empty((0,) * 5, dtype=object),
            shape_tczyx=shape,
            block_tczyx=block_tczyx,
            compression=compression,
            pieces_dir=str(pieces_dir),
            name="klb-compress-" + dask.base.tokenize(arr.name, block_tczyx, compression, str(tmp)),
        ).compute()
        files, indices, sizes, piece_offsets = [], [], [], []
        for piece, idx, sz in results.ravel():
            files.append(piece)
            indices.append(idx)
            sizes.append(sz)
            piece_offsets.append(np.concatenate([[0], np.cumsum(sz)[:-1]]))
        file_of = np.concatenate([np.full(len(idx), i) for i, idx in enumerate(indices)])
        indices = np.concatenate(indices)
        sizes = np.concatenate(sizes)
        piece_offsets = np.concatenate(piece_offsets)
        order = np.argsort(indices, kind="stable")
        n_blocks = math.prod(-(-n // b) for n, b in zip(shape, block_tczyx))
        if not np.array_equal(indices[order], np.arange(n_blocks)):
            raise RuntimeError(f"{tmp}: internal error, blocks missing or duplicated")
        end_offsets = np.cumsum(sizes[order]).astype(np.uint64)
        header = _pack_header(shape, block_tczyx, pixel_tczyx, dtype, compression, metadata,
                              end_offsets)
        # Copy the pieces in block order, merging contiguous stretches of a file.
        fo, po, sz = file_of[order], piece_offsets[order], sizes[order]
        brk = np.flatnonzero((fo[1:] != fo[:-1]) | (po[1:] != po[:-1] + sz[:-1])) + 1
        starts = np.concatenate([[0], brk])
        stops = np.concatenate([brk, [len(fo)]])
        open_fds: dict[int, int] = {}
        try:
            with open(tmp, "wb") as out:
                out.write(header)
                for a, b in zip(starts, stops):
                    f = int(fo[a])
                    if f not in open_fds:
                        if len(open_fds) >= 64:
                            os.close(open_fds.pop(next(iter(open_fds))))
                        open_fds[f] = os.open(files[f], os.O_RDONLY)
                    pos, remaining = int(po[a]), int(sz[a:b].sum())
                    while remaining:
                        data = os.pread(open_fds[f], min(remaining, 16 * 2**20), pos)
                        if not data:
                            raise RuntimeError(f"{tmp}: internal error, piece {files[f]} is short")
                        out.write(data)
                        pos += len(data)
                        remaining -= len(data)
        finally:
            for fd in open_fds.values():
                os.close(fd)
    finally:
        shutil.rmtree(pieces_dir, ignore_errors=True)


def _write_pyklb(
    arr: np.ndarray,
    tmp: Path,
    block_tczyx: tuple[int, ...],
    pixel_tczyx: tuple[float, ...],
    compression: str,
    metadata: bytes,
) -> None:
    import pyklb

    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    pyklb.writefull(
        arr,
        str(tmp),
        numthreads=os.cpu_count() or 1,
        pixelspacing_tczyx=[float(v) for v in pixel_tczyx],
        blocksize_xyzct=np.array(block_tczyx[::-1], dtype=np.uint32),
        compression=compression,
    )
    if metadata:  # pyklb leaves the metadata field empty: fill it in place
        with open(tmp, "r+b") as f:
            f.seek(1 + 20 + 20 + 2)
            f.write(metadata.ljust(_METADATA_BYTES, b"\0"))


def write_klb(
    array,
    path: str | os.PathLike,
    voxel_size_zyx: Sequence[float] = (1.0, 1.0, 1.0),
    block_shape_zyx: Sequence[int] = DEFAULT_BLOCK_SHAPE_ZYX,
    compression: str = "bzip2",
    overwrite: bool = False,
    engine: str = "auto",
    metadata: str | None = None,
    matlab_orientation: bool = False,
) -> Path:
    """Write a volume to a KLB file, atomically.

    The file appears under its final name only once complete (see
    :func:`~isoview_dask.io.atomic.atomic_output`).

    Parameters
    ----------
    array : numpy.ndarray or dask.array.Array
        Voxels in (Z, Y, X) or (T, C, Z, Y, X) order; dtype one of uint8-64,
        int8-64, float32, float64.
    path : str or path-like
        Output ``.klb`` file.
    voxel_size_zyx : sequence of 3 float
        Voxel size (z, y, x) in µm stored in the header (t and c get 1).
    block_shape_zyx : sequence of 3 int
        Block size (z, y, x) in voxels; the default (8, 96, 96) is the KLB
        library's choice for 16-bit data. Border blocks are cropped.
    compression : {'bzip2', 'zlib', 'none'}
        Per-block compression.
    overwrite : bool
        Replace an existing file; otherwise an existing ``path`` raises
        :class:`~isoview_dask.errors.OutputExistsError` and is left untouched.
    engine : {'auto', 'pyklb', 'dask'}
        ``'pyklb'`` writes with ``pyklb.writefull`` (the whole array in
        memory, dask arrays are computed first). ``'dask'`` streams: blocks
        are compressed in parallel dask tasks (on the current scheduler; with
        distributed, workers must share the output's file system) into
        temporary piece files next to the output, which are then concatenated
        in block order behind the header, so memory stays bounded by a few
        chunks. ``'auto'`` uses pyklb for numpy arrays and arrays under 1 GiB,
        the dask engine otherwise.
    metadata : str, optional
        Free text (at most 255 bytes of UTF-8) stored in the header.
    matlab_orientation : bool
        Swap Y and X before writing (and the y/x entries of ``voxel_size_zyx``
        and ``block_shape_zyx``), producing files laid out like the MATLAB
        pipeline's.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    CodecError
        Unknown compression name.
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    import dask.array as da

    path = Path(path)
    comp = str(compression).lower()
    if comp not in _CODE_BY_COMPRESSION:
        raise CodecError(
            f"{path}: unknown KLB compression {compression!r}; expected 'bzip2', 'zlib' or 'none'"
        )
    if engine not in ("auto", "pyklb", "dask"):
        raise ValueError(
            f"{path}: unknown KLB engine {engine!r}; expected 'auto', 'pyklb' or 'dask'"
        )
    if not isinstance(array, (np.ndarray, da.Array)):
        array = np.asarray(array)
    if array.ndim == 3:
        array = array[None, None]
    elif array.ndim != 5:
        raise ValueError(
            f"{path}: expected a (Z, Y, X) or (T, C, Z, Y, X) array, got shape {array.shape}"
        )
    dtype = np.dtype(array.dtype)
    if dtype.newbyteorder("<").str not in _CODE_BY_DTYPE:
        raise TypeError(f"{path}: KLB cannot store voxels of type {dtype}")
    if 0 in array.shape:
        raise ValueError(f"{path}: cannot write an empty array of shape {array.shape}")
    voxel = tuple(float(v) for v in voxel_size_zyx)
    block = tuple(int(v) for v in block_shape_zyx)
    if len(voxel) != 3 or len(block) != 3 or min(block) < 1:
        raise ValueError(
            f"{path}: voxel_size_zyx and block_shape_zyx need three entries, blocks positive; "
            f"got {voxel_size_zyx!r}, {block_shape_zyx!r}"
        )
    if matlab_orientation:
        array = array.swapaxes(-1, -2)
        voxel = (voxel[0], voxel[2], voxel[1])
        block = (block[0], block[2], block[1])
    meta = (metadata or "").encode("utf-8")
    if len(meta) >= _METADATA_BYTES:
        raise ValueError(f"{path}: metadata is {len(meta)} bytes; KLB holds at most 255")
    le = dtype.newbyteorder("<")
    if dtype != le and dtype.itemsize > 1:
        array = array.astype(le)
    if engine == "auto":
        small = array.nbytes < _AUTO_PYKLB_MAX_BYTES
        engine = "pyklb" if isinstance(array, np.ndarray) or small else "dask"
    block_tczyx = (1, 1, *block)
    pixel_tczyx = (1.0, 1.0, *voxel)
    with atomic_output(path, overwrite) as tmp:
        if engine == "pyklb":
            if isinstance(array, da.Array):
                array = array.compute()
            _write_pyklb(np.asarray(array), tmp, block_tczyx, pixel_tczyx, comp, meta)
        else:
            _write_streaming(array, tmp, block_tczyx, pixel_tczyx, comp, meta)
    return path
