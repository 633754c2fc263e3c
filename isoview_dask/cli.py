"""The ``isoview-dask`` command.

Subcommands: ``info`` (what is in a recording), ``synth`` (a synthetic
recording with ground truth), ``convert`` (raw -> sharded zarr/KLB/TIFF),
``timelapse`` / ``run --two-pass`` (fusion with time-smoothed parameters),
``isotropic`` (the four-view isotropic reconstruction of fused views),
``params`` (the parameter table) and ``demo`` (all of it on a generated
dataset, on a local cluster). Errors the
user can fix (bad paths, bad files, existing outputs) are printed as one
line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from .errors import IsoviewError
from .provenance import command_line

log = logging.getLogger("isoview_dask")


def parse_index_list(text: str | None) -> list[int] | None:
    """Parse ``"0-3,7,9-10"`` into ``[0, 1, 2, 3, 7, 9, 10]``; None or ``"all"`` selects everything."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return sorted(set(out))


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """Parse ``"8,256,256"`` (or ``8x256x256``) into a tuple; ``"none"`` gives ``()``."""
    if text is None:
        return None
    if text.strip().lower() in ("none", "no", "0"):
        return ()
    return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())


def _add_cluster_options(p: argparse.ArgumentParser, full: bool = True) -> None:
    # Dest names match isoview_dask.cluster.ClusterSpec fields (see _cluster).
    g = p.add_argument_group("cluster", "where to run: a local cluster (default), a batch system through "
                                        "dask-jobqueue, a running scheduler, or no cluster")
    g.add_argument("--cluster", choices=["local", "slurm", "pbs", "lsf", "sge", "none"], default=None,
                   help="cluster to start (default local; 'none' is --no-cluster)")
    g.add_argument("--scheduler", metavar="ADDRESS", help="address of a running dask scheduler (tcp://host:port)")
    g.add_argument("--workers", type=int, metavar="N", help="local workers (default: one per core)")
    g.add_argument("--threads", type=int, metavar="N", help="threads per local worker (default 1)")
    g.add_argument("--memory-limit", default="auto", metavar="SIZE",
                   help="memory limit per local worker, e.g. 4GiB (default auto: the machine's share)")
    g.add_argument("--no-cluster", action="store_true", help="run on dask's threaded scheduler in this process")
    g.add_argument("--dashboard-address", metavar="[HOST]:PORT",
                   help="where the dashboard is served (local default: a free port on 127.0.0.1, this machine "
                        "only; batch default :8787)")
    g.add_argument("--retries", type=int, metavar="N", help="retries of a failing task (default 2)")
    g.add_argument("--malloc-trim", action="store_true",
                   help="keep distributed's MALLOC_TRIM_THRESHOLD_=65536 in the workers (memory back to the OS "
                        "at once, ~2.4x slower zarr shard writes); default: glibc keeps large buffers")
    g.add_argument("--performance-report", metavar="FILE",
                   help="write dask's performance report (task stream, profile, workers) as HTML")
    b = p.add_argument_group("batch jobs", "with --cluster slurm|pbs|lsf|sge; an option not given keeps its "
                                           "value from dask's config (~/.config/dask/jobqueue.yaml)")
    if not full:  # parsed as always, listed only by --help-all
        b = _Hidden(b)
    b.add_argument("--queue", help="queue / partition")
    b.add_argument("--account", help="account (project on LSF and SGE)")
    b.add_argument("--cores", type=int, help="cores per job")
    b.add_argument("--memory", help="memory per job, e.g. 16GiB")
    b.add_argument("--processes", dest="job_processes", type=int, metavar="N", help="worker processes per job")
    b.add_argument("--walltime", help="wall time per job, e.g. 01:00:00")
    b.add_argument("--jobs", type=int, metavar="N", help="number of jobs (default 1; or --adapt-min/--adapt-max)")
    b.add_argument("--adapt-min", dest="minimum_jobs", type=int, metavar="N", help="adaptive: at least N jobs")
    b.add_argument("--adapt-max", dest="maximum_jobs", type=int, metavar="N", help="adaptive: at most N jobs")
    b.add_argument("--job-extra", dest="job_extra_directives", action="append", default=[], metavar="DIRECTIVE",
                   help="extra job header directive, e.g. --job-extra=--qos=short (repeatable)")
    b.add_argument("--job-skip", dest="job_directives_skip", action="append", default=[], metavar="TEXT",
                   help="drop generated header lines containing TEXT, e.g. --job-skip=--mem (repeatable)")
    b.add_argument("--job-prologue", dest="job_script_prologue", action="append", default=[], metavar="COMMAND",
                   help="shell command run in the job before the worker starts (repeatable)")
    b.add_argument("--interface", help="network interface of workers and scheduler, e.g. ib0")
    b.add_argument("--scheduler-host", help="address the scheduler binds to, e.g. the login node's IP")
    b.add_argument("--job-log-dir", dest="log_directory", metavar="DIR", help="where the jobs' output goes")
    b.add_argument("--job-name", help="name of the worker jobs in the queue (default dask-worker)")


class _Hidden:
    """An argument group whose options parse as usual but are left out of the help."""

    def __init__(self, group):
        self.group = group
        group.title, group.description = None, None

    def add_argument(self, *args, **kwargs):
        kwargs["help"] = argparse.SUPPRESS
        return self.group.add_argument(*args, **kwargs)


def _add_selection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("selection")
    g.add_argument("--specimens", metavar="LIST", help="e.g. 0 or 0,1 (default all)")
    g.add_argument("--timepoints", metavar="LIST", help="e.g. 0-10,15 (default all)")
    g.add_argument("--cameras", metavar="LIST", help="e.g. 0,1 (default all)")
    g.add_argument("--channels", metavar="LIST", help="e.g. 0 (default all)")


def _add_zarr_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--format", dest="fmt", choices=["zarr", "klb", "tif"], default="zarr")
    g.add_argument("--codec", default="blosc-zstd",
                   help="zarr codec: blosc-zstd, blosc-lz4, blosc-lz4hc, blosc-zlib, zstd, gzip, bzip2, none "
                        "(optionally :LEVEL[:bitshuffle])")
    g.add_argument("--level", type=int, help="codec level (default: the codec's)")
    g.add_argument("--chunks", help="inner zarr chunk Z,Y,X (default 8,256,256)")
    g.add_argument("--shards", help="zarr shard Z,Y,X (default 32,1024,1024, more planes on smaller frames; "
                                    "'none' for unsharded)")
    g.add_argument("--pyramid", type=int, default=0, help="number of downsampled pyramid levels")
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    g.add_argument("--skip-existing", action="store_true", help="leave existing outputs alone")


#: Selection fields of the [input] section: given as --specimens, --timepoints, ... (ranges allowed).
SELECTION = ("specimens", "timepoints", "cameras", "channels")
#: Configuration sections whose flags each processing command takes.
STAGE_SECTIONS = {"correct": ("input", "correction", "output"), "fuse": ("input", "fusion", "output"),
                  "run": ("input", "correction", "fusion", "output", "isotropic"),
                  "timelapse": ("input", "correction", "fusion", "output", "isotropic"),
                  "isotropic": ("input", "output", "isotropic")}


def _metavar(f, hint) -> str:
    """What a value looks like: the choices, true/false, or the shape of a list."""
    import typing
    choices = f.metadata.get("choices")
    if choices:
        return "{" + ",".join(str(c) for c in choices) + "}"
    import types
    kind = hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: the X
        kind = next(a for a in typing.get_args(hint) if a is not type(None))
    if kind is bool:
        return "{true,false}"
    if typing.get_origin(kind) is tuple:
        inner = typing.get_args(kind)
        if inner and typing.get_origin(inner[0]) is tuple:
            return "A,B:C,D"
        return "N,N,..." if len(inner) == 2 and inner[1] is Ellipsis else ",".join("N" * len(inner))
    return {int: "N", float: "X", str: "TEXT"}.get(kind, "VALUE")


def _short_help(text: str, limit: int = 110) -> str:
    """A help text up to its first semicolon, cut at a word before ``limit`` characters (with an ellipsis)."""
    text = text.split(";", 1)[0]
    if text.count("(") > text.count(")"):  # a parenthesis the semicolon cut open: leave it out
        text = text.rsplit(" (", 1)[0]
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


def _shown_default(value) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        if value and isinstance(value[0], tuple):
            return ":".join(",".join(str(v) for v in item) for item in value) or "none"
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def _add_config_flags(p: argparse.ArgumentParser, sections: Sequence[str], full: bool,
                      skip: Sequence[str] = ()) -> None:
    """One ``--<section>-<key>`` option per configuration field of ``sections`` (see ``isoview-dask init``).

    Each shows its allowed values (metavar) and default; ``full`` gives the whole help text, else its first
    clause. ``skip`` names flags (``<section>_<field>``) the command has no use for.
    """
    import typing

    from .config import ProcessingConfig, all_flags
    p.add_argument("--config", metavar="FILE", help="TOML or JSON configuration file (options override it)")
    config = ProcessingConfig()
    defaults = {flag: getattr(getattr(config, flag.split("_", 1)[0]), flag.split("_", 1)[1])
                for flag, _, _ in all_flags()}
    groups = {}
    for flag, f, cls in all_flags():
        section = flag.split("_", 1)[0]
        if f.name == "camera" or section not in sections or (section == "input" and f.name in SELECTION) \
                or flag == "output_overwrite" or flag in skip:
            continue  # per-camera tables: configuration file only; selection, --overwrite: their own options
        group = groups.setdefault(section, p.add_argument_group(f"[{section}] options"))
        text = f.metadata.get("help", "")
        hint = typing.get_type_hints(cls)[f.name]
        text = text if full else _short_help(text)
        if "default" not in text:
            text += f" (default {_shown_default(defaults[flag])})"
        group.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None, metavar=_metavar(f, hint),
                           help=text.replace("%", "%%"))


def _config_from_args(args):
    from .config import ProcessingConfig
    base = ProcessingConfig.load(args.config) if getattr(args, "config", None) else ProcessingConfig()
    from .config import all_flags
    flags = {flag: getattr(args, flag) for flag, f, _ in all_flags() if getattr(args, flag, None) is not None}
    for short in ("specimens", "timepoints", "cameras", "channels"):
        value = getattr(args, short, None)
        if value is not None:
            flags[f"input_{short}"] = parse_index_list(value)
    if getattr(args, "overwrite", False):
        flags["output_overwrite"] = True
    return ProcessingConfig.from_flags(base, **flags)


def _stage_parser(sub, name: str, help: str, description: str, *, full: bool = False,
                  source: tuple[str, str] = ("input", "raw recording folder"),
                  out_help: str | None = None) -> argparse.ArgumentParser:
    """A processing command: its source folder, --out, --overwrite, selection, cluster and config options."""
    p = sub.add_parser(name, help=help, description=description, formatter_class=_Formatter,
                       usage=f"isoview-dask {name} {source[0].upper()} {'[--out OUT]' if out_help else '--out OUT'} "
                             "[options]",
                       epilog=None if full else f"Only the first clause of each option's help is shown: "
                                                f"'isoview-dask {name} --help-all' shows all of it, and the batch "
                                                "job options.")
    p.add_argument(source[0], help=source[1])
    if out_help:
        p.add_argument("--out", help=out_help)
    else:
        p.add_argument("--out", required=True, help="output root")
    p.add_argument("--overwrite", action="store_true", help="redo complete outputs too")
    p.add_argument("--allow-out-inside-input", action="store_true",
                   help="accept an output folder inside the input folder")
    p.add_argument("--help-all", action="help", help="the whole help, batch job options included")
    _add_selection(p)
    _add_cluster_options(p, full)
    from .config import TEMPORAL_FIELDS
    # fuse: no two-pass options, and it writes no corrected volumes
    skip = {f"fusion_{n}" for n in TEMPORAL_FIELDS} | {"output_store_corrected"} if name == "fuse" else set()
    if name == "isotropic":  # it is the isotropic stage, on fused volumes
        skip = {"output_store_corrected", "isotropic_enable"}
    _add_config_flags(p, STAGE_SECTIONS[name], full, skip=skip)
    return p


class _Formatter(argparse.HelpFormatter):
    """Help with a wider option column, so most options take one line."""

    def __init__(self, prog, **kwargs):
        kwargs.setdefault("max_help_position", 44)
        kwargs.setdefault("width", 118)
        super().__init__(prog, **kwargs)


def build_parser(full: bool = False) -> argparse.ArgumentParser:
    """The command-line parser; ``full`` gives every option's whole help text (``--help-all``)."""
    from . import __version__
    parser = argparse.ArgumentParser(prog="isoview-dask", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"isoview-dask {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more output: every skipped output listed, INFO log (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="describe a raw recording", description="List the volumes of a recording.")
    p.add_argument("path", help="recording folder (Keller or flat layout)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--allow-truncated", action="store_true", help="accept truncated stacks (whole planes only)")

    p = sub.add_parser("synth", help="generate a synthetic IsoView recording with ground truth",
                       description="Write raw/ (Keller layout), optionally raw_flat/, and truth/ under OUT.")
    p.add_argument("out", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--preset", choices=["tiny", "small", "isotropic", "full"], default="small")
    p.add_argument("--shape", help="Z,Y,X per camera (overrides the preset)")
    p.add_argument("--timepoints", type=int, help="number of timepoints")
    p.add_argument("--layout", choices=["keller", "flat", "both"], help="raw layout(s) to write")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--outlier-timepoint", type=int, help="timepoint whose opposing views are corrupted")
    p.add_argument("--no-truth-volumes", action="store_true", help="write truth.json only (large datasets)")
    p.add_argument("--illumination-channels", metavar="A,B",
                   help="every camera records two channels, A lit from the low-x side of its frame, B from the "
                        "high-x side (SiMView-style; e.g. 0,1)")
    p.add_argument("--illumination-balance", type=float, metavar="RATIO",
                   help="photons of channel B over channel A (default 1)")
    p.add_argument("--sheet-offset", metavar="PLANES",
                   help="channel B's light sheet offset along z in each camera's frame: one value, or CAMERA:VALUE "
                        "pairs (0:1.5,1:-0.8); needs --illumination-channels")
    p.add_argument("--sheet-tilt", metavar="DEGREES",
                   help="channel B's light sheet tilt about x (voxel units, planes per row), as --sheet-offset")
    p.add_argument("--axial-psf-fwhm", type=float, metavar="UM",
                   help="blur every camera along its plane axis by a Gaussian of this FWHM (µm)")
    p.add_argument("--beads", type=int, metavar="N", help="sub-resolution fluorescent beads in the medium")
    p.add_argument("--bead-brightness", type=float, metavar="PHOTONS",
                   help="a bead's peak photons under the lateral PSF (default 3x the brightest nucleus)")
    p.add_argument("--vw90-motion", metavar="AZ,AY,AX,TZ,TY,TX",
                   help="rigid motion of the specimen seen by cameras 2/3: degrees about z, y, x, then µm")
    p.add_argument("--vw90-orientation", choices=["reflection", "rotation"],
                   help="camera 2's columns along +z (reflection, default) or -z (rotation)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("convert", help="convert raw volumes to sharded zarr, KLB or TIFF",
                       description="Write one output per camera view under OUT/SPM##/TM######/.")
    p.add_argument("input", help="raw recording folder")
    p.add_argument("--out", required=True, help="output root")
    _add_zarr_options(p)
    _add_selection(p)
    _add_cluster_options(p)

    _stage_parser(sub, "correct", "correct raw camera volumes (dead pixels, background, masks)",
                  "The MATLAB clusterPT step: for every selected view write the corrected volume, foreground and "
                  "coordinate masks, projections and a statistics JSON under OUT/SPM##/TM######/. Complete "
                  "outputs are skipped on a rerun.", full=full)
    p = _stage_parser(sub, "fuse", "register and blend opposing camera pairs of corrected volumes",
                      "The MATLAB clusterMF step: for every timepoint and camera pair with complete corrected "
                      "volumes, write <stem>.fusedStack.zarr, its parameters JSON and diagnostic PNGs. Complete "
                      "outputs are skipped on a rerun.", source=("corrected", "output root of the correction stage"),
                      out_help="where fused volumes go (default: beside the corrected ones)", full=full)
    p = _stage_parser(sub, "run", "correct then fuse a raw recording",
                      "Correction then fusion, all outputs under OUT/SPM##/TM######/.", full=full)
    p.add_argument("--two-pass", action="store_true",
                   help="time-lapse fusion: estimate every timepoint, smooth over time, then fuse (as 'timelapse')")
    # -- time-lapse: two-pass fusion and the parameter table (isoview_dask.pipeline.timelapse) --
    _stage_parser(sub, "timelapse", "correct, then fuse in two passes with time-smoothed parameters",
                  "Correction; pass 1 estimates registration, intensity and transition planes for every "
                  "timepoint; pass 2 smooths them over time (rloess or static, --fusion-* options), writes lookup "
                  "tables and plots to OUT/SPM##/ and fuses every timepoint with the smoothed values. Every step "
                  "resumes.", full=full)

    # -- isotropic: the four-view reconstruction of fused views (isoview_dask.pipeline.isotropic) --
    p = _stage_parser(sub, "isotropic", "register the orthogonal fused views and reconstruct an isotropic volume",
                      "After 'fuse': for every timepoint with both fused views (VW00 = cameras 0+1, VW90 = 2+3 by "
                      "default, --isotropic-views), register VW90 onto VW00 in 3-D (starting from the previous "
                      "timepoint's transform) and deconvolve both into one isotropic volume: "
                      "<stem>.isotropic.zarr, its JSON, <stem>.isotropicRegistration.json and diagnostic PNGs "
                      "under OUT/SPM##/TM######/. Complete outputs are skipped on a rerun.",
                      source=("fused", "output root of the fusion stage"),
                      out_help="where isotropic volumes go (default: beside the fused ones)", full=full)
    p.add_argument("--smooth", action="store_true",
                   help="smooth the transforms over time first (as 'timelapse'; --config [fusion] "
                        "smoothing_window, static) and reconstruct with them; lookup table in OUT/SPM##/")

    p = sub.add_parser("params", help="print every estimated and used parameter as one table",
                       description="One row per timepoint, camera pair and channel: registration, intensity, "
                                   "transition planes (estimated and used), outlier flags and both cameras' "
                                   "correction statistics.")
    p.add_argument("out", help="output root of the pipeline")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="comma-separated values")
    fmt.add_argument("--json", action="store_true", help="one JSON object per line")
    # -- end of time-lapse commands --

    p = sub.add_parser("bigstitcher", help="write OUT/bigstitcher.xml: the fused views as a BigStitcher dataset",
                       description="Write a SpimData2 XML (BigStitcher, BigDataViewer) beside the OME-Zarr outputs "
                                   "of OUT: one view setup per fused volume (angle 0 for cameras 0+1, 90 for 2+3), "
                                   "its voxel size, timepoints, and registrations carrying the calibration and the "
                                   "views' orientation. Nothing is copied.")
    p.add_argument("out", help="output root of the pipeline")
    p.add_argument("--corrected", action="store_true", help="also list every corrected camera")
    p.add_argument("--xml", help="where the XML goes (default OUT/bigstitcher.xml)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing XML")

    p = sub.add_parser("init", help="write a commented configuration template",
                       description="Write every option with its default and help text as TOML.")
    p.add_argument("path", nargs="?", default="isoview.toml", help="file to write (default isoview.toml)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("demo", help="generate a synthetic recording and process it on a local cluster",
                       description="Generate a small synthetic IsoView recording, start a local dask "
                                   "cluster (dashboard link printed), convert every view to sharded zarr, "
                                   "correct every view and fuse the opposing camera pairs, printing what each "
                                   "step wrote and where.")
    p.add_argument("out", nargs="?", help="folder for the demo (default: a new temporary folder)")
    p.add_argument("--preset", choices=["tiny", "small", "full"], default="small")
    p.add_argument("--overwrite", action="store_true")
    _add_cluster_options(p)

    # -- rerun: redo a recorded run (isoview_dask.provenance) --
    p = sub.add_parser("rerun", help="redo a recorded run (same stage, configuration and input)",
                       description="Every stage appends a run record to OUT/isoview-runs/. Give a record file, "
                                   "or an output root and --index (0 the oldest, -1 the newest; --list shows "
                                   "them), to run that stage again with the recorded configuration and input, "
                                   "into the recorded folder or --out NEW.")
    p.add_argument("record", help="a run record (.json) or an output root")
    p.add_argument("--index", type=int, help="which record of an output root (default -1, the newest)")
    p.add_argument("--list", action="store_true", help="list the output root's run records and exit")
    p.add_argument("--out", help="output root (default: the recorded one)")
    p.add_argument("--input", help="input to use instead of the recorded one")
    p.add_argument("--overwrite", action="store_true", help="redo complete outputs too")
    p.add_argument("--strict", action="store_true",
                   help="fail if an input changed since the recorded run (default: warn)")
    _add_cluster_options(p)
    # -- end of rerun --

    # -- bench: the compression study (isoview_dask.bench) --
    p = sub.add_parser("bench", help="benchmarks (the compression study)",
                       description="Benchmarks that anyone can rerun on their own data and machine.")
    bench_sub = p.add_subparsers(dest="bench_command", required=True)
    from .bench import add_compression_arguments
    add_compression_arguments(bench_sub.add_parser(
        "compression", help="size, ratio and speed of KLB, TIFF and every zarr codec on one volume",
        description="Write one volume with every configuration (KLB via pyklb and via the dask engine, TIFF, "
                    "zarr codecs and levels, sharded and unsharded), read each back in full and plane by plane, "
                    "verify it against the input, and report the medians as JSON, a Markdown table and PNG "
                    "plots in --out."))
    # -- end of bench --
    return parser


def _cluster(args):
    """Context manager yielding the client of the cluster the options describe (None for no cluster)."""
    from .cluster import ClusterSpec, client_context
    kind = "none" if getattr(args, "no_cluster", False) else (getattr(args, "cluster", None) or "local")
    spec = ClusterSpec(cluster=kind, scheduler=args.scheduler, n_workers=args.workers,
                       threads_per_worker=args.threads, memory_limit=args.memory_limit,
                       **{name: getattr(args, name, None) for name in (
                           "queue", "account", "cores", "memory", "job_processes", "walltime", "jobs",
                           "minimum_jobs", "maximum_jobs", "interface", "scheduler_host", "log_directory",
                           "job_name", "dashboard_address", "retries", "performance_report")},
                       **{name: getattr(args, name, None) or [] for name in (
                           "job_extra_directives", "job_directives_skip", "job_script_prologue")},
                       malloc_trim=bool(getattr(args, "malloc_trim", False)))
    return client_context(spec)


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _check_writable(out: Path) -> None:
    """Fail now, before any work, if ``out`` cannot be created or written (nothing is left behind)."""
    from .errors import IsoviewError as Error
    if out.exists() and not out.is_dir():
        raise Error(f"--out {out}: exists and is not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise Error(f"--out {out}: {existing} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".isoview-write-test-"):
            pass
    except OSError as exc:
        raise Error(f"--out {out}: cannot write in {existing} ({exc.strerror or exc})") from None


def _checked_source(args, config=None, attribute: str = "input"):
    """Validate the raw input and the output folder before a cluster starts; returns the opened dataset.

    Refuses an output inside the input folder (its outputs would be scanned as input on the next run)
    unless ``--allow-out-inside-input``.
    """
    from .dataset import open_dataset
    source = Path(getattr(args, attribute))
    dataset = open_dataset(source, allow_truncated=bool(config.input.allow_truncated) if config else False)
    if getattr(args, "out", None):
        out = Path(args.out)
        if _inside(out, source) and not getattr(args, "allow_out_inside_input", False):
            raise IsoviewError(f"--out {out} lies inside the input {source}; choose another folder or pass "
                               "--allow-out-inside-input")
        _check_writable(out)
    return dataset


def _finished(out) -> str:
    """What an interrupted run leaves: the number of complete outputs (completion records) under ``out``."""
    if not out:
        return ""
    records = [p for p in Path(out).glob("SPM*/TM*/*.json")]
    return f"{len(records)} complete output record(s) under {out} are kept; "


#: Failure reasons named when every job of a stage failed.
FIRST_FAILURES = 3


def _all_failed(args, summaries) -> bool:
    """Name the first reasons and the count, on stderr, for each stage whose every job failed.

    A stage that wrote or skipped nothing and failed everything usually fails for one cause (stacks that
    disagree with their XML, a wrong dark frame): the reason belongs on the last lines, not only in
    the log above the progress bar. Returns True when some stage failed entirely.
    """
    any_failed = False
    for summary in summaries:
        if not summary.failed or summary.written or summary.skipped:
            continue
        any_failed = True
        print(f"isoview-dask {args.command}: error: every {summary.stage} job failed ({len(summary.failed)} "
              f"failure(s)); the first:", file=sys.stderr)
        for name, why in list(summary.failed.items())[:FIRST_FAILURES]:
            print(f"  {why if why.startswith(name) else f'{name}: {why}'}", file=sys.stderr)
    return any_failed


def cmd_info(args) -> int:
    from .dataset import open_dataset
    ds = open_dataset(args.path, allow_truncated=args.allow_truncated)
    print(ds.to_json() if args.json else ds.summary_table())
    return 0


def _synth_kwargs(args) -> dict:
    kwargs: dict = {"preset": args.preset}
    if args.shape:
        kwargs["shape"] = parse_shape(args.shape)
    for name in ("timepoints", "layout", "seed", "outlier_timepoint"):
        value = getattr(args, name, None)
        if value is not None:
            kwargs[name] = value
    if getattr(args, "no_truth_volumes", False):
        kwargs["write_truth_volumes"] = False
    if getattr(args, "illumination_channels", None):
        kwargs["illumination_channels"] = _int_list(args.illumination_channels, "--illumination-channels", 2)
    if getattr(args, "illumination_balance", None) is not None:
        kwargs["illumination_balance"] = args.illumination_balance
    for flag, name in (("sheet_offset", "sheet_offset_planes"), ("sheet_tilt", "sheet_tilt_deg")):
        value = getattr(args, flag, None)
        if value:
            kwargs[name] = _per_camera(value, "--" + flag.replace("_", "-"))
    for flag, name in (("axial_psf_fwhm", "axial_psf_fwhm_um"), ("beads", "beads"),
                       ("bead_brightness", "bead_brightness"), ("vw90_orientation", "vw90_orientation")):
        value = getattr(args, flag, None)
        if value is not None:
            kwargs[name] = value
    if getattr(args, "vw90_motion", None):
        kwargs["vw90_motion"] = _float_list(args.vw90_motion, "--vw90-motion", 6)
    return kwargs


def _float_list(text: str, flag: str, count: int) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise IsoviewError(f"{flag}: expected {count} comma-separated numbers, got {text!r}")
    return values


def _int_list(text: str, flag: str, count: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise IsoviewError(f"{flag}: expected {count} comma-separated integers, got {text!r}")
    return values


def _per_camera(text: str, flag: str):
    """One number, or ``camera:value`` pairs separated by commas, as SyntheticSpec takes them."""
    try:
        if ":" not in text:
            return float(text)
        return {int(k): float(v) for k, v in (item.split(":") for item in text.split(","))}
    except ValueError:
        raise IsoviewError(f"{flag}: expected a number or CAMERA:VALUE pairs such as 0:1.5,1:-0.8, "
                           f"got {text!r}") from None


def cmd_synth(args) -> int:
    from .synthetic import SyntheticSpec, generate_dataset
    kwargs = _synth_kwargs(args)
    try:  # check the spec first: its errors name the field and what it expects
        preset = {"tiny": SyntheticSpec.tiny, "small": SyntheticSpec.small, "isotropic": SyntheticSpec.isotropic,
                  "full": SyntheticSpec.full_frame}
        preset[kwargs["preset"]](**{k: v for k, v in kwargs.items() if k != "preset"})
    except ValueError as exc:
        raise IsoviewError(str(exc)) from None
    truth = generate_dataset(args.out, overwrite=args.overwrite, **kwargs)
    print(f"wrote synthetic recording to {args.out} (raw: {truth.raw_dir}, truth: {Path(args.out) / 'truth'})")
    return 0


def cmd_convert(args) -> int:
    from .pipeline import convert_dataset
    cluster = _cluster(args)  # its options are checked first, then the input; then it starts
    dataset = _checked_source(args)
    with cluster:
        summary = convert_dataset(
            dataset, args.out, fmt=args.fmt, codec=args.codec, level=args.level, chunks=parse_shape(args.chunks),
            shards=parse_shape(args.shards), pyramid_levels=args.pyramid,
            specimens=parse_index_list(args.specimens), timepoints=parse_index_list(args.timepoints),
            cameras=parse_index_list(args.cameras), channels=parse_index_list(args.channels),
            overwrite=args.overwrite, skip_existing=args.skip_existing)
    print(summary.report(verbose=args.verbose > 0))
    return 1 if summary.failed else 0


def cmd_correct(args) -> int:
    config = _config_from_args(args)
    cluster = _cluster(args)  # its options are checked first, then the input; then it starts
    dataset = _checked_source(args, config)
    with cluster:  # a local cluster's start imports the pipeline while its workers start
        from .pipeline import correct_dataset
        summary = correct_dataset(dataset, args.out, config)
    print(summary.report(verbose=args.verbose > 0))
    _all_failed(args, [summary])
    return 1 if summary.failed else 0


def cmd_fuse(args) -> int:
    from .errors import InputNotFoundError
    from .pipeline import fuse_dataset, find_corrected
    config = _config_from_args(args)
    if not Path(args.corrected).is_dir():
        raise InputNotFoundError(f"{args.corrected}: no such folder (the output root of 'correct')")
    if not find_corrected(args.corrected):
        raise IsoviewError(f"{args.corrected}: no complete corrected volumes (run 'isoview-dask correct' first)")
    cluster = _cluster(args)
    if args.out:
        _check_writable(Path(args.out))
    with cluster:
        summary = fuse_dataset(args.corrected, args.out, config)
    print(summary.report(verbose=args.verbose > 0))
    _all_failed(args, [summary])
    return 1 if summary.failed else 0


def _nothing_to_do(dataset, out, config) -> bool:
    """True when every output of a ``run`` is already complete (no cluster is then started).

    An output folder without a single correction record has work for sure: the cluster then starts
    at once, and the pipeline is imported while its workers start. Otherwise the run is planned here
    from its completion records (:func:`isoview_dask.pipeline.run.has_work`), which takes well under
    a second.
    """
    if next(Path(out).glob("SPM*/TM*/*.correction.json"), None) is None:
        return False
    from .pipeline.run import has_work
    return not has_work(dataset, out, config)


def cmd_run(args) -> int:
    if getattr(args, "two_pass", False):
        return cmd_timelapse(args)
    import contextlib
    config = _config_from_args(args)
    cluster = _cluster(args)  # its options are checked first, then the input; then it starts
    dataset = _checked_source(args, config)
    if _nothing_to_do(dataset, args.out, config):
        log.info("every output under %s is complete: no cluster started", args.out)
        cluster = contextlib.nullcontext()
    with cluster:  # a local cluster's start imports the pipeline while its workers start
        from .pipeline import process_dataset
        summaries = process_dataset(dataset, args.out, config)
    for summary in summaries.values():
        print(summary.report(verbose=args.verbose > 0))
    _all_failed(args, summaries.values())
    return 1 if any(summary.failed for summary in summaries.values()) else 0


# -- time-lapse commands --
def cmd_timelapse(args) -> int:
    config = _config_from_args(args)
    cluster = _cluster(args)  # its options are checked first, then the input; then it starts
    dataset = _checked_source(args, config)
    with cluster:  # a local cluster's start imports the pipeline while its workers start
        from .pipeline.timelapse import process_timelapse
        summaries = process_timelapse(dataset, args.out, config)
    for summary in summaries.values():
        print(summary.report(verbose=args.verbose > 0))
    _all_failed(args, summaries.values())
    return 1 if any(summary.failed for summary in summaries.values()) else 0


def cmd_isotropic(args) -> int:
    from .errors import InputNotFoundError
    from .pipeline.isotropic import MissingFusedViewError, find_fused, isotropic_dataset
    config = _config_from_args(args)
    if not Path(args.fused).is_dir():
        raise InputNotFoundError(f"{args.fused}: no such folder (the output root of 'fuse')")
    if not find_fused(args.fused):
        raise MissingFusedViewError(f"{args.fused}: no complete fused volumes (*.fusedStack.json with their .zarr); "
                                    "run 'isoview-dask fuse' (or 'run') first")
    cluster = _cluster(args)
    if args.out:
        _check_writable(Path(args.out))
    with cluster:
        summaries = isotropic_dataset(args.fused, args.out, config, smooth=args.smooth)
    for summary in summaries.values():
        print(summary.report(verbose=args.verbose > 0))
    _all_failed(args, summaries.values())
    return 1 if any(summary.failed for summary in summaries.values()) else 0


def cmd_params(args) -> int:
    from .pipeline.timelapse import format_table, parameter_table
    rows = parameter_table(args.out)
    sys.stdout.write(format_table(rows, "csv" if args.csv else "jsonl" if args.json else "text"))
    return 0
# -- end of time-lapse commands --


def cmd_bigstitcher(args) -> int:
    from .bigstitcher import read_bigstitcher, write_bigstitcher
    path = write_bigstitcher(args.out, args.xml, corrected=args.corrected, overwrite=args.overwrite)
    content = read_bigstitcher(path)
    print(f"wrote {path}: {len(content['setups'])} view setup(s) x {len(content['timepoints'])} timepoint(s), "
          f"{len(content['images'])} volume(s)")
    return 0


def cmd_init(args) -> int:
    from .config import template
    from .errors import OutputExistsError
    path = Path(args.path)
    if path.exists() and not args.overwrite:
        raise OutputExistsError(f"{path}: already exists; pass --overwrite to replace it")
    path.write_text(template())
    print(f"wrote {path}")
    return 0


def cmd_demo(args) -> int:
    from .dataset import open_dataset
    from .config import ProcessingConfig
    from .pipeline import convert_dataset, correct_dataset, fuse_dataset
    from .synthetic import generate_dataset

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="isoview-demo-"))
    data = root / "synthetic"
    print(f"1. generating a synthetic IsoView recording ({args.preset}) in {data}")
    truth = generate_dataset(data, preset=args.preset, overwrite=args.overwrite)
    dataset = open_dataset(truth.raw_dir)
    print(dataset.summary_table())
    print("2. starting the cluster")
    with _cluster(args):
        print("3. converting every camera view to sharded zarr (blosc-zstd)")
        converted = convert_dataset(dataset, root / "converted", overwrite=args.overwrite, pyramid_levels=1)
        print(converted.report(verbose=args.verbose > 0))
        print("4. correcting every view: dead pixels, dark frame, segmentation, projections")
        config = ProcessingConfig(output={"overwrite": args.overwrite})
        corrected = correct_dataset(dataset, root / "corrected", config)
        print(corrected.report(verbose=args.verbose > 0))
        print("5. fusing the opposing camera pairs 0+1 and 2+3: registration, intensity matching, blending")
        fused = fuse_dataset(root / "corrected", root / "corrected", config)
        print(fused.report(verbose=args.verbose > 0))
    print(f"\nDone. Raw data: {truth.raw_dir}\nGround truth: {data / 'truth'}\n"
          f"Converted: {root / 'converted'}\nCorrected and fused: {root / 'corrected'}")
    print("\nEstimated against the synthetic truth (camera pairs, every timepoint):")
    for line in demo_against_truth(truth, root / "corrected"):
        print("  " + line)
    print(f"\nLook at it in napari (pip install 'isoview-dask[napari]'):\n  napari --plugin isoview-dask "
          f"{root / 'corrected'}")
    return 1 if (converted.failed or corrected.failed or fused.failed) else 0


def demo_against_truth(truth, out) -> list[str]:
    """One line per fused camera pair and timepoint: the registration's error in pixels and degrees and the
    intensity ratio, each against the synthetic truth.

    Parameters
    ----------
    truth : SyntheticTruth
    out : path
        The folder the fusion wrote to.
    """
    import json

    import numpy as np

    lines = []
    for record_path in sorted(Path(out).glob("SPM*/TM*/*.fusedStack.json")):
        record = json.loads(record_path.read_text())
        pair = (int(record["reference_camera"]), int(record["moving_camera"]))
        t = int(record["timepoint"])
        try:
            true_offset = np.array(truth.offset(pair, t))
        except (StopIteration, ValueError, KeyError):
            continue  # a pair or timepoint the truth does not describe
        estimated = np.array(record["sampling_offset_yx_px"], float)
        error_px = float(np.hypot(*(estimated - true_offset)))
        error_deg = abs(float(record["sampling_rotation_deg"]) - truth.rotation_deg(pair, t))
        ratio = float(record["intensity_ratio_moving_over_reference"])
        lines.append(f"TM{t:06d} CM{pair[0]:02d}+CM{pair[1]:02d}: offset error {error_px:.3f} px, rotation error "
                     f"{error_deg:.3f} deg, intensity ratio {ratio:.3f} (true {truth.gain_ratio(pair):.3f})")
    return lines


# -- bench --
def cmd_bench(args) -> int:
    from .bench import compression_command
    return compression_command(args)
# -- end of bench --


# -- rerun --
def cmd_rerun(args) -> int:
    from .provenance import rerun, runs_table
    if args.list:
        print(runs_table(args.record))
        return 0
    with _cluster(args):
        done = rerun(args.record, index=args.index, out=args.out, source=args.input, overwrite=args.overwrite,
                     strict=args.strict)
    print(done.report())
    return 1 if done.failed else 0
# -- end of rerun --


COMMANDS = {"info": cmd_info, "synth": cmd_synth, "convert": cmd_convert, "correct": cmd_correct,
            "fuse": cmd_fuse, "run": cmd_run, "init": cmd_init, "demo": cmd_demo,
            "timelapse": cmd_timelapse, "params": cmd_params, "bigstitcher": cmd_bigstitcher,
            "isotropic": cmd_isotropic}
COMMANDS["bench"] = cmd_bench  # bench
COMMANDS["rerun"] = cmd_rerun  # rerun


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``isoview-dask``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(full="--help-all" in argv).parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.verbose < 2:  # distributed logs every worker start and stop at INFO
        import distributed  # noqa: F401  (it configures its loggers on import; override after)
        for name in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(logging.WARNING if args.verbose == 0 else logging.INFO)
    import signal
    previous = signal.signal(signal.SIGINT, _interrupted) if _main_thread() else None
    try:
        with command_line(argv):  # run records name the command that made them
            return COMMANDS[args.command](args)
    except IsoviewError as exc:
        print(f"isoview-dask {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"isoview-dask {args.command}: interrupted; {_finished(getattr(args, 'out', None))}"
              "run the same command again to resume (complete outputs are skipped)", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _interrupted(signum, frame):
    """First Ctrl-C: silence the cluster's shutdown chatter, then interrupt (a second one is the default)."""
    import signal
    for name in ("distributed", "tornado", "bokeh", "asyncio", "isoview_dask.pipeline.executor"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise KeyboardInterrupt


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
