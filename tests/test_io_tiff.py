"""TIFF reader/writer: exact lazy round trips, BigTIFF, errors."""

import dask.array as da
import numpy as np
import pytest
import tifffile

from isoview_dask.errors import InputNotFoundError, OutputExistsError
from isoview_dask.io.tiff import TiffFormatError, open_tiff, read_tiff, write_tiff


@pytest.fixture(scope="module")
def volume():
    return np.random.default_rng(5).integers(0, 65535, (19, 33, 47), dtype=np.uint16)


@pytest.mark.parametrize("write_chunks", [(19, 33, 47), (1, 33, 47), (4, 11, 20)])
@pytest.mark.parametrize("read_chunks", [None, (1, 33, 47), (6, 33, 47), (5, 10, 47)])
def test_round_trip_over_chunkings(tmp_path, volume, write_chunks, read_chunks):
    path = write_tiff(da.from_array(volume, chunks=write_chunks), tmp_path / "v.tif", voxel_size_zyx=(2, 0.4, 0.4))
    arr = open_tiff(path, chunks=read_chunks)
    assert arr.shape == volume.shape
    np.testing.assert_array_equal(arr.compute(), volume)
    np.testing.assert_array_equal(arr[3:11, 5:30, 2].compute(), volume[3:11, 5:30, 2])


def test_bigtiff_and_compression(tmp_path, volume):
    path = write_tiff(volume, tmp_path / "b.tif", bigtiff=True, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and len(tif.pages) == volume.shape[0]
    np.testing.assert_array_equal(open_tiff(path).compute(), volume)


def test_plane_and_errors(tmp_path, volume):
    write_tiff(volume[0], tmp_path / "p.tif")
    np.testing.assert_array_equal(read_tiff(tmp_path / "p.tif"), volume[0])
    assert open_tiff(tmp_path / "p.tif").shape == volume.shape[1:]
    with pytest.raises(OutputExistsError, match="p.tif"):
        write_tiff(volume[0], tmp_path / "p.tif")
    with pytest.raises(InputNotFoundError, match="none.tif"):
        open_tiff(tmp_path / "none.tif")
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(TiffFormatError, match="junk.tif"):
        open_tiff(tmp_path / "junk.tif")
