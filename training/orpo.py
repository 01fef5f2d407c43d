"""ORPO: TRL's ORPOTrainer (trl.experimental) on the merged pairs: SFT on the chosen answer plus an odds-ratio
penalty on the rejected one, in one stage and without a reference model."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlaif.config import ORPOSection
from rlaif.training.arguments import trainer_arguments, training_log
from rlaif.training.checkpoints import checkpoint_folder
from rlaif.training.preference_margin import held_out_margins
from rlaif.training.tokenizer import chat_ids, load_tokenizer


def experimental_orpo() -> Any:
    """trl.experimental.orpo, imported without the warning trl.experimental gives: it is used knowingly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental import orpo
    return orpo


def orpo_arguments(settings: ORPOSection, output_dir: Path, seed: int) -> Any:
    """ORPOConfig from our settings (`trainer_arguments`) and the ORPO stage's own."""
    return trainer_arguments(
        experimental_orpo().ORPOConfig,
        settings,
        output_dir,
        seed,
        max_steps=settings.max_steps,
        beta=settings.beta,
        max_length=settings.max_length,
    )


def pairs_with_room(pairs: Any, tokenizer: Any, max_length: int) -> Any:
    """The pairs whose prompt leaves their answers at least one token of `max_length`: TRL's ORPO truncates an
    answer to nothing otherwise, and the empty answer's mean log-probability (0/0) turns every weight into NaN."""

    def prompt_length(pair: dict[str, Any]) -> int:
        return len(chat_ids(tokenizer, pair["prompt"], add_generation_prompt=True))

    return pairs.filter(lambda pair: prompt_length(pair) < max_length - 1)


def train_orpo(
    train: Any,
    held_out: Any | None,
    settings: ORPOSection,
    model_path: str,
    out: Path,
    seed: int = 0,
    resume_from: Path | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Align the policy at `model_path` with ORPO on prompt/chosen/rejected pairs; save it to `out`; returns its
    report (held-out margins against the starting model, as for DPO and KTO)."""
    started = time.monotonic()
    tokenizer = load_tokenizer(model_path)
    usable = pairs_with_room(train.select_columns(["prompt", "chosen", "rejected"]), tokenizer, settings.max_length)
    if len(usable) < len(train):
        say(
            f"train orpo: {len(train) - len(usable)} of {len(train)} pairs left out: their prompt fills "
            f"train.orpo.max_length ({settings.max_length} tokens), so their answers would have no token"
        )
    if len(usable) == 0:
        raise ValueError(f"train.orpo.max_length ({settings.max_length}) leaves no pair an answer token: raise it")
    trainer = experimental_orpo().ORPOTrainer(
        model=model_path,
        args=orpo_arguments(settings, checkpoint_folder(out), seed),
        train_dataset=usable,
        processing_class=tokenizer,
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.save_model(str(out))
    return {
        "stage": "orpo",
        "model": model_path,
        "train_pairs": len(usable),
        "eval_pairs": len(held_out) if held_out is not None else 0,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "held_out": held_out_margins(trainer, str(out), model_path, held_out),
        "settings": settings.model_dump(mode="json"),
        "log": training_log(trainer),
        "wall_s": round(time.monotonic() - started, 1),
    }
