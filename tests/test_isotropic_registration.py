"""3-D registration of VW90 onto VW00 against synthetic truth (3 seeds x a rotation and a reflection)."""

import numpy as np
import pytest

from isoview_dask.isotropic.geometry import displacement_rms, rotation_angle_deg, translation_transform
from isoview_dask.isotropic.registration import ViewRegistration, register_views
from isoview_dask.synthetic.fourview import FourViewSpec, fourview

from conftest import ISOTROPIC_ORIENTATIONS


def _errors(registration, truth):
    voxel = truth.spec.pixel_um
    rms = displacement_rms(registration.transform, truth.transform, truth.specimen_points_um) / voxel
    angle = rotation_angle_deg(np.linalg.inv(truth.transform) @ registration.transform)
    return rms, angle


def test_registration_recovers_orientation_and_motion(fourview_case):
    """Within 0.3 voxel RMS over the specimen and 0.1 degree, for 3 seeds x a rotation and a reflection."""
    kind, truth, result = fourview_case
    det = np.linalg.det(truth.transform[:3, :3])
    assert det == pytest.approx(1.0 if kind == "rotation" else -1.0)
    assert result.orientation == ISOTROPIC_ORIENTATIONS[kind]
    assert result.orientation_source == "search" and result.orientation_margin > 0.02
    rms, angle = _errors(result, truth)
    assert rms <= 0.3, f"RMS displacement {rms:.3f} voxel"
    assert angle <= 0.1, f"rotation error {angle:.4f} degrees"
    assert result.fallback is None and result.confidence > 0.9
    assert result.scale90 == pytest.approx(1.0, abs=0.05)  # both views in the same photon units
    # the true motion is about 2.4 degrees: the fine fit found it (not only a translation)
    assert result.rotation_deg == pytest.approx(rotation_angle_deg(truth.transform @ np.diag([1, 1, 1, 1])
                                                                   @ np.linalg.inv(_pure(truth.transform))), abs=0.15)
    assert ViewRegistration.from_dict(result.to_dict()).to_dict() == result.to_dict()


def _pure(transform):
    out = np.eye(4)
    out[:3, :3] = np.round(transform[:3, :3])
    out[:3, 3] = transform[:3, 3]
    return out


def test_initial_transform_skips_the_search_and_converges():
    truth = fourview(FourViewSpec(seed=4, shape=(76, 80, 80), nuclei=250, beads=8))
    start = truth.transform @ translation_transform((1.0, -1.2, 0.8))
    result = register_views(truth.vw00, truth.voxel00, truth.vw90, truth.voxel90, initial=start)
    assert result.orientation_source == "initial" and result.orientation_scores == {}
    rms, angle = _errors(result, truth)
    assert rms <= 0.3 and angle <= 0.15


def test_unrelated_views_fall_back_clearly():
    truth = fourview(FourViewSpec(seed=5, shape=(56, 64, 64), nuclei=120, beads=4))
    rng = np.random.default_rng(0)
    noise = rng.random(truth.vw90.shape).astype(np.float32)
    result = register_views(truth.vw00, truth.voxel00, noise, truth.voxel90, orientation="+y,+z,+x")
    assert result.orientation_source == "config"
    assert result.fallback is not None and "rejected" in result.fallback
    assert result.confidence < 0.5


def test_unknown_fit_is_refused():
    truth = fourview(FourViewSpec(seed=6, shape=(31, 32, 32), nuclei=20, beads=0))
    with pytest.raises(ValueError, match="unknown isotropic registration fit"):
        register_views(truth.vw00, truth.voxel00, truth.vw90, truth.voxel90, fit="elastic")


def test_a_long_volume_is_fitted_level_by_level_on_crops():
    """With levels of at most 64 voxels, the 96^3 truth is fitted whole at 0.6 µm, then on a 64^3 crop at the
    pixel, and keeps the accuracy bounds."""
    truth = fourview(FourViewSpec(seed=1))
    result = register_views(truth.vw00, truth.voxel00, truth.vw90, truth.voxel90, fine_size=64)
    assert [round(level["voxel_um"], 3) for level in result.levels] == [0.603, 0.406]
    crop = result.levels[1]["crop_zyx"]
    assert all(crop[axis][1] - crop[axis][0] < truth.vw00.shape[axis] for axis in (1, 2))
    rms, angle = _errors(result, truth)
    assert rms <= 0.3 and angle <= 0.1
