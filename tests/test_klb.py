"""Tests of isoview_dask.io.klb: reference files, round trips, streaming, errors."""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import time
import tracemalloc
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

from isoview_dask.errors import (
    CodecError,
    InputNotFoundError,
    KLBFormatError,
    OutputExistsError,
)
from isoview_dask.io.klb import (
    KLBHeader,
    _KLBLazyArray,
    open_klb,
    read_klb,
    read_klb_header,
    write_klb,
)

pyklb = pytest.importorskip("pyklb")


# ---------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------


def _reference_dir() -> Path:
    shared = os.environ.get("ISOVIEW_SHARED")
    if shared:
        return Path(shared) / "data" / "klb"
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "klb"


@pytest.fixture
def reference():
    """Return a function giving the path of a reference KLB file, or skipping."""

    def get(name: str) -> Path:
        path = _reference_dir() / name
        if not path.is_file():
            pytest.skip(f"reference KLB file {path} not available")
        return path

    return get


def _fingerprint(path: Path) -> tuple[int, int, str]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, hashlib.sha256(path.read_bytes()).hexdigest()


def _random_volume(shape, dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.normal(0, 100, shape).astype(dtype)
    info = np.iinfo(dtype)
    # smooth-ish data with noise, so that compression does something
    base = np.add.outer(np.arange(shape[-2]), np.arange(shape[-1])) % 50
    noise = rng.integers(0, min(int(info.max), 4000), shape)
    return ((noise + base) % (int(info.max) + 1)).astype(dtype)


def _ramp_chunk(block_info=None):
    """A deterministic uint16 chunk computed without big temporaries."""
    loc = block_info[None]["array-location"]
    z = np.arange(*loc[0], dtype=np.uint16)[:, None, None]
    y = np.arange(*loc[1], dtype=np.uint16)[None, :, None]
    x = np.arange(*loc[2], dtype=np.uint16)[None, None, :]
    out = np.empty(tuple(b - a for a, b in loc), dtype=np.uint16)
    np.add(z * np.uint16(7) + y * np.uint16(3), x, out=out)
    out &= 4095
    return out


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------
# reference files written by the Keller-lab C++ library
# ---------------------------------------------------------------------------


def test_reference_img_header_and_values(reference):
    path = reference("img.klb")
    before = _fingerprint(path)
    h = read_klb_header(path)
    assert isinstance(h, KLBHeader)
    assert h.version == 2
    assert h.shape_tczyx == (1, 1, 29, 151, 101)
    assert h.shape_zyx == (29, 151, 101)
    assert h.block_shape_tczyx == (1, 1, 8, 96, 96)
    assert h.dtype == np.uint16
    assert h.compression == "bzip2"
    assert h.metadata.startswith("Testing metadata")
    assert "\0" not in h.metadata
    assert h.voxel_size_zyx == (1.0, 1.0, 1.0)
    assert h.n_blocks == 4 * 2 * 2
    assert h.header_size == 319 + 8 * h.n_blocks
    assert h.block_end_offsets.dtype == np.uint64
    assert h.header_size + int(h.block_end_offsets[-1]) == path.stat().st_size

    arr = open_klb(path)
    assert arr.shape == (29, 151, 101) and arr.dtype == np.uint16
    x = arr.compute()
    assert int(x.min()) == 0 and int(x.max()) == 2300
    assert int(x.sum(dtype=np.uint64)) == 155584373
    assert x[0, 0, 0] == 0 and x[-1, -1, -1] == 497
    ref = pyklb.readfull(str(path))
    np.testing.assert_array_equal(x, ref)
    np.testing.assert_array_equal(read_klb(path), ref)
    # one block per chunk, and lazily sliced
    per_block = open_klb(path, blocks_per_chunk=1)
    assert per_block.npartitions == h.n_blocks
    np.testing.assert_array_equal(per_block.compute(), ref)
    np.testing.assert_array_equal(per_block[3:20:3, 90:, ::-2].compute(), ref[3:20:3, 90:, ::-2])
    assert _fingerprint(path) == before


def test_reference_test_klb_is_5d(reference):
    path = reference("test.klb")
    h = read_klb_header(path)
    assert h.shape_tczyx == (10, 1, 10, 100, 100)
    assert h.dtype == np.uint16 and h.compression == "bzip2"
    arr = open_klb(path)
    assert arr.shape == (10, 1, 10, 100, 100)
    x = arr.compute()
    assert int(x.min()) == 0 and int(x.max()) == 1
    assert int(x.sum(dtype=np.uint64)) == 499708
    assert x.reshape(-1)[0] == 0 and x.reshape(-1)[-1] == 0
    np.testing.assert_array_equal(x, pyklb.readfull(str(path)))
    np.testing.assert_array_equal(read_klb(path), x)
    assert open_klb(path, squeeze=False).shape == (10, 1, 10, 100, 100)


def test_reference_cellimg_sum_with_bounded_memory(reference):
    """Sum a 4.36 GB (decoded) volume block-group by block-group."""
    path = reference("cellimg.klb")
    arr = open_klb(path)
    assert arr.shape == (520, 2048, 2048) and arr.dtype == np.uint16
    assert read_klb_header(path).block_shape_tczyx == (1, 1, 8, 96, 96)
    # default chunks: one block thick in z, whole planes, 64 MiB each
    assert arr.chunksize == (8, 2048, 2048)
    assert int(arr[0, 0, 0].compute()) == 1
    assert int(arr[-1, -1, -1].compute()) == 2048

    volume_bytes = 520 * 2048 * 2048 * 2
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        total, lo, hi = dask.compute(
            arr.sum(dtype="uint64"), arr.min(), arr.max(), scheduler="threads"
        )
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"cellimg.klb sum/min/max: {elapsed:.1f} s, peak traced memory {peak / 2**20:.0f} MiB")
    assert int(total) == 2234473512960
    assert int(lo) == 1 and int(hi) == 2048
    assert peak < 400 * 2**20 < volume_bytes


def test_reference_cellimg_region_matches_pyklb(reference):
    path = reference("cellimg.klb")
    arr = open_klb(path, blocks_per_chunk=(1, 2, 3))
    roi = arr[100:117, 500:700, 1000:1100].compute()
    ref = pyklb.readroi(str(path), [100, 500, 1000], [116, 699, 1099])
    np.testing.assert_array_equal(roi, ref)


def test_header_block_location(reference):
    h = read_klb_header(reference("img.klb"))
    first = h.block_location(0)
    assert first.start == h.header_size
    assert first.stop == h.header_size + int(h.block_end_offsets[0])
    assert first.slices_tczyx == (slice(0, 1),) * 2 + (slice(0, 8), slice(0, 96), slice(0, 96))
    # last block: cropped at the border in z, y and x
    last = h.block_location(h.n_blocks - 1)
    assert last.stop == reference("img.klb").stat().st_size
    assert last.slices_tczyx[2:] == (slice(24, 29), slice(96, 151), slice(96, 101))
    # x-block fastest
    assert h.block_location(1).slices_tczyx[4] == slice(96, 101)
    assert h.block_location(2).slices_tczyx[3] == slice(96, 151)
    with pytest.raises(IndexError):
        h.block_location(h.n_blocks)
    assert h == read_klb_header(reference("img.klb"))
    assert hash(h) == hash(read_klb_header(reference("img.klb")))


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------

CHUNKINGS = [1, (2, 1, 3), None, (1, None, 2)]


@pytest.mark.parametrize("engine", ["pyklb", "dask"])
@pytest.mark.parametrize("compression", ["bzip2", "zlib", "none"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_round_trip(tmp_path, engine, compression, dtype):
    # not a multiple of the block shape: border blocks are cropped
    a = _random_volume((11, 37, 45), dtype)
    path = tmp_path / "v.klb"
    out = write_klb(
        a, path, voxel_size_zyx=(2.5, 0.4, 0.41), block_shape_zyx=(4, 16, 16),
        compression=compression, engine=engine,
    )
    assert out == path and path.is_file()
    assert _leftovers(tmp_path) == []
    h = read_klb_header(path)
    assert h.shape_tczyx == (1, 1, 11, 37, 45)
    assert h.block_shape_tczyx == (1, 1, 4, 16, 16)
    assert h.n_blocks == 3 * 3 * 3
    assert h.dtype == np.dtype(dtype) and h.compression == compression
    assert h.voxel_size_zyx == (2.5, 0.4, 0.41)
    for bpc in CHUNKINGS:
        arr = open_klb(path, blocks_per_chunk=bpc)
        assert arr.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(arr.compute(), a)
    assert open_klb(path, blocks_per_chunk=1).npartitions == 27
    assert open_klb(path, blocks_per_chunk=(2, 1, 3)).chunks == ((8, 3), (16, 16, 5), (45,))
    np.testing.assert_array_equal(read_klb(path), a)
    np.testing.assert_array_equal(pyklb.readfull(str(path)), a)


def test_round_trip_5d_and_default_block(tmp_path):
    a = _random_volume((2, 3, 9, 100, 130), "uint16", seed=3)
    for engine in ("pyklb", "dask"):
        path = tmp_path / f"{engine}.klb"
        write_klb(a, path, engine=engine)
        h = read_klb_header(path)
        assert h.shape_tczyx == a.shape
        assert h.block_shape_tczyx == (1, 1, 8, 96, 96)
        arr = open_klb(path)
        assert arr.shape == a.shape
        np.testing.assert_array_equal(arr.compute(), a)
        np.testing.assert_array_equal(open_klb(path, blocks_per_chunk=1).compute(), a)
        np.testing.assert_array_equal(pyklb.readfull(str(path)), a)


@pytest.mark.parametrize("compression", ["bzip2", "zlib", "none"])
def test_dask_engine_matches_pyklb(tmp_path, compression):
    a = _random_volume((13, 70, 53), "uint16", seed=1)
    # dask input whose chunks do not line up with the blocks
    lazy = da.from_array(a, chunks=(3, 25, 20))
    ours = write_klb(lazy, tmp_path / "ours.klb", voxel_size_zyx=(3.0, 0.5, 0.25),
                     block_shape_zyx=(4, 32, 16), compression=compression, engine="dask",
                     metadata="from the dask engine")
    theirs = tmp_path / "theirs.klb"
    pyklb.writefull(a, str(theirs), pixelspacing_tczyx=[1.0, 1.0, 3.0, 0.5, 0.25],
                    blocksize_xyzct=np.array([16, 32, 4, 1, 1], dtype=np.uint32),
                    compression=compression)
    # ours read by pyklb
    np.testing.assert_array_equal(pyklb.readfull(str(ours)), a)
    h_ours, h_theirs = pyklb.readheader(str(ours)), pyklb.readheader(str(theirs))
    for key in ("imagesize_tczyx", "blocksize_tczyx", "pixelspacing_tczyx"):
        np.testing.assert_array_equal(h_ours[key], h_theirs[key])
    assert h_ours["datatype"] == h_theirs["datatype"]
    assert h_ours["compression"] == h_theirs["compression"] == compression
    meta = h_ours["metadata"].view(np.uint8).tobytes()
    assert meta.startswith(b"from the dask engine\0")
    # pyklb's file read by us
    np.testing.assert_array_equal(open_klb(theirs, blocks_per_chunk=(1, 2, 1)).compute(), a)
    # same headers apart from the metadata, and same block table
    ho, ht = read_klb_header(ours), read_klb_header(theirs)
    assert ho.metadata == "from the dask engine" and ht.metadata == ""
    for field in ("shape_tczyx", "block_shape_tczyx", "pixel_size_tczyx", "dtype",
                  "compression", "header_size", "version"):
        assert getattr(ho, field) == getattr(ht, field)
    np.testing.assert_array_equal(ho.block_end_offsets, ht.block_end_offsets)


def test_metadata_with_pyklb_engine(tmp_path):
    a = _random_volume((3, 20, 20), "uint8")
    path = write_klb(a, tmp_path / "m.klb", engine="pyklb", metadata="µm and more")
    assert read_klb_header(path).metadata == "µm and more"
    np.testing.assert_array_equal(read_klb(path), a)
    with pytest.raises(ValueError, match="m2.klb"):
        write_klb(a, tmp_path / "m2.klb", metadata="x" * 300)


def test_dask_engine_streams_with_bounded_memory(tmp_path):
    """A 192 MiB lazy volume is written without materialising it."""
    arr = da.map_blocks(_ramp_chunk, dtype=np.uint16, chunks=((8,) * 12, (1024,), (1024,)))
    path = tmp_path / "big.klb"
    tracemalloc.start()
    try:
        write_klb(arr, path, compression="zlib", engine="dask")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20 < arr.nbytes
    assert _leftovers(tmp_path) == []
    back = open_klb(path)
    assert bool((back == arr).all().compute())
    # auto picks the streaming engine above 1 GiB only; small dask arrays use pyklb
    small = tmp_path / "small.klb"
    write_klb(arr[:8, :100, :100], small)
    np.testing.assert_array_equal(read_klb(small), arr[:8, :100, :100].compute())


def test_failed_dask_write_leaves_nothing(tmp_path):
    def boom(block_info=None):
        if block_info[None]["chunk-location"][0] == 2:
            raise RuntimeError("simulated failure")
        return np.zeros(block_info[None]["chunk-shape"], dtype=np.uint16)

    arr = da.map_blocks(boom, dtype=np.uint16, chunks=((8,) * 4, (64,), (64,)))
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_klb(arr, tmp_path / "f.klb", engine="dask")
    assert list(tmp_path.iterdir()) == []


def test_matlab_orientation(tmp_path):
    a = _random_volume((5, 30, 17), "uint16", seed=4)
    for engine in ("pyklb", "dask"):
        path = tmp_path / f"matlab_{engine}.klb"
        write_klb(a, path, voxel_size_zyx=(2.0, 0.3, 0.5), block_shape_zyx=(4, 8, 16),
                  matlab_orientation=True, engine=engine)
        # on disk, Y and X are swapped
        h = read_klb_header(path)
        assert h.shape_zyx == (5, 17, 30)
        assert h.voxel_size_zyx == (2.0, 0.5, 0.3)
        assert h.block_shape_tczyx[2:] == (4, 16, 8)
        np.testing.assert_array_equal(pyklb.readfull(str(path)), a.swapaxes(1, 2))
        np.testing.assert_array_equal(open_klb(path).compute(), a.swapaxes(1, 2))
        # and swapped back on read
        back = open_klb(path, matlab_orientation=True, blocks_per_chunk=(1, 2, 1))
        assert back.shape == a.shape
        assert back.chunks[1] == (16, 14)  # blocks_per_chunk in the returned order
        np.testing.assert_array_equal(back.compute(), a)
        np.testing.assert_array_equal(read_klb(path, matlab_orientation=True), a)


def test_old_header_format(tmp_path):
    """Files from before Feb 2015 lack the version byte and the metadata."""
    a = _random_volume((6, 40, 30), "int16", seed=5)
    new = write_klb(a, tmp_path / "new.klb", block_shape_zyx=(4, 16, 16), compression="zlib")
    raw = new.read_bytes()
    old = tmp_path / "old.klb"
    old.write_bytes(raw[1:43] + raw[299:])  # drop version byte and 256 metadata bytes
    h = read_klb_header(old)
    assert h.version is None and h.metadata == ""
    assert h.header_size == 62 + 8 * h.n_blocks
    assert h.shape_zyx == a.shape and h.dtype == np.int16
    np.testing.assert_array_equal(open_klb(old, blocks_per_chunk=1).compute(), a)
    np.testing.assert_array_equal(read_klb(old), a)


def test_lazy_array_indexing_and_pickling(tmp_path):
    a = _random_volume((9, 33, 21), "uint16", seed=6)
    path = write_klb(a, tmp_path / "p.klb", block_shape_zyx=(2, 8, 8))
    lazy = _KLBLazyArray(str(path), read_klb_header(path))
    a5 = a[None, None]
    for key in [
        (0, 0, slice(1, 8, 3), slice(None, None, -5), 4),
        (Ellipsis, slice(30, 2, -7), slice(2, 3)),
        (0, Ellipsis, -1),
        (slice(None), slice(None), slice(5, 5)),
    ]:
        np.testing.assert_array_equal(lazy[key], a5[key])
    arr = open_klb(path, blocks_per_chunk=1)
    clone = pickle.loads(pickle.dumps(arr))
    np.testing.assert_array_equal(clone.compute(), a)
    # same file, same chunks -> same dask name
    assert open_klb(path).name == open_klb(path).name


def test_with_distributed_worker_processes(tmp_path):
    distributed = pytest.importorskip("distributed")
    a = _random_volume((10, 50, 40), "uint16", seed=7)
    src = write_klb(a, tmp_path / "src.klb", block_shape_zyx=(4, 16, 16))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        np.testing.assert_array_equal(open_klb(src, blocks_per_chunk=1).compute(), a)
        copy = write_klb(open_klb(src, blocks_per_chunk=(1, 2, 1)) + 1, tmp_path / "copy.klb",
                         engine="dask", block_shape_zyx=(4, 16, 16))
    np.testing.assert_array_equal(pyklb.readfull(str(copy)), a + 1)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.klb"
    for func in (read_klb_header, open_klb, read_klb):
        with pytest.raises(InputNotFoundError, match="nope.klb"):
            func(path)


@pytest.mark.parametrize("size", [0, 10, 100])
def test_file_shorter_than_header(tmp_path, size):
    path = tmp_path / "short.klb"
    path.write_bytes(bytes(range(size % 256))[:size] if size else b"")
    with pytest.raises(KLBFormatError, match="short.klb") as info:
        open_klb(path)
    assert str(path) in str(info.value)
    assert "shorter" in str(info.value) or "zero" in str(info.value)


def _written(tmp_path, name="x.klb", compression="bzip2") -> tuple[Path, np.ndarray]:
    a = _random_volume((8, 32, 32), "uint16", seed=8)
    return write_klb(a, tmp_path / name, block_shape_zyx=(4, 16, 16),
                     compression=compression), a


def test_truncated_file(tmp_path):
    path, _ = _written(tmp_path)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(KLBFormatError, match="past the end of the file") as info:
        read_klb_header(path)
    assert str(path) in str(info.value)


def test_unknown_type_code_and_bad_offsets(tmp_path):
    path, _ = _written(tmp_path)
    raw = bytearray(path.read_bytes())
    bad_type = tmp_path / "badtype.klb"
    raw_t = bytearray(raw)
    raw_t[41] = 42  # data type byte
    bad_type.write_bytes(raw_t)
    with pytest.raises(KLBFormatError, match="unknown data type code 42") as info:
        read_klb_header(bad_type)
    assert str(bad_type) in str(info.value)

    bad_comp = tmp_path / "badcomp.klb"
    raw_c = bytearray(raw)
    raw_c[42] = 7  # compression byte
    bad_comp.write_bytes(raw_c)
    with pytest.raises(KLBFormatError, match="unknown compression code 7"):
        read_klb_header(bad_comp)

    zero = tmp_path / "zero.klb"
    raw_z = bytearray(raw)
    raw_z[1:5] = struct.pack("<I", 0)  # x size
    zero.write_bytes(raw_z)
    with pytest.raises(KLBFormatError, match="zero.klb.*has a zero"):
        read_klb_header(zero)

    unordered = tmp_path / "unordered.klb"
    raw_o = bytearray(raw)
    a, b = raw_o[319 + 8:319 + 16], raw_o[319 + 16:319 + 24]
    raw_o[319 + 8:319 + 16], raw_o[319 + 16:319 + 24] = b, a  # swap two end offsets
    unordered.write_bytes(raw_o)
    with pytest.raises(KLBFormatError, match="not strictly increasing") as info:
        read_klb_header(unordered)
    assert str(unordered) in str(info.value)


@pytest.mark.parametrize("compression", ["bzip2", "zlib"])
def test_corrupt_block_fails_at_compute_time(tmp_path, compression):
    path, a = _written(tmp_path, compression=compression)
    h = read_klb_header(path)
    loc = h.block_location(5)
    raw = bytearray(path.read_bytes())
    mid = (loc.start + loc.stop) // 2
    for i in range(mid, mid + 8):
        raw[i] ^= 0xFF
    path.write_bytes(raw)
    arr = open_klb(path, blocks_per_chunk=1)  # header is fine: lazy open works
    # blocks elsewhere still decode
    np.testing.assert_array_equal(arr[:4, :16, :16].compute(), a[:4, :16, :16])
    with pytest.raises(KLBFormatError, match=r"block 5\b") as info:
        arr.compute()
    assert str(path) in str(info.value)
    with pytest.raises(KLBFormatError, match=r"block 5\b"):
        read_klb(path)


def test_wrong_decoded_length(tmp_path):
    """A raw block whose stored length disagrees with its shape is reported."""
    path, _ = _written(tmp_path, compression="none")
    raw = bytearray(path.read_bytes())
    h = read_klb_header(path)
    # move the boundary between blocks 0 and 1 by two bytes
    offsets = h.block_end_offsets.copy()
    offsets[0] -= 2
    raw[319:h.header_size] = offsets.astype("<u8").tobytes()
    path.write_bytes(raw)
    with pytest.raises(KLBFormatError, match=r"block 0\b.*expected") as info:
        open_klb(path).compute()
    assert str(path) in str(info.value)


def test_unknown_compression_and_engine(tmp_path):
    a = np.zeros((2, 4, 4), np.uint16)
    with pytest.raises(CodecError, match="lz4") as info:
        write_klb(a, tmp_path / "c.klb", compression="lz4")
    assert str(tmp_path / "c.klb") in str(info.value)
    with pytest.raises(ValueError, match="engine"):
        write_klb(a, tmp_path / "c.klb", engine="magic")
    with pytest.raises(TypeError, match="c.klb"):
        write_klb(a.astype(bool), tmp_path / "c.klb")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("engine", ["pyklb", "dask"])
def test_existing_output_is_kept(tmp_path, engine):
    path, a = _written(tmp_path)
    before = _fingerprint(path)
    with pytest.raises(OutputExistsError, match="x.klb") as info:
        write_klb(a + 1, path, engine=engine)
    assert str(path) in str(info.value)
    assert _fingerprint(path) == before
    write_klb(a + 1, path, engine=engine, overwrite=True)
    np.testing.assert_array_equal(read_klb(path), a + 1)
    assert _leftovers(tmp_path) == []


def test_reading_never_modifies_the_input(tmp_path):
    path, a = _written(tmp_path)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = _fingerprint(path)
    read_klb_header(path)
    np.testing.assert_array_equal(open_klb(path, blocks_per_chunk=1).compute(), a)
    np.testing.assert_array_equal(read_klb(path), a)
    assert _fingerprint(path) == before
    assert _leftovers(tmp_path) == []
