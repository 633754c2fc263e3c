"""The MATLAB mask options of the transition-plane map: maskFusionMode, padding, bwareaopen."""

import numpy as np
import pytest

from isoview_dask.fuse import transition_plane_map


def _maps():
    ref = np.full((40, 50), np.nan)
    mov = np.full((40, 50), np.nan)
    ref[5:35, 5:30] = 10.0   # reference camera's foreground: left part
    mov[5:35, 20:45] = 20.0  # moving camera's foreground: right part, overlapping in columns 20-29
    return ref, mov


def _map(ref, mov, **kw):
    return transition_plane_map(ref, mov, 32, rim_px=0, median_filter_range=1, smoothing_sigma=0, **kw)


def test_mask_modes():
    ref, mov = _maps()
    overlap = _map(ref, mov, mask_mode="overlap")
    assert np.all(overlap == 15.0)  # only the overlap has a value; it fills everything
    union = _map(ref, mov, mask_mode="union")
    assert union[20, 10] == 10.0 and union[20, 25] == 15.0 and union[20, 40] == 20.0
    assert np.all(_map(ref, mov, mask_mode="reference") == 10.0)
    assert np.all(_map(ref, mov, mask_mode="moving") == 20.0)
    with pytest.raises(ValueError, match="mask_mode"):
        _map(ref, mov, mask_mode="intersection")


def test_padding_trims_the_rim_toward_the_centre():
    ref = np.full((40, 50), np.nan)
    ref[5:35, 5:45] = 12.0
    ref[5:35, 5:8] = 3.0  # a biased rim, three pixels wide
    assert _map(ref, None)[20, 6] == 3.0
    padded = transition_plane_map(ref, None, 32, rim_px=3, median_filter_range=1, smoothing_sigma=0)
    assert padded[20, 6] == 12.0  # the rim was dropped and refilled from the inside


def test_small_objects_are_removed():
    ref = np.full((40, 50), np.nan)
    ref[5:35, 5:30] = 10.0
    ref[36:38, 44:46] = 25.0  # a 4-pixel speck of debris
    assert _map(ref, None)[37, 45] == 25.0
    cleaned = _map(ref, None, min_object_fraction=0.01)  # 1% of 2000 px = 20 px
    assert cleaned[37, 45] == 10.0
    with pytest.raises(ValueError, match="min_object_fraction"):
        _map(ref, None, min_object_fraction=1.5)
