"""Resumable training: a stage stopped mid-run continues from its latest checkpoint when run again and
ends with exactly the weights of an uninterrupted run, in one process or in two data-parallel ones;
checkpoints of another run, or cut off while being written, are never continued.

The stages train a two-layer Qwen2 (the `tiny_qwen2` fixture) at a high learning rate, so training
visibly moves the weights: bit-equal final weights then mean the same training, not untouched models.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from safetensors.torch import load_file

from rlaif.config import load_config
from rlaif.training.checkpoints import RUN_FILE, STATE_FILE, resume_checkpoint
from rlaif.training.stages import run_stage
from tests.review_fixtures import RLAIF
from tests.test_training import file_names

# Per stage: settings for a run of 8-12 optimizer steps (PPO: 4 iterations) that saves every step or
# two, and the step after whose checkpoint the first run is stopped (reward: an epoch's last step).
STAGES = {
    "dpo": (["train.dpo.max_steps=-1", "train.dpo.epochs=2", "train.dpo.max_length=64"], 6),
    "sft": (["train.sft.max_steps=-1", "train.sft.epochs=2", "train.sft.max_length=64"], 4),
    "reward": (["train.reward.epochs=2"], 6),
    "ppo": (["train.ppo.steps=4", "train.ppo.mini_batch_size=1", "train.ppo.max_new_tokens=6"], 2),
    "kto": (["train.kto.max_steps=10", "train.kto.max_length=64"], 6),
    "orpo": (
        ["train.orpo.max_steps=-1", "train.orpo.epochs=2", "train.orpo.max_length=64"],
        6,
    ),
    "cpo": (["train.cpo.max_steps=-1", "train.cpo.epochs=2", "train.cpo.max_length=64"], 6),
    "grpo": (["train.grpo.max_steps=8", "train.grpo.num_generations=2", "train.grpo.max_completion_length=6"], 4),
    "rloo": (["train.rloo.max_steps=8", "train.rloo.num_generations=2", "train.rloo.max_completion_length=6"], 4),
}
REWARDED = ("ppo", "grpo", "rloo")  # trained after a reward model


class Stopped(Exception):
    """Raised right after a chosen checkpoint is saved, as if the process had died there."""


def tiny_run(tmp_path: Path, tiny_qwen2: tuple[str, Any], stage: str, *settings: str) -> list[str]:
    """Config overrides for a run directory whose merged dataset is the fixture's 16 pairs, training
    `stage` on the tiny model."""
    model, pairs = tiny_qwen2
    if not (tmp_path / "run" / "dataset").exists():
        pairs.save_to_disk(str(tmp_path / "run" / "dataset"))
    return [
        f"run.dir={tmp_path / 'run'}",
        "train.eval_size=4",
        f"train.{stage}.model={model}",
        f"train.{stage}.batch_size=2",
        f"train.{stage}.learning_rate=1e-3",
        f"train.{stage}.save_steps={1 if stage == 'ppo' else 2}",
        f"train.reward.model={model}",
        *STAGES[stage][0],
        *settings,
    ]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_same_weights(resumed: Path, uninterrupted: Path, start: str) -> None:
    ours, theirs, initial = weights(resumed), weights(uninterrupted), weights(Path(start))
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name
    moved = max((theirs[name] - initial[name]).abs().max().item() for name in initial if name in theirs)
    assert moved > 1e-3  # training changed the weights: equal weights are not equal starting points


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_stopped_after_a_checkpoint_continues_there_and_ends_as_an_uninterrupted_run(
    stage, tiny_qwen2, tmp_path, monkeypatch
):
    from transformers import Trainer

    import rlaif.training.ppo

    config = load_config(None, tiny_run(tmp_path, tiny_qwen2, stage))
    if stage in REWARDED:
        run_stage(config, "reward")  # their reward model (RUN_DIR/train/reward)
    uninterrupted = run_stage(config, stage, out=tmp_path / "uninterrupted")
    stop_at = STAGES[stage][1]
    save = rlaif.training.ppo.save_checkpoint if stage == "ppo" else Trainer._save_checkpoint

    def save_then_stop(*args: Any, **kwargs: Any) -> None:
        save(*args, **kwargs)
        step = args[1] if stage == "ppo" else args[0].state.global_step
        if step == stop_at:
            raise Stopped

    monkeypatch.setattr(
        *(rlaif.training.ppo, "save_checkpoint") if stage == "ppo" else (Trainer, "_save_checkpoint"), save_then_stop
    )
    out = tmp_path / "resumed"
    with pytest.raises(Stopped):
        run_stage(config, stage, out=out)
    assert (out / "checkpoints" / f"checkpoint-{stop_at}" / STATE_FILE).is_file()
    assert not (out / "eval_report.json").exists()
    monkeypatch.undo()

    said: list[str] = []
    resumed = run_stage(config, stage, say=said.append, out=out)
    assert resumed["resumed_from_step"] == stop_at and uninterrupted["resumed_from_step"] is None
    assert any(f"continuing from {out / 'checkpoints' / f'checkpoint-{stop_at}'}" in line for line in said)
    assert_same_weights(out, tmp_path / "uninterrupted", tiny_qwen2[0])
    assert resumed["steps"] == uninterrupted["steps"] > stop_at
    if stage == "reward":
        assert resumed["accuracy"] == uninterrupted["accuracy"]
    if stage in ("orpo", "cpo"):  # pairs whose prompt fills max_length (64) are left out: their answers would be empty
        assert 0 < resumed["train_pairs"] == uninterrupted["train_pairs"] < 12
    if stage == "ppo":
        assert resumed["final"] == {**uninterrupted["final"], "seconds": resumed["final"]["seconds"]}
        assert resumed["held_out_score_before"] == uninterrupted["held_out_score_before"]
        logged = [json.loads(line) for line in (out / "ppo_log.jsonl").read_text().splitlines()]
        assert [row["step"] for row in logged] == [1, 2, 3, 4]
    assert not (out / "checkpoints").exists()  # a finished stage keeps no checkpoints


def test_killed_mid_run_then_rerun_from_the_cli_continues_from_its_last_complete_checkpoint(tiny_qwen2, tmp_path):
    """SIGKILL at whatever moment the first checkpoint is seen (perhaps while a later one is being written)."""
    overrides = tiny_run(tmp_path, tiny_qwen2, "dpo", "train.dpo.epochs=2", "train.dpo.save_steps=1")
    run_stage(load_config(None, overrides), "dpo", out=tmp_path / "uninterrupted")
    out = tmp_path / "killed"
    command = [RLAIF, "train", "dpo", "--out", str(out), *[item for flag in overrides for item in ("--set", flag)]]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(out.glob(f"checkpoints/checkpoint-*/{STATE_FILE}")) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (out / "eval_report.json").exists()

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["resumed_from_step"] >= 1 and "continuing from" in result.stderr
    assert_same_weights(out, tmp_path / "uninterrupted", tiny_qwen2[0])


ONE_THREAD_EACH = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores


def two_processes(stage: str, out: Path, overrides: list[str]) -> list[str]:
    """`rlaif train STAGE` in two processes on the CPU, launched by torchrun (the launcher `accelerate
    launch` uses on GPUs): data-parallel training over gloo."""
    flags = [item for flag in overrides for item in ("--set", flag)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return [*launcher, "-m", "rlaif.cli", "train", stage, "--out", str(out), *flags]


def run_two_processes(stage: str, out: Path, overrides: list[str]) -> subprocess.CompletedProcess[str]:
    command = two_processes(stage, out, overrides)
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=ONE_THREAD_EACH)


def test_two_processes_killed_mid_run_continue_from_their_checkpoint_and_write_their_outputs_once(tiny_qwen2, tmp_path):
    """Every process of a two-process run is killed (SIGKILL, as when a node is lost) once a checkpoint is
    complete; the same command then continues from it, with the uninterrupted two-process run's weights."""
    overrides = tiny_run(tmp_path, tiny_qwen2, "dpo", "train.dpo.epochs=2", "train.dpo.save_steps=1")
    uninterrupted = run_two_processes("dpo", tmp_path / "uninterrupted", overrides)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    report = json.loads(uninterrupted.stdout)  # one report: printed by the main process alone
    assert report["steps"] == 6  # 12 training pairs, 2 per process and step, 2 epochs: the processes split them
    assert uninterrupted.stderr.count("train dpo: 12 pairs") == 1

    out = tmp_path / "killed"
    launcher = subprocess.Popen(
        two_processes("dpo", out, overrides), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD_EACH
    )
    deadline = time.monotonic() + 300
    while not list(out.glob(f"checkpoints/checkpoint-*/{STATE_FILE}")) and time.monotonic() < deadline:
        assert launcher.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.02)
    run = psutil.Process(launcher.pid)
    processes = [run, *run.children(recursive=True)]  # torchrun starts each worker in a session of its own
    assert len(processes) >= 3
    for process in processes:
        process.kill()
    psutil.wait_procs(processes, timeout=60)
    assert not (out / "eval_report.json").exists()

    resumed = run_two_processes("dpo", out, overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["resumed_from_step"] >= 1
    assert resumed.stderr.count("continuing from") == 1
    assert_same_weights(out, tmp_path / "uninterrupted", tiny_qwen2[0])
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize("stage", ["reward", "sft"])
def test_the_other_trl_stages_split_the_pairs_between_two_processes_and_write_once(stage, tiny_qwen2, tmp_path):
    result = run_two_processes(stage, tmp_path / stage, tiny_run(tmp_path, tiny_qwen2, stage))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)  # one report
    assert report["steps"] == 6  # 12 pairs, 2 per process and step, 2 epochs (one process alone: 12 steps)
    assert (tmp_path / stage / "model.safetensors").is_file() and not (tmp_path / stage / "checkpoints").exists()


def test_ppo_refuses_several_processes(tiny_qwen2, tmp_path):
    overrides = tiny_run(tmp_path, tiny_qwen2, "ppo", "train.ppo.reward_model=" + tiny_qwen2[0])
    result = run_two_processes("ppo", tmp_path / "ppo", overrides)
    assert result.returncode != 0
    assert "error: PPO trains on one process, not 2: run `rlaif train ppo` without accelerate launch" in result.stderr


def test_checkpoints_of_another_run_or_cut_off_mid_write_are_never_continued(tmp_path):
    folder = tmp_path / "checkpoints"
    identity = {"stage": "dpo", "data": "abc", "settings": {"beta": 0.1}}
    said: list[str] = []
    assert resume_checkpoint(folder, identity, said.append) is None  # nothing yet: the run is recorded
    assert json.loads((folder / RUN_FILE).read_text()) == identity
    for step in (2, 4, 6):
        (folder / f"checkpoint-{step}").mkdir()
        (folder / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"weights")
    for step in (2, 4):
        (folder / f"checkpoint-{step}" / STATE_FILE).write_text(json.dumps({"global_step": step}))
    (folder / "checkpoint-6" / STATE_FILE).write_text('{"global_st')  # the run died writing it

    assert resume_checkpoint(folder, identity, said.append) == folder / "checkpoint-4"
    assert not (folder / "checkpoint-6").exists() and any("checkpoint-6: incomplete" in line for line in said)
    assert (folder / "checkpoint-2").exists()  # transformers' own rotation removes it at the next save

    other = {**identity, "settings": {"beta": 0.2}}
    assert resume_checkpoint(folder, other, said.append) is None
    assert file_names(folder) == [RUN_FILE]
    assert json.loads((folder / RUN_FILE).read_text()) == other
    assert any("removing the checkpoints of an earlier run" in line for line in said)


def test_the_flow_s_rerun_keeps_stages_trained_on_the_same_data_and_settings_and_retrains_what_follows_a_change(
    tiny_qwen2, tmp_path
):
    """run_stage as the rlaif-train flow calls it (reuse_finished): SFT, then DPO from SFT's output."""
    sft_out, dpo_out = tmp_path / "run" / "train" / "sft", tmp_path / "run" / "train" / "dpo"

    def train_both(*settings: str) -> list[str]:
        said: list[str] = []
        config = load_config(None, tiny_run(tmp_path, tiny_qwen2, "sft", *STAGES["dpo"][0], *settings))
        run_stage(config, "sft", say=said.append, reuse_finished=True)
        run_stage(config, "dpo", say=said.append, model=str(sft_out), reuse_finished=True)
        return [line for line in said if "already holds it" in line]

    assert train_both() == []
    files = {path: path.stat().st_mtime_ns for path in (sft_out / "model.safetensors", dpo_out / "model.safetensors")}
    assert len(train_both()) == 2  # both kept
    assert {path: path.stat().st_mtime_ns for path in files} == files
    kept = train_both("train.sft.learning_rate=2e-3")  # SFT trains again, so DPO, trained from it, does too
    assert kept == [] and all(path.stat().st_mtime_ns != mtime for path, mtime in files.items())
    report = json.loads((dpo_out / "eval_report.json").read_text())
    assert report["trained_on"]["model_trained_on"]["settings"]["learning_rate"] == 2e-3


def test_the_train_flow_launches_its_stages_in_two_processes(tiny_qwen2, tmp_path, monkeypatch):
    """train.launcher: accelerate with 2 processes (CPU, gloo): the rlaif-train flow starts `accelerate
    launch` for the reward model and for DPO; the processes split the pairs, and each stage writes one model
    and one report."""
    from rlaif.flows.train import train_pipeline

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on two cores
    overrides = tiny_run(
        tmp_path,
        tiny_qwen2,
        "dpo",
        "train.reward.batch_size=2",
        "train.reward.epochs=2",
        "train.launcher=accelerate",
        "train.num_processes=2",
        "train.label_value=false",
        "eval.after_training=false",
    )
    reports = train_pipeline(load_config(None, overrides))
    assert reports["reward"]["steps"] == 6 and reports["dpo"]["steps"] == 6  # half the steps of one process
    for stage in ("reward", "dpo"):
        folder = tmp_path / "run" / "train" / stage
        assert (folder / "model.safetensors").is_file() and not (folder / "checkpoints").exists()
        assert json.loads((folder / "eval_report.json").read_text())["steps"] == 6
    assert not list((tmp_path / "run" / "train").glob(".*-launch-config.yaml"))
