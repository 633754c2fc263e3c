"""Shared test fixtures: small hand-built raw recordings in both layouts."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from isoview_dask.metadata import write_push_config

SHARED = Path(__file__).resolve().parents[2] / "shared"


FRAMES = {0: (30, 40), 1: (30, 40), 2: (24, 36), 3: (24, 36)}  # camera -> (Y, X); 2/3 differ on purpose
DEPTH = 6


def write_raw_stack(path, camera, tp):
    y, x = FRAMES[camera]
    data = (np.arange(DEPTH * y * x, dtype=np.uint16).reshape(DEPTH, y, x) + 1000 * camera + tp)
    path.parent.mkdir(parents=True, exist_ok=True)
    data.astype("<u2").tofile(path)
    return data


def write_channel_xml(path, channel, cameras):
    dims = ",".join(f"{FRAMES[c][1]}x{FRAMES[c][0]}x{DEPTH}" for c in cameras)
    write_push_config(path, {"dimensions": dims, "camera_index": ",".join(map(str, cameras)),
                             "z_step": 2.5, "detection_objective": "Nikon 16x/0.8 W", "wavelength": 488 + channel})


def raw_name(tp, cam, ch):
    return f"SPC00_TM{tp:05d}_ANG000_CM{cam}_CHN{ch:02d}_PH0.stack"


def make_keller(root, timepoints=(0, 1)):
    spm = root / "SPM00"
    for tp in timepoints:
        tm = spm / f"TM{tp:05d}"
        write_channel_xml(tm / "ch0.xml", 0, [0, 1])
        write_channel_xml(tm / "ch1.xml", 1, [2, 3])
        for cam, ch in ((0, 0), (1, 0), (2, 1), (3, 1)):
            write_raw_stack(tm / "ANG000" / raw_name(tp, cam, ch), cam, tp)
    for cam in FRAMES:
        tifffile.imwrite(spm / f"Background_{cam}.tif", np.full(FRAMES[cam], 100 + cam, np.uint16))
    return root


def make_flat(root, timepoints=(0, 1, 2)):
    root.mkdir(parents=True, exist_ok=True)
    write_channel_xml(root / "ch0_spec00.xml", 0, [0, 1])
    for tp in timepoints:
        for cam in (0, 1):
            write_raw_stack(root / raw_name(tp, cam, 0), cam, tp)
    return root



@pytest.fixture
def keller_root(tmp_path):
    """A two-timepoint, four-camera Keller-layout recording (cameras 2/3 with a smaller frame)."""
    return make_keller(tmp_path / "rec")


@pytest.fixture
def flat_root(tmp_path):
    """A three-timepoint, two-camera flat-layout recording without dark frames."""
    return make_flat(tmp_path / "flat")


#: VW90's axes in VW00's terms for the isotropic tests: a proper rotation and a reflection (scan axis y)
ISOTROPIC_ORIENTATIONS = {"rotation": "+y,-z,+x", "reflection": "+y,+z,+x"}


@pytest.fixture(scope="session", params=[(kind, seed) for kind in sorted(ISOTROPIC_ORIENTATIONS) for seed in (0, 1, 2)],
                ids=lambda p: f"{p[0]}-{p[1]}")
def fourview_case(request):
    """A rendered four-view truth (3 seeds x rotation/reflection) and its registration, made once per session."""
    from isoview_dask.isotropic import register_views
    from isoview_dask.synthetic.fourview import FourViewSpec, fourview

    kind, seed = request.param
    truth = fourview(FourViewSpec(orientation=ISOTROPIC_ORIENTATIONS[kind], seed=seed))
    registration = register_views(truth.vw00, truth.voxel00, truth.vw90, truth.voxel90,
                                  psf_fwhm_um=truth.spec.psf_fwhm_um)
    return kind, truth, registration


def run_benchmark_script(name: str, argv: list[str]) -> None:
    """Import ``benchmarks/<name>.py`` as a module and run its ``main(argv)`` in this process (sys.path restored)."""
    import importlib.util
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", script)
    module = importlib.util.module_from_spec(spec)
    saved_path = list(sys.path)
    try:
        spec.loader.exec_module(module)
        assert module.main(argv) == 0
    finally:
        sys.path[:] = saved_path
