"""KTO: TRL's KTOTrainer on answers marked desirable or undesirable, made from the run's pairs by an absolute rule.

KTO learns from single answers, each good or bad in itself. A pair says only that one answer is better than
the other: both may be good, or both bad, so "chosen is desirable, rejected is undesirable" is wrong without an
absolute signal (trl#2543). The rule here uses the signals the pipeline has:

1. the label must be sure: people's labels, or the judge's with a (calibrated) confidence of at least
   `train.kto.min_confidence`; less sure pairs give no answer;
2. where the run's reward model is trained (the reward stage's output; `train.kto.use_reward_model`), its
   score must agree in absolute terms: a chosen answer is desirable only when it scores above the median of all
   the pairs' answers, a rejected one undesirable only when it scores below it;
3. pairs people marked both bad (kept by `merge.keep_both_bad`) give two undesirable answers.

The unpaired rows (prompt, completion, label, and why) are saved beside the model (OUT/unpaired) so that they
can be read or reused.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from rlaif.config import KTOSection
from rlaif.training.arguments import trainer_arguments, training_log
from rlaif.training.checkpoints import checkpoint_folder
from rlaif.training.dpo import load_reference
from rlaif.training.preference_margin import held_out_margins
from rlaif.training.tokenizer import load_tokenizer


def unpaired_rows(
    pairs: Any, min_confidence: float, scores: tuple[list[float], list[float]] | None = None
) -> list[dict[str, Any]]:
    """KTO's rows from preference pairs by the module's rule: prompt, completion (one assistant message), label
    (True: desirable), reason. `scores`: the reward model's scores of the chosen and of the rejected answers."""
    median = statistics.median(scores[0] + scores[1]) if scores else 0.0
    rows = []
    for i, pair in enumerate(pairs):
        if pair.get("both_bad"):
            for side in ("chosen", "rejected"):
                rows.append(unpaired_row(pair, side, False, "people marked both answers bad"))
            continue
        if pair["confidence"] < min_confidence:
            continue
        sure = "people's label" if pair["confidence"] >= 1.0 else f"label confidence {pair['confidence']:.2f}"
        if scores is None:
            rows.append(unpaired_row(pair, "chosen", True, f"chosen, {sure}"))
            rows.append(unpaired_row(pair, "rejected", False, f"rejected, {sure}"))
            continue
        if scores[0][i] > median:
            rows.append(unpaired_row(pair, "chosen", True, f"chosen, {sure}, reward-model score above the median"))
        if scores[1][i] < median:
            rows.append(unpaired_row(pair, "rejected", False, f"rejected, {sure}, reward-model score below the median"))
    return rows


def preferences(pairs: Any | None) -> Any | None:
    """The pairs with a preference (not both bad)."""
    if pairs is None or "both_bad" not in pairs.column_names:
        return pairs
    return pairs.filter(lambda pair: not pair["both_bad"])


def unpaired_row(pair: dict[str, Any], side: str, desirable: bool, reason: str) -> dict[str, Any]:
    return {"prompt": pair["prompt"], "completion": pair[side], "label": desirable, "reason": reason}


def kto_arguments(settings: KTOSection, output_dir: Path, seed: int) -> Any:
    """KTOConfig from our settings (`trainer_arguments`) and the KTO stage's own."""
    from trl import KTOConfig

    return trainer_arguments(
        KTOConfig,
        settings,
        output_dir,
        seed,
        max_steps=settings.max_steps,
        beta=settings.beta,
        max_length=settings.max_length,
        desirable_weight=settings.desirable_weight,
        undesirable_weight=settings.undesirable_weight,
    )


def reward_scores(reward_model: str, pairs: Any) -> tuple[list[float], list[float]]:
    """The reward model's scores of every pair's chosen and rejected answer."""
    from rlaif.judges.reward_model import RewardModelScorer
    from rlaif.schema import PromptItem

    scorer = RewardModelScorer(reward_model)
    prompts = [PromptItem(messages=pair["prompt"]) for pair in pairs]
    return tuple(  # type: ignore[return-value]
        scorer.score(prompts, [pair[side][-1]["content"] for pair in pairs]) for side in ("chosen", "rejected")
    )


def train_kto(
    train: Any,
    held_out: Any | None,
    settings: KTOSection,
    model_path: str,
    out: Path,
    seed: int = 0,
    resume_from: Path | None = None,
    reference_path: str | None = None,
    reward_model: str | None = None,
    say: Any = print,
) -> dict[str, Any]:
    """Align the policy at `model_path` with KTO on the unpaired rows made from `train` (the module's rule; the
    reward model's scores where `reward_model` is given); save it to `out`; returns its report."""
    import datasets
    from trl import KTOTrainer

    started = time.monotonic()
    scores = reward_scores(reward_model, train) if reward_model else None
    rows = unpaired_rows(train, settings.min_confidence, scores)
    desirable = sum(r["label"] for r in rows)
    if desirable == 0 or desirable == len(rows):
        raise ValueError(
            f"KTO needs desirable and undesirable answers; the rule gave {desirable} desirable and "
            f"{len(rows) - desirable} undesirable of {len(train)} pairs (lower train.kto.min_confidence, or set "
            "train.kto.use_reward_model: false)"
        )
    say(f"train kto: {desirable} desirable and {len(rows) - desirable} undesirable answers from {len(train)} pairs")
    unpaired = datasets.Dataset.from_list(rows)
    unpaired.save_to_disk(str(out / "unpaired"))
    trainer = KTOTrainer(
        model=model_path,
        ref_model=load_reference(reference_path) if reference_path and reference_path != model_path else None,
        args=kto_arguments(settings, checkpoint_folder(out), seed),
        train_dataset=unpaired.select_columns(["prompt", "completion", "label"]),
        processing_class=load_tokenizer(model_path),
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.save_model(str(out))
    return {
        "stage": "kto",
        "model": model_path,
        "reference": reference_path or model_path,
        "train_pairs": len(train),
        "desirable": desirable,
        "undesirable": len(rows) - desirable,
        "reward_model": reward_model,
        "eval_pairs": len(held_out) if held_out is not None else 0,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "held_out": held_out_margins(trainer, str(out), reference_path or model_path, preferences(held_out)),
        "settings": settings.model_dump(mode="json"),
        "log": training_log(trainer),
        "wall_s": round(time.monotonic() - started, 1),
    }
