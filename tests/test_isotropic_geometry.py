"""Output grid, orientations and transform helpers of the isotropic stage."""

import numpy as np
import pytest

from isoview_dask.isotropic.geometry import (ORIENTATIONS, compose, displacement_rms, index_map, orientation_matrix,
                                             orientation_name, orientation_transform, output_grid,
                                             rotation_angle_deg, translation_transform)


def test_output_grid_planes_lie_where_vw00_planes_lie():
    grid = output_grid((20, 96, 80), (2.03, 0.406, 0.406))
    assert grid.voxel_um == pytest.approx(0.406)
    # VW00's last plane at 19 * 2.03 µm is output plane 95 (no plane lost to rounding)
    assert grid.shape == (96, 96, 80)
    coarse = output_grid((20, 96, 80), (2.03, 0.406, 0.406), voxel_um=0.812)
    assert coarse.shape == (48, 48, 40)
    with pytest.raises(ValueError, match="finer than half"):
        output_grid((20, 96, 80), (2.03, 0.406, 0.406), voxel_um=0.1)


def test_orientations_are_the_orthogonal_signed_permutations():
    assert len(ORIENTATIONS) == 32
    dets = [round(np.linalg.det(m)) for m in ORIENTATIONS.values()]
    assert dets.count(1) == 16 and dets.count(-1) == 16
    for name, matrix in ORIENTATIONS.items():
        assert orientation_name(matrix) == name
        assert matrix[0, 0] == 0  # VW90's scan axis is never VW00's z
        assert np.allclose(matrix @ matrix.T, np.eye(3))
    with pytest.raises(ValueError, match="unknown isotropic orientation"):
        orientation_matrix("+z,+y,+x")


def test_orientation_transform_maps_centre_to_centre_and_corners_inside():
    extent00, extent90 = (38.0, 40.0, 30.0), (40.0, 38.0, 30.0)
    transform = orientation_transform("+y,-z,+x", extent00, extent90)
    assert np.allclose(transform[:3, :3] @ np.array(extent00) / 2 + transform[:3, 3], np.array(extent90) / 2)
    corners = np.array(np.meshgrid(*[[0, e] for e in extent00], indexing="ij")).reshape(3, -1).T
    mapped = corners @ transform[:3, :3].T + transform[:3, 3]
    assert mapped.min() >= -1e-9 and np.all(mapped.max(axis=0) <= np.array(extent90) + 1e-9)


def test_index_map_converts_physical_to_voxels():
    transform = compose(translation_transform((1.0, 2.0, 3.0)), orientation_transform("+x,+y,+z", (10, 10, 10),
                                                                                       (10, 10, 10)))
    matrix, offset = index_map(transform, (0.5, 0.5, 0.5), (2.0, 0.5, 0.25))
    out_index = np.array([4.0, 6.0, 8.0])
    physical = transform[:3, :3] @ (out_index * 0.5) + transform[:3, 3]
    assert np.allclose(matrix @ out_index + offset, physical / np.array([2.0, 0.5, 0.25]))


def test_rotation_angle_and_displacement():
    angle = np.radians(0.5)
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    assert rotation_angle_deg(rotation) == pytest.approx(0.5, abs=1e-9)
    points = np.array([[0.0, 0.0, 0.0], [0.0, 3.0, 4.0]])
    assert displacement_rms(np.eye(4), translation_transform((0, 0, 2.0)), points) == pytest.approx(2.0)
