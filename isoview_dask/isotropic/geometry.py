"""Geometry of the isotropic reconstruction: the output grid, view orientations and affine transforms.

Coordinates
-----------
Every fused view is a (Z, Y, X) volume whose voxel ``(k, i, j)`` lies at the
physical position ``s = (k * voxel[0], i * voxel[1], j * voxel[2])`` µm in that
view's own frame (no centring: index 0 is at 0 µm). VW00 (cameras 0/1) is the
reference frame of the whole stage.

A *transform* is a 4 x 4 homogeneous matrix ``T`` in physical µm that maps a
point ``s00`` of VW00's frame to the point of VW90's frame showing the same
specimen point: ``s90 = T[:3, :3] @ s00 + T[:3, 3]``. It is the composition of
an *orientation* (a signed axis permutation from how the cameras are mounted,
plus an offset) and a small rigid or affine correction (the specimen moved in
the ~0.3 s between the two views, mechanical misalignment).

The *output grid* is VW00's frame sampled isotropically: output voxel
``(j, i, l)`` lies at ``(j, i, l) * voxel_um`` µm, so output plane ``j`` is at
``z = j * voxel_um`` where VW00's plane ``k`` lies at ``k * z_step``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "AXES",
    "IsotropicGrid",
    "ORIENTATIONS",
    "compose",
    "displacement_rms",
    "index_map",
    "orientation_matrix",
    "orientation_name",
    "orientation_transform",
    "output_grid",
    "rotation_angle_deg",
    "translation_transform",
]

#: Axis names of the internal (Z, Y, X) order.
AXES = ("z", "y", "x")


@dataclass(frozen=True)
class IsotropicGrid:
    """The isotropic output grid in VW00's frame.

    Attributes
    ----------
    shape : tuple of int
        Output shape (Z, Y, X) in voxels.
    voxel_um : float
        Edge of the cubic output voxel, µm.
    """

    shape: tuple[int, int, int]
    voxel_um: float

    @property
    def voxel_zyx(self) -> tuple[float, float, float]:
        """The voxel size as a (Z, Y, X) triple, µm."""
        return (self.voxel_um,) * 3

    @property
    def size(self) -> int:
        """Number of output voxels."""
        return int(np.prod(self.shape))

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "voxel_um": self.voxel_um}


def output_grid(shape_zyx: Sequence[int], voxel_zyx_um: Sequence[float], voxel_um: float | None = None) -> IsotropicGrid:
    """The isotropic grid covering VW00's volume.

    Parameters
    ----------
    shape_zyx : sequence of 3 int
        VW00's fused volume shape (Z, Y, X).
    voxel_zyx_um : sequence of 3 float
        VW00's voxel size (z step, pixel, pixel), µm.
    voxel_um : float, optional
        Output voxel edge, µm. Default: VW00's lateral pixel (the finest
        sampling the data has). It may be coarser, never finer than half the
        pixel.

    Returns
    -------
    IsotropicGrid
        Shape ``floor((n - 1) * voxel_in / voxel_um) + 1`` per axis, so that
        output voxel 0 and VW00's voxel 0 coincide and no output voxel lies
        beyond VW00's last one.
    """
    shape_zyx = tuple(int(n) for n in shape_zyx)
    voxel_zyx_um = tuple(float(v) for v in voxel_zyx_um)
    if len(shape_zyx) != 3 or len(voxel_zyx_um) != 3:
        raise ValueError(f"need a 3-D shape and voxel size, got {shape_zyx} and {voxel_zyx_um}")
    if min(shape_zyx) < 1 or min(voxel_zyx_um) <= 0:
        raise ValueError(f"shape and voxel size must be positive, got {shape_zyx} and {voxel_zyx_um}")
    lateral = min(voxel_zyx_um[1], voxel_zyx_um[2])
    voxel = lateral if voxel_um is None else float(voxel_um)
    if voxel < 0.5 * lateral:
        raise ValueError(f"isotropic voxel {voxel} µm is finer than half VW00's pixel ({lateral} µm)")
    # a hair of tolerance so that 5 x 0.406 / 0.406 does not lose its last plane to rounding
    shape = tuple(int(math.floor((n - 1) * v / voxel + 1e-9)) + 1 for n, v in zip(shape_zyx, voxel_zyx_um))
    return IsotropicGrid(shape=shape, voxel_um=voxel)


def _all_orientations() -> dict[str, np.ndarray]:
    names = {}
    for perm in itertools.permutations(range(3)):
        if perm[0] == 0:
            # VW90's scan axis is orthogonal to VW00's: never VW00's z
            continue
        for signs in itertools.product((1, -1), repeat=3):
            matrix = np.zeros((3, 3))
            for row, (col, sign) in enumerate(zip(perm, signs)):
                matrix[row, col] = sign
            names[orientation_name(matrix)] = matrix
    return names


def orientation_name(matrix: np.ndarray) -> str:
    """The name of a signed axis permutation: VW90's axes (z, y, x) in VW00's terms.

    ``"+x,+y,+z"`` means VW90's z is VW00's x, VW90's y is VW00's y and VW90's x
    is VW00's z; a minus sign reverses that axis.
    """
    matrix = np.asarray(matrix)
    parts = []
    for row in matrix:
        col = int(np.argmax(np.abs(row)))
        parts.append(("+" if row[col] > 0 else "-") + AXES[col])
    return ",".join(parts)


#: Candidate orientations of VW90 against VW00: the 32 signed axis permutations whose scan axis (VW90's z)
#: is VW00's y or x. 16 are rotations (determinant +1) and 16 reflections (-1).
ORIENTATIONS: dict[str, np.ndarray] = _all_orientations()


def orientation_matrix(name: str) -> np.ndarray:
    """The 3 x 3 signed permutation of an orientation name (see :func:`orientation_name`).

    Raises
    ------
    ValueError
        If the name is not one of :data:`ORIENTATIONS`.
    """
    key = name.replace(" ", "")
    if key not in ORIENTATIONS:
        raise ValueError(f"unknown isotropic orientation {name!r}: expected VW90's axes in VW00's terms, e.g. "
                         f"'+x,+y,+z' or '-y,+z,+x' (scan axis y or x); choices: {', '.join(sorted(ORIENTATIONS))}")
    return ORIENTATIONS[key].copy()


def orientation_transform(name: str, extent00_um: Sequence[float], extent90_um: Sequence[float]) -> np.ndarray:
    """The coarse transform of an orientation that puts the two volumes' centres on each other.

    Parameters
    ----------
    name : str
        Orientation name.
    extent00_um, extent90_um : sequence of 3 float
        Physical extent (Z, Y, X) of each view, µm: ``(n - 1) * voxel`` per axis.

    Returns
    -------
    numpy.ndarray
        4 x 4 transform VW00 -> VW90 (physical µm).
    """
    matrix = orientation_matrix(name)
    centre00 = np.asarray(extent00_um, float) / 2
    centre90 = np.asarray(extent90_um, float) / 2
    transform = np.eye(4)
    transform[:3, :3] = matrix
    transform[:3, 3] = centre90 - matrix @ centre00
    return transform


def translation_transform(shift_um: Sequence[float]) -> np.ndarray:
    """A 4 x 4 pure translation by ``shift_um`` (Z, Y, X), µm."""
    transform = np.eye(4)
    transform[:3, 3] = np.asarray(shift_um, float)
    return transform


def compose(*transforms: np.ndarray) -> np.ndarray:
    """The product ``transforms[0] @ transforms[1] @ ...`` (the last one applies first)."""
    out = np.eye(4)
    for transform in transforms:
        out = out @ np.asarray(transform, float)
    return out


def index_map(transform: np.ndarray, out_voxel_zyx: Sequence[float], source_voxel_zyx: Sequence[float]):
    """The affine map from output-grid indices to a view's voxel indices.

    Parameters
    ----------
    transform : numpy.ndarray
        4 x 4 physical transform from the output (VW00) frame to the view's frame
        (the identity for VW00 itself).
    out_voxel_zyx, source_voxel_zyx : sequence of 3 float
        Voxel sizes (Z, Y, X) of the output grid and of the view, µm.

    Returns
    -------
    matrix : numpy.ndarray
        (3, 3) such that ``source_index = matrix @ output_index + offset``.
    offset : numpy.ndarray
        (3,).
    """
    transform = np.asarray(transform, float)
    to_source = np.diag(1.0 / np.asarray(source_voxel_zyx, float))
    matrix = to_source @ transform[:3, :3] @ np.diag(np.asarray(out_voxel_zyx, float))
    offset = to_source @ transform[:3, 3]
    return matrix, offset


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """The angle (degrees) of the rotation closest to a 3 x 3 matrix (its polar factor)."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, float)[:3, :3])
    rotation = u @ vt
    cos = (np.trace(rotation) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def displacement_rms(transform_a: np.ndarray, transform_b: np.ndarray, points_um: np.ndarray) -> float:
    """RMS distance (µm) between where two transforms send the same points.

    Parameters
    ----------
    transform_a, transform_b : numpy.ndarray
        4 x 4 transforms.
    points_um : numpy.ndarray
        (N, 3) points (Z, Y, X), µm, in the transforms' source frame.
    """
    points = np.asarray(points_um, float)
    homogeneous = np.c_[points, np.ones(len(points))]
    a = homogeneous @ np.asarray(transform_a, float).T
    b = homogeneous @ np.asarray(transform_b, float).T
    return float(np.sqrt(np.mean(np.sum((a[:, :3] - b[:, :3]) ** 2, axis=1))))
