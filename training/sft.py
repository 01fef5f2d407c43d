"""SFT warm start: TRL's SFTTrainer on the chosen answers (prompt -> chosen), loss on the answers only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rlaif.config import SFTSection
from rlaif.training.arguments import trainer_arguments, training_log
from rlaif.training.checkpoints import checkpoint_folder
from rlaif.training.processes import main_process_first
from rlaif.training.tokenizer import load_tokenizer


def sft_arguments(settings: SFTSection, output_dir: Path, seed: int) -> Any:
    """SFTConfig from our settings (`trainer_arguments`) and the SFT stage's own."""
    from trl import SFTConfig

    return trainer_arguments(
        SFTConfig,
        settings,
        output_dir,
        seed,
        max_steps=settings.max_steps,
        per_device_eval_batch_size=settings.batch_size,
        max_length=settings.max_length,
    )


def train_sft(
    train: Any,
    held_out: Any | None,
    settings: SFTSection,
    model_path: str,
    out: Path,
    seed: int = 0,
    resume_from: Path | None = None,
) -> dict[str, Any]:
    """Fine-tune the policy on prompt/chosen (continuing from the checkpoint `resume_from`, when given);
    save it to `out`; returns its report (held-out loss)."""
    from trl import SFTTrainer

    started = time.monotonic()

    def as_completion(dataset: Any) -> Any:
        with main_process_first():  # under several processes one writes the cache, the others read it
            return dataset.map(
                lambda row: {"prompt": row["prompt"], "completion": row["chosen"]},
                remove_columns=dataset.column_names,
            )

    tokenizer = load_tokenizer(model_path)
    trainer = SFTTrainer(
        model=model_path,
        args=sft_arguments(settings, checkpoint_folder(out), seed),
        train_dataset=as_completion(train),
        eval_dataset=as_completion(held_out) if held_out is not None else None,
        processing_class=tokenizer,
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics = trainer.evaluate() if held_out is not None else {}
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(out))  # the model and tokenizer, by the main process
    report = {
        "stage": "sft",
        "model": model_path,
        "train_pairs": len(train),
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "eval_loss": metrics.get("eval_loss"),
        "settings": settings.model_dump(mode="json"),
        "log": training_log(trainer),
        "wall_s": round(time.monotonic() - started, 1),
    }
    return report
