"""What do the human labels buy? The reward model trained on judge-only labels, on merged labels, and on human labels.

Data: the shared hh-rlhf harmless file (1,800 pairs, crowdworker labels), cut in three: the first 600 pairs
train the judge (the MiniLM-L6 reward model recipe of `rlaif train reward`), the next 900 are the pool the
pipeline labels, the last 300 are the held-out test. The judge labels the pool; people are simulated by the
pool's real human labels on the pairs sent to them. For each labelling of the pool, the same reward-model
recipe (MiniLM-L6, 1 epoch, 128 tokens) is trained on it and scored on the test pairs (accuracy: the human-
chosen answer scores higher):
- judge only: every pool pair carries the judge's label;
- merged, 10% at random: people label a random 10% of the pool, the judge the rest;
- merged, 10% routed: the pipeline's fixed routing (failures, a 3% random audit, the least confident);
- all human: every pool pair carries its human label.
Each over SEEDS training seeds (the random 10% drawn anew per seed). Reported: accuracy per seed, the mean,
and the 95% interval of the mean's difference from judge-only (t over seeds, paired by seed); also the
label accuracy of each labelling (how many pool labels agree with people).

    .venv/bin/python benchmarks/human_labels_value.py [--out benchmarks/results/human_labels_value.json]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import RLAIF, provenance, write_results  # noqa: E402
from rlaif.evaluation.judge_agreement import as_pair  # noqa: E402
from rlaif.judges.reward_model import RewardModelJudge, RewardModelScorer  # noqa: E402
from rlaif.labelled_data import load_labelled  # noqa: E402
from rlaif.pipeline.route import choose_for_review  # noqa: E402
from rlaif.schema import Pair  # noqa: E402

HH_RLHF = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "data"
    / "hh_rlhf"
    / "harmless_base_test_0000_1799.jsonl.gz"
)
JUDGE_PAIRS, POOL_PAIRS = 600, 900
SEEDS = (0, 1, 2)
SHARE = 0.10
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}  # Student's t, two-sided 95%, by degrees of freedom


def preference_rows(pairs: Sequence[Pair], labels: Sequence[str | None]) -> list[dict[str, Any]]:
    """The pairs with an a/b label as rows of a merged dataset (TRL's conversational prompt/chosen/rejected)."""
    rows = []
    for pair, label in zip(pairs, labels, strict=True):
        if label not in ("a", "b"):
            continue
        chosen, rejected = (pair.a, pair.b) if label == "a" else (pair.b, pair.a)
        rows.append(
            {
                "prompt": [m.model_dump() for m in pair.prompt.messages],
                "chosen": [{"role": "assistant", "content": chosen.text}],
                "rejected": [{"role": "assistant", "content": rejected.text}],
                "confidence": 1.0,
            }
        )
    return rows


def train_reward_model(
    rows: list[dict[str, Any]], folder: Path, seed: int = 0, epochs: float = 2.0, held_out: int = 0
) -> Path:
    """`rlaif train reward` (MiniLM-L6, 128 tokens) on rows written as a merged dataset (shuffled by `seed`; the
    last `held_out` rows not trained on); the model's folder."""
    import datasets

    data, out = folder / "data", folder / "reward"
    datasets.Dataset.from_list(rows).shuffle(seed=seed).save_to_disk(str(data))
    split = f"train.eval_size={held_out}" if held_out else "train.eval_fraction=0"
    subprocess.run(
        [RLAIF, "train", "reward", "--data", str(data), "--format", "merged", "--out", str(out)]
        + ["--set", split, "--set", "train.reward.max_length=128"]
        + ["--set", f"train.reward.epochs={epochs}", "--set", f"run.seed={seed}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out


def accuracy(model: Path, pairs: Sequence[Pair], labels: Sequence[str]) -> float:
    """Share of pairs whose human-chosen answer the reward model scores higher."""
    scorer = RewardModelScorer(str(model))
    scores = scorer.score([p.prompt for p in pairs for _ in (0, 1)], [c.text for p in pairs for c in (p.a, p.b)])
    right = [(scores[2 * i] > scores[2 * i + 1]) == (label == "a") for i, label in enumerate(labels)]
    return sum(right) / len(right)


def difference_interval(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Mean of the paired differences with its 95% t interval over seeds."""
    differences = [v - b for v, b in zip(values, baseline, strict=True)]
    mean = statistics.fmean(differences)
    half = T_975[len(differences) - 1] * statistics.stdev(differences) / len(differences) ** 0.5
    return {"mean": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/human_labels_value.json")
    args = parser.parse_args()
    if not HH_RLHF.is_file():
        raise SystemExit(f"{HH_RLHF} is missing: the shared data folder must sit beside the project")
    usable = [(pair, item.label) for item in load_labelled(HH_RLHF, "hh-rlhf") if (pair := as_pair(item)) is not None]
    judge_part, pool, test = usable[:JUDGE_PAIRS], usable[JUDGE_PAIRS : JUDGE_PAIRS + POOL_PAIRS], usable[-300:]
    pool_pairs, pool_truth = [p for p, _ in pool], [label for _, label in pool]
    test_pairs, test_truth = [p for p, _ in test], [label for _, label in test]
    with tempfile.TemporaryDirectory(prefix="human-labels-value-") as scratch:
        folder = Path(scratch)
        print(f"training the judge on {len(judge_part)} pairs ...")
        judge_model = train_reward_model(preference_rows(*zip(*judge_part, strict=True)), folder / "judge")
        judgments = await RewardModelJudge(RewardModelScorer(str(judge_model)), name="minilm-judge").judge(pool_pairs)
        judge_labels = [j.winner if j.status == "ok" else None for j in judgments]
        reasons = choose_for_review(judgments, len(judgments), SHARE, 0.03, seed=0)
        routed = {i for i, j in enumerate(judgments) if j.id in reasons}
        conditions: dict[str, dict[str, Any]] = {}
        for seed in SEEDS:
            drawn = set(random.Random(seed).sample(range(len(pool)), len(routed)))
            labellings = {
                "judge only": judge_labels,
                "merged, 10% at random": [pool_truth[i] if i in drawn else j for i, j in enumerate(judge_labels)],
                "merged, 10% routed": [pool_truth[i] if i in routed else j for i, j in enumerate(judge_labels)],
                "all human": pool_truth,
            }
            for name, labels in labellings.items():
                model = train_reward_model(preference_rows(pool_pairs, labels), folder / f"{name}-{seed}", seed, 1.0)
                figures = conditions.setdefault(name, {"accuracy": [], "label_accuracy": []})
                figures["accuracy"].append(round(accuracy(model, test_pairs, test_truth), 4))
                figures["label_accuracy"].append(
                    round(sum(a == b for a, b in zip(labels, pool_truth, strict=True)) / len(pool_truth), 4)
                )
                print(f"seed {seed}, {name}: test accuracy {figures['accuracy'][-1]}")
        baseline = conditions["judge only"]["accuracy"]
        for figures in conditions.values():
            figures["mean"] = round(statistics.fmean(figures["accuracy"]), 4)
            figures["against_judge_only"] = difference_interval(figures["accuracy"], baseline)
    write_results(
        args.out,
        {
            **provenance(),
            "data": f"{HH_RLHF.name}: judge trained on pairs 0-{JUDGE_PAIRS - 1}, pool of {len(pool)}, "
            f"test of the last {len(test)}",
            "judge_accuracy_on_pool": round(
                sum(a == b for a, b in zip(judge_labels, pool_truth, strict=True)) / len(pool_truth), 4
            ),
            "human_share": round(len(routed) / len(pool), 4),
            "recipe": "MiniLM-L6 reward model, 128 tokens, 1 epoch on the pool (the judge: 2 epochs)",
            "seeds": list(SEEDS),
            "conditions": conditions,
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
