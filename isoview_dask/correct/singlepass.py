"""The correction of a camera volume in one pass per block: repair, background, projections, block means.

The correction used to be several passes over each raw block, each a numpy
call allocating its own result: the dead-pixel repair with the background
subtraction, then three maximum projections of the corrected block and three
of the raw one, then the lateral block means the segmentation starts from.
:func:`correct_block` does all of it in one compiled loop (numba) that
reads every raw voxel once and writes the corrected block into one
preallocated array; :func:`corrected_parts` is its dask graph, one task per
block, and the dask arrays each result becomes.

The results are bit-identical to the separate passes (:func:`correct_block_numpy`
is them, on one block, and the tests' reference): the same integer
arithmetic for an integer dark frame, the same float32 rounding for a
fractional one, and block means summed exactly in 32-bit integers, then
divided in float64 and rounded once to float32, as
:func:`~isoview_dask.correct.segmentation.downsample_lateral` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numba
import numpy as np

from .arrays import as_dask
from .background import exact_dark_frame, subtract_background
from .deadpixels import chunk_repairs, repair_plan
from .segmentation import downsample_lateral

#: Raw dtypes the compiled pass takes (others go through the separate passes).
KERNEL_DTYPES = (np.dtype(np.uint16), np.dtype(np.uint8))
#: Names of the per-block results besides the corrected block; a projection's axis is the
#: one it reduces (``"raw_max_0"``: the raw block's maximum over z, (Y, X)).
PROJECTIONS = tuple(f"{kind}_max_{axis}" for kind in ("raw", "corrected") for axis in range(3))


@numba.njit(cache=True, nogil=True)
def _correct_reduce(raw, dark_int, dark_float, exact, top, repair_rows, repair_cols, repair_values, factor, out,
                    means, raw0, raw1, raw2, cor0, cor1, cor2):
    # Row by row: each raw row is read from memory once and stays in cache while it is corrected
    # and reduced into every result; the loops over x are branch-free, so they vectorise.
    n_z, n_y, n_x = raw.shape
    rows_used = (n_y // factor) * factor if factor > 0 else 0
    n_cells = n_x // factor if factor > 0 else 0
    sums = np.zeros(max(n_cells, 1), np.uint32)
    cell_size = np.float64(factor * factor)
    zero = raw[0, 0, 0] - raw[0, 0, 0]
    raw0[:] = zero  # unsigned: 0 is the identity of max
    cor0[:] = zero
    first_repair = np.searchsorted(repair_rows, np.arange(n_y + 1))  # repairs of row y: first[y]:first[y+1]
    for z in range(n_z):
        raw1[z, :] = zero
        cor1[z, :] = zero
        for y in range(n_y):
            source = raw[z, y]
            row = out[z, y]
            if exact:
                dark = dark_int[y]
                for x in range(n_x):
                    v = source[x]
                    row[x] = v - min(v, dark[x])
            else:
                darkf = dark_float[y]
                for x in range(n_x):
                    d = np.rint(np.float32(source[x]) - darkf[x])
                    row[x] = 0 if d <= 0 else (top if d >= top else d)
            for k in range(first_repair[y], first_repair[y + 1]):  # dead pixels: their repaired raw value
                x = repair_cols[k]
                v = repair_values[z, k]
                if exact:
                    row[x] = v - min(v, dark_int[y, x])
                else:
                    d = np.rint(np.float32(v) - dark_float[y, x])
                    row[x] = 0 if d <= 0 else (top if d >= top else d)
            raw_max = zero
            cor_max = zero
            r0 = raw0[y]
            c0 = cor0[y]
            r1 = raw1[z]
            c1 = cor1[z]
            for x in range(n_x):
                v = source[x]
                c = row[x]
                r0[x] = max(r0[x], v)
                c0[x] = max(c0[x], c)
                r1[x] = max(r1[x], v)
                c1[x] = max(c1[x], c)
                raw_max = max(raw_max, v)
                cor_max = max(cor_max, c)
            raw2[z, y] = raw_max
            cor2[z, y] = cor_max
            if y < rows_used:
                if y % factor == 0:
                    sums[:] = 0
                for cell in range(n_cells):
                    total = np.uint32(0)
                    for x in range(cell * factor, cell * factor + factor):
                        total += np.uint32(row[x])
                    sums[cell] += total
                if y % factor == factor - 1:
                    for cell in range(n_cells):
                        means[z, y // factor, cell] = np.float32(np.float64(sums[cell]) / cell_size)


def _dark_frames(dark, dtype, frame_shape) -> tuple[np.ndarray, np.ndarray, bool]:
    """The background as the kernel takes it: (integer frame, float32 frame, exact)."""
    exact = exact_dark_frame(dtype, frame_shape, dark)
    if exact is not None:
        return np.ascontiguousarray(exact), np.zeros((1, 1), np.float32), True
    values = np.asarray(dark, dtype=np.float32)
    frame = np.full(tuple(frame_shape), values, np.float32) if values.ndim == 0 else np.ascontiguousarray(values)
    return np.zeros((1, 1), dtype), frame, False


def correct_block(raw: np.ndarray, dark, repair_rows=None, repair_cols=None, repair_values=None,
                  factor: int = 0) -> dict[str, np.ndarray]:
    """Correct one raw block and reduce it, in one pass.

    Parameters
    ----------
    raw : numpy.ndarray, shape (Z, Y, X), uint16 or uint8
        Raw counts of one block.
    dark : float or numpy.ndarray, shape (Y, X)
        The background of the block's pixels in counts: a level or the
        block's tile of the dark frame. Whole counts are subtracted exactly
        (``v - min(v, dark)``), others in float32, rounded half to even and
        clipped to the dtype's range.
    repair_rows, repair_cols : numpy.ndarray of int, shape (n,), optional
        Dead pixels of the block (its own row and column indices).
    repair_values : numpy.ndarray, shape (Z, n), optional
        Their repaired raw values (from
        :func:`~isoview_dask.correct.deadpixels.chunk_repairs`), used in
        place of the raw ones before the background is subtracted.
    factor : int
        Lateral reduction of the block means (0: none). Means cover the
        ``factor`` x ``factor`` pixel cells that lie wholly in the block,
        from its first row and column.

    Returns
    -------
    dict
        ``corrected`` (Z, Y, X) of ``raw``'s dtype; ``means`` (Z, Y // factor,
        X // factor) float32 when ``factor``; and the projections
        :data:`PROJECTIONS`: the maxima of the raw and of the corrected block
        over z (Y, X), over y (Z, X) and over x (Z, Y).
    """
    raw = np.ascontiguousarray(raw)
    if raw.ndim != 3 or raw.dtype not in KERNEL_DTYPES:
        raise TypeError(f"correct_block takes a (Z, Y, X) block of {[str(d) for d in KERNEL_DTYPES]}, got "
                        f"{raw.ndim}-d {raw.dtype}")
    n_z, n_y, n_x = raw.shape
    dark_int, dark_float, exact = _dark_frames(dark, raw.dtype, (n_y, n_x))
    if repair_rows is not None and len(repair_rows):
        order = np.argsort(np.asarray(repair_rows), kind="stable")
        rows = np.ascontiguousarray(np.asarray(repair_rows, np.int64)[order])
        cols = np.ascontiguousarray(np.asarray(repair_cols, np.int64)[order])
        values = np.ascontiguousarray(np.asarray(repair_values, dtype=raw.dtype)[:, order])
    else:
        rows = cols = np.zeros(0, np.int64)
        values = np.zeros((n_z, 0), raw.dtype)
    factor = int(factor)
    results = {"corrected": np.empty_like(raw)}
    means = np.empty((n_z, n_y // factor, n_x // factor) if factor else (0, 0, 0), np.float32)
    for kind in ("raw", "corrected"):
        results[f"{kind}_max_0"] = np.empty((n_y, n_x), raw.dtype)
        results[f"{kind}_max_1"] = np.empty((n_z, n_x), raw.dtype)
        results[f"{kind}_max_2"] = np.empty((n_z, n_y), raw.dtype)
    if raw.size:
        top = np.float32(np.iinfo(raw.dtype).max)
        _correct_reduce(raw, dark_int, dark_float, exact, top, rows, cols, values, factor, results["corrected"],
                        means, *(results[name] for name in PROJECTIONS))
    if factor:
        results["means"] = means
    return results


def correct_block_numpy(raw: np.ndarray, dark, repair_rows=None, repair_cols=None, repair_values=None,
                        factor: int = 0) -> dict[str, np.ndarray]:
    """:func:`correct_block` as the separate numpy passes it replaces (the tests' reference)."""
    raw = np.asarray(raw)
    repaired = raw
    if repair_rows is not None and len(repair_rows):
        repaired = raw.copy()
        repaired[:, np.asarray(repair_rows), np.asarray(repair_cols)] = np.asarray(repair_values, raw.dtype)
    corrected = subtract_background(repaired, dark).compute(scheduler="synchronous")
    results = {"corrected": corrected}
    for kind, volume in (("raw", raw), ("corrected", corrected)):
        for axis in range(3):
            results[f"{kind}_max_{axis}"] = volume.max(axis=axis)
    if factor:
        if min(raw.shape[1:]) >= factor:
            results["means"] = downsample_lateral(corrected, factor).compute(scheduler="synchronous")
        else:
            results["means"] = np.empty((raw.shape[0], raw.shape[1] // factor, raw.shape[2] // factor), np.float32)
    return results


@dataclass
class CorrectionParts:
    """The lazy results of :func:`corrected_parts` (dask arrays).

    Attributes
    ----------
    corrected : dask.array.Array, (Z, Y, X)
        The corrected volume, ``raw``'s dtype and chunks.
    means : dask.array.Array or None, (Z, Y // factor, X // factor) float32
        Lateral block means of ``corrected``, with the chunks
        :func:`~isoview_dask.correct.segmentation.downsample_lateral` gives.
    projections : dict
        ``{"raw": [over z, over y, over x], "corrected": [...]}``: maximum
        projections (Y, X), (Z, X), (Z, Y).
    """

    corrected: da.Array
    means: da.Array | None
    projections: dict


def _parts_block(block, *rest, dark_tiled: bool, dark_level, repaired: bool, factor: int, edge_rows=None,
                 edge_cols=None):
    """One block's :func:`correct_block` results, as a (1, 1, 1) object array."""
    rest = list(rest)
    rows = cols = values = None
    if repaired:
        edge_values, local, y_index, x_index = rest[:4]
        rest = rest[4:]
        if local.any() or edge_rows.size:
            rows, cols, values = chunk_repairs(block, edge_values, local, y_index, x_index,
                                               edge_rows=edge_rows, edge_cols=edge_cols)
    dark = rest[0] if dark_tiled else dark_level
    out = np.empty((1, 1, 1), dtype=object)
    out[0, 0, 0] = correct_block(block, dark, rows, cols, values, factor)
    return out


def _take(parts, name: str, block_info=None):
    """The ``name`` result of one block's parts, in the output block's shape (a projection gets its
    reduced axis back, as length 1)."""
    return parts.reshape(-1)[0][name].reshape(block_info[None]["chunk-shape"])


def corrected_parts(raw, dead_mask, background, factor: int = 0) -> CorrectionParts | None:
    """The corrected volume, its block means and its projections, from one pass per raw block.

    Parameters
    ----------
    raw : dask or numpy array, shape (Z, Y, X)
        Raw counts, uint16 or uint8, in the chunks the results should have.
    dead_mask : numpy.ndarray of bool, shape (Y, X), or None
        Dead pixels to repair (median of their live 3 x 3 neighbours).
    background : float or numpy.ndarray, shape (Y, X)
        Dark level or dark frame in counts (not a dask array).
    factor : int
        Lateral reduction of the block means the segmentation starts from
        (0: no means).

    Returns
    -------
    CorrectionParts or None
        None when the single pass does not apply and the separate passes must
        be used: another dtype, a dask background, or (with ``factor``) a
        lateral chunk border that does not fall on a ``factor`` x ``factor``
        cell border (the block means would straddle blocks).

    Notes
    -----
    One task per raw block computes everything; the dask arrays take their
    blocks from it. Equal, bit for bit, to ``corrected_volume`` (repair, then
    background), ``downsample_lateral(corrected, factor)`` and the ``max``
    reductions of ``raw`` and of the corrected volume.
    """
    raw = as_dask(raw)
    factor = int(factor)
    if raw.ndim != 3 or raw.dtype not in KERNEL_DTYPES or isinstance(background, da.Array):
        return None
    if factor > 1:
        for chunks in raw.chunks[1:]:
            if any(c % factor for c in chunks[:-1]) or chunks[-1] < factor:
                return None
    elif factor != 0 and factor != 1:
        return None
    use_factor = factor if factor > 1 else 0
    mask = None if dead_mask is None else np.asarray(dead_mask, dtype=bool)
    plan = repair_plan(raw, mask) if mask is not None else None
    arguments = [raw, "zyx"]
    keywords = {"repaired": plan is not None, "factor": use_factor}
    if plan is not None:
        arguments += plan.arguments
        keywords.update(plan.keywords)
    frame_shape = raw.shape[1:]
    if np.ndim(background) == 0:
        keywords.update(dark_tiled=False, dark_level=float(background) if not isinstance(background, np.integer)
                        else int(background))
    else:
        background = np.asarray(background)
        if background.shape != tuple(frame_shape):
            raise ValueError(f"dark frame shape {background.shape} does not match the frame shape {frame_shape} (Y, X)")
        arguments += [da.from_array(background, chunks=raw.chunks[1:]), "yx"]
        keywords.update(dark_tiled=True, dark_level=None)
    parts = da.blockwise(_parts_block, "zyx", *arguments, concatenate=True, dtype=object,
                         adjust_chunks={"z": lambda c: 1, "y": lambda c: 1, "x": lambda c: 1},
                         meta=np.empty((0, 0, 0), dtype=object), **keywords)
    # Block (i, j, k) of each result comes from parts block (i, j, k): the same block grid.
    z_chunks, y_chunks, x_chunks = raw.chunks
    ones = [tuple(1 for _ in c) for c in raw.chunks]

    def result(name, chunks, dtype):
        return parts.map_blocks(_take, name, chunks=chunks, dtype=dtype, meta=np.empty((0, 0, 0), dtype))

    corrected = result("corrected", raw.chunks, raw.dtype)
    projections = {}
    for kind in ("raw", "corrected"):
        partial = [result(f"{kind}_max_0", (ones[0], y_chunks, x_chunks), raw.dtype),
                   result(f"{kind}_max_1", (z_chunks, ones[1], x_chunks), raw.dtype),
                   result(f"{kind}_max_2", (z_chunks, y_chunks, ones[2]), raw.dtype)]
        projections[kind] = [p.max(axis=axis) for axis, p in enumerate(partial)]
    means = None
    if use_factor:
        means = result("means", (z_chunks, tuple(c // use_factor for c in y_chunks),
                                 tuple(c // use_factor for c in x_chunks)), np.float32)
    elif factor == 1:
        means = corrected.astype(np.float32)
    return CorrectionParts(corrected, means, projections)
