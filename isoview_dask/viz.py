"""Figures for notebooks: projections, overlays, transition maps, blending weights, parameters over time.

Every function returns a matplotlib ``Figure`` (shown inline by Jupyter) and
computes only small reductions of lazy volumes (max projections), so it can
be pointed at a whole recording. matplotlib is optional
(``pip install isoview-dask[plot]``); it is imported on first use. The
image scaling and the magenta/green overlay are those of the fusion
stage's diagnostic PNGs (:mod:`isoview_dask.pipeline.diagnostics`)::

    from isoview_dask import fuse, viz
    result = fuse(cfg, "out/")
    viz.fusion_summary(result[(0, 0, (0, 1), 0)])
    viz.projections("out/SPM00/TM000000/SPM00_TM000000_CM00_CM01_CHN00.fusedStack.zarr")
    viz.parameters_over_time("out/")
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .pipeline.diagnostics import normalised_for_display, overlay_image

__all__ = ["blending_profile", "fusion_summary", "overlay", "parameters_over_time", "projections",
           "transition_map"]

AXES = {"xy": 0, "xz": 1, "yz": 2}


def _plt():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise ImportError("isoview_dask.viz needs matplotlib: pip install 'isoview-dask[plot]'") from exc
    return plt


def _volume(volume):
    """A path (any supported format) or an array, as an array."""
    if isinstance(volume, (str, os.PathLike)):
        from .io import open_volume
        return open_volume(volume)
    return volume


def _max_projections(volume, axes: Sequence[str]) -> list[np.ndarray]:
    import dask
    volume = _volume(volume)
    if getattr(volume, "ndim", 3) == 2:
        return [np.asarray(volume)] * len(axes)
    reductions = [volume.max(axis=AXES[a]) for a in axes]
    if any(hasattr(r, "dask") for r in reductions):
        reductions = dask.compute(*reductions)
    return [np.asarray(r) for r in reductions]


def projections(volume, *, axes: Sequence[str] = ("xy", "xz", "yz"), title: str | None = None,
                scale: Sequence[float] | None = None, figsize=None):
    """Maximum projections of a volume (array or path) side by side.

    ``scale`` (z, y, x voxel size) sets the aspect ratio of the xz / yz panels.
    """
    plt = _plt()
    unknown = [a for a in axes if a not in AXES]
    if unknown:
        raise ValueError(f"axes: {unknown[0]!r} is not one of {list(AXES)}")
    images = _max_projections(volume, axes)
    fig, panels = plt.subplots(1, len(axes), figsize=figsize or (4.0 * len(axes), 4.0), squeeze=False)
    for ax, name, image in zip(panels[0], axes, images):
        aspect = "equal"
        if scale is not None and name != "xy":
            aspect = float(scale[0]) / float(scale[1 if name == "xz" else 2])
        ax.imshow(normalised_for_display(image), cmap="gray", aspect=aspect)
        ax.set_title(f"max projection along {'zyx'[AXES[name]]} ({name})", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig


def overlay(reference, moving, *, title: str | None = None, ax=None):
    """Reference in magenta, moving in green (aligned structures turn grey/white).

    Volumes are reduced to their xy max projection first.
    """
    plt = _plt()
    ref, mov = (_max_projections(v, ("xy",))[0] for v in (reference, moving))
    if ref.shape != mov.shape:
        raise ValueError(f"reference and moving images differ in shape: {ref.shape} and {mov.shape}")
    fig = ax.figure if ax is not None else plt.subplots(figsize=(5, 5))[0]
    ax = ax or fig.axes[0]
    ax.imshow(overlay_image(ref, mov))
    ax.set_title(title or "reference magenta, moving green", fontsize=9)
    ax.axis("off")
    return fig


def transition_map(transition_yx, *, title: str | None = None, ax=None):
    """The transition plane per pixel (z index), with a colour bar."""
    plt = _plt()
    fig = ax.figure if ax is not None else plt.subplots(figsize=(5.5, 4.5))[0]
    ax = ax or fig.axes[0]
    shown = ax.imshow(np.asarray(transition_yx, dtype=float), cmap="viridis")
    fig.colorbar(shown, ax=ax, label="transition plane (z index)")
    ax.set_title(title or "transition plane", fontsize=9)
    return fig


def blending_profile(transition: float, n_planes: int, blending_range: float, profile: str = "sigmoid", *,
                     ax=None):
    """Weights of the two cameras along z around one transition plane."""
    from .fuse import blending_weights
    plt = _plt()
    fig = ax.figure if ax is not None else plt.subplots(figsize=(6, 3.5))[0]
    ax = ax or fig.axes[0]
    weights = blending_weights(float(transition), int(n_planes), float(blending_range), profile)
    z = np.arange(int(n_planes))
    ax.plot(z, weights, label="reference camera")
    ax.plot(z, 1 - weights, label="moving camera")
    ax.axvline(float(transition), color="grey", lw=0.8, ls="--")
    ax.set_xlabel("plane (z)")
    ax.set_ylabel("weight")
    ax.set_title(f"blending weights, range {blending_range:g} planes ({profile})", fontsize=9)
    ax.legend(fontsize=8)
    return fig


def fusion_summary(pair, *, blending_range: float | None = None, profile: str | None = None):
    """Four panels for one :class:`isoview_dask.api.PairFusion` from ``fuse(...)``: overlay after
    registration, transition map, blending weights at its median, fused xy projection."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 9))
    params = pair.parameters or {}
    if pair.reference is not None and pair.moving_aligned is not None:
        overlay(pair.reference, np.nan_to_num(_max_projections(pair.moving_aligned, ("xy",))[0]), ax=axes[0, 0],
                title=f"after registration (confidence {params.get('registration_confidence', float('nan')):.2f})")
    else:
        axes[0, 0].axis("off")
    transition = pair.transition_yx
    if transition is not None:
        transition_map(transition, ax=axes[0, 1])
        centre = float(np.nanmedian(transition))
    else:
        axes[0, 1].axis("off")
        centre = float((params.get("transition_plane") or {}).get("median", 0.0))
    n_planes = (pair.fused.shape[0] if pair.fused is not None else
                (params.get("shape_zyx") or [int(round(2 * centre)) + 1])[0])
    rng = blending_range if blending_range is not None else params.get("blending_range", 10.0)
    blending_profile(centre, n_planes, rng, profile or params.get("blending_profile", "sigmoid"), ax=axes[1, 0])
    if pair.fused is not None:
        axes[1, 1].imshow(normalised_for_display(_max_projections(pair.fused, ("xy",))[0]), cmap="gray")
        axes[1, 1].set_title("fused, max projection along z", fontsize=9)
    axes[1, 1].axis("off")
    s, t, (a, b), ch = pair.key
    fig.suptitle(f"SPM{s:02d} TM{t:06d} CM{a:02d}+CM{b:02d} CHN{ch:02d}")
    return fig


PANELS = (("sampling_dy", "used_sampling_dy", "sampling offset dy (px)"),
          ("sampling_dx", "used_sampling_dx", "sampling offset dx (px)"),
          ("sampling_rotation_deg", "used_sampling_rotation_deg", "sampling rotation (deg)"),
          ("intensity_ratio", "used_intensity_ratio", "intensity ratio (moving / reference)"),
          ("transition_median", "used_transition_median", "transition plane, median"),
          ("confidence", None, "registration confidence"))


def parameters_over_time(rows_or_out, *, specimen: int = 0, pair: Sequence[int] = (0, 1), channel: int = 0):
    """Estimated (dots) and used (line) fusion parameters over time, outliers in red.

    ``rows_or_out`` is an output root or the rows of
    :func:`isoview_dask.pipeline.timelapse.parameter_table`.
    """
    plt = _plt()
    if isinstance(rows_or_out, (str, os.PathLike)):
        from .pipeline.timelapse import parameter_table
        rows_or_out = parameter_table(rows_or_out)
    rows = [r for r in rows_or_out if r["specimen"] == specimen and r["channel"] == channel
            and (r["reference_camera"], r["moving_camera"]) == tuple(pair)]
    if not rows:
        raise ValueError(f"no parameters for specimen {specimen}, cameras {tuple(pair)}, channel {channel}")
    t = np.array([r["timepoint"] for r in rows])
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(8, 1.8 * len(PANELS)), sharex=True)

    def series(name):
        return np.array([np.nan if r.get(name) is None else float(r[name]) for r in rows])

    flagged = np.array([bool(r.get("dropped")) or bool(r.get("outlier")) for r in rows])
    for ax, (estimated, used, label) in zip(axes, PANELS):
        values = series(estimated)
        ax.plot(t[~flagged], values[~flagged], "o", color="0.45", ms=3, label="estimated")
        if flagged.any():
            ax.plot(t[flagged], values[flagged], "x", color="tab:red", ms=7, mew=2, label="outlier / left out")
        if used is not None and np.isfinite(series(used)).any():
            ax.plot(t, series(used), "-", color="tab:blue", lw=1.5, label="used")
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="best")
    axes[-1].set_xlabel("timepoint")
    fig.suptitle(f"SPM{specimen:02d} CM{pair[0]:02d}+CM{pair[1]:02d} CHN{channel:02d}: parameters over time",
                 fontsize=10)
    fig.tight_layout()
    return fig
