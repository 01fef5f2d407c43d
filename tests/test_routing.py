"""Routing ~10% to review: failures first, a uniform seeded audit, then the least confident."""

from __future__ import annotations

import random

import pytest

from rlaif.pipeline.route import choose_for_review, route_judgments, routing_counts
from rlaif.schema import Judgment


def judgments(count: int, failed: int = 0, seed: int = 0) -> list[Judgment]:
    rng = random.Random(seed)
    items = []
    for i in range(count):
        if i < failed:
            items.append(
                Judgment(
                    pair_id=f"p{i}",
                    winner=None,
                    status="parse_error",
                    judge_model="j",
                    template_hash="t",
                    error="no verdict",
                )
            )
        else:
            p_a = rng.random()
            items.append(
                Judgment(
                    pair_id=f"p{i}",
                    winner="a" if p_a > 0.5 else "b",
                    p_a=p_a,
                    confidence=abs(2 * p_a - 1),
                    status="ok",
                    judge_model="j",
                    template_hash="t",
                )
            )
    return items


def test_routed_fraction_is_within_one_point_of_the_target():
    for count in (200, 537, 2000):
        decisions = route_judgments(judgments(count, failed=3), fraction=0.10, audit_fraction=0.03, seed=7)
        routed = sum(d.decision == "review" for d in decisions)
        assert abs(routed / count - 0.10) <= 0.01, (count, routed)


def test_failures_first_then_audit_then_least_confident():
    items = judgments(300, failed=5)
    decisions = route_judgments(items, fraction=0.10, audit_fraction=0.03, seed=1)
    counts = routing_counts(decisions)
    assert counts == {"failed": 5, "audit": 9, "low_confidence": 16}
    reasons = {d.pair_id: d.reason for d in decisions}
    assert all(reasons[f"p{i}"] == "failed" for i in range(5))
    confidence = {j.pair_id: j.confidence for j in items}
    low = [d.pair_id for d in decisions if d.reason == "low_confidence"]
    unrouted = [d.pair_id for d in decisions if d.decision == "judge"]
    assert max(confidence[p] for p in low) <= min(confidence[p] for p in unrouted)


def test_every_failure_goes_even_past_the_budget():
    decisions = route_judgments(judgments(100, failed=20), fraction=0.10, audit_fraction=0.03, seed=0)
    assert routing_counts(decisions)["failed"] == 20
    assert routing_counts(decisions)["audit"] == 3
    assert "low_confidence" not in routing_counts(decisions)


def test_routing_is_deterministic_for_a_seed():
    items = judgments(400)
    first = route_judgments(items, seed=3)
    assert first == route_judgments(list(items), seed=3)
    assert first != route_judgments(items, seed=4)


def test_the_audit_sample_is_uniform_over_confidence():
    """Chi-square test: audit picks spread evenly over the ten confidence deciles (fixed seeds)."""
    items = judgments(1000, seed=11)
    ranked = sorted(items, key=lambda j: j.confidence)
    decile = {j.pair_id: index * 10 // len(ranked) for index, j in enumerate(ranked)}
    observed = [0] * 10
    for seed in range(200):
        for decision in route_judgments(items, fraction=0.10, audit_fraction=0.03, seed=seed):
            if decision.reason == "audit":
                observed[decile[decision.pair_id]] += 1
    expected = sum(observed) / 10
    chi_square = sum((o - expected) ** 2 / expected for o in observed)
    assert sum(observed) == 200 * 30
    assert chi_square < 27.88, (observed, chi_square)  # 9 degrees of freedom, p = 0.001


def test_the_choice_does_not_depend_on_the_order_or_on_holding_the_judgments():
    """One streaming pass over a generator gives the same reasons as over a shuffled list."""
    items = judgments(2000, failed=7, seed=5)
    streamed = choose_for_review((j for j in items), len(items), fraction=0.10, audit_fraction=0.03, seed=2)
    shuffled = list(items)
    random.Random(9).shuffle(shuffled)
    assert streamed == choose_for_review(shuffled, len(items), fraction=0.10, audit_fraction=0.03, seed=2)
    assert len(streamed) == 200 and sum(r == "failed" for r in streamed.values()) == 7


def test_a_wrong_count_is_refused():
    items = judgments(10)
    with pytest.raises(ValueError, match="expected 11 judgments, got 10"):
        choose_for_review(items, 11)
