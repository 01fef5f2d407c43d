"""The run's judge as the reward of GRPO and RLOO: the answers sampled for one prompt, compared pairwise.

TRL's online trainers want a number per answer; the pipeline's judges compare two answers. Within each
group (the answers to one prompt in a step), every two different answers are judged, in both orders as when
labelling, and an answer's reward is its mean probability of beating each other answer of its group (the
judgment's `p_a`, or `1 - p_a` on the B side). Against an identical answer, or where the judgment failed,
an answer counts as even (0.5). A group of G answers costs G(G-1)/2 pairs, each judged in both orders: 12
requests per prompt and step with `num_generations: 4`. Only a judge behind an endpoint (judge.backend
openai): an in-process judge would be loaded again at every step.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from typing import Any

from rlaif.config import ConfigError
from rlaif.judges.factory import open_judge
from rlaif.judges.setup import JudgeSetup
from rlaif.schema import Candidate, Pair, PromptItem

EVEN = 0.5


def judge_reward_function(setup: JudgeSetup, seed: int = 0) -> Callable[..., list[float]]:
    """TRL's reward-function interface (prompts, completions, ...) over the run's judge, loaded."""
    if any(member.backend != "openai" for member, _ in setup.members()):
        raise ConfigError(
            "reward: judge needs a judge behind an endpoint (judge.backend openai, with base_urls): an in-process "
            "judge would be loaded again for every training step"
        )

    def judge_preference(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        answers = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        with ThreadPoolExecutor(1) as thread:  # an event loop of its own, whatever the caller runs
            return thread.submit(asyncio.run, group_rewards(setup, seed, prompts, answers)).result()

    return judge_preference


async def group_rewards(setup: JudgeSetup, seed: int, prompts: Sequence[Any], answers: Sequence[str]) -> list[float]:
    """Each answer's mean probability of beating the other answers to the same prompt, as the judge says."""
    items = [PromptItem(messages=prompt) for prompt in prompts]
    candidates = [
        Candidate(prompt_id=item.id, text=answer, model="policy") for item, answer in zip(items, answers, strict=True)
    ]
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item.id, []).append(index)
    odds: list[list[float]] = [[] for _ in answers]  # each answer's probability of beating each other one
    judged: list[tuple[int, int]] = []
    for members in groups.values():
        for x, y in combinations(members, 2):
            if candidates[x].id == candidates[y].id:
                odds[x].append(EVEN)
                odds[y].append(EVEN)
            else:
                judged.append((x, y))
    if judged:
        pairs = [Pair(prompt=items[x], a=candidates[x], b=candidates[y]) for x, y in judged]
        async with open_judge(setup, seed=seed, say=lambda _: None) as judge:
            judgments = await judge.judge(pairs)
        for (x, y), judgment in zip(judged, judgments, strict=True):
            p_a = judgment.p_a if judgment.status == "ok" and judgment.p_a is not None else EVEN
            odds[x].append(p_a)
            odds[y].append(1.0 - p_a)
    return [statistics.fmean(row) if row else EVEN for row in odds]
