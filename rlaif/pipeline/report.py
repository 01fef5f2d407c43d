"""The run's report.json: counts and rates of a labelling run (see the README for each field)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from rlaif.pipeline.bias_audit import longer_wins_rate
from rlaif.pipeline.refusal_contrast import JUDGED_OUTCOMES, judged_outcomes, outcome_table
from rlaif.pipeline.shard_plan import ShardPlan, run_judgments
from rlaif.run_directory import RunDirectory, read_records
from rlaif.run_files import count_lines, read_jsonl, write_json_atomic
from rlaif.schema import Judgment, Pair


def candidates_by_prompt(plans: Sequence[ShardPlan]) -> tuple[Counter[str], Counter[str]]:
    """How many ordinary candidates each prompt has, over the run's candidate shards, and how many contrast
    candidates of each kind the run has (`pairs.refusal_contrast`)."""
    found: Counter[str] = Counter()
    contrast: Counter[str] = Counter()
    for plan in plans:
        for _, row in read_jsonl(plan.candidates):
            if row.get("contrast"):
                contrast[row["contrast"]] += 1
            else:
                found[row["prompt_id"]] += 1
    return found, contrast


def refusal_contrast_figures(plans: Sequence[ShardPlan], prompts: int, contrast: Counter[str]) -> dict[str, Any]:
    """report.json's `refusal_contrast`: the contrast candidates and how the judge labelled their pairs."""
    outcomes: Counter[tuple[str, str]] = Counter()
    for plan in plans:
        judgments = {j.pair_id: j for j in read_records(plan.judgments, Judgment)}
        outcomes += judged_outcomes(read_records(plan.pairs, Pair), judgments)
    return {
        "candidates": dict(contrast),
        "prompts_without": prompts - sum(contrast.values()),
        "pairs": outcome_table(outcomes, JUDGED_OUTCOMES),
    }


def judged_choices(plans: Sequence[ShardPlan]) -> Iterator[tuple[Pair, str | None]]:
    """(pair, the judge's winner) for every successfully judged pair, shard by shard."""
    for plan in plans:
        judgments = {j.pair_id: j for j in read_records(plan.judgments, Judgment) if j.status == "ok"}
        for pair in read_records(plan.pairs, Pair, keep=judgments.__contains__):
            if pair.id in judgments:
                yield pair, judgments[pair.id].winner


def write_report(
    run: RunDirectory,
    plans: Sequence[ShardPlan],
    routed_by_reason: dict[str, int],
    candidates_per_prompt: int,
    extra: dict[str, Any],
    refusal_contrast: bool = False,
    self_preference: str | None = None,
) -> dict[str, Any]:
    """report.json: the counts and rates of the run (see README for each field), from one pass over the
    judgments, one over the candidates, one over the pairs for the bias audit, and the routing counts
    `route_run` returned; with `refusal_contrast`, one more over the pairs for `refusal_contrast_figures`."""
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
    found, contrast = candidates_by_prompt(plans)
    report = {
        "prompts": prompts,
        "candidates": sum(found.values()) + sum(contrast.values()),
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
    report["bias"] = {
        "judge_prefers_longer": longer_wins_rate(judged_choices(plans)),
        "position_consistency": report["position_consistency"],
        "self_preference_warning": self_preference,
    }
    if refusal_contrast:
        report["refusal_contrast"] = refusal_contrast_figures(plans, prompts, contrast)
    write_json_atomic(run.report, report)
    return report
