"""The isotropic stage wired to files: a whole run with it enabled on a small four-camera synthetic recording
(orientation and transform against the truth, OME-NGFF scale, JSON, figures), resuming after an interruption,
a worker memory limit below one view's size, uint16 output, the fallback of an untrusted registration, the
time-lapse smoothing of the transforms, the BigStitcher export of VW90's registration, and the
configuration and command line."""

import json
import shutil
import time

import dask.array as da
import numpy as np
import pytest

from isoview_dask.cli import main
from isoview_dask.config import ConfigError, ProcessingConfig
from isoview_dask.io import open_volume, write_volume
from isoview_dask.isotropic import displacement_rms
from isoview_dask.isotropic.geometry import orientation_name
from isoview_dask.pipeline import process_dataset
from isoview_dask.pipeline.common import output_path, relative_outputs, write_json
from isoview_dask.pipeline.isotropic import (KIND, LUT_KIND, REGISTRATION_KIND, MissingFusedViewError, find_fused,
                                             isotropic_dataset, isotropic_targets, lut_path, register_target,
                                             smooth_transforms, transform_from_parameters, transform_parameters)
from isoview_dask.synthetic import generate_dataset

CAMERAS, CHANNELS = [0, 1, 2, 3], [0, 1]
# the deconvolution with few iterations keeps the run short; the method itself is tested in tests of
# isoview_dask.isotropic
ISOTROPIC = dict(isotropic_enable=True, isotropic_iterations=3)


def true_transform(truth, timepoint: int) -> np.ndarray:
    """VW00 -> VW90 in physical µm from the cameras' affines: VW00 is camera 0's frame, VW90 camera 2's."""
    scale = np.diag(list(truth.voxel_size_um) + [1.0])
    return scale @ np.linalg.inv(truth.camera_affine(2, timepoint)) @ truth.camera_affine(0, timepoint) @ \
        np.linalg.inv(scale)


def stem_path(out, t, kind=KIND, fmt="zarr"):
    return output_path(out, 0, t, CAMERAS, CHANNELS, kind, fmt)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Two timepoints of the tiny preset (16 x 64 x 64 per camera), corrected, fused and reconstructed by one run."""
    root = tmp_path_factory.mktemp("isotropic")
    truth = generate_dataset(root / "syn", preset="tiny", timepoints=2, seed=4)
    out = root / "out"
    start = time.perf_counter()
    summaries = process_dataset(truth.raw_dir, out, progress=False, **ISOTROPIC)
    print(f"run with the isotropic stage: {time.perf_counter() - start:.1f} s")
    return truth, out, summaries


def test_run_writes_isotropic_volume_record_and_figures(recording):
    truth, out, summaries = recording
    counts = {name: (len(s.written), len(s.failed)) for name, s in summaries.items()}
    assert counts == {"correct": (8, 0), "fuse": (4, 0), "isotropic_registration": (2, 0), "isotropic": (2, 0)}
    for t in range(2):
        record = json.loads(stem_path(out, t, fmt="json").read_text())
        registration = json.loads(stem_path(out, t, REGISTRATION_KIND, "json").read_text())
        truth_transform = true_transform(truth, t)
        assert np.allclose(truth_transform, truth.isotropic_transform(t))  # the generator's own record of it
        # the orientation found is the cameras' true one; the transform within a lateral pixel over the specimen
        assert registration["registration"]["orientation"] == orientation_name(truth_transform[:3, :3]) == "+x,+y,+z"
        points = np.stack(np.meshgrid(*[np.linspace(4, 20, 5)] * 3, indexing="ij"), -1).reshape(-1, 3)
        error = displacement_rms(np.array(record["transform_vw00_to_vw90_um"]), truth_transform, points)
        confidence = registration["registration"]["confidence"]
        print(f"TM{t}: transform error {error:.3f} µm rms, confidence {confidence:.3f}")
        assert error < truth.voxel_size_um[1]
        assert registration["transform_source"] == record["transform_source"] == "registered"
        assert registration["initial_from_timepoint"] == (None if t == 0 else 0)  # t=1 starts from t=0
        assert registration["registration"]["orientation_source"] == ("search" if t == 0 else "initial")
        # the grid: VW00's frame at its lateral pixel, float32, OME-NGFF scale = the voxel on all axes
        voxel = truth.voxel_size_um[1]
        assert record["grid"]["voxel_um"] == pytest.approx(voxel) and record["dtype"] == "float32"
        assert record["grid"]["shape"] == [int(np.floor((n - 1) * v / voxel + 1e-9)) + 1
                                           for n, v in zip(truth.shape, truth.voxel_size_um)]
        path = stem_path(out, t)
        attrs = json.loads((path / "zarr.json").read_text())["attributes"]["ome"]
        assert attrs["version"] == "0.5"
        scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
        assert scale == pytest.approx([voxel] * 3)
        # the record names its inputs, PSFs, options and timings; the block divides the output shard
        assert record["views"]["vw00"]["cameras"] == [0, 1] and record["views"]["vw90"]["cameras"] == [2, 3]
        assert record["psf"]["source"].startswith("xml") and record["psf"]["target_fwhm_um"] == \
            pytest.approx(record["psf"]["fwhm_um"][0])
        assert record["options"]["method"] == "deconvolution" and record["options"]["iterations"] == 3
        assert all(s % b == 0 for s, b in zip(record["output_shard_zyx"], record["block_zyx"]))
        assert record["timings"]["total_s"] > 0 and record["clipped_fraction"] is None
        for kind in ("slices", "checkerboard"):  # the figures of timepoints 0, 10, 20, ... (fusion.figures_every)
            png = path.with_suffix(f".{kind}.png")
            if t == 0:
                assert png.is_file() and png.name in record["outputs"]
                assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            else:
                assert not png.exists() and png.name not in record["outputs"]
        # values: the result is both views combined (it resembles each of them, VW00 the more, in its frame)
        result = open_volume(path).compute()
        assert result.dtype == np.float32 and np.isfinite(result).all() and result.min() >= 0
        from isoview_dask.isotropic import correlation, output_grid, resample_view
        grid = output_grid(truth.shape, truth.voxel_size_um)
        vw00 = open_volume(output_path(out, 0, t, [0, 1], 0, "fusedStack"))
        vw90 = open_volume(output_path(out, 0, t, [2, 3], 1, "fusedStack"))
        up00 = resample_view(vw00, truth.voxel_size_um, grid).compute()
        up90 = resample_view(vw90, truth.voxel_size_um, grid, np.array(record["transform_vw00_to_vw90_um"]),
                             scale=record["scale90"]).compute()
        inside = up00 > np.percentile(up00, 50)
        c00, c90 = correlation(result, up00, inside), correlation(result, up90, inside)
        print(f"TM{t}: correlation with VW00 upsampled {c00:.3f}, with VW90 mapped {c90:.3f}")
        assert c00 > 0.85 and c90 > 0.85
        assert result[inside].mean() == pytest.approx(up00[inside].mean(), rel=0.2)
        # and the specimen: the ideal isotropic image of the truth (sharp, unattenuated) on the same grid
        ideal = truth.isotropic_ideal(t)
        assert ideal.shape == result.shape
        print(f"TM{t}: correlation with the ideal {correlation(result, ideal):.3f} (VW00 alone "
              f"{correlation(up00, ideal):.3f})")
        assert correlation(result, ideal) > 0.95
    # the run left a record of the isotropic stage that names the fused views it read
    runs = sorted((out / "isoview-runs").glob("*-isotropic-*.json"))
    assert len(runs) == 1
    assert len(json.loads(runs[0].read_text())["inputs"]) == 4


def test_rerun_skips_and_an_interrupted_reconstruction_is_redone(recording, tmp_path, monkeypatch):
    truth, out, _ = recording
    config = ProcessingConfig.from_flags(**ISOTROPIC)
    record_path = stem_path(out, 1, fmt="json")
    before = record_path.read_text()
    mtime = record_path.stat().st_mtime_ns
    summaries = isotropic_dataset(out, config=config, progress=False)
    assert [len(s.skipped) for s in summaries.values()] == [2, 2]
    assert not any(s.written for s in summaries.values())
    assert record_path.stat().st_mtime_ns == mtime and record_path.read_text() == before

    # A killed job: the write raises once its temporary output exists, and nothing cleans up after it.
    import isoview_dask.cluster as cluster
    from isoview_dask.io.zarr import PendingZarrWrite
    real_compute = cluster.compute

    def killed(*args, label=None, **kwargs):
        if label and "isotropic reconstruction" in label:
            raise KeyboardInterrupt("killed")
        return real_compute(*args, label=label, **kwargs)
    record_path.unlink()
    final = stem_path(out, 1)
    shutil.rmtree(final)
    monkeypatch.setattr(cluster, "compute", killed)
    monkeypatch.setattr(PendingZarrWrite, "abort", lambda self: None)
    with pytest.raises(KeyboardInterrupt):
        isotropic_dataset(out, config=config, progress=False, input_timepoints=[1])
    monkeypatch.undo()
    partials = list(final.parent.glob(f".{final.name}.partial-*"))
    assert partials and not final.exists() and not record_path.exists()  # nothing that looks finished
    # an older leftover (a run on another day, no owner in its name) is removed too
    stale = final.with_name(f".{final.name}.partial-0123456789ab")
    stale.mkdir()
    summaries = isotropic_dataset(out, config=config, progress=False)
    assert [len(s.skipped) for s in summaries.values()] == [2, 1]
    assert summaries["isotropic"].written == [str(final)]
    assert not list(final.parent.glob(f".{final.name}.partial-*"))
    redone = json.loads(record_path.read_text())
    assert redone["fingerprint"] == json.loads(before)["fingerprint"]
    assert np.allclose(open_volume(final).compute(), open_volume(final).compute())


def test_uint16_output_records_scale_and_clipping(recording, tmp_path):
    truth, out, _ = recording
    other = tmp_path / "uint16"
    # the registration is reused (its record matches: same inputs, options, no earlier timepoint)
    registration = stem_path(out, 0, REGISTRATION_KIND, "json")
    stem_path(other, 0, REGISTRATION_KIND, "json").parent.mkdir(parents=True)
    shutil.copy(registration, stem_path(other, 0, REGISTRATION_KIND, "json"))
    summaries = isotropic_dataset(out, other, progress=False, input_timepoints=[0], isotropic_dtype="uint16",
                                  isotropic_figures=[], **ISOTROPIC)
    assert len(summaries["isotropic_registration"].skipped) == 1 and len(summaries["isotropic"].written) == 1
    record = json.loads(stem_path(other, 0, fmt="json").read_text())
    stored = open_volume(stem_path(other, 0)).compute()
    reference = open_volume(stem_path(out, 0)).compute()
    assert stored.dtype == np.uint16 and record["dtype"] == "uint16"
    scale = record["uint16_scale"]
    assert scale > 0 and record["uint16_meaning"] == "value = stored / uint16_scale"
    # the sampled peak with its headroom maps near the top of the range; nothing clips here
    assert record["clipped_fraction"] == pytest.approx(float((reference * scale > 65535).mean()))
    assert record["clipped_fraction"] < 1e-3
    assert np.abs(stored / scale - reference).max() <= 0.5 / scale + 1e-3 * reference.max()
    assert 1000 < stored.max() <= 65535


def test_gpu_without_a_gpu_fails_that_output_clearly(recording, tmp_path):
    from isoview_dask.isotropic.backend import gpu_available
    if gpu_available():
        pytest.skip("a GPU is here")
    truth, out, _ = recording
    other = tmp_path / "gpu"
    stem_path(other, 0, REGISTRATION_KIND, "json").parent.mkdir(parents=True)
    shutil.copy(stem_path(out, 0, REGISTRATION_KIND, "json"), stem_path(other, 0, REGISTRATION_KIND, "json"))
    summaries = isotropic_dataset(out, other, progress=False, input_timepoints=[0], isotropic_device="gpu",
                                  **ISOTROPIC)
    (why,) = summaries["isotropic"].failed.values()
    assert why.startswith("isotropic.device = 'gpu' but CuPy")
    assert not stem_path(other, 0).exists() and not stem_path(other, 0, fmt="json").exists()


def test_untrusted_registration_falls_back(recording, tmp_path, caplog):
    truth, out, _ = recording
    config = ProcessingConfig.from_flags(isotropic_min_confidence=0.9999, isotropic_orientation="+x,+y,+z")
    targets = isotropic_targets(find_fused(out), out, config)
    assert [t.timepoint for t in targets] == [0, 1]
    first = register_target(targets[0], tmp_path, config)
    assert first["transform_source"] == "translation-only" and "no earlier timepoint" in first["fallback"]
    assert first["fallback"].startswith("fine rigid fit rejected")
    previous = (0, json.loads(stem_path(out, 0, REGISTRATION_KIND, "json").read_text()))
    second = register_target(targets[1], tmp_path, config, previous)
    assert second["transform_source"] == "previous timepoint" and "timepoint 0" in second["fallback"]
    assert second["transform_vw00_to_vw90_um"] == previous[1]["transform_vw00_to_vw90_um"]
    assert "isotropic registration not trusted" in caplog.text
    on_disk = json.loads(stem_path(tmp_path, 1, REGISTRATION_KIND, "json").read_text())
    assert on_disk["fallback"] == second["fallback"]


def test_missing_fused_view_names_the_file(recording, tmp_path):
    truth, out, _ = recording
    copy = tmp_path / "out"
    shutil.copytree(out / "SPM00" / "TM000000", copy / "SPM00" / "TM000000")
    for path in (copy / "SPM00" / "TM000000").glob("*CM02_CM03_CHN01.fusedStack.json"):
        path.unlink()
    summaries = isotropic_dataset(copy, progress=False, isotropic_figures=[])
    failed = summaries["isotropic_registration"].failed
    (name, why), = failed.items()
    assert "SPM00_TM000000_CM02_CM03_CHN*.fusedStack.zarr" in why and "run 'isoview-dask fuse' first" in why
    # the output is named by the channels it would combine (here only VW00's is known)
    assert "VW90" in why and list(summaries["isotropic"].failed) == [str(output_path(copy, 0, 0, CAMERAS, [0],
                                                                                         KIND, "zarr"))]
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFusedViewError, match="run 'isoview-dask fuse'"):
        isotropic_dataset(tmp_path / "empty", progress=False)


def test_time_lapse_transforms_smoothed_static_and_tabulated(recording, tmp_path):
    truth, out, _ = recording
    other = tmp_path / "smoothed"
    for t in range(2):  # the registrations are reused (complete, same inputs and starts)
        target = stem_path(other, t, REGISTRATION_KIND, "json")
        target.parent.mkdir(parents=True)
        shutil.copy(stem_path(out, t, REGISTRATION_KIND, "json"), target)
    summaries = isotropic_dataset(out, other, smooth=True, progress=False, fusion_static=True,
                                  isotropic_figures=[], isotropic_method="average")
    assert len(summaries["isotropic_registration"].skipped) == 2 and len(summaries["isotropic"].written) == 2
    assert len(summaries["isotropic_smooth"].written) == 1
    lut = json.loads(lut_path(other, 0, CAMERAS, CHANNELS).read_text())
    assert lut_path(other, 0, CAMERAS, CHANNELS).name == f"SPM00_CM00_CM01_CM02_CM03_CHN00_CHN01.{LUT_KIND}.json"
    assert lut_path(other, 0, CAMERAS, CHANNELS, "csv").is_file()
    used = [np.array(row["transform_vw00_to_vw90_um"]) for row in lut["timepoints"]]
    assert np.allclose(used[0], used[1])  # static: one transform for every timepoint
    estimated = [np.array(json.loads(stem_path(out, t, REGISTRATION_KIND, "json").read_text())
                          ["transform_vw00_to_vw90_um"]) for t in range(2)]
    mean_centre = np.mean([row["estimated"]["centre_z_um"] for row in lut["timepoints"]])
    assert lut["timepoints"][0]["used"]["centre_z_um"] == pytest.approx(mean_centre)
    for t in range(2):
        record = json.loads(stem_path(other, t, fmt="json").read_text())
        assert record["transform_source"] == "static (fusion.static)"
        assert np.allclose(record["transform_vw00_to_vw90_um"], used[t])
        assert displacement_rms(used[t], estimated[t], np.array([[10.0, 13.0, 13.0]])) < 0.5
    again = isotropic_dataset(out, other, smooth=True, progress=False, fusion_static=True, isotropic_figures=[],
                              isotropic_method="average")
    assert len(again["isotropic_smooth"].skipped) == 1 and len(again["isotropic"].skipped) == 2


def test_transform_parameters_round_trip_and_smoothing():
    from scipy.spatial.transform import Rotation
    rotation = Rotation.from_rotvec([0.02, -0.01, 0.015]).as_matrix()
    orientation = "+x,+y,+z"
    from isoview_dask.isotropic import orientation_matrix
    transform = np.eye(4)
    transform[:3, :3] = orientation_matrix(orientation) @ rotation
    transform[:3, 3] = [1.5, -2.0, 0.7]
    centre = np.array([12.0, 13.0, 14.0])
    params = transform_parameters(transform, orientation, centre)
    assert np.allclose(params["stretch"], np.eye(3).ravel())
    assert np.degrees(np.linalg.norm([0.02, -0.01, 0.015])) == pytest.approx(np.linalg.norm(
        params["rotation_vector_deg"]))
    rebuilt = transform_from_parameters(orientation, centre, params["centre_um"], params["rotation_vector_deg"],
                                        params["stretch"])
    assert np.allclose(rebuilt, transform, atol=1e-12)
    # a series with a fallback in the middle: it is left out and gets its neighbours' values
    records = []
    for t in range(7):
        moved = transform.copy()
        moved[:3, 3] += [0.1 * t, 0.0, 0.0]
        fallback = "fit rejected" if t == 3 else None
        if t == 3:
            moved[:3, 3] += [5.0, 5.0, 5.0]
        records.append({"timepoint": t, "fallback": fallback, "scale90": 1.0 + 0.01 * t,
                        "transform_vw00_to_vw90_um": moved.tolist(),
                        "registration": {"orientation": orientation, "transform_vw00_to_vw90_um": moved.tolist()},
                        "views": {"vw00": {"shape_zyx": [16, 64, 64], "voxel_size_um_zyx": [1.6, 0.4, 0.4]}}})
    config = ProcessingConfig.from_flags(fusion_smoothing_window=5)
    smoothed = smooth_transforms(records, config)
    assert smoothed["dropped"].tolist() == [t == 3 for t in range(7)]
    assert smoothed["transforms"][3][0, 3] == pytest.approx(transform[0, 3] + 0.3, abs=0.05)
    assert smoothed["used"]["scale90"][3] == pytest.approx(1.03, abs=0.005)
    static = smooth_transforms(records, config.replace(fusion_static=True))
    assert all(np.allclose(static["transforms"][0], m) for m in static["transforms"])


def test_timelapse_plans_isotropic_after_fusions(recording):
    """In a time-lapse, each timepoint's registration waits for that timepoint's fusions and the previous
    registration; one smoothing step waits for every registration."""
    from isoview_dask.pipeline.common import StageSummary
    from isoview_dask.pipeline.timelapse import _smoothed_fusions
    truth, out, _ = recording
    config = ProcessingConfig.from_flags(**ISOTROPIC)
    jobs = _smoothed_fusions(out, config, StageSummary("smooth"), StageSummary("isotropic_smooth"))
    fusions = [j for j in jobs if j.stage == "fuse"]
    registrations = [j for j in jobs if j.stage == "isotropic_registration"]
    assert len(fusions) == 4 and len(registrations) == 2
    assert registrations[0].deps == tuple(j.key for j in fusions if "TM000000" in j.key)
    assert registrations[1].deps == tuple(j.key for j in fusions if "TM000001" in j.key) + (registrations[0].key,)
    assert jobs[-1].deps == tuple(j.key for j in registrations) and jobs[-1].expand is not None


def test_bigstitcher_export_carries_the_isotropic_registration(recording, tmp_path):
    from isoview_dask.bigstitcher import read_bigstitcher, write_bigstitcher
    truth, out, _ = recording
    content = read_bigstitcher(write_bigstitcher(out, tmp_path / "bigstitcher.xml"))
    setup90 = next(i for i, s in content["setups"].items() if s["attributes"]["angle"] == 90)
    setup00 = next(i for i, s in content["setups"].items() if s["attributes"]["angle"] == 0)
    record = json.loads(stem_path(out, 1, fmt="json").read_text())
    transform = np.array(record["transform_vw00_to_vw90_um"])
    voxel = np.array(truth.voxel_size_um)
    # a VW00 voxel and the VW90 voxel the registration maps it to land on the same world point
    k00 = np.array([8.0, 30.0, 20.0])
    s90 = transform[:3, :3] @ (k00 * voxel) + transform[:3, 3]
    k90 = s90 / voxel
    to_world = lambda setup, k: (content["models"][(1, setup)] @ np.r_[k[::-1], 1.0])[:3]  # noqa: E731
    assert np.allclose(to_world(setup90, k90), to_world(setup00, k00), atol=1e-6)
    # only VW90's registrations gain the transform (one per timepoint)
    assert (tmp_path / "bigstitcher.xml").read_text().count("isotropic registration: VW90 onto VW00") == 2


# ------------------------------------------------------------------------------------------ memory

DZ, PIXEL = 2.0, 1.0
SHIFT_UM = np.array([3.0, -2.0, 5.0])  # VW90 = VW00 turned by +x,+y,+z and moved by this


def _profile(n: int, step: float, seed: int):
    rng = np.random.default_rng(seed)
    length = (n - 1) * step
    centres, widths = rng.uniform(0.15, 0.85, 6) * length, rng.uniform(0.02, 0.06, 6) * length

    def f(s):
        values = 0.2 * np.exp(-0.5 * ((s - length / 2) / (0.3 * length)) ** 2)
        return values + sum(np.exp(-0.5 * ((s - c) / w) ** 2) for c, w in zip(centres, widths))
    return f


def _fused_view(root, cameras, channel, shape, voxel, function, dtype):
    """A fused view written as the fusion stage would, from a separable specimen evaluated block by block."""
    def block(_, block_info=None):
        location = block_info[None]["array-location"]
        axes = [np.arange(*span) * v for span, v in zip(location, voxel)]
        return function(*axes).astype(dtype)
    volume = da.zeros(shape, dtype=dtype, chunks=(32, 512, 512)).map_blocks(block, dtype=dtype)
    target = output_path(root, 0, 0, list(cameras), channel, "fusedStack")
    write_volume(volume, target, voxel_size_zyx=voxel, codec="blosc-lz4", chunks=(8, 256, 256), shards=(32, 512, 512))
    record = target.with_suffix(".json")
    write_json(record, {"voxel_size_um_zyx": list(voxel), "shape_zyx": list(shape), "fingerprint": f"view-{cameras}",
                        "outputs": relative_outputs(record, [target])})
    return volume.nbytes


def test_worker_memory_limit_below_one_view(tmp_path):
    """VW00 (64 x 1024 x 1056 float64, 554 MB) is larger than a worker's 512 MiB memory limit: the stage
    still completes on a two-worker cluster (each task reads only its block's windows) and writes what a
    run without a cluster writes."""
    from isoview_dask.cluster import client_context
    shape00 = (64, 1024, 1056)
    fz, fy, fx = (_profile(n, v, seed) for n, v, seed in zip(shape00, (DZ, PIXEL, PIXEL), (1, 2, 3)))
    fused = tmp_path / "fused"
    nbytes = _fused_view(fused, (0, 1), 0, shape00, (DZ, PIXEL, PIXEL),
                         lambda z, y, x: 1000 * fz(z)[:, None, None] * fy(y)[None, :, None] * fx(x)[None, None, :],
                         np.float64)
    # VW90: its planes along VW00's x (8 µm apart), rows along y, columns along z (4 µm pixels)
    voxel90 = (8.0, 4.0, 4.0)
    shape90 = (132, 256, 32)
    _fused_view(fused, (2, 3), 1, shape90, voxel90,
                lambda k, i, j: 800 * fx(k - SHIFT_UM[0])[:, None, None] * fy(i - SHIFT_UM[1])[None, :, None]
                * fz(j - SHIFT_UM[2])[None, None, :], np.float32)
    limit = 512 * 2**20
    assert nbytes > limit
    config = ProcessingConfig.from_flags(isotropic_method="average", isotropic_voxel_um=4.0,
                                         isotropic_registration_voxel_um=8.0, isotropic_orientation="+x,+y,+z",
                                         isotropic_fit="translation", isotropic_figures=[],
                                         isotropic_psf_fwhm_um=[2.0, 6.0])
    start = time.perf_counter()
    with client_context(n_workers=2, threads_per_worker=1, memory_limit=limit, quiet=True):
        summaries = isotropic_dataset(fused, tmp_path / "cluster", config, progress=False)
    print(f"on the cluster: {time.perf_counter() - start:.1f} s")
    assert [len(s.written) for s in summaries.values()] == [1, 1]
    record = json.loads(stem_path(tmp_path / "cluster", 0, fmt="json").read_text())
    assert record["task_memory_budget_bytes"] == limit // 4 and record["task_memory_bytes"] <= limit // 4
    transform = np.array(record["transform_vw00_to_vw90_um"])
    expected = np.eye(4)
    expected[:3, :3] = [[0, 0, 1], [0, 1, 0], [1, 0, 0]]
    expected[:3, 3] = SHIFT_UM
    assert np.abs(transform - expected).max() < 0.5  # µm; the registration level has 8 µm voxels
    # Without a cluster, with the same blocks (the registration record reused): the same volume.
    serial = tmp_path / "serial"
    stem_path(serial, 0).parent.mkdir(parents=True)
    shutil.copy(stem_path(tmp_path / "cluster", 0, REGISTRATION_KIND, "json"),
                stem_path(serial, 0, REGISTRATION_KIND, "json"))
    start = time.perf_counter()
    isotropic_dataset(fused, serial, config.replace(isotropic_block=record["block_zyx"]), progress=False)
    print(f"without a cluster: {time.perf_counter() - start:.1f} s")
    on_cluster, alone = (open_volume(stem_path(root, 0)).compute() for root in (tmp_path / "cluster", serial))
    assert on_cluster.shape == tuple(record["shape_zyx"]) and on_cluster.max() > 100
    assert np.array_equal(on_cluster, alone)


# ------------------------------------------------------------------------------------------ configuration

def test_defaults_are_the_reconstruction_defaults():
    from dataclasses import fields

    from isoview_dask.isotropic import ReconstructionOptions
    section, options = ProcessingConfig().isotropic, ReconstructionOptions()
    for f in fields(ReconstructionOptions):
        if f.name != "block":  # the stage's block follows the output's shards
            assert getattr(section, f.name) == getattr(options, f.name), f.name


def test_options_round_trip_and_bad_values_name_the_option(tmp_path):
    config = ProcessingConfig.from_flags(isotropic_enable=True, isotropic_views="0,1:2,3",
                                         isotropic_psf_fwhm_um="0.8,3.0", isotropic_orientation="-y,+z,+x",
                                         isotropic_block="16,64,64", isotropic_dtype="uint16",
                                         isotropic_target_fwhm_um=0, isotropic_figures="slices")
    assert config.isotropic.views == ((0, 1), (2, 3)) and config.isotropic.block == (16, 64, 64)
    assert config.isotropic.figures == ("slices",) and config.isotropic.target_fwhm_um == 0.0
    for path in (tmp_path / "c.toml", tmp_path / "c.json"):
        assert ProcessingConfig.load(config.save(path)) == config
    bad = {"isotropic_method": ("lucy", "isotropic.method"), "isotropic_orientation": ("+z,+y,+x",
                                                                                      "isotropic.orientation"),
           "isotropic_views": ("0,1", "isotropic.views"), "isotropic_psf": ("psf.tif", "isotropic.psf_voxel_um"),
           "isotropic_dtype": ("uint8", "isotropic.dtype"), "isotropic_block": ("4,64,64", "isotropic.block"),
           "isotropic_min_confidence": (1.5, "isotropic.min_confidence")}
    for flag, (value, name) in bad.items():
        with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
            ProcessingConfig.from_flags(**{flag: value})


def test_rerun_includes_the_isotropic_stage(recording):
    """A run record of the isotropic stage reruns it; a fusion record whose configuration enables it reruns the
    fusion and then the isotropic stage (everything is complete here: all skipped)."""
    from isoview_dask.provenance import list_runs, rerun
    truth, out, _ = recording
    records = list_runs(out)
    stages = [json.loads(path.read_text())["stage"] for path in records]
    assert stages[:3] == ["correct", "fuse", "isotropic"]
    done = rerun(out, index=2, progress=False)
    assert done.stage == "isotropic" and set(done.summaries) == {"isotropic_registration", "isotropic"}
    assert [len(s.skipped) for s in done.summaries.values()] == [2, 2]
    done = rerun(out, index=1, progress=False)
    assert list(done.summaries) == ["fuse", "isotropic_registration", "isotropic"]
    assert [len(s.skipped) for s in done.summaries.values()] == [4, 2, 2] and not done.failed


def test_command_line(recording, tmp_path, capsys):
    truth, out, _ = recording
    assert main(["isotropic", str(out), "--isotropic-method", "lucy", "--no-cluster"]) == 2
    assert "isotropic.method: 'lucy' is not one of" in capsys.readouterr().err
    (tmp_path / "nothing").mkdir()
    assert main(["isotropic", str(tmp_path / "nothing"), "--no-cluster"]) == 2
    assert "run 'isoview-dask fuse'" in capsys.readouterr().err
    # complete outputs: everything skipped, through the command
    assert main(["isotropic", str(out), "--no-cluster", "--isotropic-iterations", "3"]) == 0
    text = capsys.readouterr().out
    assert "isotropic: 0 written, 2 skipped (complete), 0 failed" in text
    for command in ("run", "timelapse", "isotropic"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--isotropic-method" in capsys.readouterr().out


def test_psf_measured_on_the_beads_of_the_isotropic_preset(tmp_path):
    """``isotropic.psf = beads`` on the preset with beads: the recorded PSF is the truth's, within 10 %, and
    the reconstruction reuses the registration's measurement."""
    truth = generate_dataset(tmp_path / "syn", preset="isotropic", timepoints=1)
    out = tmp_path / "out"
    summaries = process_dataset(truth.raw_dir, out, progress=False, isotropic_psf="beads",
                                isotropic_figures=[], **ISOTROPIC)
    assert len(summaries["isotropic"].written) == 1
    registration = json.loads(output_path(out, 0, 0, CAMERAS, CHANNELS, REGISTRATION_KIND, "json").read_text())
    record = json.loads(output_path(out, 0, 0, CAMERAS, CHANNELS, KIND, "json").read_text())
    assert registration["psf_source"].startswith("beads") and "VW00" in registration["psf_source"]
    lateral, axial = registration["psf_fwhm_um"]
    spec = truth.spec
    bead = 2.3548 * 0.1
    assert lateral == pytest.approx(np.hypot(2.3548 * spec.psf_sigma_px * spec.pixel_size_um, bead), rel=0.1)
    assert axial == pytest.approx(np.hypot(spec.axial_psf_fwhm_um, bead), rel=0.1)
    assert record["psf"]["fwhm_um"] == pytest.approx([lateral, axial])


def test_complete_isotropic_outputs_need_no_cluster(recording, tmp_path):
    """The isotropic jobs carry a completion check: a rerun of a complete run has no work (no cluster starts);
    a missing isotropic record is work again."""
    from isoview_dask.pipeline.run import has_work

    truth, out, _ = recording
    config = ProcessingConfig.from_flags(**ISOTROPIC)
    assert not has_work(truth.raw_dir, out, config)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    stem_path(copy, 1, fmt="json").unlink()
    assert has_work(truth.raw_dir, copy, config)
