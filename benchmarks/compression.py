"""The compression study as a benchmark script: a thin wrapper of ``isoview-dask bench compression``.

All the work is done by :mod:`isoview_dask.bench` (the same code as the
command); this script only changes the defaults to the benchmark folder's:
input ``synthetic:64x2048x2048`` (generated once and reused), results in
``benchmarks/results`` (``compression.json``, ``compression.md``,
``compression-ratio-vs-write.png``, ``compression-ratio-vs-read.png``),
scratch space in ``benchmarks/results/work``.

    python benchmarks/compression.py                              # the full matrix, 2 workers
    python benchmarks/compression.py synthetic:16x1024x1024 --repeats 1
    python benchmarks/compression.py data/SPM00_TM000000_CM00_CHN00.klb --codecs klb blosc-zstd-5
    python benchmarks/compression.py --help
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# This file's name would shadow the standard library's ``compression`` package
# (Python 3.14+) for everything imported below, since Python puts the script's
# folder first on sys.path; nothing here needs that folder, so drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import argparse  # noqa: E402

from isoview_dask.bench import add_compression_arguments, compression_command  # noqa: E402

RESULTS = HERE / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_compression_arguments(parser, default_input="synthetic:64x2048x2048", default_out=str(RESULTS),
                              default_workdir=str(RESULTS / "work"))
    return compression_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
