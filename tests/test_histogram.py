"""The one-pass value counts (numba) against numpy's bincount, for every dtype and memory layout."""

import numpy as np
import pytest

from isoview_dask.io.histogram import value_counts


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.int8, np.bool_])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "transposed"])
def test_value_counts_equal_bincount(dtype, layout):
    rng = np.random.default_rng(3)
    info = np.iinfo(np.uint8 if dtype == np.bool_ else dtype)
    volume = rng.integers(int(info.min), int(info.max) + 1, (9, 33, 40)).astype(dtype)
    volume.flat[:3] = [info.min, info.max, info.min] if dtype != np.bool_ else [0, 1, 0]
    block = {"contiguous": volume, "strided": volume[::2, 1::3], "transposed": volume.transpose(2, 0, 1)}[layout]
    counts, low = value_counts(block)
    assert low == (0 if dtype == np.bool_ else int(info.min))
    expected = np.bincount(block.reshape(-1).astype(np.int64) - low, minlength=counts.size)
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == block.size


def test_value_counts_refuses_wide_types():
    with pytest.raises(TypeError, match="8- and 16-bit"):
        value_counts(np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="8- and 16-bit"):
        value_counts(np.zeros(4, np.uint32))


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 7, 4097])
def test_value_counts_of_any_length_and_of_runs_of_one_value(size):
    """The four count tables take every element, the last ones of a length not divisible by four too,
    and runs of one value (a camera's background) are counted once each."""
    rng = np.random.default_rng(size)
    block = np.repeat(rng.integers(0, 65536, size).astype(np.uint16), 3)[:size]
    counts, low = value_counts(block)
    np.testing.assert_array_equal(counts, np.bincount(block.astype(np.int64), minlength=65536))
    assert counts.sum() == size and low == 0
