"""CPU or GPU: the array, ndimage and FFT modules that match an array, and the device choice.

The isotropic functions are written once against numpy's API; given CuPy
arrays they run on the GPU through ``cupy``, ``cupyx.scipy.ndimage`` and
``cupy.fft``. :func:`resolve_device` turns the ``isotropic.device`` option
(``cpu``, ``gpu``, ``auto``) into one of ``"cpu"`` and ``"gpu"``.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft
import scipy.ndimage

__all__ = ["array_module", "fft_module", "gpu_available", "ndimage_module", "resolve_device", "to_device", "to_host"]


@functools.cache
def _cupy():
    try:
        import cupy
    except Exception:  # noqa: BLE001 - no CuPy, or a CuPy without a working CUDA
        return None
    return cupy


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    cupy = _cupy()
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - driver missing or broken
        return False


def resolve_device(device: str) -> str:
    """``"cpu"`` or ``"gpu"`` for an ``isotropic.device`` option.

    Raises
    ------
    RuntimeError
        ``device="gpu"`` without CuPy and a GPU.
    ValueError
        An unknown name.
    """
    if device == "cpu":
        return "cpu"
    if device == "auto":
        return "gpu" if gpu_available() else "cpu"
    if device == "gpu":
        if not gpu_available():
            raise RuntimeError("isotropic.device = 'gpu' but CuPy with a CUDA GPU is not available "
                               "(pip install cupy-cuda12x on a machine with an NVIDIA GPU), or use 'cpu' / 'auto'")
        return "gpu"
    raise ValueError(f"unknown isotropic device {device!r}: expected 'cpu', 'gpu' or 'auto'")


def array_module(array):
    """numpy, or cupy for a CuPy array."""
    cupy = _cupy()
    if cupy is not None and isinstance(array, cupy.ndarray):
        return cupy
    return np


def ndimage_module(array):
    """scipy.ndimage, or cupyx.scipy.ndimage for a CuPy array."""
    if array_module(array) is np:
        return scipy.ndimage
    import cupyx.scipy.ndimage
    return cupyx.scipy.ndimage


def fft_module(array):
    """scipy.fft, or cupy.fft for a CuPy array."""
    if array_module(array) is np:
        return scipy.fft
    return _cupy().fft


def to_device(array, device: str):
    """``array`` on the device (a no-op on the CPU)."""
    if device == "gpu":
        return _cupy().asarray(array)
    return np.asarray(array)


def to_host(array) -> np.ndarray:
    """A numpy copy of a numpy or CuPy array."""
    if array_module(array) is np:
        return np.asarray(array)
    return array.get()
