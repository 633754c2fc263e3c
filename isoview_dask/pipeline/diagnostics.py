"""Diagnostic figures (PNG) of the fusion stage, drawn with matplotlib.

Each figure is small and made from arrays the stage already computed
(projections, the transition-plane map), so drawing never touches a volume.
Figures are matplotlib ``Figure`` objects on the Agg canvas, never pyplot's
global state, so that many jobs (threads of a client or of a worker) draw at
once safely; the fusion stage draws them as a cluster task, off the client.
Each thread builds a figure's axes, ticks and colorbars once per layout (image shapes, plane
count) and then only replaces the data and texts for each output: building was more than a third
of a figure's cost, and it is the same for every timepoint of a recording. The parts that never
change are also drawn only once, into a background each output starts from (:data:`BLIT`).
Figures are laid out by fixed margins, drawn once and saved as opaque RGB straight from the canvas
(no tight bounding box, which is a second full draw; a quarter less to compress than RGBA) with
fast PNG compression. Every image is first reduced to at most :data:`DISPLAY_PX` pixels per side
(block means): a panel is a few hundred pixels wide on the page, and normalising, colouring and
resampling full 2048 x 2048 frames cost more than the rest of a figure.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import NamedTuple

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
    if not _have_matplotlib():
        return []
    written: list[Path] = []
    if "reference_xy" in images and "registration" in figures:
        reference = normalised_for_display(images["reference_xy"])
        moving = normalised_for_display(images["moving_xy"])
        aligned = normalised_for_display(images["aligned_xy"])
        offset = np.round(params["offset_yx_px"], 2).tolist()
        titles = ("a  before: max projections along z\nreference magenta, flipped moving green\n"
                  "(white where they agree)",
                  f"b  after: moving content moved\nby {offset} px (dy, dx)\nand {params['rotation_deg']:.3f} deg",
                  f"c  after: difference\n(near 0 = aligned)\nconfidence {params['registration_confidence']:.2f}")
        template = _template(_RegistrationFigure, (reference.shape, moving.shape, aligned.shape),
                             np.dstack([reference, moving, reference]), np.dstack([reference, aligned, reference]),
                             reference - aligned, titles)
        written.append(template.save(stem, "registration"))
    if "transitionPlane" in figures:
        written.append(_transition_figure(stem, transition, n_planes, blending_range, params))
    if "blendingWeights" in figures:
        written.append(_weights_figure(stem, transition, n_planes, blending_range, profile))
    if "projections" in figures:
        written.append(_projections(stem, images))
    return written


def _transition_figure(stem: Path, transition, n_planes: int, blending_range: float, params: dict) -> Path:
    finite = transition[np.isfinite(transition)]
    vmin, vmax = transition_colour_range(transition, blending_range, n_planes)
    centre, half = (vmin + vmax) / 2, (vmax - vmin) / 2
    dz = (params.get("voxel_size_um_zyx") or [None])[0]
    unit = f", 1 plane = {dz:.3g} µm" if dz else ""
    title = (f"transition plane ({params['blending_method']}): {finite.min() if finite.size else 0:.1f} to "
             f"{finite.max() if finite.size else 0:.1f}\ncolours span +-{half:.1f} planes around the median "
             f"{centre:.1f} (blending range {blending_range:g})")
    shown = display_image(transition)
    template = _template(_TransitionFigure, (shown.shape, np.shape(transition)), shown, np.shape(transition),
                         vmin, vmax, f"transition plane (plane index{unit})", title)
    return template.save(stem, "transitionPlane")


def _weights_figure(stem: Path, transition, n_planes: int, blending_range: float, profile: str) -> Path:
    from ..fuse import blending_weights
    centre = float(np.nanmedian(transition)) if np.isfinite(transition).any() else (n_planes - 1) / 2
    weights = blending_weights(centre, n_planes, blending_range, profile)
    template = _template(_WeightsFigure, (n_planes,), weights, centre,
                         f"blending weights at the median transition, range {blending_range:g} planes")
    return template.save(stem, "blendingWeights")


def _projections(stem: Path, images: dict) -> Path:
    xy = normalised_for_display(images["fused_xy"])
    xz = normalised_for_display(images["fused_xz"], keep_aspect=False)
    template = _template(_ProjectionsFigure, (xy.shape, xz.shape), xy, xz)
    return template.save(stem, "projections")


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
    if not _have_matplotlib():
        return []
    from ..fuse import blending_weights
    written: list[Path] = []
    if images is not None and "projections" in figures:
        written.append(_projections(stem, images))
    if "channelTransition" not in figures:
        return written
    rows = []
    for camera, estimate in estimates:
        a, b = estimate.channels
        transition = np.asarray(estimate.transition_zy, dtype=np.float64)
        centre = float(np.nanmedian(transition)) if np.isfinite(transition).any() else (n_columns - 1) / 2
        ratio = "" if estimate.intensity is None else f", ratio b/a {estimate.intensity.ratio:.3f}"
        shown = display_image(transition, keep_aspect=False) if transition.ndim == 2 else None
        rows.append(_ChannelRow(
            channels=(a, b), layout=None if shown is None else (shown.shape, transition.shape),
            map_title=f"camera {camera}: transition column CHN{a:02d} | CHN{b:02d} ({method})",
            shown=shown if shown is not None else f"one column: {float(transition):.1f}",
            weights=blending_weights(centre, n_columns, blending_range, profile), centre=centre,
            weights_title=f"weights at the median column, range {blending_range:g} columns{ratio}"))
    template = _template(_ChannelFigure, (tuple((r.channels, r.layout) for r in rows), n_columns), rows, n_columns)
    written.append(template.save(stem, "channelTransition"))
    return written


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # optional dependency (extra "plot")
        log.warning("matplotlib is not installed; skipping diagnostic figures")
        return False
    return True


def _title(ax, text: str, **kwargs):
    """An axes title at a fixed height (returned): matplotlib's automatic title placement measures every
    tick label of the axes, a third of a figure's drawing time."""
    return ax.set_title(text, y=1.0, pad=6, **kwargs)


class _ThreadTemplates(threading.local):
    def __init__(self):
        self.by_key: dict = {}


_TEMPLATES = _ThreadTemplates()
#: Figure templates kept per thread (the most recently used).
MAX_TEMPLATES = 8
#: Draw only what changes between outputs over a background drawn once per template (the axes, ticks,
#: labels and fixed colorbars): about a quarter less per figure. False draws every figure whole.
BLIT = True


def _template(kind, layout: tuple, *values):
    """This thread's figure of class ``kind`` for ``layout`` (image shapes, plane counts), showing ``values``.

    The first use in a thread builds the figure from ``values``; later uses with
    the same layout replace the data and texts of that figure. Threads keep their
    own figures: matplotlib artists are not safe to share, and the jobs of a
    worker draw at once.
    """
    cache = _TEMPLATES.by_key
    key = (kind, *layout)
    template = cache.pop(key, None)
    if template is None:
        template = kind(*values)
    else:
        template.update(*values)
    cache[key] = template  # most recently used last
    while len(cache) > MAX_TEMPLATES:
        cache.pop(next(iter(cache)))
    return template


def clear_figure_templates() -> None:
    """Forget the calling thread's figure templates: its next figures are built afresh."""
    _TEMPLATES.by_key.clear()


class _Template:
    """A figure built once per thread and layout, then updated with each output's data and drawn again.

    Building the axes, their ticks and the colorbars was more than a third of a
    figure's cost, and it is the same for every output of a recording. A subclass
    draws its artists from the first output's values in ``build`` and replaces
    their data (images, lines, colour limits, texts) in ``update``, which takes
    the same values: an update must leave the figure as a build with those values
    would.
    """

    size = (6.0, 5.0)

    def __init__(self, *values):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        self.fig = Figure(figsize=self.figure_size(*values), dpi=DPI)
        self.canvas = FigureCanvasAgg(self.fig)
        self._background = self._limits = None
        self.build(*values)
        self.fig.subplots_adjust(left=0.08, right=0.95, bottom=0.1, top=0.86, wspace=0.25, hspace=0.4)

    def figure_size(self, *values) -> tuple[float, float]:
        return self.size

    def dynamic(self) -> list | None:
        """The artists an update changes, in drawing order; None: draw the whole figure every time.

        Everything else (axes, ticks, labels, static texts and colorbars) is
        drawn once into a background that each save starts from; the listed
        artists are drawn over it.
        """
        return None

    def _draw(self) -> None:
        artists = self.dynamic() if BLIT else None
        if artists is None:
            self.canvas.draw()
            return
        # a static axes whose range moved (an autoscaled line plot) needs a new background
        limits = [(ax.get_xlim(), ax.get_ylim()) for ax in self.fig.axes if ax not in artists]
        if self._background is None or limits != self._limits:
            for artist in artists:
                artist.set_visible(False)
            try:
                self.canvas.draw()
            finally:
                for artist in artists:
                    artist.set_visible(True)
            self._background, self._limits = self.canvas.copy_from_bbox(self.fig.bbox), limits
        self.canvas.restore_region(self._background)
        for artist in artists:
            self.fig.draw_artist(artist)

    def save(self, stem: Path, kind: str) -> Path:
        """Draw the figure and write it as ``<stem>.<kind>.png`` (atomically); return that path."""
        from PIL import Image

        from ..io.atomic import atomic_output
        path = Path(f"{stem}.{kind}.png")
        self._draw()
        # Opaque RGB straight from the canvas: a quarter less to compress than savefig's RGBA, and
        # no second pass over the figure for its bounding box.
        pixels = np.ascontiguousarray(np.asarray(self.canvas.buffer_rgba())[..., :3])
        with atomic_output(path, overwrite=True) as tmp:
            Image.fromarray(pixels).save(tmp, format="png", compress_level=1)
        return path


class _RegistrationFigure(_Template):
    size = (14, 5)

    def build(self, before, after, difference, titles):
        axes = self.fig.subplots(1, 3)
        self.before = axes[0].imshow(before)
        self.after = axes[1].imshow(after)
        self.difference = axes[2].imshow(difference, cmap="RdBu_r", vmin=-1, vmax=1)
        self.fig.colorbar(self.difference, ax=axes[2], fraction=0.046, label="reference - moving (each 0-1)")
        self.titles = [_title(ax, text, fontsize=9) for ax, text in zip(axes, titles)]
        for ax in axes:
            ax.axis("off")

    def dynamic(self):
        return [self.before, self.after, self.difference, *self.titles]

    def update(self, before, after, difference, titles):
        self.before.set_data(before)
        self.after.set_data(after)
        self.difference.set_data(difference)
        for title, text in zip(self.titles, titles):
            title.set_text(text)


class _TransitionFigure(_Template):
    def build(self, shown, frame_shape, vmin, vmax, label, title):
        ax = self.fig.subplots()
        height, width = frame_shape
        # the reduced map drawn over the full frame's pixel coordinates
        self.image = ax.imshow(shown, cmap="viridis", vmin=vmin, vmax=vmax,
                               extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        self.colorbar = self.fig.colorbar(self.image, ax=ax, label=label)
        self.title = _title(ax, title, fontsize=9)
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
        self.spines = list(ax.spines.values())  # drawn over the image, as in a whole draw

    def dynamic(self):
        return [self.image, *self.spines, self.colorbar.ax, self.title]

    def update(self, shown, frame_shape, vmin, vmax, label, title):
        self.image.set_data(shown)
        self.image.set_clim(vmin, vmax)
        self.colorbar.set_label(label)
        self.title.set_text(title)


class _WeightsFigure(_Template):
    size = (6, 3.5)

    def build(self, weights, centre, title):
        self.ax = self.fig.subplots()
        planes = np.arange(len(weights))
        (self.reference,) = self.ax.plot(planes, weights, label="reference camera")
        (self.moving,) = self.ax.plot(planes, 1 - weights, label="moving camera")
        self.centre = self.ax.axvline(centre, color="grey", lw=0.8, ls="--")
        self.ax.set_xlabel("plane (z)")
        self.ax.set_ylabel("weight")
        self.title = _title(self.ax, title)
        self.legend = self.ax.legend()  # placed where the lines leave room: redrawn with them

    def dynamic(self):
        return [self.reference, self.moving, self.centre, self.legend, self.title]

    def update(self, weights, centre, title):
        self.reference.set_ydata(weights)
        self.moving.set_ydata(1 - weights)
        self.centre.set_xdata([centre, centre])
        self.ax.relim()
        self.ax.autoscale_view()
        self.title.set_text(title)


class _ProjectionsFigure(_Template):
    size = (10, 5)

    def build(self, xy, xz):
        axes = self.fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1]})
        self.xy = axes[0].imshow(xy, cmap="gray")
        _title(axes[0], "fused, max projection along z")
        self.xz = axes[1].imshow(xz, cmap="gray", aspect="auto")
        _title(axes[1], "fused, max projection along y")
        for ax in axes:
            ax.axis("off")

    def dynamic(self):
        return [self.xy, self.xz]

    def update(self, xy, xz):
        for image, data in ((self.xy, xy), (self.xz, xz)):
            image.set_data(data)
            image.autoscale()  # colour limits from the data, as imshow without limits


class _ChannelRow(NamedTuple):
    channels: tuple[int, int]
    layout: tuple | None  # (reduced map shape, map shape (Z, Y)), or None for a single column
    map_title: str
    shown: object  # the reduced (Z, Y) transition map, or the text shown for a single column
    weights: np.ndarray
    centre: float
    weights_title: str


class _ChannelFigure(_Template):
    def figure_size(self, rows, n_columns):
        return (11, 4 * len(rows))

    def build(self, rows: list[_ChannelRow], n_columns: int):
        axes = self.fig.subplots(len(rows), 2, squeeze=False)
        columns = np.arange(n_columns)
        self.rows = []
        for values, (ax_map, ax_w) in zip(rows, axes):
            a, b = values.channels
            row = {"ax_w": ax_w}
            if values.layout is not None:
                _, (n_planes, n_rows) = values.layout
                row["map"] = ax_map.imshow(values.shown, cmap="viridis", aspect="auto",
                                           extent=(-0.5, n_rows - 0.5, n_planes - 0.5, -0.5))
                self.fig.colorbar(row["map"], ax=ax_map, label="transition column (x index)")
                ax_map.set_xlabel("y")
                ax_map.set_ylabel("plane (z)")
            else:
                row["text"] = ax_map.text(0.5, 0.5, values.shown, ha="center", va="center")
                ax_map.axis("off")
            row["map_title"] = _title(ax_map, values.map_title, fontsize=9)
            (row["a"],) = ax_w.plot(columns, values.weights, label=f"channel {a} (lit from low x)")
            (row["b"],) = ax_w.plot(columns, 1 - values.weights, label=f"channel {b} (lit from high x)")
            row["centre"] = ax_w.axvline(values.centre, color="grey", lw=0.8, ls="--")
            row["weights_title"] = _title(ax_w, values.weights_title, fontsize=9)
            ax_w.set_xlabel("column (x)")
            ax_w.set_ylabel("weight")
            ax_w.legend(fontsize=8)
            self.rows.append(row)

    def update(self, rows: list[_ChannelRow], n_columns: int):
        for row, values in zip(self.rows, rows):
            if "map" in row:
                row["map"].set_data(values.shown)
                row["map"].autoscale()
            else:
                row["text"].set_text(values.shown)
            row["map_title"].set_text(values.map_title)
            row["a"].set_ydata(values.weights)
            row["b"].set_ydata(1 - values.weights)
            row["centre"].set_xdata([values.centre, values.centre])
            row["ax_w"].relim()
            row["ax_w"].autoscale_view()
            row["weights_title"].set_text(values.weights_title)


# ------------------------------------------------------------------------------------------ isotropic stage

from ..config import ISOTROPIC_FIGURES  # noqa: E402  (the figures of the isotropic stage, isotropic.figures)

#: Plane names of :func:`isotropic_figures`' slices and the axes each shows (rows, columns) of (Z, Y, X).
SLICE_PLANES = {"xy": ("y", "x"), "xz": ("z", "x"), "yz": ("z", "y")}


def isotropic_figures(stem: Path, slices: dict, voxel_um: float, centre: tuple, params: dict,
                      beads: list | None = None, figures=ISOTROPIC_FIGURES) -> list[Path]:
    """Write the isotropic stage's diagnostics next to ``stem`` and return their paths.

    Parameters
    ----------
    stem : Path
        The isotropic volume's path without suffix; figures are
        ``<stem>.slices.png``, ``<stem>.checkerboard.png`` and ``<stem>.beads.png``.
    slices : dict
        ``{"vw00": {"xy": ..., "xz": ..., "yz": ...}, "vw90": {...}, "result": {...}}``: 2-D planes of
        VW00 upsampled, VW90 mapped and the result through the output grid's voxel ``centre``, each
        (rows, columns) as :data:`SLICE_PLANES` says. The grid is isotropic, so every plane is drawn with
        square pixels: the true aspect.
    voxel_um : float
        Output voxel edge (µm), for the axes.
    centre : tuple of int
        The voxel (Z, Y, X) the three planes cross.
    params : dict
        The stage's record (for titles: orientation, confidence, method).
    beads : list of dict, optional
        Bead measurements (``position_um``, ``fwhm_um`` per image: ``vw00``, ``vw90``, ``result``,
        each (z, y, x)); the bead figure is drawn when there is at least one.
    figures : sequence of str
        Which to draw (:data:`ISOTROPIC_FIGURES`).
    """
    if not _have_matplotlib():
        return []
    written = []
    if "slices" in figures:
        written.append(_isotropic_slices(stem, slices, voxel_um, centre, params))
    if "checkerboard" in figures:
        written.append(_isotropic_checkerboard(stem, slices, voxel_um, params))
    if "beads" in figures and beads:
        written.append(_isotropic_beads(stem, beads, params))
    return written


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, stem: Path, kind: str) -> Path:
    """Draw ``fig`` and write it as ``<stem>.<kind>.png`` atomically (opaque RGB, fast compression)."""
    from PIL import Image

    from ..io.atomic import atomic_output
    path = Path(f"{stem}.{kind}.png")
    fig.canvas.draw()
    pixels = np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    with atomic_output(path, overwrite=True) as tmp:
        Image.fromarray(pixels).save(tmp, format="png", compress_level=1)
    return path


def _extent(shape, voxel_um: float) -> tuple:
    """imshow extent (µm) of a plane of ``shape`` output voxels."""
    rows, columns = shape
    return (-0.5 * voxel_um, (columns - 0.5) * voxel_um, (rows - 0.5) * voxel_um, -0.5 * voxel_um)


def _shared_limits(*images) -> tuple[float, float]:
    values = np.concatenate([np.ravel(np.nan_to_num(np.asarray(i, np.float32))) for i in images])
    lo, hi = np.percentile(values, [1, 99.7]) if values.size else (0.0, 1.0)
    return float(lo), float(max(hi, lo + 1e-9))


def _isotropic_slices(stem: Path, slices: dict, voxel_um: float, centre, params: dict) -> Path:
    """Orthogonal planes (xy, xz, yz; rows) of VW00 upsampled, VW90 mapped and the result (columns)."""
    names = (("vw00", "VW00 upsampled"), ("vw90", "VW90 mapped (x scale90)"), ("result", "result"))
    fig = _figure(12, 11)
    axes = fig.subplots(3, 3)
    for row, plane in enumerate(SLICE_PLANES):
        for column, (key, label) in enumerate(names):
            ax = axes[row, column]
            image = display_image(slices[key][plane])
            lo, hi = _shared_limits(slices[key][plane])
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, extent=_extent(np.shape(slices[key][plane]), voxel_um),
                      interpolation="nearest")
            rows_axis, columns_axis = SLICE_PLANES[plane]
            ax.set_xlabel(f"{columns_axis} (µm)", fontsize=8)
            ax.set_ylabel(f"{rows_axis} (µm)", fontsize=8)
            ax.tick_params(labelsize=7)
            _title(ax, f"{label}: {plane}", fontsize=9)
    z, y, x = centre
    registration = params.get("registration") or {}
    fig.suptitle(f"{Path(stem).name}: planes through voxel (z, y, x) = ({z}, {y}, {x}), {voxel_um:.3g} µm voxels, "
                 f"true aspect\n{params.get('options', {}).get('method', '')}; orientation "
                 f"{registration.get('orientation', '?')}, registration confidence "
                 f"{registration.get('confidence', float('nan')):.3f}; transform: {params.get('transform_source')}",
                 fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.05, top=0.91, wspace=0.3, hspace=0.35)
    return _save_figure(fig, stem, "slices")


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Two equally shaped 2-D images interleaved in a checkerboard of about ``tiles`` squares along the longer side.

    Each image is first scaled so that its 1st-99.7th percentiles span 0-1 (the two views differ in
    brightness and blur); square (i, j) shows ``a`` where i + j is even, else ``b``. Misregistration
    shows as structures broken at the squares' edges.
    """
    a = np.nan_to_num(np.asarray(a, np.float32))
    b = np.nan_to_num(np.asarray(b, np.float32))
    if a.shape != b.shape:
        raise ValueError(f"checkerboard of images of different shapes {a.shape} and {b.shape}")

    def scaled(image):
        lo, hi = np.percentile(image, [1, 99.7]) if image.size else (0.0, 1.0)
        return np.clip((image - lo) / max(hi - lo, 1e-9), 0, 1)

    side = max(1, -(-max(a.shape) // max(1, int(tiles))))
    rows = (np.arange(a.shape[0]) // side)[:, None]
    columns = (np.arange(a.shape[1]) // side)[None, :]
    return np.where((rows + columns) % 2 == 0, scaled(a), scaled(b))


def _isotropic_checkerboard(stem: Path, slices: dict, voxel_um: float, params: dict) -> Path:
    """VW00 upsampled and VW90 mapped in a checkerboard, in the three planes: the registration at a glance."""
    fig = _figure(15, 5.4)
    axes = fig.subplots(1, 3)
    for ax, plane in zip(axes, SLICE_PLANES):
        board = checkerboard(slices["vw00"][plane], slices["vw90"][plane])
        ax.imshow(display_image(board), cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                  extent=_extent(board.shape, voxel_um))
        rows_axis, columns_axis = SLICE_PLANES[plane]
        ax.set_xlabel(f"{columns_axis} (µm)", fontsize=8)
        ax.set_ylabel(f"{rows_axis} (µm)", fontsize=8)
        ax.tick_params(labelsize=7)
        _title(ax, f"{plane}: VW00 | VW90 squares", fontsize=9)
    registration = params.get("registration") or {}
    fig.suptitle(f"{Path(stem).name}: registration checkerboard (structures continue across the squares when "
                 f"registered)\norientation {registration.get('orientation', '?')}, fine rotation "
                 f"{registration.get('rotation_deg', float('nan')):.2f} deg, confidence "
                 f"{registration.get('confidence', float('nan')):.3f}", fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.1, top=0.84, wspace=0.25)
    return _save_figure(fig, stem, "checkerboard")


def _isotropic_beads(stem: Path, beads: list, params: dict) -> Path:
    """Bead FWHM along z, y and x in VW00, VW90 and the result: per bead (points) and the median (text)."""
    images = (("vw00", "VW00 upsampled", "tab:blue"), ("vw90", "VW90 mapped", "tab:orange"),
              ("result", "result", "tab:green"))
    fig = _figure(11, 4.8)
    ax, table_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    for offset, (key, label, colour) in zip((-0.2, 0.0, 0.2), images):
        values = np.array([bead["fwhm_um"][key] for bead in beads], dtype=np.float64)
        for axis in range(3):
            column = values[:, axis]
            column = column[np.isfinite(column)]
            ax.plot(np.full(column.size, axis + offset), column, "o", color=colour, ms=4, alpha=0.7,
                    label=label if axis == 0 else None)
    ax.set_xticks([0, 1, 2], ["z", "y", "x"])
    ax.set_ylabel("FWHM (µm)")
    ax.set_xlabel("axis")
    ax.legend(fontsize=8)
    _title(ax, f"{len(beads)} bead(s): FWHM per axis", fontsize=9)
    table_ax.axis("off")
    rows = []
    for key, label, _ in images:
        values = np.array([bead["fwhm_um"][key] for bead in beads], dtype=np.float64)
        medians = [np.nanmedian(values[:, a]) if np.isfinite(values[:, a]).any() else np.nan for a in range(3)]
        rows.append([label] + [f"{m:.2f}" for m in medians])
    table = table_ax.table(cellText=rows, colLabels=["median FWHM (µm)", "z", "y", "x"], loc="center",
                           colWidths=[0.4, 0.2, 0.2, 0.2])
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1.0, 1.8)
    fig.suptitle(f"{Path(stem).name}: beads (found in the result's max projection along z)", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.86, wspace=0.2)
    return _save_figure(fig, stem, "beads")
