"""How a pass's time grows with the sessions batched in it (torch-free: the planner reads it)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

BATCHES = (1, 2, 4, 8, 16)  # sessions per pass the batch profile measures


def batch_factor(batch_scale: Sequence[float], batch: int) -> float:
    """Time of a pass of `batch` sessions over a pass of one, interpolated between the measured
    points (`batch_scale[i]` for BATCHES[i]); 1.0 without a batch profile, linear growth beyond
    the largest batch measured."""
    if len(batch_scale) < 2 or batch <= 1:
        return 1.0
    points = list(zip(BATCHES, batch_scale, strict=False))
    for (low, low_f), (high, high_f) in itertools.pairwise(points):
        if batch <= high:
            return low_f + (high_f - low_f) * (batch - low) / (high - low)
    last, last_f = points[-1]
    return last_f * batch / last
