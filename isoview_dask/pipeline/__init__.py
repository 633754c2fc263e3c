"""Wiring algorithms to files: output names, per-volume graphs, atomic commits, resumable stages.

Paths live here (and in the CLI), never in the algorithm modules. Each stage
builds lazy graphs per output volume, computes them on the active cluster
with a progress bar, renames each output when complete, and writes a
completion record last, so a rerun skips finished volumes and redoes the rest.
"""

from .common import (StageSummary, convert_dataset, mask_of_image, output_path, segmentation_mask_path,
                     timepoint_dir, volume_stem, write_json)
from .correct import correct_dataset, correct_view
from .fuse import (ChannelFusedView, estimate_channels, estimate_pair, find_corrected, fuse_channels,
                   fuse_dataset, fuse_pair)
from .isotropic import isotropic_dataset
from .run import process_dataset
from .timelapse import estimate_timepoints, parameter_table, process_timelapse, smooth_and_fuse

__all__ = ["ChannelFusedView", "StageSummary", "convert_dataset", "correct_dataset", "correct_view",
           "estimate_channels", "estimate_pair", "estimate_timepoints", "find_corrected", "fuse_channels",
           "fuse_dataset", "fuse_pair", "isotropic_dataset", "mask_of_image", "output_path", "parameter_table",
           "process_dataset", "process_timelapse", "segmentation_mask_path", "smooth_and_fuse",
           "timepoint_dir", "volume_stem", "write_json"]
