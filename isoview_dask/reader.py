"""A whole processed recording as one lazy dask array.

The pipeline writes one zarr volume per timepoint and view under
``<out>/SPM##/TM######/``. :class:`IsoviewArray` stacks them, without reading
any voxel, into

* ``kind="corrected"``: (T, V, Z, Y, X), V = the (camera, channel) views;
* ``kind="fused"``: (T, V, Z, Y, X), V = the (camera pair, channel) fusions
  and, with illumination-channel fusion (``fusion.channel_pairs``), the
  channel-fused camera pairs (``CM00_CM01_CHN00_CHN01``) and lone cameras
  (``CM02_CHN00_CHN01``); or (T, Z, Y, X) when one ``view`` is chosen.

Every dask chunk is one inner zarr chunk (or one shard, ``chunks="shard"``),
so looking at one plane reads only the chunks that plane crosses. The
object is array-like (``shape``, ``dtype``, ``ndim``, slicing returns dask
arrays), so it can be handed to napari or xarray as it is, or through
``.data``; ``.scale`` gives the voxel size per axis for display::

    rec = IsoviewArray("out/", kind="fused")
    viewer.add_image(rec.data, scale=rec.scale, channel_axis=1)   # napari, if installed
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import dask.array as da
import numpy as np

from .errors import InputNotFoundError, IsoviewError
from .pipeline.common import mask_of_image, output_path

__all__ = ["IsoviewArray", "TimepointArray", "View"]

_NAME = re.compile(r"^SPM(\d+)_TM(\d+)_((?:CM\d+_)+)((?:CHN\d+_)*CHN\d+)(\.fusedStack)?\.zarr$")
KINDS = ("corrected", "fused")


@dataclass(frozen=True)
class View:
    """One view of a recording: a camera (corrected) or a camera pair (fused) and its channel(s).

    ``channel`` is the (first) channel; ``channels`` lists both channels of an
    illumination-channel fusion (empty for a view of one channel).
    """

    cameras: tuple[int, ...]
    channel: int
    channels: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        chans = self.channels or (self.channel,)
        return "_".join([f"CM{c:02d}" for c in self.cameras] + [f"CHN{c:02d}" for c in chans])

    def __str__(self) -> str:
        return self.label


def _parse_view(value, views: Sequence[View]) -> View:
    if isinstance(value, View):
        if value in views:
            return value
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if 0 <= value < len(views):
            return views[int(value)]
    elif isinstance(value, str):
        for v in views:
            if v.label == value.upper():
                return v
    elif isinstance(value, tuple):
        for v in views:
            if v.channels and len(value) == 2 and (v.cameras, v.channels) == (tuple(value[0]), tuple(value[1])):
                return v
            if not v.channels and ((v.cameras, v.channel) == (tuple(value[:-1]), value[-1])
                                   or v.cameras == tuple(value)):
                return v
    raise IsoviewError(f"no view {value!r}; views are {[v.label for v in views]} (or their index)")


class IsoviewArray:
    """The corrected or fused volumes of a recording as one lazy dask array.

    Parameters
    ----------
    root : path
        Output root of the pipeline (holding ``SPM##/TM######/``).
    kind : {'corrected', 'fused'}
    specimen : int, optional
        Which specimen (default: the only one; required if several).
    view : view, optional
        One view only (label such as ``"CM00_CM01_CHN00"``, index, ``View``,
        or a tuple ``(0, 1, 0)`` = cameras then channel; a channel-fused view
        ``"CM00_CM01_CHN00_CHN01"`` or ``((0, 1), (0, 1))``): the view axis
        is dropped.
    views : sequence of views, optional
        A subset of views, in this order.
    timepoints : sequence of int, optional
        TM numbers to include (default all found).
    chunks : 'inner', 'shard' or (Z, Y, X)
        Dask chunk per task (default one inner zarr chunk: cheapest to browse).
    missing : {'error', 'zeros'}
        A (timepoint, view) without a volume raises, or reads as zeros. The
        timepoints are every ``TM######`` folder holding corrected or fused
        volumes, so a timepoint whose fusion failed is missing, not skipped.

    Attributes
    ----------
    data : dask.array.Array
        (T, V, Z, Y, X) or (T, Z, Y, X).
    timepoints : list of int
    views : list of View
    voxel_size_um : (z, y, x) or None
    paths : dict of (timepoint, View) -> Path
    """

    def __new__(cls, root=None, *args, **kwargs):
        # the original port's reader: IsoviewArray("out/SPM00/TM000000") is one timepoint's corrected views
        if cls is IsoviewArray and root is not None and _TM_FOLDER.match(Path(root).name) \
                and _SPM_FOLDER.match(Path(root).parent.name):
            return TimepointArray(root, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, root: str | Path, kind: str = "fused", *, specimen: int | None = None, view=None,
                 views: Sequence | None = None, timepoints: Sequence[int] | None = None,
                 chunks: str | Sequence[int] = "inner", missing: str = "error"):
        from .io.zarr import open_zarr, zarr_voxel_size
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if missing not in ("error", "zeros"):
            raise ValueError(f"missing must be 'error' or 'zeros', got {missing!r}")
        self.root, self.kind = Path(root), kind
        if not self.root.is_dir():
            raise InputNotFoundError(f"{self.root}: output folder does not exist")
        found: dict[int, dict[tuple[int, View], Path]] = {}
        any_output: dict[int, set[int]] = {}  # timepoints with volumes of either kind, per specimen
        for path in self.root.glob("SPM*/TM*/*.zarr"):
            m = _NAME.match(path.name)
            if not m or path.name.startswith("."):
                continue
            cams = tuple(int(c) for c in re.findall(r"CM(\d+)", m.group(3)))
            chans = tuple(int(c) for c in re.findall(r"CHN(\d+)", m.group(4)))
            is_fused = m.group(5) is not None
            s, t = int(m.group(1)), int(m.group(2))
            any_output.setdefault(s, set()).add(t)
            # fused: a camera pair, or (channel fusion) a camera pair or one camera with two channels
            fused_view = is_fused and (len(cams) == 2 or len(chans) > 1)
            if (kind == "fused") != fused_view or (kind == "corrected" and (len(cams), len(chans)) != (1, 1)):
                continue
            view_id = View(cams, chans[0], chans if len(chans) > 1 else ())
            found.setdefault(s, {})[(t, view_id)] = path
        if not found:
            hint = _unstored_hint(self.root.glob("SPM*/TM*/*.correction.json")) if kind == "corrected" else ""
            raise InputNotFoundError(f"{self.root}: no {kind} zarr volumes under SPM##/TM######/{hint}")
        if specimen is None:
            if len(found) > 1:
                raise IsoviewError(f"{self.root}: several specimens {sorted(found)}; choose one with specimen=")
            specimen = next(iter(found))
        if specimen not in found:
            raise IsoviewError(f"{self.root}: no {kind} volumes of specimen {specimen} (have {sorted(found)})")
        self.specimen = int(specimen)
        files = found[self.specimen]
        all_views = sorted({v for _, v in files}, key=lambda v: (v.channel, v.channels, v.cameras))
        # a timepoint with outputs of the other kind only (e.g. a failed fusion) counts as missing here
        all_times = sorted(any_output[self.specimen])
        if view is not None and views is not None:
            raise ValueError("give view= or views=, not both")
        chosen = [_parse_view(view, all_views)] if view is not None else (
            [_parse_view(v, all_views) for v in views] if views is not None else all_views)
        if timepoints is not None:
            absent = sorted(set(timepoints) - set(all_times))
            if absent:
                raise IsoviewError(f"{self.root}: no {kind} volumes for timepoints {absent}")
            all_times = sorted(set(int(t) for t in timepoints))
        self.timepoints: list[int] = all_times
        self.views: list[View] = chosen
        self.paths = {(t, v): files[(t, v)] for t in all_times for v in chosen if (t, v) in files}
        self.missing = [(t, v) for t in all_times for v in chosen if (t, v) not in self.paths]
        if self.missing and missing == "error":
            t, v = self.missing[0]
            raise IsoviewError(f"{self.root}: {len(self.missing)} volumes missing, e.g. timepoint {t} view "
                               f"{v.label}; pass missing='zeros' to read them as zeros")

        # Open every volume lazily (metadata only) and check they stack.
        arrays: dict = {}
        for key, path in self.paths.items():
            arrays[key] = open_zarr(path, chunks=self._chunks(path, chunks))
        shapes = {a.shape for a in arrays.values()}
        dtypes = {a.dtype for a in arrays.values()}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise IsoviewError(f"{self.root}: volumes differ in shape or type ({sorted(map(str, shapes))}, "
                               f"{sorted(map(str, dtypes))}); select views of one frame size with views=")
        template = next(iter(arrays.values()))
        self.voxel_size_um = zarr_voxel_size(next(iter(self.paths.values())))

        def volume(t, v):
            if (t, v) in arrays:
                return arrays[(t, v)]
            return da.zeros(template.shape, dtype=template.dtype, chunks=template.chunks)

        # one flat stack, then split its first axis: a simpler graph than nested stacks
        flat = da.stack([volume(t, v) for t in all_times for v in chosen])
        data = flat.reshape((len(all_times), len(chosen)) + template.shape)
        self.data: da.Array = data[:, 0] if view is not None else data

    @staticmethod
    def _chunks(path: Path, chunks):
        if not isinstance(chunks, str):
            return tuple(int(c) for c in chunks)
        from .io.zarr import open_zarr_array
        arr, _ = open_zarr_array(path, 0)
        if chunks == "inner":
            return arr.chunks
        if chunks == "shard":
            return arr.shards or arr.chunks
        raise ValueError(f"chunks must be 'inner', 'shard' or (Z, Y, X), got {chunks!r}")

    # -- array protocol -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dims(self) -> tuple[str, ...]:
        return ("t", "z", "y", "x") if self.ndim == 4 else ("t", "view", "z", "y", "x")

    @property
    def scale(self) -> tuple[float, ...]:
        """Physical step per axis (1 for time and view) for viewers."""
        voxel = tuple(self.voxel_size_um or (1.0, 1.0, 1.0))
        return (1.0,) * (self.ndim - 3) + voxel

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> da.Array:
        return self.data[index]

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.data.compute())
        return out.astype(dtype) if dtype is not None else out

    def __repr__(self) -> str:
        return (f"IsoviewArray({str(self.root)!r}, kind={self.kind!r}, shape={self.shape}, dims={self.dims}, "
                f"views={[v.label for v in self.views]}, timepoints={self.timepoints[0]}..{self.timepoints[-1]})")

    # -- accessors ------------------------------------------------------------------------------------
    def _key(self, t: int, view) -> tuple[int, View]:
        if not 0 <= t < len(self.timepoints):
            raise IndexError(f"timepoint index {t} out of range 0-{len(self.timepoints) - 1} "
                             f"(TM numbers {self.timepoints[0]}..{self.timepoints[-1]})")
        v = self.views[0] if view is None and len(self.views) == 1 else _parse_view(view, self.views)
        return self.timepoints[t], v

    def path(self, t: int, view=None, kind: str = "", fmt: str = "zarr") -> Path:
        """Path of a file of timepoint index ``t`` and a view (``kind`` e.g. ``"xyProjection"``)."""
        tm, v = self._key(t, view)
        stem_kind = ("fusedStack" + (f".{kind}" if kind else "")) if self.kind == "fused" else kind
        channel = list(v.channels) if v.channels else v.channel
        return output_path(self.root, self.specimen, tm, list(v.cameras), channel, stem_kind, fmt)

    def projection(self, kind: str = "xy", t: int = 0, view=None) -> np.ndarray:
        """Max projection (``kind`` 'xy', 'xz' or 'yz') of timepoint index ``t`` and a view.

        Read from the ``.<kind>Projection.tif`` the correction stage wrote when
        it exists; otherwise computed from the volume.
        """
        axes = {"xy": 0, "xz": 1, "yz": 2}
        if kind not in axes:
            raise ValueError(f"kind must be 'xy', 'xz' or 'yz', got {kind!r}")
        if self.kind == "corrected":
            tif = self.path(t, view, f"{kind}Projection", "tif")
            if tif.exists():
                import tifffile
                return tifffile.imread(tif)
        tm, v = self._key(t, view)
        index = self.timepoints.index(tm)
        volume = self.data[index] if self.ndim == 4 else self.data[index, self.views.index(v)]
        return np.asarray(volume.max(axis=axes[kind]).compute())

    def mask(self, t: int = 0, view=None) -> da.Array:
        """The foreground mask (bool, lazy) of timepoint index ``t`` and a corrected view."""
        if self.kind != "corrected":
            raise IsoviewError("fused volumes have no mask of their own; open the corrected recording "
                               "(kind='corrected') for the cameras' masks")
        path = mask_of_image(self.path(t, view))  # the label image of the volume, or the older separate store
        if not path.exists():
            raise InputNotFoundError(f"{path}: no segmentation mask (corrected without segmentation?)")
        from .io.zarr import open_zarr
        return open_zarr(path, chunks=self._chunks(path, "inner")).astype(bool)


def _unstored_hint(records) -> str:
    """Why corrected volumes are absent when their correction records say they were not stored, else ''."""
    import json
    for path in records:
        try:
            stored = json.loads(path.read_text()).get("volume_stored", True)
        except (OSError, ValueError):
            continue
        if stored is False:
            return ("; the corrections here did not store their volumes (output.store_corrected = false): "
                    "isoview_dask.pipeline.correct.corrected_from_raw(record) recomputes one from its raw file")
    return ""


_TM_FOLDER = re.compile(r"^TM(\d+)$")
_SPM_FOLDER = re.compile(r"^SPM(\d+)$")
#: label_type of :meth:`TimepointArray.get_labels` -> the correction output holding it.
LABEL_KINDS = {"segmentation": "segmentationMask", "mask": "segmentationMask", "xy": "xyMask", "xz": "xzMask",
               "dead_pixels": "deadPixelMask"}
PROJECTIONS = ("xy", "xz", "yz")


class TimepointArray:
    """One timepoint folder's corrected camera views, as the original ``isoview`` port's reader gave them.

    ``IsoviewArray("out/SPM00/TM000000")`` returns this. Shape ``(Z, V, Y, X)``: ``arr[z, view]`` is
    plane ``z`` of view ``view`` (an index, or a label such as ``"CM01_CHN00"``) as a numpy array;
    ``.data`` is the lazy dask array. ``.views`` lists the view labels, ``.metadata`` the specimen,
    timepoint, voxel size (µm, z y x), the views' paths and their correction records.
    """

    def __init__(self, folder: str | Path):
        import json
        from .io.zarr import open_zarr, zarr_voxel_size
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputNotFoundError(f"{self.folder}: timepoint folder does not exist")
        self.specimen = int(_SPM_FOLDER.match(self.folder.parent.name).group(1))
        self.timepoint = int(_TM_FOLDER.match(self.folder.name).group(1))
        found = []
        for path in sorted(self.folder.glob("*.zarr")):
            m = _NAME.match(path.name)
            if m and m.group(5) is None and m.group(3).count("CM") == 1 and m.group(4).count("CHN") == 1:
                found.append((int(re.search(r"CM(\d+)", m.group(3)).group(1)),
                              int(re.search(r"CHN(\d+)", m.group(4)).group(1)), path))
        if not found:
            raise InputNotFoundError(f"{self.folder}: no corrected camera volumes (SPM##_TM######_CM##_CHN##.zarr)"
                                     + _unstored_hint(self.folder.glob("*.correction.json")))
        self._views = [View((cam,), ch) for cam, ch, _ in found]
        self.paths = {v.label: path for v, (_, _, path) in zip(self._views, found)}
        arrays = [open_zarr(path) for _, _, path in found]
        if len({a.shape for a in arrays}) != 1:
            raise IsoviewError(f"{self.folder}: the camera volumes differ in shape")
        self.data = da.stack(arrays, axis=1)
        records = {}
        for label, path in self.paths.items():
            record = path.with_name(path.name[:-len(".zarr")] + ".correction.json")
            records[label] = json.loads(record.read_text()) if record.is_file() else None
        self.metadata = {"specimen": self.specimen, "timepoint": self.timepoint,
                         "voxel_size_um": zarr_voxel_size(found[0][2]), "views": self.views,
                         "paths": {k: str(v) for k, v in self.paths.items()}, "corrections": records}

    views = property(lambda self: [v.label for v in self._views])
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, tuple) and len(key) >= 2 and not isinstance(key[1], (slice, type(Ellipsis))):
            key = (key[0], self._index(key[1])) + tuple(key[2:])
        return np.asarray(self.data[key].compute())

    def _index(self, view) -> int:
        return self._views.index(_parse_view(view, self._views))

    def _stem(self, camera, timepoint) -> str:
        if timepoint is not None and int(timepoint) != self.timepoint:
            raise IsoviewError(f"{self.folder} holds timepoint {self.timepoint}, not {timepoint}")
        cameras = [v for v in self._views if camera is None or v.cameras == (int(camera),)]
        if not cameras:
            raise IsoviewError(f"no camera {camera} in {self.folder}; views are {self.views}")
        return self.paths[cameras[0].label].name[:-len(".zarr")]

    def get_labels(self, timepoint: int | None = None, camera: int | None = None,
                   label_type: str = "segmentation") -> np.ndarray:
        """A camera's masks: 'segmentation' (or 'mask'; (Z, Y, X) bool), 'xy' / 'xz' coordinate masks
        (mean foreground plane per (y, x) / column per (z, y), NaN without foreground), 'dead_pixels'."""
        from .io import open_volume
        if label_type not in LABEL_KINDS:
            raise ValueError(f"label_type must be one of {sorted(LABEL_KINDS)}, got {label_type!r}")
        if label_type in ("segmentation", "mask"):  # the label image of the volume, or the older separate store
            path = mask_of_image(self.folder / f"{self._stem(camera, timepoint)}.zarr")
        else:
            path = self.folder / f"{self._stem(camera, timepoint)}.{LABEL_KINDS[label_type]}.tif"
        if not path.exists():
            raise InputNotFoundError(f"{path}: not written (was the correction run with masks?)")
        values = np.asarray(open_volume(path))
        return values.astype(bool) if label_type in ("segmentation", "mask") else values

    def get_projection(self, timepoint: int | None = None, camera: int | None = None,
                       proj_type: str = "xy") -> np.ndarray:
        """A camera's maximum projection of the corrected volume along z ('xy'), y ('xz') or x ('yz')."""
        from .io import open_volume
        if proj_type not in PROJECTIONS:
            raise ValueError(f"proj_type must be one of {PROJECTIONS}, got {proj_type!r}")
        path = self.folder / f"{self._stem(camera, timepoint)}.{proj_type}Projection.tif"
        if not path.exists():
            raise InputNotFoundError(f"{path}: not written (output.projections was off?)")
        return np.asarray(open_volume(path))

    def __repr__(self) -> str:
        return f"TimepointArray({str(self.folder)!r}, shape={self.shape}, views={self.views})"
