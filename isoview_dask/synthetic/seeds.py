"""Random streams of the synthetic generator.

Every random quantity is drawn from its own generator, seeded by the spec's
``seed``, a stream identifier naming what it is for, and whatever else
locates it (camera, timepoint, plane). Nothing depends on the order in which
things are rendered, so the bytes are the same whatever the slab size,
scheduler or number of workers.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "S_BEADS", "S_DARK", "S_DEAD", "S_DEBRIS", "S_DRIFT", "S_GAIN", "S_NOISE", "S_OFFSET", "S_ROTATION",
    "S_SPECIMEN",
    "rng",
]

# stream identifiers (part of the seed; changing one changes the data)
S_OFFSET, S_ROTATION, S_GAIN, S_DRIFT, S_SPECIMEN, S_DARK, S_DEAD, S_NOISE, S_DEBRIS = range(1, 10)
S_BEADS = 10


def rng(*keys: int) -> np.random.Generator:
    """A generator seeded by the integers ``keys`` (SFC64 bit generator)."""
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence([int(k) for k in keys])))
