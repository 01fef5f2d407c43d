"""Routing about 10% of the judged pairs to people, chosen so that their labels do the most good.

The budget is `fraction` of all pairs (rounded). It is filled in this order:
1. every failed judgment (parse or backend error): it has no usable label, so it always goes,
   even past the budget;
2. a random audit sample of `audit_fraction` of the pairs, drawn uniformly (seeded) among the
   judged ones regardless of confidence, so that comparing its human labels with the judge's
   measures the judge without bias;
3. the least confident of the rest, until the budget is used (ties broken by pair id).
The same judgments and seed always give the same decisions.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from rlaif.schema import Judgment, Record, ReviewReason, content_id

Decision = Literal["review", "judge"]


class RoutingDecision(Record):
    """Where a judged pair goes: to people (with the reason) or straight into the dataset with the judge's label."""

    pair_id: str
    judgment_id: str
    decision: Decision
    reason: ReviewReason | None = None
    confidence: float | None = None


def route_for_review(
    judgments: Sequence[Judgment], fraction: float = 0.10, audit_fraction: float = 0.03, seed: int = 0
) -> list[RoutingDecision]:
    """One decision per judgment, in the order given."""
    total = len(judgments)
    budget = round(fraction * total)
    reasons: dict[str, ReviewReason] = {}
    for judgment in judgments:
        if judgment.status != "ok":
            reasons[judgment.id] = "failed"
    judged = sorted((j for j in judgments if j.status == "ok"), key=lambda j: j.id)
    audit_size = min(round(audit_fraction * total), len(judged))
    rng = random.Random(content_id("audit", seed, total))
    for judgment in rng.sample(judged, audit_size):
        reasons[judgment.id] = "audit"
    remaining = sorted(
        (j for j in judged if j.id not in reasons),
        key=lambda j: (j.confidence if j.confidence is not None else 0, j.id),
    )
    for judgment in remaining[: max(0, budget - len(reasons))]:
        reasons[judgment.id] = "low_confidence"
    return [
        RoutingDecision(
            pair_id=j.pair_id,
            judgment_id=j.id,
            decision="review" if j.id in reasons else "judge",
            reason=reasons.get(j.id),
            confidence=j.confidence,
        )
        for j in judgments
    ]


def routing_counts(decisions: Sequence[RoutingDecision]) -> dict[str, int]:
    """How many pairs went to review for each reason."""
    return dict(Counter(d.reason for d in decisions if d.reason is not None))
