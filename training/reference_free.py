"""The reference-free preference stages, TRL's trainers in trl.experimental, on the merged pairs, each in one
stage and without a reference model: ORPO (SFT on the chosen answer plus an odds-ratio penalty on the
rejected one) and CPO (a DPO-like loss on the policy's own log-probabilities, `sigmoid`, `hinge`, `ipo` or
`simpo`, plus `cpo_alpha` times the chosen answer's NLL)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from rlaif.config import CPOSection, ORPOSection
from rlaif.training.arguments import trainer_arguments, training_log
from rlaif.training.checkpoints import checkpoint_folder
from rlaif.training.preference_margin import held_out_margins
from rlaif.training.tokenizer import chat_ids, load_tokenizer

ReferenceFree = Literal["orpo", "cpo"]


def experimental(method: ReferenceFree) -> Any:
    """trl.experimental.orpo or .cpo, imported without the warning trl.experimental gives: used knowingly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental import cpo, orpo
    return orpo if method == "orpo" else cpo


def orpo_arguments(settings: ORPOSection, output_dir: Path, seed: int) -> Any:
    """ORPOConfig from our settings (`trainer_arguments`) and the ORPO stage's own."""
    return _arguments(experimental("orpo").ORPOConfig, settings, output_dir, seed)


def cpo_arguments(settings: CPOSection, output_dir: Path, seed: int) -> Any:
    """CPOConfig from our settings (`trainer_arguments`) and the CPO stage's own."""
    return _arguments(
        experimental("cpo").CPOConfig,
        settings,
        output_dir,
        seed,
        loss_type=settings.loss_type,
        cpo_alpha=settings.cpo_alpha,
        simpo_gamma=settings.simpo_gamma,
    )


def _arguments(config_class: type, settings: ORPOSection | CPOSection, output_dir: Path, seed: int, **own: Any) -> Any:
    """What both stages set: steps, beta and length, besides `trainer_arguments`' shared settings."""
    return trainer_arguments(
        config_class,
        settings,
        output_dir,
        seed,
        max_steps=settings.max_steps,
        beta=settings.beta,
        max_length=settings.max_length,
        **own,
    )


def pairs_with_room(pairs: Any, tokenizer: Any, max_length: int) -> Any:
    """The pairs whose prompt leaves their answers at least one token of `max_length`: TRL's ORPO truncates an
    answer to nothing otherwise, and the empty answer's mean log-probability (0/0) turns every weight into NaN
    (CPO's length-normalised losses, ipo and simpo, divide by it the same way)."""

    def prompt_length(pair: dict[str, Any]) -> int:
        return len(chat_ids(tokenizer, pair["prompt"], add_generation_prompt=True))

    return pairs.filter(lambda pair: prompt_length(pair) < max_length - 1)


def train_reference_free(
    method: ReferenceFree,
    train: Any,
    held_out: Any | None,
    settings: ORPOSection | CPOSection,
    model_path: str,
    out: Path,
    seed: int = 0,
    resume_from: Path | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Align the policy at `model_path` with ORPO or CPO on prompt/chosen/rejected pairs; save it to `out`;
    returns its report (held-out margins against the starting model, as for DPO and KTO)."""
    started = time.monotonic()
    tokenizer = load_tokenizer(model_path)
    usable = pairs_with_room(train.select_columns(["prompt", "chosen", "rejected"]), tokenizer, settings.max_length)
    if len(usable) < len(train):
        say(
            f"train {method}: {len(train) - len(usable)} of {len(train)} pairs left out: their prompt fills "
            f"train.{method}.max_length ({settings.max_length} tokens), so their answers would have no token"
        )
    if len(usable) == 0:
        raise ValueError(f"train.{method}.max_length ({settings.max_length}) leaves no pair an answer token: raise it")
    checkpoints = checkpoint_folder(out)
    if isinstance(settings, CPOSection):
        trainer_class, arguments = experimental("cpo").CPOTrainer, cpo_arguments(settings, checkpoints, seed)
    else:
        trainer_class, arguments = experimental("orpo").ORPOTrainer, orpo_arguments(settings, checkpoints, seed)
    trainer = trainer_class(
        model=model_path,
        args=arguments,
        train_dataset=usable,
        processing_class=tokenizer,
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.save_model(str(out))
    return {
        "stage": method,
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
