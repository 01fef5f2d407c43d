"""The labeling steps over shards: sample, pair, judge, then route and report over the whole run.

Plain functions that the Prefect flows in `flows/labeling.py` wrap. Each shard step first looks for
its finished shard file (see `rlaif.run_directory`) and returns it untouched when found, so a rerun
repeats no model call for finished shards. Models are reached through getters that open them on
first use: a rerun with nothing left to do loads no model at all.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import judges.combine
import judges.ensemble
import judges.pairwise
import judges.reward_model
import judges.verdicts
import rlaif.pairs
import rlaif.sampling
from judges.factory import judge_identity
from judges.protocol import Judge
from judges.reward_model import RewardModelScorer
from rlaif.config import Config
from rlaif.generation import BackendError, GenerationBackend
from rlaif.pairs import make_pairs
from rlaif.review_store import ReviewStore, ReviewStoreError
from rlaif.routing import RoutingDecision, choose_for_review, decision_for
from rlaif.run_directory import RunDirectory, read_records, source_hash
from rlaif.run_files import write_json_atomic, write_jsonl_atomic
from rlaif.sampling import sample_candidates
from rlaif.schema import Candidate, Judgment, Pair, PromptItem, ReviewItem, ReviewReason, content_id

SAMPLING_CODE = source_hash(rlaif.sampling)
PAIRING_CODE = source_hash(rlaif.pairs)
JUDGING_CODE = source_hash(judges.pairwise, judges.verdicts, judges.combine, judges.reward_model, judges.ensemble)


@dataclass(frozen=True)
class ShardPlan:
    """One shard of the run: how many prompts it has and the files each step writes for it.

    Keys chain: the pairs key depends on the candidates key, the judgments key on the pairs key,
    so a change upstream invalidates everything downstream. The shard's prompts are in its own
    file, so that a run of any size is planned without holding its prompts in memory.
    """

    index: int
    prompt_count: int
    prompts: Path
    candidates: Path
    pairs: Path
    judgments: Path

    def read_prompts(self) -> list[PromptItem]:
        return list(read_records(self.prompts, PromptItem))


def plan_shards(run: RunDirectory, config: Config, prompts: Iterable[PromptItem]) -> list[ShardPlan]:
    """The shards of a run, from the config and the prompts (read once, in order).

    Each shard's prompts are written to its prompts file unless it is there already; nothing else is read
    or written.
    """
    per_shard = config.run.prompts_per_shard
    judge = judge_identity(config.judge)
    plans = []
    for index, shard in enumerate(_chunks(prompts, per_shard)):
        ids = [p.id for p in shard]
        prompts_file = run.shard("prompts", index, content_id("prompts", ids))
        if not prompts_file.is_file():
            write_jsonl_atomic(prompts_file, shard)
        candidates_key = content_id(
            "candidates",
            ids,
            config.policy.model_dump(include={"backend", "model"}),
            config.sampling.model_dump(),
            config.run.seed,
            SAMPLING_CODE,
        )
        pairs_key = content_id("pairs", candidates_key, config.pairs.model_dump(), config.run.seed, PAIRING_CODE)
        judgments_key = content_id("judgments", pairs_key, judge, config.run.seed, JUDGING_CODE)
        plans.append(
            ShardPlan(
                index=index,
                prompt_count=len(shard),
                prompts=prompts_file,
                candidates=run.shard("candidates", index, candidates_key),
                pairs=run.shard("pairs", index, pairs_key),
                judgments=run.shard("judgments", index, judgments_key),
            )
        )
    return plans


def _chunks(items: Iterable[PromptItem], size: int) -> Iterator[list[PromptItem]]:
    chunk: list[PromptItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def count_lines(path: Path) -> int:
    with path.open(encoding="utf-8") as lines:
        return sum(1 for line in lines if line.strip())


async def sample_shard(
    plan: ShardPlan, config: Config, policy: Callable[[], Awaitable[GenerationBackend]]
) -> tuple[int, bool]:
    """Candidates for one shard of prompts: (count, reused). A shard with a failed prompt is not written."""
    if plan.candidates.is_file():
        return count_lines(plan.candidates), True
    result = await sample_candidates(
        await policy(), plan.read_prompts(), config.sampling, run_seed=config.run.seed, model_label=config.policy.model
    )
    if result.failures:
        first = next(iter(result.failures.values()))
        raise BackendError(
            f"sampling shard {plan.index}: {len(result.failures)} of {plan.prompt_count} prompts failed: {first}"
        )
    return write_jsonl_atomic(plan.candidates, result.candidates), False


async def pair_shard(
    plan: ShardPlan, config: Config, scorer: Callable[[], Awaitable[RewardModelScorer]]
) -> tuple[int, bool]:
    """Pairs of one shard's candidates under the configured strategy: (count, reused)."""
    if plan.pairs.is_file():
        return count_lines(plan.pairs), True
    by_prompt: dict[str, list[Candidate]] = {}
    for candidate in read_records(plan.candidates, Candidate):
        by_prompt.setdefault(candidate.prompt_id, []).append(candidate)
    prompts = plan.read_prompts()
    scores = None
    if config.pairs.strategy == "best_worst":
        scoring = await scorer()
        listed = [(p, c) for p in prompts for c in by_prompt.get(p.id, [])]
        values = scoring.score([p for p, _ in listed], [c.text for _, c in listed])
        scores = {c.id: v for (_, c), v in zip(listed, values, strict=True)}
    pairs = [
        pair
        for prompt in prompts
        for pair in make_pairs(
            prompt,
            by_prompt.get(prompt.id, []),
            config.pairs.strategy,
            seed=config.run.seed,
            per_prompt=config.pairs.per_prompt,
            scores=scores,
        )
    ]
    return write_jsonl_atomic(plan.pairs, pairs), False


async def judge_shard(plan: ShardPlan, judge: Callable[[], Awaitable[Judge]]) -> tuple[int, bool]:
    """Judgments of one shard of pairs, both orders each, failures kept with their status: (count, reused)."""
    if plan.judgments.is_file():
        return count_lines(plan.judgments), True
    shard_pairs = list(read_records(plan.pairs, Pair))
    judgments = await (await judge()).judge(shard_pairs) if shard_pairs else []
    return write_jsonl_atomic(plan.judgments, judgments), False


def _run_judgments(plans: Sequence[ShardPlan]) -> Iterator[Judgment]:
    for plan in plans:
        yield from read_records(plan.judgments, Judgment)


def route_run(run: RunDirectory, plans: Sequence[ShardPlan], config: Config) -> tuple[int, dict[str, int]]:
    """Route the whole run's judgments; write routing.jsonl, review_queue.jsonl and manifest.json.

    Streams the shards: one pass to choose, one to write the decisions, one over the routed judgments and
    pairs of each shard for the queue. What it keeps for the whole run is the routed pairs' ids.
    Returns the number of judged pairs and how many were routed for each reason.
    """
    total = sum(count_lines(plan.judgments) for plan in plans)
    review = config.review
    reasons = choose_for_review(_run_judgments(plans), total, review.fraction, review.audit_fraction, config.run.seed)
    routed: list[tuple[str, ReviewReason]] = []  # (pair id, reason), in run order

    def decisions() -> Iterator[RoutingDecision]:
        for judgment in _run_judgments(plans):
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


def read_review_queue(path: Path) -> Iterator[tuple[ReviewItem, Pair, Judgment]]:
    """The rows of a review_queue.jsonl: (item, pair, judgment)."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                    yield (
                        ReviewItem.model_validate(row["item"]),
                        Pair.model_validate(row["pair"]),
                        Judgment.model_validate(row["judgment"]),
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise ReviewStoreError(f"{path}:{number}: not a review queue row: {exc}") from None


def enqueue_routed(run: RunDirectory, config: Config) -> int:
    """Put the run's routed pairs into the review database (`review.db`); returns how many were new."""
    with ReviewStore.open(config.review_db()) as store:
        return store.enqueue(
            config.run.name,
            read_review_queue(run.review_queue),
            labels_needed=config.review.labels_per_item,
            max_skips=config.review.max_skips,
        )


def candidates_by_prompt(plans: Sequence[ShardPlan]) -> Counter[str]:
    """How many candidates each prompt has, over the run's candidate shards."""
    found: Counter[str] = Counter()
    for plan in plans:
        with plan.candidates.open(encoding="utf-8") as lines:
            found.update(json.loads(line)["prompt_id"] for line in lines if line.strip())
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
    for judgment in _run_judgments(plans):
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
