"""The `rlaif-train` flow: (optionally SFT, then) a reward model, then DPO or PPO, from a merged dataset.

Thin over `rlaif.training.stages`; one task per stage. Stage outputs go to <train.out or RUN_DIR/train>/<stage>.
A rerun (after a crash, or a scheduled run on data not merged again) keeps the stages already trained on
the same data with the same model and settings, and continues a stage stopped mid-run from its checkpoint.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from rlaif.config import Config
from rlaif.evaluation.policy_eval import EvaluationError, evaluate_policy
from rlaif.flows.parameters import ConfigOverrides, ConfigParameter, run_config
from rlaif.pipeline.reward_round import route_reward_round
from rlaif.review.store import ReviewStore
from rlaif.run_directory import RunDirectory
from rlaif.run_storage import stored_run
from rlaif.training.label_value import measure_label_value
from rlaif.training.launcher import launch_stage
from rlaif.training.stages import Stage, run_stage, stage_output


@task(name="train-stage", cache_policy=NO_CACHE)
def train_stage_task(config: Config, stage: Stage, model: str | None = None) -> dict[str, Any]:
    """One stage, in this process or (train.launcher: accelerate) under `accelerate launch`."""
    logger = get_run_logger()
    if config.train.launcher == "accelerate":
        return launch_stage(config, stage, say=logger.info, model=model)
    return run_stage(config, stage, say=logger.info, model=model, reuse_finished=True)


@task(name="reward-round", cache_policy=NO_CACHE)
def reward_round_task(config: Config) -> dict[str, Any] | None:
    """review.reward_round_fraction: people get the judge-labelled pairs the new reward model contradicts most
    (decided once per run); None when there is no round (off, or training on data other than the run's)."""
    if not config.review.reward_round_fraction or config.train.data is not None:
        return None
    logger = get_run_logger()
    with ReviewStore.open(config.review_db()) as store:
        return route_reward_round(
            config.run.directory(), config, store, stage_output(config, "reward"), say=logger.info
        )


@task(name="evaluate-policy", cache_policy=NO_CACHE)
def evaluate_policy_task(config: Config) -> dict[str, Any] | None:
    """eval.after_training: the trained policy against the model it started from (rlaif.evaluation.policy_eval);
    None when the run has no evaluation prompts (eval.held_out_fraction or eval.prompts)."""
    held_out = RunDirectory(config.run.directory()).eval_prompts
    if not config.eval.after_training or not (config.eval.prompts or held_out.is_file()):
        return None
    logger = get_run_logger()
    try:
        return asyncio.run(evaluate_policy(config, say=logger.info))
    except EvaluationError as missing:  # e.g. a small run whose seeded choice held out no prompt
        logger.warning(f"the policy is not evaluated: {missing}")
        return None


@task(name="label-value", cache_policy=NO_CACHE)
def label_value_task(config: Config) -> dict[str, Any] | None:
    """train.label_value: the reward-model recipe on merged and on judge-only labels, scored on the audit pairs
    people labelled (rlaif.training.label_value); None when off, on other data, or without such pairs."""
    if not config.train.label_value or config.train.data is not None:
        return None
    return measure_label_value(config, say=get_run_logger().info)


@flow(name="rlaif-train")
def train_pipeline(config: ConfigParameter = None, overrides: ConfigOverrides | None = None) -> dict[str, Any]:
    """Train the reward model, then align the policy with `train.method` (DPO, or PPO on that reward model).

    With `review.reward_round_fraction`, the pairs the reward model contradicts go to people first, and the
    flow returns status "waiting_for_review" before the policy stage; merged and trained again, it goes on.
    Then, with evaluation prompts, the policy is compared with the model it started from (report "eval"), and
    with train.label_value, what the human labels bought is measured (report "label_value")."""
    config = run_config(config, overrides)
    with stored_run(config.run.stored_at(), config.run.directory()):  # a run on object storage
        return train_run_directory(config)


def train_run_directory(config: Config) -> dict[str, Any]:
    """train_pipeline's work, in the run directory (the local copy of a stored run)."""
    reports: dict[str, Any] = {}
    policy = None
    if config.train.sft_first:
        reports["sft"] = train_stage_task(config, "sft")
        policy = str(stage_output(config, "sft"))
    reports["reward"] = train_stage_task(config, "reward")
    second_round = reward_round_task(config)
    if second_round is not None and second_round["open_items"]:
        get_run_logger().info(
            f"{second_round['message']}. The policy trains once people have labelled them: merge again "
            f"(`rlaif merge {config.run.directory()}` or the merge deployment), then train again"
        )
        return {"status": "waiting_for_review", **reports, "reward_round": second_round}
    reports[config.train.method] = train_stage_task(config, config.train.method, model=policy)
    evaluation = evaluate_policy_task(config)
    label_value = label_value_task(config)
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
    if label_value is not None:
        reports["label_value"] = label_value
    if evaluation is not None:
        reports["eval"] = evaluation
        create_markdown_artifact(
            key="policy-evaluation",
            markdown=f"# Policy evaluation of run `{config.run.name}`\n\n{evaluation['verdict']}.",
        )
    return reports
