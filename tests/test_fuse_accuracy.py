"""Camera-pair fusion from raw synthetic recordings, against the generator's ground truth.

Each recording (cameras 0 and 1 of :mod:`isoview_dask.synthetic`) goes
through the pipeline's steps: dead-pixel repair, dark-frame subtraction and
segmentation (:mod:`isoview_dask.correct`), then flip, registration,
resampling, transition map, intensity matching and blending
(:mod:`isoview_dask.fuse`). The truth gives the pair's offset, rotation and
gain ratio, the clean specimen and the noise-free camera images.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import pytest

from isoview_dask.correct import (
    coordinate_masks,
    correct_dead_pixels,
    dead_pixel_mask,
    foreground_mask,
    pixel_statistics,
    smooth,
    subtract_background,
    threshold_level,
)
from isoview_dask.fuse import (
    apply_inplane_transform,
    apply_inplane_transform_numpy,
    blend,
    blending_weights,
    intensity_factor,
    register_pair,
    transition_plane_map,
    view_transform,
)
from isoview_dask.synthetic import SyntheticSpec, flip_lr, generate_dataset

SHAPE = (32, 160, 160)  # (Z, Y, X): room for +-20 px offsets around the specimen
CHUNKS = (8, 80, 96)  # uneven in x on purpose
SEEDS = (0, 1, 2)
#: (offset (dy, dx) px, rotation deg) of the pair (0, 1)
GEOMETRIES = (((12.3, -17.6), 0.7), ((-19.4, 8.2), -1.0), ((0.4, 19.7), 0.25))
BLENDING_RANGE = 6.0


@dataclass
class CorrectedPair:
    truth: object
    reference: np.ndarray  # camera 0, corrected (Z, Y, X) float32
    mask_ref: np.ndarray  # its foreground
    moving_flipped: np.ndarray  # camera 1, corrected and flipped left-right
    mask_mov_flipped: np.ndarray


def correct_camera(truth, camera: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw stack -> dead pixels repaired, dark frame subtracted, foreground mask (as the pipeline does)."""
    raw = da.from_array(truth.raw(camera), chunks=CHUNKS)
    mean_yx, std_yx = dask.compute(*pixel_statistics(raw))
    repaired = correct_dead_pixels(raw, dead_pixel_mask(mean_yx, std_yx).mask)
    corrected = subtract_background(repaired, truth.dark_frame(camera)).astype(np.float32)
    z_step, pixel, _ = truth.voxel_size_um
    smoothed = smooth(corrected, 2.0, spacing_ratio=z_step / pixel)
    mask = foreground_mask(smoothed, threshold_level(smoothed).level)
    return dask.compute(corrected, mask)


@pytest.fixture(scope="module")
def corrected_pair(tmp_path_factory):
    """Build (once per module) the corrected pair of a seed and geometry."""
    cache: dict[tuple[int, int], CorrectedPair] = {}

    def build(seed: int, geometry: int) -> CorrectedPair:
        key = (seed, geometry)
        if key not in cache:
            offset, rotation = GEOMETRIES[geometry]
            spec = SyntheticSpec(shape=SHAPE, cameras=(0, 1), seed=seed, offsets={(0, 1): offset},
                                 rotations_deg={(0, 1): rotation})
            out = tmp_path_factory.mktemp(f"pair-{seed}-{geometry}") / "recording"
            truth = generate_dataset(out, spec, scheduler="sync")
            reference, mask_ref = correct_camera(truth, 0)
            moving, mask_mov = correct_camera(truth, 1)
            cache[key] = CorrectedPair(truth, reference, mask_ref, view_transform(moving, flip_h=True),
                                       view_transform(mask_mov, flip_h=True))
        return cache[key]

    return build


@dataclass
class Fusion:
    registration: object
    intensity: object
    transition: np.ndarray
    fused: np.ndarray


def fuse_pair(pair: CorrectedPair, with_intensity: bool = True, blending_range: float = BLENDING_RANGE) -> Fusion:
    """The whole fusion of one pair, lazily on dask arrays, computing only small results and the end."""
    reference = da.from_array(pair.reference, chunks=CHUNKS)
    moving_flipped = da.from_array(pair.moving_flipped, chunks=CHUNKS)
    mask_ref = da.from_array(pair.mask_ref, chunks=CHUNKS)
    mask_mov_flipped = da.from_array(pair.mask_mov_flipped, chunks=CHUNKS)
    registration = register_pair(reference, moving_flipped, mask_ref=mask_ref, mask_mov=mask_mov_flipped)
    offset, rotation = registration.offset_yx, registration.rotation_deg
    moving_aligned = apply_inplane_transform(moving_flipped, offset, rotation, cval=np.nan)
    mask_mov_aligned = apply_inplane_transform(mask_mov_flipped.astype(np.float32), offset, rotation, order=0) > 0.5
    depth_ref, depth_mov = dask.compute(coordinate_masks(mask_ref)[0], coordinate_masks(mask_mov_aligned)[0])
    transition = transition_plane_map(depth_ref, depth_mov, SHAPE[0])
    intensity = intensity_factor(reference, moving_aligned, mask_ref, mask_mov_aligned) if with_intensity else None
    fused = blend(reference, moving_aligned, transition, blending_range, "adaptive", intensity)
    return Fusion(registration, intensity, transition, fused.compute())


def pearson(a, b) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


# --------------------------------------------------------------------------------------------- registration


@pytest.mark.parametrize("geometry", range(len(GEOMETRIES)))
@pytest.mark.parametrize("seed", SEEDS)
def test_registration_from_raw_data(corrected_pair, seed, geometry):
    pair = corrected_pair(seed, geometry)
    result = register_pair(pair.reference, pair.moving_flipped, mask_ref=pair.mask_ref,
                           mask_mov=pair.mask_mov_flipped)
    true_offset = np.array(pair.truth.offset((0, 1)))
    true_rotation = pair.truth.rotation_deg((0, 1))
    assert np.abs(np.subtract(result.offset_yx, true_offset)).max() <= 0.1, (result.offset_yx, true_offset)
    assert abs(result.rotation_deg - true_rotation) <= 0.1, (result.rotation_deg, true_rotation)
    assert result.confidence > 0.5 and result.details["rejected"] is None


def test_unrelated_recordings_have_low_confidence(corrected_pair):
    pair, other = corrected_pair(0, 0), corrected_pair(1, 1)
    related = register_pair(pair.reference, pair.moving_flipped, mask_ref=pair.mask_ref,
                             mask_mov=pair.mask_mov_flipped)
    unrelated = register_pair(pair.reference, other.moving_flipped, mask_ref=pair.mask_ref,
                              mask_mov=other.mask_mov_flipped, max_rotation_deg=5.0)
    # the same ellipsoidal body outline still correlates a little; the nuclei do not
    assert unrelated.confidence < 0.5 < related.confidence
    assert related.confidence - unrelated.confidence > 0.4


# --------------------------------------------------------------------------------------------- fusion


@pytest.fixture(scope="module")
def fusions(corrected_pair):
    """Fusion of one geometry per seed, with and without intensity matching."""
    results = {}
    for seed in SEEDS:
        pair = corrected_pair(seed, seed)
        results[seed] = (pair, fuse_pair(pair), fuse_pair(pair, with_intensity=False))
    return results


@pytest.mark.parametrize("seed", SEEDS)
def test_intensity_factor_matches_the_gain_ratio(fusions, seed):
    pair, fusion, _ = fusions[seed]
    true_ratio = pair.truth.gain_ratio((0, 1))
    assert fusion.intensity.ratio == pytest.approx(true_ratio, rel=0.05)
    assert fusion.intensity.scaled_camera == ("moving" if true_ratio < 1 else "reference")


@pytest.mark.parametrize("seed", SEEDS)
def test_fused_volume_beats_either_camera(fusions, seed):
    pair, fusion, _ = fusions[seed]
    truth = pair.truth
    clean = truth.clean(0)
    camera_1 = apply_inplane_transform_numpy(pair.moving_flipped, truth.offset((0, 1)), truth.rotation_deg((0, 1)))
    fused_score = pearson(fusion.fused, clean)
    assert np.isfinite(fusion.fused).all()
    assert fused_score > pearson(pair.reference, clean) + 0.01
    assert fused_score > pearson(camera_1, clean) + 0.01


@pytest.mark.parametrize("seed", SEEDS)
def test_no_intensity_step_at_the_transition(fusions, seed):
    """Mean-intensity profile along z of the fused volume over a seamless reference.

    The reference blends the two noise-free camera images (in photons, the
    moving one aligned with the true transform) with the same weights, so
    the ratio of the two profiles varies only by noise and by fusion
    errors. Its plane-to-plane changes across the transition must be no
    larger than elsewhere; without intensity matching they show the gain
    ratio (which checks that the test can see a step).
    """
    pair, fusion, unmatched = fusions[seed]
    truth = pair.truth
    in_photons = [truth.ideal(0) / truth.gain(0),
                  apply_inplane_transform_numpy(flip_lr(truth.ideal(1)), truth.offset((0, 1)),
                                                truth.rotation_deg((0, 1))) / truth.gain(1)]
    weight = blending_weights(fusion.transition, SHAPE[0], BLENDING_RANGE)
    seamless = weight * in_photons[0] + (1 - weight) * in_photons[1]
    body = truth.body_mask(0)
    planes = np.flatnonzero(body.sum(axis=(1, 2)) > 100)
    lo = np.floor(fusion.transition.min() - BLENDING_RANGE / 2 - 1)
    hi = np.ceil(fusion.transition.max() + BLENDING_RANGE / 2 + 1)
    across = (planes[:-1] >= lo) & (planes[1:] <= hi)

    def plane_steps(fused):
        profile = np.log([fused[k][body[k]].mean() / seamless[k][body[k]].mean() for k in planes])
        return np.diff(profile)

    steps = plane_steps(fusion.fused)
    assert np.abs(steps[across]).max() <= max(np.abs(steps[~across]).max(), 3 * steps[~across].std())
    assert np.abs(steps[across]).max() < 0.01
    log_ratio = np.log(truth.gain_ratio((0, 1)))
    unmatched_steps = plane_steps(unmatched.fused)
    assert unmatched_steps[across].sum() == pytest.approx(log_ratio, abs=0.01)
