"""IsoviewArray: a processed recording as one lazy dask array; slices equal the files, construction
reads no voxel, and a plane reads only the chunks it crosses."""

import dask
import numpy as np
import pytest
from dask.optimization import cull

from isoview_dask.errors import IsoviewError
from isoview_dask.io import open_volume
from isoview_dask.pipeline import correct_dataset, fuse_dataset, output_path, segmentation_mask_path
from isoview_dask.reader import IsoviewArray
from isoview_dask.synthetic import generate_dataset

T = 3
CHUNKS, SHARDS = (4, 32, 32), (8, 64, 64)  # a 64 x 64 plane crosses 4 inner chunks of one shard


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    truth = generate_dataset(root / "syn", preset="tiny", timepoints=T, cameras=(0, 1), seed=1)
    out = root / "out"
    options = dict(progress=False, output_chunks=CHUNKS, output_shards=SHARDS)
    assert len(correct_dataset(truth.raw_dir, out, **options).written) == 2 * T
    assert len(fuse_dataset(out, fusion_diagnostics=False, **options).written) == T
    return truth, out


@pytest.fixture
def store_reads(monkeypatch):
    """Every read of a zarr chunk (shard) key: (store folder name, key, byte range)."""
    from zarr.storage import LocalStore
    reads = []
    original = LocalStore.get

    async def counting(self, key, prototype=None, byte_range=None):
        if "/c/" in key:
            reads.append((self.root.name, key, byte_range))
        return await original(self, key, prototype, byte_range)

    monkeypatch.setattr(LocalStore, "get", counting)
    return reads


def _data_reads(reads):
    """Chunk payload reads (a shard's index is read with a suffix request)."""
    return [r for r in reads if type(r[2]).__name__ != "SuffixByteRequest"]


def test_corrected_slices_equal_the_files(processed):
    truth, out = processed
    rec = IsoviewArray(out, kind="corrected")
    assert rec.shape == (T, 2) + truth.shape and rec.dims == ("t", "view", "z", "y", "x")
    assert [v.label for v in rec.views] == ["CM00_CHN00", "CM01_CHN00"]
    assert rec.timepoints == list(range(T))
    assert rec.voxel_size_um == pytest.approx(truth.voxel_size_um)
    assert rec.scale == pytest.approx((1, 1) + tuple(truth.voxel_size_um))
    for t in range(T):
        for v, camera in enumerate((0, 1)):
            expected = open_volume(output_path(out, 0, t, camera, 0)).compute()
            np.testing.assert_array_equal(rec[t, v].compute(), expected)
    expected = open_volume(output_path(out, 0, 2, 1, 0)).compute()
    np.testing.assert_array_equal(rec.data[2, 1, 7, 10:50, 5:60].compute(), expected[7, 10:50, 5:60])
    np.testing.assert_array_equal(np.asarray(IsoviewArray(out, "corrected", view="CM01_CHN00"))[2], expected)


def test_fused_slices_equal_the_files_and_accessors(processed):
    truth, out = processed
    rec = IsoviewArray(out, kind="fused")
    assert rec.shape == (T, 1) + truth.shape and [v.label for v in rec.views] == ["CM00_CM01_CHN00"]
    one = IsoviewArray(out, kind="fused", view=(0, 1, 0))
    assert one.shape == (T,) + truth.shape and one.dims == ("t", "z", "y", "x")
    for t in range(T):
        expected = open_volume(output_path(out, 0, t, [0, 1], 0, "fusedStack")).compute()
        np.testing.assert_array_equal(one[t].compute(), expected)
        np.testing.assert_array_equal(rec[t, 0].compute(), expected)
    np.testing.assert_array_equal(one.projection("xz", 1), expected_max(out, 1, [0, 1], "fusedStack", axis=1))
    corrected = IsoviewArray(out, kind="corrected")
    import tifffile
    np.testing.assert_array_equal(corrected.projection("xy", 1, "CM01_CHN00"),
                                  tifffile.imread(output_path(out, 0, 1, 1, 0, "xyProjection", "tif")))
    mask = corrected.mask(2, 0)
    assert mask.dtype == bool and mask.shape == truth.shape
    np.testing.assert_array_equal(mask.compute(),
                                  open_volume(segmentation_mask_path(out, 0, 2, 0, 0)).compute() > 0)
    with pytest.raises(IsoviewError):
        rec.mask(0, 0)
    with pytest.raises(IsoviewError):
        IsoviewArray(out, kind="fused", view="CM02_CM03_CHN01")


def expected_max(out, t, cameras, kind, axis):
    return open_volume(output_path(out, 0, t, cameras, 0, kind)).compute().max(axis=axis)


def test_construction_reads_no_data_and_a_plane_reads_its_chunks(processed, store_reads):
    truth, out = processed
    rec = IsoviewArray(out, kind="corrected")
    assert store_reads == []  # metadata only
    window = rec.data[1, 1, 5, :32, 32:]  # inside one inner chunk
    graph, _ = cull(dict(window.__dask_graph__()), list(dask.core.flatten(window.__dask_keys__())))
    assert sum(1 for key in graph if isinstance(key, tuple) and key[0].startswith("from-zarr")) == 1
    window.compute()
    reads = _data_reads(store_reads)
    assert len(reads) == 1 and reads[0][0] == "SPM00_TM000001_CM01_CHN00.zarr"
    store_reads.clear()
    rec.data[2, 0, 9].compute()  # a whole plane: the 4 inner chunks it crosses, one file
    reads = _data_reads(store_reads)
    assert len(reads) == 4 and {r[0] for r in reads} == {"SPM00_TM000002_CM00_CHN00.zarr"}


def test_missing_volumes(processed, tmp_path):
    import shutil
    truth, out = processed
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(output_path(copy, 0, 1, [0, 1], 0, "fusedStack"))
    with pytest.raises(IsoviewError, match="missing"):
        IsoviewArray(copy, kind="fused")
    rec = IsoviewArray(copy, kind="fused", missing="zeros")
    assert rec.shape[0] == T and rec.missing == [(1, rec.views[0])]
    assert not rec[1].any().compute() and rec[2].any().compute()
    assert IsoviewArray(copy, kind="fused", timepoints=[0, 2]).shape[0] == 2
