"""Diagnostic figures (PNG) of the fusion stage, drawn with matplotlib.

Each figure is small and made from arrays the stage already computed
(projections, the transition-plane map), so drawing never touches a volume.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _normalise(image: np.ndarray) -> np.ndarray:
    image = np.nan_to_num(np.asarray(image, dtype=np.float64))
    lo, hi = np.percentile(image, [1, 99.5])
    return np.clip((image - lo) / max(hi - lo, 1e-9), 0, 1)


def _overlay(reference: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Magenta reference, green moving: aligned structures turn grey/white."""
    r, m = _normalise(reference), _normalise(moving)
    return np.dstack([r, m, r])


def fusion_figures(stem: Path, images: dict, transition: np.ndarray, n_planes: int, blending_range: float,
                   profile: str, params: dict) -> list[Path]:
    """Write the fusion diagnostics next to ``stem`` and return their paths.

    ``stem`` is the fused volume path without suffix; figures are
    ``<stem>.registration.png``, ``.transitionPlane.png``, ``.blendingWeights.png``
    and ``.projections.png``.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # optional dependency (extra "plot")
        log.warning("matplotlib is not installed; skipping diagnostic figures")
        return []
    from ..fuse import blending_weights
    from ..io.atomic import atomic_output

    written = []

    def save(fig, kind):
        path = Path(f"{stem}.{kind}.png")
        with atomic_output(path, overwrite=True) as tmp:
            fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
        plt.close(fig)
        written.append(path)

    if "reference_xy" in images:
        fig, axes = plt.subplots(1, 2, figsize=(10, 5))
        axes[0].imshow(_overlay(images["reference_xy"], images["moving_xy"]))
        axes[0].set_title("before registration\nreference magenta, flipped moving green", fontsize=9)
        axes[1].imshow(_overlay(images["reference_xy"], images["aligned_xy"]))
        axes[1].set_title(f"after: offset {np.round(params['offset_yx_px'], 2).tolist()} px, "
                          f"{params['rotation_deg']:.3f} deg\nconfidence {params['registration_confidence']:.2f}",
                          fontsize=9)
        for ax in axes:
            ax.axis("off")
        save(fig, "registration")

    fig, ax = plt.subplots(figsize=(6, 5))
    shown = ax.imshow(transition, cmap="viridis")
    fig.colorbar(shown, ax=ax, label="transition plane (z index)")
    ax.set_title(f"transition plane ({params['blending_method']})")
    save(fig, "transitionPlane")

    centre = float(np.nanmedian(transition)) if np.isfinite(transition).any() else (n_planes - 1) / 2
    weights = blending_weights(centre, n_planes, blending_range, profile)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(n_planes), weights, label="reference camera")
    ax.plot(np.arange(n_planes), 1 - weights, label="moving camera")
    ax.axvline(centre, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("plane (z)")
    ax.set_ylabel("weight")
    ax.set_title(f"blending weights at the median transition, range {blending_range:g} planes")
    ax.legend()
    save(fig, "blendingWeights")

    fig, axes = plt.subplots(1, 2, figsize=(10, 5), gridspec_kw={"width_ratios": [1, 1]})
    axes[0].imshow(_normalise(images["fused_xy"]), cmap="gray")
    axes[0].set_title("fused, max projection along z")
    axes[1].imshow(_normalise(images["fused_xz"]), cmap="gray", aspect="auto")
    axes[1].set_title("fused, max projection along y")
    for ax in axes:
        ax.axis("off")
    save(fig, "projections")
    return written
