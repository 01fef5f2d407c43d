"""What a rerun of a training stage picks up: its checkpoints in OUT/checkpoints, or its finished output.

Every `save_steps` optimizer steps (PPO: iterations) a stage saves a checkpoint there, keeping only the
latest. A stage killed mid-run (a pre-empted GPU job, a lost node, Ctrl-C) and run again on the same
data with the same model, settings and seed continues from its latest complete checkpoint instead of
step 0. The folder's run.json says which run its checkpoints belong to; checkpoints of any other run are
removed before training starts, so a rerun never continues different training. A checkpoint is complete
once its trainer_state.json (written last) reads back. The stage removes the folder when it finishes,
and records the same identity in its report (`trained_on`), so the flow's reruns can keep a finished stage.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from rlaif.run_files import read_json, write_json_atomic

REPORT_FILE = "eval_report.json"  # OUT's report, written after the model
RUN_FILE = "run.json"
STATE_FILE = "trainer_state.json"  # transformers' name for a checkpoint's last file; PPO's checkpoints use it too


def checkpoint_folder(out: Path) -> Path:
    """OUT/checkpoints: where a stage saves its checkpoints and where a rerun looks for them."""
    return out / "checkpoints"


def stage_identity(
    stage: str, model_path: str, train: Any, settings: BaseModel, seed: int, reward_model: str | None = None
) -> dict[str, Any]:
    """What a stage's checkpoints and finished output are valid for: stage, model (and PPO's reward model),
    training data (its `datasets` fingerprint, which changes with every merge and with a file's content),
    settings other than save_steps, seed. A model that is another stage's output brings that stage's
    identity, so retraining it differently invalidates what was trained from it."""
    return {
        "stage": stage,
        "model": model_path,
        "model_trained_on": trained_on(model_path),
        "reward_model": reward_model,
        "reward_model_trained_on": trained_on(reward_model),
        "data": train._fingerprint,
        "pairs": len(train),
        "seed": seed,
        "settings": settings.model_dump(mode="json", exclude={"save_steps"}),
    }


def trained_on(model: str | None) -> Any:
    """The identity a stage recorded in the model folder's report, or None (not a stage's output)."""
    report = read_json(Path(model) / REPORT_FILE) if model else None
    return report.get("trained_on") if isinstance(report, dict) else None


def finished_report(out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """OUT's report when it records a finished run with this identity, else None. The report is written
    after the model, and removed when a run starts, so the model beside it is whole."""
    report = read_json(out / REPORT_FILE)
    return report if isinstance(report, dict) and report.get("trained_on") == as_json(identity) else None


def resume_checkpoint(folder: Path, identity: dict[str, Any], say: Callable[[str], None] = print) -> Path | None:
    """The latest complete checkpoint in `folder` saved by a run with this identity, else None.

    Checkpoints of another run and checkpoints cut off mid-write are removed; the identity is recorded
    for the next rerun.
    """
    if read_json(folder / RUN_FILE) != as_json(identity):
        if any(folder.glob("checkpoint-*")):
            say(f"{folder}: removing the checkpoints of an earlier run with other data, model or settings")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / RUN_FILE, identity)
        return None
    latest = None
    for checkpoint in sorted(folder.glob("checkpoint-*"), key=checkpoint_step):
        if read_json(checkpoint / STATE_FILE) is None:
            say(f"{checkpoint}: incomplete (the run stopped while saving it), removed")
            shutil.rmtree(checkpoint, ignore_errors=True)
        else:
            latest = checkpoint
    return latest


def checkpoint_step(checkpoint: Path) -> int:
    """The step of a checkpoint-N folder (-1 for a name without one)."""
    suffix = checkpoint.name.rpartition("-")[2]
    return int(suffix) if suffix.isdigit() else -1


def saving_arguments(save_steps: int) -> dict[str, Any]:
    """Trainer settings that save a checkpoint every `save_steps` steps and keep only the latest (0: never)."""
    if save_steps == 0:
        return {"save_strategy": "no"}
    return {"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": 1}


def as_json(document: Any) -> Any:
    """`document` as it reads back from a JSON file (tuples become lists), to compare with one."""
    return json.loads(json.dumps(document))
