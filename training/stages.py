"""The training stages behind `rlaif train` and the `rlaif-train` flow: data, split, model, output folder.

Defaults come from the config's `train` section: data is the run's merged dataset (RUN_DIR/dataset),
outputs go to <train.out or RUN_DIR/train>/<stage>, PPO's reward model is the reward stage's output.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from rlaif.config import Config
from rlaif.labelled_data import LabelledDataError
from rlaif.models import resolve_model

Stage = Literal["reward", "dpo", "ppo", "sft"]


def stage_output(config: Config, stage: Stage) -> Path:
    """Where a stage writes by default: <train.out or RUN_DIR/train>/<stage>."""
    return (Path(config.train.out) if config.train.out else config.run.directory() / "train") / stage


def run_stage(
    config: Config,
    stage: Stage,
    say: Callable[[str], None] = print,
    model: str | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Load and split the data, then train one stage; returns its report (also in OUT/eval_report.json).

    The files `datasets` derives from the data (usable rows, tokenization, reference log-probs) go to a
    temporary folder (under $TMPDIR) that goes when the stage ends, not into a merged dataset's folder.
    """
    from training.data import held_out_split, load_preferences

    data = config.train.data or str(config.run.directory())
    with tempfile.TemporaryDirectory(prefix=f"rlaif-train-{stage}-") as work_dir:
        dataset = load_preferences(data, config.train.format, seed=config.run.seed, work_dir=Path(work_dir))
        if len(dataset) < 2:
            raise LabelledDataError(f"{data}: {len(dataset)} usable preference pairs; training needs at least 2")
        train, held_out = held_out_split(dataset, config.train.eval_size, config.train.eval_fraction)
        out = out or stage_output(config, stage)
        settings = getattr(config.train, stage)
        model_path = str(resolve_model(model or settings.model, say=say))
        say(
            f"train {stage}: {len(train)} pairs ({len(held_out) if held_out is not None else 0} held out) "
            f"from {data}, model {model_path} -> {out}"
        )
        return train_split(config, stage, train, held_out, model_path, out, say)


def train_split(
    config: Config,
    stage: Stage,
    train: Any,
    held_out: Any | None,
    model_path: str,
    out: Path,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Train one stage on already split data with the config's settings for it."""
    settings = getattr(config.train, stage)
    seed = config.run.seed
    if stage == "reward":
        from training.reward import train_reward_model

        return train_reward_model(train, held_out, settings, model_path, out, seed)
    if stage == "dpo":
        from training.dpo import train_dpo

        return train_dpo(train, held_out, settings, model_path, out, seed)
    if stage == "sft":
        from training.sft import train_sft

        return train_sft(train, held_out, settings, model_path, out, seed)
    from training.ppo import train_ppo

    reward_model = settings.reward_model or str(stage_output(config, "reward"))
    if not (Path(reward_model) / "config.json").is_file():
        raise FileNotFoundError(
            f"PPO needs a reward model: {reward_model} has none (train one with `rlaif train reward`, "
            "or set train.ppo.reward_model)"
        )
    return train_ppo(train, held_out, settings, model_path, reward_model, out, seed, say=say)
