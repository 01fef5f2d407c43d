"""Combining judgments: the two orders of one judge, and several judges of an ensemble.

Each order gives p(first shown answer is better). In the A-B order that is p(A); in the B-A order
it is p(B), so p(A) = 1 - p. The combined p(A) is the mean of the two, which cancels a constant
position bias. The orders *disagree* when they prefer different answers (for example a judge that
always picks the first answer shown).

Confidence is |2 p(A) - 1|: 1 when both orders are certain and agree, 0 for a coin flip, for a tie,
or when the orders cancel each other out. It ranks pairs for human review.
"""

from __future__ import annotations

from collections.abc import Sequence

from rlaif.schema import Winner

TIE_MARGIN = 1e-6  # a combined p(A) this close to 0.5 is a tie


def winner_of(p_a: float) -> Winner:
    if p_a > 0.5 + TIE_MARGIN:
        return "a"
    if p_a < 0.5 - TIE_MARGIN:
        return "b"
    return "tie"


def confidence_of(p_a: float) -> float:
    return min(1.0, abs(2.0 * p_a - 1.0))


def combine_orders(p_first_ab: float, p_first_ba: float) -> tuple[float, bool]:
    """Combined p(A) from both orders, and whether the orders disagree."""
    p_a_from_ab = p_first_ab
    p_a_from_ba = 1.0 - p_first_ba
    disagree = winner_of(p_a_from_ab) != winner_of(p_a_from_ba)
    return (p_a_from_ab + p_a_from_ba) / 2.0, disagree


def combine_judges(p_as: Sequence[float]) -> tuple[float, bool]:
    """Mean p(A) of several judges, and whether they prefer different answers."""
    winners = {winner_of(p) for p in p_as}
    return sum(p_as) / len(p_as), len(winners) > 1
