"""Do refusal contrast pairs move the refusal rates? A policy trained with and without them, same budget.

Data: requests that should be refused are hh-rlhf red-team prompts (the shared harmless file's first human
turns), requests that should be answered are MT-Bench questions (first turns). The first EVAL_PROMPTS of each
are left to `rlaif eval policy`'s refusal check (its defaults read the same files from the start and skip
what the run labelled); the next TRAIN_PROMPTS of each, with their `should_refuse` column, are the run's
prompts, so no prompt classifier is asked.

Two arms, each a whole `rlaif demo` run of configs/refusal_contrast.yaml (SmolLM2-135M-Instruct samples,
judges with the refusal rubric, in both orders; the demo's auto-review answers the ~10% routed pairs with the
judge's verdicts; a MiniLM reward model; DPO from SmolLM2; then the evaluation):
- without: 3 sampled answers per prompt (3 pairs per prompt), no contrast pairs;
- with: 2 sampled answers and 1 steered contrast answer per prompt (`pairs.refusal_contrast`: 2 pairs per
  prompt, the sampled pair and the contrast pair, which pairs the refusal with the first answer only).
Same prompts, seed, answers per prompt, judge, DPO steps, batch and learning rate: the arms differ in what
the third answer is (and so the with arm judges 2 pairs per prompt instead of 3); both train on as many
pairs (steps x batch). Reported per arm: the contrast pairs and how the judge labelled them, the
trained policy's and SmolLM2's refusal rates on the held-out prompts of both kinds, read by the judge model
(the product's reader) and by stock refusal phrases (model-free), each with a 95% Wilson interval; and the
difference with minus without in the policy's rates, with Newcombe's 95% interval (the hybrid score
interval for a difference of two independent proportions).

    .venv/bin/python benchmarks/refusal_contrast.py [--train-prompts 30] [--eval-prompts 40] [--steps 60] [--work DIR]

A run stopped midway continues with `--work` on its folder: `rlaif demo` reuses what its runs finished.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import RLAIF, ROOT, provenance, scratch_dir, write_results  # noqa: E402
from rlaif.agreement import agreement  # noqa: E402
from rlaif.evaluation.policy_eval import refusal_prompts  # noqa: E402
from rlaif.pipeline.prompt_sources import iter_prompts  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
HARMFUL = DATA / "hh_rlhf" / "harmless_base_test_0000_1799.jsonl.gz"
BENIGN = DATA / "mt_bench" / "question.jsonl"
RECIPE = ROOT / "configs" / "refusal_contrast.yaml"
ARMS = {"without": ["sampling.n=3", "pairs.refusal_contrast=false"], "with": ["sampling.n=2"]}


def training_prompts(path: Path, skip: int, count: int) -> None:
    """`count` harmful (should_refuse true) and `count` benign (false) requests after the first `skip` of each."""
    harmful = refusal_prompts(str(HARMFUL), skip + count)[skip:]
    benign = list(iter_prompts(str(BENIGN)))[skip : skip + count]
    if len(harmful) < count or len(benign) < count:
        raise SystemExit(f"too few prompts: {len(harmful)} harmful and {len(benign)} benign after the first {skip}")
    with path.open("w", encoding="utf-8") as out:
        for should_refuse, prompts in ((True, harmful), (False, benign)):
            for prompt in prompts:
                text = prompt.messages[0].content
                out.write(json.dumps({"prompt": text, "should_refuse": should_refuse}) + "\n")


def run_arm(arm: str, work: Path, prompts: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One `rlaif demo` run of the recipe for an arm; its figures from the run's files."""
    name = f"refusal-{arm}"
    settings = [
        f"run.name={name}",
        f"run.dir={work / name}",
        f"run.seed={args.seed}",
        "run.prompts_per_shard=10",
        f"prompts.path={prompts}",
        f"train.dpo.max_steps={args.steps}",
        f"train.dpo.learning_rate={args.learning_rate}",
        f"eval.prompts={BENIGN}",
        "eval.limit=10",
        f"eval.harmful_prompts={HARMFUL}",
        f"eval.benign_prompts={BENIGN}",
        f"eval.refusal_prompts={args.eval_prompts}",
        *ARMS[arm],
    ]
    command = [RLAIF, "demo", str(RECIPE), "--auto-review"] + [part for s in settings for part in ("--set", s)]
    print(f"{arm}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    with (work / f"{name}.log").open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{arm}: rlaif demo exited with {done.returncode}; log: {work / f'{name}.log'}")
    run_dir = work / name
    label = json.loads((run_dir / "report.json").read_text())
    merge = json.loads((run_dir / "dataset" / "merge.json").read_text())
    evaluation = json.loads((run_dir / "eval" / "policy_eval.json").read_text())
    dpo = json.loads((run_dir / "train" / "dpo" / "eval_report.json").read_text())
    return {
        "seconds": round(time.monotonic() - started),
        "pairs": label["pairs"],
        "contrast": label.get("refusal_contrast"),
        "contrast_in_dataset": merge.get("refusal_contrast"),
        "label_sources": merge.get("label_sources"),
        "dpo": {k: dpo.get(k) for k in ("train_pairs", "steps", "train_loss", "eval_loss", "implicit_reward_accuracy")},
        "refusals": {kind: evaluation["refusals"][kind] for kind in ("harmful", "benign")},
        "win_rate_against_reference": {k: evaluation.get(k) for k in ("win_rate", "ci95", "n")},
    }


def newcombe_difference(k1: int, n1: int, k2: int, n2: int) -> list[float] | None:
    """95% interval of p1 - p2 from the two Wilson intervals (Newcombe 1998, method 10)."""
    first, second = agreement([True] * k1 + [False] * (n1 - k1)), agreement([True] * k2 + [False] * (n2 - k2))
    if first is None or second is None:
        return None
    (l1, u1), (l2, u2) = first["ci95"], second["ci95"]
    p1, p2 = k1 / n1, k2 / n2
    low = p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = p1 - p2 + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return [low, high]


def differences(arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """With minus without, in the trained policy's refusal rates, per kind and reading."""
    result: dict[str, Any] = {}
    for kind in ("harmful", "benign"):
        with_rates = arms["with"]["refusals"][kind]["policy"]
        without_rates = arms["without"]["refusals"][kind]["policy"]
        judge = (with_rates["refused"], with_rates["decided"], without_rates["refused"], without_rates["decided"])
        phrase_with, phrase_without = with_rates["by_phrase"], without_rates["by_phrase"]
        phrase = (phrase_with["refused"], phrase_with["replies"], phrase_without["refused"], phrase_without["replies"])
        result[kind] = {
            reading: {
                "difference": (counts[0] / counts[1] - counts[2] / counts[3]) if counts[1] and counts[3] else None,
                "ci95": newcombe_difference(*counts),
            }
            for reading, counts in (("judge_model", judge), ("refusal_phrases", phrase))
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-prompts", type=int, default=30, help="Training prompts of each kind.")
    parser.add_argument("--eval-prompts", type=int, default=40, help="Held-out prompts of each kind.")
    parser.add_argument("--steps", type=int, default=60, help="DPO steps (batch 2) in both arms.")
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "refusal_contrast.json"))
    parser.add_argument("--work", type=Path, help="Work folder: a run stopped midway continues there (default: new).")
    args = parser.parse_args()
    work = args.work or scratch_dir("refusal-contrast-")
    work.mkdir(parents=True, exist_ok=True)
    prompts = work / "prompts.jsonl"
    training_prompts(prompts, args.eval_prompts, args.train_prompts)
    arms = {arm: run_arm(arm, work, prompts, args) for arm in ARMS}
    document = {
        **provenance(),
        "setup": {
            "recipe": str(RECIPE.relative_to(ROOT)),
            "train_prompts_per_kind": args.train_prompts,
            "eval_prompts_per_kind": args.eval_prompts,
            "dpo_steps": args.steps,
            "dpo_batch_size": 2,
            "learning_rate": args.learning_rate,
            "seed": args.seed,
            "policy_and_judge": "smollm2-135m-instruct",
            "harmful": str(HARMFUL.relative_to(ROOT.parent)),
            "benign": str(BENIGN.relative_to(ROOT.parent)),
            "arms": ARMS,
        },
        "arms": arms,
        "with_minus_without": differences(arms),
        "scratch": str(work),
    }
    write_results(args.out, document)
    print(json.dumps(document["with_minus_without"], indent=2))


if __name__ == "__main__":
    main()
