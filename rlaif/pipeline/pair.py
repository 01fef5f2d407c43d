"""Pairs from the K candidates of a prompt: all pairs, best against worst, or m random pairs.

Answers that are identical, exactly or after whitespace normalisation, are one answer: only the
first is paired. The A/B order of each pair is drawn at random (seeded per prompt, so the same
prompt always gives the same pairs) and recorded as `swapped`. A refusal-contrast candidate
(`rlaif.pipeline.refusal_contrast`) is left out of the strategy's pairs and paired with the prompt's first
answer instead, as strategy `refusal_contrast`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Literal

from rlaif.config import Config
from rlaif.judges.reward_model import RewardModelScorer
from rlaif.pipeline.shard_plan import ShardPlan
from rlaif.run_directory import read_records
from rlaif.run_files import count_lines, write_jsonl_atomic
from rlaif.schema import Candidate, Pair, PromptItem, content_id

Strategy = Literal["all", "best_worst", "random"]
REFUSAL_CONTRAST = "refusal_contrast"  # the strategy recorded on a pair of a steered refusal and the first answer


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def distinct_candidates(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Candidates in order, without answers that repeat an earlier one up to whitespace."""
    seen: set[str] = set()
    kept = []
    for candidate in candidates:
        key = normalise_whitespace(candidate.text)
        if key not in seen:
            seen.add(key)
            kept.append(candidate)
    return kept


def make_pairs(
    prompt: PromptItem,
    candidates: Sequence[Candidate],
    strategy: Strategy = "all",
    seed: int = 0,
    per_prompt: int = 2,
    scores: Mapping[str, float] | None = None,
) -> list[Pair]:
    """The pairs of one prompt's candidates under a strategy; `scores` (by candidate id) for best_worst."""
    rng = random.Random(content_id("pairs", seed, prompt.id))
    ours = [c for c in candidates if c.prompt_id == prompt.id]
    unique = distinct_candidates([c for c in ours if c.contrast is None])
    chosen = _strategy_pairs(unique, strategy, rng, per_prompt, scores) if len(unique) >= 2 else []
    # Refusal contrast: each steered refusal against the policy's first answer (unless it says the same).
    for candidate in ours:
        if candidate.contrast is None or not unique:
            continue
        if normalise_whitespace(candidate.text) != normalise_whitespace(unique[0].text):
            chosen.append((unique[0], candidate))
    pairs = []
    for first, second in chosen:
        swapped = rng.random() < 0.5
        a, b = (second, first) if swapped else (first, second)
        kind = REFUSAL_CONTRAST if second.contrast is not None else strategy
        pairs.append(Pair(prompt=prompt, a=a, b=b, strategy=kind, swapped=swapped))
    return pairs


def _strategy_pairs(
    unique: list[Candidate],
    strategy: Strategy,
    rng: random.Random,
    per_prompt: int,
    scores: Mapping[str, float] | None,
) -> list[tuple[Candidate, Candidate]]:
    """The (first, second) candidate pairs a strategy picks from at least two distinct candidates."""
    if strategy == "all":
        chosen = list(itertools.combinations(unique, 2))
    elif strategy == "random":
        combos = list(itertools.combinations(unique, 2))
        chosen = rng.sample(combos, min(per_prompt, len(combos)))
    elif strategy == "best_worst":
        if scores is None or any(c.id not in scores for c in unique):
            raise ValueError("best_worst pairing needs a score for every candidate")
        ranked = sorted(unique, key=lambda c: (scores[c.id], c.id))
        chosen = [(ranked[-1], ranked[0])]
    else:
        raise ValueError(f"unknown pair strategy {strategy!r}")
    return chosen


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
        listed = [(p, c) for p in prompts for c in by_prompt.get(p.id, []) if c.contrast is None]
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
