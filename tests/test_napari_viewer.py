"""A real napari viewer opens a whole output folder through the plugin (under Xvfb).

Skips with the reason where napari or a display is missing, except under CI
(``CI=true``), where ``.ci/run`` installs both and a skip would hide a
broken plugin: there it fails instead.
"""

import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from isoview_dask.pipeline import process_dataset
from isoview_dask.synthetic import generate_dataset

IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the napari viewer test must run)")
    pytest.skip(reason)


def _start_xvfb():
    """An Xvfb server on a free display number; returns (process, ':N')."""
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    number = b""
    deadline = time.monotonic() + 20
    with os.fdopen(read, "rb") as pipe:
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            chunk = pipe.read(1)
            if not chunk:
                break
            number += chunk
    if not number.strip().isdigit():
        proc.kill()
        return None, None
    return proc, f":{number.strip().decode()}"


@pytest.fixture(scope="module")
def display():
    """A display for Qt: the one set, else a fresh Xvfb (napari needs OpenGL, which Qt's offscreen lacks)."""
    saved = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM")}
    proc = None
    if not os.environ.get("DISPLAY"):
        if shutil.which("Xvfb") is None:
            _unavailable("no display and no Xvfb (Debian: apt-get install xvfb libgl1-mesa-dri libegl1 ...)")
        proc, name = _start_xvfb()
        if proc is None:
            _unavailable("Xvfb did not start")
        os.environ["DISPLAY"] = name
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    yield os.environ["DISPLAY"]
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if proc is not None:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def napari(display):
    try:
        import napari
    except ImportError as err:
        _unavailable(f"napari is not installed (pip install '.[napari]'): {err}")
    return napari


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    root = tmp_path_factory.mktemp("napari_viewer")
    truth = generate_dataset(root / "syn", preset="tiny", timepoints=2)
    process_dataset(truth.raw_dir, root / "out", progress=False, fusion_diagnostics=False)
    return root / "out"


def _bright_box(shot: np.ndarray) -> tuple[int, int]:
    """(height, width) in screen pixels of the non-black part of a screenshot."""
    lit = shot[..., :3].max(axis=-1) > 0
    rows, cols = np.flatnonzero(lit.any(axis=1)), np.flatnonzero(lit.any(axis=0))
    assert rows.size and cols.size, "nothing drawn"
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def test_the_viewer_opens_an_output_folder_with_usable_contrast_and_true_aspect(napari, out):
    viewer = napari.Viewer(show=True)  # on Xvfb; a hidden viewer's screenshots are black under Mesa
    try:
        layers = viewer.open(str(out), plugin="isoview-dask")
        names = [layer.name for layer in layers]
        assert "VW00 fused CM00+CM01" in names and "CM01 corrected" in names
        assert len(layers) == 10  # 4 cameras, 2 fused views, 4 masks
        assert type(viewer.layers["CM00 segmentation mask"]).__name__ == "Labels"
        assert viewer.dims.nsteps[0] == 2  # the time axis

        # the fused view alone, middle plane: the specimen is drawn, neither blank nor saturated
        for layer in viewer.layers:
            layer.visible = layer.name == "VW00 fused CM00+CM01"
        fused = viewer.layers["VW00 fused CM00+CM01"]
        viewer.dims.ndisplay = 2
        viewer.dims.set_point(1, fused.scale[1] * (fused.data.shape[1] // 2))  # world µm
        viewer.reset_view()
        shot = viewer.screenshot(canvas_only=True, flash=False)
        green = shot[..., 1].astype(float)
        signal = green > 0.1 * 255
        assert signal.mean() > 0.02, "the signal region is blank"
        assert (green[signal] >= 254).mean() < 0.05, "the signal region is saturated"
        assert 0.15 * 255 < np.median(green[signal]) < 0.95 * 255

        # the xz view through the middle y: its displayed extents have the physical aspect
        cm00 = viewer.layers["CM00 corrected"]
        for layer in viewer.layers:
            layer.visible = layer is cm00
        low = float(cm00.data[0].min().compute())
        cm00.contrast_limits = (low - 2, low - 1)  # every voxel drawn at full brightness: the box is the slice
        viewer.dims.order = (0, 2, 1, 3)  # displayed axes: z (rows), x (columns)
        viewer.dims.set_point(2, cm00.scale[2] * (cm00.data.shape[2] // 2))
        viewer.reset_view()
        height, width = _bright_box(viewer.screenshot(canvas_only=True, flash=False))
        _, nz, _, nx = cm00.data.shape
        voxel = cm00.scale[1:]
        physical = (nz * voxel[0]) / (nx * voxel[2])
        assert height / width == pytest.approx(physical, rel=0.06)
        assert abs(height / width - nz / nx) > 0.2  # not the squashed, unit-scale aspect
        extent = np.asarray(cm00.extent.world)[:, [1, 3]]
        assert np.ptp(extent[:, 0]) / np.ptp(extent[:, 1]) == pytest.approx(physical, rel=0.06)
    finally:
        viewer.close()
