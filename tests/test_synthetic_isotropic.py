"""Four-view ground truth of the synthetic generator: axial PSF, beads, the VW90 motion and orientation,
the VW00 -> VW90 transform and the ideal isotropic image."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from isoview_dask.cli import main
from isoview_dask.errors import IsoviewError
from isoview_dask.synthetic import (
    SyntheticSpec,
    camera_affine,
    flip_lr,
    generate_dataset,
    isotropic_transform,
    register_opposing,
    synthetic_isotropic_volume,
    synthetic_volume,
)
from isoview_dask.synthetic.specimen import model_for

FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))
MOTION = (2.0, 1.0, -1.5, 1.5, -1.0, 2.0)


@pytest.fixture(scope="module")
def iso_ds(tmp_path_factory):
    """The 'isotropic' preset on disk (four cameras, one timepoint)."""
    return generate_dataset(tmp_path_factory.mktemp("synth") / "iso", preset="isotropic")


def _beads_only(**overrides):
    """The isotropic preset with (almost) nothing but the beads: no body, nuclei at 1e-3 photons."""
    return SyntheticSpec.isotropic(body_level=0.0, photon_scale=1e-3, bead_brightness=6000.0, **overrides)


def _peaks(vol, rel=0.2):
    """Local maxima above ``rel`` of the maximum, away from the volume's faces."""
    top = ndimage.maximum_filter(vol, size=(3, 5, 5), mode="constant")
    found = np.argwhere((vol == top) & (vol > rel * vol.max()))
    inside = np.all((found >= 2) & (found <= np.array(vol.shape) - 3), axis=1)
    return found[inside]


def _marginals(vol, peak, half):
    box = vol[tuple(slice(p - h, p + h + 1) for p, h in zip(peak, half))].astype(np.float64)
    return [box.sum(axis=tuple(a for a in range(3) if a != ax)) for ax in range(3)]


def _gauss3(profile):
    """(centre offset, sigma) in samples of a sampled Gaussian from its top three samples (exact for a Gaussian)."""
    i = int(np.argmax(profile))
    lm, l0, lp = np.log(profile[i - 1:i + 2])
    curvature = lm - 2 * l0 + lp
    return i + 0.5 * (lm - lp) / curvature, math.sqrt(-1.0 / curvature)


def _bead_fits(vol, half):
    """Per bead: sub-voxel centre (index units) and sigma per axis (index units), from its marginal profiles."""
    centres, sigmas = [], []
    for peak in _peaks(vol):
        fits = [_gauss3(m) for m in _marginals(vol, peak, half)]
        centres.append([p - h + f[0] for p, h, f in zip(peak, half, fits)])
        sigmas.append([f[1] for f in fits])
    return np.array(centres), np.array(sigmas)


# ----------------------------------------------------------------------------------------------- defaults


def test_defaults_have_no_four_view_features():
    spec = SyntheticSpec()
    assert spec.axial_psf_fwhm_um is None and spec.beads == 0
    assert spec.vw90_motion == (0.0,) * 6 and spec.vw90_orientation == "reflection"
    assert not spec.uses_four_view_features
    assert spec.bead_brightness == 3 * spec.photon_scale
    assert spec.replace(photon_scale=500.0).bead_brightness == 1500.0     # derived again
    model = model_for(SyntheticSpec.tiny())
    assert len(model.axial_offsets) == 1 and len(model.bead_centre) == 0 and model.motion_inv is None
    # camera 2's geometry is the documented one (the 'reflection')
    Z, Y, X = spec.shape
    p, dz = spec.pixel_size_um, spec.z_step_um
    k, y, x = 3.0, 10.0, 20.0
    z_, y_, x_, _ = camera_affine(spec, 2) @ (k, y, x, 1.0)
    np.testing.assert_allclose((x_, y_, z_), ((k - (Z - 1) / 2) * dz, (y - (Y - 1) / 2) * p,
                                              (x - (X - 1) / 2) * p), atol=1e-12)
    # naming the defaults changes nothing
    named = SyntheticSpec.tiny(axial_psf_fwhm_um=None, beads=0, vw90_motion=(0, 0, 0, 0, 0, 0),
                               vw90_orientation="reflection")
    assert named == SyntheticSpec.tiny()
    for cam in (0, 2):
        np.testing.assert_array_equal(synthetic_volume(named, cam, 0, "raw").compute(),
                                      synthetic_volume(SyntheticSpec.tiny(), cam, 0, "raw").compute())


def test_without_axial_psf_each_plane_is_blurred_in_2d_only():
    """axial_psf_fwhm_um=None: ideal = gain * 2D blur of the clean plane (attenuation switched off)."""
    spec = SyntheticSpec.tiny(cameras=(0,), attenuation_length_um=1e12)
    model = model_for(spec)
    clean = synthetic_volume(spec, 0, 0, "clean").compute()
    ideal = synthetic_volume(spec, 0, 0, "ideal").compute() / np.float32(model.gains[0])
    for k in range(spec.shape[0]):
        sigma = model.blur_sigma[0][k]
        expected = ndimage.gaussian_filter(clean[k], sigma, mode="constant", truncate=4.0) if sigma > 0.01 \
            else clean[k]
        np.testing.assert_allclose(ideal[k], expected, rtol=1e-5, atol=1e-3 * clean.max())
    blurred = synthetic_volume(spec.replace(axial_psf_fwhm_um=3.0), 0, 0, "ideal").compute() / model.gains[0]
    assert np.abs(blurred - ideal).max() > 0.05 * ideal.max()


def test_default_dataset_writes_no_isotropic_volume(tmp_path):
    truth = generate_dataset(tmp_path / "d", preset="tiny", cameras=(0, 2))
    assert not (tmp_path / "d" / "truth" / "volumes.zarr" / "TM00000" / "isotropic").exists()
    section = truth.data["isotropic"]
    assert section["ideal_written"] is False and truth.data["beads"]["count"] == 0
    assert truth.bead_positions_um.shape == (0, 3)
    assert np.linalg.det(truth.isotropic_transform()[:3, :3]) == pytest.approx(-1.0)
    # still available, rendered from the spec
    ideal = truth.isotropic_ideal()
    Z, Y, X = truth.shape
    assert ideal.shape == (math.floor((Z - 1) * truth.spec.z_step_um / truth.spec.pixel_size_um + 1e-9) + 1, Y, X)


# ----------------------------------------------------------------------------------------------- axial PSF


def test_axial_psf_same_bytes_any_slab_size(tmp_path, iso_ds):
    again = generate_dataset(tmp_path / "again", iso_ds.spec, slab_planes=5)
    for cam in iso_ds.cameras:
        assert again.stack_path(cam).read_bytes() == iso_ds.stack_path(cam).read_bytes()
        np.testing.assert_array_equal(again.ideal(cam), iso_ds.ideal(cam))
    np.testing.assert_array_equal(again.isotropic_ideal(), iso_ds.isotropic_ideal())
    np.testing.assert_array_equal(synthetic_isotropic_volume(iso_ds.spec, slab_planes=7).compute(),
                                  iso_ds.isotropic_ideal())


def test_axial_quadrature_matches_a_fine_convolution():
    """The axial blur of the continuous specimen equals a brute-force convolution of finely spaced planes.

    Spec B samples the same specimen every pixel (0.406 µm) along z without an axial PSF; its plane 5k + 2
    is spec A's plane k. Convolving B along z with the axial Gaussian must give A's ideal.
    """
    A = SyntheticSpec.isotropic(cameras=(0,), beads=0)
    B = A.replace(shape=(120, 96, 96), z_step_um=0.406, axial_psf_fwhm_um=None)
    np.testing.assert_array_equal(model_for(A).semi, model_for(B).semi)
    a = synthetic_volume(A, 0, 0, "ideal").compute().astype(np.float64)
    b = synthetic_volume(B, 0, 0, "ideal").compute().astype(np.float64)
    sigma = 3.35 / FWHM
    j = np.arange(-18, 19)                               # +-5 sigma in 0.406 µm steps
    w = np.exp(-(j * 0.406) ** 2 / (2 * sigma**2))
    w /= w.sum()
    planes = range(4, 20)                                # those with the whole kernel inside B
    error = max(np.abs(a[k] - np.tensordot(w, b[5 * k + 2 + j], axes=1)).max() for k in planes)
    assert error < 2e-3 * a.max()
    unblurred = max(np.abs(a[k] - b[5 * k + 2]).max() for k in planes)
    assert unblurred > 0.1 * a.max()


@pytest.mark.parametrize("camera", [0, 2])
def test_bead_has_the_requested_axial_fwhm(camera):
    spec = _beads_only(cameras=(camera,))
    vol = synthetic_volume(spec, camera, 0, "ideal").compute()
    _, sigmas = _bead_fits(vol, (2, 4, 4))
    assert len(sigmas) == spec.beads
    axial = sigmas[:, 0] * spec.z_step_um * FWHM                  # sampled every plane: fit, not half-maximum count
    np.testing.assert_allclose(axial, 3.35, rtol=0.10)
    np.testing.assert_allclose(axial, math.sqrt(3.35**2 + (0.1 * FWHM) ** 2), rtol=0.01)   # bead size added
    lateral = sigmas[:, 1:] * spec.pixel_size_um * FWHM
    np.testing.assert_allclose(lateral, 0.77, rtol=0.10)


# ----------------------------------------------------------------------------------------------- transform


@pytest.mark.parametrize("orientation, det", [("reflection", -1.0), ("rotation", 1.0)])
def test_transform_maps_bead_centroids(orientation, det):
    """A bead's sub-voxel centre in camera 0 (as s00) maps through T onto its centre in camera 2 (as s90)."""
    spec = _beads_only(cameras=(0, 2), vw90_orientation=orientation, vw90_motion=MOTION)
    T = isotropic_transform(spec)
    assert np.linalg.det(T[:3, :3]) == pytest.approx(det, abs=1e-12)
    np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-12)
    S = np.diag(spec.voxel_size_um + (1.0,))
    np.testing.assert_allclose(T, S @ np.linalg.inv(camera_affine(spec, 2)) @ camera_affine(spec, 0)
                               @ np.linalg.inv(S), atol=1e-9)
    step = np.array(spec.voxel_size_um)
    s00 = _bead_fits(synthetic_volume(spec, 0, 0, "ideal").compute(), (2, 4, 4))[0] * step
    s90 = _bead_fits(synthetic_volume(spec, 2, 0, "ideal").compute(), (2, 4, 4))[0] * step
    assert len(s00) == len(s90) == spec.beads
    mapped = s00 @ T[:3, :3].T + T[:3, 3]
    nearest = np.linalg.norm(mapped[:, None] - s90[None], axis=2).argmin(axis=1)
    assert len(set(nearest)) == spec.beads
    error = np.abs(mapped - s90[nearest]) / step                  # voxels of VW90
    assert error.max() < 0.3
    # and the centres found in camera 0 are the truth's
    from isoview_dask.synthetic.volumes import bead_positions_vw00_um
    truth = bead_positions_vw00_um(spec)
    assert (np.linalg.norm(s00[:, None] - truth[None], axis=2).min(axis=1)[:, None] / step).max() < 0.1
    # without the motion the map would be wrong by far more than that
    still = isotropic_transform(spec.replace(vw90_motion=(0,) * 6))
    assert (np.abs(s00 @ still[:3, :3].T + still[:3, 3] - s90[nearest]) / step).max() > 2


def test_motion_moves_only_cameras_2_and_3():
    spec = SyntheticSpec.isotropic(beads=0, axial_psf_fwhm_um=None, vw90_motion=(0.0,) * 6)
    moved = spec.replace(vw90_motion=MOTION)
    for cam in range(4):
        same = np.array_equal(synthetic_volume(spec, cam, 0, "raw").compute(),
                              synthetic_volume(moved, cam, 0, "raw").compute())
        assert same == (cam in (0, 1))
    # camera 2 images specimen point s at M(s): its affine is inv(M) @ geometry
    M = model_for(moved).motion
    np.testing.assert_allclose(camera_affine(moved, 2), np.linalg.inv(M) @ camera_affine(spec, 2), atol=1e-12)


@pytest.mark.parametrize("orientation", ["reflection", "rotation"])
def test_opposing_convention_holds_for_cameras_2_3(orientation):
    """Camera 3 is camera 2 mirrored left-right plus the pair offset and rotation, in both orientations."""
    spec = SyntheticSpec.isotropic(beads=0, vw90_orientation=orientation, vw90_motion=MOTION,
                                   offsets={(2, 3): (1.3, -2.4)}, rotations_deg={(2, 3): 0.6})
    ref = synthetic_volume(spec, 2, 0, "clean").compute().astype(np.float64)
    b = flip_lr(synthetic_volume(spec, 3, 0, "clean").compute().astype(np.float64))
    m = np.zeros(ref.shape, bool)
    m[:, 10:-10, 10:-10] = True

    def rms(offset, theta):
        g = register_opposing(b, offset, theta)
        return float(np.sqrt(np.mean((ref[m] - g[m]) ** 2)) / np.sqrt(np.mean(ref[m] ** 2)))

    good = rms((1.3, -2.4), 0.6)
    assert good < 0.02
    assert rms((-1.3, 2.4), 0.6) > 10 * good
    # and the two orientations differ: columns reversed
    other = "rotation" if orientation == "reflection" else "reflection"
    flipped = synthetic_volume(spec.replace(vw90_orientation=other), 2, 0, "clean").compute()
    np.testing.assert_allclose(flipped[..., ::-1], ref, rtol=1e-4, atol=1e-3 * ref.max())


# ----------------------------------------------------------------------------------------------- ideal isotropic


def test_ideal_isotropic_bead_fwhm_is_the_lateral_fwhm():
    spec = _beads_only(cameras=(0,))
    ideal = synthetic_isotropic_volume(spec).compute()
    assert ideal.shape == (116, 96, 96)
    _, sigmas = _bead_fits(ideal, (4, 4, 4))
    assert len(sigmas) == spec.beads
    np.testing.assert_allclose(sigmas * spec.pixel_size_um * FWHM, 0.77, rtol=0.10)
    peak = model_for(spec).gains[0] * spec.bead_brightness
    assert ideal.max() == pytest.approx(peak, rel=0.25)       # a bead's peak, up to its sub-voxel position


def test_ideal_isotropic_without_psf_is_camera_0_clean():
    """Without lateral PSF the ideal isotropic image at z = k * z_step is camera 0's clean plane k times its gain."""
    spec = SyntheticSpec.isotropic(psf_sigma_px=0.0, cameras=(0,))
    ideal = synthetic_isotropic_volume(spec).compute()
    clean = synthetic_volume(spec, 0, 0, "clean").compute() * np.float32(model_for(spec).gains[0])
    np.testing.assert_allclose(ideal[::5], clean, rtol=1e-4, atol=1e-4 * float(clean.max()))


def test_isotropic_truth_on_disk(iso_ds):
    spec = iso_ds.spec
    assert spec == SyntheticSpec.isotropic()
    assert spec.shape == (24, 96, 96) and spec.z_step_um == 2.03 and spec.pixel_size_um == 0.406
    section = iso_ds.data["isotropic"]
    assert section["ideal_written"] and section["vw90_orientation"] == "reflection"
    assert section["vw90_motion"]["rotation_deg_zyx"] == list(MOTION[:3])
    assert section["psf"]["lateral_fwhm_um"] == pytest.approx(0.77)
    assert section["psf"]["axial_fwhm_um"] == 3.35
    assert iso_ds.isotropic_voxel_um == 0.406
    T = iso_ds.isotropic_transform(0)
    np.testing.assert_array_equal(T, isotropic_transform(spec))
    S = np.diag(iso_ds.voxel_size_um + (1.0,))
    C0, C2 = iso_ds.camera_affine(0), iso_ds.camera_affine(2)
    np.testing.assert_allclose(T, S @ np.linalg.inv(C2) @ C0 @ np.linalg.inv(S), atol=1e-9)
    np.testing.assert_allclose(iso_ds.vw90_motion @ C2, model_for(spec).lab_affine(2, 0), atol=1e-12)
    # beads: in the specimen frame, in VW00's and VW90's frames, outside the body and inside every view
    beads = iso_ds.bead_positions_um
    assert beads.shape == (20, 3)
    semi = np.array(iso_ds.body_semi_axes_um)
    assert np.all(np.sum((beads / semi) ** 2, axis=1) > 1.2)
    homog = np.c_[beads, np.ones(len(beads))]
    np.testing.assert_allclose(iso_ds.bead_positions_vw00_um, (S @ np.linalg.inv(C0) @ homog.T).T[:, :3], atol=1e-9)
    np.testing.assert_allclose(iso_ds.bead_positions_vw90_um(0), (S @ np.linalg.inv(C2) @ homog.T).T[:, :3],
                               atol=1e-9)
    for cam in range(4):
        idx = (np.linalg.inv(iso_ds.camera_affine(cam)) @ homog.T).T[:, :3]
        assert np.all(idx >= 1) and np.all(idx <= np.array(iso_ds.shape) - 2)
    # the ideal isotropic image, written and as rendered
    ideal = iso_ds.isotropic_ideal(0)
    assert ideal.dtype == np.float32 and ideal.shape == tuple(section["ideal_shape_zyx"]) == (116, 96, 96)
    np.testing.assert_array_equal(ideal, synthetic_isotropic_volume(spec).compute())
    # truth.json round trip
    data = json.loads((iso_ds.root / "truth" / "truth.json").read_text())
    assert len(data["isotropic"]["transform_vw00_to_vw90"]) == spec.timepoints


# ----------------------------------------------------------------------------------------------- spec and CLI


@pytest.mark.parametrize("field, value", [
    ("axial_psf_fwhm_um", 0.0), ("beads", -1), ("bead_brightness", -5.0), ("vw90_motion", (1.0, 2.0)),
    ("vw90_motion", (60.0, 0, 0, 0, 0, 0)), ("vw90_motion", (0, 0, 0, 100.0, 0, 0)), ("vw90_orientation", "mirror"),
])
def test_bad_four_view_fields(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticSpec.tiny(**{field: value})


def test_too_many_beads_is_refused():
    with pytest.raises(IsoviewError, match="could not place"):
        model_for(SyntheticSpec.tiny(beads=500))


def test_cli_synth_four_view_options(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", str(out), "--preset", "tiny", "--beads", "3", "--axial-psf-fwhm", "3.0",
                 "--bead-brightness", "5000", "--vw90-motion", "1,0.5,0,0.5,0,-0.5",
                 "--vw90-orientation", "rotation", "--no-truth-volumes"]) == 0
    spec = json.loads((out / "truth" / "truth.json").read_text())["spec"]
    assert spec["beads"] == 3 and spec["axial_psf_fwhm_um"] == 3.0 and spec["bead_brightness"] == 5000.0
    assert spec["vw90_motion"] == [1.0, 0.5, 0.0, 0.5, 0.0, -0.5] and spec["vw90_orientation"] == "rotation"
    capsys.readouterr()
    assert main(["synth", str(tmp_path / "bad"), "--preset", "tiny", "--vw90-motion", "1,2"]) == 2
    assert "--vw90-motion" in capsys.readouterr().err
