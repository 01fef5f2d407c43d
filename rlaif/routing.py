"""Routing about 10% of the judged pairs to people, chosen so that their labels do the most good.

The budget is `fraction` of all pairs (rounded). It is filled in this order:
1. every failed judgment (parse or backend error): it has no usable label, so it always goes,
   even past the budget;
2. a random audit sample of `audit_fraction` of the pairs, drawn uniformly among the judged ones
   regardless of confidence, so that comparing its human labels with the judge's measures the judge
   without bias: the judgments whose seeded hash is smallest (a seeded random subset);
3. the least confident of the rest, until the budget is used (ties broken by judgment id).
The same judgments and seed always give the same decisions, in any order.

The choice is made in one streaming pass that keeps only the candidates it may still pick (bounded
heaps of at most the budget), so a run of any size is routed without holding its judgments in memory.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from rlaif.schema import Judgment, Record, ReviewReason, content_id

Decision = Literal["review", "judge"]


class RoutingDecision(Record):
    """Where a judged pair goes: to people (with the reason) or straight into the dataset with the judge's label."""

    pair_id: str
    judgment_id: str
    decision: Decision
    reason: ReviewReason | None = None
    confidence: float | None = None


def choose_for_review(
    judgments: Iterable[Judgment], total: int, fraction: float = 0.10, audit_fraction: float = 0.03, seed: int = 0
) -> dict[str, ReviewReason]:
    """The judgments to route (by judgment id) with their reasons, from one pass over `total` judgments."""
    budget = round(fraction * total)
    audit_size = round(audit_fraction * total)
    failed: list[str] = []
    # Bounded heaps of negated keys, so that heap[0] is the largest key kept (the first to give way).
    audit: list[tuple[int, str]] = []  # the smallest seeded hashes
    least_confident: list[tuple[float, int, str]] = []  # the lowest (confidence, id)
    seen = 0
    for judgment in judgments:
        seen += 1
        if judgment.status != "ok":
            failed.append(judgment.id)
            continue
        _keep_smallest(audit, (-int(content_id("audit", seed, judgment.id), 16), judgment.id), audit_size)
        confidence = judgment.confidence if judgment.confidence is not None else 0.0
        _keep_smallest(least_confident, (-confidence, -int(judgment.id, 16), judgment.id), budget)
    if seen != total:
        raise ValueError(f"routing expected {total} judgments, got {seen}")
    reasons: dict[str, ReviewReason] = dict.fromkeys(failed, "failed")
    reasons.update((judgment_id, "audit") for _, judgment_id in audit)
    by_confidence = [judgment_id for *_, judgment_id in sorted(least_confident, reverse=True)]
    remaining = [judgment_id for judgment_id in by_confidence if judgment_id not in reasons]
    for judgment_id in remaining[: max(0, budget - len(reasons))]:
        reasons[judgment_id] = "low_confidence"
    return reasons


def route_for_review(
    judgments: Sequence[Judgment], fraction: float = 0.10, audit_fraction: float = 0.03, seed: int = 0
) -> list[RoutingDecision]:
    """One decision per judgment, in the order given."""
    reasons = choose_for_review(judgments, len(judgments), fraction, audit_fraction, seed)
    return [decision_for(j, reasons) for j in judgments]


def decision_for(judgment: Judgment, reasons: dict[str, ReviewReason]) -> RoutingDecision:
    """The decision for one judgment, given the reasons `choose_for_review` returned."""
    reason = reasons.get(judgment.id)
    return RoutingDecision(
        pair_id=judgment.pair_id,
        judgment_id=judgment.id,
        decision="review" if reason else "judge",
        reason=reason,
        confidence=judgment.confidence,
    )


def routing_counts(decisions: Iterable[RoutingDecision]) -> dict[str, int]:
    """How many pairs went to review for each reason."""
    return dict(Counter(d.reason for d in decisions if d.reason is not None))


def _keep_smallest(heap: list[Any], item: tuple[Any, ...], size: int) -> None:
    """Keep in `heap` the `size` items with the smallest keys seen so far; items carry negated keys."""
    if size <= 0:
        return
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)
