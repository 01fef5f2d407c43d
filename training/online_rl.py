"""GRPO and RLOO: TRL's online RL trainers, rewarded by the reward model the pipeline trained (or its judge).

For each of the run's prompts the policy samples `num_generations` answers (TRL's own generation: plain
`generate`, or vLLM inside the training process, by default where vllm is installed on a GPU); the reward
model scores each (prompt, answer) exactly as it scores pairs when judging (`RewardModelScorer`), or the
judge compares them (`rlaif.training.judge_reward`),
and each answer's advantage is its reward against the others of its group (GRPO: normalised by the group's
spread; RLOO: the leave-one-out mean). `beta` weighs the KL penalty towards the starting model (TRL loads it
from the policy's folder). The report gives the mean reward of the first and of the last logged steps: a
stage that learns raises it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from rlaif.config import OnlineRLSection
from rlaif.training.arguments import trainer_arguments, training_log
from rlaif.training.checkpoints import checkpoint_folder
from rlaif.training.tokenizer import load_tokenizer

OnlineMethod = Literal["grpo", "rloo"]


def reward_model_function(reward_model: str) -> Callable[..., list[float]]:
    """TRL's reward-function interface (prompts, completions, ...) over the pipeline's reward model."""
    from rlaif.judges.reward_model import RewardModelScorer
    from rlaif.schema import PromptItem

    scorer = RewardModelScorer(reward_model)

    def reward_model_score(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        answers = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return scorer.score([PromptItem(messages=p) for p in prompts], answers)

    return reward_model_score


def vllm_on_a_gpu() -> bool:
    """Whether vLLM can sample here: vllm installed and a CUDA GPU present (TRL's own generate otherwise)."""
    import importlib.util

    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def online_arguments(method: OnlineMethod, settings: OnlineRLSection, output_dir: Path, seed: int) -> Any:
    """GRPOConfig or RLOOConfig from our settings (`trainer_arguments`) and the online stages' own."""
    from trl import GRPOConfig, RLOOConfig

    return trainer_arguments(
        GRPOConfig if method == "grpo" else RLOOConfig,
        settings,
        output_dir,
        seed,
        max_steps=settings.max_steps,
        beta=settings.beta,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        use_vllm=settings.use_vllm if settings.use_vllm is not None else vllm_on_a_gpu(),
        vllm_mode="colocate",
    )


def first_and_last_rewards(log: list[dict[str, float]], share: float = 0.25) -> tuple[float, float] | None:
    """Mean logged reward over the first and over the last `share` of the logged steps."""
    rewards = [row["reward"] for row in log if "reward" in row]
    if len(rewards) < 2:
        return None
    window = max(1, int(len(rewards) * share))
    return statistics.fmean(rewards[:window]), statistics.fmean(rewards[-window:])


def train_online(
    method: OnlineMethod,
    train: Any,
    settings: OnlineRLSection,
    model_path: str,
    reward: str | Callable[..., list[float]],
    out: Path,
    seed: int = 0,
    resume_from: Path | None = None,
) -> dict[str, Any]:
    """GRPO or RLOO on the prompts of `train` (pairs; their answers are not used), rewarded by `reward` (a reward
    model folder, or a function with TRL's reward interface); save the policy to `out`; returns its report."""
    from trl import GRPOTrainer, RLOOTrainer

    started = time.monotonic()
    prompts = train.select_columns(["prompt"])
    trainer = (GRPOTrainer if method == "grpo" else RLOOTrainer)(
        model=model_path,
        reward_funcs=reward_model_function(reward) if isinstance(reward, str) else reward,
        args=online_arguments(method, settings, checkpoint_folder(out), seed),
        train_dataset=prompts,
        processing_class=load_tokenizer(model_path),
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.save_model(str(out))
    log = training_log(trainer)
    rewards = first_and_last_rewards(log)
    return {
        "stage": method,
        "model": model_path,
        "reward_model": reward if isinstance(reward, str) else None,
        "reward": "reward_model" if isinstance(reward, str) else getattr(reward, "__name__", "function"),
        "prompts": len(prompts),
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "reward_first": rewards[0] if rewards else None,
        "reward_last": rewards[1] if rewards else None,
        "settings": settings.model_dump(mode="json"),
        "log": log,
        "wall_s": round(time.monotonic() - started, 1),
    }
