"""Routing about 10% of the judged pairs to people, chosen so that their labels do the most good.

The budget is `fraction` of all pairs (rounded). It is filled in this order:
1. every failed judgment (parse or backend error): it has no usable label, so it always goes,
   even past the budget;
2. a random audit sample of `audit_fraction` of the pairs, drawn uniformly among the judged ones
   regardless of confidence, so that comparing its human labels with the judge's measures the judge
   without bias: the judgments whose seeded hash is smallest (a seeded random subset);
3. the least confident of the rest, until the budget is used (ties broken by judgment id): by the judge's
   own confidence, or, with `review.calibration_runs`, by the probability that people agree with the
   judge, calibrated on those runs' reviewed pairs of the same judge (`rlaif.pipeline.certify`).
The same judgments and seed always give the same decisions, in any order.

With `review.target_agreement` set, routing has two phases: first only 1 and 2 (the audit is the judge's
calibration set), then, once people have labelled the audit, the pairs below the certified threshold
(`rlaif.pipeline.certify`, reason `below_threshold`), which `route_run` adds from RUN_DIR/certification.json.
After the reward model is trained, a second round may add the judge-labelled pairs it contradicts
(`rlaif.pipeline.reward_round`, reason `reward_disagreement`, from RUN_DIR/reward_round.json).

The choice is made in one streaming pass that keeps only the candidates it may still pick (bounded
heaps of at most the budget), so a run of any size is routed without holding its judgments in memory.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from rlaif.config import Config
from rlaif.judges.calibration import Calibrator
from rlaif.pipeline.shard_plan import JudgedShard, ShardPlan, run_judgments, scored_judgments
from rlaif.run_directory import RunDirectory, read_records
from rlaif.run_files import count_lines, write_json_atomic, write_jsonl_atomic
from rlaif.schema import Judgment, Pair, Record, ReviewItem, ReviewReason, content_id

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


def route_judgments(
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


def route_run(
    run: RunDirectory,
    plans: Sequence[ShardPlan | JudgedShard],
    config: Config,
    calibrator: Calibrator | None = None,
) -> tuple[int, dict[str, int]]:
    """Route the whole run's judgments; write routing.jsonl, review_queue.jsonl and manifest.json.

    Streams the shards: one pass to choose, one to write the decisions, one over the routed judgments and
    pairs of each shard for the queue. What it keeps for the whole run is the routed pairs' ids.
    `calibrator` (fixed routing with `review.calibration_runs`): "least confident" is the lowest calibrated
    probability that people agree with the judge, not the raw confidence.
    Returns the number of judged pairs and how many were routed for each reason.
    """
    total = sum(count_lines(plan.judgments) for plan in plans)
    review = config.review
    two_phase = review.target_agreement is not None
    fraction = 0.0 if two_phase else review.fraction  # two phases: failures and the audit first
    judgments = run_judgments(plans) if calibrator is None else _calibrated_judgments(plans, calibrator)
    reasons = choose_for_review(judgments, total, fraction, review.audit_fraction, config.run.seed)
    if two_phase and run.certification.is_file():
        certified = json.loads(run.certification.read_text(encoding="utf-8"))
        reasons.update((judgment_id, "below_threshold") for judgment_id in certified["routed_judgments"])
    if run.reward_round.is_file():  # the second round, after the reward model (rlaif.pipeline.reward_round)
        second = json.loads(run.reward_round.read_text(encoding="utf-8"))
        reasons.update((judgment_id, "reward_disagreement") for judgment_id in second["routed_judgments"])
    routed: list[tuple[str, ReviewReason]] = []  # (pair id, reason), in run order

    def decisions() -> Iterator[RoutingDecision]:
        for judgment in run_judgments(plans):
            decision = decision_for(judgment, reasons)
            if decision.reason is not None:
                routed.append((judgment.pair_id, decision.reason))
            yield decision

    write_jsonl_atomic(run.routing, decisions())

    def queue_rows() -> Iterator[dict[str, Any]]:
        for plan in plans:
            judged = {j.pair_id: j for j in read_records(plan.judgments, Judgment, keep=reasons.__contains__)}
            for pair in read_records(plan.pairs, Pair, keep=judged.__contains__):
                judgment = judged[pair.id]
                item = ReviewItem(run_id=config.run.name, pair_id=pair.id, reason=reasons[judgment.id])
                yield {
                    "item": item.model_dump(mode="json"),
                    "pair": pair.model_dump(mode="json"),
                    "judgment": judgment.model_dump(mode="json"),
                }

    write_jsonl_atomic(run.review_queue, queue_rows())
    write_json_atomic(
        run.manifest,
        {
            "run": config.run.name,
            "shards": [
                {
                    "index": plan.index,
                    "pairs": str(plan.pairs.relative_to(run.root)),
                    "judgments": str(plan.judgments.relative_to(run.root)),
                }
                for plan in plans
            ],
            "routed": [{"pair_id": pair_id, "reason": reason} for pair_id, reason in routed],
        },
    )
    return total, dict(Counter(reason for _, reason in routed))


def _calibrated_judgments(plans: Sequence[ShardPlan | JudgedShard], calibrator: Calibrator) -> Iterator[Judgment]:
    """The run's judgments, shard by shard, each with the calibrated probability in place of its confidence
    (what `choose_for_review` ranks by; the files and the decisions keep the judge's own)."""
    for probability, judgment, _ in scored_judgments(plans, calibrator):
        yield judgment.model_copy(update={"confidence": probability})


def routing_totals(run: RunDirectory) -> tuple[int, dict[str, int]]:
    """The judged pairs of a routed run and how many went to people for each reason (from routing.jsonl)."""
    total = 0
    routed: Counter[str] = Counter()
    for decision in read_records(run.routing, RoutingDecision):
        total += 1
        if decision.reason is not None:
            routed[decision.reason] += 1
    return total, dict(routed)


def _keep_smallest(heap: list[Any], item: tuple[Any, ...], size: int) -> None:
    """Keep in `heap` the `size` items with the smallest keys seen so far; items carry negated keys."""
    if size <= 0:
        return
    if len(heap) < size:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)
