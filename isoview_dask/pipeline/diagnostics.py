"""Diagnostic figures (PNG) of the fusion stage, drawn with matplotlib.

Each figure is small and made from arrays the stage already computed
(projections, the transition-plane map), so drawing never touches a volume.
Figures are matplotlib ``Figure`` objects on the Agg canvas, never pyplot's
global state, so that many jobs (threads of a client or of a worker) draw at
once safely; the fusion stage draws them as a cluster task, off the client.
They are laid out by fixed margins, drawn once and saved as opaque RGB straight from the canvas
(no tight bounding box, which is a second full draw; a quarter less to compress than RGBA) with
fast PNG compression: drawing was a fifth of a small recording's CPU time. Every image is first
reduced to at most :data:`DISPLAY_PX` pixels per side (block means): a panel is a few hundred
pixels wide on the page, and normalising, colouring and resampling full 2048 x 2048 frames cost
more than the rest of a figure.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Resolution of the figures (dots per inch of their matplotlib size).
DPI = 90
#: Largest side (pixels) of an image handed to matplotlib; larger ones are reduced by block means
#: first. A panel of the figures is at most about 600 pixels wide at their 90 dpi.
DISPLAY_PX = 512


def display_image(image, max_px: int = DISPLAY_PX, *, keep_aspect: bool = True) -> np.ndarray:
    """A 2-D image reduced for display by means of pixel blocks.

    Each axis longer than ``max_px`` is reduced by the smallest integer
    factor that brings it to at most ``max_px``; with ``keep_aspect`` both
    axes take the larger of the two factors (for images drawn with square
    pixels), else each its own (for ``aspect='auto'`` panels such as an xz
    projection, whose few planes must not be averaged away). NaNs are left
    out of their block's mean (a block of NaNs stays NaN).

    Parameters
    ----------
    image : array (Y, X)
        Any real dtype.
    max_px : int
        Largest side of the result (pixels).
    keep_aspect : bool
        One factor for both axes.

    Returns
    -------
    ndarray (ceil(Y / fy), ceil(X / fx)) of float32
        The image itself (as float32) when it is already small enough.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        return image
    factors = [max(1, -(-n // max_px)) for n in image.shape]
    if keep_aspect:
        factors = [max(factors)] * 2
    fy, fx = factors
    if fy == fx == 1:
        return image
    height, width = -(-image.shape[0] // fy) * fy, -(-image.shape[1] // fx) * fx

    def block_sums(values):  # along x first (contiguous), then along y on the narrower result
        return values.reshape(height, width // fx, fx).sum(axis=2).reshape(height // fy, fy, -1).sum(axis=1)

    finite = np.isfinite(image)
    if (height, width) == image.shape and finite.all():
        return block_sums(image) * np.float32(1.0 / (fy * fx))
    padded = np.zeros((height, width), np.float32)
    padded[:image.shape[0], :image.shape[1]] = np.where(finite, image, 0)
    count = np.zeros((height, width), np.float32)
    count[:image.shape[0], :image.shape[1]] = finite
    total, count = block_sums(padded), block_sums(count)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def normalised_for_display(image: np.ndarray, keep_aspect: bool = True) -> np.ndarray:
    """The image reduced for display and scaled so that its 1st-99.5th percentiles span 0-1."""
    image = np.nan_to_num(display_image(image, keep_aspect=keep_aspect))
    lo, hi = np.percentile(image, [1, 99.5])
    return np.clip((image - lo) / max(hi - lo, 1e-9), 0, 1)


def overlay_image(reference: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Magenta reference, green moving: aligned structures turn grey/white."""
    r, m = normalised_for_display(reference), normalised_for_display(moving)
    return np.dstack([r, m, r])


FIGURES = ("registration", "transitionPlane", "blendingWeights", "projections", "channelTransition")


def fusion_figures(stem: Path, images: dict, transition: np.ndarray, n_planes: int, blending_range: float,
                   profile: str, params: dict, figures=FIGURES) -> list[Path]:
    """Write the fusion diagnostics next to ``stem`` and return their paths.

    ``stem`` is the fused volume path without suffix; figures are
    ``<stem>.registration.png``, ``.transitionPlane.png``, ``.blendingWeights.png``
    and ``.projections.png``, those named in ``figures``.
    """
    figure = _figure_class()
    if figure is None:
        return []
    written: list[Path] = []
    save = _saver(stem, written)

    if "reference_xy" in images and "registration" in figures:
        fig = figure(figsize=(14, 5))
        axes = fig.subplots(1, 3)
        axes[0].imshow(overlay_image(images["reference_xy"], images["moving_xy"]))
        _title(axes[0], "a  before: max projections along z\nreference magenta, flipped moving green\n"
                          "(white where they agree)", fontsize=9)
        axes[1].imshow(overlay_image(images["reference_xy"], images["aligned_xy"]))
        _title(axes[1], f"b  after: moving content moved\nby {np.round(params['offset_yx_px'], 2).tolist()} px "
                          f"(dy, dx)\nand {params['rotation_deg']:.3f} deg", fontsize=9)
        difference = normalised_for_display(images["reference_xy"]) - normalised_for_display(images["aligned_xy"])
        shown = axes[2].imshow(difference, cmap="RdBu_r", vmin=-1, vmax=1)
        fig.colorbar(shown, ax=axes[2], fraction=0.046, label="reference - moving (each 0-1)")
        _title(axes[2], f"c  after: difference\n(near 0 = aligned)\nconfidence "
                          f"{params['registration_confidence']:.2f}", fontsize=9)
        for ax in axes:
            ax.axis("off")
        save(fig, "registration")

    if "transitionPlane" in figures:
        _transition_figure(figure, save, transition, n_planes, blending_range, params)
    if "blendingWeights" in figures:
        _weights_figure(figure, save, transition, n_planes, blending_range, profile)
    if "projections" in figures:
        _projections(figure, save, images)
    return written


def _transition_figure(figure, save, transition, n_planes: int, blending_range: float, params: dict) -> None:
    fig = figure(figsize=(6, 5))
    ax = fig.subplots()
    finite = transition[np.isfinite(transition)]
    vmin, vmax = transition_colour_range(transition, blending_range, n_planes)
    centre, half = (vmin + vmax) / 2, (vmax - vmin) / 2
    height, width = np.shape(transition)
    # the reduced map drawn over the full frame's pixel coordinates
    shown = ax.imshow(display_image(transition), cmap="viridis", vmin=vmin, vmax=vmax,
                      extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    dz = (params.get("voxel_size_um_zyx") or [None])[0]
    unit = f", 1 plane = {dz:.3g} µm" if dz else ""
    fig.colorbar(shown, ax=ax, label=f"transition plane (plane index{unit})")
    _title(ax, f"transition plane ({params['blending_method']}): {finite.min() if finite.size else 0:.1f} to "
                 f"{finite.max() if finite.size else 0:.1f}\ncolours span +-{half:.1f} planes around the median "
                 f"{centre:.1f} (blending range {blending_range:g})", fontsize=9)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    save(fig, "transitionPlane")


def _weights_figure(figure, save, transition, n_planes: int, blending_range: float, profile: str) -> None:
    from ..fuse import blending_weights
    centre = float(np.nanmedian(transition)) if np.isfinite(transition).any() else (n_planes - 1) / 2
    weights = blending_weights(centre, n_planes, blending_range, profile)
    fig = figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(np.arange(n_planes), weights, label="reference camera")
    ax.plot(np.arange(n_planes), 1 - weights, label="moving camera")
    ax.axvline(centre, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("plane (z)")
    ax.set_ylabel("weight")
    _title(ax, f"blending weights at the median transition, range {blending_range:g} planes")
    ax.legend()
    save(fig, "blendingWeights")


def transition_colour_range(transition, blending_range: float, n_planes: int) -> tuple[float, float]:
    """Colour limits (planes) of a transition-plane map: centred on its median, spanning at least the
    blending range (a variation smaller than the blend changes nothing visible in the fused volume, so it
    should not look dramatic) and at least the map's own range."""
    values = np.asarray(transition, dtype=np.float64)
    finite = values[np.isfinite(values)]
    centre = float(np.median(finite)) if finite.size else (n_planes - 1) / 2
    spread = max(float(finite.max() - centre), float(centre - finite.min())) if finite.size else 0.0
    half = max(blending_range / 2, spread, 1.0)
    return centre - half, centre + half


def _title(ax, text: str, **kwargs) -> None:
    """An axes title at a fixed height: matplotlib's automatic title placement measures every tick
    label of the axes, a third of a figure's drawing time."""
    ax.set_title(text, y=1.0, pad=6, **kwargs)


def _figure_class():
    """matplotlib's ``Figure`` (drawn on the Agg canvas, no pyplot), or None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # optional dependency (extra "plot")
        log.warning("matplotlib is not installed; skipping diagnostic figures")
        return None
    return Figure


def _saver(stem: Path, written: list):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ..io.atomic import atomic_output

    def save(fig, kind):
        from PIL import Image
        path = Path(f"{stem}.{kind}.png")
        fig.set_dpi(DPI)
        canvas = FigureCanvasAgg(fig)
        fig.subplots_adjust(left=0.08, right=0.95, bottom=0.1, top=0.86, wspace=0.25, hspace=0.4)
        canvas.draw()
        # Opaque RGB straight from the canvas: a quarter less to compress than savefig's RGBA, and
        # no second pass over the figure for its bounding box.
        pixels = np.asarray(canvas.buffer_rgba())[..., :3]
        with atomic_output(path, overwrite=True) as tmp:
            Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="png", compress_level=1)
        written.append(path)
    return save


def _projections(figure, save, images: dict) -> None:
    fig = figure(figsize=(10, 5))
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1]})
    axes[0].imshow(normalised_for_display(images["fused_xy"]), cmap="gray")
    _title(axes[0], "fused, max projection along z")
    axes[1].imshow(normalised_for_display(images["fused_xz"], keep_aspect=False), cmap="gray", aspect="auto")
    _title(axes[1], "fused, max projection along y")
    for ax in axes:
        ax.axis("off")
    save(fig, "projections")


def channel_figures(stem: Path, estimates: list, n_columns: int, blending_range: float, profile: str,
                    method: str, images: dict | None = None, figures=FIGURES) -> list[Path]:
    """Write the illumination-channel fusion diagnostics next to ``stem`` and return their paths.

    Parameters
    ----------
    stem : Path
        The fused volume path without suffix.
    estimates : list of (camera, ChannelEstimate)
        One entry per channel-fused camera.
    n_columns : int
        Frame width X (columns), the axis the channels are blended along.
    blending_range : float
        The channel blending range (columns).
    images : dict, optional
        ``fused_xy`` / ``fused_xz`` max projections: also write ``.projections.png``
        (a lone camera; a camera pair draws its own).
    figures : sequence of str
        Which to draw ('channelTransition', 'projections').

    Notes
    -----
    ``<stem>.channelTransition.png``: per camera, the transition column map
    over (z, y) and the weights of both channels along x at its median, with
    the intensity ratio found.
    """
    figure = _figure_class()
    if figure is None:
        return []
    from ..fuse import blending_weights
    written: list[Path] = []
    save = _saver(stem, written)
    if images is not None and "projections" in figures:
        _projections(figure, save, images)
    if "channelTransition" not in figures:
        return written
    fig = figure(figsize=(11, 4 * len(estimates)))
    axes = fig.subplots(len(estimates), 2, squeeze=False)
    for (camera, estimate), (ax_map, ax_w) in zip(estimates, axes):
        a, b = estimate.channels
        transition = np.asarray(estimate.transition_zy, dtype=np.float64)
        if transition.ndim == 2:
            rows, columns = transition.shape
            shown = ax_map.imshow(display_image(transition, keep_aspect=False), cmap="viridis", aspect="auto",
                                  extent=(-0.5, columns - 0.5, rows - 0.5, -0.5))
            fig.colorbar(shown, ax=ax_map, label="transition column (x index)")
            ax_map.set_xlabel("y")
            ax_map.set_ylabel("plane (z)")
        else:
            ax_map.text(0.5, 0.5, f"one column: {float(transition):.1f}", ha="center", va="center")
            ax_map.axis("off")
        _title(ax_map, f"camera {camera}: transition column CHN{a:02d} | CHN{b:02d} ({method})", fontsize=9)
        centre = float(np.nanmedian(transition)) if np.isfinite(transition).any() else (n_columns - 1) / 2
        weights = blending_weights(centre, n_columns, blending_range, profile)
        columns = np.arange(n_columns)
        ax_w.plot(columns, weights, label=f"channel {a} (lit from low x)")
        ax_w.plot(columns, 1 - weights, label=f"channel {b} (lit from high x)")
        ax_w.axvline(centre, color="grey", lw=0.8, ls="--")
        ratio = "" if estimate.intensity is None else f", ratio b/a {estimate.intensity.ratio:.3f}"
        _title(ax_w, f"weights at the median column, range {blending_range:g} columns{ratio}", fontsize=9)
        ax_w.set_xlabel("column (x)")
        ax_w.set_ylabel("weight")
        ax_w.legend(fontsize=8)
    save(fig, "channelTransition")
    return written
