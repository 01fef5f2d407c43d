"""How often two sources of labels agree, with a confidence interval: the one figure the dataset card, the
policy evaluation and the review page's agreement page all report."""

from __future__ import annotations

import math
from typing import Any


def agreement(outcomes: list[bool], z: float = 1.96) -> dict[str, Any] | None:
    """Share of agreements with its 95% Wilson score interval; None without data."""
    n = len(outcomes)
    if n == 0:
        return None
    p = sum(outcomes) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"n": n, "agreement": p, "ci95": [max(0.0, centre - half), min(1.0, centre + half)]}
