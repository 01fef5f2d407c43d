"""Iterative rounds (`run.rounds`): each round samples from the policy kept after the one before, labels, reviews,
merges, trains from it, and evaluates what it trained against it; the new policy is kept only when its win rate
clears `eval.promote_above` with its interval.

    RUN_DIR/
      rounds.json     the finished rounds: what each trained from, its evaluation, whether its policy was kept, why
      round-1/        a whole run (run name <name>-round-1, the run's review database) with its own report.html
      round-2/        ...
      report.html     the rounds side by side

A round is recorded in rounds.json once it has trained and been evaluated, and is never computed again; an
unfinished round continues like any run (its shards, stages and evaluation are kept by their content keys).
When a round keeps the previous policy, the rounds stop: the next one would sample the same policy with the same
seeds and repeat it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlaif.config import Config
from rlaif.run_files import read_json, write_json_atomic

ROUNDS_FILE = "rounds.json"
EVALUATION_KEYS = ("win_rate", "ci95", "n", "interval", "length_controlled_win_rate", "length_ratio", "verdict")


def round_folder(k: int) -> str:
    """The name of round k's run directory inside the run's: round-k."""
    return f"round-{k}"


def round_of(run_dir: Path) -> int | None:
    """k when `run_dir` is a round's run directory (round-k), else None."""
    prefix, _, number = run_dir.name.partition("round-")
    return int(number) if not prefix and number.isdigit() else None


def round_directory(config: Config, k: int) -> Path:
    """RUN_DIR/round-k: the run directory of round k."""
    return config.run.directory() / round_folder(k)


def start_model(config: Config) -> str:
    """The model the run's training starts from (train.<method>.model): the first round's reference."""
    return getattr(config.train, config.train.method).model


def round_config(config: Config, k: int, policy: str) -> Config:
    """The config of round k, whose policy (sampled, trained from, and compared with) is `policy`, the one kept after
    round k-1; round 1 is the config as given, in its own folder and under its own run name."""
    data = config.model_dump(mode="json")
    data["run"].update(name=f"{config.run.name}-round-{k}", dir=str(round_directory(config, k)), rounds=1)
    data["review"]["db"] = config.review_db()  # every round's queue in the run's database
    if config.train.out:
        data["train"]["out"] = str(Path(config.train.out) / f"round-{k}")
    if k > 1:
        method = config.train.method
        data["policy"]["model"] = policy
        data["train"][method]["model"] = policy
        if config.train.sft_first:
            data["train"]["sft"]["model"] = policy
        if config.run.round_reference == "original":  # the config refuses it for a stage without a reference
            data["train"][method]["reference"] = start_model(config)
        data["eval"]["reference"] = policy
    return Config.model_validate(data)


def promotion(evaluation: dict[str, Any] | None, promote_above: float) -> tuple[bool, str]:
    """Whether a round's policy is kept: the lower end of its win rate's 95% interval against the previous policy
    is at least `promote_above`; with the reason, in words."""
    if not evaluation or evaluation.get("win_rate") is None:
        return False, "the previous policy is kept: no comparison with it was judged"
    low, high = evaluation["ci95"]
    where = (
        f"win rate {100 * evaluation['win_rate']:.0f}% against the previous policy (95% interval "
        f"{100 * low:.0f}-{100 * high:.0f}%, {evaluation['n']} prompts)"
    )
    if low >= promote_above:
        return True, f"the new policy is kept: {where}; the interval's lower end clears eval.promote_above " + (
            f"({100 * promote_above:.0f}%)"
        )
    return False, (
        f"the previous policy is kept: {where}; the interval's lower end is below eval.promote_above "
        f"({100 * promote_above:.0f}%)"
    )


def finished_round(config: Config, k: int, previous: str, policy: str, trained: dict[str, Any]) -> dict[str, Any]:
    """The record of round k (its `config` is round_config's) once it has trained and been evaluated: `previous` is
    the policy it started from, `policy` the one it trained, `trained` the rlaif-train result."""
    settings = getattr(config.train, config.train.method)
    evaluation = trained.get("eval")
    promoted, reason = promotion(evaluation, config.eval.promote_above)
    return {
        "round": k,
        "run_name": config.run.name,
        "run_dir": str(config.run.directory()),
        "trained_from": previous,
        "reference": settings.reference or settings.model,
        "policy": policy,
        "evaluation": {key: evaluation.get(key) for key in EVALUATION_KEYS} if evaluation else None,
        "promote_above": config.eval.promote_above,
        "promoted": promoted,
        "reason": reason,
        "kept": policy if promoted else previous,
    }


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """The finished rounds of a run, in order ([] before the first has finished)."""
    document = read_json(run_dir / ROUNDS_FILE)
    return list(document["rounds"]) if document else []


def write_rounds(run_dir: Path, rounds: list[dict[str, Any]]) -> None:
    """Record the finished rounds (atomically: a killed write leaves the previous record)."""
    write_json_atomic(run_dir / ROUNDS_FILE, {"rounds": rounds, "policy": rounds[-1]["kept"] if rounds else None})
