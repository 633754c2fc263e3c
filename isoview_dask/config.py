"""One validated processing configuration (``ProcessingConfig``).

Every option of the MATLAB ``clusterPT`` / ``clusterMF`` scripts lives here
under a recognisable name, grouped in sections (``input``, ``correction``,
``fusion``, ``output``, ``isotropic``). A flat flag name is ``<section>_<key>``, e.g.
``fusion_blending_range`` is ``[fusion] blending_range`` in TOML and
``--fusion-blending-range`` on the command line. Configurations validate on
construction (types, ranges, consistency; unknown keys are rejected with the
key's name), round-trip losslessly through TOML and JSON, and are recorded
with every output for provenance.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import IsoviewError


class ConfigError(IsoviewError, ValueError):
    """An invalid configuration value or an unknown key (the message names it)."""


def opt(default, help: str, *, choices=None, lo=None, hi=None, matlab: str | None = None, aliases=None, **kw):
    """A config field with its help text, allowed values, MATLAB name and accepted aliases.

    ``aliases`` maps other spellings (compared as text, e.g. MATLAB's numeric
    codes) to the canonical value.
    """
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi, "matlab": matlab, "aliases": aliases}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _coerce(section: str, name: str, hint, value):
    """Convert a TOML/JSON/CLI value to the field's declared type, or raise ConfigError."""
    where = f"{section}.{name}"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            return None
        return _coerce(section, name, args[0], value)
    if origin is tuple:
        args = typing.get_args(hint)
        if isinstance(value, str) and typing.get_origin(args[0]) is tuple:
            value = [part for part in value.split(":") if part.strip()]  # "0,1:2,3" -> pairs
        elif isinstance(value, str):
            value = [v for v in value.replace("x", ",").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(section, name, item, v) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(section, name, a, v) for a, v in zip(args, value))
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        out = {}
        for k, v in value.items():
            try:
                key = key_type(k)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}: key {k!r} is not a {key_type.__name__}") from exc
            out[key] = value_type.from_dict(v, f"{where}.{k}") if isinstance(value_type, type) and \
                issubclass(value_type, Section) else _coerce(section, f"{name}.{k}", value_type, v)
        return out
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from exc
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from exc
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {hint}")  # pragma: no cover


@dataclass(frozen=True)
class Section:
    """Base of config sections: coercion, range checks, dict round trip."""

    _name: typing.ClassVar[str] = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            aliases = f.metadata.get("aliases") or {}
            if not isinstance(value, (list, tuple, dict)) and str(value) in aliases:
                value = aliases[str(value)]
            value = _coerce(self._name, f.name, hints[f.name], value)
            object.__setattr__(self, f.name, value)
            meta = f.metadata
            items = value if isinstance(value, tuple) else (value,)
            for item in (i for it in items for i in (it if isinstance(it, tuple) else (it,))):
                if item is None or isinstance(item, (dict, Section)):
                    continue
                if meta.get("choices") and item not in meta["choices"]:
                    raise ConfigError(f"{self._name}.{f.name}: {item!r} is not one of {list(meta['choices'])}")
                if meta.get("lo") is not None and item < meta["lo"]:
                    raise ConfigError(f"{self._name}.{f.name}: {item!r} is below the minimum {meta['lo']}")
                if meta.get("hi") is not None and item > meta["hi"]:
                    raise ConfigError(f"{self._name}.{f.name}: {item!r} is above the maximum {meta['hi']}")
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; overridden by sections that need them."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str | None = None):
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where or cls._name}: unknown key {unknown[0]!r}{did_you_mean(unknown[0], known)}"
                              f" (known: {', '.join(sorted(known))})")
        return cls(**data)

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue  # TOML has no null: absent means default None
            if isinstance(value, dict):
                value = {str(k): (v.to_dict() if isinstance(v, Section) else v) for k, v in value.items()}
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out


@dataclass(frozen=True)
class CameraOptions(Section):
    """Per-camera view options applied right after reading (the MATLAB rotation/flip/crop)."""

    _name: typing.ClassVar[str] = "correction.camera"
    rotation: int = opt(0, "in-plane rotation in degrees, counter-clockwise", choices=(0, 90, 180, 270))
    flip_h: bool = opt(False, "mirror left-right (x)")
    flip_v: bool = opt(False, "mirror up-down (y)")
    crop: tuple[int, int, int, int] | None = opt(None, "crop y0, y1, x0, x1 in pixels (after rotation/flips)",
                                                 lo=0)


@dataclass(frozen=True)
class InputConfig(Section):
    """What to read."""

    _name: typing.ClassVar[str] = "input"
    specimens: tuple[int, ...] | None = opt(None, "specimens to process (default all)", lo=0, matlab="specimen")
    timepoints: tuple[int, ...] | None = opt(None, "timepoints to process (default all)", lo=0, matlab="timepoints")
    cameras: tuple[int, ...] | None = opt(None, "cameras to process (default all)", lo=0, hi=15, matlab="cameras")
    channels: tuple[int, ...] | None = opt(None, "channels to process (default all)", lo=0, matlab="channels")
    input_type: str = opt("auto", "raw file type", choices=("auto", "stack", "klb", "tif"))
    allow_truncated: bool = opt(False, "use the whole planes of truncated .stack files instead of failing")


@dataclass(frozen=True)
class CorrectionConfig(Section):
    """Dead pixels, background, segmentation (the MATLAB clusterPT)."""

    _name: typing.ClassVar[str] = "correction"
    dead_pixel_correction: bool = opt(True, "detect and replace dead (hot/stuck) pixels")
    dead_pixel_kernel: int = opt(3, "median kernel for dead-pixel detection and replacement, px", lo=3, hi=9)
    dead_pixel_min_zscore: float = opt(8.0, "statistical floor: robust z-score a dead pixel must exceed", lo=0.0)
    dead_pixel_sample_planes: int = opt(128, "at least this many planes, in whole chunks evenly spread, over "
                                        "which per-pixel statistics are taken; 0 for all", lo=0)
    background_percentile: float = opt(5.0, "percentile of non-zero voxels used as background when there is "
                                       "no dark frame", lo=0.0, hi=100.0)
    use_dark_frame: bool = opt(True, "subtract Background_<camera>.tif when present")
    segment: bool = opt(True, "compute foreground masks")
    segment_sigma_lateral: float = opt(2.0, "lateral Gaussian sigma for segmentation, px", lo=0.0)
    segment_sigma_axial: float | None = opt(None, "axial sigma in planes (default lateral / spacing ratio)", lo=0.0)
    segment_threshold: float = opt(0.4, "adaptive threshold fraction t of minI + (meanI - minI) * t", lo=0.0,
                                   hi=1.0)
    mask_percentile: float = opt(1.0, "percentile of the smoothed volume taken as minI", lo=0.0, hi=100.0)
    precise_gauss: bool = opt(True, "exact Gaussian (else a faster truncated one)", matlab="preciseGauss")
    segment_sample_slabs: int = opt(4, "slabs of planes (evenly spread) whose histogram gives the segmentation "
                                    "level; 0 for the whole volume", lo=0)
    segment_downsample: int = opt(4, "segment at 1/N lateral resolution (the smoothing hides the difference; "
                                  "N x N cheaper)", lo=1, hi=8)
    camera: dict[int, CameraOptions] = opt({}, "per-camera rotation/flip/crop, e.g. [correction.camera.1]")


@dataclass(frozen=True)
class OutputConfig(Section):
    """Where and how to write."""

    _name: typing.ClassVar[str] = "output"
    format: str = opt("zarr", "volume format", choices=("zarr", "klb", "tif"))
    codec: str = opt("blosc-zstd", "zarr codec name (blosc-zstd, blosc-lz4, blosc-lz4hc, zstd, gzip, bzip2, none)")
    level: int | None = opt(None, "codec level (default: the codec's)", lo=0, hi=22)
    shuffle: str = opt("bitshuffle", "blosc shuffle filter", choices=("shuffle", "bitshuffle", "noshuffle"))
    chunks: tuple[int, int, int] = opt((8, 256, 256), "inner zarr chunk (Z, Y, X)", lo=1)
    shards: tuple[int, ...] = opt((32, 1024, 1024), "zarr shard (Z, Y, X); on frames smaller than its Y x X a shard "
                                  "takes more planes (the same bytes), up to the whole volume; empty list for "
                                  "unsharded", lo=1)
    pyramid_levels: int = opt(0, "downsampled pyramid levels", lo=0, hi=8)
    projections: bool = opt(True, "write xy/xz/yz max projections (TIFF)")
    store_corrected: bool = opt(True, "write the corrected camera volumes; false: write only their masks, "
                                "projections and statistics, and let fusion recompute each corrected volume "
                                "from the raw input in its own graph (less disk and CPU; the raw files must "
                                "stay in place and unchanged)")
    overwrite: bool = opt(False, "replace existing outputs")

    def validate(self):
        from .io.codecs import CodecSpec
        try:
            CodecSpec.parse(self.codec, self.level, self.shuffle)
        except IsoviewError as exc:
            raise ConfigError(f"output.codec: {exc}") from exc
        if self.shards and len(self.shards) != 3:
            raise ConfigError(f"output.shards: expected 3 values or none, got {list(self.shards)}")


#: Fusion options that only shape the time-lapse smoothing (its pass 2), never a per-timepoint estimate.
TEMPORAL_FIELDS = ("temporal_smoothing", "smoothing_window", "static", "generate_lookup_table", "lut_averaging",
                   "lut_averaging_method", "min_registration_confidence", "transition_median_window",
                   "estimate_every")


@dataclass(frozen=True)
class FusionConfig(Section):
    """Registration, intensity matching and blending of opposing cameras (the MATLAB clusterMF)."""

    _name: typing.ClassVar[str] = "fusion"
    type: str = opt("adaptive", "blending: per-pixel transition plane, one plane, local sharpness (Tenengrad) "
                    "weights, or the mean; MATLAB's fusionType numbers are accepted (0 adaptive, 1 geometric, "
                    "2 wavelet -> sharpness, 3 average)",
                    choices=("adaptive", "geometric", "sharpness", "average"), matlab="fusionType",
                    aliases={"0": "adaptive", "1": "geometric", "2": "sharpness", "wavelet": "sharpness",
                             "3": "average", "adaptive_blending": "adaptive", "geometric_blending": "geometric",
                             "averaging": "average"})
    sharpness_sigma_px: float = opt(4.0, "type 'sharpness': Gaussian sigma (px) over which each view's in-plane "
                                    "gradient energy is averaged into its weight", lo=0.0)
    blending_range: tuple[float, float] = opt((20.0, 10.0), "transition widths: [channel (columns along x, "
                                              "for channel_pairs), camera (planes along z)]", lo=0.0,
                                              matlab="blendingRange")
    blending_profile: str = opt("sigmoid", "shape of the weight ramp", choices=("sigmoid", "linear"))
    camera_pairs: tuple[tuple[int, int], ...] = opt(((0, 1), (2, 3)), "opposing camera pairs [reference, moving]",
                                                    lo=0, hi=15, matlab="cameraPairs")
    channel_pairs: tuple[tuple[int, int], ...] = opt((), "illumination-channel pairs [a, b]: two channels one camera "
                                                     "records of one label, a lit from the low-x side of the "
                                                     "camera's frame, b from the high-x side; blended along x "
                                                     "(channel blending range) before the camera fusion; empty: "
                                                     "off", lo=0, hi=99)
    channel_registration: bool = opt(True, "channel pairs: align channel b's light sheet onto channel a's (offset "
                                     "along z and tilt about x, fitted around the channel transition) before "
                                     "the channel blend")
    channel_search_planes: float = opt(5.0, "channel registration search range for the sheet offset, planes",
                                       lo=0.5)
    channel_max_rotation_deg: float = opt(3.0, "channel registration search range for the sheet tilt about x, "
                                          "degrees in voxel units (planes per row)", lo=0.0, hi=30.0)
    channel_registration_columns: int = opt(8, "channel registration: half-width (columns) of the band around "
                                            "the channel transition it is fitted on", lo=1)
    channel_min_confidence: float = opt(0.3, "channel registration: below this confidence (correlation of the "
                                        "band-passed channel images) channel b is not moved", lo=0.0, hi=1.0)
    front_camera: str = opt("reference", "which camera of a pair images the low planes (near side at low z) and "
                            "takes them in the blend; MATLAB frontFlag 1 reference, 2 moving",
                            choices=("reference", "moving"), matlab="frontFlag",
                            aliases={"1": "reference", "2": "moving"})
    flip_h: bool = opt(True, "mirror the moving camera left-right before registration", matlab="flipH")
    flip_v: bool = opt(False, "mirror the moving camera up-down", matlab="flipV")
    rotation: int = opt(0, "rotate the moving camera by this many degrees (counter-clockwise)",
                        choices=(0, 90, 180, 270), matlab="rotation")
    flip_z: bool = opt(False, "reverse the moving camera's plane order")
    search_px: float = opt(30.0, "registration search range for the in-plane offset, px", lo=1.0)
    max_rotation_deg: float = opt(2.0, "registration search range for the in-plane rotation, degrees", lo=0.0,
                                  hi=45.0)
    registration_slab_planes: float = opt(1.0, "half-thickness (planes) of the mid-specimen slab registered on",
                                          lo=0.0)
    strict_registration: bool = opt(False, "one-pass fusion: fail a pair whose registration is rejected (its "
                                    "estimate at the search limit) instead of fusing it with a warning")
    intensity_ratio: float | None = opt(None, "camera pairs: a given brightness ratio moving / reference instead "
                                        "of estimating it (the dimmer camera is scaled); none: estimated", lo=1e-6)
    transition_plane: float | None = opt(None, "camera pairs: one given transition plane (fractional plane index) "
                                         "for every pixel instead of the estimated map; none: estimated", lo=0.0)
    channel_intensity_ratio: float | None = opt(None, "channel pairs: a given brightness ratio b / a instead of "
                                                "estimating it; none: estimated", lo=1e-6)
    channel_transition_column: float | None = opt(None, "channel pairs: one given transition column (fractional "
                                                  "column index) instead of the estimated map; none: estimated",
                                                  lo=0.0)
    channel_swapped_cameras: tuple[int, ...] = opt((), "cameras whose channel pair is lit the other way round: "
                                                   "the pair's second channel from the low-x side of their frame "
                                                   "(MATLAB leftFlags 0)", lo=0, hi=15, matlab="leftFlags")
    intensity_correction: bool = opt(True, "scale the dimmer camera to the brighter one in the mask overlap")
    mask_fusion_mode: str = opt("overlap", "which cameras' foreground gives the transition plane: both "
                                "(overlap), either (union), or one", choices=("overlap", "union", "reference",
                                                                               "moving"), matlab="maskFusionMode")
    mask_padding: int = opt(4, "pixels trimmed from the rim of the foreground region, toward the centre, "
                            "before the transition map is filled", lo=0, matlab="padding")
    mask_min_object_size: float = opt(0.0, "drop foreground regions smaller than this fraction of the frame",
                                      lo=0.0, hi=0.99, matlab="bwareaopen")
    median_filter_range: int = opt(9, "median filter of the transition-plane map, px", lo=1,
                                   matlab="medianFilterRange")
    transition_smoothing_px: float = opt(4.0, "Gaussian smoothing of the transition-plane map, px", lo=0.0)
    precise_gauss: bool = opt(True, "exact Gaussian smoothing of the transition-plane map (else a faster one "
                              "truncated at 2 sigma)", matlab="preciseGauss")
    slab_size_cameras: int = opt(0, "planes of the camera stacks that one fusion task aligns and blends at once "
                                 "(bounds a task's memory); 0: the output shard depth", lo=0, matlab="slabSize")
    diagnostics: bool = opt(True, "write diagnostic PNGs (needs matplotlib)")
    figures: tuple[str, ...] = opt(("registration", "transitionPlane", "blendingWeights", "projections",
                                    "channelTransition"),
                                   "which diagnostic PNGs to draw when diagnostics is on (each costs 40-120 ms of "
                                   "CPU per output)",
                                   choices=("registration", "transitionPlane", "blendingWeights", "projections",
                                            "channelTransition"))
    figures_every: int = opt(10, "draw the diagnostic PNGs of every Nth timepoint only (timepoints 0, N, 2N, ...; "
                             "1: every timepoint); on small frames the figures of every timepoint would be a "
                             "sixth of a run's CPU", lo=1)
    # -- time-lapse (two-pass) fusion: isoview_dask.pipeline.timelapse, isoview_dask.temporal --
    temporal_smoothing: bool = opt(True, "two-pass fusion: smooth per-timepoint parameters over time with "
                                   "robust local quadratic regression (MATLAB smooth(..., 'rloess'))",
                                   matlab="smoothing")
    smoothing_window: int = opt(20, "rloess span in timepoints (MATLAB convention: the whole series when "
                                "longer than it)", lo=1, matlab="smoothingRange")
    static: bool = opt(False, "two-pass fusion: one value per parameter for every timepoint (the mean of "
                       "the smoothed series)", matlab="staticFlag")
    generate_lookup_table: bool = opt(True, "two-pass fusion: write the lookup table (timepoint -> parameters "
                                      "used) as CSV and the parameter plots (its JSON is always written)",
                                      matlab="generateLUT")
    lut_averaging: tuple[int, int, int] = opt((0, 0, 0), "half-widths (timepoints) of sliding windows applied "
                                              "after rloess to offsets, angles and intensity factors; MATLAB "
                                              "used 10, 10, 5 (biased at the series ends under drift)", lo=0,
                                              matlab="averagingRange")
    lut_averaging_method: str = opt("mean", "statistic of those sliding windows", choices=("mean", "median"),
                                    matlab="averagingMode")
    min_registration_confidence: float = opt(0.5, "two-pass fusion: a timepoint whose registration "
                                             "confidence is lower is left out before smoothing and gets the "
                                             "smoothed values", lo=0.0, hi=1.0)
    transition_median_window: int = opt(0, "two-pass fusion: half-width (timepoints) of a median filter of "
                                        "the transition-plane maps over time (0: each timepoint's own map)",
                                        lo=0)
    estimate_every: int = opt(1, "two-pass fusion: estimate every Nth timepoint of each specimen (and its "
                              "last); the others are fused with the smoothed values interpolated linearly between "
                              "the estimated timepoints around them and the nearest estimated transition map "
                              "(1: every timepoint)", lo=1)
    # -- end of time-lapse fields --

    def validate(self):
        for pair in self.camera_pairs:
            if len(set(pair)) != 2:
                raise ConfigError(f"fusion.camera_pairs: {list(pair)} must name two different cameras")
        seen: set[int] = set()
        for pair in self.channel_pairs:
            if len(set(pair)) != 2:
                raise ConfigError(f"fusion.channel_pairs: {list(pair)} must name two different channels")
            if seen & set(pair):
                raise ConfigError(f"fusion.channel_pairs: channel {sorted(seen & set(pair))[0]} is in more than "
                                  "one pair")
            seen |= set(pair)


#: Output figures of the isotropic stage (:mod:`isoview_dask.pipeline.isotropic`).
ISOTROPIC_FIGURES = ("slices", "checkerboard", "beads")


@dataclass(frozen=True)
class IsotropicConfig(Section):
    """The isotropic four-view reconstruction: VW90 registered onto VW00 in 3-D, both deconvolved into one volume.

    VW00 and VW90 are the pair-fused views of two orthogonal camera pairs (``views``); the output is one
    volume on an isotropic grid in VW00's frame (:mod:`isoview_dask.pipeline.isotropic`).
    """

    _name: typing.ClassVar[str] = "isotropic"
    enable: bool = opt(False, "run the isotropic reconstruction after fusion in 'run', 'timelapse' and 'rerun' "
                       "('isoview-dask isotropic OUT' runs it alone on fused outputs)")
    views: tuple[tuple[int, int], ...] | None = opt(None, "the camera pairs whose fused views are VW00 and VW90 "
                                                    "(e.g. 0,1:2,3); not set: the first and second of "
                                                    "fusion.camera_pairs", lo=0, hi=15)
    method: str = opt("deconvolution", "multi-view Richardson-Lucy deconvolution, or the content-weighted "
                      "average of the two views (fast, no deconvolution)", choices=("deconvolution", "average"))
    iterations: int = opt(10, "Richardson-Lucy iterations", lo=0, hi=1000)
    update: str = opt("simultaneous", "Richardson-Lucy update: both views at once (weighted), or one after the "
                      "other (faster sharpening, noise amplified sooner)", choices=("simultaneous", "sequential"))
    regularization: float = opt(0.03, "total-variation regularisation weight of the deconvolution (0: none)",
                                lo=0.0, hi=1.0)
    voxel_um: float | None = opt(None, "edge of the cubic output voxel, µm; not set: VW00's lateral pixel",
                                 lo=0.0)
    psf_fwhm_um: tuple[float, float] | None = opt(None, "Gaussian PSF of each view in its own frame: lateral, "
                                                  "axial FWHM (µm); not set: from the recording's XML when it "
                                                  "gives the detection NA and wavelength (lateral; the axial "
                                                  "from a light-sheet thickness attribute), else 0.77, 3.35",
                                                  lo=0.0)
    psf: str | None = opt(None, "a measured PSF (TIFF volume, Z, Y, X, in a view's own frame, e.g. a bead "
                          "image) instead of the Gaussian, with psf_voxel_um; or 'beads': the Gaussian's FWHM "
                          "measured on the beads both fused views show (the XML or default values where fewer "
                          "than 5 are found)")
    psf_voxel_um: tuple[float, float, float] | None = opt(None, "voxel size (z, y, x) of the psf TIFF, µm",
                                                          lo=0.0)
    target_fwhm_um: float | None = opt(None, "Gaussian PSFs: deconvolve down to this isotropic FWHM (µm) only; "
                                       "not set: the lateral FWHM (the resolution the views have); 0: full "
                                       "deconvolution", lo=0.0)
    orientation: str | None = opt(None, "VW90's axes (z, y, x) in VW00's terms, e.g. +x,+y,+z (VW90's z is "
                                  "VW00's x); not set: searched among the 32 signed axis permutations")
    fit: str = opt("rigid", "fine registration model after the translation", choices=("rigid", "affine",
                                                                                     "translation"))
    min_confidence: float = opt(0.5, "a registration whose confidence (correlation of the cross-blurred views) "
                                "is lower is not used: the previous timepoint's transform is, or else the "
                                "translation-only one", lo=0.0, hi=1.0)
    registration_voxel_um: float | None = opt(None, "voxel of the registration level, µm; not set: the lateral "
                                              "pixel, coarser on large volumes", lo=0.0)
    weight_sigma_um: float = opt(3.0, "smoothing of the per-voxel view weights (local contrast), µm; about a "
                                 "cell radius", lo=0.0)
    block: tuple[int, int, int] | None = opt(None, "output voxels (Z, Y, X) one task reconstructs (with its "
                                             "halo); not set: the largest divisor of the output shard within "
                                             "the task memory budget; a given block is rounded to a divisor of "
                                             "the shard", lo=8)
    halo_factor: float = opt(1.5, "halo of a block in PSF half-widths", lo=0.5, hi=10.0)
    dtype: str = opt("float32", "output data type; uint16: scaled (the scale and the clipped fraction are "
                     "recorded)", choices=("float32", "uint16"))
    device: str = opt("cpu", "where blocks are deconvolved: cpu, gpu (CuPy) or auto (gpu when available)",
                      choices=("cpu", "gpu", "auto"))
    figures: tuple[str, ...] = opt(ISOTROPIC_FIGURES, "diagnostic PNGs: orthogonal slices of VW00 upsampled, "
                                   "VW90 mapped and the result; a VW00 / VW90 checkerboard; bead FWHM "
                                   "(when beads are found); empty: none", choices=ISOTROPIC_FIGURES)

    def validate(self):
        if self.views is not None:
            if len(self.views) != 2:
                raise ConfigError(f"isotropic.views: expected two camera pairs (VW00, VW90), got "
                                  f"{[list(v) for v in self.views]}")
            if len({c for pair in self.views for c in pair}) != 4:
                raise ConfigError(f"isotropic.views: {[list(v) for v in self.views]} must name four different "
                                  "cameras")
        for name in ("voxel_um", "registration_voxel_um"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"isotropic.{name}: {value!r} must be above 0 µm")
        if self.psf_fwhm_um is not None and min(self.psf_fwhm_um) <= 0:
            raise ConfigError(f"isotropic.psf_fwhm_um: {list(self.psf_fwhm_um)} must be two FWHM above 0 µm "
                              "(lateral, axial)")
        if self.psf_voxel_um is not None and min(self.psf_voxel_um) <= 0:
            raise ConfigError(f"isotropic.psf_voxel_um: {list(self.psf_voxel_um)} must be three sizes above 0 µm")
        if self.psf is not None and self.psf != "beads" and self.psf_voxel_um is None:
            raise ConfigError("isotropic.psf_voxel_um: needed with isotropic.psf (the voxel size, z, y, x in µm, "
                              "of the PSF volume)")
        if self.orientation is not None:
            from .isotropic.geometry import ORIENTATIONS
            key = self.orientation.replace(" ", "")
            if key not in ORIENTATIONS:
                raise ConfigError(f"isotropic.orientation: {self.orientation!r} is not one of the signed axis "
                                  "permutations with VW90's z along VW00's y or x, e.g. '+x,+y,+z' or "
                                  f"'-y,+z,+x'; choices: {', '.join(sorted(ORIENTATIONS))}")
            object.__setattr__(self, "orientation", key)


SECTIONS = {"input": InputConfig, "correction": CorrectionConfig, "fusion": FusionConfig, "output": OutputConfig,
            "isotropic": IsotropicConfig}


@dataclass(frozen=True)
class ProcessingConfig:
    """The whole configuration: one validated object, sections as attributes.

    Build with keyword sections (``ProcessingConfig(correction={"segment_threshold": 0.3})``),
    from flat flags (:meth:`from_flags`, e.g. ``correction_segment_threshold=0.3``),
    or from a file (:meth:`load`). The keyword names of the original ``isoview`` port are accepted too
    (``input_dir``, ``output_dir``, ``specimen``, ``timepoints``, ``cameras``, ``channels``,
    ``fusion_enable`` and flat ``fusion_*`` / ``correction_*`` flags; see :data:`LEGACY_KEYS`).
    ``input_dir`` and ``output_dir`` are kept as attributes (the folders :func:`isoview_dask.fuse` reads
    and writes when none are given); they are not part of :meth:`to_dict` or any fingerprint.
    """

    input: InputConfig = field(default_factory=InputConfig)
    correction: CorrectionConfig = field(default_factory=CorrectionConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    isotropic: IsotropicConfig = field(default_factory=IsotropicConfig)
    input_dir: str | None = None
    output_dir: str | None = None
    fusion_enable: bool = True

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, Mapping) or value is None:
                object.__setattr__(self, name, cls.from_dict(value))
            elif not isinstance(value, cls):
                raise ConfigError(f"{name}: expected a table, got {value!r}")
        cams = self.input.cameras
        if cams is not None:
            for cam in self.correction.camera:
                if cam not in cams:
                    raise ConfigError(f"correction.camera.{cam}: camera {cam} is not among input.cameras {list(cams)}")

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "ProcessingConfig":
        data = dict(data or {})
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
        return cls(**{k: SECTIONS[k].from_dict(v) for k, v in data.items()})

    @classmethod
    def from_flags(cls, base: "ProcessingConfig | None" = None, **flags) -> "ProcessingConfig":
        """Override ``base`` with flat flags ``<section>_<key>=value`` (None values are ignored)."""
        base = base or cls()
        data = base.to_dict()
        for flag, value in flags.items():
            if value is None:
                continue
            section, key = _split_flag(flag)
            data.setdefault(section, {})[key] = value
        return dataclasses.replace(cls.from_dict(data), input_dir=base.input_dir, output_dir=base.output_dir,
                                   fusion_enable=base.fusion_enable)

    @classmethod
    def load(cls, path: str | Path) -> "ProcessingConfig":
        """Read a TOML (``.toml``) or JSON (``.json``) file."""
        path = Path(path)
        if not path.is_file():
            from .errors import InputNotFoundError
            raise InputNotFoundError(f"{path}: configuration file does not exist")
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(path.read_text())
            else:
                data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot parse ({exc})") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    # -- output -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    def to_toml(self) -> str:
        import tomli_w
        return tomli_w.dumps(self.to_dict())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() if path.suffix.lower() == ".json" else self.to_toml())
        return path

    def replace(self, **flags) -> "ProcessingConfig":
        """A copy with flat flags overridden, e.g. ``cfg.replace(output_codec="gzip")``."""
        return ProcessingConfig.from_flags(self, **flags)

    def camera_options(self, camera: int) -> CameraOptions:
        return self.correction.camera.get(camera, CameraOptions())


def _split_flag(flag: str) -> tuple[str, str]:
    for section in SECTIONS:
        if flag.startswith(section + "_") and any(f.name == flag[len(section) + 1:] for f in fields(SECTIONS[section])):
            return section, flag[len(section) + 1:]
    raise ConfigError(f"unknown option {flag!r}{did_you_mean(flag, [name for name, _, _ in all_flags()])}")


def did_you_mean(name: str, known) -> str:
    """``"; did you mean 'x'?"`` for the closest known names (empty when none is close)."""
    import difflib
    close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


#: Keywords of the original ``isoview`` port's ``ProcessingConfig`` and what they become here.
LEGACY_KEYS = {"input_dir": "input_dir", "output_dir": "output_dir", "specimen": "input_specimens",
               "specimens": "input_specimens", "timepoints": "input_timepoints", "cameras": "input_cameras",
               "channels": "input_channels", "fusion_enable": "fusion_enable"}


def _legacy_arguments(legacy: Mapping[str, Any]) -> tuple[dict, dict]:
    """Split the original port's keywords into ProcessingConfig attributes and flat flags."""
    attributes, flags = {}, {}
    known = [name for name, _, _ in all_flags()] + list(LEGACY_KEYS)
    for key, value in legacy.items():
        target = LEGACY_KEYS.get(key, key)
        if target in ("input_dir", "output_dir"):
            attributes[target] = None if value is None else str(value)
        elif target == "fusion_enable":
            attributes[target] = bool(value)
        elif target.startswith("input_") and target[6:] in ("specimens", "timepoints", "cameras", "channels"):
            flags[target] = None if value is None else ([int(value)] if isinstance(value, int) else list(value))
        else:
            try:
                _split_flag(target)
            except ConfigError:
                raise ConfigError(f"ProcessingConfig: unexpected keyword {key!r}{did_you_mean(key, known)}") from None
            flags[target] = [list(v) for v in value] if key == "fusion_camera_pairs" else value
    return attributes, flags


def _accept_legacy_keywords(cls):
    """Wrap the dataclass ``__init__`` so that the original port's keywords work (see :data:`LEGACY_KEYS`)."""
    init = cls.__init__

    def __init__(self, input=None, correction=None, fusion=None, output=None, isotropic=None, input_dir=None,
                 output_dir=None, fusion_enable=True, **legacy):
        sections = dict(input=input, correction=correction, fusion=fusion, output=output, isotropic=isotropic)
        if legacy:
            attributes, flags = _legacy_arguments(legacy)
            built = cls.from_flags(cls(**{k: v for k, v in sections.items() if v is not None}), **flags)
            sections = {name: getattr(built, name) for name in SECTIONS}
            input_dir = attributes.get("input_dir", input_dir)
            output_dir = attributes.get("output_dir", output_dir)
            fusion_enable = attributes.get("fusion_enable", fusion_enable)
        init(self, **{k: v for k, v in sections.items() if v is not None}, input_dir=input_dir,
             output_dir=output_dir, fusion_enable=fusion_enable)

    __init__.__doc__ = init.__doc__
    cls.__init__ = __init__
    return cls


ProcessingConfig = _accept_legacy_keywords(ProcessingConfig)


def all_flags() -> list[tuple[str, dataclasses.Field, type]]:
    """Every flat flag: (flag name, field, section class)."""
    return [(f"{name}_{f.name}", f, cls) for name, cls in SECTIONS.items() for f in fields(cls)]


def template() -> str:
    """A commented TOML template with every option at its default."""
    lines = ["# isoview-dask processing configuration. Every option with its default.",
             "# Flag names on the command line are --<section>-<key>, e.g. --correction-segment-threshold.", ""]
    defaults = ProcessingConfig().to_dict()
    import tomli_w
    for name, cls in SECTIONS.items():
        lines.append(f"[{name}]")
        for f in fields(cls):
            meta = f.metadata
            note = meta["help"] + (f" (MATLAB: {meta['matlab']})" if meta.get("matlab") else "")
            if meta.get("choices"):
                note += f"; one of {list(meta['choices'])}"
            lines.append(f"# {note}")
            if f.name in defaults[name] and not isinstance(defaults[name][f.name], dict):
                lines.append(tomli_w.dumps({f.name: defaults[name][f.name]}).strip())
            elif f.name == "camera":
                lines.append("# [correction.camera.1]\n# rotation = 0\n# flip_h = true")
            else:
                lines.append(f"# {f.name} = ...   (default: not set)")
        lines.append("")
    return "\n".join(lines)


def matlab_table() -> str:
    """Markdown table: MATLAB option -> flag -> meaning (for the README)."""
    rows = ["| MATLAB | flag | meaning | default |", "|---|---|---|---|"]
    defaults = ProcessingConfig().to_dict()
    for flag, f, cls in all_flags():
        matlab = f.metadata.get("matlab")
        if not matlab:
            continue
        section = flag.split("_", 1)[0]
        default = json.dumps(defaults[section][f.name]) if f.name in defaults[section] else "not set"
        rows.append(f"| `{matlab}` | `{flag}` | {f.metadata['help']} | `{default}` |")
    return "\n".join(rows)
