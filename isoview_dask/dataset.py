"""Discovery of IsoView recordings: raw layouts -> a typed :class:`Dataset`.

Two raw layouts are recognised (see ``DESIGN.md``):

* **Keller** (nested): ``<root>/SPM##/TM#####/ANG###/SPC##_TM#####_ANG###_CM#_CHN##_PH#.stack``
  with ``ch<k>.xml`` (or ``ch<k>_spec##.xml``) in each ``TM#####`` folder and
  ``Background_<camera>.tif`` dark frames in ``SPM##``. ``<root>`` may also be a
  single ``SPM##`` folder.
* **Flat**: every ``SPC##_TM#####_ANG###_CM#_CHN##_PH#.stack`` in one folder,
  ``ch<k>_spec##.xml`` or ``ch<k>.xml`` and ``Background_<camera>.tif`` beside them.

Every camera volume becomes a :class:`CameraView` with its own frame shape
(taken from its own XML entry, never from whichever XML came first), depth
from the file size, voxel size in µm and the parsed metadata. A view whose
files are bad (truncated stack, missing or malformed XML) is still listed,
with its problem; opening it raises the specific error, so one bad volume
never hides the rest of a recording.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from .errors import DatasetError, InputNotFoundError, IsoviewError, MetadataError
from .metadata import AcquisitionMetadata, read_push_config

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import dask.array as da

RAW_NAME = re.compile(
    r"^SPC(?P<specimen>\d+)_TM(?P<timepoint>\d+)_ANG(?P<angle>\d+)_CM(?P<camera>\d+)_CHN(?P<channel>\d+)"
    r"_PH(?P<phase>\d+)\.(?P<ext>stack|klb|tif|tiff)$", re.IGNORECASE)
SPM_DIR = re.compile(r"^SPM(\d+)$")
TM_DIR = re.compile(r"^TM(\d+)$")
XML_NAME = re.compile(r"^ch(?P<channel>\d+)(?:_spec(?P<specimen>\d+))?\.xml$", re.IGNORECASE)
BACKGROUND_NAME = re.compile(r"^Background_(\d+)\.tiff?$", re.IGNORECASE)


@dataclass
class CameraView:
    """One camera's volume at one timepoint and channel.

    Attributes
    ----------
    specimen, timepoint, angle, camera, channel, phase : int
        Indices from the file name.
    path : Path
        The raw volume file (``.stack``, ``.klb`` or ``.tif``).
    shape : (Z, Y, X) or None
        Volume shape in planes and pixels; None when it could not be determined.
    voxel_size_um : (z, y, x) or None
        Plane spacing (the step along the stack direction) and lateral pixel
        size, µm.
    voxel_size_unknown : str or None
        Why ``voxel_size_um`` is None (which XML attribute is missing); None
        when the voxel size is known, or the view is unreadable anyway.
    metadata : AcquisitionMetadata or None
        The parsed XML of this view's channel.
    background_path : Path or None
        The camera's dark frame, if present.
    error : IsoviewError or None
        Why this view cannot be read, if it cannot.
    """

    specimen: int
    timepoint: int
    angle: int
    camera: int
    channel: int
    phase: int
    path: Path
    shape: tuple[int, int, int] | None = None
    voxel_size_um: tuple[float, float, float] | None = None
    metadata: AcquisitionMetadata | None = None
    background_path: Path | None = None
    error: IsoviewError | None = None
    allow_truncated: bool = False
    voxel_size_unknown: str | None = None

    @property
    def key(self) -> tuple[int, int, int, int]:
        """(specimen, timepoint, camera, channel)."""
        return (self.specimen, self.timepoint, self.camera, self.channel)

    @property
    def format(self) -> str:
        ext = self.path.suffix.lower().lstrip(".")
        return "tif" if ext == "tiff" else ext

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def nbytes(self) -> int:
        """Uncompressed size of the volume in bytes (uint16), 0 if unknown."""
        return int(np.prod(self.shape)) * 2 if self.shape else 0

    def open(self, chunks: Sequence[int] | None = None, planes: int | None = None) -> da.Array:
        """The volume as a lazy dask array (Z, Y, X).

        Raises the stored error (e.g. :class:`~isoview_dask.errors.StackSizeError`)
        if the view is not readable.
        """
        if self.error is not None:
            raise self.error
        from .io import open_volume
        return open_volume(self.path, frame_shape=self.shape[1:], expected_planes=self.shape[0],
                           chunks=chunks, planes=planes, allow_truncated=self.allow_truncated)

    def open_background(self) -> np.ndarray | None:
        """The camera's dark frame (Y, X) as float32, or None if absent."""
        if self.background_path is None:
            return None
        from .io.tiff import read_tiff
        frame = read_tiff(self.background_path).astype(np.float32)
        if self.shape and frame.shape != tuple(self.shape[1:]):
            raise DatasetError(
                f"{self.background_path}: dark frame is {frame.shape[0]}x{frame.shape[1]} but camera "
                f"{self.camera}'s frames are {self.shape[1]}x{self.shape[2]}")
        return frame

    @classmethod
    def from_dict(cls, values: dict, *, allow_truncated: bool = False) -> "CameraView":
        """The view :meth:`to_dict` described (without its metadata and error), e.g. from a completion record."""
        shape, voxel, background = values.get("shape_zyx"), values.get("voxel_size_um_zyx"), values.get("background")
        return cls(**{k: int(values[k]) for k in ("specimen", "timepoint", "angle", "camera", "channel", "phase")},
                   path=Path(values["path"]), shape=tuple(shape) if shape else None,
                   voxel_size_um=tuple(voxel) if voxel else None,
                   background_path=Path(background) if background else None, allow_truncated=allow_truncated,
                   voxel_size_unknown=values.get("voxel_size_unknown"))

    def to_dict(self) -> dict:
        return {
            "specimen": self.specimen, "timepoint": self.timepoint, "angle": self.angle,
            "camera": self.camera, "channel": self.channel, "phase": self.phase,
            "path": str(self.path), "format": self.format,
            "shape_zyx": list(self.shape) if self.shape else None,
            "voxel_size_um_zyx": list(self.voxel_size_um) if self.voxel_size_um else None,
            "voxel_size_unknown": self.voxel_size_unknown,
            "background": str(self.background_path) if self.background_path else None,
            "xml": str(self.metadata.path) if self.metadata else None,
            "error": str(self.error) if self.error else None,
        }


@dataclass
class Dataset:
    """An IsoView recording on disk.

    Attributes
    ----------
    root : Path
        The folder given to :func:`open_dataset`.
    layout : {'keller', 'flat'}
    views : list of CameraView
        Every raw volume found, sorted by (specimen, timepoint, camera, channel).
    """

    root: Path
    layout: str
    views: list[CameraView] = field(default_factory=list)

    @property
    def specimens(self) -> list[int]:
        return sorted({v.specimen for v in self.views})

    @property
    def timepoints(self) -> list[int]:
        return sorted({v.timepoint for v in self.views})

    @property
    def cameras(self) -> list[int]:
        return sorted({v.camera for v in self.views})

    @property
    def channels(self) -> list[int]:
        return sorted({v.channel for v in self.views})

    @property
    def problems(self) -> list[CameraView]:
        """Views that cannot be read."""
        return [v for v in self.views if v.error is not None]

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.views)

    def select(self, *, specimens: Iterable[int] | None = None, timepoints: Iterable[int] | None = None,
               cameras: Iterable[int] | None = None, channels: Iterable[int] | None = None) -> list[CameraView]:
        """Views matching every given selection (None selects all)."""
        def keep(value, wanted):
            return wanted is None or value in set(wanted)
        return [v for v in self.views if keep(v.specimen, specimens) and keep(v.timepoint, timepoints)
                and keep(v.camera, cameras) and keep(v.channel, channels)]

    def view(self, timepoint: int, camera: int, channel: int | None = None, specimen: int | None = None) -> CameraView:
        """The single view at (timepoint, camera[, channel][, specimen])."""
        found = self.select(timepoints=[timepoint], cameras=[camera],
                            channels=None if channel is None else [channel],
                            specimens=None if specimen is None else [specimen])
        if len(found) != 1:
            raise KeyError(f"{self.root}: {len(found)} views match timepoint {timepoint}, camera {camera}, "
                           f"channel {channel}, specimen {specimen}")
        return found[0]

    def to_dict(self) -> dict:
        return {"root": str(self.root), "layout": self.layout, "specimens": self.specimens,
                "timepoints": self.timepoints, "cameras": self.cameras, "channels": self.channels,
                "total_bytes": self.nbytes, "views": [v.to_dict() for v in self.views]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary_table(self) -> str:
        """A plain-text table: one row per view."""
        head = ("SPM", "TM", "CM", "CH", "shape (Z,Y,X)", "voxel µm (z,y,x)", "MB", "file / problem")
        rows = []
        for v in self.views:
            shape = "x".join(map(str, v.shape)) if v.shape else "?"
            voxel = ",".join(f"{s:g}" for s in v.voxel_size_um) if v.voxel_size_um else "?"
            note = v.path.name if v.error is None else f"ERROR: {v.error}"
            rows.append((str(v.specimen), str(v.timepoint), str(v.camera), str(v.channel), shape, voxel,
                         f"{v.nbytes / 1e6:.1f}", note))
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head) - 1)]
        lines = [f"{self.root}  ({self.layout} layout, {len(self.views)} volumes, "
                 f"{self.nbytes / 1e9:.3f} GB, {len(self.problems)} with problems)"]
        for r in [head] + rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
        return "\n".join(lines)


def _find_xml(folder: Path, channel: int, specimen: int) -> Path | None:
    candidates = []
    for p in folder.iterdir() if folder.is_dir() else []:
        m = XML_NAME.match(p.name)
        if m and int(m.group("channel")) == channel:
            spec = m.group("specimen")
            if spec is None or int(spec) == specimen:
                candidates.append((spec is None, p.name, p))
    return sorted(candidates)[0][2] if candidates else None


def _backgrounds(folder: Path) -> dict[int, Path]:
    out = {}
    for p in folder.iterdir() if folder.is_dir() else []:
        m = BACKGROUND_NAME.match(p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def _raw_files(folder: Path) -> list[tuple[re.Match, Path]]:
    return sorted(((m, p) for p in folder.iterdir() if p.is_file() and (m := RAW_NAME.match(p.name))),
                  key=lambda mp: mp[1].name)


def _make_view(match: re.Match, path: Path, xml_folder: Path, backgrounds: dict[int, Path],
               cameras_of_channel: dict[tuple[int, int, int], list[int]], xml_cache: dict,
               allow_truncated: bool) -> CameraView:
    g = {k: int(v) for k, v in match.groupdict().items() if k != "ext"}
    view = CameraView(path=path, background_path=backgrounds.get(g["camera"]), allow_truncated=allow_truncated, **g)
    try:
        view.metadata, view.shape, view.voxel_size_um = _describe(
            view, xml_folder, cameras_of_channel, xml_cache)
    except IsoviewError as exc:
        view.error = exc
    if view.error is None and view.voxel_size_um is None:
        view.voxel_size_unknown = _unknown_voxel_size(view)
    return view


def _unknown_voxel_size(view: CameraView) -> str:
    """Why a readable view has no voxel size: the XML attribute(s) that would give it."""
    meta = view.metadata
    if meta is None:
        return "no metadata XML for this channel"
    cams = meta.camera_indices
    position = cams.index(view.camera) if view.camera in cams else 0
    missing = []
    if not meta.plane_step_um(view.camera, position):
        axis = meta.stack_axis(view.camera, position) or "z"
        names = f"{axis}_step" + (" or z_step" if axis != "z" else "")
        missing.append(f"no plane spacing ({names}) for a stack along {axis}")
    if not meta.pixel_size_um:
        missing.append("no pixel size (pixel_size_um, xy_step or a detection_objective magnification)")
    return f"{meta.path.name}: " + "; ".join(missing)


def _describe(view: CameraView, xml_folder: Path, cameras_of_channel, xml_cache):
    from .io import volume_shape
    xml_path = _find_xml(xml_folder, view.channel, view.specimen)
    fmt = view.format
    if xml_path is None:
        if fmt == "stack":
            raise MetadataError(
                f"{view.path}: no metadata XML for channel {view.channel} (looked for ch{view.channel}.xml or "
                f"ch{view.channel}_spec{view.specimen:02d}.xml in {xml_folder}); a .stack has no header, so its "
                "frame size is unknown")
        meta = None
    else:
        if xml_path not in xml_cache:
            try:
                xml_cache[xml_path] = read_push_config(xml_path)
            except IsoviewError as exc:
                xml_cache[xml_path] = exc
        meta = xml_cache[xml_path]
        if isinstance(meta, IsoviewError):
            raise type(meta)(f"{meta} (needed by {view.path.name})")
    if fmt == "stack":
        cams = cameras_of_channel[(view.specimen, view.timepoint, view.channel)]
        try:
            height, width, depth = meta.frame_for_camera(view.camera, cams.index(view.camera))
        except MetadataError as exc:
            raise MetadataError(f"{exc} (needed by {view.path.name}: a .stack has no header)") from exc
        from .io.stack import stack_depth
        planes = stack_depth(view.path, (height, width), expected_planes=depth, allow_truncated=view.allow_truncated)
        shape = (planes, height, width)
    else:
        shape = volume_shape(view.path)
    voxel = None
    if meta is not None and meta.pixel_size_um:
        cams = cameras_of_channel[(view.specimen, view.timepoint, view.channel)]
        step = meta.plane_step_um(view.camera, cams.index(view.camera) if view.camera in cams else 0)
        if step:
            voxel = (step, meta.pixel_size_um, meta.pixel_size_um)
    return meta, tuple(int(s) for s in shape), voxel


def open_dataset(path: str | Path, *, allow_truncated: bool = False) -> Dataset:
    """Discover an IsoView recording in either raw layout.

    Parameters
    ----------
    path : path
        A Keller-layout root (holding ``SPM##`` folders), a single ``SPM##``
        folder, or a flat folder of raw files.
    allow_truncated : bool
        Accept truncated ``.stack`` files, using their whole planes only.

    Returns
    -------
    Dataset
        Views that cannot be read carry their error (see :attr:`Dataset.problems`).

    Raises
    ------
    InputNotFoundError
        ``path`` does not exist.
    DatasetError
        No raw volume in either layout under ``path``.
    """
    root = Path(path)
    if not root.exists():
        raise InputNotFoundError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: is a file; give the recording's folder")
    spm_dirs = sorted(p for p in root.iterdir() if p.is_dir() and SPM_DIR.match(p.name))
    if not spm_dirs and any(TM_DIR.match(p.name) for p in root.iterdir() if p.is_dir()):
        spm_dirs = [root]
    groups: list[tuple[Path, Path, dict[int, Path]]] = []  # (raw folder, xml folder, backgrounds)
    layout = "keller" if spm_dirs else "flat"
    if spm_dirs:
        for spm in spm_dirs:
            backgrounds = _backgrounds(spm)
            for tm in sorted(p for p in spm.iterdir() if p.is_dir() and TM_DIR.match(p.name)):
                angle_dirs = sorted(p for p in tm.iterdir() if p.is_dir() and p.name.upper().startswith("ANG"))
                for folder in angle_dirs + [tm]:
                    groups.append((folder, tm, backgrounds))
    else:
        groups.append((root, root, _backgrounds(root)))
    found = [(m, p, xml_dir, bg) for folder, xml_dir, bg in groups for m, p in _raw_files(folder)]
    if not found:
        raise DatasetError(
            f"{root}: no raw volumes (SPC##_TM#####_ANG###_CM#_CHN##_PH#.stack/.klb/.tif) in the Keller "
            "layout (SPM##/TM#####/ANG###/) or the flat layout")
    cameras_of_channel: dict[tuple[int, int, int], list[int]] = defaultdict(list)
    for m, *_ in found:
        key = (int(m["specimen"]), int(m["timepoint"]), int(m["channel"]))
        cameras_of_channel[key].append(int(m["camera"]))
    for key in cameras_of_channel:
        cameras_of_channel[key] = sorted(set(cameras_of_channel[key]))
    xml_cache: dict = {}
    views = [_make_view(m, p, xml_dir, bg, cameras_of_channel, xml_cache, allow_truncated)
             for m, p, xml_dir, bg in found]
    views.sort(key=lambda v: (v.specimen, v.timepoint, v.camera, v.channel, v.angle, v.phase))
    unknown = [v for v in views if v.voxel_size_unknown]
    if unknown:  # one warning for the recording, not one per view of a long time-lapse
        log.warning("%s: %d view(s) have no voxel size (their outputs get none, and exports refuse them), "
                    "e.g. %s: %s", root, len(unknown), unknown[0].path.name, unknown[0].voxel_size_unknown)
    return Dataset(root=root, layout=layout, views=views)
