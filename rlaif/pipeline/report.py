"""The run's report.json: counts and rates of a labelling run (see the README for each field)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from rlaif.pipeline.shard_plan import ShardPlan, run_judgments
from rlaif.run_directory import RunDirectory
from rlaif.run_files import count_lines, read_jsonl, write_json_atomic


def candidates_by_prompt(plans: Sequence[ShardPlan]) -> Counter[str]:
    """How many candidates each prompt has, over the run's candidate shards."""
    found: Counter[str] = Counter()
    for plan in plans:
        found.update(row["prompt_id"] for _, row in read_jsonl(plan.candidates))
    return found


def write_report(
    run: RunDirectory,
    plans: Sequence[ShardPlan],
    routed_by_reason: dict[str, int],
    candidates_per_prompt: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """report.json: the counts and rates of the run (see README for each field), from one pass over the
    judgments, one over the candidates, and the routing counts `route_run` returned."""
    judged = failed = consistent = 0
    confidence_sum = 0.0
    failed_by_status = dict.fromkeys(("parse_error", "backend_error"), 0)
    winners = dict.fromkeys(("a", "b", "tie"), 0)
    for judgment in run_judgments(plans):
        if judgment.status != "ok":
            failed += 1
            failed_by_status[judgment.status] += 1
            continue
        judged += 1
        consistent += not judgment.order_disagreement
        confidence_sum += judgment.confidence or 0.0
        if judgment.winner is not None:
            winners[judgment.winner] += 1
    routed = sum(routed_by_reason.values())
    prompts = sum(plan.prompt_count for plan in plans)
    # Short prompts: their answers kept repeating through every resample round, so they give fewer pairs.
    found = candidates_by_prompt(plans)
    report = {
        "prompts": prompts,
        "candidates": sum(found.values()),
        "prompts_short": prompts - len(found) + sum(1 for count in found.values() if count < candidates_per_prompt),
        "pairs": sum(count_lines(plan.pairs) for plan in plans),
        "judged_ok": judged,
        "judge_failed": failed,
        "judge_failed_by_status": failed_by_status,
        "routed_to_review": routed,
        "routed_by_reason": routed_by_reason,
        "review_fraction_actual": routed / (judged + failed) if judged + failed else 0.0,
        "position_consistency": consistent / judged if judged else None,
        "mean_confidence": confidence_sum / judged if judged else None,
        "winners": winners,
        **extra,
    }
    write_json_atomic(run.report, report)
    return report
