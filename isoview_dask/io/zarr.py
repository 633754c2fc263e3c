"""Sharded zarr v3 volumes with OME-NGFF 0.5 metadata.

The package's default output. A volume is written as an OME-NGFF 0.5
multiscale group: array ``0`` holds full resolution, optional arrays ``1``,
``2``... hold downsampled levels. Each array is sharded (large shard files of
small inner chunks) and compressed with a codec chosen by name and level
(:class:`CodecSpec`). Before writing, the dask array is rechunked so that one
dask chunk is exactly one shard: no two tasks ever write into one shard.
Writes go to a hidden temporary directory renamed when complete.

Every image also gets an OME-NGFF ``omero`` block (channel label, colour and
display window). The window comes from a histogram that the write tasks take
of the blocks they store: no second pass over the data.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import dask.array as da
import numpy as np
import zarr

from ..errors import InputNotFoundError
from .atomic import commit_temporary, remove_path, reserve_temporary
from .chunking import fit_chunks, write_chunks
from .codecs import CodecSpec
from .histogram import COUNTABLE, value_counts

log = logging.getLogger(__name__)

OME_VERSION = "0.5"


def ome_multiscales(voxel_size_zyx: Sequence[float] | None, level_factors: Sequence[Sequence[int]],
                    name: str = "") -> dict:
    """OME-NGFF 0.5 ``ome`` attribute for a (Z, Y, X) multiscale group.

    Parameters
    ----------
    voxel_size_zyx : (z, y, x) in µm, or None for unit scale
    level_factors : list of (fz, fy, fx)
        Cumulative downsampling factor of each level (level 0 is (1, 1, 1)).
        Downsampled levels get a translation of ``voxel * (f - 1) / 2`` after
        their scale: a level voxel is the mean of the ``f`` level-0 voxels it
        covers, centred between them.
    """
    base = [float(v) for v in (voxel_size_zyx or (1.0, 1.0, 1.0))]
    unit = "micrometer" if voxel_size_zyx is not None else None
    axes = []
    for axis in "zyx":
        entry: dict[str, Any] = {"name": axis, "type": "space"}
        if unit:
            entry["unit"] = unit
        axes.append(entry)
    datasets = []
    for i, factors in enumerate(level_factors):
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [b * f for b, f in zip(base, factors)]}]
        if any(f > 1 for f in factors):
            # a mean over f voxels sits at the centre of the first level's voxels it covers: (f - 1) / 2 of
            # them from the origin, so the levels overlay in physical space
            transforms.append({"type": "translation", "translation": [b * (f - 1) / 2 for b, f in zip(base, factors)]})
        datasets.append({"path": str(i), "coordinateTransformations": transforms})
    return {"version": OME_VERSION, "multiscales": [{"name": name, "axes": axes, "datasets": datasets}]}


#: Percentiles (low, high) of the written voxels that make an image's display window.
WINDOW_PERCENTILES = (0.1, 99.9)

#: Per-block sample size for data whose histogram is not kept exactly (floats, wide integers); a merged
#: sample over this many values is thinned to this many equally weighted quantiles.
_SAMPLE_PER_BLOCK = 65536

#: Colours (RRGGBB) of the channels of :func:`default_channel`.
CAMERA_COLORS = ("00FF00", "FF00FF", "00FFFF", "FFFF00")
FUSED_COLORS = ("00FF00", "FF00FF")


def default_channel(name: str) -> tuple[str, str]:
    """A channel label and colour (RRGGBB) for an output named by its file stem.

    Parameters
    ----------
    name : str
        The stem the pipeline names an output by, e.g.
        ``SPM00_TM000000_CM01_CHN00`` (corrected camera: ``"CM01 corrected"``),
        ``..._CM00_CM01_CHN00.fusedStack`` (``"fused CM00+CM01"``) or
        ``..._CM00_CM01_CM02_CM03_CHN00.isotropic`` (``"isotropic CM00+CM01+CM02+CM03"``).
        Anything else is its own label.

    Returns
    -------
    label, color : str
    """
    import re
    stem, _, kind = name.partition(".")
    cameras = [int(c) for c in re.findall(r"(?:^|_)CM(\d+)", stem)]
    names = "+".join(f"CM{c:02d}" for c in cameras)
    if not cameras:
        return name or "image", "FFFFFF"
    if kind == "":
        return f"{names} corrected", CAMERA_COLORS[cameras[0] % len(CAMERA_COLORS)]
    if kind == "fusedStack":
        return f"fused {names}", CAMERA_COLORS[cameras[0] % len(CAMERA_COLORS)]
    if kind.startswith("isotropic"):
        return f"isotropic {names}", "FFFFFF"
    if kind == "segmentationMask":
        return f"{names} segmentation mask", "FFFFFF"
    return f"{names} {kind}", "FFFFFF"


class _BlockSummary:
    """Bytes written and a histogram of one or more stored blocks (values, counts), with the exact extrema.

    ``exact`` is False when the histogram is a weighted sample (float or wide integer data).
    """

    __slots__ = ("nbytes", "values", "counts", "low", "high", "exact")

    def __init__(self, nbytes, values, counts, low, high, exact):
        self.nbytes, self.values, self.counts = nbytes, values, counts
        self.low, self.high, self.exact = low, high, exact

    @classmethod
    def of(cls, block: np.ndarray, seed: int) -> "_BlockSummary":
        flat = block.reshape(-1)
        if flat.size == 0:
            return cls(block.nbytes, np.empty(0), np.empty(0, np.float64), None, None, True)
        if flat.dtype in COUNTABLE:  # one pass, exact: the extrema are in the histogram
            counts, low = value_counts(flat)
            values = np.flatnonzero(counts)
            return cls(block.nbytes, values.astype(np.float64) + float(low), counts[values].astype(np.float64),
                       float(values[0] + low), float(values[-1] + low), True)
        low, high = flat.min(), flat.max()
        finite = np.isfinite(low) and np.isfinite(high)
        if flat.size > _SAMPLE_PER_BLOCK:
            picks = np.random.default_rng(seed).integers(0, flat.size, _SAMPLE_PER_BLOCK)
            sample = flat[picks]
        else:
            sample = flat
        sample = sample.astype(np.float64)
        if not finite:
            sample = sample[np.isfinite(sample)]
            kept = flat[np.isfinite(flat)] if flat.dtype.kind == "f" else flat
            low, high = (kept.min(), kept.max()) if kept.size else (None, None)
        values, counts = np.unique(sample, return_counts=True)
        weight = flat.size / max(sample.size, 1)
        return cls(block.nbytes, values, counts * weight, None if low is None else float(low),
                   None if high is None else float(high), flat.size <= _SAMPLE_PER_BLOCK)

    @classmethod
    def merge(cls, parts: list["_BlockSummary"]) -> "_BlockSummary":
        values = np.concatenate([p.values for p in parts])
        counts = np.concatenate([p.counts for p in parts])
        if values.size:
            values, inverse = np.unique(values, return_inverse=True)
            counts = np.bincount(inverse.reshape(-1), weights=counts, minlength=values.size)
        if values.size > _SAMPLE_PER_BLOCK and not all(p.exact for p in parts):
            # keep a sampled histogram small however many blocks it covers: its quantiles, equally weighted
            total = counts.sum()
            at = (np.arange(_SAMPLE_PER_BLOCK) + 0.5) * (total / _SAMPLE_PER_BLOCK)
            values, thinned = np.unique(values[np.searchsorted(np.cumsum(counts), at)], return_counts=True)
            counts = thinned * (total / _SAMPLE_PER_BLOCK)
        lows = [p.low for p in parts if p.low is not None]
        highs = [p.high for p in parts if p.high is not None]
        return cls(sum(p.nbytes for p in parts), values, counts, min(lows) if lows else None,
                   max(highs) if highs else None, all(p.exact for p in parts))

    def percentiles(self, qs: Sequence[float]) -> list[float]:
        """Percentiles (0-100) by linear interpolation between ranks, as :func:`numpy.percentile` (exact for
        the 8- and 16-bit integer histograms)."""
        total = float(self.counts.sum())
        cumulative = np.cumsum(self.counts)
        out = []
        for q in qs:
            rank = q / 100.0 * (total - 1)
            below, above = np.floor(rank), np.ceil(rank)
            at = self.values[np.minimum(np.searchsorted(cumulative, [below + 1, above + 1], side="left"),
                                        self.values.size - 1)]
            out.append(float(at[0] + (at[1] - at[0]) * (rank - below)))
        return out

    def window(self) -> dict | None:
        """The omero ``window`` (start/end at :data:`WINDOW_PERCENTILES`, min/max the data's extrema)."""
        if self.low is None or not self.values.size:
            return None
        start, end = self.percentiles(WINDOW_PERCENTILES)
        start, end = max(start, self.low), min(end, self.high)
        if end <= start:  # a flat image or one dominated by a single value: show its whole range
            start, end = self.low, self.high if self.high > self.low else self.low + 1.0
        return {"min": self.low, "max": self.high, "start": start, "end": end}


def omero_block(label: str, color: str, window: dict | None) -> dict:
    """The OME-NGFF ``omero`` metadata of a one-channel image.

    Parameters
    ----------
    label : str
        Channel name shown by viewers.
    color : str
        ``RRGGBB`` hexadecimal colour.
    window : dict or None
        ``{"min", "max", "start", "end"}``; None (an empty image) gives 0-1.
    """
    window = window or {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}
    return {"channels": [{"label": label, "color": color, "active": True, "coefficient": 1.0,
                          "family": "linear", "inverted": False, "window": window}],
            "rdefs": {"model": "color"}}


def image_window(path: str | os.PathLike) -> dict | None:
    """The display window recorded in an image's ``omero`` block, or None."""
    node = zarr.open_group(str(path), mode="r")
    channels = ((node.attrs.get("ome") or {}).get("omero") or {}).get("channels") or []
    return dict(channels[0]["window"]) if channels else None


def pyramid_factors(voxel_size_zyx: Sequence[float] | None, levels: int) -> list[tuple[int, int, int]]:
    """Cumulative (fz, fy, fx) downsampling per pyramid level.

    Y and X halve at every level; Z halves only once the lateral spacing has
    caught up with the axial one, so levels move towards isotropic voxels.
    """
    dz, dy, _ = voxel_size_zyx or (1.0, 1.0, 1.0)
    factors = [(1, 1, 1)]
    fz = fy = 1
    for _ in range(levels):
        fy *= 2
        if dz * fz * 2 <= dy * fy * 1.5:
            fz *= 2
        factors.append((fz, fy, fy))
    return factors


def _downsample(arr: da.Array, step: Sequence[int]) -> da.Array:
    """Mean-downsample by integer steps per axis (trailing remainder dropped), keeping dtype."""
    if all(s == 1 for s in step):
        return arr
    trimmed = arr[tuple(slice(0, (n // s) * s) for n, s in zip(arr.shape, step))]
    chunks = tuple(max(s, (c // s) * s) for c, s in zip(trimmed.chunksize, step))
    trimmed = trimmed.rechunk(chunks)
    out = da.coarsen(np.mean, trimmed, {i: s for i, s in enumerate(step)}, trim_excess=True)
    if np.issubdtype(arr.dtype, np.integer):
        out = da.round(out)
    return out.astype(arr.dtype)


class PendingZarrWrite:
    """A zarr volume being written: the lazy store graph plus commit/abort.

    Build with :func:`prepare_zarr`; compute :attr:`delayed` (possibly
    together with other pending writes, on any cluster), then call
    :meth:`commit` to rename the temporary directory to its final name.

    :attr:`delayed` is a 0-d dask array (bytes written): computed together
    with other dask arrays of the same source (projections, statistics),
    the whole graph is optimised as one and every input chunk is read and
    computed once. (A ``dask.delayed`` store would be optimised apart
    from them and recompute the shared part.)
    """

    def __init__(self, final: Path, tmp: Path, delayed, overwrite: bool):
        self.final, self.tmp, self.delayed, self.overwrite = final, tmp, delayed, overwrite

    def commit(self) -> Path:
        """Rename the finished temporary directory to the final path."""
        return commit_temporary(self.tmp, self.final, self.overwrite)

    def abort(self) -> None:
        """Remove the temporary directory; the final path is untouched."""
        remove_path(self.tmp)


def prepare_zarr(array, path: str | os.PathLike, *, codec: str | CodecSpec = "blosc-zstd",
                 level: int | None = None, shuffle: str | None = None,
                 chunks: Sequence[int] | None = None, shards: Sequence[int] | None = None,
                 voxel_size_zyx: Sequence[float] | None = None, pyramid_levels: int = 0,
                 overwrite: bool = False, attributes: dict | None = None, name: str = "",
                 label: str | None = None, color: str | None = None,
                 image_label: dict | None = None) -> PendingZarrWrite:
    """Create the zarr group under a temporary name and build the lazy write graph.

    Parameters are those of :func:`write_zarr`. Nothing is computed; the
    returned object's ``delayed`` writes every shard, ``commit()`` publishes.
    The tasks that store level 0 also take a histogram of it; the task that
    sums their byte counts writes the ``omero`` block (display window at
    :data:`WINDOW_PERCENTILES`) into the group before ``commit()``.
    """
    spec = CodecSpec.parse(codec, level, shuffle)
    final = Path(path)
    arr = da.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"{final}: expected a (Z, Y, X) volume, got shape {arr.shape}")
    tmp = reserve_temporary(final, overwrite)
    factors = pyramid_factors(voxel_size_zyx, pyramid_levels)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    attrs = {"ome": ome_multiscales(voxel_size_zyx, factors, name)}
    if image_label is not None:  # a label image: no display window, the labels' colours instead
        attrs["ome"]["image-label"] = image_label
        channel = None
    else:
        default_label, default_color = default_channel(name)
        channel = (label or default_label, color or default_color)
        attrs["ome"]["omero"] = omero_block(*channel, None)  # the window follows from the write
    attrs["isoview_dask"] = {"codec": spec.to_dict(), **(attributes or {})}
    group.attrs.update(attrs)
    stores = []
    level_arr = arr
    previous = (1, 1, 1)
    for index, factor in enumerate(factors):
        step = tuple(f // p for f, p in zip(factor, previous))
        level_arr = _downsample(level_arr, step)
        previous = factor
        inner, shard = fit_chunks(level_arr.shape, chunks, shards)
        # write_empty_chunks: every chunk is stored, as a reader expects of a complete volume;
        # zarr's test of each chunk against the fill value cost a third of the write's CPU.
        target = group.create_array(
            str(index), shape=level_arr.shape, dtype=level_arr.dtype, chunks=inner, shards=shard,
            compressors=spec.zarr_compressors(np.dtype(level_arr.dtype).itemsize),
            dimension_names=("z", "y", "x"), fill_value=0, config={"write_empty_chunks": True})
        aligned = level_arr.rechunk(write_chunks(inner, shard, level_arr.shape, np.dtype(level_arr.dtype).itemsize))
        stores.append(_store_blocks(aligned, target, (str(tmp), *channel) if index == 0 and channel else None))
        level_arr = aligned
    total = stores[0] if len(stores) == 1 else da.stack(stores).sum()
    return PendingZarrWrite(final, tmp, total, overwrite)


#: The group of an OME-NGFF image that holds its label images.
LABELS_GROUP = "labels"


def prepare_label(array, image: PendingZarrWrite, label_name: str, *,
                  colors: dict[int, Sequence[int]] | None = None, **options) -> PendingZarrWrite:
    """Add a label image (e.g. a segmentation mask) to an image being written: ``<image>/labels/<name>``.

    The label image is an OME-NGFF 0.5 multiscale group with ``image-label``
    metadata (its colours and its source image ``../../``), listed in the
    ``labels`` group of the image, so that viewers (napari-ome-zarr, ome-zarr-py)
    show it as labels over the image. It is written inside the image's
    temporary directory: commit it before the image, and the image's
    ``commit()`` publishes both at once.

    Parameters
    ----------
    array : numpy or dask array, (Z, Y, X), integer
        The labels (0 is background).
    image : PendingZarrWrite
        The image being written (:func:`prepare_zarr`), not yet committed.
    label_name : str
        The label image's name in the ``labels`` group.
    colors : {label value: (r, g, b, a)}, optional
        Display colours, 0-255 each; default label 1 opaque yellow.
    **options
        Passed to :func:`prepare_zarr` (codec, chunks, voxel size, ...).

    Returns
    -------
    PendingZarrWrite
        Its ``final`` lies inside ``image.tmp``; after both commits the label
        image is at ``image.final / "labels" / label_name``.
    """
    labels = image.tmp / LABELS_GROUP
    group = zarr.open_group(str(labels), mode="a", zarr_format=3)
    listed = list(((group.attrs.get("ome") or {}).get("labels")) or [])
    group.attrs["ome"] = {"version": OME_VERSION, "labels": listed + [label_name] * (label_name not in listed)}
    colors = colors if colors is not None else {1: (255, 255, 0, 255)}
    image_label = {"colors": [{"label-value": int(v), "rgba": [int(c) for c in rgba]} for v, rgba in colors.items()],
                   "source": {"image": "../../"}}
    return prepare_zarr(array, labels / label_name, name=label_name, image_label=image_label,
                        **{**options, "overwrite": False})


def _store_blocks(source: da.Array, target, omero: tuple[str, str, str] | None = None) -> da.Array:
    """Write every block of ``source`` into ``target`` (one task per block, no lock: the
    blocks are whole shards or chunks); a 0-d dask array of the bytes written.

    ``omero``: (group path, label, colour). Each task then also returns a
    histogram of its block (:class:`_BlockSummary`); the histograms are summed
    with the byte counts, and the final task writes the group's ``omero``
    block with the display window from them.
    """
    from dask.base import tokenize
    token = tokenize(source.name, str(target.store), target.path, omero)
    if omero is None:
        written = source.map_blocks(_write_block, target=target, dtype=np.int64,
                                    chunks=tuple((1,) * len(c) for c in source.chunks),
                                    meta=np.empty((0,) * source.ndim, np.int64), name=f"store-shard-{token}")
        # (named so that the write tasks, fused with the first stage of the sum, say "store")
        return da.reduction(written, np.sum, np.sum, dtype=np.int64, name="store-bytes")
    written = source.map_blocks(_write_block, target=target, summarise=True, dtype=object,
                                chunks=tuple((1,) * len(c) for c in source.chunks),
                                meta=np.empty((0,) * source.ndim, object), name=f"store-shard-{token}")
    return da.reduction(written, _keep_summaries, partial(_write_omero, omero=omero), combine=_merge_summaries,
                        concatenate=False, dtype=np.int64, meta=np.empty((), np.int64), name="store-bytes")


def _write_block(block: np.ndarray, target=None, summarise: bool = False, block_info=None) -> np.ndarray:
    region = tuple(slice(start, stop) for start, stop in block_info[0]["array-location"])
    target[region] = block
    if not summarise:
        return np.full((1,) * block.ndim, block.nbytes, dtype=np.int64)
    out = np.empty((1,) * block.ndim, dtype=object)
    out.flat[0] = _BlockSummary.of(np.asarray(block), seed=sum(s.start for s in region))
    return out


def _summaries(nested) -> list:
    """The :class:`_BlockSummary` objects of a nested list of object arrays."""
    if isinstance(nested, (list, tuple)):
        return [s for item in nested for s in _summaries(item)]
    return [s for s in np.asarray(nested, dtype=object).reshape(-1)]


def _keep_summaries(x, axis=None, keepdims=True):
    merged = np.empty((1,) * x.ndim, dtype=object)
    merged.flat[0] = _BlockSummary.merge(_summaries(x))
    return merged


def _merge_summaries(nested, axis=None, keepdims=True):
    leaf = nested
    while isinstance(leaf, (list, tuple)):
        leaf = leaf[0]
    merged = np.empty((1,) * np.ndim(leaf), dtype=object)
    merged.flat[0] = _BlockSummary.merge(_summaries(nested))
    return merged


def _write_omero(nested, axis=None, keepdims=False, omero=None) -> np.ndarray:
    """Final step of a summarised write: the ``omero`` block into the group, and the bytes written."""
    summary = _BlockSummary.merge(_summaries(nested))
    group_path, label, color = omero
    group = zarr.open_group(group_path, mode="r+")
    ome = dict(group.attrs.get("ome") or {})
    ome["omero"] = omero_block(label, color, summary.window())
    group.attrs["ome"] = ome
    return np.asarray(summary.nbytes, dtype=np.int64)


def write_zarr(array, path: str | os.PathLike, *, codec: str | CodecSpec = "blosc-zstd", level: int | None = None,
               shuffle: str | None = None, chunks: Sequence[int] | None = None,
               shards: Sequence[int] | None = None, voxel_size_zyx: Sequence[float] | None = None,
               pyramid_levels: int = 0, overwrite: bool = False, attributes: dict | None = None,
               name: str = "", label: str | None = None, color: str | None = None) -> Path:
    """Write a (Z, Y, X) volume as a sharded OME-NGFF 0.5 zarr v3 group, atomically.

    Parameters
    ----------
    array : numpy or dask array, (Z, Y, X)
        The volume; a dask array is written shard by shard in parallel on
        the current scheduler, memory bounded by a few shards.
    path : path
        Destination directory (``*.zarr``); must not exist unless ``overwrite``.
    codec, level, shuffle
        Compression, see :class:`CodecSpec` (e.g. ``"blosc-zstd"``, level 5).
    chunks : (Z, Y, X), optional
        Inner chunk shape; default (8, 256, 256) clipped to the volume.
    shards : (Z, Y, X) or (), optional
        Shard shape (multiple of the inner chunk); default (32, 1024, 1024)
        clipped to the volume; ``()`` writes an unsharded array.
    voxel_size_zyx : (z, y, x) in µm, optional
        Physical voxel size recorded as the OME-NGFF scale.
    pyramid_levels : int
        Number of additional downsampled levels (arrays ``1``, ``2``, ...).
    overwrite : bool
        Replace an existing output.
    attributes : dict, optional
        Extra JSON attributes stored under ``isoview_dask`` in the group.
    name : str
        The multiscale's name; also gives the default channel label and
        colour (:func:`default_channel`).
    label, color : str, optional
        The ``omero`` channel label and ``RRGGBB`` colour. Its display window
        (percentiles :data:`WINDOW_PERCENTILES` of the written voxels) is
        computed while writing.

    Returns
    -------
    pathlib.Path
        The final path.
    """
    pending = prepare_zarr(array, path, codec=codec, level=level, shuffle=shuffle, chunks=chunks, shards=shards,
                           voxel_size_zyx=voxel_size_zyx, pyramid_levels=pyramid_levels, overwrite=overwrite,
                           attributes=attributes, name=name, label=label, color=color)
    try:
        pending.delayed.compute()
    except BaseException:
        pending.abort()
        raise
    return pending.commit()


def open_zarr_array(path: Path, level: int):
    if not path.exists():
        raise InputNotFoundError(f"{path}: zarr store does not exist")
    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node, None
    ome = node.attrs.get("ome") or {}
    multiscales = ome.get("multiscales") or node.attrs.get("multiscales")
    if multiscales:
        datasets = multiscales[0]["datasets"]
        if not 0 <= level < len(datasets):
            raise ValueError(f"{path}: has {len(datasets)} pyramid levels, asked for level {level}")
        scale = None
        for t in datasets[level].get("coordinateTransformations", []):
            if t.get("type") == "scale":
                scale = tuple(float(v) for v in t["scale"])
        return node[datasets[level]["path"]], scale
    if "0" in node:
        return node["0"], None
    raise ValueError(f"{path}: zarr group holds no OME-NGFF multiscales and no array '0'")


#: ``open_zarr(..., chunks=STORED)``: one dask block per stored shard across the frame and per inner
#: chunk along z (for reading slabs).
STORED = "stored"


def open_zarr(path: str | os.PathLike, level: int = 0, chunks: Sequence[int] | str | None = None) -> da.Array:
    """Open a zarr volume (an OME-NGFF group or a bare array) lazily as dask.

    Parameters
    ----------
    path : path
        The ``.zarr`` directory.
    level : int
        Pyramid level (0 = full resolution).
    chunks : (Z, Y, X) or "stored", optional
        Dask chunk shape; default whole shards grouped along z up to ~32 MiB per task
        (:func:`~isoview_dask.io.chunking.write_chunks`), or ~64 MiB of inner chunks unsharded.
        ``"stored"``: for reading slabs, blocks as deep as one inner chunk
        (the smallest unit zarr decodes) and as wide as a shard (as an inner
        chunk if unsharded). A slice directly on the array reads only the
        chunks it touches whatever the blocks, but one behind a flip or a
        cast (which stop dask from fusing the slice into the read) reads
        whole blocks: with shard-deep blocks (32 planes) the two-plane
        registration and intensity slabs of a 64-plane full-frame pair read
        the moving camera and both masks whole, 2.15 GB per pair instead of
        0.54 GB now.
    """
    path = Path(path)
    arr, _ = open_zarr_array(path, level)
    if isinstance(chunks, str):
        if chunks != STORED:
            raise ValueError(f"chunks must be a (Z, Y, X) shape or {STORED!r}, got {chunks!r}")
        stored = arr.shards or arr.chunks
        chunks = (arr.chunks[0],) + tuple(stored[1:])
    if chunks is None and arr.shards:
        from .chunking import write_chunks
        chunks = write_chunks(arr.chunks, arr.shards, arr.shape, np.dtype(arr.dtype).itemsize)
    elif chunks is None:
        # Unsharded: one task per ~64 MiB of whole inner chunks, not one per inner chunk.
        from .chunking import plane_chunks
        inner = arr.chunks
        planes = plane_chunks(arr.shape, np.dtype(arr.dtype).itemsize)[0] if arr.ndim == 3 else inner[0]
        chunks = (max(inner[0], (planes // inner[0]) * inner[0]),) + tuple(arr.shape[1:])
    # inline_array: a slice of the volume (a slab for an estimate) fuses into the zarr read of
    # each block, which then decodes only the chunks it needs, not its whole ~32 MiB block.
    return da.from_zarr(arr, chunks=tuple(chunks), inline_array=True)


def zarr_voxel_size(path: str | os.PathLike, level: int = 0) -> tuple[float, float, float] | None:
    """Voxel size (z, y, x) in µm recorded in an OME-NGFF group, or None."""
    _, scale = open_zarr_array(Path(path), level)
    return scale
