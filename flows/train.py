"""The `rlaif-train` flow: (optionally SFT, then) a reward model, then DPO or PPO, from a merged dataset.

Thin over `rlaif.training.stages`; one task per stage. Stage outputs go to <train.out or RUN_DIR/train>/<stage>.
A rerun (after a crash, or a scheduled run on data not merged again) keeps the stages already trained on
the same data with the same model and settings, and continues a stage stopped mid-run from its checkpoint.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from rlaif.config import Config
from rlaif.flows.parameters import ConfigOverrides, ConfigParameter, run_config
from rlaif.training.stages import Stage, run_stage, stage_output


@task(name="train-stage", cache_policy=NO_CACHE)
def train_stage_task(config: Config, stage: Stage, model: str | None = None) -> dict[str, Any]:
    logger = get_run_logger()
    return run_stage(config, stage, say=logger.info, model=model, reuse_finished=True)


@flow(name="rlaif-train")
def train_pipeline(config: ConfigParameter = None, overrides: ConfigOverrides | None = None) -> dict[str, Any]:
    """Train the reward model, then align the policy with `train.method` (DPO, or PPO on that reward model)."""
    config = run_config(config, overrides)
    reports: dict[str, Any] = {}
    policy = None
    if config.train.sft_first:
        reports["sft"] = train_stage_task(config, "sft")
        policy = str(stage_output(config, "sft"))
    reports["reward"] = train_stage_task(config, "reward")
    reports[config.train.method] = train_stage_task(config, config.train.method, model=policy)
    rows = [
        {
            "stage": stage,
            "output": str(stage_output(config, stage)),
            "wall_s": report.get("wall_s"),
            "held_out": report.get("accuracy", report.get("implicit_reward_accuracy", report.get("eval_loss"))),
        }
        for stage, report in reports.items()
    ]
    create_table_artifact(table=rows, key="train-summary", description=f"Training of run {config.run.name}")
    return reports
