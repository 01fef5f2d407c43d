"""The training stages behind `rlaif train` and the `rlaif-train` flow: data, split, model, output folder.

Defaults come from the config's `train` section: data is the run's merged dataset (RUN_DIR/dataset),
outputs go to <train.out or RUN_DIR/train>/<stage>, PPO's reward model is the reward stage's output.
A stage killed mid-run continues from its latest checkpoint when run again (training/checkpoints.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from rlaif.config import Config, ConfigError
from rlaif.labelled_data import LabelledDataError
from rlaif.models import resolve_model
from rlaif.run_files import write_json_atomic
from rlaif.run_storage import local_input
from rlaif.training.checkpoints import (
    REPORT_FILE,
    checkpoint_folder,
    checkpoint_step,
    finished_report,
    resume_checkpoint,
    stage_identity,
)
from rlaif.training.processes import main_process_first, training_processes

Stage = Literal["reward", "dpo", "ppo", "sft", "kto", "orpo", "cpo", "grpo", "rloo"]
STAGES: tuple[Stage, ...] = ("sft", "reward", "dpo", "ppo", "kto", "orpo", "cpo", "grpo", "rloo")
REWARDED: tuple[Stage, ...] = ("ppo", "grpo", "rloo")  # the stages that need the reward model
POLICY = "policy"  # train.reward.model: the policy stage's starting model


def training_folder(config: Config) -> Path:
    """train.out, else RUN_DIR/train: the stages' output folders and their shared data cache."""
    return Path(config.train.out) if config.train.out else config.run.directory() / "train"


def stage_output(config: Config, stage: Stage) -> Path:
    """Where a stage writes by default: <train.out or RUN_DIR/train>/<stage>."""
    return training_folder(config) / stage


def data_cache(config: Config) -> Path:
    """<train.out or RUN_DIR/train>/datasets-cache: what `datasets` derives from a merged dataset.

    The usable rows, each stage's tokenization and DPO's reference log-probs, in a folder per merge and
    files named after what they were made from, so a rerun on the same data and model reuses them (only
    the latest merge's folder is kept). Deleting it only costs recomputation. The merged dataset's own
    folder is only read.
    """
    return training_folder(config) / "datasets-cache"


def run_stage(
    config: Config,
    stage: Stage,
    say: Callable[[str], None] = print,
    model: str | None = None,
    out: Path | None = None,
    reuse_finished: bool = False,
) -> dict[str, Any]:
    """Load and split the data, then train one stage; returns its report (also in OUT/eval_report.json).

    A stage stopped mid-run continues from its latest checkpoint. With `reuse_finished` (the flow's
    reruns), an output folder that already holds the stage trained on the same data, model, settings
    and seed is kept and its report returned.
    """
    from rlaif.training.data import held_out_split, load_preferences

    processes = training_processes()
    if not processes.is_main_process:
        say = quiet  # one process speaks for them all
    if stage == "ppo" and processes.num_processes > 1:
        raise ConfigError(
            f"PPO trains on one process, not {processes.num_processes}: run `rlaif train ppo` without "
            "accelerate launch or torchrun"
        )
    data = str(local_input(config.train.data)) if config.train.data else str(config.run.directory())  # a URL: copied
    # Under several processes the main one goes first, as in everything below that writes files: it
    # writes the data cache, the others read it.
    with main_process_first():
        dataset = load_preferences(
            data, config.train.format, seed=config.run.seed, work_dir=data_cache(config), keep_both_bad=stage == "kto"
        )
    if len(dataset) < 2:
        raise LabelledDataError(f"{data}: {len(dataset)} usable preference pairs; training needs at least 2")
    train, held_out = held_out_split(dataset, config.train.eval_size, config.train.eval_fraction)
    out = out or stage_output(config, stage)
    settings = getattr(config.train, stage)
    start = settings.model
    if stage == "reward" and start == POLICY:  # the reward model on the policy's base and tokenizer
        start = getattr(config.train, config.train.method).model
    model_path = str(resolve_model(model or start, say=say))
    seed = config.run.seed
    judged = stage in ("grpo", "rloo") and settings.reward == "judge"  # the judge's comparisons reward it
    rewarded = stage in REWARDED and not judged
    reward_model = (settings.reward_model or str(stage_output(config, "reward"))) if rewarded else None
    if reward_model is not None and not (Path(reward_model) / "config.json").is_file():
        raise FileNotFoundError(
            f"{stage.upper()} needs a reward model: {reward_model} has none (train one with `rlaif train reward`, "
            f"or set train.{stage}.reward_model)"
        )
    if stage == "kto" and settings.use_reward_model and (stage_output(config, "reward") / REPORT_FILE).is_file():
        reward_model = str(stage_output(config, "reward"))  # KTO's rule reads its scores (training/kto.py)
    reference = getattr(settings, "reference", None)  # DPO's, KTO's and PPO's frozen reference, when not the start
    reference_path = str(resolve_model(reference, say=say)) if reference else None
    identity = stage_identity(stage, model_path, train, settings, seed, reward_model)
    judge_reward = None
    if judged:
        from rlaif.judges.setup import load_judge
        from rlaif.training.judge_reward import judge_reward_function

        judge = load_judge(config.judge)  # a broken template fails here, before training starts
        judge_reward = judge_reward_function(judge, seed)
        identity["judge"] = judge.identity()
    # The main process decides and clears, then the others find the same.
    with processes.main_process_first():
        finished = finished_report(out, identity) if reuse_finished else None
        if finished is None:
            (out / REPORT_FILE).unlink(missing_ok=True)  # the folder's model is about to be replaced
            resume_from = resume_checkpoint(checkpoint_folder(out), identity, say)
    if finished is not None:
        say(f"train {stage}: {out} already holds it, trained on the same data with the same model and settings")
        return finished
    say(
        f"train {stage}: {len(train)} pairs ({len(held_out) if held_out is not None else 0} held out) "
        f"from {data}, model {model_path} -> {out}"
    )
    if resume_from is not None:
        say(f"train {stage}: continuing from {resume_from} (step {checkpoint_step(resume_from)})")
    if stage == "reward":
        from rlaif.training.reward import train_reward_model

        report = train_reward_model(train, held_out, settings, model_path, out, seed, resume_from)
    elif stage == "dpo":
        from rlaif.training.dpo import train_dpo

        report = train_dpo(train, held_out, settings, model_path, out, seed, resume_from, reference_path, say)
    elif stage == "kto":
        from rlaif.training.kto import train_kto

        report = train_kto(
            train, held_out, settings, model_path, out, seed, resume_from, reference_path, reward_model, say
        )
    elif stage in ("orpo", "cpo"):
        from rlaif.training.reference_free import train_reference_free

        report = train_reference_free(stage, train, held_out, settings, model_path, out, seed, resume_from, say)  # type: ignore[arg-type]
    elif stage in ("grpo", "rloo"):
        from rlaif.training.online_rl import train_online

        reward = judge_reward or reward_model
        report = train_online(stage, train, settings, model_path, reward, out, seed, resume_from)  # type: ignore[arg-type]
    elif stage == "sft":
        from rlaif.training.sft import train_sft

        report = train_sft(train, held_out, settings, model_path, out, seed, resume_from)
    else:
        from rlaif.training.ppo import train_ppo

        report = train_ppo(
            train, held_out, settings, model_path, reward_model, out, seed, say, resume_from, reference_path
        )
    # The report is written after the model (so a report means a whole model), then the checkpoints go;
    # by the main process, once every process is done with them.
    report = {**report, "resumed_from_step": checkpoint_step(resume_from) if resume_from else None}
    report["trained_on"] = identity  # what a rerun compares
    processes.wait_for_everyone()
    if processes.is_main_process:
        write_json_atomic(out / REPORT_FILE, report)
        shutil.rmtree(checkpoint_folder(out), ignore_errors=True)
    return report


def quiet(message: str) -> None:
    """Says nothing: the messages of the processes other than the main one."""
