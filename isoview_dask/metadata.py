"""Acquisition metadata: the microscope's ``push_config`` XML files.

Each channel of an IsoView recording comes with an XML file (``ch0.xml`` or
``ch0_spec00.xml``) holding a list of ``<info .../>`` elements whose
attributes describe the acquisition: frame ``dimensions`` per camera
(``W x H x D``, comma separated), the plane spacing in µm (``z_step``, or the
``<axis>_step`` named by ``stack_direction``: ``y_step`` for a Y-scan), the ``detection_objective``
(its magnification gives the lateral pixel size, 6.5 µm camera pixel /
magnification), ``wavelength``, ``camera_index``, ``time_point`` and more.
This module reads those files into :class:`AcquisitionMetadata` (tolerating
missing optional fields) and writes them (for the synthetic generator).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from .errors import InputNotFoundError, MetadataError

#: Physical pixel pitch of the sCMOS cameras used on IsoView/SiMView, µm.
CAMERA_PIXEL_UM = 6.5

_DIM_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*$")
_MAG_RE = re.compile(r"(\d+(?:\.\d+)?)\s*[xX]")


@dataclass(frozen=True)
class AcquisitionMetadata:
    """Parsed content of one ``push_config`` XML file.

    Attributes
    ----------
    path : Path
        The XML file.
    attributes : dict[str, str]
        Every ``<info>`` attribute, first occurrence wins (raw strings).
    frame_dimensions : tuple of (Y, X, Z or None)
        One entry per ``dimensions`` item, converted to (height, width,
        depth) in pixels/planes; depth is None when the XML omits it.
    camera_indices : tuple of int
        Cameras named by ``camera_index`` (may be empty).
    z_step_um : float or None
        Spacing of the planes of the stack, µm: the step attribute named by
        the (first) stack direction (``y_step`` for ``stack_direction="+y"``),
        else ``z_step`` (see :meth:`plane_step_um`).
    pixel_size_um : float or None
        Lateral pixel size in the specimen, µm (camera pixel / magnification).
    stack_axes : tuple of str
        Axis letter (``'x'``, ``'y'`` or ``'z'``) of each ``stack_direction``
        entry (one per camera, or one for all); empty when the XML has none.
    """

    path: Path
    attributes: dict[str, str] = field(default_factory=dict)
    frame_dimensions: tuple[tuple[int, int, int | None], ...] = ()
    camera_indices: tuple[int, ...] = ()
    z_step_um: float | None = None
    pixel_size_um: float | None = None
    stack_axes: tuple[str, ...] = ()

    def stack_axis(self, camera: int | None = None, position: int = 0) -> str | None:
        """The axis a camera's stack steps along (``stack_direction``), or None when the XML does not say.

        Parameters
        ----------
        camera, position : int
            As :meth:`frame_for_camera`: the camera number, and its place
            among the cameras of this channel when the XML names none.
        """
        axes = self.stack_axes
        if not axes:
            return None
        if len(axes) == 1:
            return axes[0]
        if camera is not None and self.camera_indices and len(self.camera_indices) == len(axes) \
                and camera in self.camera_indices:
            return axes[self.camera_indices.index(camera)]
        return axes[position] if position < len(axes) else None

    def plane_step_um(self, camera: int | None = None, position: int = 0) -> float | None:
        """Spacing of a camera's planes, µm, read from the step attribute that matches its stack direction.

        A stack along y (``stack_direction="+y"``) takes ``y_step``, one
        along x ``x_step``, one along z (or of unknown direction) ``z_step``;
        when the attribute of the stack's axis is missing, ``z_step`` (the
        usual name whatever the direction) and then the only one of
        ``x_step`` / ``y_step`` present are used.

        Returns
        -------
        float or None
            None when no step attribute gives it.
        """
        axis = self.stack_axis(camera, position)
        attrs = self.attributes
        candidates = [f"{axis}_step"] if axis else []
        candidates.append("z_step")
        for name in candidates:
            value = _float_or_none(attrs.get(name))
            if value:
                return value
        others = [v for v in (_float_or_none(attrs.get(n)) for n in ("x_step", "y_step")) if v]
        return others[0] if len(others) == 1 else None

    @property
    def wavelength_nm(self) -> float | None:
        """Excitation wavelength in nm, if recorded."""
        return _float_or_none(self.attributes.get("wavelength"))

    @property
    def time_point(self) -> int | None:
        """Timepoint index recorded in the file, if any."""
        value = _float_or_none(self.attributes.get("time_point"))
        return None if value is None else int(value)

    def frame_for_camera(self, camera: int, position: int) -> tuple[int, int, int | None]:
        """Frame dimensions (Y, X, Z-or-None) of one camera.

        Parameters
        ----------
        camera : int
            Camera number (``CM#`` in file names).
        position : int
            Position of that camera among the cameras of this channel, used
            when the XML does not name its cameras.
        """
        dims = self.frame_dimensions
        if not dims:
            raise MetadataError(f"{self.path}: no 'dimensions' attribute in any <info> element")
        if self.camera_indices and len(self.camera_indices) == len(dims):
            if camera in self.camera_indices:
                return dims[self.camera_indices.index(camera)]
        if len(dims) == 1:
            return dims[0]
        if position < len(dims):
            return dims[position]
        raise MetadataError(
            f"{self.path}: 'dimensions' lists {len(dims)} cameras, none of which is camera {camera}"
        )

    def to_dict(self) -> dict:
        """Plain-JSON view (for ``isoview-dask info --json``)."""
        return {
            "path": str(self.path),
            "frame_dimensions_yxz": [list(d) for d in self.frame_dimensions],
            "camera_indices": list(self.camera_indices),
            "z_step_um": self.z_step_um,
            "pixel_size_um": self.pixel_size_um,
            "stack_axes": list(self.stack_axes),
            "attributes": dict(self.attributes),
        }


def _float_or_none(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.strip().split()[0].rstrip(","))
    except (ValueError, IndexError):
        return None


def _parse_dimensions(path: Path, text: str) -> tuple[tuple[int, int, int | None], ...]:
    out = []
    for item in text.split(","):
        if not item.strip():
            continue
        m = _DIM_RE.match(item)
        if not m:
            raise MetadataError(f"{path}: cannot read dimensions entry {item!r}; expected 'WxHxD'")
        width, height = int(m.group(1)), int(m.group(2))
        depth = int(m.group(3)) if m.group(3) else None
        if width <= 0 or height <= 0:
            raise MetadataError(f"{path}: dimensions entry {item!r} has a zero size")
        out.append((height, width, depth))
    return tuple(out)


def _parse_pixel_size(attrs: Mapping[str, str]) -> float | None:
    explicit = _float_or_none(attrs.get("pixel_size_um") or attrs.get("xy_step"))
    if explicit:
        return explicit
    objective = attrs.get("detection_objective")
    if objective:
        m = _MAG_RE.search(objective)
        if m and float(m.group(1)) > 0:
            return CAMERA_PIXEL_UM / float(m.group(1))
    return None


def read_push_config(path: str | Path) -> AcquisitionMetadata:
    """Read one ``push_config`` XML file.

    Parameters
    ----------
    path : path
        The XML file (opened read-only).

    Returns
    -------
    AcquisitionMetadata

    Raises
    ------
    InputNotFoundError
        The file does not exist.
    MetadataError
        The file is not well-formed XML, has no ``<info>`` elements, or a
        ``dimensions`` value cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: metadata XML does not exist")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise MetadataError(f"{path}: malformed XML ({exc})") from exc
    infos = [root] if root.tag == "info" else list(root.iter("info"))
    if not infos:
        raise MetadataError(f"{path}: no <info> elements; not a push_config file")
    attrs: dict[str, str] = {}
    for info in infos:
        for key, value in info.attrib.items():
            attrs.setdefault(key, value)
    dims = _parse_dimensions(path, attrs["dimensions"]) if "dimensions" in attrs else ()
    cams: tuple[int, ...] = ()
    if attrs.get("camera_index"):
        try:
            cams = tuple(int(c) for c in re.split(r"[,\s]+", attrs["camera_index"].strip()) if c)
        except ValueError as exc:
            raise MetadataError(f"{path}: camera_index {attrs['camera_index']!r} is not a list of integers") from exc
    meta = AcquisitionMetadata(
        path=path,
        attributes=attrs,
        frame_dimensions=dims,
        camera_indices=cams,
        pixel_size_um=_parse_pixel_size(attrs),
        stack_axes=_parse_stack_axes(attrs.get("stack_direction")),
    )
    return replace(meta, z_step_um=meta.plane_step_um())


def _parse_stack_axes(text: str | None) -> tuple[str, ...]:
    """``"+z"`` -> ``('z',)``, ``"+y,-y"`` -> ``('y', 'y')``; entries naming no axis are left out."""
    if not text:
        return ()
    axes = []
    for item in text.split(","):
        m = re.search(r"[xyzXYZ]", item)
        if m:
            axes.append(m.group(0).lower())
    return tuple(axes)


def write_push_config(path: str | Path, attributes: Mapping[str, object]) -> Path:
    """Write a ``push_config`` XML file with one ``<info>`` element per attribute.

    Parameters
    ----------
    path : path
        Destination file.
    attributes : mapping
        Attribute names to values (converted with ``str``), e.g.
        ``{"dimensions": "256x128x40,256x128x40", "z_step": 2.0}``.
    """
    path = Path(path)
    root = ET.Element("push_config", version="1.0")
    for key, value in attributes.items():
        ET.SubElement(root, "info", {key: str(value)})
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
