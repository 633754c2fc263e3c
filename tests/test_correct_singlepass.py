"""The single-pass correction (numba) against the separate numpy passes it replaces, block and graph."""

import dask.array as da
import numpy as np
import pytest

from isoview_dask.correct import downsample_lateral
from isoview_dask.correct.singlepass import PROJECTIONS, corrected_parts, correct_block, correct_block_numpy
from isoview_dask.pipeline.correct import corrected_volume


def _raw(shape, dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    top = 4000 if dtype == np.uint16 else 250
    raw = rng.integers(0, top, shape).astype(dtype)
    raw[:, 0, 0] = np.iinfo(dtype).max  # saturated pixel: clipping at the top of the float path
    return raw


def _backgrounds(frame, dtype):
    rng = np.random.default_rng(1)
    level = 100 if dtype == np.uint16 else 20
    return {"integer frame": rng.integers(level - 10, level + 10, frame).astype(dtype),
            "whole level": level, "fractional level": level - 0.5,
            "float frame": rng.uniform(level - 10, level + 10, frame).astype(np.float32),
            "above the data": float(np.iinfo(dtype).max) + 3.5}


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
@pytest.mark.parametrize("factor", [0, 3, 4])
@pytest.mark.parametrize("shape", [(5, 37, 50), (1, 8, 8), (3, 2, 9)])
def test_block_equals_the_separate_passes(dtype, factor, shape):
    """Bit-identical: corrected block, every projection and the block means, for integer and float
    backgrounds, with dead pixels (repaired values used before the background is taken off)."""
    raw = _raw(shape, dtype)
    rng = np.random.default_rng(2)
    rows = np.array([shape[1] - 1, 0, shape[1] // 2])
    cols = np.array([shape[2] - 1, 1, 0])
    values = rng.integers(0, 200, (shape[0], 3)).astype(dtype)
    for name, background in _backgrounds(shape[1:], dtype).items():
        for repairs in [(None, None, None), (rows, cols, values)]:
            ours = correct_block(raw, background, *repairs, factor=factor)
            expected = correct_block_numpy(raw, background, *repairs, factor=factor)
            assert sorted(ours) == sorted(expected) == sorted(["corrected", *PROJECTIONS, *(["means"] if factor else [])])
            for key in expected:
                assert ours[key].dtype == expected[key].dtype, (name, key)
                np.testing.assert_array_equal(ours[key], expected[key], err_msg=f"{name} {key}")


def test_block_catches_a_wrong_background():
    """Not a tautology: the kernel's output moves with the background and the repair."""
    raw = _raw((4, 16, 16))
    base = correct_block(raw, 100, factor=4)
    assert not np.array_equal(base["corrected"], correct_block(raw, 101, factor=4)["corrected"])
    repaired = correct_block(raw, 100, np.array([5]), np.array([6]), np.zeros((4, 1), np.uint16), factor=4)
    assert np.all(repaired["corrected"][:, 5, 6] == 0) and not np.all(base["corrected"][:, 5, 6] == 0)
    np.testing.assert_array_equal(repaired["raw_max_0"], base["raw_max_0"])  # raw projections: unrepaired


@pytest.mark.parametrize("chunks", [(7, 40, 48), (16, 16, 8), (3, 12, 100)])
@pytest.mark.parametrize("background", ["frame", "level"])
def test_graph_equals_the_separate_passes(chunks, background):
    """corrected_parts over three chunkings: the corrected volume equals corrected_volume (repair,
    then background), the means downsample_lateral's, the projections the max reductions, bit for bit;
    dead pixels include ones whose neighbourhood crosses chunk borders."""
    raw_np = _raw((17, 40, 100))
    raw = da.from_array(raw_np, chunks=chunks)
    dead = np.zeros((40, 100), bool)
    dead[[0, 15, 16, 23, 39, 12], [0, 8, 7, 50, 99, 47]] = True
    dark = _backgrounds((40, 100), np.uint16)["integer frame"] if background == "frame" else 97.5
    parts = corrected_parts(raw, dead, dark, factor=4)
    assert parts is not None
    reference = corrected_volume(raw, dead, dark)
    expected_means = downsample_lateral(reference, 4)
    assert parts.corrected.chunks == raw.chunks
    assert parts.means.chunks == expected_means.chunks
    ours = da.compute(parts.corrected, parts.means, *parts.projections["raw"], *parts.projections["corrected"],
                      scheduler="synchronous")
    expected = da.compute(reference, expected_means, *(raw.max(axis=a) for a in range(3)),
                          *(reference.max(axis=a) for a in range(3)), scheduler="synchronous")
    for got, want in zip(ours, expected):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_graph_declines_what_it_cannot_do_in_one_pass():
    raw = da.from_array(_raw((4, 40, 40)), chunks=(4, 10, 40))
    assert corrected_parts(raw, None, 100, factor=4) is None  # a chunk border inside a 4 x 4 cell
    assert corrected_parts(raw, None, 100, factor=5) is not None
    assert corrected_parts(raw.astype(np.float32), None, 100, factor=5) is None
    assert corrected_parts(raw, None, da.zeros((40, 40), chunks=20), factor=5) is None
