"""The 95% percentile bootstrap interval of a mean: how the project states the uncertainty of a figure.

Used for the policy's win rate and the injection benchmark's difference from its control; seeded, so a
rerun on the same figures gives the same interval.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence

RESAMPLES = 2000


def mean_interval(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the mean over RESAMPLES resamples with replacement."""
    if not values:
        raise ValueError("no values to resample")
    draw = random.Random(seed)
    means = sorted(statistics.fmean(draw.choices(values, k=len(values))) for _ in range(RESAMPLES))
    return means[int(0.025 * RESAMPLES)], means[int(0.975 * RESAMPLES) - 1]
