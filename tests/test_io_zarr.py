"""Sharded zarr v3 writer: exact round trips per codec and chunking, shards, OME-NGFF, atomicity."""

import json

import dask.array as da
import numpy as np
import pytest
import zarr

from isoview_dask.errors import CodecError, InputNotFoundError, OutputExistsError
from isoview_dask.io.chunking import fit_chunks
from isoview_dask.io.zarr import CodecSpec, open_zarr, prepare_zarr, write_zarr, zarr_voxel_size

CODECS = ["blosc-zstd", "blosc-zstd:9:shuffle", "blosc-zstd:1:noshuffle", "blosc-lz4:3", "lz4hc-9", "blosc-zlib", "zstd-6",
          "gzip-9", "bzip2-9", "none"]


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(3)
    base = rng.poisson(200, (21, 45, 67)).astype(np.uint16)
    base[5:15, 10:30, 20:50] += 3000
    return base


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_every_codec(tmp_path, volume, codec):
    path = write_zarr(da.from_array(volume, chunks=(4, 45, 67)), tmp_path / "v.zarr", codec=codec,
                      chunks=(4, 16, 32), shards=(8, 32, 64), voxel_size_zyx=(2.0, 0.4, 0.4))
    np.testing.assert_array_equal(open_zarr(path).compute(), volume)
    meta = json.loads((path / "0" / "zarr.json").read_text())
    assert meta["codecs"][0]["name"] == "sharding_indexed"
    expected = CodecSpec.parse(codec).name
    inner = meta["codecs"][0]["configuration"]["codecs"]
    if expected == "none":
        assert [c["name"] for c in inner] == ["bytes"]
    else:
        assert len(inner) == 2


@pytest.mark.parametrize("dask_chunks", [(21, 45, 67), (1, 7, 9), (5, 20, 30), ((3, 10, 8), (40, 5), (17, 50))])
@pytest.mark.parametrize("shards", [None, (), (8, 32, 64)])
def test_round_trip_over_chunkings(tmp_path, volume, dask_chunks, shards):
    arr = da.from_array(volume, chunks=dask_chunks)
    path = write_zarr(arr, tmp_path / "v.zarr", chunks=(4, 16, 16), shards=shards)
    np.testing.assert_array_equal(open_zarr(path).compute(), volume)
    np.testing.assert_array_equal(open_zarr(path, chunks=(3, 11, 13))[2:19, 1:44, 60].compute(),
                                  volume[2:19, 1:44, 60])


def test_shards_on_disk_and_one_task_per_shard(tmp_path, volume):
    pending = prepare_zarr(da.from_array(volume, chunks=(2, 45, 67)), tmp_path / "v.zarr",
                           chunks=(4, 16, 32), shards=(8, 32, 64))
    # every store task writes exactly one shard-aligned region
    arr = zarr.open_array(str(pending.tmp / "0"))
    assert arr.shards == (8, 32, 64) and arr.chunks == (4, 16, 32)
    pending.delayed.compute()
    pending.commit()
    shard_files = [p for p in (tmp_path / "v.zarr" / "0" / "c").rglob("*") if p.is_file()]
    assert len(shard_files) == 3 * 2 * 2  # ceil(21/8) x ceil(45/32) x ceil(67/64)


def test_ome_ngff_metadata_and_pyramid(tmp_path, volume):
    path = write_zarr(volume, tmp_path / "v.zarr", voxel_size_zyx=(2.0, 0.5, 0.5), pyramid_levels=2)
    ome = json.loads((path / "zarr.json").read_text())["attributes"]["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert all(a["unit"] == "micrometer" for a in ms["axes"])
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[2.0, 0.5, 0.5], [2.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    assert zarr_voxel_size(path, 1) == (2.0, 1.0, 1.0)
    level1 = open_zarr(path, level=1).compute()
    expected = volume[:, :44, :66].reshape(21, 22, 2, 33, 2).mean(axis=(2, 4))
    np.testing.assert_array_equal(level1, np.round(expected).astype(np.uint16))
    assert open_zarr(path, level=2).shape == (21, 11, 16)  # z halves only once near-isotropic


def test_codec_parsing_and_errors():
    assert CodecSpec.parse("blosc-zstd:9").level == 9
    assert CodecSpec.parse("gzip-6") == CodecSpec("gzip", 6)
    assert CodecSpec.parse("lz4hc").name == "blosc-lz4hc"
    assert CodecSpec.parse("bz2").level == 9
    assert CodecSpec.parse("lz4:3:shuffle").label == "blosc-lz4-3-shuffle"
    assert CodecSpec.parse("blosc-zstd").label == "blosc-zstd-2"  # bitshuffle is the default
    with pytest.raises(CodecError, match="unknown codec 'snappy9'"):
        CodecSpec.parse("snappy9")
    with pytest.raises(CodecError, match="level 12"):
        CodecSpec("gzip", 12)
    with pytest.raises(CodecError, match="shuffle"):
        CodecSpec("blosc-zstd", 5, "byteshuffle")


def test_unknown_codec_writes_nothing(tmp_path, volume):
    with pytest.raises(CodecError, match="unknown codec"):
        write_zarr(volume, tmp_path / "v.zarr", codec="snappy")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_atomicity(tmp_path, volume):
    path = write_zarr(volume, tmp_path / "v.zarr")
    with pytest.raises(OutputExistsError, match="v.zarr"):
        write_zarr(volume, path)
    # a failing computation leaves the old output intact and no temporary behind
    bad = da.from_array(volume, chunks=(4, 45, 67)).map_blocks(_explode, dtype=volume.dtype)
    with pytest.raises(RuntimeError, match="boom"):
        write_zarr(bad, path, overwrite=True)
    np.testing.assert_array_equal(open_zarr(path).compute(), volume)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.zarr"]
    write_zarr(volume[::-1], path, overwrite=True)
    np.testing.assert_array_equal(open_zarr(path).compute(), volume[::-1])


def _explode(block, block_info=None):
    if block_info[0]["chunk-location"][0] == 2:
        raise RuntimeError("boom")
    return block


def test_leftover_partial_is_removed_on_next_write(tmp_path, volume):
    stale = tmp_path / ".v.zarr.partial-deadbeef0000"
    stale.mkdir()
    (stale / "junk").write_text("x")
    write_zarr(volume, tmp_path / "v.zarr")
    assert not stale.exists()


def test_open_missing(tmp_path):
    with pytest.raises(InputNotFoundError, match="missing.zarr"):
        open_zarr(tmp_path / "missing.zarr")


def test_fit_chunks():
    assert fit_chunks((21, 45, 67), (8, 256, 256), (32, 1024, 1024)) == ((8, 45, 67), (24, 45, 67))
    assert fit_chunks((100, 2048, 2048), None, None) == ((8, 256, 256), (32, 1024, 1024))
    assert fit_chunks((10, 10, 10), (4, 4, 4), (6, 6, 6)) == ((4, 4, 4), (4, 4, 4))
    assert fit_chunks((10, 10, 10), (4, 4, 4), ()) == ((4, 4, 4), None)
    with pytest.raises(ValueError):
        fit_chunks((10, 10, 10), (0, 4, 4), None)


def test_shards_that_the_frame_cuts_down_take_more_planes():
    """A shard keeps the voxels asked for: frames smaller than its Y x X give it more planes (whole
    inner chunks, at most the whole volume); frames that fill it leave it as asked."""
    assert fit_chunks((384, 128, 128), None, None) == ((8, 128, 128), (384, 128, 128))  # whole volume
    assert fit_chunks((1024, 256, 256), None, None)[1] == (512, 256, 256)  # 64 MiB, as 32 x 1024 x 1024
    assert fit_chunks((100, 2048, 512), None, None)[1] == (64, 1024, 512)
    assert fit_chunks((300, 1000, 1000), None, None)[1] == (32, 1024, 1024)  # 33 planes, cut to whole inner chunks
    assert fit_chunks((256, 2048, 2048), None, None)[1] == (32, 1024, 1024)
    assert fit_chunks((32, 128, 128), (8, 32, 32), (16, 64, 64))[1] == (16, 64, 64)  # filled: as asked


def test_write_chunks_group_whole_shards_along_z_within_the_task_target():
    from isoview_dask.io.chunking import fit_chunks, write_chunks

    # Small shards: one 32-plane shard of 128 x 128 uint16 is 1 MiB; tasks group 32 of them (32 MiB).
    inner, shards = fit_chunks((2000, 128, 128), (8, 256, 256), (32, 128, 128))
    blocks = write_chunks(inner, shards, (2000, 128, 128), 2)
    assert blocks == (1024, 128, 128)
    assert blocks[0] % shards[0] == 0 and blocks[0] * 128 * 128 * 2 <= 32 * 2**20
    # A volume shallower than one group is one task, rounded up to whole shards.
    assert write_chunks(inner, shards, (300, 128, 128), 2)[0] == 320
    # Full frames: a shard is already above the target, so one shard per task as before.
    inner, shards = fit_chunks((256, 2048, 2048), None, None)
    assert write_chunks(inner, shards, (256, 2048, 2048), 2) == shards == (32, 1024, 1024)
    # Unsharded: whole inner chunks.
    inner, none = fit_chunks((64, 64, 64), (8, 64, 64), ())
    assert none is None and write_chunks(inner, None, (64, 64, 64), 2) == (64, 64, 64)


def test_grouped_write_tasks_store_every_shard_exactly(tmp_path):
    """Tasks spanning several shards (and a partial last one) write the same array as one shard per task."""
    import dask.array as da
    from isoview_dask.io.zarr import open_zarr, write_zarr

    data = np.random.default_rng(3).integers(0, 4000, (75, 40, 36)).astype(np.uint16)
    grouped = write_zarr(da.from_array(data, chunks=(20, 40, 36)), tmp_path / "g.zarr", chunks=(4, 16, 16),
                         shards=(8, 32, 32))
    assert np.array_equal(open_zarr(grouped).compute(), data)
    assert open_zarr(grouped).chunks[0] == (75,)  # read back in grouped tasks too (all 10 shards in one)


def test_stored_blocks_keep_slabs_behind_a_flip_or_cast_small(tmp_path, monkeypatch):
    """chunks="stored" blocks are one inner chunk deep and one shard wide, so a two-plane slab
    behind a flip or a cast (which dask cannot fuse into the read) decodes one inner-chunk depth
    of planes, not whole shards; values are those of the same slab read directly."""
    from isoview_dask.io.zarr import STORED

    volume = np.random.default_rng(0).integers(0, 4000, (64, 64, 48), dtype=np.uint16)
    path = write_zarr(da.from_array(volume, chunks=(32, 64, 48)), tmp_path / "v.zarr", chunks=(8, 16, 16),
                      shards=(32, 32, 48))
    read = []
    original = zarr.Array.__getitem__

    def counting(self, selection):
        out = original(self, selection)
        read.append(out.nbytes)
        return out
    monkeypatch.setattr(zarr.Array, "__getitem__", counting)
    arr = open_zarr(path, chunks=STORED)
    assert arr.chunks == ((8,) * 8, (32, 32), (48,))
    plane_bytes = 64 * 48 * 2
    for lazy, expected in [(arr[:, :, ::-1][33:35], volume[:, :, ::-1][33:35]),
                           (arr.astype(np.float32)[33:35], volume[33:35].astype(np.float32)),
                           (arr.astype(bool)[33:35], volume[33:35].astype(bool))]:
        read.clear()
        np.testing.assert_array_equal(lazy.compute(), expected)
        assert sum(read) == 8 * plane_bytes  # the inner chunk's 8 planes (shard-deep blocks: 32)


def _omero(path):
    return json.loads((path / "zarr.json").read_text())["attributes"]["ome"]["omero"]


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.int16, np.float32])
def test_omero_window_from_the_write_matches_the_data_percentiles(tmp_path, dtype):
    """The window is taken while writing (no second read) and equals numpy's percentiles of the written
    voxels: exactly for 8/16-bit integers; for floats (a sample of each block) the fraction of voxels
    below each end is within 0.05 percentage points of the percentile asked for."""
    from isoview_dask.io.zarr import WINDOW_PERCENTILES
    rng = np.random.default_rng(7)
    volume = rng.poisson(4, (24, 80, 96)).astype(np.float64)
    volume[6:20, 20:60, 30:70] += rng.gamma(2.0, 300.0, (14, 40, 40))
    volume = np.clip(volume - (50 if dtype == np.int16 else 0), np.iinfo(dtype).min if dtype != np.float32 else -1e9,
                     np.iinfo(dtype).max if dtype != np.float32 else 1e9).astype(dtype)
    path = write_zarr(da.from_array(volume, chunks=(8, 40, 48)), tmp_path / "v.zarr", chunks=(8, 16, 16),
                      shards=(8, 32, 32), name="SPM00_TM000000_CM02_CHN01", pyramid_levels=1)
    channel = _omero(path)["channels"][0]
    assert (channel["label"], channel["color"]) == ("CM02 corrected", "00FFFF")
    window = channel["window"]
    assert (window["min"], window["max"]) == (float(volume.min()), float(volume.max()))
    assert window["min"] <= window["start"] < window["end"] <= window["max"]
    written = open_zarr(path).compute()
    if dtype != np.float32:
        np.testing.assert_array_equal([window["start"], window["end"]], np.percentile(written, WINDOW_PERCENTILES))
    else:
        for value, percentile in zip((window["start"], window["end"]), WINDOW_PERCENTILES):
            assert 100 * np.mean(written < value) - 0.05 <= percentile <= 100 * np.mean(written <= value) + 0.05
    # the first plane is background only: a window from it would stop below 20
    assert window["end"] > 10 * float(volume[0].max())


def test_omero_label_and_colour_given_and_validated(tmp_path, volume):
    ome_models = pytest.importorskip("ome_zarr_models.v05")
    from ome_zarr_models.common.omero import Omero
    path = write_zarr(volume, tmp_path / "v.zarr", label="VW00 fused CM00+CM01", color="FF8000",
                      voxel_size_zyx=(2.0, 0.4, 0.4))
    ome_models.Image.from_zarr(zarr.open_group(path, mode="r"))
    omero = Omero.model_validate(_omero(path))
    assert (omero.channels[0].label, omero.channels[0].color) == ("VW00 fused CM00+CM01", "FF8000")


@pytest.mark.parametrize("name, label", [("SPM00_TM000003_CM00_CM01_CHN00.fusedStack", "fused CM00+CM01"),
                                         ("SPM00_TM000000_CM00_CM01_CM02_CM03_CHN00_CHN01.isotropic",
                                          "isotropic CM00+CM01+CM02+CM03"),
                                         ("SPM01_TM000000_CM03_CHN00", "CM03 corrected"),
                                         ("anything", "anything")])
def test_default_channel_labels_from_the_output_name(name, label):
    from isoview_dask.io.zarr import default_channel
    assert default_channel(name)[0] == label


def test_flat_volume_gets_a_usable_window(tmp_path):
    path = write_zarr(np.full((4, 8, 8), 7, np.uint16), tmp_path / "v.zarr")
    assert _omero(path)["channels"][0]["window"] == {"min": 7.0, "max": 7.0, "start": 7.0, "end": 8.0}
