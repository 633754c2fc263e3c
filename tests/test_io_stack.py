"""Raw .stack reader/writer: laziness, exactness over chunkings, bad sizes."""

import os

import dask.array as da
import numpy as np
import pytest

from isoview_dask.errors import InputNotFoundError, OutputExistsError, StackSizeError
from isoview_dask.io.stack import open_stack, stack_depth, write_stack


@pytest.fixture
def volume():
    return np.random.default_rng(1).integers(0, 65535, (23, 40, 52), dtype=np.uint16)


@pytest.fixture
def stack_file(tmp_path, volume):
    path = tmp_path / "v.stack"
    volume.astype("<u2").tofile(path)
    return path


@pytest.mark.parametrize("chunks", [None, (1, 40, 52), (5, 13, 52), (23, 40, 52), (7, 40, 17)])
def test_open_stack_exact_over_chunkings(stack_file, volume, chunks):
    arr = open_stack(stack_file, (40, 52), chunks=chunks)
    assert arr.shape == volume.shape and arr.dtype == np.uint16
    np.testing.assert_array_equal(arr.compute(), volume)
    np.testing.assert_array_equal(arr[5:9, 3:30, 51].compute(), volume[5:9, 3:30, 51])


def test_open_stack_is_lazy_and_read_only(stack_file, volume):
    before = (stack_file.stat().st_mtime_ns, stack_file.read_bytes())
    arr = open_stack(stack_file, (40, 52), planes=4)
    assert arr.chunks[0] == (4, 4, 4, 4, 4, 3)
    # the graph holds the path only, not the data
    import pickle
    assert len(pickle.dumps(arr.dask)) < 20_000
    stack_file.unlink()  # nothing read yet: deleting the file breaks compute, not construction
    with pytest.raises(FileNotFoundError):
        arr.compute()
    stack_file.write_bytes(before[1])
    assert arr.sum().compute() == volume.sum(dtype=np.uint64)


def test_write_stack_round_trip_and_overwrite(tmp_path, volume):
    path = tmp_path / "w.stack"
    write_stack(da.from_array(volume, chunks=(4, 40, 52)), path)
    assert path.stat().st_size == volume.nbytes
    np.testing.assert_array_equal(np.fromfile(path, "<u2").reshape(volume.shape), volume)
    with pytest.raises(OutputExistsError, match="w.stack"):
        write_stack(volume, path)
    write_stack(volume[::-1].copy(), path, overwrite=True)
    np.testing.assert_array_equal(open_stack(path, (40, 52)).compute(), volume[::-1])
    assert [p.name for p in tmp_path.iterdir()] == ["w.stack"]  # no temporary left behind


def test_truncated_stack_is_refused_with_file_name(stack_file):
    with open(stack_file, "ab") as f:
        f.write(b"\x00" * 101)  # not a whole plane
    with pytest.raises(StackSizeError, match=r"v\.stack.*not a whole number"):
        open_stack(stack_file, (40, 52))
    assert open_stack(stack_file, (40, 52), allow_truncated=True).shape[0] == 23


def test_stack_shorter_than_xml_declares(stack_file):
    with pytest.raises(StackSizeError, match="declares 30"):
        stack_depth(stack_file, (40, 52), expected_planes=30)
    assert stack_depth(stack_file, (40, 52), expected_planes=30, allow_truncated=True) == 23
    with pytest.raises(StackSizeError, match="declares 20"):
        stack_depth(stack_file, (40, 52), expected_planes=20)


def test_wrong_frame_size_and_missing_file(tmp_path, stack_file):
    with pytest.raises(StackSizeError, match="v.stack"):
        open_stack(stack_file, (41, 52))
    with pytest.raises(InputNotFoundError, match="nope.stack"):
        open_stack(tmp_path / "nope.stack", (40, 52))
    empty = tmp_path / "e.stack"
    empty.touch()
    with pytest.raises(StackSizeError, match="empty"):
        open_stack(empty, (40, 52))


def test_window_reads_equal_the_memory_map(tmp_path):
    """Chunks read with preadv (full-width bands, or bands whose columns are copied out) hold exactly the
    file's values, whatever the window; other keys fall back to the memory map."""
    from isoview_dask.io.stack import _StackPlanes
    data = np.random.default_rng(3).integers(0, 65535, (7, 30, 41), dtype=np.uint16)
    path = tmp_path / "w.stack"
    data.astype("<u2").tofile(path)
    planes = _StackPlanes(path, data.shape)
    for key in [(slice(0, 7), slice(0, 30), slice(0, 41)), (slice(2, 5), slice(3, 17), slice(0, 41)),
                (slice(1, 6), slice(0, 30), slice(5, 19)), (slice(6, 7), slice(29, 30), slice(40, 41)),
                (slice(0, 7, 2), slice(0, 30), slice(0, 41)), (3, slice(0, 30), slice(0, 41))]:
        np.testing.assert_array_equal(planes[key], data[key])
    with open(path, "r+b") as f:  # the file shrinks under a running read: an error, not zeros
        f.truncate(2 * 30 * 41 * 3)
    with pytest.raises(OSError, match="short read"):
        planes[(slice(0, 7), slice(0, 30), slice(0, 41))]
