"""Pairs from the K candidates of a prompt: all pairs, best against worst, or m random pairs.

Answers that are identical, exactly or after whitespace normalisation, are one answer: only the
first is paired. The A/B order of each pair is drawn at random (seeded per prompt, so the same
prompt always gives the same pairs) and recorded as `swapped`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Literal

from rlaif.schema import Candidate, Pair, PromptItem, content_id

Strategy = Literal["all", "best_worst", "random"]


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
    unique = distinct_candidates([c for c in candidates if c.prompt_id == prompt.id])
    if len(unique) < 2:
        return []
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
    pairs = []
    for first, second in chosen:
        swapped = rng.random() < 0.5
        a, b = (second, first) if swapped else (first, second)
        pairs.append(Pair(prompt=prompt, a=a, b=b, strategy=strategy, swapped=swapped))
    return pairs
