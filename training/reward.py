"""Reward model: TRL's RewardTrainer on a sequence-classification model with one output (Bradley-Terry).

Pairs are tokenized here, exactly as `rlaif.judges.reward_model` reads them when judging (chat template, or
conversation/answer text pairs for encoders, the conversation cut from the left), so the trained model
scores the same inputs it learnt from: TRL's own tokenization would filter pairs longer than max_length
and ignore encoders' segment ids. The saved folder is usable as a judge (`judge.mode: reward_model`),
for best-vs-worst pairing, and as the reward of PPO.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rlaif.config import RewardSection
from rlaif.judges.reward_model import encode_reward_inputs
from rlaif.training.arguments import trainer_arguments, training_log
from rlaif.training.checkpoints import checkpoint_folder
from rlaif.training.processes import main_process_first
from rlaif.training.tokenizer import load_tokenizer


def tokenize_reward_pairs(dataset: Any, tokenizer: Any, max_length: int, margin_scale: float) -> Any:
    """chosen_ids / rejected_ids (and segment ids, and a margin when asked) for RewardTrainer."""

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        answers = {side: [messages[-1]["content"] for messages in batch[side]] for side in ("chosen", "rejected")}
        out: dict[str, list[Any]] = {}
        for side in ("chosen", "rejected"):
            encoded = encode_reward_inputs(tokenizer, batch["prompt"], answers[side], max_length)
            out[f"{side}_ids"] = encoded["input_ids"]
            if "token_type_ids" in encoded:
                out[f"{side}_token_type_ids"] = encoded["token_type_ids"]
        # What the length-grouped sampler sorts by (the Trainer reads this column).
        out["length"] = [max(len(c), len(r)) for c, r in zip(out["chosen_ids"], out["rejected_ids"], strict=True)]
        if margin_scale > 0:
            out["margin"] = [margin_scale * float(c) for c in batch["confidence"]]
        return out

    with main_process_first():  # under several processes one writes the cache, the others read it
        return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenizing pairs")


class PairCollator:
    """Chosen sequences first, then rejected, padded on the right; segment ids and margins kept."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        sequences = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
        width = max(len(s) for s in sequences)
        batch = {
            "input_ids": torch.tensor([s + [self.pad_token_id] * (width - len(s)) for s in sequences]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
        }
        if "chosen_token_type_ids" in examples[0]:
            segments = [e["chosen_token_type_ids"] for e in examples] + [e["rejected_token_type_ids"] for e in examples]
            batch["token_type_ids"] = torch.tensor([s + [0] * (width - len(s)) for s in segments])
        if "margin" in examples[0]:
            batch["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float)
        return batch


def reward_arguments(settings: RewardSection, output_dir: Path, seed: int) -> Any:
    """RewardConfig from our settings (`trainer_arguments`) and the reward stage's own.

    The held-out pairs are scored once, after training (`pairwise_accuracy`), not by the trainer at each
    epoch's end: that evaluation draws from the random state after the epoch's last checkpoint, so a run
    resumed from that checkpoint would shuffle the next epoch differently from an uninterrupted one.
    """
    from trl import RewardConfig

    return trainer_arguments(
        RewardConfig,
        settings,
        output_dir,
        seed,
        max_length=None,  # already truncated (from the left) by tokenize_reward_pairs
        remove_unused_columns=False,
        eval_strategy="no",
        # Sequences of similar length in one batch: less padding.
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        dataset_num_proc=None,
    )


def train_reward_model(
    train: Any,
    held_out: Any | None,
    settings: RewardSection,
    model_path: str,
    out: Path,
    seed: int = 0,
    resume_from: Path | None = None,
) -> dict[str, Any]:
    """Train (continuing from the checkpoint `resume_from`, when given), evaluate on `held_out` (accuracy:
    the chosen answer scores higher) and save the model to `out`; returns its report."""
    from transformers import AutoModelForSequenceClassification, set_seed
    from trl import RewardTrainer

    started = time.monotonic()
    tokenizer = load_tokenizer(model_path)
    set_seed(seed)  # the new score head starts from the same weights for a seed
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = reward_arguments(settings, checkpoint_folder(out), seed)
    train_tokens = tokenize_reward_pairs(train, tokenizer, settings.max_length, settings.margin_scale)
    eval_tokens = tokenize_reward_pairs(held_out, tokenizer, settings.max_length, 0.0) if held_out is not None else None
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train_tokens,
        processing_class=tokenizer,
        data_collator=PairCollator(tokenizer.pad_token_id),
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    held_out_figures = pairwise_accuracy(trainer.model, eval_tokens, PairCollator(tokenizer.pad_token_id))
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.model_max_length = settings.max_length  # the judge then reads inputs as the model learnt them
    trainer.save_model(str(out))  # the model and this tokenizer, by the main process
    report = {
        "stage": "reward",
        "model": model_path,
        "train_pairs": len(train),
        "eval_pairs": len(held_out) if held_out is not None else 0,
        "steps": result.global_step,
        **held_out_figures,
        "settings": settings.model_dump(mode="json"),
        "log": training_log(trainer),
        "wall_s": round(time.monotonic() - started, 1),
        "device": trainer.args.device.type,
    }
    return report


def pairwise_accuracy(model: Any, pairs: Any | None, collate: PairCollator, batch_size: int = 32) -> dict[str, Any]:
    """Exact held-out accuracy (share of pairs whose chosen answer scores higher) and mean margin."""
    if pairs is None or len(pairs) == 0:
        return {"accuracy": None, "mean_margin": None}
    margins = pair_margins(model, pairs, collate, batch_size)
    return {
        "accuracy": sum(1 for m in margins if m > 0) / len(margins),
        "mean_margin": sum(margins) / len(margins),
    }


def pair_margins(model: Any, pairs: Any, collate: PairCollator, batch_size: int = 32) -> list[float]:
    """score(chosen) - score(rejected) for each tokenized pair, in order."""
    import torch

    model.eval()
    margins: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            rows = [pairs[i] for i in range(start, min(start + batch_size, len(pairs)))]
            batch = {k: v.to(model.device) for k, v in collate(rows).items() if k != "margin"}
            scores = model(**batch).logits[:, 0].float()
            chosen, rejected = scores.chunk(2)
            margins.extend((chosen - rejected).tolist())
    return margins
