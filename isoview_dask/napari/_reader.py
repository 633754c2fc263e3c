"""Layer data for napari from a processed recording (no napari import here).

:func:`read_layers` turns an output root, an ``SPM##`` folder, a ``TM######``
folder or one output volume into napari layer data tuples
``(data, kwargs, layer_type)``:

* one Image layer per corrected camera (``<stem>.zarr``), fused view
  (``*.fusedStack.zarr``) and isotropic volume (``*.isotropic.zarr``), and
  one Labels layer per segmentation mask of a corrected camera;
* over several timepoints each layer is one lazy dask array (T, Z, Y, X):
  a plane on screen reads only the chunks of that timepoint it crosses;
* ``scale`` is the voxel size in µm, ``contrast_limits`` the display window
  recorded in the image's OME ``omero`` block (percentiles of all the voxels
  written), ``colormap`` its recorded colour, ``blending`` additive;
* ``affine`` places every layer in VW00's physical frame: a moving camera by
  the registration of its fusion record (its flips, then the in-plane
  motion), the cameras and fused view of VW90 by the isotropic registration
  where one was recorded.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import dask.array as da
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["get_reader", "read_layers", "camera_affine_px", "Volume"]

#: ``SPM00_TM000000_<what>.<kind>.<suffix>``
_FILE = re.compile(r"^SPM(\d+)_TM(\d+)_((?:CM\d+_)+(?:CHN\d+_)*CHN\d+)((?:\.[A-Za-z]+)*?)(\.zarr|\.klb|\.tiff?)$")
_SPM = re.compile(r"^SPM(\d+)$")
_TM = re.compile(r"^TM(\d+)$")
_VOLUME_SUFFIXES = (".zarr", ".klb", ".tif", ".tiff")
#: kinds of file shown as layers (the part between the stem and the suffix)
_IMAGE_KINDS = ("", ".fusedStack", ".isotropic")
_MASK_KIND = ".segmentationMask"

#: RRGGBB colours of the ``omero`` blocks -> napari colormap names
_COLORMAPS = {"00FF00": "green", "FF00FF": "magenta", "00FFFF": "cyan", "FFFF00": "yellow", "FF0000": "red",
              "0000FF": "blue", "FFFFFF": "gray"}
_CAMERA_COLORMAPS = ("green", "magenta", "cyan", "yellow")


@dataclass
class Volume:
    """One layer's files: a corrected camera, fused view, isotropic volume or mask, over timepoints.

    Attributes
    ----------
    specimen : int
    key : str
        The file name without ``SPM##_TM######_`` and the suffix, e.g.
        ``CM01_CHN00`` or ``CM00_CM01_CHN00.fusedStack``.
    cameras, channels : tuple of int
    kind : str
        ``""`` (corrected camera), ``".fusedStack"``, ``".isotropic"`` or ``".segmentationMask"``.
    paths : dict of int -> Path
        TM number -> the volume of that timepoint.
    """

    specimen: int
    key: str
    cameras: tuple[int, ...]
    channels: tuple[int, ...]
    kind: str
    paths: dict[int, Path] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return self.key.split(".")[0]


def get_reader(path):
    """napari reader hook: a function returning layer data for ``path``, or None if it is not ours.

    Parameters
    ----------
    path : str, Path or list of them
        What napari was asked to open. A list is accepted when it holds
        one path (drag and drop of one folder).

    Returns
    -------
    callable or None
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        kind = _classify(Path(path))
    except OSError:
        return None
    return read_layers if kind else None


def _classify(path: Path) -> str | None:
    """'volume', 'timepoint', 'specimen' or 'root' for a path the reader understands, else None."""
    m = _FILE.match(path.name)
    if m:  # projections, depth maps and other 2-D outputs are not ours to show
        return "volume" if m.group(4) in _IMAGE_KINDS + (_MASK_KIND,) and path.exists() else None
    if path.is_dir() and (path / "zarr.json").is_file():
        return "volume"  # any OME-Zarr image or label image, e.g. <image>.zarr/labels/segmentationMask
    if not path.is_dir():
        return None
    if _TM.match(path.name) and any(_volume_files(path)):
        return "timepoint"
    if _SPM.match(path.name) and any(any(_volume_files(tm)) for tm in _timepoint_dirs(path)):
        return "specimen"
    if any(any(_volume_files(tm)) for spm in _specimen_dirs(path) for tm in _timepoint_dirs(spm)):
        return "root"
    return None


def _specimen_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if _SPM.match(p.name) and p.is_dir())


def _timepoint_dirs(spm: Path) -> list[Path]:
    return sorted(p for p in spm.iterdir() if _TM.match(p.name) and p.is_dir())


def _volume_files(folder: Path):
    for p in sorted(folder.iterdir()):
        m = _FILE.match(p.name)
        if m and m.group(4) in _IMAGE_KINDS + (_MASK_KIND,):
            yield p, m


# ---------------------------------------------------------------------------------------------------
# discovery


def find_volumes(path: str | Path) -> list[Volume]:
    """The layers' volumes under an output root, ``SPM##`` or ``TM######`` folder (or one volume).

    Segmentation masks are found for every corrected camera in either layout
    (the label image inside the camera's zarr, or the older separate file).
    """
    from ..pipeline.common import mask_of_image
    path = Path(path)
    kind = _classify(path)
    if kind is None:
        from ..errors import InputNotFoundError
        raise InputNotFoundError(f"{path}: not an isoview-dask output folder or volume")
    if kind == "volume":
        folders, single = [], path
    elif kind == "timepoint":
        folders, single = [path], None
    elif kind == "specimen":
        folders, single = _timepoint_dirs(path), None
    else:
        folders, single = [tm for spm in _specimen_dirs(path) for tm in _timepoint_dirs(spm)], None
    volumes: dict[tuple[int, str], Volume] = {}

    def add(file: Path, m, kind: str | None = None):
        what, kind = m.group(3), m.group(4) if kind is None else kind
        key = what + kind
        s, t = int(m.group(1)), int(m.group(2))
        vol = volumes.get((s, key))
        if vol is None:
            vol = volumes[(s, key)] = Volume(
                s, key, tuple(int(c) for c in re.findall(r"CM(\d+)", what)),
                tuple(int(c) for c in re.findall(r"CHN(\d+)", what)), kind)
        vol.paths[t] = file

    if single is not None:
        m = _FILE.match(single.name)
        image = _FILE.match(single.parent.parent.name) if single.parent.name == "labels" else None
        if m is None and image is not None and image.group(4) == "":  # <image>.zarr/labels/segmentationMask
            add(single, image, _MASK_KIND)
            return list(volumes.values())
        if m is None:  # a zarr we know nothing about
            return [Volume(0, single.name, (), (), "other", {0: single})]
        add(single, m)
        if m.group(4) == "":
            mask = mask_of_image(single)
            if mask.exists():
                add(mask, m, _MASK_KIND)
        return list(volumes.values())
    for folder in folders:
        for file, m in _volume_files(folder):
            if file.name.startswith("."):
                continue
            if m.group(4) == _MASK_KIND:
                continue  # found through its camera volume below (or kept if the volume is absent)
            add(file, m)
            if m.group(4) == "":
                mask = mask_of_image(file)
                if mask.exists():
                    add(mask, m, _MASK_KIND)
        for file, m in _volume_files(folder):  # separate masks of cameras whose volume was not stored
            if m.group(4) == _MASK_KIND and not any(
                    p == file for v in volumes.values() for p in v.paths.values()):
                add(file, m)
    order = {"": 0, ".fusedStack": 1, ".isotropic": 2, _MASK_KIND: 3}
    return sorted(volumes.values(), key=lambda v: (v.specimen, order.get(v.kind, 4), v.channels, v.cameras))


# ---------------------------------------------------------------------------------------------------
# metadata


def _is_zarr(path: Path) -> bool:
    """A zarr group or array (a label image inside an image has no ``.zarr`` suffix)."""
    return path.suffix == ".zarr" or (path / "zarr.json").is_file()


def _zarr_attrs(path: Path) -> dict:
    try:
        return json.loads((path / "zarr.json").read_text()).get("attributes") or {}
    except (OSError, ValueError):
        return {}


def _omero_channel(path: Path) -> dict:
    if not _is_zarr(path):
        return {}
    channels = ((_zarr_attrs(path).get("ome") or {}).get("omero") or {}).get("channels") or []
    return channels[0] if channels else {}


def _record_of(path: Path) -> dict:
    """The JSON record written beside an output volume (correction, fusion or isotropic), or {}."""
    name = path.name
    for suffix in _VOLUME_SUFFIXES:
        if name.endswith(suffix):
            name = name[:-len(suffix)]
            break
    candidates = [path.with_name(name + ".json")]
    if "." not in name:
        candidates.insert(0, path.with_name(name + ".correction.json"))
    for c in candidates:
        if c.is_file():
            try:
                return json.loads(c.read_text())
            except ValueError:
                return {}
    return {}


def voxel_size(path: Path) -> tuple[float, float, float] | None:
    """Voxel size (z, y, x) in µm: the OME-NGFF scale of a zarr, else the record beside the volume."""
    if _is_zarr(path):
        from ..io.zarr import zarr_voxel_size
        try:
            scale = zarr_voxel_size(path)
        except (OSError, ValueError, KeyError):
            scale = None
        if scale:
            return tuple(float(v) for v in scale)
    record = _record_of(path)
    value = record.get("voxel_size_um_zyx")
    return tuple(float(v) for v in value) if value else None


def contrast_window(paths: list[Path], data: da.Array) -> list[float]:
    """Contrast limits from the recorded ``omero`` windows (up to three timepoints: first, middle, last).

    Outputs without a window (KLB, TIFF, older zarr) get the 0.1th and 99.9th
    percentiles of a strided sample of the whole first volume, never of one plane.
    """
    picks = sorted({0, len(paths) // 2, len(paths) - 1})
    starts, ends = [], []
    for i in picks:
        window = _omero_channel(paths[i]).get("window") or {}
        if "start" in window and "end" in window:
            starts.append(float(window["start"]))
            ends.append(float(window["end"]))
    if starts and max(ends) > min(starts):
        return [min(starts), max(ends)]
    volume = data if data.ndim == 3 else data[0]
    steps = [max(1, n // 32) for n in volume.shape]
    sample = np.asarray(volume[tuple(slice(None, None, s) for s in steps)].compute(), dtype=float)
    low, high = np.percentile(sample, [0.1, 99.9]) if sample.size else (0.0, 1.0)
    if high <= low:
        high = low + 1.0
    return [float(low), float(high)]


# ---------------------------------------------------------------------------------------------------
# lazy time axis


@lru_cache(maxsize=256)
def _zarr_array(path: str):
    from ..io.zarr import open_zarr_array
    return open_zarr_array(Path(path), 0)[0]


def _read_block(path: str, shape, dtype, block_info=None):
    """One dask block of a zarr volume, opened when the block is first computed."""
    location = block_info[None]["array-location"]
    arr = _zarr_array(path)
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{path}: shape {arr.shape} differs from the time series' {tuple(shape)}")
    return np.asarray(arr[tuple(slice(a, b) for a, b in location)], dtype=dtype)


def _lazy_volume(path: Path, template: da.Array) -> da.Array:
    """A volume like ``template`` (shape, dtype, chunks) whose file is opened only when a block is read."""
    if not _is_zarr(path):
        from ..io import open_volume
        return open_volume(path).rechunk(template.chunks)
    return da.map_blocks(_read_block, str(path), template.shape, template.dtype, chunks=template.chunks,
                         dtype=template.dtype, meta=np.empty((0,) * template.ndim, dtype=template.dtype),
                         name=f"isoview-napari-{path}")


def _open_first(path: Path) -> da.Array:
    from ..io import open_volume
    if _is_zarr(path):
        from ..io.zarr import open_zarr_array
        arr = open_zarr_array(path, 0)[0]
        return da.from_zarr(arr, chunks=arr.chunks, inline_array=True)  # inner chunks: cheapest to browse
    return open_volume(path)


def time_series(paths: dict[int, Path], timepoints: list[int]) -> da.Array:
    """(T, Z, Y, X) lazy stack of one layer's volumes over ``timepoints`` (zeros where one is absent).

    Only the first present volume is opened now; the others open when a
    plane of theirs is first shown.
    """
    first_t = next(t for t in timepoints if t in paths)
    template = _open_first(paths[first_t])
    stack = []
    for t in timepoints:
        if t == first_t:
            stack.append(template)
        elif t in paths:
            stack.append(_lazy_volume(paths[t], template))
        else:
            stack.append(da.zeros(template.shape, dtype=template.dtype, chunks=template.chunks))
    return da.stack(stack)


# ---------------------------------------------------------------------------------------------------
# placement


def _step_matrix(out_to_in_zyx: np.ndarray, offset_zyx) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = out_to_in_zyx
    m[:3, 3] = offset_zyx
    return m


def flips_matrix(shape_zyx, flip_h: bool = False, flip_v: bool = False, rotation: int = 0,
                 flip_z: bool = False) -> np.ndarray:
    """4 x 4 map from an index of ``view_transform(volume, ...)`` to the index of ``volume`` it shows.

    Parameters
    ----------
    shape_zyx : 3 int
        Shape of the volume before the transform.
    flip_h, flip_v, rotation, flip_z
        As in :func:`isoview_dask.fuse.transforms.view_transform` (rotation
        first, then the flips).
    """
    if rotation % 90 or not 0 <= rotation < 360:
        raise ValueError(f"rotation must be 0, 90, 180 or 270 degrees, got {rotation}")
    z, y, x = (int(n) for n in shape_zyx)
    # numpy.rot90 once: out[i, j] = in[j, W - 1 - i] (out rows = in columns); each step uses the shape
    # it acts on, and the last step's output is the final index: in = M_1 @ M_2 @ ... @ M_n @ out
    maps = []
    for _ in range(rotation // 90):
        maps.append(_step_matrix(np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]]), (0, 0, x - 1)))
        y, x = x, y
    if flip_h:
        maps.append(_step_matrix(np.diag([1, 1, -1]), (0, 0, x - 1)))
    if flip_v:
        maps.append(_step_matrix(np.diag([1, -1, 1]), (0, y - 1, 0)))
    if flip_z:
        maps.append(_step_matrix(np.diag([-1, 1, 1]), (z - 1, 0, 0)))
    total = np.eye(4)
    for m in maps:
        total = total @ m
    return total


def inplane_sampling_matrix(shape_zyx, offset_yx, rotation_deg: float) -> np.ndarray:
    """4 x 4 map from a reference index q to the flipped moving camera's index it samples.

    ``p = R(theta)((y, x) - c) + c + t`` in each plane (the sampling form of
    :mod:`isoview_dask.fuse.transforms`, ``c`` the frame centre).
    """
    theta = math.radians(float(rotation_deg))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    centre = (np.asarray(shape_zyx[1:], dtype=float) - 1.0) / 2.0
    m = np.eye(4)
    m[1:3, 1:3] = rot
    m[1:3, 3] = centre - rot @ centre + np.asarray(offset_yx, dtype=float)
    return m


def camera_affine_px(record: dict, shape_zyx) -> np.ndarray:
    """4 x 4 index map of the moving camera of a fusion record onto its reference camera's grid.

    Parameters
    ----------
    record : dict
        A ``.fusedStack.json`` record (``view_transform``, ``sampling_offset_yx_px``,
        ``sampling_rotation_deg``).
    shape_zyx : 3 int
        The moving camera's volume shape as stored.

    Returns
    -------
    ndarray (4, 4)
        ``q = A @ (d, 1)``: the moving camera's voxel ``d`` lies at the
        reference (and fused) voxel ``q``.
    """
    flips = record.get("view_transform") or {}
    flip = flips_matrix(shape_zyx, **{k: flips[k] for k in ("flip_h", "flip_v", "rotation", "flip_z")
                                      if k in flips})
    flipped_shape = shape_zyx if (flips.get("rotation", 0) // 90) % 2 == 0 else \
        (shape_zyx[0], shape_zyx[2], shape_zyx[1])
    sample = inplane_sampling_matrix(flipped_shape, record.get("sampling_offset_yx_px", (0.0, 0.0)),
                                     record.get("sampling_rotation_deg", 0.0))
    return np.linalg.inv(flip @ sample)


def _physical(affine_px: np.ndarray, scale_from, scale_to) -> np.ndarray:
    """The index map ``affine_px`` between grids of voxel sizes ``scale_from`` -> ``scale_to`` in µm."""
    return np.diag(list(scale_to) + [1.0]) @ affine_px @ np.diag([1.0 / s for s in scale_from] + [1.0])


def _embed(affine3: np.ndarray, ndim: int) -> np.ndarray:
    """A 3-D homogeneous affine acting on the last three of ``ndim`` axes."""
    out = np.eye(ndim + 1)
    lead = ndim - 3
    out[lead:lead + 3, lead:lead + 3] = affine3[:3, :3]
    out[lead:lead + 3, ndim] = affine3[:3, 3]
    return out


@dataclass
class _Placement:
    """Where each camera and pair lies in VW00's physical frame (4 x 4 maps of physical µm)."""

    camera: dict[int, np.ndarray] = field(default_factory=dict)  # moving camera -> its pair's frame
    pair_of: dict[int, tuple[int, ...]] = field(default_factory=dict)
    pair: dict[tuple[int, ...], np.ndarray] = field(default_factory=dict)  # pair frame -> VW00


def _placement(volumes: list[Volume], specimen: int) -> _Placement:
    """Read the fusion and isotropic records of a specimen's first timepoint that has them."""
    place = _Placement()
    fused = [v for v in volumes if v.specimen == specimen and v.kind == ".fusedStack" and len(v.cameras) == 2]
    for vol in fused:
        for t in sorted(vol.paths):
            record = _record_of(vol.paths[t])
            if not record or "moving_camera" not in record:
                continue
            ref, mov = int(record["reference_camera"]), int(record["moving_camera"])
            place.pair_of[ref] = place.pair_of[mov] = vol.cameras
            moving = next((v for v in volumes if v.specimen == specimen and v.kind == "" and
                           v.cameras == (mov,) and set(v.channels) <= set(vol.channels)), None)
            shape = _shape_of(moving.paths[min(moving.paths)]) if moving else record.get("shape_zyx")
            voxel = record.get("voxel_size_um_zyx") or [1.0, 1.0, 1.0]
            if shape is not None:
                place.camera[mov] = _physical(camera_affine_px(record, shape), voxel, voxel)
            break
    for vol in volumes:
        if vol.specimen != specimen or vol.kind != ".isotropic":
            continue
        for t in sorted(vol.paths):
            record = _record_of(vol.paths[t])
            transform = record.get("transform_vw00_to_vw90_um")
            views = record.get("views") or {}
            if transform is None or "vw90" not in views:
                continue
            vw90 = tuple(int(c) for c in views["vw90"]["cameras"])
            place.pair[vw90] = np.linalg.inv(np.asarray(transform, dtype=float))
            break
        break
    return place


def _shape_of(path: Path):
    try:
        if _is_zarr(path):
            return tuple(_zarr_attrs_shape(path))
        from ..io import open_volume
        return tuple(open_volume(path).shape)
    except (OSError, ValueError):
        return None


def _zarr_attrs_shape(path: Path):
    from ..io.zarr import open_zarr_array
    return open_zarr_array(path, 0)[0].shape


def _affine_of(vol: Volume, place: _Placement) -> np.ndarray:
    """The 4 x 4 physical map of a layer into VW00's frame (identity where nothing is recorded)."""
    m = np.eye(4)
    if vol.kind in ("", _MASK_KIND) and len(vol.cameras) == 1:
        cam = vol.cameras[0]
        m = place.camera.get(cam, np.eye(4))
        pair = place.pair_of.get(cam)
        if pair is not None and pair in place.pair:
            m = place.pair[pair] @ m
    elif vol.kind == ".fusedStack" and vol.cameras in place.pair:
        m = place.pair[vol.cameras]
    return m


# ---------------------------------------------------------------------------------------------------
# layers


def _name(vol: Volume, multi_specimen: bool) -> str:
    from ..io.zarr import default_channel
    first = vol.paths[min(vol.paths)]
    prefix = f"SPM{vol.specimen:02d} " if multi_specimen else ""
    if vol.kind == _MASK_KIND:
        return f"{prefix}CM{vol.cameras[0]:02d} segmentation mask"
    label = _omero_channel(first).get("label")
    if not label:
        label = default_channel(vol.key)[0] if vol.kind != "other" else first.name
    return prefix + label


def _colormap(vol: Volume) -> str:
    color = (_omero_channel(vol.paths[min(vol.paths)]).get("color") or "").upper()
    if color in _COLORMAPS:
        return _COLORMAPS[color]
    if vol.cameras:
        return _CAMERA_COLORMAPS[vol.cameras[0] % len(_CAMERA_COLORMAPS)]
    return "gray"


def read_layers(path) -> list[tuple]:
    """napari layer data tuples ``(data, kwargs, layer_type)`` for an output folder or volume.

    Parameters
    ----------
    path : str, Path or a one-element list
        An output root, an ``SPM##`` folder, a ``TM######`` folder, or one
        output volume (``.zarr``, ``.klb``, ``.tif``).

    Returns
    -------
    list of tuple
        Corrected cameras, fused views, isotropic volumes (Image layers) and
        segmentation masks (Labels layers), in that order (napari draws the
        last on top). With several timepoints every layer has a leading time
        axis. Only the fused views (or, where none, every image) are visible
        at first; the others are listed, hidden.
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(path)
    volumes = find_volumes(path)
    specimens = sorted({v.specimen for v in volumes})
    multi = len(specimens) > 1
    single_file = _classify(path) == "volume"
    layers = []
    for specimen in specimens:
        mine = [v for v in volumes if v.specimen == specimen]
        timepoints = sorted({t for v in mine for t in v.paths})
        # one volume is placed by the records of its timepoint folder
        context = find_volumes(path.parent) if single_file and _TM.match(path.parent.name) else volumes
        place = _placement(context, specimen)
        any_fused = any(v.kind == ".fusedStack" for v in mine)
        for vol in mine:
            data = time_series(vol.paths, timepoints)
            if len(timepoints) == 1:
                data = data[0]
            first = vol.paths[min(vol.paths)]
            scale = voxel_size(first)
            if scale is None:
                log.warning("%s: no voxel size recorded; shown at 1 µm per voxel", first)
                scale = (1.0, 1.0, 1.0)
            if data.ndim < 3:  # not a volume of ours (e.g. a 2-D zarr): no placement
                scale, affine = (1.0,) * data.ndim, np.eye(data.ndim + 1)
            else:
                affine = _embed(_affine_of(vol, place), data.ndim)
            lead = (1.0,) * (data.ndim - len(scale))
            kwargs = {"name": _name(vol, multi), "scale": lead + tuple(scale), "affine": affine,
                      "metadata": {"paths": {t: str(p) for t, p in sorted(vol.paths.items())},
                                   "timepoints": timepoints, "specimen": specimen, "kind": vol.kind or "corrected",
                                   "cameras": list(vol.cameras), "channels": list(vol.channels),
                                   "voxel_size_um_zyx": list(scale)}}
            if vol.kind == _MASK_KIND:
                kwargs.update(opacity=0.4, blending="translucent", visible=single_file)
                layers.append((data, kwargs, "labels"))
                continue
            visible = single_file or vol.kind == ".fusedStack" or not any_fused
            kwargs.update(contrast_limits=contrast_window([vol.paths[t] for t in sorted(vol.paths)], data),
                          colormap=_colormap(vol), blending="additive", visible=visible)
            layers.append((data, kwargs, "image"))
    return layers
