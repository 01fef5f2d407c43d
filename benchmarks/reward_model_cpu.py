"""Reward model on CPU: MiniLM-L6 trained on hh-rlhf harmless (the last 300 pairs held out), then the same
held-out pairs judged by `rlaif judge eval` with that model as the judge. Prints and writes the figures.

    .venv/bin/python benchmarks/reward_model_cpu.py [--out benchmarks/results/reward_minilm_hh_rlhf_cpu.json]
        [--set train.reward.max_length=256 ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import provenance, write_results  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "hh_rlhf" / "harmless_base_test_0000_1799.jsonl.gz"
RLAIF = str(Path(sys.executable).parent / "rlaif")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/reward_minilm_hh_rlhf_cpu.json"))
    parser.add_argument("--model-dir", default="/tmp/rlaif-reward-minilm")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    sets = [item for override in ["train.eval_size=300", *args.overrides] for item in ("--set", override)]
    started = time.monotonic()
    subprocess.run(
        [RLAIF, "train", "reward", "--data", str(DATA), "--format", "hh-rlhf", "--out", args.model_dir, *sets],
        capture_output=True,
        text=True,
        check=True,
    )
    train_s = time.monotonic() - started
    report = json.loads((Path(args.model_dir) / "eval_report.json").read_text())
    evaluation = Path(args.model_dir) / "judge_eval.json"
    subprocess.run(
        [
            RLAIF,
            "judge",
            "eval",
            "--data",
            str(DATA),
            "--format",
            "hh-rlhf",
            "--last",
            "300",
            "--out",
            str(evaluation),
            "--set",
            "judge.mode=reward_model",
            "--set",
            f"judge.model={args.model_dir}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    judged = json.loads(evaluation.read_text())
    results = {
        "benchmark": "reward model, MiniLM-L6 on hh-rlhf harmless (1,500 pairs train, last 300 held out)",
        "held_out_accuracy": report["accuracy"],
        "judge_eval_agreement": judged["agreement"],
        "train_wall_s": round(train_s, 1),
        "trainer_wall_s": report["wall_s"],
        "settings": report["settings"],
        **provenance(),
    }
    write_results(args.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
