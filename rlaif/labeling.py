"""The labeling steps over shards: sample, pair, judge, then route and report over the whole run.

Plain functions that the Prefect flows in `flows/labeling.py` wrap. Each shard step first looks for
its finished shard file (see `rlaif.run_directory`) and returns it untouched when found, so a rerun
repeats no model call for finished shards. Models are reached through getters that open them on
first use: a rerun with nothing left to do loads no model at all.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
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
from rlaif.routing import RoutingDecision, route_for_review, routing_counts
from rlaif.run_directory import RunDirectory, read_records, source_hash
from rlaif.run_files import write_json_atomic, write_jsonl_atomic
from rlaif.sampling import sample_candidates
from rlaif.schema import Candidate, Judgment, Pair, PromptItem, ReviewItem, content_id

SAMPLING_CODE = source_hash(rlaif.sampling)
PAIRING_CODE = source_hash(rlaif.pairs)
JUDGING_CODE = source_hash(judges.pairwise, judges.verdicts, judges.combine, judges.reward_model, judges.ensemble)


@dataclass(frozen=True)
class ShardPlan:
    """One shard of the run: its prompts and the files each step writes for it.

    Keys chain: the pairs key depends on the candidates key, the judgments key on the pairs key,
    so a change upstream invalidates everything downstream.
    """

    index: int
    prompts: tuple[PromptItem, ...]
    candidates: Path
    pairs: Path
    judgments: Path


def plan_shards(run: RunDirectory, config: Config, prompts: Sequence[PromptItem]) -> list[ShardPlan]:
    """The shards of a run, computed from the config and prompts alone (no file is read)."""
    per_shard = config.run.prompts_per_shard
    judge = judge_identity(config.judge)
    plans = []
    for index, start in enumerate(range(0, len(prompts), per_shard)):
        shard = tuple(prompts[start : start + per_shard])
        candidates_key = content_id(
            "candidates",
            [p.id for p in shard],
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
                prompts=shard,
                candidates=run.shard("candidates", index, candidates_key),
                pairs=run.shard("pairs", index, pairs_key),
                judgments=run.shard("judgments", index, judgments_key),
            )
        )
    return plans


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
        await policy(), plan.prompts, config.sampling, run_seed=config.run.seed, model_label=config.policy.model
    )
    if result.failures:
        first = next(iter(result.failures.values()))
        raise BackendError(
            f"sampling shard {plan.index}: {len(result.failures)} of {len(plan.prompts)} prompts failed: {first}"
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
    scores = None
    if config.pairs.strategy == "best_worst":
        scoring = await scorer()
        listed = [(p, c) for p in plan.prompts for c in by_prompt.get(p.id, [])]
        values = scoring.score([p for p, _ in listed], [c.text for _, c in listed])
        scores = {c.id: v for (_, c), v in zip(listed, values, strict=True)}
    pairs = [
        pair
        for prompt in plan.prompts
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


def route_run(run: RunDirectory, plans: Sequence[ShardPlan], config: Config) -> list[RoutingDecision]:
    """Route the whole run's judgments; write routing.jsonl and review_queue.jsonl."""
    judgments = [j for plan in plans for j in read_records(plan.judgments, Judgment)]
    decisions = route_for_review(judgments, config.review.fraction, config.review.audit_fraction, config.run.seed)
    write_jsonl_atomic(run.routing, decisions)
    routed = {d.pair_id: d for d in decisions if d.decision == "review"}
    by_pair = {j.pair_id: j for j in judgments if j.pair_id in routed}

    def queue_rows() -> Iterator[dict[str, Any]]:
        for plan in plans:
            for pair in read_records(plan.pairs, Pair):
                if pair.id in routed:
                    reason = routed[pair.id].reason
                    assert reason is not None
                    item = ReviewItem(run_id=config.run.name, pair_id=pair.id, reason=reason)
                    yield {
                        "item": item.model_dump(mode="json"),
                        "pair": pair.model_dump(mode="json"),
                        "judgment": by_pair[pair.id].model_dump(mode="json"),
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
            "routed": [{"pair_id": d.pair_id, "reason": d.reason} for d in decisions if d.decision == "review"],
        },
    )
    return decisions


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


def write_report(
    run: RunDirectory, plans: Sequence[ShardPlan], decisions: Sequence[RoutingDecision], extra: dict[str, Any]
) -> dict[str, Any]:
    """report.json: the counts and rates of the run (see README for each field)."""
    judgments = [j for plan in plans for j in read_records(plan.judgments, Judgment)]
    ok = [j for j in judgments if j.status == "ok"]
    routed = [d for d in decisions if d.decision == "review"]
    failed_by_status = {s: sum(1 for j in judgments if j.status == s) for s in ("parse_error", "backend_error")}
    report = {
        "prompts": sum(len(plan.prompts) for plan in plans),
        "candidates": sum(count_lines(plan.candidates) for plan in plans),
        "pairs": sum(count_lines(plan.pairs) for plan in plans),
        "judged_ok": len(ok),
        "judge_failed": len(judgments) - len(ok),
        "judge_failed_by_status": failed_by_status,
        "routed_to_review": len(routed),
        "routed_by_reason": routing_counts(decisions),
        "review_fraction_actual": len(routed) / len(judgments) if judgments else 0.0,
        "position_consistency": (sum(1 for j in ok if not j.order_disagreement) / len(ok)) if ok else None,
        "mean_confidence": (sum(j.confidence or 0.0 for j in ok) / len(ok)) if ok else None,
        "winners": {w: sum(1 for j in ok if j.winner == w) for w in ("a", "b", "tie")},
        **extra,
    }
    write_json_atomic(run.report, report)
    return report
