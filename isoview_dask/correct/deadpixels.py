"""Dead (hot, stuck or insensitive) camera pixels: detection and repair.

A sensor defect is fixed in the frame, so it shows in the per-pixel
statistics over the planes of a stack: a hot pixel has a mean far above its
neighbours, a stuck pixel a standard deviation far below theirs. Detection
follows "estimate small, apply big": :func:`pixel_statistics` reduces the
volume to two (Y, X) images, :func:`dead_pixel_mask` finds the defects on
those small images, and :func:`correct_dead_pixels` repairs the volume
blockwise, changing only the voxels of the flagged pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numba
import numpy as np
import scipy.ndimage as ndi

from .arrays import as_dask, require_ndim
from .background import subtract_background, subtract_clipped

#: Score (robust noise sigmas) a pixel must exceed before it may be called dead.
DEFAULT_Z_FLOOR = 8.0
#: Side (pixels) of the tiles over which the robust scale is estimated.
DEFAULT_SCALE_TILE = 32
#: Scale factor from the median absolute deviation to a Gaussian sigma.
_MAD_TO_SIGMA = 1.4826
#: Detection passes at most (each re-estimates neighbourhoods without the defects found).
_MAX_PASSES = 4


@dataclass(frozen=True)
class DeadPixelResult:
    """Outcome of :func:`dead_pixel_mask`.

    Attributes
    ----------
    mask : numpy.ndarray of bool, shape (Y, X)
        True at dead pixels.
    std_threshold, mean_threshold : float
        Score (in robust noise sigmas) above which the standard-deviation
        test (resp. the mean test) flags a pixel: the larger of the knee of
        the sorted scores and the statistical floor ``z_floor``.
    std_knee, mean_knee : float
        The knees themselves (same units), for the record.
    count : int
        Number of dead pixels (``mask.sum()``).
    """

    mask: np.ndarray
    std_threshold: float
    mean_threshold: float
    std_knee: float
    mean_knee: float
    count: int

    def summary(self) -> dict:
        """Plain-value summary (no mask), suitable for a JSON record."""
        return {
            "count": self.count,
            "std_threshold": self.std_threshold,
            "mean_threshold": self.mean_threshold,
            "std_knee": self.std_knee,
            "mean_knee": self.mean_knee,
        }


def pixel_statistics(volume) -> tuple[da.Array, da.Array]:
    """Per-pixel mean and standard deviation over z.

    Parameters
    ----------
    volume : dask or numpy array, shape (Z, Y, X)
        One camera stack, any numeric dtype.

    Returns
    -------
    mean_yx, std_yx : dask.array.Array, float64, shape (Y, X)
        Mean and population standard deviation (``ddof=0``) of each pixel
        over the planes, in the volume's intensity units (counts).

    Notes
    -----
    Both are lazy dask reductions. Compute them together
    (``dask.compute(mean_yx, std_yx)``) so the volume is read only once.

    For integer stacks of up to 16 bits (camera data) the sums of values
    and of squares are accumulated exactly in int64, plane by plane, so a
    task needs only a few frames of scratch memory instead of float64
    copies of its whole chunk, and the variance ``(n S2 - S1**2) / n**2``
    carries no cancellation error (exact up to ~46,000 planes). Other
    dtypes use dask's float64 ``mean`` and ``std``.
    """
    volume = as_dask(volume)
    require_ndim(volume, 3, "volume")
    if not (np.issubdtype(volume.dtype, np.integer) and volume.dtype.itemsize <= 2):
        as_float = volume.astype(np.float64)
        return as_float.mean(axis=0), as_float.std(axis=0)
    planes = volume.shape[0]
    sum_values = volume.sum(axis=0, dtype=np.int64)
    sum_squares = volume.map_blocks(
        _sum_of_squares, chunks=((1,) * volume.numblocks[0],) + volume.chunks[1:], dtype=np.int64
    ).sum(axis=0)
    mean = sum_values / planes
    variance = (planes * sum_squares - sum_values * sum_values) / float(planes) ** 2
    return mean.astype(np.float64), da.sqrt(variance)


def _sum_of_squares(block: np.ndarray) -> np.ndarray:
    """Exact sum over z of the squared values of an integer block, as
    (1, Y, X) int64, accumulated one plane at a time."""
    total = np.zeros((1,) + block.shape[1:], np.int64)
    for plane in block:
        square = plane.astype(np.int64)
        square *= square
        total[0] += square
    return total


def knee_threshold(values) -> float:
    """Value at the knee of the sorted curve of ``values``.

    The values are sorted and both axes of the curve (rank, value) are
    scaled to [0, 1]; the knee is the point of the curve farthest from the
    straight line joining its first and last points.

    Parameters
    ----------
    values : array_like
        Any shape; non-finite entries are ignored.

    Returns
    -------
    float
        The value at the knee (same units as ``values``). With fewer than
        three finite values, or all of them equal, the largest value.
    """
    finite = np.asarray(values, dtype=np.float64).ravel()
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        raise ValueError("knee_threshold needs at least one finite value")
    lowest, highest = finite.min(), finite.max()
    span = highest - lowest
    if finite.size < 3 or span == 0:
        return float(highest)
    # Score images are mostly at their minimum (0): sort only the rest. The
    # run of minima is a flat start of the curve whose farthest point from
    # the chord is its last one, at rank (n_min - 1) / (n - 1).
    rest = np.sort(finite[finite > lowest])
    n_min, last = finite.size - rest.size, finite.size - 1
    rank = (n_min + np.arange(rest.size)) / last
    level = (rest - lowest) / span
    # Distance to the chord y = x is |x - y| / sqrt(2); the factor is irrelevant.
    distance = np.abs(rank - level)
    best = int(np.argmax(distance))
    return float(lowest) if (n_min - 1) / last >= distance[best] else float(rest[best])


def dead_pixel_mask(
    mean_yx,
    std_yx,
    *,
    kernel: int = 3,
    z_floor: float = DEFAULT_Z_FLOOR,
    scale_tile: int | None = DEFAULT_SCALE_TILE,
) -> DeadPixelResult:
    """Find dead pixels from the per-pixel statistics of a stack.

    Parameters
    ----------
    mean_yx, std_yx : numpy.ndarray, shape (Y, X)
        Per-pixel mean and standard deviation over z
        (from :func:`pixel_statistics`, computed), in counts.
    kernel : int
        Side of the square neighbourhood a pixel is compared with (odd,
        >= 3; the pixel itself is left out of it).
    z_floor : float
        Minimum score (robust noise sigmas) of a flagged pixel. It keeps
        clean pixels untouched when the knee falls inside the noise.
    scale_tile : int or None
        Side (pixels) of the tiles over which the noise scale of the
        deviations is estimated; ``None`` uses one scale for the frame.

    Returns
    -------
    DeadPixelResult
        The (Y, X) boolean mask with its thresholds.

    Notes
    -----
    Each of the two images gets the same test, on log intensities (so a
    difference is a relative deviation). The design's original rule used
    an absolute deviation for the standard deviation; a relative one is
    used here for both because the noise of a standard-deviation estimate
    grows with the signal while its relative noise, about
    ``1 / sqrt(2 (Z - 1))``, does not, so one noise scale fits specimen
    and background alike. A stuck pixel (standard deviation 0) lies far
    below its neighbours in the std image, a hot pixel far above them in
    the mean image.

    1. Noise scale: the deviation of each pixel from the median of its
       ``kernel`` x ``kernel`` neighbours (itself left out, so that a
       defect does not damp its own deviation) gives ``1.4826 * MAD`` per
       ``scale_tile`` tile; each tile takes the largest scale among itself
       and its eight neighbour tiles, so quiet pixels next to a noisier
       region are not judged by too small a scale.
    2. Score: how far the pixel lies *outside* the range spanned by its
       neighbours, from the second-lowest to the second-highest (so one
       defective neighbour cannot widen the range), in units of that
       scale. A pixel between its neighbours (any smooth structure, ramp
       or edge of the specimen) scores 0; a plain deviation from the
       median scored clean pixels on the specimen's steep edges up to
       z = 8 already on 96 x 96 test frames.
    3. Threshold: a pixel is flagged where its score exceeds both the knee
       of the sorted scores (:func:`knee_threshold`) and ``z_floor``, in
       either test. The knee alone, as in the original pipeline, falls
       inside the noise and flags hundreds of clean pixels; the floor
       prevents that.

    A defect also shifts the neighbourhood of the pixels around it, so
    detection is repeated (at most four passes) with the pixels found so
    far replaced by a wider neighbourhood median, until the mask no longer
    changes. Memory: the sorted neighbours are held as a
    (kernel**2 - 1, Y, X) float32 array, 134 MB for a 2048 x 2048 frame
    and ``kernel=3``; a 2048 x 2048 frame takes a few seconds.
    """
    mean_yx = np.asarray(mean_yx, dtype=np.float64)
    std_yx = np.asarray(std_yx, dtype=np.float64)
    require_ndim(mean_yx, 2, "mean_yx")
    if mean_yx.shape != std_yx.shape:
        raise ValueError(
            f"mean_yx and std_yx must have the same shape, got {mean_yx.shape} and {std_yx.shape}"
        )
    if kernel < 3 or kernel % 2 == 0:
        raise ValueError(f"kernel must be an odd integer >= 3, got {kernel}")
    if scale_tile is not None and scale_tile < 4:
        raise ValueError(f"scale_tile must be at least 4 pixels (or None), got {scale_tile}")

    # The two images are tested side by side in two threads (numpy's sorts and filters
    # release the GIL); each pass needs both before the next.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        tests = list(pool.map(lambda image: _OutlierTest(image, kernel, scale_tile, z_floor), (std_yx, mean_yx)))
        mask = np.zeros(mean_yx.shape, bool)
        for _ in range(_MAX_PASSES):
            flags = list(pool.map(lambda test: test.flag(mask), tests))
            found = flags[0] | flags[1]
            if np.array_equal(found, mask):
                break
            mask = found
    return _dead_pixel_result(found, tests)


def _dead_pixel_result(found, tests):
    return DeadPixelResult(
        mask=found,
        std_threshold=tests[0].threshold,
        mean_threshold=tests[1].threshold,
        std_knee=tests[0].knee,
        mean_knee=tests[1].knee,
        count=int(found.sum()),
    )


def correct_dead_pixels(volume, mask, *, dark: np.ndarray | None = None) -> da.Array:
    """Replace the voxels of dead pixels by the median of their live neighbours.

    Parameters
    ----------
    volume : dask or numpy array, shape (Z, Y, X)
        The stack to repair.
    mask : numpy or dask array of bool, shape (Y, X)
        Dead pixels (from :func:`dead_pixel_mask`).
    dark : numpy array (Y, X) of ``volume``'s unsigned dtype, optional
        Also subtract this dark frame, clipping at 0, in the same pass
        (from :func:`~isoview_dask.correct.background.exact_dark_frame`).
        The result equals ``subtract_background(correct_dead_pixels(volume,
        mask), dark)`` bit for bit, with one output array per block instead
        of a repaired copy and then a subtracted one.

    Returns
    -------
    dask.array.Array, shape (Z, Y, X), dtype of ``volume``
        The repaired stack. Voxels of pixels outside ``mask`` are
        bit-identical to the input (less ``dark`` when given).

    Notes
    -----
    In every plane a dead pixel takes the median of the pixels of its 3 x 3
    in-plane neighbourhood that lie inside the frame and are not dead
    themselves (so two adjacent defects do not vote for each other). If
    none is left (a 3 x 3 cluster of defects) the median of the whole
    in-frame neighbourhood is used instead. Integer results are rounded to
    the nearest integer.

    The work is blockwise without halos: each block repairs the dead pixels
    whose 3 x 3 neighbourhood lies inside it; the few whose neighbourhood
    crosses a chunk border are repaired from their own small (Z, 3, 3)
    windows, and those values are handed to the block that holds the
    pixel. No block is copied into a padded one, and chunk borders make no
    difference.
    """
    volume = as_dask(volume)
    require_ndim(volume, 3, "volume")
    if tuple(mask.shape) != tuple(volume.shape[1:]):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match the frame shape {volume.shape[1:]} (Y, X)"
        )
    mask = np.asarray(mask.compute() if isinstance(mask, da.Array) else mask).astype(bool)
    if dark is not None and (dark.shape != mask.shape or dark.dtype != volume.dtype
                             or not np.issubdtype(dark.dtype, np.unsignedinteger)):
        raise ValueError(f"dark must be a {mask.shape} frame of the volume's unsigned dtype {volume.dtype}, "
                         f"got {dark.shape} {dark.dtype}")
    plan = repair_plan(volume, mask)
    if plan is None:
        return volume if dark is None else subtract_background(volume, dark)
    arguments = [volume, "zyx", *plan.arguments]
    if dark is not None:
        arguments += [da.from_array(dark, chunks=volume.chunks[1:]), "yx"]
    return da.blockwise(_repair_chunk, "zyx", *arguments, concatenate=True, **plan.keywords,
                        dtype=volume.dtype, meta=np.empty((0, 0, 0), dtype=volume.dtype))


@dataclass(frozen=True)
class RepairPlan:
    """What each block of a volume needs to repair its dead pixels (see :func:`repair_plan`).

    ``arguments`` follow the volume's ``"zyx"`` in a ``dask.array.blockwise``
    call (border pixels' repaired values, the block's mask tile, its y and x
    indices); ``keywords`` go to the block function, which passes them all to
    :func:`chunk_repairs`.
    """

    arguments: list
    keywords: dict


def repair_plan(volume: da.Array, mask: np.ndarray) -> RepairPlan | None:
    """The blockwise inputs of the dead-pixel repair of ``volume`` (Z, Y, X) with its chunks; None
    when ``mask`` (Y, X) flags no pixel.

    The repair of a pixel whose 3 x 3 neighbourhood crosses a chunk border is
    computed from its own small window, a task of its own; the others are
    repaired inside their block (:func:`chunk_repairs`).
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    height, width = mask.shape
    y_start = np.cumsum((0,) + volume.chunks[1])
    x_start = np.cumsum((0,) + volume.chunks[2])

    def block_of(index, starts):
        return np.searchsorted(starts, index, side="right") - 1

    # A pixel's neighbourhood (clipped to the frame) crosses a border when its first and
    # last rows (or columns) fall in different chunks.
    crossing = ((block_of(np.maximum(rows - 1, 0), y_start) != block_of(np.minimum(rows + 1, height - 1), y_start))
                | (block_of(np.maximum(cols - 1, 0), x_start) != block_of(np.minimum(cols + 1, width - 1), x_start)))
    edge_rows, edge_cols = rows[crossing], cols[crossing]
    if edge_rows.size:
        windows = []
        for r, c in zip(edge_rows.tolist(), edge_cols.tolist()):
            y0, y1, x0, x1 = max(r - 1, 0), min(r + 2, height), max(c - 1, 0), min(c + 2, width)
            window = volume[:, y0:y1, x0:x1].rechunk({1: -1, 2: -1})
            windows.append(window.map_blocks(_repair_window, mask[y0:y1, x0:x1], (r - y0, c - x0),
                                             drop_axis=[1, 2], new_axis=1, chunks=(window.chunks[0], (1,)),
                                             dtype=volume.dtype, meta=np.empty((0, 0), volume.dtype)))
        edge_values = da.concatenate(windows, axis=1).rechunk({1: -1})
    else:
        edge_values = da.zeros((volume.shape[0], 0), dtype=volume.dtype, chunks=(volume.chunks[0], (0,)))
    y_index = da.arange(height, chunks=(volume.chunks[1],))
    x_index = da.arange(width, chunks=(volume.chunks[2],))
    tiles = da.from_array(mask, chunks=volume.chunks[1:])  # each task gets its own tile of the mask
    return RepairPlan([edge_values, "zk", tiles, "yx", y_index, "y", x_index, "x"],
                      {"edge_rows": edge_rows, "edge_cols": edge_cols})


def _repair_window(window: np.ndarray, mask_window: np.ndarray, centre) -> np.ndarray:
    """Repaired values (Z, 1) of the dead pixel at ``centre`` of a clipped 3 x 3 ``window``."""
    repaired = _repair_block(window, mask_window[None])
    return repaired[:, centre[0], centre[1]][:, None]


def _repair_chunk(block, edge_values, local, y_index, x_index, dark=None, *, edge_rows, edge_cols):
    """Repair one chunk: its interior dead pixels from the chunk itself, the border ones from ``edge_values``
    (``local`` is the chunk's tile of the dead-pixel mask); with ``dark`` (the chunk's tile of the dark
    frame), subtract it too, in the same output array."""
    if dark is None and not local.any():
        return block
    rows, cols, values = chunk_repairs(block, edge_values, local, y_index, x_index,
                                       edge_rows=edge_rows, edge_cols=edge_cols)
    if dark is None:
        out = block.copy()
        out[:, rows, cols] = values
    else:
        out = subtract_clipped(block, dark)
        out[:, rows, cols] = subtract_clipped(values, dark[rows, cols])
    return out


def chunk_repairs(block, edge_values, local, y_index, x_index, *, edge_rows, edge_cols
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns (in the chunk) and repaired values (Z, n) of the dead pixels of one chunk.

    The arguments are the block's share of a :class:`RepairPlan`: its
    interior dead pixels are repaired from ``block`` itself, those whose
    neighbourhood crosses the chunk's border take their values from
    ``edge_values``. Each pixel appears once.
    """
    y0, x0 = int(y_index[0]), int(x_index[0])
    rows, cols, values = _repaired_values(block, local)
    inside = ((edge_rows >= y0) & (edge_rows < y0 + block.shape[1])
              & (edge_cols >= x0) & (edge_cols < x0 + block.shape[2]))
    if inside.any():  # border pixels: the values from their own windows replace the chunk's truncated ones
        edge_y, edge_x = edge_rows[inside] - y0, edge_cols[inside] - x0
        is_edge = np.zeros(local.shape, bool)
        is_edge[edge_y, edge_x] = True
        keep = ~is_edge[rows, cols]  # each pixel written once (repeated fancy indices have no set order)
        rows, cols = np.concatenate([rows[keep], edge_y]), np.concatenate([cols[keep], edge_x])
        values = np.concatenate([values[:, keep], edge_values[:, inside]], axis=1)
    return rows, cols, values


def _repair_block(block: np.ndarray, mask_block: np.ndarray) -> np.ndarray:
    """Repair the dead pixels of one (halo-padded) block.

    Only the neighbourhoods of the flagged pixels are gathered, as a
    (Z, n_dead, 9) array, so memory stays proportional to the defects and
    not to the block. Pixels on the block's outer rim see a truncated
    neighbourhood; that is exact at the frame's true edges, and the rim
    pixels that are halo are trimmed away afterwards.
    """
    rows, cols, values = _repaired_values(block, mask_block[0])
    if rows.size == 0:
        return block
    out = block.copy()
    out[:, rows, cols] = values
    return out


def _repaired_values(block: np.ndarray, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and repaired values (Z, n_dead) in ``block``'s dtype of the dead pixels ``dead`` (Y, X)
    of one block (see :func:`_repair_block`)."""
    rows, cols = np.nonzero(dead)
    if rows.size == 0:
        return rows, cols, np.empty((block.shape[0], 0), block.dtype)
    height, width = dead.shape
    values, live, inside = [], [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            ny, nx = rows + dy, cols + dx
            in_frame = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
            ny, nx = np.clip(ny, 0, height - 1), np.clip(nx, 0, width - 1)
            values.append(block[:, ny, nx].astype(np.float64))
            inside.append(in_frame)
            live.append(in_frame & ~dead[ny, nx])
    values = np.stack(values, axis=-1)  # (Z, n_dead, 9)
    live, inside = np.stack(live, axis=-1), np.stack(inside, axis=-1)  # (n_dead, 9)
    # Where no live neighbour is left, vote with the whole in-frame window
    # (it always holds the pixel itself, so no slice is all-NaN).
    voters = np.where(live.any(axis=-1, keepdims=True), live, inside)
    repaired = np.nanmedian(np.where(voters, values, np.nan), axis=-1)
    return rows, cols, _to_dtype(repaired, block.dtype)


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float results to ``dtype``, rounding and clipping for integers."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


class _OutlierTest:
    """One test of :func:`dead_pixel_mask` on one statistic image (Y, X).

    Works on log intensities, ``log(max(v, eps))`` with ``eps`` 1e-3 of the
    image's median level (or 1e-12 if that is 0), so that differences are
    relative deviations, all-zero regions stay finite and a zero among
    non-zero neighbours (a stuck pixel's standard deviation) lands far
    below them. The noise scale is estimated once, on the first pass; it
    is a robust statistic that a few defects do not move.
    """

    def __init__(self, image: np.ndarray, kernel: int, scale_tile: int | None, z_floor: float):
        eps = max(1e-3 * float(np.median(np.abs(image))), 1e-12)
        self.log_image = np.log(np.maximum(image, eps)).astype(np.float32)
        self.kernel = kernel
        self.z_floor = float(z_floor)
        # the second-lowest, middle and second-highest of each pixel's sorted neighbours
        self.low, median, self.high = neighbour_ranks(self.log_image, kernel)
        self.noise = _noise_scale(self.log_image - median, scale_tile)
        self.threshold = self.knee = float("nan")

    def flag(self, excluded: np.ndarray) -> np.ndarray:
        """Flags of this pass; ``excluded`` pixels (found in a previous pass)
        are replaced, as neighbours, by the median of a window two pixels
        wider, so a defect does not distort its neighbours' tests. (On a
        steep edge the small-window median of a pixel is pulled to one side
        of the edge; the wider median stays close to the pixel's own level.)
        """
        low, high = self.low, self.high
        if excluded.any():
            reference = self.log_image.copy()
            rows, cols = np.nonzero(excluded)
            reference[rows, cols] = _window_median(self.log_image, rows, cols, self.kernel + 2)
            # Only pixels within the kernel radius of an excluded one see new neighbours.
            near = ndi.binary_dilation(excluded, structure=np.ones((self.kernel, self.kernel), bool))
            rows, cols = np.nonzero(near)
            local = _neighbours_at(reference, rows, cols, self.kernel)
            low, high = low.copy(), high.copy()
            low[rows, cols], high[rows, cols] = local[:, 1], local[:, -2]
        # Distance outside [second-lowest, second-highest] neighbour, in noise sigmas.
        above = self.log_image - high
        below = low - self.log_image
        score = np.maximum(np.maximum(above, below), 0.0) / self.noise
        self.knee = knee_threshold(score)
        self.threshold = max(self.knee, self.z_floor)
        return score > self.threshold


def _sorted_neighbours(image: np.ndarray, kernel: int) -> np.ndarray:
    """The ``kernel**2 - 1`` neighbours of every pixel (itself left out),
    sorted, as an array (n_neighbours, Y, X). The frame is extended by
    mirroring without repeating the edge pixel (scipy's ``'mirror'``), so
    an edge pixel is never its own neighbour."""
    radius = kernel // 2
    height, width = image.shape
    padded = np.pad(image, radius, mode="reflect")
    stack = np.stack(
        [
            padded[radius + dy : radius + dy + height, radius + dx : radius + dx + width]
            for dy in range(-radius, radius + 1)
            for dx in range(-radius, radius + 1)
            if dy or dx
        ]
    )
    stack.sort(axis=0)
    return stack


#: Compare-exchange pairs of an optimal sorting network for 8 values (19 comparators).
_NETWORK_8 = ((0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (1, 2), (5, 6), (0, 4), (3, 7),
              (1, 5), (2, 6), (1, 4), (3, 6), (2, 4), (3, 5), (3, 4))


@numba.njit(cache=True, nogil=True)
def _ranks_3x3(padded, low, middle, high):
    values = np.empty(8, padded.dtype)
    for y in range(low.shape[0]):
        for x in range(low.shape[1]):
            k = 0
            for dy in range(3):
                for dx in range(3):
                    if dy != 1 or dx != 1:
                        values[k] = padded[y + dy, x + dx]
                        k += 1
            for i, j in _NETWORK_8:
                a, b = values[i], values[j]
                values[i], values[j] = min(a, b), max(a, b)
            low[y, x] = values[1]
            middle[y, x] = values[4]
            high[y, x] = values[6]


def neighbour_ranks(image: np.ndarray, kernel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The second-lowest, middle (upper median) and second-highest of every pixel's ``kernel**2 - 1``
    neighbours (itself left out; mirrored at the frame's edges), each (Y, X).

    The rows ``1``, ``n // 2`` and ``-2`` of :func:`_sorted_neighbours`; for
    the 3 x 3 kernel of finite images, a compiled sorting network per pixel
    instead of sorting the shifted copies.
    """
    image = np.asarray(image)
    if kernel == 3 and min(image.shape) >= 2 and image.dtype.kind == "f" and np.isfinite(image).all():
        padded = np.pad(image, 1, mode="reflect")
        low, middle, high = (np.empty(image.shape, image.dtype) for _ in range(3))
        _ranks_3x3(padded, low, middle, high)
        return low, middle, high
    ranked = _sorted_neighbours(image, kernel)
    return ranked[1], ranked[ranked.shape[0] // 2], ranked[-2]


def _neighbours_at(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, kernel: int) -> np.ndarray:
    """The sorted ``kernel**2 - 1`` neighbours (itself left out, mirrored at
    the frame's edges as in :func:`_sorted_neighbours`) of the pixels
    (rows[i], cols[i]), as an array (n_pixels, n_neighbours)."""
    radius = kernel // 2
    padded = np.pad(image, radius, mode="reflect")
    offsets = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if dy or dx]
    gathered = np.stack([padded[rows + radius + dy, cols + radius + dx] for dy, dx in offsets], axis=-1)
    gathered.sort(axis=-1)
    return gathered


def _window_median(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Median of the ``size`` x ``size`` window (mirrored at the frame's
    edges) around each pixel (rows[i], cols[i])."""
    radius = size // 2
    padded = np.pad(image, radius, mode="reflect")
    offsets = np.arange(size)
    window_rows = (rows[:, None] + offsets[None, :])[:, :, None]
    window_cols = (cols[:, None] + offsets[None, :])[:, None, :]
    windows = padded[window_rows, window_cols].reshape(len(rows), -1)
    return np.median(windows, axis=1)


def _noise_scale(deviation: np.ndarray, tile: int | None) -> np.ndarray:
    """Per-pixel robust noise scale (1.4826 * MAD) of a deviation image.

    With ``tile=None`` one scale serves the whole image. Otherwise it is
    estimated per ``tile`` x ``tile`` tile (edge tiles may be smaller),
    each tile takes the largest scale among itself and its eight neighbour
    tiles, and the result is expanded back to pixels. A zero scale (a
    perfectly flat region) is raised to 1e-3 of the median tile scale (or
    1e-12) so one odd pixel there scores high but finite.
    """
    if tile is None:
        scale = _MAD_TO_SIGMA * np.median(np.abs(deviation - np.median(deviation)))
        return np.full(deviation.shape, max(scale, 1e-12))
    height, width = deviation.shape
    tiles_y, tiles_x = -(-height // tile), -(-width // tile)
    padded = np.full((tiles_y * tile, tiles_x * tile), np.nan)
    padded[:height, :width] = deviation
    grid = padded.reshape(tiles_y, tile, tiles_x, tile).transpose(0, 2, 1, 3).reshape(tiles_y, tiles_x, -1)
    # nanmedian loops in Python over rows; only edge tiles hold padding NaNs
    median = np.nanmedian if (height % tile or width % tile) else np.median
    centre = median(grid, axis=-1, keepdims=True)
    scale = _MAD_TO_SIGMA * median(np.abs(grid - centre), axis=-1)
    scale = ndi.maximum_filter(scale, size=3, mode="nearest")
    scale = np.maximum(scale, max(1e-3 * float(np.median(scale)), 1e-12))
    return np.kron(scale, np.ones((tile, tile)))[:height, :width]
