"""The TRL trainer arguments every stage sets the same way, from its config section.

Every stage on TRL adds what is its own (`reward_arguments`, `dpo_arguments`, `sft_arguments`,
`kto_arguments`, `orpo_arguments`, `online_arguments`); what they share is here, once, so that a setting
means the same in every stage (bf16 on a GPU unless the section says otherwise, gradient checkpointing off
unless asked for, checkpoints every `save_steps`, the CPU when there is no GPU).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rlaif.config import DPOSection, KTOSection, OnlineRLSection, ORPOSection, RewardSection, SFTSection
from rlaif.training.checkpoints import saving_arguments

StageSection = RewardSection | DPOSection | SFTSection | KTOSection | ORPOSection | OnlineRLSection
LOGGING_SHARE = 0.02  # log every 2% of the steps (at least every step): about 50 points of a training curve


def training_log(trainer: Any) -> list[dict[str, float]]:
    """The trainer's logged training metrics, one row per logging step (loss, and for DPO the reward margin and
    accuracy), for the report's training curves; the end-of-training summary and evaluations left out."""
    return [
        {"step": row["step"], **{k: v for k, v in row.items() if isinstance(v, int | float) and k != "step"}}
        for row in trainer.state.log_history
        if "loss" in row and "step" in row
    ]


def trainer_arguments(config_class: type, settings: StageSection, output_dir: Path, seed: int, **own: Any) -> Any:
    """`config_class` (a TRL config) with the arguments every stage shares, plus the stage's `own`."""
    import torch

    on_gpu = torch.cuda.is_available()
    shared = {
        "output_dir": str(output_dir),
        "learning_rate": settings.learning_rate,
        "num_train_epochs": settings.epochs,
        "per_device_train_batch_size": settings.batch_size,
        "bf16": on_gpu if settings.bf16 is None else settings.bf16,
        **saving_arguments(settings.save_steps),
        "logging_steps": LOGGING_SHARE,
        "report_to": [],
        "seed": seed,
        # On a CPU the trainers must be told, else several processes would each train alone.
        "use_cpu": not on_gpu,
        **checkpointing_argument(config_class, settings.gradient_checkpointing),
    }
    return config_class(**shared, **own)


def checkpointing_argument(config_class: type, enabled: bool) -> dict[str, bool]:
    """The keyword that sets gradient checkpointing in a TRL config class, always given explicitly.

    TRL's configs turn it on by default; our stages default to off (faster, more memory). Newer
    transformers (5.24 here) call it `activation_checkpointing` and warn on every run about the old name,
    which goes in v6; older releases know only the old name.
    """
    fields = {field.name for field in dataclasses.fields(config_class)}
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return {name: enabled}
