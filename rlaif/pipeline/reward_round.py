"""The second review round (as in RLTHF, Xu et al. 2024): once a reward model is trained on the merged labels,
the judge-labelled pairs it contradicts go to people.

A reward model trained on mostly right labels learns the preference behind them; where it scores the
rejected answer above the chosen one, the label is wrong more often than elsewhere, so these are the
pairs a person's label is most likely to correct. The round takes the judge-labelled rows of the merged
dataset (not those people were already asked about), scores both answers with the trained reward model,
and sends people the ones with the most negative margin r(chosen) - r(rejected), at most
`review.reward_round_fraction` of all pairs, spread over the prompts like the certified phase's budget.

It is decided once, to RUN_DIR/reward_round.json, before anything is routed; `route_run` adds its pairs
(reason `reward_disagreement`), and the next merge takes people's labels for them. The merge measures it
like the first round: how often people overturned the label on these pairs, next to how often they did on
the random audit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlaif.config import Config
from rlaif.judges.reward_model import RewardModelScorer
from rlaif.pipeline.certify import spread_over_prompts
from rlaif.pipeline.enqueue import enqueue_routed
from rlaif.pipeline.route import route_run
from rlaif.pipeline.shard_plan import judged_shards, run_judgments
from rlaif.review.store import ReviewStore
from rlaif.run_directory import RunDirectory
from rlaif.run_files import count_lines, write_json_atomic
from rlaif.schema import PromptItem

CHUNK = 512  # rows scored between progress lines


def reward_margins(
    dataset: Path, scorer: RewardModelScorer, say: Callable[[str], None] = print
) -> list[tuple[float, str, str]]:
    """(r(chosen) - r(rejected), pair id, prompt id) of every row of a merged dataset labelled by the judge alone."""
    import datasets  # slow to import; only the round needs it

    rows = datasets.load_from_disk(str(dataset))
    judge_only = [
        i
        for i, (source, reason) in enumerate(zip(rows["label_source"], rows["review_reason"], strict=True))
        if source == "judge" and reason is None
    ]
    margins = []
    for start in range(0, len(judge_only), CHUNK):
        batch = rows.select(judge_only[start : start + CHUNK])
        prompts = [PromptItem(messages=row["prompt"]) for row in batch for _ in (0, 1)]
        answers = [row[side][0]["content"] for row in batch for side in ("chosen", "rejected")]
        scores = scorer.score(prompts, answers)
        margins += [
            (scores[2 * i] - scores[2 * i + 1], row["pair_id"], row["prompt_id"]) for i, row in enumerate(batch)
        ]
        say(f"reward round: scored {min(start + CHUNK, len(judge_only))} of {len(judge_only)} judge-labelled pairs")
    return margins


def decide_reward_round(
    run: RunDirectory, config: Config, reward_model: Path, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Choose the round's pairs (see the module docstring)."""
    shards = judged_shards(run)
    total = sum(count_lines(shard.judgments) for shard in shards)
    budget = round(config.review.reward_round_fraction * total)
    margins = reward_margins(run.dataset, RewardModelScorer(str(reward_model)), say)
    contradicted = {pair_id: (margin, prompt_id) for margin, pair_id, prompt_id in margins if margin < 0}
    candidates = [
        (contradicted[j.pair_id][0], j.id, j.pair_id, contradicted[j.pair_id][1])
        for j in run_judgments(shards)
        if j.pair_id in contradicted
    ]
    prompts = len({prompt_id for _, _, prompt_id in margins})
    chosen = spread_over_prompts(sorted(candidates), budget, prompts)
    return {
        "reward_model": str(reward_model),
        "fraction": config.review.reward_round_fraction,
        "pairs": total,
        "judge_labelled": len(margins),
        "contradicted": len(candidates),
        "routed": len(chosen),
        "routed_judgments": [judgment_id for _, judgment_id, _, _ in chosen],
        "message": (
            f"reward round: the reward model contradicts the judge's label on {len(candidates)} of {len(margins)} "
            f"judge-labelled pairs; the {len(chosen)} it contradicts most go to people (budget {budget}, "
            f"review.reward_round_fraction {config.review.reward_round_fraction})"
        ),
    }


def route_reward_round(
    run_dir: Path, config: Config, store: ReviewStore, reward_model: Path, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Decide the round once (RUN_DIR/reward_round.json), route it and put its pairs in the review database;
    returns the decision with `open_items`, the round's items people have not finished."""
    run = RunDirectory(run_dir)
    if not run.reward_round.is_file():
        write_json_atomic(run.reward_round, decide_reward_round(run, config, reward_model, say))
    route_run(run, judged_shards(run), config)
    enqueue_routed(run, config, store)
    decision = json.loads(run.reward_round.read_text(encoding="utf-8"))
    decisions = store.decisions(config.run.name)
    decision["open_items"] = sum(1 for d in decisions.values() if d.reason == "reward_disagreement" and d.open)
    return decision
