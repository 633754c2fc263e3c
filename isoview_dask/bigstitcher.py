"""Export of fused (and corrected) volumes as a BigStitcher / BigDataViewer dataset (SpimData2 XML).

:func:`write_bigstitcher` writes ``OUT/bigstitcher.xml`` next to the OME-Zarr outputs, so that the two
orthogonal pair-fused views (cameras 0+1: angle 0, cameras 2+3: angle 90) can be registered and
deconvolved there. Nothing is copied: the XML's image loader (``bdv.multimg.zarr``, the OME-Zarr loader
of bigdataviewer-omezarr that BigStitcher reads) points at our ``.zarr`` groups.

Axes and geometry
-----------------
Our volumes are (Z, Y, X) = (plane, row, column); BigDataViewer counts (x, y, z), so sizes and voxel
sizes are written x first. World coordinates are the specimen frame of camera 0, in units of one x pixel
(BigStitcher's habit): world (x, y, z) = (specimen x, y, z) / pixel size, with the specimen centred at the
origin. A view whose reference camera is 0 (a fused 0+1 volume, or corrected camera 0) maps voxel
(x, y, k) to ((x - cx) p, (y - cy) p, (k - cz) dz); one whose reference camera is 2 looks along the
orthogonal axis: its planes step along specimen x and its columns along specimen z, so voxel (x, y, k)
goes to ((k - cz) dz, (y - cy) p, (x - cx) p), the 90 degree view (c = the volume's centre, p the
pixel size, dz the plane spacing, µm). These are the axes of :mod:`isoview_dask.synthetic`
(``CONVENTIONS['camera_0']``, ``['camera_2']``); the registration of each view is written as two affine
transforms: ``calibration`` (the voxel size in pixel units) and ``IsoView geometry`` (the rest).

Where the isotropic stage registered a timepoint's orthogonal view (VW90) onto VW00 (its
``<stem>.isotropic.json``), that view's registration gains a third, outermost transform, ``isotropic
registration``: the correction from VW90's nominal place to the estimated one. Composed, VW90's voxel
goes through the inverse of the estimated VW00 -> VW90 transform into VW00's frame and on through VW00's
geometry, so BigStitcher starts from the registered views.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputNotFoundError, IsoviewError, OutputExistsError

log = logging.getLogger(__name__)

XML_NAME = "bigstitcher.xml"
#: The image loader BigStitcher and BigDataViewer use for OME-Zarr (bigdataviewer-omezarr).
LOADER_FORMAT = "bdv.multimg.zarr"


@dataclass(frozen=True)
class ExportedView:
    """One volume of the export: which setup and timepoint it is, where it lies, its grid."""

    specimen: int
    timepoint: int
    cameras: tuple[int, ...]
    channels: tuple[int, ...]
    path: Path
    shape_zyx: tuple[int, int, int]
    voxel_size_zyx: tuple[float, float, float]

    @property
    def reference_camera(self) -> int:
        return self.cameras[0]

    @property
    def angle(self) -> int:
        """0 for views in camera 0's or 1's frame (the 0+1 pair), 90 for the orthogonal pair."""
        return 0 if self.reference_camera in (0, 1) else 90

    @property
    def setup_key(self) -> tuple:
        return (self.specimen, self.cameras, self.channels)

    @property
    def name(self) -> str:
        cams = "_".join(f"CM{c:02d}" for c in self.cameras)
        chans = "_".join(f"CHN{c:02d}" for c in self.channels)
        return f"SPM{self.specimen:02d}_{cams}_{chans}"


def view_to_specimen(reference_camera: int, shape_zyx, voxel_size_zyx) -> np.ndarray:
    """4 x 4 affine from voxel (k, y, x, 1) of a view in ``reference_camera``'s frame to specimen (z, y, x, 1), µm.

    Cameras 0 and 1 (their fused views are in camera 0's frame): planes along specimen z, columns along x.
    Cameras 2 and 3: planes along specimen x, columns along z. The volume's centre goes to the origin.
    A moving camera's own (unflipped, unregistered) frame is mirrored in x: corrected cameras 1 and 3 get
    ``x -> X - 1 - x`` first (the nominal IsoView geometry; BigStitcher refines the rest).
    """
    Z, Y, X = (int(v) for v in shape_zyx)
    dz, py, px = (float(v) for v in voxel_size_zyx)
    centre = ((Z - 1) / 2, (Y - 1) / 2, (X - 1) / 2)
    plane_axis, column_axis = (0, 2) if reference_camera in (0, 1) else (2, 0)
    A = np.zeros((4, 4))
    A[3, 3] = 1.0
    A[plane_axis, 0], A[plane_axis, 3] = dz, -centre[0] * dz
    A[1, 1], A[1, 3] = py, -centre[1] * py
    A[column_axis, 2], A[column_axis, 3] = px, -centre[2] * px
    if reference_camera in (1, 3):
        mirror = np.eye(4)
        mirror[2, 2], mirror[2, 3] = -1.0, X - 1.0
        A = A @ mirror
    return A


def _to_xyz(A: np.ndarray) -> np.ndarray:
    """The same affine with inputs and outputs in (x, y, z) order."""
    P = np.eye(4)[[2, 1, 0, 3]]
    return P @ A @ P


@dataclass(frozen=True)
class IsotropicRegistration:
    """VW90's registration onto VW00 estimated by the isotropic stage (from its ``<stem>.isotropic.json``).

    ``transform`` maps a point of VW00's frame (µm, (z, y, x), its voxel (k, i, j) at
    (k, i, j) * voxel) to the point of VW90's frame that shows the same specimen point.
    """

    vw00: tuple  # (cameras, channels)
    vw90: tuple
    vw00_shape_zyx: tuple[int, int, int]
    vw00_voxel_zyx: tuple[float, float, float]
    transform: np.ndarray
    record: Path


def isotropic_registrations(out: str | Path) -> dict[tuple, IsotropicRegistration]:
    """The VW90 registrations of the isotropic stage under ``out``, keyed by (specimen, timepoint, VW90's
    cameras, VW90's channels), from every complete ``<stem>.isotropic.json``."""
    from .pipeline.common import scan_records
    found = {}
    for (s, t, _, _), (path, record) in scan_records(out, "isotropic.json").items():
        try:
            views = record["views"]
            key90 = (tuple(int(c) for c in views["vw90"]["cameras"]), tuple(int(c) for c in views["vw90"]["channels"]))
            key00 = (tuple(int(c) for c in views["vw00"]["cameras"]), tuple(int(c) for c in views["vw00"]["channels"]))
            found[(int(s), int(t)) + key90] = IsotropicRegistration(
                key00, key90, tuple(int(v) for v in views["vw00"]["shape_zyx"]),
                tuple(float(v) for v in views["vw00"]["voxel_size_um_zyx"]),
                np.asarray(record["transform_vw00_to_vw90_um"], dtype=float), path)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s: not an isotropic record this export can read (%s); ignoring it", path, exc)
    return found


def registration_transforms(view: ExportedView, world_unit_um: float,
                            isotropic: IsotropicRegistration | None = None) -> list[tuple[str, np.ndarray]]:
    """(name, 3 x 4 affine on (x, y, z, 1)) of a view's registration, outermost first (SpimData order).

    With ``isotropic`` (the view is that reconstruction's VW90), a first transform carries VW90 from its
    nominal place to where the isotropic stage registered it: the composed model maps VW90's voxels
    through the inverse of the estimated VW00 -> VW90 transform into VW00's frame, then VW00's own
    geometry to the world.
    """
    dz, py, px = view.voxel_size_zyx
    calibration = np.diag([px / world_unit_um, py / world_unit_um, dz / world_unit_um, 1.0])
    model = _to_xyz(view_to_specimen(view.reference_camera, view.shape_zyx, view.voxel_size_zyx))
    model[:3] /= world_unit_um
    geometry = model @ np.linalg.inv(calibration)
    transforms = [("IsoView geometry (orthogonal views: 90 degrees about y)", geometry[:3]),
                  ("calibration", calibration[:3])]
    if isotropic is None:
        return transforms
    # VW90 voxel -> VW90 µm -> VW00 µm (inverse registration) -> VW00 voxel -> world (VW00's geometry)
    to_um90 = np.diag([*view.voxel_size_zyx, 1.0])
    to_voxel00 = np.diag([*(1.0 / np.asarray(isotropic.vw00_voxel_zyx)), 1.0])
    world00 = view_to_specimen(isotropic.vw00[0][0], isotropic.vw00_shape_zyx, isotropic.vw00_voxel_zyx)
    estimated = _to_xyz(world00 @ to_voxel00 @ np.linalg.inv(isotropic.transform) @ to_um90)
    estimated[:3] /= world_unit_um
    correction = estimated @ np.linalg.inv(model)
    return [("isotropic registration: VW90 onto VW00 (isoview-dask isotropic)", correction[:3])] + transforms


def _zarr_grid(path: Path) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape (Z, Y, X) and voxel size (µm) of an OME-Zarr group's full-resolution level."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
        ms = meta["attributes"]["ome"]["multiscales"][0]
        level = ms["datasets"][0]
        scale = next(t["scale"] for t in level["coordinateTransformations"] if t["type"] == "scale")
        array = json.loads((path / level["path"] / "zarr.json").read_text())
        return tuple(int(v) for v in array["shape"]), tuple(float(v) for v in scale)
    except (OSError, KeyError, IndexError, StopIteration, json.JSONDecodeError) as exc:
        raise IsoviewError(f"{path}: not an OME-Zarr volume written by isoview-dask ({exc})") from exc


def exported_views(out: str | Path, *, corrected: bool = False) -> list[ExportedView]:
    """The volumes under ``out`` the export lists: every complete fused volume, and with ``corrected``
    every complete corrected camera, sorted by (specimen, timepoint, cameras, channels).

    A volume whose record says its voxel size is unknown is left out, with a warning: its zarr
    carries a placeholder scale, and BigStitcher would place it at the wrong size.
    """
    return _exported_views(out, corrected)[0]


def _exported_views(out: str | Path, corrected: bool) -> tuple[list[ExportedView], int]:
    """:func:`exported_views`, and how many volumes were refused for an unknown voxel size."""
    from .pipeline.common import scan_records
    out = Path(out)
    kinds = [("fusedStack.json", ".fusedStack.json", ".fusedStack.zarr")]
    if corrected:
        kinds.append(("correction.json", ".correction.json", ".zarr"))
    views, refused = [], 0
    for suffix, record_suffix, volume_suffix in kinds:
        for (s, t, cams, ch), (record_path, record) in scan_records(out, suffix).items():
            path = record_path.with_name(record_path.name[:-len(record_suffix)] + volume_suffix)
            if record.get("volume_stored", True) is False:
                log.warning("%s: not exported, the correction did not store its volume "
                            "(output.store_corrected = false)", path.name)
                continue
            if not path.is_dir():
                continue  # another format (KLB, TIFF): not readable through the OME-Zarr loader
            if "voxel_size_um_zyx" in record and not record["voxel_size_um_zyx"]:
                # its zarr carries a placeholder scale of 1: exported, it would sit at the wrong size
                log.warning("%s: not exported, its voxel size is unknown (%s); give the step along the stack "
                            "direction and the pixel size in the recording's XML and process it again",
                            path.name, _unknown_reason(record))
                refused += 1
                continue
            shape, voxel = _zarr_grid(path)
            channels = tuple(ch) if isinstance(ch, (tuple, list)) else (int(ch),)
            views.append(ExportedView(int(s), int(t), tuple(int(c) for c in cams), channels, path, shape, voxel))
    return sorted(views, key=lambda v: (v.specimen, v.timepoint, v.cameras, v.channels)), refused


def _unknown_reason(record: dict) -> str:
    """Why a record's voxel size is unknown, as its raw view's description says (correction records)."""
    return (record.get("view") or {}).get("voxel_size_unknown") or "the recording's XML gives none"


def _text(parent, tag: str, text) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = str(text)
    return element


def _numbers(values) -> str:
    return " ".join(repr(float(v)) if not float(v).is_integer() else str(int(v)) if abs(v) < 1e15 else repr(v)
                    for v in np.asarray(values, dtype=float).ravel())


def bigstitcher_xml(out: str | Path, *, corrected: bool = False, base: str | Path | None = None) -> ET.ElementTree:
    """The SpimData2 document for the volumes under ``out`` (see :func:`write_bigstitcher`).

    Image paths are relative to ``base``, the XML's folder (default ``out``).
    """
    import os
    out = Path(out)
    base = Path(base) if base is not None else out
    views, refused = _exported_views(out, corrected)
    if not views and refused:
        raise IsoviewError(f"{out}: none of the {refused} volume(s) can be exported: their voxel size is unknown "
                           "(the recording's XML gives no step along the stack direction or no pixel size)")
    if not views:
        raise IsoviewError(f"{out}: no complete fused{' or corrected' if corrected else ''} OME-Zarr volumes to "
                           "export (run 'isoview-dask run' or 'fuse' first)")
    setups: dict[tuple, int] = {}
    for view in views:
        setups.setdefault(view.setup_key, len(setups))
    first = {key: next(v for v in views if v.setup_key == key) for key in setups}
    timepoints = sorted({v.timepoint for v in views})
    world_unit = min(v.voxel_size_zyx[2] for v in views)

    root = ET.Element("SpimData", version="0.2")
    _text(root, "BasePath", ".").set("type", "relative")
    sequence = ET.SubElement(root, "SequenceDescription")
    loader = ET.SubElement(sequence, "ImageLoader", format=LOADER_FORMAT, version="3.0")
    _text(loader, "zarr", ".").set("type", "relative")
    groups = ET.SubElement(loader, "zgroups")
    for view in views:
        # "indicies" (sic) is the attribute name the loader reads: time and channel index inside the group
        ET.SubElement(groups, "zgroup", setup=str(setups[view.setup_key]), tp=str(view.timepoint),
                      path=Path(os.path.relpath(view.path, base)).as_posix(), indicies="0 0")
    setup_list = ET.SubElement(sequence, "ViewSetups")
    channels = sorted({v.channels for v in views})
    for key, number in setups.items():
        view = first[key]
        element = ET.SubElement(setup_list, "ViewSetup")
        _text(element, "id", number)
        _text(element, "name", view.name)
        _text(element, "size", _numbers(view.shape_zyx[::-1]))
        voxel = ET.SubElement(element, "voxelSize")
        _text(voxel, "unit", "micrometer")
        _text(voxel, "size", _numbers(view.voxel_size_zyx[::-1]))
        attributes = ET.SubElement(element, "attributes")
        _text(attributes, "illumination", 0)
        _text(attributes, "channel", channels.index(view.channels))
        _text(attributes, "tile", view.specimen)
        _text(attributes, "angle", view.angle)
    for name, entries in (("illumination", [(0, "0")]),
                          ("channel", [(i, "+".join(map(str, c))) for i, c in enumerate(channels)]),
                          ("tile", [(s, f"SPM{s:02d}") for s in sorted({v.specimen for v in views})]),
                          ("angle", [(a, str(a)) for a in sorted({v.angle for v in views})])):
        group = ET.SubElement(setup_list, "Attributes", name=name)
        for number, label in entries:
            item = ET.SubElement(group, name.capitalize())
            _text(item, "id", number)
            _text(item, "name", label)
    points = ET.SubElement(sequence, "Timepoints", type="pattern")
    _text(points, "integerpattern", ", ".join(map(str, timepoints)))
    present = {(v.timepoint, setups[v.setup_key]) for v in views}
    missing = ET.SubElement(sequence, "MissingViews")
    for t in timepoints:
        for number in setups.values():
            if (t, number) not in present:
                ET.SubElement(missing, "MissingView", timepoint=str(t), setup=str(number))
    registrations = ET.SubElement(root, "ViewRegistrations")
    isotropic = isotropic_registrations(out)
    for view in views:
        element = ET.SubElement(registrations, "ViewRegistration", timepoint=str(view.timepoint),
                                setup=str(setups[view.setup_key]))
        estimated = isotropic.get((view.specimen, view.timepoint, view.cameras, view.channels))
        for name, affine in registration_transforms(view, world_unit, estimated):
            transform = ET.SubElement(element, "ViewTransform", type="affine")
            _text(transform, "Name", name)
            _text(transform, "affine", _numbers(affine))
    for tag in ("ViewInterestPoints", "BoundingBoxes", "PointSpreadFunctions", "StitchingResults",
                "IntensityAdjustments"):
        ET.SubElement(root, tag)
    ET.indent(root)
    return ET.ElementTree(root)


def write_bigstitcher(out: str | Path, path: str | Path | None = None, *, corrected: bool = False,
                      overwrite: bool = False) -> Path:
    """Write ``OUT/bigstitcher.xml`` (or ``path``): a SpimData2 dataset of the volumes under ``out``.

    Parameters
    ----------
    out : path
        An output root of the pipeline (``SPM##/TM######/`` folders of OME-Zarr volumes).
    path : path, optional
        Where the XML goes; default ``out / 'bigstitcher.xml'``. Image paths are written relative to the
        XML's folder, so keep it in ``out`` (the default) or move it with the volumes.
    corrected : bool
        Also list every corrected camera (cameras 1 and 3 mirrored, unregistered: the nominal geometry).
    overwrite : bool
        Replace an existing XML (BigStitcher saves its registrations into it: keep a copy).

    Returns
    -------
    Path of the XML, written atomically.

    Notes
    -----
    One view setup per (specimen, cameras, channels); attribute ``angle`` 0 or 90 (see the module
    docstring), ``channel`` per channel (pair), ``tile`` the specimen; timepoints are the TM numbers, a view
    absent at a timepoint is a ``MissingView``. The loader reads OME-Zarr through bigdataviewer-omezarr;
    versions that read only OME-NGFF 0.4 (zarr v2, 5-D) will not open our 0.5 (zarr v3, 3-D) volumes.
    """
    from .io.atomic import atomic_output
    out = Path(out)
    if not out.is_dir():
        raise InputNotFoundError(f"{out}: no such output folder")
    target = Path(path) if path is not None else out / XML_NAME
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target}: already exists (BigStitcher may have saved registrations in it); "
                                "pass overwrite (--overwrite) to replace it")
    tree = bigstitcher_xml(out, corrected=corrected, base=target.parent)
    with atomic_output(target, overwrite=True) as tmp:
        tree.write(tmp, encoding="utf-8", xml_declaration=True)
    log.info("wrote %s", target)
    return target


def read_bigstitcher(path: str | Path) -> dict:
    """Parse a SpimData2 XML back: setups, timepoints, image paths and each view's registration model.

    Returns a dict with ``setups`` ({id: {name, size_xyz, voxel_size_xyz, attributes}}), ``timepoints``
    (list), ``images`` ({(timepoint, setup): path}), ``missing`` (set of (timepoint, setup)) and
    ``models`` ({(timepoint, setup): 4 x 4 affine on (x, y, z, 1), the transforms composed, outermost
    first}).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise IsoviewError(f"{path}: not a readable SpimData XML ({exc})") from exc
    base = path.parent / (root.findtext("BasePath") or ".")
    sequence = root.find("SequenceDescription")
    loader = sequence.find("ImageLoader")
    zarr_base = base / (loader.findtext("zarr") or ".")
    images = {(int(g.get("tp")), int(g.get("setup"))): zarr_base / g.get("path") for g in loader.iter("zgroup")}
    setups = {}
    for element in sequence.find("ViewSetups").findall("ViewSetup"):
        setups[int(element.findtext("id"))] = {
            "name": element.findtext("name"),
            "size_xyz": [int(v) for v in element.findtext("size").split()],
            "voxel_size_xyz": [float(v) for v in element.find("voxelSize").findtext("size").split()],
            "attributes": {a.tag: int(a.text) for a in element.find("attributes")}}
    pattern = sequence.find("Timepoints").findtext("integerpattern")
    timepoints = [int(v) for v in pattern.replace(",", " ").split()]
    missing = {(int(m.get("timepoint")), int(m.get("setup"))) for m in sequence.iter("MissingView")}
    models = {}
    for element in root.find("ViewRegistrations").findall("ViewRegistration"):
        model = np.eye(4)
        for transform in element.findall("ViewTransform"):
            affine = np.eye(4)
            affine[:3] = np.array([float(v) for v in transform.findtext("affine").split()]).reshape(3, 4)
            model = model @ affine
        models[(int(element.get("timepoint")), int(element.get("setup")))] = model
    return {"setups": setups, "timepoints": timepoints, "images": images, "missing": missing, "models": models}
